"""Fused Triton kernels with autograd and plain-PyTorch references (``lmbench.kernels``)."""

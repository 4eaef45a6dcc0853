"""Fused Triton kernels with autograd and plain-PyTorch references (``lmbench.kernels``)."""

from lmbench.kernels.interpreter import mend as _mend_interpreter
from lmbench.kernels.interpreter import quicken as _quicken_interpreter

# Before any kernel runs under TRITON_INTERPRET (the tests' CPU runs): Triton 3.6's interpreter needs it with NumPy 2.4,
# and every interpreter runs the kernels' helper calls faster for it.
_mend_interpreter()
_quicken_interpreter()

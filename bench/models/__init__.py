"""Models: the registry of language models (random init, nothing downloaded), the plain-PyTorch LM, and the
kernel sets swapped into a built model (with the count of what each swap applied), and FP8 conversion of a
built model's block linears (torchao).

May import: lmbench.errors and lmbench.kernels.
"""

"""Triton's CPU interpreter (TRITON_INTERPRET=1: how the tests run the kernels without a GPU) under NumPy 2.4.

The interpreter holds every scalar as a one-element NumPy array, and a loop over a kernel argument
(`range(0, N, BLOCK)`) asks it for a Python int. Triton 3.6's interpreter makes that int with
`int(array)`, which NumPy 2.4 refuses for an array with a dimension ("only 0-dimensional arrays can
be converted to Python scalars"); Triton 3.9's takes the element out first. `mend()` gives an
interpreter that fails this way the newer conversion, and leaves every other one alone; compiled
kernels never run this code.
"""

from __future__ import annotations

import operator
import os


def broken() -> bool:
    """Whether this Triton's interpreter cannot turn a scalar tensor into an int (Triton 3.6 with NumPy 2.4)."""
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    try:
        scope = interpreter._LangPatchScope()
        handle = interpreter.TensorHandle(np.array([1], dtype=np.int32), tl.int32)
    except AttributeError:  # an interpreter laid out differently: nothing known to mend
        return False
    try:
        interpreter._patch_lang_tensor(tl.tensor, scope)
        operator.index(tl.tensor(handle, tl.int32))
    except TypeError:
        return True
    finally:
        scope.restore()
    return False


def mend() -> bool:
    """Under TRITON_INTERPRET=1, make a broken interpreter convert scalars as Triton 3.9's does; returns whether
    the interpreter is mended (True also when an earlier call did it)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    from triton.runtime import interpreter

    if getattr(interpreter._patch_lang_tensor, "lmbench_mended", False):
        return True
    if not broken():
        return False
    original = interpreter._patch_lang_tensor

    def patch_lang_tensor(tensor: type, scope: object) -> None:
        original(tensor, scope)
        # Set last, so it is restored first: the scope undoes its changes in reverse.
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    patch_lang_tensor.lmbench_mended = True  # type: ignore[attr-defined]
    interpreter._patch_lang_tensor = patch_lang_tensor
    return True

"""Triton's CPU interpreter (TRITON_INTERPRET=1: how the tests run the kernels without a GPU) under NumPy 2.4.

The interpreter holds every scalar as a one-element NumPy array, and a loop over a kernel argument
(`range(0, N, BLOCK)`) asks it for a Python int. Triton 3.6's interpreter makes that int with
`int(array)`, which NumPy 2.4 refuses for an array with a dimension ("only 0-dimensional arrays can
be converted to Python scalars"); Triton 3.9's takes the element out first. `mend()` gives an
interpreter that fails this way the newer conversion, and leaves every other one alone; compiled
kernels never run this code.

`quicken()` makes it cheaper: Triton 3.9's interpreter patches `triton.language` again at every call of one
`@triton.jit` function from another (a walk of every member of five modules, ~20 ms on the CI's CPU), though the
kernel's launch patched those modules already and nothing undoes it before the launch ends. A norm backward
calls its row helper once a row: half of an interpreted training step went to re-patching. Within one launch, a
call whose language modules were patched already skips it; the first call that needs another module (one of
Triton's own helpers, as `tl.zeros`, sees `triton.language.core`) still patches it. What runs, and its numbers,
are the same.
"""

from __future__ import annotations

import inspect
import operator
import os
import threading


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


class _Launch(threading.local):
    """The interpreter's launches in progress on this thread, and the language modules patched since the outermost
    one began (ids)."""

    depth = 0
    patched: set[int] = set()


def quicken() -> bool:
    """Under TRITON_INTERPRET=1, patch `triton.language` once per module per launch, not at every call of a
    `@triton.jit` function from another; returns whether the interpreter is quickened (True also when an earlier
    call did it). An interpreter laid out differently is left alone."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    import triton.language as tl
    from triton.runtime import interpreter

    if getattr(interpreter._patch_lang, "lmbench_quickened", False):
        return True
    executor, patch_lang = getattr(interpreter, "GridExecutor", None), getattr(interpreter, "_patch_lang", None)
    if executor is None or patch_lang is None or not hasattr(interpreter, "_LangPatchScope"):
        return False
    launch, run = _Launch(), executor.__call__

    def launched(self: object, *args: object, **kwargs: object) -> object:
        if launch.depth == 0:
            launch.patched = set()
        launch.depth += 1
        try:
            return run(self, *args, **kwargs)
        finally:
            launch.depth -= 1

    def patch_once(fn: object) -> object:
        # The modules Triton's `_patch_lang` patches for `fn`: those of its globals that are the language's.
        langs = {id(value) for value in fn.__globals__.values() if inspect.ismodule(value) and value in (tl, tl.core)}
        if launch.depth and langs and langs <= launch.patched:
            return interpreter._LangPatchScope()  # nothing to undo: the launch's own scope restores the modules
        scope = patch_lang(fn)
        if launch.depth:
            launch.patched |= langs
        return scope

    patch_once.lmbench_quickened = True  # type: ignore[attr-defined]
    executor.__call__ = launched
    interpreter._patch_lang = patch_once
    return True

"""Run by test_kernels.py in a child process: every kernel reads and writes elements past 2**31 correctly.

An int32 offset wraps there and the kernel touches memory before the tensor: a crash, or garbage. The
tensors are 4 GiB of virtual memory each, but only the few pages the kernels touch are ever committed.
Norms see rows 2**30 elements apart (a strided view, so row 2 starts at 2**31); the elementwise
kernels would need 2**21 programs to get there, so the interpreter is made to number its programs
from 2**31 / BLOCK instead, which is exactly the id those programs would have.
"""

from __future__ import annotations

import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402

FAR = 2**31
DTYPE = torch.float16


def far_tensor(n_tail: int, seed: int) -> torch.Tensor:
    """FAR + n_tail elements, of which only the tail (past 2**31) is written."""
    t = torch.empty(FAR + n_tail, dtype=DTYPE)
    t[FAR:] = torch.randn(n_tail, generator=torch.Generator().manual_seed(seed)).to(DTYPE)
    return t


def close(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(ours.float(), ref.float(), atol=2e-2, rtol=1e-2, msg=lambda m: f"{what}: {m}")


def check_norms() -> None:
    from lmbench.kernels.norms import layer_norm, layer_norm_reference, rms_norm, rms_norm_reference

    n = 64
    storage = torch.empty(FAR + n, dtype=DTYPE)
    x = storage.as_strided((3, n), (2**30, 1))
    x.copy_(torch.randn(3, n, generator=torch.Generator().manual_seed(0)).to(DTYPE))
    dense = x.detach().clone()
    w = torch.randn(n, generator=torch.Generator().manual_seed(1)).to(DTYPE)
    b = torch.randn(n, generator=torch.Generator().manual_seed(2)).to(DTYPE)
    for name, ours, ref, args in (("layer_norm", layer_norm, layer_norm_reference, (w, b)),
                                  ("rms_norm", rms_norm, rms_norm_reference, (w,))):
        xs, xd = x.detach().requires_grad_(), dense.float().requires_grad_()
        y, y_ref = ours(xs, *args), ref(xd, *(a.float() for a in args))
        close(y, y_ref, f"{name} forward")
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).to(y.dtype)
        (gx,), (gx_ref,) = torch.autograd.grad(y, [xs], dy), torch.autograd.grad(y_ref, [xd], dy.float())
        close(gx, gx_ref, f"{name} backward")


def check_elementwise() -> None:
    from triton.runtime import interpreter

    from lmbench.kernels import activations as act

    builder = interpreter.interpreter_builder
    original = builder.create_get_program_id
    first = FAR // act.BLOCK

    def far_program_id(axis: int):  # type: ignore[no-untyped-def]
        handle = original(axis)
        handle.data = handle.data + np.int32(first)
        return handle

    builder.create_get_program_id = far_program_id
    tail = 2 * act.BLOCK - 5
    n = FAR + tail
    grid = (2,)
    a, b, dy = far_tensor(tail, 0), far_tensor(tail, 1), far_tensor(tail, 2)
    ta, tb, tdy = (t[FAR:].float().requires_grad_() for t in (a, b, dy))
    y = torch.empty(n, dtype=DTYPE)
    act._gelu_fwd[grid](a, y, n, BLOCK=act.BLOCK)
    close(y[FAR:], act.gelu_tanh_reference(ta), "gelu forward")
    dx = torch.empty(n, dtype=DTYPE)
    act._gelu_bwd[grid](a, dy, dx, n, BLOCK=act.BLOCK)
    (ref,) = torch.autograd.grad(act.gelu_tanh_reference(ta), [ta], tdy.detach())
    close(dx[FAR:], ref, "gelu backward")
    act._swiglu_fwd[grid](a, b, y, n, BLOCK=act.BLOCK)
    close(y[FAR:], act.swiglu_reference(ta, tb), "swiglu forward")
    da, db = torch.empty(n, dtype=DTYPE), torch.empty(n, dtype=DTYPE)
    act._swiglu_bwd[grid](a, b, dy, da, db, n, BLOCK=act.BLOCK)
    ref_a, ref_b = torch.autograd.grad(act.swiglu_reference(ta, tb), [ta, tb], tdy.detach())
    close(da[FAR:], ref_a, "swiglu backward (gate)")
    close(db[FAR:], ref_b, "swiglu backward (up)")


if __name__ == "__main__":
    {"norms": check_norms, "elementwise": check_elementwise}[sys.argv[1]]()
    print("ok")

"""Fused GELU (tanh approximation) and SwiGLU, forward and backward, elementwise over flat blocks.

Both upcast to fp32 inside the kernel and write the input dtype; tanh is written with exp
(tanh z = 1 - 2 / (exp(2z) + 1)) so the same code runs compiled and under TRITON_INTERPRET.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import triton
import triton.language as tl

from lmbench.kernels.derivatives import first_order_only

BLOCK = 1024
SQRT_2_OVER_PI = 0.7978845608028654
GELU_COEF = 0.044715


@triton.jit
def _offsets(BLOCK: tl.constexpr):
    # int64: past 2**31 elements (SwiGLU at batch 128 x 2048 tokens x 8192) an int32 `pid * BLOCK` wraps.
    return tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)


@triton.jit
def _tanh(z):
    return 1.0 - 2.0 / (tl.exp(2.0 * z) + 1.0)


@triton.jit
def _gelu_fwd(X, Y, n, BLOCK: tl.constexpr):
    offs = _offsets(BLOCK)
    mask = offs < n
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    t = _tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))
    tl.store(Y + offs, (0.5 * x * (1.0 + t)).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _gelu_bwd(X, DY, DX, n, BLOCK: tl.constexpr):
    offs = _offsets(BLOCK)
    mask = offs < n
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
    t = _tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))
    dt = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x) * (1.0 - t * t)
    tl.store(DX + offs, (dy * (0.5 * (1.0 + t) + 0.5 * x * dt)).to(DX.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_fwd(A, B, Y, n, BLOCK: tl.constexpr):
    offs = _offsets(BLOCK)
    mask = offs < n
    a = tl.load(A + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + offs, mask=mask, other=0.0).to(tl.float32)
    sig = 1.0 / (1.0 + tl.exp(-a))
    tl.store(Y + offs, (a * sig * b).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd(A, B, DY, DA, DB, n, BLOCK: tl.constexpr):
    offs = _offsets(BLOCK)
    mask = offs < n
    a = tl.load(A + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
    sig = 1.0 / (1.0 + tl.exp(-a))
    silu = a * sig
    tl.store(DA + offs, (dy * b * sig * (1.0 + a * (1.0 - sig))).to(DA.dtype.element_ty), mask=mask)
    tl.store(DB + offs, (dy * silu).to(DB.dtype.element_ty), mask=mask)


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(-1)


def _grid(n: int) -> tuple[int]:
    return (triton.cdiv(n, BLOCK),)


# Outputs are made in their final shape (a view of a tensor made inside forward could not be modified in place,
# as eager's output can).

class _GeluTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def]
        xf = _flat(x)
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        _gelu_fwd[_grid(xf.numel())](xf, y.view(-1), xf.numel(), BLOCK=BLOCK)
        ctx.save_for_backward(xf)
        ctx.shape = x.shape
        return y

    @staticmethod
    @first_order_only
    def backward(ctx, dy):  # type: ignore[no-untyped-def]
        (xf,) = ctx.saved_tensors
        dyf = _flat(dy)
        dx = torch.empty_like(xf)
        _gelu_bwd[_grid(xf.numel())](xf, dyf, dx, xf.numel(), BLOCK=BLOCK)
        return dx.view(ctx.shape)


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b):  # type: ignore[no-untyped-def]
        af, bf = _flat(a), _flat(b)
        # silu(gate) * up in the promoted dtype, as the eager product is.
        y = torch.empty(a.shape, dtype=torch.promote_types(a.dtype, b.dtype), device=a.device)
        _swiglu_fwd[_grid(af.numel())](af, bf, y.view(-1), af.numel(), BLOCK=BLOCK)
        ctx.save_for_backward(af, bf)
        ctx.shape = a.shape
        return y

    @staticmethod
    @first_order_only
    def backward(ctx, dy):  # type: ignore[no-untyped-def]
        af, bf = ctx.saved_tensors
        da, db = torch.empty_like(af), torch.empty_like(bf)
        _swiglu_bwd[_grid(af.numel())](af, bf, _flat(dy), da, db, af.numel(), BLOCK=BLOCK)
        return da.view(ctx.shape), db.view(ctx.shape)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return _GeluTanh.apply(x)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up."""
    if gate.shape != up.shape:
        raise ValueError(f"swiglu: gate {tuple(gate.shape)} and up {tuple(up.shape)} differ")
    return _SwiGLU.apply(gate, up)


class TritonGeluTanh(nn.Module):
    """Drop-in for transformers' NewGELUActivation / gelu_new (GPT-2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gelu_tanh(x)


class TritonSwiGLUMLP(nn.Module):
    """Llama's MLP, down(silu(gate(x)) * up(x)), with the activation and product fused; weights are reused."""

    def __init__(self, gate_proj: nn.Linear, up_proj: nn.Linear, down_proj: nn.Linear) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = gate_proj, up_proj, down_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))


# --- plain PyTorch references ---

def gelu_tanh_reference(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def swiglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up

"""Fused LayerNorm, RMSNorm and residual-add + norm: one pair of Triton kernels, forward and backward.

One program normalises one row in the forward; in the backward one program walks a block of rows,
writes their input gradients and accumulates its own partial weight/bias gradients, which are
summed in PyTorch afterwards (no atomics, deterministic).

RMSNorm follows the Llama cast order: the normalisation runs in fp32, the normalised value is cast
back to the input dtype, and only then multiplied by the weight (transformers' LlamaRMSNorm).
With a residual, the sum `x + residual` is formed in their promoted dtype (as eager code does; under
amp a block's bf16 output is added to the fp32 residual stream, each read in its own dtype, with no
cast copy first), returned as the new residual stream, and normalised; its gradient is shared by `x`
and `residual` (autograd casts a bf16 input's share, as it does an add's).
"""

from __future__ import annotations

import dataclasses
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F
import triton
import triton.language as tl

from lmbench.kernels.derivatives import first_order_only


@triton.jit
def _norm_fwd(X, R, S, W, B, Y, Mean, Rstd, stride_x, stride_r, stride_s, stride_y, N, eps,
              IS_RMS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, BLOCK_N: tl.constexpr):
    # int64: `row * stride` passes 2**31 elements (8192 x 262144 rows) and an int32 product would wrap.
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        # The sum is rounded to its dtype (the inputs' promoted one) before it is normalised, as `x + residual` is.
        x = (x.to(tl.float32) + tl.load(R + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)).to(
            S.dtype.element_ty)
        tl.store(S + row * stride_s + cols, x, mask=mask)
    xf = x.to(tl.float32)
    if IS_RMS:
        mean = 0.0
        xc = xf
    else:
        mean = tl.sum(xf, axis=0) / N
        xc = tl.where(mask, xf - mean, 0.0)
    var = tl.sum(xc * xc, axis=0) / N
    rstd = 1.0 / tl.sqrt(var + eps)
    xhat = xc * rstd
    if IS_RMS:
        xhat = xhat.to(x.dtype).to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    y = xhat * w
    if HAS_BIAS:
        y += tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(Mean + row, mean)
    tl.store(Rstd + row, rstd)


@triton.jit
def _norm_bwd_row(X, W, DY, DS, DX, Mean, Rstd, w, dw, db, row, cols, col_mask, stride_x, stride_dy, stride_ds,
                  stride_dx, M, N, IS_RMS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                  BLOCK_N: tl.constexpr):
    """One row of the backward: writes its dx, returns the program's dw and db with the row's share added."""
    # A vector comparison: the interpreter rejects a scalar condition broadcast into a mask.
    mask = col_mask & ((tl.zeros([BLOCK_N], dtype=tl.int64) + row) < M)
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0)
    dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
    # Rows past M (the last program's tail) read a valid row and are masked out everywhere else.
    mean = tl.load(Mean + tl.minimum(row, M - 1))
    rstd = tl.load(Rstd + tl.minimum(row, M - 1))
    xhat = tl.where(mask, (x.to(tl.float32) - mean) * rstd, 0.0)
    wdy = w * dy
    dx = wdy - xhat * (tl.sum(wdy * xhat, axis=0) / N)
    if not IS_RMS:
        dx -= tl.sum(wdy, axis=0) / N
    dx *= rstd
    if HAS_RESIDUAL:
        dx += tl.load(DS + row * stride_ds + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)
    if IS_RMS:
        xhat = xhat.to(x.dtype).to(tl.float32)
    dw += dy * xhat
    if HAS_BIAS:
        db += dy
    return dw, db


@triton.jit
def _norm_bwd(X, W, DY, DS, DX, Mean, Rstd, DW, DB, stride_x, stride_dy, stride_ds, stride_dx, M, N,
              rows_per_program, IS_RMS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
              BLOCK_N: tl.constexpr, LOAD_STAGES: tl.constexpr = 0):
    pid = tl.program_id(0).to(tl.int64)  # rows are int64 as in the forward
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < N
    w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_N], dtype=tl.float32)
    db = tl.zeros([BLOCK_N], dtype=tl.float32)
    if LOAD_STAGES == 0:
        for i in range(0, rows_per_program):
            dw, db = _norm_bwd_row(X, W, DY, DS, DX, Mean, Rstd, w, dw, db, pid * rows_per_program + i, cols,
                                   col_mask, stride_x, stride_dy, stride_ds, stride_dx, M, N, IS_RMS, HAS_BIAS,
                                   HAS_RESIDUAL, BLOCK_N)
    else:
        # Software-pipelined: the next rows' loads are in flight while this row reduces (backward_plan's for the
        # widths it was measured at).
        for i in tl.range(0, rows_per_program, num_stages=LOAD_STAGES):
            dw, db = _norm_bwd_row(X, W, DY, DS, DX, Mean, Rstd, w, dw, db, pid * rows_per_program + i, cols,
                                   col_mask, stride_x, stride_dy, stride_ds, stride_dx, M, N, IS_RMS, HAS_BIAS,
                                   HAS_RESIDUAL, BLOCK_N)
    tl.store(DW + pid * N + cols, dw, mask=col_mask)
    if HAS_BIAS:
        tl.store(DB + pid * N + cols, db, mask=col_mask)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """2-D view (rows, N) with unit stride along N; copies only when it must."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _block(n: int) -> int:
    return triton.next_power_of_2(n)


def _warps(block: int) -> int:
    """More warps for wider rows, so each thread holds a bounded slice of the row in registers."""
    return 16 if block >= 8192 else 8 if block >= 2048 else 4


@dataclasses.dataclass(frozen=True)
class BackwardPlan:
    """How the backward is launched: programs per SM (each walks M / programs rows and writes one partial dW/dB
    row, summed after), warps per program, and software-pipelined loads (0: a plain loop)."""

    programs_per_sm: int
    warps: int
    load_stages: int = 0


#: The backward's plan for each norm (rms) and row width (BLOCK_N) that ci/norm-sweep.py measured on an H100,
#: bf16, 8192 rows: reports/h100-80gb-hbm3-2026-11-27/stage13 (2048-8192) and norm-sweep-768-16384 (768, whose
#: BLOCK_N is 1024, and 16384). Each is the plan the sweep timed fastest, its speedup over the plain loop with
#: the warps of _backward_warps from the head-to-head rerun (95% intervals):
#:   1024: RMSNorm eight programs an SM, 4 warps, three rows' loads in flight, 1.56x; LayerNorm two programs an SM,
#:         1.36x (its eight-program plan ran 1.35x in the first pass);
#:   2048-8192: two programs an SM, 16 columns a thread, three loads in flight: 1.04x-1.42x for both norms;
#:   16384: the plain loop; RMSNorm's 32 warps stay (nothing beat them), LayerNorm's 16 warps were 1.10x.
#: They were measured on 16-bit rows and are used for 16-bit rows; fp32 rows (the residual stream under amp) and
#: widths not listed keep the plain loop until a sweep measures them.
MEASURED_PLANS: dict[tuple[bool, int], BackwardPlan] = {
    (True, 1024): BackwardPlan(programs_per_sm=8, warps=4, load_stages=3),
    (False, 1024): BackwardPlan(programs_per_sm=2, warps=4, load_stages=3),
    **{(rms, block): BackwardPlan(programs_per_sm=2, warps=block // 512, load_stages=3)
       for rms in (True, False) for block in (2048, 4096, 8192)},
    (True, 16384): BackwardPlan(programs_per_sm=2, warps=32, load_stages=0),
    (False, 16384): BackwardPlan(programs_per_sm=2, warps=16, load_stages=0),
}


def backward_plan(block: int, *, rms: bool, itemsize: int = 2, residual: bool = False,
                  shared_limit: int | None = None, dy_itemsize: int | None = None) -> BackwardPlan:
    """The plan every call uses (ci/norm-sweep.py times others against it): MEASURED_PLANS' for 16-bit rows,
    else two programs an SM and the plain loop.

    A pipelined loop keeps its rows' loads in shared memory, which Triton does not shrink to fit: where that
    exceeds `shared_limit` (the device's bytes a block, when known) the plain loop runs instead of a launch error.
    `dy_itemsize`: the output gradient's element size where it is not x's (an RMSNorm of bf16 rows with an fp32
    weight returns fp32, and its gradient comes as fp32).
    """
    plain = BackwardPlan(programs_per_sm=2, warps=_backward_warps(block))
    plan = MEASURED_PLANS.get((rms, block), plain) if itemsize == 2 else plain
    if plan.load_stages and shared_limit is not None and \
            pipelined_bytes(plan, block, itemsize, residual, dy_itemsize) > shared_limit:
        return plain
    return plan


def pipelined_bytes(plan: BackwardPlan, block: int, itemsize: int, residual: bool,
                    dy_itemsize: int | None = None) -> int:
    """Shared memory a pipelined backward keeps: (stages - 1) buffers of each row it loads (x, dy, and the sum's
    gradient with a residual, each in its own dtype), as Triton 3.6 compiles it for sm_90 (64 KiB at bf16 x 8192,
    three stages), plus 1 KiB for the rest."""
    if not plan.load_stages:
        return 0
    row_bytes = block * (itemsize * (2 if residual else 1) + (itemsize if dy_itemsize is None else dy_itemsize))
    return (plan.load_stages - 1) * row_bytes + 1024


def _backward_warps(block: int) -> int:
    """The plain loop's warps: the backward keeps about twice the forward's row vectors live (x, dy, w and the
    dw/db partial sums).

    With the forward's warps it needed 164-206 registers a thread at N=4096 (8 warps) and spilled
    430-1056 bytes at N>=16384 (16 warps): more warps, so each thread holds a smaller slice of the row.
    """
    return 32 if block >= 16384 else 16 if block >= 4096 else 8 if block >= 2048 else 4


def norm_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float, *, rms: bool,
                 residual: torch.Tensor | None = None, out_dtype: torch.dtype | None = None
                 ):  # type: ignore[no-untyped-def]
    """Launch the forward; returns (y, sum-or-None, mean, rstd). The sum has the promoted dtype of x and residual;
    y has what is normalised's (x, or the sum), promoted with the weight's for RMSNorm, unless `out_dtype` says."""
    x2 = _rows(x)
    M, N = x2.shape
    # The kernels read the weight and bias as N consecutive elements.
    weight = weight.contiguous()
    bias = bias.contiguous() if bias is not None else None
    normed = torch.promote_types(x.dtype, residual.dtype) if residual is not None else x.dtype
    out_dtype = out_dtype or (torch.promote_types(normed, weight.dtype) if rms else normed)
    # Outputs in their final shape, the kernel writing through 2-D views: an output that is a view of a tensor
    # made inside forward could not be modified in place, as eager's can.
    y = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    mean = torch.empty(M, dtype=torch.float32, device=x.device)
    rstd = torch.empty(M, dtype=torch.float32, device=x.device)
    r2 = _rows(residual) if residual is not None else x2
    s = torch.empty(x.shape, dtype=normed, device=x.device) if residual is not None else None
    s2 = s.view(M, N) if s is not None else x2
    y2 = y.view(M, N)
    if M:
        _norm_fwd[(M,)](x2, r2, s2, weight, bias if bias is not None else weight, y2, mean, rstd, x2.stride(0),
                        r2.stride(0), s2.stride(0), y2.stride(0), N, eps, IS_RMS=rms, HAS_BIAS=bias is not None,
                        HAS_RESIDUAL=residual is not None, BLOCK_N=_block(N), num_warps=_warps(_block(N)))
    return y, s, mean, rstd


@functools.lru_cache(maxsize=None)
def _multiprocessors(device_index: int) -> int:
    """The device's SM count, asked once: every backward call needs it, and the host time of a call counts."""
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@functools.lru_cache(maxsize=None)
def _shared_memory(device_index: int) -> int:
    """Shared memory a block may opt in to on the device (227 KiB on an H100, 163 on an A100, 99 on an L4)."""
    props = torch.cuda.get_device_properties(device_index)
    return int(getattr(props, "shared_memory_per_block_optin", 0) or 48 * 1024)


def launch_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, has_bias: bool, mean: torch.Tensor,
                    rstd: torch.Tensor, *, rms: bool, ds: torch.Tensor | None = None, plan: BackwardPlan | None = None
                    ):  # type: ignore[no-untyped-def]
    """Launch the backward kernel (with `plan`, else backward_plan's); returns (dx, per-program dw, per-program db
    or None, the launched kernel).

    The launched kernel is Triton's compiled kernel on a GPU (its registers and spills can be read), None
    under the interpreter.
    """
    x2 = _rows(x)
    dy2 = _rows(dy)
    M, N = x2.shape
    weight = weight.contiguous()
    dx = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0:  # no rows: no gradient to any of them, and none to the weight and bias
        zeros = torch.zeros((1, N), dtype=torch.float32, device=x.device)
        return dx.view(x.shape), zeros, zeros if has_bias else None, None
    index = (x.device.index if x.device.index is not None else torch.cuda.current_device()) if x.is_cuda else None
    plan = plan or backward_plan(_block(N), rms=rms, itemsize=x.element_size(), residual=ds is not None,
                                 shared_limit=_shared_memory(index) if index is not None else None,
                                 dy_itemsize=dy.element_size())
    sm_count = _multiprocessors(index) if index is not None else 4
    programs = max(1, min(M, plan.programs_per_sm * sm_count))
    rows_per_program = triton.cdiv(M, programs)
    programs = triton.cdiv(M, rows_per_program)
    dw_part = torch.empty((programs, N), dtype=torch.float32, device=x.device)
    db_part = torch.empty((programs, N), dtype=torch.float32, device=x.device) if has_bias else dw_part
    ds2 = _rows(ds) if ds is not None else dy2
    kernel = _norm_bwd[(programs,)](x2, weight, dy2, ds2, dx, mean, rstd, dw_part, db_part, x2.stride(0),
                                    dy2.stride(0), ds2.stride(0), dx.stride(0), M, N, rows_per_program, IS_RMS=rms,
                                    HAS_BIAS=has_bias, HAS_RESIDUAL=ds is not None, BLOCK_N=_block(N),
                                    LOAD_STAGES=plan.load_stages, num_warps=plan.warps)
    return dx.view(x.shape), dw_part, db_part if has_bias else None, kernel


def norm_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, has_bias: bool, mean: torch.Tensor,
                  rstd: torch.Tensor, *, rms: bool, ds: torch.Tensor | None = None):  # type: ignore[no-untyped-def]
    """Launch the backward; `x` is what was normalised (the sum, with a residual). Returns (dx, dw, db)."""
    dx, dw_part, db_part, _ = launch_backward(dy, x, weight, has_bias, mean, rstd, rms=rms, ds=ds)
    dw = dw_part.sum(0).to(weight.dtype)
    db = db_part.sum(0).to(weight.dtype) if db_part is not None else None
    return dx, dw, db


class _Norm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps, rms, out_dtype=None):  # type: ignore[no-untyped-def]
        y, _, mean, rstd = norm_forward(x, weight, bias, eps, rms=rms, out_dtype=out_dtype)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.rms, ctx.has_bias = rms, bias is not None
        return y

    @staticmethod
    @first_order_only
    def backward(ctx, dy):  # type: ignore[no-untyped-def]
        x, weight, mean, rstd = ctx.saved_tensors
        dx, dw, db = norm_backward(dy, x, weight, ctx.has_bias, mean, rstd, rms=ctx.rms)
        return dx, dw, db, None, None, None


class _AddNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, bias, eps, rms, out_dtype):  # type: ignore[no-untyped-def]
        y, s, mean, rstd = norm_forward(x, weight, bias, eps, rms=rms, residual=residual, out_dtype=out_dtype)
        ctx.save_for_backward(s, weight, mean, rstd)
        ctx.rms, ctx.has_bias = rms, bias is not None
        # An output the loss never used (the last block's sum) comes to the backward as None, not as a tensor of
        # zeros that autograd would fill and the kernel would read.
        ctx.set_materialize_grads(False)
        return y, s

    @staticmethod
    @first_order_only
    def backward(ctx, dy, ds):  # type: ignore[no-untyped-def]
        s, weight, mean, rstd = ctx.saved_tensors
        if dy is None:  # only the sum was used: the add's gradient alone
            return ds, ds, None, None, None, None, None
        dx, dw, db = norm_backward(dy, s, weight, ctx.has_bias, mean, rstd, rms=ctx.rms, ds=ds)
        # x and residual get the same gradient: one tensor for both, as for any add (autograd never accumulates in
        # place into a gradient it holds twice); a copy would move M x N elements for nothing.
        return dx, dx, dw, db, None, None, None


def _autocast_layer_norm_dtype(rows: torch.dtype, device: torch.device) -> torch.dtype | None:
    """fp32 for 16-bit rows under CUDA autocast, where layer_norm is on the float32 list (eager casts the rows up
    first; the kernel reads them as they are and computes in fp32 either way): a drop-in returns what eager does.
    None elsewhere (the rows' dtype; CPU autocast keeps bf16)."""
    up = device.type == "cuda" and rows in (torch.float16, torch.bfloat16) and torch.is_autocast_enabled("cuda")
    return torch.float32 if up else None


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float = 1e-5) -> torch.Tensor:
    """F.layer_norm over the last dimension, with its output dtype under autocast."""
    return _Norm.apply(x, weight, bias, eps, False, _autocast_layer_norm_dtype(x.dtype, x.device))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return _Norm.apply(x, weight, None, eps, True)


def add_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
             eps: float = 1e-6, *, rms: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(norm(x + residual), x + residual) in one pass; the sum has the promoted dtype, as `x + residual` does, and
    each input is read in its own dtype. A LayerNorm's output follows autocast as layer_norm's does."""
    out_dtype = None if rms else _autocast_layer_norm_dtype(torch.promote_types(x.dtype, residual.dtype), x.device)
    return _AddNorm.apply(x, residual, weight, bias, eps, rms, out_dtype)


class TritonLayerNorm(nn.Module):
    """Drop-in for nn.LayerNorm over the last dimension (elementwise affine, optional bias)."""

    def __init__(self, hidden: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.bias = nn.Parameter(torch.zeros(hidden)) if bias else None
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.weight, self.bias, self.eps)


class TritonRMSNorm(nn.Module):
    """Drop-in for transformers' LlamaRMSNorm."""

    def __init__(self, hidden: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.variance_epsilon)


# --- plain PyTorch references (what the kernels are tested against) ---

def layer_norm_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         eps: float = 1e-5) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    xf = x.to(torch.float32)
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def add_norm_reference(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor | None = None, eps: float = 1e-6, *, rms: bool = True
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    s = x + residual
    y = rms_norm_reference(s, weight, eps) if rms else layer_norm_reference(s, weight, bias, eps)
    return y, s

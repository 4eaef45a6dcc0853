"""Fused linear + cross-entropy: no (tokens x vocabulary) logits, no fp32 (vocabulary x width) tensor.

Forward. For each chunk of rows, logits = hidden @ weight.T (+ bias) go through cuBLAS in the compute
dtype into one reused buffer of at most LOGITS_BUDGET_BYTES, whose rows start a multiple of 128 columns
apart (with GPT-2's 50257 as the row stride cuBLAS has only unaligned kernels); one Triton program per row finds the
log-sum-exp in one pass over the vocabulary (online softmax), the label's logit and, with smoothing,
the sum of the logits, and writes the row's loss (0 for ignored rows) and its log-sum-exp in fp32.
What the backward needs is saved: the hidden states and the weight in the compute dtype, the labels,
the bias, the rows' log-sum-exp and the loss's scale, nothing of V x H or BT x V elements.

Why the forward no longer computes the gradients (as Liger-Kernel does, and this module did): the
weight gradient would then have to be summed across row chunks, and that sum needs an fp32 V x H
accumulator (2004 MiB for Llama-3's 128256 x 4096), a half-precision V x H product to add into it
(addmm_ takes one dtype only), and a scaled fp32 copy plus the cast result in the backward: on an
H100 (bf16, 8192 x 4096 x 128256) that design peaked at 5138 MiB above its inputs, 0.43x eager's
12024 MiB, and an fp32 V x H accumulator next to the bf16 result can never go under a quarter of it.

Backward: a sweep over the vocabulary in blocks [v0, v1), sized so that BT x (v1 - v0) logits in the
compute dtype fit the same budget. Each block's logits are recomputed (h @ w[v0:v1].T + b[v0:v1]) and
a Triton program per (row, 1024 columns) overwrites them in place with the logits' gradient,
softmax (from the saved log-sum-exp) - (1 - ε) at the label if it falls in the block - ε / V, zero for
ignored rows, multiplied in fp32 by the incoming gradient times the scale before the cast. Then
grad_weight[v0:v1] = grad_block.T @ h is written straight into the weight gradient, in the weight's
dtype (torch.mm(out=slice)): every vocabulary row's gradient is complete in that one matmul, which
cuBLAS accumulates in fp32 inside, so nothing is summed across blocks in a V x H tensor.
grad_bias[v0:v1] is the block's column sum in fp32, cast once; grad_hidden is summed over the blocks
in an fp32 BT x H tensor (128 MiB at 8192 x 4096) and cast to the hidden states' dtype at the end.

fp16: the incoming gradient of fp16 training is a loss scale of 2**16, one past fp16's largest value, so the
factor (incoming gradient x 1/N for the mean) stays an fp32 device scalar and multiplies in the kernel, in fp32,
before the cast. The logits' gradient is then what eager code casts to fp16 for the LM head's backward (autocast
runs the cross-entropy in fp32): a softmax entry x factor under fp16's smallest subnormal flushes to zero as it
does there, and a weight gradient overflows where eager's would, which a loss scaler undoes by lowering the scale.
(An earlier version left a factor under 1 out of the kernel, to keep those small entries, and applied it after the
matmuls; its unscaled weight gradient, up to a token count x |h|, overflowed fp16 at every loss scale, so a scaler
that had dropped below the token count skipped every step from then on.) bf16 has fp32's exponent range.

Cost: four matmuls of 2·BT·H·V flops (forward logits, backward recompute, the two gradients) against
eager's three, and the logits are read twice (forward log-sum-exp, backward gradient) and written once
by the kernels; but there is no fp32 V x H traffic and no BT x V tensor. The matmuls alone are then
about 4/3 of eager's. Memory above the inputs at 8192 x 4096 x 128256 in bf16 (an estimate from the
sizes, not a measurement): the forward holds one chunk's logits (2048 rows, 501 MiB), freed before the
backward; the backward's sweep holds the bf16 weight gradient (1002 MiB, which eager's result takes as
well) + one logits block (4 blocks of 32128 columns: 502 MiB) + the fp32 grad_hidden sum (128 MiB) + a
bf16 BT x H partial product (64 MiB) = 1696 MiB, some 0.14x eager's 12024 MiB; the bf16 grad_hidden
(64 MiB) is made after the block and the partial product are freed.

The recomputed logits come from matmuls of another shape than the forward's (all rows x a vocabulary
block, against a row chunk x all the vocabulary), so cuBLAS may sum in another order and a logit may
round to a neighbouring value in half precision: the softmax from the saved log-sum-exp then differs
from the forward's by that rounding, the size of the rounding every half-precision logit has anyway.

The matmuls run in autocast's dtype when autocast is on (as eager code would), with the weight cast
once per call rather than once per chunk, and nothing waits for the device on the host, forward or
backward. No atomics: the blocks run one after another and, within one, every element is written by
one program or one matmul, so the results are deterministic.

Label smoothing ε (PyTorch's definition: the target distribution is (1 - ε) one_hot + ε / V) makes a
row's loss lse - (1 - ε) z_label - (ε / V) Σ_k z_k and its logit gradient softmax - (1 - ε) one_hot - ε / V;
the sum of the logits is taken in the same pass as the log-sum-exp.

A label outside [0, V) that is not `ignore_index` is never read past its row: its loss is NaN (a
diverged run), where eager code stops on a device assert. An empty vocabulary is refused.

Rows whose label is `ignore_index` contribute no loss and no gradient. With reduction="mean" the
sum is divided by the number of counted rows; when every row is ignored the loss is 0 (PyTorch's
F.cross_entropy gives NaN there, which would end a training run) and so are the gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from lmbench.kernels.derivatives import first_order_only

BLOCK_V = 1024
#: Most memory one chunk's logits (forward) or one vocabulary block's logits (backward) may take.
#: 512 MiB is 2 row chunks of GPT-2 and 4 of Llama-3 at 8k tokens, and as many vocabulary blocks.
LOGITS_BUDGET_BYTES = 512 * 2**20
#: Vocabulary blocks are a multiple of this many columns (where the budget allows): the logits block's
#: rows then start on aligned addresses for cuBLAS, the last, shorter block included (it is a view).
VOCAB_ALIGN = 128


@triton.jit
def _ce_forward(Logits, stride, Labels, Loss, Lse, V, ignore_index, smoothing, BLOCK_V: tl.constexpr,
                SMOOTH: tl.constexpr):
    # int64: a large chunk's `row * stride` may pass 2**31 elements.
    row = tl.program_id(0).to(tl.int64)
    base = Logits + row * stride
    label = tl.load(Labels + row)
    m = float("-inf")
    d = 0.0
    total = 0.0
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        x = tl.load(base + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        # While every logit so far is -inf, -inf - -inf would be NaN: shift by 0 instead (exp(-inf) is 0).
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        d = d * tl.exp(m - shift) + tl.sum(tl.exp(x - shift), axis=0)
        m = m_new
        if SMOOTH:
            total += tl.sum(tl.where(cols < V, x, 0.0), axis=0)
    lse = m + tl.log(d)
    valid = label != ignore_index
    # A label outside the vocabulary is never read (it would read past the row): its loss is NaN, which the
    # run reports as diverged, where eager code would stop on a device assert.
    in_range = (label >= 0) & (label < V)
    safe_label = tl.where(valid & in_range, label, 0)
    label_logit = tl.load(base + safe_label).to(tl.float32)
    if SMOOTH:
        row_loss = lse - (1.0 - smoothing) * label_logit - smoothing / V * total
    else:
        row_loss = lse - label_logit
    row_loss = tl.where(in_range, row_loss, float("nan"))
    tl.store(Loss + row, tl.where(valid, row_loss, 0.0))
    tl.store(Lse + row, lse)


@triton.jit
def _ce_backward(Logits, stride, Labels, Lse, Factor, v0, width, V, ignore_index, smoothing,
                 BLOCK_V: tl.constexpr, SMOOTH: tl.constexpr):
    """Overwrites columns [v0, v0 + width) of the logits (a block of `width` columns) with their gradient x factor."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    mask = cols < width
    ptrs = Logits + row * stride + cols
    x = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    label = tl.load(Labels + row)
    lse = tl.load(Lse + row)
    factor = tl.load(Factor)
    p = tl.exp(x - lse)
    target = (cols + v0) == label
    if SMOOTH:
        grad = tl.where(target, p - (1.0 - smoothing), p) - smoothing / V
    else:
        grad = tl.where(target, p - 1.0, p)
    grad = tl.where(label != ignore_index, grad * factor, 0.0)
    tl.store(ptrs, grad.to(Logits.dtype.element_ty), mask=mask)


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """autocast's dtype when it is on for this device, as eager matmuls would run; else the operands' dtype."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return torch.promote_types(hidden.dtype, weight.dtype)


def _chunk_rows(n_rows: int, vocab: int, itemsize: int) -> int:
    """Rows per forward chunk: as many as LOGITS_BUDGET_BYTES holds, spread evenly so no chunk is a sliver."""
    fit = max(1, LOGITS_BUDGET_BYTES // (vocab * itemsize))
    chunks = max(1, triton.cdiv(n_rows, fit))
    return max(1, triton.cdiv(n_rows, chunks))


def _vocab_block(n_rows: int, vocab: int, itemsize: int) -> int:
    """Columns per backward vocabulary block: as many as LOGITS_BUDGET_BYTES holds for all rows, spread evenly,
    a multiple of VOCAB_ALIGN when the budget holds that many (never more than the budget)."""
    fit = max(1, LOGITS_BUDGET_BYTES // (max(1, n_rows) * itemsize))
    if fit >= vocab:
        return max(1, vocab)
    if fit >= VOCAB_ALIGN:
        fit -= fit % VOCAB_ALIGN
        return triton.cdiv(triton.cdiv(vocab, triton.cdiv(vocab, fit)), VOCAB_ALIGN) * VOCAB_ALIGN
    return triton.cdiv(vocab, triton.cdiv(vocab, fit))


def _logits(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, *, out: torch.Tensor) -> None:
    """out = h @ w.T (+ b), written in place by cuBLAS (the forward's row chunk, the backward's vocabulary block)."""
    if b is None:
        torch.mm(h, w.t(), out=out)
    else:
        torch.addmm(b, h, w.t(), out=out)


def _check_arguments(reduction: str, label_smoothing: float) -> None:
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction={reduction!r}; allowed: mean, sum")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing={label_smoothing!r}; allowed: 0.0 to 1.0")


def linear_cross_entropy_forward(h: torch.Tensor, w: torch.Tensor, labels: torch.Tensor, b: torch.Tensor | None,
                                 ignore_index: int, reduction: str, label_smoothing: float = 0.0
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (loss, lse, scale) for `h` (N x H), `w` (V x H) and `b` (V) already in the compute dtype.

    `lse` is every row's log-sum-exp in fp32 (ignored rows' too); `scale` an fp32 scalar on the device,
    1 / rows counted for the mean (1 when none is), 1 for the sum: loss = scale x the counted rows' losses.
    """
    _check_arguments(reduction, label_smoothing)
    device = h.device
    n_rows, vocab = h.shape[0], w.shape[0]
    if vocab == 0:
        raise ValueError("the weight has no rows: a vocabulary of at least 1 is needed")
    # The count stays on the device: reading it on the host would wait for the whole forward so far.
    counted = (labels != ignore_index).sum()
    scale = (1.0 / counted.clamp(min=1).float() if reduction == "mean"
             else torch.ones((), dtype=torch.float32, device=device))
    row_loss = torch.zeros(n_rows, dtype=torch.float32, device=device)
    lse = torch.zeros(n_rows, dtype=torch.float32, device=device)
    # Rows of the buffer start VOCAB_ALIGN columns apart: with GPT-2's 50257 columns as the row stride, cuBLAS
    # could only write the logits with its unaligned (align1) kernels.
    columns = triton.cdiv(vocab, VOCAB_ALIGN) * VOCAB_ALIGN
    chunk = _chunk_rows(n_rows, columns, h.dtype.itemsize)
    buffer = torch.empty((min(chunk, n_rows), columns), dtype=h.dtype, device=device)
    with torch.autocast(device.type, enabled=False):
        for start in range(0, n_rows, chunk):
            end = min(start + chunk, n_rows)
            logits = buffer[:end - start, :vocab]
            _logits(h[start:end], w, b, out=logits)
            _ce_forward[(end - start,)](logits, logits.stride(0), labels[start:end], row_loss[start:end],
                                        lse[start:end], vocab, ignore_index, float(label_smoothing),
                                        BLOCK_V=BLOCK_V, SMOOTH=label_smoothing > 0)
    return row_loss.sum() * scale, lse, scale


def linear_cross_entropy_backward(grad_loss: torch.Tensor, h: torch.Tensor, w: torch.Tensor, labels: torch.Tensor,
                                  b: torch.Tensor | None, lse: torch.Tensor, scale: torch.Tensor, ignore_index: int,
                                  label_smoothing: float, dtypes: tuple[torch.dtype, torch.dtype, torch.dtype | None],
                                  needs: tuple[bool, bool, bool] = (True, True, True)
                                  ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(grad_hidden, grad_weight, grad_bias) in `dtypes` (hidden's, weight's, bias's), those `needs` asks for.

    One sweep over the vocabulary in blocks; `h`, `w`, `b` are the forward's compute-dtype operands and
    are only read.
    """
    hidden_dtype, weight_dtype, bias_dtype = dtypes
    need_h, need_w, need_b = needs[0], needs[1], needs[2] and b is not None
    if not (need_h or need_w or need_b):
        return None, None, None
    dtype = h.dtype
    device = h.device
    n_rows, width = h.shape
    vocab = w.shape[0]
    # In fp32: grad_loss may be a loss scale of 2**16, which fp16 rounds to inf. The kernel applies all of it, as
    # eager code's gradient carries it into the fp16 matmuls (see the module docstring).
    factor = grad_loss.detach().float().reshape(()) * scale
    grad_hidden = torch.empty((n_rows, width), dtype=torch.float32, device=device) if need_h else None
    part = torch.empty((n_rows, width), dtype=dtype, device=device) if need_h and dtype != torch.float32 else None
    grad_weight = torch.empty((vocab, width), dtype=weight_dtype, device=device) if need_w else None
    grad_bias = torch.empty(vocab, dtype=bias_dtype, device=device) if need_b else None
    block = _vocab_block(n_rows, vocab, dtype.itemsize)
    buffer = torch.empty((n_rows, block), dtype=dtype, device=device)
    # Where the weight's dtype is not the compute dtype (fp32 weights under autocast), a block's gradient
    # is made in the compute dtype here and cast into the weight gradient.
    staging = (torch.empty((block, width), dtype=dtype, device=device)
               if need_w and weight_dtype != dtype else None)
    with torch.autocast(device.type, enabled=False):
        for v0 in range(0, vocab, block):
            v1 = min(v0 + block, vocab)
            logits = buffer[:, :v1 - v0]
            w_block = w[v0:v1]
            _logits(h, w_block, b[v0:v1] if b is not None else None, out=logits)
            if n_rows:
                _ce_backward[(n_rows, triton.cdiv(v1 - v0, BLOCK_V))](
                    logits, logits.stride(0), labels, lse, factor, v0, v1 - v0, vocab, ignore_index,
                    float(label_smoothing), BLOCK_V=BLOCK_V, SMOOTH=label_smoothing > 0)
            grad_logits = logits  # overwritten in place by the kernel
            if need_w:
                if staging is None:
                    torch.mm(grad_logits.t(), h, out=grad_weight[v0:v1])
                else:
                    torch.mm(grad_logits.t(), h, out=staging[:v1 - v0])
                    grad_weight[v0:v1].copy_(staging[:v1 - v0])
            if need_b:
                grad_bias[v0:v1].copy_(grad_logits.sum(0, dtype=torch.float32))
            if need_h:
                if part is None:
                    if v0 == 0:
                        torch.mm(grad_logits, w_block, out=grad_hidden)
                    else:
                        grad_hidden.addmm_(grad_logits, w_block)
                else:
                    torch.mm(grad_logits, w_block, out=part)
                    if v0 == 0:
                        grad_hidden.copy_(part)
                    else:
                        grad_hidden += part
    # The views too: they keep the block buffer alive.
    del buffer, logits, grad_logits, part, staging
    if need_h:
        grad_hidden = grad_hidden.to(hidden_dtype)
    return grad_hidden, grad_weight, grad_bias


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, bias, ignore_index, reduction, label_smoothing):  # type: ignore[no-untyped-def]
        dtype = _compute_dtype(hidden, weight)
        # Cast once per call (not per chunk); saved in the compute dtype, so the backward casts nothing again.
        h, w = hidden.to(dtype), weight.to(dtype)
        b = bias.to(dtype) if bias is not None else None
        labels = labels.contiguous()
        loss, lse, scale = linear_cross_entropy_forward(h, w, labels, b, ignore_index, reduction, label_smoothing)
        ctx.save_for_backward(h, w, labels, b, lse, scale)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        ctx.ignore_index, ctx.label_smoothing = ignore_index, label_smoothing
        return loss

    @staticmethod
    @first_order_only
    def backward(ctx, grad_loss):  # type: ignore[no-untyped-def]
        h, w, labels, b, lse, scale = ctx.saved_tensors
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[3])
        gh, gw, gb = linear_cross_entropy_backward(grad_loss, h, w, labels, b, lse, scale, ctx.ignore_index,
                                                   ctx.label_smoothing, ctx.dtypes, needs)
        return gh, gw, None, gb, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         bias: torch.Tensor | None = None, *, ignore_index: int = -100,
                         reduction: str = "mean", label_smoothing: float = 0.0) -> torch.Tensor:
    """cross_entropy(hidden @ weight.T + bias, labels, label_smoothing=...) without materialising the logits.

    `hidden` is (..., H) and `labels` (...); both are flattened over the leading dimensions.
    """
    return _LinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight, labels.reshape(-1), bias,
                                     ignore_index, reduction, label_smoothing)


# --- plain PyTorch reference ---

def linear_cross_entropy_reference(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                                   bias: torch.Tensor | None = None, *, ignore_index: int = -100,
                                   reduction: str = "mean", label_smoothing: float = 0.0) -> torch.Tensor:
    logits = F.linear(hidden.reshape(-1, hidden.shape[-1]), weight, bias).float()
    total = F.cross_entropy(logits, labels.reshape(-1), ignore_index=ignore_index, reduction="sum",
                            label_smoothing=label_smoothing)
    if reduction == "sum":
        return total
    return total / (labels != ignore_index).sum().clamp(min=1)

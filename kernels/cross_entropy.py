"""Fused linear + cross-entropy over chunks of rows: the full (tokens x vocabulary) logits never exist.

For each chunk of rows, logits = hidden @ weight.T (+ bias) go through cuBLAS; one Triton program
per row finds the log-sum-exp in one pass over the vocabulary (online softmax) and, in a second
pass, overwrites that chunk's logits buffer with softmax - one_hot(label). The chunk's gradients for
the hidden states, weight and bias follow by two more matmuls, and the buffer is reused by the next
chunk. Gradients are therefore computed in the forward (as Liger-Kernel does); the backward only
scales them.

They are kept unscaled, and both the mean's 1/N and the incoming gradient are applied in fp32 in
the backward: stored already divided by N, fp16 logits round every non-target entry (about 1/V / N,
some 2e-9 for GPT-2 at 8k tokens) to zero, and the incoming gradient of fp16 training is a loss
scale of 2**16, one past fp16's largest value. The weight gradient accumulates in fp32.

The matmuls run in autocast's dtype when autocast is on (as eager code would), with the weight cast
once per call rather than once per chunk, and nothing in the forward waits for the device.

Label smoothing ε (PyTorch's definition: the target distribution is (1 - ε) one_hot + ε / V) makes a
row's loss lse - (1 - ε) z_label - (ε / V) Σ_k z_k and its logit gradient softmax - (1 - ε) one_hot - ε / V;
the sum of the logits is taken in the same first pass as the log-sum-exp.

Rows whose label is `ignore_index` contribute no loss and no gradient. With reduction="mean" the
sum is divided by the number of counted rows; when every row is ignored the loss is 0 (PyTorch's
F.cross_entropy gives NaN there, which would end a training run).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

BLOCK_V = 1024
#: Most memory one chunk's logits may take. Each chunk adds a V x H product into the weight gradient,
#: so fewer, larger chunks cost less traffic; 512 MiB is 2 chunks of GPT-2 and 4 of Llama-3 at 8k tokens.
LOGITS_BUDGET_BYTES = 512 * 2**20


@triton.jit
def _ce_loss_and_grad(Logits, stride, Labels, Loss, V, ignore_index, smoothing, BLOCK_V: tl.constexpr,
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
        d = d * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
        if SMOOTH:
            total += tl.sum(tl.where(cols < V, x, 0.0), axis=0)
    lse = m + tl.log(d)
    valid = label != ignore_index
    safe_label = tl.where(valid, label, 0)
    label_logit = tl.load(base + safe_label).to(tl.float32)
    if SMOOTH:
        row_loss = lse - (1.0 - smoothing) * label_logit - smoothing / V * total
    else:
        row_loss = lse - label_logit
    tl.store(Loss + row, tl.where(valid, row_loss, 0.0))
    keep = tl.where(valid, 1.0, 0.0)
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        mask = cols < V
        x = tl.load(base + cols, mask=mask, other=0.0).to(tl.float32)
        p = tl.exp(x - lse)
        if SMOOTH:
            grad = (tl.where(cols == safe_label, p - (1.0 - smoothing), p) - smoothing / V) * keep
        else:
            grad = tl.where(cols == safe_label, p - 1.0, p) * keep
        tl.store(base + cols, grad.to(Logits.dtype.element_ty), mask=mask)


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """autocast's dtype when it is on for this device, as eager matmuls would run; else the operands' dtype."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return torch.promote_types(hidden.dtype, weight.dtype)


def _chunk_rows(n_rows: int, vocab: int, itemsize: int) -> int:
    """Rows per chunk: as many as LOGITS_BUDGET_BYTES holds, spread evenly so no chunk is a sliver."""
    fit = max(1, LOGITS_BUDGET_BYTES // (vocab * itemsize))
    chunks = max(1, triton.cdiv(n_rows, fit))
    return max(1, triton.cdiv(n_rows, chunks))


def linear_cross_entropy_forward(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                                 bias: torch.Tensor | None, ignore_index: int, reduction: str,
                                 label_smoothing: float = 0.0):  # type: ignore[no-untyped-def]
    """Returns (loss, grad_hidden, grad_weight, grad_bias, scale).

    The gradients are those of the *sum* of the counted rows' losses; multiplied by `scale` (an fp32
    scalar on the device: 1 / rows counted for the mean, 1 for the sum) they are the loss's.
    `grad_hidden` is in the compute dtype, `grad_weight` and `grad_bias` in fp32.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction={reduction!r}; allowed: mean, sum")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing={label_smoothing!r}; allowed: 0.0 to 1.0")
    dtype = _compute_dtype(hidden, weight)
    device = hidden.device
    h, w = hidden.to(dtype), weight.to(dtype)
    b = bias.to(dtype) if bias is not None else None
    n_rows, width = h.shape
    vocab = w.shape[0]
    labels = labels.contiguous()
    # The count stays on the device: reading it on the host would wait for the whole forward so far.
    counted = (labels != ignore_index).sum()
    scale = (1.0 / counted.clamp(min=1).float() if reduction == "mean"
             else torch.ones((), dtype=torch.float32, device=device))
    row_loss = torch.zeros(n_rows, dtype=torch.float32, device=device)
    grad_hidden = torch.empty((n_rows, width), dtype=dtype, device=device)
    grad_weight = torch.zeros((vocab, width), dtype=torch.float32, device=device)
    grad_bias = torch.zeros(vocab, dtype=torch.float32, device=device) if bias is not None else None
    chunk = _chunk_rows(n_rows, vocab, dtype.itemsize)
    buffer = torch.empty((min(chunk, n_rows), vocab), dtype=dtype, device=device)
    # A half-precision chunk product cannot be added into the fp32 accumulator by addmm_ (one dtype
    # only): it goes through this one reused buffer instead of a fresh V x H pair per chunk.
    product = torch.empty_like(w) if dtype != torch.float32 else None
    with torch.autocast(device.type, enabled=False):
        for start in range(0, n_rows, chunk):
            end = min(start + chunk, n_rows)
            h_chunk = h[start:end]
            logits = buffer[:end - start]
            if b is None:
                torch.mm(h_chunk, w.t(), out=logits)
            else:
                torch.addmm(b, h_chunk, w.t(), out=logits)
            _ce_loss_and_grad[(end - start,)](logits, logits.stride(0), labels[start:end], row_loss[start:end],
                                              vocab, ignore_index, float(label_smoothing), BLOCK_V=BLOCK_V,
                                              SMOOTH=label_smoothing > 0)
            grad_logits = logits  # overwritten in place by the kernel
            torch.mm(grad_logits, w, out=grad_hidden[start:end])
            if product is None:
                grad_weight.addmm_(grad_logits.t(), h_chunk)
            else:
                torch.mm(grad_logits.t(), h_chunk, out=product)
                grad_weight += product
            if grad_bias is not None:
                grad_bias += grad_logits.sum(0, dtype=torch.float32)
    loss = row_loss.sum() * scale
    return loss, grad_hidden, grad_weight, grad_bias, scale


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, bias, ignore_index, reduction, label_smoothing):  # type: ignore[no-untyped-def]
        loss, gh, gw, gb, scale = linear_cross_entropy_forward(hidden, weight, labels, bias, ignore_index, reduction,
                                                               label_smoothing)
        ctx.save_for_backward(gh, gw, gb if gb is not None else gw, scale)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):  # type: ignore[no-untyped-def]
        gh, gw, gb, scale = ctx.saved_tensors
        hidden_dtype, weight_dtype, bias_dtype = ctx.dtypes
        # In fp32: grad_loss may be a loss scale of 2**16, which fp16 rounds to inf.
        factor = grad_loss.float() * scale
        return ((gh.float() * factor).to(hidden_dtype), (gw * factor).to(weight_dtype), None,
                (gb * factor).to(bias_dtype) if bias_dtype is not None else None, None, None, None)


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

"""Fused linear + cross-entropy over chunks of rows: the full (tokens x vocabulary) logits never exist.

For each chunk of rows, logits = hidden @ weight.T (+ bias) go through cuBLAS; one Triton program
per row finds the log-sum-exp in one pass over the vocabulary (online softmax) and, in a second
pass, overwrites that chunk's logits buffer with d(loss)/d(logits). The chunk's gradients for the
hidden states, weight and bias follow by two more matmuls, and the buffer is reused by the next
chunk. Gradients are therefore computed in the forward (as Liger-Kernel does) and only scaled by
the incoming gradient in the backward.

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


@triton.jit
def _ce_loss_and_grad(Logits, stride, Labels, Loss, V, ignore_index, scale, BLOCK_V: tl.constexpr):
    row = tl.program_id(0)
    base = Logits + row * stride
    label = tl.load(Labels + row)
    m = float("-inf")
    d = 0.0
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        x = tl.load(base + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        d = d * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    lse = m + tl.log(d)
    valid = label != ignore_index
    safe_label = tl.where(valid, label, 0)
    label_logit = tl.load(base + safe_label).to(tl.float32)
    tl.store(Loss + row, tl.where(valid, lse - label_logit, 0.0))
    row_scale = tl.where(valid, scale, 0.0)
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        mask = cols < V
        x = tl.load(base + cols, mask=mask, other=0.0).to(tl.float32)
        p = tl.exp(x - lse)
        grad = tl.where(cols == safe_label, p - 1.0, p) * row_scale
        tl.store(base + cols, grad.to(Logits.dtype.element_ty), mask=mask)


def _chunk_rows(n_rows: int, hidden: int, vocab: int) -> int:
    # A chunk's logits take about as much memory as the hidden states themselves.
    return max(1, triton.next_power_of_2(triton.cdiv(n_rows, triton.cdiv(vocab, hidden))))


def linear_cross_entropy_forward(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                                 bias: torch.Tensor | None, ignore_index: int, reduction: str
                                 ):  # type: ignore[no-untyped-def]
    """Returns (loss, grad_hidden, grad_weight, grad_bias) for a gradient of 1 on the loss."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction={reduction!r}; allowed: mean, sum")
    n_rows, h = hidden.shape
    vocab = weight.shape[0]
    labels = labels.contiguous()
    counted = int((labels != ignore_index).sum())
    scale = 1.0 / max(counted, 1) if reduction == "mean" else 1.0
    row_loss = torch.zeros(n_rows, dtype=torch.float32, device=hidden.device)
    grad_hidden = torch.empty_like(hidden)
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
    grad_bias = torch.zeros(vocab, dtype=torch.float32, device=weight.device) if bias is not None else None
    chunk = _chunk_rows(n_rows, h, vocab)
    for start in range(0, n_rows, chunk):
        end = min(start + chunk, n_rows)
        h_chunk = hidden[start:end]
        logits = h_chunk @ weight.t()
        if bias is not None:
            logits += bias
        _ce_loss_and_grad[(end - start,)](logits, logits.stride(0), labels[start:end], row_loss[start:end], vocab,
                                          ignore_index, scale, BLOCK_V=BLOCK_V)
        grad_logits = logits  # overwritten in place by the kernel
        grad_hidden[start:end] = grad_logits @ weight
        grad_weight += (grad_logits.t() @ h_chunk).float()
        if grad_bias is not None:
            grad_bias += grad_logits.float().sum(0)
    loss = row_loss.sum() * scale
    return (loss, grad_hidden, grad_weight.to(weight.dtype),
            grad_bias.to(bias.dtype) if grad_bias is not None else None)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, bias, ignore_index, reduction):  # type: ignore[no-untyped-def]
        loss, gh, gw, gb = linear_cross_entropy_forward(hidden, weight, labels, bias, ignore_index, reduction)
        ctx.save_for_backward(gh, gw, gb if gb is not None else gw)
        ctx.has_bias = bias is not None
        return loss

    @staticmethod
    def backward(ctx, grad_loss):  # type: ignore[no-untyped-def]
        gh, gw, gb = ctx.saved_tensors
        return gh * grad_loss.to(gh.dtype), gw * grad_loss.to(gw.dtype), None, \
            (gb * grad_loss.to(gb.dtype) if ctx.has_bias else None), None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         bias: torch.Tensor | None = None, *, ignore_index: int = -100,
                         reduction: str = "mean") -> torch.Tensor:
    """cross_entropy(hidden @ weight.T + bias, labels) without materialising the logits.

    `hidden` is (..., H) and `labels` (...); both are flattened over the leading dimensions.
    """
    return _LinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight, labels.reshape(-1), bias,
                                     ignore_index, reduction)


# --- plain PyTorch reference ---

def linear_cross_entropy_reference(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                                   bias: torch.Tensor | None = None, *, ignore_index: int = -100,
                                   reduction: str = "mean") -> torch.Tensor:
    logits = F.linear(hidden.reshape(-1, hidden.shape[-1]), weight, bias).float()
    total = F.cross_entropy(logits, labels.reshape(-1), ignore_index=ignore_index, reduction="sum")
    if reduction == "sum":
        return total
    return total / (labels != ignore_index).sum().clamp(min=1)

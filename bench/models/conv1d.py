"""transformers' Conv1D (GPT-2's projections: y = x @ W + b, with W stored as in x out) as the nn.Linear that
computes the same, for the code that only knows nn.Linear: torchao's FP8 conversion and DTensor's tensor-parallel
styles."""

from __future__ import annotations

import torch
import torch.nn as nn


def is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers")


def conv1d_as_linear(conv: nn.Module, order: torch.Tensor | None = None) -> nn.Linear:
    """The nn.Linear with `conv`'s values (its bias the same parameter), its output features optionally permuted
    by `order` (then with a bias of their own)."""
    weight = conv.weight.detach().t()
    bias = conv.bias
    if order is not None:
        weight = weight[order]
        bias = None if bias is None else nn.Parameter(bias.detach()[order], requires_grad=bias.requires_grad)
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(weight.contiguous(), requires_grad=conv.weight.requires_grad)
    if bias is not None:
        linear.bias = bias
    return linear

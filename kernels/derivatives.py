"""The fused kernels' backwards are first derivatives only.

A backward that runs its kernels cannot record a graph of them, so with `create_graph=True` (a gradient
penalty, a Hessian-vector product) its gradients would come back as constants and a second derivative
through them would silently lose its terms. torch's `once_differentiable` only objects when the incoming
gradient itself requires grad (not for `grad(f(x).sum(), x, create_graph=True)`), so the backward refuses
to run when autograd asks it for a graph at all.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch


def first_order_only(backward: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap an autograd.Function's backward: a RuntimeError under create_graph=True, else the backward."""

    @functools.wraps(backward)
    def wrapped(ctx: Any, *grads: Any) -> Any:
        # Inside a backward, grad mode is on exactly when the caller asked for a graph of it.
        if torch.is_grad_enabled():
            raise RuntimeError(f"{backward.__qualname__.split('.')[0].lstrip('_')}: lmbench's fused kernels have "
                               "first derivatives only; create_graph=True (a second derivative) needs the eager ops")
        return backward(ctx, *grads)

    return wrapped

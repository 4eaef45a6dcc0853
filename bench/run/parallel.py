"""Data parallelism: how a built model is wrapped for each value of the `parallel` axis.

Wrapping happens after the precision cast and before the optimizer is created (FSDP replaces the
parameters with sharded ones, which the optimizer must see).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn as nn

from lmbench.models.registry import transformer_blocks
from lmbench.plan.config import Config


def _none(model: nn.Module, *, config: Config, device: torch.device) -> nn.Module:
    return model


def _dp(model: nn.Module, *, config: Config, device: torch.device) -> nn.Module:
    # Replicates over every visible GPU each forward and splits the batch along dim 0.
    return nn.DataParallel(model)


def _ddp(model: nn.Module, *, config: Config, device: torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   bucket_cap_mb=config.bucket_cap_mb,
                                   gradient_as_bucket_view=config.gradient_as_bucket_view,
                                   static_graph=config.static_graph)


def _fsdp(model: nn.Module, *, config: Config, device: torch.device) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    for block in transformer_blocks(model):
        fully_shard(block)
    fully_shard(model)
    return model


WRAPPERS: dict[str, Callable[..., nn.Module]] = {
    "none": _none,
    "dp": _dp,
    "ddp": _ddp,
    "fsdp": _fsdp,
}


def gradient_sync(model: nn.Module, parallel: str, sync: bool) -> contextlib.AbstractContextManager:
    """Context for one micro-batch: skip the gradient allreduce (sync=False) on all but the last one
    of an accumulation, so communication happens once per optimizer step, not once per micro-batch."""
    if sync or parallel not in ("ddp", "fsdp"):
        return contextlib.nullcontext()
    if parallel == "ddp":
        return model.no_sync()
    return _fsdp_no_sync(model)


@contextlib.contextmanager
def _fsdp_no_sync(model: nn.Module):  # type: ignore[no-untyped-def]
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)

"""How a built model is wrapped or sharded for each value of the `parallel` axis.

Wrapping happens after the precision cast and before the optimizer is created (FSDP and tensor
parallelism replace the parameters with sharded ones, which the optimizer must see). Pipeline
parallelism cuts the model into stages instead (lmbench.run.pipeline); here it is left whole.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from lmbench.models.registry import MODELS, transformer_blocks
from lmbench.plan.config import Config
from lmbench.plan.layout import layout


def _none(model: nn.Module, *, config: Config, device: torch.device) -> nn.Module:
    return model


class _UnderAutocast:
    """A replica called under its caller's autocast dtype (DataParallel's replica threads re-enter autocast
    without one)."""

    def __init__(self, replica: nn.Module, device_type: str, dtype: torch.dtype) -> None:
        self.replica, self.device_type, self.dtype = replica, device_type, dtype

    def __call__(self, *args: object, **kwargs: object) -> object:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.replica(*args, **kwargs)


class DataParallel(nn.DataParallel):
    """nn.DataParallel whose replicas run under the autocast dtype of the forward's caller. torch's parallel_apply
    re-enters autocast in each replica's thread with `enabled` only, and the dtype is thread-local: on two or more
    GPUs an amp-bf16 row (and FP8's bf16 casts) ran fp16 autocast in the replicas, without loss scaling (a
    reviewer's finding, 2026-11-28; torch's own pytorch#125186)."""

    device_type = "cuda"

    def parallel_apply(self, replicas: Sequence[nn.Module], inputs: Sequence[object], kwargs: object) -> list[object]:
        if torch.is_autocast_enabled(self.device_type):
            dtype = torch.get_autocast_dtype(self.device_type)
            replicas = [_UnderAutocast(replica, self.device_type, dtype) for replica in replicas]
        return super().parallel_apply(replicas, inputs, kwargs)


def _dp(model: nn.Module, *, config: Config, device: torch.device) -> nn.Module:
    # Replicates over every visible GPU each forward and splits the batch along dim 0.
    return DataParallel(model)


def _ddp(model: nn.Module, *, config: Config, device: torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   bucket_cap_mb=config.bucket_cap_mb,
                                   gradient_as_bucket_view=config.gradient_as_bucket_view,
                                   static_graph=config.static_graph)


def _fsdp(model: nn.Module, *, config: Config, device: torch.device, mesh: object = None) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    for block in transformer_blocks(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _tp(model: nn.Module, *, config: Config, device: torch.device) -> nn.Module:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from lmbench.run.tensor_parallel import parallelize

    mesh = init_device_mesh(device.type, (dist.get_world_size(),), mesh_dim_names=("tp",))
    parallelize(model, MODELS[config.model], mesh["tp"])
    return model


def _fsdp_tp(model: nn.Module, *, config: Config, device: torch.device) -> nn.Module:
    """Tensor parallel inside each group of tp_degree consecutive ranks (the fast links of a node), FSDP across
    the groups: torchtitan's 2-D layout, built on the same DeviceMesh."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from lmbench.run.tensor_parallel import parallelize

    world = dist.get_world_size()
    tp = layout(config.replace(nproc=world)).tp
    mesh = init_device_mesh(device.type, (world // tp, tp), mesh_dim_names=("dp", "tp"))
    parallelize(model, MODELS[config.model], mesh["tp"])
    return _fsdp(model, config=config, device=device, mesh=mesh["dp"])


def _fsdp_pp(model: nn.Module, *, config: Config, device: torch.device, mesh: object) -> nn.Module:
    """Each of this rank's pipeline stages (a RankStages) sharded by FSDP over the ranks that hold the same stages
    in the other pipelines (`mesh`, the 2-D mesh's dp dimension): one unit per block, then the stage. Parameters
    stay gathered from a micro-batch's forward to its backward (reshard_after_forward=False, as torchtitan runs
    FSDP under a pipeline): resharding would gather every block again for each micro-batch's backward."""
    from torch.distributed.fsdp import fully_shard

    for stage in model:
        for block in stage.blocks():
            fully_shard(block, mesh=mesh, reshard_after_forward=False)
        fully_shard(stage, mesh=mesh, reshard_after_forward=False)
    return model


WRAPPERS: dict[str, Callable[..., nn.Module]] = {
    "none": _none,
    "dp": _dp,
    "ddp": _ddp,
    "fsdp": _fsdp,
    "tp": _tp,
    "pp": _none,
    "fsdp+tp": _fsdp_tp,
    "fsdp+pp": _fsdp_pp,
}


def gradient_sync(model: nn.Module, parallel: str, sync: bool) -> contextlib.AbstractContextManager:
    """Context for one micro-batch: skip the gradient allreduce (sync=False) on all but the last one
    of an accumulation, so communication happens once per optimizer step, not once per micro-batch."""
    if sync or parallel not in ("ddp", "fsdp", "fsdp+tp"):
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

"""Multi-process runs under torchrun: rank bookkeeping, the process group, and ONE record from all ranks.

Every rank measures its own window; rank 0 gathers the per-rank measurements and aggregates them:
throughput is global (all ranks), a global step lasts until the last rank finished it (slowest_steps), memory is
reported per rank and as the maximum.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
from dataclasses import dataclass
from typing import Any

from lmbench.errors import JobMismatchError
from lmbench.measure import metrics
from lmbench.measure.telemetry import combine as combine_telemetry


@dataclass(frozen=True, kw_only=True)
class RankInfo:
    """Where this process sits in the job, from the environment torchrun sets."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int

    @property
    def nnodes(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))

    @classmethod
    def from_env(cls) -> RankInfo | None:
        """None when this process was not started by torchrun."""
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            return None
        world = int(os.environ["WORLD_SIZE"])
        return cls(rank=int(os.environ["RANK"]), local_rank=int(os.environ.get("LOCAL_RANK", 0)), world_size=world,
                   local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world)))


def init(info: RankInfo, device: Any, *, timeout_s: float) -> str:
    """Join the process group (NCCL on CUDA, gloo on CPU); returns the backend name.

    A hung collective (a dead or missing peer) is ended by the parent's deadline, timeout_s from the job's launch,
    which dumps every rank's stacks first (lmbench.run.stacks: the record says where each rank waited). The group's
    timeout is as long and starts later, so it never comes first: a shorter one would end a collective that waits
    on a peer's long first compilation. It stops a rank whose parent's watch is gone.
    """
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend, timeout=dt.timedelta(seconds=timeout_s), **kwargs)
    return backend


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def sum_pair(values: tuple[Any, Any]) -> tuple[Any, Any]:
    """Two scalar tensors summed over every rank (a held-out loss's sum and the positions it counted)."""
    import torch
    import torch.distributed as dist

    total, count = values
    packed = torch.stack([total.double(), count.double()])
    dist.all_reduce(packed)
    return packed[0], packed[1]


#: What a rank keeps referenced until its process ends with os._exit (the worker's run_job): the tensors of its
#: collectives and its training step (model, DDP reducer, process group). Tearing a gloo group down joins its
#: run-loop threads while holding the GIL; a run-loop thread that drops the last reference to a tensor Python made
#: needs the GIL to free it: the worker hung for good, twice in CI (torch 2.13; all_gather_object's temporaries,
#: then, with destroy_process_group, DDP's reducer freeing the group as the model went out of scope).
_HELD: list[Any] = []


def agree_on(job: str) -> None:
    """Raise JobMismatchError on every rank unless all ranks run `job` (a configuration's key).

    The nodes of a multi-node run meet job by job on one endpoint: a node that skipped a configuration another ran
    (a package, a GPU kind on one node only) joins the others' next job with its own, and the group trained two
    configurations as one, its record under one key. A digest of each rank's key, gathered, says so at once."""
    import hashlib

    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    mine = torch.frombuffer(bytearray(hashlib.sha256(job.encode()).digest()), dtype=torch.uint8).to(device)
    every = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    _HELD.extend([mine, *every])
    apart = [rank for rank, theirs in enumerate(every) if not torch.equal(theirs, mine)]
    if apart:
        raise JobMismatchError(f"rank{'s' if len(apart) > 1 else ''} {', '.join(map(str, apart))} of this torchrun "
                               f"job run{'' if len(apart) > 1 else 's'} another configuration "
                               f"than {job} (the nodes are out of step: one skipped a configuration another ran; "
                               "give every node the same software and GPUs, `lmbench env` on each)")


def gather(local: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Every rank's `local` dict on rank 0 (None elsewhere); a plain one-element list without a group.

    Pickled into byte tensors this module keeps (`_HELD`) until the process ends, not all_gather_object's.
    """
    import pickle

    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return [local]
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    world = dist.get_world_size()
    payload = torch.frombuffer(bytearray(pickle.dumps(local)), dtype=torch.uint8)
    size = torch.tensor([payload.numel()], dtype=torch.int64, device=device)
    sizes = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    lengths = [int(s.item()) for s in sizes]
    mine = torch.zeros(max(lengths), dtype=torch.uint8, device=device)
    mine[:payload.numel()] = payload.to(device)
    slots = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(slots, mine)
    _HELD.extend([size, *sizes, mine, *slots])
    # NCCL's all_gather returns before the bytes have moved; every rank waits for the whole exchange here, since
    # ranks other than 0 end their process (os._exit) right after: one leaving early would starve rank 0.
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dist.barrier()
    if dist.get_rank() != 0:
        return None
    return [pickle.loads(slot[:n].cpu().numpy().tobytes()) for slot, n in zip(slots, lengths)]


def finish(*keep: Any) -> None:
    """End this rank's collectives without tearing the group down: `keep` (the training step) stays referenced, and
    the worker ends the process with os._exit once its result is written, so nothing is destroyed (see _HELD).
    Without a process group there is nothing to protect and nothing is kept."""
    import torch.distributed as dist

    if dist.is_initialized():
        _HELD.extend(keep)


def param_checksum(model: Any) -> float | None:
    """Sum in float64 of the parameters this rank holds whole: equal on all ranks exactly when data parallelism
    kept them in sync. A sharded parameter (FSDP's, a tensor-parallel shard) is left out: its shards differ by
    design, and gathered whole it would read the same on every rank whatever the gradients did, a check that
    cannot fail. None when every parameter is sharded (FSDP): there is nothing to compare."""
    import torch

    total, counted = 0.0, False
    with torch.no_grad():
        for p in model.parameters():
            if hasattr(p, "placements"):  # a DTensor: whole on this rank only when replicated on every mesh dim
                if not all(placement.is_replicate() for placement in p.placements):
                    continue
                p = p.to_local()
            total += float(p.double().sum())
            counted = True
    return total if counted else None


def aggregate(per_rank: list[dict[str, Any]], *, tokens_per_step: int, samples_per_step: int, steps: int,
              replicas: int | None = None, devices_per_replica: int = 1) -> dict[str, Any]:
    """One set of metrics from every rank's measurements (a single process is a world of one).

    `tokens_per_step` and `samples_per_step` are one data-parallel replica's; `replicas` of them train side by
    side (every rank, by default; one under tensor or pipeline parallelism, whose ranks share a batch), each on
    `devices_per_replica` devices (the GPUs of nn.DataParallel's one process count as replicas of one device).
    """
    world = len(per_rank)
    replicas = world if replicas is None else replicas
    # The job's window lasts as long as its slowest rank's.
    window_s = max((r["window_s"] for r in per_rank if r.get("window_s")), default=None)
    result = metrics.throughput(step_times_s=slowest_steps(per_rank), tokens_per_step=tokens_per_step,
                                samples_per_step=samples_per_step, world_size=replicas,
                                devices_per_rank=devices_per_replica, window_s=window_s)
    for key in ("mem_peak_allocated_bytes", "mem_peak_reserved_bytes", "mem_host_peak_growth_bytes",
                "mem_host_training_growth_bytes"):
        values = [r.get(key) for r in per_rank]
        result[key] = None if any(v is None for v in values) else max(values)
        if world > 1:
            result[f"{key}_per_rank"] = values
    result.update(combine_telemetry([r["telemetry"] for r in per_rank], [r["power_trace"] for r in per_rank],
                                    tokens=tokens_per_step * steps * replicas))
    result["world_size"] = world
    if world > 1:
        checksums = [r["param_checksum"] for r in per_rank]
        if all(c is not None for c in checksums):
            result["param_checksum_per_rank"] = checksums
            result["params_in_sync"] = len(set(checksums)) == 1
        result["step_time_median_s_per_rank"] = [metrics.throughput(
            step_times_s=r["step_times_s"], tokens_per_step=1, samples_per_step=1)["step_time_median_s"]
            for r in per_rank]
    return result


def pipeline_idle(per_rank: list[dict[str, Any]]) -> dict[str, Any]:
    """Measured bubble of a pipeline: each rank's idle share of the job's window (1 - time in its own forward,
    backward, loss and update / window), and their mean. Idle is the bubble plus the transfers a stage waited for.
    The job's window, the longest rank's: a rank's own left out the last stage's cool-down on the others' clocks."""
    window_s = max(r["window_s"] for r in per_rank)
    idle = [max(0.0, 1.0 - r["pp_busy_s"] / window_s) for r in per_rank]
    return {"pp_idle_fraction_per_stage": idle, "pp_bubble_fraction": sum(idle) / len(idle),
            "pp_busy_s_per_stage": [r["pp_busy_s"] for r in per_rank]}


def slowest_steps(per_rank: list[dict[str, Any]]) -> list[float]:
    """Each global step's time: from the moment the last rank finished the step before to the moment the last rank
    finished this one, each rank's step ends taken as the running sum of its step times from the window's start (a
    barrier opens it; the steps run back to back, the host's few microseconds between two left out). The slowest
    rank's time of each step instead would count a stall twice: on the rank that stalled at the end of step i
    (its optimizer, a collection) and again on the others, which wait for it in step i + 1's first collective."""
    if len(per_rank) == 1:
        return list(per_rank[0]["step_times_s"])
    ends = [max(values) for values in zip(*(itertools.accumulate(r["step_times_s"]) for r in per_rank))]
    return [end - start for start, end in zip([0.0, *ends], ends)]


def mean_losses(per_rank: list[dict[str, Any]]) -> list[float]:
    """The global loss of each step: the mean over the ranks that have one (each data-parallel rank trains on its
    own batches; the ranks of a tensor-parallel group share one loss; of a pipeline only the last stage has it)."""
    owned = [r["losses"] for r in per_rank if r["losses"] is not None]
    return [sum(values) / len(values) for values in zip(*owned)]

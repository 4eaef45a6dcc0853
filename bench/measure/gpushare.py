"""Other processes on a measured GPU: a CUDA context another process held on the card during the window.

Host contention is measured (lmbench.measure.hostload); a second job on the same GPU would share its SMs and
memory bandwidth and no figure would say so. NVML lists the processes that hold a compute context on a device
(nvmlDeviceGetComputeRunningProcesses); lmbench reads the list as the window opens and as it closes. The job's own
processes are not others: this one, its ancestors (the lmbench CLI, a pytest or notebook that drives it and may
hold a context of its own), its descendants (inductor's autotuning subprocesses), and under torchrun the other
ranks (the same parent). What NVML can show depends on where lmbench runs: in the driver's PID namespace every
process; in a container, drivers since about 560 list only the container's own processes (others are dropped, not
renamed), so there a count of 0 proves nothing and is recorded as unknown; older drivers gave the host's pids,
which are counted, not named, one of them taken for this process's (it holds a context). Under torchrun the other
ranks may hold contexts on the card too, and nothing tells their host pids from another job's: there the count is
unknown. A list without a single process is NVML not seeing processes at all (this one holds a context on every
measured GPU), so it too is unknown, not "no other process". Under MPS the list holds the MPS server, not its
clients.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lmbench.measure import procstat


def _parent(pid: int) -> int | None:
    """The parent of `pid` in this PID namespace, or None (gone, or not visible here)."""
    parent = procstat.field(pid, procstat.PARENT)
    return int(parent) if parent is not None and parent.isdigit() else None


def _ancestors(pid: int) -> set[int]:
    found: set[int] = set()
    parent = _parent(pid)
    while parent and parent not in found:
        found.add(parent)
        parent = _parent(parent)
    return found


def nested_namespace() -> bool:
    """Whether this process runs in a PID namespace below the driver's (a container): /proc/self/status's NSpid
    then has more than one entry."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return len(line.split()) > 2
    except OSError:
        pass
    return False


def others(seen: Iterable[int], *, own: int | None = None, parent: int | None = None,
           torchrun: bool | None = None) -> tuple[int | None, list[int] | None]:
    """(how many processes other than this job held a context, None where that cannot be told; their pids, None
    when NVML's pids are of another PID namespace) among `seen`, every pid NVML listed at the window's edges."""
    own = os.getpid() if own is None else own
    parent = os.getppid() if parent is None else parent
    torchrun = "TORCHELASTIC_RUN_ID" in os.environ if torchrun is None else torchrun
    pids = sorted(set(seen))
    if not pids:
        return None, None  # NVML sees no process, not even this one
    if own not in pids:
        # NVML's pids are the host's: this process is among them under another number. A sibling rank's context on
        # the card (each rank's on cuda:0, say) would read as another job's: `len(pids) - 1` counted them.
        if torchrun and len(pids) > 1:
            return None, None
        return len(pids) - 1, None
    job = {own} | _ancestors(own)
    foreign = []
    for pid in pids:
        if pid in job or own in _ancestors(pid) or (torchrun and _parent(pid) == parent):
            continue
        foreign.append(pid)
    return len(foreign), foreign


def fields(edges: list[list[int] | None]) -> dict[str, Any]:
    """The record's fields from the pid lists read at the window's edges (None: NVML could not tell; empty: it does
    not see processes)."""
    # An empty list is NVML not seeing processes: this one held a context through the window (max(0, -1) read 0).
    lists = [pids for pids in edges if pids]
    if not lists:
        return {"gpu_other_processes": None, "gpu_other_pids": None}
    count, named = others(pid for pids in lists for pid in pids)
    if count is None or (count == 0 and nested_namespace()):
        # A container's NVML drops the processes it cannot see: none seen is not none there.
        return {"gpu_other_processes": None, "gpu_other_pids": None}
    return {"gpu_other_processes": count, "gpu_other_pids": named}


def merged(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Several GPUs' fields in one record: the other processes on any of them (counted over the GPUs that could
    tell), every pid named."""
    told = [s for s in summaries if s.get("gpu_other_processes") is not None]
    if not told:
        return {"gpu_other_processes": None, "gpu_other_pids": None}
    named = [s.get("gpu_other_pids") for s in told]
    if any(n is None for n in named):
        return {"gpu_other_processes": max(s["gpu_other_processes"] for s in told), "gpu_other_pids": None}
    pids = sorted({pid for n in named for pid in n})
    return {"gpu_other_processes": len(pids), "gpu_other_pids": pids}


def sharing_warning(metrics: dict[str, Any]) -> str | None:
    """A record's warning when another process held a CUDA context on a measured GPU during the window."""
    count = metrics.get("gpu_other_processes")
    if not count:
        return None
    pids = metrics.get("gpu_other_pids")
    which = f" (pids {', '.join(map(str, pids))})" if pids else " (NVML's pids are of another PID namespace)"
    return (f"{count} other process{'es' if count > 1 else ''} held a CUDA context on a measured GPU during the "
            f"window{which}: any work of theirs shared its SMs and memory bandwidth with this measurement")

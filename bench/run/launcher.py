"""The command line that starts a worker: a plain interpreter, or torchrun for ddp, fsdp and the
model-parallel modes; and the sweep that ends whatever a job started once the job is over.

Multi-node runs use torchrun's static rendezvous (master address, port, node rank), so global
rank 0, the rank that writes the record, is on node 0, whose parent records it.

A signal to the worker's process group does not reach everything a job started: torchrun starts each
rank in a session of its own, and a rank's children are in the rank's. A timed-out ddp job whose rank
ignored SIGTERM left that rank and its child running with parent 1 after the suite (a reviewer). So the
process that runs jobs adopts its orphaned descendants (a child subreaper, Linux), and after each job
kills every descendant that was not there before it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from lmbench.errors import UsageError
from lmbench.measure import procstat
from lmbench.plan.config import Config
from lmbench.plan.layout import DISTRIBUTED


@dataclass(frozen=True, kw_only=True)
class Launch:
    """How this node takes part in distributed jobs."""

    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None
    """HOST:PORT of node 0, where torchrun's store listens (multi-node only)."""

    def __post_init__(self) -> None:
        if self.nnodes < 1:
            raise UsageError(f"--nnodes {self.nnodes}: must be at least 1")
        if not 0 <= self.node_rank < self.nnodes:
            raise UsageError(f"--node-rank {self.node_rank}: must be in 0..{self.nnodes - 1}")
        if self.nnodes > 1 and self.rdzv_endpoint is None:
            raise UsageError(f"--nnodes {self.nnodes} needs --rdzv-endpoint HOST:PORT, node 0's address and a free "
                             "port")
        if self.rdzv_endpoint is not None:
            host, _, port = self.rdzv_endpoint.rpartition(":")
            if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise UsageError(f"--rdzv-endpoint {self.rdzv_endpoint!r}: expected HOST:PORT of node 0, with PORT in "
                                 "1..65535")

    @property
    def records(self) -> bool:
        """Only node 0 writes results; the others just take part in distributed jobs."""
        return self.node_rank == 0

    def runs(self, config: Config) -> bool:
        """Node 0 runs everything; other nodes only the distributed jobs they are a part of."""
        return self.records or config.parallel in DISTRIBUTED


def worker_command(config: Config, job_path: Path, result_path: Path, launch: Launch) -> list[str]:
    worker = ["-m", "lmbench.run.worker", str(job_path), str(result_path)]
    if config.parallel not in DISTRIBUTED:
        return [sys.executable, *worker]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(config.nproc), "--max-restarts", "0"]
    if launch.nnodes == 1:
        cmd.append("--standalone")
    else:
        host, _, port = launch.rdzv_endpoint.rpartition(":")
        cmd += ["--nnodes", str(launch.nnodes), "--node-rank", str(launch.node_rank), "--master-addr", host,
                "--master-port", port]
    return cmd + worker


#: prctl(2)'s request to become the child subreaper of this process's descendants.
_PR_SET_CHILD_SUBREAPER = 36
#: Walks of the process tree in one sweep: a process may start another between a walk and its kill.
SWEEP_ROUNDS = 5
#: Seconds a sweep waits for what it killed to end (SIGKILL takes effect at once unless stuck in the kernel).
SWEEP_WAIT_S = 2.0

#: /proc states of a process that has ended (a zombie waits for its parent to collect its status).
_ENDED = ("Z", "X")

Process = tuple[int, str]
"""A process as (pid, start time in clock ticks since boot): a pid alone may have been reused."""


def adopt_orphans() -> bool:
    """Make this process the child subreaper of its descendants: one whose parent ends is reparented here rather
    than to init (or the container's first process), so it stays findable by `descendants` until swept. False
    where the platform has no such request (not Linux): the sweep then finds only what is still attached."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _tree() -> dict[int, list[tuple[Process, str]]]:
    """Each visible process's children as ((pid, start ticks), state), by parent pid; empty without /proc."""
    children: dict[int, list[tuple[Process, str]]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return children
    for name in names:
        found = procstat.fields(name) if name.isdigit() else None
        if found is None or len(found) <= procstat.START_TICKS or not found[procstat.PARENT].isdigit():
            continue
        children.setdefault(int(found[procstat.PARENT]), []).append(((int(name), found[procstat.START_TICKS]),
                                                                      found[procstat.STATE]))
    return children


def _below(root: int) -> dict[Process, str]:
    """The processes below `root` in the tree, with their states."""
    children, found, todo = _tree(), {}, [root]
    while todo:
        for process, state in children.get(todo.pop(), ()):
            if process not in found:
                found[process] = state
                todo.append(process[0])
    return found


def descendants() -> set[Process]:
    """Every process below this one: what a job's sweep leaves alone (`sweep`'s `before`)."""
    return set(_below(os.getpid()))


def sweep(before: Collection[Process]) -> list[int]:
    """SIGKILL every process below this one that `before` does not hold (a job's leftovers: a rank that ignored
    SIGTERM, a rank's child, a compile worker), and reap those that end as this process's children (orphans it
    adopted). Returns the pids that were alive when killed. A process stuck in the kernel is left, rather than hang
    the suite; so is one that another user owns."""
    me, killed, tried = os.getpid(), [], set()
    for _ in range(SWEEP_ROUNDS):
        strays = {process: state for process, state in _below(me).items() if process not in before}
        _reap(strays)
        live = [process for process, state in strays.items() if state not in _ENDED and process not in tried]
        if not live:
            break
        tried.update(live)
        killed += [process[0] for process in live if _kill(process)]
        deadline = time.monotonic() + SWEEP_WAIT_S
        while live and time.monotonic() < deadline:
            time.sleep(0.02)
            below = _below(me)
            live = [process for process in live if below.get(process, "Z") not in _ENDED]
    _reap(set(_below(me)) - set(before))
    return killed


def _kill(process: Process) -> bool:
    """SIGKILL `process` if that pid is still the process that was found (its start time), else nothing."""
    pid, start = process
    if procstat.field(pid, procstat.START_TICKS) != start:
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _reap(processes: Collection[Process]) -> None:
    """Collect the exit status of those that ended as this process's children (zombies it adopted): a run of many
    jobs must not fill the process table with them."""
    me = str(os.getpid())
    for pid, start in processes:
        found = procstat.fields(pid)
        if found is None or (found[procstat.STATE], found[procstat.PARENT], found[procstat.START_TICKS]) != (
                "Z", me, start):
            continue
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass

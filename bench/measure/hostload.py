"""Contention on the host: CPU time that others took, on the job's CPUs, during a measured window.

A busy host slows a CPU run directly and a GPU run wherever its steps wait on the host (kernel launches,
the optimizer's Python, data). Linux's /proc/stat counts each CPU's busy time since boot (user, nice,
system, irq, softirq, steal; USER_HZ ticks); os.times() counts this process's own (all its threads).
Over a window, (busy time of the job's CPUs − the job's own CPU time) ÷ wall time is the number of cores
others kept busy: `host_other_cpu_cores`. The job's CPUs are its affinity mask (a cpuset: docker
--cpuset-cpus, Kubernetes, Slurm; the union of its threads' masks), the union of its ranks' masks on one
host: work on CPUs outside it cannot slow the job, and a 64-CPU node's other jobs read as 32 busy cores of
the job's 8 when the host-wide line was counted. A CFS quota without a cpuset (docker --cpus) leaves the
mask at every CPU of the host, so the figure then counts the whole host's other work. Where /proc/stat has
no per-CPU lines, or they do not name the mask's CPUs (lxcfs renumbers a container's), the host-wide line is
counted with the host's CPU count.

Ranks of one job on one host are summed as "own", so a sibling rank is not contention. Steal time (a virtual
machine's CPU taken by the hypervisor) is busy time the job could not use: it counts, and is kept apart
(`host_steal_cpu_cores`) so the warning can name the hypervisor. The span is the timed window's: it opens
with the window and pauses with it (evaluations). The tick granularity (10 ms) makes short windows coarse;
the figure is a warning light, not a measurement of the benchmark.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_STAT = Path("/proc/stat")
#: This process's threads, each with its own affinity mask.
_TASKS = Path("/proc/self/task")
#: Fields of /proc/stat's cpu lines that are busy time (after user: nice, system, idle, iowait, irq, softirq,
#: steal; guest time is already inside user).
_BUSY = (0, 1, 2, 5, 6, 7)
_STEAL = 7
#: The host-wide line's name: counted where the per-CPU lines cannot be.
_HOST_LINE = "cpu"
#: From this share of the other cores, steal is named in the warning and note as the hypervisor's part.
STEAL_SHARE_NAMED = 0.25


def cpu_ticks() -> dict[str, tuple[int, int]] | None:
    """Busy and steal ticks since boot of each cpu line of /proc/stat ("cpu", "cpu0", ...); None without it."""
    try:
        text = _STAT.read_text()
    except OSError:
        return None
    lines = {}
    for line in text.splitlines():
        fields = line.split()
        if not fields or not fields[0].startswith(_HOST_LINE):
            continue
        ticks = [int(v) for v in fields[1:]]
        lines[fields[0]] = (sum(ticks[i] for i in _BUSY if i < len(ticks)),
                            ticks[_STEAL] if _STEAL < len(ticks) else 0)
    return lines if _HOST_LINE in lines else None


def counted_lines(ticks: dict[str, tuple[int, int]], cpus: Iterable[int] | None) -> list[str]:
    """The lines that count `cpus`: theirs where /proc/stat has each, else the host-wide line."""
    names = [f"cpu{n}" for n in sorted(cpus or ())]
    return names if names and all(name in ticks for name in names) else [_HOST_LINE]


def host_cpus(ticks: dict[str, tuple[int, int]]) -> int | None:
    """CPUs the host-wide line sums: its per-CPU lines, else the host's count."""
    return sum(1 for name in ticks if name != _HOST_LINE) or os.cpu_count()


def cpu_list(text: str) -> set[int]:
    """The CPUs of a kernel CPU list ("0-3,8,10-11", as /proc's Cpus_allowed_list and cpuset.cpus write them)."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if part.strip():
            first, _, last = part.strip().partition("-")
            cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def affinity() -> set[int] | None:
    """The CPUs this process may run on: the union of its threads' affinity masks (/proc/self/task/*/status,
    Cpus_allowed_list), else the calling thread's (os.sched_getaffinity); None where the platform cannot say.

    The calling thread's mask alone is not the process's: OpenMP's binding (OMP_PROC_BIND=true OMP_PLACES=cores)
    pins the main thread to one core and each intra-op thread to another, and a record said host_usable_cores 1
    with 2 torch threads, while a busy loop on the second core went uncounted (a reviewer)."""
    union: set[int] = set()
    try:
        tasks = list(_TASKS.iterdir())
    except OSError:
        tasks = []
    for task in tasks:
        try:
            status = (task / "status").read_text()
        except OSError:
            continue  # a thread that ended meanwhile
        for line in status.splitlines():
            if line.startswith("Cpus_allowed_list:"):
                with contextlib.suppress(ValueError):
                    union |= cpu_list(line.partition(":")[2])
    if union:
        return union
    return set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


class HostLoad:
    """The busy and steal time of this process's CPUs, its own CPU time and the wall clock over a span, with pauses
    (`window()`, `paused()`; or `start()` and `stop()`)."""

    def __init__(self, cpus: set[int] | None = None) -> None:
        self._cpus = cpus if cpus is not None else affinity()
        self._lines: list[str] = []
        self._host_cpus: int | None = None
        self._mark: tuple[dict[str, tuple[int, int]], float, float] | None = None
        self._busy: dict[str, float] = {}
        self._steal: dict[str, float] = {}
        self._own_s = self._wall_s = 0.0
        self._failed = False
        self.span: dict[str, Any] | None = None

    def start(self) -> None:
        ticks = cpu_ticks()
        self._failed = ticks is None
        if ticks is not None:
            self._lines = counted_lines(ticks, self._cpus)
            self._host_cpus = host_cpus(ticks) if self._lines == [_HOST_LINE] else None
            self._busy = dict.fromkeys(self._lines, 0.0)
            self._steal = dict.fromkeys(self._lines, 0.0)
        self._own_s = self._wall_s = 0.0
        self._resume(ticks)

    def _resume(self, ticks: dict[str, tuple[int, int]] | None = None) -> None:
        self._mark = (ticks or cpu_ticks() or {}, own_cpu_s(), time.perf_counter())

    def _pause(self) -> None:
        """Add the span since the mark to the totals."""
        if self._mark is None:
            return
        (before, own, wall), self._mark = self._mark, None
        after = cpu_ticks()
        if after is None or any(name not in before or name not in after for name in self._lines):
            self._failed = True
            return
        tick_s = 1 / os.sysconf("SC_CLK_TCK")
        for name in self._lines:
            self._busy[name] += (after[name][0] - before[name][0]) * tick_s
            self._steal[name] += (after[name][1] - before[name][1]) * tick_s
        self._own_s += own_cpu_s() - own
        self._wall_s += time.perf_counter() - wall

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Leave the block out of the span (a held-out evaluation, as the step timer does)."""
        self._pause()
        try:
            yield
        finally:
            self._resume()

    @contextlib.contextmanager
    def window(self) -> Iterator[HostLoad]:
        """The span of the block; `span` holds it after."""
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def stop(self) -> dict[str, Any] | None:
        """This process's share of the span: {host, busy_s, steal_s (per counted /proc/stat line), host_cpus (the CPUs
        the host-wide line sums, where it was counted), own_s, wall_s}; None without /proc/stat."""
        self._pause()
        if self._failed or not self._lines:
            self.span = None
            return None
        self.span = {"host": socket.gethostname(), "busy_s": dict(self._busy), "steal_s": dict(self._steal),
                     "host_cpus": self._host_cpus, "own_s": self._own_s, "wall_s": self._wall_s}
        return self.span


@dataclass(frozen=True, kw_only=True)
class JobLoad:
    """The worst host of a job over a span."""

    other_cores: float | None
    """Cores others (processes, or the hypervisor's steal) kept busy among the job's CPUs; None where /proc/stat's
    counters did not advance (`unknown` says so)."""
    steal_cores: float | None
    """The part of other_cores that was steal."""
    usable_cores: int | None
    """The CPUs counted: the union of the host's ranks' masks, or the host's count where its line was counted."""
    unknown: str | None = None
    """Why other_cores is None, for the record's warnings."""


def _union(per_rank: list[dict[str, float]]) -> dict[str, float]:
    """Each line's largest figure over the ranks that counted it (ranks read it a moment apart)."""
    union: dict[str, float] = {}
    for lines in per_rank:
        for name, seconds in lines.items():
            union[name] = max(union.get(name, seconds), seconds)
    return union


def _host_load(ranks: list[dict[str, Any]]) -> JobLoad | None:
    wall = max(s["wall_s"] for s in ranks)
    if wall <= 0:
        return None
    # A rank that counted the host-wide line saw every CPU: per-CPU lines beside it would count some twice.
    whole = [s for s in ranks if _HOST_LINE in s["busy_s"]]
    counted = whole or ranks
    busy, steal = _union([s["busy_s"] for s in counted]), _union([s["steal_s"] for s in counted])
    usable = len(busy) if not whole else max((s["host_cpus"] or 0 for s in whole), default=0) or None
    counted, own = sum(busy.values()), sum(s["own_s"] for s in ranks)
    if counted < own - tick_noise_s(usable):
        # The job's own CPU time is part of its CPUs' busy time: counters that fell short of it by more than their
        # ticks did not advance (gVisor's /proc/stat is all zeros), and their 0 other cores would be no measurement.
        return JobLoad(other_cores=None, steal_cores=None, usable_cores=usable,
                       unknown=(f"/proc/stat's busy time of the job's CPUs ({counted:.2f} s) fell short of the job's "
                                f"own CPU time ({own:.2f} s) over {wall:.2f} s: its counters do not advance here (a "
                                "sandbox such as gVisor exports zeros), so other processes' CPU time is unknown"))
    other = max(0.0, (counted - own) / wall)
    return JobLoad(other_cores=other, steal_cores=min(other, sum(steal.values()) / wall), usable_cores=usable)


def job_load(spans: list[dict[str, Any] | None]) -> JobLoad | None:
    """Cores others kept busy during the span, the worst host of the job: per host, the busy time of the union of
    its ranks' CPUs less the CPU time of all its ranks, over the span's wall time; None without a span. A host whose
    counters did not advance makes the worst unknown (other_cores None): another host's figure would claim more."""
    by_host: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        if span is not None:
            by_host.setdefault(span["host"], []).append(span)
    worst = None
    for ranks in by_host.values():
        load = _host_load(ranks)
        if load is not None and load.other_cores is None:
            return load
        if load is not None and (worst is None or load.other_cores > worst.other_cores):
            worst = load
    return worst


#: Seconds of a clock tick (USER_HZ is 100 on Linux): /proc/stat and os.times count in them.
TICK_S = 0.01


def tick_noise_s(usable_cores: int | None) -> float:
    """Other processes' CPU time over a window that the ticks' granularity alone could make up: every counted CPU's
    counter and this process's are read to the tick at both edges, so some ten ticks, and more on many CPUs (the
    roundings add like noise: with the square root of their number). A 60 ms window of a tiny model read 0.5 other
    cores from two such ticks on an idle 2-core machine."""
    return TICK_S * max(10.0, 4 * math.sqrt(usable_cores or 1))


def contended(cores: float | None, usable_cores: int | None, window_s: float | None = None) -> bool:
    """Others kept at least half a core, and a quarter of the usable ones, busy; and, over a window of `window_s`,
    for longer than the ticks' granularity could account for (tick_noise_s)."""
    if cores is None or cores < max(0.5, 0.25 * (usable_cores or 0)):
        return False
    return window_s is None or cores * window_s >= tick_noise_s(usable_cores)


def window_contended(m: dict[str, Any]) -> bool:
    """Whether a record's metrics say others kept its window's CPUs busy (contended), or, for a time-to-target
    run, its CPUs over the run to its target (most of that clock runs after the window)."""
    usable = m.get("host_usable_cores")
    return (contended(m.get("host_other_cpu_cores"), usable, m.get("window_s"))
            or contended(m.get("host_other_cpu_cores_to_target"), usable, m.get("host_to_target_wall_s")))


def standing(repeats: list[T], metrics: Callable[[T], dict[str, Any]] = lambda m: m) -> list[T]:
    """The ok repeats a configuration's figures rest on: its quiet ones (no contended window), or every one when
    none was quiet. The run summary, the report, tune's ranking and scaling efficiency's baseline all use it."""
    quiet = [r for r in repeats if not window_contended(metrics(r))]
    return quiet or list(repeats)


def _steal_part(cores: float, steal_cores: float | None) -> str:
    """", N of them the hypervisor's (steal)" where steal is a large part of the cores, else nothing. A suffix: the
    report and the CLI know the warning by its start ("other processes kept")."""
    if steal_cores is not None and steal_cores >= STEAL_SHARE_NAMED * cores:
        return f", {steal_cores:.1f} of them the hypervisor's (steal)"
    return ""


def contention_note(m: dict[str, Any]) -> str | None:
    """`contended: ...` for a record's note column, when its window was contended."""
    if not window_contended(m):
        return None
    cores, usable = m["host_other_cpu_cores"], m.get("host_usable_cores")
    return (f"contended: other processes used {cores:.1f}" + (f" of {usable:g}" if usable else "") + " cores"
            + _steal_part(cores, m.get("host_steal_cpu_cores")))


def contention_warning(cores: float | None, usable_cores: int | None, window_s: float | None = None, *,
                       steal_cores: float | None = None, span: str = "the window",
                       cpu_threads: int | None = None) -> str | None:
    """The record's warning for a contended window (or another `span`: a time-to-target run's). `cpu_threads`: the
    intra-op threads of a CPU run, which on cores other work holds wait on each other (a new user's tiny-gpt2 on 2
    cores, one busy, ran 50-100x slower, steps swinging between 5 ms and 1.3 s, where 1 thread ran at a 3% spread)."""
    if cores is None or not contended(cores, usable_cores, window_s):
        return None
    of = f" of {usable_cores}" if usable_cores else ""
    said = (f"other processes kept {cores:.1f}{of} CPU cores busy during {span}{_steal_part(cores, steal_cores)}: "
            "host contention may have slowed this configuration")
    free = max(1, int((usable_cores or 0) - cores)) if usable_cores else None
    if cpu_threads and free is not None and cpu_threads > free:
        said += (f"; its {cpu_threads} torch threads outnumbered the {free} core(s) left, and threads that wait on "
                 f"each other can slow a CPU step far more than the share taken (OMP_NUM_THREADS={free} keeps within "
                 "them)")
    return said

"""Contention on the host: CPU time that other processes took during a measured window.

A busy host slows a CPU run directly and a GPU run wherever its steps wait on the host (kernel launches,
the optimizer's Python, data). Linux's /proc/stat counts every CPU's busy time since boot (user, nice,
system, irq, softirq, steal; USER_HZ ticks); os.times() counts this process's own (all its threads).
Over a window, (host busy − the benchmark's own CPU time) ÷ wall time is the number of cores other
processes kept busy: `host_other_cpu_cores`. Ranks of one job on one host are summed as "own", so a
sibling rank is not contention. The tick granularity (10 ms) makes short windows coarse; the figure is
a warning light, not a measurement of the benchmark.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_STAT = Path("/proc/stat")
#: Fields of /proc/stat's "cpu" line that are busy time (after user: nice, system, idle, iowait, irq, softirq,
#: steal; guest time is already inside user).
_BUSY = (0, 1, 2, 5, 6, 7)


def host_busy_s() -> float | None:
    """Seconds of CPU time all of the host's CPUs spent busy since boot; None where /proc/stat is not there."""
    try:
        fields = _STAT.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:]]
    return sum(ticks[i] for i in _BUSY if i < len(ticks)) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


class HostLoad:
    """Host busy time, this process's CPU time and the wall clock at `start()` and `stop()`."""

    def __init__(self) -> None:
        self._start: tuple[float | None, float, float] | None = None
        self.span: dict[str, Any] | None = None

    def start(self) -> None:
        self._start = (host_busy_s(), own_cpu_s(), time.perf_counter())

    def stop(self) -> dict[str, Any] | None:
        """This process's share of the window: {host, busy_s, own_s, wall_s}; None without /proc/stat."""
        if self._start is None or self._start[0] is None:
            return None
        busy, own, wall = host_busy_s(), own_cpu_s(), time.perf_counter()
        if busy is None:
            return None
        self.span = {"host": socket.gethostname(), "busy_s": busy - self._start[0], "own_s": own - self._start[1],
                     "wall_s": wall - self._start[2]}
        return self.span


def other_cores(spans: list[dict[str, Any] | None]) -> float | None:
    """Cores other processes kept busy during the window, the worst host of the job: per host, its busy time
    (the largest any of its ranks saw) less the CPU time of all its ranks, over the window's wall time."""
    by_host: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        if span is not None:
            by_host.setdefault(span["host"], []).append(span)
    worst = None
    for ranks in by_host.values():
        wall = max(s["wall_s"] for s in ranks)
        if wall <= 0:
            continue
        cores = max(0.0, (max(s["busy_s"] for s in ranks) - sum(s["own_s"] for s in ranks)) / wall)
        worst = cores if worst is None else max(worst, cores)
    return worst


#: Seconds of a clock tick (USER_HZ is 100 on Linux): /proc/stat and os.times count in them.
TICK_S = 0.01


def tick_noise_s(usable_cores: int | None) -> float:
    """Other processes' CPU time over a window that the ticks' granularity alone could make up: every CPU's counter
    and this process's are read to the tick at both edges, so some ten ticks, and more on many CPUs (the roundings
    add like noise: with the square root of their number). A 60 ms window of a tiny model read 0.5 other cores
    from two such ticks on an idle 2-core machine."""
    return TICK_S * max(10.0, 4 * math.sqrt(usable_cores or 1))


def contended(cores: float | None, usable_cores: int | None, window_s: float | None = None) -> bool:
    """Other processes kept at least half a core, and a quarter of the usable ones, busy; and, over a window of
    `window_s`, for longer than the ticks' granularity could account for (tick_noise_s)."""
    if cores is None or cores < max(0.5, 0.25 * (usable_cores or 0)):
        return False
    return window_s is None or cores * window_s >= tick_noise_s(usable_cores)


def window_contended(m: dict[str, Any]) -> bool:
    """Whether a record's metrics say other processes kept its window's host busy (contended), or, for a
    time-to-target run, its host over the run to its target (most of that clock runs after the window)."""
    usable = m.get("host_usable_cores")
    return (contended(m.get("host_other_cpu_cores"), usable, m.get("window_s"))
            or contended(m.get("host_other_cpu_cores_to_target"), usable, m.get("host_to_target_wall_s")))


def standing(repeats: list[T], metrics: Callable[[T], dict[str, Any]] = lambda m: m) -> list[T]:
    """The ok repeats a configuration's figures rest on: its quiet ones (no contended window), or every one when
    none was quiet. The run summary, the report, tune's ranking and scaling efficiency's baseline all use it."""
    quiet = [r for r in repeats if not window_contended(metrics(r))]
    return quiet or list(repeats)


def contention_note(m: dict[str, Any]) -> str | None:
    """`contended: ...` for a record's note column, when its window was contended."""
    if not window_contended(m):
        return None
    cores, usable = m["host_other_cpu_cores"], m.get("host_usable_cores")
    return f"contended: other processes used {cores:.1f}" + (f" of {usable:g}" if usable else "") + " cores"


def contention_warning(cores: float | None, usable_cores: int | None, window_s: float | None = None, *,
                       span: str = "the window") -> str | None:
    """The record's warning for a contended window (or another `span`: a time-to-target run's)."""
    if not contended(cores, usable_cores, window_s):
        return None
    of = f" of {usable_cores}" if usable_cores else ""
    return (f"other processes kept {cores:.1f}{of} CPU cores busy during {span}: host contention may have "
            "slowed this configuration")

"""The profiled window: a few extra steps under torch.profiler after the measured window, never inside it.

The profiler's own cost (event recording, CUPTI) would distort the throughput figures, so it runs
only once they are taken: `warmup` steps under the profiler's schedule to settle it, then `active`
steps recorded. The Chrome trace is written gzipped (it opens in Perfetto or chrome://tracing) and
broken down by lmbench.breakdown.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lmbench.errors import LmbenchError, one_line
from lmbench.measure.breakdown import breakdown, load
from lmbench.measure.hostload import HostLoad

#: Steps the profiler's schedule warms up on, then records.
WARMUP_STEPS, ACTIVE_STEPS = 2, 3


class ProfileError(LmbenchError):
    """The profiler failed (to start, step or stop), or the profiled steps' trace could not be written or broken
    down: the breakdown is lost, not the window measured before them."""


class _Session:
    """torch.profiler's session, whose own failures (Kineto, CUPTI) are kept rather than raised: the steps go on
    unprofiled, as every rank's must under torchrun (their collectives pair up with the other ranks'), and the
    first failure becomes a ProfileError after them."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self.failure: str | None = None

    def _call(self, what: str, call: Callable[[], Any]) -> None:
        if self.failure is not None:
            return
        try:
            call()
        except Exception as err:  # the profiler's own, whatever it raises: the steps are not inside
            self.failure = f"the profiler failed to {what} ({one_line(err)})"

    def start(self) -> None:
        self._call("start", self._session.__enter__)

    def step(self) -> None:
        self._call("step", self._session.step)

    def export(self, path: Path) -> None:
        self._session.export_chrome_trace(str(path))

    def stop(self) -> None:
        """Stop it, started or not (a start that failed half-way may have left it running); never raises."""
        try:
            self._session.__exit__(None, None, None)
        except Exception as err:
            self.failure = self.failure or f"the profiler failed to stop ({one_line(err)})"


def profile_steps(step: Callable[[], Any], device: torch.device, trace_path: Path, *, warmup: int = WARMUP_STEPS,
                  active: int = ACTIVE_STEPS) -> dict[str, Any]:
    """Run `warmup + active` steps under torch.profiler, save the trace, return its breakdown and the host's load
    over the steps (`host_load`, a HostLoad span: others' work slows profiled steps as it does the window's, and a
    slowdown against the window is then not the profiler's alone).

    A failure of the steps themselves (out of memory, a CUDA error, a collective under torchrun) propagates as
    any step's would; one of the profiler, or of writing or reading the trace, is a ProfileError.
    """
    from torch.profiler import ProfilerActivity, profile, schedule

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    trace_path.parent.mkdir(parents=True, exist_ok=True)
    host = HostLoad()
    session = _Session(profile(activities=activities,
                               schedule=schedule(wait=0, warmup=warmup, active=active, repeat=1)))
    session.start()
    try:
        with host.window():
            for _ in range(warmup + active):
                step()
                session.step()
    finally:
        session.stop()
    if session.failure is not None:
        raise ProfileError(session.failure)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    try:
        # A name ending in .gz makes torch write the trace gzipped.
        session.export(trace_path)
        return {**breakdown(load(trace_path), on_gpu=device.type == "cuda"), "host_load": host.span}
    except (OSError, ValueError, RuntimeError) as err:
        raise ProfileError(f"the profiled steps' trace could not be broken down ({one_line(err)}; trace: "
                           f"{trace_path})") from err


def reported_rank(profiles: list[dict[str, Any] | None], *, pipeline: bool) -> int | None:
    """The rank whose breakdown a job's record carries: the first that has one, or of a pipeline, whose stages do
    different work, the busiest (the least time idle or waiting on a transfer: the stage the others wait for); None
    where no rank has one.

    A 2-stage tiny-gpt2 pipeline on a CPU: rank 0 spent 51% of its step idle or communicating, rank 1 55%."""
    ranks = [rank for rank, profile in enumerate(profiles) if profile is not None]
    if not ranks or not pipeline:
        return ranks[0] if ranks else None
    waiting = {rank: profiles[rank]["fractions"]["idle"] + profiles[rank]["fractions"]["communication"]
               for rank in ranks}
    return min(ranks, key=waiting.get)

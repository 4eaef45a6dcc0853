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

from lmbench.measure.breakdown import breakdown, load

#: Steps the profiler's schedule warms up on, then records.
WARMUP_STEPS, ACTIVE_STEPS = 2, 3


def profile_steps(step: Callable[[], Any], device: torch.device, trace_path: Path, *, warmup: int = WARMUP_STEPS,
                  active: int = ACTIVE_STEPS) -> dict[str, Any]:
    """Run `warmup + active` steps under torch.profiler, save the trace, return its breakdown."""
    from torch.profiler import ProfilerActivity, profile, schedule

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    trace_path.parent.mkdir(parents=True, exist_ok=True)
    with profile(activities=activities, schedule=schedule(wait=0, warmup=warmup, active=active, repeat=1)) as prof:
        for _ in range(warmup + active):
            step()
            prof.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    # A name ending in .gz makes torch write the trace gzipped.
    prof.export_chrome_trace(str(trace_path))
    return breakdown(load(trace_path), on_gpu=device.type == "cuda")

"""Derived metrics of one measured window: pure functions of step times and the configuration."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lmbench.peaks import peak_flops
from lmbench.stats import summarize


def throughput(*, step_times_s: Sequence[float], tokens_per_step: int, samples_per_step: int,
               world_size: int = 1, devices_per_rank: int = 1) -> dict[str, float]:
    """Step-time distribution and throughput; rates use the median step (robust to stray slow steps).

    `tokens_per_step` and `samples_per_step` are per rank; global rates multiply by `world_size`.
    A rank drives `devices_per_rank` GPUs (more than one only under nn.DataParallel).
    """
    s = summarize(step_times_s)
    median = s["median"]
    tokens_per_s = tokens_per_step * world_size / median
    return {
        "step_time_median_s": median,
        "step_time_p10_s": s["p10"],
        "step_time_p90_s": s["p90"],
        "step_time_mean_s": s["mean"],
        "step_time_std_s": s["std"],
        "step_time_cv": s["cv"],
        "tokens_per_step": tokens_per_step * world_size,
        "tokens_per_s": tokens_per_s,
        "tokens_per_s_per_device": tokens_per_s / (world_size * devices_per_rank),
        "samples_per_s": samples_per_step * world_size / median,
    }


def flops_utilisation(*, flops_per_token: int, tokens_per_s_per_device: float, device_name: str | None,
                      precision: str) -> dict[str, Any]:
    """Achieved TFLOP/s per device and MFU against the datasheet dense peak (None when the device is unknown)."""
    achieved = flops_per_token * tokens_per_s_per_device
    peak = peak_flops(device_name, precision)
    return {
        "flops_per_token": flops_per_token,
        "tflops": achieved / 1e12,
        "peak_tflops": peak[0] / 1e12 if peak else None,
        "peak_source": peak[1] if peak else None,
        "mfu": achieved / peak[0] if peak else None,
    }


def loss_health(losses: Sequence[float]) -> dict[str, Any]:
    """First and last loss, and how many were non-finite (any makes the status `diverged`)."""
    return {
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "nonfinite_losses": sum(1 for v in losses if not math.isfinite(v)),
    }


#: Coefficient of variation of step times above which a window is flagged: past 10% the median step no
#: longer describes the window (stalls, clock changes, recompilation), whatever the tokens/s says.
STEP_CV_LIMIT = 0.10


def unstable_steps(step_cvs: Sequence[float]) -> str | None:
    """A note when any repeat's step-time CV exceeds STEP_CV_LIMIT, else None."""
    worst = max((cv for cv in step_cvs if cv is not None and math.isfinite(cv)), default=None)
    if worst is None or worst <= STEP_CV_LIMIT:
        return None
    return f"unstable steps: cv {worst:.0%} > {STEP_CV_LIMIT:.0%}"

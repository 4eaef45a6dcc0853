"""Derived metrics of one measured window: pure functions of step times and the configuration."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lmbench.measure.peaks import mode_peak_flops, peak_flops
from lmbench.measure.stats import percentile, summarize

#: Sustained throughput this far below typical means the window had stalls the median step hides.
STALL_GAP = 0.05


def outlier_steps(step_times_s: Sequence[float]) -> list[float]:
    """Steps beyond Tukey's far-out fence (p75 + 3 x IQR) and STALL_GAP over the median: stalls, not the spread of
    ordinary steps. The floor: a GPU-bound window's steps can agree to 0.1%, and the fence alone then counted a
    step 0.7% over the median as a stall (an H100 fp32 record)."""
    p25, p75 = percentile(step_times_s, 25), percentile(step_times_s, 75)
    fence = max(p75 + 3 * (p75 - p25), percentile(step_times_s, 50) * (1 + STALL_GAP))
    return [t for t in step_times_s if t > fence]


def tail_percentile(step_times_s: Sequence[float], q: float) -> float | None:
    """The q-th percentile of a window's step times, or None when the window has fewer steps than it takes for one
    to lie beyond it (10 for p10 and p90, 20 for p95, 100 for p99): a p99 of 15 steps is the slowest step with a
    haircut, interpolated between the two slowest, and reads like a tail it never saw."""
    needed = math.ceil(100 / min(q, 100 - q) - 1e-9)
    return percentile(step_times_s, q) if len(step_times_s) >= needed else None


def throughput(*, step_times_s: Sequence[float], tokens_per_step: int, samples_per_step: int,
               world_size: int = 1, devices_per_rank: int = 1, window_s: float | None = None) -> dict[str, Any]:
    """Step-time distribution and the two throughput figures of a window.

    `tokens_per_s_sustained` is the tokens of the whole window over its wall time `window_s` (edges
    synchronised): what a training run gets, stalls included. It is the headline `tokens_per_s` (and
    `samples_per_s`, `tokens_per_s_per_device`, hence MFU follow it). `tokens_per_s_typical` is
    tokens per step over the median step: the speed of an ordinary step. When the sustained figure is
    more than STALL_GAP below the typical one, `stalls` is true and the outlier steps are counted.
    Without `window_s` (a caller that has no window) the headline is the typical figure.
    `tokens_per_step` and `samples_per_step` are per rank; global rates multiply by `world_size`. A
    rank drives `devices_per_rank` GPUs (more than one only under nn.DataParallel). One step has no spread:
    `step_time_std_s` and `step_time_cv` are None, and a tail percentile without a step beyond it too
    (tail_percentile).
    """
    s = summarize(step_times_s)
    median = s["median"]
    tokens = tokens_per_step * world_size
    typical = tokens / median
    sustained = tokens * len(step_times_s) / window_s if window_s else None
    headline = sustained if sustained is not None else typical
    outliers = outlier_steps(step_times_s)
    stalls = sustained is not None and sustained < (1 - STALL_GAP) * typical
    return {
        "step_time_median_s": median,
        "step_time_p10_s": tail_percentile(step_times_s, 10),
        "step_time_p90_s": tail_percentile(step_times_s, 90),
        "step_time_p95_s": tail_percentile(step_times_s, 95),
        "step_time_p99_s": tail_percentile(step_times_s, 99),
        "step_time_mean_s": s["mean"],
        "step_time_std_s": s["std"],
        "step_time_cv": s["cv"],
        "tokens_per_step": tokens,
        "tokens_per_s": headline,
        "tokens_per_s_sustained": sustained,
        "tokens_per_s_typical": typical,
        "tokens_per_s_per_device": headline / (world_size * devices_per_rank),
        "samples_per_s": samples_per_step * world_size * headline / tokens,
        "stalls": stalls,
        "stall_steps": len(outliers),
        "stall_excess_s": sum(t - median for t in outliers),
    }


def _milliseconds(seconds: float) -> str:
    """Seconds as milliseconds for a note: three significant digits, and whole ones from 100 ms with thousands
    separated (`.3g` wrote a 6.8 s stall as 6.82e+03)."""
    ms = seconds * 1e3
    return f"{ms:,.0f}" if abs(ms) >= 100 else f"{ms:.3g}"


def stall_note(m: dict[str, Any]) -> str | None:
    """`stalls: ...` for a record whose sustained throughput is over STALL_GAP below its typical one."""
    if not m.get("stalls"):
        return None
    gap = 1 - m["tokens_per_s_sustained"] / m["tokens_per_s_typical"]
    if m.get("stall_steps"):
        steps = m["stall_steps"]
        return (f"stalls: sustained {gap:.1%} below typical ({steps} outlier step{'' if steps == 1 else 's'}, "
                f"+{_milliseconds(m.get('stall_excess_s', 0))} ms)")
    # No step stands out: the time went to slow steps spread through the window, or to time between steps.
    mean, median = m.get("step_time_mean_s"), m.get("step_time_median_s")
    between = None
    if m.get("window_s") is not None and mean is not None and m.get("steps_measured"):
        between = m["window_s"] - mean * m["steps_measured"]
    parts = [f"mean {_milliseconds(mean)} vs median {_milliseconds(median)} ms" if mean and median else None,
             f"{_milliseconds(between)} ms between steps" if between is not None and between > 0.01 * m["window_s"]
             else None]
    return f"stalls: {gap:.1%} below typical, spread over steps (" + "; ".join(filter(None, parts)) + ")"


def stalls_note(repeats: Sequence[dict[str, Any]]) -> str | None:
    """stall_note over a configuration's repeats: one repeat's own note, or how many of several stalled, by how much,
    and the worst one's detail (a note a repeat, unnamed, read as the same stall told twice)."""
    stalled = [(1 - m["tokens_per_s_sustained"] / m["tokens_per_s_typical"], note) for m in repeats
               if (note := stall_note(m))]
    if not stalled:
        return None
    if len(repeats) == 1:
        return stalled[0][1]
    gaps = sorted(gap for gap, _ in stalled)
    spread = f"{gaps[0]:.1%}" if len(gaps) == 1 else f"{gaps[0]:.1%}-{gaps[-1]:.1%}"
    worst = max(stalled)[1].removeprefix("stalls: ")
    return f"stalls in {len(stalled)} of {len(repeats)} repeats, sustained {spread} below typical (worst: {worst})"


def bubble_note(measured: float | None, theory: float | None) -> str | None:
    """`bubble: ...` for pipeline parallelism: the measured idle share of a step (lmbench.run.distributed.
    pipeline_idle) beside the theory's ((p-1)/(m+p-1), or (p-1)/(v m+p-1) interleaved), where it has one (the
    zero-bubble schedules do not)."""
    if measured is None:
        return None
    if theory is None:
        return f"bubble: {measured:.0%} idle measured"
    return f"bubble: {measured:.0%} idle measured, {theory:.0%} in theory"


def flops_utilisation(*, flops_per_token: int, tokens_per_s_per_device: float, device_name: str | None,
                      precision: str, hardware_flops_per_token: int | None = None) -> dict[str, Any]:
    """Achieved TFLOP/s per device, MFU and HFU against the datasheet dense peak (None when the device is unknown).

    MFU counts model FLOPs (lmbench.measure.flops, PaLM); HFU counts the FLOPs the hardware really ran, the
    forwards that activation checkpointing recomputes included (equal to MFU without recomputation). An FP8
    precision's `mfu` is against the bf16 peak and `mfu_fp8_peak` against the FP8 one (lmbench.measure.peaks).
    """
    achieved = flops_per_token * tokens_per_s_per_device
    hardware = hardware_flops_per_token if hardware_flops_per_token is not None else flops_per_token
    peak = peak_flops(device_name, precision)
    fp8: dict[str, Any] = {}
    if precision.startswith("fp8"):
        fp8_peak = mode_peak_flops(device_name, "fp8")
        fp8 = {"peak_fp8_tflops": fp8_peak[0] / 1e12 if fp8_peak else None,
               "mfu_fp8_peak": achieved / fp8_peak[0] if fp8_peak else None,
               "hfu_fp8_peak": hardware * tokens_per_s_per_device / fp8_peak[0] if fp8_peak else None}
    return {**fp8,
        "flops_per_token": flops_per_token,
        "hardware_flops_per_token": hardware,
        "tflops": achieved / 1e12,
        "hardware_tflops": hardware * tokens_per_s_per_device / 1e12,
        "peak_tflops": peak[0] / 1e12 if peak else None,
        "peak_source": peak[1] if peak else None,
        "mfu": achieved / peak[0] if peak else None,
        "hfu": hardware * tokens_per_s_per_device / peak[0] if peak else None,
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


#: NVML's utilisation (the share of the time a kernel was running, over its sample periods) under which a window's
#: GPU is called held back by the host. On the H100 (reports/h100-80gb-hbm3-2026-11-27, stages 8 and 9) every
#: GPU-bound row read 99.3-100%; gpt2-124m fp16, whose step then read a flag on the host, 94.9%; gpt2-355m at
#: batch 4, whose host work is the largest share of its step, 83-91%.
GPU_BUSY_LIMIT_PCT = 97.0


def host_bound_note(gpu_util_pct: float | None) -> str | None:
    """`GPU busy N% ...` when NVML saw the GPU idle for more than 3% of the window: the host set the figure."""
    if gpu_util_pct is None or gpu_util_pct >= GPU_BUSY_LIMIT_PCT:
        return None
    return f"GPU busy {gpu_util_pct:.0f}% of the window (NVML): the host held it back"


def unstable_steps(step_cvs: Sequence[float]) -> str | None:
    """A note when any repeat's step-time CV exceeds STEP_CV_LIMIT, else None; with several repeats it says how
    many did (a row's step cv column is the median repeat's, which may be well under the limit)."""
    finite = [cv for cv in step_cvs if cv is not None and math.isfinite(cv)]
    worst = max(finite, default=None)
    if worst is None or worst <= STEP_CV_LIMIT:
        return None
    # Past the limit by a little must not read as equal to it (cv 10.3% printed as 10%): a tenth of a percent, or a
    # hundredth where a tenth still rounds to the limit.
    shown = f"{worst:.1%}" if f"{worst:.1%}" != f"{STEP_CV_LIMIT:.1%}" else f"{worst:.2%}"
    over = sum(cv > STEP_CV_LIMIT for cv in finite)
    which = f" in {over} of {len(finite)} repeats" if len(finite) > 1 else ""
    return f"unstable steps: cv {shown} > {STEP_CV_LIMIT:.0%}{which}"


def warmup(step_times_s: Sequence[float]) -> dict[str, Any]:
    """The warmup steps as their own distribution: the first one (compilation, autotuning) and the rest."""
    if not step_times_s:
        return {"warmup_step_times_s": [], "warmup_first_step_s": None, "warmup_step_time_median_s": None}
    return {"warmup_step_times_s": list(step_times_s), "warmup_first_step_s": step_times_s[0],
            "warmup_step_time_median_s": percentile(step_times_s, 50)}


def profile_fields(profile: dict[str, Any] | None) -> dict[str, Any]:
    """A profiled window's breakdown as flat metrics (`time_frac_<category>`), plus its top kernels and trace."""
    if profile is None:
        return {}
    fields: dict[str, Any] = {f"time_frac_{category}": value for category, value in profile["fractions"].items()}
    fields.update(profile_step_time_s=profile["step_time_s"], profile_step_time_median_s=profile["step_time_median_s"],
                  profile_steps=profile["steps"], profile_device=profile["device"],
                  comm_overlap_frac=profile["communication_overlap"], profile_top_kernels=profile["top_kernels"],
                  profile_trace=profile["trace"])
    return fields

"""Regression verdicts: candidate vs baseline per configuration, ratio of medians with a 95% interval.

One sample is one repeat (one fresh process); step times inside a process never stand in for
repeats. For each configuration present in both runs the statistic is median(candidate) /
median(baseline) of the metric. Its interval needs an estimate of between-process noise:
  - with at least 3 ok repeats a side, a 95% bootstrap interval (scipy.stats.bootstrap, independent
    resampling of both sides, fixed seed);
  - with a noise floor from `lmbench calibrate` (lmbench.analyze.noise), a t interval from that spread, for
    any number of repeats; with both, the union of the two (a floor never narrows an interval);
  - with neither, no interval: the verdict is `inconclusive` and says how many repeats are needed.
With a threshold t and the interval [lo, hi] oriented so that > 1 is better:
  regression   hi < 1 - t          (the whole interval is worse by more than t)
  improvement  lo > 1 + t
  inconclusive hi - lo > 2t        (too noisy to tell at this threshold), or no noise estimate
  unchanged    otherwise
plus `missing` (in one run only) and `failed` (no ok repeat on one side, or an improvement whose loss
parity diverged: a configuration that trains wrong never counts as faster).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from lmbench.analyze.noise import MIN_REPEATS, ConfigNoise, NoiseFloor, ok_values
from lmbench.errors import UsageError

#: Metrics where a larger value is better; for the others (times, memory, energy) smaller is.
HIGHER_IS_BETTER = frozenset({"tokens_per_s", "samples_per_s", "tokens_per_s_per_device", "tflops", "mfu",
                              "tokens_per_j", "scaling_efficiency"})
CONFIDENCE = 0.95
SEED = 20240607
RESAMPLES = 2000


@dataclass
class Verdict:
    config_key: str
    verdict: str
    ratio: float | None
    """median(candidate) / median(baseline) of the metric as measured."""
    ci_low: float | None
    ci_high: float | None
    n_base: int
    n_cand: int
    note: str = ""
    parity: str | None = None
    """The candidate's worst loss parity over repeats, when the run checked it."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ratio_interval(base: list[float], cand: list[float]) -> tuple[float, float, float]:
    """(ratio of medians, low, high) with a 95% percentile bootstrap over the repeats of each side."""
    ratio = statistics.median(cand) / statistics.median(base)
    if len(base) < 2 or len(cand) < 2:
        raise ValueError("a bootstrap interval needs at least two repeats a side")
    from scipy.stats import bootstrap

    def statistic(b: np.ndarray, c: np.ndarray, axis: int = -1) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.median(c, axis=axis) / np.median(b, axis=axis)

    result = bootstrap((np.asarray(base, float), np.asarray(cand, float)), statistic, paired=False,
                       vectorized=True, n_resamples=RESAMPLES, confidence_level=CONFIDENCE, method="percentile",
                       random_state=np.random.default_rng(SEED))
    low, high = result.confidence_interval
    return ratio, float(low), float(high)


def repeats_needed(base: list[float], cand: list[float], threshold: float) -> int | None:
    """Rough repeats per side for an interval of width 2*threshold, from the observed spread (CI ~ 1/sqrt(n))."""
    n = min(len(base), len(cand))
    values = [v / statistics.median(base) for v in base] + [v / statistics.median(cand) for v in cand]
    if n < 2 or len(values) < 3:
        return None
    spread = statistics.stdev(values)
    if spread == 0:
        return n
    # Half-width of a 95% interval of the ratio ~ 1.96 * sqrt(2) * spread / sqrt(n).
    return max(n + 1, math.ceil((1.96 * math.sqrt(2) * spread / threshold) ** 2))


def _interval(base: list[float], cand: list[float], noise: ConfigNoise | None) -> tuple[float, float] | None:
    """The 95% interval of the ratio from whatever noise estimate there is; None without one."""
    intervals = []
    if min(len(base), len(cand)) >= MIN_REPEATS:
        intervals.append(ratio_interval(base, cand)[1:])
    if noise is not None:
        ratio = statistics.median(cand) / statistics.median(base)
        intervals.append(noise.interval(ratio, len(base), len(cand)))
    if not intervals:
        return None
    return min(low for low, _ in intervals), max(high for _, high in intervals)


def decide(base: list[float], cand: list[float], *, threshold: float, higher_is_better: bool,
           noise: ConfigNoise | None = None) -> Verdict:
    zero = [side for side, values in (("baseline", base), ("candidate", cand)) if statistics.median(values) == 0]
    if zero:
        # A count that is 0 (skipped steps, non-finite losses) has no ratio; its change is not a speed.
        return Verdict(config_key="", verdict="inconclusive", ratio=None, ci_low=None, ci_high=None,
                       n_base=len(base), n_cand=len(cand), note=f"median 0 in the {' and '.join(zero)}: no ratio")
    ratio = statistics.median(cand) / statistics.median(base)
    interval = _interval(base, cand, noise)
    if interval is None:
        note = (f"{len(base)}/{len(cand)} ok repeats: a verdict needs at least {MIN_REPEATS} a side, or "
                "--noise-floor FILE from lmbench calibrate")
        return Verdict(config_key="", verdict="inconclusive", ratio=ratio, ci_low=None, ci_high=None,
                       n_base=len(base), n_cand=len(cand), note=note)
    low, high = interval
    # Orient so that > 1 always means "better" (a resampled median of 0 gives an unbounded end).
    lo, hi = (low, high) if higher_is_better else (_inverse(high), _inverse(low))
    if hi < 1 - threshold:
        verdict, note = "regression", ""
    elif lo > 1 + threshold:
        verdict, note = "improvement", ""
    elif hi - lo > 2 * threshold:
        needed = repeats_needed(base, cand, threshold)
        verdict = "inconclusive"
        note = f"interval wider than ±{threshold:.0%}; about {needed} repeats per side needed" if needed else \
            "interval wider than the threshold; more repeats needed"
    else:
        verdict, note = "unchanged", ""
    if noise is not None:
        note = "; ".join(filter(None, [note, "interval from the noise floor"]))
    return Verdict(config_key="", verdict=verdict, ratio=ratio, ci_low=low, ci_high=high, n_base=len(base),
                   n_cand=len(cand), note=note)


def _inverse(x: float) -> float:
    return 1 / x if x else math.inf


def compare(base: list[dict[str, Any]], cand: list[dict[str, Any]], *, metric: str = "tokens_per_s",
            threshold: float = 0.05, noise: NoiseFloor | None = None) -> list[Verdict]:
    """One verdict per configuration key found in either run, in the baseline's order."""
    if not 0 < threshold < 1:
        raise UsageError(f"--threshold {threshold:g}: must be between 0 and 1 (e.g. 5%)")
    if noise is not None and noise.metric != metric:
        raise UsageError(f"--noise-floor {noise.source!r} was measured for {noise.metric}, not --metric {metric}")
    b_values, c_values = ok_values(base, metric), ok_values(cand, metric)
    order = ["reference", "ok", "drift", "diverged"]
    parity: dict[str, str] = {}
    for r in cand:
        value = (r.get("metrics") or {}).get("parity")
        if value in order and order.index(value) >= order.index(parity.get(r["config_key"], "reference")):
            parity[r["config_key"]] = value
    diverged = {key for key, value in parity.items() if value == "diverged"}
    verdicts = []
    for key in list(dict.fromkeys([*b_values, *c_values])):
        if key not in b_values or key not in c_values:
            side = "candidate" if key not in c_values else "baseline"
            verdicts.append(Verdict(key, "missing", None, None, None, len(b_values.get(key, [])),
                                    len(c_values.get(key, [])), f"not in the {side} run"))
            continue
        b, c = b_values[key], c_values[key]
        if not b or not c:
            side = "baseline" if not b else "candidate"
            verdicts.append(Verdict(key, "failed", None, None, None, len(b), len(c), f"no ok repeat in the {side}"))
            continue
        verdict = decide(b, c, threshold=threshold, higher_is_better=metric in HIGHER_IS_BETTER,
                         noise=noise.get(key) if noise else None)
        verdict.config_key = key
        verdict.parity = parity.get(key)
        if noise is not None and verdict.ci_low is None:
            verdict.note += f"; {noise.source} has no noise floor for this configuration"
        if verdict.verdict == "improvement" and key in diverged:
            # Fast but training wrong is not better.
            verdict.verdict, verdict.note = "failed", "faster, but its loss parity diverged from the reference"
        verdicts.append(verdict)
    return verdicts


def environment_of(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Device model (a GPU, or the CPU for CPU runs), driver and torch of a run (its first record with an env)."""
    env = next((r["env"] for r in records if r.get("env")), {}) or {}
    device = env.get("device") or {}
    kind = "CPU" if device.get("type") == "cpu" else "GPU"
    return {"device": f"{device.get('name')} ({kind})" if device.get("name") else None, "driver": device.get("driver"),
            "torch": env.get("torch")}


def environment_differences(base: list[dict[str, Any]], cand: list[dict[str, Any]]) -> dict[str, tuple[Any, Any]]:
    """Device model, driver and torch that differ between the two runs."""
    b, c = environment_of(base), environment_of(cand)
    return {k: (b[k], c[k]) for k in b if b[k] != c[k]}


def parse_threshold(text: str) -> float:
    """'5%' or '0.05' -> 0.05."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise UsageError(f"--threshold {text!r}: expected a percentage like 5% or a fraction like 0.05") from None
    if not 0 < value < 1:
        raise UsageError(f"--threshold {text!r}: must be between 0% and 100%")
    return value

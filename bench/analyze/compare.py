"""Regression verdicts: candidate vs baseline per configuration, ratio of medians with a 95% interval.

One sample is one repeat (one fresh process); step times inside a process never stand in for
repeats. For each configuration present in both runs the statistic is median(candidate) /
median(baseline) of the metric. Its interval needs an estimate of between-process noise:
  - with at least 3 ok repeats a side, the union of a 95% percentile bootstrap interval
    (scipy.stats.bootstrap, independent resampling of both sides, fixed seed) and a Welch t interval of
    the log ratio from the repeats' own spread. The bootstrap alone covers too little with few repeats:
    with 3 a side its interval is the range [min c / max b, max c / min b], which misses the true ratio
    2 times in C(6, 3) = 20, a 90% interval; the t interval pays for a spread estimated from 3 values;
  - with a noise floor from `lmbench calibrate` (lmbench.analyze.noise), a t interval from that spread, for
    any number of repeats; with both, the union (a floor never narrows an interval). So with 3 or more repeats a
    side a floor only widens the interval, by the offset between two runs (its run term) that the repeats of
    one run cannot see: what a gate of runs made apart needs (5 vs 5 repeats, 1% noise a process and 1% a run:
    the repeats' interval alone missed the true ratio in 23% of simulated gates, with the floor 2.3%), and what
    runs interleaved in one job (the CI template's ABBA order) do not;
  - with neither, no interval: the verdict is `inconclusive` and says how many repeats are needed.
With a threshold t and the interval [lo, hi] of the ratio candidate / baseline, for a metric where more
is better (tokens/s, MFU) and, mirrored, where less is (times, memory, energy):
  regression   hi < 1 - t          (lo > 1 + t: the whole interval is worse by more than t)
  improvement  lo > 1 + t          (hi < 1 - t)
  unchanged    1 - t <= lo and hi <= 1 + t   (the whole interval inside the threshold)
  inconclusive otherwise: wider than 2t (too noisy to tell at this threshold), or reaching past one edge of
               the threshold (a change beyond t is neither shown nor excluded), or no noise estimate
A median below 0 on either side has no ratio (a ratio of values that are not positive is not defined: a sign change
from 0.15 to -0.15 gave a ratio of -1, read as an improvement of a cost): `inconclusive`, saying so.
A noise floor stands in for the repeats' own spread only while they agree with it: with fewer than 3 repeats a
side, repeats spread more than the floor allows (an F test at 1%) make the verdict inconclusive.
plus `missing` (in one run only), `skipped` (skipped in both: it never ran, never blocks) and `failed` (no ok
repeat on one side; candidate repeats that ended oom, error, diverged or timeout in a way the baseline's did
not: a status the baseline never ended in, or a larger share of failed repeats; or an improvement whose loss
parity diverged: a configuration that trains wrong never counts as faster). A verdict is `blocking` (the
gate's exit 1) for a regression, for a failure of the candidate, for a configuration the candidate lacks
unless that is allowed, and, when the gate is strict, for an inconclusive one.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from lmbench.analyze import environments
from lmbench.analyze.noise import MIN_REPEATS, ConfigNoise, NoiseFloor, exp_or_inf, ok_values, room_to_edge
from lmbench.analyze.table import status_counts
from lmbench.errors import UsageError

#: Metrics where a larger value is better (docs/metrics.md), besides every rate ("_per_s", "_per_s_...").
HIGHER_IS_BETTER = frozenset({"tflops", "hardware_tflops", "mfu", "hfu", "mfu_fp8_peak", "hfu_fp8_peak",
                              "tokens_per_j", "scaling_efficiency", "comm_overlap_frac"})
#: Metrics where a smaller value is better, besides every time (_s), memory (_bytes) and energy (_j).
#: Metrics read from NVML's energy (their method, energy_source, must match on both sides for a verdict).
ENERGY_METRICS = frozenset({"energy_j", "j_per_token", "tokens_per_j", "power_avg_w"})
LOWER_IS_BETTER = frozenset({"step_time_cv", "j_per_token", "val_loss", "val_loss_best", "val_ppl", "loss_last",
                             "steps_to_target", "tokens_to_target", "pp_bubble_fraction", "stall_steps",
                             "nonfinite_losses", "overflow_skipped_steps", "time_frac_idle"})
_COST = re.compile(r"_(s|bytes|j)(_|$)")
_RATE = re.compile(r"_per_s(_|$)")
#: Statuses of a repeat that ran and failed (a skipped configuration never ran).
FAILURES = ("oom", "diverged", "error", "timeout")
CONFIDENCE = 0.95
#: Beyond this estimate of repeats a side, the note says the noise is far above the threshold instead.
MAX_REPEATS_SHOWN = 1000
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
    blocking: bool = False
    """Fails the gate (exit 1): a regression, a failure of the candidate, or a configuration it lacks."""
    base_median: float | None = None
    """Median of the metric over the baseline repeats the verdict rests on, in the metric's own unit (its name's)."""
    cand_median: float | None = None
    """Median of the metric over the candidate repeats the verdict rests on, in the metric's own unit."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def higher_is_better(metric: str) -> bool:
    """Whether more of `metric` is better; a UsageError for a metric with no known direction."""
    if metric in HIGHER_IS_BETTER or _RATE.search(metric):
        return True
    if metric in LOWER_IS_BETTER or _COST.search(metric):
        return False
    raise UsageError(f"--metric {metric!r}: not known whether more is better or worse; compare a rate "
                     "(tokens_per_s, mfu, tokens_per_j) or a cost (a time _s, memory _bytes, energy _j, step_time_cv, "
                     "val_loss)")


def ratio_interval(base: list[float], cand: list[float]) -> tuple[float, float, float]:
    """(ratio of medians, low, high) with a 95% percentile bootstrap over the repeats of each side."""
    ratio = statistics.median(cand) / statistics.median(base)
    if len(base) < 2 or len(cand) < 2:
        raise ValueError("a bootstrap interval needs at least two repeats a side")
    from scipy.stats import bootstrap

    def statistic(b: np.ndarray, c: np.ndarray, axis: int = -1) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.median(c, axis=axis) / np.median(b, axis=axis)

    with np.errstate(over="ignore", invalid="ignore"):  # absurd values (1e308) give an unbounded end, not a warning
        result = bootstrap((np.asarray(base, float), np.asarray(cand, float)), statistic, paired=False,
                           vectorized=True, n_resamples=RESAMPLES, confidence_level=CONFIDENCE, method="percentile",
                           random_state=np.random.default_rng(SEED))
    low, high = result.confidence_interval
    return ratio, float(low), float(high)


def log_t_interval(base: list[float], cand: list[float]) -> tuple[float, float] | None:
    """95% Welch t interval of the ratio of medians from the repeats' own spread of log(metric): ratio ×
    exp(± t(0.975, df_Welch) × sqrt(s_b²/n_b + s_c²/n_c) × sqrt(pi/2)) (sqrt(pi/2): a median's cost over a
    mean, as for noise floors). None where a value is not positive (a log needs one) or a side has one repeat."""
    if min(len(base), len(cand)) < 2 or min(base + cand) <= 0:
        return None
    from scipy.stats import t

    ratio = statistics.median(cand) / statistics.median(base)
    var_b = statistics.variance([math.log(v) for v in base]) / len(base)
    var_c = statistics.variance([math.log(v) for v in cand]) / len(cand)
    if var_b + var_c == 0:
        return ratio, ratio
    df = (var_b + var_c) ** 2 / (var_b**2 / (len(base) - 1) + var_c**2 / (len(cand) - 1))
    half = float(t.ppf(0.5 + CONFIDENCE / 2, df)) * math.sqrt(var_b + var_c) * math.sqrt(math.pi / 2)
    return ratio * exp_or_inf(-half), ratio * exp_or_inf(half)


def repeats_needed(base: list[float], cand: list[float], threshold: float) -> int | None:
    """Repeats a side whose interval would settle the verdict: at this ratio of medians and these repeats' spread of
    log(metric), by log_t_interval's own model (Welch's t for that many a side, times sqrt(pi/2)), the half-width
    that clears the threshold's nearer edge (inside both edges: unchanged; beyond one: a regression or
    improvement). None with fewer than two repeats a side; over MAX_REPEATS_SHOWN when the ratio sits on an edge."""
    if min(len(base), len(cand)) < 2 or min(base + cand) <= 0:
        return None
    from scipy.stats import t

    var_b = statistics.variance([math.log(v) for v in base])
    var_c = statistics.variance([math.log(v) for v in cand])
    room = room_to_edge(statistics.median(cand) / statistics.median(base), threshold)
    if var_b + var_c == 0:
        return min(len(base), len(cand))
    for n in range(min(len(base), len(cand)) + 1, MAX_REPEATS_SHOWN + 1):
        spread = (var_b + var_c) / n
        df = spread ** 2 / ((var_b / n) ** 2 / (n - 1) + (var_c / n) ** 2 / (n - 1))
        if float(t.ppf(0.5 + CONFIDENCE / 2, df)) * math.sqrt(spread) * math.sqrt(math.pi / 2) <= room:
            return n
    return MAX_REPEATS_SHOWN + 1


def repeats_interval(base: list[float], cand: list[float]) -> tuple[float, float] | None:
    """The 95% interval of median(cand) / median(base) from the repeats alone (at least MIN_REPEATS a side), as
    compare takes it without a noise floor; None with fewer."""
    found = _interval(base, cand, None)
    return None if found is None else found[:2]


def _interval(base: list[float], cand: list[float], noise: ConfigNoise | None
              ) -> tuple[float, float, bool] | None:
    """The 95% interval of the ratio from whatever noise estimate there is, and whether the noise floor's set an
    edge of it (it was at least as wide as the repeats' own where they had one); None without an estimate."""
    intervals = []
    if min(len(base), len(cand)) >= MIN_REPEATS:
        intervals.append(ratio_interval(base, cand)[1:])
        spread = log_t_interval(base, cand)
        if spread is not None:
            intervals.append(spread)
    floor = None
    if noise is not None:
        ratio = statistics.median(cand) / statistics.median(base)
        floor = noise.interval(ratio, len(base), len(cand))
        intervals.append(floor)
    if not intervals:
        return None
    low, high = min(low for low, _ in intervals), max(high for _, high in intervals)
    return low, high, floor is not None and (floor[0] == low or floor[1] == high)


def _floor_disagreement(base: list[float], cand: list[float], noise: ConfigNoise | None) -> str | None:
    """Why a noise floor cannot stand in for these repeats' spread, or None: the repeats spread more than the
    floor's (pooled variance of log(metric) over both sides, an F test at 1% against the floor's variance)."""
    if noise is None or min(base + cand) <= 0:
        return None
    logs = [[math.log(v) for v in side] for side in (base, cand)]
    df = sum(len(side) - 1 for side in logs)
    if df < 1:
        return None
    pooled = sum(sum((x - statistics.fmean(side)) ** 2 for x in side) for side in logs if len(side) > 1) / df
    from scipy.stats import f

    if noise.log_sd == 0:
        limit = 0.0
    else:
        limit = noise.log_sd ** 2 * float(f.ppf(0.99, df, noise.df))
    if pooled <= limit:
        return None
    return (f"the repeats spread {math.sqrt(pooled):.1%} (log sd), more than the noise floor's {noise.log_sd:.1%} "
            f"allows: the floor does not describe these runs; use {MIN_REPEATS} or more repeats a side")


def decide(base: list[float], cand: list[float], *, threshold: float, higher_is_better: bool,
           noise: ConfigNoise | None = None) -> Verdict:
    verdict = _decide(base, cand, threshold=threshold, higher_is_better=higher_is_better, noise=noise)
    verdict.base_median, verdict.cand_median = statistics.median(base), statistics.median(cand)
    return verdict


def _decide(base: list[float], cand: list[float], *, threshold: float, higher_is_better: bool,
            noise: ConfigNoise | None) -> Verdict:
    below_zero = [side for side, values in (("baseline", base), ("candidate", cand)) if statistics.median(values) < 0]
    if below_zero:
        # A ratio is a change only between positive values: -1.1 over 0.1 is -11, read as a huge fall of a rate and
        # a huge gain of a cost, whatever happened.
        return Verdict(config_key="", verdict="inconclusive", ratio=None, ci_low=None, ci_high=None,
                       n_base=len(base), n_cand=len(cand),
                       note=f"median below 0 in the {' and the '.join(below_zero)}: a ratio of values that are not "
                            "positive is not defined, so no threshold applies; compare a metric that is")
    zero = [side for side, values in (("baseline", base), ("candidate", cand)) if statistics.median(values) == 0]
    if len(zero) == 2:
        # A count that stayed at 0 (no stalls, no skipped steps) did not change.
        return Verdict(config_key="", verdict="unchanged", ratio=None, ci_low=None, ci_high=None,
                       n_base=len(base), n_cand=len(cand), note="median 0 on both sides")
    if zero:
        return _without_a_ratio(base, cand, zero[0], higher_is_better=higher_is_better)
    ratio = statistics.median(cand) / statistics.median(base)
    interval = _interval(base, cand, noise)
    if interval is None:
        note = (f"{len(base)}/{len(cand)} ok repeats: a verdict needs at least {MIN_REPEATS} a side, or "
                "--noise-floor FILE from lmbench calibrate")
        return Verdict(config_key="", verdict="inconclusive", ratio=ratio, ci_low=None, ci_high=None,
                       n_base=len(base), n_cand=len(cand), note=note)
    low, high, from_floor = interval
    # The threshold applies to the metric as measured: 5% more step time is a regression at 5%.
    below, above = high < 1 - threshold, low > 1 + threshold
    disagreement = _floor_disagreement(base, cand, noise) if min(len(base), len(cand)) < MIN_REPEATS else None
    if disagreement:
        verdict, note = "inconclusive", disagreement
    elif below or above:
        verdict, note = ("improvement" if above == higher_is_better else "regression"), ""
    elif high - low > 2 * threshold or low < 1 - threshold or high > 1 + threshold:
        # The interval is the widest of the estimates: so is the count of repeats that would settle it.
        needed = max(filter(None, [repeats_needed(base, cand, threshold),
                                   noise.repeats_for(threshold, ratio) if noise is not None else None]),
                     default=None)
        verdict = "inconclusive"
        if high - low > 2 * threshold:
            note = f"interval wider than ±{threshold * 100:g}%"
        else:
            # Narrow enough, but reaching past an edge: a change beyond the threshold is neither shown nor excluded.
            edge = 1 - threshold if low < 1 - threshold else 1 + threshold
            note = (f"interval {low - 1:+.1%} to {high - 1:+.1%} reaches past {edge - 1:+.1%}: a change beyond the "
                    "threshold is neither shown nor excluded")
        room = room_to_edge(ratio, threshold)
        if needed is None:
            note += "; more repeats needed"
        elif noise is not None and noise.run_df and noise.half_width(MAX_REPEATS_SHOWN, MAX_REPEATS_SHOWN) > room:
            note += ("; the floor's noise between runs alone reaches past the threshold, which no number of repeats "
                     "narrows: lengthen the runs' windows (more steps) or calibrate on a quieter host, calibrate "
                     "with more --runs, or gate at a larger --threshold")
        elif needed > MAX_REPEATS_SHOWN:
            note += (f"; the noise is far above the threshold, or the change sits on it (over {MAX_REPEATS_SHOWN:,} "
                     "repeats per side needed)")
        else:
            note += f"; about {needed} repeats per side needed"
    elif high < 1 or low > 1:
        # The interval excludes no change: a real difference, smaller than the threshold.
        verdict, note = "unchanged", f"a change of {ratio - 1:+.1%}, inside the ±{threshold * 100:g}% threshold"
    else:
        verdict, note = "unchanged", ""
    if noise is not None:
        source = "interval from the noise floor" if from_floor else "interval from the repeats (wider than the floor's)"
        note = "; ".join(filter(None, [note, source]))
    return Verdict(config_key="", verdict=verdict, ratio=ratio, ci_low=low, ci_high=high, n_base=len(base),
                   n_cand=len(cand), note=note)


def _without_a_ratio(base: list[float], cand: list[float], zero: str, *, higher_is_better: bool) -> Verdict:
    """A count at 0 on one side (stall_steps, nonfinite_losses, overflow_skipped_steps) has no ratio, so no
    threshold applies: the repeats' order decides. Every repeat of one side above every repeat of the other is a
    change when that order, either way, is unlikely by chance (an exact rank test, two-sided as the ratio's
    interval is: 2 / C(n_b + n_c, n_b) <= 5%, which 4 repeats a side allow, 3 do not); 0 in 4 baseline repeats
    and 4, 5, 3, 4 stalls in 4 candidate ones is a regression."""
    def span(values: list[float]) -> str:
        low, high = min(values), max(values)
        return f"{low:g}" if low == high else f"{low:g} to {high:g}"

    note = f"median 0 in the {zero}: no ratio"
    above, below = min(cand) > max(base), max(cand) < min(base)
    chance = 2 / math.comb(len(base) + len(cand), len(base))
    if (above or below) and chance <= 1 - CONFIDENCE + 1e-12:
        verdict = "improvement" if above == higher_is_better else "regression"
        note += (f"; every candidate repeat ({span(cand)}) {'above' if above else 'below'} every baseline one "
                 f"({span(base)}; exact rank test p = {chance:.3f}, two-sided)")
    else:
        verdict = "inconclusive"
        why = "the repeats overlap" if not (above or below) else f"{len(base)}/{len(cand)} repeats are too few"
        note += f"; {why}: a change needs every repeat of one side beyond every one of the other, with 4 or more a side"
    return Verdict(config_key="", verdict=verdict, ratio=None, ci_low=None, ci_high=None, n_base=len(base),
                   n_cand=len(cand), note=note)


def compare(base: list[dict[str, Any]], cand: list[dict[str, Any]], *, metric: str = "tokens_per_s",
            threshold: float = 0.05, noise: NoiseFloor | None = None, allow_missing: bool = False,
            strict: bool = False) -> list[Verdict]:
    """One verdict per configuration key found in either run, in the baseline's order; `strict` makes an
    inconclusive verdict blocking too."""
    if not 0 < threshold < 1:
        raise UsageError(f"--threshold {threshold:g}: must be above 0 and below 1 (e.g. 5%)")
    if noise is not None:
        noise.check_metric(metric)
    more_is_better = higher_is_better(metric)
    b_values, c_values = ok_values(base, metric), ok_values(cand, metric)
    # The repeats a verdict rests on: those whose host no other process kept busy (lmbench.measure.hostload).
    b_quiet, c_quiet = ok_values(_quiet(base), metric), ok_values(_quiet(cand), metric)
    b_status, c_status = _statuses(base), _statuses(cand)
    parity, parity_before = _worst_parity(cand), _worst_parity(base)
    verdicts = []
    for key in list(dict.fromkeys([*b_values, *c_values])):
        if key not in b_values or key not in c_values:
            lacking = "candidate" if key not in c_values else "baseline"
            note = f"not in the {lacking} run" + (" (allowed)" if lacking == "candidate" and allow_missing else "")
            verdicts.append(Verdict(key, "missing", None, None, None, len(b_values.get(key, [])),
                                    len(c_values.get(key, [])), note,
                                    blocking=lacking == "candidate" and not allow_missing,
                                    base_median=_median(b_values.get(key)), cand_median=_median(c_values.get(key))))
            continue
        b, c = b_values[key], c_values[key]
        if set(b_status[key]) == set(c_status[key]) == {"skipped"}:
            # Never ran on either side (a GPU-only configuration on a CPU, say): nothing failed, nothing to judge.
            reason = next((r.get("reason") for r in [*cand, *base] if r["config_key"] == key and r.get("reason")), "")
            verdicts.append(Verdict(key, "skipped", None, None, None, 0, 0,
                                    f"skipped in both runs{': ' + reason if reason else ''}", blocking=False))
            continue
        if not b or not c:
            verdict = _unmeasured(key, metric, b, c, b_status[key], c_status[key])
            verdict.blocking = verdict.blocking or (strict and verdict.verdict == "inconclusive")
            verdict.base_median, verdict.cand_median = _median(b), _median(c)
            verdicts.append(verdict)
            continue
        busy = len(b) - len(b_quiet.get(key, [])), len(c) - len(c_quiet.get(key, []))
        b, c = b_quiet.get(key, []), c_quiet.get(key, [])
        if b and c:
            verdict = decide(b, c, threshold=threshold, higher_is_better=more_is_better,
                             noise=noise.get(key) if noise else None)
        else:
            # A contended window measures the machine's other work as much as the code: no verdict on it alone.
            sides = " and ".join(side for side, quiet in (("baseline", b), ("candidate", c)) if not quiet)
            verdict = Verdict("", "inconclusive", None, None, None, len(b), len(c),
                              f"every {sides} repeat ran on a contended host; rerun where no other work runs",
                              base_median=_median(b), cand_median=_median(c))
        verdict.config_key = key
        verdict.parity = parity.get(key)
        if noise is not None and noise.get(key) is None and b and c:
            verdict.note = "; ".join(filter(None, [verdict.note, f"{noise.source} has no noise floor for this "
                                                   "configuration"]))
        elif noise is not None and key in noise.contended and b and c:
            # Used all the same (a warning says so for the run): the row it widened or narrowed says so too.
            verdict.note = "; ".join(filter(None, [verdict.note, "its noise floor was taken on a contended host (it "
                                                   "measures that host's load as much as the configuration)"]))
        unreported = [f"{status[key]['ok'] - len(values[key])} of {status[key]['ok']} {side} ok repeats"
                      for side, status, values in (("baseline", b_status, b_values), ("candidate", c_status, c_values))
                      if status[key]["ok"] > len(values[key])]
        if unreported:
            verdict.note = "; ".join(filter(None, [verdict.note, f"{' and '.join(unreported)} report no finite "
                                                   f"{metric}, left out"]))
        worse = _worse_failures(b_status[key], c_status[key])
        if worse:
            # A candidate that crashes some of the time is not judged on the repeats that survived.
            verdict.verdict, verdict.note = "failed", worse
        elif parity.get(key) == "diverged" and parity_before.get(key) != "diverged":
            # Training wrong is a failure whatever the speed: the baseline trained as its reference did.
            verdict.verdict, verdict.note = "failed", (
                f"its loss parity diverged from the reference (the baseline's: {parity_before.get(key, 'not checked')}"
                f"); {metric} was {_as_measured(verdict)}")
        elif verdict.verdict == "improvement" and parity.get(key) == "diverged":
            # Fast but training wrong is not better.
            verdict.verdict, verdict.note = "failed", "faster, but its loss parity diverged from the reference"
        elif any(s in FAILURES for s in c_status[key]):
            verdict.note = "; ".join(filter(None, [verdict.note, f"failed repeats: candidate "
                                                   f"{status_counts(c_status[key], FAILURES)}, baseline "
                                                   f"{status_counts(b_status[key], FAILURES) or 'none failed'}"]))
        # One key, other code (a newer lmbench fused more or less, compile broke the graph elsewhere, split a
        # pipeline otherwise) or other data (a corpus edited at the same path).
        for field, what in (("kernels_applied", "other kernels applied"), ("data_sha256", "other data"),
                            ("pp_layers_per_stage", "other blocks per pipeline stage")):
            differs = _differs(base, cand, key, field, what)
            if differs:
                verdict.note = "; ".join(filter(None, [verdict.note, differs]))
        # Other software or another device under one configuration: the ratio is of both changes (a warning says
        # so for the run; the row says which, for a configuration the runs' other rows do not share it with).
        for difference in environments.differences([r for r in base if r["config_key"] == key],
                                                   [r for r in cand if r["config_key"] == key]):
            verdict.note = "; ".join(filter(None, [verdict.note, f"{difference.field}: "
                                                   f"{', '.join(difference.baseline)} (baseline) vs "
                                                   f"{', '.join(difference.candidate)} (candidate)"]))
        # A setting of the card that bounds its speed (a lower power cap, applications clocks held down, ECC) on one
        # side: where it could explain the change (a regression on the more constrained candidate, an improvement on
        # the more constrained baseline), the ratio measures the setting as much as the code and no verdict stands
        # on it; a regression despite more headroom stands (a reviewer: 750 W against 700 W passed a 15% loss).
        settings = [_differs(base, cand, key, field, what) for field, what in _SETTINGS]
        if any(settings):
            held = _constrained(base, cand, key)
            if (verdict.verdict == "regression" and "candidate" in held) or (
                    verdict.verdict == "improvement" and "baseline" in held):
                verdict.verdict = "inconclusive"
            verdict.note = "; ".join(filter(None, [verdict.note, *settings]))
        # Energy from the counter on one side and a power integral on the other (a window that a speed-up took
        # under the counter's second): the ratio mixes the change of method with the change (a reviewer).
        method = _differs(base, cand, key, "energy_source", "energy measured another way") \
            if metric in ENERGY_METRICS else ""
        if method:
            if verdict.verdict in ("regression", "improvement"):
                verdict.verdict = "inconclusive"
            verdict.note = "; ".join(filter(None, [verdict.note, method]))
        shared = [_gpu_shared(side, key) for side in (base, cand)]
        if any(shared):
            # A context another process held on the GPU as a window opened or closed (lmbench.measure.gpushare): it
            # may have shared the SMs, or idled; said, not left out, since NVML's list does not tell which.
            verdict.note = "; ".join(filter(None, [verdict.note, f"another process held the GPU in {shared[0]} "
                                                   f"baseline and {shared[1]} candidate repeats"]))
        if any(busy):
            # Other processes kept the host busy in these windows: left out, a slowdown there being the machine's.
            verdict.note = "; ".join(filter(None, [verdict.note, f"left out as contended: {busy[0]} of "
                                                   f"{busy[0] + len(b)} baseline and {busy[1]} of {busy[1] + len(c)} "
                                                   "candidate repeats"]))
        verdict.blocking = verdict.verdict in ("regression", "failed") or (strict and verdict.verdict == "inconclusive")
        verdicts.append(verdict)
    return verdicts


#: The card's settings a record's telemetry reads (lmbench.measure.nvml.NvmlDevice.static_info) that bound how fast
#: it runs: the enforced power limit (the sum over a job's cards, and the most capped one's), the SM clock the
#: applications clocks ask for, ECC.
_SETTINGS = (("power_limit_w", "another power limit (W)"), ("power_limit_min_w", "another power limit on a card (W)"),
             ("sm_clock_app_mhz", "other applications clocks (SM MHz)"), ("ecc_enabled", "ECC set otherwise"))


def _said(records: list[dict[str, Any]], key: str, field: str) -> list[Any]:
    """The values of `field` in the configuration's ok records that say one (null left out)."""
    return [v for r in records if r["config_key"] == key and r["status"] == "ok"
            for v in [(r.get("metrics") or {}).get(field)] if v is not None]


def _gpu_shared(records: list[dict[str, Any]], key: str) -> int:
    """The configuration's ok repeats whose GPU another process held a context on during the window."""
    return sum(1 for others in _said(records, key, "gpu_other_processes") if others > 0)


def _constrained(base: list[dict[str, Any]], cand: list[dict[str, Any]], key: str) -> set[str]:
    """The sides whose card some ok record of the configuration shows more constrained than a record of the other
    side: a lower power limit or applications clock, or ECC on where the other's was off."""
    held = set()
    for field, _ in _SETTINGS:
        for side, mine, theirs in (("baseline", _said(base, key, field), _said(cand, key, field)),
                                   ("candidate", _said(cand, key, field), _said(base, key, field))):
            # ECC on (True) is the constrained setting, as a lower limit or clock is.
            if any((m is True and t is False) if field == "ecc_enabled" else (m < t) for m in mine for t in theirs):
                held.add(side)
    return held


def _differs(base: list[dict[str, Any]], cand: list[dict[str, Any]], key: str, field: str, what: str) -> str:
    """A note when the configuration's ok records say other things of `field` in the two runs (kernels_applied,
    data_sha256), or ''; records that say nothing (eager, an older lmbench) are left out. False says something (ECC
    off)."""
    def said(records: list[dict[str, Any]]) -> set[str]:
        return {str(v) for v in _said(records, key, field) if v not in ("", [], {})}

    before, after = said(base), said(cand)
    if not before or not after or before == after:
        return ""
    return f"{what}: baseline {' | '.join(sorted(before))}; candidate {' | '.join(sorted(after))}"


def _unmeasured(key: str, metric: str, b: list[float], c: list[float], b_status: Counter[str],
                c_status: Counter[str]) -> Verdict:
    """The verdict of a configuration with no value of `metric` on a side: `failed` where that side has no ok
    repeat (blocking when it is only the candidate's); `skipped` where the ok repeats of both sides, or of the
    baseline only, report no such metric (scaling_efficiency of a row that has no single-device baseline);
    `inconclusive` where the candidate's report none that the baseline's did."""
    lacking = [side for side, values in (("baseline", b), ("candidate", c)) if not values]
    statuses = {"baseline": b_status, "candidate": c_status}
    unrun = [side for side in lacking if not statuses[side]["ok"]]
    if len(unrun) == 2:
        before = ("it failed in the baseline too" if any(s in FAILURES for s in b_status)
                  else "the baseline never ran it")
        return Verdict(key, "failed", None, None, None, 0, 0,
                       f"no ok repeat in either run (baseline {status_counts(b_status)}, candidate "
                       f"{status_counts(c_status)}): {before}, so this does not fail the gate")
    if unrun:
        side = unrun[0]
        fixed = "" if side == "candidate" else ": the candidate ran, so this does not fail the gate"
        return Verdict(key, "failed", None, None, None, len(b), len(c),
                       f"no ok repeat in the {side} ({status_counts(statuses[side])}){fixed}",
                       blocking=side == "candidate")
    if len(lacking) == 2:
        return Verdict(key, "skipped", None, None, None, 0, 0, f"no ok repeat reports {metric} in either run")
    # Ran on both sides, reported on one. The candidate losing a metric the baseline had is not judged, and not
    # passed over either: inconclusive, which a strict gate fails (it may be the tool's change: scaling_efficiency
    # needs a single-device row and, since 2026-11-27, a GPU). A metric only the candidate reports lost nothing.
    side = lacking[0]
    if side == "candidate":
        return Verdict(key, "inconclusive", None, None, None, len(b), 0,
                       f"the candidate's {c_status['ok']} ok repeat(s) report no {metric}, which the baseline's "
                       "did: nothing to compare")
    return Verdict(key, "skipped", None, None, None, len(b), len(c),
                   f"the baseline's {b_status['ok']} ok repeat(s) report no {metric}: nothing to compare")


def _worst_parity(records: list[dict[str, Any]]) -> dict[str, str]:
    """Each configuration's worst loss parity over its repeats (reference < ok < drift < diverged), where checked."""
    order = ["reference", "ok", "drift", "diverged"]
    worst: dict[str, str] = {}
    for r in records:
        value = (r.get("metrics") or {}).get("parity")
        if value in order and order.index(value) >= order.index(worst.get(r["config_key"], "reference")):
            worst[r["config_key"]] = value
    return worst


def _median(values: list[float] | None) -> float | None:
    return statistics.median(values) if values else None


def _as_measured(verdict: Verdict) -> str:
    """What a verdict found of the metric, for a note that overrides it: `unchanged (+0.4%)`."""
    return verdict.verdict + (f" ({verdict.ratio - 1:+.1%})" if verdict.ratio is not None else "")


def _quiet(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records less the ok repeats whose window other processes kept the host's cores busy in
    (lmbench.measure.hostload)."""
    from lmbench.measure.hostload import window_contended

    return [r for r in records if r["status"] != "ok" or not window_contended(r.get("metrics") or {})]


def _worse_failures(base: Counter[str], cand: Counter[str]) -> str | None:
    """Why the candidate's failed repeats (oom, error, diverged, timeout) are worse than the baseline's, or None:
    a status the baseline never ended in (a hang or an OOM is a finding, not noise), or a larger share of its
    repeats than chance explains (Fisher's exact test, one-sided, at 5%: 1 timeout in 3 repeats against 1 in 5
    is not worse, 3 in 3 against 1 in 10 is)."""
    failed_c = Counter({s: n for s, n in cand.items() if s in FAILURES})
    failed_b = Counter({s: n for s, n in base.items() if s in FAILURES})
    if not failed_c:
        return None
    new = sorted(set(failed_c) - set(failed_b))
    if not new:
        from scipy.stats import fisher_exact

        n_c, n_b, f_c, f_b = sum(cand.values()), sum(base.values()), sum(failed_c.values()), sum(failed_b.values())
        p_value = float(fisher_exact([[f_c, n_c - f_c], [f_b, n_b - f_b]], alternative="greater")[1])
        if p_value >= 1 - CONFIDENCE:
            return None
    how = f"in {next(iter(failed_c))}" if len(failed_c) == 1 else status_counts(failed_c)  # not "ended 4 timeout"
    ended = f"{sum(failed_c.values())} of {sum(cand.values())} candidate repeats ended {how}"
    if not failed_b:
        return f"{ended}; every baseline repeat ran"
    baseline = f"{status_counts(failed_b)} of {sum(base.values())} in the baseline"
    if new:
        return f"{ended}, which the baseline never did ({', '.join(new)}; {baseline})"
    return f"{ended}, a larger share than the baseline's ({baseline}; Fisher's exact test p = {p_value:.3f})"


def _statuses(records: list[dict[str, Any]]) -> dict[str, Counter[str]]:
    counts: dict[str, Counter[str]] = {}
    for r in records:
        counts.setdefault(r["config_key"], Counter())[r["status"]] += 1
    return counts


def parse_threshold(text: str) -> float:
    """'5%' or '0.05' -> 0.05."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise UsageError(f"--threshold {text!r}: expected a percentage like 5% or a fraction like 0.05") from None
    if not 0 < value < 1:
        read = f" ({text} is read as {value:.0%}; write 5% or 0.05)" if value >= 1 and not text.endswith("%") else ""
        raise UsageError(f"--threshold {text!r}: must be above 0% and below 100%{read}")
    return value

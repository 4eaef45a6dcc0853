"""Interleaved rounds: several implementations timed side by side, so that drift cancels out of their ratios.

Timing one implementation after another lets whatever drifts over the session (SM clocks under a power cap,
temperature, another tenant on the card) land on whichever ran last. Here every round times each one once, in
a fresh random order, and two implementations are compared by the ratio of their times within each round: a
drift slower than a round cancels out of it. The ratios' geometric mean gets a 95% Student t interval over the
rounds (log ratios, so that 2x and 0.5x sit symmetrically about 1), and a difference is only a difference when
the whole interval is on one side of 1.

Rounds are not independent: a drift over a few rounds (a clock settling, another tenant's burst) leaves
neighbouring rounds' ratios alike, and a t interval that counts every round as new information is too narrow (10
rounds with a lag-1 autocorrelation of 0.3 missed the true ratio 14.5% of the time at a nominal 5%). So the
interval counts n_eff = n (1 - r) / (1 + r) rounds (the variance of an AR(1) series' mean), with r the rounds'
lag-1 autocorrelation, corrected for its bias in short series (Marriott and Pope 1954: E[r̂] ≈ r - (1 + 3r) / n,
solved for r) and held to [0, 0.9]. Simulated (AR(1) log ratios, 4,000 series): 10 rounds at 0.3 then miss 7.0%,
at 0.6 10.2% (31% before); independent rounds 3.1% (5.1%), at intervals 17% wider; 30 rounds at 0.3 6.2%. The
rest is the estimate's own noise, which 10 rounds cannot pin down. Below MIN_ROUNDS_FOR_R rounds r is taken as 0.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

Name = TypeVar("Name")


def interleaved(timers: Mapping[Name, Callable[[], float]], rounds: int, *, seed: int = 0,
                between: Callable[[], None] | None = None) -> dict[Name, list[float]]:
    """{name: one time a round}: each round calls every timer once, in a fresh random order (seeded, so that a
    rerun repeats the orders); `between`, when given, runs after each round (a clock reading, say)."""
    rng = random.Random(seed)
    samples: dict[Name, list[float]] = {name: [] for name in timers}
    for _ in range(rounds):
        order = list(timers)
        rng.shuffle(order)
        for name in order:
            samples[name].append(timers[name]())
        if between is not None:
            between()
    return samples


#: Fewer rounds than this leave no lag-1 autocorrelation worth estimating (its bias correction divides by n - 3).
MIN_ROUNDS_FOR_R = 5
#: The largest lag-1 autocorrelation counted: 0.9 leaves 10 rounds half a round's worth of information.
MAX_R = 0.9


def lag1_autocorrelation(values: Sequence[float]) -> float:
    """The lag-1 autocorrelation of `values`, corrected for the bias of a short series and held to [0, MAX_R]
    (module docstring); 0 below MIN_ROUNDS_FOR_R values or for values that do not vary."""
    n = len(values)
    if n < MIN_ROUNDS_FOR_R:
        return 0.0
    mean = statistics.fmean(values)
    deviations = [v - mean for v in values]
    total = math.fsum(d * d for d in deviations)
    if total == 0:
        return 0.0
    r = math.fsum(a * b for a, b in zip(deviations, deviations[1:])) / total
    return min(max((n * r + 1) / (n - 3), 0.0), MAX_R)


def ratio_interval(ratios: Sequence[float]) -> tuple[float, float, float]:
    """Geometric mean of per-round ratios and its 95% t interval over the effective number of rounds, n (1 - r) /
    (1 + r) with r their log ratios' lag-1 autocorrelation (module docstring); one round: no interval, (0, inf)."""
    from scipy.stats import t

    if not ratios or min(ratios) <= 0:
        raise ValueError(f"ratios must be positive and at least one: {list(ratios)}")
    logs = [math.log(r) for r in ratios]
    mean = statistics.fmean(logs)
    if len(logs) < 2:
        return math.exp(mean), 0.0, math.inf
    r = lag1_autocorrelation(logs)
    rounds = len(logs) * (1 - r) / (1 + r)
    # At least one degree of freedom: a t quantile of 12.7, against the few rounds' worth a strong drift leaves.
    half = float(t.ppf(0.975, max(rounds - 1, 1.0))) * statistics.stdev(logs) / math.sqrt(rounds)
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def paired_ratio(mine: Sequence[float], theirs: Sequence[float]) -> tuple[float, float, float]:
    """ratio_interval of mine / theirs, round by round (both timed in the same rounds)."""
    if len(mine) != len(theirs):
        raise ValueError(f"paired rounds only: {len(mine)} against {len(theirs)} times")
    return ratio_interval([m / t for m, t in zip(mine, theirs, strict=True)])


#: A time ratio whose whole interval lies within this of 1 is no difference worth a word, however tight: ten rounds
#: of a quiet GPU tell 0.2% apart, which no choice of kernel or plan should turn on.
ALIKE = 0.01


def verdict(low: float, high: float) -> str:
    """What an interval of a time ratio (mine / theirs) says: 'faster', 'slower', 'alike (within 1%)' when the
    whole interval lies within ALIKE of 1, or 'not told apart'."""
    if 1 - ALIKE <= low and high <= 1 + ALIKE:
        return f"alike (within {ALIKE:.0%})"
    if high < 1:
        return "faster"
    if low > 1:
        return "slower"
    return "not told apart"

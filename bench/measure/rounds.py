"""Interleaved rounds: several implementations timed side by side, so that drift cancels out of their ratios.

Timing one implementation after another lets whatever drifts over the session (SM clocks under a power cap,
temperature, another tenant on the card) land on whichever ran last. Here every round times each one once, in
a fresh random order, and two implementations are compared by the ratio of their times within each round: a
drift slower than a round cancels out of it. The ratios' geometric mean gets a 95% Student t interval over the
rounds (log ratios, so that 2x and 0.5x sit symmetrically about 1), and a difference is only a difference when
the whole interval is on one side of 1.
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


def ratio_interval(ratios: Sequence[float]) -> tuple[float, float, float]:
    """Geometric mean of per-round ratios and its 95% t interval (one round: no interval, (0, inf))."""
    from scipy.stats import t

    if not ratios or min(ratios) <= 0:
        raise ValueError(f"ratios must be positive and at least one: {list(ratios)}")
    logs = [math.log(r) for r in ratios]
    mean = statistics.fmean(logs)
    if len(logs) < 2:
        return math.exp(mean), 0.0, math.inf
    half = float(t.ppf(0.975, len(logs) - 1)) * statistics.stdev(logs) / math.sqrt(len(logs))
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

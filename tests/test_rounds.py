import math

import pytest

from lmbench.measure import rounds


def test_rounds_interleave_every_timer_in_a_fresh_order():
    calls, marks = [], []
    samples = rounds.interleaved({name: (lambda name=name: calls.append(name) or 1.0) for name in "abc"}, 4,
                                 seed=0, between=lambda: marks.append(len(calls)))
    assert samples == {name: [1.0] * 4 for name in "abc"}
    each = [tuple(calls[i:i + 3]) for i in range(0, 12, 3)]
    assert all(sorted(r) == ["a", "b", "c"] for r in each) and len(set(each)) > 1
    # `between` runs after each whole round.
    assert marks == [3, 6, 9, 12]
    # Seeded: a rerun repeats the orders.
    again = []
    rounds.interleaved({name: (lambda name=name: again.append(name) or 1.0) for name in "abc"}, 4, seed=0)
    assert again == calls


def test_ratio_interval_is_a_geometric_mean_with_a_t_interval():
    # Hand-computed: logs of 0.9 and 0.8, mean -0.16425, sd 0.08329, t(0.975, 1) = 12.706.
    ratio, low, high = rounds.ratio_interval([0.9, 0.8])
    assert ratio == pytest.approx(math.sqrt(0.72))
    half = 12.7062 * abs(math.log(0.9) - math.log(0.8)) / math.sqrt(2) / math.sqrt(2)
    assert low == pytest.approx(math.sqrt(0.72) * math.exp(-half), rel=1e-4)
    assert high == pytest.approx(math.sqrt(0.72) * math.exp(half), rel=1e-4)
    ratio, low, high = rounds.ratio_interval([0.90, 0.91, 0.89, 0.90])
    assert ratio == pytest.approx(0.90, abs=0.002) and low < ratio < high < 0.93
    # One round: no interval.
    assert rounds.ratio_interval([2.0]) == (2.0, 0.0, math.inf)
    with pytest.raises(ValueError):
        rounds.ratio_interval([1.0, 0.0])


def test_a_difference_is_one_only_when_the_whole_interval_is_on_one_side():
    _, low, high = rounds.ratio_interval([0.95, 1.06, 0.97, 1.04])
    assert rounds.verdict(low, high) == "not told apart"
    assert rounds.verdict(*rounds.paired_ratio([0.9, 0.91, 0.89], [1.0, 1.0, 1.0])[1:]) == "faster"
    assert rounds.verdict(*rounds.paired_ratio([2.0, 2.1, 1.9], [1.0, 1.0, 1.0])[1:]) == "slower"
    # Told apart, but by 0.2%: no difference worth choosing a kernel or plan on (a reviewer).
    assert rounds.verdict(*rounds.paired_ratio([0.998, 0.9981, 0.9979], [1.0, 1.0, 1.0])[1:]) == "alike (within 1%)"


def test_pairs_are_taken_round_by_round():
    # A drift that doubles every time between rounds cancels out of the paired ratio: 0.5 each round.
    mine, theirs = [1.0, 2.0, 4.0, 8.0], [2.0, 4.0, 8.0, 16.0]
    ratio, low, high = rounds.paired_ratio(mine, theirs)
    assert ratio == pytest.approx(0.5) and low == pytest.approx(0.5) and high == pytest.approx(0.5)
    with pytest.raises(ValueError):
        rounds.paired_ratio([1.0], [1.0, 2.0])


def test_the_lag_1_autocorrelation_is_corrected_for_a_short_series_and_held_to_its_range():
    # d = ±0.5 in pairs: sum d_i d_i+1 = 0.25, sum d² = 2, r = 0.125; (8 × 0.125 + 1) / (8 - 3) = 0.4.
    assert rounds.lag1_autocorrelation([1, 1, 2, 2, 1, 1, 2, 2]) == pytest.approx(0.4)
    assert rounds.lag1_autocorrelation([0, 1, 0, 1, 0, 1]) == 0.0  # alternating: below 0, held at 0
    assert rounds.lag1_autocorrelation([1, 2, 3, 4, 5, 6]) == rounds.MAX_R  # a trend: 4/3, held at 0.9
    assert rounds.lag1_autocorrelation([1, 1, 2, 2]) == 0.0  # too few rounds to estimate it
    # The interval counts n (1 - r) / (1 + r) = 8 × 0.6 / 1.4 rounds: t(0.975, n_eff - 1) × sd / sqrt(n_eff).
    ratios = [math.exp(0.01 * x) for x in (1, 1, 2, 2, 1, 1, 2, 2)]
    ratio, low, high = rounds.ratio_interval(ratios)
    n_eff = 8 * 0.6 / 1.4
    from scipy.stats import t
    half = float(t.ppf(0.975, n_eff - 1)) * 0.01 * math.sqrt(2 / 7) / math.sqrt(n_eff)
    assert math.log(high / ratio) == pytest.approx(half) and math.log(ratio / low) == pytest.approx(half)


def test_autocorrelated_rounds_keep_most_of_the_intervals_coverage():
    """Rounds alike with their neighbours (a drift over a few rounds): an AR(1) of lag-1 autocorrelation 0.3 over 10
    rounds missed the true ratio 14.5% of the time with the rounds counted as independent (a reviewer); counted as
    the rounds' worth they hold, 7%. Independent rounds stay covered (3%, at a nominal 5%)."""
    import numpy as np

    rng = np.random.default_rng(2)

    def missed(phi: float, series: int = 1000, n: int = 10) -> float:
        misses = 0
        for _ in range(series):
            noise = rng.normal(0, 0.01, n)
            logs = [noise[0] / math.sqrt(1 - phi ** 2)]
            for step in noise[1:]:
                logs.append(phi * logs[-1] + step)
            _, low, high = rounds.ratio_interval([math.exp(x) for x in logs])
            misses += not low <= 1 <= high
        return misses / series

    assert missed(0.3) < 0.10 and missed(0.0) <= 0.05

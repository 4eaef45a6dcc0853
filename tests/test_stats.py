import math

import pytest

from lmbench.measure.stats import mean, percentile, stdev, summarize


def test_percentile_interpolates_between_order_statistics():
    values = [4.0, 1.0, 3.0, 2.0, 5.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 5.0
    # rank = 4 * 0.1 = 0.4 -> 1 + 0.4 * (2 - 1)
    assert percentile(values, 10) == pytest.approx(1.4)
    assert percentile(values, 90) == pytest.approx(4.6)


def test_percentile_of_even_count_median_is_midpoint():
    assert percentile([1.0, 2.0, 3.0, 10.0], 50) == 2.5


def test_summarize_hand_computed():
    s = summarize([0.10, 0.12, 0.11, 0.13])
    assert s["median"] == pytest.approx(0.115)
    assert s["mean"] == pytest.approx(0.115)
    # deviations: -0.015, 0.005, -0.005, 0.015 -> sum of squares 5e-4, / 3
    assert s["std"] == pytest.approx(math.sqrt(5e-4 / 3))
    assert s["cv"] == pytest.approx(math.sqrt(5e-4 / 3) / 0.115)
    assert s["p10"] == pytest.approx(0.103)
    assert s["p90"] == pytest.approx(0.127)


def test_a_single_value_has_no_spread_not_a_zero_one():
    """`--set steps=1 --set warmup=0` recorded step cv 0.0: the sample spread of one value is undefined."""
    assert stdev([2.0]) is None
    assert summarize([2.0])["std"] is None and summarize([2.0])["cv"] is None
    assert summarize([2.0])["median"] == summarize([2.0])["mean"] == mean([2.0]) == 2.0
    assert stdev([2.0, 2.0]) == 0.0  # two equal values are steady


def test_empty_and_out_of_range_are_errors():
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_the_coefficient_of_variation_is_over_the_mean():
    """A sample whose median and mean part: cv = stdev / mean (1.0 here), the published step_time_cv; over the
    median it would read 2.0, and the hand-computed sample (median = mean) could not tell them apart."""
    out = summarize([1.0, 1.0, 1.0, 5.0])
    assert (out["mean"], out["median"], out["std"], out["cv"]) == (2.0, 1.0, 2.0, 1.0)

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


def test_single_value_has_zero_spread():
    assert stdev([2.0]) == 0.0
    assert summarize([2.0])["cv"] == 0.0
    assert mean([2.0]) == 2.0


def test_empty_and_out_of_range_are_errors():
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)

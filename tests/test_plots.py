"""The report's figures (lmbench.analyze.plots) against hand-made results: what each one draws, exactly."""

import math

import matplotlib.pyplot as plt
import pytest
from matplotlib.collections import LineCollection
from test_report import hand_frame, hand_record

from lmbench.analyze import plots


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_null_and_non_finite_step_times_are_left_out_of_the_box_plot():
    """The reader accepts a null step time (a non-finite one is written as null); the box plot multiplied it by
    1e3 and `lmbench report` ended in an internal error, exit 3 (a reviewer's finding)."""
    record = hand_record("fp32", 8, 1000.0)
    record["step_times_s"] = [0.01, None, float("nan"), 0.012]
    fig = plots.step_time_distributions([record])
    fig.canvas.draw()
    low, high = fig.axes[0].get_xlim()
    assert low < 10 and high > 12 and high < 13
    nothing = hand_record("fp32", 8, 1000.0)
    nothing["step_times_s"] = [None]
    assert [t.get_text() for t in plots.step_time_distributions([nothing]).axes[0].texts] == [
        "no successful configuration"]


def test_the_heatmap_s_default_baseline_is_the_first_value_that_ran():
    """fp32, the first row, ran out of memory: the default baseline was fp32 all the same, and the heatmap said
    no configuration pairs with it; a named baseline that failed was said the same way."""
    records = [hand_record("fp32", 8, 0, status="oom"), hand_record("bf16", 8, 2000.0),
               hand_record("amp-bf16", 8, 3000.0)]
    fig = plots.speedup_heatmap(hand_frame(records))
    panel = next(ax for ax in fig.axes if ax.images)
    assert [t.get_text() for t in panel.texts] == ["oom", "1.00x", "1.50x"]
    assert "÷ that of precision=bf16 with the other axes equal" in fig._suptitle.get_text()
    fig = plots.speedup_heatmap(hand_frame(records), baseline=("precision", "fp32"))
    assert not any(ax.images for ax in fig.axes)
    (why,) = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert why == "baseline precision=fp32 failed (oom): no ratio to it\n(--baseline AXIS=VALUE picks another)"


def test_the_energy_bars_are_the_energy_table_s_repeat_with_the_legend_below():
    """The bars were medians of tokens/J, the table the repeat with the median tokens/s (two figures for one
    row), and the legend inside the axes covered the last bar."""
    repeats = [hand_record("fp32", 8, tps, repeat=i) for i, tps in enumerate((1000.0, 1100.0, 1050.0))]
    for record, per_joule in zip(repeats, (100.0, 120.0, 90.0)):
        record["metrics"]["tokens_per_j"] = per_joule
    fig = plots.tokens_per_joule(hand_frame([*repeats, hand_record("amp-bf16", 8, 2000.0)]))
    ax = fig.axes[0]
    # fp32's repeat with the median tokens/s (1050) gave 90 tokens/J; the median of the three is 100.
    assert [bar.get_width() for bar in ax.patches] == [90.0, 100.0]
    (bars,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert [tuple(segment[:, 0]) for segment in bars.get_segments()] == [(90.0, 120.0), (100.0, 100.0)]
    fig.canvas.draw()
    # Below the axes and their x label (a plot this short put it over the label).
    legend, label = ax.get_legend().get_window_extent(), ax.xaxis.label.get_window_extent()
    assert legend.y1 < label.y0 < ax.get_window_extent().y0


def test_a_null_evaluation_breaks_the_held_out_loss_line():
    """A null val_loss was dropped and the line joined its neighbours: a fall from 5.0 to 3.5 the run never
    measured in between."""
    record = hand_record("fp32", 8, 1000.0)
    record["metrics"].update(val_loss_initial=6.0, val_points=[
        {"step": 10 * i, "tokens": 1000 * i, "wall_s": float(i), "val_loss": loss}
        for i, loss in enumerate((5.0, None, 3.5), start=1)])
    (line,) = plots.val_loss_vs_tokens([record]).axes[0].lines
    assert list(line.get_xdata()) == [0, 1000, 2000, 3000]
    ys = list(line.get_ydata())
    assert ys[:2] == [6.0, 5.0] and math.isnan(ys[2]) and ys[3] == 3.5


def test_throughput_over_batch_shows_the_spread_and_whose_sizes_ran_out_of_memory():
    """One line of medians hid the repeats' spread, and a red cross at 32 did not say which series ran out of
    memory there (fp32 did, amp-bf16 did not)."""
    records = [hand_record("fp32", 8, 1000.0), hand_record("fp32", 8, 1400.0, repeat=1),
               hand_record("fp32", 8, 1100.0, repeat=2), hand_record("fp32", 16, 1500.0),
               hand_record("fp32", 32, 0, status="oom"), hand_record("amp-bf16", 8, 2000.0),
               hand_record("amp-bf16", 16, 2500.0), hand_record("amp-bf16", 32, 2600.0)]
    ax = plots.tokens_vs_batch(hand_frame(records)).axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["precision=amp-bf16", "precision=fp32",
                                                                  "out of memory: precision=fp32"]
    # fp32 at batch 8: median 1100, from 1000 to 1400, in fp32's colour; amp-bf16 ran once a size: no bar.
    (spread,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert [tuple(segment[:, 1]) for segment in spread.get_segments()] == [(1000.0, 1400.0), (1500.0, 1500.0)]
    (fp32,) = [line for line in ax.lines if line.get_label() == "precision=fp32"]
    assert tuple(spread.get_colors()[0]) == pytest.approx(plt.matplotlib.colors.to_rgba(fp32.get_color()))
    (oom,) = [c for c in ax.collections if c.get_label().startswith("out of memory")]
    assert [tuple(xy) for xy in oom.get_offsets()] == [(32.0, 0.0)]

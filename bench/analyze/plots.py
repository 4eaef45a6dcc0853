"""Report figures: each function takes results and returns a matplotlib Figure (Agg backend, no display).

Every figure renders even without data (failed rows only, no telemetry): it then says so inside
the plot instead of raising, so a report of a broken run still has all its pages.
"""

from __future__ import annotations

import csv
import inspect
import math
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from lmbench.analyze.baseline import counterpart  # noqa: E402
from lmbench.analyze.table import configs_of, varying_axes  # noqa: E402
from lmbench.measure.hostload import window_contended  # noqa: E402
from lmbench.measure.telemetry import energy_caveat  # noqa: E402
from lmbench.plan.config import FIELD_TYPES, applies  # noqa: E402

GIB = 2**30


def _empty(title: str, why: str) -> Figure:
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.set_title(title)
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_axis_off()
    return fig


def config_label(row: pd.Series | dict[str, Any], axes: list[str]) -> str:
    """`kernels=compile compile_mode=max-autotune`; an option the row does not use is `-` (kernels=eager
    compile_mode=-), as tables show it; so is an axis the row's lmbench did not have (a newer record's axis)."""
    return " ".join(f"{a}={row.get(a, '-') if applies(row, a) else '-'}" for a in axes)


def _ok(df: pd.DataFrame, column: str) -> pd.DataFrame:
    if column not in df:
        return df.iloc[0:0]
    return df[(df["status"] == "ok") & df[column].notna()]


def _series_axes(df: pd.DataFrame, exclude: set[str]) -> list[str]:
    """Axes whose value varies across the rows (the run too, for a report of several runs), but `exclude`.

    Every varying axis is kept, so grouping by these never pools configurations that differ.
    """
    columns = (["run"] if "run" in df and df["run"].nunique() > 1 else []) + [a for a in FIELD_TYPES if a in df]
    configs = df[columns].to_dict("records")
    return [a for a in varying_axes(configs) if a not in exclude and len(configs) > 1 and a in df
            and df[a].nunique(dropna=False) > 1]


#: Line styles taken in turn once matplotlib's ten colours are spent, so no two series look alike.
_STYLES = ("-", "--", ":", "-.")


def _style(index: int) -> dict[str, Any]:
    """The `index`-th series' colour and line style: ten colours, then the next style with the colours again."""
    return {"color": f"C{index % 10}", "linestyle": _STYLES[(index // 10) % len(_STYLES)]}


def _series_name(series: list[str], label: Any) -> str:
    """`checkpointing=full precision=amp-bf16`: values alone ("full", "64 compile 10 8") name nothing."""
    values = label if isinstance(label, tuple) else (label,)
    return " ".join(f"{axis}={value}" for axis, value in zip(series, values)) or "all"


def _lines_over_batch(ax: Any, df: pd.DataFrame, series: list[str], column: str, scale: float,
                      oom_at: float | None) -> None:
    """One line per combination of the `series` axes: `column`'s median over ok repeats against batch size, a bar
    from the lowest to the highest repeat where there are several (a line of medians hid their spread), and the
    sizes that ran out of memory marked in the series' colour at `oom_at` (None: not marked)."""
    for index, (label, rows) in enumerate(df.groupby(series, dropna=False) if series else [((), df)]):
        style, name = _style(index), _series_name(series, label)
        measured = _ok(rows, column)
        if not measured.empty:
            by_batch = measured.groupby("batch_size")[column]
            points, low, high = (by_batch.median() / scale, by_batch.min() / scale, by_batch.max() / scale)
            ax.plot(points.index, points.values, marker="o", label=name, **style)
            if (by_batch.size() > 1).any():
                ax.errorbar(points.index, points.values, yerr=[points - low, high - points], fmt="none",
                            ecolor=style["color"], capsize=3)
        ooms = sorted(set(rows.loc[rows["status"] == "oom", "batch_size"]))
        if oom_at is not None and ooms:
            ax.scatter(ooms, [oom_at] * len(ooms), marker="x", zorder=3, clip_on=False, color=style["color"],
                       label=f"out of memory: {name}")


def _legend_below(ax: Any, fontsize: int = 7, handles: list[Any] | None = None) -> None:
    """The legend under the axes and their x label: labels that name several axes are wider than the plot, and inside
    it they covered the data and the y label (the figure is saved with a tight box, which takes the legend in). The
    gap is in points, the tick labels' and x label's height: a fraction of the axes ran into the x label of a plot
    shorter than 4 inches (the tokens-per-joule bars of two configurations)."""
    from matplotlib.transforms import offset_copy

    below = offset_copy(ax.transAxes, fig=ax.figure, y=-36, units="points")
    ax.legend(**({"handles": handles} if handles else {}), fontsize=fontsize, loc="upper center",
              bbox_to_anchor=(0.5, 0), bbox_transform=below)


def _finish_batch_axes(ax: Any, title: str, ylabel: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size (sequences per device)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _legend_below(ax)


def tokens_vs_batch(df: pd.DataFrame) -> Figure:
    """Median tokens/s over repeats against batch size, one line per precision (and other varying axes), each
    with its repeats' spread and its sizes that ran out of memory."""
    title = "Throughput vs batch size"
    ok = _ok(df, "tokens_per_s")
    if ok.empty:
        return _empty(title, "no successful configuration")
    fig, ax = plt.subplots(figsize=(7, 4))
    # From zero: a line starting at 33,700 tokens/s drew a 0.68x ratio as a cliff. The sizes that ran out of
    # memory sit on the axis, as the memory plot marks them.
    _lines_over_batch(ax, df, _series_axes(df, {"batch_size"}), "tokens_per_s", 1.0, oom_at=0)
    ax.set_ylim(bottom=0)
    _finish_batch_axes(ax, title, "tokens/s (median over repeats, bar: lowest to highest)")
    return fig


def memory_vs_batch(df: pd.DataFrame) -> Figure:
    """Peak reserved memory against batch size, with the device's capacity and the OOM points marked."""
    title = "Peak memory vs batch size"
    ok = _ok(df, "mem_peak_reserved_bytes")
    ooms = df[df["status"] == "oom"] if "status" in df else df.iloc[0:0]
    if ok.empty and ooms.empty:
        return _empty(title, "no device memory measured (CPU run or no successful configuration)")
    fig, ax = plt.subplots(figsize=(7, 4))
    capacity = df["memory_total_bytes"].dropna().max() if "memory_total_bytes" in df else None
    known = capacity is not None and capacity == capacity
    # The median, as the memory table's: the plot and the table must not give two figures for one row.
    _lines_over_batch(ax, df, _series_axes(df, {"batch_size"}), "mem_peak_reserved_bytes", GIB,
                      oom_at=capacity / GIB if known else None)
    if known:
        ax.axhline(capacity / GIB, color="red", linestyle="--", label=f"device capacity {capacity / GIB:.0f} GiB")
    _finish_batch_axes(ax, title, "peak reserved memory (GiB, median over repeats)")
    return fig


def tokens_per_joule(df: pd.DataFrame) -> Figure:
    """Tokens per joule per configuration: the repeat the energy table's row gives (the ok one with the median
    tokens/s, report.ConfigSummary.representative), a bar from the lowest to the highest repeat beside it."""
    title = "Energy efficiency"
    if _ok(df, "tokens_per_j").empty:
        return _empty(title, "no energy measured (no NVML telemetry in these results)")
    axes = _series_axes(df, set()) or ["model"]
    labels, values, spans, caveated = [], [], [], []
    for _, group in _ok(df, "tokens_per_s").groupby(["run", "config_key"], sort=False):
        # The lower of the middle two of an even count, as the table's; sorted stably, so ties keep their order.
        one = group.sort_values("tokens_per_s", kind="stable").iloc[(len(group) - 1) // 2]
        value, energy = one["tokens_per_j"], group["tokens_per_j"].dropna()
        if value != value:
            continue  # the table's row shows `-`
        labels.append(config_label(one, axes))
        values.append(value)
        spans.append((value - energy.min(), energy.max() - value))
        # As the energy table's note: a window too short for NVML's counter, or counter and integral apart.
        caveated.append(any(energy_caveat({k: (v if v == v else None) for k, v in row.items()})
                            for _, row in group.iterrows()))
    if not labels:
        return _empty(title, "no energy measured in the repeats the energy table gives")
    fig, ax = plt.subplots(figsize=(7, max(3, 0.4 * len(labels) + 1)))
    bars = ax.barh(labels, values, color=["lightgray" if c else "C0" for c in caveated],
                   edgecolor=["gray" if c else "C0" for c in caveated])
    for bar, unquotable in zip(bars, caveated):
        if unquotable:
            bar.set_hatch("//")
    handles = []
    if any(low or high for low, high in spans):  # repeats: their lowest and highest
        handles.append(ax.errorbar(values, range(len(values)), xerr=list(zip(*spans)), fmt="none", ecolor="black",
                                   capsize=3, label="lowest to highest repeat"))
    if any(caveated):
        from matplotlib.patches import Patch

        handles.append(Patch(facecolor="lightgray", edgecolor="gray", hatch="//",
                             label="not to quote: a window too short for NVML's counter, or counter and integral "
                                   "apart (energy table)"))
    if handles:
        # Below the axes: inside them the legend covered the last bar.
        _legend_below(ax, handles=handles)
    ax.set_xlabel("tokens per joule (the repeat with the median tokens/s, as the energy table)")
    ax.set_title(title)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return fig


def _contended(ok: pd.DataFrame) -> bool:
    """Whether every ok repeat of a configuration ran on a contended host (hostload.window_contended): with no quiet
    one to stand for them (report.quiet_frame keeps them then), its tokens/s measures the other processes too."""
    fields = ("host_other_cpu_cores", "host_usable_cores", "window_s")
    windows = [{f: row.get(f) if row.get(f) == row.get(f) else None for f in fields} for _, row in ok.iterrows()]
    return bool(windows) and all(window_contended(m) for m in windows)


def _units(df: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """One row per configuration (per run): its axes, median tokens/s over ok repeats, its statuses, and whether
    those repeats all ran on a contended host."""
    rows = []
    for _, group in df.groupby(["run", "config_key"], sort=False, dropna=False):
        ok = _ok(group, "tokens_per_s")
        failed = sorted(set(group["status"]) - {"ok"})
        rows.append({**group.iloc[0][axes].to_dict(),
                     "tokens_per_s": ok["tokens_per_s"].median() if len(ok) else float("nan"),
                     "status": "/".join(failed) if not len(ok) else "ok", "contended": _contended(ok)})
    return pd.DataFrame(rows)


def _text_colour(rgba: tuple[float, ...]) -> str:
    """Black on light cells, white on dark ones (relative luminance, ITU-R BT.709 weights)."""
    r, g, b = rgba[:3]
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.5 else "white"


#: Axes that change how the same work is done, in the order a heatmap without --baseline picks one across:
#: a speed-up along them means something. Along model, seq_len or data the work itself differs.
TREATMENT_AXES = ("precision", "kernels", "compile_mode", "cuda_graph", "parallel", "checkpointing", "attention",
                  "optimizer", "grad_accum", "batch_size", "tp_degree", "pp_schedule", "microbatches")


def speedup_heatmap(df: pd.DataFrame, *, x: str | None = None, y: str | None = None,
                    baseline: tuple[str, str] | None = None) -> Figure:
    """Median tokens/s of each configuration over its baseline counterpart's, one panel per value of the other axes.

    The counterpart is equal on every varying axis but the baseline's (lmbench.analyze.baseline), so no cell pools
    configurations; without --baseline it is the first value that ran (ok) of the first varying axis in
    TREATMENT_AXES (never the model: tokens/s across models compares different work). A baseline whose every
    configuration failed is named with its statuses. The colour scale is logarithmic and centred
    on 1.0 (white): 2x and 0.5x are equally strong blue and red. The title says how many repeats the medians
    are of: with one, a speed-up inside the step-time noise means nothing. A cell whose repeats, or its
    counterpart's, all ran on a contended host shows no ratio but says so, as the report's table does.
    """
    from matplotlib.colors import LogNorm
    from matplotlib.font_manager import FontProperties
    from matplotlib.ticker import FuncFormatter, NullFormatter

    title = "Speedup over baseline"
    axes = _series_axes(df, set())
    ok = _ok(df, "tokens_per_s")
    if not axes or ok.empty:
        return _empty(title, "needs a varying axis and at least one successful configuration")
    treatments = [a for a in TREATMENT_AXES if a in axes]
    if not (x or (baseline and baseline[0] in axes) or treatments):
        return _empty(title, f"only {' and '.join(axes)} {'vary' if len(axes) > 1 else 'varies'}: tokens/s across "
                             "them\ncompares different work, not one way of doing it against another\n"
                             "(--baseline AXIS=VALUE draws it anyway)")
    # The baseline's axis across, so every row of a panel starts from its own baseline cell.
    x = x or (baseline[0] if baseline and baseline[0] in axes else treatments[0])
    y = y or next((a for a in axes if a != x), None)
    facets = [a for a in axes if a not in (x, y)]
    # The first value that ran: a first row out of memory made every other cell "no baseline".
    baseline = baseline or (x, str(ok[x].iloc[0]))
    units = _units(df, axes)
    configs = units[axes].to_dict("records")
    speedups, withheld = [], []
    for i, (config, tps) in enumerate(zip(configs, units["tokens_per_s"])):
        match = counterpart(config, configs, baseline, axes)
        ratio = tps / units["tokens_per_s"].iloc[match] if match is not None else float("nan")
        why = ""
        if ratio == ratio and match != i:
            # As the report's table: no ratio where either side's repeats all ran on a contended host (a contended
            # eager baseline made compile read 36x, 1.1x on a quiet host); the baseline against itself stays 1.00x.
            busy = units["contended"]
            why = "contended" if busy.iloc[i] else "contended\nbaseline" if busy.iloc[match] else ""
        speedups.append(float("nan") if why else ratio)
        withheld.append(why)
    units["speedup"], units["withheld"] = speedups, withheld
    paired = [v for v, why, value in zip(speedups, withheld, units[x])
              if (v == v or why) and str(value) != str(baseline[1])]
    if not paired:
        # Only the baselines against themselves: a grid of 1.00x and "no baseline" says nothing.
        named = units[units[baseline[0]].astype(str) == str(baseline[1])] if baseline[0] in units else units[:0]
        if len(named) and (named["status"] != "ok").all():
            failed = ", ".join(dict.fromkeys(named["status"]))
            return _empty(title, f"baseline {baseline[0]}={baseline[1]} failed ({failed}): no ratio to it\n"
                                 "(--baseline AXIS=VALUE picks another)")
        return _empty(title, f"no configuration pairs with a {baseline[0]}={baseline[1]} one with every other axis "
                             "equal\n(--baseline AXIS=VALUE picks another, and says which axes keep them apart)")
    finite = [v for v in speedups if v == v and v > 0]
    reach = max([1.25, *(max(v, 1 / v) for v in finite)])
    norm = LogNorm(vmin=1 / reach, vmax=reach)
    cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="#eeeeee")
    xs = list(dict.fromkeys(df[x]))
    ys = list(dict.fromkeys(df[y])) if y else [None]
    panels = list(units.groupby(facets, sort=False, dropna=False)) if facets else [((), units)]
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, grid = plt.subplots(rows, cols, squeeze=False, layout="constrained",
                             figsize=(cols * (1.0 * len(xs) + 2.5) + 1, rows * (0.55 * len(ys) + 1.8) + 0.5))
    for n, (ax, (values, panel)) in enumerate(zip(grid.flat, panels)):
        cells = [[float("nan")] * len(xs) for _ in ys]
        for _, unit in panel.iterrows():
            i, j = ys.index(unit[y]) if y else 0, xs.index(unit[x])
            cells[i][j] = unit["speedup"]
            rgba = cmap(norm(unit["speedup"])) if unit["speedup"] == unit["speedup"] else (0.93, 0.93, 0.93, 1)
            text = (f"{unit['speedup']:.2f}x" if unit["speedup"] == unit["speedup"] else unit["withheld"] or
                    (unit["status"] if unit["status"] != "ok" else "no baseline"))
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=_text_colour(rgba))
        image = ax.imshow(cells, cmap=cmap, norm=norm, aspect="auto")
        ax.set_xticks(range(len(xs)), [str(v) for v in xs], rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(ys)), ["" if v is None else str(v) for v in ys], fontsize=8)
        ax.set_xlabel(x)
        if n % cols == 0:
            ax.set_ylabel(y or "")
        values = values if isinstance(values, tuple) else (values,)
        # Wrapped to the panel's width: long facet titles (pipeline options) ran into the next panel's.
        ax.set_title("\n".join(textwrap.wrap(" ".join(f"{a}={v}" for a, v in zip(facets, values)),
                                              width=max(24, int(9 * (1.0 * len(xs) + 2.5))))), fontsize=9)
    for ax in list(grid.flat)[len(panels):]:
        ax.set_axis_off()
    repeats = ok.groupby(["run", "config_key"], sort=False).size()
    fewest = int(repeats.min()) if len(repeats) else 0
    caveat = "one repeat each: a speed-up inside the step-time noise means nothing" if fewest == 1 else \
        f"medians of at least {fewest} repeats"
    fig.suptitle(f"{title}: tokens/s ÷ that of {baseline[0]}={baseline[1]} with the other axes equal ({caveat})",
                 fontsize=10)
    bar = fig.colorbar(image, ax=grid.ravel().tolist(), label="tokens/s ÷ baseline (log scale)")
    # Ratios as ratios at round values ("0.5x", "2x"), not matplotlib's log-axis "3×10^0" on every minor tick; as
    # many as the bar's height, known once laid out, has room for.
    fig.draw_without_rendering()
    tall = bar.ax.get_window_extent().height * 72 / fig.dpi
    label = FontProperties(size=matplotlib.rcParams["ytick.labelsize"]).get_size_in_points()
    bar.set_ticks(ratio_ticks(reach, tall / label))
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}x" if value >= 1 else
                                                   f"{value:.2g}x"))
    bar.ax.yaxis.set_minor_formatter(NullFormatter())
    return fig


#: Ratios a speed-up colour bar labels, the rounder first: each with its reciprocal, where there is room.
_RATIOS = (2, 10, 100, 5, 50, 3, 20, 1.5, 1.25)


def ratio_ticks(reach: float, lines: float) -> list[float]:
    """Round ratios for a log colour bar from 1/reach to reach that is `lines` tick labels tall: 1, and each of
    _RATIOS with its reciprocal that is a label and a half from every other (0.5x and 0.67x, 1.5x and 2x overlapped
    on a bar reaching 36x)."""
    gap = 1.5 * 2 * math.log(reach) / max(lines, 1)
    chosen = [1.0]
    for ratio in _RATIOS:
        if ratio <= reach and all(abs(math.log(ratio / other)) >= gap for other in chosen):
            chosen.append(ratio)
    return sorted([*chosen, *(1 / ratio for ratio in chosen[1:])])


def time_breakdown(profiled: list[tuple[dict[str, Any], dict[str, Any]]], axes: list[str]) -> Figure:
    """One stacked bar per profiled configuration: the fractions of its step time by category."""
    from lmbench.measure.breakdown import CATEGORIES, window_shares

    title = "Where the time goes (profiled steps)"
    if not profiled:
        return _empty(title, "no profiled configuration (run with --set profile=true)")
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.45 * len(profiled) + 1.5)), layout="constrained")
    labels = [config_label(config, axes) for config, _ in profiled]
    left = [0.0] * len(profiled)
    colours = plt.get_cmap("tab10")
    for i, category in enumerate(CATEGORIES):
        widths = [window_shares(m)[category] or 0.0 for _, m in profiled]
        ax.barh(labels, widths, left=left, label=category, color="#bbbbbb" if category == "idle" else colours(i))
        left = [a + b for a, b in zip(left, widths)]
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of the step time")
    ax.set_title(title)
    ax.tick_params(axis="y", labelsize=7)
    fig.legend(fontsize=7, ncols=len(CATEGORIES), loc="outside lower center")
    return fig


def _finite_steps(record: dict[str, Any]) -> list[float]:
    """An ok record's step times in ms, less the null and non-finite entries the reader lets through (a step the
    writer could not time is written as null)."""
    if record["status"] != "ok":
        return []
    return [t * 1e3 for t in record.get("step_times_s") or []
            if isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t)]


def step_time_distributions(records: list[dict[str, Any]]) -> Figure:
    """Box plot of per-step times (all repeats pooled) per configuration."""
    title = "Step time distributions (each configuration's repeats pooled)"
    configs = configs_of(records)
    axes = varying_axes(configs) or ["model"]
    pooled: dict[str, list[float]] = {}
    for r, config in zip(records, configs):
        if steps := _finite_steps(r):
            # All repeats of one configuration together: nothing else shares a label.
            pooled.setdefault(config_label(config, axes), []).extend(steps)
    if not pooled:
        return _empty(title, "no successful configuration")
    fig, ax = plt.subplots(figsize=(7, max(3, 0.4 * len(pooled) + 1)))
    # matplotlib 3.10 replaced `vert` with `orientation`; support both.
    horizontal = ({"orientation": "horizontal"} if "orientation" in inspect.signature(ax.boxplot).parameters
                  else {"vert": False})
    ax.boxplot(list(pooled.values()), showfliers=True, **horizontal)
    ax.set_yticks(range(1, len(pooled) + 1), list(pooled), fontsize=7)
    everything = [t for times in pooled.values() for t in times if t > 0]
    # Configurations a hundred times apart would squash the fast ones into a line at zero.
    log = bool(everything) and max(everything) > 20 * min(everything)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel("step time (ms, log scale)" if log else "step time (ms)")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def power_over_time(timelines: dict[str, Path]) -> Figure:
    """Board power of each configuration's window, from the telemetry CSVs (label -> file): the repeat the energy
    table gives (the ok one with the median tokens/s), of rank 0 or the first device (report.timelines)."""
    title = "Power over the measured window (the energy table's repeat; rank 0 or the first device)"
    traces = {}
    for label, path in timelines.items():
        with open(path, newline="", encoding="utf-8") as f:
            rows = [row for row in csv.DictReader(f) if row["power_w"]]
        # The window's own samples on its clock, where the file says (the sampler's first sample comes before the
        # ranks' barrier, its last after the window: a barrier's wait was drawn as the window's power; a reviewer).
        if rows and rows[0].get("in_window"):
            points = [(float(row["window_t_s"]), float(row["power_w"])) for row in rows if row["in_window"] == "1"]
        else:
            points = [(float(row["t_s"]), float(row["power_w"])) for row in rows]
        if points:
            traces[label] = points
    if not traces:
        return _empty(title, "no telemetry timelines (CPU run or NVML unavailable)")
    fig, ax = plt.subplots(figsize=(7, 4))
    for index, (label, points) in enumerate(traces.items()):
        ax.plot([t for t, _ in points], [p for _, p in points], label=label, linewidth=1, **_style(index))
    ax.set_xlabel("seconds since the window opened")
    ax.set_ylabel("board power (W)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _legend_below(ax, fontsize=6)
    return fig


def _curves(records: list[dict[str, Any]]) -> tuple[dict[str, list[dict[str, Any]]], set[float]]:
    """Repeat 0's held-out curve of each configuration that evaluated (label -> points, the untrained model
    first at step 0), and the targets (nats) of those that had one."""
    configs = configs_of(records)
    axes = varying_axes(configs) or ["model"]
    curves, targets = {}, set()
    for r, config in zip(records, configs):
        m = r.get("metrics") or {}
        if r["repeat"] != 0 or not m.get("val_points"):
            continue
        start = {"step": 0, "tokens": 0, "wall_s": 0.0, "train_wall_s": 0.0, "val_loss": m.get("val_loss_initial")}
        curves[config_label(config, axes)] = [start, *m["val_points"]]
        if m.get("target_loss_nats"):
            targets.add(m["target_loss_nats"])
    return curves, targets


def _number(value: Any) -> float:
    """A point's coordinate, NaN where it is null: matplotlib draws no marker there and breaks the line."""
    return math.nan if value is None else float(value)


def _val_loss_against(records: list[dict[str, Any]], x: str, title: str, xlabel: str) -> Figure:
    curves, targets = _curves(records)
    if not curves:
        return _empty(title, "no held-out evaluations (run with eval_every_tokens or eval_every > 0 on data=markov or "
                             "data=PATH)")
    fig, ax = plt.subplots(figsize=(7, 4))
    for index, (label, points) in enumerate(curves.items()):
        # A null evaluation breaks the line (NaN): joining across it drew a fall the run never measured.
        ax.plot([_number(p.get(x)) for p in points], [_number(p.get("val_loss")) for p in points], marker=".",
                label=label, linewidth=1, **_style(index))
    for target in sorted(targets):
        ax.axhline(target, color="gray", linestyle="--", linewidth=1, label=f"target {target:.3g} nats")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("held-out loss (nats per token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _legend_below(ax, fontsize=6)
    return fig


def val_loss_vs_time(records: list[dict[str, Any]]) -> Figure:
    """Held-out loss of each configuration (repeat 0) against the time-to-target clock: wall time since the first
    training step, evaluations included."""
    return _val_loss_against(records, "wall_s", "Held-out loss vs wall time",
                             "wall time since the first training step (s, evaluations included)")


def val_loss_vs_tokens(records: list[dict[str, Any]]) -> Figure:
    """Held-out loss of each configuration (repeat 0) against the tokens trained on (all devices)."""
    return _val_loss_against(records, "tokens", "Held-out loss vs tokens", "tokens trained (all devices)")

"""Report figures: each function takes results and returns a matplotlib Figure (Agg backend, no display).

Every figure renders even without data (failed rows only, no telemetry): it then says so inside
the plot instead of raising, so a report of a broken run still has all its pages.
"""

from __future__ import annotations

import csv
import inspect
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from lmbench.config import FIELD_TYPES  # noqa: E402
from lmbench.table import varying_axes  # noqa: E402

GIB = 2**30


def _empty(title: str, why: str) -> Figure:
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.set_title(title)
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_axis_off()
    return fig


def config_label(row: pd.Series | dict[str, Any], axes: list[str]) -> str:
    return " ".join(f"{a}={row[a]}" for a in axes)


def _ok(df: pd.DataFrame, column: str) -> pd.DataFrame:
    if column not in df:
        return df.iloc[0:0]
    return df[(df["status"] == "ok") & df[column].notna()]


def _series_axes(df: pd.DataFrame, exclude: set[str]) -> list[str]:
    """Configuration axes (not metrics or statuses) whose value varies across the rows."""
    configs = df[[a for a in FIELD_TYPES if a in df]].to_dict("records")
    return [a for a in varying_axes(configs) if a not in exclude and len(configs) > 1 and a in df
            and df[a].nunique(dropna=False) > 1]


def _lines_over_batch(ax: Any, ok: pd.DataFrame, series: list[str], column: str, how: str, scale: float) -> None:
    """One line per combination of the `series` axes: `column` aggregated over repeats, against batch size."""
    if ok.empty:
        return
    for label, group in ok.groupby(series, dropna=False) if series else [((), ok)]:
        points = (group.groupby("batch_size")[column].agg(how) / scale).sort_index()
        name = " ".join(map(str, label if isinstance(label, tuple) else (label,))) or "all"
        ax.plot(points.index, points.values, marker="o", label=name)


def _finish_batch_axes(ax: Any, title: str, ylabel: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size (sequences per device)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def tokens_vs_batch(df: pd.DataFrame) -> Figure:
    """Median tokens/s over repeats against batch size, one line per precision (and other varying axes)."""
    title = "Throughput vs batch size"
    ok = _ok(df, "tokens_per_s")
    if ok.empty:
        return _empty(title, "no successful configuration")
    fig, ax = plt.subplots(figsize=(7, 4))
    _lines_over_batch(ax, ok, _series_axes(df, {"batch_size", "seed"}), "tokens_per_s", "median", 1.0)
    _finish_batch_axes(ax, title, "tokens/s (median over repeats)")
    return fig


def memory_vs_batch(df: pd.DataFrame) -> Figure:
    """Peak reserved memory against batch size, with the device's capacity and the OOM points marked."""
    title = "Peak memory vs batch size"
    ok = _ok(df, "mem_peak_reserved_bytes")
    ooms = df[df["status"] == "oom"] if "status" in df else df.iloc[0:0]
    if ok.empty and ooms.empty:
        return _empty(title, "no device memory measured (CPU run or no successful configuration)")
    fig, ax = plt.subplots(figsize=(7, 4))
    _lines_over_batch(ax, ok, _series_axes(df, {"batch_size", "seed"}), "mem_peak_reserved_bytes", "max", GIB)
    capacity = df["memory_total_bytes"].dropna().max() if "memory_total_bytes" in df else None
    if capacity is not None and capacity == capacity:
        ax.axhline(capacity / GIB, color="red", linestyle="--", label=f"device capacity {capacity / GIB:.0f} GiB")
        if not ooms.empty:
            ax.scatter(ooms["batch_size"], [capacity / GIB] * len(ooms), marker="x", color="red", label="out of memory")
    _finish_batch_axes(ax, title, "peak reserved memory (GiB)")
    return fig


def tokens_per_joule(df: pd.DataFrame) -> Figure:
    """Tokens per joule per configuration (median over repeats)."""
    title = "Energy efficiency"
    ok = _ok(df, "tokens_per_j")
    if ok.empty:
        return _empty(title, "no energy measured (no NVML telemetry in these results)")
    axes = _series_axes(df, {"seed"}) or ["model"]
    medians = ok.groupby("config_key").agg({"tokens_per_j": "median", **{a: "first" for a in axes}})
    fig, ax = plt.subplots(figsize=(7, max(3, 0.4 * len(medians) + 1)))
    labels = [config_label(row, axes) for _, row in medians.iterrows()]
    ax.barh(labels, medians["tokens_per_j"])
    ax.set_xlabel("tokens per joule (median over repeats)")
    ax.set_title(title)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return fig


def speedup_heatmap(df: pd.DataFrame, *, x: str | None = None, y: str | None = None,
                    baseline_key: str | None = None) -> Figure:
    """Median tokens/s of each (x, y) cell over the baseline configuration's; failed cells show their status."""
    title = "Speedup over baseline"
    axes = _series_axes(df, {"seed"})
    x = x or (axes[0] if axes else None)
    y = y or (axes[1] if len(axes) > 1 else None)
    ok = _ok(df, "tokens_per_s")
    if x is None or y is None or ok.empty:
        return _empty(title, "needs two varying axes and at least one successful configuration")
    baseline_key = baseline_key or ok["config_key"].iloc[0]
    base = ok[ok["config_key"] == baseline_key]["tokens_per_s"].median()
    if base != base:
        return _empty(title, f"baseline {baseline_key} has no successful repeat")
    xs = list(dict.fromkeys(df[x]))
    ys = list(dict.fromkeys(df[y]))
    grid = [[float("nan")] * len(xs) for _ in ys]
    notes = [[""] * len(xs) for _ in ys]
    for (xv, yv), group in df.groupby([x, y]):
        i, j = ys.index(yv), xs.index(xv)
        good = group[group["status"] == "ok"]["tokens_per_s"].dropna()
        if len(good):
            grid[i][j] = good.median() / base
            notes[i][j] = f"{grid[i][j]:.2f}x"
        else:
            notes[i][j] = "/".join(sorted(set(group["status"])))
    fig, ax = plt.subplots(figsize=(1.2 * len(xs) + 3, 0.6 * len(ys) + 2))
    image = ax.imshow(grid, cmap="RdYlGn", vmin=min(0.5, *[v for r in grid for v in r if v == v]),
                      vmax=max(1.5, *[v for r in grid for v in r if v == v]), aspect="auto")
    for i in range(len(ys)):
        for j in range(len(xs)):
            ax.text(j, i, notes[i][j], ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(xs)), [str(v) for v in xs])
    ax.set_yticks(range(len(ys)), [str(v) for v in ys])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(f"{title} ({baseline_key[:40]}…)" if len(baseline_key) > 40 else f"{title} ({baseline_key})")
    fig.colorbar(image, ax=ax, label="tokens/s ÷ baseline")
    fig.tight_layout()
    return fig


def step_time_distributions(records: list[dict[str, Any]]) -> Figure:
    """Box plot of per-step times (all repeats pooled) per configuration."""
    title = "Step time distributions"
    ok = [r for r in records if r["status"] == "ok" and r.get("step_times_s")]
    if not ok:
        return _empty(title, "no successful configuration")
    axes = varying_axes(r["config"] for r in records) or ["model"]
    pooled: dict[str, list[float]] = {}
    for r in ok:
        pooled.setdefault(config_label(r["config"], axes), []).extend(t * 1e3 for t in r["step_times_s"])
    fig, ax = plt.subplots(figsize=(7, max(3, 0.4 * len(pooled) + 1)))
    # matplotlib 3.10 replaced `vert` with `orientation`; support both.
    horizontal = ({"orientation": "horizontal"} if "orientation" in inspect.signature(ax.boxplot).parameters
                  else {"vert": False})
    ax.boxplot(list(pooled.values()), showfliers=True, **horizontal)
    ax.set_yticks(range(1, len(pooled) + 1), list(pooled), fontsize=7)
    ax.set_xlabel("step time (ms)")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def power_over_time(timelines: dict[str, Path]) -> Figure:
    """Board power of each configuration's window, from the telemetry CSVs (label -> file)."""
    title = "Power over the measured window"
    traces = {}
    for label, path in timelines.items():
        with open(path, newline="", encoding="utf-8") as f:
            points = [(float(row["t_s"]), float(row["power_w"])) for row in csv.DictReader(f) if row["power_w"]]
        if points:
            traces[label] = points
    if not traces:
        return _empty(title, "no telemetry timelines (CPU run or NVML unavailable)")
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, points in traces.items():
        ax.plot([t for t, _ in points], [p for _, p in points], label=label, linewidth=1)
    ax.set_xlabel("seconds since the window opened")
    ax.set_ylabel("board power (W)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    return fig

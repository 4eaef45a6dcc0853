"""`lmbench report`: Markdown, CSV and a self-contained HTML page (plots embedded) from run directories."""

from __future__ import annotations

import base64
import html
import io
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from lmbench.analyze import baseline as baselines
from lmbench.analyze import coverage, environments, plots, results
from lmbench.analyze.table import (
    Grid,
    cell,
    configs_of,
    device_label,
    fixed_axes,
    markdown_text,
    percent_cell,
    varying_axes,
)
from lmbench.errors import UsageError
from lmbench.measure.breakdown import (
    PROFILER_SLOWDOWN_NOTE,
    corrected,
    profiled_contention,
    profiled_slowdown,
    window_shares,
)
from lmbench.measure.hostload import contention_note, standing, window_contended
from lmbench.measure.metrics import bubble_note, host_bound_note, stalls_note, unstable_steps
from lmbench.measure.nvml import POWER_OR_HEAT
from lmbench.measure.telemetry import energy_caveat

GIB, MIB = 2**30, 2**20


def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None or value != value else format(value / scale, spec)


@dataclass
class ConfigSummary:
    """One configuration over its repeats (of one run, when a report covers several)."""

    key: str
    config: dict[str, Any]
    statuses: list[str]
    reason: str | None
    metrics: dict[str, list[float]] = field(default_factory=dict)
    parity: list[str] = field(default_factory=list)
    parity_devs: list[float] = field(default_factory=list)
    """The deviations of the repeats with a parity verdict, contended ones too: parity judges training, which the
    host's other work does not change, and the worst verdict must stand beside its own deviation."""
    repeats: list[dict[str, Any]] = field(default_factory=list)
    """The metrics of each ok repeat the figures rest on (for the stalls note: metrics.stalls_note)."""
    energy_caveats: list[str] = field(default_factory=list)
    """Why an ok repeat's energy should not be quoted (telemetry.energy_caveat), one per repeat that has one."""
    throttles: list[str] | None = None
    """Clock-event reasons seen in any ok repeat with telemetry (in first-seen order); None without telemetry."""
    left_out: int = 0
    """Ok repeats left out of the figures as contended (while a quiet one was there to stand for them)."""
    throttled: list[str] = field(default_factory=list)
    """The power or heat reasons that slowed the clocks in the figures' repeats (nvml.POWER_OR_HEAT)."""
    warnings: list[str] = field(default_factory=list)
    """The figures' repeats' own warnings that no other note or column says (a degenerate dp, skipped updates)."""
    pooled: dict[str, int] = field(default_factory=dict)
    """Environment fields (environments.FIELDS) the figures' repeats say more than one value of, and how many: a
    median over an H100's repeat and an A100's is neither card's figure."""

    def median(self, name: str) -> float | None:
        values = self.metrics.get(name) or []
        return statistics.median(values) if values else None

    def cv(self, name: str) -> float | None:
        values = self.metrics.get(name) or []
        if len(values) < 2:
            return None
        return statistics.stdev(values) / statistics.mean(values)

    def representative(self) -> dict[str, Any]:
        """The repeat whose tokens/s is the median (the lower of the middle two of an even count), for figures that
        must come from one window together: power, energy, J/token and clocks, each a median of its own, would mix
        repeats (power from one, energy from another) and disagree with each other. {} without a measured repeat."""
        return _median_tokens(self.repeats, lambda m: m) or {}

    def step_time_s(self) -> float | None:
        """The step time that goes with the row's tokens/s: tokens per step / median tokens/s over repeats.

        Each repeat's tokens/s is sustained (its window's tokens over its wall time, stalls included), so this
        is the window's mean step, sustained; a median of the repeats' median steps would be another figure.
        """
        tps, tokens = self.median("tokens_per_s"), self.median("tokens_per_step")
        return tokens / tps if tps and tokens else None

    @property
    def contended(self) -> bool:
        """Whether every ok repeat ran on a contended host, so the figures are theirs (no quiet one stood for them)."""
        return bool(self.repeats) and all(window_contended(m) for m in self.repeats)

    def note(self, speedup: str | None = None) -> str:
        """The row's notes, contention first: it says whether the figures mean anything, and a note cut short (the
        run summary's) must not lose it. `speedup` says why the row's speedup is not shown."""
        # The busiest repeat's own metrics, its window among them: a window too short for the ticks is not contended.
        notes = [contention_note(max(self.repeats, default={}, key=lambda m: m.get("host_other_cpu_cores") or 0)),
                 self.pooled_note(), speedup, stalls_note(self.repeats), bubble_note(self.median("pp_bubble_fraction"),
                                                                 self.median("pp_bubble_fraction_theory")),
                 unstable_steps(self.metrics.get("step_time_cv") or []),
                 host_bound_note(self.median("gpu_util_avg_pct")), self.throttle_note(), *self.warnings]
        if self.left_out:
            notes.append(f"{self.left_out} contended repeat{'s' if self.left_out > 1 else ''} left out")
        return "; ".join(filter(None, notes))

    def pooled_note(self) -> str | None:
        """The environments the figures' repeats came from, where they are several (the header names them)."""
        if not self.pooled:
            return None
        return ("figures pool repeats from " + ", ".join(f"{n} {_POOLED_NAMES.get(name, name + ' values')}"
                                                       for name, n in self.pooled.items())
                + " (the header names them)")

    def throttle_note(self) -> str | None:
        """Beside the throughput: the card slowed its clocks for power or heat in the window, so the figures are
        this card's under that cap, not its unthrottled speed (the energy table has the clocks)."""
        if not self.throttled:
            return None
        avg = self.representative().get("sm_clock_avg_mhz")  # the energy table's clock, of the same repeat
        clock = f", SM clock avg {avg:.0f} MHz" if avg is not None else ""
        return f"clocks throttled ({', '.join(self.throttled)}){clock}"


SUMMARY_METRICS = ("tokens_per_s", "step_time_median_s", "tokens_per_step", "step_time_cv", "mfu", "tflops",
                   "peak_tflops", "sm_clock_avg_mhz", "sm_clock_min_mhz", "mem_peak_reserved_bytes",
                   "mem_peak_allocated_bytes", "mem_nvml_used_peak_bytes",
                   "mem_host_peak_growth_bytes", "mem_host_training_growth_bytes", "j_per_token", "tokens_per_j",
                   "power_avg_w", "energy_j", "parity_tolerance", "pp_bubble_fraction",
                   "pp_bubble_fraction_theory",
                   "host_other_cpu_cores", "host_usable_cores", "devices", "global_batch_sequences",
                   "tokens_per_s_per_device", "scaling_efficiency", "gpu_util_avg_pct")
#: Above the energy table: whose figures each row gives.
ENERGY_NOTE = ("Each row's power, energy, mJ/token, tokens/J and clocks are one repeat's, the one with the median "
               "tokens/s, so they agree with each other (medians taken apart would mix repeats); throttling is over "
               "every repeat the figures rest on.")
#: How a row's note counts an environment field its repeats differ in ("2 devices"); the others are "2 torch
#: versions".
_POOLED_NAMES = {"device": "devices", "driver": "drivers", "cpu threads": "CPU thread settings",
                 "environment variables": "sets of environment variables",
                 **{name: f"{name} versions" for name in environments.FIELDS
                    if name not in ("device", "driver", "cpu threads", "environment variables")}}
#: Worst parity over repeats is reported.
PARITY_ORDER = ["reference", "ok", "drift", "diverged"]


#: Record warnings the report says in a note or column of its own: energy (the energy table's note), throttling
#: (ConfigSummary.throttle_note), host contention (hostload.contention_note).
_NOTED_ELSEWHERE = ("energy: ", "clocks were throttled for power or heat", "other processes kept")


def _throttling(s: ConfigSummary) -> str:
    """The clock-event reasons of the configuration's windows: `none`, or `-` without telemetry."""
    if s.throttles is None:
        return "-"
    return ", ".join(s.throttles) or "none"


def _clocks(m: dict[str, Any]) -> str:
    """The SM clock over a repeat's window, its average and lowest sample: a power cap that throttled one
    configuration more than another shows here beside its throughput's difference."""
    avg, low = m.get("sm_clock_avg_mhz"), m.get("sm_clock_min_mhz")
    return "-" if avg is None else f"{avg:.0f}" + (f" ({low:.0f})" if low is not None else "")


def _energy_note(s: ConfigSummary) -> str:
    """Why the configuration's energy should not be quoted (its first repeat that says so), with how many said it."""
    if not s.energy_caveats:
        return ""
    others = len(s.energy_caveats) - 1
    more = f" (and {others} more repeat{'s' if others > 1 else ''})" if others else ""
    return f"{s.energy_caveats[0]}{more}; lengthen the window to quote J/token"


T = TypeVar("T")


def _median_tokens(repeats: list[T], metrics: Callable[[T], dict[str, Any]]) -> T | None:
    """Of `repeats`, the one whose tokens/s is the median (the lower of the middle two of an even count); None
    without a measured one."""
    measured = sorted((r for r in repeats if isinstance(metrics(r).get("tokens_per_s"), (int, float))),
                      key=lambda r: metrics(r)["tokens_per_s"])
    return measured[(len(measured) - 1) // 2] if measured else None


def _summary_key(record: dict[str, Any], config: dict[str, Any]) -> str:
    """One configuration of one run: the config key, prefixed by the run when a report covers several."""
    return f"{config['run']}::{record['config_key']}" if "run" in config else record["config_key"]


def summarize(records: list[dict[str, Any]]) -> list[ConfigSummary]:
    """Configurations in first-seen order; metrics collected over ok repeats only, and of those the quiet ones
    when there is one: a repeat whose host other processes kept busy is left out, as compare leaves it out
    (the note counts it).

    Records of several runs (a `run` key each) are kept apart: `run` becomes the first axis.
    """
    by_key: dict[str, ConfigSummary] = {}
    grouped: dict[str, list[dict[str, Any]]] = {}
    for r, config in zip(records, configs_of(records)):
        key = _summary_key(r, config)
        by_key.setdefault(key, ConfigSummary(key, config, [], None))
        grouped.setdefault(key, []).append(r)
    for key, group in grouped.items():
        _collect(by_key[key], group)
    return list(by_key.values())


def _collect(s: ConfigSummary, group: list[dict[str, Any]]) -> None:
    """One configuration's repeats into its summary (see summarize)."""
    ok = [r for r in group if r["status"] == "ok" and r.get("metrics")]
    kept = standing(ok, lambda r: r["metrics"])
    s.left_out = len(ok) - len(kept)
    s.pooled = {name: len(values) for name, values in environments.environment_of(kept).items() if len(values) > 1}
    for r in group:
        s.statuses.append(r["status"])
        s.reason = s.reason or r.get("reason")
        if (r.get("metrics") or {}).get("parity"):
            s.parity.append(r["metrics"]["parity"])
            if isinstance(r["metrics"].get("parity_max_rel_dev"), (int, float)):
                s.parity_devs.append(float(r["metrics"]["parity_max_rel_dev"]))
        if r in kept:
            m = r["metrics"]
            if m.get("tokens_per_step") is None and m.get("tokens_per_s") and m.get("step_time_median_s"):
                # Records from before tokens_per_step was kept: their tokens/s was computed this way round.
                m = {**m, "tokens_per_step": m["tokens_per_s"] * m["step_time_median_s"]}
            s.repeats.append(m)
            if caveat := energy_caveat(m):
                s.energy_caveats.append(caveat)
            if isinstance(m.get("throttle_reasons"), list):
                s.throttles = list(dict.fromkeys([*(s.throttles or []), *m["throttle_reasons"]]))
                if m.get("throttled_power_or_heat"):
                    s.throttled = list(dict.fromkeys([*s.throttled, *(reason for reason in m["throttle_reasons"]
                                                                       if reason in POWER_OR_HEAT)]))
            s.warnings = list(dict.fromkeys([*s.warnings, *(w for w in r.get("warnings") or []
                                                            if not w.startswith(_NOTED_ELSEWHERE))]))
            for name in SUMMARY_METRICS:
                value = m.get(name)
                if isinstance(value, (int, float)):
                    s.metrics.setdefault(name, []).append(float(value))


def _status(s: ConfigSummary) -> str:
    ok = s.statuses.count("ok")
    if ok == len(s.statuses):
        return "ok" if ok == 1 else f"ok ({ok}/{ok})"
    others = sorted(set(s.statuses) - {"ok"})
    return "/".join(others) + (f" ({ok}/{len(s.statuses)} ok)" if len(s.statuses) > 1 else "")


def _baseline_of(s: ConfigSummary, summaries: list[ConfigSummary], baseline: tuple[str, str] | None,
                 axes: list[str]) -> ConfigSummary | None:
    """The configuration equal to `s` on every varying axis but the baseline's, which takes its value."""
    if baseline is None:
        return None
    found = baselines.counterpart(s.config, [o.config for o in summaries], baseline, axes)
    return None if found is None else summaries[found]


def _contended_speedup(s: ConfigSummary, base: ConfigSummary | None, baseline: tuple[str, str]) -> str | None:
    """Why a row's speedup is not shown: its figures or its counterpart's rest on contended repeats only, and a
    ratio of those measures the other processes' work as much as the code (an eager row that ran beside a busy core
    made compile 36x faster, 1.1x on a quiet host); compare gives no verdict on them either. The baseline row
    against itself stays 1.00x."""
    if base is None or base is s:
        return None
    sides = [side for side, summary in (("this configuration", s),
                                        (f"its {baseline[0]}={baseline[1]} counterpart", base)) if summary.contended]
    if not sides:
        return None
    return f"speedup not shown: every repeat of {' and '.join(sides)} ran on a contended host"


def tables(records: list[dict[str, Any]], baseline: tuple[str, str] | None = None) -> dict[str, str]:
    """Markdown tables by section: throughput (with speedup vs baseline), memory, energy, failures."""
    return {name: grid.markdown() for name, grid in sections(records, baseline).items()}


def sections(records: list[dict[str, Any]], baseline: tuple[str, str] | None = None) -> dict[str, Grid]:
    """The report's tables by section, for Markdown and HTML alike."""
    summaries = summarize(records)
    axes = varying_axes(s.config for s in summaries)
    if baseline and baseline[0] not in (summaries[0].config if summaries else {}):
        raise UsageError(f"--baseline {baseline[0]}={baseline[1]}: {baseline[0]!r} is not a configuration axis")
    with_parity = any(s.parity for s in summaries)
    # Laid out over several devices: what one step trains on, and what each device does, beside tokens/s.
    spread = "parallel" in axes or any((s.median("devices") or 1) > 1 for s in summaries)
    throughput_rows, memory_rows, energy_rows, failure_rows = [], [], [], []
    for s in summaries:
        label = [cell(s.config, a) for a in axes]
        tps, tflops = s.median("tokens_per_s"), s.median("tflops")
        row = label + [_status(s), _fmt(tps, ",.0f"), _fmt(s.cv("tokens_per_s"), ".1%"),
                       _fmt(s.step_time_s(), ".1f", 1e-3), percent_cell(s.median("mfu")),
                       _fmt(tflops, ".1f" if tflops is None or tflops >= 1 else ".3g"),  # a CPU's 0.00166
                       _fmt(s.median("peak_tflops"), ".4g")]
        if spread:
            row += [_fmt(s.median("devices"), ".0f"), _fmt(s.median("global_batch_sequences"), ",.0f"),
                    _fmt(s.median("tokens_per_s_per_device"), ",.0f"), _fmt(s.median("scaling_efficiency"), ".2f")]
        if with_parity:
            # The worst verdict beside the worst deviation and the bound that judged it: a median deviation inside
            # the tolerance beside a `drift` verdict reads as a contradiction.
            worst = max(s.parity, key=PARITY_ORDER.index, default=None)
            dev = max(s.parity_devs, default=None)
            row += [worst or "-", _fmt(dev, ".2g"), _fmt(s.median("parity_tolerance"), ".2g")]
        withheld = None
        if baseline:
            base = _baseline_of(s, summaries, baseline, axes)
            base_tps = base.median("tokens_per_s") if base else None
            speedup = tps / base_tps if tps and base_tps else None
            withheld = _contended_speedup(s, base, baseline) if speedup else None
            speedup = None if withheld else speedup
            row += [_fmt(speedup, ".2f") + ("x" if speedup else ""),
                    "-" if speedup is None else f"{(speedup - 1) * 100:+.1f}%"]
        # A configuration that never ran says why where its figures would be.
        skipped = set(s.statuses) == {"skipped"}
        throughput_rows.append(row + [s.note(withheld) or (f"skipped: {s.reason}" if skipped and s.reason else "")])
        memory_rows.append(label + [_status(s), _fmt(s.median("mem_peak_allocated_bytes"), ".2f", GIB),
                                    _fmt(s.median("mem_peak_reserved_bytes"), ".2f", GIB),
                                    _fmt(s.median("mem_nvml_used_peak_bytes"), ".2f", GIB),
                                    _fmt(s.median("mem_host_training_growth_bytes"), ".1f", MIB),
                                    _fmt(s.median("mem_host_peak_growth_bytes"), ".1f", MIB)])
        one = s.representative()
        energy_rows.append(label + [_status(s), _fmt(one.get("power_avg_w"), ".0f"), _fmt(one.get("energy_j"), ".1f"),
                                    _fmt(one.get("j_per_token"), ".3f", 1e-3), _fmt(one.get("tokens_per_j"), ",.0f"),
                                    _throttling(s), _clocks(one), _energy_note(s)])
        if any(status != "ok" for status in s.statuses):
            failure_rows.append(label + [_status(s), s.reason or ""])
    n = len(axes)
    head = ["status", "tokens/s", "cv over repeats", "ms/step sustained", "MFU", "TFLOP/s per device",
            "peak TFLOP/s"]
    if spread:
        head += ["devices", "sequences/step", "tokens/s per device", "scaling efficiency"]
    if with_parity:
        head += ["parity", "max loss dev", "tolerance"]
    if baseline:
        head += [f"speedup vs {baseline[0]}={baseline[1]}", "Diff %"]
    # Figures right-aligned; the parity verdict is a word.
    numeric = {n + i for i, column in enumerate(head) if i and column != "parity"}
    out = {"throughput": Grid(axes + head + ["note"], throughput_rows, right=numeric, note=mfu_note(records)),
           "memory": Grid(axes + ["status", "peak allocated GiB", "peak reserved GiB", "NVML used GiB",
                                  "host RSS growth in training MiB", "in window MiB"], memory_rows,
                            right={n + 1, n + 2, n + 3, n + 4, n + 5}),
           "energy": Grid(axes + ["status", "power W", "energy J", "mJ/token", "tokens/J", "throttling",
                                  "SM clock MHz avg (min)", "note"], energy_rows,
                          right={n + 1, n + 2, n + 3, n + 4, n + 6}, note=ENERGY_NOTE)}
    if failure_rows:
        out["failures"] = Grid(axes + ["status", "reason"], failure_rows)
    return out


def repeats_line(summaries: list[ConfigSummary]) -> str:
    """What the figures rest on: a median over how many repeats, or one repeat each (no spread to quote)."""
    counts = sorted({len(s.repeats) for s in summaries if s.repeats})
    left_out = sum(s.left_out for s in summaries)
    contended = f"; {left_out} contended repeat{'s' if left_out > 1 else ''} left out" if left_out else ""
    if not counts:
        return "no configuration measured"
    if counts == [1]:
        if left_out:
            return f"figures rest on one repeat a configuration{contended}: no spread over repeats to quote"
        return "each configuration measured once: no spread over repeats to quote (--repeats 3 gives one)"
    span = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"figures are medians over repeats ({span} ok a configuration{contended})"


def mfu_note(records: list[dict[str, Any]]) -> str:
    """What MFU is divided by, and where each peak comes from: fp32's MFU is against the CUDA cores' peak, below
    the tensor cores' that bound the others (7 to 15 times on an H100, 1 to 2 on an RTX 4090), so an fp32 row can
    show a higher MFU than a faster tf32 or bf16 row, and a reader must be able to see why."""
    sources = sorted({m["peak_source"] for m in (r.get("metrics") or {} for r in records)
                      if isinstance(m.get("peak_source"), str)})
    if not sources:
        return ""
    return ("MFU: model FLOPs a token (PaLM: 6N + 12·L·H·Q·T, N without embedding tables, LM head counted, "
            "recomputation excluded) × tokens/s "
            "per device ÷ the precision's datasheet dense peak (fp32 with TF32 off: the CUDA cores' peak; the "
            "others: the tensor cores'; FP8: bf16's). Peaks: " + "; ".join(sources) + ".")


def profiled(records: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(configuration, metrics) of the first ok profiled repeat of each configuration."""
    found: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for r, config in zip(records, configs_of(records)):
        m = r.get("metrics") or {}
        if r["status"] == "ok" and m.get("time_frac_idle") is not None:
            found.setdefault(_summary_key(r, config), (config, m))
    return list(found.values())


def _profiled_vs_window(m: dict[str, Any]) -> str:
    slowdown = profiled_slowdown(m)
    return "-" if slowdown is None else f"{slowdown:+.0%}"


def _profiler_note(m: dict[str, Any]) -> str:
    """Why the breakdown may not describe the window as profiled: the profiler records every op on the host, so a
    step that was host-bound or nearly so runs slower under it and its device idles more than in the window."""
    slowdown = profiled_slowdown(m)
    notes = [m.get("profile_note") or ""]
    # A busy host slows the profiled steps as it does any: a CPU run 17x slower under the profiler was contention's.
    busy = profiled_contention(m)
    if corrected(m):
        cause = f"on a contended host: {busy}" if busy else "its host cost"
        notes.append(f"{slowdown:.0%} slower under the profiler ({cause}): shares of the window's median "
                     "step, the device's busy time as profiled, idle the rest")
    elif slowdown is not None and slowdown > PROFILER_SLOWDOWN_NOTE:
        notes.append(f"{slowdown:.0%} slower under the profiler, on a contended host ({busy} during the profiled "
                     "steps): not the profiler's slowdown alone; the shares are as profiled" if busy else
                     f"{slowdown:.0%} slower under the profiler, which on a CPU slows the ops themselves: the "
                     "shares are as profiled")
    elif busy:
        notes.append(f"a contended host: {busy} during the profiled steps")
    return "; ".join(note for note in notes if note)


#: What each share of a profiled step that is neither matmul nor attention (MFU's FLOPs) is, in a note.
_HOLDING_BACK = {"idle": "the host (GPU idle)", "other": "other kernels", "optimizer": "the optimizer",
                 "communication": "communication", "data": "data"}


def held_back_by(m: dict[str, Any]) -> str:
    """What holds MFU back most in a profiled step: the largest share of the step outside matmul and attention
    (the kernels MFU counts FLOPs for), beside the share those two have.

    When the profiled step ran slower than the window's (the profiler's host cost, _profiler_note), the shares
    are those of the window's step: the device's busy time is the same, the difference was idle. A host-bound
    step stays host-bound; one that only looked so under the profiler does not."""
    every = window_shares(m)
    shares = {c: v for c, v in every.items() if c in _HOLDING_BACK and isinstance(v, (int, float))}
    useful = [every.get(c) for c in ("matmul", "attention")]
    if not shares or not all(isinstance(v, (int, float)) for v in useful):
        return "-"
    useful_share = sum(useful)
    less = "; idle less the profiler's slowdown" if corrected(m) else ""
    largest = max(shares, key=shares.get)
    # On a CPU `idle` is the main thread's time outside every op: the host is the device.
    what = "time outside ops" if largest == "idle" and m.get("profile_device") == "cpu" else _HOLDING_BACK[largest]
    return f"{what} {shares[largest]:.0%} (matmul + attention {useful_share:.0%}{less})"


def time_sections(records: list[dict[str, Any]]) -> dict[str, Grid]:
    """Where the time goes, for profiled configurations: the breakdown of a step and the top kernels."""
    from lmbench.measure.breakdown import CATEGORIES

    found = profiled(records)
    if not found:
        return {}
    axes = varying_axes(configs_of(records))
    rows, kernels = [], []
    for config, m in found:
        label = [cell(config, a) for a in axes]
        overlap = m.get("comm_overlap_frac")
        shares = window_shares(m)
        # The profiled steps' median, as "vs window" sets it against the window's median (the mean, a profiled
        # step's first-call outlier and all, read 66 ms beside a -71% that came from a median of 18 ms).
        step = m.get("profile_step_time_median_s") or m["profile_step_time_s"]
        rows.append(label + [_fmt(step, ".2f", 1e-3), _profiled_vs_window(m)]
                    + [_fmt(shares[c], ".1%") for c in CATEGORIES] + [_fmt(overlap, ".0%")]
                    + [held_back_by(m), _profiler_note(m)])
        kernels += [label + [k["name"][:90], _fmt(k["time_s"], ".3f", 1e-3), _fmt(k["calls"], ".0f"),
                             kernel_note(k["name"], config)]
                    for k in m.get("profile_top_kernels") or []]
    n = len(axes)
    return {"time": Grid(axes + ["profiled step ms (median)", "vs window", *CATEGORIES, "comm overlapped",
                                 "held back most by", "note"], rows,
                         right=set(range(n, n + len(CATEGORIES) + 3))),
            "kernels": Grid(axes + ["kernel (top 10 by time)", "ms per step", "calls per step", "note"], kernels,
                            right={n + 1, n + 2})}


#: CUTLASS names its kernels by the elements a memory access may assume aligned: align1 and align2 mean an
#: operand's leading dimension is not a multiple of 8 16-bit elements, so the GEMM cannot use 16-byte accesses
#: (and cuBLAS falls back to such kernels: on the H100 GPT-2's 50257-row LM head ran on sm75-era
#: `cutlass_75 ... align1` kernels, 15.5 ms of a 68 ms step).
_UNALIGNED_GEMM = re.compile(r"gemm.*_align[12]\b|_align[12]\b.*gemm", re.IGNORECASE)


def kernel_note(name: str, config: dict[str, Any]) -> str:
    """What a top kernel's name says about the configuration: an unaligned GEMM, and the vocabulary behind it."""
    from lmbench.models.registry import MODELS

    if not _UNALIGNED_GEMM.search(name):
        return ""
    note = "unaligned GEMM: a dimension is not a multiple of 8 elements"
    spec = MODELS.get(str(config.get("model")))
    multiple = config.get("vocab_multiple", 1)
    if spec is not None and multiple == 1 and spec.vocab_size % 64:
        note += f"; the vocabulary ({spec.vocab_size}) is not: try --set vocab_multiple=64"
    return note


def roofline_section(records: list[dict[str, Any]], ceilings: dict[str, Any]) -> dict[str, Grid]:
    """Each configuration's step time at the measured ceilings and the measured step's ratio to it, for the
    configurations measured on the ceilings' device; the others are left out and the note counts them by device.
    A UsageError when no measured configuration ran on that device: every row would hold a card to another's roof
    (an H100's file against an A100 run, or a CPU run read 32118x from the H100's fp32 roof)."""
    from lmbench.measure.ceilings import applies_to, measured_on
    from lmbench.measure.roofline import for_record

    configs = configs_of(records)
    axes = varying_axes(configs)
    first_ok: dict[str, dict[str, Any]] = {}
    for r, config in zip(records, configs):
        if r["status"] == "ok":
            first_ok.setdefault(_summary_key(r, config), r)
    rows = []
    foreign: dict[str, int] = {}
    """Configurations left out, by the device they were measured on."""
    for s in summarize(records):
        ok = first_ok.get(s.key)
        if ok and not applies_to(ceilings, ok):
            foreign[measured_on(ok)] = foreign.get(measured_on(ok), 0) + 1
            continue
        found = for_record(ok["metrics"], ok["config"], ceilings) if ok else None
        if found:
            roof_s, step_s = found["roofline_step_time_s"], s.step_time_s()
            ratio = step_s / roof_s if roof_s and step_s else None
            rows.append([cell(s.config, a) for a in axes] + [
                found["roofline_bound"] or "-", _fmt(found["roofline_compute_s"], ".2f", 1e-3),
                _fmt(found["roofline_memory_s"], ".2f", 1e-3), _fmt(step_s, ".2f", 1e-3),
                _fmt(ratio, ".2f") + ("x" if ratio else ""), found["roofline_ceiling"]])
    device = ceilings.get("device")
    if foreign and sum(foreign.values()) == len(first_ok):
        ran = ", ".join(foreign)
        raise UsageError(f"--ceilings: measured on {device}, and no configuration here was (they ran on {ran}): "
                         "another device's ceilings are no roof for them; give the ceilings of the GPU that ran them "
                         "(lmbench ceilings --out FILE, run on it), or leave --ceilings out")
    n = len(axes)
    head = ["bound", "compute roof ms", "memory roof ms", "measured step ms", "measured ÷ roof", "matmul ceiling"]
    note = f"Ceilings measured on {device}."
    if foreign:
        left = "; ".join(f"{count} configuration{'s' if count > 1 else ''} measured on {name}"
                         for name, count in foreign.items())
        note += f" Left out: {left} (another device's ceilings are no roof for them)."
    return {"roofline": Grid(axes + head, rows, right=set(range(n + 1, n + 5)), note=note)} if rows else {}


def timelines(records: list[dict[str, Any]], axes: list[str]) -> dict[str, Path]:
    """Telemetry CSV of each configuration's repeat whose figures the energy table gives (the ok one with the median
    tokens/s, ConfigSummary.representative; rank 0 for multi-GPU runs), labelled. Never a failed repeat's: repeat 0
    out of memory drew a trace the report's figures do not rest on."""
    ok: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for r, config in zip(records, configs_of(records)):
        if r["status"] == "ok" and r.get("metrics") and "run" in r:
            ok.setdefault(_summary_key(r, config), []).append((r, config))
    found = {}
    for group in ok.values():
        # As `representative` picks (figures passes the quiet records only, as the tables rest on).
        r, config = _median_tokens(group, lambda pair: pair[0]["metrics"]) or group[0]
        folder = Path(r["run"]) / "telemetry"
        # One process, several ranks (rank 0's), or nn.DataParallel's several devices (the first's).
        key = r.get("written_key", r["config_key"])  # as its files are named (a profiled record read under a new key)
        stem = f"{key}-r{r['repeat']}"
        for name in (f"{stem}.csv", f"{stem}-rank0.csv", f"{stem}-dev0.csv"):
            if (folder / name).exists():
                found[plots.config_label(config, axes)] = folder / name
                break
    return found


def quiet_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records less the ok repeats whose host other processes kept busy, in configurations (of a run) that
    have a quiet ok repeat to stand for them: what the tables' figures rest on (summarize), for the plots too."""
    groups: dict[tuple[Any, str], list[dict[str, Any]]] = {}
    for r in records:
        if r["status"] == "ok" and r.get("metrics"):
            groups.setdefault((r.get("run"), r["config_key"]), []).append(r)
    kept = {id(r) for group in groups.values() for r in standing(group, lambda r: r["metrics"])}
    return [r for r in records if not (r["status"] == "ok" and r.get("metrics")) or id(r) in kept]


def quiet_frame(df: pd.DataFrame, records: list[dict[str, Any]]) -> pd.DataFrame:
    """The frame's rows of the records quiet_records keeps: frame.load builds one row a record, in their order."""
    if len(df) != len(records):
        raise ValueError(f"a frame of {len(df)} rows for {len(records)} records")
    kept = {id(r) for r in quiet_records(records)}
    return df[[id(r) in kept for r in records]]


def figures(df: pd.DataFrame, records: list[dict[str, Any]], baseline: tuple[str, str] | None) -> dict[str, Any]:
    # The plots rest on the repeats the tables rest on: a contended repeat 200x slower would paint the heatmap.
    df, records = quiet_frame(df, records), quiet_records(records)
    axes = varying_axes(configs_of(records))
    found = profiled(records)
    breakdown = {"time_breakdown": plots.time_breakdown(found, axes)} if found else {}
    evaluated = any((r.get("metrics") or {}).get("val_points") for r in records)
    quality = {"val_loss_vs_time": plots.val_loss_vs_time(records),
               "val_loss_vs_tokens": plots.val_loss_vs_tokens(records)} if evaluated else {}
    # Against batch size only when the run has several: one column of dots says nothing the tables do not.
    sizes = df.loc[df["status"] == "ok", "batch_size"].nunique() if "batch_size" in df.columns else 0
    over_batch = {"tokens_vs_batch": plots.tokens_vs_batch(df),
                  "memory_vs_batch": plots.memory_vs_batch(df)} if sizes > 1 else {}
    return {
        **quality,
        **breakdown,
        **over_batch,
        "tokens_per_joule": plots.tokens_per_joule(df),
        "speedup_heatmap": plots.speedup_heatmap(df, baseline=baseline),
        "step_time_distributions": plots.step_time_distributions(records),
        "power_over_time": plots.power_over_time(timelines(records, axes)),
    }


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _versions(records: list[dict[str, Any]]) -> str:
    """What measured the records, from the workers' environments: torch, CUDA and lmbench, each value that
    occurs (records measured by several versions name them all); empty when nothing ran."""
    envs = [r["env"] for r in records if r.get("env")]
    if not envs:
        return ""

    def values(describe: Any) -> str:
        return " / ".join(dict.fromkeys(describe(env) for env in envs))

    torch = values(lambda env: str(env.get("torch")))
    cuda = values(lambda env: env.get("cuda") or "none (a CPU build)")
    lmbench = values(lambda env: f"{env.get('lmbench')} ({env.get('lmbench_commit') or 'commit unknown'})")
    return f"; torch {torch}, CUDA {cuda}, measured with lmbench {lmbench}"


def _provenance(records: list[dict[str, Any]]) -> str:
    """When and on what exactly the records were measured, beyond the device line: the span of the workers'
    timestamps, the software under torch (cuDNN, Triton, transformers), the GPUs' UUIDs (which card of a fleet)
    and the enforced power limit, each value that occurs; empty where the records say none of it."""
    envs = [r["env"] for r in records if r.get("env")]

    def values(found: Any) -> str:
        return " / ".join(dict.fromkeys(str(v) for v in found if v is not None))

    parts = []
    stamps = sorted({env["timestamp"] for env in envs if isinstance(env.get("timestamp"), str)})
    if stamps:
        parts.append(f"measured {stamps[0]}" if len(stamps) == 1 else f"measured {stamps[0]} to {stamps[-1]}")
    software = [f"{label} {found}" for label, name in (("cuDNN", "cudnn"), ("Triton", "triton"),
                                                       ("transformers", "transformers"))
                if (found := values(env.get(name) for env in envs))]
    if software:
        parts.append(", ".join(software))
    uuids = values((env.get("device") or {}).get("uuid") for env in envs)
    if uuids:
        parts.append(f"GPU {uuids}")
    limits = values(_power_limit(r["metrics"]) for r in records if r["status"] == "ok" and r.get("metrics"))
    if limits:
        parts.append(f"power limit {limits}")
    return "; ".join(parts)


def _power_limit(m: dict[str, Any]) -> str | None:
    """A record's enforced power limit: its card's, or over several the sum and the most capped card's."""
    total, least = m.get("power_limit_w"), m.get("power_limit_min_w")
    if not isinstance(total, (int, float)):
        return None
    if isinstance(least, (int, float)) and least < total:
        return f"{total:.0f} W over the job's GPUs (the most capped {least:.0f} W)"
    return f"{total:.0f} W"


def _variables(records: list[dict[str, Any]]) -> str:
    """The environment variables the records' workers ran with (those lmbench records), each set once: ' / '
    between the sets where records differ; empty where none was set or none is recorded."""
    sets = environments.environment_of(records)["environment variables"]
    if all(found == environments.NO_VARIABLES for found in sets):
        return ""
    return " / ".join("none" if found == environments.NO_VARIABLES else found for found in sets)


def header_lines(records: list[dict[str, Any]], summaries: list[ConfigSummary], runs: list[str],
                 notices: list[str] = ()) -> list[str]:
    """The report's opening lines: the runs; the device and what measured it (the workers' versions); what
    rendered the report (this lmbench, which may be newer: the notes and columns are its own); what every
    configuration shares, which no column shows; how many repeats the figures rest on; planned repeats with no
    record; configurations whose ok records trained on different corpora (results.mixed_corpora) or whose repeats
    say several environments (environments.mixed: a device, a torch); and what reading the results left out
    (`notices`: the loader's warnings). After the device line, when the records say any of it: when they were
    measured, the software under torch, the GPUs' UUIDs and the power limit."""
    from lmbench import __version__
    from lmbench.measure.environment import git_commit

    lines = [f"Runs: {', '.join(runs)}", f"Device: {device_label(records)}{_versions(records)}",
             f"Report rendered by lmbench {__version__} ({git_commit() or 'commit unknown'})"]
    provenance = _provenance(records)
    if provenance:
        lines.insert(2, f"Provenance: {provenance}")
    variables = _variables(records)
    if variables:
        lines.append(f"Environment variables (of those that change what runs): {variables}")
    shared = fixed_axes(s.config for s in summaries)
    if shared:
        lines.append(f"Every configuration: {shared}")
    missing = [r for r in records if r["status"] == coverage.NOT_RECORDED]
    lines.append(f"{len(records) - len(missing)} records, {len(summaries)} configurations; "
                 f"{repeats_line(summaries)}.")
    lines += [line for line in [coverage.summary_line(missing), results.mixed_corpora(records)] if line]
    lines += [f"Mixed environments: {warning}" for warning in environments.mixed(records, "run")]
    lines += [f"Read with a warning: {notice}" for notice in notices]
    return lines


SECTION_TITLES = {"quality": "Time to target (held-out loss)", "throughput": "Throughput", "memory": "Memory",
                  "energy": "Energy", "failures": "Not measured: failures and skips",
                  "time": "Where the time goes", "kernels": "Top kernels of the profiled steps",
                  "roofline": "Distance to the roofline (measured ceilings)"}


def build(df: pd.DataFrame, records: list[dict[str, Any]], out: Path, *, baseline: tuple[str, str] | None = None,
          runs: list[str], ceilings: dict[str, Any] | None = None, objective: str = "time-to-target",
          notices: list[str] = ()) -> dict[str, Path]:
    """Write report.md, results.csv, report.html and plots/*.png into `out`; returns their paths.

    With `ceilings` (`lmbench ceilings --out` figures) the report adds the distance to the roofline. Runs that
    evaluated held-out loss get the time-to-target table first, ranked by `objective`.
    """
    import matplotlib.pyplot as plt

    from lmbench.analyze import ranking

    baseline = baselines.canonical(baseline, [r["config"] for r in records])
    # The tables first: a refusal (a --ceilings file of another device) writes no file.
    grids = {**ranking.section(records, objective), **sections(records, baseline), **time_sections(records),
             **(roofline_section(records, ceilings) if ceilings else {})}
    summaries = summarize(records)
    out.mkdir(parents=True, exist_ok=True)
    (out / "plots").mkdir(exist_ok=True)
    images = {}
    # Every file is written whole and renamed into place (results.write_atomic): a full disk leaves the previous
    # rendering's file or none, never a torn one.
    for name, fig in figures(df, records, baseline).items():
        images[name] = _png(fig)
        plt.close(fig)
        results.write_atomic(out / "plots" / f"{name}.png", images[name])
    # A figure an earlier rendering drew and this one does not (one batch size now) must not stay beside it.
    for stale in (out / "plots").glob("*.png"):
        if stale.stem not in images:
            stale.unlink()
    lines = header_lines(records, summaries, runs, list(notices))
    # Escaped as the tables' cells: a corpus path /data/<corpus>|v2.txt lost its <corpus> on GitHub.
    shown = [markdown_text(line) for line in lines]
    header = "# lmbench report\n\n" + "".join(f"{line}  \n" for line in shown[:-1]) + f"{shown[-1]}\n"
    md = header + "".join(f"\n## {SECTION_TITLES[k]}\n\n{grid.markdown()}\n" for k, grid in grids.items())
    md += "\n## Plots\n\n" + "".join(f"![{name}](plots/{name}.png)\n" for name in images)
    paths = {"report.md": out / "report.md", "results.csv": out / "results.csv", "report.html": out / "report.html"}
    results.write_atomic(paths["report.md"], md)
    results.write_atomic(paths["results.csv"], df.to_csv(index=False))
    body = "".join(f"<h2>{SECTION_TITLES[k]}</h2>{grid.html()}" for k, grid in grids.items())
    body += "<h2>Plots</h2>" + "".join(
        f'<figure><img alt="{name}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
        f"<figcaption>{name}</figcaption></figure>" for name, data in images.items())
    style = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}th{background:#f3f3f3}.r{text-align:right}"
             "img{max-width:100%}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>lmbench report</title><style>{style}</style>"
            f"</head><body><h1>lmbench report</h1>{''.join(f'<p>{html.escape(line)}</p>' for line in lines)}"
            f"{body}</body></html>")
    results.write_atomic(paths["report.html"], page)
    return paths

"""Tables: the terminal's (run summary, dry-run plan, command outputs) and the reports' Markdown and HTML grids."""

from __future__ import annotations

import html
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rich.markup import escape
from rich.table import Table

from lmbench.plan.config import applies

#: Characters of a note the run summary shows (the report shows it whole).
NOTE_WIDTH = 100
#: Config fields never shown as columns: they do not describe what was trained.
_HIDDEN = frozenset({"timeout_s"})


def cell(config: dict[str, Any], axis: str) -> str:
    """An axis's value as a table shows it: `-` for an option of a parallel mode or kernel set this row does not
    use; pp_stages_per_rank as the stages a rank holds (its 0 is one stage under gpipe and 1f1b)."""
    if not applies(config, axis):
        return "-"
    if axis == "pp_stages_per_rank" and not config.get(axis):
        return "1"
    return str(config.get(axis))


def varying_axes(configs: Iterable[dict[str, Any]]) -> list[str]:
    """Axes whose value differs between configurations, in config field order (at least `model`)."""
    configs = list(configs)
    if not configs:
        return ["model"]
    axes = [a for a in configs[0] if a not in _HIDDEN and len({repr(c.get(a)) for c in configs}) > 1]
    return axes or ["model"]


def fixed_axes(configs: Iterable[dict[str, Any]]) -> str:
    """What every configuration shares and no column shows: `model=gpt2-355m, seq_len=1024, precision=amp-bf16`.
    The key's readable axes always (what a figure is of), other axes only away from their default, options only
    where they apply."""
    from lmbench.plan.config import DEFAULTS, KEY_AXES

    configs = list(configs)
    if not configs:
        return ""
    first, varying = configs[0], set(varying_axes(configs))
    shared = [axis for axis in first if axis not in _HIDDEN and axis not in varying and axis != "run"
              and axis in DEFAULTS and all(applies(config, axis) for config in configs)
              and (axis in KEY_AXES or first.get(axis) != DEFAULTS[axis])]
    return ", ".join(f"{axis}={cell(first, axis)}" for axis in shared)


def markdown_text(text: Any) -> str:
    """Text as one line of Markdown that keeps every character: a table's cell or a report's header line. `|` would
    end a cell, and GitHub drops what reads as a tag (CUDAFunctor_add<float> lost its <float>, a corpus path
    /data/<corpus>|v2.txt its <corpus>), so `<` becomes an entity."""
    return str(text).replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")


def percent_cell(value: float | None) -> str:
    """A fraction as a percentage: one decimal from 1%, three significant digits below (a tiny model's MFU of
    0.04% read 0.0%, no work at all, as TFLOP/s keeps its digits)."""
    if value is None or value != value:
        return "-"
    return f"{value:.1%}" if abs(value) >= 0.01 else f"{value * 100:.3g}%"


@dataclass
class Grid:
    """Headers and rows of text cells; columns in `right` are right-aligned. Renders as Markdown or HTML."""

    headers: list[str]
    rows: list[list[str]]
    right: set[int] = field(default_factory=set)
    note: str = ""
    """A paragraph under the table: how to read it (a definition, the sources of its constants)."""

    def markdown(self) -> str:
        """A GitHub-flavoured Markdown table, its note below."""
        lines = ["| " + " | ".join(markdown_text(h) for h in self.headers) + " |",
                 "| " + " | ".join("---:" if i in self.right else "---" for i in range(len(self.headers))) + " |"]
        lines += ["| " + " | ".join(markdown_text(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines + (["", self.note] if self.note else []))

    def html(self) -> str:
        def cells(tag: str, row: list[str]) -> str:
            return "".join(f'<{tag}{" class=r" if i in self.right else ""}>{html.escape(str(c))}</{tag}>'
                           for i, c in enumerate(row))

        body = "".join(f"<tr>{cells('td', row)}</tr>" for row in self.rows)
        note = f"<p>{html.escape(self.note)}</p>" if self.note else ""
        return f"<table><thead><tr>{cells('th', self.headers)}</tr></thead><tbody>{body}</tbody></table>{note}"


def markdown_table(headers: list[str], rows: list[list[str]], *, right: set[int] = frozenset()) -> str:
    """A GitHub-flavoured Markdown table; columns in `right` are right-aligned."""
    return Grid(headers, rows, set(right)).markdown()


def status_counts(counts: dict[str, int], only: tuple[str, ...] | None = None) -> str:
    """'1 ok, 2 oom': how many repeats ended with each status, by status (only those in `only`, when given)."""
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()) if only is None or status in only)


def configs_of(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each record's configuration, with its `run` as the first axis when the records come from several runs
    (the same configuration measured by two runs is two rows, never one pooled row)."""
    if len({r.get("run") for r in records}) <= 1:
        return [r["config"] for r in records]
    return [{"run": r.get("run"), **r["config"]} for r in records]


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def seconds_cell(value: float | None) -> str:
    """Seconds with two decimals from 1 s and three significant digits below (0.0134 and 0.0182 s must not both
    read 0.01)."""
    if value is None:
        return "-"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def device_label(records: list[dict[str, Any]]) -> str:
    """What the records ran on, for titles: 'NVIDIA H100 80GB HBM3 (GPU, driver 580.65)' or 'AMD EPYC (CPU, 2 physical
    cores: no NVML power or energy, no MFU)'; several devices joined."""
    labels = []
    for record in records:
        device = ((record.get("env") or {}).get("device")) or {}
        if not device.get("name"):
            continue
        if device.get("type") == "cpu":
            cores = device.get("physical_cores") or device.get("logical_cores") or "?"
            label = f"{device['name']} (CPU, {cores} physical cores: no NVML power or energy, no MFU)"
        else:
            label = f"{device['name']} (GPU" + (f", driver {device['driver']})" if device.get("driver") else ")")
        labels.append(label)
    if labels:
        return "; ".join(dict.fromkeys(labels))
    if records and all(record.get("status") == "skipped" for record in records):
        return "no device: every configuration was skipped"
    # No worker lived to report its environment (every one timed out, say): the device each was meant for.
    devices = ", ".join(dict.fromkeys(str((r.get("config") or {}).get("device", "?")) for r in records)) or "?"
    statuses = ", ".join(sorted({str(r.get("status")) for r in records})) or "no records"
    return f"device {devices}, not recorded ({statuses}: no configuration reported its environment)"


def summary(records: list[dict[str, Any]]) -> Table:
    """One row per configuration: status over repeats, median tokens/s, MFU and peak memory, and a note.

    Memory is the device's peak reserved memory, or on a CPU the growth of the resident set since training
    started ("+1.9 MiB RSS"), what --max-memory caps. The note holds the failure reason, or flags steps too
    unstable to trust.
    """
    from lmbench.measure.hostload import contention_note, standing
    from lmbench.measure.metrics import bubble_note, host_bound_note, stalls_note, unstable_steps

    axes = varying_axes(r["config"] for r in records)
    table = Table(title=escape(f"lmbench summary on {device_label(records)}"), title_justify="left")
    for axis in axes:
        table.add_column(axis)
    with_parity = any((r.get("metrics") or {}).get("parity") for r in records)
    for name in ("status", "tokens/s", "step cv", "MFU", "peak mem", *(("parity",) if with_parity else ()),
                 "note"):
        table.add_column(name, justify="right" if name not in ("status", "note", "parity") else "left")
    by_key: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_key.setdefault(record["config_key"], []).append(record)
    for group in by_key.values():
        every = [r["metrics"] for r in group if r["status"] == "ok" and r["metrics"]]
        # As the report and compare: a contended repeat is left out while a quiet one stands for it.
        ok = standing(every)
        left_out = len(every) - len(ok)
        statuses = sorted({r["status"] for r in group})
        status = statuses[0] if len(statuses) == 1 else "/".join(statuses)
        if len(group) > 1:
            status += f" ({len(every)}/{len(group)} ok)"
        tps = _median([m["tokens_per_s"] for m in ok])
        # One measured step has no spread: its cv is None, shown as `-` (never 0.0%).
        cvs = [m["step_time_cv"] for m in ok if m.get("step_time_cv") is not None]
        cv = _median(cvs)
        mfu = _median([m["mfu"] for m in ok if m.get("mfu") is not None])
        memory = memory_cell(_median([m["mem_peak_reserved_bytes"] for m in ok
                                      if m.get("mem_peak_reserved_bytes") is not None]),
                             _median([host_growth(m) for m in ok if host_growth(m) is not None]))
        reason = next((r["reason"] for r in group if r.get("reason")), "") or ""
        bubble = bubble_note(_median([m["pp_bubble_fraction"] for m in ok if m.get("pp_bubble_fraction") is not None]),
                             next((m.get("pp_bubble_fraction_theory") for m in ok), None))
        busy = host_bound_note(_median([m["gpu_util_avg_pct"] for m in ok if m.get("gpu_util_avg_pct") is not None]))
        measured = "; ".join(filter(None, [stalls_note(ok), bubble, unstable_steps(cvs), busy,
                                           left_out and f"{left_out} contended repeat"
                                                        f"{'s' if left_out > 1 else ''} left out"]))
        # Contention first, before a failure's reason too: it says whether the figures mean anything, and a note
        # cut at NOTE_WIDTH must not lose it.
        note = "; ".join(filter(None, [contention_note(max(ok, default={}, key=lambda m: m.get(
            "host_other_cpu_cores") or 0)), reason or measured]))
        parity = sorted({str((r.get("metrics") or {}).get("parity") or "-") for r in group})
        # The report has every note whole; here a cut one ends in an ellipsis, never mid-figure without a sign.
        shown = note if len(note) <= NOTE_WIDTH else note[:NOTE_WIDTH - 1] + "…"
        table.add_row(*(escape(cell(group[0]["config"], a)) for a in axes), status, _fmt(tps, ",.0f"),
                      "-" if cv is None else f"{cv:.1%}", percent_cell(mfu), memory,
                      *(("/".join(parity),) if with_parity else ()), escape(shown))
    return table


def host_growth(m: dict[str, Any]) -> float | None:
    """A CPU run's memory: the resident set's growth since training started, what --max-memory caps (records from
    before it was kept: the growth over the window)."""
    training = m.get("mem_host_training_growth_bytes")
    return training if training is not None else m.get("mem_host_peak_growth_bytes")


def memory_cell(device_bytes: float | None, host_bytes: float | None) -> str:
    """The device's peak reserved memory, or on a CPU the resident set's growth over the window ("+1.9 MiB RSS")."""
    if device_bytes is not None:
        return f"{device_bytes / 2**30:.2f} GiB"
    return "-" if host_bytes is None else f"+{host_bytes / 2**20:.1f} MiB RSS"


def plan_table(rows: list[tuple[dict[str, Any], str, str | None]], kept: dict[str, str] | None = None) -> Table:
    """The --dry-run listing: (config dict, key, skip reason) per configuration; `kept` gives the plan of
    configurations a resumed run already holds records of (by key)."""
    axes = varying_axes(config for config, _, _ in rows)
    table = Table(title=f"{len(rows)} configuration{'' if len(rows) == 1 else 's'}", title_justify="left")
    for axis in axes:
        table.add_column(axis)
    table.add_column("config_key")
    table.add_column("plan")
    for config, key, skip in rows:
        plan = (kept or {}).get(key) or (f"skip: {skip}" if skip else "run")
        table.add_row(*(escape(cell(config, a)) for a in axes), key, escape(plan))
    return table


def noise_floor_table(estimates: dict[str, Any], runs: list[list[dict[str, Any]]], *, metric: str,
                      title: str, notes: dict[str, str] | None = None) -> Table:
    """`lmbench calibrate`: each configuration's A/A ratio (the last run's median over the first's), its spread
    between processes and between runs and the gate's floors, with the repeats they rest on (noise.floor_records:
    contended ones left out while two quiet ones remain); `notes` by configuration (the noise-floor file's)."""
    from lmbench.analyze.noise import MIN_REPEATS, floor_records, ok_values

    # The repeats the floor rests on, for the ratio and the counts too: a contended repeat left out of one is out of
    # every figure of its row.
    kept, left_out = floor_records([r for run in runs for r in run], metric)
    notes = left_out if notes is None else notes  # the file's notes, where given: they say more
    ids = {id(r) for r in kept}
    by_run = [ok_values([r for r in run if id(r) in ids], metric) for run in runs]
    table = Table(title=title, title_justify="left")
    for column in ("config", "ok repeats", "A/A ratio", "sd per process", "sd of run means", "floor 1 vs 1",
                   f"floor {MIN_REPEATS} vs {MIN_REPEATS}", "note"):
        table.add_column(column, justify="left" if column in ("config", "note") else "right")
    for key in dict.fromkeys(key for values in by_run for key in values):
        noise = estimates.get(key)
        first, last = by_run[0].get(key), by_run[-1].get(key)
        ratio = statistics.median(last) / statistics.median(first) if first and last else None
        table.add_row(key, "+".join(str(len(values.get(key, []))) for values in by_run), _fmt(ratio, ".4f"),
                      *(["-"] * 4 if noise is None else
                        [f"{noise.log_sd:.2%}", f"{noise.run_mean_sd:.2%}" if noise.run_df else "-",
                         _floor_cell(noise.floor(1)), _floor_cell(noise.floor(MIN_REPEATS))]),
                      escape(notes.get(key, "")))
    return table


#: A floor past this (1000%) says only that nothing can be told apart: a 15-digit percentage read as a bug (a new
#: user's 2-run calibration on a busy host, whose t quantile at 1 degree of freedom is 12.7).
_FLOOR_SHOWN = 10.0


def _floor_cell(floor: float) -> str:
    return f"{floor:.1%}" if floor <= _FLOOR_SHOWN else f">{_FLOOR_SHOWN:.0%}"


def kernels_table(rows: list[dict[str, Any]], *, title: str) -> Table:
    """`lmbench kernels`: one row per implementation, its device time (CUDA-graph replay) beside its time a call
    between CUDA events, which includes the host's launch work when the host cannot keep ahead."""
    table = Table(title=escape(title), title_justify="left")
    copy = any("pct_of_copy" in row for row in rows)
    flops = any(row.get("tflops") is not None for row in rows)
    matmul = any("pct_of_matmul" in row for row in rows)
    rates = [("GB/s", "gb_per_s", ",.0f", True), ("% of copy", "pct_of_copy", ".0f", copy),
             ("TFLOP/s", "tflops", ",.0f", flops), ("% of matmul", "pct_of_matmul", ".0f", matmul)]
    shown = [(name, key, spec) for name, key, spec, wanted in rates if wanted]
    for column in ("impl", "device ms", "device p20-p80", "device vs ours (95%)", "call ms", "call p20-p80",
                   *(n for n, _, _ in shown), "peak MiB above inputs", "peak MiB in all", "note"):
        table.add_column(column, justify="left" if column in ("impl", "note", "device vs ours (95%)") else "right")
    for row in rows:
        if row["status"] != "ok":
            table.add_row(row["impl"], "-", "-", "-", "-", "-", *["-"] * len(shown), "-", "-",
                          escape(f"{row['status']}: {row['reason']}"))
            continue
        device = row.get("device_median_ms")
        # This implementation's device time over ours, round by round: 1.30x is 30% slower than ours.
        versus = ("-" if row.get("vs_ours") is None else
                  f"{row['vs_ours']:.2f}x [{row['vs_ours_low']:.2f}, {row['vs_ours_high']:.2f}] "
                  f"{row['vs_ours_verdict']}")
        figures = [("-" if row.get(key) is None else format(row[key], spec) + ("%" if key.startswith("pct") else ""))
                   for _, key, spec in shown]
        table.add_row(row["impl"], "-" if device is None else f"{device:.4f}",
                      "-" if device is None else f"{row['device_p20_ms']:.4f}-{row['device_p80_ms']:.4f}", versus,
                      f"{row['time_median_ms']:.4f}", f"{row['time_p20_ms']:.4f}-{row['time_p80_ms']:.4f}",
                      *figures, f"{row['peak_mem_bytes'] / 2**20:.1f}",
                      "-" if row.get("peak_mem_total_bytes") is None else f"{row['peak_mem_total_bytes'] / 2**20:.1f}",
                      escape(row.get("note") or ""))
    return table


def tune_search_table(found: list[Any], *, title: str) -> Table:
    """`lmbench tune`: what the batch-size search found per combination."""
    table = Table(title=title, title_justify="left")
    for column in ("precision", "kernels", "checkpointing", "fits", "fails", "chosen", "probes", "note"):
        table.add_column(column)
    for r in found:
        # Not searched (the budget ran out first): no figures, where "fits 0" would read as nothing fitting.
        searched = ([str(r.largest_fitting), str(r.first_failing or "-"), str(r.chosen), str(r.probes)] if r.probes
                    else ["-", "-", "-", "0"])
        table.add_row(r.combo["precision"], r.kernels or r.combo["kernels"], r.combo["checkpointing"],
                      *(["-"] * 4 if r.skipped else searched), escape(r.note))
    return table


def kernels_cell(config: dict[str, Any]) -> str:
    """The kernel set with what runs it as CUDA graphs, when anything does: `compile reduce-overhead`,
    `triton cuda_graph` (a tune's --set can change either, and the ranking must say which ran)."""
    mode = config.get("compile_mode", "default")
    return " ".join([config["kernels"], *([mode] if config["kernels"] == "compile" and mode != "default" else []),
                     *(["cuda_graph"] if config.get("cuda_graph") else [])])

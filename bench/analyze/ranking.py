"""Ranking configurations by an objective (tokens/s or time to target), and the report's time-to-target table.

Two objectives rank configurations: `throughput` (median tokens/s, higher first) and `time-to-target`
(median time to the held-out target over the repeats that reached it, lower first; configurations
that never reached it follow, by their best held-out loss). A figure is a median over the repeats that
succeeded, so a configuration that succeeded only some of the time (a repeat that ran out of memory,
or that missed the target) ranks after every one that succeeded every time, whatever its figure. A
configuration whose loss parity drifted or diverged from its reference (as `tune` ranks them), or that
never succeeded, ranks after those. Repeats whose host other processes kept busy (contended, as `compare`
leaves them out) do not count toward a figure while a quiet repeat of the configuration does; a configuration
measured only on a contended host ranks after the quiet ones of its tier.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.markup import escape
from rich.table import Table

from lmbench.analyze.table import (
    Grid,
    configs_of,
    host_growth,
    kernels_cell,
    memory_cell,
    seconds_cell,
    status_counts,
    varying_axes,
)

OBJECTIVES = ("throughput", "time-to-target")

#: Per-repeat figures of the time-to-target table, medians over the repeats that reached the target.
TARGET_METRICS = ("steps_to_target", "tokens_to_target", "time_to_target_s", "train_time_to_target_s",
                  "device_time_to_target_s", "energy_to_target_j")


@dataclass
class Standing:
    """One configuration (of one run) over its repeats: what ranking and the table need."""

    config: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)

    def ok(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["status"] == "ok" and r.get("metrics")]

    def counted(self) -> list[dict[str, Any]]:
        """The ok repeats a figure rests on (lmbench.measure.hostload.standing)."""
        from lmbench.measure.hostload import standing

        return standing(self.ok(), lambda r: r["metrics"])

    @property
    def contended_only(self) -> bool:
        """Every ok repeat ran on a host other processes kept busy."""
        from lmbench.measure.hostload import window_contended

        return bool(self.ok()) and all(window_contended(r["metrics"]) for r in self.ok())

    def reached(self) -> list[dict[str, Any]]:
        return [r for r in self.counted() if r["metrics"].get("target_status") == "reached"]

    def median(self, name: str, among: list[dict[str, Any]] | None = None) -> float | None:
        values = [r["metrics"].get(name) for r in (self.counted() if among is None else among)]
        values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
        return statistics.median(values) if values else None

    @property
    def evaluated(self) -> bool:
        return any(r["metrics"].get("val_points") for r in self.ok())

    @property
    def has_target(self) -> bool:
        return any(r["metrics"].get("target_status") for r in self.counted())

    @property
    def strayed(self) -> bool:
        """A parity check found the loss drifting or diverging from its reference's."""
        return any(r["metrics"].get("parity") in ("drift", "diverged") for r in self.ok())

    def target_cell(self) -> str:
        """Whether the repeats the figures rest on reached the target ('reached (2/3)'), a configuration that never
        succeeded its statuses ('oom'), `-` without a target. A contended repeat the figures leave out is not
        counted here either: '3/3 reached' beside a median of two said a third repeat stood behind it."""
        if not self.ok():
            return self.status_cell()
        if not self.has_target:
            return "-"
        statuses = [r["metrics"].get("target_status") for r in self.counted()]
        reached = statuses.count("reached")
        if reached == len(statuses):
            return "reached" if reached == 1 else f"reached ({reached}/{reached})"
        worst = "diverged" if "diverged" in statuses else "not_reached"
        return worst if len(statuses) == 1 else f"{worst} ({reached}/{len(statuses)} reached)"

    @property
    def always_ok(self) -> bool:
        """Every repeat ran to the end (none ran out of memory, failed or timed out)."""
        return len(self.ok()) == len(self.records)

    def sort_key(self, objective: str) -> tuple[float, ...]:
        """Lower ranks first: by tier (every repeat succeeded, some did, the target never reached, the loss
        strayed, none succeeded), then by the objective's figure."""
        if not self.ok():
            return (5, 0, 0.0)
        if self.strayed:
            return (4, 0, 0.0)
        busy = int(self.contended_only)
        if objective == "throughput":
            return (0 if self.always_ok else 1, busy, -(self.median("tokens_per_s") or 0.0))
        reached = self.reached()
        if reached:
            return (0 if len(reached) == len(self.counted()) and self.always_ok else 2, busy,
                    self.median("time_to_target_s", reached) or 0.0)
        return (3, busy, self.median("val_loss_best") or math.inf)

    def status_cell(self) -> str:
        """'ok' when every repeat is, else the count of each status ('2 ok, 1 oom')."""
        counts = Counter(r["status"] for r in self.records)
        return next(iter(counts)) if len(counts) == 1 else status_counts(counts)


def standings(records: list[dict[str, Any]]) -> list[Standing]:
    """Configurations in first-seen order (a report of several runs keeps each run's apart)."""
    found: dict[tuple[str, str], Standing] = {}
    for record, config in zip(records, configs_of(records)):
        key = (str(record.get("run", "")), record["config_key"])
        found.setdefault(key, Standing(config)).records.append(record)
    return list(found.values())


def rank(records: list[dict[str, Any]], objective: str) -> list[Standing]:
    """Configurations best first by `objective` (see the module docstring); ties keep their order."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective={objective!r}; allowed: {', '.join(OBJECTIVES)}")
    return sorted(standings(records), key=lambda s: s.sort_key(objective))


def ranked_records(records: list[dict[str, Any]], objective: str) -> list[dict[str, Any]]:
    """Every record, configurations best first by `objective`, each configuration's repeats together."""
    return [r for standing in rank(records, objective) for r in standing.records]


def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value / scale, spec)


def _asked_to_evaluate(config: dict[str, Any]) -> bool:
    """Whether a configuration (its record's config) asked for held-out evaluations or a target."""
    return any(config.get(name) for name in ("eval_every", "eval_every_tokens", "target_loss", "target_ppl"))


def section(records: list[dict[str, Any]], objective: str = "time-to-target") -> dict[str, Grid]:
    """The report's time-to-target table (configurations that evaluated held-out loss, and after them those that
    never succeeded, their statuses in the target column), ranked by `objective`; empty when none evaluated."""
    # A failed configuration belongs here only if it was to evaluate (a throughput row that ran out of memory is no
    # time-to-target row; a reviewer found one ranked second).
    ranked = [s for s in rank(records, objective) if s.evaluated or (not s.ok() and _asked_to_evaluate(s.config))]
    if not any(s.evaluated for s in ranked):
        return {}
    axes = varying_axes(configs_of(records))
    with_parity = any(r["metrics"].get("parity") for s in ranked for r in s.ok())
    rows = []
    for place, s in enumerate(ranked, start=1):
        reached = s.reached()
        row = [str(place)] + [str(s.config[a]) for a in axes] + [
            s.target_cell(), _fmt(s.median("target_loss_nats"), ".3g"),
            _fmt(s.median("steps_to_target", reached), ",.0f"), _fmt(s.median("tokens_to_target", reached), ",.0f"),
            seconds_cell(s.median("time_to_target_s", reached)),
            seconds_cell(s.median("train_time_to_target_s", reached)),
            seconds_cell(s.median("device_time_to_target_s", reached)),
            _fmt(s.median("energy_to_target_j", reached), ",.0f"), _fmt(s.median("val_loss_best"), ".3f"),
            _fmt(s.median("val_ppl"), ",.2f"), _fmt(s.median("tokens_per_s"), ",.0f")]
        if with_parity:
            verdicts = {r["metrics"].get("parity") for r in s.ok()} - {None}
            row.append("/".join(sorted(verdicts)) or "-")
        rows.append(row)
    n = len(axes) + 1
    head = ["target", "target nats", "steps", "tokens", "time to target s", "train time s", "device time s",
            "energy J", "best val loss nats", "final val ppl", "tokens/s"] + (["parity"] if with_parity else [])
    return {"quality": Grid(["#"] + axes + head, rows, right={0, *range(n + 1, n + 11)})}


def ranking_table(records: list[dict[str, Any]], objective: str) -> Table:
    """`lmbench run --objective`: the run's configurations best first, with what the ranking read."""
    table = Table(title=f"ranked by {'time to target' if objective == 'time-to-target' else 'tokens/s'}",
                  title_justify="left")
    axes = varying_axes(configs_of(records))
    for column in ["#", *axes, "status", "tokens/s", "target", "time to target s", "best val loss nats", "parity"]:
        table.add_column(column)
    for place, s in enumerate(rank(records, objective), start=1):
        parity = "/".join(sorted({r["metrics"].get("parity") for r in s.ok()} - {None})) or "-"
        table.add_row(str(place), *(escape(str(s.config[a])) for a in axes), s.status_cell(),
                      _fmt(s.median("tokens_per_s"), ",.0f"), s.target_cell(),
                      seconds_cell(s.median("time_to_target_s", s.reached())), _fmt(s.median("val_loss_best"), ".3f"),
                      parity)
    return table


def tune_ranking_table(records: list[dict[str, Any]], *, objective: str = "throughput") -> Table:
    """`lmbench tune`: measured configurations best first by the objective (a loss that strayed from its reference's
    after the others), one row each with the figures the ranking read: medians over the quiet ok repeats (the two
    best have several once confirmed)."""
    from lmbench.measure.hostload import contention_note, window_contended

    to_target = objective == "time-to-target"
    table = Table(title=f"ranked by {'time to target' if to_target else 'tokens/s'} (a loss that drifted from its "
                        "reference never ranks first)", title_justify="left")
    columns = ["#", "precision", "kernels", "checkpointing", "batch", "accum", "status", "repeats", "tokens/s",
               "peak mem", "J/token", "parity"] + (["target", "time to target s"] if to_target else []) + ["note"]
    for column in columns:
        table.add_column(column)
    for place, s in enumerate(rank(records, objective), start=1):
        c, counted = s.config, s.counted()
        growth = [g for r in counted if (g := host_growth(r["metrics"])) is not None]
        parity = "/".join(sorted({r["metrics"].get("parity") for r in s.ok()} - {None})) or "-"
        cells = [str(place), c["precision"], kernels_cell(c), c["checkpointing"], str(c["batch_size"]),
                 str(c["grad_accum"]), s.status_cell(), str(len(s.records)), _fmt(s.median("tokens_per_s"), ",.0f"),
                 memory_cell(s.median("mem_peak_reserved_bytes"), statistics.median(growth) if growth else None),
                 _fmt(s.median("j_per_token"), ".3g"), parity]
        if to_target:
            cells += [s.target_cell(), seconds_cell(s.median("time_to_target_s", s.reached()))]
        # Why a row sits where it does: a failure's reason, or the host's load (a contended measurement ranks after
        # the quiet ones) and the contended repeats its figures leave out.
        reason = next((r.get("reason") for r in s.records if r.get("reason")), None)
        busy = [r for r in s.ok() if window_contended(r["metrics"])]
        left_out = len(s.ok()) - len(counted)
        notes = [reason, contention_note(busy[0]["metrics"]) if busy and not left_out else None,
                 f"{left_out} contended repeat{'s' if left_out > 1 else ''} left out" if left_out else None]
        cells.append(escape("; ".join(filter(None, notes))))
        table.add_row(*cells)
    return table

"""Terminal tables: the summary printed at the end of a run, and the dry-run plan."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import Any

from rich.markup import escape
from rich.table import Table

#: Config fields never shown as columns: they do not describe what was trained.
_HIDDEN = frozenset({"timeout_s"})


def varying_axes(configs: Iterable[dict[str, Any]]) -> list[str]:
    """Axes whose value differs between configurations, in config field order (at least `model`)."""
    configs = list(configs)
    if not configs:
        return ["model"]
    axes = [a for a in configs[0] if a not in _HIDDEN and len({repr(c.get(a)) for c in configs}) > 1]
    return axes or ["model"]


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summary(records: list[dict[str, Any]]) -> Table:
    """One row per configuration: status over repeats, median tokens/s, MFU and peak memory."""
    axes = varying_axes(r["config"] for r in records)
    table = Table(title="lmbench summary", title_justify="left")
    for axis in axes:
        table.add_column(axis)
    for name in ("status", "tokens/s", "step cv", "MFU", "peak mem GiB", "note"):
        table.add_column(name, justify="right" if name not in ("status", "note") else "left")
    by_key: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_key.setdefault(record["config_key"], []).append(record)
    for group in by_key.values():
        ok = [r["metrics"] for r in group if r["status"] == "ok" and r["metrics"]]
        statuses = sorted({r["status"] for r in group})
        status = statuses[0] if len(statuses) == 1 else "/".join(statuses)
        if len(group) > 1:
            status += f" ({len(ok)}/{len(group)} ok)"
        tps = _median([m["tokens_per_s"] for m in ok])
        cv = _median([m["step_time_cv"] for m in ok])
        mfu = _median([m["mfu"] for m in ok if m.get("mfu") is not None])
        mem = _median([m["mem_peak_reserved_bytes"] for m in ok if m.get("mem_peak_reserved_bytes") is not None])
        note = next((r["reason"] for r in group if r.get("reason")), "") or ""
        table.add_row(*(escape(str(group[0]["config"][a])) for a in axes), status, _fmt(tps, ",.0f"),
                      "-" if cv is None else f"{cv:.1%}", "-" if mfu is None else f"{mfu:.1%}",
                      "-" if mem is None else f"{mem / 2**30:.2f}", escape(note[:80]))
    return table


def plan_table(rows: list[tuple[dict[str, Any], str, str | None]]) -> Table:
    """The --dry-run listing: (config dict, key, skip reason) per configuration."""
    axes = varying_axes(config for config, _, _ in rows)
    table = Table(title=f"{len(rows)} configurations", title_justify="left")
    for axis in axes:
        table.add_column(axis)
    table.add_column("config_key")
    table.add_column("plan")
    for config, key, skip in rows:
        table.add_row(*(escape(str(config[a])) for a in axes), key, escape(f"skip: {skip}") if skip else "run")
    return table

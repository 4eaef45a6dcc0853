"""Results as a tidy pandas DataFrame: one row per configuration and repeat, unit-suffixed columns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from lmbench.analyze import coverage, results
from lmbench.errors import ResultsError

#: Environment fields copied into every row, for comparisons across machines: which card (its UUID, of a fleet of one
#: model), the software under the code, and when the worker measured (the record's env timestamp, ISO 8601).
ENV_COLUMNS = {"gpu": ("device", "name"), "gpu_uuid": ("device", "uuid"), "driver": ("device", "driver"),
               "memory_total_bytes": ("device", "memory_total_bytes"), "torch": ("torch",), "cuda": ("cuda",),
               "cudnn": ("cudnn",), "triton": ("triton",), "transformers": ("transformers",),
               "lmbench_commit": ("lmbench_commit",), "host": ("host",), "timestamp": ("timestamp",)}
#: Metric values that are lists or nested: kept out of the flat table.
_NOT_SCALAR = (list, dict)


def _env_value(env: dict[str, Any] | None, path: tuple[str, ...]) -> Any:
    value: Any = env or {}
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def to_rows(records: list[dict[str, Any]], *, run: str) -> list[dict[str, Any]]:
    rows = []
    for r in records:
        row: dict[str, Any] = {"run": run, "suite": r.get("suite"), "config_key": r["config_key"],
                               "repeat": r["repeat"], "status": r["status"], "reason": r.get("reason")}
        config = results.full_config(r["config"])
        row.update(config)
        for name, value in (r.get("metrics") or {}).items():
            # A metric named like an axis is what the run applied (tp_degree 0 = "auto" ran as 2; telemetry on
            # ran "off: not a CUDA device"): a column of its own, beside the axis as asked.
            column = f"{name}_applied" if name in config else name
            if name == "throttle_reasons":
                # [] (read, and no reason set) is "none"; None (unknown: no sample read the bits) stays empty.
                row[column] = (",".join(value) or "none") if value is not None else None
            elif not isinstance(value, _NOT_SCALAR):
                row[column] = value
        row.update({column: _env_value(r.get("env"), path) for column, path in ENV_COLUMNS.items()})
        row["warnings"] = "; ".join(r.get("warnings") or [])
        rows.append(row)
    return rows


def distinct(run_dirs: list[Path]) -> tuple[list[Path], list[str]]:
    """The run directories with repeats removed (one directory named twice would count its records twice)."""
    seen: dict[Path, Path] = {}
    warnings = []
    for run_dir in map(Path, run_dirs):
        real = run_dir.resolve()
        if real in seen:
            again = "given twice" if str(run_dir) == str(seen[real]) else f"the same directory as {seen[real]}"
            warnings.append(f"run directory {run_dir} is {again}: its records are read once")
            continue
        seen[real] = run_dir
    return list(seen.values()), warnings


def load(run_dirs: list[Path]) -> tuple[pd.DataFrame, list[dict[str, Any]], list[str]]:
    """(DataFrame, the raw records with a `run` key, warnings) for one or more run directories.

    A directory named twice is read once. Raw records carry every axis in `config` (None where an
    older record lacks one), so tables over records of several versions line up.
    """
    all_rows: list[dict[str, Any]] = []
    raw: list[dict[str, Any]] = []
    skipped: list[str] = []
    """The lines results.read skipped, each naming its file and line."""
    run_dirs, warnings = distinct(run_dirs)
    for path in run_dirs:
        if not path.is_dir():
            raise ResultsError(f"run directory {str(path)!r} does not exist")
        loaded = results.read(path)
        warnings.extend(loaded.warnings)
        skipped.extend(loaded.warnings)
        all_rows.extend(to_rows(loaded.records, run=str(path)))
        raw.extend({**record, "config": results.full_config(record["config"]), "run": str(path)}
                   for record in loaded.records)
    if not all_rows:
        why = f": {len(skipped)} line(s) skipped ({skipped[0]})" if skipped else ""
        raise ResultsError(f"no results in {', '.join(map(str, run_dirs))}{why}")
    return pd.DataFrame(all_rows), raw, warnings


def with_unrecorded(df: pd.DataFrame, records: list[dict[str, Any]], run_dirs: list[Path]
                    ) -> tuple[pd.DataFrame, list[dict[str, Any]], list[str]]:
    """`load`'s frame and records with a row for each planned (configuration, repeat) of the runs that has no record
    (coverage.unrecorded: status `not recorded`, no metrics), and warnings; a report shows them, scripts that read
    records keep `load`'s."""
    extra: list[dict[str, Any]] = []
    warnings: list[str] = []
    for path in distinct(run_dirs)[0]:
        rows, notes = coverage.unrecorded(path, [r for r in records if r["run"] == str(path)])
        extra.extend(rows)
        warnings.extend(notes)
    if not extra:
        return df, records, warnings
    added = pd.DataFrame([row for r in extra for row in to_rows([r], run=r["run"])])
    return pd.concat([df, added], ignore_index=True), records + extra, warnings

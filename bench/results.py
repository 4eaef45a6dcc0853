"""The results file: one JSON record per configuration and repeat, appended as each one finishes."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmbench import SCHEMA_VERSION
from lmbench.errors import ResultsError

RESULTS_FILE = "results.jsonl"
STATUSES = ("ok", "oom", "diverged", "error", "timeout", "skipped")


def sanitize(value: Any) -> Any:
    """JSON has no NaN or Infinity: non-finite floats become null (metrics keep a count of them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [sanitize(v) for v in value]
    return value


def write_json(path: Path, payload: Any) -> None:
    """Write atomically (temporary file, then rename), so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(sanitize(payload), default=str))
    tmp.replace(path)


def make_record(*, suite: str, config: dict[str, Any], config_key: str, repeat: int, status: str,
                reason: str | None, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    """A results.jsonl line (DESIGN.md, 'The results file')."""
    if status not in STATUSES:
        raise ValueError(f"status={status!r} is not one of {STATUSES}")
    payload = payload or {}
    return {
        "schema_version": SCHEMA_VERSION,
        "suite": suite,
        "config_key": config_key,
        "repeat": repeat,
        "config": config,
        "status": status,
        "reason": reason,
        "metrics": payload.get("metrics"),
        "losses": payload.get("losses"),
        "step_times_s": payload.get("step_times_s"),
        "env": payload.get("env"),
        "warnings": payload.get("warnings") or [],
    }


def append(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one record and flush it to disk before returning: an interrupted run loses nothing finished."""
    line = json.dumps(sanitize(record), default=str)
    with open(run_dir / RESULTS_FILE, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


@dataclass
class Loaded:
    records: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    """One per skipped line, naming the file and line number."""


def read(path: Path) -> Loaded:
    """Read a results file (or a run directory holding one); corrupt lines are skipped with a warning."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.is_file():
        raise ResultsError(f"no results file at {str(path)!r}")
    loaded = Loaded()
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                loaded.warnings.append(f"{path}:{number}: skipped corrupt line ({err.msg})")
                continue
            if not isinstance(record, dict) or not {"config_key", "repeat", "status"} <= set(record):
                loaded.warnings.append(f"{path}:{number}: skipped line without config_key/repeat/status")
                continue
            loaded.records.append(record)
    return loaded

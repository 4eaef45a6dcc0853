"""What a run planned against what it recorded: the (configuration, repeat) pairs a run directory's run.json
planned that its results file has no record of (the run stopped, was killed, or is still going), as rows of
their own for the report, so a configuration whose repeat was lost never reads as complete."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmbench.analyze import results
from lmbench.errors import LmbenchError, ResultsError

#: The status of a planned (configuration, repeat) with no record; never written to a results file.
NOT_RECORDED = "not recorded"


def planned_entry(config_key: str, config: dict[str, Any]) -> dict[str, Any]:
    """One configuration of run.json's `planned` list, as `lmbench run` writes it: its key, and its axes away from
    their defaults (results.full_config fills the rest back in; a whole config is 0.8 KB, and run.json must stay
    small enough to be written where the disk is nearly full)."""
    from lmbench.plan.config import DEFAULTS

    away = {axis: value for axis, value in config.items() if axis not in DEFAULTS or value != DEFAULTS[axis]}
    return {"config_key": config_key, "config": away}


def _planned(meta: dict[str, Any], records: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(key, config) of each planned configuration: run.json's list, or for a run from before it kept one, the
    configurations it recorded (their missing repeats can still be told; a configuration with none cannot).

    run.json holds the keys as the run wrote them; the reader keys records by their configs under this lmbench
    (results.current_key) and keeps the written one as `written_key`. A planned key a record was written under is
    read as that record's key, or an old profiled run's every measured repeat read as planned and not recorded."""
    listed = meta.get("planned")
    recorded = {r["config_key"]: r["config"] for r in records}
    now = {r.get("written_key", r["config_key"]): r["config_key"] for r in records}
    if isinstance(listed, list) and all(isinstance(p, dict) and isinstance(p.get("config_key"), str)
                                        and isinstance(p.get("config"), dict) for p in listed):
        # A configuration with records takes their config (every axis); one without, the planned axes away from
        # their defaults, filled with this lmbench's.
        keys = [now.get(p["config_key"], p["config_key"]) for p in listed]
        return list({key: recorded.get(key, p["config"]) for key, p in zip(keys, listed)}.items())
    return list(recorded.items())


def unrecorded(run_dir: Path, records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """(a row for each planned (configuration, repeat) of `run_dir` with no record among `records`, warnings).

    Only `lmbench run` directories plan repeats of configurations; a tune's or calibration's gives none. The rows
    are records in form (status NOT_RECORDED, no metrics) with the run's `run` key, as frame.load gives records."""
    try:
        meta = results.read_meta(run_dir)
    except ResultsError as err:
        return [], [f"{err}: which planned configurations have no record cannot be told"]
    repeats = meta.get("repeats") if meta else None
    if not meta or meta.get("command", "run") != "run" or not isinstance(repeats, int) or repeats < 1:
        return [], []
    done = {(r["config_key"], r["repeat"]) for r in records}
    reason = (f"planned, with no readable record: the run stopped before it or is still going "
              f"({_resume(meta, run_dir)} measures it), or its line was left out when read")
    rows = []
    for key, config in _planned(meta, records):
        rows.extend({"config_key": key, "repeat": repeat, "config": results.full_config(config),
                     "status": NOT_RECORDED, "reason": reason, "metrics": None, "losses": None,
                     "step_times_s": None, "env": None, "warnings": [], "suite": meta.get("suite"),
                     "run": str(run_dir)}
                    for repeat in range(repeats) if (key, repeat) not in done)
    return rows, []


def _resume(meta: dict[str, Any], run_dir: Path) -> str:
    """The command that goes on with the run: its own plan's, where run.json holds one this lmbench reads."""
    from lmbench.plan.runplan import RunPlan

    try:
        return RunPlan.from_json(meta["plan"]).resume_command(run_dir)
    except (KeyError, TypeError, ValueError, LmbenchError):
        return f"lmbench run --suite SUITE --out {run_dir} --resume, with the run's own options,"


def summary_line(rows: list[dict[str, Any]]) -> str | None:
    """The report's header line for the rows `unrecorded` found."""
    if not rows:
        return None
    runs = sorted({row["run"] for row in rows})
    configs = len({(row["run"], row["config_key"]) for row in rows})
    return (f"Not recorded: {len(rows)} planned (configuration, repeat) pair(s) of {configs} configuration(s) in "
            f"{', '.join(runs)}: the run stopped before them, is still going, or their lines were left out when read; "
            f"the tables show their status as `{NOT_RECORDED}`")

"""The parent side of a run: one fresh worker process per configuration and repeat, with a timeout.

Records are appended to RUN_DIR/results.jsonl as each job ends, so an interrupted run keeps
everything it finished and `--resume` picks up the rest.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmbench import results
from lmbench.config import Config
from lmbench.environment import Platform
from lmbench.errors import ResultsError
from lmbench.feasibility import resolve, skip_reason
from lmbench.launcher import Launch, worker_command
from lmbench.parity import is_reference, reference_config
from lmbench.parity import verdict as parity_verdict
from lmbench.stats import percentile
from lmbench.suite import Planned
from lmbench.worker import OOM_MARKERS

#: Seconds a worker gets to exit after SIGTERM before it is killed.
KILL_GRACE_S = 5.0


@dataclass(frozen=True)
class Job:
    """One configuration and repeat to run (or to record as skipped)."""

    config: Config
    repeat: int
    skip: str | None = None

    @property
    def name(self) -> str:
        return f"{self.config.key}-r{self.repeat}"


#: Within a repeat, single-device configurations run first, so a ddp/fsdp record can be compared
#: with its single-device counterpart (scaling efficiency) as soon as it is written.
_PARALLEL_ORDER = {"none": 0, "dp": 1, "ddp": 2, "fsdp": 3}


def plan(planned: list[Planned], platform: Platform, *, repeats: int, done: set[tuple[str, int]] = frozenset(),
         parity: bool = False) -> list[Job]:
    """Jobs in run order: repeat-major, so repeats of a config are spread over the run's duration."""
    jobs = []
    # With parity, references (fp32, eager, no checkpointing) run before the configurations judged by them.
    ordered = sorted(planned, key=lambda row: (_PARALLEL_ORDER[row.config.parallel],
                                               parity and not is_reference(row.config)))
    for repeat in range(repeats):
        for row in ordered:
            config = resolve(row.config, platform)
            if (config.key, repeat) in done:
                continue
            jobs.append(Job(config, repeat, row.conflict or skip_reason(config, platform)))
    return jobs


class RunDirectory:
    """RUN_DIR: results.jsonl, run.json, logs/, telemetry/ and work/ (job and result files of live workers)."""

    def __init__(self, path: Path, *, resume: bool) -> None:
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / "logs").mkdir(exist_ok=True)
            (self.path / "work").mkdir(exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as err:
            raise ResultsError(f"cannot write to --out {str(self.path)!r}: {err.strerror or err}") from None
        self.results_path = self.path / results.RESULTS_FILE
        if self.results_path.exists() and self.results_path.stat().st_size and not resume:
            raise ResultsError(f"--out {str(self.path)!r} already holds results; pass --resume to continue "
                               "that run, or choose another directory")

    def recorded(self) -> results.Loaded:
        """Records already in the run (empty for a new one), with warnings about unreadable lines."""
        return results.read(self.results_path) if self.results_path.exists() else results.Loaded()

    def write_meta(self, meta: dict[str, Any]) -> None:
        results.write_json(self.path / "run.json", meta)

    def log_path(self, job: Job) -> Path:
        return self.path / "logs" / f"{job.name}.log"

    def timeline_path(self, job: Job) -> Path:
        """Telemetry samples of the job's window (CSV), when NVML was there to take them."""
        return self.path / "telemetry" / f"{job.name}.csv"


def run_worker(job: Job, run_dir: RunDirectory, launch: Launch = Launch()
               ) -> tuple[str, str | None, dict[str, Any] | None]:
    """Run one job in a fresh interpreter (torchrun for ddp/fsdp); returns (status, reason, payload)."""
    job_path = run_dir.path / "work" / f"{job.name}.job.json"
    result_path = run_dir.path / "work" / f"{job.name}.result.json"
    result_path.unlink(missing_ok=True)
    results.write_json(job_path, {"config": job.config.to_dict(), "repeat": job.repeat,
                                  "timeline_path": str(run_dir.timeline_path(job))})
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    log_path = run_dir.log_path(job)
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(worker_command(job.config, job_path, result_path, launch), stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=job.config.timeout_s)
        except subprocess.TimeoutExpired:
            _stop(proc)
            return "timeout", f"no result within timeout_s={job.config.timeout_s:g} (worker killed)", None
        except BaseException:
            _stop(proc)
            raise
    job_path.unlink(missing_ok=True)
    if result_path.exists():
        payload = json.loads(result_path.read_text())
        result_path.unlink()
        return payload["status"], payload["reason"], payload
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    log_text = log_path.read_text(errors="replace")
    # A rank other than 0 that ran out of memory leaves no result, only its traceback in the log.
    status = "oom" if any(marker in log_text for marker in OOM_MARKERS) else "error"
    return status, f"worker {how} without a result; last log line: {_last_line(log_path)}", None


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the worker's whole process group, SIGKILL it if it lingers."""
    for sig, wait_s in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(empty log)"


def single_device_key(config: Config) -> str:
    """Key of the same configuration on one device, the baseline of scaling efficiency."""
    return config.replace(parallel="none", nproc=1).without_ddp_options().key


def scaling_efficiency(record: dict[str, Any], baseline: list[float]) -> float | None:
    """Global tokens/s over (devices x single-device tokens/s); 1.0 is perfect linear scaling."""
    metrics = record["metrics"] or {}
    if record["status"] != "ok" or not baseline or not metrics.get("devices"):
        return None
    reference = percentile(baseline, 50)
    return metrics["tokens_per_s"] / (metrics["devices"] * reference)


def add_parity(record: dict[str, Any], config: Config, reference_losses: dict[str, dict[int, list]]) -> None:
    """Parity fields in the record's metrics: against the reference's same repeat, else its first."""
    if record["metrics"] is None:
        return
    if is_reference(config):
        record["metrics"].update({"parity": "reference", "parity_max_rel_dev": 0.0, "parity_tolerance": None})
        return
    runs = reference_losses.get(reference_config(config).key, {})
    reference = runs.get(record["repeat"]) or next(iter(runs.values()), None)
    if reference is None:
        record["metrics"].update({"parity": None, "parity_max_rel_dev": None, "parity_tolerance": None})
        return
    record["metrics"].update(parity_verdict(reference, record["losses"] or [], precision=config.precision))


def execute(jobs: list[Job], run_dir: RunDirectory, *, suite: str, launch: Launch = Launch(),
            previous: list[dict[str, Any]] = (), parity: bool = False) -> Iterator[tuple[Job, dict[str, Any]]]:
    """Run jobs in order, appending each record as it ends; yields (job, record) for progress display.

    On nodes other than node 0 (multi-node runs) only distributed jobs run and nothing is recorded.
    `previous` holds records already in the run (resume), for scaling efficiency and parity.
    """
    throughput: dict[str, list[float]] = {}
    reference_losses: dict[str, dict[int, list]] = {}
    for record in previous:
        if record["status"] == "ok" and record.get("metrics"):
            throughput.setdefault(record["config_key"], []).append(record["metrics"]["tokens_per_s"])
            reference_losses.setdefault(record["config_key"], {})[record["repeat"]] = record["losses"]
    for job in jobs:
        if not launch.runs(job.config):
            continue
        if job.skip:
            status, reason, payload = "skipped", job.skip, None
        else:
            status, reason, payload = run_worker(job, run_dir, launch)
        record = results.make_record(suite=suite, config=job.config.to_dict(), config_key=job.config.key,
                                     repeat=job.repeat, status=status, reason=reason, payload=payload)
        if status == "ok":
            if job.config.parallel in ("ddp", "fsdp", "dp"):
                efficiency = scaling_efficiency(record, throughput.get(single_device_key(job.config), []))
                record["metrics"]["scaling_efficiency"] = efficiency
            throughput.setdefault(job.config.key, []).append(record["metrics"]["tokens_per_s"])
            reference_losses.setdefault(job.config.key, {})[job.repeat] = record["losses"]
        if parity and status in ("ok", "diverged"):
            add_parity(record, job.config, reference_losses)
        if launch.records:
            results.append(run_dir.path, record)
        yield job, record

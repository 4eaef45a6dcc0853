"""The parent side of a run: one fresh worker process per configuration and repeat, with a timeout.

Records are appended to RUN_DIR/results.jsonl as each job ends, so an interrupted run keeps
everything it finished and `--resume` picks up the rest: the job that was running when a signal
came, or whose result could not be saved, has no record and runs again.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from lmbench.analyze import results
from lmbench.errors import StorageError
from lmbench.measure import environment, hostmem
from lmbench.measure.environment import Platform
from lmbench.measure.hostload import standing
from lmbench.measure.stats import percentile
from lmbench.plan.config import Config, corpus_identity
from lmbench.plan.feasibility import resolve, skip_reason
from lmbench.plan.layout import single_device
from lmbench.plan.parity import is_reference, reference_config, reference_depth
from lmbench.plan.parity import verdict as parity_verdict
from lmbench.plan.suite import Planned
from lmbench.run import launcher, stacks
from lmbench.run.interrupts import Hold, Interrupted, holding
from lmbench.run.launcher import Launch, worker_command
from lmbench.run.rundir import RunDirectory
from lmbench.run.worker import OOM_MARKERS

#: Seconds a worker gets to exit after SIGTERM before it is killed.
KILL_GRACE_S = 5.0
#: How much of a job's log's end the parent reads for why it failed.
LOG_END_BYTES = 4 * 2**20
#: Seconds a worker gets to exit after SIGKILL before it is left behind (stuck in the kernel).
STUCK_S = 60.0
#: Seconds after its stacks' moment past which a worker's crash is its own, not the dump's (which takes milliseconds).
DUMP_S = 1.0
#: Room a worker's result needs (a few KiB; long loss lists more), to tell a full disk from a crash.
RESULT_ROOM_BYTES = 64 * 1024

__all__ = ["Job", "RunDirectory", "execute", "plan", "resumed", "run_worker"]


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
_PARALLEL_ORDER = {"none": 0, "dp": 1, "ddp": 2, "fsdp": 3, "tp": 4, "pp": 5, "fsdp+tp": 6, "fsdp+pp": 7}


def resumed(records: list[dict[str, Any]]) -> tuple[set[tuple[str, int]], dict[tuple[str, int], str | None]]:
    """(done, skipped) of a resumed run's records, by (config_key, repeat): a record that ran (ok or failed) is done;
    a `skipped` one (and its reason) is not, as the skip may have been this machine's (a package missing, no CUDA
    when it ran): `plan` judges it again."""
    done = {(r["config_key"], r["repeat"]) for r in records if r["status"] != "skipped"}
    skipped = {(r["config_key"], r["repeat"]): r.get("reason") for r in records if r["status"] == "skipped"}
    return done, skipped


def plan(planned: list[Planned], platform: Platform, *, repeats: int, done: set[tuple[str, int]] = frozenset(),
         skipped: dict[tuple[str, int], str | None] | None = None, parity: bool = False, nnodes: int = 1
         ) -> list[Job]:
    """Jobs in run order: repeat-major, so repeats of a config are spread over the run's duration; layouts are
    judged on `nnodes` nodes (a torchrun job's world is nproc x nnodes).

    On resume, `done` rows are left out, and a row recorded as `skipped` (`skipped`: its reason) is judged again:
    one that runs now, or is skipped for another reason, is a job whose record supersedes the old skip (the results
    reader keeps the later record of a skipped pair, lmbench.analyze.results.read); one skipped for the same reason
    is left out, as a second record would say nothing new."""
    skipped = skipped or {}
    jobs = []
    # With parity, references run before the configurations judged by them: fp32 eager first, then
    # everything judged against it (FP8's amp-bf16 reference among them), then FP8.
    ordered = sorted(planned, key=lambda row: (_PARALLEL_ORDER[row.config.parallel],
                                               reference_depth(row.config) if parity else 0))
    for repeat in range(repeats):
        seen: set[str] = set()
        for row in ordered:
            config = resolve(row.config, platform)
            # Rows that differ only in another mode's options (pp_schedule of a ddp row) are one configuration.
            if config.key in seen or (config.key, repeat) in done:
                continue
            seen.add(config.key)
            skip = row.conflict or skip_reason(config, platform, nnodes=nnodes)
            if skip is not None and (config.key, repeat) in skipped and skipped[config.key, repeat] == skip:
                continue  # still skipped, for the same reason: the record it has stands
            jobs.append(Job(config, repeat, skip))
    return jobs


def result_file(run_dir: RunDirectory, job: Job) -> Path:
    """Where the job's worker writes its result (rank 0; the other ranks' failures beside it)."""
    return run_dir.path / "work" / f"{job.name}.result.json"


def run_worker(job: Job, run_dir: RunDirectory, launch: Launch = Launch(), hold: Hold | None = None, *,
               keep_result: bool = False) -> tuple[str, str | None, dict[str, Any] | None]:
    """Run one job in a fresh interpreter (torchrun for ddp/fsdp); returns (status, reason, payload).

    With `keep_result` the worker's result stays in work/ (result_file) for the caller to remove once its record is
    saved: a measurement whose record could not be built or saved is recorded on resume, not lost.

    The worker gets its own session (process group), which a stop signals; what it started elsewhere (torchrun's
    ranks, each in a session of its own, and their children) is killed once the job is over (launcher.sweep). Any
    exception here (an `Interrupted` signal included) stops it before propagating. A job whose result could not be
    saved raises StorageError: that is the disk's failure, not the job's.
    """
    job_path = run_dir.path / "work" / f"{job.name}.job.json"
    result_path = result_file(run_dir, job)
    finished = _read_result(result_path)
    if finished is not None:
        # A worker's result is its last act, written whole (results.write_json): one left here finished a job whose
        # parent was killed before recording it (SIGKILL, the OOM killer, a lost node). Measured once, kept once.
        others = _rank_failures(result_path)  # read, and removed, whatever the result says
        if not keep_result:
            result_path.unlink()
        stacks.clear(result_path)
        return (*_first_to_fail(finished["status"], finished["reason"], finished, others), finished)
    result_path.unlink(missing_ok=True)
    _rank_failures(result_path)  # none left from an earlier try of this job
    stacks.clear(result_path)
    # The deadline: each rank dumps its stacks just before it (lmbench.run.stacks), which the parent reaches later.
    deadline = time.time() + job.config.timeout_s
    run_dir.write_json(job_path, {"config": job.config.to_dict(), "repeat": job.repeat,
                                  "timeline_path": str(run_dir.timeline_path(job.name)), "deadline": deadline})
    # LMBENCH_PARENT_PID: the worker exits when this process is gone, even if it is SIGKILLed.
    # PYTHONSAFEPATH (Python 3.11+, as `python -P`) keeps the current directory off the worker's sys.path, so a
    # folder named lmbench there (a clone) is not imported in place of the installed package; PYTHONNOUSERSITE
    # keeps ~/.local's packages out. Both reach torchrun's ranks too.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
           "LMBENCH_PARENT_PID": str(os.getpid()), "PYTHONSAFEPATH": "1", "PYTHONNOUSERSITE": "1",
           environment.STARTED_WITH: ",".join(environment.variables())}
    log_path = run_dir.log_path(job.name)
    oom_kills_before = hostmem.oom_kills()
    with results.saving(log_path):
        log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed by the block below
    launcher.adopt_orphans()  # a rank orphaned by torchrun's end stays below this process, for the sweep
    before = launcher.descendants()
    with log:
        proc = subprocess.Popen(worker_command(job.config, job_path, result_path, launch), stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        teardown = None  # how a worker that wrote its result then ended, where that was not as it should
        try:
            with hold.released() if hold is not None else contextlib.nullcontext():
                code = proc.wait(timeout=job.config.timeout_s)
        except Interrupted as stop:
            # A result already written is a finished job (its last act): recorded before the stop goes on.
            finished = hold is not None and result_path.exists()
            _stop(proc, before, log)
            if not finished:
                raise
            hold.pending = stop
            code = 0  # stopped by lmbench, not failed
        except subprocess.TimeoutExpired:
            # Only a result written before the stop is the job's: torchrun passes SIGTERM on to the ranks, and rank 0
            # wrote the failure of its collective once rank 1 had ended of it, recorded as an `error` (a reviewer).
            written, stopped_at = result_path.exists(), time.time()
            _stop(proc, before, log)
            if not written:
                result_path.unlink(missing_ok=True)
                return _timed_out(job, result_path, log, stopped_at)
            # The worker wrote its result (its last act) and hung on the way out (a process group's or CUDA's
            # teardown): the measurement stands, as under an interrupt, and the record says so.
            code, teardown = 0, (f"the worker wrote its result, then hung on the way out until timeout_s="
                                 f"{job.config.timeout_s:g} (its log has its end)")
        except BaseException:
            _stop(proc, before, log)
            raise
        finally:
            job_path.unlink(missing_ok=True)
            dumps = stacks.collect(result_path)
            stacks.clear(result_path)
        _reap(proc, before, log)
    left = result_path.exists()
    payload = _read_result(result_path) if left else None
    if left and payload is None:
        kept = log_path.with_name(f"{log_path.stem}.unreadable-result.json")
        result_path.replace(kept)  # the evidence, beside the log
    if payload is None or not keep_result:
        result_path.unlink(missing_ok=True)
    others = _rank_failures(result_path)
    if payload is not None:
        status, reason = payload["status"], payload["reason"]
        # A failed result's non-zero exit is by design (rank 0 ends torchrun's other ranks that way).
        if code != 0 and status == "ok":
            late = min(others, key=lambda failure: failure["failed_at"]) if others else None
            teardown = f"the worker wrote its result, then {_ended(code)} " + (
                f"(rank {late['rank']} failed after it: {late['reason']})" if late else "(its log has its end)")
        if teardown:
            _append_stacks(log_path, dumps)
            payload = {**payload, "warnings": [*(payload.get("warnings") or []), teardown]}
    elif left:
        status, reason = "error", (f"the worker's result file was unreadable ({_ended(code)}; kept as {kept.name}); "
                                   f"{_last_word(_log_end(log_path))}")
    elif -code in CRASHES and (crashed_at := _crashed_at(log_path)) >= deadline - stacks.margin_s(
            job.config.timeout_s) and not (dumps and crashed_at > deadline - stacks.margin_s(job.config.timeout_s)
                                           + DUMP_S):
        # Killed by a signal after its stacks' moment, with no dump taken well before: faulthandler's dump reads
        # every thread's frames without the GIL, and a worker busy importing (a 0.5 s timeout_s) died of it
        # (SIGSEGV) in CI. Its time was up all the same: a timeout, not an error of the configuration's.
        _append_stacks(log_path, dumps)
        status, reason = "timeout", (f"no result within timeout_s={job.config.timeout_s:g}: the worker was killed "
                                     f"by {signal_name(-code)} once its stacks were due, "
                                     f"{max(0.0, deadline - time.time()):.1f} s before it (the log has its end)")
    else:
        _append_stacks(log_path, dumps)
        log_text = _log_end(log_path)
        # A rank other than 0 that ran out of memory leaves no result, only its traceback in the log.
        status = "oom" if out_of_memory(log_text) else "error"
        reason = f"worker {_ended(code)} without a result; {_last_word(log_text)}"
    status, reason = _first_to_fail(status, reason, payload, others)
    if status == "error":
        said = {failure["rank"] for failure in others} | ({0} if payload is not None else set())
        reason = killed_first(reason, _log_end(log_path), said)
    if status == "error":
        status, reason = _host_oom(code, reason, oom_kills_before)
    # A worker that failed without a result, or of a write, may have failed of the storage: a probe tells. One that
    # failed of its own and said so (a bad corpus, a kernel error) is a record, whatever room is left.
    if status == "error" and (payload is None or _of_a_write(reason)):
        no_room = _no_room_for_a_result(run_dir, result_path)
        if no_room is not None:
            result_path.unlink(missing_ok=True)  # unsaved, not failed: resume runs the job again
            raise no_room
    return status, reason, payload


#: torchrun's summary of a failed job: each failed rank and its exit code (`exitcode  : -9`: killed by a signal).
_FAILED_RANK = re.compile(r"^\s*rank\s*:\s*(\d+) \(local_rank: \d+\)\s*\n\s*exitcode\s*:\s*(-?\d+)", re.MULTILINE)


def killed_first(reason: str | None, log_text: str, said: Collection[int] = ()) -> str | None:
    """`reason` with the rank that died without a word put before it, when torchrun's summary in the job's log says
    so; `said`: the ranks that left a record of their own failure (rank 0's result, the others' failure files).

    A rank killed from outside (SIGKILL: the host's out-of-memory killer, most often) leaves no failure file, nor
    does one that exits below Python's exceptions (native code's exit(), os._exit): the record named rank 0's
    symptom instead, a connection reset in its next collective (reviews 2026-11-27, 2026-11-28). torchrun's "first
    observed failure" may be that symptom's rank, so every failed rank of its summary is read, a signal before an
    exit code; SIGTERM is torchrun's own stop of the ranks left once one failed, and says nothing of the cause."""
    killed, exited = {}, {}
    for rank, code in _FAILED_RANK.findall(log_text[log_text.rfind("ChildFailedError"):]):
        rank, code = int(rank), int(code)
        if code < 0 and -code != signal.SIGTERM:
            killed.setdefault(rank, -code)
        elif code > 0 and rank not in said:
            exited.setdefault(rank, code)
    if not (killed or exited) or any(f"rank {rank} " in f"{reason or ''} " for rank in {**killed, **exited}):
        return reason
    if not killed:
        rank, code = min(exited.items())
        return (f"rank {rank} exited with code {code} and left no failure record (its log may say why; torchrun's "
                f"summary); then: {reason}")
    rank, number = min(killed.items())
    name = signal_name(number)
    outside = ("; a SIGKILL comes from outside the job, most often from the host's out-of-memory killer"
               if number == signal.SIGKILL else "")
    return f"rank {rank} was killed by {name} (torchrun's summary{outside}); then: {reason}"


def _host_oom(code: int, reason: str | None, kills_before: int | None) -> tuple[str, str | None]:
    """("oom", why) for a worker (or a torchrun rank) SIGKILLed while the kernel's out-of-memory killer ended
    processes: the host ran out of memory, as the configuration would on any host of this size (gpt2-124m at batch
    8 x 1024 in fp32 on a 23 GiB CPU host took 24 GiB: three such rows read `error`, `killed by SIGKILL`); else
    ("error", reason) unchanged. The kill counter is host-wide: another process's kill at the same time would read
    alike, which the reason says."""
    kills_after = hostmem.oom_kills()
    killed = code == -signal.SIGKILL or "killed by SIGKILL" in (reason or "")
    if not killed or kills_before is None or kills_after is None or kills_after <= kills_before:
        return "error", reason
    return "oom", (f"the host ran out of memory: the kernel's out-of-memory killer ended {kills_after - kills_before} "
                   f"process(es) while the job ran (/proc/vmstat oom_kill; the kernel log names them), and the job "
                   f"was SIGKILLed; {reason}")


#: Signals of a process that crashed (not one stopped from outside, as the OOM killer's SIGKILL).
CRASHES = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL})


def _timed_out(job: Job, result_path: Path, log: TextIO, stopped_at: float) -> tuple[str, str, None]:
    """The record of a job stopped at timeout_s (at `stopped_at`) without a result: the rank that failed first, if one
    did before the stop (the others waited for it in a collective), else a timeout naming where each rank was
    (lmbench.run.stacks). A failure after the stop is the stop's doing, not the job's."""
    dumps = stacks.collect(result_path)
    _append_stacks(log, dumps)
    cause = first_failure([failure for failure in _rank_failures(result_path) if failure["failed_at"] < stopped_at],
                          None)
    if cause is not None:
        return cause["status"], (f"rank {cause['rank']} failed first: {cause['reason']}; the others then waited "
                                 f"until timeout_s={job.config.timeout_s:g}"), None
    place = stacks.where(dumps, timeout_s=job.config.timeout_s)
    return "timeout", (f"no result within timeout_s={job.config.timeout_s:g} (worker killed)"
                       + (f"; {place} (stacks in the log)" if place else "")), None


def _append_stacks(log: TextIO | Path, dumps: dict[int, str]) -> None:
    """Each rank's stacks at the end of the job's log, which the stopped worker no longer writes."""
    if not dumps:
        return
    if isinstance(log, Path):
        with results.saving(log), open(log, "a", encoding="utf-8") as file:
            _append_stacks(file, dumps)
        return
    log.seek(0, os.SEEK_END)
    for rank, text in dumps.items():
        log.write(f"\n--- lmbench: rank {rank}'s Python stacks just before timeout_s ---\n{text}")
    log.flush()


def _of_a_write(reason: str | None) -> bool:
    """Whether a worker's failure reads as a write the storage refused (ENOSPC, EFBIG, EDQUOT, EROFS...)."""
    return any(os.strerror(code) in (reason or "") for code in results.CANNOT_SAVE)


def _rank_failures(result_path: Path) -> list[dict[str, Any]]:
    """The failures ranks other than 0 left beside the result (worker.rank_failure_path), removed once read."""
    found = []
    for path in sorted(result_path.parent.glob(f"{result_path.name}.rank*")):
        failure = _read_result(path)
        path.unlink(missing_ok=True)
        if failure is not None and isinstance(failure.get("failed_at"), (int, float)):
            found.append(failure)
    return found


def _first_to_fail(status: str, reason: str | None, rank0: dict[str, Any] | None, others: list[dict[str, Any]]
                   ) -> tuple[str, str | None]:
    """The job's (status, reason): rank 0's, unless another rank failed before it (first_failure)."""
    cause = first_failure(others, rank0) if status != "ok" else None
    if cause is None:
        return status, reason
    return cause["status"], f"rank {cause['rank']} failed first: {cause['reason']}"


def first_failure(others: list[dict[str, Any]], rank0: dict[str, Any] | None) -> dict[str, Any] | None:
    """The failure of another rank to record in place of rank 0's: the earliest of theirs, when it came before
    rank 0's own (a rank that ran out of memory leaves rank 0 a connection reset in its next collective) or
    rank 0 left none (torchrun stopped it). None: rank 0's failure stands."""
    if not others:
        return None
    first = min(others, key=lambda failure: failure["failed_at"])
    if rank0 is None:
        return first
    mine = rank0.get("failed_at")  # none: rank 0 ended the job itself (diverged), not of an exception
    return first if isinstance(mine, (int, float)) and first["failed_at"] < mine else None


def _read_result(path: Path) -> dict[str, Any] | None:
    """A worker's result, or None where the file is not one: a status, a reason, and an ok one's metrics with its
    throughput (what every reader of a record takes for granted; a payload without them ended the suite, exit 3)."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (isinstance(payload, dict) and payload.get("status") in results.STATUSES
            and isinstance(payload.get("reason", 0), (str, type(None)))):
        return None
    metrics = payload.get("metrics")
    if payload["status"] == "ok" and not (isinstance(metrics, dict) and isinstance(metrics.get("tokens_per_s"),
                                                                                     (int, float))):
        return None
    return payload


def _no_room_for_a_result(run_dir: RunDirectory, result_path: Path) -> StorageError | None:
    """When a worker failed, whether the storage is why: a result-sized file that cannot be written.

    A worker on a full disk (or past a file-size limit) fails at whatever it writes first (its result,
    a telemetry file, its log), often before its log says anything; its job is unsaved, not failed,
    and --resume runs it again.
    """
    probe = run_dir.path / "work" / ".room-probe"
    try:
        with open(probe, "wb") as f:
            f.write(bytes(RESULT_ROOM_BYTES))
    except OSError as err:
        if err.errno in results.CANNOT_SAVE:
            return results.storage_error(err, result_path)
        raise
    finally:
        probe.unlink(missing_ok=True)
    return None


def _stop(proc: subprocess.Popen, before: Collection[launcher.Process], log: TextIO) -> None:
    """SIGTERM the worker's whole process group, SIGKILL it if it lingers; then kill what is left of the job (_reap): a
    child that ignored SIGTERM outlived a timed-out worker into the next configuration's measurement (a reviewer). A
    worker that SIGKILL does not end in STUCK_S (stuck in the kernel: a driver hang) is left, rather than hang the
    suite."""
    for sig, wait_s in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, STUCK_S)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    _reap(proc, before, log)


def _reap(proc: subprocess.Popen, before: Collection[launcher.Process], log: TextIO) -> None:
    """Kill what is left of the job once the worker has exited, so that it does not hold the GPU or a core into the
    next configuration's measurement: the worker's session (a compile worker a single-process worker started), then
    every process below this one that was not there before the job (`before`; launcher.sweep). torchrun starts each
    rank in a session of its own: a rank that ignored torchrun's SIGTERM, or a rank's child, outlived a timed-out
    ddp job with parent 1 (a reviewer); they are this process's now (launcher.adopt_orphans). The job's log names
    what was killed."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    killed = launcher.sweep(before)
    if killed:
        with contextlib.suppress(OSError):  # a note: a full disk must not end the suite here
            log.seek(0, os.SEEK_END)
            log.write(f"\n--- lmbench: killed {len(killed)} process(es) the job left running: pids "
                      f"{', '.join(map(str, sorted(killed)))} ---\n")
            log.flush()


def _log_end(path: Path) -> str:
    """The last LOG_END_BYTES of a job's log, where its failure and torchrun's summary are: a chatty worker's log
    of gigabytes was read whole, several times, by the parent that must outlive it."""
    with open(path, "rb") as file:
        file.seek(max(0, file.seek(0, os.SEEK_END) - LOG_END_BYTES))
        return file.read().decode(errors="replace")


#: A line that says why a process failed: an exception's (`torch.OutOfMemoryError: ...`, `triton.runtime.errors.
#: OutOfResources: ...`, torch's `[rank1]: ` before it) or the interpreter's own on a fatal signal (faulthandler:
#: `Fatal Python error: Segmentation fault`).
_WHY = re.compile(r"^(?:\[rank\d+\]:\s*)?(?:[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)\b"
                  r"|(?:[a-z_]\w*\.)+[A-Z]\w*:|Fatal Python error:)")
#: torchrun's own last word, after every rank's: it says that a rank failed, never why.
_TORCHRUN_SUMMARY = "ChildFailedError"
#: Words of a line that reports a failure outside Python's exceptions: C++'s `terminate called after throwing ...` and
#: its `what():`, c10's `[E...] ... CUDA error: out of memory`, NCCL's `Cuda failure 'out of memory'`.
_FAILURE_WORDS = ("error", "fail", "what():", "terminate called", "abort")


def _why_lines(log_text: str) -> list[str]:
    return [line.strip() for line in log_text.splitlines()
            if _WHY.match(line.strip()) and _TORCHRUN_SUMMARY not in line]


def out_of_memory(log_text: str) -> bool:
    """Whether the log's failure was memory's: a marker in a line that reports a failure (an exception's, C++'s,
    c10's or NCCL's), not in any line (a worker that printed "out of memory pressure hint" and then crashed read as
    oom, which tune takes for a memory limit; a reviewer)."""
    def reports(line: str) -> bool:
        return bool(_WHY.match(line.strip())) or any(word in line.lower() for word in _FAILURE_WORDS)

    return any(marker in line for line in log_text.splitlines() if reports(line) for marker in OOM_MARKERS)


def _crashed_at(log_path: Path) -> float:
    """When a single worker died of a fatal signal: when faulthandler wrote its `Fatal Python error` (the log's last
    write), else now. The parent learns of the death later where the core dump is piped to a handler (systemd-
    coredump, apport), seconds for a CUDA process."""
    try:
        if "Fatal Python error:" in _log_end(log_path):
            return log_path.stat().st_mtime
    except OSError:
        pass
    return time.time()


def _last_word(log_text: str) -> str:
    """What the log last says of why: its last exception or fatal-error line, else its last line (a library's
    warning at import ended most logs of a worker that crashed without a word)."""
    why = _why_lines(log_text)
    if why:
        return f"last error in the log: {why[-1][:300]}"
    lines = [line for line in log_text.splitlines() if line.strip()]
    return f"last log line: {lines[-1][:300]}" if lines else "the log is empty"


def _ended(code: int) -> str:
    return f"was killed by {signal_name(-code)}" if code < 0 else f"exited with code {code}"


def signal_name(number: int) -> str:
    """SIGSEGV, or `signal 40` for one Python has no name for (a real-time signal: its name lookup ended the suite,
    exit 3; a reviewer)."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def single_device_key(config: Config, *, nnodes: int = 1) -> str:
    """Key of the same configuration on one device, the baseline of scaling efficiency (lmbench.plan.layout)."""
    return single_device(config, nnodes=nnodes).key


def missing_baselines(jobs: list[Job], *, nnodes: int = 1) -> str | None:
    """A warning when GPU jobs laid out over several devices have no single-device baseline in the plan
    (single_device): their scaling_efficiency would stay empty without a word. The shipped model-parallel suite's
    pp, fsdp+tp and fsdp+pp rows train a global batch its one parallel=none size does not (review 2026-11-27)."""
    keys = {job.config.key for job in jobs}
    lacking: dict[str, Config] = {}
    for job in jobs:
        config = job.config
        if job.skip is None and config.parallel != "none" and config.device.startswith("cuda"):
            baseline = single_device(config, nnodes=nnodes)
            if baseline.key not in keys:
                lacking.setdefault(config.key, baseline)
    if not lacking:
        return None
    sizes = sorted({(b.model, b.batch_size) for b in lacking.values()})
    shown = ", ".join(f"{model} batch_size={batch}" for model, batch in sizes[:6]) + (" ..." if len(sizes) > 6 else "")
    return (f"{len(lacking)} configuration(s) laid out over several devices have no parallel=none row of their "
            f"baseline in this plan, so their scaling_efficiency stays empty; the baselines they need: {shown} "
            "(the same configuration on one device; docs/parallelism.md)")


def scaling_efficiency(record: dict[str, Any], baseline: list[dict[str, Any]]) -> dict[str, Any]:
    """Global tokens/s over (devices x single-device tokens/s), 1.0 being perfect linear scaling, with the
    baseline it used: the median of the single-device configuration's ok repeats recorded so far whose hosts
    were not busy with other work (all of them when every one was). None on a CPU: a CPU's processes share
    one host's cores (the single-device run uses all of them), so they are no independent devices."""
    metrics = record["metrics"] or {}
    none = {"scaling_efficiency": None, "scaling_baseline_tokens_per_s": None, "scaling_baseline_repeats": 0}
    on_cpu = (record.get("config") or {}).get("device") == "cpu"
    if record["status"] != "ok" or not baseline or not metrics.get("devices") or on_cpu:
        return none
    used = standing(baseline)
    reference = percentile([m["tokens_per_s"] for m in used], 50)
    return {"scaling_efficiency": metrics["tokens_per_s"] / (metrics["devices"] * reference),
            "scaling_baseline_tokens_per_s": reference, "scaling_baseline_repeats": len(used)}


def add_parity(record: dict[str, Any], config: Config, reference_losses: dict[str, dict[int, list]], *,
               nnodes: int = 1) -> None:
    """Parity fields in the record's metrics: against the reference's same repeat, else its first."""
    if record["metrics"] is None:
        return
    if is_reference(config):
        record["metrics"].update({"parity": "reference", "parity_max_rel_dev": 0.0, "parity_tolerance": None})
        return
    runs = reference_losses.get(reference_config(config, nnodes=nnodes).key, {})
    reference = runs.get(record["repeat"]) or next(iter(runs.values()), None)
    if reference is None:
        record["metrics"].update({"parity": None, "parity_max_rel_dev": None, "parity_tolerance": None})
        return
    record["metrics"].update(parity_verdict(reference, record["losses"] or [], precision=config.precision))


def add_corpus(record: dict[str, Any], data: str) -> None:
    """The corpus's identity in an ok record's metrics (corpus_identity), read once the job has ended. A corpus moved
    or deleted meanwhile is no failure of the job, whose measurement stands: its hash is unknown (null) and the
    record says why (the read's FileNotFoundError ended the suite, exit 3, and lost the measurement; a reviewer)."""
    try:
        record["metrics"].update(corpus_identity(data))
    except OSError as err:
        record["metrics"].update({"data_sha256": None, "data_bytes": None})
        record["warnings"].append(f"data={data!r} could not be read once the job had ended ({err.strerror or err}): "
                                  "its sha256 is unknown, so this record cannot show whether the corpus changed")


def execute(jobs: list[Job], run_dir: RunDirectory, *, suite: str, launch: Launch = Launch(),
            previous: list[dict[str, Any]] = (), parity: bool = False) -> Iterator[tuple[Job, dict[str, Any]]]:
    """Run jobs in order, appending each record as it ends; yields (job, record) for progress display.

    On nodes other than node 0 (multi-node runs) only distributed jobs run and nothing is recorded.
    `previous` holds records already in the run (resume), for scaling efficiency and parity.
    """
    throughput: dict[str, list[dict[str, Any]]] = {}
    """The ok repeats' metrics of each configuration so far: single-device baselines of scaling efficiency."""
    reference_losses: dict[str, dict[int, list]] = {}
    for record in previous:
        if record["status"] == "ok":
            throughput.setdefault(record["config_key"], []).append(record["metrics"])
            reference_losses.setdefault(record["config_key"], {})[record["repeat"]] = record.get("losses") or []
    for job in jobs:
        if not launch.runs(job.config):
            continue
        # A signal stops the wait for a worker at once; anywhere else it waits until this job's record is saved.
        with holding() as hold:
            if job.skip:
                status, reason, payload = "skipped", job.skip, None
            else:
                status, reason, payload = run_worker(job, run_dir, launch, hold, keep_result=launch.records)
            record = results.make_record(suite=suite, config=job.config.to_dict(), config_key=job.config.key,
                                         repeat=job.repeat, status=status, reason=reason, payload=payload)
            if status == "ok" and job.config.reads_file:
                add_corpus(record, job.config.data)
            if status == "ok":
                if job.config.parallel != "none":
                    baseline = throughput.get(single_device_key(job.config, nnodes=launch.nnodes), [])
                    record["metrics"].update(scaling_efficiency(record, baseline))
                throughput.setdefault(job.config.key, []).append(record["metrics"])
                reference_losses.setdefault(job.config.key, {})[job.repeat] = record["losses"]
            if parity and status in ("ok", "diverged"):
                add_parity(record, job.config, reference_losses, nnodes=launch.nnodes)
            if launch.records:
                run_dir.append(record)
                result_file(run_dir, job).unlink(missing_ok=True)  # only now: a record not saved is kept for resume
        yield job, record
        hold.raise_pending(after_a_record=True)

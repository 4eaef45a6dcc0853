"""The results file: one JSON record per configuration and repeat, appended as each one finishes.

Appends are whole lines or nothing: a line that could not be written completely is cut off again,
and a partial last line left by an older or killed writer is repaired before anything is appended
(completed when it holds a whole record, else moved aside to RESULTS.corrupt). Readers skip a line
that is not JSON or not shaped like a record, naming its line number, and go on.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import resource
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmbench import SCHEMA_VERSION
from lmbench.errors import ResultsError, StorageError

RESULTS_FILE = "results.jsonl"
#: The run's plan and provenance, beside its results (lmbench.run.rundir writes it).
META_FILE = "run.json"
CORRUPT_SUFFIX = ".corrupt"
STATUSES = ("ok", "oom", "diverged", "error", "timeout", "skipped")
#: Errors of the storage, not of lmbench or the measurement: the run stops and --resume re-runs what is unsaved.
CANNOT_SAVE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
                         errno.ENOTDIR, errno.EISDIR})
_SCALAR = (str, int, float, bool)
#: Metric names whose unit says they hold a number (or a list of numbers: one a rank, one a step): seconds, bytes,
#: watts, joules, percent, MHz, degrees, fractions, rates, FLOPs, cores, and counts (steps, losses, samples,
#: devices, a layout's degrees and sizes). Metric names are free, their units are not.
_NUMERIC_METRIC = re.compile(r"(_s|_bytes|_w|_j|_pct|_mhz|_c|_frac|_fraction|_cv|_per_s|tflops|_per_token|_cores"
                             r"|_steps|_losses|_samples|_degree|_size|^devices|^tokens_per_step)"
                             r"(_per_rank|_per_stage)?$|^[mh]fu")


def sanitize(value: Any) -> Any:
    """JSON has no NaN or Infinity: non-finite floats become null (metrics keep a count of them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [sanitize(v) for v in value]
    return value


def _as_null(name: str) -> None:
    """json's hook for NaN, Infinity and -Infinity, which are no JSON: null, as `sanitize` writes them."""
    return None


def storage_error(err: OSError, path: Path) -> StorageError:
    """One line naming the path, what the system said and the space left (and the file-size limit for EFBIG)."""
    where = Path(path)
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        space = f"{_size(shutil.disk_usage(where).free)} free there"
    except OSError:
        space = "free space unknown"
    if err.errno == errno.EFBIG:
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY:
            space += f", file-size limit {_size(limit)}"
    return StorageError(f"cannot save {str(path)!r}: {err.strerror or err} ({space})")


def _size(n: float) -> str:
    if n < 1024:
        return f"{int(n)} bytes"
    unit = max(u for u in range(1, 4) if n >= 1024**u or u == 1)
    return f"{n / 1024**unit:.1f} {('KiB', 'MiB', 'GiB')[unit - 1]}"


@contextmanager
def saving(path: Path) -> Iterator[None]:
    """Turn a storage failure (disk full, file too large, read-only...) while writing `path` into a StorageError."""
    try:
        yield
    except OSError as err:
        if err.errno not in CANNOT_SAVE:
            raise
        raise storage_error(err, path) from None


def writable_dir(path: Path, *, what: str = "--out") -> None:
    """Create `path` (and parents) and prove a file can be written there; a ResultsError naming `what` if not."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        _write_probe(path)
    except OSError as err:
        raise ResultsError(f"cannot write to {what} {str(path)!r}: {err.strerror or err}") from None


def _write_probe(folder: Path) -> None:
    """Write and remove an empty file in `folder` (an OSError if it takes none)."""
    probe = folder / f".write-test-{os.getpid()}"  # its own: two writers starting at once never share one
    probe.write_text("")
    probe.unlink(missing_ok=True)


def writable_file(path: Path, *, what: str) -> None:
    """Prove `path` can be written (its folder exists and takes a file, and a file already there may be replaced)
    before anything is measured, leaving nothing behind: an output file's folder is the user's to make, as
    `compare --junit` has it; a ResultsError naming `what` if not."""
    folder = Path(path).parent
    if not folder.is_dir():
        why = "is not a directory" if folder.exists() else "does not exist"
        raise ResultsError(f"cannot write {what} {str(path)!r}: its directory {str(folder)!r} {why}")
    if Path(path).is_dir():
        raise ResultsError(f"cannot write {what} {str(path)!r}: it is a directory")
    if Path(path).exists() and not os.access(path, os.W_OK):
        raise ResultsError(f"cannot write {what} {str(path)!r}: the file there is read-only")
    try:
        _write_probe(folder)
    except OSError as err:
        raise ResultsError(f"cannot write {what} {str(path)!r}: {err.strerror or err}") from None


def write_json(path: Path, payload: Any) -> None:
    """Write atomically (temporary file, then rename), so a reader never sees half a file."""
    write_atomic(path, json.dumps(sanitize(payload), default=str))


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write `data` (text as UTF-8) to a temporary file beside `path`, flushed to disk, then rename it into place:
    a write that fails (a full disk) leaves the file that was there, or none, never a torn one (a report.html cut
    off at the disk's last byte opened as a blank page)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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


def append(run_dir: Path, record: dict[str, Any]) -> str | None:
    """Append one record to RUN_DIR/results.jsonl, fsynced; returns a note when a partial tail was repaired first."""
    return append_line(Path(run_dir) / RESULTS_FILE, record)


def append_line(path: Path, payload: Any) -> str | None:
    """Append one JSON line, whole or not at all, and flush it to disk before returning.

    A partial tail is repaired first (see `repair`, whose note is returned). If the line cannot be
    written completely (disk full, file-size limit) the file is cut back to where it was and the
    OSError propagates: the record is unsaved, never half saved.
    """
    data = (json.dumps(sanitize(payload), default=str) + "\n").encode()
    note = repair(path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        written = 0
        try:
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
        except BaseException:
            if written < len(data):
                os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)
    return note


def repair(path: Path) -> str | None:
    """Make the file end with a whole line; returns a note naming what was done, or None when nothing was.

    A last line without its newline is an append cut short (killed writer, full disk). When it still
    parses as a JSON object it only lacks the newline (a cut line never does: its closing brace is
    missing); otherwise its bytes are moved to PATH.corrupt
    (appended, so earlier repairs are kept) and the file is cut back to the end of the line before.
    """
    path = Path(path)
    try:
        f = open(path, "r+b")
    except FileNotFoundError:
        return None
    with f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return None
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return None
        offset = _line_start(f, size)
        f.seek(offset)
        tail = f.read()
        if isinstance(_loads(tail), dict):
            f.seek(size)
            f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
            return f"{path}: the last line had no newline (byte offset {offset}); completed it"
        corrupt = path.with_name(path.name + CORRUPT_SUFFIX)
        with open(corrupt, "ab") as aside:
            aside.write(tail + b"\n")
            aside.flush()
            os.fsync(aside.fileno())
        f.truncate(offset)
        f.flush()
        os.fsync(f.fileno())
    return f"{path}: partial last line ({len(tail)} bytes at byte offset {offset}) moved to {corrupt}"


def _line_start(f: Any, size: int) -> int:
    """Byte offset just past the last newline before `size` (0 when there is none)."""
    end = size
    while end > 0:
        start = max(0, end - 65536)
        f.seek(start)
        found = f.read(end - start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        end = start
    return 0


def _loads(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def shape_problem(record: Any) -> str | None:
    """What makes `record` unusable as a results line, or None when it has a record's shape.

    Required: `config_key` (text), `repeat` (integer >= 0), `status` (one of STATUSES) and `config` (an
    object of strings, numbers and booleans, `model` among them). Optional keys, when present, must have
    their types; an ok record carries its throughput. Metric names are free (new ones appear): a metric whose
    unit says it is a number must be one (a list of numbers where its name says one a rank, a stage or a step), and
    the metrics and environment fields the report and compare read must have the type they are read as (text,
    a list of text, a flag): env.cuda 13.0 or throttle_reasons 1 ended `report` in an internal error.
    """
    if not isinstance(record, dict):
        return "not a JSON object"
    key, repeat, status, config = (record.get(k) for k in ("config_key", "repeat", "status", "config"))
    if not isinstance(key, str) or not key:
        return "config_key is not a non-empty string"
    if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 0:
        return "repeat is not an integer >= 0"
    if status not in STATUSES:
        return f"status is not one of {', '.join(STATUSES)}"
    if not isinstance(config, dict) or not isinstance(config.get("model"), str):
        return "config is not an object naming a model"
    if not all(isinstance(v, _SCALAR) for v in config.values()):
        return "config holds something other than strings, numbers and booleans"
    mistyped = _mistyped_axis(config)
    if mistyped is not None:
        return mistyped
    for name, kind in (("metrics", dict), ("env", dict), ("losses", list), ("step_times_s", list),
                       ("warnings", list), ("reason", str), ("suite", str)):
        if record.get(name) is not None and not isinstance(record[name], kind):
            return f"{name} is not {'an object' if kind is dict else 'a list' if kind is list else 'a string'}"
    for name in ("losses", "step_times_s"):
        if not _numbers(record.get(name) or []):
            return f"{name} holds something other than numbers"
    if any(not isinstance(w, str) for w in record.get("warnings") or []):
        return "warnings holds something other than text"
    if not isinstance((record.get("env") or {}).get("device", {}), (dict, type(None))):
        return "env.device is not an object"
    metrics = record.get("metrics") or {}
    problem = _metrics_problem(metrics) or _env_problem(record.get("env") or {})
    if problem:
        return problem
    if status == "ok":
        tps = metrics.get("tokens_per_s")
        if not isinstance(tps, (int, float)) or isinstance(tps, bool) or not math.isfinite(tps) or tps <= 0:
            return "an ok record without a positive, finite metrics.tokens_per_s"
    return None


#: Numeric metrics that hold a list, one number a rank, a pipeline stage or a warmup step; every other one is one
#: number (power_avg_w [] ended `report` in an internal error).
_LIST_METRIC = re.compile(r"(_per_rank|_per_stage)$|^warmup_(losses|step_times_s)$")
#: Counts whose names end like a list's: the pipeline stages each rank holds is one number.
_SCALAR_PER = frozenset({"pp_stages_per_rank"})
#: Metrics whose names carry no unit that are numbers all the same (counts, losses, ratios).
_UNITLESS_NUMBERS = frozenset({"params", "steps_measured", "nnodes", "nproc_per_node", "world_size",
                               "pp_microbatches", "global_batch_sequences", "global_batch_tokens", "loss_first",
                               "loss_last", "loss_scale_final", "parity_max_rel_dev", "parity_tolerance",
                               "val_loss_initial", "target_loss_nats", "scaling_efficiency", *_SCALAR_PER})
#: Metrics read as text, as a list of text and as a flag (each may be null).
_TEXT_METRICS = frozenset({"energy_source", "power_source", "peak_source", "parity", "profile_note", "profile_device",
                           "profile_trace", "target_status", "kernels_applied", "kernels_note", "nvml_name",
                           "parallel_backend", "driver_version", "attention_kernel", "telemetry",
                           "precision_applied"})
_TEXT_LIST_METRICS = frozenset({"device_names", "throttle_reasons"})
_FLAG_METRICS = frozenset({"stalls", "throttled_power_or_heat", "fp8_compiled"})
#: Environment fields read as text (versions, names, the timestamp), of the record's env and of env.device; cudnn's
#: version is a number (torch gives one) or text.
_ENV_TEXT = ("host", "platform", "python", "lmbench", "lmbench_commit", "torch", "cuda", "triton", "transformers",
             "torchao", "liger_kernel", "cuda_visible_devices", "timestamp")
_DEVICE_TEXT = ("type", "name", "uuid", "driver", "capability")


def _metrics_problem(metrics: dict[str, Any]) -> str | None:
    """The first metric whose value is not of the type it is read as, as a reason (see shape_problem)."""
    for name, value in metrics.items():
        if value is None:
            continue
        if name in _TEXT_METRICS and not isinstance(value, str):
            return f"metrics.{name} is not text"
        if name in _TEXT_LIST_METRICS and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            return f"metrics.{name} is not a list of text"
        if name in _FLAG_METRICS and not isinstance(value, bool):
            return f"metrics.{name} is not true or false"
        if _LIST_METRIC.search(name) and name not in _SCALAR_PER:
            if not (isinstance(value, list) and _numbers(value)):
                return f"metrics.{name} is not a list of numbers (its name says one a rank, stage or step)"
        elif (_NUMERIC_METRIC.search(name) or name in _UNITLESS_NUMBERS) and not _numbers([value]):
            return f"metrics.{name} is not a number" + (" (its unit says it is one)" if _NUMERIC_METRIC.search(name)
                                                         else "")
    params = metrics.get("params")
    # A count: 1e308 passed as a number and overflowed the roofline's bytes.
    if params is not None and not (isinstance(params, int) and 0 <= params < 2**63):
        return "metrics.params is not a whole number of parameters"
    kernels = metrics.get("profile_top_kernels")
    if kernels is not None and not (isinstance(kernels, list) and all(
            isinstance(k, dict) and isinstance(k.get("name"), str) and _numbers([k.get("time_s"), k.get("calls")])
            for k in kernels)):
        return "metrics.profile_top_kernels is not a list of kernels (a name, time_s and calls each)"
    points = metrics.get("val_points")
    if points is not None and not (isinstance(points, list) and all(
            isinstance(p, dict) and _numbers(list(p.values())) for p in points)):
        return "metrics.val_points is not a list of evaluations (numbers each)"
    return None


def _env_problem(env: dict[str, Any]) -> str | None:
    """The first environment field whose value is not of the type it is read as, as a reason (see shape_problem)."""
    device = env.get("device")
    for where, holder, names in (("env", env, _ENV_TEXT), ("env.device", device or {}, _DEVICE_TEXT)):
        wrong = next((name for name in names if holder.get(name) is not None
                      and not isinstance(holder[name], str)), None)
        if wrong is not None:
            return f"{where}.{wrong} is not text"
    if env.get("cudnn") is not None and not isinstance(env["cudnn"], str) and not _numbers([env["cudnn"]]):
        return "env.cudnn is not a version (text or a number)"
    if env.get("data_draw") is not None and not _numbers([env["data_draw"]]):
        return "env.data_draw is not a number"
    variables = env.get("env_vars")
    if variables is not None and not (isinstance(variables, dict) and all(isinstance(v, str)
                                                                         for v in variables.values())):
        return "env.env_vars is not an object of text"
    return None


def _mistyped_axis(config: dict[str, Any]) -> str | None:
    """The first axis of `config` whose value is not of the axis's type (batch_size "4"), as a reason; axes this
    version does not know (an older or newer one's) are free."""
    from lmbench.plan.config import FIELD_TYPES, TYPE_NAMES

    for name, value in config.items():
        wanted = FIELD_TYPES.get(name)
        if wanted not in TYPE_NAMES or value is None:
            continue
        fits = (isinstance(value, wanted) and not (wanted is not bool and isinstance(value, bool))
                or wanted is float and isinstance(value, int) and not isinstance(value, bool))
        if not fits:
            return f"config.{name} is not {TYPE_NAMES[wanted]}"
    return None


def _numbers(values: list[Any]) -> bool:
    """Whether every value is a number (not a bool) or null."""
    return all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values)


@dataclass
class Loaded:
    records: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    """One per skipped line, naming the file and line number; one for a file whose records' config_key
    disagree with their configs (read under the configs' keys)."""


def read(path: Path) -> Loaded:
    """Read a results file (or a run directory holding one).

    Lines that are not JSON, not shaped like a record, or repeat the (config_key, repeat) of an
    earlier line are skipped with a warning naming the line; the first record of a pair is kept, unless it is
    `skipped`: then the later one stands in its place, without a warning.

    That is how `run --resume` replaces a skip it judged again (a package installed since, CUDA there now;
    lmbench.run.runner.plan): it appends the row's new record, and this reader keeps one record of the pair, so no
    reader counts the repeat twice. A skip measured nothing, so nothing measured is lost; a measured (or failed)
    record is never superseded. The file is not rewritten to drop the old line: an append is the one write a
    killed process or a full disk cannot leave half done, and rewriting would put every record in it at risk for
    one line that says nothing.
    """
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
        if not path.is_file():
            raise ResultsError(not_a_run(path.parent))
    if not path.is_file():
        raise ResultsError(f"no results file at {str(path)!r}")
    loaded = Loaded()
    seen: dict[tuple[str, int], tuple[int, int]] = {}
    """(line number, index in loaded.records) of each (config_key, repeat) read."""
    rekeyed: list[tuple[int, str, str]] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    # The error's column is then the line's own; NaN and Infinity (Python's json writes them, lmbench's
                    # writer does not) read as null, as the writer would have written them (sanitize): a NaN median
                    # of a metric is no figure.
                    record = json.loads(line.rstrip("\n"), parse_constant=_as_null)
                except json.JSONDecodeError as err:
                    loaded.warnings.append(f"{path}:{number}: skipped corrupt line ({err})")
                    continue
                problem = shape_problem(record)
                if problem:
                    loaded.warnings.append(f"{path}:{number}: skipped line: {problem}")
                    continue
                written, record["config_key"] = record["config_key"], current_key(record)
                if written != record["config_key"]:
                    record["written_key"] = written  # its side files (telemetry, logs, traces) carry this one
                    if record["config"].get("profile") is not True:  # a profiled record's new key is expected
                        rekeyed.append((number, written, record["config_key"]))
                pair = (record["config_key"], record["repeat"])
                if pair in seen:
                    first, index = seen[pair]
                    if loaded.records[index]["status"] == "skipped":
                        loaded.records[index] = record
                        seen[pair] = (number, index)
                        continue
                    # Two configurations an older lmbench keyed apart that are one under this one (dropout of a model
                    # without dropout): the same measurement, whose second repeat of a number is left out.
                    merged = (f" (written as {record['written_key']}: one configuration under this lmbench)"
                              if record.get("written_key") else "")
                    loaded.warnings.append(f"{path}:{number}: skipped line: repeat {record['repeat']} of "
                                           f"{record['config_key']} is already on line {first}{merged}")
                    continue
                seen[pair] = (number, len(loaded.records))
                loaded.records.append(record)
    except OSError as err:
        raise ResultsError(f"cannot read {str(path)!r}: {err.strerror or err}") from None
    if rekeyed:
        number, written, now = rekeyed[0]
        loaded.warnings.append(
            f"{path}: {len(rekeyed)} record(s) carry a config_key their config does not have under this lmbench "
            f"(first on line {number}: {written}, its config's key {now}); read under their configs' keys, "
            "which compare and --resume match by")
    return loaded


#: What `lmbench calibrate` leaves in its directory beside its runs (lmbench.run.rundir names it too).
NOISE_FLOOR_FILE = "noise-floor.json"


def not_a_run(folder: Path) -> str:
    """Why a directory without results.jsonl has no results, and what to give instead: a calibration's runs or its
    noise floor; else what a run directory is ('no results file' told a user with a calibration nothing)."""
    found = Path(folder) / RESULTS_FILE
    shown = str(folder)
    if found.is_dir():
        return f"no results file at {str(found)!r}: it is a directory (lmbench run and tune write a file there)"
    runs = sorted(str(sub) for sub in _subfolders(folder) if (sub / RESULTS_FILE).is_file())
    floor = Path(folder) / NOISE_FLOOR_FILE
    # Calibration runs are named a, b, c... (lmbench calibrate --runs).
    if floor.is_file() or (runs and all(re.fullmatch("[a-z]", Path(run).name) for run in runs)):
        them = f"report or compare one of its runs ({', '.join(runs)})" if runs else "it holds no run yet"
        noise = (f"; its noise floor {str(floor)!r} is for lmbench compare --noise-floor" if floor.is_file() else
                 f"; it has no {NOISE_FLOOR_FILE} yet (lmbench calibrate --suite SUITE --out {shown} --resume "
                 "finishes it)")
        return f"{shown!r} is a calibration written by lmbench calibrate, not a run: {them}{noise}"
    inside = f"; run directories inside it: {', '.join(runs[:5])}{' ...' if len(runs) > 5 else ''}" if runs else ""
    return (f"no results file at {str(found)!r}: {shown!r} is not a run directory (one written by lmbench run or "
            f"lmbench tune holds {RESULTS_FILE}){inside}")


def _subfolders(folder: Path) -> list[Path]:
    """The directories in `folder` ([] where it cannot be listed)."""
    try:
        return [sub for sub in Path(folder).iterdir() if sub.is_dir()]
    except OSError:
        return []


def current_key(record: dict[str, Any]) -> str:
    """The record's config_key as this lmbench spells it from the record's own config: what was measured, whatever
    key was written beside it. They differ for a profiled record written while `profile` was hashed into the key
    (it is keyed at its default now: its steps come after the window), for a line edited by hand, and for a
    configuration measured at a newer axis's old default after that default changed (the written key omits the
    axis, and today's run at the new default would share it). Read under the config's key, such a record pairs
    in `compare` and counts as done on `--resume` as the configuration it measured. A config too partial to key
    (a hand-made record) or one this lmbench cannot read (a newer version's axes) keeps its key as written."""
    from lmbench.plan.config import recorded_key

    return recorded_key(record["config"]) or record["config_key"]


def mixed_corpora(records: list[dict[str, Any]]) -> str | None:
    """A warning when one configuration's ok records trained on different text (more than one metrics.data_sha256
    under a config_key), else None. A corpus edited in place, or a relative `data` path read from another folder,
    keeps the key; `run --resume` refuses that now (lmbench.plan.runplan.check_corpora), but a run resumed by an
    older lmbench may already hold such a mix, and its figures average two corpora."""
    several = len({record.get("run") for record in records}) > 1  # a report's runs are kept apart, as its rows
    hashes: dict[str, dict[str, None]] = {}
    for record in records:
        sha = (record.get("metrics") or {}).get("data_sha256") if record["status"] == "ok" else None
        if isinstance(sha, str):
            key = f"{record['run']}::{record['config_key']}" if several else record["config_key"]
            hashes.setdefault(key, {})[sha] = None
    mixed = {key: list(found) for key, found in hashes.items() if len(found) > 1}
    if not mixed:
        return None
    shown = "; ".join(f"{key} (data_sha256 {', '.join(sha[:12] for sha in found)})"
                      for key, found in list(mixed.items())[:3]) + (" ..." if len(mixed) > 3 else "")
    return (f"{len(mixed)} configuration(s) hold ok records of different corpora under one config_key, so their "
            f"figures mix different texts: {shown}; measure them again in a new run (another --out)")


def read_lines(path: Path) -> tuple[list[tuple[int, Any]], list[str]]:
    """(line number, value) of every JSON line of a side file (tune's probes.jsonl); unreadable lines are
    skipped with a warning each."""
    entries: list[tuple[int, Any]] = []
    warnings: list[str] = []
    if not Path(path).exists():
        return entries, warnings
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            value = _loads(line)
            if value is None:
                warnings.append(f"{path}:{number}: skipped corrupt line")
                continue
            entries.append((number, value))
    return entries, warnings


def full_config(config: dict[str, Any]) -> dict[str, Any]:
    """A record's config with every axis present, for tables: an axis added after the record was written
    takes its default, which is what that older lmbench ran."""
    from lmbench.plan.config import Config

    return {**Config().to_dict(), **config}


def read_meta(run_dir: Path) -> dict[str, Any] | None:
    """RUN_DIR/run.json; None when there is none, a ResultsError when it cannot be read as a JSON object."""
    path = Path(run_dir) / META_FILE
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ResultsError(f"cannot read {str(path)!r} ({err}); move it aside to resume without checking "
                           "the plan") from None
    if not isinstance(meta, dict):
        raise ResultsError(f"{str(path)!r} is not a JSON object; move it aside to resume without checking "
                           "the plan")
    return meta

"""RUN_DIR on disk: results.jsonl, run.json, logs/, telemetry/, and work/ (job and result files of live workers).

A run directory has one writer: an advisory lock (fcntl.flock on RUN_DIR/.lock) is held from opening
to closing, and the lock file says who holds it. Opening repairs a partial last line of the results
and clears work/, whose files can only be left over from a writer that died.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import shlex
import socket
import sys
from pathlib import Path
from typing import IO, Any

from lmbench.analyze import results
from lmbench.analyze.results import META_FILE, read_meta
from lmbench.errors import ResultsError, RunLockedError

LOCK_FILE = ".lock"
#: Files only `lmbench tune` leaves in its directory, and only `lmbench calibrate` in its own.
PROBES_FILE, PARITY_FILE, WINNER_FILE = "probes.jsonl", "parity.jsonl", "tuned.toml"
NOISE_FLOOR_FILE, CALIBRATION_RUNS = "noise-floor.json", ("a", "b")


def writer(path: Path) -> str | None:
    """The command whose directory `path` is: 'run', 'tune' or 'calibrate', known by run.json or by the files only
    that command leaves (records alone are a run's); None for a new directory."""
    path = Path(path)
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = None
    if isinstance(meta, dict) and meta.get("command") in ("run", "tune"):
        return meta["command"]
    if isinstance(meta, dict) and "plan" in meta:
        return "run"  # run.json of a run from before it named its command
    if any((path / name).exists() for name in (PROBES_FILE, PARITY_FILE, WINNER_FILE)):
        return "tune"
    if (path / NOISE_FLOOR_FILE).exists() or any((path / run / name).exists() for run in CALIBRATION_RUNS
                                                 for name in (META_FILE, results.RESULTS_FILE)):
        return "calibrate"
    if (path / results.RESULTS_FILE).exists():
        return "run"  # records without a plan: an older run, or hand-made (`run --resume` checks their suite)
    return None


def nothing_to_resume(path: Path) -> str | None:
    """The warning for `--resume` into a directory no run or tune has started: scripts pass --resume every time, so
    that is no error, but a mistyped path would measure everything again."""
    if any((Path(path) / name).is_file() for name in (results.RESULTS_FILE, META_FILE, PROBES_FILE)):
        return None
    return f"--resume: nothing to resume in {str(path)!r} (no results, run.json or probes there): this is a new run"


def holds_results(path: Path) -> str | None:
    """Why a run that does not resume may not write into `path`: it holds another run's results; or None."""
    found = Path(path) / results.RESULTS_FILE
    if found.exists() and found.stat().st_size:
        return f"--out {str(path)!r} already holds results; pass --resume to continue that run, or choose another " \
               "directory"
    return None


class RunDirectory:
    """One run's directory, locked for this process while open (use it as a context manager)."""

    def __init__(self, path: Path, *, resume: bool) -> None:
        self.path = Path(path)
        for folder in (self.path, self.path / "logs", self.path / "work"):
            results.writable_dir(folder)
        self.results_path = self.path / results.RESULTS_FILE
        self.notices: list[str] = []
        """Repairs made on opening and appending, for the command to show."""
        self._lock: IO[bytes] | None = _lock(self.path / LOCK_FILE, self.notices)
        try:
            refused = None if resume else holds_results(self.path)
            if refused:
                raise ResultsError(refused)
            with results.saving(self.results_path):
                note = results.repair(self.results_path)
            self.notices += [note] if note else []
            for leftover in (self.path / "work").iterdir():
                # A result (and its ranks' failures) is a finished job a killed parent never recorded: resume
                # records it (lmbench.run.runner.run_worker). Everything else there is a job's half-done state.
                finished = leftover.name.endswith(".result.json") or ".result.json.rank" in leftover.name
                if leftover.is_file() and not (resume and finished):
                    leftover.unlink(missing_ok=True)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the lock (closing its file does); the directory stays as it is."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def recorded(self) -> results.Loaded:
        """Records already in the run (empty for a new one), with warnings about unreadable lines."""
        return results.read(self.results_path) if self.results_path.exists() else results.Loaded()

    def append(self, record: dict[str, Any]) -> None:
        """Save one record; a storage failure is a StorageError and leaves no partial line."""
        with results.saving(self.results_path):
            note = results.append(self.path, record)
        self.notices += [note] if note else []

    def meta(self) -> dict[str, Any] | None:
        """run.json as written by the run that created the directory; None when there is none."""
        return read_meta(self.path)

    def write_meta(self, meta: dict[str, Any]) -> None:
        self.write_json(self.path / META_FILE, meta)

    def write_json(self, path: Path, payload: dict[str, Any]) -> None:
        """A JSON file in the run (run.json, a worker's job), atomically; a storage failure is a StorageError."""
        with results.saving(path):
            results.write_json(path, payload)

    def log_path(self, name: str) -> Path:
        return self.path / "logs" / f"{name}.log"

    def timeline_path(self, name: str) -> Path:
        """Telemetry samples of the job's window (CSV), when NVML was there to take them."""
        return self.path / "telemetry" / f"{name}.csv"


def _lock(path: Path, notices: list[str]) -> IO[bytes] | None:
    """Take the run's lock without waiting, and write who holds it; a held lock is a RunLockedError naming them.

    The lock belongs to the open file: closing it, or the end of this process however it ends, releases it.
    A file system without flock (Lustre mounted noflock, some NFS) gets a notice and no lock: refusing
    would make lmbench unusable there.
    """
    try:
        f = open(path, "a+b")
    except OSError as err:
        raise ResultsError(f"cannot write to --out {str(path.parent)!r}: {err.strerror or err}") from None
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read(4096).decode(errors="replace").strip() or "another process"
        f.close()
        raise RunLockedError(f"--out {str(path.parent)!r} is in use by {holder}; wait for it to finish or choose "
                             "another directory") from None
    except OSError as err:
        f.close()
        notices.append(f"cannot lock {str(path.parent)!r} ({err.strerror or err}): nothing stops a second run from "
                       "writing there too")
        return None
    started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    command = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
    try:
        # Unbuffered: on a full disk a buffered write would fail again, and raise, when the lock's file is closed.
        os.ftruncate(f.fileno(), 0)
        os.write(f.fileno(), f"lmbench (pid {os.getpid()} on {socket.gethostname()} since {started}: "
                             f"{command})".encode()[:4000])
    except OSError:
        pass  # who holds it is a courtesy to the next process; the lock itself is taken
    return f

"""The CPUs a pytest-xdist worker runs on: a share of its own, and the whole machine for a test marked `alone`.

`pytest -n 2` on the 2-core CI machine runs two workers. Unbound, each worker's torch computes with 2 OpenMP
threads, and the threads of one op wait for one another at every barrier while the other worker holds a core:
the in-process overhead tests took 11 s alone and 150 s beside a busy worker, every test computing in-process
2-10x longer (2026-11-29). Bound to CPUs of its own before torch is imported, a worker computes with as many
threads as it has CPUs (libgomp and torch size their pools by the affinity mask), and the processes it starts
(lmbench's workers, torchrun's ranks) inherit its CPUs, so the workers never contend.

A test marked `alone` (a timing comparison, a test that needs more than one CPU) runs while every other worker
waits at its next test, with the whole machine's CPUs. Once every other worker has finished, the last one takes
the whole machine too, so a long last file does not leave a core idle.

The workers share lock files in a folder of the run's own (flock: the kernel drops a lock when its process
ends, a crashed worker included). A readers-writer pair with a turnstile: a test takes the turnstile, takes the
room shared (or, alone, exclusive) and, unless alone, gives the turnstile back; an `alone` test waiting for the
room holds the turnstile, so no new test enters before it. Each worker holds its `alive` file exclusive until
it ends: a file another worker can lock is a worker that has finished.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

#: A test that needs the machine to itself (pyproject.toml registers it).
MARK = "alone"

#: The files that hold a worker longest start first (seconds of one core beside a second worker, `pytest -n 2
#: --junitxml` on the 2-core machine, 2026-11-29: 503, 241, 139, 137, 128, 124, 107, 93, 82, 76, 73, 58, 54, 49, 46),
#: so the run does not end on one of them with the other worker idle; the rest follow in name order. A stale list
#: costs time, never a test.
FIRST = ("test_model_parallel.py", "test_distributed.py", "test_run_e2e.py", "test_faults.py", "test_compile_modes.py",
         "test_kernels.py", "test_tune.py", "test_gpu_validate.py", "test_convergence.py", "test_report.py",
         "test_kernel_sets.py", "test_float8.py", "test_compare.py", "test_training.py", "test_profiling_gloo.py")
#: Files of `alone` tests go last: by then the other worker has little left to wait with, or has finished.
LAST = ("test_overhead.py", "test_overhead_processes.py")


def start_order(item: pytest.Item) -> int:
    """Where `item`'s file starts: FIRST's in their order, then the others, then LAST's (a stable sort keeps each
    file's own order and the name order of the others)."""
    name = item.path.name
    if name in FIRST:
        return FIRST.index(name)
    return len(FIRST) + 1 + LAST.index(name) if name in LAST else len(FIRST)


def share(cpus: Sequence[int], index: int, count: int) -> list[int]:
    """Worker `index` of `count`'s CPUs: an equal contiguous part of `cpus` (a remainder goes to the later
    workers); all of them when there are fewer CPUs than workers, or one worker."""
    cpus = sorted(cpus)
    if count <= 1 or count > len(cpus):
        return cpus
    return cpus[len(cpus) * index // count:len(cpus) * (index + 1) // count]


def bind(cpus: Sequence[int]) -> None:
    """Every thread of this process on `cpus`, and torch's pool (once imported) as wide as they are.

    sched_setaffinity binds one thread: a thread left on other CPUs would still compute there, and lmbench's
    host-load watch counts the union of a process's threads' masks (lmbench.measure.hostload.affinity)."""
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(task), cpus)
    torch = __import__("sys").modules.get("torch")
    if torch is not None:
        torch.set_num_threads(len(cpus))


class Workers:
    """This worker's place among the run's workers: its CPUs, the whole machine's, the lock files they share."""

    def __init__(self, index: int, count: int, folder: Path, cpus: Sequence[int],
                 bind: Callable[[Sequence[int]], None] = bind) -> None:
        self.index, self.count, self.folder, self._bind = index, count, folder, bind
        self.machine = sorted(cpus)
        self.own = share(self.machine, index, count)
        self.whole = False
        """Whether every other worker has finished and this one took the whole machine."""
        folder.mkdir(parents=True, exist_ok=True)
        self._turnstile = self._open("turnstile")
        self._room = self._open("room")
        # Locked before it is named, so another worker never sees it unlocked while this one runs.
        self._alive = self._open(f".alive-gw{index}-{os.getpid()}")
        fcntl.flock(self._alive, fcntl.LOCK_EX)
        os.replace(folder / f".alive-gw{index}-{os.getpid()}", self._alive_path(index))

    @classmethod
    def from_environment(cls) -> Workers | None:
        """This process's place when it is a pytest-xdist worker (xdist names it before conftest is imported)."""
        name, run = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_TESTRUNUID")
        if not name or not run or not hasattr(os, "sched_setaffinity"):
            return None
        workers = cls(int(name.removeprefix("gw")), int(os.environ["PYTEST_XDIST_WORKER_COUNT"]),
                      Path(tempfile.gettempdir()) / f"lmbench-pytest-{run}", os.sched_getaffinity(0))
        workers._bind(workers.own)
        return workers

    def _open(self, name: str) -> int:
        return os.open(self.folder / name, os.O_RDWR | os.O_CREAT, 0o600)

    def _alive_path(self, index: int) -> Path:
        return self.folder / f"alive-gw{index}"

    def finished(self, index: int) -> bool:
        """Whether worker `index` has ended (one that has not started yet has no file: not finished)."""
        try:
            fd = os.open(self._alive_path(index), os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)  # closing drops the probe's lock, if it took one
        return True

    @contextlib.contextmanager
    def running(self, *, alone: bool) -> Iterator[None]:
        """One test, set-up and tear-down included: beside the others' tests, or alone on the whole machine."""
        fcntl.flock(self._turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(self._room, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            if not alone:
                fcntl.flock(self._turnstile, fcntl.LOCK_UN)
        try:
            if not self.whole and self.own != self.machine and all(
                    self.finished(i) for i in range(self.count) if i != self.index):
                self.whole = True
                self._bind(self.machine)
            if alone and not self.whole:
                self._bind(self.machine)
                try:
                    yield
                finally:
                    self._bind(self.own)
            else:
                yield
        finally:
            fcntl.flock(self._room, fcntl.LOCK_UN)
            if alone:
                fcntl.flock(self._turnstile, fcntl.LOCK_UN)

    def close(self) -> None:
        """This worker has finished; the last one to finish removes the folder."""
        for fd in (self._alive, self._turnstile, self._room):
            os.close(fd)
        if all(self.finished(i) for i in range(self.count)):
            shutil.rmtree(self.folder, ignore_errors=True)

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
room holds the turnstile, so no new test enters before it. Each worker holds a numbered slot exclusive until it
ends, and its slot's number picks its share: xdist names a crashed worker's replacement gw2, gw3, ..., and the
replacement takes the slot the crash left. A slot another worker can lock is one whose worker has ended; a slot
no one has made yet, one whose worker has not started.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

#: A test that needs the machine to itself (pyproject.toml registers it).
MARK = "alone"
#: The xdist worker's process id, set by the worker for the processes it starts.
WORKER_PID = "LMBENCH_TEST_WORKER_PID"

#: The files that hold a worker longest start first (seconds of one core beside a second worker, `pytest -n 2
#: --junitxml` on the 2-core machine, 2026-11-29: 503, 241, 139, 137, 128, 124, 107, 93, 82, 76, 73, 58, 54, 49, 46),
#: so the run does not end on one of them with the other worker idle; the rest follow in name order. A stale list
#: costs time, never a test.
FIRST = ("test_model_parallel.py", "test_distributed.py", "test_run_e2e.py", "test_faults.py", "test_compile_modes.py",
         "test_kernels.py", "test_tune.py", "test_gpu_validate.py", "test_convergence.py", "test_report.py",
         "test_kernel_sets.py", "test_float8.py", "test_compare.py", "test_training.py", "test_profiling_gloo.py")
#: Files of `alone` tests go last: an alone test waits for the other worker's test in progress (a module fixture of
#: minutes, early in a run), and by the end the other worker has little left to wait with, or has finished.
LAST = ("test_hostload.py", "test_overhead.py", "test_overhead_processes.py")


def folder(run: str) -> Path:
    """The lock files' folder of test run `run` (xdist's testrunuid): the last worker to end removes it, and the
    controller once every worker has ended (a worker that crashed, or that the controller stopped, never closes)."""
    return Path(tempfile.gettempdir()) / f"lmbench-pytest-{run}"


def start_order(item: pytest.Item) -> int:
    """Where `item`'s file starts: FIRST's in their order, then the others, then LAST's (a stable sort keeps each
    file's own order and the name order of the others)."""
    name = item.path.name
    if name in FIRST:
        return FIRST.index(name)
    return len(FIRST) + 1 + LAST.index(name) if name in LAST else len(FIRST)


def share(cpus: Sequence[int], index: int, count: int) -> list[int]:
    """Worker `index` of `count`'s CPUs: an equal contiguous part of `cpus` (a remainder goes to the later
    workers); with more workers than CPUs, one CPU each in turn (one torch thread each, never a pool per worker
    fighting over all of them); all of them for one worker."""
    cpus = sorted(cpus)
    if count <= 1:
        return cpus
    if count > len(cpus):
        return [cpus[index % len(cpus)]]
    return cpus[len(cpus) * index // count:len(cpus) * (index + 1) // count]


def bind(cpus: Sequence[int]) -> None:
    """Every thread of this process on `cpus`, and torch's pool (once imported) as wide as they are.

    sched_setaffinity binds one thread: a thread left on other CPUs would still compute there, and lmbench's
    host-load watch counts the union of a process's threads' masks (lmbench.measure.hostload.affinity)."""
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(task), cpus)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(len(cpus))


class Workers:
    """This worker's place among the run's workers: its slot and CPUs, the whole machine's, the shared locks."""

    #: How long a starting worker looks for a free slot (another worker's probe can hold one for a moment).
    CLAIM_S = 5.0

    def __init__(self, count: int, folder: Path, cpus: Sequence[int],
                 bind: Callable[[Sequence[int]], None] = bind) -> None:
        self.count, self.folder, self._bind = count, folder, bind
        self.machine = sorted(cpus)
        folder.mkdir(parents=True, exist_ok=True)
        self._turnstile = self._open("turnstile")
        self._room = self._open("room")
        self.slot, self._slot = self._claim()
        self.own = share(self.machine, self.slot, count) if self.slot is not None else self.machine
        self.whole = False
        """Whether, at the last test, every other worker had ended (this one then ran on the whole machine)."""
        self._bound: list[int] | None = None

    @classmethod
    def from_environment(cls) -> Workers | None:
        """This process's place when it is a pytest-xdist worker (xdist names it before conftest is imported),
        bound to its share; None outside xdist, or (with a warning) where the CPUs cannot be bound."""
        run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
        if not os.environ.get("PYTEST_XDIST_WORKER") or not run or not hasattr(os, "sched_setaffinity"):
            return None
        # A pytest that a test starts (gpu-validate's rehearsal) inherits xdist's variables: it is not a worker, and
        # taking a slot or the turnstile there could wait on the very test that started it.
        if os.environ.setdefault(WORKER_PID, str(os.getpid())) != str(os.getpid()):
            return None
        try:
            workers = cls(int(os.environ["PYTEST_XDIST_WORKER_COUNT"]), folder(run), os.sched_getaffinity(0))
            workers._use(workers.own)
        except (OSError, ValueError, KeyError) as e:
            warnings.warn(f"this pytest-xdist worker runs on every CPU, beside the others: {e}", stacklevel=1)
            return None
        return workers

    def _open(self, name: str) -> int:
        return os.open(self.folder / name, os.O_RDWR | os.O_CREAT, 0o600)

    def _claim(self) -> tuple[int | None, int | None]:
        """The first slot no running worker holds, locked until this process ends; (None, None) if none is free."""
        deadline = time.monotonic() + self.CLAIM_S
        while True:
            for slot in range(self.count):
                fd = self._open(f"slot-{slot}")
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                return slot, fd
            if time.monotonic() > deadline:
                return None, None
            time.sleep(0.05)

    def ended(self, slot: int) -> bool:
        """Whether slot `slot`'s worker has ended (a slot no worker has made yet: not ended, still to start).

        A shared probe: the holder's exclusive lock refuses it, and two probes never refuse each other."""
        try:
            fd = os.open(self.folder / f"slot-{slot}", os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)  # closing drops the probe's lock, if it took one
        return True

    def _use(self, cpus: list[int]) -> None:
        if cpus != self._bound:
            self._bind(cpus)
            self._bound = cpus

    @contextlib.contextmanager
    def running(self, *, alone: bool) -> Iterator[None]:
        """One test, set-up and tear-down included: beside the others' tests on this worker's CPUs, or alone (or
        after every other worker has ended) on the whole machine."""
        fcntl.flock(self._turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(self._room, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        except BaseException:
            fcntl.flock(self._turnstile, fcntl.LOCK_UN)
            raise
        if not alone:
            fcntl.flock(self._turnstile, fcntl.LOCK_UN)
        try:
            self.whole = self.slot is not None and all(self.ended(slot) for slot in range(self.count)
                                                       if slot != self.slot)
            try:
                self._use(self.machine if alone or self.whole else self.own)
            except OSError as e:  # a cpuset changed under the run: the test runs where it is
                warnings.warn(f"could not bind this pytest-xdist worker's CPUs: {e}", stacklevel=1)
            yield
        finally:
            fcntl.flock(self._room, fcntl.LOCK_UN)
            if alone:
                fcntl.flock(self._turnstile, fcntl.LOCK_UN)

    def close(self) -> None:
        """This worker has ended; the last one to end removes the folder."""
        for fd in (self._slot, self._turnstile, self._room):
            if fd is not None:
                os.close(fd)
        if all(self.ended(slot) for slot in range(self.count)):
            shutil.rmtree(self.folder, ignore_errors=True)

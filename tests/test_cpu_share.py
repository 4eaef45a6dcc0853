"""The test runner's own CPU sharing (tests/cpu_share.py): shares, slots, the `alone` gate, the whole machine."""

from __future__ import annotations

import fcntl
import os
import tempfile
import threading
import time
from pathlib import Path

from cpu_share import FIRST, LAST, MARK, WORKER_PID, Workers, share, start_order


def test_each_worker_gets_an_equal_contiguous_share_or_one_cpu_in_turn():
    assert [share([0, 1], i, 2) for i in range(2)] == [[0], [1]]
    parts = [share(range(16), i, 3) for i in range(3)]
    assert parts == [list(range(0, 5)), list(range(5, 10)), list(range(10, 16))]
    assert [share([0, 1], i, 4) for i in range(4)] == [[0], [1], [0], [1]]
    assert share([3, 1], 0, 1) == [1, 3]


def _worker(folder: Path, binds: list, count: int = 2) -> Workers:
    return Workers(count, folder, [0, 1], bind=lambda cpus: binds.append(list(cpus)))


def _start(target) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def _held(path: Path) -> bool:
    """Whether someone holds `path`'s lock (probed with an exclusive lock of a third open file)."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _until(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_an_alone_test_waits_for_the_others_test_and_holds_back_their_next(tmp_path):
    a_binds: list = []
    b_binds: list = []
    a, b = _worker(tmp_path / "run", a_binds), _worker(tmp_path / "run", b_binds)
    assert (a.slot, a.own, b.slot, b.own) == (0, [0], 1, [1])
    order: list[str] = []
    entered = threading.Event()

    def alone() -> None:
        with b.running(alone=True):
            order.append("alone")
            entered.wait(5)

    def next_test() -> None:
        with a.running(alone=False):
            order.append("a's next")

    with a.running(alone=False):
        waiting = _start(alone)
        _until(lambda: _held(tmp_path / "run" / "turnstile"))  # the alone test waits for the room, turnstile held
        assert order == []
        order.append("a's test")
    _until(lambda: order[-1] == "alone")
    follower = _start(next_test)
    time.sleep(0.2)
    assert order == ["a's test", "alone"]  # a's next test waits at the turnstile
    entered.set()
    waiting.join(5)
    follower.join(5)
    assert order == ["a's test", "alone", "a's next"]
    assert b_binds == [[0, 1]]  # the whole machine for the alone test
    assert a_binds == [[0]]  # its own CPU throughout


def test_two_shared_tests_run_side_by_side(tmp_path):
    a, b = _worker(tmp_path / "run", []), _worker(tmp_path / "run", [])
    entered = threading.Event()

    def enter() -> None:
        with b.running(alone=False):
            entered.set()

    with a.running(alone=False):
        _start(enter)
        assert entered.wait(2)  # b's test ran while a's did


def test_the_last_worker_takes_the_whole_machine_and_removes_the_folder(tmp_path):
    binds: list = []
    a, b = _worker(tmp_path / "run", []), _worker(tmp_path / "run", binds)
    assert not b.ended(0) and not b.ended(1)
    with b.running(alone=False):
        pass
    assert binds == [[1]] and not b.whole  # a still runs
    a.close()
    assert b.ended(0) and (tmp_path / "run").is_dir()
    with b.running(alone=False):
        pass
    assert binds == [[1], [0, 1]] and b.whole
    b.close()
    assert not (tmp_path / "run").exists()


def test_a_crashed_workers_replacement_takes_its_slot_and_the_other_narrows_again(tmp_path):
    """xdist names the replacement gw2 while the count stays 2: it takes slot 0, left by the crash."""
    binds: list = []
    crashed, b = _worker(tmp_path / "run", []), _worker(tmp_path / "run", binds)
    crashed.close()
    with b.running(alone=False):
        pass
    assert b.whole and binds == [[0, 1]]
    replacement = _worker(tmp_path / "run", [])
    assert (replacement.slot, replacement.own) == (0, [0])
    with b.running(alone=False):
        pass
    assert not b.whole and binds == [[0, 1], [1]]


def test_a_worker_not_started_yet_has_not_ended_and_no_free_slot_means_every_cpu(tmp_path, monkeypatch):
    binds: list = []
    first = _worker(tmp_path / "run", binds)
    assert not first.ended(1)  # slot 1 not made yet: its worker is still to start
    with first.running(alone=False):
        pass
    assert not first.whole and binds == [[0]]
    monkeypatch.setattr(Workers, "CLAIM_S", 0.1)
    second, third = _worker(tmp_path / "run", []), _worker(tmp_path / "run", [])
    assert (second.slot, third.slot, third.own) == (1, None, [0, 1])
    first.close()
    assert (tmp_path / "run").is_dir()  # the others still run


def test_outside_xdist_and_in_a_pytest_a_worker_started_there_is_no_sharing(monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    assert Workers.from_environment() is None
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    monkeypatch.setenv("PYTEST_XDIST_TESTRUNUID", "x")
    monkeypatch.setenv(WORKER_PID, str(os.getpid() + 1))  # the worker is another process: this one it started
    assert Workers.from_environment() is None


def test_heavy_files_start_first_and_files_of_alone_tests_last():
    class Item:
        def __init__(self, name: str) -> None:
            self.path = Path(__file__).with_name(name)

    names = ["test_a.py", "test_overhead.py", "test_distributed.py", "test_b.py", "test_model_parallel.py"]
    assert [item.path.name for item in sorted(map(Item, names), key=start_order)] == [
        "test_model_parallel.py", "test_distributed.py", "test_a.py", "test_b.py", "test_overhead.py"]
    here = Path(__file__).parent
    assert all((here / name).is_file() for name in FIRST + LAST)  # a renamed file would drop out unseen
    assert all(f"mark.{MARK}" in (here / name).read_text() for name in LAST)


def test_under_n_2_files_are_units_in_start_order_and_a_crashed_worker_ends_the_run(tmp_path):
    """This conftest in a pytest of its own: `-n 2` runs each file on one worker, in start_order's order, and a
    worker that crashes ends the run (xdist 3.8 otherwise deals the file to a replacement and, with files left,
    hangs)."""
    import shutil
    import subprocess
    import sys

    here = Path(__file__).parent
    for name in ("conftest.py", "cpu_share.py"):
        shutil.copy(here / name, tmp_path / name)
    (tmp_path / "pytest.ini").write_text(f"[pytest]\nmarkers =\n    {MARK}: alone\n")
    log = tmp_path / "order.log"
    record = ("import os\ndef test_{n}():\n    with open({log!r}, 'a') as f:\n"
              "        f.write(os.environ['PYTEST_XDIST_WORKER'] + ' {n}\\n')\n")
    (tmp_path / "test_a.py").write_text(record.format(n="a", log=str(log)) + record.format(n="a2", log=str(log)))
    for n in ("b", "c", "d", "e"):
        (tmp_path / f"test_{n}.py").write_text(record.format(n=n, log=str(log)))
    (tmp_path / "test_model_parallel.py").write_text(record.format(n="first", log=str(log)))
    # The crash comes once the first file and test_a have run, mostly while files are still to be dealt (the hang
    # needs that: without --max-worker-restart 0 this run timed out here), though xdist may have dealt them all.
    (tmp_path / "test_crash.py").write_text(
        f"import os, pathlib, time\ndef test_crash():\n    log = pathlib.Path({str(log)!r})\n"
        "    deadline = time.monotonic() + 120\n"
        "    while time.monotonic() < deadline and not (log.exists() and {'first', 'a', 'a2'} <= "
        "{line.split()[1] for line in log.read_text().splitlines()}):\n"
        "        time.sleep(0.05)\n    os._exit(1)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_") and k != WORKER_PID}
    before = set(Path(tempfile.gettempdir()).glob("lmbench-pytest-*"))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 1 and "crashed while running 'test_crash.py::test_crash'" in done.stdout, done.stdout
    lines = [line.split() for line in log.read_text().splitlines()]
    ran = {name: worker for worker, name in lines}
    assert ran["a"] == ran["a2"], lines  # a file on one worker
    # The file of fewest tests went first (xdist's own order puts files of most tests first).
    assert [name for worker, name in lines if worker == ran["first"]][0] == "first", lines
    assert not set(Path(tempfile.gettempdir()).glob("lmbench-pytest-*")) - before  # the controller removed its own

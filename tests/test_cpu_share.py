"""The test runner's own CPU sharing (tests/cpu_share.py): shares, the `alone` gate, the last worker's widening."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from cpu_share import FIRST, LAST, MARK, Workers, share, start_order


def test_each_worker_gets_an_equal_contiguous_share_or_all_when_cpus_are_fewer():
    assert [share([0, 1], i, 2) for i in range(2)] == [[0], [1]]
    parts = [share(range(16), i, 3) for i in range(3)]
    assert parts == [list(range(0, 5)), list(range(5, 10)), list(range(10, 16))]
    assert share([3, 1], 0, 1) == [1, 3] and share([0, 1], 2, 3) == [0, 1]


def _pair(tmp_path):
    binds: dict[int, list[list[int]]] = {0: [], 1: []}
    workers = [Workers(i, 2, tmp_path / "run", [0, 1], bind=lambda cpus, i=i: binds[i].append(list(cpus)))
               for i in range(2)]
    return workers, binds


def _start(target) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_an_alone_test_waits_for_the_others_test_and_holds_back_their_next(tmp_path):
    (a, b), binds = _pair(tmp_path)
    order: list[str] = []

    def alone() -> None:
        with b.running(alone=True):
            order.append("alone in")
            time.sleep(0.3)
            order.append("alone out")

    def next_test() -> None:
        with a.running(alone=False):
            order.append("a's next")

    with a.running(alone=False):
        waiting = _start(alone)
        time.sleep(0.3)
        assert order == []  # a's test still runs: the alone test waits for it
        order.append("a's test done")
    time.sleep(0.1)  # the alone test holds the turnstile now
    follower = _start(next_test)
    waiting.join(5)
    follower.join(5)
    assert order == ["a's test done", "alone in", "alone out", "a's next"]
    assert binds[1] == [[0, 1], [1]]  # the whole machine for the alone test, then its own CPU again
    assert binds[0] == []


def test_two_shared_tests_run_side_by_side(tmp_path):
    (a, b), _ = _pair(tmp_path)
    entered = threading.Event()

    def enter() -> None:
        with b.running(alone=False):
            entered.set()

    with a.running(alone=False):
        _start(enter)
        assert entered.wait(2)  # b's test ran while a's did


def test_the_last_worker_takes_the_whole_machine_and_removes_the_folder(tmp_path):
    (a, b), binds = _pair(tmp_path)
    assert not b.finished(0) and not b.finished(1)
    with b.running(alone=False):
        pass
    assert binds[1] == []  # a still runs
    a.close()
    assert b.finished(0) and (tmp_path / "run").is_dir()
    with b.running(alone=False):
        pass
    assert binds[1] == [[0, 1]] and b.whole
    b.close()
    assert not (tmp_path / "run").exists()


def test_a_worker_not_started_yet_is_not_finished(tmp_path):
    alone = Workers(1, 2, tmp_path / "run", [0, 1], bind=lambda cpus: None)
    assert not alone.finished(0)
    with alone.running(alone=False):
        pass
    assert not alone.whole
    alone.close()
    assert (tmp_path / "run").is_dir()  # the other worker may still come


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

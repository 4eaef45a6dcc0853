"""Host contention: other processes' CPU time over a window, from /proc/stat and os.times()."""

import multiprocessing
import time

import pytest

from lmbench.measure import hostload


def test_other_cores_sums_a_hosts_ranks_and_takes_the_worst_host():
    spans = [{"host": "a", "busy_s": 4.0, "own_s": 1.0, "wall_s": 2.0},
             {"host": "a", "busy_s": 3.9, "own_s": 1.0, "wall_s": 2.0},  # a sibling rank: its CPU is the job's own
             {"host": "b", "busy_s": 1.0, "own_s": 1.0, "wall_s": 2.0}, None]
    assert hostload.other_cores(spans) == pytest.approx((4.0 - 2.0) / 2.0)
    assert hostload.other_cores([None]) is None
    assert hostload.other_cores([{"host": "a", "busy_s": 0.5, "own_s": 1.0, "wall_s": 1.0}]) == 0.0


def test_contention_is_flagged_from_half_a_core_and_a_quarter_of_the_host():
    assert hostload.contended(0.5, 2) and not hostload.contended(0.4, 2)
    assert not hostload.contended(3.9, 16) and hostload.contended(4.0, 16)
    assert hostload.contention_note({"host_other_cpu_cores": 1.23, "host_usable_cores": 2}) == (
        "contended: other processes used 1.2 of 2 cores")
    assert hostload.contention_note({"host_other_cpu_cores": None}) is None
    assert hostload.contention_warning(1.0, 2).startswith("other processes kept 1.0 of 2 CPU cores busy")


def test_a_window_too_short_for_the_ticks_is_not_called_contended():
    """An idle 2-core machine: a 60 ms window of a tiny model read 0.5 other cores, two 10 ms ticks of rounding at
    the window's edges. Below ten ticks of other processes' CPU time (more on many CPUs) nothing is flagged."""
    assert hostload.tick_noise_s(2) == pytest.approx(0.1) and hostload.tick_noise_s(64) == pytest.approx(0.32)
    assert not hostload.contended(0.5, 2, 0.06) and hostload.contended(0.5, 2, 0.2)
    assert not hostload.window_contended({"host_other_cpu_cores": 1.0, "host_usable_cores": 2, "window_s": 0.09})
    assert hostload.window_contended({"host_other_cpu_cores": 1.0, "host_usable_cores": 2, "window_s": 0.1})
    # A record from before its window was kept in the check: the fraction alone, as before.
    assert hostload.window_contended({"host_other_cpu_cores": 1.0, "host_usable_cores": 2})
    assert hostload.contention_warning(0.5, 2, 0.06) is None


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_a_busy_neighbour_is_seen_and_our_own_work_is_not():
    load = hostload.HostLoad()
    load.start()
    _spin(0.4)  # our own CPU time: not contention
    own = load.stop()
    assert own["own_s"] > 0.2 and own["wall_s"] >= 0.4
    assert own["own_s"] <= own["busy_s"] + 0.05  # the host's busy time includes ours (to a tick or two)
    load.start()
    neighbour = multiprocessing.get_context("spawn").Process(target=_spin, args=(1.0,))
    neighbour.start()
    time.sleep(1.0)
    span = load.stop()
    neighbour.join()
    # The neighbour kept about one core busy (spawn start-up included); other engineers' load only adds to it.
    assert hostload.other_cores([span]) > 0.5


def test_a_time_to_target_run_is_contended_when_its_run_to_the_target_was():
    """HostLoad watched the throughput window only, 0.10 s of a 0.99 s time to target on a CPU: other work in the
    rest of the ranked clock went unflagged (review 2026-11-27)."""
    quiet = {"host_other_cpu_cores": 0.0, "host_usable_cores": 2, "window_s": 0.1}
    assert not hostload.window_contended(quiet)
    busy_after = {**quiet, "host_other_cpu_cores_to_target": 1.0, "host_to_target_wall_s": 0.99}
    assert hostload.window_contended(busy_after)
    assert not hostload.window_contended({**busy_after, "host_other_cpu_cores_to_target": 0.1})
    assert hostload.contention_warning(1.0, 2, 0.99, span="the run to its target") == (
        "other processes kept 1.0 of 2 CPU cores busy during the run to its target: host contention may have slowed "
        "this configuration")

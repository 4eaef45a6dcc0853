"""Host contention: others' CPU time on the job's CPUs over a window, from /proc/stat and os.times()."""

import multiprocessing
import os
import time

import pytest

from lmbench.measure import hostload

HZ = os.sysconf("SC_CLK_TCK")


def _span(host, busy, own, wall=2.0, steal=None, host_cpus=None):
    return {"host": host, "busy_s": busy, "steal_s": steal or dict.fromkeys(busy, 0.0), "host_cpus": host_cpus,
            "own_s": own, "wall_s": wall}


def test_job_load_sums_a_hosts_ranks_and_takes_the_worst_host():
    spans = [_span("a", {"cpu0": 4.0}, 1.0),
             _span("a", {"cpu0": 3.9}, 1.0),  # a sibling rank on the same CPU: its CPU time is the job's own
             _span("b", {"cpu0": 1.0}, 1.0), None]
    load = hostload.job_load(spans)
    assert load.other_cores == pytest.approx((4.0 - 2.0) / 2.0) and load.usable_cores == 1
    assert hostload.job_load([None]) is None
    # Busy time a tick or two short of our own (the counters read to the tick): none, not less than none.
    assert hostload.job_load([_span("a", {"cpu0": 0.95}, 1.0, wall=1.0)]).other_cores == 0.0


def test_the_ranks_cpus_on_one_host_are_the_union_of_their_masks():
    """Two ranks pinned to 4 CPUs each count the 8 CPUs of the union: each CPU once (the larger reading of a CPU
    both saw), against 8 usable cores; a rank that fell back to the host-wide line sets the count for the host."""
    a = _span("a", {"cpu0": 2.0, "cpu1": 1.0, "cpu2": 0.0, "cpu3": 0.0}, own=2.0)
    b = _span("a", {"cpu3": 0.5, "cpu4": 2.0, "cpu5": 1.0, "cpu6": 0.0, "cpu7": 0.0}, own=2.0)
    load = hostload.job_load([a, b])
    assert load.usable_cores == 8
    assert load.other_cores == pytest.approx((2.0 + 1.0 + 0.5 + 2.0 + 1.0 - 4.0) / 2.0)
    whole = _span("a", {"cpu": 10.0}, own=1.0, host_cpus=64)
    load = hostload.job_load([a, whole])
    assert load.usable_cores == 64 and load.other_cores == pytest.approx((10.0 - 3.0) / 2.0)


def _stat(ticks_by_cpu: dict[int, tuple[float, float]], n_cpus: int = 64, per_cpu: bool = True) -> str:
    """/proc/stat's cpu lines from {cpu: (busy s, steal s)}: busy in user (steal apart), every CPU idle otherwise."""
    def line(name, busy, steal):
        return f"{name} {round((busy - steal) * HZ)} 0 0 {1000 * HZ} 0 0 0 {round(steal * HZ)} 0 0"

    cpus = [ticks_by_cpu.get(n, (0.0, 0.0)) for n in range(n_cpus)]
    lines = [line("cpu", sum(b for b, _ in cpus), sum(s for _, s in cpus))]
    if per_cpu:
        lines += [line(f"cpu{n}", busy, steal) for n, (busy, steal) in enumerate(cpus)]
    return "\n".join(lines + ["intr 1 0", "ctxt 5", ""])


@pytest.fixture
def fake_stat(tmp_path, monkeypatch):
    """A /proc/stat the test writes, and this process's CPU time and the clock as the test sets them."""
    path = tmp_path / "stat"
    now = {"own_s": 0.0, "wall_s": 100.0}
    monkeypatch.setattr(hostload, "_STAT", path)
    monkeypatch.setattr(hostload, "own_cpu_s", lambda: now["own_s"])
    monkeypatch.setattr(hostload.time, "perf_counter", lambda: now["wall_s"])

    def write(ticks_by_cpu, *, own_s, wall_s, **kw):
        path.write_text(_stat(ticks_by_cpu, **kw))
        now.update(own_s=own_s, wall_s=wall_s)
    return write


def test_other_jobs_on_cpus_outside_the_mask_are_not_contention(fake_stat):
    """A 64-CPU node, the job pinned to CPUs 0-7 (a cpuset): over a 10 s window it kept one core busy, another job
    kept 32 cores of CPUs 8-63 busy. The host-wide line read 32.0 'of 8' cores and the repeat was left out as
    contended; on the job's own CPUs nobody else ran."""
    fake_stat({}, own_s=0.0, wall_s=100.0)
    load = hostload.HostLoad(cpus=set(range(8)))
    load.start()
    elsewhere = {n: (320.0 / 56, 0.0) for n in range(8, 64)}
    fake_stat({0: (10.0, 0.0), **elsewhere}, own_s=10.0, wall_s=110.0)
    quiet = hostload.job_load([load.stop()])
    assert quiet.other_cores == pytest.approx(0.0, abs=0.01) and quiet.usable_cores == 8
    assert not hostload.contended(quiet.other_cores, quiet.usable_cores, 10.0)
    # Others on the job's own CPUs (5 s on each of CPUs 1-4: 2.0 cores, a quarter of 8) are contention.
    load.start()
    fake_stat({0: (20.0, 0.0), **{n: (5.0, 0.0) for n in range(1, 5)}, **elsewhere}, own_s=20.0, wall_s=120.0)
    busy = hostload.job_load([load.stop()])
    assert busy.other_cores == pytest.approx(2.0, abs=0.01) and busy.usable_cores == 8
    assert hostload.contended(busy.other_cores, busy.usable_cores, 10.0)


def test_without_per_cpu_lines_the_host_line_counts_with_the_hosts_cpus(fake_stat, monkeypatch):
    monkeypatch.setattr(hostload.os, "cpu_count", lambda: 64)
    fake_stat({}, own_s=0.0, wall_s=100.0, per_cpu=False)
    load = hostload.HostLoad(cpus={0, 1})
    load.start()
    fake_stat({0: (10.0, 0.0), 9: (30.0, 0.0)}, own_s=10.0, wall_s=110.0, per_cpu=False)
    span = load.stop()
    assert set(span["busy_s"]) == {"cpu"} and span["host_cpus"] == 64
    load_ = hostload.job_load([span])
    assert load_.other_cores == pytest.approx(3.0, abs=0.01) and load_.usable_cores == 64


def test_per_cpu_lines_that_do_not_name_the_mask_fall_back_to_the_host_line(fake_stat):
    """lxcfs shows a container pinned to host CPUs 8-11 as cpu0-cpu3 (its host line sums them): the mask's numbers
    are not there, so the host line counts, with the 4 CPUs it has lines for."""
    fake_stat({}, own_s=0.0, wall_s=100.0, n_cpus=4)
    load = hostload.HostLoad(cpus={8, 9, 10, 11})
    load.start()
    fake_stat({0: (10.0, 0.0), 1: (5.0, 0.0)}, own_s=10.0, wall_s=110.0, n_cpus=4)
    load_ = hostload.job_load([load.stop()])
    assert load_.usable_cores == 4 and load_.other_cores == pytest.approx(0.5, abs=0.01)


def test_a_paused_span_is_left_out(fake_stat):
    """The watch pauses with the step timer (a held-out evaluation): neither its wall time nor others' CPU time
    during it count; a reviewer found the span covered the evaluations and telemetry's set-up while contended()
    divided by the window's wall time without them."""
    fake_stat({}, own_s=0.0, wall_s=100.0, n_cpus=2)
    load = hostload.HostLoad(cpus={0, 1})
    with load.window():
        fake_stat({0: (1.0, 0.0)}, own_s=1.0, wall_s=101.0, n_cpus=2)
        with load.paused():
            fake_stat({0: (6.0, 0.0), 1: (5.0, 0.0)}, own_s=6.0, wall_s=106.0, n_cpus=2)  # 5 s: a busy neighbour
        fake_stat({0: (7.0, 0.0), 1: (5.5, 0.0)}, own_s=7.0, wall_s=107.0, n_cpus=2)
    assert load.span["wall_s"] == pytest.approx(2.0) and load.span["own_s"] == pytest.approx(2.0)
    assert hostload.job_load([load.span]).other_cores == pytest.approx(0.25, abs=0.01)


def test_steal_is_counted_and_named_as_the_hypervisors(fake_stat):
    """In a virtual machine the hypervisor's steal is busy time the job could not use: it counts, and the warning
    names the hypervisor where it is a large part of the figure."""
    fake_stat({}, own_s=0.0, wall_s=100.0, n_cpus=4)
    load = hostload.HostLoad(cpus={0, 1, 2, 3})
    load.start()
    fake_stat({0: (10.0, 1.0), 1: (10.0, 5.0), 2: (5.0, 0.0)}, own_s=10.0, wall_s=110.0, n_cpus=4)
    load_ = hostload.job_load([load.stop()])
    assert load_.other_cores == pytest.approx(1.5, abs=0.01) and load_.steal_cores == pytest.approx(0.6, abs=0.01)
    assert hostload.contention_warning(load_.other_cores, 4, 10.0, steal_cores=load_.steal_cores) == (
        "other processes kept 1.5 of 4 CPU cores busy during the window, 0.6 of them the hypervisor's (steal): host "
        "contention may have slowed this configuration")
    assert hostload.contention_warning(1.5, 4, 10.0, steal_cores=0.3) == (
        "other processes kept 1.5 of 4 CPU cores busy during the window: host contention may have slowed this "
        "configuration")
    # A CPU run's threads past the cores left: the slowdown can be far more than the share taken (a new user).
    assert hostload.contention_warning(1.0, 2, 10.0, cpu_threads=2).endswith(
        "; its 2 torch threads outnumbered the 1 core(s) left, and threads that wait on each other can slow a CPU step "
        "far more than the share taken (OMP_NUM_THREADS=1 keeps within them)")
    assert hostload.contention_warning(1.0, 4, 10.0, cpu_threads=2).endswith("slowed this configuration")
    assert hostload.contention_note({"host_other_cpu_cores": 1.5, "host_usable_cores": 4,
                                     "host_steal_cpu_cores": 1.0}) == (
        "contended: other processes used 1.5 of 4 cores, 1.0 of them the hypervisor's (steal)")


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
    assert own["own_s"] <= sum(own["busy_s"].values()) + 0.05  # our CPUs' busy time includes ours (to a tick or two)
    load.start()
    neighbour = multiprocessing.get_context("spawn").Process(target=_spin, args=(1.0,))
    neighbour.start()
    time.sleep(1.0)
    span = load.stop()
    neighbour.join()
    # The neighbour kept about one core busy (spawn start-up included); other engineers' load only adds to it.
    assert hostload.job_load([span]).other_cores > 0.5


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


def test_the_workers_watch_spans_its_timed_window_and_counts_the_jobs_cpus(monkeypatch):
    """The watch started before telemetry's set-up and the ranks' barrier and kept counting through evaluations,
    while contended() divided by window_s, which leaves them out: now it opens and pauses with the window."""
    from lmbench.plan.config import Config
    from lmbench.run.worker import measure

    watches = []

    class Watched(hostload.HostLoad):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            watches.append(self)

    monkeypatch.setattr(hostload, "HostLoad", Watched)
    record = measure(Config(model="tiny-gpt2", data="markov", batch_size=2, seq_len=16, warmup=1, steps=4,
                            device="cpu", telemetry=False, eval_every=1, eval_tokens=2048))
    m = record["metrics"]
    (watch,) = watches
    # The evaluations took longer than the window itself: a span that held them would be twice its length.
    assert m["eval_time_s"] > m["window_s"]
    assert m["window_s"] <= watch.span["wall_s"] <= m["window_s"] + 0.02
    assert m["host_usable_cores"] == len(os.sched_getaffinity(0))
    assert m["host_steal_cpu_cores"] is not None and m["host_steal_cpu_cores"] <= m["host_other_cpu_cores"]


def test_a_cpu_list_reads_as_the_kernel_writes_it():
    assert hostload.cpu_list("0-3,8,10-11\n") == {0, 1, 2, 3, 8, 10, 11}
    assert hostload.cpu_list("5") == {5} and hostload.cpu_list("") == set()


def test_the_process_cpus_are_the_union_of_its_threads_masks(tmp_path, monkeypatch):
    """OpenMP's binding pins each thread to a core of its own: the main thread's mask said 1 usable core of 2."""
    for task, cpus in (("100", "0"), ("101", "1,3-4"), ("102", "")):
        (tmp_path / task).mkdir()
        (tmp_path / task / "status").write_text(f"Name:\tpython\nCpus_allowed:\t1\nCpus_allowed_list:\t{cpus}\n")
    (tmp_path / "103").mkdir()  # a thread that ended before its status was read
    monkeypatch.setattr(hostload, "_TASKS", tmp_path)
    assert hostload.affinity() == {0, 1, 3, 4}
    monkeypatch.setattr(hostload, "_TASKS", tmp_path / "none")  # no /proc: the calling thread's mask
    assert hostload.affinity() == set(os.sched_getaffinity(0))


_BOUND = """
import os, threading
from lmbench.measure import environment, hostload
event = threading.Event()
worker = threading.Thread(target=event.wait)  # an intra-op thread, on the CPUs the main thread leaves
worker.start()
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # the main thread, bound as OMP_PROC_BIND binds it
print(len(os.sched_getaffinity(0)), len(hostload.affinity()), environment.usable_cores())
event.set()
"""


@pytest.mark.alone  # the machine's CPUs, not a pytest -n worker's share (tests/cpu_share.py)
def test_a_main_thread_bound_to_one_core_does_not_make_the_process_a_one_core_one():
    import subprocess
    import sys

    if len(getattr(os, "sched_getaffinity", lambda pid: ())(0)) < 2:
        pytest.skip("needs 2 CPUs")

    out = subprocess.run([sys.executable, "-c", _BOUND], capture_output=True, text=True, check=True).stdout
    cpus = len(os.sched_getaffinity(0))
    assert out.split() == ["1", str(cpus), str(cpus)]


def test_counters_that_do_not_advance_are_unknown_not_a_quiet_host(fake_stat):
    """gVisor's /proc/stat is all zeros: the job's own second of CPU time against 0 s busy read as a confident 0.0
    other cores (review 98)."""
    fake_stat({}, own_s=0.0, wall_s=100.0, n_cpus=2)
    load = hostload.HostLoad(cpus={0, 1})
    load.start()
    fake_stat({}, own_s=1.0, wall_s=101.0, n_cpus=2)
    span = load.stop()
    unknown = hostload.job_load([span, _span("b", {"cpu0": 4.0}, 1.0)])  # a host that could tell is no worst
    assert (unknown.other_cores, unknown.steal_cores, unknown.usable_cores) == (None, None, 2)
    assert unknown.unknown == ("/proc/stat's busy time of the job's CPUs (0.00 s) fell short of the job's own CPU "
                               "time (1.00 s) over 1.00 s: its counters do not advance here (a sandbox such as gVisor "
                               "exports zeros), so other processes' CPU time is unknown")
    assert hostload.contention_warning(unknown.other_cores, unknown.usable_cores, 1.0) is None


def test_a_real_proc_stat_that_is_frozen_reads_as_unknown(tmp_path, monkeypatch):
    """The review's check: /proc/stat as gVisor exports it (zeros) and this process busy for 0.3 s."""
    zeros = tmp_path / "stat"
    zeros.write_text("cpu  0 0 0 0 0 0 0 0 0 0\n" + "".join(f"cpu{n} 0 0 0 0 0 0 0 0 0 0\n"
                                                        for n in range(os.cpu_count())) + "intr 0\nctxt 0\n")
    monkeypatch.setattr(hostload, "_STAT", zeros)
    load = hostload.HostLoad()
    with load.window():
        until = hostload.own_cpu_s() + 0.3  # CPU time, however busy the machine running the test
        while hostload.own_cpu_s() < until:
            pass
    assert hostload.job_load([load.span]).other_cores is None


def test_a_record_says_why_its_host_load_is_unknown(tmp_path, monkeypatch):
    """A frozen /proc/stat made the figures null with no word in the record: a reader saw nothing wrong."""
    from lmbench.plan.config import Config
    from lmbench.run.worker import measure

    zeros = tmp_path / "stat"
    zeros.write_text("cpu  0 0 0 0 0 0 0 0 0 0\n" + "".join(f"cpu{n} 0 0 0 0 0 0 0 0 0 0\n"
                                                          for n in range(os.cpu_count())) + "intr 0\nctxt 0\n")
    monkeypatch.setattr(hostload, "_STAT", zeros)
    monkeypatch.setattr(hostload, "tick_noise_s", lambda usable: 0.0)  # a short window's own CPU time is enough
    payload = measure(Config(model="tiny-gpt2", batch_size=2, seq_len=16, steps=20, warmup=1, device="cpu",
                             telemetry=False))
    assert payload["status"] == "ok" and payload["metrics"]["host_other_cpu_cores"] is None
    (warning,) = [w for w in payload["warnings"] if w.startswith("host load over the window: ")]
    assert "its counters do not advance here" in warning

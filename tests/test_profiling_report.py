"""The report's reading of a profiled record: shares of the window's step, and what its note claims."""

import pytest

from lmbench.analyze.report import _profiler_note, held_back_by
from lmbench.measure.breakdown import corrected, window_shares

# A profiled GPU step 30% slower than the window's (65 ms against 50 ms).
SLOWED = {"step_time_median_s": 0.050, "profile_step_time_s": 0.065, "profile_step_time_median_s": 0.065,
          "profile_device": "cuda", "time_frac_optimizer": 0.0, "time_frac_data": 0.0, "time_frac_attention": 0.05,
          "time_frac_matmul": 0.35, "time_frac_other": 0.25, "time_frac_communication": 0.0, "time_frac_idle": 0.35}


def test_a_replayed_cuda_graphs_shares_are_corrected_as_the_note_says():
    """With cuda_graph=true the worker leaves the optimizer's share out (None: its kernels are in matmul and other);
    window_shares then returned the profiled shares while corrected(), and so the note and "held back most by",
    said they were the window's (a reviewer). Each busy share times 65/50, idle the rest."""
    graphed = {**SLOWED, "time_frac_optimizer": None,
               "profile_note": "a replayed CUDA graph: the optimizer's kernels are counted in matmul and other"}
    assert corrected(graphed)
    shares = window_shares(graphed)
    assert shares == pytest.approx({"optimizer": None, "data": 0.0, "attention": 0.065, "matmul": 0.455,
                                    "other": 0.325, "communication": 0.0, "idle": 0.155})
    assert held_back_by(graphed) == "other kernels 32% (matmul + attention 52%; idle less the profiler's slowdown)"
    note = _profiler_note(graphed)
    assert "30% slower under the profiler (its host cost): shares of the window's median step" in note


def test_a_record_without_a_breakdown_is_not_corrected():
    assert not corrected({k: v for k, v in SLOWED.items() if k != "time_frac_idle"})


def test_a_slowdown_on_a_contended_host_is_not_blamed_on_the_profiler():
    """A reviewer's amp-bf16 CPU run was 17x slower under the profiler, and the note blamed the profiler: other
    processes had the host. The host's load over the profiled steps says so, on a CPU and a GPU alike."""
    cpu = {**SLOWED, "profile_device": "cpu", "profile_step_time_median_s": 0.9, "host_usable_cores": 2,
           "profile_host_other_cpu_cores": 1.3, "profile_wall_s": 4.0}
    assert _profiler_note(cpu) == ("1700% slower under the profiler, on a contended host (other processes kept 1.3 "
                                   "of 2 cores busy during the profiled steps): not the profiler's slowdown alone; "
                                   "the shares are as profiled")
    assert _profiler_note({**SLOWED, **{k: cpu[k] for k in cpu if k.startswith(("host", "profile_host", "profile_w"))}}
                          ).startswith("30% slower under the profiler (on a contended host: other processes kept 1.3 "
                                       "of 2 cores busy): shares of the window's median step")
    # Quiet, or busy for less time than the ticks can tell (0.07 s of others' CPU in 0.05 s): the profiler's.
    for quiet in ({**cpu, "profile_host_other_cpu_cores": 0.2}, {**cpu, "profile_wall_s": 0.05}):
        assert _profiler_note(quiet).startswith("1700% slower under the profiler, which on a CPU slows the ops")
    # Not slower, yet contended: said all the same.
    assert _profiler_note({**cpu, "profile_step_time_median_s": 0.05}) == (
        "a contended host: other processes kept 1.3 of 2 cores busy during the profiled steps")

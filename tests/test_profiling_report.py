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

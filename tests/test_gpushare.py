"""Other processes on a measured GPU: a count only where NVML's list can tell (review 98)."""

import os

import pytest
from fake_nvml import FakeGpu
from test_telemetry import A, busy, telemetry_for

from lmbench.measure import gpushare

UNKNOWN = {"gpu_other_processes": None, "gpu_other_pids": None}


@pytest.fixture(autouse=True)
def same_namespace(monkeypatch):
    """Where lmbench sees NVML's pids as its own (no container's PID namespace), unless a test says otherwise."""
    monkeypatch.setattr(gpushare, "nested_namespace", lambda: False)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)


def test_an_empty_process_list_is_nvml_not_seeing_processes_not_none_there():
    """This process held a context through the window: an empty list read max(0, -1) = 0 'no other process'."""
    assert gpushare.fields([[], []]) == UNKNOWN
    assert gpushare.others([], own=5, parent=1) == (None, None)
    # An edge that saw nothing is left out; the other edge's list counts.
    assert gpushare.fields([[], [os.getpid()]]) == {"gpu_other_processes": 0, "gpu_other_pids": []}


def test_an_empty_list_from_the_fake_nvml_is_unknown():
    t = telemetry_for(FakeGpu(A, "00000000:65:00.0", energy_mj=[1_000, 2_000], compute_pids=[]))
    with t.window():
        busy(0.02)
    summary = t.summary(tokens=100)
    assert summary["gpu_other_processes"] is None and gpushare.sharing_warning(summary) is None


def test_host_pids_under_torchrun_are_no_count_of_other_jobs(monkeypatch):
    """NVML's pids of another PID namespace: this process is one of them under another number, and under torchrun
    so may its sibling ranks be (three ranks' contexts on the card counted as 2 other processes)."""
    assert gpushare.others([101, 102, 103], own=5, parent=1, torchrun=True) == (None, None)
    assert gpushare.others([101], own=5, parent=1, torchrun=True) == (0, None)  # the one listed is this process
    assert gpushare.others([101, 102, 103], own=5, parent=1, torchrun=False) == (2, None)  # one process: counted
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    assert gpushare.fields([[101, 102, 103], [101, 102, 103]]) == UNKNOWN
    t = telemetry_for(FakeGpu(A, "00000000:65:00.0", energy_mj=[1_000, 2_000], compute_pids=[4_000_001, 4_000_002]))
    with t.window():
        busy(0.02)
    assert t.summary(tokens=100)["gpu_other_processes"] is None

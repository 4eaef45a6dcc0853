"""Where the time goes: real profiled CPU runs against their traces, and hand-written traces by hand."""

import gzip
import json

import pytest
import torch

from lmbench.measure.breakdown import breakdown, load
from lmbench.plan.config import Config
from lmbench.run.profiling import profile_steps
from lmbench.run.training import TrainingStep


def _covered(spans, within):
    """Microseconds of `within` (disjoint ranges) that the union of `spans` covers."""
    total = 0.0
    for start, end in within:
        edge = start
        for a, b in sorted((max(a, start), min(b, end)) for a, b in spans):
            if b > max(a, edge):
                total += b - max(a, edge)
                edge = b
    return total


def by_hand(events):
    """A CPU trace's optimizer and idle shares, computed apart from the breakdown's sweep: the optimizer (first in
    priority) is the union of its ranges within the steps, idle what the union of the main thread's ops and ranges
    leaves uncovered."""
    steps = [(e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name", "").startswith("ProfilerStep#")]
    main = next(e["tid"] for e in events if e.get("name", "").startswith("ProfilerStep#"))
    ranges = [e for e in events if e.get("ph") == "X" and e.get("tid") == main and "dur" in e
              and e.get("cat") in ("cpu_op", "user_annotation") and not e["name"].startswith("ProfilerStep#")]
    whole = sum(b - a for a, b in steps)
    optimizer = [(e["ts"], e["ts"] + e["dur"]) for e in ranges if e["name"].startswith("Optimizer.")]
    busy = [(e["ts"], e["ts"] + e["dur"]) for e in ranges]
    return {"step_time_s": whole / len(steps) / 1e6, "optimizer": _covered(optimizer, steps) / whole,
            "idle": 1 - _covered(busy, steps) / whole}


def test_a_profiled_cpu_run_breaks_down_as_its_trace_says(tmp_path):
    step = TrainingStep(Config(model="tiny-gpt2", batch_size=2, seq_len=32, device="cpu"), torch.device("cpu"))
    step()
    trace = tmp_path / "trace.json.gz"
    found = profile_steps(step, torch.device("cpu"), trace)
    # The trace is gzipped Chrome-trace JSON, as Perfetto opens it.
    with gzip.open(trace, "rt") as f:
        events = json.load(f)["traceEvents"]
    assert found["device"] == "cpu" and found["steps"] == 3
    expected = by_hand(events)
    assert found["step_time_s"] == pytest.approx(expected["step_time_s"])
    assert found["fractions"]["optimizer"] == pytest.approx(expected["optimizer"], abs=1e-9)
    assert found["fractions"]["idle"] == pytest.approx(expected["idle"], abs=1e-9)
    assert found["fractions"]["matmul"] > 0.01 and found["fractions"]["optimizer"] > 0.01
    assert found["fractions"]["communication"] == 0 and found["communication_overlap"] is None
    names = [k["name"] for k in found["top_kernels"]]
    assert len(names) == 10 and "aten::mm" in names
    # The host's load over the profiled steps (all five: the schedule's warmup and the three recorded).
    assert found["host_load"]["wall_s"] > 0.9 * found["step_time_s"] * found["steps"]


def X(name, ts, dur, cat, **args):
    return {"ph": "X", "name": name, "ts": ts, "dur": dur, "cat": cat, "pid": 0, "tid": 1, "args": args}


def test_hand_made_cuda_trace_by_hand():
    """Step 1 spans from its first kernel (50 us) to step 2's (150 us): GEMM 20, flash 10, NCCL 30 of which 20
    overlap compute and 10 are exposed, optimizer 5, idle 55. Step 2, the last, is one 10 us elementwise kernel,
    then idle to the end of its host range at 200 us (it ended at its last kernel, and left those 40 us out)."""
    events = [
        X("ProfilerStep#1", 0, 100, "user_annotation"), X("ProfilerStep#2", 100, 100, "user_annotation"),
        X("Optimizer.step#AdamW.step", 25, 15, "user_annotation"),
        *(X("cudaLaunchKernel", ts, 1, "cuda_runtime", correlation=c) for c, ts in
          ((1, 10), (2, 20), (3, 30), (4, 110), (5, 15))),
        X("sm90_xmma_gemm_bf16bf16_bf16f32", 50, 20, "kernel", correlation=1),
        X("flash_fwd_kernel", 70, 10, "kernel", correlation=2),
        X("ncclDevKernel_AllReduce_Sum_bf16_RING_LL", 60, 30, "kernel", correlation=5),
        X("multi_tensor_apply_kernel", 95, 5, "kernel", correlation=3),
        X("vectorized_elementwise_kernel", 150, 10, "kernel", correlation=4),
    ]
    found = breakdown({"traceEvents": events})
    assert found["device"] == "cuda" and found["steps"] == 2
    assert found["step_time_s"] == pytest.approx(75e-6)
    assert found["step_time_median_s"] == pytest.approx(75e-6)  # of 100 and 50 us
    expected = {"matmul": 20, "attention": 10, "communication": 10, "optimizer": 5, "other": 10, "idle": 95, "data": 0}
    assert found["fractions"] == pytest.approx({k: v / 150 for k, v in expected.items()})
    assert found["communication_overlap"] == pytest.approx(2 / 3)
    assert found["top_kernels"][0] == {"name": "ncclDevKernel_AllReduce_Sum_bf16_RING_LL", "time_s": 15e-6,
                                       "calls": 0.5}


def test_the_device_side_copies_of_the_step_ranges_are_not_steps():
    """torch 2.11 on an H100 writes each ProfilerStep twice: the host's range (user_annotation) and the span of
    its kernels on the device's timeline (gpu_user_annotation), which lags the host. A launch at the top of the
    next host step fell inside the lagging device range and made it a step: three 184 ms fp32 steps read as
    five averaging 110 ms. Here each 200 us step launches a 2 us elementwise kernel, then a 184 us GEMM."""
    events = []
    for i in range(3):
        t = 200 * i
        events += [X(f"ProfilerStep#{i}", t, 190, "user_annotation"),
                   {**X(f"ProfilerStep#{i}", t + 4, 200, "gpu_user_annotation"), "tid": 7},
                   X("cudaLaunchKernel", t + 1, 1, "cuda_runtime", correlation=2 * i),
                   X("cudaLaunchKernel", t + 5, 1, "cuda_runtime", correlation=2 * i + 1),
                   X("vectorized_elementwise_kernel", t + 4, 2, "kernel", correlation=2 * i),
                   X("sm90_xmma_gemm_f32f32", t + 20, 184, "kernel", correlation=2 * i + 1)]
    found = breakdown({"traceEvents": events})
    assert found["steps"] == 3
    assert found["step_time_s"] == pytest.approx(200e-6) and found["step_time_median_s"] == pytest.approx(200e-6)
    assert found["fractions"]["matmul"] == pytest.approx(184 / 200)
    assert found["fractions"]["other"] == pytest.approx(2 / 200)


def test_a_cpu_collective_on_gloos_own_thread_is_communication():
    """gloo runs DDP's allreduce on a thread of its own (`gloo:all_reduce`, a user annotation) while the main thread
    waits with no op open. One 100 us step: mm 0-40 on the main thread, the allreduce 30-80 on gloo's thread, then
    the optimizer 85-95. Communication is exposed from 40 to 80 (40 us) and overlaps the mm for 10 of its 50 us;
    idle is 80-85 and 95-100."""
    events = [X("ProfilerStep#1", 0, 100, "user_annotation"), X("aten::mm", 0, 40, "cpu_op"),
              {**X("gloo:all_reduce", 30, 50, "user_annotation"), "tid": 2},
              X("Optimizer.step#AdamW.step", 85, 10, "user_annotation"), X("aten::add_", 86, 8, "cpu_op")]
    found = breakdown({"traceEvents": events})
    expected = {"matmul": 40, "communication": 40, "optimizer": 10, "idle": 10, "attention": 0, "other": 0, "data": 0}
    assert found["fractions"] == pytest.approx({k: v / 100 for k, v in expected.items()})
    assert found["communication_overlap"] == pytest.approx(10 / 50)


def test_a_jobs_record_carries_the_first_ranks_breakdown_or_a_pipelines_busiest():
    """A pipeline's stages do different work (a reviewer's 2-stage tiny-gpt2 on a CPU: rank 0 idle 49%, rank 1 31%
    before communication was counted): the record carried rank 0's and did not say so. Its busiest rank, the one
    least idle or waiting on transfers, is the stage the others wait for."""
    from lmbench.run.profiling import reported_rank

    def shares(idle, communication):
        return {"fractions": {"idle": idle, "communication": communication}}

    stages = [shares(0.20, 0.40), shares(0.30, 0.20), shares(0.10, 0.45)]
    assert reported_rank(stages, pipeline=True) == 1
    assert reported_rank(stages, pipeline=False) == 0
    assert reported_rank([None, *stages], pipeline=False) == 1  # rank 0's trace could not be broken down
    assert reported_rank([None, None], pipeline=True) is None


def test_under_data_parallel_the_first_gpus_kernels_are_broken_down():
    """nn.DataParallel profiles several GPUs in one process, each kernel with its `device`: merged into one timeline,
    one GPU's work hid the other's idle (a reviewer). Each 100 us step runs a 50 us GEMM on GPU 0, then one on GPU 1:
    GPU 0's steps span 5-105, 105-205 and 205-255 (its last kernel; the host ran ahead), idle 50 of 100 in the first
    two. Merged, both GPUs read as never idle, with two GEMMs a step."""
    def on(device, name, ts, dur, correlation):
        return {**X(name, ts, dur, "kernel", correlation=correlation, device=device), "pid": device, "tid": 7}

    events = []
    for i in range(3):
        t = 100 * i
        events += [X(f"ProfilerStep#{i}", t, 40, "user_annotation"),
                   X("cudaLaunchKernel", t + 1, 1, "cuda_runtime", correlation=10 * i),
                   X("cudaLaunchKernel", t + 2, 1, "cuda_runtime", correlation=10 * i + 1),
                   on(0, "sm90_xmma_gemm_bf16", t + 5, 50, 10 * i),
                   on(1, "sm90_xmma_gemm_bf16", t + 55, 50, 10 * i + 1)]
    found = breakdown({"traceEvents": events})
    assert found["step_time_s"] == pytest.approx(250e-6 / 3)
    assert found["fractions"]["matmul"] == pytest.approx(150 / 250) and found["fractions"]["idle"] == pytest.approx(0.4)
    assert found["top_kernels"] == [{"name": "sm90_xmma_gemm_bf16", "time_s": pytest.approx(50e-6), "calls": 1.0}]


def test_on_a_cpu_the_first_category_open_wins_not_the_innermost_op():
    """docs/profiling.md said the innermost op's category wins; the sweep gives a slice to the first category by
    priority among the ops open in it (a reviewer). One 100 us step: aten::matmul 0-100 holds a copy 0-60 (other,
    innermost) and mm 60-100: all matmul. An SDPA op 100-150 of a second step holds a bmm: attention."""
    events = [X("ProfilerStep#1", 0, 100, "user_annotation"), X("aten::matmul", 0, 100, "cpu_op"),
              X("aten::contiguous", 0, 60, "cpu_op"), X("aten::copy_", 0, 60, "cpu_op"),
              X("aten::mm", 60, 40, "cpu_op"),
              X("ProfilerStep#2", 100, 100, "user_annotation"),
              X("aten::scaled_dot_product_attention", 100, 50, "cpu_op"), X("aten::bmm", 110, 30, "cpu_op")]
    found = breakdown({"traceEvents": events})
    assert found["fractions"] == pytest.approx({"matmul": 0.5, "attention": 0.25, "idle": 0.25, "optimizer": 0,
                                                "data": 0, "other": 0, "communication": 0})


def test_a_trace_without_steps_is_refused():
    with pytest.raises(ValueError, match="no ProfilerStep ranges"):
        breakdown({"traceEvents": [X("aten::mm", 0, 1, "cpu_op")]})


@pytest.mark.slow
def test_a_profiled_run_records_its_breakdown_trace_and_hfu(tmp_path):
    from click.testing import CliRunner

    from lmbench.analyze import results
    from lmbench.cli import cli

    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", "--suite", "smoke", "--device", "cpu", "--out", str(out), "--set",
                                      "model=tiny-gpt2", "--set", "precision=fp32", "--set", "profile=true",
                                      "--set", "checkpointing=none,full", "--set", "steps=3"])
    assert result.exit_code == 0, result.output
    records = {r["config"]["checkpointing"]: r for r in results.read(out).records}
    for mode, r in records.items():
        m = r["metrics"]
        assert r["status"] == "ok", r["reason"]
        assert m["time_frac_matmul"] > 0 and m["time_frac_optimizer"] > 0 and m["profile_steps"] == 3
        assert m["profile_rank"] == 0 and m.get("profile_note") is None  # one process: no rank to name
        assert m["profile_host_other_cpu_cores"] >= 0 and m["profile_wall_s"] > m["profile_step_time_s"] * 3
        trace = out / "traces" / f"{r['config_key']}-r0.json.gz"
        assert m["profile_trace"] == str(trace) and trace.exists()
        # The record carries its trace's shares.
        expected = by_hand(load(trace)["traceEvents"])
        assert m["profile_step_time_s"] == pytest.approx(expected["step_time_s"])
        assert m["time_frac_optimizer"] == pytest.approx(expected["optimizer"], abs=1e-9)
        assert m["time_frac_idle"] == pytest.approx(expected["idle"], abs=1e-9)
        # Warmup steps are their own distribution; HFU and MFU are both in every record (None without a peak).
        assert len(m["warmup_step_times_s"]) == r["config"]["warmup"] and m["warmup_first_step_s"] > 0
        assert "hfu" in m and "mfu" in m
    assert records["none"]["metrics"]["hardware_flops_per_token"] == records["none"]["metrics"]["flops_per_token"]
    assert records["full"]["metrics"]["hardware_flops_per_token"] > records["full"]["metrics"]["flops_per_token"]


def test_each_rank_writes_its_own_trace_name():
    from pathlib import Path

    from lmbench.run.worker import _rank_trace

    path = Path("/run/traces/KEY-r0.json.gz")
    assert _rank_trace(path, 0, 1) == path
    assert _rank_trace(path, 1, 2) == Path("/run/traces/KEY-r0-rank1.json.gz")


def test_a_gpu_trace_without_kernels_is_the_profilers_failure_not_a_cpu_breakdown():
    """CUPTI can collect nothing (a warm-up session before CUDA graphs did so on CUDA 13.0): the host ops of such a
    trace must not be broken down as if the steps had run on a CPU."""
    events = [X("ProfilerStep#1", 0, 100, "user_annotation"), X("aten::mm", 10, 50, "cpu_op")]
    assert breakdown({"traceEvents": events})["device"] == "cpu"
    with pytest.raises(ValueError, match="the profiler recorded no GPU kernel in the profiled steps"):
        breakdown({"traceEvents": events}, on_gpu=True)


def test_a_trace_that_cannot_be_broken_down_costs_the_breakdown_not_the_record(monkeypatch, tmp_path):
    from lmbench.run import profiling
    from lmbench.run.profiling import ProfileError
    from lmbench.run.worker import measure

    def kernel_less(trace, **kwargs):
        raise ValueError("the profiler recorded no GPU kernel in the profiled steps (CUPTI collected nothing)")

    monkeypatch.setattr(profiling, "breakdown", kernel_less)
    step = TrainingStep(Config(model="tiny-gpt2", batch_size=2, seq_len=16, device="cpu"), torch.device("cpu"))
    with pytest.raises(ProfileError, match=r"ValueError: the profiler recorded no GPU kernel .*; trace: .*t.json.gz"):
        profile_steps(step, torch.device("cpu"), tmp_path / "t.json.gz")
    payload = measure(Config(model="tiny-gpt2", batch_size=2, seq_len=16, steps=2, warmup=1, device="cpu",
                             telemetry=False, profile=True))
    assert payload["status"] == "ok" and payload["metrics"]["tokens_per_s"] > 0
    assert "time_frac_matmul" not in payload["metrics"]
    warning, = [w for w in payload["warnings"] if "broken down" in w]
    assert warning.startswith("the profiled steps' trace could not be broken down (ValueError: the profiler recorded "
                              "no GPU kernel") and warning.endswith("no breakdown; the window's figures stand")


@pytest.mark.parametrize("failing", ["start", "step", "stop"])
def test_a_profiler_that_fails_costs_the_breakdown_and_the_steps_still_run(monkeypatch, tmp_path, failing):
    """torch.profiler's own failure (Kineto, CUPTI) propagated out of measure(): the window's figures, taken before,
    were lost and the record was an error (a reviewer). The steps go on unprofiled, as every rank's must under
    torchrun, whose collectives pair up across ranks; the record keeps the window and says why it has no breakdown."""
    import torch.profiler

    from lmbench.run.profiling import ProfileError
    from lmbench.run.worker import measure

    calls = {"profiler": 0, "steps": 0}
    real = getattr(torch.profiler.profile, failing)

    def refuse(self, *args):
        calls["profiler"] += 1
        if failing == "stop":  # once stopped, or the profiler would stay on for the tests after this one
            real(self, *args)
        if failing != "step" or calls["profiler"] == 2:
            raise RuntimeError(f"Kineto: CUPTI_ERROR_NOT_INITIALIZED (simulated {failing} failure)")
        return real(self, *args)

    def counted():
        calls["steps"] += 1

    monkeypatch.setattr(torch.profiler.profile, failing, refuse)
    with pytest.raises(ProfileError, match=rf"^the profiler failed to {failing} \(RuntimeError: Kineto: CUPTI_"):
        profile_steps(counted, torch.device("cpu"), tmp_path / "t.json.gz")
    assert calls["steps"] == 5
    if failing != "start":
        return
    payload = measure(Config(model="tiny-gpt2", batch_size=2, seq_len=16, steps=2, warmup=1, device="cpu",
                             telemetry=False, profile=True))
    assert payload["status"] == "ok" and payload["metrics"]["tokens_per_s"] > 0
    assert "time_frac_idle" not in payload["metrics"]
    assert ("the profiler failed to start (RuntimeError: Kineto: CUPTI_ERROR_NOT_INITIALIZED (simulated start "
            "failure)): no breakdown; the window's figures stand") in payload["warnings"]


def test_a_profiled_step_that_fails_still_fails_the_record(monkeypatch):
    """Out of memory, a CUDA error, a collective: the steps under the profiler are steps like any other."""
    from lmbench.run import worker

    calls = []
    real = TrainingStep.__call__

    def failing_after_the_window(self):
        calls.append(1)
        if len(calls) > 3:  # warmup 1 + 2 measured steps, then the profiled ones
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(self)

    monkeypatch.setattr(TrainingStep, "__call__", failing_after_the_window)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        worker.measure(Config(model="tiny-gpt2", batch_size=2, seq_len=16, steps=2, warmup=1, device="cpu",
                              telemetry=False, profile=True))


def test_breakdowns_of_graph_replays_are_flagged_where_cupti_may_time_them_wrongly(monkeypatch):
    """pytorch/kineto#1165: CUPTI before CUDA 13.1 Update 1 mistimes kernels replayed from CUDA graphs; torch names
    only its CUDA's minor release, so anything before 13.2 is flagged (the H100 runs were CUDA 13.0)."""
    import torch

    from lmbench.run.worker import graph_timing_suspect

    for cuda, suspect in (("13.0", True), ("12.8", True), ("13.1", True), ("13.2", False), (None, False)):
        monkeypatch.setattr(torch.version, "cuda", cuda)
        assert graph_timing_suspect() is suspect, cuda


def test_kernels_are_put_in_their_category_by_name():
    from lmbench.measure.breakdown import _category

    for name in ("nvjet_tst_128x256_64x4_2x1_v_bz_coopA_TNT", "sm90_xmma_gemm_bf16bf16_bf16f32",
                 "triton_tem_fused_mm_t_3", "triton_tem_fused_addmm_0", "aten::mm"):
        assert _category(name) == "matmul", name
    assert _category("triton_per_fused_native_layer_norm_0") == "other"
    assert _category("ncclDevKernel_AllReduce_Sum_bf16_RING_LL") == "communication"
    assert _category("flash_fwd_kernel") == "attention"


def test_the_memory_cap_is_trainings_not_the_profilers(monkeypatch):
    """--max-memory was checked after the profiled steps, so the profiler's own buffers failed a row (`oom`) whose
    unprofiled twin, and tune's probes, fitted the cap: a profiled tune picked a smaller batch (review
    2026-11-28). The cap is checked before them."""
    from lmbench.run import profiling
    from lmbench.run.profiling import ProfileError
    from lmbench.run.worker import measure

    def hungry_profiler(step, device, trace):
        held = bytearray(400 * 2**20)  # every page written: resident
        raise ProfileError(f"held {len(held)} bytes")

    monkeypatch.setattr(profiling, "profile_steps", hungry_profiler)
    payload = measure(Config(model="tiny-gpt2", batch_size=2, seq_len=16, steps=2, warmup=1, device="cpu",
                             telemetry=False, profile=True, max_memory_bytes=200 * 2**20))
    assert payload["status"] == "ok", payload.get("reason")
    assert payload["metrics"]["mem_host_training_growth_bytes"] < 200 * 2**20

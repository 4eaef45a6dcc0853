"""Data parallelism: aggregation by hand, and real 2-process DDP/FSDP runs over gloo through torchrun."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from lmbench.analyze import results
from lmbench.cli import cli
from lmbench.errors import UsageError
from lmbench.measure.telemetry import SUMMARY_FIELDS, combine
from lmbench.plan.config import Config
from lmbench.run.distributed import aggregate, mean_losses
from lmbench.run.launcher import Launch, worker_command
from lmbench.run.runner import scaling_efficiency, single_device_key


def off(reason="off: not a CUDA device"):
    return {**{k: None for k in SUMMARY_FIELDS}, "telemetry": reason}


def rank(times, *, mem, checksum, telemetry=None, trace=()):
    return {"step_times_s": times, "losses": [1.0] * len(times), "mem_peak_allocated_bytes": mem,
            "mem_peak_reserved_bytes": mem * 2, "telemetry": telemetry or off(), "power_trace": list(trace),
            "param_checksum": checksum}


def test_aggregate_uses_the_slowest_rank_and_global_tokens():
    per_rank = [rank([0.10, 0.30, 0.20], mem=100, checksum=1.5), rank([0.20, 0.10, 0.25], mem=300, checksum=1.5)]
    m = aggregate(per_rank, tokens_per_step=1000, samples_per_step=4, steps=3)
    # Steps end at 0.1, 0.4, 0.6 s on rank 0 and 0.2, 0.3, 0.55 s on rank 1: the last rank is done at 0.2, 0.4
    # and 0.6 s, so each global step takes 0.2 s (the slowest rank's own times, 0.2, 0.3, 0.25, would sum past
    # the 0.6 s the window lasted).
    assert m["step_time_median_s"] == pytest.approx(0.2)
    assert m["tokens_per_step"] == 2000
    assert m["tokens_per_s"] == pytest.approx(2000 / 0.2)
    assert m["tokens_per_s_per_device"] == pytest.approx(1000 / 0.2)
    assert m["samples_per_s"] == pytest.approx(8 / 0.2)
    assert m["mem_peak_allocated_bytes"] == 300 and m["mem_peak_allocated_bytes_per_rank"] == [100, 300]
    assert m["mem_peak_reserved_bytes_per_rank"] == [200, 600]
    assert m["world_size"] == 2 and m["params_in_sync"] is True
    assert m["step_time_median_s_per_rank"] == [pytest.approx(0.2), pytest.approx(0.2)]
    per_rank[1]["param_checksum"] = 1.6
    assert aggregate(per_rank, tokens_per_step=1, samples_per_step=1, steps=3)["params_in_sync"] is False


def test_a_rank_stalling_at_the_end_of_a_step_is_counted_once():
    """The review's reproducer: rank 1 sleeps 0.5 s at the end of step 2 of 5; rank 0 waits for it in step 3.
    The slowest rank's time of each step counted the stall twice (1.114 s of steps in a 0.601 s window)."""
    from lmbench.run.distributed import slowest_steps

    ranks = [{"step_times_s": [0.037, 0.010, 0.527, 0.012, 0.009]},
             {"step_times_s": [0.036, 0.527, 0.011, 0.012, 0.009]}]
    steps = slowest_steps(ranks)
    assert steps == pytest.approx([0.037, 0.526, 0.011, 0.012, 0.009])
    assert sum(steps) == pytest.approx(0.595)
    # The stall is one outlier step, where a fence can find it.
    assert sorted(steps)[-1] == pytest.approx(0.526) and sorted(steps)[-2] == pytest.approx(0.037)
    # One rank: its own times, exactly.
    assert slowest_steps(ranks[:1]) == ranks[0]["step_times_s"]


def test_sustained_throughput_uses_the_slowest_rank_window():
    per_rank = [{**rank([0.1, 0.1, 0.1], mem=1, checksum=1.0), "window_s": 0.5},
                {**rank([0.1, 0.1, 0.1], mem=1, checksum=1.0), "window_s": 0.6}]
    m = aggregate(per_rank, tokens_per_step=100, samples_per_step=1, steps=3)
    assert m["tokens_per_s"] == m["tokens_per_s_sustained"] == pytest.approx(2 * 100 * 3 / 0.6)
    assert m["tokens_per_s_typical"] == pytest.approx(200 / 0.1)
    assert m["stalls"] is True


def test_single_process_aggregate_is_its_own_measurement():
    m = aggregate([rank([0.1, 0.2, 0.3], mem=5, checksum=None)], tokens_per_step=10, samples_per_step=1, steps=3)
    assert m["step_time_median_s"] == pytest.approx(0.2) and m["world_size"] == 1
    assert "params_in_sync" not in m and "mem_peak_allocated_bytes_per_rank" not in m


def test_mean_losses_over_ranks():
    a, b = rank([0.1, 0.1], mem=1, checksum=0), rank([0.1, 0.1], mem=1, checksum=0)
    a["losses"], b["losses"] = [2.0, 4.0], [4.0, 0.0]
    assert mean_losses([a, b]) == [3.0, 2.0]


def test_energy_sums_over_ranks_and_power_sums_at_each_instant():
    def on(energy, pmax):
        return {**off(), "telemetry": "on", "energy_j": energy, "energy_source": "counter", "energy_integral_j": energy,
                "power_max_w": pmax, "throttle_reasons": ["sw_power_cap"] if pmax > 250 else [],
                "throttled_power_or_heat": pmax > 250, "telemetry_samples": 3, "telemetry_period_s": 0.05,
                "telemetry_window_s": 2.0, "power_limit_w": 700.0, "gpu_util_avg_pct": 90.0, "power_source": "instant"}

    traces = [[(0.0, 100.0), (1.0, 100.0), (2.0, 100.0)], [(0.0, 200.0), (2.0, 300.0)]]
    m = combine([on(200.0, 100.0), on(500.0, 300.0)], traces, tokens=1000)
    assert m["energy_j"] == 700.0 and m["j_per_token"] == 0.7
    # summed at t=0,1,2: 300, 350, 400 -> trapezoid 325 + 375 = 700 J over 2 s; the largest is the inside sample's
    # sum, 350 W: t=0 and t=2 are the window's edges, each interpolated towards a reading outside it
    assert m["power_avg_w"] == pytest.approx(350.0)
    assert m["power_max_w"] == 350.0
    assert m["power_limit_w"] == 1400.0
    assert m["throttle_reasons"] == ["sw_power_cap"] and m["throttled_power_or_heat"] is True
    half_off = combine([on(1.0, 1.0), off("off: NVML failed")], traces, tokens=1)
    assert half_off["telemetry"] == "off: NVML failed (rank 1)" and half_off["energy_j"] is None


def test_scaling_efficiency_against_the_single_device_run():
    ddp = Config(parallel="ddp", nproc=2, bucket_cap_mb=50)
    assert single_device_key(ddp) == Config(parallel="none", nproc=1).key
    record = {"status": "ok", "config": {"device": "cuda"}, "metrics": {"tokens_per_s": 300.0, "devices": 2}}
    baseline = [{"tokens_per_s": v} for v in (100.0, 200.0, 150.0)]
    assert scaling_efficiency(record, baseline) == {"scaling_efficiency": pytest.approx(300 / (2 * 150)),
                                                   "scaling_baseline_tokens_per_s": 150.0,
                                                   "scaling_baseline_repeats": 3}
    assert scaling_efficiency(record, [])["scaling_efficiency"] is None
    # A baseline repeat whose host was busy with other work is left out while quiet ones exist.
    busy = [{"tokens_per_s": 20.0, "host_other_cpu_cores": 1.3, "host_usable_cores": 2}]
    assert scaling_efficiency(record, baseline[:2] + busy)["scaling_baseline_tokens_per_s"] == 150.0
    assert scaling_efficiency(record, busy)["scaling_baseline_tokens_per_s"] == 20.0
    # A CPU's processes share its cores: no independent devices, no efficiency.
    assert scaling_efficiency({**record, "config": {"device": "cpu"}}, baseline)["scaling_efficiency"] is None


def test_torchrun_command_single_and_multi_node(tmp_path):
    ddp = Config(parallel="ddp", nproc=4)
    cmd = worker_command(ddp, tmp_path / "j", tmp_path / "r", Launch())
    assert cmd[1:8] == ["-m", "torch.distributed.run", "--nproc-per-node", "4", "--max-restarts", "0", "--standalone"]
    assert cmd[-4:] == ["-m", "lmbench.run.worker", str(tmp_path / "j"), str(tmp_path / "r")]
    multi = worker_command(ddp, tmp_path / "j", tmp_path / "r",
                           Launch(nnodes=2, node_rank=1, rdzv_endpoint="node0:29500"))
    assert multi[7:15] == ["--nnodes", "2", "--node-rank", "1", "--master-addr", "node0", "--master-port", "29500"]
    assert worker_command(Config(), tmp_path / "j", tmp_path / "r", Launch())[1:3] == ["-m", "lmbench.run.worker"]
    follower = Launch(nnodes=2, node_rank=1, rdzv_endpoint="h:1")
    assert not follower.records and follower.runs(ddp) and not follower.runs(Config())
    with pytest.raises(UsageError, match=r"^--nnodes 2 needs --rdzv-endpoint HOST:PORT"):
        Launch(nnodes=2)
    with pytest.raises(UsageError, match=r"--node-rank 2: must be in 0..1"):
        Launch(nnodes=2, node_rank=2, rdzv_endpoint="h:1")


def test_multi_node_options_are_checked_by_the_cli():
    result = CliRunner().invoke(cli, ["run", "--suite", "parallel", "--nnodes", "2", "--dry-run"])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("lmbench: error: --nnodes 2 needs --rdzv-endpoint HOST:PORT, node 0's address "
                                     "and a free port")


@pytest.mark.slow
def test_real_ddp_and_fsdp_over_gloo_keep_ranks_in_sync(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "run", "--suite", "smoke", "--out", str(out), "--device", "cpu", "--set", "model=tiny-gpt2",
        "--set", "precision=fp32", "--set", "parallel=none,dp,ddp,fsdp", "--set", "nproc=2",
        "--set", "grad_accum=2", "--set", "steps=4", "--set", "bucket_cap_mb=1"])
    assert result.exit_code == 0, result.output
    by = {r["config"]["parallel"]: r for r in results.read(out).records}
    assert by["dp"]["status"] == "skipped" and by["dp"]["reason"] == "parallel=dp (nn.DataParallel) needs CUDA GPUs"
    none = by["none"]["metrics"]
    for name in ("ddp", "fsdp"):
        r = by[name]
        assert r["status"] == "ok", (name, r["reason"])
        m = r["metrics"]
        assert r["config"]["nproc"] == 2
        assert m["world_size"] == 2 and m["devices"] == 2 and m["parallel_backend"] == "gloo"
        assert m["nnodes"] == 1 and m["nproc_per_node"] == 2
        if name == "ddp":
            # Ranks train on different batches; only gradient averaging keeps them identical.
            assert m["params_in_sync"] is True
            assert len(set(m["param_checksum_per_rank"])) == 1
            assert m["param_checksum_per_rank"][0] != m["param_checksum_initial"]
        else:
            # FSDP shards every parameter: nothing is whole on two ranks, so no check that could fail.
            assert "params_in_sync" not in m and m["param_checksum_initial"] is None
        tokens = 2 * 4 * 64 * 2  # world x batch x seq x accum
        assert m["tokens_per_step"] == tokens
        assert m["tokens_per_s_typical"] == pytest.approx(tokens / m["step_time_median_s"])
        assert m["tokens_per_s"] == pytest.approx(tokens * 4 / m["window_s"])
        # Each global step ends when the last rank has finished it: the steps fit in the window, each counted once.
        assert sum(r["step_times_s"]) <= m["window_s"] and len(m["step_time_median_s_per_rank"]) == 2
        # Warmup steps as the window's: the job's, not rank 0's, within the slowest rank's warmup.
        assert len(m["warmup_step_times_s"]) == r["config"]["warmup"]
        assert sum(m["warmup_step_times_s"]) <= m["warmup_s"]
        # Two processes share the CPU's cores that parallel=none used alone: no scaling efficiency on a CPU.
        assert m["scaling_efficiency"] is None and none["tokens_per_s"] > 0
        assert len(r["step_times_s"]) == 4 and len(r["losses"]) == 4
    # Two records of one job would mean a rank other than 0 wrote too.
    assert len(results.read(out).records) == 4


def _rank_process(marker: str, local_rank: int) -> int | None:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if "lmbench.run.worker" in cmdline and marker in cmdline and f"LOCAL_RANK={local_rank}".encode() in environ:
            return int(pid)
    return None


@pytest.mark.slow
def test_a_killed_rank_is_an_error_and_the_suite_goes_on(tmp_path):
    out = tmp_path / "run"
    # A long DDP job (killed mid-window), then a short single-device one that must still run.
    suite = tmp_path / "s.toml"
    suite.write_text("""
[defaults]
model = "tiny-gpt2"
batch_size = 2
seq_len = 32
timeout_s = 300
[matrix]
parallel = ["ddp", "none"]
steps = [100000, 3]
[[exclude]]
parallel = "ddp"
steps = 3
[[exclude]]
parallel = "none"
steps = 100000
""")
    cmd = [sys.executable, "-m", "lmbench.cli", "run", "--suite", str(suite), "--out", str(out), "--device", "cpu",
           "--set", "nproc=2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    victim = None
    while time.monotonic() < deadline and victim is None:
        victim = _rank_process(str(out), 1)
        time.sleep(0.2)
    assert victim is not None, "rank 1 never started"
    time.sleep(8)  # well into the (long) measured window
    os.kill(victim, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr
    by = {r["config"]["parallel"]: r for r in results.read(out).records}
    assert by["ddp"]["status"] == "error", by["ddp"]
    assert by["none"]["status"] == "ok"


def test_throughput_counts_one_batch_per_data_parallel_replica():
    # Two tensor-parallel ranks share one batch of 1000 tokens a step: 2000 tokens/s, 1000 per device.
    per_rank = [rank([0.5, 0.5], mem=1, checksum=1.5), rank([0.5, 0.5], mem=1, checksum=1.5)]
    for r in per_rank:
        r["window_s"] = 1.0
    m = aggregate(per_rank, tokens_per_step=1000, samples_per_step=4, steps=2, replicas=1, devices_per_replica=2)
    assert m["tokens_per_s"] == pytest.approx(2000)
    assert m["tokens_per_s_per_device"] == pytest.approx(1000)
    assert m["samples_per_s"] == pytest.approx(8)
    assert m["world_size"] == 2 and m["params_in_sync"] is True


def test_ranks_holding_different_stages_report_no_sync_verdict():
    per_rank = [rank([0.1], mem=1, checksum=None), rank([0.1], mem=1, checksum=None)]
    assert "params_in_sync" not in aggregate(per_rank, tokens_per_step=1, samples_per_step=1, steps=1)


def test_gather_keeps_its_tensors_and_the_step_past_the_group():
    """Rank results are gathered through byte tensors this module keeps for the life of the process, and finish()
    keeps the training step: tearing a gloo group down joins its run-loop threads holding the GIL, and a run-loop
    thread freeing the last reference to a tensor Python made needs the GIL (CI hung twice, torch 2.13: on
    all_gather_object's temporaries, then on DDP's reducer freeing the group when the model went out of scope)."""
    import torch
    import torch.distributed as dist

    from lmbench.run import distributed

    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    step = object()
    try:
        local = {"step_times_s": [0.1, 0.2], "name": "ünïcode", "nested": {"x": None}}
        assert distributed.gather(local) == [local]
        distributed.finish(step)
    finally:
        dist.destroy_process_group()
    tensors = [t for t in distributed._HELD if isinstance(t, torch.Tensor)]
    assert len(tensors) >= 4 and any(held is step for held in distributed._HELD)
    # Without a group (a single-process worker, a test calling measure()) nothing is kept.
    before = len(distributed._HELD)
    distributed.finish(object())
    assert len(distributed._HELD) == before


def test_a_rank_ends_with_os_exit_even_when_its_job_raises(monkeypatch, tmp_path):
    """Under torchrun a rank never returns into the interpreter's teardown (which could hang in gloo's), not
    even when writing its result fails: the traceback goes to its log and it exits 1."""
    from lmbench.run import worker

    ended = []
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(worker, "_end_rank", ended.append)

    def no_room(job, result):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(worker, "_run_job", no_room)
    worker.run_job(tmp_path / "job.json", tmp_path / "result.json")
    monkeypatch.setattr(worker, "_run_job", lambda job, result: 0)
    worker.run_job(tmp_path / "job.json", tmp_path / "result.json")
    assert ended == [1, 0]
    monkeypatch.delenv("RANK")
    assert worker.run_job(tmp_path / "job.json", tmp_path / "result.json") == 0 and ended == [1, 0]


DATA_PARALLEL_PARITY = """
name = "data-parallel-parity"
description = "ddp and fsdp against parallel=none on the global batch, over gloo"
[defaults]
precision = "fp32"
nproc = 2
batch_size = 2
seq_len = 32
grad_accum = 2
steps = 4
warmup = 1
lr = 1e-3
[matrix]
model = ["tiny-gpt2", "tiny-llama"]
parallel = ["ddp", "fsdp"]
"""


@pytest.mark.slow
def test_ddp_and_fsdp_train_as_one_device_does_on_the_global_batch(tmp_path):
    """Rank r trains on the r-th slice of the global batch, so gradient averaging (DDP's all-reduce, FSDP's
    reduce-scatter and sharded optimizer) must leave the losses of parallel=none on that whole batch."""
    suite = tmp_path / "dp.toml"
    suite.write_text(DATA_PARALLEL_PARITY)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", "--suite", str(suite), "--out", str(out), "--device", "cpu", "--parity"])
    assert result.exit_code == 0, result.output
    assert "data-parallel rows" in result.output  # their parity runs without dropout, and so do the references
    records = results.read(out).records
    references = [r for r in records if r["metrics"]["parity"] == "reference"]
    assert sorted((r["config"]["model"], r["config"]["parallel"], r["config"]["batch_size"]) for r in references) == [
        ("tiny-gpt2", "none", 4), ("tiny-llama", "none", 4)]
    for r in records:
        if r["config"]["parallel"] != "none":
            m = r["metrics"]
            assert r["status"] == "ok" and m["parity"] == "ok", (r["config_key"], r["reason"])
            assert m["parity_max_rel_dev"] < 1e-6, m["parity_max_rel_dev"]
            assert m.get("params_in_sync") is (True if r["config"]["parallel"] == "ddp" else None)


_HANG_RANK_1 = '''
import os

if os.environ.get("RANK") == "1" and os.environ.get("LOCAL_RANK"):
    import time

    import torch

    backward = torch.Tensor.backward

    def stuck(self, *args, **kwargs):
        """Rank 1 stops in its second backward (warmup's): rank 0 waits for its gradients."""
        stuck.calls += 1
        if stuck.calls == 2:
            while True:
                time.sleep(0.1)
        return backward(self, *args, **kwargs)

    stuck.calls = 0
    torch.Tensor.backward = stuck
'''


@pytest.mark.slow
def test_a_hung_rank_is_named_in_the_timeout_record(tmp_path):
    """Real torchrun, real DDP over gloo: rank 1 hangs, rank 0 waits for its gradients; the timeout row says which
    rank was where just before the deadline."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_HANG_RANK_1)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "lmbench.cli", "run", "--suite", "smoke", "--out", str(out), "--device", "cpu",
           "--set", "model=tiny-gpt2", "--set", "precision=fp32", "--set", "parallel=ddp", "--set", "nproc=2",
           "--set", "steps=3", "--set", "timeout_s=40"]
    done = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr
    record, = results.read(out).records
    assert record["status"] == "timeout", record
    reason = record["reason"]
    assert reason.startswith("no result within timeout_s=40 (worker killed); 3 s before it rank 0 in "), reason
    hung = reason.split("; rank 1 in ", 1)[1]
    assert hung.startswith("stuck (site/sitecustomize.py:") and "from lmbench/run/precision.py:" in hung, reason
    assert reason.endswith("(stacks in the log)")


def torchrun_summary(root: tuple[int, int], *others: tuple[int, int]) -> str:
    """torchrun's report of a failed job (as it printed one on 2026-11-27): each (rank, exit code), the root cause
    (its "first observed failure") last."""
    def entry(index: int, rank: int, code: int) -> str:
        return (f"[{index}]:\n  time      : 2026-11-27_23:56:54\n  host      : localhost\n"
                f"  rank      : {rank} (local_rank: {rank})\n  exitcode  : {code} (pid: {23128 + rank}) \n"
                "  error_file: <N/A>\n  traceback : To enable traceback see: https://pytorch.org/docs\n")
    failures = "".join(entry(i + 1, *other) for i, other in enumerate(others)) or "  <NO_OTHER_FAILURES>\n"
    return ("torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n" + "=" * 60 + "\n"
            "lmbench.run.worker FAILED\n" + "-" * 60 + "\nFailures:\n" + failures + "-" * 60 + "\n"
            "Root Cause (first observed failure):\n" + entry(0, *root) + "=" * 60 + "\n")


def test_a_rank_killed_by_a_signal_is_named_before_rank_0s_symptom():
    """A reviewer SIGKILLed rank 1 of a ddp job at step 5: the record read rank 0's `RuntimeError: ... Connection
    reset by peer` (no failure file: a killed rank writes none), while torchrun's summary named rank 1 and SIGKILL,
    as its root cause in one run and among its other failures in the next."""
    from lmbench.run.runner import killed_first

    symptom = "RuntimeError: [gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer"
    named = ("rank 1 was killed by SIGKILL (torchrun's summary; a SIGKILL comes from outside the job, most often from "
             "the host's out-of-memory killer); then: " + symptom)
    assert killed_first(symptom, "rank 0's log lines\n" + torchrun_summary((1, -9), (0, 1))) == named
    assert killed_first(symptom, torchrun_summary((0, 1), (1, -9))) == named
    assert killed_first(symptom, torchrun_summary((1, -11))).startswith(
        "rank 1 was killed by SIGSEGV (torchrun's summary); then:")
    # An exit code of a rank that left its failure file is a Python failure that file names; SIGTERM is torchrun
    # stopping the ranks left once one failed; no summary at all: nothing to add.
    assert killed_first(symptom, torchrun_summary((1, 1), (0, -15)), said={0, 1}) == symptom
    # A rank that exited below Python's exceptions (os._exit(7) at its third step, a reviewer) left no failure file:
    # it is named, not rank 0's connection reset; a signal goes before it.
    assert killed_first(symptom, torchrun_summary((0, 1), (1, 7)), said={0}) == (
        "rank 1 exited with code 7 and left no failure record (its log may say why; torchrun's summary); then: "
        + symptom)
    assert killed_first(symptom, torchrun_summary((2, 7), (1, -9)), said={0}).startswith("rank 1 was killed by SIGKILL")
    assert killed_first(symptom, "Traceback ...\n") == symptom
    # A reason that already names the rank (its failure file's) is left as it is.
    already = "rank 1 failed first: OutOfMemoryError: CUDA out of memory"
    assert killed_first(already, torchrun_summary((1, -9))) == already


_AGREE = """
import json, os, sys
import torch.distributed as dist
from lmbench.errors import JobMismatchError
from lmbench.run import distributed
dist.init_process_group("gloo")
rank = dist.get_rank()
said = []
for job in ("gpt2-b8-k", "gpt2-b8-k" if rank == 0 else "gpt2-b16-k"):
    try:
        distributed.agree_on(job)
        said.append("agreed")
    except JobMismatchError as err:
        said.append(str(err))
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
    json.dump(said, f)
dist.barrier()
os._exit(0)  # as the worker ends: a gloo group torn down at exit may abort (lmbench.run.distributed._HELD)
"""


def test_ranks_of_one_job_running_other_configurations_say_so(tmp_path):
    """Nodes out of step (one skipped a configuration another ran) joined each other's jobs on one endpoint: the
    group trained two configurations as one, under one key. Each rank's key is gathered first."""
    script = tmp_path / "agree.py"
    script.write_text(_AGREE)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), str(tmp_path)], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0[0] == rank1[0] == "agreed"
    assert rank0[1] == ("rank 1 of this torchrun job runs another configuration than gpt2-b8-k (the nodes are out of "
                        "step: one skipped a configuration another ran; give every node the same software and GPUs, "
                        "`lmbench env` on each)")
    assert rank1[1].startswith("rank 0 of this torchrun job runs another configuration than gpt2-b16-k")


@pytest.mark.parametrize(("replicas", "tokens"), [(None, 4000), (1, 2000)])
def test_energy_per_token_counts_every_replicas_tokens(replicas, tokens):
    """j_per_token over the whole job's tokens: two data-parallel ranks train twice a replica's tokens, a
    tensor-parallel pair one replica's (a mutation dropping `replicas` survived every test)."""
    def on(energy):
        return {**off(), "telemetry": "on", "energy_j": energy, "energy_source": "counter", "energy_integral_j": energy,
                "power_max_w": 300.0, "throttle_reasons": [], "throttled_power_or_heat": False,
                "telemetry_samples": 3, "telemetry_period_s": 0.05, "telemetry_window_s": 2.0, "power_limit_w": 700.0,
                "gpu_util_avg_pct": 90.0, "power_source": "instant"}

    per_rank = [rank([0.1, 0.1], mem=1, checksum=1.0, telemetry=on(200.0), trace=[(0.0, 100.0), (2.0, 100.0)]),
                rank([0.1, 0.1], mem=1, checksum=1.0, telemetry=on(500.0), trace=[(0.0, 250.0), (2.0, 250.0)])]
    m = aggregate(per_rank, tokens_per_step=1000, samples_per_step=4, steps=2, replicas=replicas)
    assert m["energy_j"] == 700.0 and m["j_per_token"] == pytest.approx(700 / tokens)

"""Real runs: worker processes, results.jsonl, statuses, resume. Small, but nothing mocked."""

import json
import math
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from lmbench.analyze import results
from lmbench.cli import cli
from lmbench.run.data import DRAW_VERSION

pytestmark = pytest.mark.slow

RECORD_KEYS = {"schema_version", "suite", "config_key", "repeat", "config", "status", "reason", "metrics", "losses",
               "step_times_s", "env", "warnings"}


def run_cli(*args: str):
    result = CliRunner().invoke(cli, ["run", *args])
    return result


DECOY_SAFE = sys.version_info >= (3, 11)  # PYTHONSAFEPATH (python -P) keeps the current directory off sys.path


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The smoke suite, run from a directory holding a decoy `lmbench` package (where the workers can ignore it):
    six workers that must not import it, for the decoy test, in the run the smoke tests need anyway."""
    out = tmp_path_factory.mktemp("smoke")
    here = tmp_path_factory.mktemp("cwd")
    if DECOY_SAFE:
        (here / "lmbench").mkdir()
        (here / "lmbench" / "__init__.py").write_text("raise ImportError('the decoy lmbench package was imported')\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(here)
        result = run_cli("--suite", "smoke", "--out", str(out), "--device", "cpu")
    assert result.exit_code == 0, result.output
    return out, result


def test_smoke_run_writes_one_complete_record_per_config(smoke_run):
    out, result = smoke_run
    loaded = results.read(out)
    assert loaded.warnings == []
    records = loaded.records
    assert len(records) == 6
    assert len({r["config_key"] for r in records}) == 6
    for r in records:
        assert set(r) == RECORD_KEYS
        assert r["status"] == "ok", r["reason"]
        assert r["suite"] == "smoke" and r["repeat"] == 0 and r["reason"] is None
        assert r["config"]["device"] == "cpu"
        m = r["metrics"]
        c = r["config"]
        assert len(r["step_times_s"]) == c["steps"] == m["steps_measured"] == len(r["losses"])
        tokens = c["batch_size"] * c["seq_len"] * c["grad_accum"]
        assert m["tokens_per_step"] == tokens
        # Headline: the window's tokens over its wall time; typical: one median step's.
        assert m["tokens_per_s"] == m["tokens_per_s_sustained"] == pytest.approx(tokens * c["steps"] / m["window_s"])
        assert m["tokens_per_s_typical"] == pytest.approx(tokens / m["step_time_median_s"])
        assert m["samples_per_s"] == pytest.approx(c["batch_size"] * c["grad_accum"] * c["steps"] / m["window_s"])
        assert m["stalls"] == (m["tokens_per_s_sustained"] < 0.95 * m["tokens_per_s_typical"])
        if c["steps"] >= 10:
            assert m["step_time_p10_s"] <= m["step_time_median_s"] <= m["step_time_p90_s"]
        else:  # no step beyond them: lmbench.measure.metrics.tail_percentile
            assert m["step_time_p10_s"] is None and m["step_time_p90_s"] is None
        # Warmup is excluded and the window is synchronised: the steps fit inside it.
        assert sum(r["step_times_s"]) <= m["window_s"] * 1.001
        # Start-up (interpreter, imports, model) and warmup are measured, to budget a suite's wall time.
        assert 0 < m["startup_s"] < c["timeout_s"] and 0 < m["warmup_s"] < c["timeout_s"]
        # Its phases, in order, inside the whole (the rest: the quality run's set-up, the first checksum).
        phases = [m["startup_imports_s"], m["startup_device_s"], m["startup_build_s"]]
        assert m["startup_imports_s"] > 0 and min(phases) >= 0 and sum(phases) <= m["startup_s"]
        assert m["flops_per_token"] > 0 and m["tflops"] > 0
        assert m["mfu"] is None  # no datasheet peak for a CPU
        assert all(math.isfinite(v) for v in r["losses"])
        assert r["env"]["torch"] and r["env"]["device"]["type"] == "cpu" and r["env"]["lmbench"]
        assert r["env"]["data_draw"] == DRAW_VERSION  # which tokens the seed drew: compare warns across draws
        assert (out / "logs" / f"{r['config_key']}-r0.log").exists()
        assert m["telemetry"] == "off: not a CUDA device" and m["energy_j"] is None and m["power_avg_w"] is None
        # Other engineers' or tests' processes may load the host: that warning is the machine's, not the run's.
        assert [w for w in r["warnings"] if not w.startswith("other processes kept")] == []
    assert "lmbench summary" in result.output and "tiny-torch-transformer-lm" in result.output
    assert list((out / "work").iterdir()) == []
    assert json.loads((out / "run.json").read_text())["suite"] == "smoke"


def test_process_age_counts_from_the_start_of_the_interpreter():
    code = "import time; time.sleep(0.5); from lmbench.run.worker import process_age_s; print(process_age_s())"
    age = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 0.5 <= age < 10


def test_the_worker_pauses_the_garbage_collector_for_its_imports_only(monkeypatch):
    """About 1 s of a worker's 7-8 s of imports was the cyclic collector walking the new modules' objects: main()
    pauses it, measure() resumes it once the model's family is imported, before anything is built or timed."""
    import gc

    from lmbench.plan.config import Config
    from lmbench.run import training, worker

    built_with_gc = []
    real = training.TrainingStep

    def recording(*args, **kwargs):
        built_with_gc.append(gc.isenabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "TrainingStep", recording)
    try:
        worker._pause_gc()
        assert not gc.isenabled()
        record = worker.measure(Config(model="tiny-torch-transformer-lm", batch_size=2, seq_len=16, steps=2, warmup=1,
                                       device="cpu", telemetry=False))
    finally:
        gc.enable()
    assert built_with_gc == [True] and record["status"] == "ok"


def test_amp_bf16_rows_differ_from_fp32_rows(smoke_run):
    out, _ = smoke_run
    records = results.read(out).records
    precisions = {(r["config"]["model"], r["config"]["precision"]) for r in records}
    assert ("tiny-gpt2", "amp-bf16") in precisions and ("tiny-llama", "amp-bf16") in precisions


def test_failures_become_rows_and_the_suite_goes_on(tmp_path):
    # Long enough in bytes for one sequence (the parent's check, a bound for bpe), 3 tokens once a BPE learnt it:
    # the worker finds it short.
    short = tmp_path / "short.txt"
    short.write_text("a" * 100)
    suite = tmp_path / "mixed.toml"
    suite.write_text(f"""
name = "mixed"
[defaults]
model = "tiny-gpt2"
batch_size = 2
seq_len = 32
steps = 3
warmup = 1
tokenizer = "bpe"
[matrix]
data = ["synthetic", "{short}"]
precision = ["fp32", "tf32"]
seed = [0, 1]
timeout_s = [120.0, 0.5]
# Keep: synthetic fp32 (ok), short file (error), tf32 (skipped on CPU), seed 1 with 0.5 s (timeout).
[[exclude]]
seed = 0
timeout_s = 0.5
[[exclude]]
seed = 1
timeout_s = 120.0
[[exclude]]
seed = 1
data = "{short}"
[[exclude]]
seed = 1
precision = "tf32"
[[exclude]]
precision = "tf32"
data = "{short}"
""")
    out = tmp_path / "run"
    result = run_cli("--suite", str(suite), "--out", str(out), "--device", "cpu")
    assert result.exit_code == 0, result.output
    by = {(r["config"]["data"], r["config"]["timeout_s"], r["config"]["precision"]): r
          for r in results.read(out).records}
    assert len(by) == 4
    assert by[("synthetic", 120.0, "fp32")]["status"] == "ok"
    error = by[(str(short), 120.0, "fp32")]
    assert error["status"] == "error"
    # The message says what was held out.
    assert error["reason"] == (f"DataError: data={str(short)!r} holds 3 tokens outside its held-out split "
                               "(val_frac=0.1), fewer than seq_len+1=33")
    assert error["env"]["torch"]  # the environment is known even when the config fails
    timeout = by[("synthetic", 0.5, "fp32")]
    assert timeout["status"] == "timeout" and "timeout_s=0.5" in timeout["reason"], timeout["reason"]
    skipped = by[("synthetic", 120.0, "tf32")]
    assert skipped["status"] == "skipped" and skipped["reason"].startswith("precision=tf32 needs a CUDA GPU")
    log = (out / "logs" / f"{error['config_key']}-r0.log").read_text()
    assert "Traceback" in log and "DataError" in log


def test_interrupted_run_keeps_records_and_resume_finishes_it(tmp_path):
    out = tmp_path / "run"
    # Two configurations are enough: the stop comes within 0.1 s of the first record, while the second worker is
    # still importing torch (seconds), so one record is kept and the resume runs the other (3 workers spent 1 more).
    cmd = [sys.executable, "-m", "lmbench.cli", "run", "--suite", "smoke", "--out", str(out), "--device", "cpu",
           "--set", "model=tiny-gpt2", "--set", "precision=fp32", "--set", "batch_size=1,2", "--set", "steps=3"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    results_file = out / "results.jsonl"
    while time.monotonic() < deadline:
        if results_file.exists() and results_file.read_text().count("\n") >= 1:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "--resume" in stderr
    kept = results.read(out).records
    assert 1 <= len(kept) < 2
    assert not any(p.name.endswith(".result.json") for p in (out / "work").iterdir())

    result = run_cli("--suite", "smoke", "--out", str(out), "--device", "cpu", "--set", "model=tiny-gpt2",
                     "--set", "precision=fp32", "--set", "batch_size=1,2", "--set", "steps=3", "--resume")
    assert result.exit_code == 0, result.output
    assert f"{len(kept)} record(s) kept" in result.stderr
    final = results.read(out).records
    assert sorted(r["config"]["batch_size"] for r in final) == [1, 2]
    assert final[: len(kept)] == kept


def test_repeats_are_separate_processes_and_records(tmp_path):
    out = tmp_path / "run"
    result = run_cli("--suite", "smoke", "--out", str(out), "--device", "cpu", "--set", "model=tiny-llama",
                     "--set", "precision=fp32", "--set", "steps=2", "--repeats", "2")
    assert result.exit_code == 0, result.output
    records = results.read(out).records
    assert [r["repeat"] for r in records] == [0, 1]
    assert records[0]["config_key"] == records[1]["config_key"]
    assert records[0]["env"]["timestamp"] <= records[1]["env"]["timestamp"]
    assert "lmbench summary" in result.output
    # The summary's row counts the repeats; read wide, since a note (a contended host on a busy CI machine) can
    # wrap the 200-column table the run prints and split the cell.
    from rich.console import Console

    from lmbench.analyze.table import summary

    console = Console(width=400, record=True)
    console.print(summary(records))
    assert "ok (2/2 ok)" in console.export_text()


def test_cuda_without_an_index_becomes_the_current_device(monkeypatch):
    """torch.cuda.set_device rejects a bare `cuda`; the worker spells the index out."""
    import torch

    from lmbench.plan.config import Config
    from lmbench.run.distributed import RankInfo
    from lmbench.run.worker import worker_device

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert worker_device(Config(device="cuda"), None) == torch.device("cuda", 3)
    assert worker_device(Config(device="cuda:1"), None) == torch.device("cuda", 1)
    rank = RankInfo(rank=5, local_rank=2, world_size=8, local_world_size=4)
    assert worker_device(Config(device="cuda"), rank) == torch.device("cuda", 2)
    assert worker_device(Config(device="cpu"), rank) == torch.device("cpu")


@pytest.mark.slow
@pytest.mark.skipif(not DECOY_SAFE, reason="PYTHONSAFEPATH (python -P) is Python 3.11+")
def test_workers_ignore_a_decoy_lmbench_package_in_the_current_directory(smoke_run):
    out, result = smoke_run
    assert result.exit_code == 0, result.output
    records = results.read(out).records
    assert records and all(record["status"] == "ok" for record in records), [r["reason"] for r in records]


def test_a_triton_row_run_in_the_interpreter_says_its_figures_are_no_speed(tmp_path):
    """Under TRITON_INTERPRET=1 (the tests set it) kernels=triton runs on a CPU: 26 tokens/s beside eager's 3,080,
    an `ok` row a new user read as a measurement."""
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", "--suite", "smoke", "--out", str(out), "--device", "cpu", "--set",
                                      "model=tiny-gpt2", "--set", "kernels=triton", "--set", "precision=fp32",
                                      "--set", "seq_len=16", "--set", "batch_size=2", "--set", "steps=1",
                                      "--set", "warmup=0"])
    # One interpreted step, not three (~2 s each here): the warning is the kernel set's under the interpreter,
    # whatever the steps.
    assert result.exit_code == 0, result.output
    record, = results.read(out).records
    assert record["status"] == "ok"
    assert ("kernels=triton ran in Triton's interpreter (TRITON_INTERPRET=1): it checks that the kernels work, and "
            "its figures are no speed") in record["warnings"]


def test_a_long_failure_reason_is_cut_with_an_ellipsis(tmp_path):
    """An out-of-memory message cut at 500 characters ended mid-URL, reading as whole."""
    deep = tmp_path / ("d" * 200) / ("e" * 200) / ("f" * 150)
    deep.mkdir(parents=True)
    (deep / "short.txt").write_text("a" * 100)  # 3 tokens once a BPE learnt it: a worker's DataError
    out = tmp_path / "run"
    result = run_cli("--suite", "smoke", "--out", str(out), "--device", "cpu", "--set", "model=tiny-gpt2", "--set",
                     "precision=fp32", "--set", "batch_size=2", "--set", "seq_len=32", "--set", "tokenizer=bpe",
                     "--set", f"data={deep / 'short.txt'}")
    assert result.exit_code == 0, result.output
    record, = results.read(out).records
    assert record["status"] == "error" and len(record["reason"]) == 500 and record["reason"].endswith("…")
    assert record["reason"].startswith("DataError: data=")

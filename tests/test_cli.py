import os

import pytest
from click.testing import CliRunner

from lmbench.cli import cli


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def one_line_error(result, exit_code: int = 2) -> str:
    assert result.exit_code == exit_code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize("command", [[]] + [[name] for name in sorted(cli.commands)])
def test_every_command_has_help(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0
    assert "Usage: lmbench" in result.output
    if command:
        assert "Example: lmbench" in result.output


def test_bare_lmbench_prints_its_help_not_an_error():
    """Click 8.2 made a group without a command an error: 'lmbench: error (lmbench): Usage: ...', exit 2."""
    result = invoke()
    assert result.exit_code == 0 and result.stderr == ""
    assert result.stdout.startswith("Usage: lmbench [OPTIONS] COMMAND [ARGS]...")


def test_usage_md_lists_every_option_as_the_cli_has_it():
    """docs/usage.md's option tables are the CLI's own (python tests/usage_reference.py rewrites them)."""
    from pathlib import Path

    import usage_reference

    text = (Path(__file__).resolve().parent.parent / "docs" / "usage.md").read_text(encoding="utf-8")
    assert usage_reference.section(text) == usage_reference.reference().strip("\n"), (
        "docs/usage.md's options are out of date: run python tests/usage_reference.py")
    for command in cli.commands.values():
        for param in command.params:
            for flag in getattr(param, "opts", []):
                assert not flag.startswith("--") or f"`{flag}" in usage_reference.section(text)


def test_unknown_suite():
    line = one_line_error(invoke("run", "--suite", "nope"))
    assert line.startswith("lmbench: error: unknown suite 'nope'; available: batch-sweep, ci, convergence, fp16, "
                           "fp8, kernels, memory")


def test_malformed_toml(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[matrix\nbatch_size = 1")
    line = one_line_error(invoke("run", "--suite", str(path), "--dry-run"))
    assert line.startswith(f"lmbench: error: {path}: malformed TOML: ")


def test_unknown_axis_value_in_file(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[matrix]\nprecision = ["fp32", "int4"]\n')
    line = one_line_error(invoke("run", "--suite", str(path), "--dry-run"))
    assert line == (f"lmbench: error: {path}: [matrix]: precision='int4' is not one of: "
                    "fp32, tf32, amp-fp16, amp-bf16, fp16, bf16, fp8-tensorwise, fp8-rowwise")


def test_batch_size_zero():
    line = one_line_error(invoke("run", "--suite", "smoke", "--set", "batch_size=0", "--dry-run"))
    assert line == "lmbench: error: --set 'batch_size=0': batch_size=0 must be a positive integer"


def test_unknown_set_key():
    line = one_line_error(invoke("run", "--suite", "smoke", "--set", "bs=4", "--dry-run"))
    assert line.startswith("lmbench: error: --set 'bs=4': unknown axis 'bs'; allowed: model, batch_size, seq_len")


def test_seq_len_beyond_positions():
    line = one_line_error(invoke("run", "--suite", "smoke", "--set", "seq_len=4096", "--dry-run"))
    assert line == ("lmbench: error: builtin:smoke with --set seq_len: seq_len=4096 exceeds the 256 positions of "
                    "model tiny-gpt2; allowed: 1..256")


def test_bad_click_option_is_one_line_too():
    line = one_line_error(invoke("run", "--suite", "smoke", "--device", "gpu"))
    assert line.startswith("lmbench: error (lmbench run): Invalid value for '--device': 'gpu' is not one of")
    line = one_line_error(invoke("run", "--suite", "smoke", "--repeats", "0"))
    assert "Invalid value for '--repeats'" in line
    line = one_line_error(invoke("frobnicate"))
    assert line.startswith("lmbench: error (lmbench): No such command 'frobnicate'. Available: calibrate, ceilings, ")
    # What is allowed, as every other error says it (a new user).
    line = one_line_error(invoke("run"))
    assert line.startswith("lmbench: error (lmbench run): Missing option '--suite'. Shipped suites: batch-sweep, ci, ")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere; a file in the way is tested instead")
def test_unwritable_out_permission(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    line = one_line_error(invoke("run", "--suite", "smoke", "--out", str(locked / "run")))
    assert line.startswith(f"lmbench: error: cannot write to --out '{locked / 'run'}'")


def test_unwritable_out_file_in_the_way(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    line = one_line_error(invoke("run", "--suite", "smoke", "--out", str(blocker / "run")))
    assert line == f"lmbench: error: cannot write to --out '{blocker / 'run'}': Not a directory"


def test_out_with_results_needs_resume(tmp_path):
    (tmp_path / "results.jsonl").write_text('{"config_key": "k", "repeat": 0, "status": "ok"}\n')
    line = one_line_error(invoke("run", "--suite", "smoke", "--out", str(tmp_path)))
    assert line == (f"lmbench: error: --out '{tmp_path}' already holds results; pass --resume to continue that "
                    "run, or choose another directory")
    line = one_line_error(invoke("run", "--suite", "smoke", "--resume"))
    assert line == "lmbench: error: --resume needs --out RUN_DIR, the run to continue"


def test_dry_run_prints_the_plan_with_skip_reasons():
    result = invoke("run", "--suite", "smoke", "--set", "precision=fp32,tf32", "--set", "model=tiny-gpt2",
                    "--dry-run", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "2 configurations" in result.output
    assert "tiny-gpt2-b4-s64-a1-fp32-none-eager-sdpa-ckpt-none-adamw-" in result.output
    assert "skip: precision=tf32 needs a CUDA GPU with TF32 tensor cores" in result.output


def test_dry_run_of_gpu_suites_on_cpu_marks_what_cannot_run():
    result = invoke("run", "--suite", "parallel", "--dry-run", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "skip: parallel=dp (nn.DataParallel) needs CUDA GPUs" in result.output


def test_list_shows_suites_with_sizes_and_models():
    result = invoke("list")
    assert result.exit_code == 0
    assert "smoke" in result.output and "fp16" in result.output and "12" in result.output
    assert "llama-1b" in result.output and "torch-transformer-lm" in result.output


def test_env_reports_versions_and_backends():
    result = invoke("env")
    assert result.exit_code == 0
    for key in ("torch", "triton", "transformers", "NVML", "apex", "liger-kernel"):
        assert any(line.startswith(key) for line in result.output.splitlines()), key


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and "lmbench, version" in result.output


def test_list_defaults_gives_every_axis_a_reason():
    result = invoke("list", "--defaults")
    assert result.exit_code == 0
    assert "optimizer" in result.output and "adamw-fused" in result.output and "fastest correct" in result.output


def test_profile_flag_is_the_profile_axis():
    plain = invoke("run", "--suite", "smoke", "--dry-run", "--device", "cpu", "--set", "model=tiny-gpt2")
    profiled = invoke("run", "--suite", "smoke", "--dry-run", "--device", "cpu", "--set", "model=tiny-gpt2",
                      "--profile")
    same = invoke("run", "--suite", "smoke", "--dry-run", "--device", "cpu", "--set", "model=tiny-gpt2",
                  "--set", "profile=true")
    assert plain.exit_code == profiled.exit_code == 0
    assert profiled.output == same.output != plain.output
    # The same configurations and keys (profiling leaves the window as it is), and the plan says they are profiled.
    assert profiled.output.replace("profiled: 2 of 2 configurations (torch.profiler steps after the window)\n",
                                   "") == plain.output


def test_report_ceilings_file_errors(tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text('{"bf16_matmul_tflops": 700}')
    (tmp_path / "run").mkdir()
    line = one_line_error(invoke("report", str(tmp_path / "run"), "--ceilings", str(bad)))
    assert line == (f"lmbench: error: --ceilings '{bad}': needs a positive number copy_gb_per_s (lmbench ceilings "
                    "--out writes it)")
    line = one_line_error(invoke("report", str(tmp_path / "run"), "--ceilings", str(tmp_path / "none.json")))
    assert line.endswith("no such file (write one with lmbench ceilings --out FILE on the GPU)")


def test_each_kind_of_warning_is_printed_once_then_counted():
    from types import SimpleNamespace

    from rich.console import Console
    from rich.progress import Progress, TextColumn

    from lmbench import cli as cli_module

    console = Console(record=True, width=200)
    job = SimpleNamespace(name="job", config=SimpleNamespace(key="k"))

    def record(*warnings):
        return {"status": "skipped", "warnings": list(warnings)}

    busy = "other processes kept {} of 2 CPU cores busy during the window: host contention may have slowed this"
    records = [(job, record(busy.format(1.2))), (job, record(busy.format(0.9), "clocks were throttled")),
               (job, record()), (job, record(busy.format(1.5)))]
    session: list = []
    with Progress(TextColumn("{task.description}"), console=console) as progress:
        task = progress.add_task("run", total=4, figure="")
        cli_module._follow(progress, task, records, session)
    text = console.export_text()
    assert text.count("host contention may have slowed") == 1 and text.count("clocks were throttled") == 1
    assert "warning: 2 more like the above" in text and len(session) == 4


def test_run_warns_of_a_variable_that_makes_the_measurement_something_else(monkeypatch):
    monkeypatch.setenv("TORCHDYNAMO_DISABLE", "1")
    result = invoke("run", "--suite", "smoke", "--device", "cpu", "--dry-run")
    assert result.exit_code == 0, result.output
    assert ("lmbench: warning: TORCHDYNAMO_DISABLE is set: torch.compile compiles nothing (kernels=compile and the "
            "compiled kernel sets run eager)") in result.stderr.splitlines()


def _lmbench_process(args: list[str], tmp_path, **kwargs):
    import subprocess
    import sys

    env = {**os.environ, "LMBENCH_LOG_DIR": str(tmp_path / "logs"), **kwargs.pop("env", {})}
    return subprocess.run([sys.executable, "-m", "lmbench.cli", *args], stderr=subprocess.PIPE, env=env, timeout=120,
                          **kwargs)


def test_a_closed_stdout_is_no_internal_error(tmp_path):
    """`lmbench list >&-`: Python starts with sys.stdout None, and the console asked it isatty() (exit 3; trial
    100). The output has nowhere to go, as click's own echo has it."""
    done = _lmbench_process(["list"], tmp_path, preexec_fn=lambda: os.close(1))
    assert (done.returncode, done.stderr.decode()) == (0, "")
    assert not (tmp_path / "logs").exists()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("unbuffered", ["1", ""], ids=["PYTHONUNBUFFERED", "buffered"])
@pytest.mark.parametrize("args", [["list"], []], ids=["list", "bare"])
def test_an_output_that_cannot_be_written_is_one_line_and_exit_2(tmp_path, unbuffered, args):
    """`lmbench compare A B > /dev/full` ended as an internal error (exit 3, OSError ENOSPC; trial 100): the user's
    output file is full, as a full disk is where lmbench saves its results (exit 2)."""
    with open("/dev/full", "w") as full:
        done = _lmbench_process(args, tmp_path, stdout=full, env={"PYTHONUNBUFFERED": unbuffered})
    assert (done.returncode, done.stderr.decode()) == (
        2, "lmbench: error: cannot write standard output: No space left on device\n")
    assert not (tmp_path / "logs").exists()


def test_an_error_elsewhere_is_not_blamed_on_stdout(tmp_path, monkeypatch):
    """Only a write of stdout that failed is the output's fault: another OSError of the same errno stays a bug."""
    import errno

    from lmbench.plan import suite

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setenv("LMBENCH_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setattr(suite, "builtin_names", full)
    line = one_line_error(invoke("list"), exit_code=3)
    assert line.startswith("lmbench: internal error: OSError: [Errno 28] No space left on device (traceback in ")

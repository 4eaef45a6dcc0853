"""Exit codes mean one thing each, for every command: 0 success, 1 regression (compare only), 2 bad input,
3 an unexpected internal error (one line naming it and the log file that holds the traceback)."""

import json

import pytest
from click.testing import CliRunner

from lmbench.cli import cli

#: Per command: arguments that are bad input, arguments that succeed, and (module, attribute) of a library
#: function the command calls, which the internal-error case makes raise.
CASES = {
    "list": (["extra"], [], ("lmbench.plan.suite", "builtin_names")),
    "env": (["--bogus"], [], ("lmbench.measure.environment", "describe")),
    "run": (["--suite", "nope"], None, ("lmbench.run.runner", "plan")),
    "report": (["{tmp}/nope"], None, ("lmbench.analyze.report", "build")),
    "compare": (["{tmp}/run", "{tmp}/run2", "--threshold", "x"], ["{tmp}/run", "{tmp}/run2"],
                ("lmbench.analyze.compare", "compare")),
    "calibrate": (["--suite", "smoke", "--repeats", "1"], None, ("lmbench.plan.suite", "load")),
    "tune": (["--model", "nope"], None, ("lmbench.tune", "Tuner")),
    "kernels": (["--op", "rmsnorm", "--shape", "12"], ["--op", "rmsnorm", "--shape", "64x64"],
                ("lmbench.measure.microbench", "parse_shape")),
    "ceilings": (["extra"], [], ("torch.cuda", "is_available")),
}
#: What the internal-error case runs: arguments that get as far as the broken function.
REACHES = {
    "list": [], "env": [], "run": ["--suite", "smoke", "--device", "cpu", "--out", "{tmp}/out"],
    "report": ["{tmp}/run"], "compare": ["{tmp}/run", "{tmp}/run2"], "calibrate": ["--suite", "smoke"],
    "tune": ["--model", "tiny-gpt2", "--device", "cpu", "--out", "{tmp}/tune", "--seq-len", "16", "--max-memory",
             "30MiB"],
    "kernels": ["--op", "rmsnorm", "--shape", "64x64"], "ceilings": [],
}


def test_every_command_is_covered():
    assert set(CASES) == set(cli.commands) == set(REACHES)


def _args(args, tmp_path):
    return [a.format(tmp=tmp_path) for a in args]


@pytest.fixture
def run_dir(tmp_path):
    record = {"schema_version": 1, "suite": "s", "config_key": "k", "repeat": 0, "config": {"model": "tiny-gpt2"},
              "status": "ok", "reason": None, "metrics": {"tokens_per_s": 100.0}, "env": {}}
    for name in ("run", "run2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.jsonl").write_text(json.dumps(record) + "\n")
    return tmp_path


@pytest.mark.parametrize("command", sorted(CASES))
def test_bad_input_exits_2_with_one_line(command, run_dir):
    result = CliRunner().invoke(cli, [command, *_args(CASES[command][0], run_dir)])
    assert result.exit_code == 2, result.output
    line, = result.stderr.strip().splitlines()
    assert line.startswith("lmbench: error") and "Traceback" not in result.output


@pytest.mark.parametrize("command", sorted(name for name, case in CASES.items() if case[1] is not None))
def test_success_exits_0(command, run_dir):
    result = CliRunner().invoke(cli, [command, *_args(CASES[command][1], run_dir)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("command", sorted(CASES))
def test_internal_error_exits_3_with_the_traceback_in_a_log(command, run_dir, monkeypatch):
    import importlib

    logs = run_dir / "logs"
    monkeypatch.setenv("LMBENCH_LOG_DIR", str(logs))
    module, name = CASES[command][2]

    def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(importlib.import_module(module), name, broken)
    result = CliRunner().invoke(cli, [command, *_args(REACHES[command], run_dir)])
    assert result.exit_code == 3, result.output
    log, = logs.iterdir()
    assert result.stderr.strip() == f"lmbench: internal error: RuntimeError: boom (traceback in {log})"
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "RuntimeError: boom" in text and "argv:" in text


def test_crash_log_falls_back_to_the_temporary_directory(tmp_path, monkeypatch):
    from lmbench import crash

    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("LMBENCH_LOG_DIR", str(blocker / "logs"))
    monkeypatch.setattr("tempfile.gettempdir", lambda: str(tmp_path / "tmp"))
    path = crash.write(ValueError("x"))
    assert path.parent == tmp_path / "tmp" and "ValueError: x" in path.read_text()

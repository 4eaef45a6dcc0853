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


# What click's own `main` would answer, were it let: a closed stdout as exit 1 (a regression's code), SIGTERM as
# SIGINT's 130, a bug's EOFError as an interrupt.

@pytest.mark.parametrize("args", [["list", "--defaults"], ["--version"], ["--help"], []])
def test_a_reader_gone_from_stdout_exits_141_quietly(args, tmp_path):
    """`lmbench list --defaults | head -c 10`: the way `cat` and `git log` end there (SIGPIPE), not a regression."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "LMBENCH_LOG_DIR": str(tmp_path / "logs")}
    proc = subprocess.Popen([sys.executable, "-m", "lmbench.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # before a byte is written: the first write finds no reader
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, stderr
    assert stderr == "" and not (tmp_path / "logs").exists()


@pytest.mark.parametrize(("sig", "code", "line"), [("SIGTERM", 143, "lmbench: stopped by SIGTERM"),
                                                   ("SIGINT", 130, "lmbench: interrupted")])
def test_a_signal_outside_runs_own_handler_exits_128_plus_its_number(sig, code, line, tmp_path, monkeypatch):
    """A signal while the run directory is opened (before run's handler of `Interrupted`): still which one it was."""
    import os
    import signal
    import time

    from lmbench.run import runner

    signum = getattr(signal, sig)

    def opening(*args, **kwargs):
        # The real signal, through interruptible()'s handler; never one that would end pytest itself.
        assert signal.getsignal(signum) not in (signal.SIG_DFL, signal.SIG_IGN, signal.default_int_handler)
        os.kill(os.getpid(), signum)
        for _ in range(100):
            time.sleep(0.05)
        raise AssertionError(f"{sig} did not stop the run")

    monkeypatch.setattr(runner, "RunDirectory", opening)
    result = CliRunner().invoke(cli, ["run", *_args(REACHES["run"], tmp_path)])
    assert result.exit_code == code, result.output
    assert result.stderr == line + "\n"  # no blank line before it (click's closing of a `^C` echo)


@pytest.mark.parametrize("error", [EOFError("truncated input"), BrokenPipeError(32, "Broken pipe")],
                         ids=["EOFError", "BrokenPipeError"])
def test_a_bugs_eof_or_broken_pipe_is_an_internal_error(error, tmp_path, monkeypatch):
    """lmbench reads no input: an EOFError is a bug, not an interrupt; a pipe that broke is not stdout's here."""
    logs = tmp_path / "logs"
    monkeypatch.setenv("LMBENCH_LOG_DIR", str(logs))

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr("lmbench.plan.suite.builtin_names", broken)
    result = CliRunner().invoke(cli, ["list"])
    assert result.exit_code == 3, result.output
    log, = logs.iterdir()
    assert result.stderr == f"lmbench: internal error: {type(error).__name__}: {error} (traceback in {log})\n"
    assert f"{type(error).__name__}: {error}" in log.read_text()

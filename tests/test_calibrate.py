"""`lmbench calibrate`: a metric no gate can use is refused before the runs it would waste, and a calibration that
measured no floor says so instead of writing an empty file (workers are tests/fake_worker.py)."""

from __future__ import annotations

import json
from pathlib import Path

import fake_worker
import pytest
from click.testing import CliRunner
from test_faults import TINY as FAULTS_SUITE

from lmbench.cli import cli
from lmbench.run import runner

#: test_faults' two-precision suite without its matrix: one configuration.
TINY = FAULTS_SUITE.split("[matrix]")[0]


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "worker_command", fake_worker.command)


def lmbench(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


def error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    line, = result.stderr.strip().splitlines()[-1:]
    assert line.startswith("lmbench: error: "), result.stderr
    return line.removeprefix("lmbench: error: ")


@pytest.mark.parametrize("metric", ["nosuch", "params"])
def test_a_metric_with_no_direction_is_refused_before_any_run(tmp_path, tiny, monkeypatch, metric):
    """A typo ran every configuration --runs times and wrote `"configs": {}` (exit 0); `params` wrote a 0.0% floor
    that compare then refused (trial 100)."""
    monkeypatch.setattr(runner, "worker_command", lambda *a, **k: pytest.fail("a worker was started"))
    out = tmp_path / "cal"
    assert error(lmbench("calibrate", "--suite", tiny, "--metric", metric, "--out", out, "--runs", "2")) == (
        f"--metric {metric!r}: not known whether more is better or worse; compare a rate (tokens_per_s, mfu, "
        "tokens_per_j) or a cost (a time _s, memory _bytes, energy _j, step_time_cv, val_loss)")
    assert not out.exists()


def test_a_metric_the_first_run_did_not_record_stops_the_calibration_there(tmp_path, tiny, fake):
    """`token_per_s` reads as a rate, but no record has it: one run is spent finding out, not five."""
    out = tmp_path / "cal"
    line = error(lmbench("calibrate", "--suite", tiny, "--metric", "token_per_s", "--out", out, "--runs", "3",
                         "--repeats", "2"))
    assert line == ("--metric 'token_per_s' is in no record of the 1 run(s) so far (e.g. tokens_per_s, "
                    "step_time_median_s); the other 2 run(s) were not started; the runs measured are kept: finish the "
                    "calibration with --resume and another --metric")
    assert (out / "a" / "results.jsonl").is_file() and not (out / "b").exists()
    assert not (out / "noise-floor.json").exists()
    # The fix the message names: the run kept, the rest measured, a floor of the metric given now.
    result = lmbench("calibrate", "--suite", tiny, "--out", out, "--runs", "3", "--repeats", "2", "--resume")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "noise-floor.json").read_text())["metric"] == "tokens_per_s"


def test_no_configuration_with_a_floor_writes_no_file_and_exits_2(tmp_path, tiny, fake, monkeypatch):
    monkeypatch.setenv("FAKE_WORKER_ERROR", "RuntimeError: fake")
    out = tmp_path / "cal"
    line = error(lmbench("calibrate", "--suite", tiny, "--out", out, "--runs", "2", "--repeats", "2"))
    assert line == (f"no configuration of {tiny} has a noise floor of tokens_per_s: one needs 2 or more ok repeats "
                    "with a positive tokens_per_s (the runs' records: 4 error); no noise-floor.json was written")
    assert not (out / "noise-floor.json").exists()


def test_a_floor_of_zero_advises_a_threshold_compare_takes(tmp_path, tiny, fake):
    """The fake workers measure the same figure every time: a floor of 0 advised `--threshold 0.0%`, which
    compare refuses (it takes thresholds above 0%)."""
    result = lmbench("calibrate", "--suite", tiny, "--out", tmp_path / "cal", "--runs", "2", "--repeats", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == (
        "the runs measured tokens_per_s alike every time (a floor of 0): any --threshold compare takes (above 0%) "
        "gates this suite; choose the smallest change that matters to you")

"""What `report` and `compare` say of a directory that holds no results file: an empty one, one whose results.jsonl
is a directory, a calibration (lmbench calibrate: runs a/, b/ and noise-floor.json)."""

import json

import pytest
from click.testing import CliRunner
from test_report import hand_record

from lmbench.analyze import results
from lmbench.cli import cli
from lmbench.errors import ResultsError


def _calibration(folder, *, floor=True):
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
        (folder / name / "results.jsonl").write_text(json.dumps(hand_record("fp32", 8, 1000.0)) + "\n")
    if floor:
        (folder / "noise-floor.json").write_text("{}")
    return folder


def _refusal(path):
    with pytest.raises(ResultsError) as refused:
        results.read(path)
    return str(refused.value)


def test_an_empty_directory_is_said_not_to_be_a_run_directory(tmp_path):
    # It said "no results file at 'X/results.jsonl'" and no more.
    assert _refusal(tmp_path) == (f"no results file at {str(tmp_path / 'results.jsonl')!r}: {str(tmp_path)!r} is not "
                                  "a run directory (one written by lmbench run or lmbench tune holds results.jsonl)")
    (tmp_path / "results.jsonl").mkdir()
    assert _refusal(tmp_path) == (f"no results file at {str(tmp_path / 'results.jsonl')!r}: it is a directory "
                                  "(lmbench run and tune write a file there)")


def test_a_calibration_points_at_its_runs_and_its_noise_floor(tmp_path):
    done = _calibration(tmp_path / "cal")
    assert _refusal(done) == (f"{str(done)!r} is a calibration written by lmbench calibrate, not a run: report or "
                              f"compare one of its runs ({done / 'a'}, {done / 'b'}); its noise floor "
                              f"{str(done / 'noise-floor.json')!r} is for lmbench compare --noise-floor")
    unfinished = _calibration(tmp_path / "half", floor=False)
    assert _refusal(unfinished).endswith(
        f"; it has no noise-floor.json yet (lmbench calibrate --suite SUITE --out {unfinished} --resume finishes it)")


def test_report_and_compare_say_so(tmp_path):
    cal = _calibration(tmp_path / "cal")
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.jsonl").write_text(json.dumps(hand_record("fp32", 8, 1000.0)) + "\n")
    for args in (["report", str(cal)], ["compare", str(cal), str(run)]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2
        assert result.stderr.startswith(f"lmbench: error: {str(cal)!r} is a calibration written by lmbench "
                                        "calibrate, not a run: report or compare one of its runs")

"""Speedup baselines (lmbench.analyze.baseline): a baseline on an axis that does not vary is refused, and numbers
on the command line match the numbers the records hold."""

import json

import pytest
from click.testing import CliRunner
from test_report import hand_record

from lmbench.analyze.baseline import canonical, check, matches
from lmbench.cli import cli
from lmbench.errors import UsageError


def test_a_baseline_on_an_axis_with_one_value_is_refused():
    # Every row was its own counterpart: a column of 1.00x that read as a measured tie.
    configs = [{"model": "m", "precision": "fp32", "batch_size": b} for b in (4, 8)]
    with pytest.raises(UsageError) as refused:
        check(("precision", "fp32"), configs)
    assert str(refused.value) == ("--baseline precision=fp32: precision has one value here (fp32), so every speedup "
                                  "would be 1.00x; give an axis that varies: batch_size")
    with pytest.raises(UsageError, match=r"lr has one value here \(0.0003\), so every speedup would be 1.00x; give an "
                                         r"axis that varies \(none does here\)$"):
        check(("lr", "3e-4"), [{"model": "m", "lr": 0.0003}])
    check(("batch_size", "4"), configs)  # an axis that varies stands


def test_numbers_on_the_command_line_match_as_numbers():
    assert matches(0.0003, "3e-4") and matches(120.0, "120") and matches(8, "8.0") and not matches(8, "eight")
    assert not matches(0.0003, "3e-3") and matches("fp32", "fp32") and not matches("fp32", "FP32")
    assert matches(True, "on") and not matches(True, "2")
    configs = [{"model": "m", "lr": lr, "timeout_s": t} for lr in (0.0003, 0.001) for t in (120.0, 60.0)]
    # lr=3e-4 was refused as "lr values present: 0.0003", timeout_s=120 as "timeout_s values present: 120.0".
    check(("lr", "3e-4"), configs)
    check(("timeout_s", "120"), configs)
    # The tables' heading and the plots (which compare values as text) get the value as the records hold it.
    assert canonical(("lr", "3e-4"), configs) == ("lr", "0.0003")
    assert canonical(("timeout_s", "120"), configs) == ("timeout_s", "120.0")
    assert canonical(("lr", "0.5"), configs) == ("lr", "0.5")
    assert canonical(None, configs) is None


def _run(folder, records):
    folder.mkdir()
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_the_report_refuses_a_one_valued_axis_and_reads_a_number_as_a_number(tmp_path):
    records = [hand_record("fp32", 8, 1000.0), hand_record("fp32", 16, 1500.0)]
    run = _run(tmp_path / "run", records)
    result = CliRunner().invoke(cli, ["report", str(run), "--out", str(tmp_path / "r"), "--baseline",
                                      "precision=fp32"])
    assert result.exit_code == 2
    assert result.stderr == ("lmbench: error: --baseline precision=fp32: precision has one value here (fp32), so "
                             "every speedup would be 1.00x; give an axis that varies: batch_size\n")
    result = CliRunner().invoke(cli, ["report", str(run), "--out", str(tmp_path / "r"), "--baseline",
                                      "batch_size=8.0"])
    assert result.exit_code == 0, result.output
    md = (tmp_path / "r" / "report.md").read_text()
    assert "speedup vs batch_size=8 |" in md and "| 1.50x |" in md

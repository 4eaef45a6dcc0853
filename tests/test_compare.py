"""Regression verdicts on hand-made samples, and the compare command's outputs and exit codes."""

import json

import pytest
from click.testing import CliRunner

from lmbench.cli import cli
from lmbench.compare import compare, decide, parse_threshold, ratio_interval
from lmbench.errors import UsageError
from lmbench.gate import junit_xml, noise_floor, render

TIGHT = [100.0, 100.4, 99.7, 100.2, 99.9]


def record(key, value, *, repeat=0, status="ok", suite="s", gpu="NVIDIA H100 80GB HBM3", metric="tokens_per_s"):
    return {"schema_version": 1, "suite": suite, "config_key": key, "repeat": repeat, "config": {"model": key},
            "status": status, "reason": None, "metrics": {metric: value} if status == "ok" else None,
            "env": {"device": {"name": gpu, "driver": "580"}, "torch": "2.11"}}


def run_of(values_by_key, **kw):
    return [record(k, v, repeat=i, **kw) for k, values in values_by_key.items() for i, v in enumerate(values)]


def test_ratio_of_medians_and_interval_contains_it():
    ratio, low, high = ratio_interval(TIGHT, [v * 0.9 for v in TIGHT])
    assert ratio == pytest.approx(0.9)
    assert low <= ratio <= high and high - low < 0.02
    # Fixed seed: the interval is reproducible.
    assert ratio_interval(TIGHT, [v * 0.9 for v in TIGHT]) == (ratio, low, high)


def test_planted_ten_percent_slowdown_is_a_regression():
    v = decide(TIGHT, [x * 0.9 for x in TIGHT], threshold=0.05, higher_is_better=True)
    assert v.verdict == "regression"
    faster = decide(TIGHT, [x * 1.1 for x in TIGHT], threshold=0.05, higher_is_better=True)
    assert faster.verdict == "improvement"


def test_lower_is_better_metrics_flip_the_direction():
    # Step time 10% longer is a regression; 10% shorter an improvement.
    assert decide(TIGHT, [x * 1.1 for x in TIGHT], threshold=0.05, higher_is_better=False).verdict == "regression"
    assert decide(TIGHT, [x * 0.9 for x in TIGHT], threshold=0.05, higher_is_better=False).verdict == "improvement"


def test_identical_distributions_are_unchanged():
    assert decide(TIGHT, list(TIGHT), threshold=0.05, higher_is_better=True).verdict == "unchanged"


def test_wide_noise_is_inconclusive_and_says_how_many_repeats():
    v = decide([80.0, 120.0, 100.0], [70.0, 125.0, 98.0], threshold=0.05, higher_is_better=True)
    assert v.verdict == "inconclusive"
    assert "repeats per side needed" in v.note


def test_missing_and_failed_configs():
    base = run_of({"a": TIGHT, "b": TIGHT}) + [record("c", None, status="oom")]
    cand = run_of({"a": TIGHT}) + [record("c", None, status="oom")]
    verdicts = {v.config_key: v for v in compare(base, cand)}
    assert verdicts["a"].verdict == "unchanged"
    assert verdicts["b"].verdict == "missing" and verdicts["b"].note == "not in the candidate run"
    assert verdicts["c"].verdict == "failed"


def test_thresholds_parse():
    assert parse_threshold("5%") == 0.05 and parse_threshold("0.1") == 0.1
    with pytest.raises(UsageError, match="expected a percentage"):
        parse_threshold("five")
    with pytest.raises(UsageError, match="between 0% and 100%"):
        parse_threshold("150%")


def test_renderings_and_junit():
    verdicts = compare(run_of({"a": TIGHT}), run_of({"a": [x * 0.9 for x in TIGHT]}))
    text = render(verdicts, fmt="text", metric="tokens_per_s", threshold=0.05)
    assert text.splitlines()[1].startswith("a       regression  0.900  -10.0%")
    md = render(verdicts, fmt="md", metric="tokens_per_s", threshold=0.05)
    assert "| a | regression | 0.900 | -10.0% |" in md
    data = json.loads(render(verdicts, fmt="json", metric="tokens_per_s", threshold=0.05))
    assert data["verdicts"][0]["verdict"] == "regression"
    xml = junit_xml(verdicts, metric="tokens_per_s")
    assert 'failures="1"' in xml and "<failure message=" in xml
    assert noise_floor(verdicts[0]) == pytest.approx(max(1 - verdicts[0].ci_low, verdicts[0].ci_high - 1))


def write_run(path, records, extra=""):
    path.mkdir(parents=True)
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + extra)
    return str(path)


def invoke(*args):
    return CliRunner().invoke(cli, ["compare", *args])


def test_compare_exit_codes(tmp_path):
    base = write_run(tmp_path / "base", run_of({"a": TIGHT}))
    slow = write_run(tmp_path / "slow", run_of({"a": [x * 0.9 for x in TIGHT]}))
    same = write_run(tmp_path / "same", run_of({"a": TIGHT}))
    result = invoke(base, slow, "--junit", str(tmp_path / "j.xml"))
    assert result.exit_code == 1 and "regression" in result.output
    assert (tmp_path / "j.xml").read_text().count("<testcase") == 1
    result = invoke(base, same, "--format", "md")
    assert result.exit_code == 0 and "| a | unchanged |" in result.output


def test_compare_bad_inputs_are_one_line_errors(tmp_path):
    base = write_run(tmp_path / "base", run_of({"a": TIGHT}))
    other_suite = write_run(tmp_path / "other", run_of({"a": TIGHT}, suite="t"))
    other_gpu = write_run(tmp_path / "gpu", run_of({"a": TIGHT}, gpu="NVIDIA A100-SXM4-80GB"))
    cases = [
        ((base, str(tmp_path / "nope")), f"lmbench: error: candidate run directory '{tmp_path / 'nope'}' does not exist"),
        ((base, other_suite), "lmbench: error: the runs are of different suites (s, t); compare runs of one suite"),
        ((base, other_gpu), "lmbench: error: the runs come from different GPUs (NVIDIA H100 80GB HBM3 vs "
                            "NVIDIA A100-SXM4-80GB); pass --allow-different-hardware to compare them anyway"),
        ((base, base, "--metric", "speed"), "lmbench: error: --metric 'speed' is in no record of either run "
                                            "(e.g. tokens_per_s, step_time_median_s)"),
        ((base, base, "--threshold", "x"), "lmbench: error: --threshold 'x': expected a percentage like 5% or a "
                                           "fraction like 0.05"),
    ]
    for args, line in cases:
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.strip() == line
    assert invoke(base, other_gpu, "--allow-different-hardware").exit_code == 0


def test_corrupt_line_is_reported_with_its_number_and_the_rest_loads(tmp_path):
    base = write_run(tmp_path / "base", run_of({"a": TIGHT}))
    cand = write_run(tmp_path / "cand", run_of({"a": TIGHT}), extra='{"config_key": "a", trunc\n')
    result = invoke(base, cand)
    assert result.exit_code == 0
    assert f"lmbench: warning: {tmp_path / 'cand' / 'results.jsonl'}:6: skipped corrupt line" in result.stderr
    assert "unchanged" in result.output


@pytest.mark.slow
def test_calibrate_runs_twice_and_prints_noise_floors(tmp_path):
    result = CliRunner().invoke(cli, ["calibrate", "--suite", "smoke", "--repeats", "2", "--out", str(tmp_path / "c"),
                                      "--device", "cpu", "--set", "model=tiny-llama", "--set", "precision=fp32",
                                      "--set", "steps=4"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "c" / "a" / "results.jsonl").exists() and (tmp_path / "c" / "b" / "results.jsonl").exists()
    assert "noise floor of smoke (2 repeats per run, tokens_per_s)" in result.output
    row = next(line for line in result.stdout.splitlines() if line.startswith("│ tiny-llama-b4"))
    assert row.rstrip(" │").endswith("%")
    assert "gate each configuration with --threshold at or above its noise floor" in result.output

"""Regression verdicts on hand-made samples, and the compare command's outputs and exit codes."""

import json
import math
import statistics

import pytest
from click.testing import CliRunner

from lmbench.analyze.compare import compare, decide, parse_threshold, ratio_interval, repeats_needed
from lmbench.analyze.gate import junit_xml, render
from lmbench.analyze.noise import ConfigNoise, NoiseFloor
from lmbench.cli import cli
from lmbench.errors import UsageError

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
    assert verdicts["c"].verdict == "failed" and not verdicts["c"].blocking
    assert verdicts["c"].note == ("no ok repeat in either run (baseline 1 oom, candidate 1 oom): it failed in the "
                                  "baseline too, so this does not fail the gate")
    (fixed,) = compare([record("c", None, status="oom")], run_of({"c": TIGHT}))
    assert (fixed.verdict, fixed.blocking) == ("failed", False)
    assert fixed.note == "no ok repeat in the baseline (1 oom): the candidate ran, so this does not fail the gate"
    # The gate blocks on what the candidate lacks, not on what the baseline never measured.
    assert [verdicts[k].blocking for k in "abc"] == [False, True, False]
    assert compare(base, cand, allow_missing=True)[1].blocking is False


def test_a_configuration_skipped_in_both_runs_is_skipped_not_failed():
    skipped = {**record("d", None, status="skipped"), "reason": "cuda_graph=true needs a CUDA GPU"}
    base, cand = run_of({"a": TIGHT}) + [skipped], run_of({"a": TIGHT}) + [skipped]
    verdict = {v.config_key: v for v in compare(base, cand)}["d"]
    assert (verdict.verdict, verdict.blocking) == ("skipped", False)
    assert verdict.note == "skipped in both runs: cuda_graph=true needs a CUDA GPU"
    assert '<skipped message="skipped: ' in junit_xml(compare(base, cand), metric="tokens_per_s")
    # Skipped in the candidate alone, after the baseline ran it: the candidate lost a configuration.
    lost = {v.config_key: v for v in compare(run_of({"a": TIGHT, "d": TIGHT}), cand)}["d"]
    assert (lost.verdict, lost.blocking) == ("failed", True)


def test_thresholds_parse():
    assert parse_threshold("5%") == 0.05 and parse_threshold("0.1") == 0.1
    with pytest.raises(UsageError, match="expected a percentage"):
        parse_threshold("five")
    with pytest.raises(UsageError, match="above 0% and below 100%"):
        parse_threshold("150%")
    with pytest.raises(UsageError, match=r"5 is read as 500%; write 5% or 0.05"):
        parse_threshold("5")


def test_renderings_and_junit():
    verdicts = compare(run_of({"a": TIGHT}), run_of({"a": [x * 0.9 for x in TIGHT]}))
    text = render(verdicts, fmt="text", metric="tokens_per_s", threshold=0.05)
    # What is compared, which way is better and at what threshold, then each side's median in the metric's unit
    # (the text said neither, a reviewer).
    assert text.splitlines()[:3] == [
        "lmbench compare: tokens_per_s (more is better), candidate ÷ baseline (median of repeats), threshold ±5%", "",
        "config  verdict     baseline tokens_per_s  candidate tokens_per_s  ratio  change  95% CI          "
        "repeats base/cand  parity  note"]
    assert text.splitlines()[3].startswith("a       regression  100                    90                      0.900  "
                                           "-10.0%  [0.")
    assert text.splitlines()[-1] == "gate: fails: 1 blocking (1 regression)"
    md = render(verdicts, fmt="md", metric="tokens_per_s", threshold=0.05)
    assert md.startswith("**lmbench compare**: tokens_per_s (more is better), candidate ÷ baseline (median of "
                         "repeats), threshold ±5%\n\n| config | verdict | baseline tokens_per_s | candidate "
                         "tokens_per_s |")
    assert "| a | regression | 100 | 90 | 0.900 | -10.0% |" in md
    assert md.endswith("**gate: fails: 1 blocking (1 regression)**")
    cost = compare(run_of({"a": [0.12345, 0.1235, 0.1234]}, metric="step_time_median_s"),
                   run_of({"a": [1234.5, 1235.0, 1234.0]}, metric="step_time_median_s"), metric="step_time_median_s")
    assert render(cost, fmt="text", metric="step_time_median_s", threshold=0.05).splitlines()[0].startswith(
        "lmbench compare: step_time_median_s (less is better)")
    assert render(cost, fmt="text", metric="step_time_median_s", threshold=0.05).splitlines()[3].startswith(
        "a       regression  0.1235                       1,234  ")
    same = render(compare(run_of({"a": TIGHT}), run_of({"a": TIGHT})), fmt="text", metric="tokens_per_s",
                  threshold=0.05)
    assert same.splitlines()[-1] == "gate: passes (1 unchanged)"
    data = json.loads(render(verdicts, fmt="json", metric="tokens_per_s", threshold=0.05))
    assert data["verdicts"][0]["verdict"] == "regression" and data["higher_is_better"] is True
    assert (data["verdicts"][0]["base_median"], data["verdicts"][0]["cand_median"]) == (100.0, 90.0)
    xml = junit_xml(verdicts, metric="tokens_per_s")
    assert 'failures="1"' in xml
    assert ('<failure message="regression: tokens_per_s 100 -&gt; 90 (medians), ratio 0.900 (-10.0%), 95% CI [0.'
            in xml)
    unjudged = junit_xml(compare(run_of({"a": TIGHT}) + [record("b", None, status="oom")],
                                 run_of({"a": TIGHT, "b": TIGHT})), metric="tokens_per_s")
    assert 'failures="0" errors="0" skipped="1"' in unjudged and "<skipped message=" in unjudged
    # No ratio (a count at 0 on a side): the note alone, not "ratio - (-), 95% CI -" (trial).
    zero = junit_xml(compare(run_of({"a": [0] * 4}, metric="stall_steps"), run_of({"a": [3, 4, 5, 4]},
                                                                                  metric="stall_steps"),
                             metric="stall_steps"), metric="stall_steps")
    assert '<failure message="regression: median 0 in the baseline: no ratio; every candidate repeat' in zero


def test_warnings_reach_the_markdown_json_and_junit_a_ci_job_posts(tmp_path):
    """A torch mismatch between the base and head environments was said on stderr only: the step summary (Markdown)
    and the JUnit file showed a clean table (a reviewer)."""
    base = run_of({"a": TIGHT})
    write_run(tmp_path / "base", base)
    write_run(tmp_path / "cand", [{**r, "env": {**r["env"], "torch": "2.13"}} for r in base])
    said = "torch differs: 2.11 (baseline) vs 2.13 (candidate)"
    md = invoke(str(tmp_path / "base"), str(tmp_path / "cand"), "--format", "md", "--junit", str(tmp_path / "j.xml"))
    assert f"> **warning**: {said}\n\n| config |" in md.stdout
    assert f"<system-err>warning: {said}</system-err>" in (tmp_path / "j.xml").read_text()
    data = json.loads(invoke(str(tmp_path / "base"), str(tmp_path / "cand"), "--format", "json").stdout)
    assert data["warnings"] == [said]
    write_run(tmp_path / "again", base)
    assert "warning" not in invoke(str(tmp_path / "base"), str(tmp_path / "again"), "--format", "md").stdout


def test_environment_variables_that_change_what_runs_are_compared(tmp_path):
    base = [{**r, "env": {**r["env"], "env_vars": {}}} for r in run_of({"a": TIGHT})]
    write_run(tmp_path / "base", base)
    write_run(tmp_path / "cand", [{**r, "env": {**r["env"], "env_vars": {"CUDA_LAUNCH_BLOCKING": "1"}}} for r in base])
    result = invoke(str(tmp_path / "base"), str(tmp_path / "cand"))
    assert ("lmbench: warning: environment variables differs: none of those lmbench records (baseline) vs "
            "CUDA_LAUNCH_BLOCKING=1 (candidate)") in result.stderr.splitlines()


def test_losses_of_one_key_from_two_data_draws_are_warned_of(tmp_path):
    """6f28abc made one seed draw other markov walks and MLM masks under the same configuration key: its records'
    losses were compared with older ones without a word. The draw's version is in every record's environment."""
    base = [{**r, "env": {**r["env"], "data_draw": 2}} for r in run_of({"a": TIGHT})]
    write_run(tmp_path / "base", base)
    write_run(tmp_path / "cand", [{**r, "env": {**r["env"], "data_draw": 3}} for r in base])
    write_run(tmp_path / "old", [{**r, "env": {k: v for k, v in r["env"].items() if k != "data_draw"}} for r in base])
    lines = invoke(str(tmp_path / "base"), str(tmp_path / "cand")).stderr.splitlines()
    assert "lmbench: warning: data draw differs: version 2 (baseline) vs version 3 (candidate)" in lines
    lines = invoke(str(tmp_path / "old"), str(tmp_path / "base")).stderr.splitlines()
    assert ("lmbench: warning: the baseline's records do not say their data draw (the candidate's: version 2; an "
            "older lmbench or a query that failed there): a difference cannot be ruled out") in lines
    write_run(tmp_path / "again", base)
    assert "data draw" not in invoke(str(tmp_path / "base"), str(tmp_path / "again")).stderr


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


def test_runs_of_suites_named_otherwise_pair_their_configurations_by_key_with_a_warning(tmp_path):
    """A suite renamed between the baseline and the candidate was refused (exit 2), ending a CI gate."""
    base = write_run(tmp_path / "base", run_of({"a": TIGHT}))
    other_suite = write_run(tmp_path / "other", run_of({"a": TIGHT}, suite="t"))
    result = invoke(base, other_suite)
    assert result.exit_code == 0, result.output
    assert "the runs are of different suites (s, t): their configurations are paired by key" in result.stderr


def test_compare_bad_inputs_are_one_line_errors(tmp_path):
    base = write_run(tmp_path / "base", run_of({"a": TIGHT}))
    again = write_run(tmp_path / "again", run_of({"a": TIGHT}))
    nothing_ran = write_run(tmp_path / "skipped", [record("a", None, status="skipped")])
    nothing_again = write_run(tmp_path / "skipped2", [record("a", None, status="skipped")])
    empty = write_run(tmp_path / "empty", [])
    no_mfu = write_run(tmp_path / "nomfu",
                       [{**r, "metrics": {**r["metrics"], "mfu": None}} for r in run_of({"a": TIGHT})])
    other_gpu = write_run(tmp_path / "gpu", run_of({"a": TIGHT}, gpu="NVIDIA A100-SXM4-80GB"))
    cases = [
        ((base, str(tmp_path / "nope")),
         f"lmbench: error: candidate run directory '{tmp_path / 'nope'}' does not exist"),
        ((str(tmp_path / "base" / "results.jsonl"), base),
         f"lmbench: error: baseline run directory '{tmp_path / 'base' / 'results.jsonl'}' is a file, not a run "
         "directory"),
        ((base, other_gpu), "lmbench: error: the runs come from different devices (NVIDIA H100 80GB HBM3 (GPU) vs "
                            "NVIDIA A100-SXM4-80GB (GPU); configuration a); pass --allow-different-hardware to compare "
                            "them anyway"),
        ((base, again, "--metric", "speed"), "lmbench: error: --metric 'speed' is in no record of either run "
                                             "(e.g. tokens_per_s, step_time_median_s)"),
        ((nothing_ran, nothing_again), "lmbench: error: neither run has a measured configuration to compare "
                                       "(statuses: skipped)"),
        ((base, str(tmp_path / "base" / ".")), f"lmbench: error: baseline and candidate are the same run directory "
                                               f"({base!r}): a run compared with itself always passes; compare two "
                                               "runs"),
        ((base, empty), f"lmbench: error: the candidate run {empty!r} holds no records (no results.jsonl, or an empty "
                        "one): nothing ran there to compare"),
        ((no_mfu, again, "--metric", "mfu"), "lmbench: error: --metric 'mfu' has no numeric value in the ok records "
                                            "(it is null in every one: not measured there (mfu and power need a GPU, "
                                            "a step-time spread two steps or more)); "
                                            "compare a number such as tokens_per_s or step_time_median_s"),
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
    # Two runs, the fewest calibrate takes, of 2 repeats: 4 worker processes, not 6; the spread of run means has one
    # degree of freedom then, as it had two, and every figure, the file and the advice are checked all the same.
    result = CliRunner().invoke(cli, ["calibrate", "--suite", "smoke", "--repeats", "2", "--runs", "2",
                                      "--out", str(tmp_path / "c"),
                                      "--device", "cpu", "--set", "model=tiny-llama", "--set", "precision=fp32",
                                      "--set", "steps=4"])
    assert result.exit_code == 0, result.output
    assert all((tmp_path / "c" / run / "results.jsonl").exists() for run in "ab")
    assert not (tmp_path / "c" / "c").exists()
    assert "noise floor of smoke (2 runs of 2 repeats, tokens_per_s)" in result.output
    floor = json.loads((tmp_path / "c" / "noise-floor.json").read_text())
    assert floor["format"] == "lmbench-noise-floor" and floor["metric"] == "tokens_per_s" and floor["runs"] == 2
    (key, entry), = floor["configs"].items()
    assert key.startswith("tiny-llama-b4") and entry["log_sd"] >= 0
    if "note" not in entry:  # every repeat of every run stood (none left out as contended): the full estimate
        row = next(line for line in result.stdout.splitlines() if line.startswith("│ tiny-llama-b4"))
        cells = [cell.strip() for cell in row.strip("│ ").split("│")]
        assert cells[1] == "2+2" and all(cell.endswith("%") for cell in cells[3:7]), cells
        assert entry["log_sd"] > 0 and entry["run_df"] == 1
    else:  # a host other work kept busy (the test suite beside other jobs): the floor says why it rests on fewer
        assert entry["run_df"] <= 1 and entry["note"], entry
    assert f"noise floor: {tmp_path / 'c' / 'noise-floor.json'}" in result.output
    # The file says what the floor was measured with, for compare to check against the runs it gates.
    assert floor["torch"] and floor["lmbench"] and len(floor["suite_sha256"]) == 64
    from lmbench.analyze import noise

    advice = [noise.ConfigNoise(**{k: entry[k] for k in ("log_sd", "df", "run_mean_sd", "run_df", "mean_repeats")}
                                ).gate_threshold(n) for n in (1, 3)]
    shown = [f"{t:.1%}" if t <= 10 else ">1000%" for t in advice]
    if min(advice) >= 1:  # a busy or noisy CPU: no threshold compare takes (below 100%) is advised (a new user)
        assert result.stdout.splitlines()[-1] == (
            "no --threshold that compare takes (below 100%) gates this suite: about twice the floor, (1 + floor)² - 1, "
            f"would be {shown[1]} even with 3 repeats a side; the runs differ too much for their windows: lengthen "
            "them (--set steps=...), or calibrate on a quieter host")
    else:
        assert result.stdout.splitlines()[-1] == (
            "gate with --threshold at about twice the floor for the repeats you run, (1 + floor)² - 1, where 95% of "
            "unchanged configurations come out unchanged (at the floor itself 10% or fewer): for this suite "
            f"{shown[0]} with 1 repeat a side, {shown[1]} or more with 3 (there the repeats' own spread counts too)"
            + ("; past 100% compare takes no threshold" if max(advice) >= 1 else ""))
    # The file gates a 1-vs-1 comparison of the same runs: a verdict with an interval, exit 0 or 1 only.
    gated = invoke(str(tmp_path / "c" / "a"), str(tmp_path / "c" / "b"), "--noise-floor",
                   str(tmp_path / "c" / "noise-floor.json"), "--format", "json")
    assert gated.exit_code in (0, 1), gated.output
    verdict, = json.loads(gated.stdout)["verdicts"]
    from lmbench.analyze import results
    from lmbench.measure.hostload import window_contended

    sides = [[r for r in results.read(tmp_path / "c" / side).records if r["status"] == "ok"] for side in "ab"]
    if any(all(window_contended(r["metrics"]) for r in side) for side in sides):
        # Other processes kept this machine's cores busy through a whole side (a CI run beside the tests): compare
        # leaves contended repeats out, and says so, rather than gate on them.
        assert verdict["verdict"] == "inconclusive" and "contended" in verdict["note"]
    else:
        assert verdict["ci_low"] is not None and verdict["ci_low"] <= verdict["ratio"] <= verdict["ci_high"]


def test_a_noise_floor_rests_on_the_quiet_repeats_and_says_when_there_were_too_few(tmp_path):
    """A repeat another process slowed (a shared CPU: 200x) made floors of 945,524%: the quiet repeats stand for
    a configuration while two remain; with fewer, every repeat counts and the file and table say the host was busy."""
    from lmbench.analyze import noise

    busy = {"host_other_cpu_cores": 1.5, "host_usable_cores": 2}
    quiet_key = [record("q", v, repeat=i) for i, v in enumerate([100.0, 102.0, 98.0])]
    slowed = record("q", 0.5, repeat=3)
    slowed["metrics"].update(busy)
    all_busy = [record("b", v, repeat=i) for i, v in enumerate([100.0, 50.0])]
    for r in all_busy:
        r["metrics"].update(busy)
    runs = [quiet_key[:2] + [slowed], quiet_key[2:] + all_busy]
    estimates, payload = noise.calibrate(runs, metric="tokens_per_s", repeats_per_run=2)
    # Run a keeps 100 and 102, run b 98: the processes' spread is run a's, the runs' what their means add to it.
    within = statistics.variance([math.log(100.0), math.log(102.0)])
    means = [statistics.fmean([math.log(100.0), math.log(102.0)]), math.log(98.0)]
    assert estimates["q"].log_sd == pytest.approx(math.sqrt(within)) and estimates["q"].df == 1
    assert estimates["q"].run_mean_sd == pytest.approx(statistics.stdev(means)) and estimates["q"].run_df == 1
    assert estimates["q"].mean_repeats == pytest.approx(4 / 3)  # 2 and 1 repeats: harmonic mean
    assert payload["configs"]["q"]["note"] == "1 contended repeat(s) left out"
    assert payload["configs"]["q"]["contended"] is False
    assert estimates["b"].df == 1 and payload["configs"]["b"]["contended"] is True
    assert payload["configs"]["b"]["note"].startswith("contended: 2 of 2 repeats ran while other processes")
    # The table's A/A ratio and counts rest on the same repeats as the floor beside them: 102 / median(100, 98).
    from rich.console import Console

    from lmbench.analyze.table import noise_floor_table

    console = Console(width=250, record=True)
    console.print(noise_floor_table(estimates, runs, metric="tokens_per_s", title="t"))
    row = next(line for line in console.export_text().splitlines() if line.startswith("│ q "))
    assert " 2+1 │" in row and f"{98.0 / 101.0:.4f}" in row and "1 contended repeat(s) left out" in row
    # A floor past 1000% says only that nothing can be told apart (a 2-run calibration on a busy host printed
    # 116267008220343.3%, a new user).
    from lmbench.analyze.table import _floor_cell

    assert _floor_cell(0.05) == "5.0%" and _floor_cell(1.16e12) == ">1000%"
    # compare, gating with that floor, says which of its floors were taken on a busy host.
    floor_file = tmp_path / "floor.json"
    floor_file.write_text(json.dumps(payload))
    from lmbench.analyze import noise as noise_module

    loaded = noise_module.load(floor_file)
    assert loaded.contended == {"b"}
    base, cand = write_run(tmp_path / "fb", run_of({"b": TIGHT})), write_run(tmp_path / "fc", run_of({"b": TIGHT}))
    result = invoke(base, cand, "--noise-floor", str(floor_file), "--allow-different-hardware")
    assert "was taken on a busy host for 1 configuration(s) (e.g. b)" in result.stderr


def test_a_candidate_that_only_timed_out_fails_the_gate_and_is_not_blamed_on_the_hardware(tmp_path):
    """Its records carry no environment (the worker was killed before saying what it ran on): before, compare said
    the runs came from different devices (the CPU vs None) and exited 2 (new-user trial)."""
    base = write_run(tmp_path / "base", run_of({"a": TIGHT}))
    timed_out = {**record("a", None, status="timeout"), "env": None}
    cand = write_run(tmp_path / "cand", [timed_out])
    result = invoke(base, cand)
    assert result.exit_code == 1, result.output
    assert "different devices" not in result.output and "no ok repeat in the candidate (1 timeout)" in result.output


def test_one_repeat_a_side_is_never_a_verdict():
    """One process is one sample: without a noise estimate nothing is known about run-to-run noise."""
    v = decide([100.0], [60.0], threshold=0.05, higher_is_better=True)
    assert v.verdict == "inconclusive" and v.ci_low is None and v.ratio == pytest.approx(0.6)
    assert v.note == "1/1 ok repeats: a verdict needs at least 3 a side, or --noise-floor FILE from lmbench calibrate"
    assert decide([100.0, 101.0], [60.0, 61.0], threshold=0.05, higher_is_better=True).verdict == "inconclusive"


def test_noise_floor_interval_is_the_t_interval_of_the_measured_spread():
    noise = ConfigNoise(log_sd=0.02, df=5)
    # t(0.975, 5) = 2.570582; one repeat a side: sqrt(1 + 1).
    assert noise.half_width(1, 1) == pytest.approx(2.570582 * 0.02 * 2**0.5, rel=1e-6)
    # Three a side: sqrt(2/3), times sqrt(pi/2) for medians.
    assert noise.half_width(3, 3) == pytest.approx(2.570582 * 0.02 * (2 / 3) ** 0.5 * 1.2533141, rel=1e-6)
    low, high = noise.interval(0.8, 1, 1)
    assert low == pytest.approx(0.8 * 2.718281828 ** -noise.half_width(1, 1))
    assert high == pytest.approx(0.8 * 2.718281828 ** noise.half_width(1, 1))
    v = decide([100.0], [80.0], threshold=0.05, higher_is_better=True, noise=noise)
    assert v.verdict == "regression" and (v.ci_low, v.ci_high) == (low, high)
    assert v.note == "interval from the noise floor"
    assert decide([100.0], [99.0], threshold=0.05, higher_is_better=True, noise=noise).verdict == "inconclusive"
    assert decide([100.0], [99.0], threshold=0.1, higher_is_better=True, noise=noise).verdict == "unchanged"


def test_a_noise_floor_never_narrows_the_bootstrap_interval():
    wide = ConfigNoise(log_sd=0.5, df=2)
    v = decide(TIGHT, [x * 0.8 for x in TIGHT], threshold=0.05, higher_is_better=True, noise=wide)
    assert v.verdict == "inconclusive"
    assert decide(TIGHT, [x * 0.8 for x in TIGHT], threshold=0.05, higher_is_better=True).verdict == "regression"


def noise_file(path, configs, metric="tokens_per_s", device="NVIDIA H100 80GB HBM3"):
    path.write_text(json.dumps({"format": "lmbench-noise-floor", "version": 1, "metric": metric, "device": device,
                                "configs": configs}))
    return str(path)


def test_gate_exit_codes_respect_noise(tmp_path):
    # Identical code, one repeat a side: no verdict, exit 0.
    one = write_run(tmp_path / "one", run_of({"a": [100.0]}))
    again = write_run(tmp_path / "again", run_of({"a": [93.0]}))
    result = invoke(one, again)
    assert result.exit_code == 0, result.output
    assert "inconclusive" in result.output and "needs at least 3 a side" in result.output
    # A planted 20% slowdown with 3 repeats a side: regression, exit 1.
    base = write_run(tmp_path / "base", run_of({"a": [100.0, 101.0, 99.0]}))
    slow = write_run(tmp_path / "slow", run_of({"a": [80.0, 80.8, 79.2]}))
    result = invoke(base, slow)
    assert result.exit_code == 1 and "regression" in result.output
    # The same slowdown, one repeat a side, with a measured noise floor: regression, exit 1.
    floor = noise_file(tmp_path / "floor.json", {"a": {"log_sd": 0.02, "df": 5}})
    slow_one = write_run(tmp_path / "slow1", run_of({"a": [80.0]}))
    result = invoke(one, slow_one, "--noise-floor", floor)
    assert result.exit_code == 1 and "regression" in result.output and "noise floor" in result.output
    # A configuration the floor does not know stays inconclusive.
    other = noise_file(tmp_path / "other.json", {"b": {"log_sd": 0.02, "df": 5}})
    result = invoke(one, slow_one, "--noise-floor", other)
    assert result.exit_code == 0 and "has no noise floor for this configuration" in result.output


def test_bad_noise_floor_files_are_one_line_errors(tmp_path):
    base = write_run(tmp_path / "base", run_of({"a": [100.0]}))
    cand = write_run(tmp_path / "cand", run_of({"a": [100.0]}))
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    cases = [
        (str(tmp_path / "missing.json"), "no such file (write one with lmbench calibrate)"),
        (str(garbage), "not a noise-floor file (Expecting property name enclosed in double quotes"),
        (noise_file(tmp_path / "m.json", {}, metric="mfu"), "was measured for mfu, not --metric tokens_per_s"),
        (noise_file(tmp_path / "n.json", {"a": {"log_sd": -1, "df": 2}}),
         "configs['a'] needs log_sd in [0, 5] and an integer df >= 1"),
        (noise_file(tmp_path / "t.json", {"a": {"log_sd": 0.01, "df": True}}),
         "configs['a'] needs log_sd in [0, 5] and an integer df >= 1"),
        # A spread whose square overflowed (exit 3), or made identical runs a regression through a NaN df.
        (noise_file(tmp_path / "big.json", {"a": {"log_sd": 0.01, "df": 5, "run_mean_sd": 1e154, "run_df": 2}}),
         "configs['a'] needs log_sd in [0, 5] and an integer df >= 1 (and run_mean_sd in [0, 5]"),
    ]
    for path, text in cases:
        result = invoke(base, cand, "--noise-floor", path)
        assert result.exit_code == 2, result.output
        line, = result.stderr.strip().splitlines()
        assert line.startswith("lmbench: error: --noise-floor ") and text in line, line


def test_cpu_runs_of_different_cpu_models_are_refused_like_gpus(tmp_path):
    def cpu_run(name, model):
        records = run_of({"a": [100.0]})
        for r in records:
            r["env"] = {"device": {"type": "cpu", "name": model, "physical_cores": 2}, "torch": "2.13"}
        return write_run(tmp_path / name, records)

    epyc, xeon = cpu_run("epyc", "AMD EPYC 9654"), cpu_run("xeon", "Intel(R) Xeon(R) Platinum 8480+")
    result = invoke(epyc, xeon)
    assert result.exit_code == 2
    assert result.stderr.strip() == ("lmbench: error: the runs come from different devices (AMD EPYC 9654 (CPU) vs "
                                     "Intel(R) Xeon(R) Platinum 8480+ (CPU); configuration a); pass "
                                     "--allow-different-hardware to compare them anyway")
    assert invoke(epyc, cpu_run("epyc2", "AMD EPYC 9654")).exit_code == 0


def test_a_cpu_runs_threads_and_cores_are_part_of_its_machine(tmp_path):
    """A CPU's model name alone ('AMD EPYC') told a 2-core share from a whole 128-core host (a reviewer)."""
    def cpu_run(name, threads, usable):
        records = run_of({"a": TIGHT})
        for r in records:
            r["env"] = {"device": {"type": "cpu", "name": "AMD EPYC", "torch_threads": threads,
                                   "usable_cores": usable}, "torch": "2.13"}
        return write_run(tmp_path / name, records)

    result = invoke(cpu_run("two", 2, 2), cpu_run("one", 1, 1))
    assert ("lmbench: warning: cpu threads differs: 2 torch threads on 2 usable cores (baseline) vs 1 torch threads "
            "on 1 usable cores (candidate)") in result.stderr.splitlines()
    assert "cpu threads" not in invoke(cpu_run("again", 2, 2), cpu_run("same", 2, 2)).stderr


def test_a_longer_time_to_target_is_a_regression(tmp_path):
    def run(values):
        records = run_of({"a": values})
        for r, value in zip(records, values):
            r["metrics"]["time_to_target_s"] = value
        return records

    base = write_run(tmp_path / "base", run(TIGHT))
    slower = write_run(tmp_path / "slower", run([x * 1.1 for x in TIGHT]))
    assert invoke(base, slower, "--metric", "time_to_target_s").exit_code == 1
    assert invoke(slower, base, "--metric", "time_to_target_s").exit_code == 0


def test_every_rate_is_higher_is_better_and_every_cost_lower():
    slower = [x * 0.7 for x in TIGHT]
    for metric in ("tokens_per_s", "tokens_per_s_typical", "tokens_per_s_sustained", "samples_per_s", "hfu",
                   "hardware_tflops", "mfu_fp8_peak", "hfu_fp8_peak", "tokens_per_j", "scaling_efficiency"):
        verdict, = compare(run_of({"a": TIGHT}, metric=metric), run_of({"a": slower}, metric=metric), metric=metric)
        assert verdict.verdict == "regression", metric
    for metric in ("step_time_median_s", "mem_peak_reserved_bytes_per_device", "energy_j", "j_per_token",
                   "val_loss", "steps_to_target", "step_time_cv"):
        verdict, = compare(run_of({"a": TIGHT}, metric=metric), run_of({"a": slower}, metric=metric), metric=metric)
        assert verdict.verdict == "improvement", metric
    with pytest.raises(UsageError, match="'power_avg_w': not known whether more is better or worse"):
        compare(run_of({"a": TIGHT}, metric="power_avg_w"), run_of({"a": TIGHT}, metric="power_avg_w"),
                metric="power_avg_w")


def test_the_threshold_applies_to_a_cost_as_measured():
    """5.2% more step time is a regression at 5%: the interval is not turned into a speed first."""
    base = [1.0, 1.0005, 0.9995, 1.0002, 0.9998]
    v = decide(base, [x * 1.052 for x in base], threshold=0.05, higher_is_better=False)
    assert v.verdict == "regression" and v.ci_low > 1.05
    assert decide(base, [x * 0.948 for x in base], threshold=0.05, higher_is_better=False).verdict == "improvement"


def test_three_repeats_a_side_get_an_interval_that_covers_95_percent():
    """With 3 a side the percentile bootstrap is the range of ratios, a 90% interval; the union with the Welch
    t interval of the logs covers the true ratio at least 95% of the time (seeded: 400 pairs of samples)."""
    import numpy as np

    from lmbench.analyze.compare import _interval

    b, c = [100.0, 103.0, 98.0], [97.0, 101.0, 104.0]
    low, high, from_floor = _interval(b, c, None)
    assert low < min(c) / max(b) and high > max(c) / min(b) and not from_floor
    rng = np.random.default_rng(7)
    misses = 0
    for _ in range(400):
        low, high, _ = _interval(list(np.exp(rng.normal(0, 0.03, 3))), list(np.exp(rng.normal(0, 0.03, 3))), None)
        misses += not low <= 1.0 <= high
    assert misses / 400 <= 0.05


def test_a_candidate_that_fails_fails_the_gate(tmp_path):
    base = write_run(tmp_path / "base", run_of({k: TIGHT for k in "abcd"}))
    cand_records = ([record("a", None, status="oom", repeat=i) for i in range(5)]
                    + [record("b", None, status="diverged", repeat=i) for i in range(5)]
                    + run_of({"c": TIGHT[:3]}) + [record("c", None, status="oom", repeat=i) for i in (3, 4)])
    cand = write_run(tmp_path / "cand", cand_records)
    result = invoke(base, cand, "--format", "json")
    assert result.exit_code == 1, result.output
    verdicts = {v["config_key"]: v for v in json.loads(result.stdout)["verdicts"]}
    assert (verdicts["a"]["verdict"], verdicts["a"]["note"]) == ("failed", "no ok repeat in the candidate (5 oom)")
    assert verdicts["b"]["note"] == "no ok repeat in the candidate (5 diverged)"
    assert (verdicts["c"]["verdict"], verdicts["c"]["note"]) == (
        "failed", "2 of 5 candidate repeats ended in oom; every baseline repeat ran")
    assert verdicts["d"]["verdict"] == "missing" and all(v["blocking"] for v in verdicts.values())
    # A configuration the candidate run dropped on purpose passes with --allow-missing; failures still fail.
    only_d = write_run(tmp_path / "only_d", run_of({k: TIGHT for k in "abc"}))
    assert invoke(base, only_d).exit_code == 1
    assert invoke(base, only_d, "--allow-missing").exit_code == 0
    # Failures on both sides are noise of the set-up, not of the candidate: judged on the ok repeats.
    flaky = run_of({"a": TIGHT[:4]}) + [record("a", None, status="timeout", repeat=4)]
    v, = compare(flaky, flaky)
    assert v.verdict == "unchanged" and v.note == "failed repeats: candidate 1 timeout, baseline 1 timeout"


def test_runs_of_different_sizes_are_refused(tmp_path):
    def sized(name, nnodes):
        records = run_of({"a": TIGHT})
        for r in records:
            r["metrics"].update(nnodes=nnodes, world_size=8 * nnodes, devices=8 * nnodes)
        return write_run(tmp_path / name, records)

    result = invoke(sized("one", 1), sized("two", 2))
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.strip() == ("lmbench: error: configuration a ran at different sizes (nnodes 1 vs 2, "
                                     "world_size 8 vs 16, devices 8 vs 16, baseline vs candidate): compare runs with "
                                     "the same --nnodes and devices")


def test_a_real_change_inside_the_threshold_is_unchanged_and_says_so():
    v = decide(TIGHT, [x * 0.97 for x in TIGHT], threshold=0.05, higher_is_better=True)
    assert (v.verdict, v.note) == ("unchanged", "a change of -3.0%, inside the ±5% threshold")
    assert decide(TIGHT, list(TIGHT), threshold=0.05, higher_is_better=True).note == ""


def test_runs_with_no_configuration_in_common_are_refused(tmp_path):
    base = write_run(tmp_path / "base", run_of({"a": TIGHT}))
    other = write_run(tmp_path / "other", run_of({"b": TIGHT, "c": TIGHT}))
    result = invoke(base, other, "--allow-missing")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.strip() == ("lmbench: error: the runs share no configuration (1 in the baseline, e.g. a; 2 in "
                                     "the candidate, e.g. b); they differ in model a vs b,c: run both with the same "
                                     "suite and options")
    # The key's hash hides what differs (steps and warmup here): the message names it.
    stepped = [{**r, "config_key": "a2", "config": {**r["config"], "steps": 5, "warmup": 2}}
               for r in run_of({"a": TIGHT})]
    base_records = [{**r, "config": {**r["config"], "steps": 3, "warmup": 1}} for r in run_of({"a": TIGHT})]
    result = invoke(write_run(tmp_path / "b3", base_records), write_run(tmp_path / "s5", stepped))
    assert "; they differ in steps 3 vs 5, warmup 1 vs 2: run both" in result.stderr
    # An axis older records lack counts at its default (what they ran), and one no key holds is never named.
    older = [{**r, "config": {k: v for k, v in r["config"].items() if k != "vocab_multiple"}} for r in base_records]
    newer = [{**r, "config": {**r["config"], "vocab_multiple": 1, "timeout_s": 99.0, "profile": True}}
             for r in stepped]
    result = invoke(write_run(tmp_path / "old", older), write_run(tmp_path / "new", newer))
    assert "; they differ in steps 3 vs 5, warmup 1 vs 2: run both" in result.stderr


def test_an_absurd_repeat_estimate_says_the_noise_is_far_above_the_threshold():
    v = decide([10.0, 100.0, 1000.0], [12.0, 90.0, 1100.0], threshold=0.001, higher_is_better=True)
    assert v.verdict == "inconclusive"
    assert v.note == ("interval wider than ±0.1%; the noise is far above the threshold, or the change sits on it "
                      "(over 1,000 repeats per side needed)")


def test_the_repeats_needed_are_those_whose_interval_would_settle_the_verdict():
    base, cand = [1000.0, 1010.0, 990.0], [910.0, 935.0, 925.0]  # about 8% slower: the interval reaches past -5%

    def more(values, n):  # n repeats spread as these three
        return [values[i % 3] * (1 + 1e-6 * i) for i in range(n)]

    needed = repeats_needed(base, cand, 0.05)
    settles = [decide(more(base, n), more(cand, n), threshold=0.05, higher_is_better=True).verdict for n in (3, needed)]
    assert needed == 4 and settles == ["inconclusive", "regression"]
    # A change that sits on the threshold is never settled by repeats.
    assert repeats_needed([100.0, 101.0, 99.0], [95.0, 95.95, 94.05], 0.05) > 1000


def test_with_a_noise_floor_the_repeats_needed_follow_the_floors_own_model():
    """A calibration with log_sd 0.0474 over 4 processes (df 3) resolves ±5% around no change at 31 repeats a side,
    not at the 3 the observed 2 + 2 spread alone suggested; around the ratio measured (-0.7%), the nearer edge is
    closer, and it takes 38."""
    noise = ConfigNoise(log_sd=0.0474, df=3)
    needed = noise.repeats_for(0.05)
    assert noise.floor(needed) <= 0.05 < noise.floor(needed - 1) and needed == 31
    verdict = decide([100.0, 101.0], [99.0, 100.5], threshold=0.05, higher_is_better=True, noise=noise)
    assert verdict.verdict == "inconclusive" and "about 38 repeats per side needed" in verdict.note
    ratio = verdict.ratio
    for n, inside in ((38, True), (37, False)):
        low, high = noise.interval(ratio, n, n)
        assert (0.95 <= low and high <= 1.05) is inside
    # A ratio on the edge never settles.
    assert noise.repeats_for(0.05, ratio=0.95) == 1001


def test_an_interval_reaching_past_the_threshold_is_inconclusive_not_unchanged():
    # Every candidate repeat about 7% slower: the interval [-9.7%, -4.2%] neither shows nor excludes a change
    # beyond 5%; calling it unchanged would pass a regression.
    v = decide([1000.0, 1010.0, 990.0], [920.0, 940.0, 930.0], threshold=0.05, higher_is_better=True)
    assert v.verdict == "inconclusive" and v.ci_low < 0.95 < v.ci_high < 1
    assert "reaches past -5.0%" in v.note and "neither shown nor excluded" in v.note
    # Inside on both sides: unchanged.
    assert decide(TIGHT, [x * 0.98 for x in TIGHT], threshold=0.05, higher_is_better=True).verdict == "unchanged"


def test_a_noise_floor_does_not_stand_in_for_repeats_that_spread_far_more_than_it():
    floor = ConfigNoise(log_sd=0.02, df=5)
    # One candidate repeat matches the baseline, the other is 30% slower: not the floor's 2% noise.
    v = decide([1000.0, 1002.0], [700.0, 1001.0], threshold=0.05, higher_is_better=True, noise=floor)
    assert v.verdict == "inconclusive" and "more than the noise floor's 2.0% allows" in v.note
    # Repeats that agree with the floor keep its verdict.
    agreeing = decide([1000.0, 1010.0], [900.0, 905.0], threshold=0.05, higher_is_better=True, noise=floor)
    assert agreeing.verdict == "regression"


def test_a_candidate_failing_in_new_ways_or_more_often_fails_even_if_the_baseline_failed_once():
    base = run_of({"a": [1000.0, 1000.0]}) + [record("a", None, status="timeout", repeat=2)]
    errors = [record("a", None, status="error", repeat=i) for i in (0, 1)] + run_of({"a": [700.0]})
    (v,) = compare(base, errors)
    assert v.verdict == "failed" and v.blocking
    assert v.note == ("2 of 3 candidate repeats ended in error, which the baseline never did (error; 1 timeout of 3 in "
                      "the baseline)")
    # A larger share counts when chance does not explain it: 4 timeouts in 5 against 1 in 10, not 2 in 3 against 1 in 3.
    more = [record("a", None, status="timeout", repeat=i) for i in (0, 1)] + run_of({"a": [1000.0]})
    assert compare(base, more)[0].verdict == "inconclusive"
    seldom = run_of({"a": [1000.0] * 9}) + [record("a", None, status="timeout", repeat=9)]
    often = [record("a", None, status="timeout", repeat=i) for i in range(4)] + [record("a", 1000.0, repeat=4)]
    (v,) = compare(seldom, often)
    assert (v.verdict, v.blocking) == ("failed", True)
    assert v.note == ("4 of 5 candidate repeats ended in timeout, a larger share than the baseline's (1 timeout of 10 "
                      "in the baseline; Fisher's exact test p = 0.017)")
    # As often and in the same way as the baseline: judged on the repeats that ran, with a note.
    same = run_of({"a": [1000.0, 1001.0]}) + [record("a", None, status="timeout", repeat=2)]
    (v,) = compare(base, same)
    assert v.verdict == "inconclusive" and "failed repeats: candidate 1 timeout" in v.note


def test_strict_gates_fail_on_inconclusive_and_junit_shows_why(tmp_path):
    base = write_run(tmp_path / "base", run_of({"a": [100.0]}))
    cand = write_run(tmp_path / "cand", run_of({"a": [90.0]}))
    assert invoke(base, cand).exit_code == 0
    result = invoke(base, cand, "--strict", "--junit", str(tmp_path / "j.xml"), "--threshold", "2.5%", "--format", "md")
    assert result.exit_code == 1 and "threshold ±2.5%" in result.output
    assert "<failure message=\"inconclusive" in (tmp_path / "j.xml").read_text()
    xml = junit_xml(compare(run_of({"a": [100.0]}), run_of({"a": [90.0]})), metric="tokens_per_s")
    assert 'skipped="1"' in xml and '<skipped message="inconclusive: ' in xml


def test_repeats_whose_host_was_busy_are_left_out_of_the_verdict_and_named():
    base = run_of({"a": TIGHT})
    cand = run_of({"a": [x * 0.9 for x in TIGHT]})
    # A contended repeat 200x slower (2 threads on a core another process holds) is not a sample of the code.
    cand[0]["metrics"].update(tokens_per_s=TIGHT[0] / 200, host_other_cpu_cores=1.3, host_usable_cores=2)
    (v,) = compare(base, cand)
    assert v.verdict == "regression" and v.n_cand == 4
    assert v.note == "left out as contended: 0 of 5 baseline and 1 of 5 candidate repeats"
    assert v.ratio == pytest.approx(0.9, rel=1e-3)
    assert compare(base, run_of({"a": TIGHT}))[0].note == ""


def test_a_side_measured_only_on_a_contended_host_gets_no_verdict():
    base = run_of({"a": TIGHT})
    cand = run_of({"a": [x * 0.03 for x in TIGHT]})
    assert compare(base, cand)[0].verdict == "regression"
    for r in cand:
        r["metrics"].update(host_other_cpu_cores=1.2, host_usable_cores=2)
    (v,) = compare(base, cand)
    assert v.verdict == "inconclusive" and not v.blocking
    assert v.note.startswith("every candidate repeat ran on a contended host")
    assert compare(base, cand, strict=True)[0].blocking
    # A noise floor that has the configuration: no claim that it has none.
    floor = NoiseFloor(metric="tokens_per_s", configs={"a": ConfigNoise(0.01, 5)}, source="nf.json")
    assert compare(base, cand, noise=floor)[0].note == v.note


def test_a_metric_no_ok_repeat_reports_is_skipped_not_failed():
    # scaling_efficiency of a parallel=none row: ok on both sides, never reported.
    base, cand = run_of({"a": [1.0]}, metric="tokens_per_s"), run_of({"a": [1.0]}, metric="tokens_per_s")
    (v,) = compare(base, cand, metric="scaling_efficiency")
    assert (v.verdict, v.blocking) == ("skipped", False)
    assert v.note == "no ok repeat reports scaling_efficiency in either run"
    # Lost by the candidate: not judged, not passed over (a strict gate fails it); gained by it: nothing lost.
    (v,) = compare(run_of({"a": [0.9]}, metric="scaling_efficiency"), cand, metric="scaling_efficiency")
    assert (v.verdict, v.blocking, v.note) == ("inconclusive", False, "the candidate's 1 ok repeat(s) report no "
                                               "scaling_efficiency, which the baseline's did: nothing to compare")
    (v,) = compare(run_of({"a": [0.9]}, metric="scaling_efficiency"), cand, metric="scaling_efficiency", strict=True)
    assert v.blocking
    (v,) = compare(base, run_of({"a": [0.9]}, metric="scaling_efficiency"), metric="scaling_efficiency", strict=True)
    assert (v.verdict, v.blocking) == ("skipped", False)
    # Some ok repeats without a finite value: left out, and counted in the note.
    partial = run_of({"a": [0.5, math.nan, math.nan]}, metric="mfu")
    (v,) = compare(run_of({"a": [0.5, 0.51, 0.49]}, metric="mfu"), partial, metric="mfu")
    assert (v.n_cand, v.note.split("; ")[-1]) == (1, "2 of 3 candidate ok repeats report no finite mfu, left out")
    # A baseline that never ran a configuration the candidate crashes on: no false "failed before".
    (v,) = compare([record("a", None, status="skipped")], [record("a", None, status="error")])
    assert not v.blocking and v.note.endswith("the baseline never ran it, so this does not fail the gate")


def test_a_count_that_stayed_at_zero_is_unchanged_even_for_a_strict_gate():
    (v,) = compare(run_of({"a": [0, 0, 0]}, metric="stall_steps"), run_of({"a": [0, 0, 0]}, metric="stall_steps"),
                   metric="stall_steps", strict=True)
    assert (v.verdict, v.blocking, v.note) == ("unchanged", False, "median 0 on both sides")



def test_a_count_leaving_zero_is_judged_by_the_order_of_its_repeats():
    """No ratio, so no threshold: every candidate repeat above every baseline one, an order chance gives (either way)
    at most 5% of the time, 2 / C(8, 4) = 2.9% with 4 a side, is a change; 3 a side (10%), overlapping or fewer
    repeats are inconclusive."""
    def stalls(base, cand, **kw):
        (v,) = compare(run_of({"a": base}, metric="stall_steps"), run_of({"a": cand}, metric="stall_steps"),
                       metric="stall_steps", **kw)
        return v

    v = stalls([0, 0, 0, 0], [4, 5, 3, 4])
    assert (v.verdict, v.blocking, v.ratio) == ("regression", True, None)
    assert v.note == ("median 0 in the baseline: no ratio; every candidate repeat (3 to 5) above every baseline one "
                      "(0; exact rank test p = 0.029, two-sided)")
    assert stalls([2, 3, 2, 2], [0, 0, 0, 0]).verdict == "improvement"
    assert stalls([0, 0, 1, 0], [0, 4, 5, 3]).note.endswith("the repeats overlap: a change needs every repeat of one "
                                                            "side beyond every one of the other, with 4 or more a side")
    v = stalls([0, 0, 0], [4, 5, 3], strict=True)
    assert (v.verdict, v.blocking) == ("inconclusive", True) and "3/3 repeats are too few" in v.note
    # Where more is better, a rate leaving 0 is an improvement.
    (v,) = compare(run_of({"a": [0] * 4}, metric="mfu"), run_of({"a": [0.3, 0.31, 0.29, 0.3]}, metric="mfu"),
                   metric="mfu")
    assert v.verdict == "improvement"


def test_a_rate_is_named_per_s_not_anything_containing_it():
    """sampler_cost_per_sample_s is a cost (a time); tokens_per_step is the configuration's, with no direction."""
    from lmbench.analyze.compare import higher_is_better

    assert not higher_is_better("sampler_cost_per_sample_s")
    assert higher_is_better("tokens_per_s_per_device") and higher_is_better("tokens_per_s")
    with pytest.raises(UsageError, match="'tokens_per_step': not known whether more is better or worse"):
        higher_is_better("tokens_per_step")


def with_parity(records, parity):
    return [{**r, "metrics": {**r["metrics"], "parity": parity}} for r in records]


def test_a_candidate_whose_loss_parity_diverged_fails_whatever_its_speed():
    base, cand = run_of({"a": TIGHT}), run_of({"a": TIGHT})
    (v,) = compare(with_parity(base, "ok"), with_parity(cand, "diverged"))
    assert (v.verdict, v.blocking, v.parity) == ("failed", True, "diverged")
    assert v.note == ("its loss parity diverged from the reference (the baseline's: ok); tokens_per_s was unchanged "
                      "(+0.0%)")
    (v,) = compare(base, with_parity(cand, "diverged"))
    assert v.verdict == "failed" and "(the baseline's: not checked)" in v.note
    # Diverged in the baseline too: judged on speed, as before, but never an improvement.
    (v,) = compare(with_parity(base, "diverged"), with_parity(cand, "diverged"))
    assert v.verdict == "unchanged"
    (v,) = compare(with_parity(base, "diverged"), with_parity(run_of({"a": [x * 1.3 for x in TIGHT]}), "diverged"))
    assert (v.verdict, v.note) == ("failed", "faster, but its loss parity diverged from the reference")


def test_the_note_names_the_estimate_that_set_the_interval():
    wide = [100.0, 110.0, 90.0]
    tiny_floor = NoiseFloor("tokens_per_s", {"a": ConfigNoise(0.0002, 5)})
    (v,) = compare(run_of({"a": wide}), run_of({"a": wide}), noise=tiny_floor)
    assert v.note.endswith("interval from the repeats (wider than the floor's)")
    (v,) = compare(run_of({"a": [100.0]}), run_of({"a": [100.0]}),
                   noise=NoiseFloor("tokens_per_s", {"a": ConfigNoise(0.01, 5)}))
    assert v.note.endswith("interval from the noise floor")
    (v,) = compare(run_of({"a": [0, 0, 0]}, metric="stall_steps"), run_of({"a": [0, 0, 0]}, metric="stall_steps"),
                   metric="stall_steps", noise=NoiseFloor("stall_steps", {"a": ConfigNoise(0.01, 5)}, source="f.json"))
    assert "no noise floor" not in v.note


def test_every_record_of_each_run_is_checked_for_its_device_and_software(tmp_path):
    """A candidate resumed on another machine: configuration b ran on an A100 with other software. Reading the first
    record only saw an H100 on both sides and called b's 20% a regression."""
    def on(records, gpu, **software):
        return [{**r, "env": {**r["env"], "device": {**r["env"]["device"], "name": gpu}, **software}} for r in records]

    base = run_of({"a": TIGHT, "b": TIGHT})
    cand = run_of({"a": TIGHT}) + on(run_of({"b": [x * 0.8 for x in TIGHT]}), "NVIDIA A100-SXM4-80GB", torch="2.9")
    write_run(tmp_path / "base", base)
    write_run(tmp_path / "cand", cand)
    result = invoke(str(tmp_path / "base"), str(tmp_path / "cand"))
    assert result.exit_code == 2 and result.stderr.strip() == (
        "lmbench: error: the runs come from different devices (NVIDIA H100 80GB HBM3 (GPU) vs NVIDIA A100-SXM4-80GB "
        "(GPU); configuration b); pass --allow-different-hardware to compare them anyway")
    result = invoke(str(tmp_path / "base"), str(tmp_path / "cand"), "--allow-different-hardware")
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert ("lmbench: warning: torch differs in 1 of 2 configurations both ran (e.g. b): 2.11 (baseline) vs 2.9 "
            "(candidate)") in warnings
    # Each configuration ran on one device: b's difference is said above, no repeat of one mixes two.
    assert not any("more than one" in w for w in warnings)
    # A configuration whose repeats ran on two machines (resumed on another) is warned of; two configurations whose
    # processes differ by design (torchrun's ranks get one thread each) are not.
    resumed = run_of({"a": TIGHT, "b": TIGHT})
    resumed[-1] = on([resumed[-1]], "NVIDIA A100-SXM4-80GB")[0]
    write_run(tmp_path / "resumed", resumed)
    result = invoke(str(tmp_path / "base"), str(tmp_path / "resumed"), "--allow-different-hardware")
    assert ("lmbench: warning: the candidate's repeats of configuration b come from more than one device (NVIDIA H100 "
            "80GB HBM3 (GPU), NVIDIA A100-SXM4-80GB (GPU)): it was resumed or merged on another machine, or something "
            "was upgraded between them") in result.stderr.splitlines()
    # CUDA, Triton and transformers versions count too.
    write_run(tmp_path / "newer", [{**r, "env": {**r["env"], "triton": "3.7"}} for r in base])
    write_run(tmp_path / "older", [{**r, "env": {**r["env"], "triton": "3.6"}} for r in base])
    result = invoke(str(tmp_path / "older"), str(tmp_path / "newer"))
    assert "lmbench: warning: triton differs: 3.6 (baseline) vs 3.7 (candidate)" in result.stderr


def test_devices_are_compared_configuration_by_configuration(tmp_path):
    """A baseline with a on an H100 and b on an A100, a candidate the other way round: both runs hold both devices,
    and a set-per-run check let each configuration's ratio of two GPUs through as a regression (a reviewer)."""
    def on(records, gpu):
        return [{**r, "env": {**r["env"], "device": {**r["env"]["device"], "name": gpu}}} for r in records]

    a100 = "NVIDIA A100-SXM4-80GB"
    base = run_of({"a": TIGHT}) + on(run_of({"b": TIGHT}), a100)
    cand = on(run_of({"a": [x * 0.6 for x in TIGHT]}), a100) + run_of({"b": TIGHT})
    write_run(tmp_path / "base", base)
    write_run(tmp_path / "cand", cand)
    result = invoke(str(tmp_path / "base"), str(tmp_path / "cand"))
    assert result.exit_code == 2 and result.stderr.strip() == (
        "lmbench: error: the runs come from different devices (NVIDIA H100 80GB HBM3 (GPU), NVIDIA A100-SXM4-80GB "
        "(GPU) vs NVIDIA A100-SXM4-80GB (GPU), NVIDIA H100 80GB HBM3 (GPU); configuration a and 1 more); pass "
        "--allow-different-hardware to compare them anyway")
    # Allowed, each row says which devices its ratio is of.
    verdicts = {v.config_key: v for v in compare(base, cand)}
    assert "device: NVIDIA H100 80GB HBM3 (GPU) (baseline) vs NVIDIA A100-SXM4-80GB (GPU) (candidate)" in \
        verdicts["a"].note


def test_a_card_set_otherwise_makes_no_regression_it_could_explain(tmp_path):
    """A 500 W cap on the candidate's card read as a clean 15% regression of the code (a reviewer): a power limit,
    applications clocks or ECC that hold the candidate back leave its regression inconclusive, saying which; a
    regression despite more headroom stands (750 W against 700 W passed a 15% loss, a second reviewer)."""
    def with_metrics(records, **metrics):
        return [{**r, "metrics": {**r["metrics"], **metrics}} for r in records]

    card = dict(power_limit_w=700.0, sm_clock_app_mhz=1755, ecc_enabled=False)
    base = with_metrics(run_of({"a": TIGHT}), **card)
    slower, faster = [x * 0.85 for x in TIGHT], [x * 1.15 for x in TIGHT]
    (v,) = compare(base, with_metrics(run_of({"a": slower}), **card))
    assert v.verdict == "regression"
    for setting, note in ((dict(power_limit_w=500.0), "another power limit (W): baseline 700.0; candidate 500.0"),
                          (dict(sm_clock_app_mhz=1410), "other applications clocks (SM MHz): baseline 1755; candidate "
                                                        "1410"),
                          (dict(ecc_enabled=True), "ECC set otherwise: baseline False; candidate True")):
        (v,) = compare(base, with_metrics(run_of({"a": slower}), **{**card, **setting}))
        assert v.verdict == "inconclusive" and note in v.note, (setting, v)
        # Faster on a card held back more: the improvement stands, the note says so.
        (v,) = compare(base, with_metrics(run_of({"a": faster}), **{**card, **setting}))
        assert v.verdict == "improvement" and note in v.note, (setting, v)
    (v,) = compare(base, with_metrics(run_of({"a": slower}), **{**card, "power_limit_w": 750.0}))
    assert v.verdict == "regression" and "another power limit (W): baseline 700.0; candidate 750.0" in v.note
    (v,) = compare(with_metrics(run_of({"a": TIGHT}), **{**card, "power_limit_w": 500.0}),
                   with_metrics(run_of({"a": faster}), **card))
    assert v.verdict == "inconclusive"  # an improvement the baseline's cap could explain
    # A record that does not say (an older lmbench) is no difference.
    (v,) = compare(run_of({"a": TIGHT}), with_metrics(run_of({"a": slower}), power_limit_w=500.0))
    assert v.verdict == "regression"


def test_a_noise_floor_written_under_a_key_that_became_another_still_applies(tmp_path):
    """A floor calibrated when dropout=false split a Llama configuration's key kept that key; the records read under
    today's key matched nothing in it, and --strict failed the gate on 'no noise floor' (a reviewer)."""
    from lmbench.plan.config import Config

    old = Config(model="tiny-llama", dropout=False, device="cpu")
    assert old.key != old.without_foreign_options().key

    def run(values):
        return [{**record(old.key, v, repeat=i, gpu="AMD EPYC"), "config": old.to_dict()} for i, v in enumerate(values)]

    base, cand = write_run(tmp_path / "base", run([100.0, 101.0])), write_run(tmp_path / "cand", run([100.5, 100.0]))
    from lmbench.analyze import noise

    floor = tmp_path / "floor.json"
    noise.write(floor, noise.to_json({old.key: ConfigNoise(0.01, 5)}, metric="tokens_per_s", suite="s",
                                     device="AMD EPYC", repeats_per_run=2, runs=3))
    result = invoke(base, cand, "--noise-floor", str(floor), "--strict")
    assert "no noise floor" not in result.stdout and "none of these runs' configurations" not in result.stderr
    assert result.exit_code == 0, result.output


def test_a_gpu_another_process_held_is_said_in_the_row():
    """gpu_other_processes was on the record and nowhere in compare's output (a reviewer of the CI templates)."""
    def shared(records, n):
        return [{**r, "metrics": {**r["metrics"], "gpu_other_processes": 1 if i < n else 0}}
                for i, r in enumerate(records)]

    (v,) = compare(shared(run_of({"a": TIGHT}), 0), shared(run_of({"a": TIGHT}), 2))
    assert "another process held the GPU in 0 baseline and 2 candidate repeats" in v.note
    (v,) = compare(run_of({"a": TIGHT}), shared(run_of({"a": TIGHT}), 0))
    assert "held the GPU" not in v.note


def test_what_one_run_says_of_its_environment_and_the_other_does_not_is_warned_of(tmp_path):
    """NVML unavailable in the candidate's worker: its driver is null, and a null matched anything."""
    base = run_of({"a": TIGHT})
    base = [{**r, "env": {**r["env"], "device": {**r["env"]["device"], "driver": "580.159.04"}, "torchao": None}}
            for r in base]
    cand = [{**r, "env": {**r["env"], "device": {**r["env"]["device"], "driver": None}}} for r in base]
    write_run(tmp_path / "base", base)
    write_run(tmp_path / "cand", cand)
    result = invoke(str(tmp_path / "base"), str(tmp_path / "cand"))
    assert ("lmbench: warning: the candidate's records do not say their driver (the baseline's: 580.159.04; an older "
            "lmbench or a query that failed there): a difference cannot be ruled out") in result.stderr.splitlines()
    # A package that is not installed is known: torchao null beside 0.18 is a difference, not an unknown.
    write_run(tmp_path / "fp8", [{**r, "env": {**r["env"], "torchao": "0.18.0"}} for r in base])
    result = invoke(str(tmp_path / "base"), str(tmp_path / "fp8"))
    assert "lmbench: warning: torchao differs: not installed (baseline) vs 0.18.0 (candidate)" in \
        result.stderr.splitlines()


def test_a_floor_that_tells_runs_apart_covers_a_gate_between_runs():
    """The review's model: every process of a run shares the run's offset. A floor that took the shift between its
    two calibration runs for process noise shrank it with the repeats, and missed the true ratio of a 3-vs-3 gate
    between two other runs 22-51% of the time. From the spread of 3 runs' means, at 1% a process and 2% a run, it
    misses about 4.9% (2,000 simulated gates; 600 here)."""
    import numpy as np

    from lmbench.analyze import noise

    rng = np.random.default_rng(11)

    def run(repeats, offset=0.02):
        return list(np.exp(rng.normal(0, offset) + rng.normal(0, 0.01, repeats)))

    misses, trials, false_alarms = 0, 600, 0
    for _ in range(trials):
        floor = noise.estimate([run(3), run(3), run(3)])
        base, cand = run(3), run(3)
        low, high = floor.interval(statistics.median(cand) / statistics.median(base), 3, 3)
        misses += not low <= 1.0 <= high
        false_alarms += high < 0.95
    assert misses / trials <= 0.065 and false_alarms <= 1
    # Without offsets the runs' means differ by their processes alone: the 3-vs-3 floor is near the processes'.
    floors = [noise.estimate([run(3, 0.0), run(3, 0.0), run(3, 0.0)]).floor(3) for _ in range(200)]
    assert 0.015 < statistics.median(floors) < 0.035
    # Runs 5% apart: no number of repeats resolves 5%.
    apart = noise.estimate([[100.0, 100.2, 99.8], [95.0, 95.2, 94.8], [100.1, 99.9, 100.0]])
    assert apart.repeats_for(0.05) == 1001 and apart.floor(1000) > 0.05


def test_more_repeats_never_widen_a_floor_interval():
    """A new user's 2-run calibration printed floor 1 vs 1 17.3% and 3 vs 3 21.6%: by its own repeat counts the
    interval widened as the processes' term gave way to the run term's one degree of freedom. It is now the
    widest for these repeats or more, which also covers the few-repeat gates that the narrow intervals missed."""
    two_runs = ConfigNoise(log_sd=0.03, df=4, run_mean_sd=0.02, run_df=1, mean_repeats=3.0)
    widths = [two_runs.half_width(n, n) for n in (1, 2, 3, 5, 10, 100)]
    assert widths == sorted(widths, reverse=True)
    assert two_runs.floor(1) >= two_runs.floor(3) >= two_runs.floor(1000)
    # Past mean_repeats the processes' term is 0: the run term alone, t(0.975, 1) x sqrt(2) x 0.02.
    assert two_runs.half_width(100, 100) == pytest.approx(12.706205 * 2**0.5 * 0.02, rel=1e-6)
    # Where the processes' term rules: 3 a side (medians, pi/2 / 3 each) cost more than 2 a side (means, 1/2
    # each), and 3 a side widened 2 a side's interval (1.50% to 1.59%, a reviewer's case).
    processes = ConfigNoise(log_sd=0.01, df=6, run_mean_sd=0.002, run_df=2, mean_repeats=3.0)
    floors = [processes.floor(n) for n in (1, 2, 3, 4, 5, 10)]
    assert floors == sorted(floors, reverse=True) and floors[1] == floors[2]
    import numpy as np

    from lmbench.analyze import noise

    rng = np.random.default_rng(5)

    def run(repeats, offset=0.02):
        return list(np.exp(rng.normal(0, offset) + rng.normal(0, 0.01, repeats)))

    misses = 0
    for _ in range(400):  # 2 runs of 3, gates of 1 a side: 9.5% missed by the gate's own counts, 3.3% now
        floor = noise.estimate([run(3), run(3)])
        low, high = floor.interval(run(1)[0] / run(1)[0], 1, 1)
        misses += not low <= 1.0 <= high
    assert misses / 400 <= 0.06


def test_a_version_1_floor_still_gates_with_no_run_term(tmp_path):
    base, cand = write_run(tmp_path / "b", run_of({"a": [100.0]})), write_run(tmp_path / "c", run_of({"a": [90.0]}))
    path = tmp_path / "v1.json"
    path.write_text(json.dumps({"format": "lmbench-noise-floor", "version": 1, "metric": "tokens_per_s",
                                "device": "NVIDIA H100 80GB HBM3", "configs": {"a": {"log_sd": 0.01, "df": 5}}}))
    result = invoke(base, cand, "--noise-floor", str(path))
    assert result.exit_code == 1 and "regression" in result.stdout


def test_a_run_of_unreadable_lines_says_why_not_that_it_is_empty(tmp_path):
    base = write_run(tmp_path / "base", run_of({"a": TIGHT}))
    broken = write_run(tmp_path / "broken", [], extra='{"broken": \n')
    result = invoke(base, broken)
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"lmbench: error: the candidate run {broken!r} holds no readable record: 1 "
                                     f"line(s) skipped ({broken}/results.jsonl:1: skipped corrupt line "
                                     "(Expecting value: line 1 column 12 (char 11)))")


def test_an_absurd_value_gives_an_unbounded_interval_not_a_crash(tmp_path):
    """1e308 tokens/s: exp() of the interval's half-width overflowed (exit 3, numpy warnings on stderr)."""
    base = write_run(tmp_path / "base", run_of({"a": [100.0, 101.0, 99.0]}))
    cand = write_run(tmp_path / "cand", run_of({"a": [1e308, 100.0, 101.0]}))
    result = invoke(base, cand, "--format", "json")
    assert result.exit_code == 0 and result.stderr == ""
    verdict, = json.loads(result.stdout)["verdicts"]
    assert verdict["verdict"] == "inconclusive" and (verdict["ci_high"] is None or verdict["ci_high"] > 1e300)


def test_runs_of_one_repeat_each_take_the_means_spread_for_the_processes():
    """Contended repeats left out can leave one a run: no within-run spread, and a floor of 0 would call any two
    repeats a side too spread for it."""
    from lmbench.analyze import noise

    floor = noise.estimate([[100.0], [102.0], [98.0]])
    logs = [math.log(v) for v in (100.0, 102.0, 98.0)]
    assert floor.log_sd == floor.run_mean_sd == pytest.approx(statistics.stdev(logs))
    assert (floor.df, floor.run_df, floor.mean_repeats) == (2, 2, 1.0)


def test_a_noise_floor_of_other_configurations_is_not_ignored_silently(tmp_path):
    base, cand = write_run(tmp_path / "b", run_of({"a": TIGHT})), write_run(tmp_path / "c", run_of({"a": TIGHT}))
    floor = noise_file(tmp_path / "floor.json", {"other": {"log_sd": 0.01, "df": 5}})
    result = invoke(base, cand, "--noise-floor", floor)
    assert (f"lmbench: warning: the noise floor {floor} has none of these runs' configurations (another suite or "
            "other --set values?): every verdict rests on its repeats alone") in result.stderr


def test_a_floor_measured_in_one_run_only_says_it_has_no_run_term():
    from lmbench.analyze import noise

    runs = [run_of({"a": [100.0, 101.0], "b": [50.0, 51.0]}), run_of({"a": [99.0, 100.5]}),
            run_of({"a": [100.2, 99.8]}) + [record("b", None, status="oom")]]
    estimates, payload = noise.calibrate(runs, metric="tokens_per_s", repeats_per_run=2)
    assert estimates["b"].run_df == 0 and "note" not in payload["configs"]["a"]
    assert payload["configs"]["b"]["note"] == ("ok in 1 of 3 runs: no term for a run's offset, the floor covers one "
                                               "run's processes only")


def test_a_gap_the_runs_alone_leave_unsettled_asks_for_runs_not_repeats():
    """The run term never narrows with repeats: 'over 1,000 repeats per side needed' sent the user after repeats."""
    floor = ConfigNoise(log_sd=0.005, df=6, run_mean_sd=0.01, run_df=2, mean_repeats=3.0)
    v = decide([100.0], [93.0], threshold=0.05, higher_is_better=True, noise=floor)
    assert v.verdict == "inconclusive" and ("the floor's noise between runs alone reaches past the threshold, which "
                                            "no number of repeats narrows") in v.note


def test_a_floor_entry_with_run_df_needs_its_run_mean_sd(tmp_path):
    base, cand = write_run(tmp_path / "b", run_of({"a": [100.0]})), write_run(tmp_path / "c", run_of({"a": [90.0]}))
    floor = tmp_path / "f.json"
    floor.write_text(json.dumps({"format": "lmbench-noise-floor", "version": 2, "metric": "tokens_per_s",
                                 "configs": {"a": {"log_sd": 0.01, "df": 4, "run_df": 2}}}))
    result = invoke(base, cand, "--noise-floor", str(floor))
    assert result.exit_code == 2 and "configs['a'] needs log_sd in [0, 5]" in result.stderr


def test_a_configuration_whose_kernels_applied_differ_says_so():
    """kernels_applied was recorded and never read: a newer lmbench fusing more, or torch.compile breaking the graph
    somewhere else, compared as the same configuration without a word (review 2026-11-27)."""
    def with_applied(records, applied):
        for r in records:
            r["metrics"]["kernels_applied"] = applied
        return records

    base = with_applied(run_of({"a": TIGHT}), "torch.compile: 2 graph(s), 1 graph break(s)")
    cand = with_applied(run_of({"a": [v * 1.1 for v in TIGHT]}), "torch.compile: 1 graph(s), 0 graph break(s)")
    (v,) = compare(base, cand)
    assert v.verdict == "improvement"
    assert v.note == ("other kernels applied: baseline torch.compile: 2 graph(s), 1 graph break(s); candidate "
                      "torch.compile: 1 graph(s), 0 graph break(s)")
    (same,) = compare(base, with_applied(run_of({"a": TIGHT}), "torch.compile: 2 graph(s), 1 graph break(s)"))
    assert "other kernels" not in same.note
    (unsaid,) = compare(run_of({"a": TIGHT}), cand)  # an older record says nothing: no claim either way
    assert "other kernels" not in unsaid.note


def test_a_pipeline_split_otherwise_says_so():
    """lmbench 2026-11-28 splits a pipeline for the LM head's work: the same key over another split is a change of
    the harness's, not of the code under test."""
    def split(records, layers):
        for r in records:
            r["metrics"]["pp_layers_per_stage"] = layers
        return records

    (v,) = compare(split(run_of({"a": TIGHT}), [6, 6]), split(run_of({"a": [v * 1.1 for v in TIGHT]}), [8, 4]))
    assert v.note == "other blocks per pipeline stage: baseline [6, 6]; candidate [8, 4]"


def test_a_configuration_trained_on_another_corpus_says_so():
    """Records name their corpus by its SHA-256: a file edited at the same path compared silently."""
    base, cand = run_of({"a": TIGHT}), run_of({"a": TIGHT})
    for records, digest in ((base, "aa11"), (cand, "bb22")):
        for r in records:
            r["metrics"]["data_sha256"] = digest
    (v,) = compare(base, cand)
    assert v.verdict == "unchanged" and "other data: baseline aa11; candidate bb22" in v.note


def test_energy_measured_two_ways_is_no_verdict():
    """A speed-up that took the window under the counter's second switched the candidate's energy to the power
    integral: the ratio mixed the change of method with the change (a reviewer)."""
    base = run_of({"a": TIGHT}, metric="j_per_token")
    cand = run_of({"a": [v * 0.8 for v in TIGHT]}, metric="j_per_token")
    for records, source in ((base, "counter"), (cand, "power-integral (window too short for the counter)")):
        for r in records:
            r["metrics"]["energy_source"] = source
    (v,) = compare(base, cand, metric="j_per_token")
    assert v.verdict == "inconclusive" and "energy measured another way: baseline counter; candidate power-integral" \
        in v.note
    for r in cand:
        r["metrics"]["energy_source"] = "counter"
    (same,) = compare(base, cand, metric="j_per_token")
    assert same.verdict == "improvement"
    (speed,) = compare(run_of({"a": TIGHT}), run_of({"a": TIGHT}))  # not an energy metric: never looked at
    assert "energy measured" not in speed.note


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_a_change_inside_the_threshold_either_way_is_unchanged(higher_is_better):
    """Every test of the threshold's edge used a slowdown: a 3% rise read against `low > 1` (not `1 + threshold`)
    survived as a blocking regression of step time (a mutation test)."""
    verdict = decide(TIGHT, [v * 1.03 for v in TIGHT], threshold=0.05, higher_is_better=higher_is_better)
    assert (verdict.verdict, verdict.note) == ("unchanged", "a change of +3.0%, inside the ±5% threshold")


def test_the_ratio_shown_is_of_medians_and_the_welch_interval_pinned():
    """A ratio of means (one slow repeat pulling it to 1.12) and a Welch interval without the median's sqrt(pi/2)
    both passed every test (a mutation test)."""
    assert decide([100.0] * 5, [90.0, 90.0, 90.0, 90.0, 200.0], threshold=0.05, higher_is_better=True).ratio == \
        pytest.approx(0.9)
    from lmbench.analyze.compare import log_t_interval

    assert log_t_interval([100.0, 103.0, 98.0], [97.0, 101.0, 104.0]) == pytest.approx((0.92298, 1.10523), rel=1e-4)


def test_a_failed_repeat_that_measured_a_figure_is_no_value_of_the_comparison():
    """A diverged or timed-out record may carry tokens/s: only the ok repeats count (a mutation dropping the status
    filter survived, since the test records of other statuses carried no metrics)."""
    from lmbench.analyze.noise import ok_values

    records = run_of({"a": [100.0, 101.0, 99.0]}) + [{**record("a", None, status="diverged", repeat=3),
                                                       "metrics": {"tokens_per_s": 10.0}}]
    assert ok_values(records, "tokens_per_s")["a"] == [100.0, 101.0, 99.0]


def test_each_verdict_carries_both_sides_medians():
    """The output showed a ratio and never the figures it is of (a reviewer)."""
    v = decide([100.0, 104.0, 98.0], [90.0, 91.0, 95.0], threshold=0.05, higher_is_better=True)
    assert (v.base_median, v.cand_median) == (100.0, 91.0)
    assert v.as_dict()["base_median"] == 100.0 and v.as_dict()["cand_median"] == 91.0
    verdicts = {v.config_key: v for v in compare(run_of({"a": TIGHT, "b": [7.0, 9.0, 8.0]}), run_of({"a": [50.0]}))}
    assert (verdicts["a"].base_median, verdicts["a"].cand_median) == (100.0, 50.0)  # 5 vs 1: inconclusive
    assert (verdicts["b"].verdict, verdicts["b"].base_median, verdicts["b"].cand_median) == ("missing", 8.0, None)


@pytest.mark.parametrize(("base", "cand", "sides"), [
    ([0.1, 0.2, 0.15], [-0.1, -0.2, -0.15], "the candidate"),  # a sign change: ratio -1, was an improvement
    ([-1.0, -1.1, -0.9], [-1.3, -1.4, -1.2], "the baseline and the candidate"),  # 1.3: was a regression
    ([0.0, 0.0, 0.0, 0.0], [-1.0, -2.0, -1.0, -1.0], "the candidate"),  # was judged by the order of its repeats
])
def test_a_median_below_zero_has_no_ratio_and_no_verdict(base, cand, sides):
    v = decide(base, cand, threshold=0.05, higher_is_better=False)
    assert (v.verdict, v.ratio, v.ci_low, v.ci_high) == ("inconclusive", None, None, None)
    assert v.note == (f"median below 0 in {sides}: a ratio of values that are not positive is not defined, so no "
                      "threshold applies; compare a metric that is")
    assert (v.base_median, v.cand_median) == (statistics.median(base), statistics.median(cand))


def test_a_verdict_gated_by_a_floor_taken_on_a_contended_host_says_so():
    """Such a floor was used with a warning for the run only: the row it set the interval of did not say."""
    floor = NoiseFloor(metric="tokens_per_s", configs={"a": ConfigNoise(log_sd=0.01, df=6),
                                                       "b": ConfigNoise(log_sd=0.01, df=6)},
                       source="nf.json", contended=frozenset({"b"}))
    verdicts = {v.config_key: v for v in compare(run_of({"a": [100.0], "b": [100.0]}),
                                                 run_of({"a": [99.0], "b": [99.0]}), noise=floor)}
    said = "its noise floor was taken on a contended host (it measures that host's load as much as the configuration)"
    assert said in verdicts["b"].note and "contended" not in verdicts["a"].note


def _floor_with_environment(path, **said):
    path.write_text(json.dumps({"format": "lmbench-noise-floor", "version": 2, "metric": "tokens_per_s",
                                "device": "NVIDIA H100 80GB HBM3", **said,
                                "configs": {"a": {"log_sd": 0.01, "df": 6}}}))
    return str(path)


def test_a_floor_from_another_driver_torch_lmbench_or_suite_is_warned_of(tmp_path):
    """The file said only the device: a floor calibrated before a driver or torch upgrade, or of another suite's
    content, gated with no word (a reviewer)."""
    runs = []
    for name, torch_version in (("base", "2.11"), ("cand", "2.13"), ("again", "2.11")):
        records = [{**r, "env": {**r["env"], "torch": torch_version, "lmbench": "0.1.0"}} for r in run_of({"a": TIGHT})]
        runs.append(write_run(tmp_path / name, records))
        (tmp_path / name / "run.json").write_text(json.dumps({"plan": {"suite_sha256": "ab" * 32}}))
    floor = _floor_with_environment(tmp_path / "f.json", driver="575", torch="2.11", lmbench="0.1.0",
                                    suite_sha256="cd" * 32)
    result = invoke(*runs[:2], "--noise-floor", floor)
    assert (f"lmbench: warning: the noise floor {floor} was measured in another environment than the runs (driver "
            "575 (floor), 580 (baseline), 580 (candidate); torch 2.11 (floor), 2.11 (baseline), 2.13 (candidate); "
            "suite content sha256 cdcdcdcdcdcd (floor), abababababab (baseline), abababababab (candidate)): its "
            "spread may not be these runs' noise; calibrate again where they ran") in result.stderr.splitlines()
    same = _floor_with_environment(tmp_path / "same.json", driver="580", torch="2.11", lmbench="0.1.0",
                                   suite_sha256="ab" * 32)
    result = invoke(runs[0], runs[2], "--noise-floor", same)
    assert result.exit_code == 0 and result.stderr == ""
    # What a file does not say (one from before these were kept) is not held against it.
    result = invoke(*runs[:2], "--noise-floor", _floor_with_environment(tmp_path / "o.json"))
    assert result.exit_code == 0 and "another environment" not in result.stderr


def test_calibrate_records_the_environment_and_the_suite_it_measured():
    from lmbench.analyze import noise

    runs = [[{**r, "env": {**r["env"], "lmbench": "0.1.0"}} for r in run_of({"a": [100.0, 101.0]})] for _ in "ab"]
    _, payload = noise.calibrate(runs, metric="tokens_per_s", repeats_per_run=2, suite_sha256="ab" * 32)
    assert {key: payload[key] for key in ("device", "driver", "torch", "lmbench", "suite_sha256")} == {
        "device": "NVIDIA H100 80GB HBM3", "driver": "580", "torch": "2.11", "lmbench": "0.1.0",
        "suite_sha256": "ab" * 32}


def test_the_threshold_to_gate_at_is_twice_the_floor_not_the_floor():
    """calibrate advised gating at the floor: there an unchanged configuration came out unchanged 11% of the time
    (a reviewer). (1 + floor)² - 1 is where 95% do, by the floor's own model: its interval is a 95% prediction of
    where an unchanged ratio falls, and the interval around that ratio must fit inside the threshold too."""
    import numpy as np

    from lmbench.analyze.noise import estimate

    floor = ConfigNoise(log_sd=0.01, df=6, run_mean_sd=0.01, run_df=2, mean_repeats=3.0)
    assert floor.gate_threshold(1) == pytest.approx((1 + floor.floor(1)) ** 2 - 1)
    rng = np.random.default_rng(6)
    unchanged = {"floor": 0, "gate_threshold": 0}
    gates = 300
    for _ in range(gates):
        # 1% noise a process and 1% a run: a calibration of 3 runs of 3, then a gate of 1 repeat a side.
        noise = estimate([list(1000 * np.exp(rng.normal(0, 0.01) + rng.normal(0, 0.01, 3))) for _ in range(3)])
        base, cand = ([1000 * math.exp(rng.normal(0, 0.01) + rng.normal(0, 0.01))] for _ in "bc")
        for name, threshold in (("floor", noise.floor(1)), ("gate_threshold", noise.gate_threshold(1))):
            verdict = decide(base, cand, threshold=min(threshold, 0.99), higher_is_better=True, noise=noise)
            unchanged[name] += verdict.verdict == "unchanged"
    assert unchanged["floor"] / gates < 0.2 and unchanged["gate_threshold"] / gates >= 0.93

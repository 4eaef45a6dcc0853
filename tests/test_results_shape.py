"""The results reader's shape check: a line whose fields the report and compare read as text, a list of text, a
flag or a number holds something else is skipped with a warning naming the line and the field, never an internal
error (trial 100's fuzz_records.py: 25 crash signatures from one mutated field of real GPU records)."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_report import hand_record

from lmbench.analyze import results
from lmbench.cli import cli

REPO = Path(__file__).resolve().parent.parent


def _mutated(path, value):
    record = hand_record("amp-bf16", 8, 2000.0)
    holder = record
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = value
    return record


@pytest.mark.parametrize("path, value, problem", [
    # Each a crash of report or compare before (the exception it raised in the comment).
    (("metrics", "power_avg_w"), [], "metrics.power_avg_w is not a number (its unit says it is one)"),  # list / float
    (("metrics", "sm_clock_avg_mhz"), [], "metrics.sm_clock_avg_mhz is not a number (its unit says it is one)"),
    (("metrics", "energy_disagreement_frac"), [], "metrics.energy_disagreement_frac is not a number (its unit says "
                                                  "it is one)"),  # abs() of a list
    (("metrics", "host_other_cpu_cores"), [], "metrics.host_other_cpu_cores is not a number (its unit says it is "
                                              "one)"),  # list < float, in report and compare
    (("metrics", "energy_source"), -1, "metrics.energy_source is not text"),  # int.startswith
    (("metrics", "energy_source"), {"a": 1}, "metrics.energy_source is not text"),
    (("metrics", "throttle_reasons"), -1, "metrics.throttle_reasons is not a list of text"),  # join of an int
    (("metrics", "throttle_reasons"), [1, "a"], "metrics.throttle_reasons is not a list of text"),
    (("metrics", "device_names"), True, "metrics.device_names is not a list of text"),  # bool[0]
    (("metrics", "device_names"), {"a": 1}, "metrics.device_names is not a list of text"),  # KeyError 0
    (("metrics", "params"), "x", "metrics.params is not a number"),  # str / int
    (("metrics", "params"), 1e308, "metrics.params is not a whole number of parameters"),  # OverflowError
    (("metrics", "params"), {"a": 1}, "metrics.params is not a number"),
    (("env", "cuda"), 13.0, "env.cuda is not text"),  # join of a float
    (("env", "cuda"), True, "env.cuda is not text"),
    (("env", "cuda"), [1, "a"], "env.cuda is not text"),  # unhashable
    (("env", "device", "name"), 5, "env.device.name is not text"),
    (("env", "env_vars"), ["A=1"], "env.env_vars is not an object of text"),
    (("metrics", "stalls"), "yes", "metrics.stalls is not true or false"),
    (("metrics", "step_time_median_s_per_rank"), 0.1, "metrics.step_time_median_s_per_rank is not a list of numbers "
                                                      "(its name says one a rank, stage or step)"),
    (("metrics", "profile_top_kernels"), [{"name": 1, "time_s": 0.1, "calls": 1}],
     "metrics.profile_top_kernels is not a list of kernels (a name, time_s and calls each)"),
    (("metrics", "val_points"), [{"tokens": "x"}], "metrics.val_points is not a list of evaluations (numbers each)"),
])
def test_a_field_of_another_type_than_it_is_read_as_is_named(path, value, problem):
    assert results.shape_problem(_mutated(path, value)) == problem


def test_what_lmbench_writes_keeps_its_shape():
    # Lists where a name says one a rank, a stage or a step; null anywhere; every record of the published runs.
    record = _mutated(("metrics", "step_time_median_s_per_rank"), [0.1, 0.2])
    record["metrics"].update(warmup_step_times_s=[0.5, 0.1], warmup_losses=[9.0, None], pp_busy_s_per_stage=[1.0],
                             energy_source=None, throttle_reasons=None, params=124_000_000, stalls=False,
                             # A count that ends like a list (a pipeline's records were skipped: test_model_parallel).
                             pp_stages_per_rank=1, pp_layers_per_stage=[2, 2],
                             mem_peak_allocated_bytes_per_rank=[None, None])
    record["env"].update(cudnn=91002, env_vars={"OMP_NUM_THREADS": "1"}, data_draw=2)
    assert results.shape_problem(record) is None
    published = [line for path in sorted(REPO.glob("reports/**/results.jsonl"))
                 for line in path.read_text().splitlines() if line.strip()]
    assert len(published) > 50
    assert [results.shape_problem(json.loads(line)) for line in published] == [None] * len(published)


def _run(folder, records):
    folder.mkdir()
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_report_and_compare_skip_such_a_line_with_a_warning_naming_it(tmp_path):
    good = [hand_record("amp-bf16", 8, 2000.0, repeat=i) for i in range(3)]
    bad = _mutated(("metrics", "host_other_cpu_cores"), [])
    bad["repeat"] = 3
    cuda = _mutated(("env", "cuda"), 13.0)
    cuda["repeat"] = 4
    run = _run(tmp_path / "cand", [*good, bad, cuda])
    result = CliRunner().invoke(cli, ["report", str(run), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    results_file = run / "results.jsonl"
    assert (f"lmbench: warning: {results_file}:4: skipped line: metrics.host_other_cpu_cores is not a number (its "
            "unit says it is one)") in result.stderr
    assert f"lmbench: warning: {results_file}:5: skipped line: env.cuda is not text" in result.stderr
    base = _run(tmp_path / "base", good)
    result = CliRunner().invoke(cli, ["compare", str(base), str(run)])
    assert result.exit_code == 0, result.output
    assert f"{results_file}:4: skipped line: metrics.host_other_cpu_cores is not a number" in result.stderr

"""Bad input on the command line, as a new user's walk-through met it: one line naming the thing and what is
allowed, exit 2, never a traceback; nothing measured is lost or mixed with another plan's records."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from lmbench.cli import cli


@pytest.fixture(autouse=True)
def no_worker(monkeypatch):
    """Nothing here trains: a command that would start a worker fails the test at once (fake workers where asked)."""
    from lmbench.run import runner

    def refuse(*args, **kwargs):
        raise AssertionError("this test must not start a worker")

    monkeypatch.setattr(runner, "worker_command", refuse)


def lmbench(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


def error(result) -> str:
    """The one line of a refusal (exit 2), without its `lmbench: error: ` prefix (click's own errors keep theirs:
    `lmbench: error (lmbench COMMAND): ...`)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    line, = result.stderr.strip().splitlines()
    assert line.startswith("lmbench: error"), line
    return line.removeprefix("lmbench: error: ")


# 3. Files that are not UTF-8 text.

def test_a_suite_file_that_is_not_utf8_is_bad_input(tmp_path):
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\xff\xfe[defaults]\n")
    assert error(lmbench("run", "--suite", path, "--dry-run")) == (
        f"{path}: not UTF-8 text (byte 0xff at offset 0); a suite file is TOML, which is UTF-8")


# 4. An empty path is the current directory: refused for every path option of every command.

EMPTY = "empty; give a path (an empty one would mean the current directory)"


@pytest.mark.parametrize(("args", "name"), [
    (["run", "--suite", "smoke", "--out", ""], "'--out'"),
    (["calibrate", "--suite", "smoke", "--out", ""], "'--out'"),
    (["tune", "--model", "tiny-gpt2", "--out", ""], "'--out'"),
    (["report", ""], "'RUN_DIRS...'"),
    (["report", "{run}", "--out", ""], "'--out'"),
    (["report", "{run}", "--ceilings", ""], "'--ceilings'"),
    (["compare", "", "{run}"], "'BASE'"),
    (["compare", "{run}", ""], "'CAND'"),
    (["compare", "{run}", "{run}", "--junit", ""], "'--junit'"),
    (["compare", "{run}", "{run}", "--noise-floor", ""], "'--noise-floor'"),
    (["kernels", "--op", "rmsnorm", "--shape", "8x8", "--csv", ""], "'--csv'"),
    (["kernels", "--op", "rmsnorm", "--shape", "8x8", "--ceilings", ""], "'--ceilings'"),
    (["ceilings", "--out", ""], "'--out'"),
])
def test_an_empty_path_option_is_refused(tmp_path, monkeypatch, args, name):
    monkeypatch.chdir(tmp_path)
    line = error(lmbench(*(a.format(run=tmp_path) for a in args)))
    assert line == f"lmbench: error (lmbench {args[0]}): Invalid value for {name}: {EMPTY}"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [["run", "--suite", "smoke", "--out", "  "], ["ceilings", "--out", "\t"],
                                  ["report", " "]])
def test_a_path_of_only_whitespace_is_refused(tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    line = error(lmbench(*args))
    assert line.endswith("is only whitespace; give a path") and repr(args[-1]) in line
    assert list(tmp_path.iterdir()) == []


def test_an_empty_suite_is_refused():
    assert error(lmbench("run", "--suite", "  ", "--dry-run")) == (
        "lmbench: error (lmbench run): Invalid value for '--suite': '  ' is only whitespace; give a built-in suite "
        "(lmbench list) or the path of a suite file")
    assert error(lmbench("run", "--suite", "", "--dry-run")) == (
        "lmbench: error (lmbench run): Invalid value for '--suite': empty; give a built-in suite (lmbench list) or "
        "the path of a suite file")
    assert error(lmbench("calibrate", "--suite", "")).startswith("lmbench: error (lmbench calibrate): Invalid value "
                                                                  "for '--suite': empty;")


# 12. A noise floor that does not say where it was measured.

def _run_with(path, *values: float, device: str | None = "NVIDIA H100 80GB HBM3"):
    from lmbench.analyze import results

    path.mkdir()
    for repeat, value in enumerate(values):
        results.append(path, results.make_record(
            suite="s", config={"model": "tiny-gpt2"}, config_key="k", repeat=repeat, status="ok", reason=None,
            payload={"metrics": {"tokens_per_s": value}, "env": {"device": {"name": device}} if device else None}))
    return path


def test_a_noise_floor_without_a_device_says_so(tmp_path):
    import json

    from lmbench.analyze import noise

    run = _run_with(tmp_path / "run", 100.0, 101.0)
    again = _run_with(tmp_path / "again", 100.0, 101.0)
    floor = tmp_path / "nf.json"
    floor.write_text(json.dumps({"format": noise.FORMAT, "version": noise.VERSION, "metric": "tokens_per_s",
                                 "configs": {"k": {"log_sd": 0.01, "df": 4}}}))
    result = lmbench("compare", run, again, "--noise-floor", floor)
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [f"lmbench: warning: the noise floor {floor} was measured on an unrecorded "
                                          "device, the runs ran on NVIDIA H100 80GB HBM3"]


# 10. Messages that named the wrong thing.

def test_a_directory_given_as_suite_is_named_a_directory(tmp_path):
    line = error(lmbench("run", "--suite", tmp_path, "--dry-run"))
    assert line.startswith(f"suite '{tmp_path}' is a directory; give the path of a suite .toml file, or a built-in "
                           "suite: batch-sweep, ci, ")


def test_a_directory_named_like_a_suite_file_is_named_a_directory(tmp_path):
    (tmp_path / "adir.toml").mkdir()
    line = error(lmbench("run", "--suite", tmp_path / "adir.toml", "--dry-run"))
    assert line == f"suite file '{tmp_path / 'adir.toml'}' is a directory; give the path of a suite .toml file"


def test_a_file_given_as_run_directory_is_named_a_file(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    assert error(lmbench("report", afile)) == f"run directory '{afile}' is a file, not a run directory"
    assert error(lmbench("report", tmp_path / "none")) == f"run directory '{tmp_path / 'none'}' does not exist"


def test_nnodes_without_an_endpoint_names_the_missing_option():
    assert error(lmbench("run", "--suite", "smoke", "--nnodes", "2", "--dry-run")) == (
        "--nnodes 2 needs --rdzv-endpoint HOST:PORT, node 0's address and a free port")


def test_plural_and_type_names_read_as_english(tmp_path):
    result = lmbench("run", "--suite", "smoke", "--device", "cpu", "--set", "model=tiny-gpt2",
                     "--set", "precision=fp32", "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].rstrip() == "1 configuration"
    path = tmp_path / "s.toml"
    path.write_text("[defaults]\nbatch_size = 4.5\n")
    assert error(lmbench("run", "--suite", path, "--dry-run")) == (
        f"{path}: [defaults]: batch_size=4.5 must be an integer")
    assert error(lmbench("run", "--suite", "smoke", "--set", "lr=fast", "--dry-run")) == (
        "--set 'lr=fast': lr='fast' is not a number")


# 11. A TOML file has types; a matrix measures each point once.

@pytest.mark.parametrize(("text", "message"), [
    ('[defaults]\nbatch_size = "4"\n',
     "[defaults]: batch_size='4' is a string; batch_size takes an integer (written without quotes in TOML)"),
    ('[matrix]\nlr = ["1e-3", 3e-4]\n',
     "[matrix]: lr='1e-3' is a string; lr takes a number (written without quotes in TOML)"),
    ('[defaults]\ntelemetry = "false"\n',
     "[defaults]: telemetry='false' is a string; telemetry takes true or false (written without quotes in TOML)"),
    ('[matrix]\nprecision = ["fp32", "bf16"]\n[[exclude]]\nprecision = "bf16"\nseed = "0"\n',
     "[[exclude]]: seed='0' is a string; seed takes an integer (written without quotes in TOML)"),
    ("[defaults]\nbatch_size = 4.0\n", "[defaults]: batch_size=4.0 must be an integer"),
    ("[matrix]\nbatch_size = [4, 4]\n", "[matrix]: batch_size lists 4 more than once; give each value once"),
    ("[matrix]\nlr = [1, 1.0]\n", "[matrix]: lr lists 1.0 more than once; give each value once"),
    ("[defaults]\nbatch_size = 2\n[matrix]\nbatch_size = [4, 8]\n",
     "batch_size is in both [defaults] and [matrix]; give it in one of them"),
])
def test_suite_values_keep_their_toml_types(tmp_path, text, message):
    path = tmp_path / "s.toml"
    path.write_text(text)
    assert error(lmbench("run", "--suite", path, "--dry-run")) == f"{path}: {message}"


def test_set_values_are_text_and_parsed_but_not_repeated():
    result = lmbench("run", "--suite", "smoke", "--set", "batch_size=4", "--set", "lr=1e-3", "--set", "telemetry=off",
                     "--dry-run")
    assert result.exit_code == 0, result.output
    assert error(lmbench("run", "--suite", "smoke", "--set", "batch_size=4,4", "--dry-run")) == (
        "--set 'batch_size=4,4': batch_size lists 4 more than once; give each value once")
    assert error(lmbench("tune", "--model", "tiny-gpt2", "--precision", "fp32,fp32")) == (
        "--precision 'fp32,fp32': precision lists 'fp32' more than once; give each value once")


def test_a_scalar_in_the_matrix_is_a_one_value_axis(tmp_path):
    from lmbench.plan import suite as suites

    path = tmp_path / "s.toml"
    path.write_text('[matrix]\nmodel = "tiny-llama"\nbatch_size = [1, 2]\n')
    planned = suites.load(str(path)).expand()
    assert [(p.config.model, p.config.batch_size) for p in planned] == [("tiny-llama", 1), ("tiny-llama", 2)]


# 5. A baseline no configuration has.

def test_a_baseline_value_no_configuration_has_is_refused(tmp_path):
    from lmbench.analyze import results

    run = tmp_path / "run"
    run.mkdir()
    for precision in ("fp32", "amp-bf16"):
        results.append(run, results.make_record(
            suite="s", config={"model": "tiny-gpt2", "precision": precision}, config_key=precision, repeat=0,
            status="ok", reason=None, payload={"metrics": {"tokens_per_s": 100.0}}))
    assert error(lmbench("report", run, "--baseline", "precision=fp99")) == (
        "--baseline precision=fp99: no configuration has precision=fp99; precision values present: amp-bf16, fp32")
    assert error(lmbench("report", run, "--baseline", "precison=fp32")) == (
        "--baseline precison=fp32: 'precison' is not a configuration axis; the axes that vary here: precision")
    assert not (run / "report").exists()


def test_a_baseline_whose_every_record_failed_gets_a_warning_and_the_report_is_written(tmp_path):
    from lmbench.analyze import results

    run = tmp_path / "run"
    run.mkdir()
    for repeat, (precision, status) in enumerate((("fp32", "oom"), ("fp32", "error"), ("amp-bf16", "ok"))):
        results.append(run, results.make_record(
            suite="s", config={"model": "tiny-gpt2", "precision": precision}, config_key=precision, repeat=repeat,
            status=status, reason=None if status == "ok" else "x",
            payload={"metrics": {"tokens_per_s": 100.0} if status == "ok" else None}))
    done = lmbench("report", run, "--baseline", "precision=fp32")
    assert done.exit_code == 0, done.output
    assert ("lmbench: warning: --baseline precision=fp32: every precision=fp32 configuration failed (error, oom), "
            "so there is no speedup to show") in done.output
    assert (run / "report" / "report.md").exists()
    assert "every precision" not in lmbench("report", run, "--baseline", "precision=amp-bf16").output


# 8. Conflicting or odd options.

@pytest.mark.parametrize(("args", "message"), [
    (["run", "--suite", "smoke", "--device", "cpu", "--set", "device=cuda"],
     "--device cpu and --set 'device=cuda' both set device; give one of them"),
    (["run", "--suite", "smoke", "--profile", "--set", "profile=false"],
     "--profile and --set 'profile=false' both set profile; give one of them"),
    (["calibrate", "--suite", "smoke", "--device", "cpu", "--set", "device=cpu,cuda"],
     "--device cpu and --set 'device=cpu,cuda' both set device; give one of them"),
    (["run", "--suite", "smoke", "--rdzv-endpoint", "foo"],
     "--rdzv-endpoint 'foo': expected HOST:PORT of node 0, with PORT in 1..65535"),
    (["run", "--suite", "smoke", "--nnodes", "2", "--rdzv-endpoint", "host:99999"],
     "--rdzv-endpoint 'host:99999': expected HOST:PORT of node 0, with PORT in 1..65535"),
    (["run", "--suite", "smoke", "--rdzv-endpoint", ":29500"],
     "--rdzv-endpoint ':29500': expected HOST:PORT of node 0, with PORT in 1..65535"),
    (["tune", "--model", "tiny-gpt2", "--device", "cpu", "--set", "device=cuda"],
     "--set device=...: tune sets device with its own option; use --device"),
    (["tune", "--model", "tiny-gpt2", "--set", "seq_len=32"],
     "--set seq_len=...: tune sets seq_len with its own option; use --seq-len"),
])
def test_an_axis_set_twice_or_an_odd_endpoint_is_refused(args, message):
    dry = ["--dry-run"] if args[0] == "run" else []
    assert error(lmbench(*args, *dry)) == message


def test_the_last_set_of_an_axis_wins_as_scripts_layer_them():
    from lmbench.plan import suite as suites

    assert suites.parse_overrides(["steps=20", "seed=1", "steps=2"]) == {"seed": [1], "steps": [2]}


def test_a_good_endpoint_passes_the_dry_run():
    result = lmbench("run", "--suite", "smoke", "--nnodes", "2", "--rdzv-endpoint", "[::1]:29500", "--dry-run")
    assert result.exit_code == 0, result.output


def _calibration(path):
    (path / "a").mkdir(parents=True)
    (path / "a" / "results.jsonl").write_text("")
    return path


def _tune_dir(path):
    path.mkdir()
    (path / "probes.jsonl").write_text('{"config_key": "k", "status": "ok"}\n')
    return path


@pytest.mark.parametrize(("command", "made_by", "make"), [
    (["calibrate", "--suite", "smoke"], "run", lambda path: _run_with(path, 100.0)),
    (["calibrate", "--suite", "smoke", "--resume"], "tune", _tune_dir),
    (["run", "--suite", "smoke"], "calibrate", _calibration),
    (["run", "--suite", "smoke", "--resume"], "tune", _tune_dir),
    (["tune", "--model", "tiny-gpt2", "--seq-len", "16", "--max-memory", "30MiB"], "calibrate", _calibration),
])
def test_a_directory_of_another_command_is_refused(tmp_path, command, made_by, make):
    out = make(tmp_path / "out")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    line = error(lmbench(*command, "--device", "cpu", "--out", out))
    assert line == (f"--out '{out}' already holds results of lmbench {made_by}, not of lmbench "
                    f"{command[0]}; choose another directory")
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


# 9. tune: options wrong on their own are named first; --seq-len is named; its default fits the model.

def test_tune_names_the_option_at_fault_cheap_ones_first():
    assert error(lmbench("tune", "--model", "tiny-gpt2", "--seq-len", "1024", "--margin", "2")) == (
        "lmbench: error (lmbench tune): Invalid value for '--margin': 2.0 is not in the range 0<=x<1.")
    assert error(lmbench("tune", "--model", "tiny-gpt2", "--seq-len", "1024", "--margin", "nan")) == (
        "--margin nan: must be a finite number")
    assert error(lmbench("tune", "--model", "tiny-gpt2", "--seq-len", "1024", "--max-memory", "lots")) == (
        "--max-memory 'lots': expected a size like 512MiB, 2GiB or 1.5G")
    assert error(lmbench("tune", "--model", "tiny-gpt2", "--seq-len", "1024")) == (
        "--seq-len 1024: more than the 256 positions of model tiny-gpt2; allowed: 1..256")


def test_tune_default_seq_len_is_the_models_positions_when_fewer(tmp_path, monkeypatch):
    from lmbench import tune

    monkeypatch.setattr(tune, "combos", lambda *lists: [])
    result = lmbench("tune", "--model", "tiny-gpt2", "--device", "cpu", "--max-memory", "30MiB",
                     "--out", tmp_path / "t")
    assert "largest batch that fits: tiny-gpt2, seq_len 256" in result.output
    # Nothing tuned is no success.
    assert result.exit_code == 2 and error(result) == ("tune found no winner (no configuration ran successfully); "
                                                       "its tables above say why")


# 1. tune records its plan, and --resume continues that plan or nothing.

@pytest.fixture
def fake_tune(monkeypatch):
    """tune's workers are tests/fake_worker.py: batch sizes above 2 run out of memory."""
    import fake_worker

    from lmbench.run import runner

    monkeypatch.setattr(runner, "worker_command", fake_worker.command)
    monkeypatch.setenv("FAKE_WORKER_OOM_ABOVE", "2")


TUNE = ("tune", "--model", "tiny-gpt2", "--seq-len", "16", "--precision", "fp32", "--checkpointing", "none",
        "--max-memory", "30MiB", "--max-batch", "4", "--margin", "0", "--device", "cpu")


def test_tune_resume_refuses_another_plan_and_names_the_command_that_resumes(tmp_path, fake_tune):
    import json

    out = tmp_path / "tune"
    assert lmbench(*TUNE, "--out", out).exit_code == 0
    plan = json.loads((out / "run.json").read_text())
    assert plan["command"] == "tune" and plan["plan"]["seq_len"] == 16 and plan["plan"]["max_memory"] == "30MiB"
    probes, records = (out / "probes.jsonl").read_text(), (out / "results.jsonl").read_text()
    same = (f"lmbench tune --model tiny-gpt2 --seq-len 16 --precision fp32 --kernels eager --checkpointing none "
            f"--max-memory 30MiB --margin 0.0 --max-batch 4 --device cpu --out {out} --resume")
    other = ["tune", "--model", "tiny-gpt2", "--seq-len", "8", "--precision", "fp32", "--checkpointing", "full",
             "--max-batch", "4", "--margin", "0", "--device", "cpu", "--out", out, "--resume"]
    assert error(lmbench(*other)) == (
        f"--resume: '{out}' was started with another plan (--seq-len: 8 now, 16 then; --checkpointing: full now, "
        f"none then; --max-memory: none now, 30MiB then); resume it with {same}, or choose another --out")
    # The tester's other case: only --out and --steps, every default standing in for what the tune was given.
    assert error(lmbench("tune", "--model", "tiny-gpt2", "--out", out, "--resume", "--steps", "5")).startswith(
        f"--resume: '{out}' was started with another plan (--seq-len: 256 now, 16 then; --precision: amp-bf16 now, "
        "fp32 then; --checkpointing: none,full now, none then; --max-memory: none now, 30MiB then; --margin: 0.1 "
        "now, 0.0 then; --max-batch: 4096 now, 4 then; --steps: 5 now, 20 then; --device: none now, cpu then); ")
    assert (out / "probes.jsonl").read_text() == probes and (out / "results.jsonl").read_text() == records
    # Another spelling of the same plan resumes, and so does the command the refusal gave; nothing runs again.
    respelled = [a if a != "30MiB" else str(30 * 2**20) for a in TUNE]
    assert error(lmbench(*respelled, "--out", out, "--resume", "--set", "seed=1")).startswith(
        f"--resume: '{out}' was started with another plan (--set: seed=1 now, none then); resume it with ")
    result = lmbench(*respelled, "--out", out, "--resume", "--budget-minutes", "5")  # not part of the plan
    assert result.exit_code == 0, result.output
    assert lmbench(*same.split()[1:]).exit_code == 0
    assert (out / "probes.jsonl").read_text() == probes and (out / "results.jsonl").read_text() == records
    assert len(json.loads((out / "run.json").read_text())["resumed"]) == 2


def test_tune_into_a_started_tune_needs_resume(tmp_path, fake_tune):
    out = tmp_path / "tune"
    out.mkdir()
    (out / "probes.jsonl").write_text('{"config_key": "k", "status": "ok"}\n')
    assert error(lmbench(*TUNE, "--out", out)) == (
        f"--out '{out}' already holds a tune; pass --resume to continue it, or choose another directory")


# 6. An interrupted tune says how to continue it.

def test_an_interrupted_tune_prints_the_command_that_resumes_it(tmp_path, fake_tune, monkeypatch):
    import shlex
    import signal

    from lmbench import tune
    from lmbench.run.interrupts import Interrupted

    out = tmp_path / "tune"
    probe = tune.Tuner.probe

    def interrupted_at_batch_4(self, combo, batch):
        if batch == 4:
            raise Interrupted(signal.SIGINT)
        return probe(self, combo, batch)

    monkeypatch.setattr(tune.Tuner, "probe", interrupted_at_batch_4)
    result = lmbench(*TUNE, "--out", out, "--budget-minutes", "30", "--objective", "throughput")
    assert result.exit_code == 130, result.output
    command = (f"lmbench tune --model tiny-gpt2 --seq-len 16 --precision fp32 --kernels eager --checkpointing none "
               f"--max-memory 30MiB --margin 0.0 --max-batch 4 --device cpu --out {out} --budget-minutes 30 --resume")
    assert result.stderr.strip().splitlines()[-1] == (
        f"lmbench: interrupted; the probes and measurements made so far are kept in {out}; the one that was running "
        f"has none and runs again on resume; continue with: {command}")
    monkeypatch.setattr(tune.Tuner, "probe", probe)
    resumed = lmbench(*shlex.split(command)[1:])
    assert resumed.exit_code == 0, resumed.output
    assert [line.count('"batch_size": ') for line in (out / "probes.jsonl").read_text().splitlines()] == [1] * 4


# 2. A run directory without a plan: resumed only when its records are of the same suite.

def test_resume_without_a_plan_refuses_records_of_another_suite(tmp_path):
    from lmbench.analyze import results

    out = tmp_path / "run"
    out.mkdir()
    results.append(out, results.make_record(suite="tune", config={"model": "tiny-gpt2"}, config_key="k", repeat=0,
                                            status="ok", reason=None, payload={"metrics": {"tokens_per_s": 1.0}}))
    before = (out / "results.jsonl").read_text()
    assert error(lmbench("run", "--suite", "smoke", "--device", "cpu", "--out", out, "--resume")) == (
        f"--resume: '{out}' records no plan (no run.json, or one from before plans were recorded) and holds records "
        "of suite 'tune', not of 'smoke'; choose another --out")
    assert (out / "results.jsonl").read_text() == before and not (out / "run.json").exists()


def test_resume_without_a_plan_continues_records_of_the_same_suite_with_a_warning(tmp_path, fake_tune):
    import json

    from lmbench.analyze import results

    suite = tmp_path / "mine.toml"
    suite.write_text('[defaults]\nmodel = "tiny-gpt2"\nseq_len = 16\nbatch_size = 1\ndevice = "cpu"\n')
    out = tmp_path / "run"
    out.mkdir()
    results.append(out, results.make_record(suite="mine", config={"model": "tiny-gpt2"}, config_key="k", repeat=0,
                                            status="ok", reason=None, payload={"metrics": {"tokens_per_s": 1.0}}))
    result = lmbench("run", "--suite", suite, "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    assert (f"lmbench: warning: {out}: run.json records no plan (an older lmbench, or not a run directory); "
            "resuming unchecked") in result.stderr.splitlines()
    assert [r["suite"] for r in results.read(out).records] == ["mine", "mine"]
    assert json.loads((out / "run.json").read_text())["command"] == "run"


# 7. run --resume --dry-run shows what the resume keeps.

def test_a_resumed_dry_run_shows_the_configurations_already_recorded(tmp_path, fake_tune):
    suite = tmp_path / "two.toml"
    suite.write_text('[defaults]\nmodel = "tiny-gpt2"\nseq_len = 16\nbatch_size = 1\ndevice = "cpu"\n'
                     "[matrix]\nseed = [1, 2]\n")
    out = tmp_path / "run"
    assert lmbench("run", "--suite", suite, "--out", out).exit_code == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text(lines[0] + "\n")
    result = lmbench("run", "--suite", suite, "--out", out, "--resume", "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [f"resuming {out}: 1 record(s) kept, 1 job(s) to go"]
    plans = [line.split("│")[-2].strip() for line in result.output.splitlines() if "tiny-gpt2-b1-s16" in line]
    assert plans == ["kept", "run"]
    result = lmbench("run", "--suite", suite, "--out", out, "--resume", "--dry-run", "--repeats", "2")
    assert result.stderr.splitlines() == [f"resuming {out}: 1 record(s) kept, 3 job(s) to go"]
    plans = [line.split("│")[-2].strip() for line in result.output.splitlines() if "tiny-gpt2-b1-s16" in line]
    assert plans == ["run (1 of 2 repeats kept)", "run"]
    refused = lmbench("run", "--suite", suite, "--out", out, "--resume", "--dry-run", "--set", "steps=3")
    assert error(refused).startswith(
        f"--resume: '{out}' was started with another plan (overrides (--set, --device): steps=3 now, none then); ")
    assert (out / "results.jsonl").read_text() == lines[0] + "\n"
    real = lmbench("run", "--suite", suite, "--out", out, "--resume")
    assert f"resuming {out}: 1 record(s) kept, 1 job(s) to go" in real.stderr


@pytest.mark.parametrize("what", ["run.json", "noise floor", "ceilings"])
def test_other_files_the_cli_reads_that_are_not_utf8_are_bad_input(tmp_path, what):
    run = _run_with(tmp_path / "run", 100.0)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe{}")
    if what == "run.json":
        (run / "run.json").write_bytes(b"\xff\xfe{}")
        args = ["run", "--suite", "smoke", "--device", "cpu", "--out", run, "--resume"]
    elif what == "noise floor":
        args = ["compare", run, run, "--noise-floor", binary]
    else:
        args = ["report", run, "--ceilings", binary]
    assert "'utf-8' codec can't decode byte 0xff in position 0" in error(lmbench(*args))


@pytest.mark.parametrize(("edit", "why"), [
    ({"repeats": "1"}, "repeats='1' is not int"),
    ({"suite_sha256": None, "device": 5}, "suite_sha256=None is not str"),
    ({"parity": 1}, "parity=1 is not bool"),
    ({"overrides": [1]}, "overrides=(1,) is not tuple[str, ...]"),
])
def test_resume_refuses_a_hand_edited_plan_of_the_wrong_types(tmp_path, edit, why):
    """run.json edited by hand (or by another tool) gets one line naming the field, not a TypeError (exit 3)."""

    out = tmp_path / "run"
    args = ("run", "--suite", "smoke", "--device", "cpu", "--out", out)
    from lmbench.plan.runplan import RunPlan
    from lmbench.run.rundir import RunDirectory

    with RunDirectory(out, resume=False) as run_dir:
        plan = RunPlan(suite="smoke", suite_sha256="0" * 64, device="cpu")
        run_dir.write_meta({"command": "run", "plan": {**plan.to_json(), **edit}})
    assert error(lmbench(*args, "--resume")) == f"run.json holds no readable plan ({why})"


@pytest.mark.parametrize("value", ["abc", "7", "-1"])
def test_a_slurm_node_id_that_is_no_node_rank_is_named(monkeypatch, value):
    monkeypatch.setenv("SLURM_NODEID", value)
    result = lmbench("run", "--suite", "smoke", "--device", "cpu", "--nnodes", "2", "--dry-run")
    assert error(result) == (f"SLURM_NODEID={value!r} (this node's rank, as --node-rank is not given): must be an "
                             "integer in 0..1 for --nnodes 2")


def test_ceilings_out_in_a_place_that_cannot_hold_it_is_refused_before_measuring(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert error(lmbench("ceilings", "--out", blocker / "c.json")) == (
        f"cannot write --out {str(blocker / 'c.json')!r}: its directory {str(blocker)!r} is not a directory")
    # A folder that does not exist is the user's to make (compare --junit refuses one too): nothing is created.
    missing = tmp_path / "no" / "such"
    assert error(lmbench("ceilings", "--out", missing / "c.json")) == (
        f"cannot write --out {str(missing / 'c.json')!r}: its directory {str(missing)!r} does not exist")
    assert not (tmp_path / "no").exists()
    assert error(lmbench("kernels", "--op", "rmsnorm", "--shape", "64x64", "--csv", missing / "k.csv")) == (
        f"cannot write --csv {str(missing / 'k.csv')!r}: its directory {str(missing)!r} does not exist")


def test_report_of_a_run_stopped_before_its_first_record_says_how_to_go_on(tmp_path):
    from lmbench.plan.runplan import RunPlan
    from lmbench.run.rundir import RunDirectory

    out = tmp_path / "run"
    plan = RunPlan(suite="smoke", suite_sha256="0" * 64, device="cpu")
    with RunDirectory(out, resume=False) as run_dir:
        run_dir.write_meta({"command": "run", "plan": plan.to_json()})
    expected = (f"{str(out)!r} holds no record yet: no configuration has finished there (the run is still going, or "
                f"it stopped before its first record); if it stopped, continue it with: lmbench run --suite smoke "
                f"--out {out} --device cpu --resume")
    assert error(lmbench("report", out)) == expected
    # compare says the same of either side (it said: no results file at '.../results.jsonl').
    other = tmp_path / "other"
    other.mkdir()
    assert error(lmbench("compare", other, out)) == expected


def test_tune_on_a_cpu_needs_a_memory_cap(tmp_path):
    """Without one the edge tune searched was the host's RAM: a review's tune probed up to batch 4096 on a 23 GiB
    host, and the kernel's out-of-memory killer ended it."""
    assert error(lmbench("tune", "--model", "tiny-gpt2", "--device", "cpu", "--out", tmp_path / "t")) == (
        "tune on a CPU needs --max-memory SIZE (e.g. 60MiB, 2GiB): the cap on training's host memory growth is the "
        "memory edge it searches; without one the edge is the host's RAM")
    assert not (tmp_path / "t").exists()


def test_a_dry_run_into_a_directory_of_results_answers_as_the_run_would(tmp_path):
    """It listed every row as `run` (exit 0) where the run itself is refused (exit 2; a new user's docs check)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.jsonl").write_text('{"config_key": "k"}\n')
    result = CliRunner().invoke(cli, ["run", "--suite", "smoke", "--out", str(out), "--dry-run", "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert "already holds results; pass --resume to continue that run" in result.stderr


def test_a_corpus_that_cannot_be_read_is_bad_input_from_set_or_suite(tmp_path, monkeypatch):
    """`--set data=<unreadable file>` ended as an internal error (exit 3, PermissionError; trial 100). Root reads a
    file of mode 000, so the read is made to fail."""
    import errno

    from lmbench.plan import config

    def denied(path, *args):
        raise PermissionError(errno.EACCES, "Permission denied", path)

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text\n")
    monkeypatch.setattr(config, "_scan", denied)
    assert error(lmbench("run", "--suite", "smoke", "--set", f"data={corpus}", "--dry-run")) == (
        f"--set 'data={corpus}': data='{corpus}': cannot read it (Permission denied)")
    suite = tmp_path / "s.toml"
    suite.write_text(f'[defaults]\ndata = "{corpus}"\n')
    assert error(lmbench("run", "--suite", suite, "--dry-run")) == (
        f"{suite}: [defaults]: data='{corpus}': cannot read it (Permission denied)")


@pytest.mark.parametrize(("command", "option"), [
    (["run", "--suite", "smoke"], "--repeats"),
    (["calibrate", "--suite", "smoke"], "--repeats"),
    (["tune", "--model", "tiny-gpt2", "--max-memory", "30MiB"], "--confirm-repeats"),
])
def test_repeats_have_an_upper_bound(tmp_path, command, option):
    """`--repeats 1000000000000` planned every job up front and never started (trial 100: killed after 30 s with
    its memory growing): a typo guard, as --max-configs and steps' are."""
    line = error(lmbench(*command, option, 10**12, "--device", "cpu", "--out", tmp_path / "out"))
    assert line == (f"{option} 1000000000000: more fresh processes of each configuration than lmbench runs; allowed: "
                    "up to 1,000")
    assert not (tmp_path / "out").exists()

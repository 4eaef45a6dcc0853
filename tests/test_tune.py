"""lmbench tune: the batch-size search against a brute force, budgets, resume, the winner's suite file."""

import json

import pytest
from click.testing import CliRunner

from lmbench.analyze import results
from lmbench.cli import cli
from lmbench.errors import UsageError
from lmbench.plan import suite as suites
from lmbench.plan.config import Config
from lmbench.plan.tuneplan import parse_size
from lmbench.run.runner import Job, RunDirectory, run_worker
from lmbench.tune import Tuner, winner_suite

BASE = Config(model="tiny-gpt2", seq_len=256, device="cpu", max_memory_bytes=60 * 2**20)
COMBO = {"precision": "fp32", "kernels": "eager", "checkpointing": "none"}


def test_sizes_parse():
    assert parse_size("60MiB") == 60 * 2**20
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size("1.5G") == 1_500_000_000
    assert parse_size("4096") == 4096
    with pytest.raises(UsageError, match="expected a size like 512MiB"):
        parse_size("lots")


class FakeLauncher:
    """A memory boundary at a known batch size, counting launches."""

    def __init__(self, boundary: int) -> None:
        self.boundary = boundary
        self.launched: list[int] = []

    def __call__(self, job, run_dir):
        self.launched.append(job.config.batch_size)
        ok = job.config.batch_size <= self.boundary
        payload = {"metrics": {"tokens_per_s": 100.0 * job.config.batch_size}, "losses": [1.0], "env": None}
        return ("ok", None, payload) if ok else ("oom", "OutOfMemoryError", None)


def slow_launcher(monkeypatch, boundary: int) -> FakeLauncher:
    """A FakeLauncher whose every launch takes 50 s of tune's clock (a compiled GPT-2's probe on the H100)."""
    import lmbench.tune as tuning

    clock = [0.0]
    monkeypatch.setattr(tuning.time, "monotonic", lambda: clock[0])

    class Slow(FakeLauncher):
        def __call__(self, job, run_dir):
            clock[0] += 50.0
            return super().__call__(job, run_dir)

    return Slow(boundary)


@pytest.mark.parametrize("boundary", [1, 2, 37, 64, 1000])
def test_search_finds_the_exact_boundary_in_logarithmic_probes(tmp_path, boundary):
    launcher = FakeLauncher(boundary)
    tuner = Tuner(BASE, RunDirectory(tmp_path / "run", resume=False), launch=launcher, margin=0.1)
    found = tuner.search(COMBO)
    assert found.largest_fitting == boundary and found.first_failing == boundary + 1
    assert found.chosen == max(1, int(boundary * 0.9)) <= boundary
    assert found.probes <= 2 * boundary.bit_length() + 2
    tuner.measure(found, steps=2, warmup=0)
    measured = [r["config"]["batch_size"] for r in results.read(tmp_path / "run").records]
    assert max(measured) == found.chosen and all(b <= boundary for b in measured)


def test_search_stops_at_max_batch(tmp_path):
    tuner = Tuner(BASE, RunDirectory(tmp_path / "run", resume=False), launch=FakeLauncher(10**6), max_batch=64)
    found = tuner.search(COMBO)
    assert found.largest_fitting == 64 and found.first_failing is None and "fits up to --max-batch 64" in found.note
    # No batch failed: there is no edge to back off from, so the margin takes nothing off what fitted.
    assert found.chosen == 64


@pytest.fixture(scope="module")
def interrupted_tune(tmp_path_factory):
    """A tune of BASE's model, size and memory cap that a budget cuts short, then resumed; what the first session
    left is kept as it stood then. Its real probes (batch 2, 4 out of memory, 3) also serve the brute force below."""
    out = tmp_path_factory.mktemp("tune") / "tune"
    # Each probe, measurement and repeat is a fresh worker process (~8 s here). --min-batch 2 spares the probe at
    # batch 1 (the search still doubles to 4, out of memory, and bisects to 3; 2 and 1 are still measured), and two
    # confirming repeats still give each configuration a confirming repeat for the ranking to weigh: 7 processes,
    # not 10.
    args = ["tune", "--model", "tiny-gpt2", "--seq-len", "256", "--precision", "fp32", "--checkpointing", "none",
            "--max-memory", "60MiB", "--device", "cpu", "--steps", "2", "--warmup", "1", "--min-batch", "2",
            "--confirm-repeats", "2", "--out", str(out)]
    first = CliRunner().invoke(cli, args + ["--budget-minutes", "0.01"])
    measured = (out / "results.jsonl").exists()
    tuned = (out / "tuned.toml").read_text() if (out / "tuned.toml").exists() else None
    early = (out / "probes.jsonl").read_text().splitlines() if (out / "probes.jsonl").exists() else []
    second = CliRunner().invoke(cli, args + ["--resume"])
    return out, first, measured, tuned, early, second


@pytest.mark.slow
def test_real_boundary_matches_a_brute_force_search(tmp_path, interrupted_tune):
    # The tune's probes are this search's jobs (BASE resolved for one process, as tune resolves its base: the same
    # keys), each a real worker's verdict, reused from a copy of its directory as a resumed tune reuses them: 2 new
    # workers here (batch 1, where the search starts, and one past the edge), not 5. Every size compared is still
    # a real worker's.
    import shutil

    from lmbench.measure.environment import probe_platform
    from lmbench.plan.feasibility import resolve

    shutil.copytree(interrupted_tune[0], tmp_path / "run")
    tuner = Tuner(resolve(BASE, probe_platform()), RunDirectory(tmp_path / "run", resume=True), launch=run_worker,
                  margin=0.0)
    assert tuner.probe_config(COMBO, 2).key in tuner.cache  # the tune's first probe: the keys match
    found = tuner.search(COMBO)
    assert found.largest_fitting >= 1 and found.first_failing is not None
    # Brute force: every size up to one past the boundary (probes already made are reused).
    fits = {b: tuner.probe(COMBO, b)[0] == "ok" for b in range(1, found.first_failing + 2)}
    brute = max(b for b in fits if all(fits[s] for s in range(1, b + 1)))
    assert abs(brute - found.largest_fitting) <= 1
    assert not fits[found.first_failing]


@pytest.mark.slow
def test_interrupted_tune_resumes_without_repeating_probes(interrupted_tune):
    out, first, measured, tuned, early, second = interrupted_tune
    assert first.exit_code == 0, first.output
    assert "budget ran out" in first.output
    if not measured:  # nothing measured: a winner is still to come, not a failure
        assert "no winner yet: --budget-minutes ran out before anything was measured; --resume goes on" in " ".join(
            first.output.split())
    else:  # a winner from a tune the budget cut is partial, and says so (it read as a finished tune's; a reviewer)
        assert "winner as a suite (partial)" in first.output
        assert "# from a tune cut short (--budget-minutes ran out)" in tuned
    assert 1 <= len(early)
    assert second.exit_code == 0, second.output
    probes = [json.loads(line) for line in (out / "probes.jsonl").read_text().splitlines()]
    assert probes[: len(early)] == [json.loads(line) for line in early]
    assert len({p["config_key"] for p in probes}) == len(probes)
    records = results.read(out).records
    assert records and all(r["status"] == "ok" for r in records)
    # Never a size that failed among the measured ones.
    failed = {p["batch_size"] for p in probes if p["status"] != "ok"}
    assert not failed & {r["config"]["batch_size"] for r in records}
    winner = suites.load(str(out / "tuned.toml"))
    (planned,) = winner.expand()
    # The ranking's first, not the single fastest record: that may be a confirming repeat of a configuration whose
    # median ranks it second, or a measurement the host's load made and the ranking sets after the quiet ones (a
    # run beside other tests named batch 2's fastest record while tuned.toml rightly held batch 1).
    from lmbench.analyze.ranking import ranked_records

    best = ranked_records(records, "throughput")[0]
    # As `lmbench run --suite tuned.toml` plans it here (nproc resolved for one process): the winner's own key.
    from lmbench.measure.environment import probe_platform
    from lmbench.plan.feasibility import resolve

    assert resolve(planned.config, probe_platform()).key == best["config_key"]


def test_winner_suite_reproduces_the_config():
    config = Config(model="tiny-llama", batch_size=24, grad_accum=2, precision="bf16", device="cpu")
    text = winner_suite({"config": config.to_dict(), "metrics": {"tokens_per_s": 1234.0}})
    (planned,) = suites.parse(text, source="tuned.toml").expand()
    assert planned.config == config
    # A one-process winner as tune records it (nproc resolved to 1): no nproc line, which running the suite would
    # warn changes nothing (new-user trial), and the same configuration once resolved.
    from lmbench.measure.environment import Platform
    from lmbench.plan.feasibility import resolve

    ran = config.replace(nproc=1)
    suite = suites.parse(winner_suite({"config": ran.to_dict(), "metrics": {"tokens_per_s": 1.0}}), source="t.toml")
    (planned,) = suite.expand()
    assert "nproc" not in suite.defaults and suite.unused_options([planned]) == []
    platform = Platform(cuda_available=False, device_count=0, capability=None, torch_version="2.13.0",
                        apex_available=False, liger_available=False)
    assert resolve(planned.config, platform).key == resolve(ran, platform).key


class ParityLauncher(FakeLauncher):
    """FP8 is twice as fast as amp-bf16; its loss tracks the bf16 reference's, or strays by `fp8_offset`."""

    def __init__(self, boundary: int, fp8_offset: float) -> None:
        super().__init__(boundary)
        self.fp8_offset = fp8_offset
        self.parity_runs: list[tuple[str, str]] = []

    def __call__(self, job, run_dir):
        config = job.config
        if config.data == "markov":
            self.parity_runs.append((config.precision, config.kernels))
            losses = [6.0 - 0.05 * step for step in range(config.steps)]
            if config.precision.startswith("fp8"):
                losses = [v * (1 + self.fp8_offset) for v in losses]
            return "ok", None, {"metrics": {}, "losses": losses, "env": None}
        status, reason, payload = super().__call__(job, run_dir)
        if payload and config.precision.startswith("fp8"):
            payload["metrics"]["tokens_per_s"] *= 2
        return status, reason, payload


@pytest.mark.parametrize("offset, verdict, winner", [(0.0, "ok", "fp8-rowwise"), (0.05, "drift", "amp-bf16")])
def test_fp8_gets_a_parity_check_and_never_wins_when_it_drifts(tmp_path, offset, verdict, winner):
    from lmbench.tune import PARITY_STEPS, ranked, write_winner

    run_dir = RunDirectory(tmp_path / "run", resume=False)
    launcher = ParityLauncher(8, offset)
    tuner = Tuner(BASE, run_dir, launch=launcher)
    for precision in ("amp-bf16", "fp8-rowwise"):
        combo = {**COMBO, "precision": precision, "kernels": "compile"}
        found = tuner.search(combo)
        tuner.measure(found, steps=2, warmup=1)
    # Only FP8 is checked, against amp-bf16 eager, at the chosen batch, over the steps the tolerance was measured on.
    assert launcher.parity_runs == [("fp8-rowwise", "compile"), ("amp-bf16", "eager")]
    assert [json.loads(line)["batch_size"] for line in (tmp_path / "run" / "parity.jsonl").read_text().splitlines()] \
        == [7, 7]
    assert PARITY_STEPS == 30
    rows = ranked(run_dir)
    fp8 = [r for r in rows if r["config"]["precision"] == "fp8-rowwise"]
    assert {r["metrics"]["parity"] for r in fp8} == {verdict}
    assert rows[0]["config"]["precision"] == winner
    assert suites.parse(write_winner(run_dir).read_text(), source="tuned.toml").expand()[0].config.precision == winner
    # A resumed tune reuses the parity runs.
    again = ParityLauncher(8, offset)
    Tuner(BASE, run_dir, launch=again).parity_check(
        {**COMBO, "precision": "fp8-rowwise", "kernels": "compile"}, 7)
    assert again.parity_runs == []


def test_a_tune_where_only_drifting_configurations_ran_has_no_winner(tmp_path):
    from lmbench.tune import write_winner

    run_dir = RunDirectory(tmp_path / "run", resume=False)
    tuner = Tuner(BASE, run_dir, launch=ParityLauncher(4, 0.05))
    combo = {**COMBO, "precision": "fp8-tensorwise", "kernels": "compile"}
    found = tuner.search(combo)
    tuner.measure(found, steps=2, warmup=1)
    assert found.note == "parity drift: never ranked first"
    assert write_winner(run_dir) is None
    from lmbench.tune import no_winner_reason

    assert no_winner_reason(run_dir) == ("no winner: every configuration that ran drifted or diverged from its "
                                         "parity reference")
    # A tune stopped before it measured anything says so, not that nothing ran successfully (a new user).
    empty = RunDirectory(tmp_path / "empty", resume=False)
    assert no_winner_reason(empty, cut="interrupted") == "no winner yet: nothing was measured before the tune was " \
                                                          "interrupted"
    assert no_winner_reason(empty) == "no configuration ran successfully"


def test_a_model_parallel_parity_check_turns_dropout_off_on_both_sides(tmp_path):
    launcher = ParityLauncher(8, 0.0)
    seen = []

    def launch(job, run_dir):
        seen.append(job.config)
        return launcher(job, run_dir)

    base = BASE.replace(parallel="pp", nproc=2, microbatches=2)
    checked = Tuner(base, RunDirectory(tmp_path / "run", resume=False), launch=launch, check_parity=True) \
        .parity_check({**COMBO, "precision": "amp-bf16", "kernels": "eager"}, 4)
    assert checked["parity"] == "ok"
    pp, reference = seen
    assert (pp.parallel, pp.dropout) == ("pp", False)
    # The reference is one device on the pipeline's global batch (4 sequences x 2 micro-batches), also dropout-free.
    assert (reference.parallel, reference.batch_size, reference.dropout) == ("none", 8, False)


@pytest.mark.parametrize(("boundary", "largest", "failing"), [(100, 64, None), (40, 40, 41), (5, 5, 6)])
def test_the_search_starts_from_min_batch_and_bisects_below_it_when_it_does_not_fit(tmp_path, boundary, largest,
                                                                                      failing):
    launcher = FakeLauncher(boundary)
    tuner = Tuner(BASE, RunDirectory(tmp_path / "run", resume=False), launch=launcher, min_batch=16, max_batch=64)
    found = tuner.search(COMBO)
    assert (found.largest_fitting, found.first_failing) == (largest, failing)
    assert launcher.launched[0] == 16 and min(launcher.launched) >= (1 if boundary < 16 else 16)


def test_doubling_past_max_batch_tries_max_batch_itself(tmp_path):
    launcher = FakeLauncher(10**6)
    found = Tuner(BASE, RunDirectory(tmp_path / "run", resume=False), launch=launcher, min_batch=3,
                  max_batch=64).search(COMBO)
    assert launcher.launched == [3, 6, 12, 24, 48, 64] and found.largest_fitting == 64


def test_the_search_leaves_room_to_measure_what_it_found(tmp_path, monkeypatch):
    """Each probe takes 50 s of a 150 s budget (a compiled GPT-2 on the H100): the search stops after two, so the
    batch it found is measured within the budget instead of nothing at all."""
    launcher = slow_launcher(monkeypatch, 10**6)
    tuner = Tuner(BASE, RunDirectory(tmp_path / "run", resume=False), launch=launcher, budget_s=150, min_batch=16,
                  max_batch=256, margin=0.1)
    found = tuner.search(COMBO)
    assert launcher.launched == [16, 32] and found.note == "budget ran out during the search (what is left measures " \
                                                           "batch 32)"
    tuner.measure(found, steps=2, warmup=0)
    assert launcher.launched[2] == 32


@pytest.mark.parametrize("budget_s, probes, measured", [(150, [16, 32], [32]), (149, [16], [16]),
                                                         (240, [16, 32, 64], [64]), (300, [16, 32, 64], [64, 48, 32])])
def test_no_job_starts_that_the_longest_of_its_kind_would_carry_past_the_budget(tmp_path, monkeypatch, budget_s,
                                                                                 probes, measured):
    """50 s a launch (a compiled GPT-2 on the H100): a probe starts only when it and a measurement after it end
    within the budget, a measurement only when it does. A measurement that started at the budget's edge (150 s of
    150) ran 50 s past it, and an outer timeout cut the H100's tune before it named anything."""
    launcher = slow_launcher(monkeypatch, 10**6)
    tuner = Tuner(BASE, RunDirectory(tmp_path / "run", resume=False), launch=launcher, budget_s=budget_s,
                  min_batch=16, max_batch=64, margin=0.1)
    found = tuner.search(COMBO)
    searched = len(launcher.launched)
    tuner.measure(found, steps=2, warmup=0)
    tuner.confirm("throughput")
    import lmbench.tune as tuning

    assert launcher.launched[:searched] == probes and launcher.launched[searched:] == measured
    assert tuning.time.monotonic() <= budget_s


def test_a_probe_that_fails_of_other_than_memory_stops_the_search_and_is_probed_again_on_resume(tmp_path):
    """A timeout at 32 is no memory edge: bisecting towards it would call 31 the largest batch that fits. The
    search stops, measures what fitted (no margin: no edge), says why, and a resumed tune probes 32 again."""

    class TimesOut(FakeLauncher):
        def __call__(self, job, run_dir):
            if job.config.batch_size >= 32:
                self.launched.append(job.config.batch_size)
                return "timeout", "no result within timeout_s=900 (worker killed)", None
            return super().__call__(job, run_dir)

    with RunDirectory(tmp_path / "run", resume=False) as run_dir:
        found = Tuner(BASE, run_dir, launch=(launcher := TimesOut(10**6)), max_batch=256, margin=0.1).search(COMBO)
    assert launcher.launched == [1, 2, 4, 8, 16, 32]
    assert (found.largest_fitting, found.first_failing, found.chosen) == (16, None, 16)
    assert found.note == ("probe at batch 32: timeout (no result within timeout_s=900 (worker killed)): not out of "
                          "memory, so no edge; the search stopped there and measures batch 16")
    again = TimesOut(10**6)
    with RunDirectory(tmp_path / "run", resume=True) as run_dir:
        Tuner(BASE, run_dir, launch=again, max_batch=256).search(COMBO)
    assert again.launched == [32]  # the sizes that fitted are not probed again; the timeout is


def test_a_resumed_tune_knows_how_long_its_probes_took(tmp_path, monkeypatch):
    """probes.jsonl keeps each probe's wall time: a resumed search leaves the budget room from its first probe."""
    with RunDirectory(tmp_path / "run", resume=False) as run_dir:
        Tuner(BASE, run_dir, launch=slow_launcher(monkeypatch, 8), max_batch=8).search(COMBO)
    with RunDirectory(tmp_path / "run", resume=True) as run_dir:
        assert Tuner(BASE, run_dir, launch=FakeLauncher(8), max_batch=8).longest_probe_s == 50.0


def test_a_combination_the_budget_never_reached_shows_no_search():
    from rich.console import Console

    from lmbench.analyze.table import tune_search_table
    from lmbench.tune import ComboResult

    console = Console(width=200, record=True)
    console.print(tune_search_table([ComboResult(COMBO, note="budget ran out before its search began",
                                                 kernels="eager")], title="t"))
    row = next(line for line in console.export_text().splitlines() if "budget" in line)
    assert [cell.strip() for cell in row.split("│")[1:-1]] == ["fp32", "eager", "none", "-", "-", "-", "0",
                                                                "budget ran out before its search began"]


def test_a_bisection_the_budget_stopped_measures_what_fitted_not_less(tmp_path, monkeypatch):
    """16 fits, 32 does not, and the budget ends before anything between is tried: the edge is somewhere in
    17-32, so the margin (10% off 31 is 27) takes nothing off 16; an edge found exactly (37 fits, 38 does not)
    still loses its 10%."""
    found = Tuner(BASE, RunDirectory(tmp_path / "a", resume=False), launch=slow_launcher(monkeypatch, 20),
                  budget_s=150, min_batch=16, max_batch=256, margin=0.1).search(COMBO)
    assert (found.largest_fitting, found.first_failing, found.chosen) == (16, 32, 16)
    exact = Tuner(BASE, RunDirectory(tmp_path / "b", resume=False), launch=FakeLauncher(37),
                  margin=0.1).search(COMBO)
    assert (exact.largest_fitting, exact.first_failing, exact.chosen) == (37, 38, 33)


def test_min_batch_above_max_batch_is_refused():
    result = CliRunner().invoke(cli, ["tune", "--model", "tiny-gpt2", "--min-batch", "64", "--max-batch", "8"])
    assert result.exit_code == 2 and "--min-batch 64: more than --max-batch 8; allowed: 1..8" in result.output


def test_probes_never_run_the_profiler_the_measurements_asked_for(tmp_path):
    launcher = FakeLauncher(8)
    tuner = Tuner(BASE.replace(profile=True), RunDirectory(tmp_path / "run", resume=False), launch=launcher,
                  max_batch=8)
    found = tuner.search(COMBO)
    assert not tuner.probe_config(COMBO, 8).profile
    tuner.measure(found, steps=2, warmup=0)
    assert all(r["config"]["profile"] for r in results.read(tmp_path / "run").records)


@pytest.mark.parametrize("schedule", [{"eval_every": 10}, {"eval_every_tokens": 4096}])
def test_probes_never_evaluate_whichever_schedule_the_measurements_use(schedule, tmp_path):
    """A reviewer: with eval_every_tokens (the schedule the docs give a time-to-target tune) every memory probe
    evaluated 65k held-out positions twice and drew a never-repeating pool; eval_every's was cleared."""
    base = BASE.replace(data="markov", target_loss=3.0, max_steps=100, **schedule)
    tuner = Tuner(base, RunDirectory(tmp_path / "run", resume=False), launch=FakeLauncher(8))
    probe = tuner.probe_config(COMBO, 8)
    assert not probe.evaluates and not probe.has_target and probe.conflict() is None


def test_a_measurement_feasibility_refuses_is_a_skipped_record_not_a_launch(tmp_path):
    """--global-batch gives each measured size its own accumulation, which the combination's check never saw."""
    launcher = FakeLauncher(8)
    tuner = Tuner(BASE, RunDirectory(tmp_path / "run", resume=False), launch=launcher, max_batch=8, global_batch=8,
                  skip=lambda config: f"grad_accum={config.grad_accum} refused" if config.grad_accum > 1 else None)
    found = tuner.search(COMBO)
    searched = len(launcher.launched)
    tuner.measure(found, steps=2, warmup=0)
    by_batch = {r["config"]["batch_size"]: r for r in results.read(tmp_path / "run").records}
    # Sizes 8, 6 and 4 (BELOW): 8 // 6 = 1 micro-batch, 8 // 4 = 2.
    assert launcher.launched[searched:] == [8, 6] and by_batch[6]["status"] == "ok"
    assert (by_batch[4]["status"], by_batch[4]["reason"]) == ("skipped", "grad_accum=2 refused")


def test_a_resumed_search_counts_the_probes_it_reused(tmp_path):
    """The table's `probes` is the sizes the search consulted, not only the ones this session launched."""
    with RunDirectory(tmp_path / "run", resume=False) as run_dir:
        first = Tuner(BASE, run_dir, launch=FakeLauncher(5), max_batch=16).search(COMBO)
    launcher = FakeLauncher(5)
    with RunDirectory(tmp_path / "run", resume=True) as run_dir:
        again = Tuner(BASE, run_dir, launch=launcher, max_batch=16).search(COMBO)
    made = len((tmp_path / "run" / "probes.jsonl").read_text().splitlines())
    assert launcher.launched == [] and again.probes == first.probes == made > 1


def test_a_skipped_combination_shows_no_search_in_the_table():
    from rich.console import Console

    from lmbench.analyze.table import tune_search_table
    from lmbench.tune import ComboResult

    console = Console(width=200, record=True)
    skipped = ComboResult(COMBO, note="skipped: needs a CUDA GPU", kernels="eager", skipped=True)
    console.print(tune_search_table([skipped], title="t"))
    row = next(line for line in console.export_text().splitlines() if "skipped" in line)
    assert [cell.strip() for cell in row.split("│")[1:-1]] == ["fp32", "eager", "none", "-", "-", "-", "-",
                                                                "skipped: needs a CUDA GPU"]


def test_a_search_that_found_its_edge_is_not_called_cut_short_and_unmeasured_sizes_are_named(tmp_path, monkeypatch):
    """Boundary 4 from --min-batch 4 (50 s a launch, 250 s budget): 4 fits, 8 fails, 6 and 5 settle the edge at 4
    (the probe of 5 starts at 150 s: it and a measurement end by 250 s); the search is then out of time but found
    its edge. Measuring 4 uses the budget up, so 3 and 2 (BELOW) are not measured, and the note says which."""
    tuner = Tuner(BASE, RunDirectory(tmp_path / "run", resume=False), launch=slow_launcher(monkeypatch, 4),
                  budget_s=250, min_batch=4, max_batch=64, margin=0.0)
    found = tuner.search(COMBO)
    assert (found.largest_fitting, found.first_failing, found.chosen) == (4, 5, 4)
    assert tuner.out_of_search_time() and found.note == ""
    tuner.measure(found, steps=2, warmup=0)
    assert found.note == "budget ran out during measurement (batch 3, 2 not measured)"


def test_a_ranking_measured_on_a_busy_host_says_so():
    from lmbench.tune import contention_warning

    busy = {"host_other_cpu_cores": 1.5, "host_usable_cores": 2}
    quiet = {"config_key": "q", "status": "ok", "metrics": {"tokens_per_s": 2.0}}
    slowed = {"config_key": "s", "status": "ok", "metrics": {"tokens_per_s": 3.0, **busy}}
    failed = {"config_key": "f", "status": "oom", "metrics": None}
    assert contention_warning([quiet, failed]) is None
    assert contention_warning([slowed, quiet, failed]) == (
        "1 of 2 measured configurations (the winner among them) ran while other processes kept the host's cores "
        "busy: their figures, and the ranking, may be the host's load; tune again on a quiet host")
    assert "(the winner" not in contention_warning([quiet, slowed])
    # A first row whose loss strayed from its reference is no winner (write_winner writes none).
    drifted = {"config_key": "d", "status": "ok", "metrics": {"tokens_per_s": 3.0, "parity": "drift", **busy}}
    assert "(the winner" not in contention_warning([drifted, failed])
    # Configurations are counted, not records, by what their figures rest on: the winner's three repeats, one of
    # them contended, rank by the two quiet ones (the ranking says one was left out); all three contended, not.
    repeats = [{**quiet, "config_key": "w"}, {**slowed, "config_key": "w"}, {**quiet, "config_key": "w"}]
    assert contention_warning([*repeats, quiet]) is None
    busy_repeats = [{**slowed, "config_key": "w"}] * 3
    assert contention_warning([*busy_repeats, quiet]).startswith("1 of 2 measured configurations (the winner among")


class NoisyLauncher(FakeLauncher):
    """tokens/s of 100 x batch, times a factor for (batch, repeat) (noise between processes; 1 where not given)."""

    def __init__(self, boundary: int, factors: dict[tuple[int, int], float] | None = None,
                 fail: frozenset[tuple[int, int]] = frozenset()) -> None:
        super().__init__(boundary)
        self.factors = factors or {}
        self.fail = fail
        self.repeats: list[tuple[int, int]] = []

    def __call__(self, job, run_dir):
        status, reason, payload = super().__call__(job, run_dir)
        batch = job.config.batch_size
        if job.config.steps != 2:  # a measurement, not a probe
            self.repeats.append((batch, job.repeat))
        if (batch, job.repeat) in self.fail:
            return "error", "RuntimeError: boom", None
        if payload:
            payload["metrics"]["tokens_per_s"] *= self.factors.get((batch, job.repeat), 1.0)
        return status, reason, payload


def measured_tune(tmp_path, launcher, repeats=3):
    from lmbench.tune import told_apart

    with RunDirectory(tmp_path / "run", resume=False) as run_dir:
        tuner = Tuner(BASE, run_dir, launch=launcher, max_batch=4)
        found = tuner.search(COMBO)
        tuner.measure(found, steps=5, warmup=1)
        tuner.confirm("throughput", repeats)
    records = results.read(run_dir.path).records
    return tuner, records, told_apart(records)


def confirmed_again(tmp_path) -> list[int]:
    """The batch sizes a resumed confirmation launches."""
    again = NoisyLauncher(4)
    with RunDirectory(tmp_path / "run", resume=True) as run_dir:
        Tuner(BASE, run_dir, launch=again, max_batch=4).confirm("throughput", 3)
    return again.launched


def test_the_two_best_configurations_are_measured_again_until_told_apart_or_not(tmp_path):
    """Sizes 4, 3 and 2 measured once; 4 and 3 again, alternating, until 3 repeats each: 33% apart is told apart."""
    launcher = NoisyLauncher(4, {(4, 1): 1.01, (4, 2): 0.99, (3, 1): 0.99, (3, 2): 1.02})
    tuner, records, apart = measured_tune(tmp_path, launcher)
    assert launcher.repeats == [(4, 0), (3, 0), (2, 0), (4, 1), (3, 1), (4, 2), (3, 2)]
    assert sorted((r["config"]["batch_size"], r["repeat"]) for r in records if r["repeat"]) == [
        (3, 1), (3, 2), (4, 1), (4, 2)]
    assert apart.startswith("winner vs runner-up: +33.3% tokens/s (3 and 3 repeats): told apart (95% interval +")
    assert confirmed_again(tmp_path) == []  # resumed: nothing measured again


def test_a_lead_inside_the_noise_is_not_told_apart(tmp_path):
    """Batch 4 at 400, 280, 400 tokens/s and batch 3 at 390, 300, 405 (noise between processes): not told apart."""
    launcher = NoisyLauncher(4, {(4, 1): 0.7, (3, 0): 1.3, (3, 2): 1.35})
    *_, apart = measured_tune(tmp_path, launcher)
    assert "not told apart (95% interval" in apart and apart.endswith("the runner-up may be as fast")


def test_a_lead_measured_only_on_a_busy_host_is_not_tested():
    """Every confirmation repeat contended: they counted (no quiet one stood in), and the line read 'not told apart
    (95% interval ...)' where docs/tuning.md says a busy host's repeat does not count (a new user)."""
    from lmbench.tune import told_apart

    def repeat(batch, value, n):
        return {"config_key": f"b{batch}", "repeat": n, "status": "ok",
                "config": {**BASE.to_dict(), "batch_size": batch},
                "metrics": {"tokens_per_s": value, "host_other_cpu_cores": 1.0, "host_usable_cores": 2,
                            "window_s": 5.0}}

    records = [repeat(4, v, n) for n, v in enumerate((400, 410, 405))] + [repeat(3, v, n)
                                                                         for n, v in enumerate((300, 310, 305))]
    assert told_apart(records).endswith("not tested; every repeat of the winner and the runner-up ran on a host "
                                        "other processes kept busy: tune again on a quiet host")


def test_one_repeat_each_is_not_tested_and_says_what_would(tmp_path):
    *_, apart = measured_tune(tmp_path, NoisyLauncher(4), repeats=1)
    assert apart == ("winner vs runner-up: +33.3% tokens/s (1 and 1 repeats): not tested; 3 a side are needed to "
                     "tell it from the noise between processes (a repeat that failed, ran on a busy host or that the "
                     "budget left out does not count; --confirm-repeats)")


def test_the_ranking_shows_one_row_a_configuration_with_its_repeats(tmp_path):
    from rich.console import Console

    from lmbench.analyze.ranking import tune_ranking_table
    from lmbench.tune import ranked

    tuner, *_ = measured_tune(tmp_path, NoisyLauncher(4))
    console = Console(width=200, record=True)
    with RunDirectory(tmp_path / "run", resume=True) as run_dir:
        console.print(tune_ranking_table(ranked(run_dir)))
    rows = [line for line in console.export_text().splitlines() if line.startswith("│ ")]
    assert [row.split("│")[5].strip() for row in rows] == ["4", "3", "2"]  # batch
    assert [row.split("│")[8].strip() for row in rows] == ["3", "3", "1"]  # repeats


def test_the_winners_suite_quotes_its_median_over_the_repeats(tmp_path):
    from lmbench.tune import write_winner

    measured_tune(tmp_path, NoisyLauncher(4, {(4, 0): 1.05, (4, 1): 1.01, (4, 2): 0.99}))  # 420, 404, 396
    with RunDirectory(tmp_path / "run", resume=True) as run_dir:
        suite = write_winner(run_dir).read_text()
    # The measurement that picked it (420) flatters it: the figure is the median of the two measured after.
    assert "(400 tokens/s)" in suite
    assert suite.startswith("# its figure is the median of the 2 repeat(s) measured after it was picked, leaving out "
                            "the measurement that picked it (over all 3: 404.0 tokens/s)\n# winner vs runner-up: ")
    assert suites.load(str(tmp_path / "run" / "tuned.toml")).name == "tuned-tiny-gpt2"  # still a suite


def test_an_unconfirmed_winner_says_its_figure_flatters_it(tmp_path):
    from lmbench.tune import write_winner

    measured_tune(tmp_path, NoisyLauncher(4), repeats=1)
    with RunDirectory(tmp_path / "run", resume=True) as run_dir:
        suite = write_winner(run_dir, cut="interrupted").read_text()
    assert suite.splitlines()[:2] == [
        "# from a tune cut short (interrupted): the search and measurements are partial",
        "# its figure is the one measurement that ranked it first, unconfirmed: picked as the best of several noisy "
        "figures, it flatters it (--confirm-repeats measures it again)"]
    assert "(400 tokens/s)" in suite


def test_a_contender_its_own_repeats_pull_down_gives_way_and_the_winner_is_confirmed(tmp_path):
    """Batch 4, 3 and 2 at 400, 300 and 200; every repeat of 4 and 3 at 150 (review): confirming them once and
    stopping left batch 2, measured once, the winner. The ranking is taken again after each repeat."""
    factors = {(b, r): 150 / (100 * b) for b in (4, 3) for r in (1, 2)}
    launcher = NoisyLauncher(4, factors)
    _, records, apart = measured_tune(tmp_path, launcher)
    from lmbench.analyze.ranking import rank

    best = rank(records, "throughput")[0]
    assert best.config["batch_size"] == 2 and len(best.records) == 3
    # Its runner-up measured 400, 150, 150: far too spread to tell the two apart.
    assert apart.startswith("winner vs runner-up: +33.3% tokens/s (3 and 3 repeats): not told apart")
    assert confirmed_again(tmp_path) == []  # finished: a resume measures nothing more


def test_a_contender_that_fails_a_repeat_gives_way(tmp_path):
    launcher = NoisyLauncher(4, fail=frozenset({(4, 1)}))
    _, records, apart = measured_tune(tmp_path, launcher)
    from lmbench.analyze.ranking import rank

    ranked_ = rank(records, "throughput")
    assert [(s.config["batch_size"], len(s.records)) for s in ranked_] == [(3, 3), (2, 3), (4, 2)]
    assert apart.startswith("winner vs runner-up: +50.0% tokens/s (3 and 3 repeats): told apart")


def test_a_combination_where_nothing_fits_says_so(tmp_path):
    """A new user's --max-memory 40MB: 'fits 0, fails 1, chosen 0' and an empty note."""
    found = Tuner(BASE, RunDirectory(tmp_path / "run", resume=False), launch=FakeLauncher(0), min_batch=4,
                  max_batch=64).search(COMBO)
    assert (found.largest_fitting, found.first_failing, found.chosen) == (0, 1, 0)
    assert found.note == "nothing fits: batch 1 ran out of memory"


def test_a_timed_out_probe_does_not_hold_the_rest_of_the_budget_back(tmp_path, monkeypatch):
    """A reviewer's case: one probe hung to its 900 s timeout, and every later probe then needed 1,800 s of the
    budget left: the next combination was never searched with 1,100 s to go."""
    import lmbench.tune as tuning

    clock = [0.0]
    monkeypatch.setattr(tuning.time, "monotonic", lambda: clock[0])

    class Hangs(FakeLauncher):
        def __call__(self, job, run_dir):
            if job.config.batch_size == 32:
                clock[0] += 900.0
                self.launched.append(32)
                return "timeout", "no result within timeout_s=900 (worker killed)", None
            clock[0] += 50.0
            return super().__call__(job, run_dir)

    tuner = Tuner(BASE, RunDirectory(tmp_path / "run", resume=False), launch=Hangs(10**6), budget_s=2400,
                  min_batch=16, max_batch=64)
    tuner.search(COMBO)
    assert tuner.longest_probe_s == 50.0  # the hang's 900 s are its timeout's, not a probe's
    found = tuner.search({**COMBO, "checkpointing": "full"})
    assert found.probes > 0 and "budget ran out before" not in found.note


def test_a_combination_whose_parity_check_does_not_fit_is_not_measured_unchecked(tmp_path, monkeypatch):
    """FP8 measured without its parity check could win with no verdict (a reviewer's case: 100 s left, 40 s a
    measurement): with 140 s left and 50 s a run, its two parity runs and a measurement do not fit, so it is not
    measured, and says why (150 s would fit all three)."""
    launcher = slow_launcher(monkeypatch, 8)
    tuner = Tuner(BASE, RunDirectory(tmp_path / "run", resume=False), launch=launcher, budget_s=140, max_batch=8)
    fp8 = {**COMBO, "precision": "fp8-rowwise"}
    found = tuner.result(fp8, chosen=8, largest_fitting=8, probes=1)
    tuner.longest_probe_s = 50.0
    tuner.measure(found, steps=2, warmup=0)
    assert launcher.launched == [] and found.measured == []
    assert found.note.startswith("budget ran out before its parity check: not measured")


def test_a_cpu_runs_memory_figure_does_not_grow_with_its_steps():
    """What --max-memory caps on a CPU is the resident set's growth since training started. Kept step losses held
    the heap from shrinking: a new user's tiny-gpt2 grew it by 24 MiB over 8 steps and 1,013 MiB over 2,000 (357 MiB
    of window growth over 1,000 steps here, 2 MiB once a CPU's losses were read step by step)."""
    from lmbench.run.worker import measure

    def growth(steps):
        m = measure(Config(model="tiny-gpt2", seq_len=64, batch_size=4, device="cpu", warmup=1, steps=steps,
                           telemetry=False))["metrics"]
        return m["mem_host_peak_growth_bytes"], m["mem_host_training_growth_bytes"]

    # 400 steps, not 800: the leak grew the window's set ~0.36 MiB a step (357 MiB over 1,000), so 400 steps of it
    # reach ~140 MiB, over four times the 32 MiB bound, which a fixed run stays far below (2 MiB over 1,000).
    short, long = growth(20), growth(400)
    assert long[0] < 32 * 2**20, long  # each loss read as a bare loop reads it (worker._StepLosses)
    assert long[1] < short[1] + 32 * 2**20, (short, long)


def test_a_resumed_tune_expects_a_measurement_to_take_what_its_records_took(tmp_path):
    """A resume started from 0 and expected a probe's time: probes of 5 s, measurements of 100 s, and a session
    with 60 s of budget started a measurement that ended after 100 (review 2026-11-28)."""
    run_dir = RunDirectory(tmp_path / "run", resume=False)
    config = BASE.replace(**COMBO, batch_size=4)
    record = results.make_record(suite="tune", config=config.to_dict(), config_key=config.key, repeat=0,
                                 status="ok", reason=None,
                                 payload={"metrics": {"tokens_per_s": 1.0, "startup_s": 12.0, "warmup_s": 30.0,
                                                      "window_s": 55.0, "eval_time_s": 3.0}})
    run_dir.append(record)
    # A record that kept the job's wall time (profiled steps and the exit are in it): that, whatever its parts say.
    other = config.replace(batch_size=8)
    timed = results.make_record(suite="tune", config=other.to_dict(), config_key=other.key, repeat=0,
                                status="ok", reason=None,
                                payload={"metrics": {"tokens_per_s": 1.0, "startup_s": 1.0, "warmup_s": 1.0,
                                                     "window_s": 1.0, "job_wall_s": 140.0}})
    run_dir.close()
    tuner = Tuner(BASE, RunDirectory(tmp_path / "run", resume=True), launch=FakeLauncher(8), budget_s=60.0)
    assert tuner.measure_s() == 100.0
    assert not tuner.fits_in_budget(tuner.measure_s())
    tuner.run_dir.append(timed)
    tuner.run_dir.close()
    assert Tuner(BASE, RunDirectory(tmp_path / "run", resume=True), launch=FakeLauncher(8)).measure_s() == 140.0
    # A measurement launched now keeps its own.
    fresh = Tuner(BASE, RunDirectory(tmp_path / "new", resume=False), launch=FakeLauncher(8))
    assert "job_wall_s" in fresh._launch_measurement(Job(config, 0))[2]["metrics"]


def test_a_chosen_batch_that_ran_out_of_memory_when_measured_says_so(tmp_path):
    """On a CPU a probe's 2 steps grew the resident set less than a measurement's 20: the chosen batch fit as a probe
    and ran out of memory measured, beside an empty note (a new user)."""
    class Longer(FakeLauncher):
        def __call__(self, job, run_dir):
            status, reason, payload = super().__call__(job, run_dir)
            if job.config.steps != 2 and job.config.batch_size == 4:
                return "oom", "host memory grew past --max-memory", None
            return status, reason, payload

    with RunDirectory(tmp_path / "run", resume=False) as run_dir:
        tuner = Tuner(BASE, run_dir, launch=Longer(4), max_batch=4)
        found = tuner.search(COMBO)
        assert found.chosen == 4
        tuner.measure(found, steps=5, warmup=1)
    assert ("batch 4 ran out of memory when measured (its probe's 2 steps fit): the sizes below it stand in"
            in found.note)


def test_a_first_measurement_is_expected_to_take_its_probe_and_the_steps_it_runs_beyond(tmp_path, monkeypatch):
    """Before any measurement its time was the longest probe's, whatever --steps: a 150-step measurement after an
    8 s probe ran 72 s past an 18 s budget (a reviewer). Now the probe's time and each further step at the probe's
    step time."""
    launcher = slow_launcher(monkeypatch, 64)
    inner = launcher.__call__

    def with_steps(job, run_dir):
        status, reason, payload = inner(job, run_dir)
        if payload:
            payload["metrics"]["step_time_median_s"] = 2.0
        return status, reason, payload

    launcher.__call__ = with_steps
    with RunDirectory(tmp_path / "run", resume=False) as run_dir:
        tuner = Tuner(BASE, run_dir, launch=with_steps, measured_steps=153, max_batch=4)
        tuner.search(COMBO)
    assert tuner.measure_s() == 50.0 + (153 - 3) * 2.0
    # A resumed tune reads the probes' step time back.
    with RunDirectory(tmp_path / "run", resume=True) as run_dir:
        assert Tuner(BASE, run_dir, launch=with_steps, measured_steps=153).measure_s() == tuner.measure_s()


def test_a_resumed_search_reads_its_recorded_probes_whatever_the_budget(tmp_path, monkeypatch):
    """A resume with a small budget would not read its probes.jsonl (they cost nothing) and said 'budget ran out
    before its search began' over a finished search (a reviewer)."""
    with RunDirectory(tmp_path / "run", resume=False) as run_dir:
        done = Tuner(BASE, run_dir, launch=slow_launcher(monkeypatch, 37), max_batch=64).search(COMBO)  # 50 s each
    launcher = slow_launcher(monkeypatch, 37)
    with RunDirectory(tmp_path / "run", resume=True) as run_dir:
        resumed = Tuner(BASE, run_dir, launch=launcher, max_batch=64, budget_s=1.0).search(COMBO)
    assert launcher.launched == [] and (resumed.largest_fitting, resumed.first_failing) == (37, 38)
    assert (resumed.largest_fitting, resumed.first_failing) == (done.largest_fitting, done.first_failing)
    assert "before its search began" not in (resumed.note or "")


def test_a_global_batch_takes_the_nearest_accumulation(tmp_path):
    """Floor division measured 17 x 1 and 12 x 2 for a global batch of 32 (a reviewer)."""
    launcher = FakeLauncher(19)
    tuner = Tuner(BASE, RunDirectory(tmp_path / "run", resume=False), launch=launcher, max_batch=64, global_batch=32)
    found = tuner.search(COMBO)
    tuner.measure(found, 3, 1)
    accums = {m["config"].batch_size: m["config"].grad_accum for m in found.measured}
    assert accums == {17: 2, 12: 3, 8: 4}

"""compile_mode: torch.compile's modes, CUDA graphs (inductor's cudagraph trees) among them.

On a CPU: the axis, its key, which configurations it refuses and why, what reaches torch.compile, and the
refusal to measure a compiled step whose graphs inductor ran without their CUDA graph. On a GPU: a step whose
compiled graphs replay as CUDA graphs trains as the default mode's, and keeps every step's loss.
"""

import dataclasses

import pytest
import torch

from lmbench.errors import KernelSwapError, UsageError
from lmbench.measure.environment import Platform
from lmbench.models import compiled, kernel_sets
from lmbench.plan.config import CHOICES, COMPILE_GRAPH_MODES, CUDA_GRAPH_WARMUP, Config, ConfigError
from lmbench.plan.feasibility import resolve, skip_reason
from lmbench.run.training import TrainingStep

H100 = Platform(cuda_available=True, device_count=8, capability=(9, 0), torch_version=torch.__version__,
                apex_available=False, liger_available=False)
CPU = dataclasses.replace(H100, cuda_available=False, device_count=0, capability=None)
GRAPHED = {"device": "cuda", "kernels": "compile", "compile_mode": "reduce-overhead"}


@pytest.fixture(autouse=True)
def inductor_as_it_was():
    """A compile mode with CUDA graphs sets inductor's cudagraph_or_error and graph_partition, and every compile
    dynamo's fail_on_recompile_limit_hit, for the whole process (a worker's own): here they must not outlive the
    test."""
    import torch._dynamo.config as dynamo
    import torch._inductor.config as inductor

    with inductor.patch({"triton.cudagraph_or_error": inductor.triton.cudagraph_or_error,
                         "graph_partition": inductor.graph_partition}), \
            dynamo.patch(fail_on_recompile_limit_hit=dynamo.fail_on_recompile_limit_hit):
        yield


def test_the_modes_with_cuda_graphs_are_the_ones_torch_says():
    assert {mode for mode in CHOICES["compile_mode"] if compiled.compile_mode_graphs(mode)} == COMPILE_GRAPH_MODES


def test_an_unknown_mode_is_refused_naming_the_allowed_ones():
    with pytest.raises(ConfigError, match="compile_mode='fast' is not one of: default, reduce-overhead, "
                                          "max-autotune, max-autotune-no-cudagraphs"):
        Config(compile_mode="fast")


def test_the_default_mode_keeps_every_key_and_another_mode_makes_its_own():
    compiled = Config(kernels="compile")
    assert compiled.replace(compile_mode="default").key == compiled.key
    assert len({compiled.replace(compile_mode=mode).key for mode in CHOICES["compile_mode"]}) == 4


def test_outside_kernels_compile_the_mode_is_held_at_its_default():
    """A matrix of kernels x compile_mode measures eager once, not once per mode."""
    eager = [resolve(Config(kernels="eager", compile_mode=mode, device="cpu"), CPU) for mode in CHOICES["compile_mode"]]
    assert {config.key for config in eager} == {resolve(Config(kernels="eager", device="cpu"), CPU).key}
    assert resolve(Config(kernels="compile", compile_mode="max-autotune", device="cpu"), CPU).compile_mode == \
        "max-autotune"


@pytest.mark.parametrize(("axes", "reason"), [
    ({"device": "cpu"}, "compile_mode=reduce-overhead needs a CUDA GPU: its compiled graphs replay as CUDA graphs"),
    ({"compile_mode": "max-autotune", "device": "cpu"},
     "compile_mode=max-autotune needs a CUDA GPU: its compiled graphs replay as CUDA graphs"),
    ({"parallel": "ddp", "nproc": 2},
     "compile_mode=reduce-overhead is implemented for parallel=none; under parallel=ddp the gradient collectives run "
     "between the compiled graphs, and lmbench has not validated CUDA graphs around them"),
    ({"grad_accum": 2}, "compile_mode=reduce-overhead with grad_accum=2: lmbench has not yet checked on a GPU that the "
                        "graphs accumulate micro-batch gradients as the default mode does (tests/test_compile_modes.py "
                        "holds that check)"),
    ({"warmup": CUDA_GRAPH_WARMUP - 1},
     f"compile_mode=reduce-overhead needs warmup >= {CUDA_GRAPH_WARMUP}: the compilation, the graphs' warm-up run and "
     "their recording stay out of the measured window"),
])
def test_configurations_compiled_cuda_graphs_cannot_run_are_skipped_with_the_reason(axes, reason):
    config = Config(**{**GRAPHED, **axes})
    assert skip_reason(config, CPU if config.device == "cpu" else H100) == reason


@pytest.mark.parametrize("mode", ["default", "max-autotune-no-cudagraphs"])
def test_modes_without_cuda_graphs_run_anywhere(mode):
    assert skip_reason(Config(kernels="compile", compile_mode=mode, device="cpu"), CPU) is None
    assert skip_reason(Config(kernels="compile", compile_mode=mode, device="cuda", grad_accum=4), H100) is None


@pytest.mark.parametrize(("mode", "passed", "or_error"), [
    ("default", None, False), ("reduce-overhead", "reduce-overhead", True), ("max-autotune", "max-autotune", True),
    ("max-autotune-no-cudagraphs", "max-autotune-no-cudagraphs", False)])
def test_the_mode_reaches_torch_compile_and_a_skipped_graph_becomes_an_error(monkeypatch, mode, passed, or_error):
    import torch._inductor.config as inductor

    seen = []
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: seen.append(kwargs) or model)
    model = torch.nn.Linear(2, 2)
    inductor.triton.cudagraph_or_error = False
    inductor.graph_partition = True
    assert kernel_sets.KERNEL_SETS["compile"].finish(model, compile_mode=mode) is model
    assert inductor.triton.cudagraph_or_error is or_error
    # A graph replays whole or the row is an error: no partitions run around what inductor cannot graph.
    assert inductor.graph_partition is not or_error
    assert seen == [{"mode": passed}]


def test_every_other_kernel_set_leaves_the_model_as_it_is():
    model = torch.nn.Linear(2, 2)
    for name, kernel_set in kernel_sets.KERNEL_SETS.items():
        if name != "compile":
            assert kernel_set.finish(model, compile_mode="reduce-overhead") is model


def test_a_compiled_step_whose_graphs_ran_without_cuda_graphs_is_refused():
    """On a CPU inductor runs every graph without its CUDA graph and counts each one: the check after the window
    turns that into an error naming the mode, where a record would otherwise claim CUDA graphs it never had."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    config = Config(model="tiny-gpt2", batch_size=2, seq_len=16, dropout=False, **{**GRAPHED, "device": "cpu"})
    step = TrainingStep(config, torch.device("cpu"))
    assert step.compile_graphs
    assert torch.isfinite(torch.stack([step(), step()])).all()
    assert compiled.compiled_graph_fallbacks()["skipped"] > 0
    with pytest.raises(KernelSwapError, match=r"compile_mode=reduce-overhead: inductor ran compiled graphs without "
                                              r"their CUDA graphs \(\d+ graph\(s\) skipped\) with .*refusing to "
                                              r"measure it without them"):
        compiled.confirm_compiled_graphs("reduce-overhead")


def test_a_graph_split_into_partitions_is_refused_too():
    """Partitions of a split graph run the ops between them outside CUDA graphs; inductor counts them only."""
    torch._dynamo.utils.counters.clear()
    assert compiled.confirm_compiled_graphs("max-autotune").endswith("replayed whole as a CUDA graph")
    torch._dynamo.utils.counters["inductor"]["cudagraph_partitions"] += 3
    with pytest.raises(KernelSwapError, match=r"\(3 partitions of graphs split\)"):
        compiled.confirm_compiled_graphs("max-autotune")
    torch._dynamo.utils.counters.clear()


def trained(config: Config, steps: int) -> tuple[list[float], int]:
    """The losses of `steps` steps, read after the last one as the worker reads its window's, and the CUDA graphs
    one more step launched."""
    torch._dynamo.reset()
    step = TrainingStep(config, torch.device("cuda"))
    kept = [step() for _ in range(steps)]
    # The runtime's calls (cudaGraphLaunch among them) come with the CUDA activity.
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as profiler:
        step()
    return torch.stack(kept).tolist(), sum("cudaGraphLaunch" in event.name for event in profiler.events())


@pytest.mark.gpu
@pytest.mark.parametrize(("model", "accum"), [("tiny-gpt2", 1), ("tiny-llama", 1), ("tiny-gpt2", 2)])
def test_compiled_cuda_graphs_train_as_the_default_mode_and_keep_every_loss(model, accum):
    """grad_accum=2 is refused by feasibility until this passes on a GPU: the TrainingStep here is built directly."""
    torch._dynamo.utils.counters.clear()
    base = Config(model=model, batch_size=2, seq_len=32, grad_accum=accum, precision="amp-bf16", kernels="compile",
                  device="cuda", dropout=False)
    default, launched_default = trained(base, 8)
    graphed, launched = trained(base.replace(compile_mode="reduce-overhead"), 8)
    # A forward and a backward graph for each micro-batch at least; none in the default mode.
    assert launched >= 2 * accum and launched_default == 0, (launched, launched_default)
    assert default[-1] < default[0]
    assert compiled.confirm_compiled_graphs("reduce-overhead").endswith("replayed whole as a CUDA graph")
    # Backward kernels may add with atomics: the bound is how far the default mode lands from itself, or 1e-4.
    noise = (torch.tensor(trained(base, 8)[0]) - torch.tensor(default)).abs().max().item()
    apart = (torch.tensor(graphed) - torch.tensor(default)).abs().max().item()
    assert apart <= max(1e-4, 4 * noise), f"graphed {apart:.3g} from the default mode; run to run {noise:.3g}"


def test_tune_judges_a_combination_with_the_warmup_its_measurements_get(tmp_path, monkeypatch):
    """`--warmup 1` would put the graphs' recording in every measured window: the combination is skipped, not
    measured (feasibility used to see the axis's default warmup, 5)."""
    from click.testing import CliRunner

    from lmbench.cli import cli
    from lmbench.measure import environment

    monkeypatch.setattr(environment, "probe_platform", lambda: H100)
    result = CliRunner().invoke(cli, ["tune", "--model", "tiny-gpt2", "--device", "cuda", "--kernels", "compile",
                                      "--precision", "amp-bf16", "--checkpointing", "none", "--warmup", "1",
                                      "--set", "compile_mode=reduce-overhead", "--out", str(tmp_path / "tune")])
    assert result.exit_code == 2, result.output  # its one combination skipped: no winner
    assert "compile_mode=reduce-overhead needs warmup >= 3" in " ".join(result.output.split())
    assert not (tmp_path / "tune" / "probes.jsonl").exists()


def test_tune_gives_the_mode_to_compiled_combinations_only(tmp_path):
    from lmbench.run.rundir import RunDirectory
    from lmbench.tune import Tuner

    base = Config(model="tiny-gpt2", device="cuda", compile_mode="max-autotune")
    tuner = Tuner(base, RunDirectory(tmp_path / "run", resume=False), launch=lambda job, run_dir: None)
    combo = {"precision": "amp-bf16", "checkpointing": "none"}
    assert tuner.probe_config({**combo, "kernels": "compile"}, 8).compile_mode == "max-autotune"
    assert tuner.probe_config({**combo, "kernels": "eager"}, 8).compile_mode == "default"


def test_a_table_shows_no_mode_for_a_kernel_set_without_one():
    from lmbench.analyze.table import cell

    assert cell({"kernels": "eager", "compile_mode": "default"}, "compile_mode") == "-"
    assert cell({"kernels": "compile", "compile_mode": "reduce-overhead"}, "compile_mode") == "reduce-overhead"


def test_a_tune_ranking_names_what_ran_as_cuda_graphs():
    from lmbench.analyze.table import kernels_cell

    assert kernels_cell({"kernels": "compile", "compile_mode": "default"}) == "compile"
    assert kernels_cell({"kernels": "compile", "compile_mode": "max-autotune"}) == "compile max-autotune"
    assert kernels_cell({"kernels": "triton", "cuda_graph": True}) == "triton cuda_graph"
    assert kernels_cell({"kernels": "eager"}) == "eager"  # a record from before either axis


def test_every_compile_mode_has_eager_for_its_baseline_and_eager_has_no_mode():
    from lmbench.analyze.baseline import counterpart
    from lmbench.analyze.plots import config_label

    configs = [{"kernels": "eager", "compile_mode": "default", "precision": "fp32"},
               *({"kernels": "compile", "compile_mode": mode, "precision": "fp32"} for mode in CHOICES["compile_mode"])]
    axes = ["kernels", "compile_mode"]
    assert [counterpart(c, configs, ("kernels", "eager"), axes) for c in configs] == [0] * 5
    # The mode's own baseline: compiled rows against compile_mode=default; eager has none (not even itself).
    assert [counterpart(c, configs, ("compile_mode", "default"), axes) for c in configs] == [None, 1, 1, 1, 1]
    assert config_label(configs[0], axes) == "kernels=eager compile_mode=-"
    # Under kernels=compile eager's counterpart is compile_mode=default, whichever compiled row is listed first.
    for ordered in (configs, [configs[0], *reversed(configs[1:])]):
        found = counterpart(configs[0], ordered, ("kernels", "compile"), axes)
        assert ordered[found]["compile_mode"] == "default"
    # The same holds for a parallel mode's options: a pipeline with 8 micro-batches against parallel=none, and
    # parallel=none against the pipeline with the default 4, not the first listed.
    rows = [{"parallel": "none", "microbatches": 4}, {"parallel": "pp", "microbatches": 8},
            {"parallel": "pp", "microbatches": 4}]
    assert counterpart(rows[1], rows, ("parallel", "none"), ["parallel", "microbatches"]) == 0
    assert counterpart(rows[0], rows, ("parallel", "pp"), ["parallel", "microbatches"]) == 2
    # Processes follow the mode: ddp x 2 against parallel=none's one process, every other axis equal.
    runs = [{"parallel": "none", "nproc": 1, "batch_size": 4}, {"parallel": "ddp", "nproc": 2, "batch_size": 4},
            {"parallel": "none", "nproc": 1, "batch_size": 8}, {"parallel": "ddp", "nproc": 2, "batch_size": 8}]
    axes = ["batch_size", "parallel", "nproc"]
    assert [counterpart(c, runs, ("parallel", "none"), axes) for c in runs] == [0, 0, 2, 2]
    assert counterpart(runs[0], runs, ("batch_size", "8"), axes) == 2
    # Against a torchrun mode nproc is that mode's own: ddp x 4 is not ddp x 2's counterpart, fsdp x 4 pairs with x 4.
    scaled = [{"parallel": p, "nproc": n} for p in ("ddp", "fsdp") for n in (2, 4)]
    assert [counterpart(c, scaled, ("parallel", "ddp"), ["parallel", "nproc"]) for c in scaled] == [0, 1, 0, 1]


def test_a_baseline_only_rows_without_the_option_hold_is_refused():
    from lmbench.analyze.baseline import check

    eager = [{"kernels": "eager", "compile_mode": "default"}, {"kernels": "triton", "compile_mode": "default"}]
    with pytest.raises(UsageError, match="compile_mode is an option of a parallel mode or kernel set that no "
                                         "configuration here uses"):
        check(("compile_mode", "default"), eager)
    with pytest.raises(UsageError, match="no configuration has compile_mode=default; compile_mode values present: "
                                         "max-autotune"):
        check(("compile_mode", "default"), [*eager, {"kernels": "compile", "compile_mode": "max-autotune"}])


def test_tune_says_which_mode_it_probes_and_measures(tmp_path):
    from lmbench.run.rundir import RunDirectory
    from lmbench.tune import Tuner

    base = Config(model="tiny-gpt2", device="cuda", compile_mode="reduce-overhead")
    tuner = Tuner(base, RunDirectory(tmp_path / "run", resume=False), launch=lambda job, run_dir: None)
    combo = {"precision": "amp-bf16", "checkpointing": "none"}
    assert tuner.label({**combo, "kernels": "compile"}) == "amp-bf16 compile reduce-overhead none"
    assert tuner.result({**combo, "kernels": "eager"}).kernels == "eager"


def test_a_mode_no_configuration_uses_is_said_to_change_nothing():
    from lmbench.plan import suite as suites

    eager = suites.load("smoke").with_overrides({"kernels": ["eager"], "compile_mode": ["default", "max-autotune"]})
    assert eager.unused_options(eager.expand()) == [
        "compile_mode=default,max-autotune applies to kernels=compile only, which no configuration here uses: it "
        "changes nothing"]
    both = suites.load("smoke").with_overrides({"kernels": ["eager", "compile"], "compile_mode": ["max-autotune"]})
    assert both.unused_options(both.expand()) == []
    pipelined = suites.load("smoke").with_overrides({"microbatches": [8]})
    assert pipelined.unused_options(pipelined.expand()) == [
        "microbatches=8 applies to parallel=pp or fsdp+pp only, which no configuration here uses: it changes "
        "nothing"]
    # nproc sizes torchrun jobs only: parallel=none runs one process whatever it says.
    single = suites.load("smoke").with_overrides({"nproc": [2]})
    assert single.unused_options(single.expand()) == [
        "nproc=2 applies to the torchrun modes (ddp, fsdp, fsdp+pp, fsdp+tp, pp, tp) only, which no configuration "
        "here uses: parallel=none runs one process, dp one process over every visible GPU"]
    ddp = suites.load("smoke").with_overrides({"nproc": [2], "parallel": ["none", "ddp"]})
    assert ddp.unused_options(ddp.expand()) == []
    # The parallel suite's point is dp against ddp: nproc=4 ran ddp on 4 GPUs and dp on every one, without a word
    # while any row used nproc (a reviewer).
    against = suites.load("smoke").with_overrides({"nproc": [4], "parallel": ["dp", "ddp"]})
    assert against.unused_options(against.expand()) == [
        "nproc=4 does not apply to parallel=dp, which runs one process over every visible GPU: its rows use them all "
        "(narrow them with CUDA_VISIBLE_DEVICES to compare dp with a torchrun mode on as many GPUs)"]


def test_data_options_a_configuration_does_not_use_are_one_key_and_said_to_change_nothing():
    """tokenizer=byte,bpe over synthetic tokens planned four copies of each configuration under other keys (a
    reviewer): the tokenizer reads a file, val_frac splits one (a Markov chain's held-out stream is its own whatever
    val_frac says), eval_tokens needs an evaluation."""
    from lmbench.plan import suite as suites
    from lmbench.plan.feasibility import resolve

    assert {resolve(Config(tokenizer=t, eval_tokens=n, val_frac=f), CPU).key
            for t in ("byte", "bpe") for n in (100, 200) for f in (0.1, 0.2)} == {resolve(Config(), CPU).key}
    markov = Config(data="markov", eval_every=5)
    assert resolve(markov.replace(val_frac=0.2), CPU).key == resolve(markov, CPU).key
    assert resolve(markov.replace(eval_tokens=100), CPU).key != resolve(markov, CPU).key
    assert resolve(markov.replace(tokenizer="bpe"), CPU).key == resolve(markov, CPU).key
    inert = suites.load("smoke").with_overrides({"tokenizer": ["bpe"], "eval_tokens": [100, 200]})
    assert inert.unused_options(inert.expand()) == [
        "tokenizer=bpe applies to data=PATH only, which no configuration here is: it changes nothing",
        "eval_tokens=100,200 applies to configurations that evaluate (eval_every or eval_every_tokens) only, which "
        "no configuration here is: it changes nothing"]


def test_records_written_before_options_became_one_key_read_under_todays_key():
    """A baseline measured with --device cuda:0, or tokenizer=bpe over synthetic tokens, kept its old key and shared
    no configuration with a run planned today (a reviewer): the reader keys a record as the plan does."""
    from lmbench.analyze.results import current_key
    from lmbench.plan.feasibility import resolve

    gpu = dataclasses.replace(CPU, cuda_available=True, device_count=1, capability=(9, 0))
    today = resolve(Config(device="cuda"), gpu)
    for old in (dict(device="cuda:0"), dict(tokenizer="bpe"), dict(eval_tokens=8192)):
        written = today.replace(**old)  # as an older plan resolved it
        assert written.key != today.key
        assert current_key({"config": written.to_dict(), "config_key": written.key}) == today.key, old
    other = today.replace(device="cuda:1")
    assert current_key({"config": other.to_dict(), "config_key": other.key}) == other.key


def test_repeats_of_two_keys_that_became_one_are_read_once_and_said_why(tmp_path):
    """An older run that swept dropout over Llama holds repeat 0 twice under today's one key: the second is left out,
    and the warning says the keys merged (it read as a duplicated line)."""
    import json

    from lmbench.analyze import results

    lines = []
    for dropout in (True, False):
        config = Config(model="tiny-llama", dropout=dropout, device="cpu")
        lines.append({"schema_version": 1, "suite": "s", "config_key": config.key, "repeat": 0,
                      "config": config.to_dict(), "status": "ok", "reason": None, "metrics": {"tokens_per_s": 1.0}})
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    loaded = results.read(tmp_path)
    assert len(loaded.records) == 1
    assert loaded.warnings[0].endswith(f"is already on line 1 (written as {lines[1]['config_key']}: one configuration "
                                       "under this lmbench)")


def test_a_plan_without_warmup_is_said_to_measure_set_up():
    from lmbench.plan import suite as suites

    cold = suites.load("smoke").with_overrides({"warmup": [0]})
    (warning,) = cold.unused_options(cold.expand())
    assert warning.startswith("warmup=0 in 6 configuration(s): their first measured step carries the process's "
                              "one-time set-up")


def test_cuda_and_cuda_0_are_one_device_and_one_key():
    """A baseline run with --device cuda did not pair with a candidate's --set device=cuda:0 (a reviewer)."""
    from lmbench.measure.environment import Platform
    from lmbench.plan.feasibility import resolve

    gpus = Platform(cuda_available=True, device_count=2, capability=(9, 0), torch_version=torch.__version__,
                    apex_available=False, liger_available=False)
    assert resolve(Config(device="cuda:0"), gpus).key == resolve(Config(device="cuda"), gpus).key
    assert resolve(Config(device="cuda:1"), gpus).key != resolve(Config(device="cuda"), gpus).key
    # Under torchrun each rank takes its local rank's GPU, whatever the index (config names the torchrun modes as
    # every mode but none and dp: layout, which holds DISTRIBUTED, imports config).
    from lmbench.plan.layout import DISTRIBUTED

    assert set(CHOICES["parallel"]) - {"none", "dp"} == DISTRIBUTED
    assert resolve(Config(device="cuda:1", parallel="ddp", nproc=2), gpus).key == \
        resolve(Config(device="cuda", parallel="ddp", nproc=2), gpus).key


def test_tune_says_a_mode_without_compiled_combinations_changes_nothing(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from lmbench import tune
    from lmbench.cli import cli

    monkeypatch.setattr(tune, "combos", lambda *lists: [])
    result = CliRunner().invoke(cli, ["tune", "--model", "tiny-gpt2", "--device", "cpu", "--kernels", "eager",
                                      "--max-memory", "30MiB", "--set", "compile_mode=max-autotune",
                                      "--out", str(tmp_path / "t")])
    assert result.exit_code == 2, result.output  # nothing to tune: no winner
    assert ("lmbench: warning: --set compile_mode=max-autotune applies to kernels=compile only, which --kernels does "
            "not list: it changes nothing") in result.stderr


def test_a_baseline_that_pairs_nothing_is_refused_and_booleans_read_as_set_reads_them():
    """Two runs that differ only in dropout: run directories are never paired, so dropout=True pairs nothing."""
    from lmbench.analyze.baseline import check, counterpart, matches

    one = [{"run": "a", "precision": p, "dropout": True} for p in ("fp32", "amp-bf16")]
    two = [{"run": "b", "precision": p, "dropout": False} for p in ("fp32", "amp-bf16")]
    with pytest.raises(UsageError, match=r"--baseline dropout=true: no configuration has a counterpart with "
                                         r"dropout=True that is equal to it on every other varying axis \(run "
                                         r"directories are never paired with each other\), so every speedup would "
                                         r"be empty"):
        check(("dropout", "true"), one + two)
    check(("precision", "fp32"), one + two)  # within each run, fp32 is there
    assert matches(False, "off") and matches(True, "1") and not matches(True, "false") and matches("fp32", "fp32")
    assert counterpart(one[1], one, ("precision", "fp32"), ["precision"]) == 0


def test_a_refused_baseline_names_what_keeps_rows_apart():
    from lmbench.analyze.baseline import check

    # A --parity run: ddp rows at batch 2 without dropout, its parallel=none reference at the global batch 4.
    rows = [{"parallel": "none", "nproc": 1, "batch_size": 4, "dropout": False},
            {"parallel": "ddp", "nproc": 2, "batch_size": 2, "dropout": False}]
    with pytest.raises(UsageError, match=r"e.g. parallel=ddp differs from the nearest parallel=none row in "
                                         r"batch_size \(2 vs 4\)$"):
        check(("parallel", "none"), rows)


def test_gpt2_compiles_to_one_graph():
    """transformers names no loss for GPT2LMHeadModel's class, so its loss_function logged a warning every forward,
    which dynamo cannot trace: every compiled GPT-2 step ran its loss outside the graph (review 2026-11-27)."""
    from lmbench.models.registry import MODELS, build_model

    model = build_model(MODELS["tiny-gpt2"], attention="sdpa")
    ids = torch.randint(0, MODELS["tiny-gpt2"].vocab_size, (2, 16))
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(input_ids=ids, labels=ids)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@pytest.mark.slow
def test_a_compiled_row_records_its_graphs(tmp_path):
    """A compiled row said nothing of what torch.compile made of the step: a graph break (BERT under full
    checkpointing breaks at each checkpointed block) ran part of every step eagerly, in an ordinary ok row. An
    evaluation's graphs are not recompilations in the window."""
    from click.testing import CliRunner

    from lmbench.analyze import results
    from lmbench.cli import cli

    def run(name: str, *axes: str) -> dict:
        out = tmp_path / name
        # The shape and dropout of test_a_compiled_step_whose_graphs_ran_without_cuda_graphs_is_refused's step:
        # inductor's C++ kernels have their sizes built in, and a fresh machine (CI) compiles each one with gcc once.
        args = ["run", "--suite", "smoke", "--device", "cpu", "--out", str(out), "--set", "kernels=compile",
                "--set", "precision=fp32", "--set", "steps=2", "--set", "warmup=1", "--set", "batch_size=2",
                "--set", "seq_len=16", "--set", "dropout=false"]
        result = CliRunner().invoke(cli, [*args, *(a for axis in axes for a in ("--set", axis))])
        assert result.exit_code == 0, result.output
        (record,) = results.read(out).records
        assert record["status"] == "ok", record["reason"]
        return record

    # Evaluations inside the window: eval mode compiles a graph of its own there, outside the clocks.
    whole = run("gpt2", "model=tiny-gpt2", "data=markov", "eval_every=1")
    assert whole["metrics"]["kernels_applied"] == "torch.compile: 2 graph(s), 0 graph break(s)"
    assert (whole["metrics"]["compiled_graphs"], whole["metrics"]["compile_graph_breaks"]) == (2, 0)
    assert whole["metrics"]["compiled_graphs_in_window"] == 0
    assert not any("graph break" in w or "broke" in w or "inside the measured window" in w
                   for w in whole["warnings"])



def test_a_graph_break_is_counted_and_warned_of(monkeypatch):
    """BERT under full checkpointing broke the graph at each block (transformers' use_cache warning, gone since BERT
    is built with use_cache=False): a break made in a block stands in for it, in GPT-2's at the other compiled
    tests' 2 x 16 without dropout (kernels a fresh machine has compiled for them already)."""
    from transformers.models.gpt2 import modeling_gpt2

    from lmbench.run.worker import measure

    forward = modeling_gpt2.GPT2Block.forward

    def breaking(self, *args, **kwargs):
        torch._dynamo.graph_break()
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(modeling_gpt2.GPT2Block, "forward", breaking)
    torch._dynamo.reset()
    broken = measure(Config(model="tiny-gpt2", kernels="compile", precision="fp32", batch_size=2, seq_len=16,
                            dropout=False, steps=2, warmup=1, device="cpu", telemetry=False))
    assert broken["metrics"]["compile_graph_breaks"] >= 1
    assert any(w.startswith("torch.compile broke the model's graph") for w in broken["warnings"])


def test_window_graphs_count_a_recompilation_but_not_an_excluded_evaluations():
    """A graph dynamo compiles inside the window (a failed guard) puts its compilation into the step times; an
    evaluation's graphs (eval mode, outside the clocks) do not count."""
    torch._dynamo.reset()
    double = torch.compile(lambda x: x * 2, backend="eager")
    double(torch.ones(3))
    window = compiled.WindowGraphs()
    double(torch.ones(3))
    assert window.read() == (0, None)  # no CUDA graphs: their work not counted
    with window.excluded():
        double(torch.ones(3, dtype=torch.float64))
    assert window.read() == (0, None)
    double(torch.ones(3, dtype=torch.int32))
    assert window.read() == (1, None)


def test_window_graphs_count_the_cudagraph_trees_warmups_and_recordings_in_the_window(monkeypatch):
    """cudagraph trees re-record a function with no new dynamo graph (an input's address changed) and say nothing
    until their re-record limit: the window counted 0 graphs while a recording synchronized the device in it."""
    from torch._inductor.cudagraph_trees import CUDAGraphTreeManager

    calls = []
    monkeypatch.setattr(CUDAGraphTreeManager, "run_eager", lambda self, *args: calls.append("warmup"))
    monkeypatch.setattr(CUDAGraphTreeManager, "record_function", lambda self, *args: calls.append("record"))
    stand_ins = CUDAGraphTreeManager.run_eager, CUDAGraphTreeManager.record_function
    window = compiled.WindowGraphs(cuda_graphs=True)
    CUDAGraphTreeManager.run_eager(None, "inputs", 1)
    with window.excluded():  # an evaluation's own, outside the clocks
        CUDAGraphTreeManager.record_function(None, "inputs", 2)
    CUDAGraphTreeManager.record_function(None, "inputs", 1)
    assert calls == ["warmup", "record", "record"]
    assert window.read() == (0, 2)
    # The count stops with the window: the managers' own methods are back.
    assert (CUDAGraphTreeManager.run_eager, CUDAGraphTreeManager.record_function) == stand_ins


def test_the_recompile_limit_is_an_error_not_an_uncompiled_model():
    """Past dynamo's recompile limit the function would run uncompiled, with a log line only: a kernels=compile row
    measured eagerly. compile_model makes it an error whose reason names the limit. (dynamo's own patch: pytest's
    monkeypatch deletes a config module's setting on undo, which hides it from dynamo for the rest of the run.)"""
    import torch._dynamo.config as dynamo

    with dynamo.patch(fail_on_recompile_limit_hit=False, recompile_limit=1):
        torch._dynamo.reset()
        model = compiled.compile_model(torch.nn.Linear(4, 4))
        model(torch.ones(2, 4))
        with pytest.raises(torch._dynamo.exc.FailOnRecompileLimitHit) as raised:
            model.double()(torch.ones(2, 4, dtype=torch.float64))  # new dtypes: a failed guard, a second graph
        assert compiled.failure_reason(raised.value).startswith("torch.compile hit dynamo's recompile limit (1 "
                                                                "graphs")
    torch._dynamo.reset()
    assert compiled.failure_reason(ValueError("x")) is None


def test_compile_under_data_parallel_is_skipped():
    """nn.DataParallel runs each replica in a thread of its own, which dynamo does not trace: on two GPUs a
    kernels=compile parallel=dp row ran its model uncompiled (a reviewer's finding, 2026-11-28)."""
    config = resolve(Config(model="tiny-gpt2", parallel="dp", kernels="compile", device="cuda"), H100)
    assert skip_reason(config, H100).startswith("kernels=compile is not available with parallel=dp: nn.DataParallel "
                                                "runs its replicas in threads")
    assert skip_reason(config.replace(kernels="eager"), H100) is None


def test_attention_inductor_rewrote_into_sdpa_is_said():
    """inductor's fuse_attention pass turns BERT's eager attention with dropout into SDPA, which on a GPU is a fused
    kernel under a row that says attention=eager (a reviewer saw 4 rewrites of tiny-bert-mlm's)."""
    from torch._dynamo.utils import counters

    from lmbench.models.compiled import attention_rewrites, describe_compiled

    before = counters["inductor"]["fuse_attention"]
    try:
        counters["inductor"]["fuse_attention"] = before + 4
        assert attention_rewrites() == before + 4
        line, _, _ = describe_compiled("default", cuda_graphs=False)
        assert line.endswith(f", {before + 4} attention pattern(s) rewritten to scaled_dot_product_attention")
    finally:
        counters["inductor"]["fuse_attention"] = before

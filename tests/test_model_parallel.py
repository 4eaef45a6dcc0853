"""Real tensor, pipeline and FSDP x TP jobs over gloo through torchrun, each checked against parallel=none on the
same global batch (--parity): the sharded or staged model must train as the whole one does."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from lmbench.analyze import results
from lmbench.cli import cli
from lmbench.models.registry import MODELS
from lmbench.models.versions import release

#: Largest deviation of a model-parallel fp32 loss curve from its parallel=none reference that these tests accept;
#: measured on this CPU (docs/parallelism.md) it is below 1e-7: only the order of floating-point sums differs.
LAYOUT_DEVIATION = 1e-6

#: tp, pp and fsdp+tp in fp32, and tp and pp of tiny-gpt2 loss-scaled (amp-fp16, fp16): one run for two tests, so the
#: loss-scaled rows share the fp32 reference they are judged against, each a fresh worker's start-up, rather than
#: running it again. tp's rows take 4 sequences, pp's 2 a micro-batch and fsdp+tp's 2 a group: all of tiny-gpt2's
#: rows train 8 a step, and one parallel=none reference on 4 (x 2 accumulated) judges them all.
SUITE = """
name = "model-parallel-cpu"
description = "tp, pp (GPipe and 1F1B) and fsdp+tp on tiny models over gloo; tp and pp loss-scaled too"
[defaults]
seq_len = 32
grad_accum = 2
microbatches = 2
steps = 6
warmup = 1
lr = 1e-3
dropout = false
[matrix]
model = ["tiny-gpt2", "tiny-llama"]
parallel = ["tp", "pp", "fsdp+tp"]
pp_schedule = ["gpipe", "1f1b"]
nproc = [2, 4]
precision = ["fp32", "amp-fp16", "fp16"]
batch_size = [2, 4]
[[exclude]]
parallel = "tp"
batch_size = 2
[[exclude]]
parallel = ["pp", "fsdp+tp"]
batch_size = 4
[[exclude]]
parallel = ["tp", "pp"]
nproc = 4
[[exclude]]
parallel = "fsdp+tp"
nproc = 2
[[exclude]]
model = "tiny-llama"
parallel = ["pp", "fsdp+tp"]
[[exclude]]
precision = ["amp-fp16", "fp16"]
model = "tiny-llama"
[[exclude]]
precision = ["amp-fp16", "fp16"]
parallel = "fsdp+tp"
[[exclude]]
precision = ["amp-fp16", "fp16"]
pp_schedule = "gpipe"
"""

#: The loss-scaled precisions of SUITE.
LOSS_SCALED = ("amp-fp16", "fp16")


def run_with_parity(tmp_path, suite_text: str) -> list[dict]:
    """The records of `lmbench run --parity` over a suite on the CPU (exit 0 required)."""
    suite = tmp_path / "suite.toml"
    suite.write_text(suite_text)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", "--suite", str(suite), "--out", str(out), "--device", "cpu", "--parity"])
    assert result.exit_code == 0, result.output
    return results.read(out).records


@pytest.fixture(scope="module")
def two_layer_records(tmp_path_factory) -> list[dict]:
    return run_with_parity(tmp_path_factory.mktemp("model-parallel"), SUITE)


@pytest.mark.slow
def test_tp_pp_and_fsdp_tp_train_as_the_whole_model_does(two_layer_records):
    records = [r for r in two_layer_records if r["config"]["precision"] == "fp32"]
    by = {(r["config"]["model"], r["config"]["parallel"], r["config"]["pp_schedule"]): r for r in records}
    references = [r for r in records if r["metrics"] and r["metrics"].get("parity") == "reference"]
    # Every row trains 4 sequences a micro-step (tp: the same 4 on each rank; pp: 2 micro-batches of 2; fsdp+tp: 2
    # FSDP groups of 2), accumulated twice: one device on 4, same batch, one reference a model.
    assert sorted((r["config"]["model"], r["config"]["batch_size"]) for r in references) == [
        ("tiny-gpt2", 4), ("tiny-llama", 4)]
    expected = {("tiny-gpt2", "tp", "1f1b"): (1, 2, 1, 8), ("tiny-llama", "tp", "1f1b"): (1, 2, 1, 8),
                ("tiny-gpt2", "pp", "gpipe"): (1, 1, 2, 8), ("tiny-gpt2", "pp", "1f1b"): (1, 1, 2, 8),
                ("tiny-gpt2", "fsdp+tp", "1f1b"): (2, 2, 1, 8)}
    for key, (dp, tp, pp, sequences) in expected.items():
        record = by[key]
        assert record["status"] == "ok", (key, record["reason"])
        m = record["metrics"]
        assert m["parity"] == "ok" and m["parity_max_rel_dev"] < LAYOUT_DEVIATION, (key, m["parity_max_rel_dev"])
        assert (m["dp_degree"], m["tp_degree"], m["pp_degree"]) == (dp, tp, pp)
        assert m["global_batch_sequences"] == sequences and m["global_batch_tokens"] == sequences * 32
        assert m["tokens_per_step"] == sequences * 32
        assert m["tokens_per_s"] == pytest.approx(sequences * 32 * 6 / m["window_s"])
        assert m["world_size"] == dp * tp * pp and m["devices"] == dp * tp * pp
        assert len(m["mem_host_peak_growth_bytes_per_rank"]) == dp * tp * pp
        assert m["parallel_backend"] == "gloo" and len(record["losses"]) == 6
        # The LM head runs whole on each of a tensor-parallel group's ranks: hardware FLOPs count it tp times.
        spec = MODELS[key[0]]
        assert m["hardware_flops_per_token"] - m["flops_per_token"] == 6 * spec.vocab_size * spec.hidden * (tp - 1)
        if pp > 1:
            assert m["pp_bubble_fraction_theory"] == pytest.approx(1 / 3)  # (2 - 1) / (2 + 2 - 1)
            assert len(m["pp_idle_fraction_per_stage"]) == 2
            assert 0 < m["pp_bubble_fraction"] < 1
            assert m["pp_layers_per_stage"] == [1, 1]  # 2 layers, one a stage whatever the head weighs
            assert "params_in_sync" not in m
        else:
            # tp's embeddings, norms and head are whole on every rank; fsdp+tp shards every parameter.
            assert m.get("params_in_sync") is (True if key[1] == "tp" else None)
            assert m["pp_bubble_fraction_theory"] is None
    # Rows of the matrix that differ only in another mode's options (tp's pp_schedule) ran once.
    assert len(records) == len(expected) + len(references)


@pytest.mark.slow
def test_loss_scaled_precisions_train_split_between_ranks_as_the_whole_model_does(two_layer_records):
    """amp-fp16 under tensor parallelism (its gradients a mix of DTensor shards and whole tensors, which GradScaler's
    one check refuses) and under pipeline parallelism (the schedule runs the backward from a loss it scales), and
    fp16 with master weights of shards and of stages: the ranks agree on every overflow, and each trains as
    parallel=none."""
    from lmbench.plan.parity import TOLERANCES

    # The loss-scaled rows and the reference they are judged against (tiny-gpt2's fp32 one, on one device).
    records = [r for r in two_layer_records if r["config"]["precision"] in LOSS_SCALED
               or (r["config"]["model"], r["config"]["parallel"]) == ("tiny-gpt2", "none")]
    rows = {(r["config"]["parallel"], r["config"]["precision"]): r for r in records}
    assert set(rows) == {("tp", "amp-fp16"), ("tp", "fp16"), ("pp", "amp-fp16"), ("pp", "fp16"), ("none", "fp32")}
    for key in [("tp", "amp-fp16"), ("tp", "fp16"), ("pp", "amp-fp16"), ("pp", "fp16")]:
        record = rows[key]
        assert record["status"] == "ok", (key, record["reason"])
        m = record["metrics"]
        assert m["parity"] == "ok" and m["parity_tolerance"] == TOLERANCES[key[1]], (key, m["parity_max_rel_dev"])
        assert m["loss_scale_final"] == 2.0**16 and m["overflow_skipped_steps"] == 0
        assert len(record["losses"]) == 6


#: Pipelines on the 4-layer GPT-2, 2 micro-batches, accumulation 2, fp32: two stages a rank (looped and in a V) on 2
#: ranks, and pipelines across FSDP groups (a 2 x 2 mesh). One run for two tests: the 2-rank pipelines' micro-batches
#: hold 4 sequences, so that their global batch is the FSDP pipelines' (2 sequences x 2 pipelines) and one
#: parallel=none reference on 8 sequences judges them all, one worker's start-up fewer.
FOUR_LAYER = """
name = "four-layer-pipelines-cpu"
description = "pipelines with two stages a rank, and pipelines across FSDP groups, on a 4-layer GPT-2 over gloo"
[defaults]
model = "tiny-gpt2-4l"
precision = "fp32"
seq_len = 32
grad_accum = 2
microbatches = 2
steps = 4
warmup = 1
lr = 1e-3
dropout = false
[matrix]
parallel = ["pp", "fsdp+pp"]
nproc = [2, 4]
batch_size = [4, 2]
pp_schedule = ["interleaved-1f1b", "zero-bubble", "zbv", "1f1b"]
[[exclude]]
parallel = "pp"
nproc = 4
[[exclude]]
parallel = "pp"
batch_size = 2
[[exclude]]
parallel = "pp"
pp_schedule = "1f1b"
[[exclude]]
parallel = "fsdp+pp"
nproc = 2
[[exclude]]
parallel = "fsdp+pp"
batch_size = 4
[[exclude]]
parallel = "fsdp+pp"
pp_schedule = ["zero-bubble", "zbv"]
"""


@pytest.fixture(scope="module")
def four_layer_records(tmp_path_factory) -> list[dict]:
    return run_with_parity(tmp_path_factory.mktemp("four-layer"), FOUR_LAYER)


@pytest.mark.slow
def test_interleaved_and_zero_bubble_pipelines_train_as_the_whole_model_does(four_layer_records):
    """Two stages a rank: looped (interleaved 1F1B, zero bubble: tied weight summed between ranks 0 and 1) and in a
    V (ZBV: the tied weight's two uses on rank 0, one parameter). Each trains as parallel=none on the same batch."""
    by = {r["config"]["pp_schedule"]: r for r in four_layer_records if r["config"]["parallel"] == "pp"}
    assert sorted(by) == ["interleaved-1f1b", "zbv", "zero-bubble"]
    if release(torch.__version__) < (2, 13):
        # torch 2.11's first step sends between a V's two stages on one rank, which gloo refuses: skipped, said why.
        assert "needs torch 2.13 or later" in by.pop("zbv")["reason"]
    for schedule, record in by.items():
        assert record["status"] == "ok", (schedule, record["reason"])
        m = record["metrics"]
        assert m["parity"] == "ok" and m["parity_max_rel_dev"] < LAYOUT_DEVIATION, (schedule, m["parity_max_rel_dev"])
        assert (m["pp_degree"], m["pp_stages_per_rank"], m["global_batch_sequences"]) == (2, 2, 16)
        assert len(record["losses"]) == 4 and 0 < m["pp_bubble_fraction"] < 1
    # (p-1)/(v m+p-1) = 1/5 for the interleaved schedule; the zero-bubble ones have no closed form.
    assert by["interleaved-1f1b"]["metrics"]["pp_bubble_fraction_theory"] == pytest.approx(0.2)
    assert by["zero-bubble"]["metrics"]["pp_bubble_fraction_theory"] is None


@pytest.mark.slow
def test_pipelines_across_fsdp_groups_train_as_the_whole_model_does(four_layer_records):
    """2 pipelines of 2 stage ranks (one stage each, or two looped), each stage sharded by FSDP over the 2 ranks that
    hold it; pipeline d reads the d-th slice of the global batch. Tied embedding and LM head: their gradient shards
    are summed between each pipeline's end ranks. Each trains as parallel=none on the whole batch."""
    records = four_layer_records
    by = {r["config"]["pp_schedule"]: r for r in records if r["config"]["parallel"] == "fsdp+pp"}
    assert sorted(by) == ["1f1b", "interleaved-1f1b"]
    reference, = [r for r in records if r["config"]["parallel"] == "none"]
    assert reference["config"]["batch_size"] == 8  # 2 sequences x 2 micro-batches x 2 pipelines
    for schedule, record in by.items():
        assert record["status"] == "ok", (schedule, record["reason"])
        m = record["metrics"]
        assert m["parity"] == "ok" and m["parity_max_rel_dev"] < LAYOUT_DEVIATION, (schedule, m["parity_max_rel_dev"])
        assert (m["dp_degree"], m["tp_degree"], m["pp_degree"], m["world_size"]) == (2, 1, 2, 4)
        assert m["global_batch_sequences"] == 16 and m["tokens_per_step"] == 16 * 32
        assert len(m["pp_idle_fraction_per_stage"]) == 4 and 0 < m["pp_bubble_fraction"] < 1
        assert "params_in_sync" not in m and len(record["losses"]) == 4


COUNT_COLLECTIVES = """
import collections, json, os, sys
import torch, torch.distributed as dist
import torch.distributed.fsdp._fully_shard._fsdp_param_group as group
from lmbench.plan.config import Config
from lmbench.run.training import TrainingStep

dist.init_process_group("gloo")
counts = collections.Counter()
for name in ("foreach_reduce", "foreach_all_gather"):
    def counted(*args, _original=getattr(group, name), _name=name, **kwargs):
        counts[_name] += 1
        return _original(*args, **kwargs)
    setattr(group, name, counted)
seen = {}
for variant in sys.argv[1:]:  # KERNELS:GRAD_ACCUM, each a training step of its own in this one group of ranks
    kernels, accum = variant.split(":")
    config = Config(model="tiny-gpt2-4l", parallel="fsdp+pp", nproc=4, precision="fp32", microbatches=4,
                    kernels=kernels, grad_accum=int(accum), device="cpu", batch_size=2, seq_len=32, dropout=False,
                    data="markov")
    step = TrainingStep(config, torch.device("cpu"), rank=dist.get_rank(), world=4)
    step()
    counts.clear()
    step()
    seen[variant] = str(dict(sorted(counts.items())))
    dist.barrier()
if dist.get_rank() == 0:
    print(json.dumps(seen))
dist.barrier()
os._exit(0)
"""


@pytest.mark.slow
def test_a_compiled_fsdp_pp_stage_gathers_and_reduces_once_a_pipeline_step_as_eager_does(tmp_path):
    """torch's pipeline schedule runs FSDP's gradient sync once a step only for a stage that is an FSDPModule: a
    torch.compile wrapper hid it, and the compiled rows gathered and reduce-scattered after every micro-batch
    (12 of each a step against eager's 3, 4 micro-batches). The stage is compiled in place instead. Accumulating
    two pipeline steps reduces once, after the second (it reduced after each)."""
    import json
    import subprocess
    import sys

    script = tmp_path / "count.py"
    script.write_text(COUNT_COLLECTIVES)
    # One torchrun job builds the three steps one after the other (each a model, FSDP wrapping and schedule of its
    # own): its four ranks' start-up (torch and transformers imported on a 2-core CPU) is paid once, not three
    # times. The eager rows go first, so that the compiled one cannot have left anything behind them.
    variants = ["eager:1", "eager:2", "compile:1"]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "4", str(script),
                           *variants], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(seen) == sorted(variants), seen
    assert set(seen.values()) == {"{'foreach_all_gather': 3, 'foreach_reduce': 3}"}, seen


def test_a_plan_without_the_single_device_baselines_says_whose_scaling_efficiency_stays_empty():
    """The shipped model-parallel suite's pp, fsdp+tp and fsdp+pp rows train a global batch its one parallel=none
    size does not: their scaling_efficiency was null without a word (review 2026-11-27)."""
    import torch

    from lmbench.measure.environment import Platform
    from lmbench.plan.config import Config
    from lmbench.plan.suite import Planned
    from lmbench.run.runner import missing_baselines, plan

    node = Platform(cuda_available=True, device_count=2, capability=(9, 0), torch_version=torch.__version__,
                    apex_available=False, liger_available=False)
    base = Config(model="tiny-gpt2", batch_size=4, precision="amp-bf16", dropout=False)
    rows = [base, base.replace(parallel="tp"), base.replace(parallel="pp", microbatches=4)]
    jobs = plan([Planned(c, None) for c in rows], node, repeats=1)
    warning = missing_baselines(jobs)
    # tp trains the global batch of 4 (the none row's); pp's 2 x 4 micro-batches of 4 need batch_size=16 on one.
    assert warning is not None and warning.startswith("1 configuration(s) laid out over several devices")
    assert "tiny-gpt2 batch_size=16" in warning and "batch_size=4" not in warning
    with_baseline = plan([Planned(c, None) for c in [*rows, base.replace(batch_size=16)]], node, repeats=1)
    assert missing_baselines(with_baseline) is None
    # No GPU, no scaling efficiency (a CPU's processes share its cores), and so no warning.
    cpu = plan([Planned(c.replace(device="cpu"), None) for c in rows], node, repeats=1)
    assert missing_baselines(cpu) is None

"""Model-parallel layouts without processes: degrees, global batch, refusals, the dry run's account, the stage cut,
the tensor-parallel weight rewrite and the pipeline's bookkeeping."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from lmbench.measure.environment import Platform
from lmbench.models.conv1d import conv1d_as_linear
from lmbench.models.registry import MODELS, build_model
from lmbench.plan.config import Config
from lmbench.plan.feasibility import resolve, skip_reason
from lmbench.plan.layout import (
    explain,
    head_blocks,
    layout,
    pipeline_split,
    problem,
    rank_stages,
    single_device,
    stage_layers,
)
from lmbench.plan.parity import reference_config
from lmbench.run import distributed
from lmbench.run.pipeline import BusyClock, cut, next_token_loss, tied_weight
from lmbench.run.tensor_parallel import qkv_order

CPU = Platform(cuda_available=False, device_count=0, capability=None, torch_version=torch.__version__,
               apex_available=False, liger_available=False)


def resolved(**axes) -> Config:
    return resolve(Config(**axes), CPU)


@pytest.mark.parametrize(("axes", "degrees", "sequences"), [
    ({"parallel": "none"}, (1, 1, 1, 1), 8),
    ({"parallel": "ddp", "nproc": 4}, (4, 4, 1, 1), 32),
    ({"parallel": "fsdp", "nproc": 2, "grad_accum": 2}, (2, 2, 1, 1), 32),
    ({"parallel": "tp", "nproc": 4}, (4, 1, 4, 1), 8),
    ({"parallel": "fsdp+tp", "nproc": 8, "tp_degree": 4}, (8, 2, 4, 1), 16),
    ({"parallel": "fsdp+tp", "nproc": 4}, (4, 2, 2, 1), 16),
    ({"parallel": "pp", "nproc": 2, "microbatches": 4, "grad_accum": 3}, (2, 1, 1, 2), 96),
    ({"parallel": "fsdp+pp", "nproc": 4, "microbatches": 2}, (4, 2, 1, 2), 32),
    ({"parallel": "fsdp+pp", "nproc": 8, "pp_degree": 4, "microbatches": 4}, (8, 2, 1, 4), 64),
])
def test_degrees_multiply_to_the_world_and_the_global_batch_is_what_one_step_trains_on(axes, degrees, sequences):
    shape = layout(resolved(**axes))
    assert (shape.world, shape.dp, shape.tp, shape.pp) == degrees
    assert shape.dp * shape.tp * shape.pp == shape.world
    assert shape.global_batch_sequences == sequences
    assert shape.global_batch_tokens == sequences * 128


def test_bubble_of_a_pipeline_in_theory():
    # (p - 1) / (m + p - 1): 2 stages, 4 micro-batches -> 1/5; 4 stages, 8 -> 3/11.
    assert layout(resolved(parallel="pp", nproc=2, microbatches=4)).bubble_fraction_theory == pytest.approx(0.2)
    assert layout(resolved(parallel="pp", nproc=4, microbatches=8)).bubble_fraction_theory == pytest.approx(3 / 11)
    assert layout(resolved(parallel="tp", nproc=2)).bubble_fraction_theory is None


def test_interleaved_schedules_hold_several_stages_a_rank_and_shrink_the_bubble_in_theory():
    # Looped: stage s on rank s mod p; a V: rank r holds r and 2p-1-r, so rank 0 holds the first and the last.
    assert rank_stages(2, 2, "interleaved-1f1b") == [[0, 2], [1, 3]]
    assert rank_stages(4, 3, "zero-bubble") == [[0, 4, 8], [1, 5, 9], [2, 6, 10], [3, 7, 11]]
    assert rank_stages(4, 2, "zbv") == [[0, 7], [1, 6], [2, 5], [3, 4]]
    assert rank_stages(2, 1, "1f1b") == [[0], [1]]
    # (p-1)/(v m+p-1) (Narayanan et al. 2021, section 2.2.2): 4 ranks, 2 stages each, 8 micro-batches -> 3/19.
    interleaved = layout(resolved(parallel="pp", nproc=4, microbatches=8, pp_schedule="interleaved-1f1b"))
    assert (interleaved.stages_per_rank, interleaved.bubble_fraction_theory) == (2, pytest.approx(3 / 19))
    assert interleaved.record()["pp_stages_per_rank"] == 2
    # The zero-bubble schedules' bubble depends on the forward and backward halves' times: measured only.
    for schedule in ("zero-bubble", "zbv"):
        assert layout(resolved(parallel="pp", nproc=2, pp_schedule=schedule)).bubble_fraction_theory is None


def test_stages_per_rank_resolves_to_the_schedules_own_and_leaves_earlier_keys_alone():
    assert resolved(parallel="pp", pp_schedule="interleaved-1f1b").pp_stages_per_rank == 2
    assert resolved(parallel="pp", pp_schedule="zero-bubble", pp_stages_per_rank=3).pp_stages_per_rank == 3
    # One stage per rank is the default of gpipe and 1f1b: 1 and 0 are one configuration with the key it had
    # before the axis existed.
    one = resolved(parallel="pp", pp_stages_per_rank=1)
    assert one.pp_stages_per_rank == 0 and one.key == resolved(parallel="pp").key
    assert resolved(parallel="ddp", pp_stages_per_rank=2).pp_stages_per_rank == 0


def test_stage_layers_split_evenly_with_the_remainder_on_early_stages():
    assert stage_layers(12, 2) == [range(0, 6), range(6, 12)]
    assert stage_layers(5, 2) == [range(0, 3), range(3, 5)]
    assert stage_layers(16, 3) == [range(0, 6), range(6, 11), range(11, 16)]
    with pytest.raises(ValueError):
        stage_layers(2, 3)


def test_the_last_stage_takes_fewer_blocks_for_the_lm_head_it_runs():
    """An even split of gpt2-124m over 2 stages gave the last about 1.75 times the first's work (its LM head is
    some 4.5 blocks' worth at T=1024), which its records read as pipeline bubble (a reviewer)."""
    gpt2, llama = MODELS["gpt2-124m"], MODELS["llama-1b"]
    config = resolved(model="gpt2-124m", parallel="pp", nproc=2, seq_len=1024)
    # A block: 2 (4 d^2 + 8 d^2) + 4 T d = 17.3M FLOPs a token; the head 2 V d = 77.2M.
    assert head_blocks(gpt2, config) == pytest.approx(2 * 50257 * 768 / (24 * 768 ** 2 + 4 * 1024 * 768))
    assert [len(r) for r in pipeline_split(gpt2, config, 2)] == [8, 4]  # 8 against 4 + 4.46
    # The busiest stage as light as can be, then the next busiest: not 5, 5, 1 and 1 + the head.
    assert [len(r) for r in pipeline_split(gpt2, config, 4)] == [4, 4, 3, 1]
    # Llama's gated MLP (three matmuls) and grouped key/values; a head that recomputes its logits (kernels=triton)
    # and blocks that rerun their forward (checkpointing=full) weigh a third more.
    llama_config = resolved(model="llama-1b", parallel="pp", nproc=2, seq_len=2048)
    d = 2048
    block = 2 * (2 * d * d + 2 * d * 512 + 3 * d * 8192) + 4 * 2048 * d
    assert head_blocks(llama, llama_config) == pytest.approx(2 * 128256 * d / block)
    assert [len(r) for r in pipeline_split(llama, llama_config, 2)] == [10, 6]
    assert head_blocks(llama, llama_config.replace(kernels="triton")) == pytest.approx(
        head_blocks(llama, llama_config) * 4 / 3)
    assert head_blocks(llama, llama_config.replace(checkpointing="full")) == pytest.approx(
        head_blocks(llama, llama_config) * 3 / 4)
    assert stage_layers(12, 2, head_blocks=0.0) == stage_layers(12, 2)


@pytest.mark.parametrize(("axes", "reason"), [
    ({"model": "tiny-bert-mlm", "parallel": "tp", "nproc": 2}, "implemented for the GPT-2 and Llama families"),
    ({"model": "tiny-gpt2", "parallel": "tp", "nproc": 4}, "2 attention heads, which tensor parallelism of degree 4"),
    ({"model": "tiny-llama", "parallel": "tp", "nproc": 4}, "2 key/value heads"),
    ({"model": "tiny-gpt2", "parallel": "pp", "nproc": 4}, "2 layers, fewer than the 4 pipeline stages"),
    ({"model": "tiny-gpt2", "parallel": "pp", "nproc": 2, "attention": "eager"}, "attention=sdpa or math"),
    ({"model": "tiny-gpt2", "parallel": "pp", "nproc": 2, "microbatches": 1}, "needs microbatches >= stages (2)"),
    ({"model": "tiny-gpt2", "parallel": "pp", "nproc": 2, "pp_schedule": "interleaved-1f1b"},
     "2 layers, fewer than the 4 pipeline stages (2 ranks x 2)"),
    ({"model": "tiny-gpt2-4l", "parallel": "pp", "nproc": 2, "pp_stages_per_rank": 2}, "pp_schedule=1f1b runs one "
     "stage per rank; pp_stages_per_rank=2 needs interleaved-1f1b, zbv, zero-bubble"),
    ({"model": "llama-1b", "parallel": "pp", "nproc": 2, "pp_schedule": "zbv", "pp_stages_per_rank": 4},
     "pp_schedule=zbv lays exactly 2 stages on each rank"),
    ({"model": "llama-1b", "parallel": "pp", "nproc": 2, "pp_schedule": "interleaved-1f1b", "microbatches": 5},
     "runs microbatches // ranks = 2 rounds of equal size, which microbatches=5 cannot make; the next count that can "
     "is 6"),
    ({"model": "tiny-gpt2-4l", "parallel": "pp", "nproc": 2, "pp_schedule": "zbv", "kernels": "compile"},
     "not support for compiled stages"),
    ({"model": "tiny-gpt2-4l", "parallel": "fsdp+pp", "nproc": 4, "pp_schedule": "zero-bubble",
      "checkpointing": "selective"}, "Trying to backward an extra time"),
    ({"model": "tiny-gpt2", "parallel": "fsdp+pp", "nproc": 2}, "pp_degree=2 on 2 ranks leaves 1 pipeline: FSDP "
     "across pipelines needs 2 or more (use parallel=pp for one pipeline)"),
    ({"model": "tiny-gpt2-4l", "parallel": "fsdp+pp", "nproc": 6, "pp_degree": 4}, "pp_degree=4 does not divide the "
     "6 ranks"),
    ({"model": "tiny-gpt2-4l", "parallel": "fsdp+pp", "nproc": 4, "pp_degree": 1}, "pipelines of 2 or more stage "
     "ranks; pp_degree=1"),
    ({"model": "tiny-gpt2-4l", "parallel": "fsdp+pp", "nproc": 4, "pp_schedule": "zbv"},
     "which FSDP would shard as two units"),
    ({"model": "tiny-gpt2", "parallel": "fsdp+pp", "nproc": 4, "pp_schedule": "interleaved-1f1b"},
     "2 layers, fewer than the 4 pipeline stages (2 ranks x 2)"),
    ({"model": "tiny-gpt2", "parallel": "fsdp+tp", "nproc": 2}, "use parallel=tp for one group"),
    ({"model": "tiny-gpt2", "parallel": "fsdp+tp", "nproc": 6, "tp_degree": 4}, "divides the 6 ranks"),
])
def test_layouts_that_cannot_work_are_refused_with_the_reason(axes, reason):
    config = resolved(**axes)
    assert reason in problem(config, MODELS[config.model])
    assert reason in skip_reason(config, CPU)


def test_gpipe_runs_fewer_micro_batches_than_stages():
    assert problem(resolved(model="tiny-gpt2", parallel="pp", nproc=2, microbatches=1, pp_schedule="gpipe"),
                   MODELS["tiny-gpt2"]) is None


@pytest.mark.parametrize(("axes", "reason"), [
    ({"parallel": "tp", "kernels": "triton"}, "kernels=triton is not available with parallel=tp"),
    ({"parallel": "fsdp+tp", "nproc": 4, "precision": "fp16"}, "precision=fp16 (fp32 master weights) is not "
     "implemented for parallel=fsdp+tp: FSDP's sharding replaces the parameters whose fp32 master copies"),
    ({"parallel": "fsdp", "precision": "fp16"}, "not implemented for parallel=fsdp:"),
])
def test_kernel_sets_and_master_weights_that_model_parallelism_lacks_are_skipped(axes, reason):
    assert reason in skip_reason(resolved(model="tiny-gpt2", **axes), CPU)


@pytest.mark.parametrize(("parallel", "precision"), [("tp", "amp-fp16"), ("tp", "fp16"), ("pp", "amp-fp16"),
                                                     ("pp", "fp16"), ("fsdp+tp", "amp-fp16"), ("fsdp+pp", "amp-fp16")])
def test_loss_scaled_precisions_run_where_the_ranks_agree_on_the_overflow(parallel, precision):
    nproc = 4 if parallel.startswith("fsdp+") else 2
    config = resolved(model="tiny-gpt2-4l", parallel=parallel, nproc=nproc, precision=precision)
    assert skip_reason(config, CPU) is None


def test_resolve_keeps_each_modes_own_options_and_resets_the_rest():
    assert resolved(parallel="fsdp+tp", nproc=4).tp_degree == 2
    assert resolved(parallel="tp", nproc=2, tp_degree=4).tp_degree == 0
    ddp = resolved(parallel="ddp", pp_schedule="gpipe", microbatches=8)
    assert (ddp.pp_schedule, ddp.microbatches) == ("1f1b", 4)
    assert ddp.key == resolved(parallel="ddp").key
    pp = resolved(parallel="pp", pp_schedule="gpipe", microbatches=8, bucket_cap_mb=50)
    assert (pp.pp_schedule, pp.microbatches, pp.bucket_cap_mb) == ("gpipe", 8, 25)


def test_model_parallel_rows_are_compared_with_one_device_training_the_same_global_batch():
    pp = resolved(model="tiny-gpt2", parallel="pp", nproc=2, batch_size=2, microbatches=4, grad_accum=2,
                  precision="bf16")
    assert reference_config(pp) == Config(model="tiny-gpt2", batch_size=8, grad_accum=2, device="cpu", nproc=1)
    fsdp_tp = resolved(model="tiny-gpt2", parallel="fsdp+tp", nproc=4, batch_size=2)
    assert reference_config(fsdp_tp).batch_size == 4
    assert reference_config(fsdp_tp, nnodes=2).batch_size == 8
    assert reference_config(resolved(model="tiny-gpt2", parallel="tp", nproc=2)).parallel == "none"
    # Data parallelism keeps its per-device batch for scaling efficiency; its parity reference trains the global
    # batch on one device, except a masked LM's (each rank's mean is over its own count of masked positions).
    ddp = resolved(model="tiny-gpt2", parallel="ddp", nproc=2)
    assert single_device(ddp).batch_size == 8
    assert reference_config(ddp) == Config(model="tiny-gpt2", batch_size=16, device="cpu", nproc=1)
    assert reference_config(resolved(model="tiny-gpt2", parallel="fsdp", nproc=4, grad_accum=2)).batch_size == 32
    assert reference_config(resolved(model="tiny-bert-mlm", parallel="ddp", nproc=2)).parallel == "ddp"


def test_the_dry_run_says_what_each_rank_holds():
    llama, gpt2 = MODELS["llama-1b"], MODELS["gpt2-124m"]
    tp = explain(resolved(model="llama-1b", parallel="tp", nproc=4), llama)
    assert "8 of 32 attention heads (2 of 8 key/value heads), 2048 of 8192 MLP columns" in tp[0]
    pp = explain(resolved(model="gpt2-124m", parallel="pp", nproc=2, microbatches=8), gpt2)
    # Split for the LM head's work (test_the_last_stage_takes_fewer_blocks_for_the_lm_head_it_runs): at T=128 it is
    # some 5.3 blocks' worth, so the last stage's 3 layers and head against the first's 9.
    assert pp[0] == "rank 0 (stage 0): embeddings, layers 0-8"
    assert pp[1] == "rank 1 (stage 1): layers 9-11, final norm, LM head and loss (the head about 5.3 layers' work)"
    assert "1f1b over 8 micro-batches of 8 sequences; bubble (p-1)/(m+p-1) = 11% in theory" in pp[2]
    assert "64 sequences x 128 tokens per optimizer step (8,192 tokens)" in pp[2]
    looped = explain(resolved(model="gpt2-124m", parallel="pp", nproc=2, microbatches=4,
                              pp_schedule="interleaved-1f1b"), gpt2)
    assert looped[0] == "rank 0 (stages 0, 2): stage 0: embeddings, layers 0-3; stage 2: layers 8-10"
    assert looped[1] == ("rank 1 (stages 1, 3): stage 1: layers 4-7; stage 3: layer 11, final norm, LM head and loss "
                         "(the head about 5.3 layers' work)")
    assert "bubble (p-1)/(v m+p-1) = 11% in theory" in looped[2] and "summed between" in looped[2]
    v = explain(resolved(model="gpt2-124m", parallel="pp", nproc=2, pp_schedule="zbv"), gpt2)
    assert v[0] == ("rank 0 (stages 0, 3): stage 0: embeddings, layers 0-3; stage 3: layer 11, final norm, LM head "
                    "and loss (the head about 5.3 layers' work)")
    assert "no closed-form bubble" in v[2] and "one weight on rank 0" in v[2]
    mesh = explain(resolved(model="llama-1b", parallel="fsdp+tp", nproc=8, tp_degree=4), llama)
    assert mesh[0] == "2 x 4 mesh (FSDP x TP): rank r is tensor-parallel shard r % 4 of FSDP group r // 4"


def test_fsdp_pp_lays_pipelines_across_fsdp_groups_and_says_so():
    """A (pp, dp) mesh: pipeline d is ranks d, d + dp, ...; the ranks holding one stage are consecutive, its FSDP
    group, and pipeline d reads the d-th slice of the global batch (all of a pipeline step's micro-batches)."""
    shape = layout(resolved(model="tiny-gpt2-4l", parallel="fsdp+pp", nproc=8, pp_degree=4, microbatches=4))
    assert shape.pipelines() == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert [shape.pipeline_rank(r) for r in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [shape.data_group(r) for r in range(8)] == [0, 1, 0, 1, 0, 1, 0, 1]
    # Every other layout keeps its own: fsdp+tp's groups are consecutive ranks, a pipeline is the world.
    mesh = layout(resolved(parallel="fsdp+tp", nproc=8, tp_degree=4))
    assert [mesh.data_group(r) for r in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]
    pipe = layout(resolved(parallel="pp", nproc=4, model="tiny-gpt2-4l"))
    assert pipe.pipelines() == [[0, 1, 2, 3]] and [pipe.pipeline_rank(r) for r in range(4)] == [0, 1, 2, 3]
    assert resolved(parallel="fsdp+pp", nproc=4).pp_degree == 2 and resolved(parallel="ddp").pp_degree == 0
    lines = explain(resolved(model="gpt2-124m", parallel="fsdp+pp", nproc=4, microbatches=4), MODELS["gpt2-124m"])
    assert lines[0] == ("2 x 2 mesh (PP x FSDP): rank r is stage rank r // 2 of pipeline r % 2; each stage 1/2 at "
                        "rest, sharded by FSDP over the 2 ranks that hold it")
    assert lines[1] == "ranks 0-1 (stage 0): embeddings, layers 0-8"
    assert lines[2] == ("ranks 2-3 (stage 1): layers 9-11, final norm, LM head and loss (the head about 5.3 layers' "
                        "work)")
    assert "(each of the 2 pipelines its own)" in lines[3] and "64 sequences x 128 tokens" in lines[3]
    # Compared with one device training the whole global batch.
    assert reference_config(resolved(model="tiny-gpt2-4l", parallel="fsdp+pp", nproc=4, microbatches=2)).batch_size \
        == 32


def test_qkv_columns_are_reordered_so_each_ranks_shard_holds_its_own_q_k_and_v():
    # hidden 4, degree 2: q = 0..3, k = 4..7, v = 8..11; rank 0 gets q0 q1 k0 k1 v0 v1.
    assert qkv_order(4, 2).tolist() == [0, 1, 4, 5, 8, 9, 2, 3, 6, 7, 10, 11]
    assert sorted(qkv_order(768, 4).tolist()) == list(range(3 * 768))


def test_a_conv1d_becomes_the_linear_that_computes_the_same():
    torch.manual_seed(0)
    conv = build_model(MODELS["tiny-gpt2"], attention="sdpa").transformer.h[0].attn.c_attn
    x = torch.randn(3, 5, 64)
    assert torch.allclose(conv1d_as_linear(conv)(x), conv(x), atol=1e-6)
    order = qkv_order(64, 2)
    assert torch.allclose(conv1d_as_linear(conv, order)(x), conv(x)[..., order], atol=1e-6)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_stages_chained_compute_the_whole_models_logits_and_loss(name):
    spec = MODELS[name]
    torch.manual_seed(0)
    model = build_model(spec, attention="sdpa", dropout=False).eval()
    ids = torch.randint(0, spec.vocab_size, (2, 16))
    config = Config(model=name, parallel="pp", nproc=2, seq_len=16)
    with torch.no_grad():
        whole = model(input_ids=ids, labels=ids)
        first, last = cut(model, spec, config, [0], 2), cut(model, spec, config, [1], 2)
        logits = last[0](first[0](ids))
    assert torch.allclose(logits, whole.logits, atol=1e-5)
    assert next_token_loss(logits, ids).item() == pytest.approx(whole.loss.item(), rel=1e-6)
    assert tied_weight(model)
    assert first.tied_parameter() is last.tied_parameter()  # one process: the same tensor; apart, two copies
    assert sum(p.numel() for p in first.parameters()) < sum(p.numel() for p in model.parameters())
    assert (first.first, first.last, last.first, last.last) == (True, False, False, True)


def test_stages_cut_for_the_heads_work_compute_the_whole_model():
    """A split that is not even (the last stage's head, 1.28 blocks' worth, leaves it one block of four) chains to
    the whole model's logits, each stage holding the blocks pipeline_split gives it."""
    config = Config(model="tiny-gpt2-4l", parallel="pp", nproc=2, seq_len=16, vocab_multiple=1024)
    spec = dataclasses.replace(MODELS["tiny-gpt2-4l"], vocab_size=config.padded_vocab)
    torch.manual_seed(0)
    model = build_model(spec, attention="sdpa", dropout=False).eval()
    ids = torch.randint(0, MODELS["tiny-gpt2-4l"].vocab_size, (2, 16))
    with torch.no_grad():
        whole = model(input_ids=ids).logits
        first, last = cut(model, spec, config, [0], 2), cut(model, spec, config, [1], 2)
        logits = last[0](first[0](ids))
    assert [len(first[0].blocks()), len(last[0].blocks())] == [3, 1]
    assert [len(r) for r in pipeline_split(spec, config, 2)] == [3, 1]
    assert torch.allclose(logits, whole, atol=1e-5)


def test_stages_laid_out_in_a_v_compute_the_whole_model_and_share_the_tied_weight():
    spec = MODELS["tiny-gpt2-4l"]
    torch.manual_seed(0)
    model = build_model(spec, attention="sdpa", dropout=False).eval()
    ids = torch.randint(0, spec.vocab_size, (2, 16))
    config = Config(model=spec.name, parallel="pp", nproc=2, seq_len=16, pp_schedule="zbv")
    with torch.no_grad():
        whole = model(input_ids=ids).logits
        # Four stages, two a rank: rank 0 runs stages 0 and 3, rank 1 stages 1 and 2.
        outer, inner = cut(model, spec, config, [0, 3], 4), cut(model, spec, config, [1, 2], 4)
        logits = outer[1](inner[1](inner[0](outer[0](ids))))
    assert torch.allclose(logits, whole, atol=1e-5)
    assert (outer.first, outer.last, inner.first, inner.last) == (True, True, False, False)
    # Rank 0 holds the tied weight once: its embedding and its LM head are one parameter, stepped once.
    assert sum(p is outer.tied_parameter() for p in outer.parameters()) == 1


def test_busy_clock_sums_the_wrapped_calls_of_each_step():
    clock = BusyClock(torch.device("cpu"))
    work = clock.wrap(lambda: time.sleep(0.02))
    work()  # before the first step: not counted
    for calls in (1, 3):
        clock.new_step()
        for _ in range(calls):
            work()
    one, three = clock.busy_s(2)
    assert 0.02 <= one < 0.06 <= three
    assert clock.busy_s(1) == [three]


def test_the_pipeline_update_counts_the_optimizer_step_as_busy_and_the_tied_all_reduce_as_idle():
    """The end stage that reaches the tied all-reduce first waits there for the other: that wait is bubble."""
    from types import SimpleNamespace

    from lmbench.run.training import TrainingStep

    clock = BusyClock(torch.device("cpu"))
    step = SimpleNamespace(pipeline=SimpleNamespace(clock=clock, sum_tied_gradients=lambda: time.sleep(0.2)),
                           precision=SimpleNamespace(check=lambda: time.sleep(0.01), agree=lambda: None,
                                                     apply=lambda: time.sleep(0.01)))
    clock.new_step()
    TrainingStep._pipeline_update(step)
    busy, = clock.busy_s(1)
    assert 0.02 <= busy < 0.15


def test_pipeline_losses_come_from_the_last_stage_and_idle_is_one_minus_busy():
    ranks = [{"losses": None, "pp_busy_s": 0.25, "window_s": 1.0}, {"losses": [2.0, 1.0], "pp_busy_s": 0.5,
                                                                    "window_s": 1.0}]
    assert distributed.mean_losses(ranks) == [2.0, 1.0]
    idle = distributed.pipeline_idle(ranks)
    assert idle["pp_idle_fraction_per_stage"] == [0.75, 0.5]
    assert idle["pp_bubble_fraction"] == pytest.approx(0.625)
    # Against the job's window (the longest rank's): the first stage's own window ended before the last stage's
    # cool-down, which is idle time of the first stage all the same.
    ranks[0]["window_s"] = 0.9
    assert distributed.pipeline_idle(ranks)["pp_idle_fraction_per_stage"] == [0.75, 0.5]
    ranks[0]["window_s"], ranks[1]["window_s"] = 1.0, 0.8
    assert distributed.pipeline_idle(ranks)["pp_idle_fraction_per_stage"] == [0.75, 0.5]


def test_the_summary_note_puts_the_measured_bubble_beside_the_theory():
    from lmbench.measure.metrics import bubble_note

    assert bubble_note(0.634, 0.2) == "bubble: 63% idle measured, 20% in theory"
    assert bubble_note(None, 0.2) is None and bubble_note(0.5, None) == "bubble: 50% idle measured"


def test_tables_show_a_dash_for_options_of_another_parallel_mode():
    from lmbench.analyze.table import cell

    assert cell({"parallel": "tp", "microbatches": 4}, "microbatches") == "-"
    assert cell({"parallel": "pp", "microbatches": 4}, "microbatches") == "4"
    assert cell({"parallel": "ddp", "bucket_cap_mb": 25}, "bucket_cap_mb") == "25"
    # A one-stage schedule's 0 (its key's value) is shown as the one stage a rank holds.
    assert cell({"parallel": "pp", "pp_schedule": "1f1b", "pp_stages_per_rank": 0}, "pp_stages_per_rank") == "1"
    assert cell({"parallel": "pp", "pp_schedule": "zbv", "pp_stages_per_rank": 2}, "pp_stages_per_rank") == "2"
    assert cell({"parallel": "fsdp+tp", "tp_degree": 2, "model": "m"}, "model") == "m"


def test_optimizer_groups_never_mix_tensor_kinds_or_device_meshes():
    from lmbench.run.training import _by_kind

    plain, on_a, also_a, on_b = (torch.nn.Parameter(torch.zeros(1)) for _ in range(4))
    on_a.device_mesh = also_a.device_mesh = "mesh (dp, tp)"
    on_b.device_mesh = "mesh (dp,)"
    groups = [group["params"] for group in _by_kind([plain, on_a, on_b, also_a])]
    assert groups == [[plain], [on_a, also_a], [on_b]]


def test_layouts_are_judged_on_the_world_of_every_node():
    # Two nodes of 2 processes: a 4-stage pipeline, a tensor-parallel group of 4; one process a node is a world of 2.
    assert "2 layers, fewer than the 4 pipeline stages" in skip_reason(
        resolved(model="tiny-gpt2", parallel="pp", nproc=2), CPU, nnodes=2)
    assert "degree 4" in skip_reason(resolved(model="tiny-gpt2", parallel="tp", nproc=2), CPU, nnodes=2)
    assert skip_reason(resolved(model="tiny-gpt2", parallel="tp", nproc=1), CPU, nnodes=2) is None
    assert skip_reason(resolved(model="tiny-gpt2", parallel="tp", nproc=1), CPU) == (
        "parallel=tp needs at least 2 processes; nproc=1")
    assert skip_reason(resolved(model="tiny-llama", parallel="fsdp+tp", nproc=2), CPU, nnodes=2) is None


def test_the_dry_run_names_one_rank_or_layer_in_the_singular():
    gpt2 = MODELS["tiny-gpt2"]
    assert explain(resolved(model="tiny-gpt2", parallel="ddp", nproc=1), gpt2)[0].startswith("rank 0: a whole replica")
    pp = explain(resolved(model="tiny-gpt2", parallel="pp", nproc=2), gpt2)
    assert pp[0] == "rank 0 (stage 0): embeddings, layer 0"


def _idle_share(orders, stages: int, per_rank: int) -> float:
    """Mean idle share of the ranks running torch's `orders` (actions per rank) with equal stages, a backward twice
    a forward, and free transfers: an action starts when its rank is free and what it needs is done."""
    from torch.distributed.pipelining.schedules import _ComputationType as Kind

    forward, backward = 1 / per_rank, 2 / per_rank
    orders = [[a for a in order if a is not None] for order in orders]
    done: dict[tuple[int, int, str], float] = {}
    clock, busy, position = [0.0] * len(orders), [0.0] * len(orders), [0] * len(orders)
    moved = True
    while moved:
        moved = False
        for rank, order in enumerate(orders):
            while position[rank] < len(order):
                action = order[position[rank]]
                stage, micro = action.stage_index, action.microbatch_index
                if action.computation_type == Kind.FORWARD:
                    kind, length, needs = "F", forward, [(stage - 1, micro, "F")] if stage else []
                else:
                    kind, length = "B", backward
                    needs = [(stage, micro, "F")] + ([(stage + 1, micro, "B")] if stage < stages - 1 else [])
                if not all(need in done for need in needs):
                    break
                end = max([clock[rank]] + [done[need] for need in needs]) + length
                done[(stage, micro, kind)], clock[rank] = end, end
                busy[rank] += length
                position[rank] += 1
                moved = True
    assert all(position[rank] == len(order) for rank, order in enumerate(orders)), "the schedule deadlocked"
    return sum(1 - b / max(clock) for b in busy) / len(orders)


@pytest.mark.parametrize(("ranks", "micro"), [(2, 2), (2, 4), (4, 2), (4, 3), (4, 4), (4, 6), (4, 8), (8, 4)])
def test_the_interleaved_bubble_in_theory_is_that_of_torchs_own_schedule(ranks, micro):
    import contextlib
    import io

    from torch.distributed.pipelining import ScheduleInterleaved1F1B
    from torch.distributed.pipelining._schedule_visualizer import get_schedule_ops

    with contextlib.redirect_stdout(io.StringIO()):
        orders = get_schedule_ops(ScheduleInterleaved1F1B, ranks, micro, num_stages_per_rank=2)
    shape = layout(resolved(model="llama-1b", parallel="pp", nproc=ranks, microbatches=micro,
                            pp_schedule="interleaved-1f1b"))
    assert shape.bubble_fraction_theory == pytest.approx(_idle_share(orders, 2 * ranks, 2), abs=1e-9)


def test_a_v_over_gloo_needs_torch_2_13():
    # torch 2.11's first step sends between a V's two stages on one rank; gloo has no pair to itself.
    old = dataclasses.replace(CPU, torch_version="2.11.0+cpu")
    v = resolved(model="tiny-gpt2-4l", parallel="pp", nproc=2, pp_schedule="zbv")
    assert "needs torch 2.13 or later: torch 2.11.0+cpu's first pipeline step" in skip_reason(v, old)
    assert skip_reason(v, dataclasses.replace(CPU, torch_version="2.13.0+cpu")) is None
    assert skip_reason(v.replace(pp_schedule="interleaved-1f1b"), old) is None
    from lmbench.models.versions import release

    assert (release("2.11.0+cu130"), release("0.18.0"), release("2.13.0a0+git"), release("nightly")) == (
        (2, 11), (0, 18), (2, 13), ())


def test_the_dry_run_names_the_formula_its_bubble_comes_from():
    few = explain(resolved(model="gpt2-124m", parallel="pp", nproc=4, microbatches=2, pp_schedule="interleaved-1f1b"),
                  MODELS["gpt2-124m"])
    assert "bubble (v p+m-1-v m)/(v p+m-1) = 56% in theory (fewer micro-batches than ranks)" in few[-1]
    # 4 ranks, 9 micro-batches: 2 rounds cannot split 9, 10 is 2 rounds of 5; 5 ranks, 21: 4 rounds cannot split 21,
    # 22 or 23, 24 is 4 rounds of 6.
    for ranks, micro, fits in ((4, 9, 10), (5, 21, 24)):
        odd = resolved(model="llama-1b", parallel="pp", nproc=ranks, microbatches=micro, pp_schedule="interleaved-1f1b")
        assert f"the next count that can is {fits} " in problem(odd, MODELS["llama-1b"])

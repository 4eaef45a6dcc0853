"""FP8 training (torchao float8) on a CPU: which layers convert, training end to end, skip reasons, parity plan."""

import dataclasses
import json

import pytest
import torch
import torch.nn as nn

from lmbench.errors import Float8ConversionError
from lmbench.measure.environment import probe_platform
from lmbench.models import float8
from lmbench.models.registry import MODELS, build_model
from lmbench.plan.config import Config
from lmbench.plan.feasibility import skip_reason
from lmbench.plan.parity import TOLERANCES, reference_config, reference_depth, verdict, with_references
from lmbench.plan.suite import Planned
from lmbench.run.training import TrainingStep

pytest.importorskip("torchao.float8")
if float8.cpu_scaled_mm_problem():
    pytest.skip(float8.cpu_scaled_mm_problem(), allow_module_level=True)

CPU = torch.device("cpu")
LLAMA_LINEARS = [f"model.layers.{i}.{part}" for i in range(2) for part in (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
    "mlp.down_proj")]


def built(model: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model(MODELS[model], attention="sdpa")


@pytest.mark.parametrize("model, eligible", [
    ("tiny-llama", LLAMA_LINEARS),
    ("tiny-gpt2", [f"transformer.h.{i}.{part}" for i in range(2)
                   for part in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]),
    # nn.MultiheadAttention reads its projections' weights itself: only the feed-forward linears can run in FP8.
    ("tiny-torch-transformer-lm", [f"encoder.layers.{i}.{part}" for i in range(2) for part in ("linear1", "linear2")]),
    ("tiny-bert-mlm", [f"bert.encoder.layer.{i}.{part}" for i in range(2) for part in (
        "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
        "intermediate.dense", "output.dense")]),
])
def test_exactly_the_block_linears_convert(model, eligible):
    from torchao.float8.float8_linear import Float8Linear

    lm = built(model)
    assert float8.eligible_linears(lm) == eligible
    outside = {name: type(m) for name, m in lm.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))
               and name not in eligible}
    lm, applied = float8.convert(lm, "fp8-rowwise")
    assert applied == f"float8 linears {len(eligible)}/{len(eligible)} (rowwise)"
    assert sorted(name for name, m in lm.named_modules() if isinstance(m, Float8Linear)) == sorted(eligible)
    # Embeddings, the LM head (and BERT's head transform), MultiheadAttention's out_proj: untouched.
    assert {name: type(lm.get_submodule(name)) for name in outside} == outside


def test_gpt2_conv1d_becomes_the_linear_it_computes():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    conv = Conv1D(12, 8)
    nn.init.normal_(conv.bias)
    from lmbench.models.conv1d import conv1d_as_linear

    linear = conv1d_as_linear(conv)
    x = torch.randn(3, 8)
    torch.testing.assert_close(linear(x), conv(x))
    assert linear.bias is conv.bias and linear.weight.shape == (12, 8)


def test_a_layer_left_unconverted_is_an_error(monkeypatch):
    import torchao.float8

    monkeypatch.setattr(torchao.float8, "convert_to_float8_training", lambda model, **kwargs: model)
    with pytest.raises(Float8ConversionError, match=r"precision=fp8-tensorwise did not apply with torchao .*: not "
                                                    r"converted: model.layers.0.mlp.down_proj"):
        float8.convert(built("tiny-llama"), "fp8-tensorwise")


def losses(config: Config, steps: int) -> list[float]:
    step = TrainingStep(config, CPU)
    return [step().item() for _ in range(steps)]


@pytest.mark.parametrize("model, precision", [("tiny-llama", "fp8-tensorwise"), ("tiny-gpt2", "fp8-rowwise")])
def test_fp8_trains_like_its_bf16_reference(model, precision):
    """End to end on the CPU (torch._scaled_mm's CPU kernel): loss finite, falling, within the tolerance of amp-bf16.
    Short and small because bf16 matmuls are slow on a CPU without bf16 instructions (the reference's cost)."""
    problem = float8.cpu_scaled_mm_problem(float8.RECIPES[precision])
    if problem:
        pytest.skip(problem)  # torch 2.11: per-tensor scales only on a CPU
    base = Config(model=model, batch_size=2, seq_len=32, lr=1e-3, data="markov", device="cpu", steps=20)
    step = TrainingStep(base.replace(precision=precision), CPU)
    count = 8 if model == "tiny-gpt2" else 14
    assert step.precision.applied == f"float8 linears {count}/{count} ({precision.removeprefix('fp8-')})"
    assert all(p.dtype == torch.float32 for p in step.precision.optimizer.param_groups[0]["params"])  # master weights
    fp8 = [step().item() for _ in range(20)]
    reference = losses(reference_config(base.replace(precision=precision)), 20)
    assert fp8[-1] < fp8[0]  # it learns
    judged = verdict(reference, fp8, precision=precision)
    assert judged["parity"] == "ok", judged
    assert fp8 != reference  # FP8 really ran: the curves are close, not identical


def test_a_worker_records_what_fp8_applied_and_that_compile_was_off(tmp_path):
    from lmbench.run.worker import run_job

    config = Config(model="tiny-llama", batch_size=2, seq_len=16, steps=2, warmup=0, precision="fp8-tensorwise",
                    device="cpu", telemetry=False)
    (tmp_path / "job.json").write_text(json.dumps({"config": config.to_dict()}))
    assert run_job(tmp_path / "job.json", tmp_path / "result.json") == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "ok", result["reason"]
    assert result["metrics"]["precision_applied"] == "float8 linears 14/14 (tensorwise)"
    assert result["metrics"]["fp8_compiled"] is False
    assert any(w.startswith("precision=fp8-tensorwise with kernels=eager: without torch.compile")
               for w in result["warnings"])


@pytest.mark.parametrize("precision", sorted(float8.RECIPES))
def test_the_cpu_probe_says_what_torchao_can_run(precision):
    """Whether FP8 runs on this CPU is asked of torch._scaled_mm once per recipe (torch 2.11's CPU kernel takes
    per-tensor scales only, 2.13's per-row ones too): the answer must be what a Float8Linear does, and a recipe
    that cannot run must plan as `skipped` naming the torch version, never fail as an `error` row."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32))
    convert_to_float8_training(model, config=Float8LinearConfig.from_recipe_name(float8.RECIPES[precision]))
    problem = float8.cpu_scaled_mm_problem(float8.RECIPES[precision])
    try:
        model(torch.randn(16, 32)).sum().backward()
        failed = None
    except RuntimeError as err:
        failed = err
    assert (problem is None) == (failed is None), (problem, failed)
    reason = skip_reason(Config(precision=precision, device="cpu"), probe_platform())
    if problem is None:
        assert reason is None
    else:
        assert reason == f"precision={precision} cannot run on the CPU: {problem}"
        assert problem.startswith(f"torch {torch.__version__} has no CPU torch._scaled_mm with rowwise scales (")


def platform(**changes):
    import dataclasses

    return dataclasses.replace(probe_platform(), **changes)


@pytest.mark.parametrize("capability, reason", [
    ((8, 0), "precision=fp8-rowwise needs FP8 tensor cores (compute capability 8.9 or later: Ada, Hopper, Blackwell); "
             "this GPU is 8.0"),
    ((8, 6), "precision=fp8-rowwise needs FP8 tensor cores (compute capability 8.9 or later: Ada, Hopper, Blackwell); "
             "this GPU is 8.6"),
    ((8, 9), None), ((9, 0), None), ((10, 0), None),
])
def test_fp8_is_skipped_without_fp8_tensor_cores(capability, reason):
    gpu = platform(cuda_available=True, device_count=1, capability=capability)
    assert skip_reason(Config(precision="fp8-rowwise", device="cuda", kernels="compile"), gpu) == reason


def test_fp8_on_a_gpu_is_skipped_for_shapes_its_matmuls_refuse():
    """batch_size=1, seq_len=100 passed every CPU test and died in the first backward on a GPU: the micro-batch's
    tokens are the inner dimension of the weight gradient's _scaled_mm, which must be a multiple of 16."""
    gpu = platform(cuda_available=True, device_count=1, capability=(9, 0))
    config = Config(model="tiny-llama", precision="fp8-tensorwise", device="cuda", kernels="compile")
    assert skip_reason(config, gpu) is None
    assert skip_reason(config.replace(batch_size=1, seq_len=100), gpu) == (
        "precision=fp8-tensorwise needs each micro-batch's tokens (batch_size x seq_len = 100) in a multiple of 16: "
        "they are the inner dimension of the weight gradient's FP8 matmul on a GPU")
    assert skip_reason(config.replace(batch_size=1, seq_len=100, device="cpu"), probe_platform()) is None
    odd = dataclasses.replace(MODELS["tiny-llama"], name="odd-llama", intermediate=172)
    assert float8.shape_problem("fp8-rowwise", odd, 256) == (
        "precision=fp8-rowwise needs the block linears' widths in multiples of 16 (FP8 matmuls on a GPU); odd-llama "
        "has MLP width 172")
    assert all(float8.shape_problem("fp8-rowwise", spec, 4096) is None for spec in MODELS.values())


def test_fp8_is_skipped_without_torchao_or_a_cpu_scaled_mm(monkeypatch):
    import importlib.metadata
    import importlib.util

    config = Config(precision="fp8-tensorwise", device="cpu")
    assert skip_reason(config, probe_platform()) is None  # torch 2.13 has a CPU _scaled_mm
    monkeypatch.setattr(float8, "cpu_scaled_mm_problem", lambda recipe: "torch 2.9 has no CPU torch._scaled_mm (...)")
    assert skip_reason(config, probe_platform()) == \
        "precision=fp8-tensorwise cannot run on the CPU: torch 2.9 has no CPU torch._scaled_mm (...)"
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.13.0")
    assert skip_reason(config, probe_platform()) == ("precision=fp8-tensorwise needs torchao's float8 training: "
                                                     "torchao 0.13.0 is older than 0.18 (pip install '.[fp8]' in "
                                                     "lmbench's checkout)")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else
                        real_find_spec(name, *a))
    assert skip_reason(config, probe_platform()) == ("precision=fp8-tensorwise needs torchao's float8 training: "
                                                     "torchao is not installed (pip install '.[fp8]' in lmbench's "
                                                     "checkout)")


@pytest.mark.parametrize("parallel, nproc", [("tp", 2), ("pp", 2), ("fsdp+tp", 4)])
def test_fp8_is_refused_with_model_parallelism(parallel, nproc):
    reason = skip_reason(Config(model="tiny-llama", precision="fp8-rowwise", parallel=parallel, nproc=nproc,
                                device="cpu"), probe_platform())
    assert reason.startswith(f"precision=fp8-rowwise is not implemented for parallel={parallel}: lmbench's tensor "
                             "and pipeline plans shard nn.Linear, not torchao's Float8Linear")


def test_fp8_parity_is_against_bf16_and_its_references_run_first():
    from lmbench.run.runner import plan

    fp8 = Config(model="tiny-llama", precision="fp8-rowwise", kernels="compile", checkpointing="full", device="cpu")
    assert reference_config(fp8) == fp8.replace(precision="amp-bf16", kernels="eager", checkpointing="none")
    assert [reference_depth(c) for c in (fp8, reference_config(fp8), Config())] == [2, 1, 0]
    rows, notices = with_references([Planned(fp8, None)])
    assert [r.config.precision for r in rows] == ["amp-bf16", "fp32", "fp8-rowwise"]
    assert notices[-1] == "parity: added 2 reference configuration(s) (eager, no checkpointing; fp32, and amp-bf16 " \
                          "for FP8)"
    jobs = plan(rows, probe_platform(), repeats=1, parity=True)
    assert [j.config.precision for j in jobs] == ["fp32", "amp-bf16", "fp8-rowwise"]
    assert TOLERANCES["fp8-rowwise"] < TOLERANCES["bf16"]

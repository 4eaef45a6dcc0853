"""Kernel sets swapped into real models: weights kept, training unchanged (Triton under the interpreter on CPU)."""

import pytest
import torch
import torch.nn as nn

from lmbench.errors import KernelSwapError
from lmbench.models.kernel_sets import KERNEL_SETS, FusedLossLM
from lmbench.models.registry import MODELS, build_model
from lmbench.plan.config import Config
from lmbench.run.training import TrainingStep

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def losses(config: Config, steps: int) -> list[float]:
    step = TrainingStep(config, torch.device(config.device))
    return [step().item() for _ in range(steps)]


def test_triton_training_matches_eager_on_tiny_llama_for_30_steps():
    # Two sequences of 8 tokens: the interpreted kernels run a program a row, so 16 rows a step take half the time of
    # 32, and the 30 steps over which rounding differences could accumulate are all kept.
    base = Config(model="tiny-llama", batch_size=2, seq_len=8, steps=30, warmup=0, lr=1e-3, device=DEVICE.type)
    eager = losses(base, 30)
    fused = losses(base.replace(kernels="triton"), 30)
    assert eager[-1] < eager[0]  # it trains
    torch.testing.assert_close(torch.tensor(fused), torch.tensor(eager), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-bert-mlm", "tiny-torch-transformer-lm"])
def test_triton_loss_matches_eager_on_every_family(model):
    base = Config(model=model, batch_size=2, seq_len=16, steps=3, warmup=0, device=DEVICE.type)
    torch.testing.assert_close(torch.tensor(losses(base.replace(kernels="triton"), 3)),
                               torch.tensor(losses(base, 3)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-llama", "tiny-bert-mlm", "tiny-torch-transformer-lm"])
def test_triton_swap_keeps_every_weight(model):
    torch.manual_seed(0)
    built = build_model(MODELS[model], attention="sdpa")
    before = {id(p) for p in built.parameters()}
    swapped, _ = KERNEL_SETS["triton"].swap(built, MODELS[model])
    assert isinstance(swapped, FusedLossLM)
    assert {id(p) for p in swapped.parameters()} == before
    names = {type(m).__name__ for m in swapped.modules()}
    assert "LayerNorm" not in names and "LlamaRMSNorm" not in names
    assert names & {"TritonLayerNorm", "TritonRMSNorm"}


def test_unavailable_sets_say_why(monkeypatch):
    import importlib.util

    spec = MODELS["gpt2-124m"]
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("apex", "liger_kernel") else real_find_spec(name, *a))
    assert KERNEL_SETS["apex"].unavailable(spec, "cuda") == (
        "Apex is not installed with its fused LayerNorm/RMSNorm and FusedAdam extensions (fused_layer_norm_cuda, "
        "amp_C); it is not on the package index: build them from a source checkout on a CUDA machine with "
        "ci/build-apex.sh")
    assert KERNEL_SETS["liger"].unavailable(spec, "cuda") == \
        "Liger-Kernel is not installed (pip install '.[liger]' in lmbench's checkout)"
    assert KERNEL_SETS["eager"].unavailable(spec, "cpu") is None
    assert KERNEL_SETS["apex"].note.endswith("fall back to native code on CPU or under torch.compile")


@pytest.mark.parametrize(("model", "dropout"), [("tiny-gpt2", True), ("tiny-gpt2", False), ("tiny-llama", False),
                                               ("tiny-torch-transformer-lm", False)])
def test_checkpointing_modes_train_identically(model, dropout):
    """Recomputation changes memory and time, never the numbers (fp32, dropout replayed from saved RNG state).

    Exact on a CPU. On a GPU a backward kernel may add with atomics, so the bound is how far the same
    configuration lands from itself run to run (0 where it repeats bit for bit): checkpointing may differ by
    no more than that. GPT-2 runs with and without dropout, so a failure says whether the replay is at fault.
    """
    base = Config(model=model, batch_size=2, seq_len=32, steps=3, warmup=0, device=DEVICE.type, dropout=dropout)
    reference = torch.tensor(losses(base, 3))
    noise = (torch.tensor(losses(base, 3)) - reference).abs().max().item()
    for mode in ("full", "selective"):
        apart = (torch.tensor(losses(base.replace(checkpointing=mode), 3)) - reference).abs().max().item()
        assert apart <= 4 * noise, (f"checkpointing={mode} lands {apart:.3g} from no checkpointing; "
                                    f"run to run {noise:.3g}")


def test_selective_checkpointing_saves_matmuls_and_recomputes_the_rest():
    from torch.utils.checkpoint import CheckpointPolicy

    from lmbench.models.registry import _selective_context

    forward_ctx, _ = _selective_context()
    policy = forward_ctx.policy_fn
    assert policy(None, torch.ops.aten.mm.default) == CheckpointPolicy.MUST_SAVE
    assert policy(None, torch.ops.aten.gelu.default) == CheckpointPolicy.PREFER_RECOMPUTE
    # The fused attention is kept, unless it draws a dropout mask: a saved draw would shift the block's later masks.
    flash, q = torch.ops.aten._scaled_dot_product_flash_attention.default, torch.zeros(1, 1, 2, 2)
    assert policy(None, flash, q, q, q) == CheckpointPolicy.MUST_SAVE
    assert policy(None, flash, q, q, q, 0.0) == CheckpointPolicy.MUST_SAVE
    assert policy(None, flash, q, q, q, 0.1) == CheckpointPolicy.MUST_RECOMPUTE
    assert policy(None, flash, q, q, q, dropout_p=0.1) == CheckpointPolicy.MUST_RECOMPUTE
    efficient = torch.ops.aten._scaled_dot_product_efficient_attention.default
    assert policy(None, efficient, q, q, q, None, True, 0.1) == CheckpointPolicy.MUST_RECOMPUTE
    assert policy(None, torch.ops.aten.native_dropout.default, q, 0.1, True) == CheckpointPolicy.MUST_RECOMPUTE


def test_selective_checkpointing_replays_every_random_draw_in_order(monkeypatch):
    """A saved op that draws (CUDA's fused attention with dropout) must not shift the masks recomputed after it.

    A CPU has no fused attention with dropout, so a bernoulli draw stands in for it on the list of saved ops: the
    forward draws two masks; the recompute restores the generator and must draw the same two, in order.
    """
    import collections

    from torch.utils.checkpoint import checkpoint

    import lmbench.models.registry as registry

    monkeypatch.setattr(registry, "SELECTIVE_SAVED_OPS", (*registry.SELECTIVE_SAVED_OPS, "bernoulli"))
    weight = torch.randn(64, 64)

    def block(x: torch.Tensor) -> torch.Tensor:
        first = x * torch.bernoulli(torch.full_like(x, 0.5))
        second, _ = torch.ops.aten.native_dropout.default(first @ weight, 0.5, True)
        return second.sin()

    def gradient(checkpointed: bool, reruns: collections.Counter | None = None) -> torch.Tensor:
        x = torch.randn(64, 64, generator=torch.Generator().manual_seed(1), requires_grad=True)
        torch.manual_seed(0)
        out = (checkpoint(block, x, use_reentrant=False, context_fn=lambda: registry._selective_context(reruns))
               if checkpointed else block(x))
        out.sum().backward()
        return x.grad

    reruns: collections.Counter = collections.Counter()
    torch.testing.assert_close(gradient(True, reruns), gradient(False), rtol=0, atol=0)
    assert reruns == {"aten::bernoulli": 1, "aten::native_dropout": 1}


def test_fused_add_norm_is_used_in_torch_lm_and_survives_checkpointing(monkeypatch):
    import lmbench.kernels.norms as norms

    calls = []
    real = norms.add_norm
    monkeypatch.setattr(norms, "add_norm", lambda *a, **k: calls.append(1) or real(*a, **k))
    base = Config(model="tiny-torch-transformer-lm", batch_size=2, seq_len=16, steps=2, warmup=0,
                  device=DEVICE.type)
    fused = losses(base.replace(kernels="triton", checkpointing="full"), 2)
    assert calls, "the fused residual add + norm was not called"
    torch.testing.assert_close(torch.tensor(fused), torch.tensor(losses(base, 2)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("checkpointing", ["none", "full"])
def test_gpt2_blocks_use_the_fused_add_norm(monkeypatch, checkpointing):
    import lmbench.kernels.norms as norms

    calls = []
    real = norms.add_norm
    monkeypatch.setattr(norms, "add_norm", lambda *a, **k: calls.append(1) or real(*a, **k))
    base = Config(model="tiny-gpt2", batch_size=2, seq_len=16, steps=2, warmup=0, device=DEVICE.type,
                  checkpointing=checkpointing)
    fused = losses(base.replace(kernels="triton"), 2)
    assert len(calls) >= 2 * 2  # two blocks, two steps
    torch.testing.assert_close(torch.tensor(fused), torch.tensor(losses(base, 2)), atol=1e-5, rtol=1e-5)


def swapped(model: str):
    torch.manual_seed(0)
    return KERNEL_SETS["triton"].swap(build_model(MODELS[model], attention="sdpa"), MODELS[model])


@pytest.mark.parametrize("model, applied", [
    ("tiny-gpt2", "norms 5/5, GELU-tanh 2/2, fused residual add + norm 2/2, fused linear-CE loss 1/1"),
    ("tiny-llama", "norms 5/5, SwiGLU MLPs 2/2, fused residual add + norm 2/2, fused linear-CE loss 1/1"),
    ("tiny-bert-mlm", "norms 6/6, fused linear-CE loss 1/1"),
    ("tiny-torch-transformer-lm", "norms 5/5, fused residual add + norm 2/2, fused linear-CE loss 1/1"),
])
def test_triton_swap_counts_what_it_applied(model, applied):
    assert swapped(model)[1] == applied
    step = TrainingStep(Config(model=model, batch_size=2, seq_len=16, kernels="triton", device=DEVICE.type), DEVICE)
    assert step.kernels_applied == applied
    assert TrainingStep(Config(model=model, batch_size=2, seq_len=16, device=DEVICE.type), DEVICE).kernels_applied \
        is None


def test_a_swap_that_cannot_apply_is_an_error_naming_the_versions(monkeypatch):
    """A renamed activation class (a newer transformers) must not leave an `ok` row that ran unfused."""
    import importlib.metadata

    import lmbench.models.kernel_sets as kernel_sets

    monkeypatch.setattr(kernel_sets, "_tanh_gelu_classes", lambda: ())
    with pytest.raises(KernelSwapError) as caught:
        swapped("tiny-gpt2")
    # The installed distributions' versions: a CUDA wheel's torch.__version__ has a local tag ("2.11.0+cu130") that
    # its distribution version ("2.11.0") lacks.
    version = importlib.metadata.version
    assert str(caught.value).startswith(
        f"kernels=triton did not apply to tiny-gpt2 with transformers {version('transformers')}, torch "
        f"{version('torch')}, triton {version('triton')}")
    assert "GELU-tanh 0 of 2 (no tanh-GELU module found where transformers' ACT2CLS says)" in str(caught.value)


def test_a_block_signature_the_fused_forward_does_not_know_is_refused(monkeypatch):
    """transformers 4.x blocks return tuples: the fused forward would change what the model computes."""
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block

    def tuple_forward(self, hidden_states, layer_past=None, attention_mask=None) -> tuple:
        raise AssertionError("never called")

    monkeypatch.setattr(GPT2Block, "forward", tuple_forward)
    with pytest.raises(KernelSwapError, match=r"fused residual add \+ norm 0 of 2 \(GPT2Block.forward returns "
                                              r"<class 'tuple'>, not one tensor\)"):
        swapped("tiny-gpt2")


def test_a_refused_first_block_names_its_reason_when_later_ones_fuse():
    from lmbench.models.kernel_sets import _fuse_blocks

    model = build_model(MODELS["tiny-gpt2"], attention="sdpa")
    first, second = model.transformer.h
    del first.ln_2
    assert _fuse_blocks([first, second], "gpt2") == (1, "GPT2Block has no ln_2")


def test_failed_swap_is_an_error_row_not_a_crash(monkeypatch, tmp_path):
    import json

    import lmbench.models.kernel_sets as kernel_sets
    from lmbench.run.worker import run_job

    monkeypatch.setattr(kernel_sets, "_tanh_gelu_classes", lambda: ())
    config = Config(model="tiny-gpt2", batch_size=2, seq_len=16, steps=1, warmup=0, kernels="triton",
                    device=DEVICE.type)
    (tmp_path / "job.json").write_text(json.dumps({"config": config.to_dict()}))
    assert run_job(tmp_path / "job.json", tmp_path / "result.json") == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "error"
    assert result["reason"].startswith("KernelSwapError: kernels=triton did not apply to tiny-gpt2 with transformers")


@pytest.mark.parametrize("model, blocks", [("tiny-gpt2", "transformer.h"), ("tiny-llama", "model.layers")])
def test_fused_blocks_survive_data_parallel_replication(model, blocks):
    """nn.DataParallel replicas copy an instance's __dict__: a forward bound there would run the original's
    weights on every replica. The fused forward lives on a subclass, so each replica runs its own."""
    import copy

    lm = swapped(model)[0].lm.to(DEVICE)
    block = lm.get_submodule(blocks)[0]
    assert "forward" not in vars(block) and type(block).__name__.startswith("Fused")
    replica = block._replicate_for_data_parallel()
    norm = "ln_2" if model == "tiny-gpt2" else "post_attention_layernorm"
    replica._modules[norm] = copy.deepcopy(getattr(block, norm))
    with torch.no_grad():
        getattr(replica, norm).weight.zero_()
    x = torch.randn(1, 4, MODELS[model].hidden, device=DEVICE)
    positions = torch.arange(4, device=DEVICE)[None]
    extra = {} if model == "tiny-gpt2" else {"position_embeddings": lm.model.rotary_emb(x, positions)}
    with torch.no_grad():
        assert not torch.allclose(replica(x, **extra), block(x, **extra))


def keep_llama_globals(monkeypatch):
    """Liger patches transformers' Llama module process-wide (RoPE, and the classes new models are built from);
    restore it after the test so later tests build plain models."""
    from transformers.models.llama import modeling_llama

    for name in ("apply_rotary_pos_emb", "LlamaRMSNorm", "LlamaMLP"):
        monkeypatch.setattr(modeling_llama, name, getattr(modeling_llama, name))
    monkeypatch.setattr(modeling_llama.LlamaForCausalLM, "forward", modeling_llama.LlamaForCausalLM.forward)


def fake_liger(monkeypatch, *, patch_mlps: bool):
    """A stand-in for liger_kernel.transformers that patches the way Liger's instance patching does."""
    import sys
    import types

    from transformers.models.llama import modeling_llama

    keep_llama_globals(monkeypatch)

    def rms_forward(self, hidden_states):
        return hidden_states

    def mlp_forward(self, x):
        return x

    def rope(q, k, cos, sin, *args, **kwargs):
        return q, k

    def lce_forward(self, input_ids=None, labels=None, **kwargs):
        raise AssertionError("never called")

    for function in (rms_forward, mlp_forward, rope, lce_forward):
        function.__module__ = "liger_kernel.transformers.fake"

    def apply(model):
        modeling_llama.apply_rotary_pos_emb = rope
        model.__dict__["forward"] = lce_forward.__get__(model)
        for module in model.modules():
            if type(module).__name__.endswith("RMSNorm"):
                module.__dict__["forward"] = rms_forward.__get__(module)
        for layer in model.model.layers if patch_mlps else []:
            layer.mlp.__dict__["forward"] = mlp_forward.__get__(layer.mlp)

    package = types.ModuleType("liger_kernel")
    package.transformers = types.SimpleNamespace(_apply_liger_kernel_to_instance=apply)
    monkeypatch.setitem(sys.modules, "liger_kernel", package)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", package.transformers)


LIGER_APPLIED = "RMSNorms 5/5, SwiGLU MLPs 2/2, RoPE 2/2, fused linear-CE loss 1/1"


def test_liger_swap_is_verified(monkeypatch):
    spec = MODELS["tiny-llama"]
    fake_liger(monkeypatch, patch_mlps=True)
    assert KERNEL_SETS["liger"].swap(build_model(spec, attention="sdpa"), spec)[1] == LIGER_APPLIED
    fake_liger(monkeypatch, patch_mlps=False)
    with pytest.raises(KernelSwapError, match="kernels=liger did not apply to tiny-llama with .*: SwiGLU MLPs 0 of 2"):
        KERNEL_SETS["liger"].swap(build_model(spec, attention="sdpa"), spec)


def _liger_modules(model) -> set[str]:
    """Modules whose forward is Liger's: bound into the instance, or from a Liger class."""
    from lmbench.models.kernel_sets import _runs_liger

    return {name for name, module in model.named_modules() if _runs_liger(module)}


def test_real_liger_swaps_exactly_the_norms_mlps_rope_and_loss_of_llama(monkeypatch):
    """The installed Liger-Kernel patches these modules and nothing else; its Triton kernels do not run on a CPU
    (the interpreter fails in LigerRMSNorm), so they are counted here and executed only on a GPU."""
    pytest.importorskip("liger_kernel.transformers")
    from transformers.models.llama import modeling_llama

    keep_llama_globals(monkeypatch)
    spec = MODELS["tiny-llama"]
    torch.manual_seed(0)
    model = build_model(spec, attention="sdpa")
    before = {name: (type(m), id(m)) for name, m in model.named_modules()}
    params = {name: id(p) for name, p in model.named_parameters()}
    swapped, applied = KERNEL_SETS["liger"].swap(model, spec)
    assert swapped is model and applied == LIGER_APPLIED
    layers = [f"model.layers.{i}" for i in range(spec.n_layers)]
    assert _liger_modules(model) == {"", "model.norm", *(f"{layer}.{part}" for layer in layers
                                                          for part in ("input_layernorm", "post_attention_layernorm",
                                                                       "mlp"))}
    assert modeling_llama.apply_rotary_pos_emb.__module__.startswith("liger_kernel")
    # Same modules (classes included: Liger binds forwards), same parameters: only the forwards changed.
    assert {name: (type(m), id(m)) for name, m in model.named_modules()} == before
    assert {name: id(p) for name, p in model.named_parameters()} == params


def test_liger_is_refused_on_a_cpu_even_when_installed():
    pytest.importorskip("liger_kernel")
    assert KERNEL_SETS["liger"].unavailable(MODELS["tiny-llama"], "cpu") == "kernels=liger needs a CUDA GPU"
    assert KERNEL_SETS["liger"].unavailable(MODELS["llama-1b"], "cuda") is None
    assert KERNEL_SETS["liger"].unavailable(MODELS["gpt2-124m"], "cuda") == \
        "Liger-Kernel has no kernels for model family gpt2"


def fake_apex(monkeypatch) -> list[str]:
    """A stand-in `apex` (normalization and optimizers) in sys.modules; returns the log of what it built."""
    import sys
    import types

    import torch.nn.functional as F

    built: list[str] = []

    class FusedLayerNorm(nn.Module):
        def __init__(self, normalized_shape, eps=1e-5):
            super().__init__()
            built.append(f"FusedLayerNorm({tuple(normalized_shape)}, eps={eps})")
            self.normalized_shape, self.eps = tuple(normalized_shape), eps
            self.weight = nn.Parameter(torch.ones(normalized_shape))
            self.bias = nn.Parameter(torch.zeros(normalized_shape))

        def forward(self, x):
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    class FusedRMSNorm(nn.Module):
        def __init__(self, normalized_shape, eps=1e-5):
            super().__init__()
            built.append(f"FusedRMSNorm({tuple(normalized_shape)}, eps={eps})")
            self.normalized_shape, self.eps = tuple(normalized_shape), eps
            self.weight = nn.Parameter(torch.ones(normalized_shape))

        def forward(self, x):
            return F.rms_norm(x.float(), self.normalized_shape, self.weight.float(), self.eps).to(x.dtype)

    class FusedAdam(torch.optim.AdamW):
        def __init__(self, params, lr, adam_w_mode, weight_decay=0.0):  # Apex's own default decay: 0
            assert adam_w_mode
            built.append("FusedAdam")
            super().__init__(params, lr=lr, weight_decay=weight_decay, foreach=False)

    apex = types.ModuleType("apex")
    apex.normalization = types.SimpleNamespace(FusedLayerNorm=FusedLayerNorm, FusedRMSNorm=FusedRMSNorm)
    apex.optimizers = types.SimpleNamespace(FusedAdam=FusedAdam)
    for name, module in (("apex", apex), ("apex.normalization", apex.normalization),
                         ("apex.optimizers", apex.optimizers)):
        monkeypatch.setitem(sys.modules, name, module)
    return built


@pytest.mark.parametrize("model, norm, eps", [("tiny-gpt2", "FusedLayerNorm", 1e-5),
                                              ("tiny-llama", "FusedRMSNorm", 1e-6)])
def test_apex_swap_replaces_every_norm_and_keeps_the_weights(monkeypatch, model, norm, eps):
    built = fake_apex(monkeypatch)
    spec = MODELS[model]
    torch.manual_seed(0)
    lm = build_model(spec, attention="sdpa")
    norms = {name: m.weight for name, m in lm.named_modules() if type(m).__name__.endswith(("LayerNorm", "RMSNorm"))}
    swapped, applied = KERNEL_SETS["apex"].swap(lm, spec)
    assert swapped is lm and applied == "norms 5/5"
    assert built == [f"{norm}(({spec.hidden},), eps={eps})"] * 5
    assert {name: type(lm.get_submodule(name)).__name__ for name in norms} == dict.fromkeys(norms, norm)
    assert all(lm.get_submodule(name).weight is weight for name, weight in norms.items())


def test_apex_set_trains_with_fused_adam_and_matches_eager(monkeypatch):
    """The set's optimizer replaces the config's; with stand-ins that compute what torch does, the losses match."""
    built = fake_apex(monkeypatch)
    base = Config(model="tiny-gpt2", batch_size=2, seq_len=16, steps=3, warmup=0, device="cpu", optimizer="adamw")
    step = TrainingStep(base.replace(kernels="apex"), torch.device("cpu"))
    assert type(step.precision.optimizer).__name__ == "FusedAdam" and built.count("FusedAdam") == 1
    assert step.kernels_applied == "norms 5/5"
    fused = [step().item() for _ in range(3)]
    torch.testing.assert_close(torch.tensor(fused), torch.tensor(losses(base, 3)), atol=1e-5, rtol=1e-5)


def test_apex_problem_names_the_missing_extensions_and_the_build_script(monkeypatch):
    from lmbench.models.kernel_sets import apex_problem

    fake_apex(monkeypatch)  # the Python package without its compiled extensions
    assert apex_problem().startswith("Apex is not installed with its fused LayerNorm/RMSNorm and FusedAdam "
                                     "extensions (fused_layer_norm_cuda, amp_C)")
    assert apex_problem().endswith("ci/build-apex.sh")


def test_a_kernel_set_with_its_own_optimizer_says_so_in_the_key():
    """kernels=apex trains with Apex's FusedAdam whatever `optimizer` says: its records said adamw-fused, and rows
    with optimizer=adamw and adamw-fused were two keys of one configuration (review 2026-11-27)."""
    import dataclasses

    from lmbench.measure.environment import Platform
    from lmbench.plan.feasibility import resolve

    h100 = Platform(cuda_available=True, device_count=1, capability=(9, 0), torch_version=torch.__version__,
                    apex_available=True, liger_available=False)
    rows = [resolve(Config(model="tiny-gpt2", kernels="apex", optimizer=o), h100) for o in ("adamw", "adamw-fused")]
    assert {r.optimizer for r in rows} == {"apex-adam"} and rows[0].key == rows[1].key
    eager = resolve(Config(model="tiny-gpt2", optimizer="adamw"), dataclasses.replace(h100, apex_available=False))
    assert eager.optimizer == "adamw"

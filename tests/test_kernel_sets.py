"""Kernel sets swapped into real models: weights kept, training unchanged (Triton under the interpreter on CPU)."""

import pytest
import torch

from lmbench.config import Config
from lmbench.kernel_sets import KERNEL_SETS, FusedLossLM
from lmbench.models import MODELS, build_model
from lmbench.training import TrainingStep

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def losses(config: Config, steps: int) -> list[float]:
    step = TrainingStep(config, DEVICE)
    return [step().item() for _ in range(steps)]


def test_triton_training_matches_eager_on_tiny_llama_for_30_steps():
    base = Config(model="tiny-llama", batch_size=2, seq_len=16, steps=30, warmup=0, lr=1e-3, device=DEVICE.type)
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
    swapped = KERNEL_SETS["triton"].swap(built, MODELS[model])
    assert isinstance(swapped, FusedLossLM)
    assert {id(p) for p in swapped.parameters()} == before
    names = {type(m).__name__ for m in swapped.modules()}
    assert "LayerNorm" not in names and "LlamaRMSNorm" not in names
    assert names & {"TritonLayerNorm", "TritonRMSNorm"}


def test_unavailable_sets_say_why():
    spec = MODELS["gpt2-124m"]
    assert KERNEL_SETS["apex"].unavailable(spec, "cuda") == "Apex is not installed (with its CUDA extensions)"
    assert KERNEL_SETS["liger"].unavailable(spec, "cuda").startswith("Liger-Kernel is not installed")
    assert KERNEL_SETS["eager"].unavailable(spec, "cpu") is None
    assert KERNEL_SETS["apex"].note.endswith("fall back to native code on CPU or under torch.compile")


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-llama", "tiny-torch-transformer-lm"])
def test_checkpointing_modes_train_identically(model):
    """Recomputation changes memory and time, never the numbers (fp32, dropout replayed from saved RNG state)."""
    base = Config(model=model, batch_size=2, seq_len=32, steps=3, warmup=0, device=DEVICE.type)
    reference = torch.tensor(losses(base, 3))
    for mode in ("full", "selective"):
        torch.testing.assert_close(torch.tensor(losses(base.replace(checkpointing=mode), 3)), reference,
                                   atol=0, rtol=0)


def test_selective_checkpointing_saves_matmuls_and_recomputes_the_rest():
    from torch.utils.checkpoint import CheckpointPolicy

    from lmbench.models import _selective_context

    forward_ctx, _ = _selective_context()
    policy = forward_ctx.policy_fn
    assert policy(None, torch.ops.aten.mm.default) == CheckpointPolicy.MUST_SAVE
    assert policy(None, torch.ops.aten.gelu.default) == CheckpointPolicy.PREFER_RECOMPUTE


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

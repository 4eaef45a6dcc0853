"""The model registry: every model builds, and builds where it will train."""

import pytest
import torch

from lmbench.models.registry import MODELS, build_model


@pytest.mark.parametrize("name", list(MODELS))
def test_models_are_built_on_the_target_device(name):
    # Built on the meta device, nothing is allocated or initialised on the CPU: the same path puts a
    # GPU worker's weights straight on the GPU (a CPU init of llama-1b costs about 14 s per worker).
    model = build_model(MODELS[name], attention="sdpa", device=torch.device("meta"))
    tensors = list(model.parameters()) + list(model.buffers())
    assert tensors and {t.device.type for t in tensors} == {"meta"}


def test_default_build_stays_on_the_cpu():
    model = build_model(MODELS["tiny-gpt2"], attention="sdpa")
    assert {p.device.type for p in model.parameters()} == {"cpu"}


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-llama"])
def test_compiled_and_eager_models_attend_alike_with_no_mask(monkeypatch, model):
    """transformers hands SDPA an explicit mask while tracing (its packed-sequence check); lmbench's models answer
    that check without it (registry.never_packed), so a compiled model attends causally, as the eager one does."""
    import torch.nn.functional as F
    from transformers import masking_utils

    # The check as transformers has it (an earlier build may have replaced it already), put back for this test.
    current = masking_utils.find_packed_sequence_indices
    original = getattr(current, "replaced", current)
    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", original)
    positions = torch.arange(16).expand(2, 16)
    assert original(positions) is None  # one sequence a row, as lmbench's batches: "not packed"
    assert original(torch.tensor([[0, 1, 2, 0, 1, 2]])) is not None  # packed, which lmbench never makes
    built = build_model(MODELS[model], attention="sdpa", dropout=False)
    assert masking_utils.find_packed_sequence_indices(positions) is None
    seen = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append((kwargs.get("attn_mask") is None, kwargs.get("is_causal")))
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    tokens = torch.randint(0, 100, (2, 32))
    torch._dynamo.reset()
    torch.compile(built, backend="eager")(input_ids=tokens, labels=tokens)
    built(input_ids=tokens, labels=tokens)
    assert set(seen) == {(True, True)}

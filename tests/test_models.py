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


@pytest.mark.parametrize(("model", "causal"), [("tiny-gpt2", True), ("tiny-llama", True), ("tiny-bert-mlm", False)])
def test_compiled_and_eager_models_attend_alike_with_no_mask(monkeypatch, model, causal):
    """transformers hands SDPA an explicit mask while tracing; lmbench's models are built to tell its mask
    checks that every batch is unpadded and unpacked (registry.for_unpadded_batches), so a compiled model attends
    as the eager one does: no mask, is_causal for the causal models."""
    import torch.nn.functional as F
    from transformers import masking_utils

    # transformers' own checks (an earlier build may have replaced them), put back for this test.
    for name in ("find_packed_sequence_indices", "_ignore_causal_mask_sdpa", "_ignore_bidirectional_mask_sdpa"):
        current = getattr(masking_utils, name)
        monkeypatch.setattr(masking_utils, name, getattr(current, "replaced", current))
    original = masking_utils.find_packed_sequence_indices
    positions = torch.arange(16).expand(2, 16)
    assert original(positions) is None  # one sequence a row, as lmbench's batches: "not packed"
    assert original(torch.tensor([[0, 1, 2, 0, 1, 2]])) is not None  # packed, which lmbench never makes
    built = build_model(MODELS[model], attention="sdpa", dropout=False)
    assert masking_utils.find_packed_sequence_indices(positions) is None
    seen = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append((kwargs.get("attn_mask") is None, bool(kwargs.get("is_causal"))))
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    tokens = torch.randint(0, 100, (2, 32))
    torch._dynamo.reset()
    torch.compile(built, backend="eager")(input_ids=tokens, labels=tokens)
    built(input_ids=tokens, labels=tokens)
    assert set(seen) == {(True, causal)}


def test_a_padding_mask_still_reaches_transformers_own_checks():
    """Only the unpadded case is answered without looking: a real padding mask gets transformers' answer."""
    from transformers import masking_utils

    from lmbench.models.registry import for_unpadded_batches

    for_unpadded_batches()
    skip = masking_utils._ignore_causal_mask_sdpa
    padded = torch.tensor([[True] * 7 + [False]])
    assert skip(None, 8, 8, 0, 0) is True
    assert skip(padded, 8, 8, 0, 0) is skip.replaced(padded, 8, 8, 0, 0) is False
    assert skip(None, 8, 8, 0, 0, local_attention_size=4) is False  # a sliding window needs its mask


def test_the_record_names_the_attention_kernel_sdpa_ran():
    """attention=sdpa left the kernel to torch, and no field said which ran: on a CPU, GPT-2's dropout sends SDPA to
    its math backend (the CPU flash kernel takes no dropout), on a GPU cuDNN's takes no 0.1 (a reviewer)."""
    from lmbench.plan.config import Config
    from lmbench.run.worker import measure

    def kernel(**axes):
        config = Config(**{"model": "tiny-gpt2", "batch_size": 2, "seq_len": 16, "steps": 1, "warmup": 1,
                           "device": "cpu", "telemetry": False, **axes})
        return measure(config)["metrics"]["attention_kernel"]

    assert kernel(dropout=False) == "cpu-flash"
    assert kernel(dropout=True) == "math"
    assert kernel(attention="math", dropout=False) == "math"
    assert kernel(attention="eager") is None  # transformers' own attention: no SDPA call
    assert kernel(dropout=False, warmup=0) is None  # no warmup step to watch


def test_sdpa_falling_back_to_math_on_a_gpu_is_warned_of():
    from lmbench.models.sdpa import fell_back

    assert fell_back("sdpa", "math", "cuda").startswith("attention=sdpa ran torch's math backend on the GPU")
    assert fell_back("sdpa", "flash+math", "cuda") is not None
    assert fell_back("sdpa", "flash", "cuda") is None and fell_back("sdpa", "math", "cpu") is None
    assert fell_back("math", "math", "cuda") is None


def test_the_math_backend_runs_in_the_steps_own_dtype():
    """SDPA's math backend cast bf16 to fp32 by default: attention=math under bf16 ran fp32 matmuls beside eager's
    bf16 ones (a reviewer)."""
    import torch.nn.functional as F
    from op_log import OpLog

    from lmbench.models.sdpa import AttentionWatch
    from lmbench.run.training import _math_attention

    q = torch.randn(2, 4, 16, 8, dtype=torch.bfloat16)
    before = torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed()
    with OpLog() as log, _math_attention():
        F.scaled_dot_product_attention(q, q, q, is_causal=True)
    assert {out.dtype for func, out in log.calls if func is torch.ops.aten.bmm.default} == {torch.bfloat16}
    assert torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed() == before
    with AttentionWatch() as watch, _math_attention():
        F.scaled_dot_product_attention(q, q, q, is_causal=True)
    assert watch.kernel == "math"


def test_every_optimizer_decays_weights_alike(monkeypatch):
    """torch's AdamW decays by 0.01 and Apex's FusedAdam by 0: apex-adam trained another algorithm (a reviewer)."""
    import sys
    from types import ModuleType, SimpleNamespace

    from lmbench.run.training import OPTIMIZERS, WEIGHT_DECAY

    params = [torch.nn.Parameter(torch.ones(2))]
    for name in ("adamw", "adamw-fused"):
        assert {g["weight_decay"] for g in OPTIMIZERS[name](params, lr=1e-3).param_groups} == {WEIGHT_DECAY}
    # Apex is not installed here: a stand-in FusedAdam records what it was given.
    optimizers = ModuleType("apex.optimizers")
    optimizers.FusedAdam = lambda params, **kwargs: SimpleNamespace(kwargs=kwargs)
    monkeypatch.setitem(sys.modules, "apex", ModuleType("apex"))
    monkeypatch.setitem(sys.modules, "apex.optimizers", optimizers)
    given = OPTIMIZERS["apex-adam"](params, lr=1e-3).kwargs
    assert given["weight_decay"] == WEIGHT_DECAY and given["adam_w_mode"] is True


def test_dropout_of_a_model_without_any_is_one_key():
    from lmbench.plan.config import Config

    for model in ("tiny-llama", "tiny-torch-transformer-lm"):
        assert Config(model=model, dropout=False).without_foreign_options().key == Config(model=model).key
    assert Config(model="tiny-gpt2", dropout=False).without_foreign_options().key != Config(model="tiny-gpt2").key

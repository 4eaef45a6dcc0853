"""Registry of benchmark models: shapes as plain data, built from transformers configs with random init.

Nothing is downloaded: every model is constructed from a config object and initialised randomly,
so throughput does not depend on a hub and runs are reproducible from the seed.
"""

from __future__ import annotations

import collections
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch
    import torch.nn as nn


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Shape of one benchmark model; enough to validate a config and count FLOPs without torch."""

    name: str
    """Registry name, the value of the `model` axis."""
    family: str
    """Which builder makes it: `gpt2`, `llama`, `bert` or `torch-lm`."""
    objective: str
    """`causal-lm` (next-token prediction) or `mlm` (masked-token prediction, 15% masked)."""
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    intermediate: int
    vocab_size: int
    max_positions: int
    description: str

    @property
    def head_dim(self) -> int:
        return self.hidden // self.n_heads


def _gpt2(name: str, n_layers: int, hidden: int, n_heads: int, description: str, *,
          vocab_size: int = 50257, max_positions: int = 1024) -> ModelSpec:
    return ModelSpec(name=name, family="gpt2", objective="causal-lm", n_layers=n_layers, hidden=hidden,
                     n_heads=n_heads, n_kv_heads=n_heads, intermediate=4 * hidden, vocab_size=vocab_size,
                     max_positions=max_positions, description=description)


def _bert(name: str, n_layers: int, hidden: int, n_heads: int, description: str, *,
          vocab_size: int = 30522, max_positions: int = 512) -> ModelSpec:
    return ModelSpec(name=name, family="bert", objective="mlm", n_layers=n_layers, hidden=hidden,
                     n_heads=n_heads, n_kv_heads=n_heads, intermediate=4 * hidden, vocab_size=vocab_size,
                     max_positions=max_positions, description=description)


MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in [
    # GPT-2 sizes from Radford et al. 2019, table 2 (the 124M/355M/774M/1.5B checkpoints' configs).
    _gpt2("gpt2-124m", 12, 768, 12, "GPT-2 small (124M)"),
    _gpt2("gpt2-355m", 24, 1024, 16, "GPT-2 medium (355M)"),
    _gpt2("gpt2-774m", 36, 1280, 20, "GPT-2 large (774M)"),
    _gpt2("gpt2-1.5b", 48, 1600, 25, "GPT-2 XL (1.5B)"),
    # Llama-3.2-1B shapes (hidden 2048, 16 layers, 32 heads, 8 KV heads, SwiGLU 8192, vocab 128256),
    # with the context capped at 8192 positions and no long-context rope scaling.
    ModelSpec(name="llama-1b", family="llama", objective="causal-lm", n_layers=16, hidden=2048, n_heads=32,
              n_kv_heads=8, intermediate=8192, vocab_size=128256, max_positions=8192,
              description="Llama-3-style 1B (GQA, SwiGLU, RMSNorm, RoPE)"),
    _bert("bert-base-mlm", 12, 768, 12, "BERT base, masked-LM objective"),
    _bert("bert-large-mlm", 24, 1024, 16, "BERT large, masked-LM objective"),
    ModelSpec(name="torch-transformer-lm", family="torch-lm", objective="causal-lm", n_layers=12, hidden=768,
              n_heads=12, n_kv_heads=12, intermediate=3072, vocab_size=50257, max_positions=1024,
              description="plain nn.TransformerEncoder LM with a causal mask, GPT-2-small shapes"),
    # Tiny variants: a training step takes milliseconds on a CPU, for tests and the smoke suite.
    _gpt2("tiny-gpt2", 2, 64, 2, "2-layer GPT-2, width 64 (tests)", vocab_size=512, max_positions=256),
    _gpt2("tiny-gpt2-4l", 4, 64, 2, "4-layer GPT-2, width 64 (tests of pipelines with 2 stages per rank)",
          vocab_size=512, max_positions=256),
    ModelSpec(name="tiny-llama", family="llama", objective="causal-lm", n_layers=2, hidden=64, n_heads=4,
              n_kv_heads=2, intermediate=176, vocab_size=512, max_positions=256,
              description="2-layer Llama, width 64, GQA (tests)"),
    _bert("tiny-bert-mlm", 2, 64, 2, "2-layer BERT MLM, width 64 (tests)", vocab_size=512, max_positions=256),
    ModelSpec(name="tiny-torch-transformer-lm", family="torch-lm", objective="causal-lm", n_layers=2, hidden=64,
              n_heads=2, n_kv_heads=2, intermediate=256, vocab_size=512, max_positions=256,
              description="2-layer nn.TransformerEncoder LM, width 64 (tests)"),
]}


def _build_gpt2(spec: ModelSpec, attention: str, dropout: bool) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    off = {} if dropout else {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    config = GPT2Config(n_layer=spec.n_layers, n_embd=spec.hidden, n_head=spec.n_heads, n_inner=spec.intermediate,
                        vocab_size=spec.vocab_size, n_positions=spec.max_positions, use_cache=False,
                        bos_token_id=None, eos_token_id=None, activation_function="gelu_new", **off)
    config._attn_implementation = attention
    model = GPT2LMHeadModel(config)
    # transformers finds a model's loss by its class name, and GPT2LMHeadModel's names none: its loss_function then
    # logged a warning on every forward, which torch.compile cannot trace, so every compiled GPT-2 step ran its loss
    # outside the graph (a graph break, found in review 2026-11-27). The loss it falls back to, named.
    model.loss_type = "ForCausalLM"
    return model


def _build_llama(spec: ModelSpec, attention: str, dropout: bool) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=spec.hidden, intermediate_size=spec.intermediate,
                         num_hidden_layers=spec.n_layers, num_attention_heads=spec.n_heads,
                         num_key_value_heads=spec.n_kv_heads, vocab_size=spec.vocab_size,
                         max_position_embeddings=spec.max_positions, rope_theta=500000.0,
                         tie_word_embeddings=True, use_cache=False, bos_token_id=None, eos_token_id=None,
                         pad_token_id=None, attention_dropout=0.0)  # Llama trains without dropout
    config._attn_implementation = attention
    return LlamaForCausalLM(config)


def _build_bert(spec: ModelSpec, attention: str, dropout: bool) -> nn.Module:
    from transformers import BertConfig, BertForMaskedLM

    off = {} if dropout else {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    config = BertConfig(hidden_size=spec.hidden, num_hidden_layers=spec.n_layers, num_attention_heads=spec.n_heads,
                        intermediate_size=spec.intermediate, vocab_size=spec.vocab_size,
                        max_position_embeddings=spec.max_positions, pad_token_id=0, use_cache=False, **off)
    config._attn_implementation = attention
    return BertForMaskedLM(config)


def _build_torch_lm(spec: ModelSpec, attention: str, dropout: bool) -> nn.Module:
    from lmbench.models.torch_lm import TorchTransformerLM

    # Built without dropout, so `dropout` changes nothing here.
    return TorchTransformerLM(vocab_size=spec.vocab_size, hidden=spec.hidden, n_layers=spec.n_layers,
                              n_heads=spec.n_heads, intermediate=spec.intermediate, max_positions=spec.max_positions)


#: Families whose models train with dropout (GPT-2's and BERT's 0.1, attention's included); Llama and the torch
#: LM have none, so `dropout` changes nothing there.
DROPOUT_FAMILIES = frozenset({"gpt2", "bert"})

#: The module each family's builder imports (transformers' import is most of it: about 2 s on a CPU).
FAMILY_MODULES: dict[str, str] = {
    "gpt2": "transformers.models.gpt2.modeling_gpt2",
    "llama": "transformers.models.llama.modeling_llama",
    "bert": "transformers.models.bert.modeling_bert",
    "torch-lm": "lmbench.models.torch_lm",
}


def import_family(family: str) -> None:
    """Import what building a model of `family` imports, so a worker can time the import apart from the build."""
    import importlib

    importlib.import_module(FAMILY_MODULES[family])


BUILDERS: dict[str, Callable[[ModelSpec, str, bool], "nn.Module"]] = {
    "gpt2": _build_gpt2,
    "llama": _build_llama,
    "bert": _build_bert,
    "torch-lm": _build_torch_lm,
}

#: Attention implementations each family can build with; `math` is SDPA pinned to its math backend.
ATTENTION_SUPPORT: dict[str, frozenset[str]] = {
    "gpt2": frozenset({"sdpa", "math", "eager"}),
    "llama": frozenset({"sdpa", "math", "eager"}),
    "bert": frozenset({"sdpa", "math", "eager"}),
    "torch-lm": frozenset({"sdpa", "math"}),
}


def build_model(spec: ModelSpec, *, attention: str, device: torch.device | str | None = None,
                dropout: bool = True) -> nn.Module:
    """Construct `spec` with random weights (seed the RNG first); `attention` is the transformers name.

    `dropout=False` sets every dropout probability of the model to 0 (the model's own otherwise).

    With `device`, parameters are created and initialised there: random init of llama-1b on a CPU
    takes about 14 s (gpt2-1.5b about 18 s) of every worker's start, on a GPU a fraction of a second.
    The device's own generator draws the weights, so they differ from a CPU build with the same seed.
    """
    import contextlib

    import torch

    hf_attention = "sdpa" if attention == "math" else attention
    if FAMILY_MODULES[spec.family].startswith("transformers."):
        for_unpadded_batches()
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return BUILDERS[spec.family](spec, hf_attention, dropout)


def for_unpadded_batches() -> None:
    """transformers' attention masks, told what every batch lmbench makes is: one unpadded sequence a row.

    transformers builds each forward's mask from a padding mask (None: lmbench passes no attention mask) and a
    check for packed sequences, and lets SDPA use `is_causal=True` (or no mask, bidirectional) when it can prove
    no token is masked. Two of its ways of proving it change what is measured:
      - masking_utils.find_packed_sequence_indices, in every GPT-2 and Llama forward, reads
        `(mask[:, -1] == 0).all()` on the host: a synchronisation every step that keeps the host from running
        ahead, and that a CUDA graph cannot hold;
      - while tracing (torch.compile, a CUDA graph capture) it proves nothing (transformers 5.17 gives up in
        `_ignore_causal_mask_sdpa` and `_ignore_bidirectional_mask_sdpa`; 5.24 still returns a packed mask), so
        SDPA gets an explicit [B, 1, T, T] mask with is_causal=False, which flash attention cannot take and which
        gives up skipping the masked half of causal attention (tests/test_models.py: a compiled GPT-2's SDPA calls
        got a mask, the eager one's none): lmbench's compile rows timed masked attention against eager's causal
        flash attention.
    Here the packed check answers "not packed" without looking (what it answers for lmbench's batches), and with no
    padding mask, queries as long as the keys and no local window, the skip checks answer yes without looking:
    what they answer eagerly, where the mask they would build is exactly the causal (or full) one. Anything else
    goes to transformers' own checks. lmbench never exports a model (whose export the tracing guard is for).
    """
    try:
        from transformers import masking_utils
    except ImportError:
        return
    _replace(masking_utils, "find_packed_sequence_indices", lambda original: _not_packed)
    _replace(masking_utils, "_ignore_causal_mask_sdpa", _causal_skip)
    _replace(masking_utils, "_ignore_bidirectional_mask_sdpa", _bidirectional_skip)


def _replace(module: Any, name: str, make: Callable[[Any], Any]) -> None:
    """module.name = make(module.name), once; the replacement keeps what it replaced as `.replaced`."""
    original = getattr(module, name, None)
    if original is None or getattr(original, "lmbench", False):
        return
    replacement = make(original)
    replacement.lmbench, replacement.replaced = True, original
    setattr(module, name, replacement)


def _not_packed(position_ids: Any) -> None:
    return None


def _skip_when(unmasked: Callable[[dict[str, Any]], bool]) -> Callable[[Callable[..., bool]], Callable[..., bool]]:
    """A replacement for one of transformers' mask-skip checks: yes when `unmasked` holds of its arguments (by
    name, whatever their order in this transformers), else transformers' own answer."""
    def make(original: Callable[..., bool]) -> Callable[..., bool]:
        import inspect

        signature = inspect.signature(original)

        def skip(*args: Any, **kwargs: Any) -> bool:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return True if unmasked(bound.arguments) else original(*args, **kwargs)

        return skip

    return make


def _no_window(given: dict[str, Any]) -> bool:
    local = given.get("local_attention_size")
    return local is None or given["kv_length"] < local


#: No padding mask, queries as long as the keys (no cache), no sliding window: the causal mask is is_causal's.
_causal_skip = _skip_when(lambda given: given.get("padding_mask") is None and given.get("q_length") == given.get(
    "kv_length") and isinstance(given.get("q_offset", 0), int) and _no_window(given))
#: No padding mask and no sliding window: the bidirectional mask is no mask at all.
_bidirectional_skip = _skip_when(lambda given: given.get("padding_mask") is None and _no_window(given))


#: ATen ops whose outputs selective checkpointing keeps (the expensive ones).
SELECTIVE_SAVED_OPS = ("mm", "addmm", "bmm", "baddbmm", "_scaled_dot_product_flash_attention",
                       "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
                       "_scaled_dot_product_flash_attention_for_cpu")


def draws_random_numbers(op, args: tuple, kwargs: dict) -> bool:  # type: ignore[no-untyped-def]
    """Whether this call of an ATen op consumes the random generator (dropout, bernoulli, a fused attention
    with dropout_p > 0).

    Ops tagged `nondeterministic_seeded` may draw; the fused attention ops carry the tag whatever their
    dropout, so an op with a `dropout_p` argument draws only when it is above 0.
    """
    import torch

    if torch.Tag.nondeterministic_seeded not in op.tags:
        return False
    for index, argument in enumerate(op._schema.arguments):
        if argument.name == "dropout_p":
            given = kwargs.get("dropout_p", args[index] if index < len(args) else argument.default_value)
            return bool(given and given > 0)
    return True


def _selective_context(reruns: collections.Counter | None = None):  # type: ignore[no-untyped-def]
    """Inside a checkpointed block, keep the outputs of matmuls and attention, recompute everything else.

    The expensive ops are saved, the cheap memory-hungry ones (norms, activations, dropout, adds) are
    recomputed: most of full checkpointing's memory saving for a fraction of its recompute.

    An op that draws random numbers is always recomputed, attention with dropout included. Checkpointing
    restores the generator's state before the recompute, and the recompute must draw what the forward drew,
    in the same order: a saved draw (CUDA's fused attention with dropout, which advances the Philox offset)
    would shift every later dropout mask of the block, so the backward would use masks the forward never
    applied. Recomputing the attention core under dropout is also Megatron's selective recomputation
    (Korthikanti et al. 2022). `reruns`, when given, counts each such op the forward leaves to the recompute
    (the hardware FLOPs count the attention reruns).
    """
    import torch
    from torch.utils.checkpoint import (
        CheckpointPolicy,
        create_selective_checkpoint_contexts,
    )

    aten = torch.ops.aten
    # Not every torch build has every attention op; the ones it lacks cannot run anyway.
    saved = {getattr(aten, name).default for name in SELECTIVE_SAVED_OPS if hasattr(aten, name)}

    def policy(ctx, op, *args, **kwargs):  # type: ignore[no-untyped-def]
        if draws_random_numbers(op, args, kwargs):
            # Counted as the forward marks it (newer torch no longer asks the policy during the recompute).
            if reruns is not None and not (ctx is not None and ctx.is_recompute):
                reruns[op.name()] += 1
            return CheckpointPolicy.MUST_RECOMPUTE
        return CheckpointPolicy.MUST_SAVE if op in saved else CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


def enable_checkpointing(model: nn.Module, *, selective: bool = False,
                         reruns: collections.Counter | None = None) -> None:
    """Recompute every block in backward instead of keeping its activations (non-reentrant).

    `selective` keeps matmul and attention outputs inside each block (see _selective_context, which counts
    into `reruns` the random ops it recomputed).
    """
    context = functools.partial(_selective_context, reruns)
    kwargs = {"use_reentrant": False, **({"context_fn": context} if selective else {})}
    # Newer transformers renamed the method (and its argument) and deprecated the old name.
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of any registry model (FSDP shards one unit per block)."""
    if hasattr(model, "lm"):  # a kernel set's wrapper (FusedLossLM) around the model
        model = model.lm
    for path in ("transformer.h", "model.layers", "bert.encoder.layer", "encoder.layers"):
        module: Any = model
        try:
            for attr in path.split("."):
                module = getattr(module, attr)
        except AttributeError:
            continue
        return list(module)
    raise ValueError(f"no transformer blocks found in {type(model).__name__}")

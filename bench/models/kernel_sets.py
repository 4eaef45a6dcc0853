"""Kernel sets: which implementation of norms, activations and the loss a model trains with.

Each set turns a built model into one that uses its kernels by swapping modules in place (the
parameters are the same objects, so weights are kept), before precision casting and data
parallelism; `finish` runs after those (torch.compile wraps the final module).
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from lmbench.errors import KernelSwapError
from lmbench.models.compiled import compile_model
from lmbench.models.registry import ModelSpec
from lmbench.models.torch_lm import LMOutput
from lmbench.models.versions import versions


def _identity(model: nn.Module, *, compile_mode: str = "default", in_place: bool = False) -> nn.Module:
    return model


def _no_swap(model: nn.Module, spec: ModelSpec) -> tuple[nn.Module, str | None]:
    return model, None


@dataclass(frozen=True, kw_only=True)
class KernelSet:
    name: str
    swap: Callable[[nn.Module, ModelSpec], tuple[nn.Module, str | None]] = _no_swap
    """Swaps the set's kernels into a built model: (model, what was swapped, as "norms 5/5, ...").

    Raises KernelSwapError when any part did not apply."""
    finish: Callable[..., nn.Module] = _identity
    """Wraps the final module (after precision and parallelism), given the config's compile_mode."""
    unavailable: Callable[[ModelSpec, str], str | None] = lambda spec, device: None
    """Why this set cannot run `spec` on a device of this type here, or None."""
    note: str | None = None
    """Stated in every record that uses the set."""
    optimizer: str | None = None
    """Optimizer the set brings, replacing the config's (Apex: FusedAdam)."""


def verify(kernels: str, spec: ModelSpec, counts: dict[str, tuple[int, int]], why: dict[str, str]) -> str:
    """Check that every part of a swap applied: `counts` maps a part to (swapped, present in the model).

    Returns the counts as one line for the record ("norms 5/5, ..."); raises KernelSwapError naming
    the versions when any part is short, so a record never says kernels=X for a model that ran without them.
    """
    short = [(part, done, expected) for part, (done, expected) in counts.items() if done != expected]
    if short:
        detail = "; ".join(f"{part} {done} of {expected}" + (f" ({why[part]})" if why.get(part) else "")
                           for part, done, expected in short)
        raise KernelSwapError(f"kernels={kernels} did not apply to {spec.name} with {versions()}: {detail}; "
                              "refusing to measure it unfused")
    return ", ".join(f"{part} {done}/{expected}" for part, (done, expected) in counts.items())


def _replace_modules(model: nn.Module, make: Callable[[nn.Module], tuple[str, nn.Module] | None]) -> Counter[str]:
    """Replace every submodule for which `make` returns (part, new module); returns replacements per part."""
    replaced: Counter[str] = Counter()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            made = make(child)
            if made is not None:
                setattr(parent, name, made[1])
                replaced[made[0]] += 1
    return replaced


def _is_rms_norm(module: nn.Module) -> bool:
    return type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon")


def _is_layer_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) and module.elementwise_affine and len(module.normalized_shape) == 1


def _count_norms(model: nn.Module) -> int:
    """Every normalisation layer, swappable or not: what a norm swap must cover."""
    return sum(isinstance(m, nn.LayerNorm) or type(m).__name__.endswith(("RMSNorm", "LayerNorm"))
               for m in model.modules())


def _tanh_gelu_classes() -> tuple[type, ...]:
    """transformers' tanh-approximated GELU modules, found by what they compute rather than by class name."""
    from transformers.activations import ACT2CLS

    found = []
    for name in ("gelu_new", "gelu_pytorch_tanh"):
        entry = ACT2CLS.get(name)
        cls = entry[0] if isinstance(entry, tuple) else entry
        if isinstance(cls, type):
            found.append(cls)
    return tuple(found)


def _is_silu(module: nn.Module) -> bool:
    return isinstance(module, nn.SiLU) or type(module).__name__ in ("SiLUActivation", "SiLU")


class FusedLossLM(nn.Module):
    """Runs the model's body, then the fused linear + cross-entropy instead of LM head + F.cross_entropy."""

    #: Where each family keeps the module that returns the LM head's input.
    BODIES = {"gpt2": "transformer", "llama": "model", "bert": "bert", "torch-lm": "hidden_states"}

    def __init__(self, lm: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.lm = lm
        self.spec = spec

    def _hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        family = self.spec.family
        if family == "gpt2":
            return self.lm.transformer(input_ids=input_ids).last_hidden_state
        if family == "llama":
            return self.lm.model(input_ids=input_ids).last_hidden_state
        if family == "bert":
            return self.lm.cls.predictions.transform(self.lm.bert(input_ids=input_ids).last_hidden_state)
        return self.lm.hidden_states(input_ids)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0,
                reduction: str = "mean") -> LMOutput:
        from lmbench.kernels.cross_entropy import linear_cross_entropy

        hidden = self._hidden(input_ids)
        head = self.lm.get_output_embeddings()
        if self.spec.objective == "causal-lm":
            hidden, labels = hidden[:, :-1], labels[:, 1:]
        return LMOutput(linear_cross_entropy(hidden, head.weight, labels, head.bias, reduction=reduction,
                                             label_smoothing=label_smoothing), None)


# Fused blocks. A block's forward is replaced by a subclass of its class (made once per class), never by a
# method bound to the instance: nn.DataParallel's replicas copy an instance's __dict__, so a bound method
# would make every replica run the device-0 block.

#: Attributes each fused block forward uses, by family.
_BLOCK_PARTS = {"gpt2": ("ln_1", "attn", "ln_2", "mlp"),
                "llama": ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")}
#: Block arguments that are not the self-attention's: the input itself and GPT-2's cross-attention inputs.
_NOT_ATTENTION_ARGS = ("hidden_states", "encoder_hidden_states", "encoder_attention_mask")


def _attention_arguments(signature: inspect.Signature, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The block's arguments by name, defaults applied, its **kwargs flattened in.

    The block passes these on to its self-attention unchanged in every transformers 5.x release,
    whatever they are called there (`past_key_values` up to 5.2x, `cache` after), so binding by
    name follows renames instead of hard-coding one signature.
    """
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    values = dict(bound.arguments)
    for name, parameter in signature.parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            values.update(values.pop(name, {}))
        elif parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            values.pop(name, None)
    values.pop("self", None)
    return values


def _gpt2_block_forward(self: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
    """GPT2Block.forward with `attention + residual` and ln_2 done by one fused kernel."""
    from lmbench.kernels.norms import add_norm

    values = _attention_arguments(self._lmbench_signature, (self, *args), kwargs)
    if values.get("encoder_hidden_states") is not None:
        return self._lmbench_original(self, *args, **kwargs)
    hidden = values["hidden_states"]
    attn, _ = self.attn(self.ln_1(hidden), **{k: v for k, v in values.items() if k not in _NOT_ATTENTION_ARGS})
    ln = self.ln_2
    normed, residual = add_norm(attn, hidden, ln.weight, ln.bias, ln.eps, rms=False)
    return residual + self.mlp(normed)


def _llama_layer_forward(self: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
    """LlamaDecoderLayer.forward with `residual + attention` and the post-attention RMSNorm fused."""
    from lmbench.kernels.norms import add_norm

    values = _attention_arguments(self._lmbench_signature, (self, *args), kwargs)
    hidden = values.pop("hidden_states")
    attn, _ = self.self_attn(hidden_states=self.input_layernorm(hidden), **values)
    norm = self.post_attention_layernorm
    normed, residual = add_norm(attn, hidden, norm.weight, eps=norm.variance_epsilon, rms=True)
    return residual + self.mlp(normed)


_BLOCK_FORWARDS = {"gpt2": _gpt2_block_forward, "llama": _llama_layer_forward}
_FUSED_CLASSES: dict[type, type] = {}


def _fused_class(cls: type, family: str) -> type:
    if cls not in _FUSED_CLASSES:
        original = cls.forward
        _FUSED_CLASSES[cls] = type(f"Fused{cls.__name__}", (cls,), {
            "forward": _BLOCK_FORWARDS[family], "_lmbench_original": original,
            "_lmbench_signature": inspect.signature(original), "__module__": __name__})
    return _FUSED_CLASSES[cls]


def _block_unfusable(block: nn.Module, family: str) -> str | None:
    """Why this block's forward is not one the fused forward reproduces, or None."""
    cls = type(block)
    missing = [part for part in _BLOCK_PARTS[family] if not hasattr(block, part)]
    if missing:
        return f"{cls.__name__} has no {', '.join(missing)}"
    signature = inspect.signature(cls.forward)
    if "hidden_states" not in signature.parameters:
        return f"{cls.__name__}.forward takes no hidden_states"
    if signature.return_annotation not in (torch.Tensor, "torch.Tensor"):
        return f"{cls.__name__}.forward returns {signature.return_annotation}, not one tensor"
    return None


def _fuse_blocks(blocks: list[nn.Module], family: str) -> tuple[int, str | None]:
    """Give each block the fused forward; returns (blocks fused, why the others were not)."""
    fused, first_why = 0, None
    for block in blocks:
        why = _block_unfusable(block, family)
        if why is None:
            block.__class__ = _fused_class(type(block), family)
            fused += 1
        first_why = first_why or why
    return fused, first_why


def _torch_lm_unfusable(layer: nn.Module) -> str | None:
    missing = [part for part in ("_sa_block", "_ff_block", "norm1", "norm2") if not hasattr(layer, part)]
    if missing:
        return f"nn.TransformerEncoderLayer has no {', '.join(missing)}"
    return None if layer.norm_first else "the encoder layers are post-norm"


def _swap_triton(model: nn.Module, spec: ModelSpec) -> tuple[nn.Module, str]:
    from lmbench.kernels.activations import TritonGeluTanh, TritonSwiGLUMLP
    from lmbench.kernels.norms import TritonLayerNorm, TritonRMSNorm

    gelu_tanh = _tanh_gelu_classes()
    norms = _count_norms(model)

    def replace(module: nn.Module) -> tuple[str, nn.Module] | None:
        if _is_layer_norm(module):
            new = TritonLayerNorm(module.normalized_shape[0], module.eps, bias=module.bias is not None)
            new.weight, new.bias = module.weight, module.bias
            return "norms", new
        if _is_rms_norm(module):
            new = TritonRMSNorm(module.weight.shape[0], module.variance_epsilon)
            new.weight = module.weight
            return "norms", new
        if gelu_tanh and isinstance(module, gelu_tanh):
            return "GELU-tanh", TritonGeluTanh()
        if type(module).__name__ == "LlamaMLP" and _is_silu(getattr(module, "act_fn", None)):
            return "SwiGLU MLPs", TritonSwiGLUMLP(module.gate_proj, module.up_proj, module.down_proj)
        return None

    replaced = _replace_modules(model, replace)
    counts = {"norms": (replaced["norms"], norms)}
    why: dict[str, str] = {}
    if spec.family == "gpt2":
        counts["GELU-tanh"] = (replaced["GELU-tanh"], spec.n_layers)
        why["GELU-tanh"] = "no tanh-GELU module found where transformers' ACT2CLS says"
    if spec.family == "llama":
        counts["SwiGLU MLPs"] = (replaced["SwiGLU MLPs"], spec.n_layers)
        why["SwiGLU MLPs"] = "no LlamaMLP with a SiLU act_fn"
    part = "fused residual add + norm"
    if spec.family in _BLOCK_FORWARDS:
        blocks = list(model.transformer.h if spec.family == "gpt2" else model.model.layers)
        fused, why[part] = _fuse_blocks(blocks, spec.family)
        counts[part] = (fused, len(blocks))
    if spec.family == "torch-lm":
        from lmbench.kernels.norms import add_norm

        layers = list(model.encoder.layers)
        why[part] = next(filter(None, map(_torch_lm_unfusable, layers)), None)
        model.add_norm = None if why[part] else add_norm
        counts[part] = (0 if why[part] else len(layers), len(layers))
    body = FusedLossLM.BODIES.get(spec.family)
    counts["fused linear-CE loss"] = (int(body is not None and hasattr(model, body)), 1)
    why["fused linear-CE loss"] = f"no {body or 'known body'} in {type(model).__name__}"
    applied = verify("triton", spec, counts, why)
    return FusedLossLM(model, spec), applied


def _triton_unavailable(spec: ModelSpec, device: str) -> str | None:
    import os

    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "kernels=triton needs a CUDA GPU (on a CPU Triton runs only under TRITON_INTERPRET=1, for tests)"
    return None


#: Apex's compiled extensions lmbench uses: FusedLayerNorm/FusedRMSNorm, and FusedAdam (multi_tensor_adam).
APEX_EXTENSIONS = ("fused_layer_norm_cuda", "amp_C")


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a module already imported without a spec (a stand-in in sys.modules)
        return name in sys.modules


def apex_problem() -> str | None:
    """Why Apex's fused norms and FusedAdam cannot run here (not installed, or without its extensions), or None."""
    missing = [name for name in ("apex", *APEX_EXTENSIONS) if not _importable(name)]
    if not missing:
        return None
    return ("Apex is not installed with its fused LayerNorm/RMSNorm and FusedAdam extensions (fused_layer_norm_cuda, "
            "amp_C); it is not on the package index: build them from a source checkout on a CUDA machine with "
            "ci/build-apex.sh")


def _apex_unavailable(spec: ModelSpec, device: str) -> str | None:
    problem = apex_problem()
    if problem:
        return problem
    if device == "cpu":
        return "kernels=apex needs a CUDA GPU (Apex norms silently fall back to native code on a CPU)"
    return None


def _swap_apex(model: nn.Module, spec: ModelSpec) -> tuple[nn.Module, str]:
    from apex.normalization import FusedLayerNorm, FusedRMSNorm

    norms = _count_norms(model)

    def replace(module: nn.Module) -> tuple[str, nn.Module] | None:
        if _is_layer_norm(module):
            new = FusedLayerNorm(module.normalized_shape, eps=module.eps)
            new.weight, new.bias = module.weight, module.bias
            return "norms", new
        if _is_rms_norm(module):
            new = FusedRMSNorm(module.weight.shape, eps=module.variance_epsilon)
            new.weight = module.weight
            return "norms", new
        return None

    replaced = _replace_modules(model, replace)
    return model, verify("apex", spec, {"norms": (replaced["norms"], norms)}, {})


#: Model families Liger-Kernel has kernels for, by its instance-patching entry point.
LIGER_FAMILIES = frozenset({"llama"})


def _liger_unavailable(spec: ModelSpec, device: str) -> str | None:
    if importlib.util.find_spec("liger_kernel") is None:
        return "Liger-Kernel is not installed (pip install '.[liger]' in lmbench's checkout)"
    if device == "cpu":
        return "kernels=liger needs a CUDA GPU"
    if spec.family not in LIGER_FAMILIES:
        return f"Liger-Kernel has no kernels for model family {spec.family}"
    return None


def _runs_liger(module: nn.Module) -> bool:
    """Liger patches an instance by binding its own forward into the module's __dict__ (or swapping the class)."""
    forward = module.__dict__.get("forward", None)
    owner = getattr(getattr(forward, "__func__", forward), "__module__", "") or ""
    return owner.startswith("liger_kernel") or type(module).__module__.startswith("liger_kernel")


def _swap_liger(model: nn.Module, spec: ModelSpec) -> tuple[nn.Module, str]:
    """Liger's instance patching for Llama: RMSNorms, SwiGLU MLPs, RoPE, and the fused linear cross-entropy.

    Liger patches RoPE by replacing `apply_rotary_pos_emb` in transformers' Llama module (process-wide: the
    worker is a fresh process per configuration) and the loss by binding its own forward to the model.
    """
    from liger_kernel.transformers import _apply_liger_kernel_to_instance
    from transformers.models.llama import modeling_llama

    norms = _count_norms(model)
    _apply_liger_kernel_to_instance(model=model)
    liger_norms = sum(_runs_liger(m) for m in model.modules() if type(m).__name__.endswith("RMSNorm"))
    mlps = sum(_runs_liger(layer.mlp) for layer in model.model.layers)
    rope = getattr(modeling_llama.apply_rotary_pos_emb, "__module__", "") or ""
    counts = {"RMSNorms": (liger_norms, norms), "SwiGLU MLPs": (mlps, spec.n_layers),
              "RoPE": (spec.n_layers if rope.startswith("liger_kernel") else 0, spec.n_layers),
              "fused linear-CE loss": (int(_runs_liger(model)), 1)}
    why = {"RoPE": f"transformers' Llama apply_rotary_pos_emb is {rope or 'unknown'}'s",
           "fused linear-CE loss": "the model's forward is not Liger's"}
    return model, verify("liger", spec, counts, why)


KERNEL_SETS: dict[str, KernelSet] = {
    "eager": KernelSet(name="eager"),
    "compile": KernelSet(name="compile", finish=compile_model),
    "triton": KernelSet(name="triton", swap=_swap_triton, unavailable=_triton_unavailable,
                        note="lmbench Triton kernels: norms, GELU-tanh/SwiGLU, fused residual add + norm (GPT-2, "
                             "Llama, torch-transformer-lm), chunked fused linear cross-entropy"),
    "apex": KernelSet(name="apex", swap=_swap_apex, unavailable=_apex_unavailable,
                      optimizer="apex-adam",
                      note="Apex FusedLayerNorm/FusedRMSNorm and FusedAdam; Apex norms fall back to native code "
                           "on CPU or under torch.compile"),
    "liger": KernelSet(name="liger", swap=_swap_liger, unavailable=_liger_unavailable,
                       note="Liger-Kernel modules patched into the built model instance"),
}

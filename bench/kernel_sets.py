"""Kernel sets: which implementation of norms, activations and the loss a model trains with.

Each set turns a built model into one that uses its kernels by swapping modules in place (the
parameters are the same objects, so weights are kept), before precision casting and data
parallelism; `finish` runs after those (torch.compile wraps the final module).
"""

from __future__ import annotations

import importlib.util
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from lmbench.models import ModelSpec
from lmbench.torch_lm import LMOutput


def _identity(model: nn.Module, spec: ModelSpec | None = None) -> nn.Module:
    return model


@dataclass(frozen=True, kw_only=True)
class KernelSet:
    name: str
    swap: Callable[[nn.Module, ModelSpec], nn.Module] = _identity
    finish: Callable[[nn.Module], nn.Module] = _identity
    unavailable: Callable[[ModelSpec, str], str | None] = lambda spec, device: None
    """Why this set cannot run `spec` on a device of this type here, or None."""
    note: str | None = None
    """Stated in every record that uses the set."""
    optimizer: str | None = None
    """Optimizer the set brings, replacing the config's (Apex: FusedAdam)."""


def _replace_modules(model: nn.Module, make: Callable[[nn.Module], nn.Module | None]) -> int:
    """Replace every submodule for which `make` returns a module; returns how many were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = make(child)
            if new is not None:
                setattr(parent, name, new)
                replaced += 1
    return replaced


def _is_rms_norm(module: nn.Module) -> bool:
    return type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon")


def _is_layer_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) and module.elementwise_affine and len(module.normalized_shape) == 1


class FusedLossLM(nn.Module):
    """Runs the model's body, then the fused linear + cross-entropy instead of LM head + F.cross_entropy."""

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

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> LMOutput:
        from lmbench.kernels.cross_entropy import linear_cross_entropy

        hidden = self._hidden(input_ids)
        head = self.lm.get_output_embeddings()
        if self.spec.objective == "causal-lm":
            hidden, labels = hidden[:, :-1], labels[:, 1:]
        return LMOutput(linear_cross_entropy(hidden, head.weight, labels, head.bias), None)


def _llama_layer_forward(self: nn.Module, hidden_states: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """LlamaDecoderLayer.forward with `residual + attention` and the post-attention RMSNorm fused."""
    from lmbench.kernels.norms import add_norm

    attn, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states), **kwargs)
    norm = self.post_attention_layernorm
    normed, residual = add_norm(attn, hidden_states, norm.weight, eps=norm.variance_epsilon, rms=True)
    return residual + self.mlp(normed)


def _patch_gpt2_blocks(model: nn.Module) -> bool:
    """Fuse each GPT-2 block's `attention + residual` with ln_2, when the block's forward is the one we know.

    The patch binds the caller's arguments by name against the original signature, so it does not
    depend on how GPT2Model passes them; it is applied only where that signature has the names it
    needs and returns a tensor (transformers 5.x), and falls back to the original with cross-attention.
    """
    import inspect

    from lmbench.kernels.norms import add_norm

    blocks = list(model.transformer.h)
    original = type(blocks[0]).forward
    signature = inspect.signature(original)
    needed = {"hidden_states", "past_key_values", "attention_mask", "use_cache", "encoder_hidden_states"}
    if not needed <= set(signature.parameters) or signature.return_annotation not in (torch.Tensor, "torch.Tensor"):
        return False

    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        if values.get("encoder_hidden_states") is not None:
            return original(self, *args, **kwargs)
        extra = values.pop("kwargs", {})
        hidden = values["hidden_states"]
        attn, _ = self.attn(self.ln_1(hidden), past_key_values=values["past_key_values"],
                            attention_mask=values["attention_mask"], use_cache=values["use_cache"], **extra)
        ln = self.ln_2
        normed, residual = add_norm(attn, hidden, ln.weight, ln.bias, ln.eps, rms=False)
        return residual + self.mlp(normed)

    for block in blocks:
        block.forward = types.MethodType(forward, block)
    return True


def _swap_triton(model: nn.Module, spec: ModelSpec) -> nn.Module:
    from lmbench.kernels.activations import TritonGeluTanh, TritonSwiGLUMLP
    from lmbench.kernels.norms import TritonLayerNorm, TritonRMSNorm

    def replace(module: nn.Module) -> nn.Module | None:
        if _is_layer_norm(module):
            new = TritonLayerNorm(module.normalized_shape[0], module.eps, bias=module.bias is not None)
            new.weight, new.bias = module.weight, module.bias
            return new
        if _is_rms_norm(module):
            new = TritonRMSNorm(module.weight.shape[0], module.variance_epsilon)
            new.weight = module.weight
            return new
        if type(module).__name__ == "NewGELUActivation":
            return TritonGeluTanh()
        if type(module).__name__ == "LlamaMLP":
            return TritonSwiGLUMLP(module.gate_proj, module.up_proj, module.down_proj)
        return None

    _replace_modules(model, replace)
    if spec.family == "llama":
        for layer in model.model.layers:
            layer.forward = types.MethodType(_llama_layer_forward, layer)
    if spec.family == "gpt2":
        _patch_gpt2_blocks(model)
    if spec.family == "torch-lm":
        from lmbench.kernels.norms import add_norm

        model.add_norm = add_norm
    return FusedLossLM(model, spec)


def _triton_unavailable(spec: ModelSpec, device: str) -> str | None:
    import os

    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "kernels=triton needs a CUDA GPU (on a CPU Triton runs only under TRITON_INTERPRET=1, for tests)"
    return None


def _apex_unavailable(spec: ModelSpec, device: str) -> str | None:
    if importlib.util.find_spec("apex") is None or importlib.util.find_spec("fused_layer_norm_cuda") is None:
        return "Apex is not installed (with its CUDA extensions)"
    if device == "cpu":
        return "kernels=apex needs a CUDA GPU (Apex norms silently fall back to native code on a CPU)"
    return None


def _swap_apex(model: nn.Module, spec: ModelSpec) -> nn.Module:
    from apex.normalization import FusedLayerNorm, FusedRMSNorm

    def replace(module: nn.Module) -> nn.Module | None:
        if _is_layer_norm(module):
            new = FusedLayerNorm(module.normalized_shape, eps=module.eps)
            new.weight, new.bias = module.weight, module.bias
            return new
        if _is_rms_norm(module):
            new = FusedRMSNorm(module.weight.shape, eps=module.variance_epsilon)
            new.weight = module.weight
            return new
        return None

    _replace_modules(model, replace)
    return model


#: Model families Liger-Kernel has kernels for, by its instance-patching entry point.
LIGER_FAMILIES = frozenset({"llama"})


def _liger_unavailable(spec: ModelSpec, device: str) -> str | None:
    if importlib.util.find_spec("liger_kernel") is None:
        return "Liger-Kernel is not installed (pip install 'lmbench[liger]')"
    if device == "cpu":
        return "kernels=liger needs a CUDA GPU"
    if spec.family not in LIGER_FAMILIES:
        return f"Liger-Kernel has no kernels for model family {spec.family}"
    return None


def _swap_liger(model: nn.Module, spec: ModelSpec) -> nn.Module:
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(model=model)
    return model


def _compile(model: nn.Module) -> nn.Module:
    return torch.compile(model)


KERNEL_SETS: dict[str, KernelSet] = {
    "eager": KernelSet(name="eager"),
    "compile": KernelSet(name="compile", finish=_compile),
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

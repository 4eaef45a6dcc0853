"""FP8 training of a built model: torchao's Float8Linear in place of the transformer blocks' linear layers.

Which layers (the module filter): every linear layer inside the repeated transformer blocks
(`registry.transformer_blocks`: attention projections and MLP), and nothing outside them. The token
and position embeddings, the final norm and the LM head stay in the precision around them: the head
is tied to the embedding in GPT-2, and its vocabulary-wide output is where FP8 rounding would move
the loss most (torchao and torchtitan leave it out by default for the same reason). Inside a block,
a linear whose parent reads its weight instead of calling it is left alone, because FP8 would never
run there: `nn.MultiheadAttention` (torch-transformer-lm) computes its input projection from a raw
parameter and its `out_proj` through `F.multi_head_attention_forward`. GPT-2 keeps its projections
in transformers' `Conv1D` (x @ W + b with W stored transposed), which torchao does not swap: each
becomes an `nn.Linear` holding the transposed weight first (same function, same parameter count).

Every conversion is counted against the eligible layers (`float8 linears 8/8 (rowwise)`); when any
is missing, Float8ConversionError says so instead of letting the record claim FP8 for bf16 matmuls.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from lmbench.errors import Float8ConversionError
from lmbench.models.conv1d import conv1d_as_linear, is_conv1d
from lmbench.models.versions import release

if TYPE_CHECKING:
    from lmbench.models.registry import ModelSpec

#: precision axis value -> torchao Float8LinearConfig recipe name.
RECIPES: dict[str, str] = {"fp8-tensorwise": "tensorwise", "fp8-rowwise": "rowwise"}
#: FP8 tensor cores arrived with Ada (sm_89) and Hopper (sm_90).
MIN_CAPABILITY = (8, 9)
#: The first torchao whose compiled parts are built for torch 2.11 and later (its __init__ skips them for older
#: torch); its float8 training is pure Python over torch._scaled_mm and works with torch 2.11 and 2.13.
MIN_TORCHAO = (0, 18)


def torchao_problem() -> str | None:
    """Why torchao's float8 training cannot be imported here, or None."""
    if importlib.util.find_spec("torchao") is None:
        return "torchao is not installed (pip install '.[fp8]' in lmbench's checkout)"
    version = importlib.metadata.version("torchao")
    if release(version) < MIN_TORCHAO:
        return (f"torchao {version} is older than {'.'.join(map(str, MIN_TORCHAO))} (pip install '.[fp8]' in lmbench's "
                "checkout)")
    return None


#: Scale shapes of an (M, K) @ (K, N) FP8 matmul under each recipe: one per tensor, or one per row of the input
#: and per column of the weight.
_SCALE_SHAPES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "tensorwise": ((), ()), "rowwise": ((16, 1), (1, 16))}


@functools.lru_cache(maxsize=None)
def cpu_scaled_mm_problem(recipe: str = "tensorwise") -> str | None:
    """Why torch._scaled_mm (the FP8 matmul torchao calls) does not run on this CPU with `recipe`'s scales, or None.

    torch 2.13 has a CPU kernel for both recipes (the tests run FP8 end to end with it); torch 2.11's takes
    per-tensor scales only, and older releases have none.
    """
    a = torch.ones(16, 16).to(torch.float8_e4m3fn)
    b = torch.ones(16, 16).to(torch.float8_e4m3fn).t()
    scale_a, scale_b = (torch.ones(shape, dtype=torch.float32) for shape in _SCALE_SHAPES[recipe])
    try:
        torch._scaled_mm(a, b, scale_a=scale_a, scale_b=scale_b, out_dtype=torch.bfloat16)
    except (RuntimeError, NotImplementedError, TypeError) as err:
        scales = "" if recipe == "tensorwise" else f" with {recipe} scales"
        first = (str(err).strip().splitlines() or [""])[0]
        # torch's internal asserts lead with the C++ condition: the sentence after it says what is missing.
        first = first.rsplit("PyTorch. ", 1)[-1]
        return f"torch {torch.__version__} has no CPU torch._scaled_mm{scales} ({first[:120]})"
    return None


def unavailable(precision: str, device_type: str, capability: tuple[int, int] | None) -> str | None:
    """Why `precision` (an FP8 value) cannot run on a device of this type here, or None."""
    problem = torchao_problem()
    if problem:
        return f"precision={precision} needs torchao's float8 training: {problem}"
    if device_type == "cuda":
        major, minor = capability or (0, 0)
        if (major, minor) < MIN_CAPABILITY:
            return (f"precision={precision} needs FP8 tensor cores (compute capability 8.9 or later: Ada, Hopper, "
                    f"Blackwell); this GPU is {major}.{minor}")
        return None
    problem = cpu_scaled_mm_problem(RECIPES[precision])
    return f"precision={precision} cannot run on the CPU: {problem}" if problem else None


#: What FP8 matmuls ask of every dimension they multiply on a GPU (torch._scaled_mm's CUDA kernels; torchao's own
#: module filters ask it of a linear's in and out features, float8_linear_utils.py).
FP8_MULTIPLE = 16


def shape_problem(precision: str, spec: ModelSpec, tokens: int) -> str | None:
    """Why `spec`'s block linears cannot run as FP8 matmuls on a GPU with `tokens` tokens a micro-batch, or None.

    Each dimension of a block linear's three matmuls must be a multiple of 16: its in and out features, and the
    micro-batch's tokens, the inner dimension of the weight gradient's grad_outputᵀ·input. The CPU kernel asks
    none of it (torch's meta check skips the CPU), so batch_size=1, seq_len=100 passed every CPU test and died in
    the first backward on the GPU ("Expected trailing dimension of mat1 to be divisible by 16"; a reviewer)."""
    widths = {"hidden size": spec.hidden, "MLP width": spec.intermediate,
              "key/value width": spec.n_kv_heads * spec.head_dim}
    odd = [f"{what} {size}" for what, size in widths.items() if size % FP8_MULTIPLE]
    if odd:
        return (f"precision={precision} needs the block linears' widths in multiples of {FP8_MULTIPLE} (FP8 matmuls "
                f"on a GPU); {spec.name} has {', '.join(odd)}")
    if tokens % FP8_MULTIPLE:
        return (f"precision={precision} needs each micro-batch's tokens (batch_size x seq_len = {tokens}) in a "
                f"multiple of {FP8_MULTIPLE}: they are the inner dimension of the weight gradient's FP8 matmul on a "
                f"GPU")
    return None


def _read_by_parent(parent: nn.Module) -> bool:
    """A parent that uses its child linears' weights directly (so a swapped child would never run)."""
    return isinstance(parent, nn.MultiheadAttention)


def eligible_linears(model: nn.Module) -> list[str]:
    """Qualified names of the linear layers FP8 applies to (see the module docstring), before conversion."""
    from lmbench.models.registry import transformer_blocks

    blocks = {id(block) for block in transformer_blocks(model)}
    names = []
    inside: set[int] = set()
    for name, module in model.named_modules():
        if id(module) in blocks:
            inside.update(id(m) for m in module.modules())
        if id(module) not in inside or _read_by_parent(module):
            continue
        for child_name, child in module.named_children():
            if isinstance(child, nn.Linear) or is_conv1d(child):
                names.append(f"{name}.{child_name}" if name else child_name)
    return names


def convert(model: nn.Module, precision: str) -> tuple[nn.Module, str]:
    """Swap the eligible linears for torchao Float8Linear with `precision`'s recipe, in place.

    Returns (model, what was applied, e.g. "float8 linears 12/12 (tensorwise)"); raises
    Float8ConversionError when any eligible layer was not converted or any other was.
    """
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    from torchao.float8.float8_linear import Float8Linear

    recipe = RECIPES[precision]
    targets = eligible_linears(model)
    for name in targets:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        child = getattr(parent, child_name)
        if is_conv1d(child):
            setattr(parent, child_name, conv1d_as_linear(child))
    wanted = set(targets)
    convert_to_float8_training(model, config=Float8LinearConfig.from_recipe_name(recipe),
                               module_filter_fn=lambda module, fqn: fqn in wanted)
    converted = {name for name, module in model.named_modules() if isinstance(module, Float8Linear)}
    if converted != wanted:
        missing, extra = sorted(wanted - converted), sorted(converted - wanted)
        detail = "; ".join(filter(None, (missing and f"not converted: {', '.join(missing[:4])}",
                                         extra and f"converted outside the blocks: {', '.join(extra[:4])}")))
        raise Float8ConversionError(f"precision={precision} did not apply with torchao "
                                    f"{importlib.metadata.version('torchao')}: {detail}; refusing to measure it "
                                    "as FP8")
    return model, f"float8 linears {len(converted)}/{len(wanted)} ({recipe})"

"""Megatron-style tensor parallelism of a registry model's blocks, through PyTorch's DTensor API.

Inside every block, the projections that fan out (q/k/v, MLP-in) are split column-wise and the
ones that fan back in (attention-out, MLP-out) row-wise (Shoeybi et al. 2019, Megatron-LM,
section 3), with `torch.distributed.tensor.parallel.parallelize_module`: each rank computes its own
heads and its own slice of the MLP, and one all-reduce after each row-wise projection makes the
residual stream whole again, in the forward and, mirrored, in the backward.

Embeddings, norms and the LM head stay whole on every rank. They see the same (replicated)
activations and get the same gradients on every rank, so they stay in step without communication.
What is left out, and why:
- sequence parallelism of the norms: transformers builds the attention mask and the positions from
  the sequence length of the embedding output, which sequence parallelism would shard;
- a vocabulary-parallel LM head: transformers computes the loss inside the model's forward, on
  whole logits, where a sharded head would need torch's loss_parallel instead.

GPT-2 keeps its projections in transformers' Conv1D (a transposed Linear) with q, k and v fused in
one matrix; each is replaced by the equivalent nn.Linear first, the fused q/k/v with its columns
reordered so that every rank's contiguous column shard holds its own q, k and v heads.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from lmbench.models.conv1d import conv1d_as_linear
from lmbench.models.registry import ModelSpec, transformer_blocks
from lmbench.plan.layout import tensor_split_problem


class TensorParallelError(ValueError):
    """The model cannot be split over this tensor-parallel group (the planner refuses these first)."""


def qkv_order(hidden: int, degree: int, device: torch.device | None = None) -> torch.Tensor:
    """Output features of a fused [q | k | v] projection reordered to [q_0 k_0 v_0 | q_1 k_1 v_1 | ...]: shard r of
    a column-wise split is then rank r's own q, k and v heads."""
    shard = hidden // degree
    parts = [torch.arange(part * hidden + rank * shard, part * hidden + (rank + 1) * shard, device=device)
             for rank in range(degree) for part in range(3)]
    return torch.cat(parts)


def _prepare_gpt2(block: nn.Module, degree: int) -> None:
    attention = block.attn
    hidden = attention.embed_dim
    attention.c_attn = conv1d_as_linear(attention.c_attn, qkv_order(hidden, degree, attention.c_attn.weight.device))
    attention.c_proj = conv1d_as_linear(attention.c_proj)
    # The block splits the fused output into q, k and v by this width: a rank's shard is a third of its columns.
    attention.split_size = hidden // degree
    block.mlp.c_fc = conv1d_as_linear(block.mlp.c_fc)
    block.mlp.c_proj = conv1d_as_linear(block.mlp.c_proj)


#: Per family: column-wise and row-wise projections of one block (paths inside the block), and what must be
#: rewritten before DTensor can shard them.
PLANS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "gpt2": (("attn.c_attn", "mlp.c_fc"), ("attn.c_proj", "mlp.c_proj")),
    "llama": (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"),
              ("self_attn.o_proj", "mlp.down_proj")),
}
_PREPARE = {"gpt2": _prepare_gpt2}


def parallelize(model: nn.Module, spec: ModelSpec, mesh: object) -> int:
    """Shard every block of `model` over the 1-D device mesh `mesh`, in place; returns the projections sharded."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    degree = mesh.size()
    refused = tensor_split_problem(spec, degree)
    if refused:
        raise TensorParallelError(refused)
    columns, rows = PLANS[spec.family]
    plan = {**{path: ColwiseParallel() for path in columns}, **{path: RowwiseParallel() for path in rows}}
    blocks = transformer_blocks(model)
    for block in blocks:
        if spec.family in _PREPARE:
            _PREPARE[spec.family](block, degree)
        parallelize_module(block, mesh, plan)
    return len(blocks) * len(plan)

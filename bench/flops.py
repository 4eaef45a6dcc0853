"""Model FLOPs per token, PaLM convention (Chowdhery et al. 2022, appendix B).

FLOPs per token = 6·N + 12·L·H·Q·T, for a forward and backward pass, where
  N  = weights that multiply activations: every parameter except embedding-lookup tables
       (token, position, token-type), plus the output projection (LM/MLM head), counted once
       even when it shares its weight with the input embedding, because its V×d matmul runs;
  L, H, Q = layers, query heads, head dimension; T = sequence length (full T×T attention, as PaLM).
Recomputation from activation checkpointing is not counted: this is model FLOPs (MFU), not
hardware FLOPs (HFU).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch.nn as nn


def palm_flops_per_token(*, n_matmul_params: int, n_layers: int, n_heads: int, head_dim: int, seq_len: int) -> int:
    """6N + 12·L·H·Q·T (see the module docstring for what N counts)."""
    return 6 * n_matmul_params + 12 * n_layers * n_heads * head_dim * seq_len


def matmul_params(model: nn.Module) -> int:
    """N of the PaLM formula for a built model: all parameters minus embedding tables, plus the output head."""
    import torch.nn as nn

    embedding_ids = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    total = sum(p.numel() for p in model.parameters() if id(p) not in embedding_ids)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and id(head.weight) in embedding_ids:
        total += head.weight.numel()
    return total

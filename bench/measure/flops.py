"""Model FLOPs per token, PaLM convention (Chowdhery et al. 2022, appendix B).

FLOPs per token = 6·N + 12·L·H·Q·T, for a forward and backward pass, where
  N  = weights that multiply activations: every parameter except embedding-lookup tables
       (token, position, token-type), plus the output projection (LM/MLM head), counted once
       even when it shares its weight with the input embedding, because its V×d matmul runs;
  L, H, Q = layers, query heads, head dimension; T = sequence length (full T×T attention, as PaLM).
Recomputation from activation checkpointing is not counted there: that is model FLOPs (MFU).

Hardware FLOPs (HFU) add what checkpointing really recomputes in the backward pass, counted the same
way. `full` reruns the forward of every block, 2·N_rerun + 4·L·H·Q·T per token, where N_rerun is the
block's parameters less its final matmul when nothing after that matmul saves its output for the
backward: non-reentrant checkpointing (torch.utils.checkpoint, early stop) stops rerunning once every
saved activation is back, so Llama's `mlp.down_proj`, torch-transformer-lm's `linear2` (its
dropout is 0) and GPT-2's `mlp.c_proj` with dropout off (dropout=false; parity runs) are not rerun,
while GPT-2's with dropout and BERT's last matmuls feed a dropout mask or a LayerNorm and are. Under
an FP8 precision every matmul reruns: a float8 linear saves its own casts of its inputs, made inside its
forward (a reviewer's count over tiny-llama: 59 matmuls a step against amp-bf16's 57).

`selective` keeps the outputs of every matmul and attention op (lmbench.models.registry.SELECTIVE_SAVED_OPS) and
recomputes only norms, activations and adds: no matmul FLOPs, so its HFU equals its MFU, as with `none`;
except that an op drawing random numbers is always recomputed, so a fused attention with dropout (GPT-2's and
BERT's on CUDA, at the default dropout) reruns, 4·L·H·Q·T per token. A CPU's attention with dropout runs
unfused (its matmuls saved, its dropout recomputed) and reruns nothing.

The LM head's matmuls are 6·V·d per token in eager code (forward, input and weight gradients). lmbench's fused
linear cross-entropy (kernels=triton) recomputes the logits in its backward rather than keep them: 8·V·d per
position it scores (a causal LM's T - 1 of T), hardware FLOPs again. A tensor-parallel group runs the whole head
on each of its ranks.

Hardware FLOPs count attention as PaLM does, the whole T×T score matrix, though a causal fused kernel computes
about half of it: 6·L·H·Q·T of the per-token count is not done (gpt2-124m at T=1024: 6.6% of its FLOPs; llama-1b
2.6% at 1024, 4.9% at 2048).

tests/test_flops.py checks these counts against torch's own FLOP counter over a real training step of every
model family.
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


def recompute_flops_per_token(*, checkpointing: str, n_rerun_params: int, n_layers: int, n_heads: int, head_dim: int,
                              seq_len: int, attention_rerun: bool = False) -> int:
    """Matmul FLOPs per token that activation checkpointing adds by rerunning forwards in the backward.

    `attention_rerun`: selective checkpointing recomputed the fused attention (it had dropout).
    """
    attention = 4 * n_layers * n_heads * head_dim * seq_len
    if checkpointing == "full":
        return 2 * n_rerun_params + attention
    if checkpointing == "selective":
        return attention if attention_rerun else 0
    if checkpointing == "none":
        return 0
    raise ValueError(f"checkpointing={checkpointing!r} has no recompute count")


def head_extra_flops_per_token(*, vocab: int, hidden: int, seq_len: int, tp: int = 1, fused_recompute: bool = False,
                               causal: bool = True) -> int:
    """Matmul FLOPs per token the LM head runs beyond the PaLM count's 6 V d (hardware FLOPs, never model FLOPs).

    `fused_recompute`: the head is lmbench's fused linear cross-entropy, which recomputes the logits in its backward:
    8 V d per scored position, a causal LM's T - 1 of its T. `tp`: the head stays whole on every rank of a
    tensor-parallel group (lmbench.run.tensor_parallel), so it runs `tp` times, of which the PaLM count has one."""
    per_rank = 8 * vocab * hidden * (seq_len - 1 if causal else seq_len) // seq_len if fused_recompute \
        else 6 * vocab * hidden
    return per_rank * tp - 6 * vocab * hidden


#: Per family, the block's last matmul that early-stopping recomputation does not rerun when nothing after it saves
#: its output: always for these (see the module docstring).
UNRERUN_TAIL = {"llama": "mlp.down_proj", "torch-lm": "linear2"}
#: ... and for these only with dropout off (with dropout, the mask after it is saved, so it reruns to draw it).
UNRERUN_TAIL_WITHOUT_DROPOUT = {"gpt2": "mlp.c_proj"}


def rerun_params(model: nn.Module, family: str, *, dropout: bool = True, fp8: bool = False) -> int:
    """N_rerun: parameters of the transformer blocks whose forward matmuls a full checkpoint reruns. `fp8`: the
    linears are float8 ones, which save their own input casts, so the last matmul reruns too."""
    from lmbench.models.registry import transformer_blocks

    tails = {} if fp8 else {**UNRERUN_TAIL, **({} if dropout else UNRERUN_TAIL_WITHOUT_DROPOUT)}
    total = 0
    for block in transformer_blocks(model):
        total += sum(p.numel() for p in block.parameters())
        if family in tails:
            total -= sum(p.numel() for p in block.get_submodule(tails[family]).parameters())
    return total

"""The plain PyTorch language model many tutorials use: nn.TransformerEncoder under a causal mask.

It exists to compare the Hugging Face models with what a hand-rolled stack gets from PyTorch's own
fused paths (nn.MultiheadAttention calls scaled_dot_product_attention).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


class LMOutput(NamedTuple):
    loss: torch.Tensor | None
    logits: torch.Tensor


class TorchTransformerLM(nn.Module):
    """Token + learned position embeddings, pre-norm encoder layers, final LayerNorm, tied LM head."""

    def __init__(self, *, vocab_size: int, hidden: int, n_layers: int, n_heads: int, intermediate: int,
                 max_positions: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(vocab_size, hidden)
        self.pos_emb = nn.Embedding(max_positions, hidden)
        layer = nn.TransformerEncoderLayer(hidden, n_heads, intermediate, dropout=dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        # enable_nested_tensor only helps padded inference; it warns with norm_first layers.
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.lm_head = nn.Linear(hidden, vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight
        self.checkpointing = False
        self.checkpoint_kwargs: dict = {}
        self.add_norm: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None
        """A fused (residual add + LayerNorm) for the second half of each layer; set by a kernel set."""
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Same switch as the transformers models, so the harness treats every model alike."""
        self.checkpointing = True
        self.checkpoint_kwargs = {k: v for k, v in (gradient_checkpointing_kwargs or {}).items()
                                  if k != "use_reentrant"}

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> LMOutput:
        logits = self.lm_head(self.hidden_states(input_ids))
        loss = None
        if labels is not None:
            # Next-token prediction: position t predicts token t+1, as the transformers causal LMs do.
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return LMOutput(loss, logits)

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Final-norm output, the LM head's input."""
        seq_len = input_ids.shape[1]
        positions = torch.arange(seq_len, device=input_ids.device)
        x = self.tok_emb(input_ids) + self.pos_emb(positions)
        mask = nn.Transformer.generate_square_subsequent_mask(seq_len, device=input_ids.device, dtype=x.dtype)
        for layer in self.encoder.layers:
            run = layer if self.add_norm is None else partial(self._fused_layer, layer)
            if self.checkpointing and self.training:
                x = checkpoint(run, x, mask, None, True, use_reentrant=False, **self.checkpoint_kwargs)
            else:
                x = run(x, mask, None, True)
        return self.norm(x)

    def _fused_layer(self, layer: nn.TransformerEncoderLayer, x: torch.Tensor, mask: torch.Tensor,
                     padding_mask: None, is_causal: bool) -> torch.Tensor:
        """A pre-norm encoder layer with `x + attention` and norm2 done by one fused kernel."""
        attention = layer._sa_block(layer.norm1(x), mask, None, is_causal=is_causal)
        normed, residual = self.add_norm(attention, x, layer.norm2.weight, layer.norm2.bias, layer.norm2.eps,
                                         rms=False)
        return residual + layer._ff_block(normed)

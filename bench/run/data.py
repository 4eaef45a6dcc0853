"""Training batches: seeded synthetic tokens, a seeded Markov corpus, or windows of a local text file.

Batches are built before the measured window and cycled, so data preparation never shows up in
step times: lmbench measures the training step, not the input pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lmbench.models.registry import ModelSpec

#: Micro-batches staged on the device and cycled through; enough to defeat caching, small in memory.
POOL_SIZE = 16
#: Share of positions masked for the MLM objective (Devlin et al. 2019).
MLM_MASK_PROB = 0.15
#: Size of the BPE vocabulary trained on a text file, capped by the model's vocabulary.
BPE_VOCAB = 8192


class DataError(ValueError):
    """The data source cannot feed this configuration (file too short, vocabulary too large)."""


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor
    labels: torch.Tensor


def tokenize_file(path: str | Path, *, tokenizer: str, vocab_limit: int) -> torch.Tensor:
    """Token ids of a UTF-8 text file: raw bytes, or a byte-level BPE trained on the file itself."""
    raw = Path(path).read_bytes()
    if tokenizer == "byte":
        return torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()
    from tokenizers import ByteLevelBPETokenizer

    text = raw.decode("utf-8", errors="replace")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(text.splitlines(), vocab_size=min(BPE_VOCAB, vocab_limit), show_progress=False)
    return torch.tensor(bpe.encode(text).ids, dtype=torch.long)


#: Successors per token of the built-in Markov corpus: its entropy is at most log(4) nats per token,
#: far below log(vocabulary), so a model's loss falls visibly within tens of steps.
MARKOV_BRANCHING = 4
#: The Markov chain uses at most this many distinct tokens, so a small model learns it quickly.
MARKOV_STATES = 512


def markov_batches(*, vocab_size: int, batch_size: int, seq_len: int, count: int, gen: torch.Generator
                   ) -> list[torch.Tensor]:
    """Token sequences from a seeded sparse Markov chain: learnable structure, unlike uniform tokens."""
    states = min(vocab_size, MARKOV_STATES)
    successors = torch.randint(0, states, (states, MARKOV_BRANCHING), generator=gen)
    weights = torch.rand(states, MARKOV_BRANCHING, generator=gen) + 0.1
    out = []
    for _ in range(count):
        ids = torch.empty(batch_size, seq_len, dtype=torch.long)
        ids[:, 0] = torch.randint(0, states, (batch_size,), generator=gen)
        for t in range(1, seq_len):
            prev = ids[:, t - 1]
            choice = torch.multinomial(weights[prev], 1, generator=gen).squeeze(1)
            ids[:, t] = successors[prev, choice]
        out.append(ids)
    return out


def make_batches(*, spec: ModelSpec, batch_size: int, seq_len: int, data: str, tokenizer: str, seed: int,
                 count: int, device: torch.device) -> list[Batch]:
    """`count` micro-batches (seeded, reproducible) for the model's objective, on `device`."""
    gen = torch.Generator().manual_seed(seed)
    if data == "synthetic":
        ids = [torch.randint(0, spec.vocab_size, (batch_size, seq_len), generator=gen) for _ in range(count)]
    elif data == "markov":
        ids = markov_batches(vocab_size=spec.vocab_size, batch_size=batch_size, seq_len=seq_len, count=count,
                             gen=gen)
    else:
        stream = tokenize_file(data, tokenizer=tokenizer, vocab_limit=spec.vocab_size)
        if stream.numel() < seq_len + 1:
            raise DataError(f"data={data!r} holds {stream.numel()} tokens, fewer than seq_len+1={seq_len + 1}")
        if int(stream.max()) >= spec.vocab_size:
            raise DataError(f"data={data!r} has token ids up to {int(stream.max())}, beyond the "
                            f"{spec.vocab_size}-token vocabulary of {spec.name}")
        ids = []
        for _ in range(count):
            starts = torch.randint(0, stream.numel() - seq_len, (batch_size,), generator=gen)
            ids.append(torch.stack([stream[s:s + seq_len] for s in starts.tolist()]))
    batches = [_for_objective(x, spec, gen) for x in ids]
    return [Batch(b.input_ids.to(device), b.labels.to(device)) for b in batches]


def _for_objective(ids: torch.Tensor, spec: ModelSpec, gen: torch.Generator) -> Batch:
    if spec.objective == "causal-lm":
        # transformers' causal LMs (and ours) shift labels inside the loss.
        return Batch(ids, ids.clone())
    masked = torch.rand(ids.shape, generator=gen) < MLM_MASK_PROB
    labels = torch.where(masked, ids, torch.full_like(ids, -100))
    mask_id = spec.vocab_size - 1
    return Batch(torch.where(masked, torch.full_like(ids, mask_id), ids), labels)

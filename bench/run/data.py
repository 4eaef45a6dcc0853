"""Training batches: seeded synthetic tokens, a seeded Markov corpus, or windows of a local text file.

Batches are built before the measured window and cycled, so data preparation never shows up in
step times: lmbench measures the training step, not the input pipeline. A run that evaluates
held-out quality builds every micro-batch it will train on instead (none repeats), since a held-out
loss after cycling a few batches measures memorisation.

Held-out data: the last `val_frac` of a text file's tokens (training windows never reach into it),
or for `markov` a separate stream of sequences from the same chain. Uniform synthetic tokens have
nothing to learn and no held-out set.

Every draw reads its generator row after row, one micro-batch after another, so a pool's first micro-batches are the
same whatever its size (a time-to-target run's longer pool starts with a throughput run's batches) and its rows the
same whatever micro-batches they are grouped into (batch 8 x grad_accum 2 trains on batch 16 x 1's sequences). A
masked LM's masks come from a generator of their own, by the same rule.
"""

from __future__ import annotations

import functools
import hashlib
import math
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
#: Most memory the batches of a run that never repeats a batch may take (input ids, and a masked LM's labels, int64).
DISTINCT_POOL_BYTES = 4 * 2**30
#: Tokens of the Markov walks run side by side (their ids and uniforms take 12 bytes a token: 48 MiB).
MARKOV_WALK_TOKENS = 1 << 22
#: Which draws a seed makes, recorded in every record's environment (`data_draw`). Raise it whenever one seed comes
#: to draw other sequences, masks or held-out data: a configuration key names what is trained, not which tokens, so
#: the losses of one key drawn two ways would be compared as one. 2: walks and masks row-major, masks from a
#: generator of their own, held-out streams from derived_seed (6f28abc); 1 (or unsaid): before.
DRAW_VERSION = 2


def derived_seed(seed: int, stream: str) -> int:
    """The seed of one named stream of a run's random draws (the held-out set, masks, a data-parallel replica's
    dropout), apart from `seed`'s own and from each other's. A CPU generator (mt19937) keeps only the low 32 bits of
    its seed, so the held-out stream's `seed + 2**40` drew `seed`'s very numbers: a hash, not an offset."""
    digest = hashlib.blake2b(f"{seed}/{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class DataError(ValueError):
    """The data source cannot feed this configuration (file too short, vocabulary too large)."""


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor
    labels: torch.Tensor


@functools.lru_cache(maxsize=2)
def tokenize_file(path: str | Path, *, tokenizer: str, vocab_limit: int) -> torch.Tensor:
    """Token ids of a UTF-8 text file: raw bytes, or a byte-level BPE trained on the file itself.

    Cached: training batches and held-out batches read one tokenization (BPE training takes seconds).
    Callers must not modify the tensor.
    """
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


def token_ids(spec: ModelSpec) -> int:
    """How many token ids the data may use: the vocabulary, less a masked LM's last id, its mask token (tiny-bert-mlm's
    511 was also a Markov state and a BPE token: a masked position and a real token 511 read alike)."""
    return spec.vocab_size - (spec.objective == "mlm")


def markov_chain(vocab_size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(successors, weights) of a seeded sparse Markov chain: MARKOV_BRANCHING successors per state."""
    states = min(vocab_size, MARKOV_STATES)
    successors = torch.randint(0, states, (states, MARKOV_BRANCHING), generator=gen)
    weights = torch.rand(states, MARKOV_BRANCHING, generator=gen) + 0.1
    return successors, weights


def markov_batches(*, vocab_size: int, batch_size: int, seq_len: int, count: int, gen: torch.Generator,
                   chain: tuple[torch.Tensor, torch.Tensor] | None = None, rows: slice | None = None
                   ) -> list[torch.Tensor]:
    """Token sequences from a seeded sparse Markov chain: learnable structure, unlike uniform tokens.

    The chain is drawn from `gen` first unless given (held-out sequences reuse the training chain). With `rows`,
    each micro-batch is drawn whole and those rows of it kept.
    """
    successors, weights = chain or markov_chain(vocab_size, gen)
    cdf = weights.cumsum(1)
    cdf = cdf / cdf[:, -1:]
    # One uniform a token, row after row: a row's first picks its start state, the others its successors, so a
    # row's sequence depends only on its place in the stream (drawn column-wise, a start state per row then a
    # position of every row, batch 8 x 2 trained on other sequences than 16 x 1). The walks of up to
    # MARKOV_WALK_TOKENS then run side by side, a vectorised step a position choosing each successor by the inverse
    # of the weights' CDF, and only `rows` of them are kept: a multinomial draw a position and micro-batch took
    # ~25 s of staging for gpt2-124m's 1,332 steps of 16 x 1024.
    per_walk = max(1, MARKOV_WALK_TOKENS // max(1, batch_size * seq_len))
    out: list[torch.Tensor] = []
    for first in range(0, count, per_walk):
        uniforms = torch.rand((min(count, first + per_walk) - first) * batch_size, seq_len, generator=gen)
        ids = _walk(successors, cdf, uniforms)
        out += [x if rows is None else x[rows].clone() for x in ids.split(batch_size)]
    return out


def _walk(successors: torch.Tensor, cdf: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Walks of the chain, a row of `uniforms` each: its first column picks the start state, each next one the
    successor whose CDF interval holds it."""
    states = successors.shape[0]
    ids = torch.empty(uniforms.shape, dtype=torch.long)
    ids[:, 0] = (uniforms[:, 0] * states).long().clamp_(max=states - 1)
    for t in range(1, ids.shape[1]):
        prev = ids[:, t - 1]
        choice = (uniforms[:, t, None] >= cdf[prev]).sum(1).clamp_(max=successors.shape[1] - 1)
        ids[:, t] = successors[prev, choice]
    return ids


def split_file(data: str, *, spec: ModelSpec, tokenizer: str, val_frac: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(training tokens, held-out tokens) of a text file: the held-out split is its last floor(N * val_frac)."""
    stream = tokenize_file(data, tokenizer=tokenizer, vocab_limit=token_ids(spec))
    if stream.numel() and int(stream.max()) >= spec.vocab_size:
        raise DataError(f"data={data!r} has token ids up to {int(stream.max())}, beyond the "
                        f"{spec.vocab_size}-token vocabulary of {spec.name}")
    cut = stream.numel() - math.floor(stream.numel() * val_frac)
    return stream[:cut], stream[cut:]


def make_batches(*, spec: ModelSpec, batch_size: int, seq_len: int, data: str, tokenizer: str, seed: int,
                 count: int, device: torch.device, val_frac: float = 0.0, rows: slice | None = None
                 ) -> list[Batch]:
    """`count` micro-batches (seeded, reproducible) for the model's objective, on `device`.

    Windows of a text file are drawn from its first 1 - val_frac of tokens only. With `rows`, each micro-batch
    is drawn whole (its ids and masks) and only those rows of it are kept (a rank's slice of the global batch; the
    rest never reaches the device). A causal LM's labels are its input ids, one tensor (nothing writes either).
    """
    held = batch_size if rows is None else len(range(batch_size)[rows])
    need = count * held * seq_len * (1 if spec.objective == "causal-lm" else 2) * 8
    if need > DISTINCT_POOL_BYTES:
        raise DataError(f"{count} distinct micro-batches of {batch_size}x{seq_len} tokens take {need / 2**30:.1f} GiB, "
                        f"more than the {DISTINCT_POOL_BYTES / 2**30:.0f} GiB lmbench stages; lower max_steps or "
                        "the batch size")
    gen = torch.Generator().manual_seed(seed)
    def cut(x: torch.Tensor) -> torch.Tensor:
        return x if rows is None else x[rows].clone()

    if data == "synthetic":
        ids = [cut(torch.randint(0, token_ids(spec), (batch_size, seq_len), generator=gen)) for _ in range(count)]
    elif data == "markov":
        ids = markov_batches(vocab_size=token_ids(spec), batch_size=batch_size, seq_len=seq_len, count=count,
                             gen=gen, rows=rows)
    else:
        stream, _ = split_file(data, spec=spec, tokenizer=tokenizer, val_frac=val_frac)
        if stream.numel() < seq_len + 1:
            held = f" outside its held-out split (val_frac={val_frac:g})" if val_frac else ""
            raise DataError(f"data={data!r} holds {stream.numel()} tokens{held}, fewer than seq_len+1={seq_len + 1}")
        offsets = torch.arange(seq_len)
        ids = [cut(stream[torch.randint(0, stream.numel() - seq_len, (batch_size,), generator=gen)[:, None] + offsets])
               for _ in range(count)]
    if spec.objective == "causal-lm":
        return [_on(Batch(x, x), device) for x in ids]
    masks = torch.Generator().manual_seed(derived_seed(seed, "masks"))
    return [_on(_masked(x, spec, cut(torch.rand(batch_size, seq_len, generator=masks)) < MLM_MASK_PROB), device)
            for x in ids]


def heldout_batches(*, spec: ModelSpec, batch_size: int, seq_len: int, data: str, tokenizer: str, seed: int,
                    eval_tokens: int, val_frac: float, device: torch.device, shard: int = 0, shards: int = 1
                    ) -> list[Batch]:
    """Data-parallel replica `shard`'s part of the held-out set, in micro-batches of `batch_size`, on `device`.

    The set: ceil(eval_tokens / seq_len) sequences. A text file gives consecutive non-overlapping windows from the
    start of its held-out split (as many as it holds, at least one); `markov` gives fresh sequences of the training
    chain. MLM masks are seeded apart from training, and the same at every evaluation. Each of `shards` replicas
    takes the next ceil(N / shards) sequences of it (the sums are all-reduced: one evaluation of the set over the
    job, not one a rank); a replica left fewer is padded with sequences whose labels are all ignored, so every rank
    runs as many forwards of the same shapes (FSDP gathers its parameters in each, DDP may sync buffers).
    """
    if data == "synthetic":
        raise DataError("data=synthetic (uniform random tokens) has no held-out set; use data=markov or data=PATH")
    wanted = max(1, math.ceil(eval_tokens / seq_len))
    if data == "markov":
        chain = markov_chain(token_ids(spec), torch.Generator().manual_seed(seed))
        ids = torch.cat(markov_batches(vocab_size=token_ids(spec), batch_size=wanted, seq_len=seq_len, count=1,
                                       gen=torch.Generator().manual_seed(derived_seed(seed, "held-out")),
                                       chain=chain))
    else:
        _, heldout = split_file(data, spec=spec, tokenizer=tokenizer, val_frac=val_frac)
        windows = min(wanted, heldout.numel() // seq_len)
        if windows == 0:
            raise DataError(f"data={data!r}: the held-out split (val_frac={val_frac:g}) holds {heldout.numel()} "
                            f"tokens, fewer than one window of seq_len={seq_len}; raise val_frac or use a longer file")
        ids = heldout[:windows * seq_len].view(windows, seq_len)
    whole = Batch(ids, ids)
    if spec.objective != "causal-lm":
        masks = torch.Generator().manual_seed(derived_seed(seed, "held-out masks"))
        whole = _masked(ids, spec, torch.rand(ids.shape, generator=masks) < MLM_MASK_PROB)
    share = math.ceil(ids.shape[0] / shards)
    start = min(ids.shape[0], shard * share)
    mine = whole.input_ids[start:start + share]
    part = Batch(mine, mine if whole.labels is whole.input_ids else whole.labels[start:start + share])
    if part.input_ids.shape[0] < share:
        pad = share - part.input_ids.shape[0]
        part = Batch(torch.cat([part.input_ids, ids.new_zeros(pad, seq_len)]),
                     torch.cat([part.labels, ids.new_full((pad, seq_len), -100)]))
    if part.labels is part.input_ids:
        return [_on(Batch(x, x), device) for x in part.input_ids.split(batch_size)]
    return [_on(Batch(x, y), device) for x, y in zip(part.input_ids.split(batch_size), part.labels.split(batch_size))]


def _masked(ids: torch.Tensor, spec: ModelSpec, masked: torch.Tensor) -> Batch:
    """A masked LM's batch: the `masked` positions' ids replaced by the mask token, and only they scored."""
    labels = torch.where(masked, ids, torch.full_like(ids, -100))
    mask_id = spec.vocab_size - 1
    return Batch(torch.where(masked, torch.full_like(ids, mask_id), ids), labels)


def _on(batch: Batch, device: torch.device) -> Batch:
    """`batch` on `device`, its labels still its input ids where they were (copied once)."""
    ids = batch.input_ids.to(device)
    return Batch(ids, ids if batch.labels is batch.input_ids else batch.labels.to(device))

import pytest
import torch

from lmbench.models.registry import MODELS
from lmbench.run.data import DataError, make_batches, markov_chain, tokenize_file

CPU = torch.device("cpu")


def test_synthetic_batches_are_seeded_and_in_vocabulary():
    spec = MODELS["tiny-gpt2"]
    a = make_batches(spec=spec, batch_size=2, seq_len=8, data="synthetic", tokenizer="byte", seed=3, count=2,
                     device=CPU)
    b = make_batches(spec=spec, batch_size=2, seq_len=8, data="synthetic", tokenizer="byte", seed=3, count=2,
                     device=CPU)
    assert all(torch.equal(x.input_ids, y.input_ids) for x, y in zip(a, b))
    assert a[0].input_ids.shape == (2, 8) and int(a[0].input_ids.max()) < spec.vocab_size
    assert torch.equal(a[0].labels, a[0].input_ids)


def test_mlm_masks_about_fifteen_percent_and_ignores_the_rest():
    spec = MODELS["tiny-bert-mlm"]
    (batch,) = make_batches(spec=spec, batch_size=16, seq_len=128, data="synthetic", tokenizer="byte", seed=0,
                            count=1, device=CPU)
    masked = batch.labels != -100
    assert 0.12 < masked.float().mean().item() < 0.18
    assert bool((batch.input_ids[masked] == spec.vocab_size - 1).all())


def test_text_file_byte_and_bpe(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("hello world, hello benchmark\n" * 50)
    ids = tokenize_file(path, tokenizer="byte", vocab_limit=512)
    assert ids[:5].tolist() == list(b"hello")
    bpe = tokenize_file(path, tokenizer="bpe", vocab_limit=300)
    assert 0 < bpe.numel() < ids.numel() and int(bpe.max()) < 300
    batches = make_batches(spec=MODELS["tiny-gpt2"], batch_size=2, seq_len=16, data=str(path), tokenizer="byte",
                           seed=0, count=1, device=CPU)
    assert batches[0].input_ids.shape == (2, 16)


def test_too_short_file_is_a_data_error(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("tiny")
    with pytest.raises(DataError, match=r"holds 4 tokens, fewer than seq_len\+1=33"):
        make_batches(spec=MODELS["tiny-gpt2"], batch_size=1, seq_len=32, data=str(path), tokenizer="byte", seed=0,
                     count=1, device=CPU)


def test_data_parallel_ranks_sample_one_markov_corpus():
    spec = MODELS["tiny-gpt2"]
    successors, _ = markov_chain(spec.vocab_size, torch.Generator().manual_seed(0))

    def transitions_in_chain(batches) -> bool:
        ids = torch.cat([b.input_ids for b in batches])
        allowed = (successors[ids[:, :-1]] == ids[:, 1:, None]).any(-1)
        return bool(allowed.all())

    def rank(chain_seed):
        return make_batches(spec=spec, batch_size=4, seq_len=32, data="markov", tokenizer="byte", seed=1000,
                            count=2, device=torch.device("cpu"), chain_seed=chain_seed)

    # Rank 1 (seed 0 + 1000) draws its own sequences of the chain seed 0 defines, not a chain of its own.
    assert transitions_in_chain(rank(0))
    assert not transitions_in_chain(rank(None))
    assert not torch.equal(rank(0)[0].input_ids, make_batches(
        spec=spec, batch_size=4, seq_len=32, data="markov", tokenizer="byte", seed=0, count=1,
        device=torch.device("cpu"))[0].input_ids)

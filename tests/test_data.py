import pytest
import torch

from lmbench.models.registry import MODELS
from lmbench.run.data import DataError, make_batches, tokenize_file

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


def test_a_corpus_that_cannot_feed_a_configuration_is_refused_before_any_worker(tmp_path):
    """A binary file ran as an ok row (raw bytes under tokenizer=byte, replacement characters under bpe), and a file
    too short for one sequence, or a held-out split too short for one window, failed inside a worker (exit 0, a
    worker's start-up spent) (review 2026-11-27): the first is bad input, the others a conflict of the row."""
    from lmbench.errors import ConfigError
    from lmbench.plan.config import Config

    binary = tmp_path / "weights.bin"
    binary.write_bytes(b"text at first \xff\xfe then not")
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte 14: b'\\xff'\)"):
        Config(model="tiny-gpt2", data=str(binary))
    cut = tmp_path / "cut.txt"
    cut.write_bytes("caf\u00e9".encode()[:-1])  # ends inside its last character
    with pytest.raises(ConfigError, match=r"ends inside a character, at byte 4"):
        Config(model="tiny-gpt2", data=str(cut))
    text = tmp_path / "short.txt"
    text.write_text("x" * 100)  # 90 tokens to train on, 10 held out (val_frac 0.1)
    assert Config(model="tiny-gpt2", data=str(text), seq_len=89).conflict() is None
    assert "holds 90 tokens (a byte each) outside its held-out split (val_frac=0.1), fewer than one sequence of " \
           "seq_len+1=91" in Config(model="tiny-gpt2", data=str(text), seq_len=90).conflict()
    bpe = Config(model="tiny-gpt2", data=str(text), seq_len=90, tokenizer="bpe")
    assert "at most 90 tokens (bpe)" in bpe.conflict()
    held = Config(model="tiny-gpt2", data=str(text), seq_len=16, eval_every=1).conflict()
    assert held.endswith("holds 10 tokens (a byte each), fewer than one window of seq_len=16; raise val_frac or use a "
                         "longer file")
    assert Config(model="tiny-gpt2", data=str(text), seq_len=10, eval_every=1).conflict() is None


def test_data_parallel_ranks_take_their_slices_of_one_global_batch():
    spec = MODELS["tiny-bert-mlm"]  # masks drawn with the batch: a slice keeps its rows' masks

    def draw(rows=None):
        return make_batches(spec=spec, batch_size=8, seq_len=32, data="markov", tokenizer="byte", seed=3, count=2,
                            device=torch.device("cpu"), rows=rows)

    whole = draw()
    for rank in (0, 1):
        part = draw(slice(4 * rank, 4 * rank + 4))
        for mine, full in zip(part, whole):
            assert mine.input_ids.shape == (4, 32)
            assert torch.equal(mine.input_ids, full.input_ids[4 * rank:4 * rank + 4])
            assert torch.equal(mine.labels, full.labels[4 * rank:4 * rank + 4])


@pytest.mark.parametrize("data", ["synthetic", "markov"])
def test_a_causal_rank_holds_only_its_rows_and_they_are_the_global_batchs(data):
    spec = MODELS["tiny-gpt2"]
    kwargs = dict(spec=spec, seq_len=8, data=data, tokenizer="byte", seed=5, device=torch.device("cpu"))
    whole = make_batches(batch_size=8, count=3, **kwargs)
    part = make_batches(batch_size=8, count=3, rows=slice(2, 4), **kwargs)
    assert all(torch.equal(p.input_ids, w.input_ids[2:4]) for p, w in zip(part, whole))
    # The pool guard counts the rows a rank holds: 200 global batches of 512 x 4096 tokens would be 6.7 GB, one
    # rank's row of each 13 MB (drawn a batch at a time, cut at once).
    big = dict(spec=spec, seq_len=4096, data="synthetic", tokenizer="byte", seed=0, device=torch.device("cpu"),
               count=200, batch_size=512)
    with pytest.raises(DataError, match="distinct micro-batches"):
        make_batches(rows=slice(0, 512), **big)
    held = make_batches(rows=slice(0, 1), **big)
    assert len(held) == 200 and held[0].input_ids.shape == (1, 4096) and held[0].input_ids.is_contiguous()


def test_a_masked_lm_s_mask_token_is_no_data_token(tmp_path):
    """tiny-bert-mlm's mask id 511 was also a Markov state and a BPE token (17 unmasked 511s in 10,240 tokens):
    a masked position and a real token read alike (review 2026-11-27)."""
    spec = MODELS["tiny-bert-mlm"]
    mask = spec.vocab_size - 1
    markov = make_batches(spec=spec, batch_size=16, seq_len=64, data="markov", tokenizer="byte", seed=1, count=10,
                          device=CPU)
    unmasked = sum(int(((b.input_ids == mask) & (b.labels == -100)).sum()) for b in markov)
    masked_ids = torch.cat([b.labels[b.labels != -100] for b in markov])
    assert unmasked == 0 and int(masked_ids.max()) < mask
    # A causal LM keeps every id (its data unchanged).
    gpt2 = make_batches(spec=MODELS["tiny-gpt2"], batch_size=16, seq_len=64, data="markov", tokenizer="byte", seed=1,
                        count=10, device=CPU)
    assert int(max(b.input_ids.max() for b in gpt2)) == MODELS["tiny-gpt2"].vocab_size - 1


def test_markov_walks_follow_the_chains_weights_whatever_the_count_and_walk_size(monkeypatch):
    """The vectorised walk draws each successor with its weight's share (empirical frequencies over 200k
    transitions), the first micro-batches are the same whatever `count` is, and running the walks side by side in
    smaller groups changes no token."""
    from lmbench.run import data
    from lmbench.run.data import markov_batches, markov_chain

    chain = markov_chain(16, torch.Generator().manual_seed(5))
    successors, weights = chain

    def draw(count, seed=0):
        return markov_batches(vocab_size=16, batch_size=8, seq_len=101, count=count, chain=chain,
                              gen=torch.Generator().manual_seed(seed))

    ids = torch.cat(draw(250))
    prev, nxt = ids[:, :-1].flatten(), ids[:, 1:].flatten()
    states = successors.shape[0]
    seen = torch.zeros(states, states).index_put_((prev, nxt), torch.ones(prev.numel()), accumulate=True)
    expected = torch.zeros(states, states).index_put_(
        (torch.arange(states).repeat_interleave(successors.shape[1]), successors.flatten()), weights.flatten(),
        accumulate=True)
    expected = expected / expected.sum(1, keepdim=True)
    visits = seen.sum(1, keepdim=True)
    frequencies = seen / visits.clamp(min=1)
    # Within 5 standard errors of each state's binomial share (visits differ by state: the chain's stationary law).
    sigma = (expected * (1 - expected) / visits.clamp(min=1)).sqrt()
    assert bool(((frequencies - expected).abs() <= 5 * sigma + 1e-9).all())
    assert int((visits > 10_000).sum()) >= 4
    assert bool(((seen > 0) <= (expected > 0)).all())  # never a transition the chain does not have
    short = draw(3)
    assert all(torch.equal(a, b) for a, b in zip(short, draw(250)))
    monkeypatch.setattr(data, "MARKOV_WALK_TOKENS", 8 * 101 * 2)  # two micro-batches a walk
    assert all(torch.equal(a, b) for a, b in zip(draw(7), draw(250)))

import pytest
import torch

from lmbench.models.registry import MODELS
from lmbench.run.data import DataError, heldout_batches, make_batches, tokenize_file

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
    # The pool guard counts the rows a rank holds: 300 global batches of 512 x 4096 tokens would be 5.0 GB (a causal
    # LM's labels are its ids), one rank's row of each 9.8 MB (drawn a batch at a time, cut at once).
    big = dict(spec=spec, seq_len=4096, data="synthetic", tokenizer="byte", seed=0, device=torch.device("cpu"),
               count=300, batch_size=512)
    with pytest.raises(DataError, match="distinct micro-batches"):
        make_batches(rows=slice(0, 512), **big)
    held = make_batches(rows=slice(0, 1), **big)
    assert len(held) == 300 and held[0].input_ids.shape == (1, 4096) and held[0].input_ids.is_contiguous()


@pytest.mark.parametrize("data", ["markov", "synthetic"])
def test_a_masked_lm_s_mask_token_is_no_data_token(data):
    """tiny-bert-mlm's mask id 511 was also a Markov state and a BPE token (17 unmasked 511s in 10,240 tokens):
    a masked position and a real token read alike (review 2026-11-27); synthetic tokens still drew it (57 unmasked
    511s in 32,768 tokens, a reviewer)."""
    spec = MODELS["tiny-bert-mlm"]
    mask = spec.vocab_size - 1
    batches = make_batches(spec=spec, batch_size=16, seq_len=64, data=data, tokenizer="byte", seed=1, count=10,
                           device=CPU)
    unmasked = sum(int(((b.input_ids == mask) & (b.labels == -100)).sum()) for b in batches)
    masked_ids = torch.cat([b.labels[b.labels != -100] for b in batches])
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


@pytest.mark.parametrize("data", ["synthetic", "markov"])
def test_a_longer_pool_starts_with_a_shorter_pools_micro_batches_masks_and_all(data):
    """A masked LM's masks were drawn after every id of its pool, so a time-to-target run's longer pool (its
    max_steps) masked other positions than a throughput run's from the first micro-batch on (73% of the first
    micro-batch's masked positions agreed between pools of 4 and 8, a reviewer). A rank's slice keeps its rows'."""
    spec = MODELS["tiny-bert-mlm"]

    def draw(count, rows=None):
        return make_batches(spec=spec, batch_size=4, seq_len=32, data=data, tokenizer="byte", seed=0, count=count,
                            device=CPU, rows=rows)

    short, long = draw(4), draw(8)
    for a, b in zip(short, long):
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
    for a, b in zip(draw(4, slice(2, 4)), long):
        assert torch.equal(a.input_ids, b.input_ids[2:4]) and torch.equal(a.labels, b.labels[2:4])


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-bert-mlm"])
@pytest.mark.parametrize("data", ["synthetic", "markov", "text"])
def test_a_pools_rows_are_the_same_whatever_micro_batches_group_them(model, data, tmp_path):
    """Markov walks drew their start states and uniforms a micro-batch at a time, column-wise, so batch 8 x
    grad_accum 2 trained on other sequences than 16 x 1 (a reviewer); each row now reads the stream in turn."""
    if data == "text":
        data = str(tmp_path / "c.txt")
        (tmp_path / "c.txt").write_text("the quick brown fox jumps over the lazy dog; " * 40)
    kwargs = dict(spec=MODELS[model], seq_len=24, data=data, tokenizer="byte", seed=2, device=CPU)

    def rows(batch_size, count):
        batches = make_batches(batch_size=batch_size, count=count, **kwargs)
        return torch.cat([b.input_ids for b in batches]), torch.cat([b.labels for b in batches])

    halves, whole = rows(8, 4), rows(16, 2)
    assert torch.equal(halves[0], whole[0]) and torch.equal(halves[1], whole[1])


def test_a_causal_lm_s_labels_are_its_input_ids_staged_once():
    """The labels were a copy of the ids, twice the bytes staged on the device for one tensor's content; nothing
    writes either (the losses shift and pad copies, a CUDA graph copies both into buffers of its own)."""
    spec = MODELS["tiny-gpt2"]
    pool = make_batches(spec=spec, batch_size=4, seq_len=16, data="markov", tokenizer="byte", seed=0, count=3,
                        device=CPU, rows=slice(0, 2))
    held = heldout_batches(spec=spec, batch_size=2, seq_len=16, data="markov", tokenizer="byte", seed=0,
                           eval_tokens=64, val_frac=0.1, device=CPU)
    assert all(b.labels is b.input_ids for b in pool + held)
    mlm = make_batches(spec=MODELS["tiny-bert-mlm"], batch_size=4, seq_len=16, data="markov", tokenizer="byte",
                       seed=0, count=1, device=CPU)
    assert mlm[0].labels is not mlm[0].input_ids


def test_the_held_out_markov_stream_shares_no_sequence_with_training():
    """The held-out generator was seeded with seed + 2**40, and a CPU generator (mt19937) keeps a seed's low 32
    bits: it drew the training generator's own numbers, so held-out walks replayed training's (row for row once
    each row reads one uniform a token: 128 of 256 held-out rows were training rows, half their 8-token runs).
    Fresh walks of a 4-way chain share a few runs by chance (2 of 1,024 here)."""
    spec = MODELS["tiny-gpt2"]
    train = make_batches(spec=spec, batch_size=16, seq_len=32, data="markov", tokenizer="byte", seed=0, count=32,
                         device=CPU)
    held = heldout_batches(spec=spec, batch_size=64, seq_len=32, data="markov", tokenizer="byte", seed=0,
                           eval_tokens=256 * 32, val_frac=0.1, device=CPU)

    def runs(batches):
        ids = torch.cat([b.input_ids for b in batches])
        return {tuple(w) for w in ids.unfold(1, 8, 8).reshape(-1, 8).tolist()}

    seen, heldout = runs(train), runs(held)
    assert len(heldout & seen) < len(heldout) // 100, (len(heldout & seen), len(heldout))

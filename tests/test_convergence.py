"""Held-out quality: the split, perplexity by hand, evaluations kept out of every measured figure, time to target,
label smoothing in the eager and fused losses."""

import math
import time

import pytest
import torch
import torch.nn.functional as F
from fake_nvml import FakeGpu, FakeNvml
from text_corpus import write_corpus

from lmbench.measure.nvml import NvmlDevice
from lmbench.measure.telemetry import Telemetry
from lmbench.measure.timer import StepTimer
from lmbench.models.registry import MODELS
from lmbench.plan.config import Config
from lmbench.run.convergence import Convergence
from lmbench.run.data import DataError, heldout_batches, make_batches, markov_chain, split_file
from lmbench.run.training import TrainingStep, token_cross_entropy
from lmbench.run.worker import measure

CPU = torch.device("cpu")


def test_held_out_split_is_the_files_last_tokens_and_training_never_reads_them(tmp_path):
    # Training text uses only a-j; the last 10% only k-t: any held-out byte in a batch would show.
    path = tmp_path / "c.txt"
    path.write_bytes(bytes(ord("a") + i % 10 for i in range(9000)) + bytes(ord("k") + i % 10 for i in range(1000)))
    spec = MODELS["tiny-gpt2"]
    train, heldout = split_file(str(path), spec=spec, tokenizer="byte", val_frac=0.1)
    assert (train.numel(), heldout.numel()) == (9000, 1000)
    batches = make_batches(spec=spec, batch_size=8, seq_len=32, data=str(path), tokenizer="byte", seed=0, count=200,
                           device=CPU, val_frac=0.1)
    seen = torch.cat([b.input_ids.flatten() for b in batches])
    assert int(seen.max()) == ord("j") and int(seen.min()) == ord("a")
    held = heldout_batches(spec=spec, batch_size=4, seq_len=32, data=str(path), tokenizer="byte", seed=0,
                           eval_tokens=200, val_frac=0.1, device=CPU)
    ids = torch.cat([b.input_ids for b in held])
    # ceil(200 / 32) = 7 consecutive windows from the start of the split, in batches of 4.
    assert [b.input_ids.shape[0] for b in held] == [4, 3]
    assert torch.equal(ids.flatten(), heldout[:7 * 32])


def test_held_out_markov_stream_follows_the_training_chain_but_is_not_a_training_draw():
    spec = MODELS["tiny-gpt2"]
    held = heldout_batches(spec=spec, batch_size=4, seq_len=16, data="markov", tokenizer="byte", seed=3,
                           eval_tokens=64, val_frac=0.1, device=CPU)
    train = make_batches(spec=spec, batch_size=4, seq_len=16, data="markov", tokenizer="byte", seed=3, count=1,
                         device=CPU)
    successors, _ = markov_chain(spec.vocab_size, torch.Generator().manual_seed(3))
    ids = held[0].input_ids
    assert all(int(b) in successors[int(a)].tolist() for row in ids for a, b in zip(row, row[1:]))
    assert not torch.equal(ids, train[0].input_ids)


def test_synthetic_data_has_no_held_out_set_and_evaluating_it_is_skipped():
    with pytest.raises(DataError, match="no held-out set"):
        heldout_batches(spec=MODELS["tiny-gpt2"], batch_size=1, seq_len=8, data="synthetic", tokenizer="byte", seed=0,
                        eval_tokens=8, val_frac=0.1, device=CPU)
    assert "nothing to learn" in Config(eval_every=5).conflict()


@pytest.mark.parametrize("values, reason", [
    ({"target_loss": 2.0, "max_steps": 100}, "needs eval_every > 0 or eval_every_tokens > 0"),
    ({"eval_every": 5, "eval_every_tokens": 512}, "two schedules of one evaluation: set one of them"),
    ({"target_loss": 2.0, "eval_every": 5, "max_steps": 10}, "must be at least warmup + steps = 25"),
    ({"max_steps": 100}, "needs target_loss or target_ppl"),
    ({"target_loss": 2.0, "target_ppl": 8.0, "eval_every": 5, "max_steps": 100}, "two spellings of one target"),
    ({"label_smoothing": 0.1, "kernels": "liger"}, "passes no label_smoothing"),
    ({"eval_every": 5, "parallel": "pp"},
     "held-out evaluation (eval_every, eval_every_tokens) is not implemented for parallel=pp"),
    ({"label_smoothing": 0.1, "parallel": "tp"}, "label_smoothing is not implemented for parallel=tp"),
])
def test_quality_axes_that_cannot_go_together_are_skipped_rows(values, reason):
    assert reason in Config(data="markov", **values).conflict()


def test_val_frac_splits_a_file_and_means_nothing_for_markov_data(tmp_path):
    """Markov's held-out set is a stream of its own whatever val_frac is, yet val_frac was in its key (two keys, one
    run) and val_frac=0 was refused as 'nothing is held out' (a reviewer)."""
    def key(config: Config) -> str:
        return config.without_foreign_options().key

    markov = Config(data="markov", eval_every=5)
    assert key(markov.replace(val_frac=0.2)) == key(markov)
    assert markov.replace(val_frac=0.0).conflict() is None
    assert markov.replace(eval_every=0, eval_every_tokens=512, val_frac=0.0).conflict() is None
    corpus = write_corpus(tmp_path / "corpus.txt")
    text = Config(data=str(corpus), eval_every=5)
    assert key(text.replace(val_frac=0.2)) != key(text)
    for schedule in ({"eval_every": 5}, {"eval_every_tokens": 512}):
        assert "needs val_frac > 0: nothing is held out" in Config(data=str(corpus), val_frac=0.0,
                                                                      **schedule).conflict()


@pytest.mark.parametrize("values, message", [
    ({"label_smoothing": 1.0}, "label_smoothing=1.0 must be a number in [0, 1)"),
    ({"val_frac": -0.1}, "val_frac=-0.1 must be a number in [0, 1)"),
    ({"eval_every": -1}, "eval_every=-1 must be an integer >= 0"),
    ({"eval_every_tokens": -512}, "eval_every_tokens=-512 must be an integer >= 0"),
    ({"eval_tokens": 0}, "eval_tokens=0 must be a positive integer"),
    ({"target_loss": float("nan")}, "target_loss=nan must be a positive, finite number (0 for no target)"),
    ({"target_ppl": 1.0}, "target_ppl=1.0 must be above 1 (perplexity is at least 1)"),
])
def test_invalid_quality_values_name_the_axis(values, message):
    from lmbench.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        Config(**values)
    assert str(err.value) == message


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-bert-mlm"])
def test_perplexity_is_exp_of_the_mean_cross_entropy_over_counted_positions(model):
    """By hand on the fixed held-out batches: logits from the model, CE summed over the next tokens (causal) or
    the masked positions only (MLM), divided by their count."""
    config = Config(model=model, data="markov", batch_size=2, seq_len=16, eval_every=1, eval_tokens=80, warmup=0,
                    steps=1, device="cpu")
    step = TrainingStep(config, CPU)
    total, count = step.evaluate()
    assert step.model.training
    step.model.eval()
    losses, positions = [], 0
    with torch.no_grad():
        for batch in step.heldout:
            logits = step.model(input_ids=batch.input_ids).logits
            if model == "tiny-gpt2":
                logits, labels = logits[:, :-1], batch.labels[:, 1:]
            else:
                keep = batch.labels != -100
                assert bool((batch.input_ids[keep] == MODELS[model].vocab_size - 1).all())
                logits, labels = logits[keep], batch.labels[keep]
            log_p = torch.log_softmax(logits.double(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
            losses.append(-log_p.sum())
            positions += labels.numel()
    expected = 5 * 15 if model == "tiny-gpt2" else positions
    assert int(count) == positions == expected
    assert float(total) / int(count) == pytest.approx(float(sum(losses)) / positions, rel=1e-6)
    assert math.exp(float(total) / int(count)) == pytest.approx(math.exp(float(sum(losses)) / positions), rel=1e-6)


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-bert-mlm"])
def test_data_parallel_replicas_evaluate_their_shares_of_one_held_out_set(model):
    """Every rank evaluated the whole held-out set and the all-reduced count was world times the positions: a
    scaled-out row's time to target carried a full evaluation a rank (a reviewer). Each replica takes the next
    ceil(N / replicas) sequences; one left fewer is padded with ignored rows, so every rank runs as many forwards of
    the same shapes (FSDP gathers in each)."""
    spec = MODELS[model]
    kwargs = dict(spec=spec, batch_size=2, seq_len=16, data="markov", tokenizer="byte", seed=4, eval_tokens=5 * 16,
                  val_frac=0.1, device=CPU)
    whole = heldout_batches(**kwargs)
    ids, labels = torch.cat([b.input_ids for b in whole]), torch.cat([b.labels for b in whole])
    assert ids.shape == (5, 16)
    for shards, sizes in ((2, [2, 1]), (3, [2])):
        parts = [heldout_batches(shard=shard, shards=shards, **kwargs) for shard in range(shards)]
        assert all([b.input_ids.shape[0] for b in part] == sizes for part in parts)
        got_ids = torch.cat([b.input_ids for part in parts for b in part])
        got_labels = torch.cat([b.labels for part in parts for b in part])
        assert torch.equal(got_ids[:5], ids) and torch.equal(got_labels[:5], labels)
        assert bool((got_labels[5:] == -100).all()) and got_ids.shape[0] == shards * sum(sizes)


DDP_HELD_OUT = """
name = "held-out-ddp"
description = "ddp's held-out evaluation against parallel=none's on the global batch, over gloo"
[defaults]
model = "tiny-gpt2"
data = "markov"
precision = "fp32"
dropout = false
nproc = 2
batch_size = 2
seq_len = 32
steps = 3
warmup = 1
lr = 1e-3
eval_every = 2
eval_tokens = 160
telemetry = false
[matrix]
parallel = ["ddp"]
"""


def test_ddp_evaluates_the_held_out_set_once_over_its_ranks_as_parallel_none_does(tmp_path):
    """Real torchrun, 2 ranks over gloo, against parallel=none on the global batch (its parity reference): the same
    positions counted (5 windows of 31 next tokens; ddp counted each twice) and the same held-out losses, the
    untrained model's and after training, to float rounding."""
    from click.testing import CliRunner

    from lmbench.analyze import results
    from lmbench.cli import cli

    suite = tmp_path / "held.toml"
    suite.write_text(DDP_HELD_OUT)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", "--suite", str(suite), "--out", str(out), "--device", "cpu", "--parity"])
    assert result.exit_code == 0, result.output
    by = {r["config"]["parallel"]: r for r in results.read(out).records}
    none, ddp = by["none"]["metrics"], by["ddp"]["metrics"]
    assert by["none"]["config"]["batch_size"] == 4 and by["ddp"]["status"] == "ok", by["ddp"]["reason"]
    assert none["val_tokens_per_eval"] == ddp["val_tokens_per_eval"] == 5 * 31
    assert ddp["val_loss_initial"] == pytest.approx(none["val_loss_initial"], rel=1e-6)
    assert [p["val_loss"] for p in ddp["val_points"]] == pytest.approx([p["val_loss"] for p in none["val_points"]],
                                                                       rel=1e-5)


def test_evaluations_change_nothing_the_window_measures():
    """Same losses (no random draw, dropout back on), one step time per step, window wall time without the
    evaluations: a run with an evaluation after every step trains exactly like one without."""
    base = Config(model="tiny-gpt2", data="markov", batch_size=2, seq_len=16, warmup=2, steps=6, device="cpu",
                  telemetry=False)
    plain = measure(base)
    evaluated = measure(base.replace(eval_every=1, eval_tokens=64))
    assert plain["losses"] == evaluated["losses"]
    m = evaluated["metrics"]
    assert len(evaluated["step_times_s"]) == 6 and m["eval_count"] == 8  # after each of 8 steps
    # (the untrained model's, before step 1, is val_loss_initial: outside the clocks and eval_time_s)
    assert [p["step"] for p in m["val_points"]] == list(range(1, 9))
    assert m["window_s"] < sum(evaluated["step_times_s"]) + m["eval_time_s"]
    assert "val_loss" not in plain["metrics"]


def test_timer_pause_is_left_out_of_the_window():
    timer = StepTimer(CPU)
    with timer.window():
        with timer.step():
            time.sleep(0.01)
        with timer.paused():
            time.sleep(0.2)
    assert timer.window_s < 0.1 and len(timer.times_s()) == 1


def test_telemetry_pause_leaves_its_energy_and_samples_out():
    # Counter readings: window start, pause start, pause end, window end: 1 J + 2 J of training, 3 J paused.
    gpu = FakeGpu("GPU-a", "x", energy_mj=[1_000, 2_000, 5_000, 7_000])
    t = Telemetry(NvmlDevice.open(uuid=gpu.uuid, nvml=FakeNvml([gpu])), period_s=0.01, min_counter_window_s=0.0)
    with t.window():
        time.sleep(0.03)
        with t.paused():
            time.sleep(0.3)
        time.sleep(0.03)
    assert t.energy() == (pytest.approx(3.0), "counter")
    assert t.duration_s < 0.25
    gaps = [b.t_s - a.t_s for a, b in zip(t.samples, t.samples[1:])]
    assert max(gaps) < 0.2


class FakeClock:
    """Held-out losses and energy readings the test chooses."""

    def __init__(self, losses, energy):
        self.losses, self.energy = list(losses), list(energy)

    def evaluate(self):
        return torch.tensor(self.losses.pop(0) * 10), torch.tensor(10)

    def read_energy_j(self):
        return self.energy.pop(0)


def test_time_to_target_is_the_first_evaluation_that_meets_it_after_the_window():
    config = Config(data="markov", target_ppl=math.exp(2.0), eval_every=10, max_steps=100, warmup=5, steps=20)
    # Initial loss, then after steps 10, 20, 30; energy at start, then around each evaluation.
    clock = FakeClock([5.0, 3.0, 1.9, 1.5], [100.0, 110.0, 111.0, 121.0, 122.0, 132.0, 133.0])
    quality = Convergence(config, evaluate=clock.evaluate, tokens_per_step=512, read_energy_j=clock.read_energy_j)
    quality.start()
    assert quality.initial_loss == 5.0 and quality.target == pytest.approx(2.0)
    for step in (10, 20, 30):
        quality.evaluate(step, device_s=step * 0.01)
    # Reached at step 20, but a run stops only once its throughput window (warmup 5 + steps 20) is over.
    assert quality.finished(25) and not quality.finished(24)
    f = quality.fields()
    assert f["target_status"] == "reached" and f["steps_to_target"] == 20 and f["tokens_to_target"] == 10240
    assert f["device_time_to_target_s"] == pytest.approx(0.2)
    assert f["energy_to_target_j"] == pytest.approx(22.0)  # 122 - 100, the evaluation after step 20 included
    assert f["train_energy_to_target_j"] == pytest.approx(20.0)  # minus the 1 J of each of 2 evaluations
    assert f["time_to_target_s"] >= f["train_time_to_target_s"]
    assert f["val_loss"] == 1.5 and f["val_ppl"] == pytest.approx(math.exp(1.5)) and f["val_loss_best"] == 1.5
    assert f["eval_count"] == 3 and f["val_tokens_per_eval"] == 10


@pytest.mark.parametrize("tokens_per_step, due_after", [
    (512, [2, 4, 6, 8, 10, 12]),  # every 1024 tokens: every other step
    (1024, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]),
    (768, [2, 3, 4, 6, 7, 8, 10, 11, 12]),  # 3,840 tokens after step 5 pass no new multiple of 1024
    (4096, list(range(1, 13))),  # a step that passes four multiples evaluates once
])
def test_eval_every_tokens_evaluates_after_the_step_that_reaches_each_multiple(tokens_per_step, due_after):
    config = Config(data="markov", eval_every_tokens=1024)
    quality = Convergence(config, evaluate=lambda: (torch.tensor(1.0), torch.tensor(1)),
                          tokens_per_step=tokens_per_step)
    assert [step for step in range(1, 13) if quality.due(step)] == due_after


def test_batch_sizes_evaluate_at_the_same_token_counts_with_eval_every_tokens():
    """The grain of time to target is the same for every batch size: in steps, batch 4 would evaluate every 128
    tokens and batch 2 every 64; in tokens both evaluate after 128, 256, ..."""
    base = Config(model="tiny-gpt2", data="markov", seq_len=16, warmup=1, steps=8, device="cpu", telemetry=False,
                  eval_every_tokens=128, eval_tokens=32)
    counts = {}
    for batch in (2, 4):
        points = measure(base.replace(batch_size=batch))["metrics"]["val_points"]
        counts[batch] = [p["tokens"] for p in points]
    # Batch 2 trains 9 x 32 = 288 tokens, batch 4 576: each evaluates at the multiples of 128, then after its last.
    assert counts[2] == [128, 256, 288]
    assert counts[4] == [128, 256, 384, 512, 576]


def test_a_target_not_met_within_max_steps_is_not_reached_with_the_best_loss():
    config = Config(data="markov", target_loss=1.0, eval_every=10, max_steps=30, warmup=5, steps=20)
    clock = FakeClock([5.0, 3.0, 2.5, 2.7], [None] * 7)
    quality = Convergence(config, evaluate=clock.evaluate, tokens_per_step=512, read_energy_j=clock.read_energy_j)
    quality.start()
    for step in (10, 20, 30):
        quality.evaluate(step, device_s=0.0)
    assert quality.finished(30)
    f = quality.fields()
    assert f["target_status"] == "not_reached" and f["time_to_target_s"] is None and f["val_loss_best"] == 2.5
    assert f["energy_to_target_j"] is None


def test_tiny_model_reaches_a_loose_target_on_text_within_bounded_steps(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt")
    config = Config(model="tiny-gpt2", data=str(corpus), batch_size=8, seq_len=64, lr=3e-3, warmup=2, steps=8,
                    eval_every=10, eval_tokens=4096, target_loss=3.3, max_steps=200, device="cpu", telemetry=False)
    m = measure(config)["metrics"]
    assert m["target_status"] == "reached", m["val_points"]
    assert m["val_loss_initial"] > 5.5  # about log(512) untrained
    assert m["steps_to_target"] <= 200 and m["tokens_to_target"] == m["steps_to_target"] * 512
    assert 0 < m["device_time_to_target_s"] <= m["train_time_to_target_s"] <= m["time_to_target_s"]
    assert m["energy_to_target_j"] is None  # no NVML on a CPU


def test_eager_label_smoothing_is_torchs_on_the_models_logits():
    config = Config(model="tiny-gpt2", data="markov", batch_size=2, seq_len=16, warmup=0, steps=1, device="cpu",
                    label_smoothing=0.1)
    step = TrainingStep(config, CPU)
    step.model.eval()  # no dropout: two forward passes give the same logits
    batch = step.batches[0]
    logits = step.model(input_ids=batch.input_ids).logits
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch.labels[:, 1:].reshape(-1),
                               label_smoothing=0.1)
    ours = token_cross_entropy(logits, batch.labels, objective="causal-lm", label_smoothing=0.1)
    torch.testing.assert_close(ours, expected)
    # Smoothing applied, not dropped: it moves the loss by ε x (mean over the vocabulary of -log p - CE), little for an
    # untrained model that favours no token (4e-4 here), so the difference is taken on logits that favour the labels.
    sharp = logits.detach().clone()
    sharp[:, :-1] += 5 * F.one_hot(batch.labels[:, 1:], sharp.shape[-1])
    smoothed = token_cross_entropy(sharp, batch.labels, objective="causal-lm", label_smoothing=0.1)
    torch.testing.assert_close(smoothed, F.cross_entropy(sharp[:, :-1].reshape(-1, sharp.shape[-1]),
                                                         batch.labels[:, 1:].reshape(-1), label_smoothing=0.1))
    assert abs(smoothed.item() - token_cross_entropy(sharp, batch.labels, objective="causal-lm").item()) > 1e-2
    torch.testing.assert_close(step._loss(batch, 0.1), expected)


# The interpreted fused loss runs a program a row: GPT-2 at 2 x 8 tokens runs half the rows of 2 x 16 (one row chunk
# and one vocabulary block either way, as at 16). BERT keeps 2 x 16: it scores only its ~15% masked positions, and at
# 2 x 8 this seed masks none in the second step (a NaN loss, nothing to compare).
@pytest.mark.parametrize(("model", "seq_len"), [("tiny-gpt2", 8), ("tiny-bert-mlm", 16)])
def test_fused_and_eager_training_agree_with_label_smoothing(model, seq_len):
    """Three optimizer steps with label_smoothing=0.1: the Triton fused linear-CE (interpreted on a CPU) against the
    eager logits + F.cross_entropy, loss for loss (so gradients agree too)."""
    base = Config(model=model, data="markov", batch_size=2, seq_len=seq_len, warmup=0, steps=3, device="cpu",
                  label_smoothing=0.1, lr=1e-3)

    def losses(config):
        step = TrainingStep(config, CPU)
        return torch.tensor([step().item() for _ in range(3)])

    eager = losses(base)
    torch.testing.assert_close(losses(base.replace(kernels="triton")), eager, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(eager, losses(base.replace(label_smoothing=0.0)), atol=1e-3)


@pytest.mark.slow
def test_convergence_suite_on_cpu_gives_time_to_target_rows_and_loss_curves(tmp_path):
    """The issue's 'done when': a CPU run of the convergence suite on a small corpus, ranked by time to target,
    and its report with the time-to-target table and the held-out loss plots."""
    from click.testing import CliRunner

    from lmbench.analyze import results
    from lmbench.cli import cli

    corpus = write_corpus(tmp_path / "corpus.txt")
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", "--suite", "convergence", "--device", "cpu", "--out", str(out),
                                      "--set", f"data={corpus}", "--set", "precision=fp32,bf16", "--set",
                                      "batch_size=8", "--set", "target_loss=3.3", "--set", "max_steps=200",
                                      "--set", "eval_tokens=4096", "--set", "telemetry=false",
                                      "--objective", "time-to-target"])
    assert result.exit_code == 0, result.output
    assert "ranked by time to target" in result.output
    records = results.read(out).records
    assert [r["status"] for r in records] == ["ok", "ok"]
    fp32 = next(r for r in records if r["config"]["precision"] == "fp32")["metrics"]
    assert fp32["target_status"] == "reached" and fp32["time_to_target_s"] > 0
    # Which corpus it was: an edited file at the same path shows in compare (its note) and in the record.
    import hashlib

    assert fp32["data_sha256"] == hashlib.sha256(corpus.read_bytes()).hexdigest()
    assert fp32["data_bytes"] == corpus.stat().st_size
    # Its host watched over the run to its target, not only over the window.
    assert fp32["host_to_target_wall_s"] >= fp32["time_to_target_s"] > fp32["window_s"]
    assert fp32["host_other_cpu_cores_to_target"] >= 0
    report = tmp_path / "report"
    assert CliRunner().invoke(cli, ["report", str(out), "--out", str(report)]).exit_code == 0
    md = (report / "report.md").read_text()
    assert "## Time to target (held-out loss)" in md and "| # | precision | target |" in md
    assert "![val_loss_vs_time](plots/val_loss_vs_time.png)" in md
    assert (report / "plots" / "val_loss_vs_tokens.png").exists()


def quality_record(precision, batch, *, time_s, status="reached", parity=None, tps=1000.0, repeat=0, best=2.9):
    config = Config(precision=precision, batch_size=batch, data="markov", eval_every=10, target_loss=3.0,
                    max_steps=100, device="cuda")
    reached = status == "reached"
    points = [{"step": 10, "tokens": 10240, "val_loss": 4.0, "wall_s": 1.0, "train_wall_s": 0.9, "device_s": 0.8,
               "energy_j": 100.0, "train_energy_j": 90.0},
              {"step": 20, "tokens": 20480, "val_loss": best, "wall_s": 2.0, "train_wall_s": 1.8, "device_s": 1.6,
               "energy_j": 200.0, "train_energy_j": 180.0}]
    metrics = {"tokens_per_s": tps, "val_points": points, "val_loss": best, "val_ppl": math.exp(best),
               "val_loss_best": best, "val_loss_initial": 6.2, "target_loss_nats": 3.0, "target_status": status,
               "time_to_target_s": time_s if reached else None, "train_time_to_target_s": 1.8 if reached else None,
               "device_time_to_target_s": 1.6 if reached else None, "energy_to_target_j": 200.0 if reached else None,
               "steps_to_target": 20 if reached else None, "tokens_to_target": 20480 if reached else None,
               "parity": parity}
    return {"schema_version": 1, "suite": "hand", "config_key": config.key, "repeat": repeat,
            "config": config.to_dict(), "status": "ok", "reason": None, "metrics": metrics, "losses": [3.0],
            "step_times_s": [0.1], "env": {}, "warnings": []}


HAND = [quality_record("fp32", 8, time_s=9.0), quality_record("amp-bf16", 8, time_s=4.0, tps=3000.0),
        quality_record("bf16", 8, time_s=None, status="not_reached", best=3.2, tps=4000.0),
        quality_record("amp-bf16", 16, time_s=2.0, parity="diverged", tps=5000.0)]


def test_time_to_target_table_ranks_by_the_objective_exactly():
    from lmbench.analyze import ranking

    table = ranking.section(HAND)["quality"].markdown().splitlines()
    assert table[0] == ("| # | batch_size | precision | target | target nats | steps | tokens | time to target s | "
                        "train time s | device time s | energy J | best val loss nats | final val ppl | tokens/s | "
                        "parity |")
    assert table[2:] == [
        "| 1 | 8 | amp-bf16 | reached | 3 | 20 | 20,480 | 4.00 | 1.80 | 1.60 | 200 | 2.900 | 18.17 | 3,000 | - |",
        "| 2 | 8 | fp32 | reached | 3 | 20 | 20,480 | 9.00 | 1.80 | 1.60 | 200 | 2.900 | 18.17 | 1,000 | - |",
        "| 3 | 8 | bf16 | not_reached | 3 | - | - | - | - | - | - | 3.200 | 24.53 | 4,000 | - |",
        # Fastest to the target, but its parity diverged: last (a drift would rank it there too).
        "| 4 | 16 | amp-bf16 | reached | 3 | 20 | 20,480 | 2.00 | 1.80 | 1.60 | 200 | 2.900 | 18.17 | 5,000 "
        "| diverged |",
    ]
    by_throughput = [s.config["precision"] + str(s.config["batch_size"]) for s in ranking.rank(HAND, "throughput")]
    assert by_throughput == ["bf168", "amp-bf168", "fp328", "amp-bf1616"]
    assert ranking.section([{**HAND[0], "metrics": {"tokens_per_s": 1.0}}]) == {}
    drifted = [HAND[0], {**HAND[1], "metrics": {**HAND[1]["metrics"], "parity": "drift"}}]
    assert [s.config["precision"] for s in ranking.rank(drifted, "time-to-target")] == ["fp32", "amp-bf16"]


def test_a_configuration_that_succeeds_only_sometimes_ranks_after_those_that_always_do():
    from lmbench.analyze import ranking

    sometimes = [quality_record("fp32", 8, time_s=1.0, repeat=0),
                 quality_record("fp32", 8, time_s=None, status="not_reached", repeat=1),
                 quality_record("fp32", 8, time_s=None, status="not_reached", repeat=2)]
    always = [quality_record("amp-bf16", 8, time_s=1.2, repeat=i) for i in range(3)]
    order = [s.config["precision"] for s in ranking.rank(sometimes + always, "time-to-target")]
    assert order == ["amp-bf16", "fp32"]
    # Throughput: 2 of 3 repeats out of memory ranks after 3 of 3 that ran, however fast the 1 that ran.
    ooms = [quality_record("bf16", 8, time_s=1.0, tps=9000.0)] + [
        {**quality_record("bf16", 8, time_s=1.0, repeat=i), "status": "oom", "metrics": None} for i in (1, 2)]
    standings = ranking.rank(ooms + always, "throughput")
    assert [s.config["precision"] for s in standings] == ["amp-bf16", "bf16"]
    assert [s.status_cell() for s in standings] == ["ok", "1 ok, 2 oom"]


def test_held_out_loss_plots_render_with_and_without_curves():
    import matplotlib.pyplot as plt

    from lmbench.analyze import plots

    for records in (HAND, [{**HAND[0], "metrics": {"tokens_per_s": 1.0}}]):
        for fig in (plots.val_loss_vs_time(records), plots.val_loss_vs_tokens(records)):
            fig.canvas.draw()
            plt.close(fig)
    fig = plots.val_loss_vs_tokens(HAND)
    lines = fig.axes[0].get_lines()
    assert list(lines[0].get_xdata()) == [0, 10240, 20480] and list(lines[0].get_ydata()) == [6.2, 4.0, 2.9]
    assert lines[-1].get_ydata()[0] == 3.0  # the target
    plt.close(fig)


def test_tune_by_time_to_target_needs_a_target_and_one_value_per_axis():
    from click.testing import CliRunner

    from lmbench.cli import cli

    runner = CliRunner()
    tune = ["tune", "--model", "tiny-gpt2", "--seq-len", "16", "--device", "cpu"]
    result = runner.invoke(cli, [*tune, "--objective", "time-to-target"])
    assert result.exit_code == 2
    assert result.stderr.startswith("lmbench: error: --objective time-to-target needs a target: --set target_loss=")
    result = runner.invoke(cli, [*tune, "--set", "lr=1e-3,2e-3"])
    assert result.exit_code == 2 and "tune takes one value per axis" in result.stderr
    # A schedule in steps over the batch sizes tune measures is warned of (the run itself is refused after it).
    targeted = [*tune, "--objective", "time-to-target", "--set", "data=markov", "--set", "target_loss=3.0",
                "--set", "max_steps=100", "--min-batch", "4", "--max-batch", "2"]
    result = runner.invoke(cli, [*targeted, "--set", "eval_every=10"])
    assert result.exit_code == 2 and "warning: --set eval_every counts optimizer steps" in result.stderr
    result = runner.invoke(cli, [*targeted, "--set", "eval_every_tokens=4096"])
    assert result.exit_code == 2 and "warning" not in result.stderr and "--min-batch 4" in result.stderr
    result = runner.invoke(cli, [*tune, "--set", "precision=bf16"])
    assert result.exit_code == 2 and "tune sets precision with its own option; use --precision" in result.stderr


def test_an_evaluation_inside_the_window_is_left_out_of_its_peak_memory(monkeypatch):
    import torch

    from lmbench.run.worker import _TrainingPeaks

    allocated = {"now": 100, "peak": 100}
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: allocated["peak"])
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device: 2 * allocated["peak"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device: allocated.update(peak=allocated["now"]))
    peaks = _TrainingPeaks([torch.device("cuda", 0)])
    with peaks.excluded():
        allocated.update(now=100, peak=500)  # the evaluation's whole logits
    allocated.update(peak=120)  # training after it
    assert peaks.read() == {"mem_peak_allocated_bytes": 120, "mem_peak_reserved_bytes": 240}
    allocated.update(peak=150)  # more training, then another evaluation: the training peak before it counts
    with peaks.excluded():
        allocated.update(peak=700)
    assert peaks.read()["mem_peak_allocated_bytes"] == 150
    assert _TrainingPeaks([torch.device("cpu")]).read() == {"mem_peak_allocated_bytes": None,
                                                              "mem_peak_reserved_bytes": None}


def test_short_times_to_target_keep_their_digits():
    from lmbench.analyze.table import seconds_cell

    assert [seconds_cell(v) for v in (0.01335, 0.01821, 4.0, 123.456, None)] == ["0.0134", "0.0182", "4.00", "123.46",
                                                                                 "-"]


def test_contended_repeats_do_not_rank_a_configuration():
    """A repeat whose host other processes kept busy is not the configuration's speed: the quiet repeats are, and a
    configuration measured only on a busy host ranks after the quiet ones."""
    from lmbench.analyze import ranking

    def busy(record):
        return {**record, "metrics": {**record["metrics"], "host_other_cpu_cores": 1.3, "host_usable_cores": 2}}

    quiet_slow = [quality_record("fp32", 8, time_s=1.0, tps=1000.0, repeat=i) for i in range(2)]
    mixed = [quality_record("bf16", 8, time_s=1.0, tps=2000.0, repeat=0),
             busy(quality_record("bf16", 8, time_s=1.0, tps=10.0, repeat=1)),
             busy(quality_record("bf16", 8, time_s=1.0, tps=12.0, repeat=2))]
    busy_fast = [busy(quality_record("amp-bf16", 8, time_s=1.0, tps=9000.0))]
    standings = ranking.rank(busy_fast + quiet_slow + mixed, "throughput")
    assert [s.config["precision"] for s in standings] == ["bf16", "fp32", "amp-bf16"]
    assert standings[0].median("tokens_per_s") == 2000.0


def test_one_target_over_other_tokenizers_or_corpora_is_warned_of(tmp_path):
    """A BPE token covered about 1.9 bytes of the reviewer's corpus: one target in nats per token is another goal for
    tokenizer=byte and bpe, which also hold out other text; the plan ranked them together without a word."""
    from lmbench.plan import suite as suites

    corpus = write_corpus(tmp_path / "corpus.txt")
    both = suites.load("convergence").with_overrides(suites.parse_overrides([f"data={corpus}", "tokenizer=byte,bpe"]))
    (warning,) = [w for w in both.unused_options(both.expand()) if w.startswith("a target")]
    assert f"({corpus} (bpe), {corpus} (byte))" in warning
    one = suites.load("convergence").with_overrides(suites.parse_overrides([f"data={corpus}"]))
    assert not [w for w in one.unused_options(one.expand()) if w.startswith("a target")]


def test_a_step_schedule_over_other_batch_sizes_is_warned_of():
    """eval_every in steps evaluates batch 16 every 10,240 tokens and batch 8 every 5,120: batch 16's time to target
    has twice the grain (a CPU run met the target 10,240 tokens after an evaluation it just missed). The shipped
    suite evaluates in tokens; the same suite in steps is warned of."""
    from lmbench.plan import suite as suites

    def warned(overrides):
        suite = suites.load("convergence").with_overrides(suites.parse_overrides(overrides))
        return [w for w in suite.unused_options(suite.expand()) if w.startswith("eval_every counts")]

    assert not warned([])
    (warning,) = warned(["eval_every=10", "eval_every_tokens=0"])
    assert "(batch_size 8 x grad_accum 1 x seq_len 64; batch_size 16 x grad_accum 1 x seq_len 64)" in warning
    assert not warned(["eval_every=10", "eval_every_tokens=0", "batch_size=8"])
    # The same tokens a step (8 x 2 and 16 x 1 sequences of 64) evaluate at the same token counts: no warning.
    same = suites.parse("name = 's'\n[defaults]\nmodel = 'tiny-gpt2'\ndata = 'markov'\nseq_len = 64\n"
                        "eval_every = 10\ntarget_loss = 3.0\nmax_steps = 100\n[matrix]\nbatch_size = [8, 16]\n"
                        "grad_accum = [2, 1]\n[[exclude]]\nbatch_size = 8\ngrad_accum = 1\n[[exclude]]\n"
                        "batch_size = 16\ngrad_accum = 2\n", source="s.toml")
    assert len(same.expand()) == 2
    assert not [w for w in same.unused_options(same.expand()) if w.startswith("eval_every counts")]

"""Loss parity: verdicts by hand, real runs against their fp32 reference, a planted bug caught."""

import math

import torch
from click.testing import CliRunner

from lmbench.analyze import results
from lmbench.analyze.compare import compare
from lmbench.cli import cli
from lmbench.models.registry import MODELS
from lmbench.plan.config import Config
from lmbench.plan.parity import TOLERANCES, ema, reference_config, verdict
from lmbench.run.data import make_batches
from lmbench.run.training import TrainingStep


def test_ema_by_hand():
    assert ema([1.0, 2.0, 3.0], alpha=0.5) == [1.0, 1.5, 2.25]


def test_verdicts_by_hand():
    ref = [6.0, 5.0, 4.0, 3.5]
    assert verdict(ref, ref, precision="fp32") == {"parity": "ok", "parity_max_rel_dev": 0.0,
                                                   "parity_tolerance": TOLERANCES["fp32"]}
    drifted = verdict(ref, [6.0, 5.2, 4.3, 3.9], precision="amp-bf16")
    assert drifted["parity"] == "drift" and 0.02 < drifted["parity_max_rel_dev"] < 0.5
    assert verdict(ref, [6.0, 9.0, 14.0, 20.0], precision="bf16")["parity"] == "diverged"
    assert verdict(ref, [6.0, 5.0, math.nan, 3.0], precision="fp16")["parity"] == "diverged"
    assert verdict(ref, [6.0, 5.0, None, 3.0], precision="fp16")["parity"] == "diverged"


def test_reference_is_fp32_eager_without_checkpointing():
    c = Config(precision="amp-bf16", kernels="compile", checkpointing="full", batch_size=4, lr=1e-3)
    assert reference_config(c) == Config(batch_size=4, lr=1e-3)


def test_markov_data_is_learnable_in_tens_of_steps():
    config = Config(model="tiny-gpt2", batch_size=4, seq_len=64, steps=30, warmup=0, lr=1e-3, data="markov",
                    device="cpu")
    step = TrainingStep(config, torch.device("cpu"))
    losses = [step().item() for _ in range(30)]
    assert losses[-1] < losses[0] - 0.3
    uniform = TrainingStep(config.replace(data="synthetic"), torch.device("cpu"))
    flat = [uniform().item() for _ in range(30)]
    assert flat[-1] > math.log(512) - 0.1  # uniform tokens: nothing to learn below log(vocabulary)
    spec = MODELS["tiny-gpt2"]
    a = make_batches(spec=spec, batch_size=2, seq_len=8, data="markov", tokenizer="byte", seed=1, count=1,
                     device=torch.device("cpu"))
    b = make_batches(spec=spec, batch_size=2, seq_len=8, data="markov", tokenizer="byte", seed=1, count=1,
                     device=torch.device("cpu"))
    assert torch.equal(a[0].input_ids, b[0].input_ids)


def curve(config: Config, steps: int = 20) -> list[float]:
    step = TrainingStep(config, torch.device("cpu"))
    return [step().item() for _ in range(steps)]


def test_broken_configurations_are_caught():
    base = Config(model="tiny-llama", batch_size=4, seq_len=32, warmup=0, lr=1e-3, data="markov", device="cpu")
    reference = curve(base)
    # Learning rate 1e6: the run blows up.
    assert verdict(reference, curve(base.replace(lr=1e6)), precision="fp32")["parity"] in ("diverged", "drift")


def test_planted_kernel_bug_drifts(monkeypatch):
    import lmbench.kernels.norms as norms

    base = Config(model="tiny-llama", batch_size=2, seq_len=16, warmup=0, lr=1e-3, data="markov", device="cpu")
    reference = curve(base, 10)
    honest = verdict(reference, curve(base.replace(kernels="triton"), 10), precision="fp32")
    assert honest["parity"] == "ok", honest
    real = norms.rms_norm
    monkeypatch.setattr(norms, "rms_norm", lambda x, w, eps=1e-6: real(x, w, eps) * 1.05)
    planted = verdict(reference, curve(base.replace(kernels="triton"), 10), precision="fp32")
    assert planted["parity"] in ("drift", "diverged"), planted


def test_parity_run_end_to_end(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", "--suite", "smoke", "--parity", "--out", str(out), "--device", "cpu",
                                      "--set", "model=tiny-gpt2", "--set", "precision=fp32",
                                      "--set", "checkpointing=full", "--set", "steps=10", "--set", "lr=1e-3"])
    assert result.exit_code == 0, result.output
    assert "added 1 reference configuration" in result.stderr
    records = results.read(out).records
    by = {r["config"]["checkpointing"]: r for r in records}
    assert by["none"]["metrics"]["parity"] == "reference"
    assert by["full"]["config"]["data"] == "markov"
    # Recomputation in fp32 reproduces the reference: an fp32-vs-fp32 rerun in all but the memory it uses.
    assert by["full"]["metrics"]["parity"] == "ok"
    assert by["full"]["metrics"]["parity_max_rel_dev"] <= TOLERANCES["fp32"]


def test_diverged_parity_never_counts_as_an_improvement():
    def rec(value, parity=None, repeat=0):
        return {"config_key": "k", "repeat": repeat, "status": "ok",
                "metrics": {"tokens_per_s": value, "parity": parity}}

    base = [rec(100.0, repeat=i) for i in range(3)]
    fast_but_wrong = [rec(150.0, "diverged", i) for i in range(3)]
    (v,) = compare(base, fast_but_wrong)
    assert v.verdict == "failed" and v.parity == "diverged" and "parity diverged" in v.note
    (v,) = compare(base, [rec(150.0, "ok", i) for i in range(3)])
    assert v.verdict == "improvement" and v.parity == "ok"


def test_rows_that_draw_other_dropout_masks_run_their_parity_without_dropout():
    """A compiled GPT-2 with dropout drew other masks than eager (its first loss 6.2764 against 6.2695 before any
    update, on a CPU): every compiled row, FP8 among them, read `drift` for its random numbers, not its numerics."""
    from lmbench.plan.parity import other_dropout_masks, with_references
    from lmbench.plan.suite import Planned

    compiled = Config(model="tiny-gpt2", precision="amp-bf16", kernels="compile", device="cpu")
    graphed = Config(model="tiny-gpt2", device="cuda", cuda_graph=True)
    eager = Config(model="tiny-gpt2", precision="amp-bf16", device="cpu")
    assert [other_dropout_masks(c) is not None for c in (compiled, graphed, eager, compiled.replace(dropout=False))] \
        == [True, True, False, False]
    rows, notices = with_references([Planned(c, None) for c in (compiled, graphed, eager)])
    by = {(r.config.kernels, r.config.cuda_graph, r.config.precision): r.config.dropout for r in rows}
    assert by[("compile", False, "amp-bf16")] is False and by[("eager", True, "fp32")] is False
    # The compiled row's reference is dropout-free too; the eager row and its reference keep the model's dropout.
    assert by[("eager", False, "amp-bf16")] is True
    assert {r.config.dropout for r in rows if (r.config.kernels, r.config.precision) == ("eager", "fp32")
            and not r.config.cuda_graph} == {False, True}
    assert "parity: dropout=false for compiled rows (inductor draws its own random numbers, not eager's masks)" in \
        notices

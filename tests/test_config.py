import errno
import os

import pytest

from lmbench.errors import ConfigError
from lmbench.plan.config import Config


def test_defaults_are_valid_and_key_is_stable():
    c = Config()
    assert c.key == Config().key
    assert c.key.startswith("tiny-gpt2-b8-s128-a1-fp32-none-eager-sdpa-ckpt-none-adamw-")
    assert c.tokens_per_step == 8 * 128


def test_key_ignores_timeout_but_not_steps_or_device():
    c = Config()
    assert c.replace(timeout_s=5.0).key == c.key
    # Its profiler steps come after the window: a profiled candidate pairs with an unprofiled baseline.
    assert c.replace(profile=True).key == c.key == (
        "tiny-gpt2-b8-s128-a1-fp32-none-eager-sdpa-ckpt-none-adamw-fused-dee460a2")
    assert c.replace(steps=7).key != c.key
    assert c.replace(device="cpu").key != c.key


@pytest.mark.parametrize(("values", "message"), [
    ({"batch_size": 0}, "batch_size=0 must be a positive integer"),
    ({"seq_len": -1}, "seq_len=-1 must be a positive integer"),
    ({"warmup": -1}, "warmup=-1 must be an integer >= 0"),
    ({"precision": "fp8"}, "precision='fp8' is not one of: fp32, tf32, amp-fp16, amp-bf16, fp16, bf16"),
    ({"model": "gpt5"}, "model='gpt5' is not one of: gpt2-124m"),
    ({"device": "tpu"}, "device='tpu' is not one of: auto, cpu, cuda, cuda:N"),
    ({"lr": 0.0}, "lr=0.0 must be a positive, finite number"),
    ({"lr": "inf"}, "lr=inf must be a positive, finite number"),
    ({"lr": "nan"}, "lr=nan must be a positive, finite number"),
    ({"timeout_s": "inf"}, "timeout_s=inf must be a positive, finite number of seconds (at most 2,592,000)"),
    ({"telemetry_period_s": float("nan")}, "telemetry_period_s=nan must be a positive, finite number of seconds"),
    ({"nproc": 100000}, "nproc=100000 is more processes per node than lmbench runs (at most 64)"),
    ({"microbatches": 100000}, "microbatches=100000 is more than a pipeline step splits a batch into; allowed: "
     "1..4096"),
    ({"pp_stages_per_rank": 17}, "pp_stages_per_rank=17 cuts the model finer than lmbench runs; allowed: 0..16"),
    ({"pp_schedule": "looped-bfs"}, "pp_schedule='looped-bfs' is not one of: gpipe, 1f1b, interleaved-1f1b"),
    ({"data": "/no/such/file.txt"},
     "data='/no/such/file.txt' is neither 'synthetic', 'markov' nor an existing text file"),
])
def test_invalid_values_name_the_axis(values, message):
    with pytest.raises(ConfigError) as err:
        Config.from_mapping(values)
    assert str(err.value).startswith(message)


def test_unknown_axis_and_wrong_type():
    with pytest.raises(ConfigError, match=r"^unknown axis 'batchsize'; allowed: model, batch_size"):
        Config.from_mapping({"batchsize": 4})
    with pytest.raises(ConfigError, match=r"^batch_size='eight' is not an integer$"):
        Config.from_mapping({"batch_size": "eight"})
    with pytest.raises(ConfigError, match=r"^batch_size=True must be an integer$"):
        Config.from_mapping({"batch_size": True})


def test_strings_from_the_command_line_are_coerced():
    c = Config.from_mapping({"batch_size": "16", "lr": "1e-3", "timeout_s": 30})
    assert c.batch_size == 16 and c.lr == 1e-3 and c.timeout_s == 30.0


def test_cross_axis_conflicts_are_reported_not_raised():
    assert Config(model="tiny-gpt2", seq_len=257).conflict() == (
        "seq_len=257 exceeds the 256 positions of model tiny-gpt2; allowed: 1..256")
    assert "attention='eager' is not available for model tiny-torch-transformer-lm" in Config(
        model="tiny-torch-transformer-lm", attention="eager").conflict()
    assert Config().conflict() is None


def test_an_empty_data_file_is_refused(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ConfigError, match=rf"^data='{empty}' is an empty file$"):
        Config(data=str(empty))


def test_every_default_has_a_reason():
    from lmbench.plan.config import DEFAULT_REASONS, FIELD_TYPES

    assert set(DEFAULT_REASONS) == set(FIELD_TYPES)
    assert all(reason and len(reason) < 120 for reason in DEFAULT_REASONS.values())


def test_the_default_optimizer_is_the_fused_adamw_a_performance_engineer_would_pick():
    from lmbench.run.training import OPTIMIZERS

    assert Config().optimizer == "adamw-fused"
    import torch

    optimizer = OPTIMIZERS[Config().optimizer]([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    assert optimizer.defaults["fused"] is True


def test_key_of_a_configuration_measured_before_new_axes_never_changes():
    # Pinned: baselines, noise floors and resumed runs match records by config_key. An axis added to
    # Config must leave these keys as they are (it enters the hash only when set away from its default).
    assert Config().key == "tiny-gpt2-b8-s128-a1-fp32-none-eager-sdpa-ckpt-none-adamw-fused-dee460a2"
    assert (Config(model="gpt2-124m", precision="bf16", parallel="ddp", nproc=2).key
            == "gpt2-124m-b8-s128-a1-bf16-ddp-eager-sdpa-ckpt-none-adamw-fused-f5139163")


@pytest.mark.parametrize("value, message", [
    (0, "vocab_multiple=0"), (-64, "vocab_multiple=-64"), (2048, "allowed: 1..1024"), ("64", "vocab_multiple")])
def test_vocab_multiple_is_a_small_positive_integer(value, message):
    with pytest.raises(ConfigError, match=message):
        Config(vocab_multiple=value)


def test_padded_vocab_rounds_up_and_keeps_keys_of_the_unpadded_model():
    assert Config(model="gpt2-124m", vocab_multiple=64).padded_vocab == 50304  # nanoGPT's and llm.c's
    assert Config(model="gpt2-124m").padded_vocab == 50257
    assert Config(model="llama-1b", vocab_multiple=64).padded_vocab == 128256  # already aligned
    assert Config(vocab_multiple=1).key == Config().key
    assert Config(model="gpt2-124m", vocab_multiple=64).key != Config(model="gpt2-124m").key


def test_the_defaults_of_axes_added_after_the_first_key_format_are_pinned():
    """Such an axis enters the key only away from its default, and a record written before it existed is read
    with it at today's default (results.current_key): changing one of these defaults would give the
    configurations measured at the old one the key of the new, and --resume and compare would take them for it.
    Change one only with a migration that fills a record's missing axis with its old default."""
    from lmbench.plan.config import _KEY_V1_AXES, DEFAULTS

    assert {axis: value for axis, value in DEFAULTS.items() if axis not in _KEY_V1_AXES} == {
        "tp_degree": 0, "pp_degree": 0, "pp_schedule": "1f1b", "pp_stages_per_rank": 0, "microbatches": 4,
        "vocab_multiple": 1, "dropout": True, "compile_mode": "default", "cuda_graph": False, "label_smoothing": 0.0,
        "val_frac": 0.1, "eval_every": 0, "eval_every_tokens": 0, "eval_tokens": 65536, "target_loss": 0.0,
        "target_ppl": 0.0, "max_steps": 0}


def _denied(path, *args):
    raise PermissionError(errno.EACCES, "Permission denied", path)


def test_a_corpus_that_cannot_be_read_is_a_config_error_naming_it(tmp_path, monkeypatch):
    """Reading a corpus to check that it is text raised PermissionError, an internal error (exit 3) for a file the
    user may not read (trial 100). Faked here: root reads a file of mode 000 all the same."""
    from lmbench.plan import config

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text\n")
    monkeypatch.setattr(config, "_scan", _denied)
    with pytest.raises(ConfigError, match=rf"^data='{corpus}': cannot read it \(Permission denied\)$"):
        Config(data=str(corpus))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file of mode 000")
def test_a_corpus_of_mode_000_is_a_config_error(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text\n")
    corpus.chmod(0)
    with pytest.raises(ConfigError, match=rf"^data='{corpus}': cannot read it \(Permission denied\)$"):
        Config(data=str(corpus))

"""lmbench tune: the batch-size search against a brute force, budgets, resume, the winner's suite file."""

import json

import pytest
from click.testing import CliRunner

from lmbench.analyze import results
from lmbench.cli import cli
from lmbench.errors import UsageError
from lmbench.plan import suite as suites
from lmbench.plan.config import Config
from lmbench.run.runner import RunDirectory, run_worker
from lmbench.tune import Tuner, parse_size, winner_suite

BASE = Config(model="tiny-gpt2", seq_len=256, device="cpu", max_memory_bytes=60 * 2**20)
COMBO = {"precision": "fp32", "kernels": "eager", "checkpointing": "none"}


def test_sizes_parse():
    assert parse_size("60MiB") == 60 * 2**20
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size("1.5G") == 1_500_000_000
    assert parse_size("4096") == 4096
    with pytest.raises(UsageError, match="expected a size like 512MiB"):
        parse_size("lots")


class FakeLauncher:
    """A memory boundary at a known batch size, counting launches."""

    def __init__(self, boundary: int) -> None:
        self.boundary = boundary
        self.launched: list[int] = []

    def __call__(self, job, run_dir):
        self.launched.append(job.config.batch_size)
        ok = job.config.batch_size <= self.boundary
        payload = {"metrics": {"tokens_per_s": 100.0 * job.config.batch_size}, "losses": [1.0], "env": None}
        return ("ok", None, payload) if ok else ("oom", "OutOfMemoryError", None)


@pytest.mark.parametrize("boundary", [1, 2, 37, 64, 1000])
def test_search_finds_the_exact_boundary_in_logarithmic_probes(tmp_path, boundary):
    launcher = FakeLauncher(boundary)
    tuner = Tuner(BASE, RunDirectory(tmp_path / "run", resume=False), launch=launcher, margin=0.1)
    found = tuner.search(COMBO)
    assert found.largest_fitting == boundary and found.first_failing == boundary + 1
    assert found.chosen == max(1, int(boundary * 0.9)) <= boundary
    assert found.probes <= 2 * boundary.bit_length() + 2
    tuner.measure(found, steps=2, warmup=0)
    measured = [r["config"]["batch_size"] for r in results.read(tmp_path / "run").records]
    assert max(measured) == found.chosen and all(b <= boundary for b in measured)


def test_search_stops_at_max_batch(tmp_path):
    tuner = Tuner(BASE, RunDirectory(tmp_path / "run", resume=False), launch=FakeLauncher(10**6), max_batch=64)
    found = tuner.search(COMBO)
    assert found.largest_fitting == 64 and found.first_failing is None and "fits up to --max-batch 64" in found.note


@pytest.mark.slow
def test_real_boundary_matches_a_brute_force_search(tmp_path):
    tuner = Tuner(BASE, RunDirectory(tmp_path / "run", resume=False), launch=run_worker, margin=0.0)
    found = tuner.search(COMBO)
    assert found.largest_fitting >= 1 and found.first_failing is not None
    # Brute force: every size up to one past the boundary (probes already made are reused).
    fits = {b: tuner.fits(COMBO, b) for b in range(1, found.first_failing + 2)}
    brute = max(b for b in fits if all(fits[s] for s in range(1, b + 1)))
    assert abs(brute - found.largest_fitting) <= 1
    assert not fits[found.first_failing]


@pytest.mark.slow
def test_interrupted_tune_resumes_without_repeating_probes(tmp_path):
    out = tmp_path / "tune"
    args = ["tune", "--model", "tiny-gpt2", "--seq-len", "256", "--precision", "fp32", "--checkpointing", "none",
            "--max-memory", "60MiB", "--device", "cpu", "--steps", "2", "--warmup", "1", "--out", str(out)]
    first = CliRunner().invoke(cli, args + ["--budget-minutes", "0.01"])
    assert first.exit_code == 0, first.output
    assert "budget ran out" in first.output
    early = (out / "probes.jsonl").read_text().splitlines()
    assert 1 <= len(early)
    second = CliRunner().invoke(cli, args + ["--resume"])
    assert second.exit_code == 0, second.output
    probes = [json.loads(line) for line in (out / "probes.jsonl").read_text().splitlines()]
    assert probes[: len(early)] == [json.loads(line) for line in early]
    assert len({p["config_key"] for p in probes}) == len(probes)
    records = results.read(out).records
    assert records and all(r["status"] == "ok" for r in records)
    # Never a size that failed among the measured ones.
    failed = {p["batch_size"] for p in probes if p["status"] != "ok"}
    assert not failed & {r["config"]["batch_size"] for r in records}
    winner = suites.load(str(out / "tuned.toml"))
    (planned,) = winner.expand()
    best = max(records, key=lambda r: r["metrics"]["tokens_per_s"])
    assert planned.config.key == best["config_key"]


def test_winner_suite_reproduces_the_config():
    config = Config(model="tiny-llama", batch_size=24, grad_accum=2, precision="bf16", device="cpu")
    text = winner_suite({"config": config.to_dict(), "metrics": {"tokens_per_s": 1234.0}})
    (planned,) = suites.parse(text, source="tuned.toml").expand()
    assert planned.config == config

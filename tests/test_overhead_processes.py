"""lmbench's worker against a bare hand-written loop, each in a fresh process, paired and interleaved, with an
A/A control (a bare loop against another bare loop) measuring in the same test how far two processes of the
same code drift apart. See docs/overhead.md for the long version of this measurement and its figures."""

import json
import math
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from lmbench.measure.stats import percentile
from lmbench.plan.config import Config

CONFIG = Config(model="tiny-gpt2", batch_size=8, seq_len=128, steps=30, warmup=5, device="cpu", telemetry=False)
BARE = Path(__file__).with_name("bare_loop.py")


#: What every process of a round runs: the imports both sides make anyway (torch, the model family's transformers
#: module), then a wait on stdin for its turn, then the bare loop or the worker as `__main__`, unchanged. The imports
#: (~8 s a process on a 2-core CPU, most of the test's time) overlap; the measurements never do: a process steps only
#: while the other two of its round are parked or finished. Only step times are compared, so what is checked (each
#: side's median step, each process a fresh interpreter) is the same as with three processes started one by one.
PARKED = """
import runpy, sys
import torch
from lmbench.models.registry import MODELS, import_family
import_family(MODELS[sys.argv[1]].family)
print("parked", flush=True)
sys.stdin.readline()
target, sys.argv = sys.argv[2], sys.argv[2:]
if target.endswith(".py"):
    runpy.run_path(target, run_name="__main__")
else:
    runpy.run_module(target, run_name="__main__", alter_sys=True)
"""


def park(config: Config, *command: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PARKED, config.model, *command], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def finish(proc: subprocess.Popen) -> str:
    """Lets a parked process run and waits for it: its stdout after `parked`."""
    proc.stdin.write("go\n")
    proc.stdin.close()
    out = proc.stdout.read()
    assert proc.wait(timeout=300) == 0, out
    return out


def bare(config: Config) -> tuple[subprocess.Popen, Callable[[], float]]:
    proc = park(config, str(BARE), json.dumps(config.to_dict()))

    def median_s() -> float:
        return statistics.median(json.loads(finish(proc).splitlines()[-1])["step_times_s"])

    return proc, median_s


def worker(config: Config, work: Path) -> tuple[subprocess.Popen, Callable[[], float]]:
    """The real worker (`lmbench.run.worker` as `__main__`, as `python -m` runs it)."""
    job, result = work / "job.json", work / "result.json"
    job.write_text(json.dumps({"config": config.to_dict(), "repeat": 0}))
    proc = park(config, "lmbench.run.worker", str(job), str(result))

    def median_s() -> float:
        finish(proc)
        record = json.loads(result.read_text())
        assert record["status"] == "ok", record["reason"]
        return statistics.median(record["step_times_s"])

    return proc, median_s


def in_turn(*started: tuple[subprocess.Popen, Callable[[], float]]) -> list[float]:
    """Waits until every process has imported, then runs them one after another, in the order given."""
    try:
        for proc, _ in started:
            assert proc.stdout.readline() == "parked\n", proc.wait(timeout=300)
        return [median_s() for _, median_s in started]
    finally:
        for proc, _ in started:
            if proc.poll() is None:
                proc.kill()


def paired_rounds(rounds: int, work: Path, config: Config = CONFIG) -> tuple[list[float], list[float]]:
    """Per round: lmbench / bare and bare / bare, the three processes in an order that alternates by round."""
    harness, control = [], []
    for i in range(rounds):
        if i % 2:
            lm, a, b = in_turn(worker(config, work), bare(config), bare(config))
        else:
            a, lm, b = in_turn(bare(config), worker(config, work), bare(config))
        harness.append(lm / a)
        control.append(b / a)
    return harness, control


def tolerance(harness: list[float], control: list[float]) -> float:
    """How far the median of the harness's log ratios may sit from the A/A control's median by noise alone: three
    standard errors of a difference of two medians, each median's from its own sample's robust spread (IQR /
    1.349). (The control's spread alone, doubled, read a 2.06% gap as beyond noise in CI on 2026-11-27, when six
    tight control rounds sat beside harness rounds from 0.91 to 1.01: the harness's own spread is part of the
    difference's error.)"""
    def squared_error(ratios: list[float]) -> float:
        logs = [math.log(r) for r in ratios]
        sigma = (percentile(logs, 75) - percentile(logs, 25)) / 1.349
        return (1.2533 * sigma) ** 2 / len(ratios)

    return 3 * math.sqrt(squared_error(harness) + squared_error(control))


@pytest.mark.slow
def test_the_worker_is_within_the_noise_of_a_bare_loop(tmp_path):
    rounds = 10
    harness, control = paired_rounds(rounds, tmp_path)
    gap = math.log(statistics.median(harness)) - math.log(statistics.median(control))
    allowed = max(tolerance(harness, control), 0.02)
    print(f"worker/bare {statistics.median(harness):.4f}, A/A {statistics.median(control):.4f}, "
          f"gap {gap:+.4f} (allowed ±{allowed:.4f})")
    assert abs(gap) <= allowed, (harness, control)


if __name__ == "__main__":
    # The long measurement behind docs/overhead.md: python tests/test_overhead_processes.py ROUNDS
    import tempfile

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    with tempfile.TemporaryDirectory() as folder:
        h, c = paired_rounds(n, Path(folder))
    print(json.dumps({"rounds": n, "worker_over_bare": h, "bare_over_bare": c}))

"""The harness adds nothing measurable: lmbench's step vs a bare hand-written loop, same model and data."""

import statistics
import time

import torch

from lmbench.config import Config
from lmbench.data import make_batches
from lmbench.models import MODELS, build_model
from lmbench.stats import percentile
from lmbench.timer import StepTimer
from lmbench.training import TrainingStep

CPU = torch.device("cpu")
CONFIG = Config(model="tiny-gpt2", batch_size=8, seq_len=128, steps=200, warmup=0, device="cpu")


class BareLoop:
    """What a user would write by hand: forward, backward, AdamW step, zero_grad."""

    def __init__(self) -> None:
        torch.manual_seed(CONFIG.seed)
        self.model = build_model(MODELS[CONFIG.model], attention="sdpa").train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=CONFIG.lr, foreach=True)
        self.batches = make_batches(spec=MODELS[CONFIG.model], batch_size=CONFIG.batch_size, seq_len=CONFIG.seq_len,
                                    data="synthetic", tokenizer="byte", seed=CONFIG.seed, count=16, device=CPU)
        self.i = 0

    def times(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            batch = self.batches[self.i % len(self.batches)]
            self.i += 1
            t0 = time.perf_counter()
            loss = self.model(input_ids=batch.input_ids, labels=batch.labels).loss
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            out.append(time.perf_counter() - t0)
        return out


def harness_times(step: TrainingStep, n: int) -> list[float]:
    timer = StepTimer(CPU)
    with timer.window():
        for _ in range(n):
            with timer.step():
                step()
    return timer.times_s()


def test_harness_step_time_matches_a_bare_loop():
    bare = BareLoop()
    harness = TrainingStep(CONFIG, CPU)
    bare.times(5)
    harness_times(harness, 5)
    # Paired blocks in alternating order, so drift of the machine (frequency, other load) and the
    # position of a block hit both sides alike; each pair gives one ratio of block medians.
    ratios = []
    for block in range(16):
        if block % 2:
            harness_s = harness_times(harness, 6)
            bare_s = bare.times(6)
        else:
            bare_s = bare.times(6)
            harness_s = harness_times(harness, 6)
        ratios.append(statistics.median(harness_s) / statistics.median(bare_s))
    ratio = statistics.median(ratios)
    spread = percentile(ratios, 75) - percentile(ratios, 25)
    print(f"harness/bare median step time: {ratio:.4f} (interquartile range of block ratios {spread:.4f})")
    assert abs(ratio - 1) < max(0.05, spread), (ratio, spread)

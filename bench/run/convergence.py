"""Held-out quality of a run: evaluations between optimizer steps, their clocks, and time to a target.

A run with `eval_every > 0` evaluates the held-out loss before its first step, every `eval_every`
optimizer steps, and after its last; one with `eval_every_tokens > 0` after the first optimizer step that
reaches each multiple of that many trained tokens instead, so configurations of other global batches
evaluate at the same token counts. Each evaluation drains the device queue, runs outside every
step timer and telemetry window (they are paused around it), and records a point of the curve:

  step, tokens           optimizer steps and tokens (all ranks and replicas) trained so far
  val_loss               mean unsmoothed cross-entropy per counted held-out position (nats)
  wall_s                 host wall time since the first training step, evaluations included
  train_wall_s           the same with every evaluation's span left out
  device_s               the sum of the step times (CUDA events on a GPU), warmup steps included
  energy_j, train_energy_j   NVML's total-energy counters over the same two spans (None on a CPU)

Time-to-target follows MLPerf Training's time-to-train: the clock starts with the first training
step (process start, model build and data staging are initialisation, left out) and stops at the
end of the first evaluation whose loss meets the target, evaluations included (their frequency and
size are axes of the configuration, so two configurations are compared under the same schedule).
`train_time_to_target_s` and `device_time_to_target_s` leave the evaluations out.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from lmbench.plan.config import Config


@dataclass(frozen=True)
class EvalPoint:
    step: int
    tokens: int
    val_loss: float
    wall_s: float
    train_wall_s: float
    device_s: float
    energy_j: float | None
    train_energy_j: float | None


class Convergence:
    """Owns the evaluation schedule, the clocks of a quality run and its points; `evaluate` is the training
    step's held-out evaluation (summed loss, positions counted), `synchronize` drains the devices."""

    def __init__(self, config: Config, *, evaluate: Callable[[], tuple[Any, Any]], tokens_per_step: int,
                 synchronize: Callable[[], None] = lambda: None, read_energy_j: Callable[[], float | None] =
                 lambda: None, all_reduce: Callable[[Any], Any] = lambda values: values) -> None:
        self.config = config
        self._evaluate = evaluate
        self.tokens_per_step = tokens_per_step
        self._synchronize = synchronize
        self._read_energy_j = read_energy_j
        self._all_reduce = all_reduce
        self.target = config.target_loss_nats
        self.points: list[EvalPoint] = []
        self.initial_loss: float | None = None
        self.counted = 0
        self.eval_s = 0.0
        self.eval_j: float | None = 0.0
        self._t0 = 0.0
        self._e0: float | None = None

    def start(self, before_clock: Callable[[], None] = lambda: None) -> None:
        """Evaluate the untrained model (its loss is the curve's start, outside every clock), then start the clocks;
        `before_clock` runs right before them (a watch over the span that must cover the whole clock)."""
        self.initial_loss = self._held_out_loss()
        self._synchronize()
        before_clock()
        self._t0 = time.perf_counter()
        self._e0 = self._read_energy_j()

    def due(self, steps_done: int) -> bool:
        """Whether an evaluation follows optimizer step `steps_done`: every eval_every steps, or where the tokens
        trained pass a multiple of eval_every_tokens (a step that passes several evaluates once)."""
        if self.config.eval_every:
            return steps_done % self.config.eval_every == 0
        every = self.config.eval_every_tokens
        return steps_done * self.tokens_per_step // every > (steps_done - 1) * self.tokens_per_step // every

    def evaluate(self, steps_done: int, device_s: float) -> EvalPoint:
        """Evaluate after `steps_done` optimizer steps whose step times sum to `device_s`; records the point."""
        self._synchronize()
        start, start_j = time.perf_counter(), self._read_energy_j()
        loss = self._held_out_loss()
        self._synchronize()
        end, end_j = time.perf_counter(), self._read_energy_j()
        train_wall = start - self._t0 - self.eval_s
        self.eval_s += end - start
        spent_j = None if self.eval_j is None or start_j is None or end_j is None else end_j - start_j
        energy = None if self._e0 is None or end_j is None else end_j - self._e0
        train_energy = None if energy is None or spent_j is None else start_j - self._e0 - self.eval_j
        self.eval_j = None if spent_j is None else self.eval_j + spent_j
        point = EvalPoint(step=steps_done, tokens=steps_done * self.tokens_per_step, val_loss=loss,
                          wall_s=end - self._t0, train_wall_s=train_wall, device_s=device_s, energy_j=energy,
                          train_energy_j=train_energy)
        self.points.append(point)
        return point

    def _held_out_loss(self) -> float:
        total, count = self._all_reduce(self._evaluate())
        self.counted = int(count)
        return float(total) / max(1, int(count))

    @property
    def reached(self) -> EvalPoint | None:
        """The first point whose loss meets the target, or None."""
        if self.target is None:
            return None
        return next((p for p in self.points if p.val_loss <= self.target), None)

    @property
    def diverged(self) -> bool:
        return bool(self.points) and not math.isfinite(self.points[-1].val_loss)

    def finished(self, steps_done: int) -> bool:
        """Whether a time-to-target run may stop after `steps_done` steps: the target met (or the held-out loss
        non-finite) once the throughput window is over, or the step budget spent."""
        if steps_done >= self.config.max_steps:
            return True
        window_over = steps_done >= self.config.warmup + self.config.steps
        return window_over and (self.reached is not None or self.diverged)

    def fields(self) -> dict[str, Any]:
        """Metrics of the record: the last held-out loss and perplexity, the curve, and the target's figures."""
        last = self.points[-1] if self.points else None
        finite = [p.val_loss for p in self.points if math.isfinite(p.val_loss)]
        out: dict[str, Any] = {
            "val_loss": last.val_loss if last else None,
            "val_ppl": _ppl(last.val_loss) if last else None,
            "val_loss_best": min(finite, default=None),
            "val_loss_initial": self.initial_loss,
            "val_tokens_per_eval": self.counted,
            "eval_count": len(self.points),
            "eval_time_s": self.eval_s,
            "steps_trained": last.step if last else 0,
            "val_points": [asdict(p) for p in self.points],
        }
        if self.target is None:
            return out
        hit = self.reached
        status = "reached" if hit else "diverged" if self.diverged else "not_reached"
        out.update({
            "target_loss_nats": self.target,
            "target_status": status,
            "steps_to_target": hit.step if hit else None,
            "tokens_to_target": hit.tokens if hit else None,
            "time_to_target_s": hit.wall_s if hit else None,
            "train_time_to_target_s": hit.train_wall_s if hit else None,
            "device_time_to_target_s": hit.device_s if hit else None,
            "energy_to_target_j": hit.energy_j if hit else None,
            "train_energy_to_target_j": hit.train_energy_j if hit else None,
        })
        return out


def _ppl(loss: float) -> float | None:
    """exp(loss), None where it overflows or the loss is not finite."""
    try:
        return math.exp(loss) if math.isfinite(loss) else None
    except OverflowError:
        return None


def merge_ranks(per_rank: list[dict[str, Any]]) -> dict[str, Any]:
    """Rank 0's fields (every rank evaluated the same reduced loss), with the energies summed over the ranks."""
    merged = dict(per_rank[0])
    for name in ("energy_to_target_j", "train_energy_to_target_j"):
        if name not in merged:
            continue
        values = [r.get(name) for r in per_rank]
        merged[name] = sum(values) if values and all(v is not None for v in values) else None
    return merged

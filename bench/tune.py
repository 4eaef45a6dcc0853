"""`lmbench tune`: the largest batch that fits, then the fastest configuration, each probe a fresh process.

For every combination of precision x kernels x checkpointing: grow the batch size by doubling until a
probe runs out of memory, bisect between the last size that fitted and the first that did not, back
off from that edge by a safety margin (not from a search that found no edge), then measure throughput
at that size and a few below it. A probe that fails of anything but memory (a timeout, a crash) ends
the combination's search there: it is no edge to bisect towards. A job starts only when the longest
of its kind so far would end within --budget-minutes, so the budget bounds when tune ends. Probes
are short runs (one warmup step, two measured) recorded in RUN_DIR/probes.jsonl, measurements are
ordinary records in RUN_DIR/results.jsonl, so an interrupted tune resumes where it stopped.

Then the two best configurations are measured again, alternating, until each has CONFIRM_REPEATS fresh
processes (`--confirm-repeats`): one measurement each cannot tell a 3% lead from the noise between
processes, and `told_apart` says whether the winner's lead is outside it (compare's interval).

A combination whose loss may stray from its reference (FP8 always, every one with --parity) gets a
parity check first: PARITY_STEPS on the Markov corpus at the chosen batch, against the reference
(lmbench.plan.parity), recorded in RUN_DIR/parity.jsonl. Its verdict goes into every measured record
of the combination, and a configuration that drifts or diverges is ranked after every one that
does not, so it never wins.
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmbench.analyze import results
from lmbench.analyze.table import kernels_cell
from lmbench.errors import UsageError
from lmbench.measure.hostload import contention_note
from lmbench.plan import parity
from lmbench.plan.config import Config
from lmbench.plan.suite import uses
from lmbench.run.rundir import PARITY_FILE, PROBES_FILE, WINNER_FILE
from lmbench.run.runner import Job, RunDirectory

Launcher = Callable[[Job, RunDirectory], tuple[str, str | None, dict[str, Any] | None]]

#: Probe runs: enough steps to reach the steady-state memory peak (optimizer state exists after step one).
PROBE_STEPS, PROBE_WARMUP = 2, 1
#: --seq-len when not given (a model with fewer positions gets all of them).
DEFAULT_SEQ_LEN = 1024
#: Sizes measured besides the chosen one, as fractions of it.
BELOW = (0.75, 0.5)
#: Parity check of a combination: the steps over which ci/parity-tolerances.sh measured the tolerances.
PARITY_STEPS, PARITY_WARMUP = 30, 1
#: Axes tune sets from its own options, never from --set (one source each, so neither silently wins).
OWN_OPTIONS = {"model": "--model", "seq_len": "--seq-len", "precision": "--precision", "kernels": "--kernels",
               "checkpointing": "--checkpointing", "grad_accum": "--global-batch", "steps": "--steps",
               "warmup": "--warmup", "device": "--device", "timeout_s": "--timeout-s",
               "max_memory_bytes": "--max-memory"}
#: Parity verdicts that keep a configuration from winning.
STRAYED = ("drift", "diverged")
#: Fresh-process repeats of the two best configurations after the search (the first is the measurement itself):
#: what compare needs of each side for an interval of their ratio (lmbench.analyze.noise.MIN_REPEATS).
CONFIRM_REPEATS = 3
#: Fields of a configuration's parity check, copied from its first measurement into the repeats that confirm it.
_PARITY_FIELDS = ("parity", "parity_max_rel_dev", "parity_tolerance")


@dataclass
class ComboResult:
    """What tune found for one precision x kernels x checkpointing combination."""

    combo: dict[str, str]
    largest_fitting: int = 0
    first_failing: int | None = None
    chosen: int = 0
    probes: int = 0
    """Sizes the search consulted: probes made now and probes an earlier session left (resume)."""
    note: str = ""
    measured: list[dict[str, Any]] = field(default_factory=list)
    kernels: str = ""
    """The kernel set as tables show it, with what runs as CUDA graphs (`compile reduce-overhead`)."""
    skipped: bool = False
    """Feasibility refused the combination: nothing was probed or measured (the note says why)."""
    stopped_by: str | None = None
    """A probe that failed of something other than memory (a timeout, a crash, a compile error): no edge, and the
    search went no further (the note says what)."""

    def add_note(self, text: str) -> None:
        if text not in self.note.split("; "):  # a second pass over the same combination says it once
            self.note = "; ".join(filter(None, [self.note, text]))


class Tuner:
    """Owns the probe cache (probes.jsonl) and the search; `launch` runs one job in a fresh process."""

    def __init__(self, base: Config, run_dir: RunDirectory, *, launch: Launcher, budget_s: float | None = None,
                 margin: float = 0.1, max_batch: int = 4096, min_batch: int = 1, global_batch: int | None = None,
                 check_parity: bool = False, on_event: Callable[[str], None] = lambda message: None,
                 skip: Callable[[Config], str | None] = lambda config: None, measured_steps: int | None = None) -> None:
        """`check_parity`: a parity check for every combination, not only the FP8 ones. `skip`: why a measurement
        cannot run (feasibility), checked again for each, since --global-batch gives each its own accumulation.
        `measured_steps`: a measurement's warmup and steps, for what it is expected to take before one has run."""
        if not 0 <= margin < 1:
            raise UsageError(f"--margin {margin}: must be in [0, 1)")
        self.base = base
        self.run_dir = run_dir
        self.launch = launch
        self.deadline = time.monotonic() + budget_s if budget_s else None
        self.margin = margin
        self.max_batch = max_batch
        if not 1 <= min_batch <= max_batch:
            raise UsageError(f"--min-batch {min_batch}: must be from 1 to --max-batch ({max_batch})")
        self.min_batch = min_batch
        self.longest_probe_s = 0.0
        self.longest_probe_step_s = 0.0
        """The slowest step of a probe that fitted: what each step a measurement runs beyond a probe's adds."""
        self.measured_steps = measured_steps
        self.longest_measure_s = 0.0
        self.budget_ran_out = False
        """Whether --budget-minutes left a search, parity check or measurement undone (a resume goes on)."""
        self.global_batch = global_batch
        self.on_event = on_event
        self.skip = skip
        self.check_parity = check_parity
        self.probe_path = run_dir.path / PROBES_FILE
        self.parity_path = run_dir.path / PARITY_FILE
        self.cache: dict[str, tuple[str, str | None]] = {}
        """Each probe's (status, reason) by config key."""
        with results.saving(self.probe_path):
            repaired = results.repair(self.probe_path)
        entries, self.warnings = results.read_lines(self.probe_path)
        self.warnings += [repaired] if repaired else []
        for number, entry in entries:
            if isinstance(entry, dict) and isinstance(entry.get("config_key"), str) and entry.get("status") in \
                    results.STATUSES:
                # A probe that fitted or ran out of memory says the same again; one that failed otherwise (a
                # timeout, a crash) may not, and a resumed search probes it again.
                if entry["status"] in ("ok", "oom"):
                    self.cache[entry["config_key"]] = (entry["status"], entry.get("reason"))
                    if isinstance(entry.get("wall_s"), (int, float)):
                        self.longest_probe_s = max(self.longest_probe_s, float(entry["wall_s"]))
                    if isinstance(entry.get("step_s"), (int, float)):
                        self.longest_probe_step_s = max(self.longest_probe_step_s, float(entry["step_s"]))
            else:
                self.warnings.append(f"{self.probe_path}:{number}: skipped line without config_key and status")
        self.parity_runs: dict[str, dict[str, Any]] = {}
        with results.saving(self.parity_path):
            repaired = results.repair(self.parity_path)
        entries, warnings = results.read_lines(self.parity_path)
        self.warnings += warnings + ([repaired] if repaired else [])
        for _, entry in entries:
            if isinstance(entry, dict) and isinstance(entry.get("config_key"), str):
                self.parity_runs[entry["config_key"]] = entry
        recorded = run_dir.recorded()
        self.warnings += recorded.warnings
        self.done = {r["config_key"] for r in recorded.records}
        # A resumed tune knows what its measurements took from their records, or it would expect a probe's time
        # and overrun --budget-minutes (probes of 5 s, measurements of 100 s: a 60 s budget ended after 100, a
        # review found): each job's wall time as the tune waited for it, or for records written before that was
        # kept, the worker's own start-up, warmup, window and evaluations (short of profiling and a run to target).
        for record in recorded.records:
            metrics = record.get("metrics") or {}
            took = [metrics.get(part) for part in ("startup_s", "warmup_s", "window_s")]
            if isinstance(metrics.get("job_wall_s"), (int, float)):
                self.longest_measure_s = max(self.longest_measure_s, float(metrics["job_wall_s"]))
            elif all(isinstance(part, (int, float)) for part in took):
                self.longest_measure_s = max(self.longest_measure_s, sum(took) + (metrics.get("eval_time_s") or 0.0))

    def fits_in_budget(self, expected_s: float) -> bool:
        """Whether a job of `expected_s` started now ends within the budget: the budget bounds when the tune ends,
        not only when it starts its last job (a measurement started at its edge ran a minute past it on the H100)."""
        return self.deadline is None or time.monotonic() + expected_s <= self.deadline

    def measure_s(self) -> float:
        """What a measurement is expected to take: the longest seen; before the first, the longest probe (a process
        that starts and compiles alike) and the steps it runs beyond a probe's at the slowest probe's step time (a
        150-step measurement, expected to take its 8 s probe's time, ran 72 s past an 18 s budget; a reviewer)."""
        beyond = max(0, (self.measured_steps or 0) - PROBE_STEPS - PROBE_WARMUP) * self.longest_probe_step_s
        return max(self.longest_measure_s, self.longest_probe_s + beyond)

    def _probed(self, combo: dict[str, str], batch: int) -> bool:
        """Whether `batch`'s probe is already known (recorded, or resumed from probes.jsonl): it costs nothing."""
        return self.probe_config(combo, batch).key in self.cache

    def out_of_search_time(self) -> bool:
        """Whether another probe would leave too little of the budget to measure what the search found: on an
        H100 a compiled GPT-2 probe took 50 s, and a search that spent the budget measured nothing."""
        return not self.fits_in_budget(self.longest_probe_s + self.measure_s())

    def _launch_timed(self, job: Job) -> tuple[str, str | None, dict[str, Any] | None, float]:
        started = time.monotonic()
        status, reason, payload = self.launch(job, self.run_dir)
        return status, reason, payload, time.monotonic() - started

    def _launch_measurement(self, job: Job) -> tuple[str, str | None, dict[str, Any] | None]:
        status, reason, payload, took_s = self._launch_timed(job)
        if status != "timeout":  # what a hang took is its timeout_s, not what the next measurement will
            self.longest_measure_s = max(self.longest_measure_s, took_s)
        if payload is not None and isinstance(payload.get("metrics"), dict):
            # The whole job as this process waited for it (profiling, a run to target and the exit included): what
            # a resumed tune expects a measurement to take.
            payload["metrics"]["job_wall_s"] = took_s
        return status, reason, payload

    def probe_config(self, combo: dict[str, str], batch: int) -> Config:
        """A short throughput run: no held-out evaluation or target (memory is the training step's), and no
        profiler (`--set profile=true` is for the measurements: its traces cost memory a probe must not count)."""
        return self.config(combo, batch_size=batch, steps=PROBE_STEPS, warmup=PROBE_WARMUP, telemetry=False,
                           grad_accum=1, eval_every=0, eval_every_tokens=0, target_loss=0.0, target_ppl=0.0,
                           max_steps=0, profile=False)

    def result(self, combo: dict[str, str], **fields: Any) -> ComboResult:
        """A combination's result, labelled with what its configurations run (compile's mode, cuda_graph)."""
        return ComboResult(combo, kernels=kernels_cell(self.config(combo).to_dict()), **fields)

    def label(self, combo: dict[str, str]) -> str:
        """`amp-bf16 compile reduce-overhead none`, for progress lines."""
        return " ".join([combo["precision"], kernels_cell(self.config(combo).to_dict()), combo["checkpointing"]])

    def config(self, combo: dict[str, str], **changes: Any) -> Config:
        """The base with a combination and `changes`; the base keeps options of every kernel set (compile_mode), and
        each combination holds the ones of other sets at their defaults, so an eager row has one key."""
        return self.base.replace(**combo, **changes).without_foreign_options()

    def probe(self, combo: dict[str, str], batch: int) -> tuple[str, str | None]:
        """A probe's (status, reason) at `batch`: run now, or as an earlier one found it."""
        config = self.probe_config(combo, batch)
        if config.key not in self.cache:
            status, reason, payload, took_s = self._launch_timed(Job(config, 0))
            if status in ("ok", "oom"):  # a hang's timeout_s (900 s) would hold every later probe back
                self.longest_probe_s = max(self.longest_probe_s, took_s)
            step_s = ((payload or {}).get("metrics") or {}).get("step_time_median_s") if status == "ok" else None
            if isinstance(step_s, (int, float)):
                self.longest_probe_step_s = max(self.longest_probe_step_s, float(step_s))
            self.cache[config.key] = (status, reason)
            with results.saving(self.probe_path):
                results.append_line(self.probe_path, {"config_key": config.key, "combo": combo, "batch_size": batch,
                                                      "status": status, "reason": reason, "wall_s": round(took_s, 3),
                                                      **({"step_s": step_s} if step_s is not None else {})})
            self.on_event(f"probe {self.label(combo)} batch {batch}: {status}")
        return self.cache[config.key]

    def search(self, combo: dict[str, str]) -> ComboResult:
        """Largest fitting batch by doubling from --min-batch then bisection between the largest that fitted and
        the smallest that ran out of memory.

        When --min-batch does not fit, the bisection runs between 0 and it. A probe that failed of anything else
        (a timeout, a crash, a compile error) is no memory edge: the search stops there and says so. The search
        stops early to leave the budget room for measuring what it found."""
        found = self.result(combo)
        consulted: list[int] = []

        class Stopped(Exception):
            pass

        def fits(batch: int) -> bool:
            consulted.append(batch)
            status, reason = self.probe(combo, batch)
            if status not in ("ok", "oom"):
                found.stopped_by = f"batch {batch}: {status}" + (f" ({reason})" if reason else "")
                raise Stopped
            return status == "ok"

        def may_probe(batch: int) -> bool:
            # A probe already known costs nothing; another must leave the budget room to measure what is found.
            return self._probed(combo, batch) or not self.out_of_search_time()

        fitting, failing, batch = 0, None, self.min_batch
        try:
            while batch <= self.max_batch and may_probe(batch):
                if not fits(batch):
                    failing = batch
                    break
                fitting, batch = batch, batch * 2
            if failing is None and fitting and fitting < self.max_batch < batch and may_probe(self.max_batch):
                # Doubling from --min-batch stepped over --max-batch: try it, then bisect below it if it fails.
                if fits(self.max_batch):
                    fitting = self.max_batch
                else:
                    failing = self.max_batch
            while failing is not None and failing - fitting > 1 and may_probe((fitting + failing) // 2):
                middle = (fitting + failing) // 2
                if fits(middle):
                    fitting = middle
                else:
                    failing = middle
        except Stopped:
            # Measured at the largest size that fitted, with no margin: no edge was found to back off from.
            found.largest_fitting, found.chosen, found.probes = fitting, fitting, len(consulted)
            found.add_note(f"probe at {found.stopped_by}: not out of memory, so no edge; the search stopped there"
                           + (f" and measures batch {fitting}" if fitting else ""))
            return found
        found.largest_fitting, found.first_failing = fitting, failing
        found.probes = len(consulted)
        # The margin backs off from the edge (the first batch that did not fit), never past what fitted: a search
        # the budget stopped before it found the edge (16 fitted, 32 did not, nothing between was tried), or one
        # that never failed, measures its largest fitting probe. On the H100 a compiled GPT-2 that fitted at
        # --min-batch 16 was measured at 14, below anything the search had seen.
        if not fitting:
            found.chosen = 0
        elif failing is None:
            found.chosen = fitting
        else:
            found.chosen = min(fitting, max(1, int((failing - 1) * (1 - self.margin))))
        # Cut short: the edge is not pinned down (no failure seen below --max-batch, or a gap left to bisect).
        edge_found = (failing is not None and failing - fitting <= 1) or fitting == self.max_batch
        if not consulted:
            self.budget_ran_out = True
            found.add_note("budget ran out before its search began")
        elif not fitting and failing == 1:
            found.add_note("nothing fits: batch 1 ran out of memory")
        elif self.out_of_search_time() and not edge_found:
            self.budget_ran_out = True
            found.add_note("budget ran out during the search" + (
                f" (what is left measures batch {found.chosen})" if fitting else ""))
        if failing is None and fitting == self.max_batch:
            found.add_note(f"fits up to --max-batch {self.max_batch}")
        return found

    def needs_parity(self, combo: dict[str, str]) -> bool:
        return self.check_parity or combo["precision"] in parity.FP8_PRECISIONS

    def _losses(self, config: Config) -> dict[str, Any]:
        """Status and losses of one parity run (cached in parity.jsonl)."""
        if config.key not in self.parity_runs:
            status, reason, payload = self._launch_measurement(Job(config, 0))
            entry = {"config_key": config.key, "precision": config.precision, "kernels": config.kernels,
                     "batch_size": config.batch_size, "status": status, "reason": reason,
                     "losses": (payload or {}).get("losses")}
            self.parity_runs[config.key] = entry
            with results.saving(self.parity_path):
                results.append_line(self.parity_path, entry)
            self.on_event(f"parity {config.precision} {config.kernels} batch {config.batch_size}: {status}")
        return self.parity_runs[config.key]

    def parity_configs(self, combo: dict[str, str], batch: int) -> tuple[Config, Config]:
        """The combination's parity run at `batch` and its reference's."""
        config = self.config(combo, batch_size=batch, grad_accum=1, steps=PARITY_STEPS, warmup=PARITY_WARMUP,
                             telemetry=False, data="markov", profile=False)
        if parity.other_dropout_masks(config):
            # As `run --parity` does: shards, stages, compiled code and graph replays draw other dropout masks.
            config = config.replace(dropout=False)
        return config, parity.reference_config(config)

    def parity_check(self, combo: dict[str, str], batch: int) -> dict[str, Any]:
        """The combination's parity fields at `batch` against its reference (None verdict when either failed)."""
        config, reference = self.parity_configs(combo, batch)
        ran = self._losses(config)
        if ran["status"] == "diverged":
            return parity.verdict([], ran["losses"] or [None], precision=config.precision)
        judged = self._losses(reference)
        if ran["status"] != "ok" or judged["status"] != "ok":
            return {"parity": None, "parity_max_rel_dev": None, "parity_tolerance": parity.TOLERANCES[config.precision]}
        return parity.verdict(judged["losses"], ran["losses"], precision=config.precision)

    def measure(self, found: ComboResult, steps: int, warmup: int, part: str = "all") -> None:
        """Measure the combination at its chosen batch and BELOW it (`part` "all"), or at the chosen one only
        ("chosen") or the ones below only ("below"): tune measures every combination's chosen size before any
        smaller one, so a tight budget spends itself on the sizes likeliest to win."""
        checked = None
        if self.needs_parity(found.combo):
            # Its runs not made yet (the combination's and its reference's), and a measurement after them: a
            # combination whose loss may stray is measured only once checked, or it could win unchecked.
            unmade = sum(c.key not in self.parity_runs for c in self.parity_configs(found.combo, found.chosen))
            if not self.fits_in_budget((unmade + 1) * self.measure_s()):
                self.budget_ran_out = True
                found.add_note("budget ran out before its parity check: not measured (a combination whose loss may "
                               "stray from its reference is measured only once checked)")
                return
            checked = self.parity_check(found.combo, found.chosen)
            if checked["parity"] in STRAYED:
                found.add_note(f"parity {checked['parity']}: never ranked first")
        sizes = sorted({found.chosen, *(max(1, int(found.chosen * f)) for f in BELOW)}, reverse=True)
        for batch in {"all": sizes, "chosen": sizes[:1], "below": sizes[1:]}[part]:
            # The nearest accumulation: floor division measured 17 x 1 and 12 x 2 for a global batch of 32.
            accum = max(1, round(self.global_batch / batch)) if self.global_batch else 1
            config = self.config(found.combo, batch_size=batch, grad_accum=accum, steps=steps, warmup=warmup)
            if config.key not in self.done and not self.fits_in_budget(self.measure_s()):
                unmeasured = ", ".join(str(b) for b in sizes if b not in {m["config"].batch_size
                                                                           for m in found.measured})
                self.budget_ran_out = True
                found.add_note(f"budget ran out during measurement (batch {unmeasured} not measured)")
                return
            if config.key not in self.done:
                reason = self.skip(config)
                status, reason, payload = ("skipped", reason, None) if reason else self._launch_measurement(
                    Job(config, 0))
                record = results.make_record(suite="tune", config=config.to_dict(), config_key=config.key, repeat=0,
                                             status=status, reason=reason, payload=payload)
                if checked is not None and record["metrics"] is not None:
                    record["metrics"].update(checked)
                self.run_dir.append(record)
                self.done.add(config.key)
                if status == "oom" and batch == found.chosen:
                    # The probe's short run fit and the measurement's longer one did not (on a CPU the resident set
                    # grows over more steps): the table would have said `chosen` beside an empty note (a new user).
                    found.add_note(f"batch {batch} ran out of memory when measured (its probe's {PROBE_STEPS} steps "
                                   "fit): the sizes below it stand in")
                busy = contention_note(record["metrics"] or {})
                self.on_event(f"measure {self.label(found.combo)} batch {batch} x{accum}: {status}"
                              + (f" ({busy}: ranked after the quiet measurements)" if busy else ""))
            found.measured.append({"config": config})


    def confirm(self, objective: str, repeats: int = CONFIRM_REPEATS) -> None:
        """Measure the two best configurations again until each has `repeats` measurements, within the budget. The
        ranking is taken again after every repeat: one that a repeat pulled down, or that failed once (a tier
        lower), gives way, and the new runner-up is confirmed in turn; each configuration is measured until `repeats`
        of its repeats count (a contended one does not, while quiet ones stand) and at most 2 x `repeats` times, so
        this ends, and a resumed or finished tune picks up where it stands. Each repeat is a
        fresh process and a record of its own."""
        from lmbench.analyze.ranking import rank

        while True:
            # Contenders: the best tier (every repeat ok, and the target reached where the objective wants one).
            top = [s for s in rank(self.run_dir.recorded().records, objective)
                   if s.ok() and s.sort_key(objective)[0] == 0][:2]
            # Repeats a figure rests on (a contended one is left out while quiet ones stand), at most twice as many
            # records, so that a busy host cannot keep this going.
            waiting = [s for s in top if len(s.counted()) < repeats and len(s.records) < 2 * repeats]
            if len(top) < 2 or not waiting:
                return
            if not self.fits_in_budget(self.measure_s()):
                self.budget_ran_out = True
                self.on_event("budget ran out while confirming the two best configurations")
                return
            standing = min(waiting, key=lambda s: len(s.counted()))  # the one with fewer repeats: they alternate
            first = standing.records[0]
            repeat = 1 + max(r["repeat"] for r in standing.records)
            config = Config.from_mapping(first["config"])
            status, reason, payload = self._launch_measurement(Job(config, repeat))
            record = results.make_record(suite="tune", config=config.to_dict(), config_key=config.key,
                                         repeat=repeat, status=status, reason=reason, payload=payload)
            if record["metrics"] is not None:  # checked once, at the first measurement
                record["metrics"].update({k: first["metrics"][k] for k in _PARITY_FIELDS if k in first["metrics"]})
            self.run_dir.append(record)
            combo = {axis: first["config"][axis] for axis in ("precision", "kernels", "checkpointing")}
            busy = contention_note(record["metrics"] or {})
            self.on_event(f"confirm {self.label(combo)} batch {config.batch_size}: repeat {repeat + 1} of {repeats}: "
                          f"{status}" + (f" ({busy}: it counts only where no quiet repeat does)" if busy
                                         else ""))


def told_apart(records: list[dict[str, Any]], objective: str = "throughput") -> str | None:
    """Whether the winner's lead over the runner-up is outside the noise between processes: the ratio of their
    medians with compare's 95% interval over their quiet ok repeats (MIN_REPEATS a side at least; to target, the
    repeats that reached it), in one line; None with fewer than two ranked configurations."""
    from lmbench.analyze.compare import repeats_interval
    from lmbench.analyze.noise import MIN_REPEATS
    from lmbench.analyze.ranking import rank

    pair = [s for s in rank(records, objective) if s.ok() and not s.strayed][:2]
    if len(pair) < 2:
        return None
    to_target = objective == "time-to-target"
    metric, unit = ("time_to_target_s", "faster to target") if to_target else ("tokens_per_s", "tokens/s")
    winner, runner_up = ([r["metrics"][metric] for r in (s.reached() if to_target else s.counted())
                          if isinstance(r["metrics"].get(metric), (int, float))] for s in pair)
    if not winner or not runner_up:
        return ("winner vs runner-up: only the winner reached the target" if winner
                else "winner vs runner-up: no figure to compare")
    lead = statistics.median(winner) / statistics.median(runner_up)
    lead = 1 / lead if to_target else lead  # to target: how many times faster
    head = f"winner vs runner-up: {lead - 1:+.1%} {unit} ({len(winner)} and {len(runner_up)} repeats)"
    busy = [side for side, standing in zip(("winner", "runner-up"), pair) if standing.contended_only]
    if busy:
        # Every repeat of a side ran on a busy host, so they count (none quiet stands in): a lead over the machine's
        # other work is no finding (docs/tuning.md).
        return (f"{head}: not tested; every repeat of the {' and the '.join(busy)} ran on a host other processes "
                "kept busy: tune again on a quiet host")
    if min(len(winner), len(runner_up)) < MIN_REPEATS:
        return (f"{head}: not tested; {MIN_REPEATS} a side are needed to tell it from the noise between processes "
                "(a repeat that failed, ran on a busy host or that the budget left out does not count; "
                "--confirm-repeats)")
    low, high = repeats_interval(runner_up, winner)
    if to_target:
        low, high = 1 / high, 1 / low
    span = f"95% interval {low - 1:+.1%} to {high - 1:+.1%}"
    if low > 1:
        return f"{head}: told apart ({span})"
    return f"{head}: not told apart ({span}): the runner-up may be as fast"


def combos(precisions: list[str], kernels: list[str], checkpointing: list[str]) -> list[dict[str, str]]:
    return [{"precision": p, "kernels": k, "checkpointing": c}
            for p, k, c in itertools.product(precisions, kernels, checkpointing)]


def strayed(record: dict[str, Any]) -> bool:
    """Whether the record's loss drifted or diverged from its reference's (a parity check said so)."""
    return (record.get("metrics") or {}).get("parity") in STRAYED


def parse_set(assignments: tuple[str, ...]) -> dict[str, Any]:
    """`--set KEY=V` of tune: one value per axis (the search itself varies precision, kernels, checkpointing)."""
    from lmbench.plan.suite import parse_overrides

    values = {}
    for axis, parsed in parse_overrides(assignments).items():
        if axis == "batch_size":
            raise UsageError("--set batch_size=...: tune searches batch_size itself")
        if axis in OWN_OPTIONS:
            raise UsageError(f"--set {axis}=...: tune sets {axis} with its own option; use {OWN_OPTIONS[axis]}")
        if len(parsed) != 1:
            raise UsageError(f"--set {axis}=...: tune takes one value per axis")
        values[axis] = parsed[0]
    return values


def ranked(run_dir: RunDirectory, objective: str = "throughput") -> list[dict[str, Any]]:
    """Measured configurations best first by `objective` (tokens/s, or time to the held-out target); those whose
    loss strayed from their reference's after every other ok one, failed ones last."""
    from lmbench.analyze.ranking import ranked_records

    return ranked_records(run_dir.recorded().records, objective)


def contention_warning(rows: list[dict[str, Any]]) -> str | None:
    """A warning when measured configurations' figures rest on repeats that ran while other processes kept the
    host's cores busy (every ok repeat of theirs: a contended one is left out of a figure while a quiet one stands
    for it, and the ranking says so): their figures, and so the ranking, may be the host's load (a contended CPU
    ranked batch 12 at 11,539 tokens/s above batch 16 at 4,469). None when every figure rests on quiet repeats.
    `rows` are ranked records (a configuration's repeats together)."""
    from lmbench.measure.hostload import window_contended

    measured: dict[str, bool] = {}  # configuration -> whether every ok repeat was contended, best first
    for r in rows:
        if r["status"] == "ok":
            measured[r["config_key"]] = measured.get(r["config_key"], True) and window_contended(r["metrics"])
    busy = [key for key, contended in measured.items() if contended]
    if not busy:
        return None
    # The first row is the winner only when write_winner takes it (not when its loss strayed from its reference).
    winner = (" (the winner among them)" if rows[0]["status"] == "ok" and not strayed(rows[0])
              and rows[0]["config_key"] in busy else "")
    return (f"{len(busy)} of {len(measured)} measured configurations{winner} ran while other processes kept the "
            "host's cores busy: their figures, and the ranking, may be the host's load; tune again on a quiet host")


def winner_suite(record: dict[str, Any], objective: str = "throughput", notes: tuple[str, ...] = ()) -> str:
    """A suite file that reproduces the winning configuration; `notes` (what its figure rests on, whether it was
    told apart from the runner-up) open it as comments."""
    config = Config.from_mapping({k: v for k, v in record["config"].items()})
    defaults = Config()
    m = record["metrics"]
    figure = (f"{m['time_to_target_s']:.1f} s to held-out loss {m['target_loss_nats']:.3g}"
              if objective == "time-to-target" and m.get("time_to_target_s") is not None
              else f"{m['tokens_per_s']:,.0f} tokens/s")
    best = "Fastest to target" if objective == "time-to-target" else "Fastest configuration"
    lines = [*(f"# {note}" for note in notes), f'name = "tuned-{config.model}"',
             f'description = "{best} lmbench tune found for {config.model} ({figure})"', "", "[defaults]"]
    for name, value in config.to_dict().items():
        # An option the configuration does not use (nproc, resolved to 1 for one process; a mode's or kernel set's
        # option) would only draw lmbench's own "changes nothing" warning when the suite is run.
        if (value != getattr(defaults, name) and uses(config, name)) or name in ("model", "batch_size", "seq_len",
                                                                                  "precision"):
            lines.append(f"{name} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def winner_basis(best: Any, objective: str) -> tuple[dict[str, float], str]:
    """The winner's figure and what it rests on. The measurement that ranked it first was picked as the best of
    several noisy ones, so it flatters it (the winner's curse: in 20,000 simulated tunes of six configurations of
    equal speed with 3% noise, it read 3.9% high, the median of all three repeats 2.1%, of the two after it 1.0%,
    docs/tuning.md): the figure quoted is the median of the repeats measured after it was
    picked (--confirm-repeats), and only without them the picking measurement, said to be unconfirmed."""
    to_target = objective == "time-to-target"
    among = best.reached() if to_target else best.counted()
    again = [r for r in among if r["repeat"] >= 1]
    name, unit = ("time_to_target_s", "s to target") if to_target else ("tokens_per_s", "tokens/s")
    figures = {"tokens_per_s": best.median("tokens_per_s", [r for r in best.counted() if r["repeat"] >= 1]
                                           or best.counted()),
               "time_to_target_s": best.median("time_to_target_s", again or among)}
    medians = {key: value for key, value in figures.items() if value is not None}
    if not again:
        return medians, ("its figure is the one measurement that ranked it first, unconfirmed: picked as the best of "
                         "several noisy figures, it flatters it (--confirm-repeats measures it again)")
    overall = best.median(name, among)
    return medians, (f"its figure is the median of the {len(again)} repeat(s) measured after it was picked, leaving "
                     f"out the measurement that picked it (over all {len(among)}: {overall:,.1f} {unit})")


def no_winner_reason(run_dir: RunDirectory, objective: str = "throughput", cut: str | None = None,
                     budget_ran_out: bool = False) -> str:
    """Why write_winner wrote nothing: nothing ran (or nothing yet, in a tune `cut` short or whose --budget-minutes
    ran out first), or everything that ran strayed from its parity reference."""
    rows = ranked(run_dir, objective)
    if any(row["status"] == "ok" for row in rows):
        return "no winner: every configuration that ran drifted or diverged from its parity reference"
    if budget_ran_out:
        what = "anything was measured" if not rows else "a configuration ran successfully"
        return f"no winner yet: --budget-minutes ran out before {what}; --resume goes on"
    if cut and not rows:
        return f"no winner yet: nothing was measured before the tune was {cut}"
    return "no configuration ran successfully"


def write_winner(run_dir: RunDirectory, objective: str = "throughput", cut: str | None = None) -> Path | None:
    """tuned.toml: the winner as a suite, opening with what its figure rests on, whether its lead over the
    runner-up is outside the noise, and `cut` (why the tune ended before its plan did), when it did."""
    rows = ranked(run_dir, objective)
    if not rows or rows[0]["status"] != "ok" or strayed(rows[0]):
        return None
    from lmbench.analyze.ranking import rank

    records = run_dir.recorded().records
    medians, basis = winner_basis(rank(records, objective)[0], objective)
    notes = tuple(filter(None, [f"from a tune cut short ({cut}): the search and measurements are partial" if cut
                                else None, basis, told_apart(rows, objective)]))
    path = run_dir.path / WINNER_FILE
    tmp = path.with_name(path.name + ".tmp")
    with results.saving(path):
        # Whole or not at all: an interrupted tune writes it in its last seconds, perhaps just before a SIGKILL.
        try:
            tmp.write_text(winner_suite({**rows[0], "metrics": {**rows[0]["metrics"], **medians}}, objective, notes),
                           encoding="utf-8")
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
    return path

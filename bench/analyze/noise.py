"""Between-process and between-run noise: estimated by `lmbench calibrate`, saved as a noise-floor file, read by
`compare`.

One process is one sample: the step times inside it say nothing about how much the next process
will differ (placement, clocks, allocator, compilation), so the gate needs the spread *between*
processes. And a gate compares two runs, made at different times, perhaps on another boot of the
machine: each run's processes may share an offset (a clock or thermal state, the machine's other
load) that no number of repeats inside it averages away. `calibrate` runs every configuration R
times (3 by default) with N fresh processes each, and keeps, on log(metric):

    log_sd        the spread of a process about its run's mean: the pooled within-run sample standard
                  deviation, df = the repeats less one per run;
    run_mean_sd   the spread of the runs' means, run_df = R - 1: what two runs of N repeats differ by,
                  offsets and processes together, without assuming there is no offset;
    mean_repeats  the repeats a run's mean rests on (N, or their harmonic mean where some failed).

A gate of n_b baseline and n_c candidate repeats then gets the interval

    ratio × exp(± t(0.975, df*) × sqrt(2 × run_mean_sd² + log_sd² × max(0, k_b/n_b + k_c/n_c - 2/mean_repeats)))

(ratio of medians): two runs' means differ by 2 × run_mean_sd² in variance, and the second term adds what the
gate's medians of its own repeat counts cost beyond the calibration's means (k is the cost of a median over
a mean, pi/2 from 3 repeats on, 1 for one or two, where the median is the mean); more repeats than the
calibration's never narrow the run term, which also holds the calibration's process noise (conservative:
it is not subtracted, so an estimate with few runs cannot come out near 0 by chance). df* is
Welch-Satterthwaite's for the two terms. The interval is the widest this formula gives for the gate's
repeats or any more: more repeats shrink the processes' term until the run term, with its R - 1 degrees of
freedom, sets the t quantile, and by its own repeat counts alone the interval *widened* with more repeats
(2 runs: 17% at 1 a side, 22% at 3, 36% at 5), the narrow intervals of few repeats being the ones that
missed (2 runs of 3, 1 vs 1: 9.5% of gates). Simulated with 1% noise a process and a 2% offset a run, 3
runs of 3 calibrate a 3-vs-3 gate that misses the true ratio 4.9% of the time (2 runs: 4.2%, at an
interval three times as wide; taking the runs' shift for process noise, as version 1 did: 22-51%); with
no offset, its 3-vs-3 floor is 3.0% (2 runs: 7.1%).

A floor file of version 1 (before runs were told apart) holds a log_sd over every repeat of both runs and
no run term: `compare` still reads it, as ratio × exp(± t(0.975, df) × log_sd × sqrt(k_b/n_b + k_c/n_c)).
The noise-floor file (JSON, written by `lmbench calibrate`):

    {"format": "lmbench-noise-floor", "version": 2, "metric": "tokens_per_s", "suite": "ci",
     "suite_sha256": "<the suite's content, as run.json's plan>", "device": "NVIDIA H100 80GB HBM3",
     "driver": "580.65.06", "torch": "2.11.0+cu130", "lmbench": "0.1.0",
     "created": "2026-11-26T12:00:00+00:00", "repeats_per_run": 3, "runs": 3,
     "configs": {"<config_key>": {"log_sd": 0.012, "df": 6, "run_mean_sd": 0.008, "run_df": 2,
                                  "mean_repeats": 3.0, "floor_1v1": 0.050, "floor_3v3": 0.050}}}

`floor_KvK` is the smallest threshold at which K repeats a side can give a verdict: the interval's half-width
around a ratio of exactly 1. An unchanged configuration's ratio strays from 1 as far as that interval reaches, so
at the floor itself only about 1 gate in 10 comes out `unchanged`; (1 + floor)² - 1, about twice the floor, is the
threshold at which 95% do (ConfigNoise.gate_threshold). `compare` warns when the runs' driver, torch, lmbench or
suite content is not what the floor was measured with (fields a file from before they were kept lacks).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmbench.errors import UsageError, read_json_input
from lmbench.measure import stats

FORMAT, VERSION = "lmbench-noise-floor", 2
#: Versions `load` reads: 1 has no run term.
READABLE = (1, 2)
CONFIDENCE = 0.95
#: Repeats a side at which the gate trusts its own spread (a bootstrap over the repeats).
MIN_REPEATS = 3
#: How far below the gate's own cost (the variance factor of its two medians) `half_width` looks for a wider
#: interval: 1/1024 reaches a thousand repeats a side's (cost 0.003) from one a side's (cost 2).
COSTS_SPAN = 1024.0
#: The largest spread of log(metric) a floor file may hold: a factor of e^5 (148x) between processes is no
#: measurement (and its square must not overflow).
MAX_LOG_SD = 5.0


def exp_or_inf(x: float) -> float:
    """exp(x), or inf where it overflows: an interval's end from absurd spreads (a record's 1e308 tokens/s) is
    unbounded, not an OverflowError."""
    return math.exp(x) if x < 709.0 else math.inf


def room_to_edge(ratio: float, threshold: float) -> float:
    """How far, in log, `ratio` is from the nearer edge of the threshold (1 - t or 1 + t): the half-width an interval
    around it may have and still settle the verdict."""
    return min(abs(math.log(ratio) - math.log1p(-threshold)), abs(math.log(ratio) - math.log1p(threshold)))


def median_cost(repeats: int) -> float:
    """Variance of a median of `repeats` over that of their mean: pi/2 (the large-sample cost) from MIN_REPEATS
    on, 1 below, where the median of one or two values is their mean."""
    return math.pi / 2 if repeats >= MIN_REPEATS else 1.0


@dataclass(frozen=True)
class ConfigNoise:
    """One configuration's spread of a metric: between the processes of a run, and between the runs' means."""

    log_sd: float
    """Sample standard deviation of log(metric) of a fresh process about its run's mean (version 1: about the
    mean of every repeat of both runs)."""
    df: int
    """Degrees of freedom of that estimate (repeats less one per run; version 1: repeats less one)."""
    run_mean_sd: float = 0.0
    """Sample standard deviation of the runs' means of log(metric); 0 without one (version 1)."""
    run_df: int = 0
    """Degrees of freedom of that estimate (runs - 1)."""
    mean_repeats: float = 1.0
    """The repeats a run's mean rests on (their harmonic mean over the runs)."""

    def half_width(self, n_base: int, n_cand: int) -> float:
        """Half-width of the 95% interval of log(ratio of medians) for these repeat counts (module docstring):
        each side's median costs its own factor (median_cost), so 1 repeat against 5 pays for the 5's median."""
        from scipy.stats import t

        cost = median_cost(n_base) / n_base + median_cost(n_cand) / n_cand
        if self.log_sd > MAX_LOG_SD or self.run_mean_sd > MAX_LOG_SD:
            return math.inf
        if self.run_df == 0:
            return float(t.ppf(0.5 + CONFIDENCE / 2, self.df)) * math.sqrt(self.log_sd ** 2 * cost)
        # The widest over the costs of these repeat counts and of any more a side. By the gate's own cost alone, more
        # repeats shrank the processes' term until the run term's few degrees of freedom set the t quantile: a
        # calibration of 2 runs gave 17% at 1 repeat a side and 22% at 3 (36% at 5), so more repeats made the gate
        # less decisive, and the narrow intervals of few repeats were the ones that missed (module docstring).
        import numpy as np

        # The costs of any counts at least these: below the gate's, but for a median's jump from 2 repeats (cost 1
        # each, the mean) to 3 (pi/2 / 3 = 0.52 each), which costs more; so up to the dearer of the two.
        upper = max(cost, *(median_cost(b) / b + median_cost(c) / c
                            for b, c in ((max(n_base, MIN_REPEATS), n_cand), (n_base, max(n_cand, MIN_REPEATS)),
                                         (max(n_base, MIN_REPEATS), max(n_cand, MIN_REPEATS)))))
        costs = upper * np.geomspace(1.0 / COSTS_SPAN, 1.0, 97)
        runs = 2 * self.run_mean_sd ** 2
        processes = self.log_sd ** 2 * np.maximum(0.0, costs - 2 / self.mean_repeats)
        variance = runs + processes
        with np.errstate(divide="ignore", invalid="ignore"):
            df = variance ** 2 / (runs ** 2 / self.run_df + processes ** 2 / self.df)
            widths = np.where(variance > 0, t.ppf(0.5 + CONFIDENCE / 2, df) * np.sqrt(variance), 0.0)
        return float(np.max(widths))

    def interval(self, ratio: float, n_base: int, n_cand: int) -> tuple[float, float]:
        width = self.half_width(n_base, n_cand)
        return ratio * exp_or_inf(-width), ratio * exp_or_inf(width)

    def floor(self, repeats: int) -> float:
        """Smallest threshold that `repeats` a side can resolve: the interval's reach around a ratio of 1."""
        return exp_or_inf(self.half_width(repeats, repeats)) - 1

    def gate_threshold(self, repeats: int) -> float:
        """The threshold at which an unchanged configuration comes out `unchanged` in 95% of gates of `repeats` a
        side by this floor's model: (1 + floor)² - 1, about twice the floor. The ratio of such a gate strays from 1
        as far as its own interval reaches (the interval is a 95% prediction of where the ratio falls, the floor's
        spread estimated as it is), and the interval around it must still fit inside the threshold; at the floor
        itself only a ratio of exactly 1 would. With 3 or more repeats a side the repeats' own interval counts too
        and can be wider: a lower bound there."""
        return exp_or_inf(2 * self.half_width(repeats, repeats)) - 1

    def repeats_for(self, threshold: float, ratio: float = 1.0, most: int = 1000) -> int:
        """Repeats a side whose interval around `ratio` clears the threshold's nearer edge (inside both edges:
        unchanged; beyond one: a change), by the same model as `half_width`, at least MIN_REPEATS; `most` + 1 when
        even `most` would not (a ratio sitting on an edge, or runs whose means differ by more than the threshold)."""
        room = room_to_edge(ratio, threshold)
        if self.run_df == 0 and self.log_sd > 0 and room > 0:
            # The half-width falls as sqrt(2 / n) once the median's cost is the same on both sides.
            needed = math.ceil(MIN_REPEATS * (self.half_width(MIN_REPEATS, MIN_REPEATS) / room) ** 2)
            return min(max(MIN_REPEATS, needed), most + 1)
        # With a run term the degrees of freedom move with the repeats too: the first count that fits, once the most
        # repeats could (past mean_repeats x pi/4 the processes' term is 0 and nothing changes).
        if self.half_width(most, most) > room:
            return most + 1
        return next((n for n in range(MIN_REPEATS, most + 1) if self.half_width(n, n) <= room), most + 1)


#: What a floor file says of the software it was measured with, besides the device: a floor from another driver,
#: torch or lmbench may not describe a gate's noise (another allocator, other kernels, another harness).
ENVIRONMENT = ("driver", "torch", "lmbench")


def environment_of(record: dict[str, Any]) -> dict[str, str | None]:
    """ENVIRONMENT's values in one record (None where it does not say)."""
    env = record.get("env") or {}
    found = {"driver": (env.get("device") or {}).get("driver"), "torch": env.get("torch"),
             "lmbench": env.get("lmbench")}
    return {key: None if found[key] is None else str(found[key]) for key in ENVIRONMENT}


@dataclass(frozen=True)
class NoiseFloor:
    metric: str
    configs: dict[str, ConfigNoise]
    device: str | None = None
    source: str = ""
    contended: frozenset[str] = frozenset()
    """Configurations whose floor was taken on a busy host (calibrate marks them): it says more about that load."""
    environment: dict[str, str] = dataclasses.field(default_factory=dict)
    """What the calibration's records ran with, by ENVIRONMENT's keys (driver, torch, lmbench), where the file
    says (a file from before they were kept says nothing)."""
    suite_sha256: str | None = None
    """The calibrated suite's content (with its --set and --device), as run.json keeps a run's."""

    def get(self, config_key: str) -> ConfigNoise | None:
        return self.configs.get(config_key)

    def rekeyed(self, records: list[dict[str, Any]]) -> NoiseFloor:
        """The floor also under the keys the records are read with where they were written under another
        (lmbench.analyze.results.current_key: a floor calibrated before two spellings of one configuration became one
        key keeps the old one, and matched nothing of the same runs)."""
        moved = {r["config_key"]: r["written_key"] for r in records
                 if r.get("written_key") in self.configs and r["config_key"] not in self.configs}
        if not moved:
            return self
        return dataclasses.replace(self, configs={**self.configs, **{now: self.configs[then]
                                                                     for now, then in moved.items()}},
                                   contended=self.contended | {now for now, then in moved.items()
                                                               if then in self.contended})

    def check_metric(self, metric: str) -> None:
        """A UsageError unless the floor was measured for `metric`, the one compared."""
        if self.metric != metric:
            raise UsageError(f"--noise-floor {self.source!r} was measured for {self.metric}, not --metric {metric}")


def estimate(runs: list[list[float]]) -> ConfigNoise | None:
    """Spread of one configuration's ok repeats (positive values), run by run: the processes' about their run's
    mean, and the runs' means' (module docstring); None with fewer than two values. With one run that has values,
    the spread of its repeats alone, as version 1 (nothing tells a run's offset then)."""
    logs = [[math.log(v) for v in run if v > 0 and math.isfinite(v)] for run in runs]
    logs = [run for run in logs if run]
    values = [x for run in logs for x in run]
    if len(values) < 2:
        return None
    if len(logs) < 2:
        return ConfigNoise(log_sd=stats.stdev(values), df=len(values) - 1)
    df = sum(len(run) - 1 for run in logs)
    means = [statistics.fmean(run) for run in logs]
    if df == 0:  # one repeat a run: each mean is one process, so the means' spread is the processes' best estimate
        within, df = statistics.variance(means), len(logs) - 1
    else:
        within = sum(sum((x - statistics.fmean(run)) ** 2 for x in run) for run in logs) / df
    return ConfigNoise(log_sd=math.sqrt(within), df=df, run_mean_sd=statistics.stdev(means),
                       run_df=len(logs) - 1, mean_repeats=1 / statistics.fmean(1 / len(run) for run in logs))


def to_json(noise: dict[str, ConfigNoise], *, metric: str, suite: str, device: str | None,
            repeats_per_run: int, runs: int, environment: dict[str, str | None] | None = None,
            suite_sha256: str | None = None) -> dict[str, Any]:
    configs = {key: {"log_sd": n.log_sd, "df": n.df, "run_mean_sd": n.run_mean_sd, "run_df": n.run_df,
                     "mean_repeats": n.mean_repeats, "floor_1v1": n.floor(1),
                     f"floor_{MIN_REPEATS}v{MIN_REPEATS}": n.floor(MIN_REPEATS)} for key, n in noise.items()}
    said = {key: (environment or {}).get(key) for key in ENVIRONMENT}
    return {"format": FORMAT, "version": VERSION, "metric": metric, "suite": suite, "suite_sha256": suite_sha256,
            "device": device, **said, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "repeats_per_run": repeats_per_run, "runs": runs, "configs": configs}


def write(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def load(path: Path) -> NoiseFloor:
    """Read a noise-floor file; anything else is a one-line UsageError naming the file."""
    where = f"--noise-floor {str(path)!r}"
    data = read_json_input(path, where=where, kind="noise-floor", made_by="lmbench calibrate")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UsageError(f"{where}: not a noise-floor file (no \"format\": \"{FORMAT}\"; lmbench calibrate "
                         "writes one)")
    if data.get("version") not in READABLE:
        raise UsageError(f"{where}: version {data.get('version')!r} is not supported (expected one of "
                         f"{', '.join(map(str, READABLE))})")
    configs: dict[str, ConfigNoise] = {}
    raw = data.get("configs")
    if not isinstance(data.get("metric"), str) or not isinstance(raw, dict):
        raise UsageError(f"{where}: needs a \"metric\" string and a \"configs\" object")
    for key, entry in raw.items():
        fields = entry if isinstance(entry, dict) else {}
        log_sd, df = fields.get("log_sd"), fields.get("df")
        run_sd, run_df = fields.get("run_mean_sd", 0.0), fields.get("run_df", 0)
        repeats = fields.get("mean_repeats", 1.0)
        if not (_spread(log_sd) and _count(df, least=1) and _spread(run_sd) and _count(run_df, least=0)
                and (run_df == 0 or "run_mean_sd" in fields)
                and _count(repeats, least=1, number=float)):
            raise UsageError(f"{where}: configs[{key!r}] needs log_sd in [0, {MAX_LOG_SD:g}] and an integer df >= 1 "
                             f"(and run_mean_sd in [0, {MAX_LOG_SD:g}], an integer run_df >= 0, mean_repeats >= 1 "
                             "where given)")
        configs[key] = ConfigNoise(log_sd=float(log_sd), df=df, run_mean_sd=float(run_sd), run_df=run_df,
                                   mean_repeats=float(repeats))
    busy = frozenset(key for key, entry in raw.items() if entry.get("contended") is True)
    said = {key: str(data[key]) for key in ENVIRONMENT if data.get(key) is not None}
    sha = data.get("suite_sha256")
    return NoiseFloor(metric=data["metric"], configs=configs, device=data.get("device"), source=str(path),
                      contended=busy, environment=said, suite_sha256=sha if isinstance(sha, str) and sha else None)


def _spread(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= MAX_LOG_SD


def _count(value: Any, *, least: int, number: type = int) -> bool:
    """An integer (or, with number=float, any finite number) no smaller than `least`."""
    kinds = (int, float) if number is float else (int,)
    return isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value) and value >= least


def ok_values(records: list[dict[str, Any]], metric: str) -> dict[str, list[float]]:
    """Finite values of `metric` in the ok repeats, by configuration key (every key present, maybe empty)."""
    values: dict[str, list[float]] = {}
    for r in records:
        value = (r.get("metrics") or {}).get(metric) if r["status"] == "ok" else None
        values.setdefault(r["config_key"], [])
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            values[r["config_key"]].append(float(value))
    return values


def floor_records(records: list[dict[str, Any]], metric: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The records a configuration's noise floor rests on, and a note for each configuration whose host was busy:
    repeats whose window other processes kept the cores busy in (lmbench.measure.hostload) are left out while two
    quiet ones remain to estimate from; with fewer, every repeat counts and the note says the floor measures the
    host's load as much as the configuration (a contended CPU gave floors of 945,524%)."""
    from lmbench.measure.hostload import window_contended

    def busy(r: dict[str, Any]) -> bool:
        return r["status"] == "ok" and window_contended(r.get("metrics") or {})

    every, quiet = ok_values(records, metric), ok_values([r for r in records if not busy(r)], metric)
    dropped, notes = set(), {}
    for key, values in every.items():
        calm = quiet.get(key, [])
        if len(calm) == len(values):
            continue
        if len(calm) >= 2:
            dropped.add(key)
            notes[key] = f"{len(values) - len(calm)} contended repeat(s) left out"
        else:
            notes[key] = (f"contended: {len(values) - len(calm)} of {len(values)} repeats ran while other processes "
                          "kept the cores busy; calibrate on a quiet host")
    return [r for r in records if not (r["config_key"] in dropped and busy(r))], notes


def calibrate(runs: list[list[dict[str, Any]]], *, metric: str, repeats_per_run: int,
              suite_sha256: str | None = None) -> tuple[dict[str, ConfigNoise], dict[str, Any]]:
    """Each configuration's spread over the ok repeats of R runs of one suite (the quiet ones: floor_records),
    within and between runs, and the file's payload, which marks a floor taken on a busy host `contended` and says
    what the runs ran on (device, driver, torch, lmbench: the first record's that says) and the suite's content."""
    every = [r for run in runs for r in run]
    kept, notes = floor_records(every, metric)
    ids = {id(r) for r in kept}
    by_run = [ok_values([r for r in run if id(r) in ids], metric) for run in runs]
    keys = dict.fromkeys(key for values in by_run for key in values)
    estimates = {key: found for key in keys if (found := estimate([values.get(key, []) for values in by_run]))}
    first = next((r for r in every if r.get("env")), {})
    device = ((first.get("env") or {}).get("device") or {}).get("name")
    suite = next((r.get("suite") for r in every), None)
    payload = to_json(estimates, metric=metric, suite=str(suite), device=device, repeats_per_run=repeats_per_run,
                      runs=len(runs), environment=environment_of(first), suite_sha256=suite_sha256)
    for key, note in notes.items():
        if key in payload["configs"]:
            payload["configs"][key].update(note=note, contended=note.startswith("contended"))
    for key, entry in payload["configs"].items():
        measured = sum(1 for values in by_run if values.get(key))
        if measured < len(runs):
            # One run with values cannot tell a run's offset from its processes' noise: the floor has no run term.
            alone = (f"ok in {measured} of {len(runs)} runs" + (": no term for a run's offset, the floor covers one "
                                                               "run's processes only" if measured == 1 else ""))
            entry["note"] = "; ".join(filter(None, [entry.get("note"), alone]))
    return estimates, payload

"""Between-process noise: estimated by `lmbench calibrate`, saved as a noise-floor file, read by `compare`.

One process is one sample: the step times inside it say nothing about how much the next process
will differ (placement, clocks, allocator, compilation), so the gate needs the spread *between*
processes. `calibrate` runs every configuration 2 × N times in fresh processes; for each one the
sample standard deviation of log(metric) over all ok repeats of both runs is `log_sd` (its degrees of
freedom `df` = samples − 1; a shift between the two runs counts as noise, as it would in a gate).

With a noise floor, a comparison of n_b baseline and n_c candidate repeats gets the interval

    ratio × exp(± t(0.975, df) × log_sd × sqrt(1/n_b + 1/n_c) × k),    k = sqrt(pi/2) when min(n) ≥ 3

(ratio of medians; k is the large-sample cost of a median over a mean, 1 for one or two repeats where
the median is the mean). The noise-floor file (JSON, written by `lmbench calibrate`):

    {"format": "lmbench-noise-floor", "version": 1, "metric": "tokens_per_s", "suite": "ci",
     "device": "NVIDIA H100 80GB HBM3", "created": "2026-11-26T12:00:00+00:00", "repeats_per_run": 3,
     "configs": {"<config_key>": {"log_sd": 0.012, "df": 5, "samples": 6,
                                  "floor_1v1": 0.043, "floor_3v3": 0.031}}}

`floor_KvK` is the smallest threshold at which K repeats a side can give a verdict (the interval's
half-width for an unchanged ratio), for choosing `--threshold`.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmbench.errors import UsageError, read_json_input
from lmbench.measure import stats

FORMAT, VERSION = "lmbench-noise-floor", 1
CONFIDENCE = 0.95
#: Repeats a side at which the gate trusts its own spread (a bootstrap over the repeats).
MIN_REPEATS = 3


def median_cost(repeats: int) -> float:
    """Variance of a median of `repeats` over that of their mean: pi/2 (the large-sample cost) from MIN_REPEATS
    on, 1 below, where the median of one or two values is their mean."""
    return math.pi / 2 if repeats >= MIN_REPEATS else 1.0


@dataclass(frozen=True)
class ConfigNoise:
    """One configuration's between-process spread of a metric."""

    log_sd: float
    """Sample standard deviation of log(metric) over fresh processes."""
    df: int
    """Degrees of freedom of that estimate (samples - 1)."""

    def half_width(self, n_base: int, n_cand: int) -> float:
        """Half-width of the 95% interval of log(ratio of medians) for these repeat counts: each side's median
        costs its own factor (median_cost), so 1 repeat against 5 pays for the 5's median."""
        from scipy.stats import t

        spread = math.sqrt(median_cost(n_base) / n_base + median_cost(n_cand) / n_cand)
        return float(t.ppf(0.5 + CONFIDENCE / 2, self.df)) * self.log_sd * spread

    def interval(self, ratio: float, n_base: int, n_cand: int) -> tuple[float, float]:
        width = self.half_width(n_base, n_cand)
        return ratio * math.exp(-width), ratio * math.exp(width)

    def floor(self, repeats: int) -> float:
        """Smallest threshold that `repeats` a side can resolve: the interval's reach around a ratio of 1."""
        return math.exp(self.half_width(repeats, repeats)) - 1

    def repeats_for(self, threshold: float, ratio: float = 1.0, most: int = 1000) -> int:
        """Repeats a side whose interval around `ratio` clears the threshold's nearer edge (inside both edges:
        unchanged; beyond one: a change), by the same model as `half_width`, at least MIN_REPEATS; `most` + 1 when
        even `most` would not (a ratio sitting on an edge never settles)."""
        room = min(abs(math.log(ratio) - math.log1p(-threshold)), abs(math.log(ratio) - math.log1p(threshold)))
        if self.log_sd == 0:
            return MIN_REPEATS
        # The half-width falls as sqrt(2 / n) once the median's cost is the same on both sides.
        at_min = self.half_width(MIN_REPEATS, MIN_REPEATS)
        needed = math.ceil(MIN_REPEATS * (at_min / room) ** 2) if room > 0 else most + 1
        return min(max(MIN_REPEATS, needed), most + 1)


@dataclass(frozen=True)
class NoiseFloor:
    metric: str
    configs: dict[str, ConfigNoise]
    device: str | None = None
    source: str = ""
    contended: frozenset[str] = frozenset()
    """Configurations whose floor was taken on a busy host (calibrate marks them): it says more about that load."""

    def get(self, config_key: str) -> ConfigNoise | None:
        return self.configs.get(config_key)


def estimate(values: list[float]) -> ConfigNoise | None:
    """Spread of one configuration's ok repeats (positive values); None with fewer than two."""
    logs = [math.log(v) for v in values if v > 0 and math.isfinite(v)]
    if len(logs) < 2:
        return None
    return ConfigNoise(log_sd=stats.stdev(logs), df=len(logs) - 1)


def to_json(noise: dict[str, ConfigNoise], *, metric: str, suite: str, device: str | None,
            repeats_per_run: int) -> dict[str, Any]:
    configs = {key: {"log_sd": n.log_sd, "df": n.df, "samples": n.df + 1, "floor_1v1": n.floor(1),
                     f"floor_{MIN_REPEATS}v{MIN_REPEATS}": n.floor(MIN_REPEATS)} for key, n in noise.items()}
    return {"format": FORMAT, "version": VERSION, "metric": metric, "suite": suite, "device": device,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "repeats_per_run": repeats_per_run, "configs": configs}


def write(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def load(path: Path) -> NoiseFloor:
    """Read a noise-floor file; anything else is a one-line UsageError naming the file."""
    where = f"--noise-floor {str(path)!r}"
    data = read_json_input(path, where=where, kind="noise-floor", made_by="lmbench calibrate")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UsageError(f"{where}: not a noise-floor file (no \"format\": \"{FORMAT}\"; lmbench calibrate "
                         "writes one)")
    if data.get("version") != VERSION:
        raise UsageError(f"{where}: version {data.get('version')!r} is not supported (expected {VERSION})")
    configs: dict[str, ConfigNoise] = {}
    raw = data.get("configs")
    if not isinstance(data.get("metric"), str) or not isinstance(raw, dict):
        raise UsageError(f"{where}: needs a \"metric\" string and a \"configs\" object")
    for key, entry in raw.items():
        log_sd = entry.get("log_sd") if isinstance(entry, dict) else None
        df = entry.get("df") if isinstance(entry, dict) else None
        numbers = not isinstance(log_sd, bool) and not isinstance(df, bool)
        if not (numbers and isinstance(log_sd, (int, float)) and math.isfinite(log_sd) and log_sd >= 0
                and isinstance(df, int) and df >= 1):
            raise UsageError(f"{where}: configs[{key!r}] needs log_sd >= 0 and an integer df >= 1")
        configs[key] = ConfigNoise(log_sd=float(log_sd), df=df)
    busy = frozenset(key for key, entry in raw.items() if entry.get("contended") is True)
    return NoiseFloor(metric=data["metric"], configs=configs, device=data.get("device"), source=str(path),
                      contended=busy)


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


def floor_values(records: list[dict[str, Any]], metric: str) -> tuple[dict[str, list[float]], dict[str, str]]:
    """The values each configuration's noise floor rests on (floor_records), by key, and the notes."""
    kept, notes = floor_records(records, metric)
    return ok_values(kept, metric), notes


def calibrate(run_a: list[dict[str, Any]], run_b: list[dict[str, Any]], *, metric: str, repeats_per_run: int
              ) -> tuple[dict[str, ConfigNoise], dict[str, Any]]:
    """Each configuration's spread over the ok repeats of two runs of one suite (the quiet ones: floor_values), and
    the file's payload, which marks a floor taken on a busy host `contended`."""
    values, notes = floor_values(run_a + run_b, metric)
    estimates = {key: found for key, v in values.items() if (found := estimate(v)) is not None}
    first = next((r for r in run_a + run_b if r.get("env")), {})
    device = ((first.get("env") or {}).get("device") or {}).get("name")
    suite = next((r.get("suite") for r in run_a + run_b), None)
    payload = to_json(estimates, metric=metric, suite=str(suite), device=device, repeats_per_run=repeats_per_run)
    for key, note in notes.items():
        if key in payload["configs"]:
            payload["configs"][key].update(note=note, contended=note.startswith("contended"))
    return estimates, payload

"""GPU telemetry over exactly the measured window: power, energy, memory, utilisation, clocks, throttling.

    telemetry = Telemetry.for_device(device, period_s=0.05)
    with telemetry.window():
        ...measured steps...
    fields = telemetry.summary(tokens=...)

A background thread samples NVML every `period_s` (sleeping on an Event, never spinning); the
energy counter is read at the window's edges after the device is synchronised. Without NVML the
window still works and every field is None, with the reason in `unavailable`.
"""

from __future__ import annotations

import contextlib
import csv
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from lmbench.measure import gpushare
from lmbench.measure.nvml import (
    CLOCK_EVENT_REASONS,
    POWER_OR_HEAT,
    NvmlDevice,
    NvmlUnavailable,
    reason_names,
)

#: The energy counter advances in steps tens of milliseconds apart, so over a short window one step
#: more or less is a large error (or a silent 0 J). Below this window length the sampled-power
#: integral is used instead, and `energy_source` says so.
MIN_COUNTER_WINDOW_S = 1.0

#: From this relative difference between the counter's energy and the sampled-power integral, the window is
#: too short for either to be quoted alone (3%: the size of the differences between configurations one quotes).
#: On an H100 (2026-11-26) they agreed within 0.4% over 3.7 s and differed by 4-6% over 1.1-1.4 s, as a
#: counter that advances about every 100 ms would.
ENERGY_DISAGREEMENT_WARN = 0.03


def energy_disagreement(energy_j: float | None, source: str | None, integral_j: float | None) -> float | None:
    """(integral - counter) / counter when the energy came from the counter and an integral exists, else None."""
    if source != "counter" or not energy_j or integral_j is None:
        return None
    return (integral_j - energy_j) / energy_j


#: energy_source when the window was too short for the counter (the power integral stands in).
SHORT_WINDOW_SOURCE = "power-integral (window too short for the counter)"
#: ... when evaluations cut it into stretches each too short for the counter (each pause adds two counter reads).
SHORT_STRETCH_SOURCE = "power-integral (evaluations cut the window into stretches too short for the counter)"
#: ... when the counter was read at both edges but gave nothing usable.
FAILED_READ_SOURCE = "power-integral (a counter read failed)"
STALLED_SOURCE = "power-integral (the counter did not advance)"
#: ... on a device without the counter: the integral is its only energy, no caveat.
UNSUPPORTED_SOURCE = "power-integral (counter unsupported)"


def disagreement_of(fields: dict[str, Any]) -> float | None:
    """A record's energy_disagreement_frac, computed from its energy fields when it predates the field."""
    if "energy_disagreement_frac" in fields:
        return fields["energy_disagreement_frac"]
    return energy_disagreement(fields.get("energy_j"), fields.get("energy_source"), fields.get("energy_integral_j"))


def energy_caveat(fields: dict[str, Any]) -> str | None:
    """Why a window's energy should not be quoted, in a few words, or None: a window too short for NVML's
    counter (the energy is a few power samples' integral), or counter and integral ENERGY_DISAGREEMENT_WARN apart."""
    window = fields.get("telemetry_window_s") or 0.0
    source = fields.get("energy_source") or ""
    readings = fields.get("power_readings")
    integral = (f"{readings} power readings" if readings is not None
                else f"{fields.get('telemetry_samples') or 0} power samples")
    if source == SHORT_WINDOW_SOURCE:
        return f"a {window:.2f} s window, too short for NVML's counter: energy from {integral}"
    if source.startswith("power-integral") and source != UNSUPPORTED_SOURCE:
        return f"energy from {integral} over a {window:.2f} s window: {source.removeprefix('power-integral ')}"
    if source.startswith("mixed"):
        # Ranks or GPUs whose energies came from other methods (combine): a caveat for the weakest of them.
        return f"ranks' energies from other methods ({source})"
    gap = disagreement_of(fields)
    if gap is not None and abs(gap) >= ENERGY_DISAGREEMENT_WARN:
        return f"power integral {gap:+.1%} vs counter over a {window:.2f} s window"
    return None


def energy_warning(fields: dict[str, Any]) -> str | None:
    """The record's warning when its energy should not be quoted (energy_caveat), else None."""
    caveat = energy_caveat(fields)
    return f"energy: {caveat}; lengthen the window (more steps) to quote J/token" if caveat else None


def sampling_warning(fields: dict[str, Any]) -> str | None:
    """The record's warning when the window's samples fall short (none inside it, or a sampler that died), else
    None: the note is in the record's `telemetry` field, which a reader of the figures beside it may not open."""
    note = fields.get("telemetry") or ""
    return f"telemetry {note[len('on: '):]}" if note.startswith("on: ") else None


@dataclass
class Sample:
    """One reading of the sampler; times are seconds since the window opened."""

    t_s: float
    power_w: float | None
    mem_used_bytes: int | None
    gpu_util_pct: float | None
    sm_clock_mhz: float | None
    temp_c: float | None
    clock_event_bits: int | None


#: The timeline CSV: every Sample field (t_s on the sampler's clock, which starts before the ranks' barrier), then
#: `window_t_s`, the time since the counted window opened, and `in_window` (1 inside it, edges included; 0 for the
#: sample before the barrier and the one after the window); both empty where the window is not known.
TIMELINE_COLUMNS = [*(f.name for f in fields(Sample)), "window_t_s", "in_window"]


class Timeline(list):
    """A window's samples in time order (the first before the ranks' barrier, the last after the window), and once
    the window closed, the span it counted on their clock: what power_trace clips them to."""

    window_s: tuple[float, float] | None = None


def trapezoid_j(samples: list[Sample]) -> float | None:
    """Energy as the trapezoid integral of sampled power over time; None with fewer than two readings."""
    points = [(s.t_s, s.power_w) for s in samples if s.power_w is not None]
    if len(points) < 2:
        return None
    return sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(points, points[1:]))


class Telemetry:
    """Owns one device's sampler thread, its samples and the energy counter readings of one window."""

    def __init__(self, device: NvmlDevice | None, *, period_s: float = 0.05, unavailable: str | None = None,
                 synchronize: Callable[[], None] = lambda: None,
                 min_counter_window_s: float = MIN_COUNTER_WINDOW_S) -> None:
        if period_s <= 0:
            raise ValueError(f"period_s={period_s} must be positive")
        self.device = device
        self.period_s = period_s
        self.min_counter_window_s = min_counter_window_s
        self.unavailable = unavailable
        self._synchronize = synchronize
        self.samples: Timeline = Timeline()
        self.sample_cost_s: list[float] = []
        """Time each sample took to read: the sampler's own cost."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self.duration_s: float | None = None
        self.energy_edges_mj: tuple[int | None, int | None] = (None, None)
        self.lead_s = 0.0
        """Where the window's counted span starts on the samples' clock (after the sampler's start and the barrier)."""
        self.stretches_s: list[float] = []
        """The spans of training between pauses, when the window was paused (each needs the counter's length)."""
        self.counter_read = False
        """Whether the energy counter gave a reading at either edge (a failed read is not an unsupported counter)."""
        self.pause_read_failed = False
        """A counter read around a pause failed: its energy could not be left out of the counter's."""
        self._stretch_start = 0.0
        self.paused_mj = 0
        """Energy counted while paused (held-out evaluations inside the window), left out of `energy`."""
        self._lock = threading.Lock()
        self._paused = False
        self.static: dict[str, Any] = {}
        self.pid_edges: list[list[int] | None] = []
        """NVML's compute processes on the device as the window opened and as it closed (gpushare)."""
        self.sampler_failure: tuple[float, str] | None = None
        """When (on the samples' clock) and why a sample first failed with an error other than NVML's; the sampler
        thread stops there, and the summary's `telemetry` says so."""
        self._start_mj: int | None = None

    @classmethod
    def for_device(cls, device: Any, *, period_s: float = 0.05, nvml: Any = None) -> Telemetry:
        """Telemetry of a torch device; an unavailable one (CPU, no NVML, MIG) with the reason."""
        if device.type != "cuda":
            return cls(None, period_s=period_s, unavailable="not a CUDA device")
        import torch

        from lmbench.measure.nvml import torch_device_ids

        index = device.index if device.index is not None else torch.cuda.current_device()
        uuid, pci = torch_device_ids(index)
        try:
            nvml_device = NvmlDevice.open(uuid=uuid, pci_bus_id=pci, nvml=nvml)
        except NvmlUnavailable as err:
            return cls(None, period_s=period_s, unavailable=str(err))
        return cls(nvml_device, period_s=period_s, synchronize=lambda: torch.cuda.synchronize(device))

    @property
    def available(self) -> bool:
        return self.device is not None

    def _read(self, *, sampler: bool = False) -> bool:
        """Take one sample; False where a reading raised an error other than NVML's (which NvmlDevice turns into
        None): nvidia-ml-py's library-mismatch error, a bug. It ended the thread unseen: the sampler's (`sampler`)
        first failure is kept for the record. An edge's read that fails costs that edge's sample only (the sampler
        ran on; a reviewer: it was reported as a sampler that stopped)."""
        d = self.device
        start = time.perf_counter()
        try:
            sample = Sample(t_s=start - self._t0, power_w=d.power_w(), mem_used_bytes=d.memory_used_bytes(),
                            gpu_util_pct=d.gpu_util_pct(), sm_clock_mhz=d.sm_clock_mhz(), temp_c=d.temperature_c(),
                            clock_event_bits=d.clock_event_bits())
        except Exception as err:  # noqa: BLE001 - the record says so (summary); the measurement goes on
            if sampler:
                self.sampler_failure = self.sampler_failure or (start - self._t0, f"{type(err).__name__}: {err}")
            return False
        self.sample_cost_s.append(time.perf_counter() - start)
        self.samples.append(sample)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            with self._lock:
                if not self._paused and not self._read(sampler=True):
                    return

    @contextlib.contextmanager
    def paused(self) -> Iterator[Telemetry]:
        """Leave a span of the window out (a held-out evaluation): no samples, its energy subtracted, and the
        sample times shifted so that the timeline and `duration_s` cover the window's own work only."""
        if not self.available or self._thread is None:
            yield self
            return
        self._synchronize()
        with self._lock:
            self._paused = True
            start, start_mj = time.perf_counter(), self.device.energy_mj()
            self.stretches_s.append(start - self._stretch_start)
        try:
            yield self
        finally:
            self._synchronize()
            with self._lock:
                end_mj = self.device.energy_mj()
                now = time.perf_counter()
                self._t0 += now - start
                self._stretch_start = now
                if start_mj is not None and end_mj is not None:
                    self.paused_mj += end_mj - start_mj
                else:
                    self.pause_read_failed = True
                self._paused = False

    @contextlib.contextmanager
    def window(self, ready: Callable[[], None] | None = None) -> Iterator[Telemetry]:
        """Sample from the (synchronised) start to the (synchronised) end of the block; `ready` as in `windows`."""
        with windows([self] if self.available else [], ready):
            yield self

    def _open(self) -> None:
        """All of the window's set-up, before the ranks' barrier: the readings taken once, the first sample (before
        the counted span), and the sampler thread's start."""
        self.samples.clear()
        self.samples.window_s = None
        self.sample_cost_s.clear()
        self.stretches_s.clear()
        self.pause_read_failed = False
        self.paused_mj = 0
        self.sampler_failure = None
        self.static = self.device.static_info()
        # Who else holds a context on the card, read at both edges outside the timed span.
        self.pid_edges = [self.device.compute_pids()]
        self._synchronize()
        self._t0 = time.perf_counter()
        self._read()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="lmbench-telemetry", daemon=True)
        self._thread.start()

    def _begin(self) -> None:
        """The counter's first read: the counted span starts."""
        self._start_mj = self.device.energy_mj()
        self._stretch_start = time.perf_counter()
        self.lead_s = self._stretch_start - self._t0  # the samples' clock starts before the counted span

    def _end(self) -> None:
        """The counter's last read, the device synchronised before it: the counted span ends."""
        end_mj = self.device.energy_mj()
        if self.stretches_s:  # the last stretch, after the last pause
            self.stretches_s.append(time.perf_counter() - self._stretch_start)
        self.counter_read = self._start_mj is not None or end_mj is not None
        # _t0 moves forward over paused spans (paused): the window's own work, from the first counter read.
        self.duration_s = time.perf_counter() - self._t0 - self.lead_s
        self.energy_edges_mj = (self._start_mj, end_mj - self.paused_mj if end_mj is not None else None)
        self.samples.window_s = (self.lead_s, self.lead_s + self.duration_s)

    def _stop_sampler(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def _close(self) -> None:
        """After the sampler stopped: the closing edge's sample and processes."""
        self._read()
        self.pid_edges.append(self.device.compute_pids())

    def energy(self) -> tuple[float | None, str | None]:
        """(joules over the window, source): the counter when it is trustworthy, else the power integral over the
        window's own span, each fallback saying why."""
        start, end = self.energy_edges_mj
        long_enough = (self.duration_s or 0) >= self.min_counter_window_s
        # Each pause reads the counter twice more: every stretch of training must be long enough on its own.
        stretches_ok = not self.stretches_s or min(self.stretches_s) >= self.min_counter_window_s
        if start is not None and end is not None and end > start and long_enough and stretches_ok \
                and not self.pause_read_failed:
            return (end - start) / 1e3, "counter"
        integral = self.window_integral_j()
        if integral is None:
            return None, None
        if start is None and not self.counter_read:
            return integral, UNSUPPORTED_SOURCE
        if not long_enough:
            return integral, SHORT_WINDOW_SOURCE
        if not stretches_ok:
            return integral, SHORT_STRETCH_SOURCE
        failed = start is None or end is None or self.pause_read_failed
        return integral, FAILED_READ_SOURCE if failed else STALLED_SOURCE

    def window_integral_j(self) -> float | None:
        """The sampled power's trapezoid integral over the window's own span (from the counter's first read to its
        last, on the samples' clock), the power at each edge interpolated: the samples start before the ranks'
        barrier and end after the window (a reviewer: a 0.3 s barrier wait read 402 J for a 0.6 s window's 360)."""
        if self.duration_s is None:
            return trapezoid_j(self.samples)
        return trapezoid_j(_clipped(self.samples, self.lead_s, self.lead_s + self.duration_s))

    def summary(self, *, tokens: int) -> dict[str, Any]:
        """Result fields (DESIGN.md names); all None when telemetry is unavailable."""
        empty = {name: None for name in SUMMARY_FIELDS}
        if not self.available or not self.samples:
            return {**empty, "telemetry": f"off: {self.unavailable or 'no samples'}"}
        energy_j, source = self.energy()
        # Every figure but the energy from the window's own samples (a sample exactly at an edge counts; the first
        # sample comes before the ranks' barrier, the last after the window): a reviewer found one pre-window sample
        # could set the throttling flag alone, and the clocks, temperatures and peaks took them all.
        duration = self.duration_s
        inside = [s for s in self.samples if duration is None or self.lead_s <= s.t_s <= self.lead_s + duration]
        held = [s for s in inside if s.clock_event_bits is not None]
        bits = 0
        for s in held:
            bits |= s.clock_event_bits
        # No sample with the bits (neither call answered): unknown, which is not "not throttled".
        reasons = reason_names(bits) if held else None
        throttled = [s for s in held if POWER_OR_HEAT & set(reason_names(s.clock_event_bits))]
        powers = [s.power_w for s in inside if s.power_w is not None]
        clocks = [s.sm_clock_mhz for s in inside if s.sm_clock_mhz is not None]
        utils = [s.gpu_util_pct for s in inside if s.gpu_util_pct is not None]
        mems = [s.mem_used_bytes for s in inside if s.mem_used_bytes is not None]
        temps = [s.temp_c for s in inside if s.temp_c is not None]
        integral = self.window_integral_j()
        notes = []
        if not inside:
            notes.append(f"no sample inside the {duration:.3f} s window (one every {self.period_s:g} s): no clock, "
                         "utilisation, memory, temperature, peak power or throttling figures")
        duration = duration or 0.0
        if self.sampler_failure is not None:
            at_s, error = self.sampler_failure
            at_s -= self.lead_s
            where = ("before the window" if at_s < 0 else "after the window" if at_s > duration
                     else f"at {at_s:.2f} s of the {duration:.2f} s window")
            notes.append(f"a sample failed {where} ({error}) and the sampler stopped: {len(inside)} "
                         f"sample{'' if len(inside) == 1 else 's'} inside the window")
        # The counter's mean where it gives the energy: NVML's power field changes about every 100 ms, so 50 ms
        # samples see each value about twice, and under a power cap (an oscillation of about 200 ms) their mean
        # aliased it: 608 W sampled against the counter's 664 W over one H100 window of 4 s.
        counted = energy_j / duration if source == "counter" and energy_j and duration > 0 else None
        return {
            "telemetry": "on: " + "; ".join(notes) if notes else "on",
            "power_avg_w": counted or (integral / duration if integral is not None and duration > 0 else None)
            or _time_weighted_power(inside) or _avg(powers),
            "power_max_w": max(powers) if powers else None,
            "power_source": self.device.power_source,
            "energy_j": energy_j,
            "energy_source": source,
            "energy_integral_j": integral,
            "energy_disagreement_frac": energy_disagreement(energy_j, source, integral),
            "j_per_token": energy_j / tokens if energy_j is not None and tokens else None,
            "tokens_per_j": tokens / energy_j if energy_j else None,
            "mem_nvml_used_peak_bytes": max(mems) if mems else None,
            "gpu_util_avg_pct": _avg(utils),
            "sm_clock_avg_mhz": _avg(clocks),
            "sm_clock_min_mhz": min(clocks) if clocks else None,
            "temp_max_c": max(temps) if temps else None,
            "throttle_reasons": reasons,
            "throttled_power_or_heat": None if reasons is None else bool(POWER_OR_HEAT & set(reasons)),
            "throttled_sample_frac": len(throttled) / len(held) if held else None,
            "telemetry_samples": len(inside),
            "power_readings": _readings(powers),
            "telemetry_period_s": self.period_s,
            "telemetry_window_s": duration,
            "sampler_cost_per_sample_s": _avg(self.sample_cost_s),
            **gpushare.fields(self.pid_edges),
            **self.static,
        }

    def write_timeline(self, path: Path) -> None:
        """The samples as CSV (one row per sample), for plots of power over time."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=TIMELINE_COLUMNS)
            writer.writeheader()
            window = getattr(self.samples, "window_s", None)
            for sample in self.samples:
                where = {"window_t_s": "", "in_window": ""} if window is None else {
                    "window_t_s": round(sample.t_s - window[0], 6),
                    "in_window": int(window[0] <= sample.t_s <= window[1])}
                writer.writerow({**asdict(sample), **where})


def _time_weighted_power(samples: list[Sample]) -> float | None:
    """Mean power over the sampled span (trapezoid integral / span), robust to uneven sample spacing."""
    timed = [s.t_s for s in samples if s.power_w is not None]
    integral = trapezoid_j(samples)
    if integral is None or timed[-1] <= timed[0]:
        return None
    return integral / (timed[-1] - timed[0])


def _readings(powers: list[float]) -> int:
    """The distinct power readings among the samples: a value repeated by consecutive samples is one reading of
    NVML's (which updates about every 100 ms, twice the default sampling period)."""
    return sum(1 for i, power in enumerate(powers) if i == 0 or power != powers[i - 1])


def _avg(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


SUMMARY_FIELDS = ("telemetry", "power_avg_w", "power_max_w", "power_source", "energy_j", "energy_source",
                  "energy_integral_j", "energy_disagreement_frac", "j_per_token", "tokens_per_j",
                  "mem_nvml_used_peak_bytes", "gpu_util_avg_pct", "sm_clock_avg_mhz", "sm_clock_min_mhz",
                  "temp_max_c", "throttle_reasons", "throttled_power_or_heat", "throttled_sample_frac",
                  "telemetry_samples", "power_readings", "telemetry_period_s", "telemetry_window_s",
                  "sampler_cost_per_sample_s", "power_limit_w",
                  "power_limit_min_w", "sm_clock_app_mhz", "ecc_enabled", "sm_clock_max_mhz", "driver_version",
                  "nvml_name", "gpu_other_processes", "gpu_other_pids")


def power_trace(samples: list[Sample]) -> list[tuple[float, float]]:
    """(seconds since the window's counted span began, watts) of every sample inside it that has a power reading,
    the power at each edge interpolated, for a closed window's Timeline: ranks' traces sum on one clock (each rank's
    own samples start before its barrier wait). Other samples (a sum already on that clock) as they are."""
    window = getattr(samples, "window_s", None)
    if window is None:
        return [(s.t_s, s.power_w) for s in samples if s.power_w is not None]
    start, end = window
    return [(s.t_s - start, s.power_w) for s in _clipped(samples, start, end) if start <= s.t_s <= end]


def _interpolate(trace: list[tuple[float, float]], t: float) -> float:
    if t <= trace[0][0]:
        return trace[0][1]
    for (t0, p0), (t1, p1) in zip(trace, trace[1:]):
        if t <= t1:
            return p0 + (p1 - p0) * (t - t0) / (t1 - t0) if t1 > t0 else p1
    return trace[-1][1]


def summed_power(traces: list[list[tuple[float, float]]]) -> list[Sample]:
    """Power summed across GPUs at each instant: every trace interpolated onto the first one's sample times."""
    grid = [t for t, _ in traces[0]] if traces and all(traces) else []
    return [Sample(t, sum(_interpolate(tr, t) for tr in traces), None, None, None, None, None) for t in grid]


def combine(summaries: list[dict[str, Any]], traces: list[list[tuple[float, float]]], *, tokens: int,
            member: str = "rank") -> dict[str, Any]:
    """One telemetry summary for several GPUs measured over the same window (one per rank or device).

    Energy sums over GPUs. Power sums across GPUs at each instant (windows open together: after a
    barrier across ranks, one after the other within a process). `member` names a GPU in messages.
    """
    if len(summaries) == 1:
        return summaries[0]
    off = next(((rank, s) for rank, s in enumerate(summaries) if not s["telemetry"].startswith("on")), None)
    if off is not None:
        return {**{name: None for name in SUMMARY_FIELDS}, "telemetry": f"{off[1]['telemetry']} ({member} {off[0]})"}

    def values(name: str) -> list[Any]:
        return [s[name] for s in summaries if s[name] is not None]

    def total(name: str) -> float | None:
        found = values(name)
        return sum(found) if len(found) == len(summaries) else None

    def agreed(name: str) -> Any:
        """The value every GPU says, else None (unknown on one, or mixed)."""
        found = values(name)
        return found[0] if len(found) == len(summaries) and len(set(found)) == 1 else None

    summed = summed_power(traces)
    energy = total("energy_j")
    sources = sorted(set(values("energy_source")))
    # What any GPU saw stands; none seen is "none" only where every GPU could tell.
    known = values("throttle_reasons")
    reasons = sorted({r for found in known for r in found},
                     key=lambda name: next((b for b, n in CLOCK_EVENT_REASONS.items() if n == name), 1 << 30))
    reasons = reasons if reasons or len(known) == len(summaries) else None
    flags = [s["throttled_power_or_heat"] for s in summaries]
    window = max(values("telemetry_window_s"), default=None)
    # The energy's mean over the window wherever there is an energy (the summed samples' mean aliases NVML's 100 ms
    # power updates; see Telemetry.summary), whatever each GPU's source.
    counted = energy / window if energy and window else None
    notes = [f"{member} {index}: {s['telemetry'].removeprefix('on: ')}" for index, s in enumerate(summaries)
             if s["telemetry"] != "on"]
    return {
        "telemetry": "on: " + "; ".join(notes) if notes else "on",
        "power_avg_w": counted or _time_weighted_power(summed),
        # The summed samples' largest inside the window: not its two edge points, each interpolated towards a
        # reading outside it, and none where a GPU had no sample inside (a reviewer).
        "power_max_w": max((s.power_w for s in summed[1:-1]), default=None)
        if all(s["power_max_w"] is not None for s in summaries) else None,
        "power_source": "/".join(sorted({part for found in values("power_source") for part in found.split("/")}))
        or None,
        "energy_j": energy,
        "energy_source": sources[0] if len(sources) == 1 else "mixed: " + ", ".join(sources),
        "energy_integral_j": total("energy_integral_j"),
        # The worst device's: summed, one GPU's +6% and another's -6% would cancel.
        "energy_disagreement_frac": max(values("energy_disagreement_frac"), key=abs, default=None),
        "j_per_token": energy / tokens if energy is not None and tokens else None,
        "tokens_per_j": tokens / energy if energy else None,
        "mem_nvml_used_peak_bytes": max(values("mem_nvml_used_peak_bytes"), default=None),
        "gpu_util_avg_pct": _avg(values("gpu_util_avg_pct")),
        "sm_clock_avg_mhz": _avg(values("sm_clock_avg_mhz")),
        "sm_clock_min_mhz": min(values("sm_clock_min_mhz"), default=None),
        "temp_max_c": max(values("temp_max_c"), default=None),
        "throttle_reasons": reasons,
        "throttled_power_or_heat": True if any(flags) else None if None in flags else False,
        # The most held-back device's share; unknown where a GPU could not tell and none was seen held back.
        "throttled_sample_frac": max(values("throttled_sample_frac"), default=None)
        if any(flags) or None not in flags else None,
        "telemetry_samples": sum(values("telemetry_samples")),
        "power_readings": sum(values("power_readings")),
        "telemetry_period_s": summaries[0]["telemetry_period_s"],
        "telemetry_window_s": window,
        "sampler_cost_per_sample_s": _avg(values("sampler_cost_per_sample_s")),
        "power_limit_w": total("power_limit_w"),
        # The most capped card's (the sum hides one: 700 + 500 W reads as 600 + 600).
        "power_limit_min_w": min(values("power_limit_min_w"), default=None),
        "sm_clock_app_mhz": min(values("sm_clock_app_mhz"), default=None),
        "ecc_enabled": agreed("ecc_enabled"),
        "sm_clock_max_mhz": min(values("sm_clock_max_mhz"), default=None),
        "driver_version": summaries[0]["driver_version"],
        "nvml_name": summaries[0]["nvml_name"],
        **gpushare.merged(summaries),
    }


class DeviceGroupTelemetry:
    """Telemetry of every GPU one process trains on (nn.DataParallel): a sampler and an energy counter each.

    Reads like one Telemetry: `samples` is the summed board power, `summary` sums energy over the
    GPUs (so J/token counts every GPU the tokens cost), and each GPU keeps its own timeline file.
    """

    def __init__(self, members: list[Telemetry]) -> None:
        self.members = members

    @property
    def available(self) -> bool:
        return all(m.available for m in self.members)

    @contextlib.contextmanager
    def _every(self, context: Callable[[Telemetry], contextlib.AbstractContextManager]
               ) -> Iterator[DeviceGroupTelemetry]:
        with contextlib.ExitStack() as stack:
            for member in self.members:
                stack.enter_context(context(member))
            yield self

    @contextlib.contextmanager
    def window(self, ready: Callable[[], None] | None = None) -> Iterator[DeviceGroupTelemetry]:
        """Every GPU's window, opened and closed together (`windows`)."""
        with windows([m for m in self.members if m.available], ready):
            yield self

    def paused(self) -> contextlib.AbstractContextManager[DeviceGroupTelemetry]:
        return self._every(Telemetry.paused)

    @property
    def samples(self) -> list[Sample]:
        return summed_power([power_trace(m.samples) for m in self.members])

    def summary(self, *, tokens: int) -> dict[str, Any]:
        return combine([m.summary(tokens=tokens) for m in self.members], [power_trace(m.samples) for m in self.members],
                       tokens=tokens, member="device")

    def write_timeline(self, path: Path) -> None:
        """One CSV per GPU: PATH-dev0.csv, PATH-dev1.csv, ..."""
        for index, member in enumerate(self.members):
            member.write_timeline(path.with_name(f"{path.stem}-dev{index}{path.suffix}"))


@contextlib.contextmanager
def windows(members: list[Telemetry], ready: Callable[[], None] | None = None) -> Iterator[None]:
    """The windows of the GPUs one process measures (available ones), in two phases: every GPU set up and sampling,
    then `ready`, then every counter read back to back; on the way out every device synchronised, then every counter
    read, then the samplers stopped and the last samples taken.

    `ready` is the ranks' barrier. Before it, each rank's own set-up (NVML calls, a thread's start: 7-23 ms on the
    H100, another time on each rank) put the ranks' timed windows that far apart, and the first to open waited for
    the others inside its first collective: in its first step, as a stall, and in the job's window. For the same
    reason a process's GPUs (nn.DataParallel) open together: one window after another, each GPU's set-up ran inside
    the windows opened before it, and the first GPU's was the longest, its energy with the others' set-up in it.
    The counters are read last on the way in and first on the way out, next to the timed window's edges (the block is
    the timer's window): read before the first sample and the thread's start, the energy's window outran the timed
    one by 7-23 ms on the H100 (2% of a 0.7 s window's J/token). A failure on the way (the barrier's) stops every
    sampler started.
    """
    try:
        for member in members:
            member._open()
        if ready is not None:
            ready()
        for member in members:
            member._begin()
    except BaseException:
        for member in members:
            member._stop_sampler()
        raise
    try:
        yield
    finally:
        try:
            for member in members:
                member._synchronize()
            for member in members:
                member._end()
        finally:
            for member in members:
                member._stop_sampler()
        for member in members:
            member._close()


class EnergyCounter:
    """NVML's total-energy counters of the GPUs one process trains on, read on demand (no sampler thread):
    the energy of a whole training run, evaluations and all, at the cost of one query per GPU per reading."""

    def __init__(self, members: list[Telemetry]) -> None:
        self.members = members

    @classmethod
    def for_devices(cls, devices: list[Any]) -> EnergyCounter:
        return cls([Telemetry.for_device(d) for d in devices])

    def read_j(self) -> float | None:
        """Joules on the counters, summed over the GPUs; None on a CPU or where any counter is unsupported.
        Synchronise the devices first: the counter knows nothing of queued work."""
        readings = [m.device.energy_mj() if m.available else None for m in self.members]
        if not readings or any(r is None for r in readings):
            return None
        return sum(readings) / 1e3


def for_devices(devices: list[Any], *, period_s: float) -> Telemetry | DeviceGroupTelemetry:
    """Telemetry of the GPUs one process trains on: a plain Telemetry for one, a group for several."""
    if len(devices) == 1:
        return Telemetry.for_device(devices[0], period_s=period_s)
    return DeviceGroupTelemetry([Telemetry.for_device(d, period_s=period_s) for d in devices])


def _clipped(samples: list[Sample], start: float, end: float) -> list[Sample]:
    """The samples with power inside [start, end], and a point at each edge interpolated from its neighbours."""
    points = [s for s in samples if s.power_w is not None]
    if len(points) < 2 or end <= start:
        return points
    if not any(start <= s.t_s <= end for s in points) and not (points[0].t_s <= start and points[-1].t_s >= end):
        # Nothing read inside the window nor around both edges (a sampler dead before it, a failed closing read):
        # no power to integrate, rather than one pre-window reading held flat across the window (a reviewer).
        return []

    def at(t: float) -> Sample:
        before = [s for s in points if s.t_s <= t]
        after = [s for s in points if s.t_s >= t]
        if not before or not after:
            return replace((before or after)[-1 if before else 0], t_s=t)
        a, b = before[-1], after[0]
        power = a.power_w if b.t_s == a.t_s else a.power_w + (b.power_w - a.power_w) * (t - a.t_s) / (b.t_s - a.t_s)
        return replace(a, t_s=t, power_w=power)

    return [at(start), *(s for s in points if start < s.t_s < end), at(end)]

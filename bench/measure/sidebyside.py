"""Several implementations' device times side by side: CUDA graphs held at once, replayed in interleaved rounds.

`lmbench kernels` sets each implementation's device time against ours. Timed one after another, whatever drifts
over the session (SM clocks under a power cap, temperature, a neighbour on the node) would land on whichever
ran last; here each implementation's calls are captured once (graphtime) and every round replays each graph
once, in a fresh order (rounds), so a ratio taken within each round carries no drift slower than a round.
NVML's SM clock and power or heat clock events are read after each round and kept beside the figures. When
the graphs would not fit in memory together they are timed one after another, and the figures say so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lmbench.errors import one_line
from lmbench.measure import graphtime
from lmbench.measure import rounds as rounds_

#: The implementation every other one's device time is set against.
OURS = "lmbench triton"


@dataclass(kw_only=True)
class DeviceTiming:
    """Device times of several implementations on the same inputs, and how they were taken."""

    samples: dict[str, list[float]]
    """Implementation -> one call's device milliseconds a round."""
    why_not: dict[str, str]
    """Implementation -> why it has no device time."""
    rounds: int
    """Device-time samples an implementation: one a round."""
    interleaved: bool
    """Every round replayed each implementation once, in a fresh order; False: one implementation after another."""
    clocks_mhz: list[float]
    """The SM clock after each round (NVML; empty without it)."""
    clock_events: list[str]
    """Power or heat clock events seen after any round (NVML's throttle reasons)."""

    def columns(self) -> dict[str, Any]:
        return {"rounds": self.rounds,
                "device_timing": "interleaved" if self.interleaved else "one after another",
                "sm_clock_min_mhz": min(self.clocks_mhz, default=None),
                "sm_clock_max_mhz": max(self.clocks_mhz, default=None),
                "clock_events": " ".join(self.clock_events) or None}


def fit_together(peaks: list[int], available: int) -> bool:
    """Whether every implementation's graph can be held at once: each graph's pool holds about one call's peak, and
    twice that is budgeted (the allocator's rounding, calls whose frees a capture cannot reuse), with the L2 flush
    buffer beside them, against the device's free memory."""
    return 2 * sum(peaks) + graphtime.FLUSH_BYTES < available


def device_times(timed: dict[str, tuple[Callable[[], Any], float, int]], grads: list[torch.Tensor], *,
                 device: torch.device, rounds: int) -> DeviceTiming:
    """Each implementation's calls captured in a CUDA graph (graphtime), then `rounds` interleaved rounds of
    replays: the ratios between implementations are taken round by round, so a clock that drifts over the
    session lands on all of them alike. When their graphs would not fit in memory together, one after another."""
    # Only the device's free memory counts: a capture allocates from its own pool and frees no cached block while it
    # runs, so what the default pool holds cached (eager linear-CE's GiBs after its event timing) is no graph's.
    graphtime.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    together = fit_together([peak for _, _, peak in timed.values()], free)
    clocks, events = [], []
    reader = clock_reader(device)

    def read_clock() -> None:
        if reader is not None:
            mhz, reasons = reader()
            clocks.extend([mhz] if mhz is not None else [])
            events.extend(reason for reason in reasons if reason not in events)

    samples: dict[str, list[float]] = {}
    why_not: dict[str, str] = {}
    flush = torch.empty(graphtime.FLUSH_BYTES, dtype=torch.int8, device=device)
    with contextlib.ExitStack() as held:
        timers = {}
        for name, (fn, estimate_ms, _) in timed.items():
            try:
                with contextlib.ExitStack() as own:
                    # Held to the end when interleaved; otherwise released before the next one is captured.
                    graph = (held if together else own).enter_context(
                        graphtime.captured(fn, grads, estimate_ms=estimate_ms, device=device, flush=flush))
                    if together:
                        timers[name] = graph.sample
                    else:
                        samples[name] = [graph.sample() for _ in range(rounds)]
                        read_clock()
                    del graph  # captured() drops its graphs when its block ends; nothing here may keep them
            except graphtime.NotCapturable as err:
                why_not[name] = f"no device time: {err}"
            except Exception as err:  # noqa: BLE001 - the event-timed figure stands; the row says why no other
                why_not[name] = f"no device time ({one_line(err)})"
        try:
            samples.update(rounds_.interleaved(timers, rounds, between=read_clock) if timers else {})
        except Exception as err:  # noqa: BLE001 - as above, for every implementation of the rounds
            why_not.update({name: f"no device time ({one_line(err)})" for name in timers})
    return DeviceTiming(samples=samples, why_not=why_not, rounds=rounds, interleaved=together, clocks_mhz=clocks,
                        clock_events=events)


def clock_reader(device: torch.device) -> Callable[[], tuple[float | None, list[str]]] | None:
    """A reading of the SM clock and the power or heat clock events now (NVML), or None without NVML."""
    from lmbench.measure.nvml import POWER_OR_HEAT, NvmlDevice, NvmlUnavailable, reason_names, torch_device_ids

    try:
        uuid, pci = torch_device_ids(device.index or 0)
        nvml = NvmlDevice.open(uuid=uuid, pci_bus_id=pci)
    except NvmlUnavailable:
        return None

    def read() -> tuple[float | None, list[str]]:
        bits = nvml.clock_event_bits()
        return nvml.sm_clock_mhz(), [r for r in reason_names(bits or 0) if r in POWER_OR_HEAT]

    return read


def against(rows: list[dict[str, Any]], timing: DeviceTiming, reference: str) -> list[dict[str, Any]]:
    """Each row with a device time given its time over the reference's, round by round, with a 95% interval and
    what it says (rounds.verdict, the reference's side: `ours faster` when the row's implementation is slower).
    Timed one implementation after another, the rounds are no pairs and drift does not cancel: no ratio then."""
    if not timing.interleaved:
        return rows
    samples = timing.samples
    base = samples.get(reference)
    out = []
    for row in rows:
        mine = samples.get(row["impl"])
        if base is None or mine is None or row["impl"] == reference or min(mine + base) <= 0:
            out.append(row)
            continue
        ratio, low, high = rounds_.paired_ratio(mine, base)
        said = rounds_.verdict(low, high)
        out.append({**row, "vs_ours": ratio, "vs_ours_low": low, "vs_ours_high": high,
                    "vs_ours_verdict": {"faster": "ours slower", "slower": "ours faster"}.get(said, said)})
    return out


def timing_caption(rows: list[dict[str, Any]]) -> str:
    """How the shape's device times were taken, for its table's title: rounds, order, SM clock, clock events."""
    row = next((r for r in rows if r.get("device_timing")), None)
    if row is None:
        return "no device times"
    low, high = row.get("sm_clock_min_mhz"), row.get("sm_clock_max_mhz")
    clock = ("no SM clock (NVML unavailable)" if low is None else
             f"SM clock {low:,.0f} MHz" if low == high else f"SM clock {low:,.0f}-{high:,.0f} MHz")
    events = f", clock events: {row['clock_events']}" if row.get("clock_events") else ""
    order = ("interleaved rounds" if row["device_timing"] == "interleaved" else
             "rounds one implementation after another (their graphs would not fit in memory together)")
    return f"device times: {row['rounds']} {order}, {clock}{events}"

"""Per-step timing on the device: CUDA events on GPU, perf_counter on CPU.

On CUDA the host runs ahead of the device, so a host clock would time kernel launches, not
kernels. Each step gets a pair of events recorded in the stream; the device is synchronised
only once, at the end of the window, before the events are read.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch


class StepTimer:
    """Times consecutive steps of one measured window; read `times_s()` after the window."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._cuda = device.type == "cuda"
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._host: list[float] = []
        self._window: tuple[float, float] | None = None
        self._paused_s = 0.0

    @contextlib.contextmanager
    def window(self) -> Iterator[StepTimer]:
        """The measured window: synchronised on entry and exit so nothing leaks in or out."""
        self.synchronize()
        start = time.perf_counter()
        yield self
        self.synchronize()
        self._window = (start, time.perf_counter())

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        if self._cuda:
            begin = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            begin.record()
            yield
            end.record()
            self._events.append((begin, end))
        else:
            t0 = time.perf_counter()
            yield
            self._host.append(time.perf_counter() - t0)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Work between steps that is no part of the window (a held-out evaluation): drained before and after,
        and its wall time left out of `window_s`."""
        self.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.synchronize()
            self._paused_s += time.perf_counter() - start

    def synchronize(self) -> None:
        if self._cuda:
            torch.cuda.synchronize(self.device)

    def times_s(self) -> list[float]:
        """Seconds per step, in order; valid once the window has closed."""
        if self._cuda:
            return [begin.elapsed_time(end) / 1e3 for begin, end in self._events]
        return list(self._host)

    @property
    def window_s(self) -> float:
        """Host wall time of the whole window, edges synchronised, paused spans left out."""
        if self._window is None:
            raise RuntimeError("window_s read before the window closed")
        return self._window[1] - self._window[0] - self._paused_s

    @property
    def device_s(self) -> float:
        """Sum of the step times so far (the device must be synchronised past the last step)."""
        return sum(self.times_s())

"""Host (CPU) memory of this process: peak resident set since a reset, from Linux's /proc; and the kernel's
out-of-memory kills, host-wide.

Writing "5" to /proc/self/clear_refs resets the peak (VmHWM) to the current resident set (Linux 4.0
and later), so the peak of a window can be read without the start-up peaks before it. The process has one
such peak: a reset for a window inside training (warmup, then the timed window) would wipe the peak of
warmup that training's growth rests on, so every reset first hands the peak so far to the budgets that are
watching (`Budget.held_peak_bytes`). Where the kernel refuses the reset (no clear_refs: a kernel without
CONFIG_PROC_PAGE_MONITOR, gVisor, a read-only /proc) the peak is the process's lifetime one, start-up and
model build included: a budget's growth is then known only once the peak has risen past what it was at the
budget's start, else it is None (unknown), not the lifetime peak's.
"""

from __future__ import annotations

import re
import weakref
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


_VMSTAT = Path("/proc/vmstat")


def oom_kills() -> int | None:
    """Processes the kernel's out-of-memory killer has ended since boot, host-wide (/proc/vmstat's oom_kill, Linux
    4.13 and later); None where it is not kept."""
    try:
        match = re.search(r"^oom_kill (\d+)$", _VMSTAT.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


class MemoryCapExceeded(MemoryError):
    """A CPU run grew past its --max-memory budget (reported as status `oom`)."""


def _status_kib(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def current_bytes() -> int | None:
    return _status_kib("VmRSS")


def peak_bytes() -> int | None:
    return _status_kib("VmHWM")


#: The budgets watching the process's one peak: a reset hands them the peak it wipes.
_WATCHING: weakref.WeakSet[Budget] = weakref.WeakSet()


def reset_peak() -> bool:
    """Reset the peak to the current resident set, the watching budgets holding the peak so far; False where the
    kernel does not allow it."""
    peak = peak_bytes()
    for budget in _WATCHING:
        budget.hold(peak)
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


class Budget:
    """Growth of the peak resident set over a baseline (the resident set at its start), checked against a cap in
    bytes (0: no cap)."""

    def __init__(self, cap_bytes: int) -> None:
        self.cap_bytes = cap_bytes
        # Without a reset at the start the peak may be start-up's (growth_bytes).
        self.peak_reset = reset_peak()
        self.baseline = current_bytes() or 0
        self._start_peak = None if self.peak_reset else peak_bytes()
        # The largest peak a later reset (another budget's start) wiped.
        self.held_peak_bytes: int | None = None
        _WATCHING.add(self)

    def hold(self, peak: int | None) -> None:
        if peak is not None:
            self.held_peak_bytes = max(peak, self.held_peak_bytes or 0)

    @property
    def growth_bytes(self) -> int | None:
        """The peak's growth over the baseline since the start; None where /proc cannot say or, without a reset,
        the peak has not risen past the earlier one it may be (the process's lifetime peak)."""
        peak = peak_bytes()
        if peak is None:
            return None
        if not self.peak_reset and (self._start_peak is None or peak <= self._start_peak):
            return None
        return max(0, max(peak, self.held_peak_bytes or 0) - self.baseline)

    def check(self) -> None:
        """Raise MemoryCapExceeded past the cap: on the peak's growth, or, where that is unknown, the resident set's
        (a lower bound of it: the cap still stops a run that keeps what it takes)."""
        growth = self.growth_bytes
        if growth is None:
            now = current_bytes()
            growth = None if now is None else max(0, now - self.baseline)
        if self.cap_bytes and growth is not None and growth > self.cap_bytes:
            raise MemoryCapExceeded(f"host memory grew by {growth / 2**20:,.2f} MiB during training, over "
                                    f"max_memory_bytes={self.cap_bytes:,} ({self.cap_bytes / 2**20:,.2f} MiB)")

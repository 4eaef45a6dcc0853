"""Host (CPU) memory of this process: peak resident set since a reset, from Linux's /proc; and the kernel's
out-of-memory kills, host-wide.

Writing "5" to /proc/self/clear_refs resets the peak (VmHWM) to the current resident set (Linux 4.0
and later), so the peak of a window can be read without the start-up peaks before it.
"""

from __future__ import annotations

import re
from pathlib import Path

_STATUS = Path("/proc/self/status")


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


def reset_peak() -> bool:
    """Reset the peak to the current resident set; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class Budget:
    """Growth of the peak resident set over a baseline, checked against a cap in bytes (0: no cap)."""

    def __init__(self, cap_bytes: int) -> None:
        self.cap_bytes = cap_bytes
        reset_peak()
        self.baseline = current_bytes() or 0

    @property
    def growth_bytes(self) -> int | None:
        peak = peak_bytes()
        return None if peak is None else max(0, peak - self.baseline)

    def check(self) -> None:
        growth = self.growth_bytes
        if self.cap_bytes and growth is not None and growth > self.cap_bytes:
            raise MemoryCapExceeded(f"host memory grew by {growth / 2**20:,.2f} MiB during training, over "
                                    f"max_memory_bytes={self.cap_bytes:,} ({self.cap_bytes / 2**20:,.2f} MiB)")

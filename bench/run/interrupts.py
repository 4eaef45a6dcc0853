"""Stopping a run cleanly on SIGINT, SIGTERM and SIGHUP (Ctrl-C, `kill`, a closed ssh session).

Inside `interruptible()` the first of these signals raises `Interrupted` in the main thread, which
unwinds through the runner: the live worker's process group is sent SIGTERM and waited for, nothing
half-done is recorded, and the command exits 128 + the signal number. Further signals while that
clean-up runs are ignored, so a second Ctrl-C cannot leave a worker behind. A signal that was
already ignored when lmbench started (nohup) stays ignored.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal; `exit_code` is the shell's convention for it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


@contextmanager
def interruptible() -> Iterator[None]:
    """Turn SIGINT/SIGTERM/SIGHUP into `Interrupted` for the duration (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if fired:
            return
        fired.append(signum)
        raise Interrupted(signum)

    # A signal ignored on purpose stays ignored: `nohup lmbench run ...` must survive a hang-up.
    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)

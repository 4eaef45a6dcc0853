"""Stopping a run cleanly on SIGINT, SIGTERM and SIGHUP (Ctrl-C, `kill`, a closed ssh session).

Inside `interruptible()` the first of these signals raises `Interrupted` in the main thread, which
unwinds through the runner: the live worker's process group is sent SIGTERM and waited for, nothing
half-done is recorded, and the command exits 128 + the signal number. A job that had finished (its
result written) when the signal came is recorded first: inside `holding()` the signal waits until the
record is saved. Further signals while that
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
        self.after_a_record = False
        """Raised once the job it came during was recorded (it had finished): nothing was cut off."""

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class Hold:
    """A signal that arrived inside `holding()`, kept until the caller can stop without cutting work in half."""

    def __init__(self) -> None:
        self.pending: Interrupted | None = None
        self._open = False

    @contextmanager
    def released(self) -> Iterator[None]:
        """A span inside the hold where a signal stops at once (waiting for a worker); one held before it stops
        here, on entry."""
        self._open = True  # first: a signal landing between the check and this would be held through the wait
        try:
            self.raise_pending()
            yield
        finally:
            self._open = False

    def raise_pending(self, *, after_a_record: bool = False) -> None:
        if self.pending is not None:
            self.pending.after_a_record = after_a_record
            raise self.pending


_holds: list[Hold] = []


@contextmanager
def holding() -> Iterator[Hold]:
    """Inside the block a signal is held (`Hold.pending`) instead of raised, except in its `released()` spans: a
    finished job's result is read and its record saved whole. The caller raises it (`raise_pending`) when ready."""
    hold = Hold()
    _holds.append(hold)
    try:
        yield hold
    finally:
        _holds.remove(hold)


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
        if _holds and not _holds[-1]._open:
            _holds[-1].pending = Interrupted(signum)
            return
        raise Interrupted(signum)

    # A signal ignored on purpose stays ignored: `nohup lmbench run ...` must survive a hang-up.
    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)

"""Crash logs: the traceback of an unexpected error, kept in a file so the terminal gets one line.

The directory is `$LMBENCH_LOG_DIR` when set, else `$XDG_STATE_HOME/lmbench/logs` (by default
`~/.local/state/lmbench/logs`), else the system's temporary directory when that one cannot be written.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
import tempfile
import traceback
from pathlib import Path

import lmbench


def log_dir() -> Path:
    if os.environ.get("LMBENCH_LOG_DIR"):
        return Path(os.environ["LMBENCH_LOG_DIR"])
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "lmbench" / "logs"


def write(error: BaseException) -> Path:
    """Save `error`'s traceback with the command line and versions; returns the file's path."""
    stamp = dt.datetime.now()
    body = (f"lmbench {lmbench.__version__}, python {platform.python_version()}, {platform.platform()}\n"
            f"argv: {sys.argv}\ntime: {stamp.isoformat(timespec='seconds')}\n\n"
            + "".join(traceback.format_exception(type(error), error, error.__traceback__)))
    name = f"lmbench-{stamp:%Y%m%d-%H%M%S}-{os.getpid()}.log"
    for folder in (log_dir(), Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            path.write_text(body, encoding="utf-8")
            return path
        except OSError:
            continue
    # Nowhere to write: the traceback goes to stderr after all, rather than being lost.
    sys.stderr.write(body)
    return Path("<stderr>")


def summary(error: BaseException) -> str:
    """`TypeName: first line of the message`, at most 300 characters."""
    first = (str(error).strip().splitlines() or [""])[0]
    text = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return text[:300]

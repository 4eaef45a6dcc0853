"""Typed errors raised by the library; only the CLI turns them into messages and exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class LmbenchError(Exception):
    """Base of every error lmbench raises on purpose."""


class UsageError(LmbenchError):
    """The user asked for something lmbench cannot do (bad option, bad file): exit code 2."""


class SuiteError(UsageError):
    """A suite file (or a --set override) is missing, malformed, or names a bad key or value."""


class ConfigError(UsageError):
    """One configuration holds a value outside what its axis allows."""


class ResultsError(UsageError):
    """A run directory or results file cannot be read or written."""


class WorkerError(LmbenchError):
    """A worker process could not be started or returned something unreadable."""


class JobMismatchError(LmbenchError):
    """The ranks of one torchrun job run different configurations (nodes of a multi-node run out of step)."""


class KernelSwapError(LmbenchError):
    """A kernel set did not apply to a model as built with the installed libraries: it would run unfused."""


class Float8ConversionError(LmbenchError):
    """FP8 training did not apply to exactly the layers it should: the record would claim FP8 for bf16 matmuls."""


class StorageError(ResultsError):
    """A result could not be saved: disk full, file-size limit, read-only file system. Not a measured failure."""


class RunLockedError(ResultsError):
    """Another lmbench process is writing to the same run directory."""


def read_json_input(path: Path, *, where: str, kind: str, made_by: str) -> Any:
    """A JSON file the user hands lmbench (`--noise-floor`, `--ceilings`): its content, or a UsageError naming
    `where` (the option and the path) when it is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{where}: no such file (write one with {made_by})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"{where}: not a {kind} file ({err})") from None


def one_line(err: BaseException, limit: int = 200) -> str:
    """An exception as one table cell or record reason: its type and message on one line (CUDA's run over
    several), at most `limit` characters."""
    return " ".join(f"{type(err).__name__}: {err}".split())[:limit]

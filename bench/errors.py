"""Typed errors raised by the library; only the CLI turns them into messages and exit codes."""

from __future__ import annotations


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


class KernelSwapError(LmbenchError):
    """A kernel set did not apply to a model as built with the installed libraries: it would run unfused."""


class StorageError(ResultsError):
    """A result could not be saved: disk full, file-size limit, read-only file system. Not a measured failure."""


class RunLockedError(ResultsError):
    """Another lmbench process is writing to the same run directory."""

"""A process's /proc/<pid>/stat: the kernel's fixed fields about it (state, parent, start time, ...).

The second field is the command in parentheses, and a command may hold spaces and parentheses of its own: the
fields after its last closing parenthesis are fixed (proc(5)), so they are split from there. Index 0 of what
`fields` returns is field 3 of proc(5), the state.
"""

from __future__ import annotations

from pathlib import Path

#: Indices into `fields` (proc(5)'s field number less 3).
STATE = 0
PARENT = 1
START_TICKS = 19


def fields(pid: int | str = "self") -> list[str] | None:
    """The fields after the command of `pid`'s /proc stat; None where the process is gone, not visible in this
    PID namespace, or there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 1:].split()


def field(pid: int | str, index: int) -> str | None:
    """One field of `pid`'s stat by `fields` index; None where it cannot be read."""
    found = fields(pid)
    return found[index] if found is not None and len(found) > index else None

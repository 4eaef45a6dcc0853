"""Where a hung job's ranks were: the Python stacks each worker dumps just before the parent's deadline.

A job that hangs leaves no result and no exception, only `timeout`. So every worker asks faulthandler
to write all its threads' stacks a few seconds before the parent would kill it (`arm`): a thread of
the interpreter's own, so a main thread stuck in a collective or a device synchronize is read as it
stands. A job that ends in time never reaches that point, and the parent removes the files
(`clear`). On a timeout the parent reads each rank's dump (`collect`) and names the function each
rank's main thread was in (`where`): the rank still in its data loader while the others wait in an
all-reduce is the hung one.
"""

from __future__ import annotations

import faulthandler
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

#: How long before the deadline the stacks are taken: the dump takes milliseconds, the rest is slack for a
#: parent that reaches its deadline early (a job of a few seconds gets a quarter of its time instead).
MARGIN_S = 3.0

_THREAD = re.compile(r"^(?:Current thread|Thread) (0x[0-9a-f]+)")
#: The outermost frame of a main thread: a script's module, or runpy's for `python -m` (torchrun's ranks, the
#: worker). A thread started by `threading` has its _bootstrap there instead.
_MAIN_OUTERMOST = frozenset({"<module>", "_run_module_as_main"})
_FRAME = re.compile(r'^\s+File "(.*)", line (\d+) in (.*)$')
_OURS = Path(__file__).resolve().parent.parent
#: The files faulthandler writes to: it holds only their descriptors, so they stay open for the process.
_open: list[IO[str]] = []


@dataclass(frozen=True)
class Frame:
    file: str
    line: int
    function: str

    def label(self) -> str:
        return f"{self.function} ({_short(self.file)}:{self.line})"

    @property
    def ours(self) -> bool:
        return Path(self.file).resolve().is_relative_to(_OURS)


def path(result_path: Path, rank: int) -> Path:
    """RESULT.stack.rankN, beside the result (not RESULT.rankN: that is a rank's failure)."""
    return result_path.with_name(f"{result_path.name}.stack.rank{rank}")


def margin_s(timeout_s: float) -> float:
    return min(MARGIN_S, timeout_s / 4)


def arm(result_path: Path, rank: int, *, deadline: float, timeout_s: float) -> bool:
    """Have this process dump every thread's stack to `path(result_path, rank)` `margin_s` before `deadline`
    (seconds since the epoch); False when that moment has already passed."""
    left_s = deadline - margin_s(timeout_s) - time.time()
    if left_s <= 0:
        return False
    # Empty until the dump: a file that takes no room on a full disk unless the job hangs.
    out = open(path(result_path, rank), "w", encoding="utf-8")  # noqa: SIM115 - faulthandler writes to it later
    _open.append(out)
    faulthandler.dump_traceback_later(left_s, file=out)
    return True


def collect(result_path: Path) -> dict[int, str]:
    """Each rank's dump, by rank; a rank that armed no dump, or whose moment never came, is absent."""
    found = {}
    for dump in result_path.parent.glob(f"{result_path.name}.stack.rank*"):
        rank = dump.name.rsplit(".rank", 1)[1]
        try:
            text = dump.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if rank.isdigit() and main_stack(text):
            found[int(rank)] = text
    return dict(sorted(found.items()))


def clear(result_path: Path) -> None:
    for dump in result_path.parent.glob(f"{result_path.name}.stack.rank*"):
        dump.unlink(missing_ok=True)


def main_stack(text: str) -> list[Frame]:
    """The main thread's frames in a dump, innermost first: the thread whose outermost frame runs the module."""
    threads: list[list[Frame]] = []
    for line in text.splitlines():
        if _THREAD.match(line):
            threads.append([])
            continue
        frame = _FRAME.match(line)
        if threads and frame:
            threads[-1].append(Frame(frame.group(1), int(frame.group(2)), frame.group(3)))
    return next((frames for frames in threads if frames and frames[-1].function in _MAIN_OUTERMOST), [])


def place(frames: list[Frame]) -> str:
    """The innermost function, and the innermost of lmbench's own when that is further out: `all_reduce
    (torch/distributed/distributed_c10d.py:2806) from lmbench/run/distributed.py:120 gather`."""
    inner = frames[0]
    ours = next((frame for frame in frames if frame.ours), None)
    if ours is None or ours == inner:
        return inner.label()
    return f"{inner.label()} from {_short(ours.file)}:{ours.line} {ours.function}"


def where(dumps: dict[int, str], *, timeout_s: float) -> str | None:
    """One clause naming where each rank's main thread was, ranks at the same place together; None without dumps."""
    places: dict[str, list[int]] = {}
    for rank, text in dumps.items():
        places.setdefault(place(main_stack(text)), []).append(rank)
    if not places:
        return None
    when = f"{margin_s(timeout_s):g} s before it"
    if list(dumps) == [0]:
        return f"{when} the worker was in {next(iter(places))}"
    # The odd one out first: a place fewer ranks share is likelier the hung rank's.
    parts = [f"{_ranks(ranks)} in {where_}" for where_, ranks in sorted(places.items(), key=lambda kv: len(kv[1]))]
    return f"{when} " + "; ".join(parts)


def _ranks(ranks: list[int]) -> str:
    spans: list[list[int]] = []
    for rank in ranks:
        if spans and rank == spans[-1][-1] + 1:
            spans[-1].append(rank)
        else:
            spans.append([rank])
    text = ",".join(str(s[0]) if len(s) == 1 else f"{s[0]}-{s[-1]}" for s in spans)
    return f"rank{'s' if len(ranks) > 1 else ''} {text}"


def _short(file: str) -> str:
    """A frame's file as a reader finds it: lmbench/..., or from the package folder after site-packages/."""
    resolved = Path(file).resolve()
    if resolved.is_relative_to(_OURS):
        return "lmbench/" + resolved.relative_to(_OURS).as_posix()
    parts = Path(file).parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            return "/".join(parts[parts.index(marker) + 1:])
    return "/".join(parts[-2:])

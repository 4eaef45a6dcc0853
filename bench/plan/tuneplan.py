"""`lmbench tune`'s plan as its run.json keeps it, the proof that `tune --resume` continues the same search, and the
command that does.

The plan is every option that decides which probes and measurements a tune makes: --model, --seq-len,
the --precision, --kernels and --checkpointing lists (compared as sets: their order only orders the
search), --max-memory (compared in bytes), --global-batch, --margin, --min-batch, --max-batch, --steps, --warmup,
--device, --parity, --timeout-s and --set (compared after parsing). --budget-minutes and --objective are
not: they decide when to stop and how to rank what was measured, so a resume may change them.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmbench.errors import LmbenchError, UsageError
from lmbench.plan import suite as suites
from lmbench.plan.runplan import StoredPlan, mismatch

#: The option of each plan field, in the order the resume command gives them.
OPTIONS = {"model": "--model", "seq_len": "--seq-len", "precision": "--precision", "kernels": "--kernels",
           "checkpointing": "--checkpointing", "max_memory": "--max-memory", "global_batch": "--global-batch",
           "margin": "--margin", "min_batch": "--min-batch", "max_batch": "--max-batch", "steps": "--steps",
           "warmup": "--warmup", "device": "--device", "parity": "--parity", "timeout_s": "--timeout-s",
           "overrides": "--set"}
#: Fields the resume command always spells out (the search space), even at their defaults.
_ALWAYS = ("model", "seq_len", "precision", "kernels", "checkpointing")
_LISTS = ("precision", "kernels", "checkpointing")


def parse_size(text: str) -> int:
    """'512MiB', '2GiB', '1.5G', '800M' or plain bytes -> bytes (the --max-memory option)."""
    units = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
             "g": 10**9, "gb": 10**9, "gib": 2**30}
    number = text.strip().lower().removesuffix("bytes")
    digits = number.rstrip("kmgib")
    unit = number[len(digits):]
    try:
        value = float(digits) * units[unit]
    except (ValueError, KeyError):
        raise UsageError(f"--max-memory {text!r}: expected a size like 512MiB, 2GiB or 1.5G") from None
    if not math.isfinite(value) or value < 1:
        raise UsageError(f"--max-memory {text!r}: must be a finite size of at least 1 byte")
    return int(value)


@dataclass(frozen=True, kw_only=True)
class TunePlan(StoredPlan):
    """Every option of `lmbench tune` that shapes its probes and measurements, as given on the command line."""

    model: str
    seq_len: int
    """As resolved: the default depends on the model."""
    precision: str = "amp-bf16"
    """Comma-separated, as given (so are kernels and checkpointing)."""
    kernels: str = "eager"
    checkpointing: str = "none,full"
    max_memory: str | None = None
    """As given, e.g. 30MiB; compared in bytes."""
    global_batch: int | None = None
    margin: float = 0.1
    min_batch: int = 1
    """Where the doubling starts (a plan from before it existed reads 1, as it searched)."""
    max_batch: int = 4096
    steps: int = 20
    warmup: int = 5
    device: str | None = None
    parity: bool = False
    timeout_s: float | None = None
    overrides: tuple[str, ...] = ()
    """--set arguments as given."""

    def _compared(self, name: str) -> str:
        """A field as comparable text: lists as sets, sizes in bytes, --set parsed (as written when it no
        longer parses, e.g. from another lmbench version)."""
        value = getattr(self, name)
        try:
            if name in _LISTS:
                return ",".join(sorted({v.strip() for v in value.split(",")}))
            if name == "max_memory" and value:
                return str(parse_size(value))
            if name == "overrides":
                parsed = suites.parse_overrides(list(value))
                return " ".join(f"{axis}={','.join(map(str, vs))}" for axis, vs in sorted(parsed.items()))
        except LmbenchError:
            pass
        return self._shown(name)

    def _shown(self, name: str) -> str:
        value = getattr(self, name)
        if name == "parity":
            return "on" if value else "off"
        if name == "overrides":
            return " ".join(value) or "none"
        return "none" if value is None else str(value)

    def differences(self, earlier: TunePlan) -> list[str]:
        """What differs from the plan the tune started with, one entry per option."""
        return [f"{OPTIONS[name]}: {self._shown(name)} now, {earlier._shown(name)} then" for name in OPTIONS
                if self._compared(name) != earlier._compared(name)]

    def resume_command(self, out: Path, *, extra: tuple[str, ...] = ()) -> str:
        """`lmbench tune ... --resume` with exactly this plan; `extra` adds options outside it (--objective, ...)."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        args = ["lmbench", "tune"]
        for name, option in OPTIONS.items():
            value = getattr(self, name)
            if name not in _ALWAYS and value == defaults[name]:
                continue
            if name == "overrides":
                args += [a for item in value for a in ("--set", item)]
            elif name == "parity":
                args.append(option)
            else:
                args += [option, str(value)]
        return shlex.join([*args, "--out", str(out), *extra, "--resume"])


def check(meta: dict[str, Any], plan: TunePlan, *, out: Path, extra: tuple[str, ...] = ()) -> None:
    """Refuse to resume the tune in `out` (whose run.json is `meta`) with another plan: a PlanMismatch naming
    every difference and the command that resumes it."""
    earlier = TunePlan.from_json(meta.get("plan"))
    differences = plan.differences(earlier)
    if differences:
        raise mismatch(out, differences, f"resume it with {earlier.resume_command(out, extra=extra)}")

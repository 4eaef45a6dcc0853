"""Speedup baselines: which configuration each one is compared with, for report tables and plots alike.

A baseline `AXIS=VALUE` pairs every configuration with its counterpart: the configuration equal to it
on every other varying axis, with AXIS set to VALUE. Nothing is pooled: a configuration without an
exact counterpart has no speedup.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from lmbench.analyze.table import varying_axes
from lmbench.errors import UsageError
from lmbench.plan.config import applies


def parse(text: str | None) -> tuple[str, str] | None:
    """`--baseline precision=fp32` -> ("precision", "fp32")."""
    if text is None:
        return None
    axis, sep, value = text.partition("=")
    if not sep or not axis.strip() or not value.strip():
        raise UsageError(f"--baseline {text!r}: expected KEY=VALUE, e.g. precision=fp32")
    return axis.strip(), value.strip()


def matches(stored: Any, text: str) -> bool:
    """Whether an axis's stored value is the command line's `text`: booleans as --set reads them (true/false,
    on/off, 1/0, any case), numbers as numbers (lr=3e-4 is the stored 0.0003, timeout_s=120 the stored 120.0),
    anything else as text."""
    if isinstance(stored, bool) and text.lower() in ("true", "false", "on", "off", "1", "0"):
        return stored == (text.lower() in ("true", "on", "1"))
    if isinstance(stored, (int, float)) and not isinstance(stored, bool):
        try:
            return float(text) == stored
        except ValueError:
            return False
    return str(stored) == text


def canonical(baseline: tuple[str, str] | None, configs: Iterable[Mapping[str, Any]]) -> tuple[str, str] | None:
    """`baseline` with its value as the configurations hold it (lr=3e-4 as lr=0.0003), so that the tables' heading
    and the plots, which compare values as text, name and find the value the records hold (dropout=on as
    dropout=True)."""
    if baseline is None:
        return None
    axis, text = baseline
    found = next((config[axis] for config in configs if axis in config and matches(config[axis], text)), None)
    return baseline if found is None else (axis, str(found))


def names_of(configs: Iterable[Mapping[str, Any]]) -> list[str]:
    return sorted({name for config in configs for name in config})


def check(baseline: tuple[str, str] | None, configs: Iterable[Mapping[str, Any]]) -> None:
    """Refuse a baseline that no configuration has (every speedup would be empty), naming the values there are."""
    if baseline is None:
        return
    axis, asked = baseline
    value = asked
    configs = list(configs)
    if not any(axis in config for config in configs):
        names = names_of(configs)
        varying = [name for name in names if len({repr(config.get(name)) for config in configs}) > 1]
        raise UsageError(f"--baseline {axis}={asked}: {axis!r} is not a configuration axis; "
                         + (f"the axes that vary here: {', '.join(varying)}" if varying else
                            f"axes: {', '.join(names)}"))
    # Values the axis holds where it means something: eager's compile_mode=default is no baseline for anything.
    present = sorted({str(config.get(axis)) for config in configs if applies(config, axis)})
    value = next((str(config[axis]) for config in configs if applies(config, axis) and axis in config
                  and matches(config[axis], value)), value)
    if not present:
        raise UsageError(f"--baseline {axis}={asked}: {axis} is an option of a parallel mode or kernel set that no "
                         "configuration here uses")
    if value not in present:
        raise UsageError(f"--baseline {axis}={asked}: no configuration has {axis}={value}; {axis} values present: "
                         f"{', '.join(present)}")
    distinct = list({repr(sorted(config.items())): config for config in configs}.values())
    # The axes the report pairs on (lmbench.analyze.report), so the refusal is exactly an empty speedup column.
    axes = varying_axes(distinct)
    others = [config for config in distinct if applies(config, axis) and not matches(config.get(axis), value)]
    if not others:
        # Every configuration would be its own counterpart: a column of 1.00x that reads as a measured tie.
        # varying_axes names the model when nothing varies; runs are never paired.
        varying = [name for name in axes if name not in (axis, "run")
                   and len({repr(config.get(name)) for config in distinct}) > 1]
        raise UsageError(f"--baseline {axis}={asked}: {axis} has one value here ({value}), so every speedup would "
                         f"be 1.00x; give an axis that varies"
                         + (f": {', '.join(varying)}" if varying else " (none does here)"))
    if all(counterpart(config, distinct, (axis, value), axes) is None for config in others):
        across = " (run directories are never paired with each other)" if "run" in axes else ""
        raise UsageError(f"--baseline {axis}={asked}: no configuration has a counterpart with {axis}={value} that "
                         f"is equal to it on every other varying axis{across}, so every speedup would be empty"
                         f"{_nearest(others[0], distinct, (axis, value), axes)}")


def _nearest(config: Mapping[str, Any], candidates: list[Mapping[str, Any]], baseline: tuple[str, str],
             axes: list[str]) -> str:
    """'; e.g. ... differs from the nearest axis=value row in batch_size (2 vs 4)': what keeps a row unpaired."""
    axis, value = baseline
    found = [_differences(config, other, baseline, axes) for other in candidates if _holds(other, baseline)]
    if not found:
        return ""
    closest = min(found, key=len)
    return f"; e.g. {axis}={config.get(axis)} differs from the nearest {axis}={value} row in {', '.join(closest)}"


def failed_only(baseline: tuple[str, str] | None, records: Iterable[Mapping[str, Any]]) -> str | None:
    """A warning when every record with the baseline's value failed (each speedup will be empty), else None."""
    if baseline is None:
        return None
    axis, value = baseline
    theirs = [r for r in records if _holds(r["config"], baseline)]
    if not theirs or any(r["status"] == "ok" for r in theirs):
        return None
    statuses = ", ".join(sorted({r["status"] for r in theirs}))
    return (f"--baseline {axis}={value}: every {axis}={value} configuration failed ({statuses}), so there is no "
            "speedup to show")


def _holds(other: Mapping[str, Any], baseline: tuple[str, str]) -> bool:
    """Whether `other` has the baseline's value, on an axis that means something for it."""
    axis, value = baseline
    return matches(other.get(axis), value) and applies(other, axis)


def _differences(config: Mapping[str, Any], other: Mapping[str, Any], baseline: tuple[str, str],
                 axes: list[str]) -> list[str]:
    """The axes of `axes` on which `other` is not `config`'s counterpart, as 'batch_size (2 vs 4)': all but the
    baseline's own (and nproc against parallel=none or dp: one process, and one over every GPU, so nproc follows the
    mode; against a torchrun mode it is that mode's choice, ddp x 4 is not ddp x 2's counterpart), where they mean
    something for `other`."""
    axis, value = baseline
    tied = {axis, "nproc"} if axis == "parallel" and value in ("none", "dp") else {axis}
    return [f"{a} ({config.get(a)} vs {other.get(a)})" for a in axes
            if a not in tied and applies(other, a) and other.get(a) != config.get(a)]


def counterpart(config: Mapping[str, Any], candidates: Iterable[Mapping[str, Any]], baseline: tuple[str, str],
                axes: list[str]) -> int | None:
    """Index in `candidates` of `config`'s baseline counterpart (None when there is none).

    Values are compared as text on the baseline's axis (it came from the command line) and exactly
    on every other axis in `axes` that means something for the candidate (lmbench.plan.config.applies): a
    compiled row's baseline under kernels=eager is eager whatever its compile_mode, and eager's under
    kernels=compile is compile_mode=default (eager holds the default), never the first compiled row listed.
    A configuration the baseline's axis means nothing for has no counterpart: eager is not compile_mode=default.
    Under parallel=none or dp as the baseline nproc is not compared: ddp x 2's counterpart runs 1 process.
    """
    if not applies(config, baseline[0]):
        return None
    for i, other in enumerate(candidates):
        if _holds(other, baseline) and not _differences(config, other, baseline, axes):
            return i
    return None

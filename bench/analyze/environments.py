"""What two runs measured on: each record's environment, compared configuration by configuration.

A ratio of medians is the code's change only where nothing else changed. Each record says what it ran on
(lmbench.measure.environment.capture, in the worker): the device, its driver, the software under the code, the
CPU threads of a CPU run, and the process environment's variables that change what runs. Two runs are compared
for each configuration both measured, on that configuration's records alone: a baseline that ran one
configuration on an H100 and another on an A100, against a candidate the other way round, holds the same set of
devices as the candidate, but each configuration's ratio there is of two GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: What a record's environment says that changes performance: the device model, then the software under the code,
#: a CPU run's threads, and the variables of the process's environment that change what runs; and which tokens a
#: seed drew (lmbench.run.data.DRAW_VERSION), which changes the losses and time to target of one key.
FIELDS = ("device", "driver", "torch", "cuda", "cudnn", "triton", "transformers", "torchao", "liger_kernel",
          "python", "cpu threads", "environment variables", "data draw")
#: Software fields whose null says "not installed" (capture reads an installed version, else None): a known value.
_OPTIONAL = ("cudnn", "triton", "transformers", "torchao", "liger_kernel")
_SOFTWARE = ("torch", "cuda", *_OPTIONAL, "python")
#: The "environment variables" value of a record whose worker ran with none of the variables lmbench records.
NO_VARIABLES = "none of those lmbench records"


def of_record(record: dict[str, Any]) -> dict[str, str | None]:
    """Each field's value in one record (None: the record does not say, e.g. an older lmbench or a query that
    failed); a record with no environment (it timed out before its worker said) says nothing."""
    env = record.get("env") or {}
    if not env:
        return dict.fromkeys(FIELDS)
    device = env.get("device") or {}
    cpu = device.get("type") == "cpu"
    values: dict[str, str | None] = {
        "device": f"{device['name']} ({'CPU' if cpu else 'GPU'})" if device.get("name") else None,
        "driver": None if device.get("driver") is None else str(device["driver"]),
    }
    for name in _SOFTWARE:
        value = env.get(name)
        values[name] = str(value) if value is not None else "not installed" if name in _OPTIONAL and name in env \
            else None
    threads, usable = device.get("torch_threads"), device.get("usable_cores")
    values["cpu threads"] = (f"{threads} torch threads on {usable} usable cores"
                             if cpu and threads is not None and usable is not None else None)
    variables = env.get("env_vars")
    values["environment variables"] = None if variables is None else (
        " ".join(f"{k}={v}" for k, v in sorted(variables.items())) or NO_VARIABLES)
    values["data draw"] = None if env.get("data_draw") is None else f"version {env['data_draw']}"
    return values


def environment_of(records: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Each field's values over `records` (a run resumed or merged on another machine holds several), in the
    order first seen."""
    seen: dict[str, list[str]] = {name: [] for name in FIELDS}
    for r in records:
        for name, value in of_record(r).items():
            if value is not None and value not in seen[name]:
                seen[name].append(value)
    return seen


@dataclass
class Difference:
    """One field that differs between the runs, and the configurations it differs for."""

    field: str
    baseline: list[str]
    candidate: list[str]
    keys: list[str]
    """The configurations, of those both runs measured, whose records say other things of the field."""
    shared: int
    """How many configurations both runs hold records of."""

    def line(self) -> str:
        where = "" if len(self.keys) == self.shared else (
            f" in {len(self.keys)} of {self.shared} configurations both ran (e.g. {self.keys[0]})")
        return (f"{self.field} differs{where}: {', '.join(self.baseline)} (baseline) vs "
                f"{', '.join(self.candidate)} (candidate)")


def differences(base: list[dict[str, Any]], cand: list[dict[str, Any]]) -> list[Difference]:
    """The fields whose values differ between the two runs' records of a configuration both ran, in FIELDS' order;
    a field one side's records of it do not say (every repeat timed out before its worker did) is no difference."""
    keys = [k for k in dict.fromkeys(r["config_key"] for r in base) if k in {r["config_key"] for r in cand}]
    found: dict[str, Difference] = {}
    for key in keys:
        b = environment_of([r for r in base if r["config_key"] == key])
        c = environment_of([r for r in cand if r["config_key"] == key])
        for name in FIELDS:
            if b[name] and c[name] and set(b[name]) != set(c[name]):
                difference = found.setdefault(name, Difference(name, [], [], [], len(keys)))
                difference.keys.append(key)
                difference.baseline += [v for v in b[name] if v not in difference.baseline]
                difference.candidate += [v for v in c[name] if v not in difference.candidate]
    return [found[name] for name in FIELDS if name in found]


def unknown(base: list[dict[str, Any]], cand: list[dict[str, Any]]) -> list[str]:
    """Warnings for a field one run's records say and the other's never do (NVML unavailable there: no driver; an
    older lmbench: no environment variables): a difference there cannot be ruled out."""
    b, c = environment_of(base), environment_of(cand)
    said = {"baseline": any(r.get("env") for r in base), "candidate": any(r.get("env") for r in cand)}
    warnings = []
    for name in FIELDS:
        for side, known, lacking in (("baseline", c[name], b[name]), ("candidate", b[name], c[name])):
            if known and not lacking and said[side]:
                other = "candidate" if side == "baseline" else "baseline"
                warnings.append(f"the {side}'s records do not say their {name} (the {other}'s: {', '.join(known)}; "
                                "an older lmbench or a query that failed there): a difference cannot be ruled out")
    return warnings


def mixed(records: list[dict[str, Any]], side: str) -> list[str]:
    """Warnings for a run whose repeats of one configuration say more than one value of a field (resumed or merged
    on another machine, or after an upgrade). Configurations of one run may differ by design (a CPU run's ddp
    rows, one thread per rank, beside its single-process rows)."""
    found: dict[str, list[str]] = {}
    keys: dict[str, list[str]] = {}
    # Of one run each: a report of several keeps their rows apart, and two runs on two cards are no mix.
    for run, key in dict.fromkeys((r.get("run"), r["config_key"]) for r in records):
        for name, values in environment_of([r for r in records
                                            if r["config_key"] == key and r.get("run") == run]).items():
            if len(values) > 1:
                found.setdefault(name, [])
                found[name] += [v for v in values if v not in found[name]]
                keys.setdefault(name, []).append(key)
    return [f"the {side}'s repeats of {_configurations(keys[name])} come from more than one {name} "
            f"({', '.join(values)}): it was resumed or merged on another machine, or something was upgraded between "
            "them" for name, values in found.items()]


def _configurations(keys: list[str]) -> str:
    return f"configuration {keys[0]}" if len(keys) == 1 else f"{len(keys)} configurations (e.g. {keys[0]})"

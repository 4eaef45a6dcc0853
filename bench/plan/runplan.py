"""A run's plan as run.json keeps it, the proof that `--resume` continues the same plan, and the command that does.

The plan is what decides the list of jobs: the suite's content (its sha256, so an edited suite file
counts as another plan), the overrides (--set and --device, compared after parsing, so order, the order of
a matrix's values and spelling do not matter), --repeats, --parity and --nnodes. Where it runs (--node-rank,
--rdzv-endpoint) and the --max-configs guard are not part of it. Raising --repeats on resume extends
the plan rather than changing it.

A corpus file (`data = "corpus.txt"`) is part of what a configuration measures, but not of its config_key: run.json
keeps each one's sha256 (`corpora`), and a resume that would read other text under the same keys (the file edited,
or a relative path read from another folder) is refused (check_corpora).
"""

from __future__ import annotations

import dataclasses
import shlex
import types
import typing
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from lmbench.errors import LmbenchError, UsageError
from lmbench.plan import suite as suites
from lmbench.plan.config import Config, corpus_identity

#: Most fresh-process repeats of each configuration (`--repeats`): the jobs of every repeat are planned up front, so
#: a typo such as 10^12 planned for ever with growing memory; gates settle with a handful, noise studies with tens.
MAX_REPEATS = 1000


class PlanMismatch(UsageError):
    """`--resume` was given a plan other than the one the run directory was started with."""


class CorpusChanged(PlanMismatch):
    """`--resume` would train on other text than the run's records did, under the same config_keys."""


P = TypeVar("P", bound="StoredPlan")


class StoredPlan:
    """A frozen plan dataclass as run.json keeps it: its fields, with the `overrides` tuple as a JSON list."""

    overrides: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "overrides": list(self.overrides)}

    @classmethod
    def from_json(cls: type[P], data: Any) -> P:
        try:
            plan = cls(**{**data, "overrides": tuple(data.get("overrides") or ())})
        except (TypeError, AttributeError) as err:
            raise UsageError(f"run.json holds no readable plan ({err})") from None
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(plan):  # type: ignore[arg-type]
            value = getattr(plan, field.name)
            if not _fits(value, hints[field.name]):
                raise UsageError(f"run.json holds no readable plan ({field.name}={value!r} is not "
                                 f"{_spelled(hints[field.name])})")
        return plan


def _fits(value: Any, hint: Any) -> bool:
    """Whether `value`, read from JSON, has the type `hint` (bool is not an int here)."""
    if hint is Any:
        return True
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_fits(value, arm) for arm in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return isinstance(value, tuple) and all(_fits(v, typing.get_args(hint)[0]) for v in value)
    if hint is type(None):
        return value is None
    if hint in (int, float):  # JSON writes 2.0 as 2
        return isinstance(value, (int, hint)) and not isinstance(value, bool)
    return isinstance(value, hint)


def _spelled(hint: Any) -> str:
    return str(hint).replace("typing.", "") if typing.get_origin(hint) else getattr(hint, "__name__", str(hint))


@dataclass(frozen=True, kw_only=True)
class RunPlan(StoredPlan):
    """Every option of `lmbench run` that shapes the list of jobs."""

    suite: str
    """The suite as given on the command line: a built-in name or a path."""
    suite_sha256: str
    overrides: tuple[str, ...] = ()
    """--set arguments as given."""
    device: str | None = None
    repeats: int = 1
    parity: bool = False
    nnodes: int = 1

    def settings(self) -> dict[str, str]:
        """The plan as comparable text, one entry per thing a user can change (the suite by content only)."""
        try:
            parsed = suites.parse_overrides([*self.overrides, *([f"device={self.device}"] if self.device else [])])
            # A matrix's values in any order are one plan (the order only orders the jobs).
            overrides = " ".join(f"{axis}={','.join(sorted(map(str, values)))}"
                                 for axis, values in sorted(parsed.items()))
        except LmbenchError:
            overrides = " ".join(self.overrides)  # from another lmbench version: compared as written
        return {"suite content": f"sha256 {self.suite_sha256[:12]}", "overrides (--set, --device)": overrides or "none",
                "--repeats": str(self.repeats), "--parity": "on" if self.parity else "off",
                "--nnodes": str(self.nnodes)}

    def differences(self, earlier: RunPlan) -> list[str]:
        """What differs from the plan the run started with. More --repeats than before extends the same plan
        (each repeat is one more fresh process of every configuration), as CI does to interleave two runs."""
        now, then = self.settings(), earlier.settings()
        if self.repeats >= earlier.repeats:
            now["--repeats"] = then["--repeats"]
        found = [f"{name}: {now[name]} now, {then[name]} then" for name in now if now[name] != then[name]]
        if found and found[0].startswith("suite content"):
            found[0] = (f"suite: {self.suite} ({now['suite content']}) now, {earlier.suite} "
                        f"({then['suite content']}) then")
        return found

    def resume_command(self, out: Path, *, extra: tuple[str, ...] = ()) -> str:
        """`lmbench run ... --resume` with exactly this plan; `extra` adds options outside the plan."""
        args = ["lmbench", "run", "--suite", self.suite, "--out", str(out)]
        for item in self.overrides:
            args += ["--set", item]
        if self.device:
            args += ["--device", self.device]
        if self.repeats != 1:
            args += ["--repeats", str(self.repeats)]
        if self.parity:
            args.append("--parity")
        if self.nnodes != 1:
            args += ["--nnodes", str(self.nnodes)]
        return shlex.join([*args, *extra, "--resume"])


def check(meta: dict[str, Any] | None, plan: RunPlan, *, out: Path, suggest: bool = True, suite_name: str = "",
          recorded_suites: Iterable[Any] = ()) -> str | None:
    """Refuse to resume `out` with another plan (PlanMismatch naming every difference and, with `suggest`,
    the `lmbench run` command that resumes it).

    Without a plan in run.json (an older lmbench, or none at all) there is nothing to compare: records of
    suites other than `suite_name` are refused (another run's, or a tune's), else this returns a warning.
    """
    if meta is None or "plan" not in meta:
        foreign = sorted({str(name) for name in recorded_suites} - {suite_name})
        if foreign:
            raise PlanMismatch(f"--resume: {str(out)!r} records no plan (no run.json, or one from before plans were "
                               f"recorded) and holds records of suite {', '.join(map(repr, foreign))}, not of "
                               f"{suite_name!r}; choose another --out")
        return f"{out}: run.json records no plan (an older lmbench, or not a run directory); resuming unchecked"
    earlier = RunPlan.from_json(meta["plan"])
    differences = plan.differences(earlier)
    if not differences:
        return None
    how = f"resume it with {earlier.resume_command(out)}" if suggest else "resume it with the options it started with"
    if plan.suite == earlier.suite and plan.suite_sha256 != earlier.suite_sha256:
        # The command it started with names this suite too, and is refused the same way while the suite's content
        # differs: it is the content to restore (a trial was told to run the very command just refused).
        changed = (f"the built-in suite {plan.suite} is another in this lmbench than in the one that started the run "
                   "(run.json says which): resume with that lmbench" if suites.names_builtin(plan.suite) else
                   f"the suite file {plan.suite} changed since the run started: restore it as it was")
        how = changed + (f", then {how}" if len(differences) > 1 else "")
    raise mismatch(out, differences, how)


def mismatch(out: Path, differences: list[str], how: str) -> PlanMismatch:
    """The refusal of a resume with another plan: every difference, then `how` to resume it as it was started."""
    return PlanMismatch(f"--resume: {str(out)!r} was started with another plan ({'; '.join(differences)}); {how}, "
                        "or choose another --out")


def corpora(configs: Iterable[Config]) -> dict[str, str]:
    """The sha256 of each corpus file the configurations read, by `data` as they give it: run.json's `corpora`.
    The hash is corpus_identity's, the one each ok record keeps as metrics.data_sha256 (read once per file and
    modification time, so a run's records do not read the file again)."""
    found: dict[str, str] = {}
    for config in configs:
        if config.reads_file and config.data not in found:
            try:
                found[config.data] = corpus_identity(config.data)["data_sha256"]
            except OSError as err:
                raise UsageError(f"data={config.data!r}: cannot read it ({err.strerror or err})") from None
    return found


def recorded_corpora(meta: dict[str, Any] | None, records: Iterable[dict[str, Any]]) -> dict[str, set[str]]:
    """The sha256(s) of each corpus a run trained on, by `data`: run.json's `corpora`, or for a run started before
    they were recorded, the data_sha256 of its ok records (several where such a run already mixed corpora)."""
    kept = meta.get("corpora") if meta else None
    if isinstance(kept, dict):
        return {data: {sha} for data, sha in kept.items() if isinstance(data, str) and isinstance(sha, str)}
    found: dict[str, set[str]] = {}
    for record in records:
        sha = (record.get("metrics") or {}).get("data_sha256") if record.get("status") == "ok" else None
        data = (record.get("config") or {}).get("data")
        if isinstance(sha, str) and isinstance(data, str):
            found.setdefault(data, set()).add(sha)
    return found


def check_corpora(meta: dict[str, Any] | None, records: Iterable[dict[str, Any]], now: dict[str, str], *,
                  out: Path) -> None:
    """Refuse to resume `out` when a corpus it trained on holds other text now (CorpusChanged, one line naming the
    file and both hashes): the new records would sit under the same config_keys as the old and be averaged with
    them. A corpus the run has not read before (none recorded) is no change."""
    then = recorded_corpora(meta, records)
    for data, sha in now.items():
        earlier = then.get(data)
        if earlier and sha not in earlier:
            where = "" if Path(data).is_absolute() else f" (here {Path(data).resolve()})"
            raise CorpusChanged(f"--resume: data={data!r}{where} is other text than {str(out)!r} was measured on "
                                f"(sha256 {'/'.join(sorted(h[:12] for h in earlier))} then, {sha[:12]} now); restore "
                                "the file, or measure it in a new run with another --out")

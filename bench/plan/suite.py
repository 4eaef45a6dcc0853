"""Suite files: TOML with defaults, a cartesian matrix and exclusions, expanded into configurations."""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from lmbench.errors import ConfigError, SuiteError
from lmbench.plan.config import (
    CONDITIONAL_AXES,
    DEFAULTS,
    FIELD_TYPES,
    KERNEL_AXES,
    MODE_AXES,
    TYPE_NAMES,
    Config,
    applies,
    coerce,
)
from lmbench.plan.layout import DISTRIBUTED

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

_TOP_LEVEL = ("name", "description", "defaults", "matrix", "exclude")
#: Largest matrix `expand` builds unless told otherwise (`lmbench run --max-configs`): a typo such as a
#: 1000-value axis should be a message, not minutes of planning and gigabytes of memory.
MAX_CONFIGS = 10_000
#: Suite names become directory names (runs/NAME-DATE): no separators, no leading dot.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


@dataclass(frozen=True)
class Planned:
    """One configuration of an expanded suite; `conflict` says why it cannot run at all."""

    config: Config
    conflict: str | None = None


@dataclass(frozen=True, kw_only=True)
class Suite:
    """A parsed suite file, before expansion."""

    name: str
    description: str
    source: str
    """Where it came from, for error messages: a path, or `builtin:NAME`."""
    digest: str = ""
    """sha256 of the file's text: `--resume` checks that the suite did not change."""
    defaults: dict[str, Any] = field(default_factory=dict)
    matrix: dict[str, list[Any]] = field(default_factory=dict)
    exclude: list[dict[str, list[Any]]] = field(default_factory=list)
    overridden: tuple[str, ...] = ()
    """The axes `--set` gave (with_overrides), named beside the file in errors of the expanded plan."""
    flags: tuple[str, ...] = ()
    """Options other than --set that gave an axis (`--device`), named as they were given."""
    no_axes: bool = False
    """The file's [defaults] and [matrix] hold no entry (each one commented out): `expand` refuses it unless --set
    gives an axis, as it would run lmbench's default configuration alone under the suite's name."""

    @property
    def where(self) -> str:
        """The file and the --set axes a plan came from, for an error found in it (`--set seq_len=99999` past a
        model's positions was blamed on the file alone); `--device` by its own name (it read as `--set device`)."""
        given = ([f"--set {', '.join(self.overridden)}"] if self.overridden else []) + list(self.flags)
        return f"{self.source} with {' and '.join(given)}" if given else self.source

    @property
    def size(self) -> int:
        """Number of matrix points before exclusions."""
        return math.prod(len(values) for values in self.matrix.values())

    def with_overrides(self, overrides: dict[str, list[Any]], *, flag: str | None = None) -> Suite:
        """Apply `--set KEY=V1,V2`: one value replaces the default, several become a matrix axis. `flag`: the option
        that gave them, where it is not --set (`--device`)."""
        defaults = dict(self.defaults)
        matrix = dict(self.matrix)
        for axis, values in overrides.items():
            defaults.pop(axis, None)
            matrix.pop(axis, None)
            if len(values) == 1:
                defaults[axis] = values[0]
            else:
                matrix[axis] = values
        return Suite(name=self.name, description=self.description, source=self.source, digest=self.digest,
                     defaults=defaults, matrix=matrix, exclude=self.exclude, no_axes=self.no_axes,
                     overridden=self.overridden if flag else tuple(dict.fromkeys([*self.overridden, *overrides])),
                     flags=tuple(dict.fromkeys([*self.flags, flag])) if flag else self.flags)

    def unused_options(self, planned: list[Planned]) -> list[str]:
        """Warnings for options of a parallel mode or kernel set that the suite sets but no planned configuration
        uses (compile_mode without kernels=compile): they change nothing, which is likely not what was meant; and for
        one target over rows of other corpora or tokenizers."""
        warnings = []
        for axis, owners in {**{a: ("parallel", m) for a, m in MODE_AXES.items()},
                             **{a: ("kernels", k) for a, k in KERNEL_AXES.items()}}.items():
            asked = self.matrix.get(axis, [self.defaults[axis]] if axis in self.defaults else [])
            if any(coerce(axis, value) != DEFAULTS[axis] for value in asked) and not any(
                    uses(row.config, axis) for row in planned):
                owner, users = owners
                values = ",".join(str(value) for value in asked)
                modes = " or ".join(sorted(users, key=lambda user: (len(user), user)))
                warnings.append(f"{axis}={values} applies to {owner}={modes} only, which no configuration here "
                                "uses: it changes nothing")
        for axis, needs in CONDITIONAL_AXES.items():
            asked = self.matrix.get(axis, [self.defaults[axis]] if axis in self.defaults else [])
            if any(coerce(axis, value) != DEFAULTS[axis] for value in asked) and not any(
                    row.config.uses_conditional(axis) for row in planned):
                warnings.append(f"{axis}={','.join(str(value) for value in asked)} applies to {needs} only, which "
                                "no configuration here is: it changes nothing")
        # nproc: the processes of a torchrun job; parallel=none runs one, dp one process over every GPU.
        asked = self.matrix.get("nproc", [self.defaults["nproc"]] if "nproc" in self.defaults else [])
        if any(coerce("nproc", value) != DEFAULTS["nproc"] for value in asked) and not any(
                uses(row.config, "nproc") for row in planned):
            warnings.append(f"nproc={','.join(str(value) for value in asked)} applies to the torchrun modes "
                            f"({', '.join(sorted(DISTRIBUTED))}) only, which no configuration here uses: parallel=none "
                            "runs one process, dp one process over every visible GPU")
        elif any(coerce("nproc", value) != DEFAULTS["nproc"] for value in asked) and any(
                row.config.parallel == "dp" for row in planned):
            # The parallel suite's point is dp against ddp: --set nproc=4 on 8 GPUs ran ddp on 4 and dp on 8.
            warnings.append(f"nproc={','.join(str(value) for value in asked)} does not apply to parallel=dp, which "
                            "runs one process over every visible GPU: its rows use them all (narrow them with "
                            "CUDA_VISIBLE_DEVICES to compare dp with a torchrun mode on as many GPUs)")
        cold = [row.config for row in planned if row.config.warmup == 0 and not row.conflict]
        if cold:
            # Allowed (a study of the first steps), never a figure of steady training.
            warnings.append(f"warmup=0 in {len(cold)} configuration(s): their first measured step carries the "
                            "process's one-time set-up (library handles, the allocator's first blocks, autotuning, "
                            "compilation), so their figures are not those of steady training")
        targeted = sorted({(row.config.data, row.config.tokenizer if row.config.reads_file else "-")
                           for row in planned if row.config.has_target})
        if len(targeted) > 1:
            corpora = ", ".join(data if tokens == "-" else f"{data} ({tokens})" for data, tokens in targeted)
            warnings.append(f"a target (target_loss/target_ppl) is a held-out loss in nats per token: rows of other "
                            f"data or tokenizers ({corpora}) count other tokens over other held-out text, so one "
                            "target is not the same goal for them; compare each corpus and tokenizer apart")
        stepped = [row.config for row in planned if row.config.has_target and row.config.eval_every]
        shapes = list(dict.fromkeys(_step_shape(config) for config in sorted(stepped, key=_step_order)))
        # Other tokens a step: batch x accumulation x positions differ, or a parallel layout may (its replicas
        # multiply them, nproc being settled only later). Equal products over one process evaluate alike.
        tokens = {_step_order(config)[:1] if config.parallel == "none" else _step_order(config) for config in stepped}
        if len(tokens) > 1:
            warnings.append("eval_every counts optimizer steps, and the rows with a target here train other tokens "
                            f"per step ({'; '.join(shapes)}): they evaluate at other token counts, so a larger batch "
                            "learns of its target later; eval_every_tokens=N evaluates every row at the same "
                            "token counts")
        return warnings

    def expand(self, *, max_configs: int = MAX_CONFIGS) -> list[Planned]:
        """Cartesian product of the matrix over the defaults, minus exclusions, duplicates removed.

        A value that is wrong on its own (batch_size=0) is an error; a combination of valid values
        that cannot go together (seq_len past one model's positions) becomes a planned row with a
        conflict, unless no combination at all is possible, which is an error again. The matrix is
        counted before anything is built: more than `max_configs` points is an error.
        """
        if self.no_axes and not self.overridden:
            # --device alone does not count: the default configuration on a chosen device is still not a suite.
            raise SuiteError(f"{self.source}: no axis in [defaults] or [matrix] (every entry commented out?): it would "
                             f"run lmbench's default configuration alone, as suite {self.name!r}; give an axis in the "
                             "file, or with --set")
        if self.size > max_configs:
            shape = " x ".join(f"{len(v)} {a}" for a, v in self.matrix.items() if len(v) > 1)
            raise SuiteError(f"{self.where}: the matrix has {self.size:,} points ({shape}), more than "
                             f"--max-configs {max_configs:,}; narrow it, or raise --max-configs")
        axes = list(self.matrix)
        planned: dict[str, Planned] = {}
        for combo in itertools.product(*(self.matrix[a] for a in axes)):
            point = dict(zip(axes, combo))
            if any(_matches(rule, {**self.defaults, **point}) for rule in self.exclude):
                continue
            try:
                config = Config.from_mapping({**self.defaults, **point})
            except ConfigError as err:
                raise SuiteError(f"{self.where}: {err}") from None
            kept = planned.setdefault(config.key, Planned(config, config.conflict()))
            if kept.config.timeout_s != config.timeout_s:
                # One configuration, measured once: the plan kept the first value without a word (a new user's
                # `--set timeout_s=1,120`). Several are fine where other axes tell the configurations apart.
                raise SuiteError(f"{self.where}: timeout_s={kept.config.timeout_s:g} and {config.timeout_s:g} fall "
                                 f"on one configuration ({config.key}): timeout_s is no part of its key (it bounds "
                                 "the worker, not what is measured); give each configuration one")
            if config.profile and not kept.config.profile:
                # profile=[false, true] is one configuration (profiling leaves the window, and the key, as they
                # are): it is profiled, whichever order the values came in.
                planned[config.key] = Planned(config, config.conflict())
        rows = list(planned.values())
        if not rows:
            raise SuiteError(f"{self.where}: the matrix is empty after [[exclude]]")
        if all(row.conflict for row in rows):
            raise SuiteError(f"{self.where}: {rows[0].conflict}")
        return rows


def _matches(rule: dict[str, list[Any]], values: dict[str, Any]) -> bool:
    """Whether a configuration's axes (defaults and matrix point together) fall under an [[exclude]] rule."""
    return all(axis in values and values[axis] in allowed for axis, allowed in rule.items())


def builtin_names() -> list[str]:
    """Names of the suites shipped inside the package."""
    return sorted(p.name[:-5] for p in resources.files("lmbench.suites").iterdir() if p.name.endswith(".toml"))


def uses(config: Config, axis: str) -> bool:
    """Whether `axis` changes anything for `config`: an option of a parallel mode or kernel set it runs (applies),
    and nproc only for the torchrun modes (parallel=none runs one process, dp one over every visible GPU)."""
    if axis == "nproc":
        return config.parallel in DISTRIBUTED
    return applies(config.to_dict(), axis)


def as_recorded(name_or_path: str) -> str:
    """How a run records its suite: a suite file by its absolute path, so that the resume command it prints works
    from any directory; a built-in suite by its name."""
    path = Path(name_or_path)
    return str(path.resolve()) if path.is_file() and not names_builtin(name_or_path) else name_or_path


def names_builtin(name_or_path: str) -> bool:
    """Whether the suite named is a built-in one: its bare name, even where a file of that name is in the directory
    (`./ci` names the file)."""
    return name_or_path in builtin_names() and not name_or_path.endswith(".toml") and "/" not in name_or_path


def load(name_or_path: str) -> Suite:
    """Load a built-in suite by name, or a suite file by path."""
    path = Path(name_or_path)
    if not names_builtin(name_or_path) and (name_or_path.endswith(".toml") or path.is_file()):
        if path.is_dir():
            raise SuiteError(f"suite file {name_or_path!r} is a directory; give the path of a suite .toml file")
        if not path.is_file():
            stem = path.name.removesuffix(".toml")
            meant = (f"; did you mean the built-in --suite {stem}? built-in suites: {', '.join(builtin_names())}"
                     if name_or_path.endswith(".toml") and stem in builtin_names() else "")
            raise SuiteError(f"suite file {name_or_path!r} does not exist{meant}")
        return parse(_read(path), source=str(path))
    if name_or_path not in builtin_names():
        if path.is_dir():
            raise SuiteError(f"suite {name_or_path!r} is a directory; give the path of a suite .toml file, or a "
                             f"built-in suite: {', '.join(builtin_names())}")
        raise SuiteError(f"unknown suite {name_or_path!r}; available: {', '.join(builtin_names())} "
                         "(or the path of a .toml file)")
    text = resources.files("lmbench.suites").joinpath(f"{name_or_path}.toml").read_text(encoding="utf-8")
    return parse(text, source=f"builtin:{name_or_path}")


def _read(path: Path) -> str:
    """A suite file's text; one that cannot be read, or is not UTF-8 (TOML is), is a SuiteError naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise SuiteError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); a suite "
                         "file is TOML, which is UTF-8") from None
    except OSError as err:
        raise SuiteError(f"cannot read suite file {str(path)!r}: {err.strerror or err}") from None


def parse(text: str, *, source: str) -> Suite:
    """Parse and check suite TOML; every error names `source` and the offending key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SuiteError(f"{source}: malformed TOML: {err}") from None
    unknown = sorted(set(data) - set(_TOP_LEVEL))
    if unknown:
        raise SuiteError(f"{source}: unknown key {unknown[0]!r}; allowed: {', '.join(_TOP_LEVEL)}")
    if not set(data) - {"name", "description"}:
        # An empty file (a wrong path, a truncated write), or one with a name alone, would run the defaults' one
        # configuration, silently.
        what = "an empty suite file" if not data else "a suite file with a name and description only"
        raise SuiteError(f"{source}: {what}; give at least a [defaults] or [matrix] table "
                         f"(allowed keys: {', '.join(_TOP_LEVEL)})")
    # Without a name, the file's stem made safe ("my suite.toml" runs as my-suite; "é.toml" as suite).
    name = data.get("name", re.sub(r"[^A-Za-z0-9._+-]", "-", Path(source).stem).lstrip("._+-")[:100] or "suite")
    description = data.get("description", "")
    if not isinstance(name, str) or not isinstance(description, str):
        raise SuiteError(f"{source}: 'name' and 'description' must be strings")
    if not _SAFE_NAME.fullmatch(name):
        raise SuiteError(f"{source}: name {name!r} is not a safe file name (up to 100 letters, digits, '.', '_', "
                         "'+' or '-', not starting with '.'): run directories are named after it")
    defaults = {axis: _check_value(axis, value, f"{source}: [defaults]", typed=True)
                for axis, value in _table(data, "defaults", source).items()}
    matrix_raw = _table(data, "matrix", source)
    matrix: dict[str, list[Any]] = {}
    for axis, values in matrix_raw.items():
        if axis in defaults:
            raise SuiteError(f"{source}: {axis} is in both [defaults] and [matrix]; give it in one of them")
        # A scalar is a one-value axis, as in [[exclude]].
        values = values if isinstance(values, list) else [values]
        if not values:
            raise SuiteError(f"{source}: [matrix] {axis} is an empty list")
        matrix[axis] = _distinct(axis, [_check_value(axis, v, f"{source}: [matrix]", typed=True) for v in values],
                                 f"{source}: [matrix]")
    excludes = data.get("exclude", [])
    if not isinstance(excludes, list) or not all(isinstance(rule, dict) for rule in excludes):
        raise SuiteError(f"{source}: 'exclude' must be an array of tables ([[exclude]])")
    rules = []
    for rule in excludes:
        if not rule:
            # all() of no axis is true: an empty rule excluded every point ("the matrix is empty after [[exclude]]").
            raise SuiteError(f"{source}: an empty [[exclude]] rule would exclude every configuration; give the "
                             "axes and values it excludes")
        checked = {}
        for axis, values in rule.items():
            values = values if isinstance(values, list) else [values]
            checked[axis] = [_check_value(axis, v, f"{source}: [[exclude]]", typed=True) for v in values]
            _check_excluded(axis, checked[axis], defaults, matrix, source)
        rules.append(checked)
    digest = hashlib.sha256(text.encode()).hexdigest()
    return Suite(name=name, description=description, source=source, digest=digest, defaults=defaults, matrix=matrix,
                 exclude=rules, no_axes=not defaults and not matrix)


def _check_excluded(axis: str, values: list[Any], defaults: dict[str, Any], matrix: dict[str, list[Any]],
                    source: str) -> None:
    """An [[exclude]] rule must be able to match: its axis is set by the file, and to one of its values."""
    if axis in matrix:
        present = matrix[axis]
    elif axis in defaults:
        present = [defaults[axis]]
    else:
        raise SuiteError(f"{source}: [[exclude]] {axis} is neither in [matrix] nor in [defaults], so the rule "
                         f"would exclude nothing; matrix axes: {', '.join(matrix) or 'none'}")
    if not any(v in present for v in values):
        shown = values[0] if len(values) == 1 else values
        raise SuiteError(f"{source}: [[exclude]] {axis}={shown!r} matches none of its values "
                         f"({', '.join(map(repr, present))}), so the rule would exclude nothing")


def parse_overrides(assignments: tuple[str, ...] | list[str]) -> dict[str, list[Any]]:
    """Parse `--set KEY=V1[,V2...]` strings into axis -> values."""
    overrides: dict[str, list[Any]] = {}
    for item in assignments:
        axis, sep, raw = item.partition("=")
        axis = axis.strip()
        if not sep or not raw.strip():
            raise SuiteError(f"--set {item!r}: expected KEY=VALUE[,VALUE...]")
        # The last --set of an axis wins: scripts layer overrides (ci/gpu-validate.sh shortens every stage so).
        overrides[axis] = parse_values(axis, raw, where=f"--set {item!r}")
    return overrides


def parse_values(axis: str, raw: str, *, where: str) -> list[Any]:
    """Comma-separated values of one axis; errors start with `where` (the option as the user typed it)."""
    return _distinct(axis, [_check_value(axis, v.strip(), where) for v in raw.split(",")], where)


def _distinct(axis: str, values: list[Any], where: str) -> list[Any]:
    """The values of one axis, refusing one given twice (a matrix point is measured once: a repeat is a typo)."""
    twice = [v for i, v in enumerate(values) if v in values[:i]]
    if twice:
        raise SuiteError(f"{where}: {axis} lists {twice[0]!r} more than once; give each value once")
    return values


def _table(data: dict[str, Any], key: str, source: str) -> dict[str, Any]:
    table = data.get(key, {})
    if not isinstance(table, dict):
        raise SuiteError(f"{source}: [{key}] must be a table")
    return table


def _check_value(axis: str, value: Any, where: str, *, typed: bool = False) -> Any:
    """One value of an axis, converted to its type. `typed`: it comes from TOML, which has numbers and booleans, so
    a string for a number or boolean axis is a mistake (only command-line text is parsed)."""
    if axis not in FIELD_TYPES:
        raise SuiteError(f"{where}: unknown axis {axis!r}; allowed: {', '.join(FIELD_TYPES)}")
    if typed and isinstance(value, str) and FIELD_TYPES[axis] is not str:
        raise SuiteError(f"{where}: {axis}={value!r} is a string; {axis} takes {TYPE_NAMES[FIELD_TYPES[axis]]} "
                         "(written without quotes in TOML)")
    try:
        value = coerce(axis, value)
    except ConfigError as err:
        raise SuiteError(f"{where}: {err}") from None
    try:
        # A one-axis config checks the value on its own; combinations are checked after expansion.
        Config(**{axis: value})
    except ConfigError as err:
        raise SuiteError(f"{where}: {err}") from None
    return value


def _step_order(config: Config) -> tuple[Any, ...]:
    return config.seq_len * config.batch_size * config.grad_accum, config.seq_len, config.batch_size, \
        config.parallel, config.nproc


def _step_shape(config: Config) -> str:
    """What sets the tokens of one optimizer step, as far as a plan knows them (nproc may be settled only later)."""
    shape = f"batch_size {config.batch_size} x grad_accum {config.grad_accum} x seq_len {config.seq_len}"
    if config.parallel != "none":
        shape += f", parallel={config.parallel} nproc={config.nproc or 'all'}"
    return shape

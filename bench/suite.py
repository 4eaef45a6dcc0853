"""Suite files: TOML with defaults, a cartesian matrix and exclusions, expanded into configurations."""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from lmbench.config import FIELD_TYPES, Config, coerce
from lmbench.errors import ConfigError, SuiteError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

_TOP_LEVEL = ("name", "description", "defaults", "matrix", "exclude")


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
    defaults: dict[str, Any] = field(default_factory=dict)
    matrix: dict[str, list[Any]] = field(default_factory=dict)
    exclude: list[dict[str, list[Any]]] = field(default_factory=list)

    @property
    def size(self) -> int:
        """Number of matrix points before exclusions."""
        size = 1
        for values in self.matrix.values():
            size *= len(values)
        return size

    def with_overrides(self, overrides: dict[str, list[Any]]) -> Suite:
        """Apply `--set KEY=V1,V2`: one value replaces the default, several become a matrix axis."""
        defaults = dict(self.defaults)
        matrix = dict(self.matrix)
        for axis, values in overrides.items():
            defaults.pop(axis, None)
            matrix.pop(axis, None)
            if len(values) == 1:
                defaults[axis] = values[0]
            else:
                matrix[axis] = values
        return Suite(name=self.name, description=self.description, source=self.source, defaults=defaults,
                     matrix=matrix, exclude=self.exclude)

    def expand(self) -> list[Planned]:
        """Cartesian product of the matrix over the defaults, minus exclusions, duplicates removed.

        A value that is wrong on its own (batch_size=0) is an error; a combination of valid values
        that cannot go together (seq_len past one model's positions) becomes a planned row with a
        conflict, unless no combination at all is possible, which is an error again.
        """
        axes = list(self.matrix)
        planned: dict[str, Planned] = {}
        for combo in itertools.product(*(self.matrix[a] for a in axes)):
            point = dict(zip(axes, combo))
            if any(_matches(rule, point) for rule in self.exclude):
                continue
            try:
                config = Config.from_mapping({**self.defaults, **point})
            except ConfigError as err:
                raise SuiteError(f"{self.source}: {err}") from None
            planned.setdefault(config.key, Planned(config, config.conflict()))
        rows = list(planned.values())
        if not rows:
            raise SuiteError(f"{self.source}: the matrix is empty after [[exclude]]")
        if all(row.conflict for row in rows):
            raise SuiteError(f"{self.source}: {rows[0].conflict}")
        return rows


def _matches(rule: dict[str, list[Any]], point: dict[str, Any]) -> bool:
    return all(axis in point and point[axis] in values for axis, values in rule.items())


def builtin_names() -> list[str]:
    """Names of the suites shipped inside the package."""
    return sorted(p.name[:-5] for p in resources.files("lmbench.suites").iterdir() if p.name.endswith(".toml"))


def load(name_or_path: str) -> Suite:
    """Load a built-in suite by name, or a suite file by path."""
    path = Path(name_or_path)
    if name_or_path.endswith(".toml") or path.is_file():
        if not path.is_file():
            raise SuiteError(f"suite file {name_or_path!r} does not exist")
        return parse(path.read_text(encoding="utf-8"), source=str(path))
    if name_or_path not in builtin_names():
        raise SuiteError(f"unknown suite {name_or_path!r}; available: {', '.join(builtin_names())} "
                         "(or the path of a .toml file)")
    text = resources.files("lmbench.suites").joinpath(f"{name_or_path}.toml").read_text(encoding="utf-8")
    return parse(text, source=f"builtin:{name_or_path}")


def parse(text: str, *, source: str) -> Suite:
    """Parse and check suite TOML; every error names `source` and the offending key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SuiteError(f"{source}: malformed TOML: {err}") from None
    unknown = sorted(set(data) - set(_TOP_LEVEL))
    if unknown:
        raise SuiteError(f"{source}: unknown key {unknown[0]!r}; allowed: {', '.join(_TOP_LEVEL)}")
    name = data.get("name", Path(source).stem)
    description = data.get("description", "")
    if not isinstance(name, str) or not isinstance(description, str):
        raise SuiteError(f"{source}: 'name' and 'description' must be strings")
    defaults = _table(data, "defaults", source)
    matrix_raw = _table(data, "matrix", source)
    for axis, value in defaults.items():
        _check_value(axis, value, f"{source}: [defaults]")
    matrix: dict[str, list[Any]] = {}
    for axis, values in matrix_raw.items():
        values = values if isinstance(values, list) else [values]
        if not values:
            raise SuiteError(f"{source}: [matrix] {axis} is an empty list")
        matrix[axis] = [_check_value(axis, v, f"{source}: [matrix]") for v in values]
    excludes = data.get("exclude", [])
    if not isinstance(excludes, list) or not all(isinstance(rule, dict) for rule in excludes):
        raise SuiteError(f"{source}: 'exclude' must be an array of tables ([[exclude]])")
    rules = []
    for rule in excludes:
        checked = {}
        for axis, values in rule.items():
            values = values if isinstance(values, list) else [values]
            checked[axis] = [_check_value(axis, v, f"{source}: [[exclude]]") for v in values]
        rules.append(checked)
    return Suite(name=name, description=description, source=source, defaults=defaults, matrix=matrix, exclude=rules)


def parse_overrides(assignments: tuple[str, ...] | list[str]) -> dict[str, list[Any]]:
    """Parse `--set KEY=V1[,V2...]` strings into axis -> values."""
    overrides: dict[str, list[Any]] = {}
    for item in assignments:
        axis, sep, raw = item.partition("=")
        axis = axis.strip()
        if not sep or not raw.strip():
            raise SuiteError(f"--set {item!r}: expected KEY=VALUE[,VALUE...]")
        overrides[axis] = [_check_value(axis, v.strip(), f"--set {item!r}") for v in raw.split(",")]
    return overrides


def _table(data: dict[str, Any], key: str, source: str) -> dict[str, Any]:
    table = data.get(key, {})
    if not isinstance(table, dict):
        raise SuiteError(f"{source}: [{key}] must be a table")
    return table


def _check_value(axis: str, value: Any, where: str) -> Any:
    if axis not in FIELD_TYPES:
        raise SuiteError(f"{where}: unknown axis {axis!r}; allowed: {', '.join(FIELD_TYPES)}")
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

"""The regression gate's outputs: verdict tables (text, Markdown, JSON), JUnit XML, exit codes."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape as xml_escape

from lmbench.analyze import environments, results
from lmbench.analyze.compare import Verdict, higher_is_better
from lmbench.analyze.noise import ENVIRONMENT, NoiseFloor, environment_of
from lmbench.analyze.table import markdown_table
from lmbench.errors import ResultsError, UsageError

EXIT_OK, EXIT_REGRESSION = 0, 1


def load_pair(base: Path, cand: Path, *, metric: str, allow_different_hardware: bool,
              noise: NoiseFloor | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """(baseline records, candidate records, warnings), refusing pairs that cannot be compared."""
    loaded = {}
    warnings: list[str] = []
    if noise is not None:
        noise.check_metric(metric)
    for side, path in (("baseline", base), ("candidate", cand)):
        if not Path(path).is_dir():
            what = "is a file, not a run directory" if Path(path).exists() else "does not exist"
            raise UsageError(f"{side} run directory {str(path)!r} {what}")
    if Path(base).resolve() == Path(cand).resolve():
        # A CI job that names one directory twice would pass for ever.
        raise UsageError(f"baseline and candidate are the same run directory ({str(base)!r}): a run compared with "
                         "itself always passes; compare two runs")
    for side, path in (("baseline", base), ("candidate", cand)):
        loaded[side] = results.read(path)
        warnings += loaded[side].warnings
    b, c = loaded["baseline"].records, loaded["candidate"].records
    empty = [side for side, records in (("baseline", b), ("candidate", c)) if not records]
    if len(empty) == 1:
        path = base if empty[0] == "baseline" else cand
        skipped = loaded[empty[0]].warnings
        if skipped:  # a file of lines, none readable: say why, not that it is empty
            raise UsageError(f"the {empty[0]} run {str(path)!r} holds no readable record: {len(skipped)} line(s) "
                             f"skipped ({skipped[0]})")
        raise UsageError(f"the {empty[0]} run {str(path)!r} holds no records (no {results.RESULTS_FILE}, or an empty "
                         "one): nothing ran there to compare")
    # Configurations pair by key, whatever their suite is called: a suite renamed between the baseline and the
    # candidate (its file, its `name`) ended a CI gate with exit 2. Runs that share no configuration are refused
    # below (_check_shared).
    suites_seen = {r.get("suite") for r in b} | {r.get("suite") for r in c}
    if len(suites_seen) > 1:
        warnings.append(f"the runs are of different suites ({', '.join(sorted(map(str, suites_seen)))}): their "
                        "configurations are paired by key, those of one run only are missing from the other")
    if not any(r.get("metrics") for r in b + c):
        statuses = ", ".join(sorted({r["status"] for r in b + c})) or "no records"
        raise UsageError(f"neither run has a measured configuration to compare (statuses: {statuses})")
    check_metric(metric, b + c)
    _check_shared(b, c)
    _check_sizes(b, c)
    warnings += check_hardware(environments.differences(b, c), allow_different_hardware=allow_different_hardware)
    warnings += environments.unknown(b, c)
    warnings += environments.mixed(b, "baseline") + environments.mixed(c, "candidate")
    if noise is not None:
        noise = noise.rekeyed(b + c)
        warnings += _floor_elsewhere(noise, b, c)
        warnings += _floor_otherwise(noise, b, c, [_suite_sha256(path) for path in (base, cand)])
        if not set(noise.configs) & {r["config_key"] for r in b + c}:
            warnings.append(f"the noise floor {noise.source} has none of these runs' configurations (another suite "
                            "or other --set values?): every verdict rests on its repeats alone")
    busy = sorted(noise.contended & {r["config_key"] for r in b + c}) if noise is not None else []
    if busy:
        warnings.append(f"the noise floor {noise.source} was taken on a busy host for {len(busy)} configuration(s) "
                        f"(e.g. {busy[0]}): their floors measure that host's load as much as the configuration; "
                        "calibrate again on a quiet host")
    return b, c, warnings


def _floor_elsewhere(noise: NoiseFloor, base: list[dict[str, Any]], cand: list[dict[str, Any]]) -> list[str]:
    """A warning when a side ran on a device other than the one the noise floor was measured on."""
    ran = [sorted({((r.get("env") or {}).get("device") or {}).get("name") for r in side if r.get("env")} - {None})
           for side in (base, cand)]
    if all(devices == [noise.device] for devices in ran):
        return []
    named = [", ".join(devices) or "an unrecorded device" for devices in ran]
    where = (f"the runs ran on {named[0]}" if named[0] == named[1]
             else f"the baseline ran on {named[0]}, the candidate on {named[1]}")
    return [f"the noise floor {noise.source} was measured on {noise.device or 'an unrecorded device'}, {where}"]


def _floor_otherwise(noise: NoiseFloor, base: list[dict[str, Any]], cand: list[dict[str, Any]],
                     suites: list[str | None]) -> list[str]:
    """A warning when a side ran with another driver, torch or lmbench than the noise floor was measured with, or
    a suite of other content (what the file says: a floor from before these were kept says nothing)."""
    found = []
    for field in ENVIRONMENT:
        said = noise.environment.get(field)
        ran = [sorted({v for r in side if (v := environment_of(r)[field]) is not None}) for side in (base, cand)]
        if said is not None and any(values and values != [said] for values in ran):
            found.append(f"{field} {said} (floor), {', '.join(ran[0]) or 'unrecorded'} (baseline), "
                         f"{', '.join(ran[1]) or 'unrecorded'} (candidate)")
    if noise.suite_sha256 and any(sha and sha != noise.suite_sha256 for sha in suites):
        found.append(f"suite content sha256 {noise.suite_sha256[:12]} (floor), "
                     + ", ".join(f"{(sha or 'unrecorded')[:12]} ({side})"
                                 for sha, side in zip(suites, ("baseline", "candidate"))))
    if not found:
        return []
    return [f"the noise floor {noise.source} was measured in another environment than the runs ({'; '.join(found)}): "
            "its spread may not be these runs' noise; calibrate again where they ran"]


def _suite_sha256(run_dir: Path) -> str | None:
    """The suite content a run's run.json says it planned (None where it says nothing, or cannot be read)."""
    try:
        meta = results.read_meta(run_dir) or {}
    except ResultsError:
        return None
    sha = (meta.get("plan") or {}).get("suite_sha256") if isinstance(meta.get("plan"), dict) else None
    return sha if isinstance(sha, str) and sha else None


def check_metric(metric: str, records: list[dict[str, Any]], *, runs: str = "either run") -> None:
    """compare's checks of --metric against the records it would read (those of `runs`): in some record, a number in
    the ok ones, with a known direction. `lmbench calibrate` asks the same of its first runs' records, before the
    rest of its runs are spent on a metric no gate could use."""
    if not any(metric in (r.get("metrics") or {}) for r in records):
        raise UsageError(f"--metric {metric!r} is in no record of {runs} (e.g. tokens_per_s, step_time_median_s)")
    _check_numeric(metric, records)
    higher_is_better(metric)


def _check_numeric(metric: str, records: list[dict[str, Any]]) -> None:
    """A ratio of medians needs numbers (a count at 0 everywhere is fine: it did not change)."""
    values = [(r.get("metrics") or {}).get(metric) for r in records if r["status"] == "ok"]
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    if not numbers:
        shown = next((repr(v)[:40] for v in values if v is not None), None)
        found = f"e.g. {shown}" if shown else ("it is null in every one: not measured there (mfu and power need a GPU, "
                                               "a step-time spread two steps or more)")
        raise UsageError(f"--metric {metric!r} has no numeric value in the ok records ({found}); compare a "
                         "number such as tokens_per_s or step_time_median_s")


def _check_shared(base: list[dict[str, Any]], cand: list[dict[str, Any]]) -> None:
    """Two runs with no configuration in common compare nothing (another suite version, --set steps=...)."""
    b_keys, c_keys = dict.fromkeys(r["config_key"] for r in base), dict.fromkeys(r["config_key"] for r in cand)
    if b_keys and c_keys and not b_keys.keys() & c_keys.keys():
        differ = _axes_apart(base, cand)
        raise UsageError(f"the runs share no configuration ({len(b_keys)} in the baseline, e.g. {next(iter(b_keys))}; "
                         f"{len(c_keys)} in the candidate, e.g. {next(iter(c_keys))})"
                         + (f"; they differ in {differ}" if differ else "") + ": run both with the same suite and "
                         "options")


def _axes_apart(base: list[dict[str, Any]], cand: list[dict[str, Any]], shown: int = 4) -> str:
    """The axes whose values the two runs never share (`steps 3 vs 5`), the first few: what a key's hash hides."""
    from lmbench.plan.config import UNKEYED_AXES

    # Every axis, as the record's lmbench ran it (an axis older records lack at its default), and only the keyed.
    b_configs, c_configs = ([results.full_config(r["config"]) for r in side] for side in (base, cand))
    found = []
    for axis in dict.fromkeys(axis for config in b_configs + c_configs for axis in config):
        if axis in UNKEYED_AXES:
            continue
        b = sorted({str(config.get(axis)) for config in b_configs})
        c = sorted({str(config.get(axis)) for config in c_configs})
        if not set(b) & set(c):
            found.append(f"{axis} {','.join(b)} vs {','.join(c)}")
    return ", ".join(found[:shown]) + (f" and {len(found) - shown} more" if len(found) > shown else "")


#: Metrics that say how many processes and devices a record ran on; the config key leaves out --nnodes.
_SIZE = ("nnodes", "world_size", "devices")


def _check_sizes(base: list[dict[str, Any]], cand: list[dict[str, Any]]) -> None:
    """A configuration must have run on as many nodes, processes and devices on both sides."""
    def sizes(records: list[dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
        found = {}
        for r in records:
            m = r.get("metrics") or {}
            if r["status"] == "ok" and any(m.get(name) is not None for name in _SIZE):
                found.setdefault(r["config_key"], tuple(m.get(name) for name in _SIZE))
        return found

    b, c = sizes(base), sizes(cand)
    for key in b.keys() & c.keys():
        if b[key] != c[key]:
            shown = ", ".join(f"{name} {x} vs {y}" for name, x, y in zip(_SIZE, b[key], c[key]) if x != y)
            raise UsageError(f"configuration {key} ran at different sizes ({shown}, baseline vs candidate): "
                             "compare runs with the same --nnodes and devices")


def write_junit(path: Path, verdicts: list[Verdict], *, metric: str, warnings: Sequence[str] = ()) -> None:
    """The JUnit file, or a one-line ResultsError when `path` cannot be written.

    Written beside it and renamed into place: on a full disk a write in place left an empty file, which a CI's JUnit
    reader takes for a suite of no test cases, or a file from an earlier gate cut short. A path that is no regular
    file (/dev/stdout, a FIFO) is written as it is: renaming over it would replace it."""
    text = junit_xml(verdicts, metric=metric, warnings=warnings)
    target = Path(os.path.realpath(path))  # through a symbolic link: the file it names is replaced, not the link
    try:
        if target.exists() and not target.is_file():
            Path(path).write_text(text, encoding="utf-8")
            return
        partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            partial.write_text(text, encoding="utf-8")
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    except OSError as err:
        raise ResultsError(f"cannot write --junit {str(path)!r}: {err.strerror or err}") from None


def check_hardware(found: list[environments.Difference], *, allow_different_hardware: bool) -> list[str]:
    """Warnings for environments that differ; a configuration both runs measured on different device models (GPU or
    CPU) is an error unless allowed."""
    device = next((d for d in found if d.field == "device"), None)
    if device is not None and not allow_different_hardware:
        others = f" and {len(device.keys) - 1} more" if len(device.keys) > 1 else ""
        raise UsageError(f"the runs come from different devices ({', '.join(device.baseline)} vs "
                         f"{', '.join(device.candidate)}; configuration {device.keys[0]}{others}); pass "
                         "--allow-different-hardware to compare them anyway")
    return [d.line() for d in found]


def _cells(v: Verdict) -> list[str]:
    def num(x: float | None, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    interval = "-" if v.ci_low is None else f"[{v.ci_low:.3f}, {v.ci_high:.3f}]"
    change = "-" if v.ratio is None else f"{(v.ratio - 1) * 100:+.1f}%"
    return [v.config_key, v.verdict, _figure(v.base_median), _figure(v.cand_median), num(v.ratio, ".3f"), change,
            interval, f"{v.n_base}/{v.n_cand}", v.parity or "-", v.note]


def _figure(value: float | None) -> str:
    """A median as a table shows it: four significant digits, thousands grouped (123,457 tokens/s; 0.1235 s)."""
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def headers(metric: str) -> list[str]:
    """The table's columns; the medians' carry the metric's name, which carries its unit (tokens_per_s)."""
    return ["config", "verdict", f"baseline {metric}", f"candidate {metric}", "ratio", "change", "95% CI",
            "repeats base/cand", "parity", "note"]


def title(metric: str, threshold: float) -> str:
    """What the table compares: the metric, which way is better, the statistic and the threshold."""
    better = "more" if higher_is_better(metric) else "less"
    return (f"lmbench compare: {metric} ({better} is better), candidate ÷ baseline (median of repeats), "
            f"threshold ±{threshold * 100:g}%")


def render(verdicts: list[Verdict], *, fmt: str, metric: str, threshold: float, warnings: Sequence[str] = ()) -> str:
    """The verdict table. JSON and Markdown, which a CI job posts where the terminal's warnings are not seen (the
    step summary, a pull-request comment), carry the warnings too (other software on one side, say)."""
    if fmt == "json":
        return json.dumps({"metric": metric, "higher_is_better": higher_is_better(metric), "threshold": threshold,
                           "warnings": list(warnings), "verdicts": [v.as_dict() for v in verdicts]}, indent=2)
    rows = [_cells(v) for v in verdicts]
    columns = headers(metric)
    if fmt == "md":
        heading = f"**{title(metric, threshold).replace(': ', '**: ', 1)}\n\n"
        said = "".join(f"> **warning**: {w.replace('<', '&lt;')}\n>\n" for w in warnings).removesuffix(">\n") + \
            ("\n" if warnings else "")
        return heading + said + markdown_table(columns, rows, right={2, 3, 4, 5, 7}) + f"\n\n**{outcome(verdicts)}**"
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(columns)]
    lines = [title(metric, threshold), "", "  ".join(h.ljust(w) for h, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines + ["", outcome(verdicts)])


def outcome(verdicts: list[Verdict]) -> str:
    """The gate's outcome in words, with the verdicts counted: what the exit code says."""
    counts = ", ".join(f"{n} {verdict}" for verdict, n in Counter(v.verdict for v in verdicts).items())
    blocking = [v for v in verdicts if v.blocking]
    if not blocking:
        return f"gate: passes ({counts})"
    return f"gate: fails: {len(blocking)} blocking ({counts})"


def junit_xml(verdicts: list[Verdict], *, metric: str, warnings: Sequence[str] = ()) -> str:
    """One test case per configuration: a blocking verdict (regression, a failed or missing candidate) is a
    failure; one the gate could not judge (inconclusive, or no baseline to judge against) is skipped, with why."""
    unjudged = ("missing", "failed", "skipped", "inconclusive")
    failures = sum(v.blocking for v in verdicts)
    skipped = sum(not v.blocking and v.verdict in unjudged for v in verdicts)
    cases = []
    for v in verdicts:
        body = ""
        cells = dict(zip(headers(metric), _cells(v)))
        # A verdict without a ratio (a count at 0 on a side, a missing configuration) says its note alone.
        figures = (f" {metric} {cells[f'baseline {metric}']} -> {cells[f'candidate {metric}']} (medians), ratio "
                   f"{cells['ratio']} ({cells['change']}), 95% CI {cells['95% CI']};") if v.ratio is not None else ""
        text = f"{v.verdict}:{figures} {v.note}"
        message = xml_escape(text.rstrip("; "), {'"': "&quot;"})
        if v.blocking:
            body = f'<failure message="{message}"/>'
        elif v.verdict in unjudged:
            body = f'<skipped message="{message}"/>'
        cases.append(f'  <testcase classname="lmbench.{xml_escape(metric)}" name="{xml_escape(v.config_key)}">'
                     f"{body}</testcase>")
    said = ("\n  <system-err>" + xml_escape("\n".join(f"warning: {w}" for w in warnings)) + "</system-err>"
            if warnings else "")
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<testsuite name="lmbench compare" tests="{len(verdicts)}" '
            f'failures="{failures}" errors="0" skipped="{skipped}">\n' + "\n".join(cases) + said
            + "\n</testsuite>\n")


def exit_code(verdicts: list[Verdict]) -> int:
    """1 when any verdict blocks: a regression, a candidate that failed, or one that lacks a configuration."""
    return EXIT_REGRESSION if any(v.blocking for v in verdicts) else EXIT_OK

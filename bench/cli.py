"""The `lmbench` command line: thin commands over the library; the only place errors become messages."""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import io
import math
import os
import select
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

import lmbench
from lmbench.analyze.ranking import OBJECTIVES
from lmbench.errors import LmbenchError, StorageError, UsageError
from lmbench.models.registry import MODELS
from lmbench.plan import runplan, tuneplan
from lmbench.plan import suite as suites
from lmbench.plan.runplan import RunPlan
from lmbench.plan.tuneplan import TunePlan
from lmbench.run import runner
from lmbench.run.interrupts import Interrupted, interruptible
from lmbench.run.rundir import nothing_to_resume
from lmbench.tune import CONFIRM_REPEATS

#: tune's option defaults: those of its plan (the resume command leaves defaults out).
_TUNE = {field.name: field.default for field in dataclasses.fields(TunePlan)}
_CONFIRM_REPEATS = CONFIRM_REPEATS
_TUNE_OBJECTIVE = "throughput"
#: calibrate's runs: a configuration's run term rests on runs - 1 degrees of freedom. With 3 (t quantile 4.30) a
#: strict 1-vs-1 gate under pure 1% process noise was not `unchanged` 40% of the time, with 5 (2.78) 20%, the
#: floor's 90th percentile 5.5% against 3.9%, coverage kept (ci/floor-runs.py, docs/gate.md; a reviewer).
_CALIBRATE_RUNS = 5
#: Exit codes of every command (DESIGN.md): 1 is compare's alone, so a crash never reads as a regression.
EXIT_OK, EXIT_REGRESSION, EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
#: The reader of our output went away (`lmbench compare a b | head`): 128 + SIGPIPE, quietly, as `cat`, `grep` and
#: `git log` end there (killed by the signal). Not 1: a closed pipe is no regression. Not 3: it is no bug of ours and
#: leaves nothing worth a crash log. A CI script under `set -o pipefail` already tells 141 from a tool's own codes
#: (`|| [ $? -eq 141 ]`); one that needs compare's verdict must not cut its output short.
EXIT_BROKEN_PIPE = 141


#: Click 8.2's error for a group given no command (8.1 printed the help and exited 0 itself).
_NO_ARGS = getattr(click.exceptions, "NoArgsIsHelpError", None)


def _allowed(err: click.UsageError) -> str:
    """What is allowed, for click's own messages that do not say (a new user's `No such command 'x'.`, `Missing
    option '--suite'.`): the commands, or the shipped suites."""
    message = err.format_message()
    if message.startswith("No such command") and isinstance(err.ctx.command if err.ctx else None, click.Group):
        return f" Available: {', '.join(sorted(err.ctx.command.list_commands(err.ctx)))}."
    if message.startswith("Missing option '--suite'"):
        return f" Shipped suites: {', '.join(suites.builtin_names())} (or a suite file's path)."
    return ""


class _PastClick(BaseException):
    """An error click's `main` would answer itself even with standalone_mode=False, carried past it to ours: it
    exits 1 (a regression's code) on a broken pipe, and turns KeyboardInterrupt (our `Interrupted`, which says which
    signal it was) and EOFError (a bug, lmbench asks for no input) into a bare `Abort`, after a blank line."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


@contextmanager
def _past_click() -> Iterator[None]:
    try:
        yield
    except (KeyboardInterrupt, EOFError, BrokenPipeError) as err:
        raise _PastClick(err) from err


class LmbenchGroup(click.Group):
    """Turns every usage mistake into one line and exit 2, every unexpected error into one line and exit 3
    (the traceback goes to a log file), never a traceback on the terminal."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        with _past_click():  # --help and --version write here
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with _past_click():
            return super().invoke(ctx)

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        _hold_closed_standard_fds()
        _watch_stdout()
        try:
            code = super().main(args, prog_name or "lmbench", complete_var, standalone_mode=False, **extra)
            if sys.stdout is not None:  # None: closed when Python started (`lmbench list >&-`)
                sys.stdout.flush()  # here, not at the interpreter's exit, so that a reader gone by now is answered too
        except _PastClick as carried:
            _stop(carried.error)
        except click.UsageError as err:
            if _NO_ARGS is not None and isinstance(err, _NO_ARGS) and err.ctx is not None:
                try:
                    click.echo(err.ctx.get_help())  # bare `lmbench` asks what there is, as click 8.1 answered it
                    if sys.stdout is not None:
                        sys.stdout.flush()
                except OSError as gone:
                    _stop(gone)
                sys.exit(EXIT_OK)
            where = f" ({err.ctx.command_path})" if err.ctx else ""
            click.echo(f"lmbench: error{where}: {err.format_message()}{_allowed(err)}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except click.ClickException as err:
            click.echo(f"lmbench: error: {err.format_message()}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except UsageError as err:
            click.echo(f"lmbench: error: {err}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except click.Abort as err:
            # What click made of an interrupt or end of input outside the methods above (none is known): its cause.
            _stop(err.__cause__ or KeyboardInterrupt())
        except Exception as err:  # noqa: BLE001 - the one place an unexpected error becomes a message
            _stop(err)
        sys.exit(code if isinstance(code, int) else EXIT_OK)


def _stop(error: BaseException) -> NoReturn:
    """Exit for what no command answered: a signal (128 + its number), a reader of our output gone, or a bug (one
    line, the traceback in a log)."""
    if isinstance(error, KeyboardInterrupt):  # our Interrupted says which signal; a bare one is Ctrl-C's
        stop = error if isinstance(error, Interrupted) else Interrupted(signal.SIGINT)
        _say("lmbench: interrupted" if stop.signum == signal.SIGINT else f"lmbench: stopped by {stop.name}")
        sys.exit(stop.exit_code)
    if isinstance(error, BrokenPipeError):
        gone = _readers_gone()
        if gone:
            _to_devnull(gone)
            sys.exit(EXIT_BROKEN_PIPE)
        # Another pipe broke (a worker's, a socket), not one of ours to the user: a bug like any other.
    elif isinstance(error, OSError) and _stdout_refuses():
        # `lmbench compare a b > /dev/full`, or a full disk under a redirect: the output is lost, which is no bug of
        # ours (exit 3 and a crash log) but the user's file, as a full disk is where lmbench saves.
        _say(f"lmbench: error: cannot write standard output: {error.strerror or error}")
        _to_devnull([1])
        sys.exit(EXIT_BAD_INPUT)
    from lmbench import crash

    log = crash.write(error)
    click.echo(f"lmbench: internal error: {crash.summary(error)} (traceback in {log})", err=True)
    sys.exit(EXIT_INTERNAL)


def _to_devnull(fds: list[int]) -> None:
    """Point `fds` at /dev/null: Python flushes stdout and stderr at exit, and a flush into a pipe nobody reads or a
    full file would print "Exception ignored ..." after our one line."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in fds:
        os.dup2(devnull, fd)
    os.close(devnull)


class _WatchedStdout(io.FileIO):
    """File descriptor 1 under Python's stdout, remembering a write that failed: an OSError reaching `_stop` says
    nothing of which file it was (a full disk under `> out.txt`, /dev/full), and what stdout held is gone by then."""

    failed: OSError | None = None

    def write(self, data: Any) -> int | None:
        try:
            return super().write(data)
        except OSError as err:
            if not isinstance(err, BrokenPipeError):  # a reader gone is `_readers_gone`'s
                _WatchedStdout.failed = err
            raise


def _watch_stdout() -> None:
    """Put `_WatchedStdout` under the process's own stdout (not a test runner's), as Python set it up."""
    stdout = sys.stdout
    layer = getattr(stdout, "buffer", None)
    if stdout is None or stdout is not sys.__stdout__ or not isinstance(layer, (io.BufferedWriter, io.FileIO)):
        return
    try:
        if stdout.fileno() != 1:
            return
        stdout.flush()
    except (OSError, ValueError):
        return
    raw = _WatchedStdout(1, "w", closefd=False)
    # Buffered as Python had it: PYTHONUNBUFFERED (-u) leaves the text layer straight over the file descriptor.
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(raw) if isinstance(layer, io.BufferedWriter) else raw,
                                  encoding=stdout.encoding, errors=stdout.errors,
                                  line_buffering=stdout.line_buffering, write_through=stdout.write_through)


def _stdout_refuses() -> bool:
    """Whether a write of standard output failed (other than a reader gone)."""
    return _WatchedStdout.failed is not None


def _hold_closed_standard_fds() -> None:
    """Hold /dev/null on each of fds 0-2 that is closed (`lmbench list >&-`): the next file lmbench opens would take
    that number, and a worker's or a library's writes to its stdout would land in a results file."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            held = os.open(os.devnull, os.O_RDWR)
            if held != fd:
                os.dup2(held, fd)
                os.close(held)


def _readers_gone() -> list[int]:
    """Which of stdout and stderr lost their reader: the write end of a pipe nobody reads polls as an error."""
    if not hasattr(select, "poll"):
        return [1]  # no way to tell (Windows): the usual case
    poller = select.poll()
    for fd in (1, 2):
        poller.register(fd, select.POLLOUT)
    return [fd for fd, event in poller.poll(0) if event & (select.POLLERR | select.POLLHUP)]


class _Console(Console):
    """rich's console, leaving a closed pipe to `_stop`: rich's own answer is exit 1, a regression's code here (and
    it points devnull at stdout even when it is stderr that broke)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


class NonEmptyPath(click.Path):
    """A path option that refuses '': Path('') is the current directory, so `--out ''` would write there."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value == "":
            self.fail("empty; give a path (an empty one would mean the current directory)", param, ctx)
        if isinstance(value, str) and not value.strip():
            self.fail(f"{value!r} is only whitespace; give a path", param, ctx)
        return super().convert(value, param, ctx)


def _suite_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not value.strip():
        what = "empty" if value == "" else f"{value!r} is only whitespace"
        raise click.BadParameter(f"{what}; give a built-in suite (lmbench list) or the path of a suite file", ctx,
                                 param)
    return value


@click.group(name="lmbench", cls=LmbenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(lmbench.__version__, prog_name="lmbench")
def cli() -> None:
    """Throughput, memory and energy of language-model training, measured honestly."""


@cli.command()
@click.option("--suite", "suite_name", required=True, metavar="NAME|PATH", callback=_suite_name,
              help="A built-in suite (see `lmbench list`) or the path of a suite TOML file.")
@click.option("--out", type=NonEmptyPath(file_okay=False, path_type=Path), default=None,
              help="Run directory (default: runs/SUITE-YYYYmmdd-HHMMSS).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=V[,V...]",
              help="Override an axis; several comma-separated values make it a matrix axis. Repeatable.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
              help="Run every configuration on this device (default: cuda when available).")
@click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True,
              help="Fresh-process repeats of each configuration (the unit of statistics).")
@click.option("--resume", is_flag=True, help="Continue the run in --out, skipping what it already recorded.")
@click.option("--dry-run", is_flag=True, help="Print the expanded matrix and exit.")
@click.option("--nnodes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Nodes taking part in torchrun jobs (ddp, fsdp, tp, pp, fsdp+tp, fsdp+pp; start lmbench with the "
                   "same arguments on each): a job's world is nproc x nnodes.")
@click.option("--node-rank", type=click.IntRange(min=0), default=None,
              help="This node's rank, 0..nnodes-1 (default: $SLURM_NODEID, else 0). Node 0 records results.")
@click.option("--rdzv-endpoint", default=None, metavar="HOST:PORT",
              help="Node 0's address and a free port, for multi-node torchrun.")
@click.option("--parity", is_flag=True,
              help="Check each configuration's loss curve against its fp32/eager reference (added to the plan).")
@click.option("--max-configs", type=click.IntRange(min=1), default=suites.MAX_CONFIGS, show_default=True,
              help="Refuse a matrix with more points than this (counted before it is built).")
@click.option("--profile", is_flag=True,
              help="After each measured window, profile a few more steps (same as --set profile=true).")
@click.option("--objective", type=click.Choice(OBJECTIVES), default=None,
              help="Also print the configurations ranked by this (with --parity, diverged ones rank last).")
def run(suite_name: str, out: Path | None, overrides: tuple[str, ...], device: str | None, repeats: int,
        resume: bool, dry_run: bool, nnodes: int, node_rank: int | None, rdzv_endpoint: str | None,
        parity: bool, max_configs: int, profile: bool, objective: str | None) -> int:
    """Run every configuration of a suite, one fresh process each (torchrun for ddp/fsdp).

    Example: lmbench run --suite convergence --parity --objective time-to-target
    """
    _at_most_max_repeats("--repeats", repeats)
    _one_setting_each(overrides, {"device": ("--device", device), "profile": ("--profile", profile)})
    overrides = (*overrides, "profile=true") if profile else overrides
    plan = RunPlan(suite=suites.as_recorded(suite_name), suite_sha256="", overrides=overrides, device=device,
                   repeats=repeats, parity=parity, nnodes=nnodes)
    return _run_suite(plan, out, resume=resume, dry_run=dry_run, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint,
                      max_configs=max_configs, objective=objective)


def _at_most_max_repeats(option: str, repeats: int) -> None:
    """A typo guard, as --max-configs and the steps axis have: every repeat's jobs are planned before the first runs
    (`--repeats 1000000000000` planned for ever, its memory growing)."""
    if repeats > runplan.MAX_REPEATS:
        raise UsageError(f"{option} {repeats}: more fresh processes of each configuration than lmbench runs; allowed: "
                         f"up to {runplan.MAX_REPEATS:,}")


def _one_setting_each(overrides: tuple[str, ...], own: dict[str, tuple[str, Any]]) -> None:
    """Refuse an axis set both by its own option (given) and by --set: neither may silently win."""
    for item in overrides:
        axis = item.partition("=")[0].strip()
        option, value = own.get(axis, ("", None))
        if value:
            shown = option if value is True else f"{option} {value}"
            raise UsageError(f"{shown} and --set {item!r} both set {axis}; give one of them")


def _refuse_a_run_with_no_record_yet(run_dir: Path) -> None:
    """A run stopped before its first record (run.json there, no results file): say so, and how to go on."""
    from lmbench.analyze.results import RESULTS_FILE
    from lmbench.run.rundir import read_meta

    if (run_dir / RESULTS_FILE).exists():
        return
    try:
        meta = read_meta(run_dir)
        if meta is None:
            return
        resume = RunPlan.from_json(meta["plan"]).resume_command(run_dir) if meta.get("command") == "run" else None
    except (KeyError, LmbenchError):  # run.json unreadable, or with no plan this lmbench can read
        resume = None
    how = f"; if it stopped, continue it with: {resume}" if resume else ""
    raise UsageError(f"{str(run_dir)!r} holds no record yet: no configuration has finished there (the run is still "
                     f"going, or it stopped before its first record){how}")


def _refuse_other_writer(out: Path, command: str) -> None:
    """A directory another command wrote (a tune, a calibration, a run) is not this command's to add to."""
    from lmbench.run.rundir import writer

    found = writer(out)
    if found not in (None, command):
        raise UsageError(f"--out {str(out)!r} already holds results of lmbench {found}, not of lmbench {command}; "
                         "choose another directory")


def _run_suite(plan: RunPlan, out: Path | None, *, resume: bool, dry_run: bool = False, node_rank: int | None = None,
               rdzv_endpoint: str | None = None, max_configs: int = suites.MAX_CONFIGS,
               resume_command: str | None = None, objective: str | None = None) -> int:
    """Everything `lmbench run` does; `calibrate` runs it twice (and says how to resume itself)."""
    import os

    from lmbench.analyze.table import plan_table
    from lmbench.measure.environment import probe_platform, variable_warnings
    from lmbench.run.launcher import Launch

    if node_rank is None and plan.nnodes > 1 and os.environ.get("SLURM_NODEID"):
        slurm = os.environ["SLURM_NODEID"]
        if not slurm.strip().isdigit() or int(slurm) >= plan.nnodes:
            raise UsageError(f"SLURM_NODEID={slurm!r} (this node's rank, as --node-rank is not given): must be an "
                             f"integer in 0..{plan.nnodes - 1} for --nnodes {plan.nnodes}")
        node_rank = int(slurm)
    launch = Launch(nnodes=plan.nnodes, node_rank=node_rank or 0, rdzv_endpoint=rdzv_endpoint)
    node_rank = launch.node_rank
    suite = suites.load(plan.suite).with_overrides(suites.parse_overrides(list(plan.overrides)))
    if plan.device:
        suite = suite.with_overrides(suites.parse_overrides([f"device={plan.device}"]), flag="--device")
    plan = dataclasses.replace(plan, suite_sha256=suite.digest)
    planned = suite.expand(max_configs=max_configs)
    for warning in suite.unused_options(planned):
        click.echo(f"lmbench: warning: {warning}", err=True)
    platform = probe_platform()
    for warning in variable_warnings(cuda=platform.cuda_available and plan.device != "cpu"):
        click.echo(f"lmbench: warning: {warning}", err=True)
    if plan.parity:
        from lmbench.plan.parity import with_references

        planned, notices = with_references(planned, platform, nnodes=plan.nnodes)
        for notice in notices:
            click.echo(notice, err=True)
    if resume and out is None:
        raise UsageError("--resume needs --out RUN_DIR, the run to continue")
    if dry_run and not resume and out is not None:
        from lmbench.run.rundir import holds_results

        refused = holds_results(out)
        if refused:  # what the run would answer: the dry run listed every row as `run`
            raise UsageError(refused)
    if dry_run:
        from lmbench.plan.layout import explain_plan

        jobs = runner.plan(planned, platform, repeats=1, nnodes=plan.nnodes)
        kept = _kept(planned, platform, plan, out, suite) if resume and out is not None else {}
        _console().print(plan_table([(j.config.to_dict(), j.config.key, j.skip) for j in jobs], kept))
        profiled = sum(j.config.profile for j in jobs if not j.skip)
        if profiled:
            # Not in the table: profiling leaves the window, and so config_key, as they are.
            click.echo(f"profiled: {profiled} of {len(jobs)} configurations (torch.profiler steps after the window)")
        for line in explain_plan([j.config for j in jobs if not j.skip], nnodes=plan.nnodes):
            click.echo(line)
        lacking = runner.missing_baselines(jobs, nnodes=plan.nnodes)
        if lacking:
            click.echo(f"lmbench: warning: {lacking}", err=True)
        return 0
    # Nodes other than 0 sharing a file system must not share node 0's directory (and its lock).
    node = f"-node{node_rank}" if node_rank else ""
    out = out or Path("runs") / f"{suite.name}-{dt.datetime.now():%Y%m%d-%H%M%S}{node}"
    extra = ("--node-rank", str(node_rank), *(("--rdzv-endpoint", rdzv_endpoint) if rdzv_endpoint else ())) \
        if plan.nnodes > 1 else ()
    suggest = resume_command is None  # calibrate resumes itself, not with `lmbench run`
    resume_command = resume_command or plan.resume_command(out, extra=extra)
    _refuse_other_writer(out, "run")
    # calibrate resumes its second run as a matter of course: only `lmbench run --resume` is told.
    fresh = nothing_to_resume(out) if resume and suggest else None
    if fresh:
        click.echo(f"lmbench: warning: {fresh}", err=True)
    with interruptible(), runner.RunDirectory(out, resume=resume) as run_dir:
        for notice in run_dir.notices:
            click.echo(f"lmbench: warning: {notice}", err=True)
        opened = len(run_dir.notices)
        recorded = run_dir.recorded()
        for warning in recorded.warnings:
            click.echo(f"lmbench: warning: {warning}", err=True)
        configurations = [job.config for job in runner.plan(planned, platform, repeats=1, nnodes=plan.nnodes)]
        _record_plan(run_dir, plan, suite, resume=resume, recorded=recorded.records, suggest=suggest,
                     configurations=configurations)
        done, skipped = runner.resumed(recorded.records)
        jobs = runner.plan(planned, platform, repeats=plan.repeats, done=done, skipped=skipped, parity=plan.parity,
                           nnodes=plan.nnodes)
        lacking = runner.missing_baselines(jobs, nnodes=plan.nnodes)
        if lacking and not recorded.records:
            click.echo(f"lmbench: warning: {lacking}", err=True)
        if recorded.records:
            click.echo(_resuming(out, recorded.records, jobs, skipped), err=True)
        session: list[dict[str, Any]] = []
        try:
            _execute(jobs, run_dir, suite.name, launch, recorded.records, plan.parity, session)
        except Interrupted as stop:
            what = "interrupted" if stop.signum == signal.SIGINT else f"stopped by {stop.name}"
            running = ("the configuration running when it came had finished and is recorded" if stop.after_a_record
                       else "the configuration that was running has none and runs again on resume")
            kept = (f"{len(session)} record(s) of this session are in {run_dir.results_path}" if session
                    else "this session recorded nothing yet")
            _say(f"lmbench: {what}; {kept}; {running}; continue with: {resume_command}")
            return stop.exit_code
        except StorageError as err:
            raise StorageError(f"{err}; the {len(session)} record(s) of this session are kept; once there is "
                               f"room, continue with: {resume_command}") from None
        for notice in run_dir.notices[opened:]:
            click.echo(f"lmbench: warning: {notice}", err=True)
        # The summary is of this plan: a foreign line (hand-written, or from a run before plans were checked)
        # is no row of it.
        planned_keys = {config.key for config in configurations}
        everything = [r for r in run_dir.recorded().records if r["config_key"] in planned_keys]
    _print_summary(launch, session, everything, run_dir.results_path)
    if objective and launch.records:
        from lmbench.analyze.ranking import ranking_table

        _console().print(ranking_table(everything, objective))
    return 0


def _kept(planned: list[suites.Planned], platform: Any, plan: RunPlan, out: Path, suite: suites.Suite
          ) -> dict[str, str]:
    """What `run --resume --dry-run` would keep: the plan checked as the resume checks it, the same count of records
    kept and jobs to go, and the plan column's text for each configuration with records."""
    from lmbench.analyze import results
    from lmbench.run.rundir import read_meta

    _refuse_other_writer(out, "run")
    fresh = nothing_to_resume(out)
    if fresh:
        click.echo(f"lmbench: warning: {fresh}", err=True)
    recorded = results.read(out) if (out / results.RESULTS_FILE).is_file() else results.Loaded()
    for warning in recorded.warnings:
        click.echo(f"lmbench: warning: {warning}", err=True)
    meta = read_meta(out) if out.is_dir() else None
    configurations = [job.config for job in runner.plan(planned, platform, repeats=1, nnodes=plan.nnodes)]
    if recorded.records or (meta and "plan" in meta):
        warning = runplan.check(meta, plan, out=out, suite_name=suite.name,
                                recorded_suites=(record.get("suite") for record in recorded.records))
        if warning:
            click.echo(f"lmbench: warning: {warning}", err=True)
        runplan.check_corpora(meta, recorded.records, runplan.corpora(configurations), out=out)
    done, skipped = runner.resumed(recorded.records)
    to_go = runner.plan(planned, platform, repeats=plan.repeats, done=done, skipped=skipped, parity=plan.parity,
                        nnodes=plan.nnodes)
    if not fresh:
        click.echo(_resuming(out, recorded.records, to_go, skipped), err=True)
    going = {(job.config.key, job.repeat) for job in to_go}
    held = {(r["config_key"], r["repeat"]) for r in recorded.records} - going
    kept = {}
    for config in configurations:
        have = sum((config.key, repeat) in held for repeat in range(plan.repeats))
        if have == plan.repeats:
            kept[config.key] = "kept"
        elif have:
            kept[config.key] = f"run ({have} of {plan.repeats} repeats kept)"
    return kept


def _resuming(out: Path, records: list[dict[str, Any]], jobs: list[runner.Job],
              skipped: dict[tuple[str, int], str | None]) -> str:
    """What a resume keeps and runs: a skip judged again is a job, and its old record no longer counts as kept."""
    again = sum((job.config.key, job.repeat) in skipped for job in jobs)
    return (f"resuming {out}: {len(records) - again} record(s) kept, {len(jobs)} job(s) to go"
            + (f" ({again} of them skipped before, judged again on this machine)" if again else ""))


def _record_plan(run_dir: runner.RunDirectory, plan: RunPlan, suite: suites.Suite, *, resume: bool,
                 recorded: list[dict[str, Any]], suggest: bool, configurations: list[Any]) -> None:
    """Check a resumed run's plan and corpora against run.json (refusing another), then write run.json, with the
    planned configurations (a report names those a stopped run has no record of: lmbench.analyze.coverage) and
    the sha256 of each corpus they read."""
    from lmbench.analyze.coverage import planned_entry

    meta = run_dir.meta()
    corpora = runplan.corpora(configurations)
    listed = meta.get("planned") if meta and isinstance(meta.get("planned"), list) else []
    current = [planned_entry(config.key, config.to_dict()) for config in configurations]
    # A resume on another host may resolve a configuration otherwise (tp_degree=auto, nproc): an earlier key stays
    # planned only while it has records, or a report would ask a resume that can no longer run it for the rest.
    keep = {entry["config_key"] for entry in current} | {record["config_key"] for record in recorded}
    planned = list({entry["config_key"]: entry for entry in [
        *(e for e in listed if isinstance(e, dict) and e.get("config_key") in keep), *current]}.values())
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    if resume and (recorded or (meta and "plan" in meta)):
        warning = runplan.check(meta, plan, out=run_dir.path, suggest=suggest, suite_name=suite.name,
                                recorded_suites=(record.get("suite") for record in recorded))
        if warning:
            click.echo(f"lmbench: warning: {warning}", err=True)
        runplan.check_corpora(meta, recorded, corpora, out=run_dir.path)
        if meta and "plan" in meta:
            earlier = meta.get("resumed") if isinstance(meta.get("resumed"), list) else []
            # A resume with more repeats extends the plan: the next resume continues that.
            repeats = max(plan.repeats, RunPlan.from_json(meta["plan"]).repeats)
            kept = meta.get("corpora") if isinstance(meta.get("corpora"), dict) else {}
            run_dir.write_meta({**meta, "plan": {**meta["plan"], "repeats": repeats}, "repeats": repeats,
                                "resumed": [*earlier, now], "planned": planned, "corpora": {**kept, **corpora}})
            return
    run_dir.write_meta({"command": "run", "suite": suite.name, "source": suite.source, "plan": plan.to_json(),
                        "overrides": list(plan.overrides), "repeats": plan.repeats, "parity": plan.parity,
                        "lmbench": lmbench.__version__, "argv": sys.argv, "started": now, "planned": planned,
                        "corpora": corpora})


def _execute(jobs: list[runner.Job], run_dir: runner.RunDirectory, suite: str, launch: Any,
             previous: list[dict[str, Any]], parity: bool, session: list[dict[str, Any]]) -> None:
    """Run the jobs under a progress bar; each record lands in `session` as it is saved."""
    err_console = _console(stderr=True)
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[figure]}")]
    stopped: Interrupted | None = None
    try:
        with Progress(*columns, console=err_console, transient=False) as progress:
            task = progress.add_task(suite, total=len(jobs), figure="")
            try:
                records = runner.execute(jobs, run_dir, suite=suite, launch=launch, previous=previous, parity=parity)
                _follow(progress, task, records, session)
            except Interrupted as stop:
                stopped = stop
    except OSError:
        # After SIGHUP the terminal is gone: closing the progress bar fails, the stop goes on.
        if stopped is None:
            raise
    if stopped is not None:
        raise stopped


def _follow(progress: Progress, task: Any, records: Any, session: list[dict[str, Any]]) -> None:
    import re

    # Each kind of warning once (a kind: its text with the figures taken out), then how many more there were: a
    # suite where every configuration ran contended prints one line, and one with a contended and a throttled
    # configuration prints both. Every record keeps its own warnings.
    seen: dict[str, int] = {}
    for job, record in records:
        session.append(record)
        for warning in record["warnings"] or []:
            kind = re.sub(r"[\d.,]+", "#", warning)
            if kind not in seen:
                progress.console.print(f"[yellow]warning: {job.name}: {escape(warning)}")
            seen[kind] = seen.get(kind, 0) + 1
        figure = record["status"]
        if record["status"] == "ok":
            figure = f"{record['metrics']['tokens_per_s']:,.0f} tok/s  {job.config.key}"
        progress.update(task, advance=1, figure=figure)
    more = sum(seen.values()) - len(seen)
    if more:
        progress.console.print(f"[yellow]warning: {more} more like the above, in other configurations' records "
                               "(the summary's notes, the report)")


def _print_summary(launch: Any, session: list[dict[str, Any]], everything: list[dict[str, Any]],
                   results_path: Path) -> None:
    from lmbench.analyze import results
    from lmbench.analyze.table import summary

    console = _console()
    if not launch.records:
        console.print(f"node {launch.node_rank} of {launch.nnodes}: took part in {len(session)} distributed job(s); "
                      "node 0 records the results")
        return
    console.print(summary([{**r, "config": results.full_config(r["config"])} for r in everything]))
    mixed = results.mixed_corpora(everything)
    if mixed:
        click.echo(f"lmbench: warning: {mixed}", err=True)
    console.print(f"results: {results_path}")
    # Where a failure's reason ends, its log goes on (its traceback, a rank's stacks, torchrun's summary).
    failed = [r for r in session if r["status"] not in ("ok", "skipped")]
    if failed:
        first = failed[0]
        console.print(f"logs: {results_path.parent / 'logs'} ({len(failed)} of this session's records failed; "
                      f"{first['config_key']}-r{first['repeat']}.log is the first's)")


def _say(message: str) -> None:
    """A last message on stderr that must not fail the exit: after SIGHUP the terminal may be gone."""
    try:
        click.echo(message, err=True)
    except OSError:
        pass


@cli.command(name="list")
@click.option("--defaults", is_flag=True, help="Also list every axis's default value and why it is the default.")
def list_(defaults: bool) -> int:
    """List the built-in suites (with matrix sizes) and the models.

    Example: lmbench list --defaults
    """
    from rich.table import Table

    console = _console()
    if defaults:
        from lmbench.plan.config import DEFAULT_REASONS, Config

        table = Table(title="defaults (every axis a suite or --set does not give)", title_justify="left")
        for column in ("axis", "default", "why"):
            table.add_column(column)
        for axis, reason in DEFAULT_REASONS.items():
            table.add_row(axis, escape(str(getattr(Config(), axis))), escape(reason))
        console.print(table)
    table = Table(title="suites", title_justify="left")
    for column in ("suite", "configs", "description"):
        table.add_column(column)
    for name in suites.builtin_names():
        suite = suites.load(name)
        # Rows differing only in another mode's options (pp_schedule of a tp row) are one configuration.
        distinct = {row.config.without_foreign_options().key for row in suite.expand()}
        table.add_row(name, str(len(distinct)), escape(suite.description))
    console.print(table)
    models = Table(title="models", title_justify="left")
    for column in ("model", "layers", "hidden", "heads", "vocab", "positions", "description"):
        models.add_column(column)
    for spec in MODELS.values():
        models.add_row(spec.name, str(spec.n_layers), str(spec.hidden), str(spec.n_heads), str(spec.vocab_size),
                       str(spec.max_positions), spec.description)
    console.print(models)
    return 0


@cli.command()
def env() -> int:
    """Describe this machine: GPUs, driver, CUDA, library versions, optional back-ends.

    Example: lmbench env
    """
    from lmbench.measure.environment import describe

    rows = describe()
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")
    return 0


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=NonEmptyPath(path_type=Path))
@click.option("--out", type=NonEmptyPath(file_okay=False, path_type=Path), default=None,
              help="Where to write the report (default: RUN_DIR/report; required for several runs).")
@click.option("--baseline", default=None, metavar="KEY=VALUE",
              help="Speedups against the configuration with this axis value, e.g. precision=fp32.")
@click.option("--ceilings", "ceilings_path", type=NonEmptyPath(dir_okay=False, path_type=Path), default=None,
              help="This GPU's measured ceilings (`lmbench ceilings --out FILE`): adds the distance to the roofline.")
@click.option("--objective", type=click.Choice(OBJECTIVES), default="time-to-target", show_default=True,
              help="How the time-to-target table ranks configurations that evaluated held-out loss.")
def report(run_dirs: tuple[Path, ...], out: Path | None, baseline: str | None, ceilings_path: Path | None,
           objective: str) -> int:
    """Write report.md, results.csv, report.html (plots embedded) and plots/ for run directories.

    Example: lmbench report runs/fp16-20260101-120000 --baseline precision=fp32 --ceilings ceilings.json
    """
    from lmbench.analyze import baseline as baselines
    from lmbench.analyze import frame, results
    from lmbench.analyze import report as reports
    from lmbench.measure.ceilings import load as load_ceilings

    parsed = baselines.parse(baseline)
    ceilings = load_ceilings(ceilings_path) if ceilings_path else None
    for run_dir in run_dirs:
        if run_dir.exists() and not run_dir.is_dir():
            raise UsageError(f"run directory {str(run_dir)!r} is a file, not a run directory")
        _refuse_a_run_with_no_record_yet(run_dir)
    distinct, _ = frame.distinct(list(run_dirs))
    if out is None and len(distinct) > 1:
        raise UsageError("a report of several runs needs --out DIR (where to write the combined report)")
    df, records, warnings = frame.load(list(run_dirs))
    # Planned repeats with no record are rows too: a run stopped short must not read as complete.
    df, records, unread = frame.with_unrecorded(df, records, distinct)
    warnings += unread
    from lmbench.analyze.table import configs_of

    # With its run as an axis when there are several: their directories are never paired with each other.
    baselines.check(parsed, configs_of(records))
    failed_baseline = baselines.failed_only(parsed, records)
    for warning in warnings + ([failed_baseline] if failed_baseline else []):
        click.echo(f"lmbench: warning: {warning}", err=True)
    results.writable_dir(out or distinct[0] / "report", what="--out" if out else "the report directory")
    out = out or distinct[0] / "report"
    with results.saving(out):
        paths = reports.build(df, records, out, baseline=parsed, runs=[str(d) for d in distinct], ceilings=ceilings,
                              objective=objective, notices=warnings)
    for name, path in paths.items():
        click.echo(f"{name}: {path}")
    return 0


@cli.command()
@click.argument("base", type=NonEmptyPath(path_type=Path))
@click.argument("cand", type=NonEmptyPath(path_type=Path))
@click.option("--threshold", default="5%", show_default=True, help="Smallest change that counts, e.g. 5% or 0.05.")
@click.option("--metric", default="tokens_per_s", show_default=True, help="Metric of the results records to compare.")
@click.option("--format", "fmt", type=click.Choice(["text", "md", "json"]), default="text", show_default=True,
              help="The verdict table as text, Markdown (a pull-request comment) or JSON (with `blocking`).")
@click.option("--junit", type=NonEmptyPath(dir_okay=False, path_type=Path), default=None,
              help="Also write a JUnit XML file (one test case per configuration).")
@click.option("--allow-different-hardware", is_flag=True, help="Compare runs from different GPU models anyway.")
@click.option("--noise-floor", "noise_floor", type=NonEmptyPath(dir_okay=False, path_type=Path), default=None,
              help="Between-process and between-run noise from `lmbench calibrate` (its noise-floor.json): verdicts "
                   "with fewer than 3 repeats a side.")
@click.option("--allow-missing", is_flag=True,
              help="A configuration the candidate run lacks (a suite that dropped it) does not fail the gate.")
@click.option("--strict", is_flag=True,
              help="An inconclusive verdict fails the gate too (exit 1): a noisy runner cannot pass by saying nothing.")
def compare(base: Path, cand: Path, threshold: str, metric: str, fmt: str, junit: Path | None,
            allow_different_hardware: bool, noise_floor: Path | None, allow_missing: bool, strict: bool) -> int:
    """Compare a candidate run with a baseline run: verdict per configuration; exit 1 on a regression,
    on a configuration the candidate failed (oom, error, diverged, timeout) or lacks.

    A regression or improvement needs at least 3 ok repeats a side, or --noise-floor; otherwise the
    verdict is inconclusive (exit 0, or 1 with --strict).

    Example: lmbench compare runs/main runs/pr --threshold 5% --format md
    """
    from lmbench.analyze import gate, noise
    from lmbench.analyze.compare import compare as compare_runs
    from lmbench.analyze.compare import parse_threshold

    limit = parse_threshold(threshold)
    floor = noise.load(noise_floor) if noise_floor else None
    for run_dir in (base, cand):  # as report says it: 'no results file' told a user nothing of an interrupted run
        if run_dir.is_dir():
            _refuse_a_run_with_no_record_yet(run_dir)
    b, c, warnings = gate.load_pair(base, cand, metric=metric, allow_different_hardware=allow_different_hardware,
                                    noise=floor)
    for warning in warnings:
        click.echo(f"lmbench: warning: {warning}", err=True)
    verdicts = compare_runs(b, c, metric=metric, threshold=limit, noise=floor.rekeyed(b + c) if floor else None,
                            allow_missing=allow_missing, strict=strict)
    if junit is not None:
        gate.write_junit(junit, verdicts, metric=metric, warnings=warnings)
    click.echo(gate.render(verdicts, fmt=fmt, metric=metric, threshold=limit, warnings=warnings))
    return gate.exit_code(verdicts)


@cli.command()
@click.option("--suite", "suite_name", required=True, metavar="NAME|PATH", callback=_suite_name,
              help="The suite whose noise to measure: a built-in one or a suite TOML file.")
@click.option("--repeats", type=click.IntRange(min=2), default=3, show_default=True,
              help="Fresh-process repeats of each configuration in each run.")
@click.option("--runs", type=click.IntRange(min=2, max=26), default=_CALIBRATE_RUNS, show_default=True,
              help="Runs of the suite, one after another: the spread of their means is how far two runs can differ "
                   "(more runs pin it down better; 2 leave it one degree of freedom).")
@click.option("--out", type=NonEmptyPath(file_okay=False, path_type=Path), default=None,
              help="Directory for the runs (a, b, ...) and noise-floor.json (default: "
                   "runs/calibrate-SUITE-YYYYmmdd-HHMMSS).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=V[,V...]",
              help="Override an axis, as `run --set` does (the gate's runs must use the same ones).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
              help="Run every configuration on this device (default: cuda when available).")
@click.option("--metric", default="tokens_per_s", show_default=True, help="Metric whose noise to measure.")
@click.option("--resume", is_flag=True, help="Finish the calibration in --out, keeping the repeats it recorded.")
def calibrate(suite_name: str, repeats: int, runs: int, out: Path | None, overrides: tuple[str, ...],
              device: str | None, metric: str, resume: bool) -> int:
    """Run a suite --runs times, each configuration in fresh processes: its noise floor, between processes and
    between runs.

    Writes OUT/noise-floor.json for `lmbench compare --noise-floor`.

    Example: lmbench calibrate --suite ci --repeats 3
    """
    import shlex
    import string

    from lmbench.analyze import gate, noise, results
    from lmbench.analyze.compare import higher_is_better
    from lmbench.analyze.table import noise_floor_table

    _at_most_max_repeats("--repeats", repeats)
    _one_setting_each(overrides, {"device": ("--device", device)})
    # compare's check, before hours of runs: a floor of a metric no gate can judge (a typo, a count) is no floor.
    higher_is_better(metric)
    if resume and out is None:
        raise UsageError("--resume needs --out DIR, the calibration to finish")
    out = out or Path("runs") / f"calibrate-{Path(suite_name).stem}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    _refuse_other_writer(out, "calibrate")
    names = [string.ascii_lowercase[i] for i in range(runs)]
    measured = [name for name in string.ascii_lowercase if (out / name / results.RESULTS_FILE).exists()]
    if resume and len(measured) > runs:
        # A floor from fewer runs than were measured would drop one silently.
        raise UsageError(f"--runs {runs}: the calibration in {str(out)!r} holds {len(measured)} runs "
                         f"({', '.join(measured)}); resume with --runs {len(measured)} or more")
    if not resume and measured:
        raise UsageError(f"--out {str(out)!r} already holds a calibration; pass --resume to finish it, or choose "
                         "another directory")
    args = ["lmbench", "calibrate", "--suite", suite_name, "--repeats", str(repeats), "--out", str(out)]
    args += ["--runs", str(runs)] if runs != _CALIBRATE_RUNS else []
    args += [a for item in overrides for a in ("--set", item)] + (["--device", device] if device else [])
    args += ["--metric", metric] if metric != "tokens_per_s" else []
    plan = RunPlan(suite=suites.as_recorded(suite_name), suite_sha256="", overrides=overrides, device=device,
                   repeats=repeats)
    ok_so_far: list[dict[str, Any]] = []
    for done, name in enumerate(names, start=1):
        code = _run_suite(plan, out / name, resume=resume, resume_command=shlex.join([*args, "--resume"]))
        if code:
            return code
        ok_so_far += [r for r in results.read(out / name).records if r["status"] == "ok"]
        try:
            # As soon as a run has measured something: a metric its records lack (a typo with a direction,
            # `token_per_s`) or leave null (mfu on a CPU) would give an empty floor after every other run.
            if ok_so_far:
                gate.check_metric(metric, ok_so_far, runs=f"the {done} run(s) so far")
        except UsageError as err:
            left = f"the other {runs - done} run(s) were not started; " if done < runs else ""
            raise UsageError(f"{err}; {left}the runs measured are kept: finish the calibration with --resume and "
                             "another --metric") from None
    records = [results.read(out / name).records for name in names]
    planned = (results.read_meta(out / names[0]) or {}).get("plan") or {}
    estimates, payload = noise.calibrate(records, metric=metric, repeats_per_run=repeats,
                                         suite_sha256=planned.get("suite_sha256"))
    if not payload["configs"]:
        # A file with no configuration gates nothing: compare would warn and judge on the repeats alone.
        from collections import Counter

        statuses = ", ".join(f"{n} {status}" for status, n in Counter(r["status"] for run in records
                                                                       for r in run).items()) or "none"
        raise UsageError(f"no configuration of {suite_name} has a noise floor of {metric}: one needs 2 or more ok "
                         f"repeats with a positive {metric} (the runs' records: {statuses}); no noise-floor.json "
                         "was written")
    with results.saving(out / "noise-floor.json"):
        noise.write(out / "noise-floor.json", payload)
    table = noise_floor_table(estimates, records, metric=metric,
                              title=f"noise floor of {suite_name} ({runs} runs of {repeats} repeats, {metric})",
                              notes={key: entry.get("note", "") for key, entry in payload["configs"].items()})
    _console().print(table)
    click.echo(f"noise floor: {out / 'noise-floor.json'} (lmbench compare --noise-floor)")
    busy = [key for key, entry in payload["configs"].items() if entry.get("contended")]
    if busy:
        click.echo(f"lmbench: warning: {len(busy)} of {len(payload['configs'])} floor(s) rest on repeats that ran "
                   "while other processes kept the host's cores busy: they measure the host's load as much as the "
                   "configuration; calibrate again on a quiet host", err=True)
    ungated = [key for key, entry in payload["configs"].items()
               if min(entry["floor_1v1"], entry[f"floor_{noise.MIN_REPEATS}v{noise.MIN_REPEATS}"]) >= 1]
    if ungated:
        click.echo(f"lmbench: warning: {len(ungated)} configuration(s) have floors of 100% or more (e.g. "
                   f"{ungated[0]}): no --threshold (below 100%) can gate them; calibrate on a quieter host, or with "
                   "more --runs", err=True)
    if estimates:
        # At the floor itself an unchanged configuration comes out unchanged 1 gate in 10 or fewer: its ratio strays
        # from 1 as far as the interval around it reaches (noise.ConfigNoise.gate_threshold).
        gated = [max(e.gate_threshold(n) for e in estimates.values()) for n in (1, noise.MIN_REPEATS)]
        if min(gated) >= 1:
            # compare takes thresholds below 100% only: advice past it is none (a new user was refused 300%).
            click.echo(f"no --threshold that compare takes (below 100%) gates this suite: about twice the floor, "
                       f"(1 + floor)² - 1, would be {_percent_or_more(gated[1])} even with {noise.MIN_REPEATS} repeats "
                       "a side; the runs differ too much for their windows: lengthen them (--set steps=...), or "
                       "calibrate on a quieter host")
        elif max(gated) < 0.0005:
            # A floor of 0 (every repeat of every run measured alike) advised "--threshold 0.0%", which compare
            # refuses: every threshold it takes is above this floor.
            click.echo(f"the runs measured {metric} alike every time (a floor of 0): any --threshold compare takes "
                       "(above 0%) gates this suite; choose the smallest change that matters to you")
        else:
            shown = [_percent_or_more(t) for t in gated]
            click.echo(f"gate with --threshold at about twice the floor for the repeats you run, (1 + floor)² - 1, "
                       f"where 95% of unchanged configurations come out unchanged (at the floor itself 10% or fewer): "
                       f"for this suite {shown[0]} with 1 repeat a side, {shown[1]} or more with {noise.MIN_REPEATS} "
                       "(there the repeats' own spread counts too)" + (
                           "; past 100% compare takes no threshold" if max(gated) >= 1 else ""))
    return 0


def _percent_or_more(fraction: float) -> str:
    if fraction < 0.0005:  # not "0.0%", a threshold compare refuses
        return "under 0.05%"
    return f"{fraction:.1%}" if fraction <= 10 else ">1000%"


@cli.command()
@click.option("--model", required=True, help="Model to tune (see `lmbench list`).")
@click.option("--seq-len", type=click.IntRange(min=1), default=None,
              help="Tokens per sequence (default: 1024, or the model's positions when it has fewer).")
@click.option("--precision", "precisions", default=_TUNE["precision"], show_default=True, help="Comma-separated list.")
@click.option("--kernels", "kernel_sets", default=_TUNE["kernels"], show_default=True, help="Comma-separated list.")
@click.option("--checkpointing", "checkpointings", default=_TUNE["checkpointing"], show_default=True,
              help="Comma-separated list.")
@click.option("--budget-minutes", type=click.FloatRange(min=0, min_open=True), default=None,
              help="End within this long: start no probe or measurement that the longest of its kind so far "
              "would carry past it.")
@click.option("--max-memory", default=None, help="Memory cap, e.g. 70GiB (a GPU's allocator; on a CPU, growth "
              "of the resident set during training, and required there).")
@click.option("--global-batch", type=click.IntRange(min=1), default=None,
              help="Keep batch x grad_accum near this many sequences, for comparable optimisation.")
@click.option("--margin", type=click.FloatRange(min=0, max=1, max_open=True), default=_TUNE["margin"],
              show_default=True,
              help="Back off this fraction from the largest fit when a larger batch did not fit, in [0, 1).")
@click.option("--min-batch", type=click.IntRange(min=1), default=_TUNE["min_batch"], show_default=True,
              help="The batch size the doubling starts from (each probe is a fresh process: a compiled model's probe "
                   "costs its compilation, so start near where the answer is).")
@click.option("--max-batch", type=click.IntRange(min=1), default=_TUNE["max_batch"], show_default=True,
              help="The largest batch size the search tries.")
@click.option("--steps", type=click.IntRange(min=1), default=_TUNE["steps"], show_default=True,
              help="Measured steps per size.")
@click.option("--warmup", type=click.IntRange(min=0), default=_TUNE["warmup"], show_default=True,
              help="Unmeasured steps before each measurement's window (compilation, autotuning).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
              help="Probe and measure on this device (default: cuda when available).")
@click.option("--out", type=NonEmptyPath(file_okay=False, path_type=Path), default=None,
              help="Run directory for probes, measurements and the winner (default: runs/tune-MODEL-YYYYmmdd-HHMMSS).")
@click.option("--resume", is_flag=True,
              help="Continue the tune in --out with the options it started with; probes already made are reused.")
@click.option("--parity", "check_parity", is_flag=True,
              help="Check every combination's loss against its reference (FP8 ones always are); one that drifts "
                   "never wins.")
@click.option("--timeout-s", type=click.FloatRange(min=1), default=None,
              help="Wall-clock limit of each probe's and measurement's worker (default: the timeout_s axis's).")
@click.option("--objective", type=click.Choice(OBJECTIVES), default=_TUNE_OBJECTIVE, show_default=True,
              help="Rank by tokens/s, or by time to a held-out target (needs --set target_loss=..., max_steps, "
                   "eval_every_tokens and a learnable data=).")
@click.option("--confirm-repeats", type=click.IntRange(min=1), default=_CONFIRM_REPEATS, show_default=True,
              help="Fresh-process repeats of the two best configurations, to tell the winner's lead from noise "
                   "(1: none).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=V",
              help="Any other axis of the measured configurations (probes keep only what shapes memory). Repeatable.")
def tune(model: str, seq_len: int | None, precisions: str, kernel_sets: str, checkpointings: str,
         budget_minutes: float | None, max_memory: str | None, global_batch: int | None, margin: float,
         min_batch: int, max_batch: int, steps: int, warmup: int, device: str | None, out: Path | None,
         resume: bool, check_parity: bool, timeout_s: float | None, objective: str, confirm_repeats: int,
         overrides: tuple[str, ...]) -> int:
    """Find the largest batch that fits and the fastest configuration for a model.

    Example: lmbench tune --model llama-1b --precision amp-bf16,bf16 --checkpointing none,full
    """
    from lmbench import tune as tuning
    from lmbench.measure.environment import probe_platform
    from lmbench.plan.config import DEFAULTS, KERNEL_AXES, Config
    from lmbench.plan.feasibility import resolve

    # Options that are wrong on their own first, then what depends on the model.
    _at_most_max_repeats("--confirm-repeats", confirm_repeats)
    for option, number in (("--budget-minutes", budget_minutes), ("--margin", margin)):
        if number is not None and not math.isfinite(number):
            raise UsageError(f"{option} {number}: must be a finite number")
    values = {"model": model, "max_memory_bytes": tuneplan.parse_size(max_memory) if max_memory
              else 0, **({"device": device} if device else {}), **({"timeout_s": timeout_s} if timeout_s else {})}
    values.update(tuning.parse_set(overrides))
    axes = {"precision": precisions, "kernels": kernel_sets, "checkpointing": checkpointings}
    lists = {axis: suites.parse_values(axis, raw, where=f"--{axis} {raw!r}") for axis, raw in axes.items()}
    try:
        base = resolve(Config.from_mapping(values), probe_platform())
    except LmbenchError as err:
        raise UsageError(str(err)) from None
    # Resolving the base (kernels=eager) held a kernel set's options at their defaults; the combinations of --kernels
    # each take theirs back (Tuner.config).
    base = base.replace(**{axis: values[axis] for axis in KERNEL_AXES if axis in values})
    for axis, sets in KERNEL_AXES.items():
        if axis in values and values[axis] != DEFAULTS[axis] and not set(lists["kernels"]) & sets:
            click.echo(f"lmbench: warning: --set {axis}={values[axis]} applies to kernels={'/'.join(sorted(sets))} "
                       "only, which --kernels does not list: it changes nothing", err=True)
    positions = MODELS[model].max_positions
    if seq_len is not None and seq_len > positions:
        raise UsageError(f"--seq-len {seq_len}: more than the {positions} positions of model {model}; allowed: "
                         f"1..{positions}")
    seq_len = seq_len or min(tuning.DEFAULT_SEQ_LEN, positions)
    base = base.replace(seq_len=seq_len)
    if base.replace(steps=steps, warmup=warmup).conflict():
        raise UsageError(base.replace(steps=steps, warmup=warmup).conflict())
    if objective == "time-to-target" and not base.has_target:
        raise UsageError("--objective time-to-target needs a target: --set target_loss=NATS (or target_ppl), "
                         "--set max_steps=N, --set eval_every_tokens=N and a learnable --set data=markov|PATH")
    if objective == "time-to-target" and base.eval_every:
        click.echo("lmbench: warning: --set eval_every counts optimizer steps, and tune measures several batch sizes: "
                   "the larger ones evaluate at coarser token counts and learn of the target later; --set "
                   "eval_every_tokens=N evaluates them all at the same token counts", err=True)
    if resume and out is None:
        raise UsageError("--resume needs --out RUN_DIR, the tune to continue")
    if min_batch > max_batch:
        raise UsageError(f"--min-batch {min_batch}: more than --max-batch {max_batch}; allowed: 1..{max_batch}")
    if base.device == "cpu" and not max_memory and not resume:  # a resume is held to its plan, which says
        # A CPU has no device memory to run out of: without a cap the edge tune searches is the host's RAM, which
        # the kernel's out-of-memory killer finds (a review's tune on this 23 GiB host probed up to batch 4096).
        raise UsageError("tune on a CPU needs --max-memory SIZE (e.g. 60MiB, 2GiB): the cap on training's host memory "
                         "growth is the memory edge it searches; without one the edge is the host's RAM")
    out = out or Path("runs") / f"tune-{model}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    plan = TunePlan(model=model, seq_len=seq_len, precision=precisions, kernels=kernel_sets,
                    checkpointing=checkpointings, max_memory=max_memory, global_batch=global_batch, margin=margin,
                    min_batch=min_batch, max_batch=max_batch, steps=steps, warmup=warmup, device=device,
                    parity=check_parity, timeout_s=timeout_s, overrides=overrides)
    # Outside the plan, but the user's choice: the command that resumes keeps them.
    extra = (*(("--budget-minutes", f"{budget_minutes:g}") if budget_minutes else ()),
             *(("--objective", objective) if objective != _TUNE_OBJECTIVE else ()),
             *(("--confirm-repeats", str(confirm_repeats)) if confirm_repeats != _CONFIRM_REPEATS else ()))
    _refuse_other_writer(out, "tune")
    fresh = nothing_to_resume(out) if resume else None
    if fresh:
        click.echo(f"lmbench: warning: {fresh}", err=True)
    with interruptible(), runner.RunDirectory(out, resume=resume) as run_dir:
        _record_tune_plan(run_dir, plan, resume=resume, extra=extra)
        command = plan.resume_command(out, extra=extra)
        found: list[Any] = []
        try:
            _tune(base, run_dir, lists, plan, found, budget_minutes=budget_minutes, confirm_repeats=confirm_repeats,
                  objective=objective)
        except Interrupted as stop:
            what = "interrupted" if stop.signum == signal.SIGINT else f"stopped by {stop.name}"
            # What was found so far, said to be partial: a tune cut by an outer timeout still names its best.
            try:
                _tune_outcome(run_dir, found, plan, objective, cut=what)
            except StorageError as err:  # no room for tuned.toml: the stop and how to go on are said all the same
                _say(f"lmbench: warning: {err}")
            except OSError:  # the terminal went with the signal (SIGHUP)
                pass
            except Exception as err:  # noqa: BLE001 - the stop and how to go on must be said whatever failed here
                _say(f"lmbench: warning: what the tune found could not be shown ({type(err).__name__}: {err})")
            _say(f"lmbench: {what}; the probes and measurements made so far are kept in {out}; the one that was "
                 f"running has none and runs again on resume; continue with: {command}")
            return stop.exit_code
        except StorageError as err:
            raise StorageError(f"{err}; the probes and measurements made so far are kept; once there is room, "
                               f"continue with: {command}") from None
    return 0


def _record_tune_plan(run_dir: runner.RunDirectory, plan: TunePlan, *, resume: bool, extra: tuple[str, ...]) -> None:
    """Check a resumed tune's plan against run.json (refusing another), then write run.json."""
    from lmbench.analyze.results import RESULTS_FILE
    from lmbench.run.rundir import PARITY_FILE, PROBES_FILE

    started = any((run_dir.path / name).is_file() and (run_dir.path / name).stat().st_size
                  for name in (PROBES_FILE, PARITY_FILE, RESULTS_FILE))
    if started and not resume:
        raise UsageError(f"--out {str(run_dir.path)!r} already holds a tune; pass --resume to continue it, or choose "
                         "another directory")
    meta = run_dir.meta()
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    if resume and meta and "plan" in meta:
        tuneplan.check(meta, plan, out=run_dir.path, extra=extra)
        earlier = meta.get("resumed") if isinstance(meta.get("resumed"), list) else []
        run_dir.write_meta({**meta, "resumed": [*earlier, now]})
        return
    if resume and started:
        click.echo(f"lmbench: warning: {run_dir.path}: run.json records no plan (an older lmbench); resuming "
                   "unchecked", err=True)
    run_dir.write_meta({"command": "tune", "plan": plan.to_json(), "lmbench": lmbench.__version__, "argv": sys.argv,
                        "started": now})


def _tune(base: Any, run_dir: runner.RunDirectory, lists: dict[str, list[Any]], plan: TunePlan, found: list[Any], *,
          budget_minutes: float | None, objective: str, confirm_repeats: int) -> None:
    """The search and measurements of `lmbench tune` in a locked run directory (each combination's result into
    `found` as it ends), then its tables and winner."""
    from lmbench import tune as tuning
    from lmbench.measure.environment import probe_platform, variable_warnings
    from lmbench.plan.feasibility import skip_reason

    err_console = _console(stderr=True)
    platform = probe_platform()
    for warning in variable_warnings(cuda=platform.cuda_available and base.device != "cpu"):
        click.echo(f"lmbench: warning: {warning}", err=True)
    tuner = tuning.Tuner(base, run_dir, launch=runner.run_worker, budget_s=budget_minutes * 60 if budget_minutes
                         else None, margin=plan.margin, min_batch=plan.min_batch, max_batch=plan.max_batch,
                         global_batch=plan.global_batch, check_parity=plan.parity,
                         on_event=lambda message: err_console.print(escape(message)),
                         skip=lambda config: skip_reason(config, platform), measured_steps=plan.steps + plan.warmup)
    for warning in run_dir.notices + tuner.warnings:
        click.echo(f"lmbench: warning: {warning}", err=True)
    for combo in tuning.combos(lists["precision"], lists["kernels"], lists["checkpointing"]):
        # With the measurements' own steps and warmup: a CUDA graph's capture must stay out of their windows.
        reason = skip_reason(tuner.config(combo, steps=plan.steps, warmup=plan.warmup), platform)
        if reason:
            found.append(tuner.result(combo, note=f"skipped: {reason}", skipped=True))
            continue
        result = tuner.search(combo)
        if result.chosen:
            tuner.measure(result, plan.steps, plan.warmup, part="chosen")
        found.append(result)
    # Every combination's chosen size first, then the sizes below them: a tight budget spends itself on the likelier.
    for result in found:
        if result.chosen and not result.skipped:
            tuner.measure(result, plan.steps, plan.warmup, part="below")
    tuner.confirm(objective, confirm_repeats)
    # A budget that ran out left combinations unsearched or sizes unmeasured: its winner is partial, as a signal's.
    cut = "--budget-minutes ran out" if tuner.budget_ran_out else None
    if not _tune_outcome(run_dir, found, plan, objective, cut=cut, budget_ran_out=tuner.budget_ran_out) \
            and not tuner.budget_ran_out:
        # Nothing to recommend is no success: a script or CI step must tell it from a tuned winner. (A tune whose
        # --budget-minutes ran out has no winner yet, and a resume goes on.)
        from lmbench import tune as tuning

        raise UsageError(f"tune found no winner ({tuning.no_winner_reason(run_dir, objective)}); its tables above "
                         "say why")


def _tune_outcome(run_dir: runner.RunDirectory, found: list[Any], plan: TunePlan, objective: str,
                  cut: str | None = None, budget_ran_out: bool = False) -> bool:
    """tune's tables, its winner as a suite, and its warnings; `cut`: why it ended early (the tables then show
    what had ended by then, and tuned.toml says it is partial). Whether it had a winner to write."""
    from lmbench import tune as tuning
    from lmbench.analyze.ranking import tune_ranking_table
    from lmbench.analyze.table import tune_search_table

    search = tune_search_table(found, title=f"largest batch that fits: {plan.model}, seq_len {plan.seq_len}"
                               + (f" (cut short: {cut}; combinations searched so far)" if cut else ""))
    rows = tuning.ranked(run_dir, objective)
    console = _console()
    console.print(search)
    console.print(tune_ranking_table(rows, objective=objective))
    apart = tuning.told_apart(rows, objective)
    if apart:
        console.print(apart)
    winner = tuning.write_winner(run_dir, objective, cut=cut)
    console.print(f"winner as a suite{' (partial)' if cut else ''}: {winner}" if winner
                  else tuning.no_winner_reason(run_dir, objective, cut=cut, budget_ran_out=budget_ran_out))
    busy = tuning.contention_warning(rows)
    if busy:
        click.echo(f"lmbench: warning: {busy}", err=True)
    return winner is not None


@cli.command()
@click.option("--op", type=click.Choice(["rmsnorm", "layernorm", "linear-ce"]), required=True,
              help="The operation to time.")
@click.option("--shape", required=True,
              help="MxN for norms (e.g. 8192x4096), BTxHxV for linear-ce; several separated by commas.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="bf16", show_default=True,
              help="The inputs' dtype.")
@click.option("--mode", type=click.Choice(["fwd", "bwd", "fwd+bwd"]), default="fwd+bwd", show_default=True,
              help="Time the forward, the backward (on a saved forward) or both.")
@click.option("--csv", "csv_path", type=NonEmptyPath(dir_okay=False, path_type=Path), default=None,
              help="Where to write the CSV (default: kernels-OP-SHAPE-DTYPE-MODE.csv).")
@click.option("--ceilings", "ceilings_path", type=NonEmptyPath(dir_okay=False, path_type=Path), default=None,
              help="This GPU's ceilings (lmbench ceilings --out FILE): adds each kernel's share of the copy GB/s.")
@click.option("--rounds", type=click.IntRange(min=2), default=10, show_default=True,
              help="Interleaved rounds of device timing: each replays every implementation once, in a fresh order.")
def kernels(op: str, shape: str, dtype: str, mode: str, csv_path: Path | None, ceilings_path: Path | None,
            rounds: int) -> int:
    """Time one op across eager, compile, native fused, lmbench Triton, Liger and Apex (CUDA only).

    Example: lmbench kernels --op rmsnorm --shape 8192x2048,8192x4096 --ceilings ceilings.json
    """
    import torch

    from lmbench.analyze.results import writable_file
    from lmbench.analyze.table import kernels_table
    from lmbench.measure import microbench, sidebyside
    from lmbench.measure.ceilings import load as load_ceilings
    from lmbench.measure.environment import capture

    spec = microbench.OPS[op]
    shapes = microbench.parse_shapes(spec, shape)
    ceilings = load_ceilings(ceilings_path) if ceilings_path else {}
    csv_path = csv_path or Path(f"kernels-{op}-{shape.replace(',', '_')}-{dtype}-{mode.replace('+', '')}.csv")
    writable_file(csv_path, what="--csv")  # before the measuring, not after
    copy = ceilings.get("copy_gb_per_s")
    # A compute-bound op (linear-ce) against the matmul ceiling of its dtype.
    matmul = ceilings.get(f"{dtype}_matmul_tflops") if spec.flops else None
    if not torch.cuda.is_available():
        click.echo(f"skipped: lmbench kernels needs a CUDA GPU (none visible; torch {torch.__version__})")
        return 0
    device = torch.device("cuda")
    here = torch.cuda.get_device_name(device)
    if ceilings and ceilings.get("device") != here:
        # Another card's copy and matmul ceilings put each kernel's share against the wrong yardstick.
        raise UsageError(f"--ceilings {str(ceilings_path)!r} was measured on "
                         f"{ceilings.get('device') or 'an unrecorded device'}, not on this GPU ({here}): another "
                         "card's ceilings are no yardstick for this one's kernels; measure this GPU's with lmbench "
                         "ceilings --out FILE")
    env = capture(device)
    rows = []
    for dims in shapes:
        measured = microbench.measure(spec, dims, microbench.DTYPES[dtype], mode, device, rounds=rounds)
        measured = microbench.against_copy(measured, copy) if copy else measured
        measured = microbench.against_matmul(measured, matmul) if matmul else measured
        ceiling = (f"; {dtype} matmul ceiling {matmul:,.0f} TFLOP/s" if matmul else
                   f"; copy ceiling {copy:,.0f} GB/s" if copy and not spec.flops else "")
        title = (f"{op} {'x'.join(map(str, dims))} {dtype} {mode} on {env['device']['name']} "
                 f"(bytes moved: {spec.bytes_formula}{ceiling}; {sidebyside.timing_caption(measured)})")
        _console().print(kernels_table(measured, title=title))
        rows += measured
    microbench.write_csv(rows, csv_path, {"gpu": env["device"]["name"], "torch": env["torch"],
                                          "triton": env["triton"], "cuda": env["cuda"]})
    click.echo(f"csv: {csv_path}")
    return 0


@cli.command()
@click.option("--out", type=NonEmptyPath(dir_okay=False, path_type=Path), default=None,
              help="Also write the figures as JSON here.")
def ceilings(out: Path | None) -> int:
    """Measure this GPU's matmul TFLOP/s (bf16, fp16, tf32, fp32) and copy GB/s (a second yardstick for MFU).

    Example: lmbench ceilings --out ceilings.json
    """
    import json

    import torch

    from lmbench.analyze import results
    from lmbench.measure import ceilings as measured

    if out is not None:  # before a minute of measuring, not after
        results.writable_file(out, what="--out")
    if not torch.cuda.is_available():
        reason = f"lmbench ceilings needs a CUDA GPU (none visible; torch {torch.__version__})"
        click.echo(f"skipped: {reason}")
        if out is not None:
            # The file a script asked for exists and says why it holds no figure (--ceilings refuses it, naming it).
            with results.saving(out):
                out.write_text(json.dumps({"status": "skipped", "reason": reason}, indent=2), encoding="utf-8")
        return 0
    figures = measured.measure(torch.device("cuda"))
    modes = ", ".join(f"{mode} {figures[f'{mode}_matmul_tflops']:.0f}" for mode in ("bf16", "fp16", "tf32", "fp32"))
    click.echo(f"{figures['device']}: matmul TFLOP/s {modes} ({figures['bf16_matmul_n']}^3), "
               f"copy {figures['copy_gb_per_s']:.0f} GB/s (read + write)")
    if out is not None:
        with results.saving(out):
            out.write_text(json.dumps(figures, indent=2), encoding="utf-8")
    return 0


def _console(*, stderr: bool = False) -> Console:
    """Rich console; wide when not a terminal, so piped tables are not wrapped at 80 columns."""
    stream = sys.stderr if stderr else sys.stdout
    # A stream closed when Python started (`lmbench list >&-`) is None: rich writes nowhere then, as click does.
    return _Console(stderr=stderr, width=None if stream is not None and stream.isatty() else 200)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()

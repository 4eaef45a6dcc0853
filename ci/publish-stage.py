#!/usr/bin/env python3
"""Publish what a GPU lease brought back: ci/gpu-validate.sh's stage tarballs into reports/, with the figures
that issue 13's targets ask for taken from lmbench's own output, never typed by hand.

    python3 ci/publish-stage.py DIR [--reports reports] [--replace | --merge] [--allow-rehearsal]
    python3 ci/publish-stage.py --rerender reports/<gpu>-<yyyy-mm-dd> [...]

DIR holds stageN.tar.gz and stageN-summary.txt as the device tool returned them. Each stage goes to
reports/<gpu>-<yyyy-mm-dd>/stageN/ (the GPU from the stage's preflight, the date from its summary), then that
folder's README.md is written again from every stage it holds:

  - the targets table: each target, the figure measured for it, whether it is met, and the file it came from;
  - per stage, the summary gpu-validate.sh wrote on the GPU (verbatim) and links to its report.

reports/README.md gets the targets table between its `<!-- targets:begin -->` and `<!-- targets:end -->`
markers, and the project README a short one: each target from the newest folder of that GPU that measured it (a
lease measures a few stages; the targets of the others stand from earlier dates). --merge adds a rerun of a
stage to the one already published that day (the rerun's files win, both summaries are kept). A rehearsal
on a CPU (`gpu-validate.sh --rehearse`) is refused unless --allow-rehearsal (the tests publish one into a
temporary folder).

--rerender renders each published stage's report again from the runs committed beside it, with this checkout's
lmbench (`lmbench report`, the stage's ceilings.json when it has one), then writes the READMEs again: a report
rendered on the GPU by an older lmbench lacks the notes and columns added since (what MFU divides by, throttling
beside throughput, the energy caveats). The report's header names both versions: the one that measured, the
one that rendered.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import re
import statistics
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HEADER = re.compile(r"^lmbench GPU validation, stage (\d+) \((gpu|rehearse)\) on \S+ at (\d{4}-\d{2}-\d{2})T")
DEVICE = re.compile(r"^\s*cuda\s+\S+\s+available=True\s+devices=\d+\s+(.+?)\s*$", re.M)
OVERHEAD = re.compile(r"gpu harness/bare median step time: ([0-9.]+)")
BEGIN, END = "<!-- targets:begin -->", "<!-- targets:end -->"
NOT_MEASURED = "not measured yet"
#: Longest figure in the project README's headline table (the folder's README has them whole).
HEADLINE_WIDTH = 170


class PublishError(Exception):
    """Bad input: one line for the user, exit 2."""


@dataclass
class Stage:
    number: int
    mode: str
    date: str
    gpu: str
    summary: str


def inspect(tarball: Path) -> Stage:
    """The stage's number, mode, date and GPU, read from inside its tarball."""
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
        top = {name.split("/")[0] for name in names}
        if len(top) != 1 or not re.fullmatch(r"stage\d+", next(iter(top))):
            raise PublishError(f"{tarball}: not a gpu-validate.sh tarball (one folder stageN/ expected, found "
                               f"{', '.join(sorted(top)) or 'nothing'})")
        folder = next(iter(top))

        def text(name: str) -> str:
            try:
                member = tar.extractfile(f"{folder}/{name}")
            except KeyError:
                member = None
            return member.read().decode(errors="replace") if member else ""

        summary, preflight = text("summary.txt"), text("logs/preflight.txt")
    header = HEADER.match(summary)
    if not header:
        raise PublishError(f"{tarball}: {folder}/summary.txt does not start with gpu-validate.sh's header line")
    number, mode, date = int(header[1]), header[2], header[3]
    if f"stage{number}" != folder:
        raise PublishError(f"{tarball}: its folder {folder} holds the summary of stage {number}")
    device = DEVICE.search(preflight)
    gpu = device[1] if device else "cpu"
    return Stage(number=number, mode=mode, date=date, gpu=gpu, summary=summary)


def slug(gpu: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3'."""
    name = re.sub(r"^nvidia\s+", "", gpu.strip(), flags=re.I).lower()
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "unknown"


def unpack(tarball: Path, stage: Stage, reports: Path, *, replace: bool, merge: bool = False) -> Path:
    """Into reports/<gpu>-<date>/stageN/. `merge`: over a stage already there (a rerun of some of its steps):
    the rerun's files take their places, an earlier file of the same name moves to stageN/earlier/K/ (K counts
    the merges), and summary.txt holds the earlier summary, then the rerun's. A rerun already merged (its
    summary's header line is there) is refused, as is a merge with nothing to merge into."""
    folder = reports / f"{slug(stage.gpu)}-{stage.date}"
    target = folder / f"stage{stage.number}"
    earlier = ""
    if merge and not target.exists():
        raise PublishError(f"--merge: {target} is not there to merge into (a rerun merges into its own date's stage; "
                           "publish the stage without --merge)")
    if target.exists():
        if merge:
            earlier = (target / "summary.txt").read_text(errors="replace").rstrip() + "\n\n"
            if stage.summary.splitlines()[0] in earlier:
                raise PublishError(f"{tarball}: this run of stage {stage.number} is merged into {target} already")
        elif not replace:
            raise PublishError(f"{target} already exists: pass --replace to publish stage {stage.number} again, "
                               "or --merge to add a rerun of some of its steps")
        else:
            import shutil

            shutil.rmtree(target)
    with tarfile.open(tarball) as tar:
        members = tar.getmembers()
        for member in members:
            if member.name.startswith("/") or ".." in Path(member.name).parts:
                raise PublishError(f"{tarball}: unsafe member {member.name!r}")
        # Links are never evidence (pytest leaves a `<test>current` link to each test's temporary directory),
        # and a link could point outside the report: they are left out, by name.
        links = [m for m in members if m.issym() or m.islnk()]
        for link in links:
            print(f"left out link {link.name} -> {link.linkname}", file=sys.stderr)
        folder.mkdir(parents=True, exist_ok=True)
        files = [m for m in members if not (m.issym() or m.islnk())]
        if earlier:
            _keep_earlier(folder, target, [m.name for m in files if m.isfile()])
        if hasattr(tarfile, "data_filter"):
            tar.extractall(folder, members=files, filter="data")
        else:
            tar.extractall(folder, members=files)
    if earlier:
        (target / "summary.txt").write_text(earlier + stage.summary, encoding="utf-8")
    return folder


def _keep_earlier(folder: Path, target: Path, names: list[str]) -> None:
    """Before a merge: each file the rerun brings that is there already moves to target/earlier/K/ (its provenance,
    logs and preflight, stays beside what it measured)."""
    clashes = [folder / name for name in names if (folder / name).is_file() and name != f"{target.name}/summary.txt"]
    if not clashes:
        return
    count = 1
    while (target / "earlier" / str(count)).exists():
        count += 1
    keep = target / "earlier" / str(count)
    for path in clashes:
        moved = keep / path.relative_to(target)
        moved.parent.mkdir(parents=True, exist_ok=True)
        path.rename(moved)


# The targets, each read from the files of the stage that measures it.

def _records(path: Path) -> list[dict[str, Any]]:
    from lmbench.analyze import results

    return results.read(path).records if (path / "results.jsonl").exists() else []


def _csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open(encoding="utf-8"))) if path.exists() else []


def _link(folder: Path, path: Path) -> str:
    return f"[{path.relative_to(folder)}]({path.relative_to(folder)})"


def overhead(folder: Path) -> tuple[str, str, str]:
    # Stage 10's recheck, once it ran, supersedes stage 3's test (whose bare loop was not like for like).
    logs = [folder / stage / "logs" / "pytest-overhead.txt" for stage in ("stage10", "stage3")]
    log = next((path for path in logs if path.exists() and OVERHEAD.search(path.read_text(errors="replace"))),
               logs[-1])
    found = OVERHEAD.search(log.read_text(errors="replace")) if log.exists() else None
    if not found:
        return "-", NOT_MEASURED, _link(folder, log) if log.exists() else "stage 3"
    pct = (float(found[1]) - 1) * 100
    # A harness cannot run the same work faster than a bare loop: beyond the target's own 1%, a faster
    # harness means the two loops did different work (the first H100 run: fused AdamW against foreach).
    verdict = "met" if abs(pct) <= 1 else "not met" if pct > 0 else "not comparable: the harness ran faster"
    return f"{pct:+.2f}% of a bare loop's median step time", verdict, _link(folder, log)


def repeat_cv(folder: Path) -> tuple[str, str, str]:
    run = folder / "stage3" / "runs" / "ci"
    by_key: dict[str, list[float]] = {}
    records = _records(run)
    for r in records:
        value = (r.get("metrics") or {}).get("tokens_per_s")
        if r["status"] == "ok" and isinstance(value, (int, float)):
            by_key.setdefault(r["config_key"], []).append(float(value))
    cvs = {key: statistics.stdev(v) / statistics.mean(v) * 100 for key, v in by_key.items() if len(v) >= 2}
    if not cvs:
        return "-", NOT_MEASURED, "stage 3"
    worst = max(cvs, key=cvs.get)
    stale = sorted({fix for r in records if r["config_key"] in cvs for fix in predates(r)})
    shown = (f"worst {cvs[worst]:.2f}% ({worst}, {len(by_key[worst])} repeats); all {len(cvs)}: "
             + ", ".join(f"{v:.2f}%" for v in cvs.values()) + "".join(f"; {fix}" for fix in stale))
    return shown, "met" if cvs[worst] <= 2 else "not met", _link(folder, run / "results.jsonl")


#: Fixes that changed what a step times, with the records they touch: a figure measured by an lmbench without one
#: is said to be (it stands as measured then; a later lease measures it again). A sceptic's review of the H100
#: records found the published MFU, CV and energy figures all measured before the first two.
TIMING_FIXES = [
    ("5137cad", "transformers' packed-sequence check read the device every forward, and compiled steps timed "
                "masked attention", lambda config: _family(config) in ("gpt2", "llama", "bert")),
    ("17b7ba7", "fp16 read its overflow flag on the host every step", lambda config: config.get("precision") == "fp16"),
    ("3fbea7a", "compiled GPT-2 ran its loss outside the graph, a graph break every forward",
     lambda config: _family(config) == "gpt2" and config.get("kernels") == "compile"),
    ("f54edc6", "pure bf16/fp16 cast buffers too (Llama's RoPE frequencies) and BERT's MLM loss ran in 16 bits",
     lambda config: _family(config) in ("llama", "bert") and config.get("precision") in ("bf16", "fp16")),
]


#: Fixes that changed what `lmbench kernels` measures or the kernels it measures, with the ops they touch: stage 7's
#: figures from an lmbench without one say so (a reviewer found the norm target's verdict read from a backward
#: kernel four commits older than the one the triton kernel set runs).
KERNEL_FIXES = [
    ("a445718", "implementations timed one after another, not in interleaved rounds",
     ("rmsnorm", "layernorm", "linear-ce")),
    ("b4e9d54", "our norms' backward ran its plain loop, before the H100 sweep's pipelined plans (1.04x-1.42x)",
     ("rmsnorm", "layernorm")),
    ("491f937", "before the norm backward's per-norm plans (LayerNorm's own)", ("layernorm",)),
]


def stage_commit(stage: Path) -> str:
    """The commit a stage ran (its summary's `commit X` line), "" when it does not say."""
    summary = stage / "summary.txt"
    found = re.search(r"^commit ([0-9a-f]{7,40})", summary.read_text(errors="replace"), re.MULTILINE) \
        if summary.is_file() else None
    return found[1] if found else ""


def kernels_predate(stage: Path, op: str) -> list[str]:
    """The KERNEL_FIXES the stage's lmbench lacked for `op` (`measured before b4e9d54 (...)`)."""
    commit = stage_commit(stage)
    return [f"measured before {fix} ({what})" for fix, what, ops in KERNEL_FIXES
            if commit and op in ops and _lacks(commit, fix)]


def _family(config: dict[str, Any]) -> str | None:
    from lmbench.models.registry import MODELS

    spec = MODELS.get(str(config.get("model")))
    return spec.family if spec else None


def predates(record: dict[str, Any]) -> list[str]:
    """The TIMING_FIXES the record's lmbench lacked (`measured before 5137cad: ...`), for its configuration; none
    when its commit is unknown here (not a git checkout, or a commit this clone does not have)."""
    commit = str(((record.get("env") or {}).get("lmbench_commit") or "")).removesuffix("-dirty")
    return [f"measured before {fix} ({what})" for fix, what, touches in TIMING_FIXES
            if commit and touches(record.get("config") or {}) and _lacks(commit, fix)]


@functools.cache
def _lacks(commit: str, fix: str) -> bool:
    """Whether `commit` is known here and lacks `fix` (one git call a pair: a folder's records share commits)."""
    done = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent.parent), "merge-base", "--is-ancestor",
                           fix, commit], capture_output=True, text=True)
    return done.returncode == 1  # 0: the fix is in; 128: a commit git does not know


#: Precisions whose name alone does not say the training recipe (the MFU target's figure names its precision).
RECIPES = {"bf16": " (pure: bf16 weights and optimizer state, no fp32 master copy)"}


def mfu(folder: Path, model: str, target_pct: float) -> tuple[str, str, str]:
    """The folder's best MFU for `model` (mfu_over)."""
    return mfu_over([folder], model, target_pct)[:3]


def mfu_over(folders: list[Path], model: str, target_pct: float) -> tuple[str, str, str, Path]:
    """The best MFU measured for `model` in `folders` (one GPU's leases), against the device's dense bf16 peak, the
    target's convention, whatever the precision: a record's own `mfu` is against its precision's math mode (fp32's
    67 TFLOP/s on an H100), so it is taken from the record's achieved `tflops` instead. A configuration's figure is
    the median over its ok repeats in its file; the best is named with what it rests on (basis), and when it rests
    on fewer than MIN_REPEATS, so does the best confirmed one beside it (the largest of single windows flatters),
    and a target met by it alone is met unconfirmed. A padded vocabulary (vocab_multiple) and CUDA graphs
    (compile_mode, cuda_graph) are named. Returns the figure, the verdict, the evidence (linked from the best's
    folder) and that folder."""
    from lmbench.analyze.noise import MIN_REPEATS
    from lmbench.measure.peaks import mode_peak_flops

    groups: list[tuple[float, list[dict[str, Any]], Path, Path]] = []
    for folder in folders:
        for results_file in sorted(folder.glob("stage*/runs/*/results.jsonl")):
            by_key: dict[str, list[dict[str, Any]]] = {}
            for r in _records(results_file.parent):
                m = r.get("metrics") or {}
                device = (m.get("device_names") or [None])[0]
                peak = (mode_peak_flops(device, "bf16") or (None,))[0]
                if (r["status"] == "ok" and r["config"].get("model") == model and peak
                        and isinstance(m.get("tflops"), (int, float))):
                    by_key.setdefault(r["config_key"], []).append({**r, "_mfu": m["tflops"] * 1e12 / peak})
            groups += [(statistics.median(x["_mfu"] for x in rs), rs, results_file, folder) for rs in by_key.values()]
    if not groups:
        return "-", NOT_MEASURED, "stage 4", folders[0]
    value, repeats, where, folder = max(groups, key=lambda group: group[0])
    shown = f"{value * 100:.1f}% {_recipe(repeats[0])}; {basis(repeats)}" + _held_back(repeats)
    verdict = "met" if value * 100 >= target_pct else "not met"
    confirmed = [group for group in groups if len(group[1]) >= MIN_REPEATS]
    if len(repeats) < MIN_REPEATS:
        verdict += ", unconfirmed" if verdict == "met" else ""
        if confirmed:
            best, sure, _, there = max(confirmed, key=lambda group: group[0])
            shown += (f"; best confirmed: {best * 100:.1f}% {_recipe(sure[0])}, {basis(sure)}"
                      + (f", {there.name[-10:]}" if there != folder else ""))
    return shown, verdict, _link(folder, where), folder


def _held_back(repeats: list[dict[str, Any]]) -> str:
    """`; held back most by other kernels 29% (matmul + attention 65%)` from a profiled repeat (issue 13: name what
    holds MFU back), else nothing."""
    from lmbench.analyze.report import held_back_by

    found = next((held_back_by(r["metrics"]) for r in repeats if r["metrics"].get("profile_step_time_s")), "-")
    return "" if found == "-" else f"; held back most by {found}"


def _recipe(record: dict[str, Any]) -> str:
    """`amp-bf16, vocab_multiple 64 (KEY)`: the precision (pure bf16 glossed), a padded vocabulary, CUDA graphs, and
    the key as the results file spells it (lmbench reads a profiled record under its current key)."""
    config = record["config"]
    padded = f", vocab_multiple {config['vocab_multiple']}" if config.get("vocab_multiple", 1) != 1 else ""
    graphs = "".join(f", {axis} {config[axis]}" for axis, plain in (("compile_mode", "default"), ("cuda_graph", False))
                     if config.get(axis, plain) != plain)
    return (f"{config.get('precision')}{RECIPES.get(config.get('precision'), '')}{padded}{graphs} "
            f"({record.get('written_key', record['config_key'])})")


def basis(repeats: list[dict[str, Any]]) -> str:
    """What a configuration's figure rests on: one repeat, or the median of several with their range; the windows;
    a power or heat cap. A sceptic must see how thin a best figure is."""
    windows = sorted(m["window_s"] for m in (r.get("metrics") or {} for r in repeats)
                     if isinstance(m.get("window_s"), (int, float)))
    if len(repeats) == 1:
        parts = ["one repeat"]
    else:
        low, high = min(x["_mfu"] for x in repeats), max(x["_mfu"] for x in repeats)
        parts = [f"median of {len(repeats)} repeats ({low * 100:.1f}-{high * 100:.1f}%)"]
    shortest, longest = (f"{windows[0]:.2f}", f"{windows[-1]:.2f}") if windows else ("", "")
    if len(windows) == 1:
        parts.append(f"a {shortest} s window")
    elif windows:
        parts.append(f"{shortest} s windows" if shortest == longest else f"{shortest}-{longest} s windows")
    throttled = sorted({reason for r in repeats if (r.get("metrics") or {}).get("throttled_power_or_heat")
                        for reason in (r["metrics"].get("throttle_reasons") or [])})
    if throttled:
        parts.append(f"clocks throttled ({', '.join(throttled)})")
    return ", ".join([*parts, *predates(repeats[0])])


def _times(*rows: dict[str, str]) -> tuple[list[float], str]:
    """The rows' median times on one basis: the device time (CUDA-graph replay) when every row has one, else the
    time a call between CUDA events (older CSVs, or an implementation that could not be captured)."""
    if all(r.get("device_median_ms") for r in rows):
        return [float(r["device_median_ms"]) for r in rows], "device"
    return [float(r["time_median_ms"]) for r in rows], "a call"


def _slower(ours: dict[str, str], rival: dict[str, str]) -> bool:
    """Whether ours is slower than `rival`: by the whole 95% interval of their round-by-round device-time ratio
    when the CSV has one (interleaved rounds), else by the medians (older CSVs)."""
    if rival.get("vs_ours_verdict"):
        return rival["vs_ours_verdict"] == "ours slower"
    mine, theirs = _times(ours, rival)[0]
    return mine > theirs


def norms(folder: Path) -> tuple[str, str, str]:
    parts, met, sources, stale = [], True, [], set()
    for op in ("rmsnorm", "layernorm"):
        path = folder / "stage7" / f"kernels-{op}.csv"
        rows = [r for r in _csv(path) if r["status"] == "ok"]
        if not rows and (folder / "stage7").exists():
            parts.append(f"{op}: not measured")
            met = False
        for shape in dict.fromkeys(r["shape"] for r in rows):
            by = {r["impl"]: r for r in rows if r["shape"] == shape}
            ours = by.get("lmbench triton")
            if ours is None:
                parts.append(f"{op} {shape}: ours did not run")
                met = False
                continue
            rivals = [name for name in ("compile", "liger") if name in by]
            slower = [n for n in rivals if _slower(ours, by[n])]
            share = float(ours["pct_of_copy"]) if ours.get("pct_of_copy") else None
            met &= share is not None and share >= 80 and not slower
            parts.append(f"{op} {shape}: {share:.0f}% of copy" if share is not None else f"{op} {shape}: no ceiling")
            parts[-1] += f", slower than {'/'.join(slower)}" if slower else f", no slower than {'/'.join(rivals)}"
        if rows:
            sources.append(_link(folder, path))
            stale.update(kernels_predate(folder / "stage7", op))
    if not sources:
        return "-", NOT_MEASURED, "stage 7"
    # The caveats first: the project README's headline cuts a long figure short (a reviewer: they were cut off).
    return "; ".join([*sorted(stale), *parts]), "met" if met else "not met", ", ".join(sources)


def linear_ce(folder: Path) -> tuple[str, str, str]:
    path = folder / "stage7" / "kernels-linear-ce.csv"
    by = {r["impl"]: r for r in _csv(path) if r["status"] == "ok"}
    if "lmbench triton" not in by or "eager" not in by:
        return "-", NOT_MEASURED, "stage 7"
    ours, eager = by["lmbench triton"], by["eager"]
    memory = float(ours["peak_mem_bytes"]) / float(eager["peak_mem_bytes"])
    if eager.get("vs_ours"):
        # Eager's device time over ours, round by round: ours over eager's is its inverse, interval and all.
        time, slowest = 1 / float(eager["vs_ours"]), 1 / float(eager["vs_ours_low"])
        basis = f"device, 95% interval up to {slowest:.2f}×"
    else:
        (mine, theirs), basis = _times(ours, eager)
        time = slowest = mine / theirs
    stale = "".join(f"; {note}" for note in kernels_predate(folder / "stage7", "linear-ce"))
    return (f"{memory:.3f}× eager's peak memory at {time:.2f}× its time ({basis}, {ours['shape']}){stale}",
            "met" if memory <= 0.25 and slowest <= 1.1 else "not met", _link(folder, path))


def energy(folder: Path) -> tuple[str, str, str]:
    """J/token of each precision of the fp16 suite, its throttle reasons, and what makes it unquotable."""
    from lmbench.measure.nvml import POWER_OR_HEAT
    from lmbench.measure.telemetry import disagreement_of, energy_caveat

    # Stage 3's long windows when they gave a figure (60 steps), else stage 1's fp16 run.
    runs = [*sorted(folder.glob("stage*/runs/fp16-energy")), folder / "stage1" / "runs" / "fp16"]
    run = next((r for r in runs if any(x["status"] == "ok" and (x.get("metrics") or {}).get("j_per_token")
                                       is not None for x in _records(r))), runs[-1])
    parts, short, throttled = [], [], []
    for r in _records(run):
        m = r.get("metrics") or {}
        if r["status"] == "ok" and m.get("j_per_token") is not None:
            precision = r["config"]["precision"]
            reasons = m.get("throttle_reasons")  # None: unknown (no sample read the bits), not none
            if POWER_OR_HEAT & set(reasons or []):
                throttled.append(precision)
            gap = disagreement_of(m)
            check = "" if gap is None else f"; integral vs counter {gap:+.1%} over {m['telemetry_window_s']:.1f} s"
            if energy_caveat(m):
                short.append(precision)
            said = "unknown" if reasons is None else ", ".join(reasons) or "none"
            parts.append(f"{precision} {m['j_per_token'] * 1e3:.3f} mJ/token (throttle: {said}"
                         f"{check}){''.join(f'; {fix}' for fix in predates(r))}")
    if not parts:
        return "-", NOT_MEASURED, "stage 1"
    verdict = "; ".join(["measured",
                         *([f"throttled for power or heat: {', '.join(throttled)}"] if throttled else []),
                         *([f"windows too short to quote for {', '.join(short)} (under 1 s, or counter and integral "
                            "3% or more apart)"] if short else [])])
    return "; ".join(parts), verdict, _link(folder, run / "results.jsonl")


TARGETS = [
    ("Harness overhead ≤ 1% of a bare loop's step time", overhead, "harness overhead ≤ 1%"),
    ("CV of tokens/s over 3 repeats ≤ 2% per ci-suite config", repeat_cv, "CV of tokens/s ≤ 2%"),
    ("MFU gpt2-124m ≥ 45% (PaLM, datasheet dense bf16 peak)", lambda f: mfu(f, "gpt2-124m", 45),
     "MFU gpt2-124m ≥ 45%"),
    ("MFU llama-1b ≥ 50%", lambda f: mfu(f, "llama-1b", 50), "MFU llama-1b ≥ 50%"),
    ("Triton RMSNorm/LayerNorm ≥ 80% of copy GB/s, no slower than compile or Liger", norms,
     "norms ≥ 80% of copy GB/s"),
    ("Fused linear-CE ≤ 1/4 of eager's peak memory at ≤ 1.1× its time", linear_ce, "linear-CE ≤ 1/4 memory"),
    ("NVML energy per token for each precision of the fp16 suite, with throttle reasons", energy, "J/token"),
]


def same_gpu(folder: Path) -> list[Path]:
    """The published folders of `folder`'s GPU (itself among them), newest date first."""
    gpu = folder.name[:-11]
    found = {p for p in folder.parent.glob(f"{gpu}-*")
             if p.is_dir() and p.name[:-11] == gpu and re.fullmatch(r"\d{4}-\d{2}-\d{2}", p.name[-10:])}
    return sorted(found | {folder}, key=lambda p: p.name[-10:], reverse=True)


#: Targets read as the best over every lease of a GPU, not the newest: a later lease that ran a few untuned
#: configurations (stage 10's) does not make the best MFU measured on that GPU any lower (mfu_over: the model and
#: the target's percent).
BEST_OVER_LEASES = {"MFU gpt2-124m ≥ 45%": ("gpt2-124m", 45), "MFU llama-1b ≥ 50%": ("llama-1b", 50)}


def readings(folders: list[Path]) -> list[tuple[str, str, str, str, str, Path]]:
    """Per target: its name, short name, figure, verdict, evidence (links relative to its folder) and that folder:
    the first of `folders` that measured it (the best of them for BEST_OVER_LEASES), else the first's reading."""
    found = []
    for name, read, short in TARGETS:
        if short in BEST_OVER_LEASES:
            *reading, where = mfu_over(folders, *BEST_OVER_LEASES[short])
            found.append((name, short, *reading, where))
            continue
        measured = [((figure, verdict, source), f) for f in folders
                    for figure, verdict, source in [read(f)] if verdict != NOT_MEASURED]
        reading, where = measured[0] if measured else (read(folders[0]), folders[0])
        found.append((name, short, *reading, where))
    return found


def targets_table(folder: Path, *, prefix: str = "", across: bool = False) -> str:
    """Markdown; `prefix` puts the links relative to another file's folder. `across`: each target from the newest
    folder of this GPU that measured it (same_gpu), its links through that folder, with the date it was measured."""
    folders = same_gpu(folder) if across else [folder]
    lines = ["| target | measured | verdict | evidence |", "|---|---|---|---|"]
    for name, _, figure, verdict, source, where in readings(folders):
        through = prefix + (f"{where.name}/" if across else "")
        source = re.sub(r"\]\(", f"]({through}", source) if through else source
        dated = f" ({where.name[-10:]})" if across and verdict != NOT_MEASURED else ""
        lines.append(f"| {name} | {figure} | {verdict}{dated} | {source} |")
    return "\n".join(lines)


def write_readme(folder: Path, gpu: str) -> Path:
    stages = sorted((int(p.name[5:]), p) for p in folder.glob("stage*") if p.name[5:].isdigit())
    parts = [f"# lmbench on {gpu}, {folder.name[-10:]}", "",
             "Written by `ci/publish-stage.py` from the tarballs `ci/gpu-validate.sh` brought back: every figure "
             "below is lmbench's own output, read from the files it links.", "", "## Targets (issue 13)", "",
             targets_table(folder), ""]
    for number, path in stages:
        summary = (path / "summary.txt").read_text(errors="replace").rstrip()
        links = [_link(folder, p) for p in (path / "report" / "report.md", path / "report" / "report.html")
                 if p.exists()]
        parts += [f"## Stage {number}", "", *([f"Report: {', '.join(links)}", ""] if links else []),
                  "```", summary, "```", ""]
    readme = folder / "README.md"
    readme.write_text("\n".join(parts), encoding="utf-8")
    return readme


def _with_block(text: str, block: str) -> str:
    """`text` with what stands between its BEGIN and END markers replaced by `block`."""
    head, rest = text.split(BEGIN, 1)
    return head + f"{BEGIN}\n{block}\n{END}" + rest.split(END, 1)[1]


def gpus(reports: Path, folder: Path) -> list[Path]:
    """The newest published folder of each GPU in `reports` (`folder`'s GPU first): one table each."""
    newest: dict[str, Path] = {}
    for path in sorted(reports.glob("*-????-??-??")):
        if path.is_dir() and re.fullmatch(r"\d{4}-\d{2}-\d{2}", path.name[-10:]):
            newest[path.name[:-11]] = path
    newest[folder.name[:-11]] = max(newest.get(folder.name[:-11], folder), folder, key=lambda p: p.name[-10:])
    mine = newest.pop(folder.name[:-11])
    return [mine, *sorted(newest.values(), key=lambda p: p.name)]


def update_index(reports: Path, folder: Path) -> None:
    index = reports / "README.md"
    text = index.read_text(encoding="utf-8") if index.exists() else f"# Published results\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip() + f"\n\n{BEGIN}\n{END}\n"
    blocks = []
    for newest in gpus(reports, folder):
        dates = ", ".join(f"[{f.name}]({f.name}/README.md)" for f in same_gpu(newest))
        blocks.append(f"### {newest.name[:-11]}\n\nEach target from the newest of {dates} that measured it (MFU: "
                      "the best over them, and the best confirmed beside a single figure):\n\n"
                      f"{targets_table(newest, across=True)}")
    index.write_text(_with_block(text, "\n\n".join(blocks)), encoding="utf-8")


def update_headline(readme: Path, reports: Path, folder: Path) -> bool:
    """The project README's short table between the markers, when it has them: each target's verdict (its first
    clause) linked to its evidence. The figures themselves stay in the folder's README, one click away."""
    if not readme.exists() or BEGIN not in (text := readme.read_text(encoding="utf-8")) or END not in text:
        return False
    blocks = [_headline(reports, newest) for newest in gpus(reports, folder)]
    readme.write_text(_with_block(text, "\n\n".join(blocks)), encoding="utf-8")
    return True


def _headline(reports: Path, folder: Path) -> str:
    rows = ["| target | measured | verdict | on |", "|---|---|---|---|"]
    for _, name, figure, verdict, source, where in readings(same_gpu(folder)):
        link = re.search(r"\]\(([^)]+)\)", source)
        # The figure and the verdict without their parentheticals (configuration keys, throttle reasons, the
        # caveat's threshold); a caveat itself ("windows too short to quote for ...") stays.
        figure, short = (re.sub(r" \([^()]*\)", "", text) for text in (figure, verdict))
        figure = figure if len(figure) <= HEADLINE_WIDTH else figure[:HEADLINE_WIDTH - 1] + "…"
        on = f"{reports.name}/{where.name}"
        rows.append(f"| {name} | {figure} | {f'[{short}]({on}/{link[1]})' if link else short} | "
                    f"{where.name[-10:] if verdict != NOT_MEASURED else '-'} |")
    gpu = folder.name[:-11]
    return (f"Issue 13's targets on {gpu}, each from the newest lease that measured it (MFU: the best "
            f"over them) "
            f"([{reports.name}/]({reports.name}/README.md), `ci/publish-stage.py`):\n\n" + "\n".join(rows))


def rerender(stage: Path) -> bool:
    """The stage's report/ rendered again from its runs/ by this checkout's lmbench (as gpu-validate.sh's report()
    renders it: every run that recorded something, the stage's ceilings when measured); False without runs."""
    runs = sorted(path.name for path in (stage / "runs").glob("*") if (path / "results.jsonl").is_file()
                  and (path / "results.jsonl").stat().st_size) if (stage / "runs").is_dir() else []
    if not runs:
        return False
    ceilings = stage / "ceilings.json"
    roof = ["--ceilings", ceilings.name] if ceilings.is_file() and "copy_gb_per_s" in ceilings.read_text() else []
    # From the stage's folder, so the report names its runs as they are published (runs/NAME), not the GPU's paths.
    done = subprocess.run([sys.executable, "-m", "lmbench.cli", "report", *(f"runs/{name}" for name in runs),
                           "--out", "report", *roof], cwd=stage, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise PublishError(f"{stage}: lmbench report exited {done.returncode}: {last}")
    return True


def published_gpu(folder: Path) -> str:
    """The GPU a published folder's README names in its title (`# lmbench on GPU, DATE`)."""
    readme = folder / "README.md"
    title = readme.read_text(encoding="utf-8").splitlines()[0] if readme.is_file() else ""
    found = re.fullmatch(r"# lmbench on (.+), \d{4}-\d{2}-\d{2}", title)
    if not found:
        raise PublishError(f"{folder}: not a published folder (no README.md titled '# lmbench on GPU, DATE')")
    return found[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, nargs="+",
                        help="where stageN.tar.gz and stageN-summary.txt are (with --rerender: published folders)")
    parser.add_argument("--rerender", action="store_true",
                        help="render the reports of published folders again with this checkout's lmbench")
    parser.add_argument("--reports", type=Path, default=Path(__file__).resolve().parent.parent / "reports")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--replace", action="store_true", help="publish a stage already in its folder again")
    again.add_argument("--merge", action="store_true",
                       help="add a rerun of some of a stage's steps to the stage already in its folder")
    parser.add_argument("--allow-rehearsal", action="store_true", help="publish a CPU rehearsal (for tests)")
    args = parser.parse_args(argv)
    try:
        import lmbench.analyze.results  # noqa: F401  (the targets are read with it: checked before unpacking)
    except ImportError:
        print(f"publish-stage: error: lmbench is not importable by {sys.executable}; run this with the Python "
              "lmbench is installed in (pip install -e .)", file=sys.stderr)
        return 2
    try:
        if args.rerender:
            for folder in args.dir:
                gpu = published_gpu(folder)
                done = [stage.name for stage in sorted(folder.glob("stage*")) if rerender(stage)]
                readme = write_readme(folder, gpu)
                update_index(args.reports, folder)
                update_headline(args.reports.parent / "README.md", args.reports, folder)
                print(f"{folder}: rendered {', '.join(done) or 'no report (no runs)'} again; {readme}")
            return 0
        if len(args.dir) > 1:
            raise PublishError("one DIR of tarballs at a time (several folders are for --rerender)")
        tarballs = sorted(args.dir[0].glob("stage*.tar.gz"))
        if not tarballs:
            raise PublishError(f"{args.dir[0]}: no stageN.tar.gz here (what the device tool brought back)")
        for tarball in tarballs:
            stage = inspect(tarball)
            if stage.mode != "gpu" and not args.allow_rehearsal:
                raise PublishError(f"{tarball}: a CPU rehearsal, not a GPU run: reports/ holds real runs only")
            folder = unpack(tarball, stage, args.reports, replace=args.replace, merge=args.merge)
            readme = write_readme(folder, stage.gpu)
            update_index(args.reports, folder)
            update_headline(args.reports.parent / "README.md", args.reports, folder)
            print(f"stage {stage.number}: {folder / f'stage{stage.number}'}; {readme}")
    except PublishError as err:
        print(f"publish-stage: error: {err}", file=sys.stderr)
        return 2
    except (OSError, tarfile.TarError, json.JSONDecodeError) as err:
        print(f"publish-stage: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

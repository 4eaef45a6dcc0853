"""Where the time goes: a step-time breakdown from a torch.profiler Chrome trace.

Each profiled step (a `ProfilerStep#N` range) is cut into disjoint slices of the device's time, so
the fractions sum to 1 of the step:

    optimizer      work inside an `Optimizer.step` / `Optimizer.zero_grad` range
    data           host-to-device copies (CUDA) or DataLoader ranges (CPU)
    attention      attention kernels / ops (flash, memory-efficient, cuDNN, SDPA and their backward)
    matmul         GEMM kernels / mm, addmm, bmm, baddbmm ops
    other          every other kernel or op: norms, elementwise, reductions, the loss, copies
    communication  collectives (NCCL, gloo) while nothing else runs: the exposed part
    idle           the device does nothing: host-side gaps (launch overhead, Python, syncs)

Where several run at once the slice goes to the first in that list, so communication counts only
where it is exposed; `communication_overlap` says which fraction of all collective time overlapped
other work. On CUDA the device's timeline is one GPU's kernels (any stream; the lowest index: nn.DataParallel's
first), each assigned to the step whose host range launched it (by the launch's correlation id); a step spans from
its first kernel to the next step's first kernel, the last to its host range's end or its last kernel if later.
On a CPU the device is the main thread: its aten ops, nested, a slice going by the priority above to the first
category among every op open then, not the innermost op's (an aten::matmul's nested copies count as matmul, an
attention op's matmuls as attention); and the collectives' ranges (gloo:*, c10d::*) of every thread, since gloo
runs each on a thread of its own while the main thread waits for it.

Holistic Trace Analysis (holistictraceanalysis) computes a similar temporal breakdown, but it is
not installable on the offline GPU machine, reads whole trace directories, and does not split
optimizer or attention time; parsing the trace here keeps one dependency-free definition for CPU
and CUDA, tested on real CPU traces and on a hand-written CUDA trace.
"""

from __future__ import annotations

import gzip
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from lmbench.measure.hostload import contended

#: Highest priority first: a slice of time goes to the first category active in it.
PRIORITY = ("optimizer", "data", "attention", "matmul", "other", "communication")
CATEGORIES = (*PRIORITY, "idle")

_ATTENTION = re.compile(r"flash|fmha|attention|sdpa|scaled_dot_product", re.IGNORECASE)
# cuBLAS names its Hopper kernels nvjet_*; older ones and CUTLASS say gemm, xmma or cutlass; inductor's Triton GEMM
# templates (compile_mode=max-autotune) are triton_tem_fused_mm_..., _addmm_..., _bmm_....
_MATMUL = re.compile(r"gemm|cutlass|cublas|xmma|wgmma|nvjet|^triton_tem_|^aten::(mm|addmm|bmm|baddbmm|matmul)$",
                     re.IGNORECASE)
_COMMUNICATION = re.compile(r"nccl|gloo|^c10d::|record_param_comms", re.IGNORECASE)
_OPTIMIZER = re.compile(r"^Optimizer\.(step|zero_grad)#")
_DATA_RANGE = re.compile(r"enumerate\(DataLoader\)|DataLoader")
_LAUNCH_CATEGORIES = ("cuda_runtime", "cuda_driver")
_KERNEL_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")


def load(path: Path) -> dict[str, Any]:
    """A Chrome trace as written by torch.profiler (`.json` or `.json.gz`)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def _category(name: str) -> str:
    if _COMMUNICATION.search(name):
        return "communication"
    if _ATTENTION.search(name):
        return "attention"
    if _MATMUL.search(name):
        return "matmul"
    return "other"


def _slices(intervals: dict[str, list[tuple[float, float]]], start: float, end: float) -> dict[str, float]:
    """Time in [start, end) of each category, disjoint by PRIORITY, and the rest as idle (microseconds)."""
    edges: list[tuple[float, int, str]] = []
    for category, spans in intervals.items():
        for a, b in spans:
            a, b = max(a, start), min(b, end)
            if b > a:
                edges += [(a, 1, category), (b, -1, category)]
    edges.sort(key=lambda e: (e[0], e[1]))
    active: dict[str, int] = defaultdict(int)
    time = dict.fromkeys(CATEGORIES, 0.0)
    last = start
    for at, change, category in edges:
        winner = next((c for c in PRIORITY if active[c] > 0), "idle")
        time[winner] += at - last
        active[category] += change
        last = at
    time["idle"] += end - last
    return time


def _overlap(intervals: dict[str, list[tuple[float, float]]], start: float, end: float) -> float | None:
    """Fraction of collective time during which something else also ran; None without collectives."""
    comm = _slices({"communication": intervals.get("communication", [])}, start, end)["communication"]
    if comm <= 0:
        return None
    exposed = _slices(intervals, start, end)["communication"]
    return 1 - exposed / comm


def _ranges(events: list[dict[str, Any]], pattern: re.Pattern[str]) -> list[tuple[float, float]]:
    return [(e["ts"], e["ts"] + e["dur"]) for e in events if pattern.search(e.get("name", "")) and "dur" in e]


def _within(ts: float, spans: list[tuple[float, float]]) -> bool:
    return any(a <= ts < b for a, b in spans)


def _step_ranges(events: list[dict[str, Any]]) -> list[tuple[float, float]]:
    # The host's ranges only: on CUDA, torch also writes each step's annotation on the device's timeline
    # (`gpu_user_annotation`, from its first kernel to its last); counting those too doubled the steps and
    # averaged every real step with a sliver between two of them.
    steps = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                   if e.get("ph") == "X" and e.get("name", "").startswith("ProfilerStep#")
                   and e.get("cat") != "gpu_user_annotation")
    if not steps:
        raise ValueError("the trace has no ProfilerStep ranges (profile with a schedule and call prof.step())")
    return steps


def _device_of(event: dict[str, Any]) -> int | None:
    return event.get("args", {}).get("device")


def _cuda_timeline(events: list[dict[str, Any]], steps: list[tuple[float, float]]
                   ) -> tuple[list[tuple[float, float]], list[dict[str, list[tuple[float, float]]]], dict[str, list]]:
    """Per step: its device span and category intervals; and every kernel's name -> durations. The device is the
    lowest GPU index among the kernels: a process's only GPU, or nn.DataParallel's first, which also runs the loss
    and the optimizer."""
    host = [e for e in events if e.get("ph") == "X" and e.get("cat") in ("cpu_op", "user_annotation")]
    optimizer = _ranges(host, _OPTIMIZER)
    launches = {e["args"]["correlation"]: e["ts"] for e in events
                if e.get("cat") in _LAUNCH_CATEGORIES and "correlation" in e.get("args", {})}
    every = [e for e in events if e.get("cat") in _KERNEL_CATEGORIES and "dur" in e]
    device = min((d for d in map(_device_of, every) if d is not None), default=None)
    per_step: list[list[dict[str, Any]]] = [[] for _ in steps]
    kernels: dict[str, list[float]] = defaultdict(list)
    for e in every:
        # nn.DataParallel runs every GPU's kernels in one process: merged into one timeline, one GPU's work hid
        # another's idle time (two GPUs each idle half of a step read as 0% idle).
        if _device_of(e) not in (None, device):
            continue
        launched = launches.get(e.get("args", {}).get("correlation"))
        index = next((i for i, (a, b) in enumerate(steps) if launched is not None and a <= launched < b), None)
        if index is None:
            continue
        name = e.get("name", "")
        if e["cat"] == "gpu_memcpy" and "HtoD" in name:
            category = "data"
        elif _within(launched, optimizer):
            category = "optimizer"
        else:
            category = _category(name) if e["cat"] == "kernel" else "other"
        per_step[index].append({"span": (e["ts"], e["ts"] + e["dur"]), "category": category})
        kernels[name].append(e["dur"])
    spans, intervals = [], []
    firsts = [min(k["span"][0] for k in ks) if ks else None for ks in per_step]
    for i, ks in enumerate(per_step):
        if not ks:
            continue
        following = next((f for f in firsts[i + 1:] if f is not None), None)
        # The last step has no next kernel to end at: it ends with its host range, where the next step would have
        # launched, or its last kernel if later. Ended at its last kernel, a host-bound step's idle after it was
        # left out.
        spans.append((firsts[i], following if following is not None
                      else max(steps[i][1], max(k["span"][1] for k in ks))))
        by_category: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for k in ks:
            by_category[k["category"]].append(k["span"])
        intervals.append(by_category)
    return spans, intervals, kernels


def _self_times(ops: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Each op's time less that of the ops nested directly inside it, by name (the CPU's 'kernels')."""
    ordered = sorted(ops, key=lambda e: (e["ts"], -e["dur"]))
    stack: list[dict[str, Any]] = []
    own: dict[int, float] = {}
    for e in ordered:
        while stack and stack[-1]["ts"] + stack[-1]["dur"] <= e["ts"]:
            stack.pop()
        own[id(e)] = e["dur"]
        if stack:
            own[id(stack[-1])] -= e["dur"]
        stack.append(e)
    times: dict[str, list[float]] = defaultdict(list)
    for e in ordered:
        times[e["name"]].append(max(0.0, own[id(e)]))
    return times


def _cpu_timeline(events: list[dict[str, Any]], steps: list[tuple[float, float]]
                  ) -> tuple[list[tuple[float, float]], list[dict[str, list[tuple[float, float]]]], dict[str, list]]:
    main = next(e["tid"] for e in events if e.get("name", "").startswith("ProfilerStep#"))
    ranges = [e for e in events if e.get("ph") == "X" and "dur" in e and e.get("cat") in ("cpu_op", "user_annotation")
              and not e["name"].startswith("ProfilerStep#")]
    host = [e for e in ranges if e.get("tid") == main]
    ops = [e for e in host if e["cat"] == "cpu_op"]
    by_category: dict[str, list[tuple[float, float]]] = defaultdict(list)
    by_category["optimizer"] = _ranges(host, _OPTIMIZER)
    by_category["data"] = _ranges(host, _DATA_RANGE)
    for e in ops:
        by_category[_category(e["name"])].append((e["ts"], e["ts"] + e["dur"]))
    # gloo runs a collective on its own thread (a `gloo:all_reduce` range) while the main thread waits for it with
    # no op open: counted from the main thread alone, DDP's exposed allreduce read as idle and communication as 0.
    # (A pipeline's `gloo:send` / `gloo:recv` ranges, on the main thread, are user annotations, not ops.)
    by_category["communication"] += _ranges(ranges, _COMMUNICATION)
    in_steps = [e for e in ops if _within(e["ts"], steps)]
    return steps, [by_category] * len(steps), _self_times(in_steps)


def breakdown(trace: dict[str, Any], *, top: int = 10, on_gpu: bool = False) -> dict[str, Any]:
    """Mean fractions of the profiled steps' time by category, the step time, and the top kernels by time.

    `on_gpu`: the steps ran on a GPU, so a trace without kernels is the profiler's failure (CUPTI collected
    nothing), an error, not a CPU run to break down by host ops.
    """
    events = [e for e in trace.get("traceEvents", []) if isinstance(e, dict)]
    steps = _step_ranges(events)
    cuda = any(e.get("cat") == "kernel" for e in events)
    if on_gpu and not cuda:
        raise ValueError("the profiler recorded no GPU kernel in the profiled steps (CUPTI collected nothing)")
    spans, intervals, kernels = (_cuda_timeline if cuda else _cpu_timeline)(events, steps)
    if not spans:
        raise ValueError("no device activity inside the profiled steps")
    totals = dict.fromkeys(CATEGORIES, 0.0)
    overlaps = []
    for (start, end), categories in zip(spans, intervals):
        for category, time in _slices(categories, start, end).items():
            totals[category] += time
        overlap = _overlap(categories, start, end)
        if overlap is not None:
            overlaps.append(overlap)
    whole = sum(totals.values())
    ranked = sorted(kernels.items(), key=lambda kv: -sum(kv[1]))[:top]
    return {
        "device": "cuda" if cuda else "cpu",
        "steps": len(spans),
        "step_time_s": whole / len(spans) / 1e6,
        # Three profiled steps' mean follows one slow step (a host hiccup); their median does not.
        "step_time_median_s": statistics.median(end - start for start, end in spans) / 1e6,
        "fractions": {c: totals[c] / whole for c in CATEGORIES},
        "communication_overlap": sum(overlaps) / len(overlaps) if overlaps else None,
        "top_kernels": [{"name": name, "time_s": sum(d) / 1e6 / len(spans), "calls": len(d) / len(spans)}
                        for name, d in ranked],
    }


#: A profiled step this much slower than the window's median is mostly the profiler's own host cost.
PROFILER_SLOWDOWN_NOTE = 0.10


def profiled_slowdown(m: dict[str, Any]) -> float | None:
    """The profiled steps' median against the window's median step, less 1 (records from before the median was
    kept: their mean)."""
    window = m.get("step_time_median_s")
    profiled = m.get("profile_step_time_median_s") or m["profile_step_time_s"]
    return profiled / window - 1 if window else None


def profiled_contention(m: dict[str, Any]) -> str | None:
    """"other processes kept N of M cores busy" where they did during the profiled steps (hostload.contended), else
    None: their slowdown against the window is then contention's too, not the profiler's alone."""
    cores, usable = m.get("profile_host_other_cpu_cores"), m.get("host_usable_cores")
    if not contended(cores, usable, m.get("profile_wall_s")):
        return None
    return f"other processes kept {cores:.1f}" + (f" of {usable:g}" if usable else "") + " cores busy"


def corrected(m: dict[str, Any]) -> bool:
    """Whether the report shows a profiled GPU step's shares of the window's step (window_shares): it ran
    PROFILER_SLOWDOWN_NOTE slower or more. Not on a CPU, where the profiler slows the ops themselves, so the
    premise (the same busy time, more idle) does not hold; records from before `profile_device` are the GPU's."""
    slowdown = profiled_slowdown(m)
    return (slowdown is not None and slowdown > PROFILER_SLOWDOWN_NOTE and m.get("profile_device") != "cpu"
            and isinstance(m.get("time_frac_idle"), (int, float)))


def window_shares(m: dict[str, Any]) -> dict[str, float | None]:
    """Each category's share of the step, the window's step where `corrected`: the device was as busy in the
    window as under the profiler (its kernels are the same), and the difference was idle, the profiler's host
    cost. Otherwise the profiled shares as recorded. A share the record leaves out (None) stays out, and its time
    is in the others': a replayed CUDA graph's optimizer, whose kernels are counted in matmul and other."""
    shares = {c: m.get(f"time_frac_{c}") for c in CATEGORIES}
    if not corrected(m):
        return shares
    # The shares are of the profiled steps' summed time, so a share times their mean step is a category's busy time
    # a step; over the window's step, its share there (their median step, which gates this, would mix a median into
    # a mean-weighted share: fp16 on the H100 read 24.8% idle where its busy time allowed 13.5%, review 2026-11-28).
    scale = m["profile_step_time_s"] / m["step_time_median_s"]
    busy = {c: v * scale for c, v in shares.items() if c != "idle" and v is not None}
    total = sum(busy.values())
    if total > 1:  # busier than the window's step (kernels slowed by the profiler too): the busy shares alone
        busy = {c: v / total for c, v in busy.items()}
    return {**shares, **busy, "idle": max(0.0, 1 - sum(busy.values()))}

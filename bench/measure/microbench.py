"""Kernel microbenchmarks: one op, one shape, every implementation side by side (`lmbench kernels`).

Two times per implementation, both after an L2 flush:
- a call's time between CUDA events, from triton.testing.do_bench (median, p20, p80 in ms; at least
  MIN_SAMPLES calls however slow the op). It includes the host's launch work whenever the host cannot
  keep ahead of the device;
- its device time, from CUDA-graph replay with no host in the loop (graphtime; median, p20, p80 over
  the replays). Achieved bandwidth comes from this one when the implementation could be captured, and
  a note says when the event-timed call was launch-bound.
Device times are taken in interleaved rounds (sidebyside): every implementation's graph is held at once and each
round replays each of them once, in a fresh order, so that a clock or temperature drifting over the session
does not favour whichever ran first; each one's time against ours is the ratio within each round, with a 95%
interval, and "ours faster" or "ours slower" only when the whole interval says so. NVML's SM clock and any
power or heat clock event are read after each round and go beside the figures. When the graphs would not fit
in memory together, they are timed one after another and the rows say so.
Achieved bandwidth counts the bytes an ideal kernel must move, stated per op in `bytes_moved`; a fused
kernel that reads and writes each tensor once reaches it, an unfused one moves more and shows a lower
figure for the same work. That yardstick is a memory-bound op's (the norms). The fused linear + cross-entropy
is compute-bound (8192 x 4096 x 128256: some 7,700 FLOPs a byte against an H100's ridge of about 260), so it
also gets its matmul FLOP rate (`flops`), measured against the matmul ceiling rather than the copy one.
Without a device time (--mode bwd; an implementation that cannot be captured) no rate is given: an
event-timed call may be the host's time, not the kernels'.
"""

from __future__ import annotations

import csv
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmbench.errors import UsageError, one_line
from lmbench.measure import graphtime, sidebyside
from lmbench.measure.stats import percentile

#: Fewest event-timed calls per implementation: do_bench's default 100 ms gave a 53 ms op a single call.
MIN_SAMPLES = 10

#: Interleaved rounds of device timing, each replaying every implementation's graph once (sidebyside).
ROUNDS = 10

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MODES = ("fwd", "bwd", "fwd+bwd")

Impl = Callable[..., Any]


@dataclass(frozen=True, kw_only=True)
class Op:
    name: str
    shape_help: str
    """How --shape reads for this op."""
    inputs: Callable[[tuple[int, ...], torch.dtype, torch.device], dict[str, torch.Tensor]]
    impls: Callable[[], dict[str, Impl | str]]
    """Implementation name -> callable, or the reason it is unavailable."""
    bytes_moved: Callable[[tuple[int, ...], int, str], int]
    bytes_formula: str
    flops: Callable[[tuple[int, ...], str], int] | None = None
    """Matmul FLOPs of one call, for a compute-bound op (None: a memory-bound one, judged by its bytes)."""
    whole_only: dict[str, str] = field(default_factory=dict)
    """Implementation name -> why its forward and backward cannot be timed apart (it is timed fwd+bwd only)."""

    def timed_apart(self, impl: str, mode: str) -> str | None:
        """Why `impl` is not timed in `mode`, or None where it is."""
        return self.whole_only.get(impl) if mode != "fwd+bwd" else None


def _norm_inputs(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    m, n = shape
    return {"x": torch.randn(m, n, dtype=dtype, device=device, requires_grad=True),
            "w": torch.randn(n, dtype=dtype, device=device, requires_grad=True),
            "b": torch.randn(n, dtype=dtype, device=device, requires_grad=True)}


def _rows_bytes(shape: tuple[int, ...], elem: int, mode: str) -> int:
    # fwd: read x, write y; bwd: read x and dy, write dx (vectors of N and M are negligible)
    m, n = shape
    per = {"fwd": 2, "bwd": 3, "fwd+bwd": 5}[mode]
    return per * m * n * elem


def _optional(module: str, build: Callable[[], Impl], why: str) -> Impl | str:
    if importlib.util.find_spec(module) is None:
        return why
    try:
        return build()
    except Exception as err:  # noqa: BLE001 - an optional library that fails to load is just unavailable
        return f"{module} failed to load: {err}"


def _rmsnorm_impls() -> dict[str, Impl | str]:
    from lmbench.kernels.norms import rms_norm, rms_norm_reference

    def liger() -> Impl:
        from liger_kernel.ops.rms_norm import LigerRMSNormFunction

        # As Liger's LigerRMSNorm module runs it (in_place=True, its default): dx is written over dy, so its peak
        # memory holds no dx (the row's note says so).
        return lambda x, w, b: LigerRMSNormFunction.apply(x, w, 1e-6)

    def apex() -> Impl:
        from apex.normalization.fused_layer_norm import fused_rms_norm_affine

        return lambda x, w, b: fused_rms_norm_affine(x, w, (x.shape[-1],), 1e-6)

    eager = lambda x, w, b: rms_norm_reference(x, w, 1e-6)  # noqa: E731
    return {
        "eager": eager,
        "compile": torch.compile(eager),
        "native fused": (lambda x, w, b: F.rms_norm(x, (x.shape[-1],), w, 1e-6)) if hasattr(F, "rms_norm")
        else "torch has no F.rms_norm",
        "lmbench triton": lambda x, w, b: rms_norm(x, w, 1e-6),
        "liger": _optional("liger_kernel", liger, "Liger-Kernel is not installed"),
        "apex": _optional("fused_layer_norm_cuda", apex, "Apex is not installed"),
    }


def _layernorm_impls() -> dict[str, Impl | str]:
    from lmbench.kernels.norms import layer_norm, layer_norm_reference

    def liger() -> Impl:
        from liger_kernel.ops.layer_norm import LigerLayerNormFunction

        return lambda x, w, b: LigerLayerNormFunction.apply(x, w, b, 1e-5)

    def apex() -> Impl:
        from apex.normalization.fused_layer_norm import fused_layer_norm_affine

        return lambda x, w, b: fused_layer_norm_affine(x, w, b, (x.shape[-1],), 1e-5)

    def eager(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # Unfused, op by op: what a hand-written LayerNorm costs without a fused kernel.
        xf = x.float()
        mean = xf.mean(-1, keepdim=True)
        var = (xf - mean).pow(2).mean(-1, keepdim=True)
        return ((xf - mean) * torch.rsqrt(var + 1e-5) * w.float() + b.float()).to(x.dtype)

    return {
        "eager": eager,
        "compile": torch.compile(eager),
        "native fused": lambda x, w, b: layer_norm_reference(x, w, b, 1e-5),
        "lmbench triton": lambda x, w, b: layer_norm(x, w, b, 1e-5),
        "liger": _optional("liger_kernel", liger, "Liger-Kernel is not installed"),
        "apex": _optional("fused_layer_norm_cuda", apex, "Apex is not installed"),
    }


def _lce_inputs(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    bt, h, v = shape
    return {"x": torch.randn(bt, h, dtype=dtype, device=device, requires_grad=True),
            "w": (torch.randn(v, h, dtype=dtype, device=device) * h ** -0.5).requires_grad_(True),
            "labels": torch.randint(0, v, (bt,), device=device)}


def _lce_impls() -> dict[str, Impl | str]:
    from lmbench.kernels.cross_entropy import linear_cross_entropy

    def liger() -> Impl:
        from liger_kernel.ops.fused_linear_cross_entropy import (
            LigerFusedLinearCrossEntropyFunction,
        )

        def call(x: torch.Tensor, w: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            out = LigerFusedLinearCrossEntropyFunction.apply(x, w, labels)
            return out[0] if isinstance(out, tuple) else out  # newer releases also return z-loss etc.

        return call

    eager = lambda x, w, labels: F.cross_entropy(F.linear(x, w).float(), labels)  # noqa: E731
    return {
        "eager": eager,
        "compile": torch.compile(eager),
        "lmbench triton": lambda x, w, labels: linear_cross_entropy(x, w, labels),
        "liger": _optional("liger_kernel", liger, "Liger-Kernel is not installed"),
    }


def _lce_bytes(shape: tuple[int, ...], elem: int, mode: str) -> int:
    # The forward reads the hidden states and the weight; the backward reads both again and writes their gradients;
    # the logits never exist.
    bt, h, v = shape
    return {"fwd": 1, "bwd": 2, "fwd+bwd": 3}[mode] * (bt * h + v * h) * elem


def _lce_flops(shape: tuple[int, ...], mode: str) -> int:
    # The logits' matmul forward (2 BT H V), the input's and the weight's gradients backward (4 BT H V); a design
    # that recomputes the logits in its backward (ours) does 2 BT H V more, which this leaves out (model FLOPs).
    bt, h, v = shape
    return {"fwd": 2, "bwd": 4, "fwd+bwd": 6}[mode] * bt * h * v


OPS: dict[str, Op] = {
    "rmsnorm": Op(name="rmsnorm", shape_help="MxN", inputs=_norm_inputs, impls=_rmsnorm_impls,
                  bytes_moved=_rows_bytes, bytes_formula="fwd 2MN, bwd 3MN, fwd+bwd 5MN elements"),
    "layernorm": Op(name="layernorm", shape_help="MxN", inputs=_norm_inputs, impls=_layernorm_impls,
                    bytes_moved=_rows_bytes, bytes_formula="fwd 2MN, bwd 3MN, fwd+bwd 5MN elements"),
    "linear-ce": Op(name="linear-ce", shape_help="BTxHxV", inputs=_lce_inputs, impls=_lce_impls,
                    bytes_moved=_lce_bytes, bytes_formula="fwd BT·H + V·H, bwd 2(BT·H + V·H), fwd+bwd 3(BT·H + V·H) "
                    "elements; FLOPs fwd 2, bwd 4, fwd+bwd 6 BT·H·V", flops=_lce_flops,
                    # Its forward runs the gradients' matmuls too (Liger 0.8.5's fused_linear_cross_entropy.py);
                    # a repeated backward rescales the same saved gradients again, so they drift.
                    whole_only={"liger": "Liger computes the input's and the weight's gradients in its forward and "
                                "its backward only scales them in place by dy, so its forward and backward cannot "
                                "be timed apart: compare it with --mode fwd+bwd"}),
}


def parse_shape(op: Op, text: str) -> tuple[int, ...]:
    parts = text.lower().split("x")
    want = len(op.shape_help.split("x"))
    if len(parts) != want or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise UsageError(f"--shape {text!r}: {op.name} takes {op.shape_help} (positive integers)")
    return tuple(int(p) for p in parts)


def parse_shapes(op: Op, text: str) -> list[tuple[int, ...]]:
    """'8192x2048,8192x4096' -> each shape once, in order."""
    shapes = [parse_shape(op, part.strip()) for part in text.split(",")]
    return list(dict.fromkeys(shapes))


def against_copy(rows: list[dict[str, Any]], copy_gb_per_s: float) -> list[dict[str, Any]]:
    """Each ok row's achieved bandwidth as a share of the device's measured copy bandwidth (`lmbench ceilings`):
    a memory-bound kernel's distance to what the device can move (none for a compute-bound op's rows, which carry
    a FLOP rate, nor for rows without a device time)."""
    return [{**row, "copy_gb_per_s": copy_gb_per_s, "pct_of_copy": 100 * row["gb_per_s"] / copy_gb_per_s}
            if row.get("status") == "ok" and row.get("gb_per_s") and row.get("tflops") is None else row
            for row in rows]


def against_matmul(rows: list[dict[str, Any]], matmul_tflops: float) -> list[dict[str, Any]]:
    """Each ok row's FLOP rate as a share of the device's measured matmul ceiling in the op's dtype."""
    return [{**row, "matmul_tflops": matmul_tflops, "pct_of_matmul": 100 * row["tflops"] / matmul_tflops}
            if row.get("status") == "ok" and row.get("tflops") else row for row in rows]


def _call(impl: Impl, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return impl(*inputs.values())


def _timed_call(impl: Impl, inputs: dict[str, torch.Tensor], mode: str) -> Callable[[], Any]:
    """One call of `impl` as `mode` times it; a backward runs on a forward made here (and kept) once."""
    out = _call(impl, inputs)
    dy = torch.randn_like(out)
    if mode == "fwd":
        return lambda: _call(impl, inputs)
    if mode == "bwd":
        return lambda: out.backward(dy, retain_graph=True)
    # Its graph (eager linear-CE: 4 GiB of fp32 log-softmax) is not what is timed: `out` goes with this frame.
    return lambda: _call(impl, inputs).backward(dy)


def measure(op: Op, shape: tuple[int, ...], dtype: torch.dtype, mode: str, device: torch.device, *,
            rounds: int = ROUNDS) -> list[dict[str, Any]]:
    """One row per implementation: time quantiles, GB/s, peak memory, its device time against ours, or the reason
    it did not run."""
    from triton.testing import do_bench

    # torch.compile specialises to this shape, as it would in a model of this shape: without a fresh cache a
    # second shape in one process would get a dynamic-shape recompilation instead.
    torch._dynamo.reset()
    elem = torch.finfo(dtype).bits // 8
    moved = op.bytes_moved(shape, elem, mode)
    flops = op.flops(shape, mode) if op.flops else None
    try:
        inputs = op.inputs(shape, dtype, device)
    except torch.OutOfMemoryError as err:
        # A shape whose inputs do not fit ended the command (exit 3), losing the shapes measured before it: it is
        # an `oom` row for each implementation, as one whose own call runs out of memory.
        inputs, no_room = {}, f"its inputs do not fit on the device ({one_line(err)})"
    else:
        no_room = ""
    grads = [t for t in inputs.values() if t.requires_grad]
    rows: list[dict[str, Any]] = []
    timed: dict[str, tuple[Callable[[], Any], float, int]] = {}
    for name, impl in op.impls().items():
        row: dict[str, Any] = {"impl": name, "op": op.name, "shape": "x".join(map(str, shape)),
                               "dtype": str(dtype).removeprefix("torch."), "mode": mode, "bytes_moved": moved}
        unavailable = impl if isinstance(impl, str) else op.timed_apart(name, mode)
        if unavailable:
            rows.append({**row, "status": "skipped", "reason": unavailable})
            continue
        if no_room:
            rows.append({**row, "status": "oom", "reason": no_room})
            continue
        try:
            fn = _timed_call(impl, inputs, mode)
            fn()
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            # Above what was allocated before the call: its inputs and the gradients of the call before, which a
            # call adds into (the memory the implementation itself needs); and in all, those included (counted from
            # the tensors, not the allocator: earlier rows' closures still hold their dy, a reviewer found).
            peak = torch.cuda.max_memory_allocated(device) - base
            held = [t for t in inputs.values()] + [t.grad for t in grads if t.grad is not None]
            total = peak + sum(t.numel() * t.element_size() for t in held)
            estimate_ms = start.elapsed_time(end)
            # do_bench counts calls as rep / (its own estimate, flush included): half as much again keeps the
            # slowest ops at MIN_SAMPLES calls or more.
            median, p20, p80 = do_bench(fn, rep=max(100, int(1.5 * MIN_SAMPLES * (estimate_ms + 1))),
                                        quantiles=[0.5, 0.2, 0.8], grad_to_none=grads)
        except Exception as err:  # noqa: BLE001 - one failing implementation is a row, not the end
            # Out of memory is a status of its own (as a training record's), not an error of the implementation.
            status = "oom" if isinstance(err, torch.OutOfMemoryError) else "error"
            rows.append({**row, "status": status, "reason": one_line(err)})
            continue
        row = {**row, "status": "ok", "reason": None, "time_median_ms": median, "time_p20_ms": p20,
               "time_p80_ms": p80, "peak_mem_bytes": peak, "peak_mem_total_bytes": total}
        if name == "liger" and op.name == "rmsnorm" and mode != "fwd":
            row["note"] = ("in place: Liger writes dx over dy (its module's default), so no dx is allocated; each "
                           "call's dy is the call before's dx, whose values drift (to inf and NaN within ~100 calls) "
                           "while a norm's kernels run the same instructions whatever the values")
        rows.append(row)
        if mode != "bwd":  # a backward's saved forward (eager linear-CE: GiBs) is not held beyond its row
            timed[name] = (fn, estimate_ms, peak)
    if no_room:
        return rows
    if mode == "bwd":
        # Its forward ran outside the graph, on another stream: the graph would hold the flushes and no more.
        return [with_device_time(row, None, moved, "no device time in --mode bwd", flops=flops)
                if row["status"] == "ok" else row for row in rows]
    timing = sidebyside.device_times(timed, grads, device=device, rounds=rounds)
    done = [with_device_time(row, timing.samples.get(row["impl"]), moved, timing.why_not.get(row["impl"], ""),
                             flops=flops) | timing.columns() if row["status"] == "ok" else row for row in rows]
    return sidebyside.against(done, timing, sidebyside.OURS)


def with_device_time(row: dict[str, Any], device_ms: list[float] | None, moved: int, why_not: str = "", *,
                     flops: int | None = None) -> dict[str, Any]:
    """The row with its device-time quantiles, GB/s (and TFLOP/s, for a compute-bound op) from the device time, and
    a note when the event-timed call was launch-bound. Without a device time no rate: the event-timed call may be
    the host's time (a launch-bound call read 0.5-0.8 ms for 0.08 ms of kernels on the H100), not the kernels'."""
    median = percentile(device_ms, 50) if device_ms else 0.0
    notes = [row.get("note")]
    if median <= 0:
        # A graph of near-empty work can read at or under its flushes alone: no figure to divide by.
        why_not = why_not or (f"no device time (a median of {median:.4f} ms)" if device_ms else "no device time")
        return {**row, "bandwidth_from": None, "gb_per_s": None, "tflops": None,
                "note": "; ".join(filter(None, [*notes, f"{why_not}: no GB/s from an event-timed call"]))}
    notes.append(graphtime.launch_bound(row["time_median_ms"], median))
    return {**row, "device_median_ms": median, "device_p20_ms": percentile(device_ms, 20),
            "device_p80_ms": percentile(device_ms, 80), "bandwidth_from": "device",
            "gb_per_s": moved / (median * 1e-3) / 1e9,
            "tflops": flops / (median * 1e-3) / 1e12 if flops else None,
            "note": "; ".join(filter(None, notes)) or None}


def write_csv(rows: list[dict[str, Any]], path: Path, env: dict[str, Any]) -> None:
    columns = ["op", "shape", "dtype", "mode", "impl", "status", "time_median_ms", "time_p20_ms", "time_p80_ms",
               "device_median_ms", "device_p20_ms", "device_p80_ms", "vs_ours", "vs_ours_low", "vs_ours_high",
               "vs_ours_verdict", "rounds", "device_timing", "sm_clock_min_mhz", "sm_clock_max_mhz", "clock_events",
               "gb_per_s", "bandwidth_from", "pct_of_copy", "copy_gb_per_s", "tflops", "pct_of_matmul",
               "matmul_tflops", "bytes_moved", "peak_mem_bytes", "peak_mem_total_bytes", "note", "reason", "gpu",
               "torch", "triton", "cuda"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, **env})

"""The device's own ceilings, measured: a large matmul's TFLOP/s in each math mode (bf16, fp16, tf32, fp32 with
TF32 off) and a large device-to-device copy's GB/s.

Datasheet peaks are upper bounds no kernel reaches; these are what this card, at its current
clocks and power limit, delivers on the simplest possible workloads, a second yardstick for MFU.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from lmbench.errors import UsageError, read_json_input

#: Seconds of each workload before and while it is timed: a 1.4 ms GEMM timed 20 times after 3 warm-ups was 28 ms of
#: work, short against the clocks' and power limit's settling, and the H100's bf16 ceiling read 770-784 TFLOP/s and
#: its tf32 380-407 across sessions.
WARMUP_S = 0.5
TIMED_S = 0.5
#: Seconds of launches between one pair of CUDA events: the host's launch of the first call, after the start event,
#: is device time the events count (a few microseconds); several calls back to back spread it (a reviewer: one call
#: of a 1.4 ms copy an event pair lowered the copy ceiling, so raised every kernel's share of it).
BATCH_S = 0.01


def measure(device: Any, *, matmul_n: int = 8192, copy_bytes: int = 2**31, repeats: int = 20) -> dict[str, Any]:
    """Median of timed runs (CUDA events), at least `repeats` and TIMED_S of work, after WARMUP_S of the same work;
    random data (zeros would flatter the matmul)."""
    import torch

    from lmbench.measure.mathmode import matmul_mode
    from lmbench.measure.sidebyside import clock_reader

    src = torch.empty(copy_bytes // 2, device=device, dtype=torch.bfloat16).normal_()
    dst = torch.empty_like(src)

    def once(fn: Any, calls: int = 1) -> float:
        """Seconds a call, over `calls` launched back to back between two events."""
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / calls

    clocks: dict[str, Any] = {}
    reader = clock_reader(device) if device.type == "cuda" else None

    def timed(fn: Any, name: str) -> float:
        # The fastest of three first calls (the first may carry cuBLAS's set-up) sizes the warm-up and the runs.
        each = max(1e-6, min(once(fn) for _ in range(3)))
        for _ in range(math.ceil(WARMUP_S / each)):
            fn()
        calls = max(1, math.ceil(BATCH_S / each))
        seconds = statistics.median(once(fn, calls) for _ in range(max(repeats, math.ceil(TIMED_S / (each * calls)))))
        if reader is not None:
            mhz, events = reader()
            clocks[name] = {"sm_clock_mhz": mhz, "clock_events": events}
        return seconds

    def gemm_tflops(dtype: Any, precision: str) -> float:
        a = torch.randn(matmul_n, matmul_n, device=device, dtype=dtype)
        b = torch.randn(matmul_n, matmul_n, device=device, dtype=dtype)
        with matmul_mode(precision):
            return 2 * matmul_n**3 / timed(lambda: torch.mm(a, b), f"{precision}_matmul") / 1e12

    # Each mode as a precision of that mode runs it: fp32 with TF32 off (lmbench's fp32), tf32 with it on.
    matmul_tflops = {mode: gemm_tflops(dtype, precision) for mode, dtype, precision in (
        ("bf16", torch.bfloat16, "bf16"), ("fp16", torch.float16, "fp16"), ("tf32", torch.float32, "tf32"),
        ("fp32", torch.float32, "fp32"))}
    copy_s = timed(lambda: dst.copy_(src), "copy")
    return {
        "device": torch.cuda.get_device_name(device),
        **{f"{mode}_matmul_tflops": value for mode, value in matmul_tflops.items()},
        "bf16_matmul_n": matmul_n,
        # A copy reads and writes every byte.
        "copy_gb_per_s": 2 * copy_bytes / copy_s / 1e9,
        "copy_bytes": copy_bytes,
        "repeats": repeats,
        "method": (f"median of CUDA-event-timed runs (at least {repeats}, and {TIMED_S} s of work), each of "
                   f"{BATCH_S * 1e3:g} ms of calls launched back to back, after {WARMUP_S} s of warm-up; random data "
                   "of each dtype (bf16 for the copy)"),
        # NVML's SM clock and any power or heat clock event right after each workload's timed runs (none: no NVML).
        "clocks": clocks or None,
    }


def load(path: Path) -> dict[str, Any]:
    """Figures written by `lmbench ceilings --out`; anything else is a one-line UsageError naming the file.

    Every ceiling the file holds must be a positive, finite number: one mode's string made the report's format fail
    (exit 3) and a negative one drew a negative roof, so a figure no measurement gives is refused by its key.
    """
    where = f"--ceilings {str(path)!r}"
    data = read_json_input(path, where=where, kind="ceilings", made_by="lmbench ceilings --out FILE on the GPU")
    if not isinstance(data, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(data), "a number")
        raise UsageError(f"{where}: holds {kind}, not the JSON object of figures lmbench ceilings --out writes")
    if data.get("status") == "skipped":
        raise UsageError(f"{where}: holds no figures: lmbench ceilings was skipped there ({data.get('reason')})")
    for key in ("bf16_matmul_tflops", "copy_gb_per_s"):
        if not _ceiling(data.get(key)):
            raise UsageError(f"{where}: needs a positive number {key} (lmbench ceilings --out writes it)")
    for key, value in data.items():
        if key.endswith(CEILING_SUFFIXES) and not _ceiling(value):
            unit = "TFLOP/s" if key.endswith("_matmul_tflops") else "GB/s"
            raise UsageError(f"{where}: {key} is {json.dumps(value)}; allowed: a positive, finite number of {unit} "
                             "(as lmbench ceilings --out writes it)")
    if not isinstance(data.get("device"), str) or not data["device"].strip():
        raise UsageError(f"{where}: needs the name of the device it was measured on, `device` (lmbench ceilings "
                         "--out writes it): a card's ceilings are no roof for another's runs")
    return data


#: The keys of a ceilings file that hold a measured ceiling (bf16_matmul_tflops, copy_gb_per_s and the like).
CEILING_SUFFIXES = ("_matmul_tflops", "_gb_per_s")


def _ceiling(value: Any) -> bool:
    """Whether `value` is a ceiling a measurement gives: a positive, finite number (a JSON true is no number)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def measured_on(record: dict[str, Any]) -> str:
    """The device a record's figures were measured on, as `lmbench ceilings` names one (torch's device name): its
    GPUs' names (several, comma-separated, when a job spanned different cards), else its environment's device;
    a CPU is "a CPU (its name)", and a record that says neither is "an unrecorded device"."""
    names = (record.get("metrics") or {}).get("device_names")
    if isinstance(names, list) and names:
        return ", ".join(map(str, names))
    device = (record.get("env") or {}).get("device") or {}
    if device.get("type") == "cpu":
        return f"a CPU ({device.get('name') or 'unnamed'})"
    return device.get("name") or "an unrecorded device"


def applies_to(ceilings: dict[str, Any], record: dict[str, Any]) -> bool:
    """Whether `ceilings` were measured on the device `record` ran on: another card's (an H100's against an A100's
    run), or any card's against a CPU run, are no roof for it (an H100's fp32 ceiling read a CPU step as 32118x
    from its roof)."""
    return measured_on(record) == ceilings.get("device")

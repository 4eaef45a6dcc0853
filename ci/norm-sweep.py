#!/usr/bin/env python3
"""Launch plans of our norms' backward, timed against the one every call uses, on a CUDA GPU.

    python3 ci/norm-sweep.py [--rows 8192] [--widths 2048,4096,8192] [--reps 30] [--csv FILE]

On the H100 (2026-11-27, ci/gpu-validate.sh stage 7) our RMSNorm fwd+bwd reached 67% of the measured copy
bandwidth at 8192x2048, LayerNorm 59-73%, against issue 13's 80%, and LayerNorm ran slower than Liger's at
4096 and 8192. The backward walks M / programs rows a program, one at a time, with two programs an SM: few
bytes in flight. This times its other plans (lmbench.kernels.norms.BackwardPlan: programs per SM, warps, and a
software-pipelined row loop) on RMSNorm and LayerNorm, bf16, each on the same inputs: the backward alone (the
kernel and the sum of its partial dW/dB rows, as every call runs them), device time from CUDA events around
each call, the median of `--reps`. Every plan's dx and dW are checked against the default plan's first. The
table gives each plan's time, GB/s (x, dy and dx moved once, the weight's gradient ignored) and its speedup
over the default; `--csv` keeps every row.

Without CUDA it says so and exits 0, unless TRITON_INTERPRET=1 (a rehearsal): then a few plans run on a
small CPU shape and their figures mean nothing.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import statistics
import sys
import time


def plans(block: int, *, rehearse: bool) -> list:  # type: ignore[type-arg]
    """The default plan first, then every other combination of programs per SM, warps and load stages."""
    from lmbench.kernels.norms import BackwardPlan, backward_plan

    default = backward_plan(block)
    if rehearse:
        return [default, BackwardPlan(4, default.warps, 2)]
    warps = sorted({max(4, default.warps // 2), default.warps, min(32, default.warps * 2)})
    others = [BackwardPlan(p, w, s) for p, w, s in itertools.product((2, 4, 8), warps, (0, 2, 3))]
    return [default] + [plan for plan in others if plan != default]


def sweep(torch, device: str, rows: int, widths: list[int], reps: int, rehearse: bool):  # type: ignore[no-untyped-def]
    from lmbench.kernels import norms

    cuda = device == "cuda"
    out = []
    for op, width in itertools.product(("rmsnorm", "layernorm"), widths):
        rms = op == "rmsnorm"
        gen = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(rows, width, device=device, dtype=torch.bfloat16, generator=gen)
        w = torch.randn(width, device=device, dtype=torch.bfloat16, generator=gen)
        b = None if rms else torch.randn(width, device=device, dtype=torch.bfloat16, generator=gen)
        dy = torch.randn(rows, width, device=device, dtype=torch.bfloat16, generator=gen)
        _, _, mean, rstd = norms.norm_forward(x, w, b, 1e-6, rms=rms)
        moved = 3 * rows * width * x.element_size()

        def backward(plan):  # type: ignore[no-untyped-def]
            dx, dw_part, db_part, _ = norms.launch_backward(dy, x, w, b is not None, mean, rstd, rms=rms, plan=plan)
            return dx, dw_part.sum(0), None if db_part is None else db_part.sum(0)

        reference = None
        for plan in plans(norms._block(width), rehearse=rehearse):
            row = {"op": op, "shape": f"{rows}x{width}", "programs_per_sm": plan.programs_per_sm,
                   "warps": plan.warps, "load_stages": plan.load_stages, "default": reference is None}
            try:
                result = backward(plan)
                if reference is None:
                    reference = result
                else:
                    for name, got, want in zip(("dx", "dw", "db"), result, reference):
                        if want is not None and not torch.allclose(got.float(), want.float(), rtol=2e-2, atol=2e-2):
                            raise AssertionError(f"{name} differs from the default plan's")
                times = []
                for _ in range(3 if rehearse else 5):
                    backward(plan)
                for _ in range(reps):
                    if cuda:
                        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        start.record()
                        backward(plan)
                        end.record()
                        times.append((start, end))
                    else:
                        begin = time.perf_counter()
                        backward(plan)
                        times.append(time.perf_counter() - begin)
                if cuda:
                    torch.cuda.synchronize()
                    times = [start.elapsed_time(end) / 1e3 for start, end in times]
                median = statistics.median(times)
                row.update(status="ok", time_median_us=median * 1e6, gb_per_s=moved / median / 1e9)
            except Exception as err:  # a plan Triton cannot compile or run is a row, not the end of the sweep
                row.update(status="error", reason=f"{type(err).__name__}: {str(err).splitlines()[0][:160]}")
            out.append(row)
    return out


def table(rows: list[dict]) -> str:  # type: ignore[type-arg]
    lines = [f"{'op':<10}{'shape':<11}{'prog/SM':>8}{'warps':>6}{'stages':>7}{'us':>9}{'GB/s':>8}{'vs default':>11}"]
    defaults = {(r["op"], r["shape"]): r.get("time_median_us") for r in rows if r["default"]}
    for r in sorted(rows, key=lambda r: (r["op"], r["shape"], r.get("time_median_us") or float("inf"))):
        base = defaults.get((r["op"], r["shape"]))
        if r["status"] != "ok":
            lines.append(f"{r['op']:<10}{r['shape']:<11}{r['programs_per_sm']:>8}{r['warps']:>6}{r['load_stages']:>7}"
                         f"  {r['status']}: {r.get('reason', '')}")
            continue
        speed = f"{base / r['time_median_us']:.2f}x" if base else "-"
        mark = " (default)" if r["default"] else ""
        lines.append(f"{r['op']:<10}{r['shape']:<11}{r['programs_per_sm']:>8}{r['warps']:>6}{r['load_stages']:>7}"
                     f"{r['time_median_us']:>9.1f}{r['gb_per_s']:>8.0f}{speed:>11}{mark}")
    return "\n".join(lines)


def best(rows: list[dict]) -> str:  # type: ignore[type-arg]
    """Each shape's fastest plan against the default, last in the output (the summary shows a log's tail)."""
    lines = ["best plan a shape:"]
    for op, shape in dict.fromkeys((r["op"], r["shape"]) for r in rows):
        mine = [r for r in rows if (r["op"], r["shape"]) == (op, shape) and r["status"] == "ok"]
        default = next((r for r in mine if r["default"]), None)
        if not mine or default is None:
            lines.append(f"  {op} {shape}: the default plan did not run")
            continue
        top = min(mine, key=lambda r: r["time_median_us"])
        lines.append(f"  {op} {shape}: default {default['time_median_us']:.1f} us ({default['gb_per_s']:.0f} GB/s); "
                     f"best {top['programs_per_sm']}/SM, {top['warps']} warps, {top['load_stages']} stages "
                     f"{top['time_median_us']:.1f} us ({top['gb_per_s']:.0f} GB/s, "
                     f"{default['time_median_us'] / top['time_median_us']:.2f}x)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--widths", default="2048,4096,8192")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--csv", default=None)
    args = parser.parse_args()
    import torch

    rehearse = os.environ.get("TRITON_INTERPRET") == "1"
    if not torch.cuda.is_available() and not rehearse:
        print(f"skipped: ci/norm-sweep.py needs a CUDA GPU (none visible; torch {torch.__version__})")
        return 0
    device = "cuda" if torch.cuda.is_available() and not rehearse else "cpu"
    widths = [int(w) for w in args.widths.split(",")]
    rows, reps = (args.rows, args.reps) if device == "cuda" else (64, 3)
    found = sweep(torch, device, rows, widths if device == "cuda" else [256], reps, rehearse)
    if device == "cuda":
        print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, backward only (kernel + partial sums)")
    else:
        print("rehearsal on the CPU (TRITON_INTERPRET=1): the figures mean nothing")
    print(table(found))
    print(best(found))
    if args.csv:
        fields = ["op", "shape", "programs_per_sm", "warps", "load_stages", "default", "status", "time_median_us",
                  "gb_per_s", "reason"]
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(found)
    return 1 if any(r["status"] != "ok" and r["default"] for r in found) else 0


if __name__ == "__main__":
    sys.exit(main())

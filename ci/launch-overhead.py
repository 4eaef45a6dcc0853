#!/usr/bin/env python3
"""Host cost of one launch: where our Triton kernel set's time a call goes when the GPU is not the bottleneck.

    python3 ci/launch-overhead.py [--calls 2000] [--csv FILE]

On the H100 (2026-11-27, ci/gpu-validate.sh stage 7) our RMSNorm's fwd+bwd took 0.08 ms of device time
and 0.5-0.8 ms a call with the host in the loop, as did Liger's and torch.compile's, against 0.13 ms for
torch's native kernel; stage 4's profiles of GPT-2 with our kernels left the GPU idle for most of each
step. This splits that host time: a tiny torch op, an empty Triton kernel, one with a norm's sixteen
arguments, our norm's forward alone (wrapper and launch), and fwd+bwd through autograd for ours, torch's
native kernel and Liger's. Each case runs on a 8x2048 bf16 tensor (the device's work is negligible) `--calls`
times after a warm-up; `host us` is the time until the loop returns, `wall us` until the device has
finished too (one synchronisation after the loop, none inside). Without CUDA it says so and exits 0, unless
TRITON_INTERPRET=1 (a rehearsal): then every case runs a few times on the CPU and its figures mean nothing.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections.abc import Callable


def cases(torch, device: str, rows: int = 8, width: int = 2048
          ) -> dict[str, Callable[[], object]]:  # type: ignore[no-untyped-def]
    import triton
    import triton.language as tl

    from lmbench.kernels import norms

    @triton.jit
    def empty(x_ptr):
        pass

    @triton.jit
    def sixteen(a, b, c, d, e, f, g, h, i, j, k, m, n, o, p, q, BLOCK: tl.constexpr, FLAG: tl.constexpr):
        pass

    x = torch.randn(rows, width, device=device, dtype=torch.bfloat16, requires_grad=True)
    w = torch.ones(width, device=device, dtype=torch.bfloat16, requires_grad=True)
    small = torch.zeros(16, device=device)
    ints = list(range(12))
    found = {
        "torch add_ (one kernel)": lambda: small.add_(1),
        "triton empty kernel": lambda: empty[(1,)](small),
        "triton 16 args + 2 constexpr": lambda: sixteen[(1,)](small, small, small, small, *ints, BLOCK=128, FLAG=True),
        "ours rmsnorm fwd (no grad)": lambda: norms.norm_forward(x.detach(), w.detach(), None, 1e-6, rms=True),
        "ours rmsnorm fwd+bwd": lambda: norms.rms_norm(x, w).sum().backward(),
        "native rms_norm fwd+bwd": lambda: torch.nn.functional.rms_norm(x, (width,), w, 1e-6).sum().backward(),
    }
    try:
        from liger_kernel.ops.rms_norm import LigerRMSNormFunction

        found["liger rmsnorm fwd+bwd"] = lambda: LigerRMSNormFunction.apply(x, w, 1e-6).sum().backward()
    except ImportError:
        pass
    return found


def time_one(torch, call: Callable[[], object], calls: int, warmup: int = 20
             ) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        call()
    sync()
    start = time.perf_counter()
    for _ in range(calls):
        call()
    host = time.perf_counter() - start
    sync()
    wall = time.perf_counter() - start
    return host / calls * 1e6, wall / calls * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--csv", help="also write the table here")
    args = parser.parse_args(argv)
    import torch

    rehearsal = not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") == "1"
    if not torch.cuda.is_available() and not rehearsal:
        print(f"skipped: launch overhead needs a CUDA GPU (none visible; torch {torch.__version__})")
        return 0
    import triton

    if rehearsal:
        from lmbench.kernels import interpreter

        interpreter.mend()
        print("rehearsal: a CPU under Triton's interpreter, 3 calls a case; the figures mean nothing")
    rows = []
    for name, call in cases(torch, "cpu" if rehearsal else "cuda").items():
        try:
            host, wall = time_one(torch, call, 3 if rehearsal else args.calls, warmup=1 if rehearsal else 20)
        except Exception as err:  # one case that cannot run is a row saying why, not the end of the table
            rows.append({"case": name, "host_us_per_call": None, "wall_us_per_call": None,
                         "error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:160]})
            continue
        rows.append({"case": name, "host_us_per_call": round(host, 2), "wall_us_per_call": round(wall, 2),
                     "error": ""})
    device = "cpu" if rehearsal else torch.cuda.get_device_name()
    calls = 3 if rehearsal else args.calls
    print(f"{device}; torch {torch.__version__}, triton {triton.__version__}; {calls} calls each")
    print(f"{'case':34} {'host us':>9} {'wall us':>9}")
    for r in rows:
        if r["error"]:
            print(f"{r['case']:34} {'-':>9} {'-':>9}  {r['error']}")
        else:
            print(f"{r['case']:34} {r['host_us_per_call']:9.1f} {r['wall_us_per_call']:9.1f}")
    if args.csv:
        with open(args.csv, "w", newline="", encoding="utf-8") as out:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

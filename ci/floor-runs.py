#!/usr/bin/env python3
"""How many runs a noise floor wants: `lmbench calibrate --runs R`, simulated through lmbench's own statistics.

    python3 ci/floor-runs.py [--runs 3 5] [--process 0.01] [--offset 0 0.01] [--repeats 3] [--trials 3000]

Each trial calibrates one configuration the way `calibrate` does (lmbench.analyze.noise.estimate over `--runs`
runs of `--repeats` repeats, log-normal tokens/s with a process noise of `--process` and a run offset of
`--offset`, both standard deviations of the log), then gates one fresh repeat a side against another with that floor
(lmbench.analyze.compare.decide, 5% threshold, no change between the sides, each side its own run offset). It prints
the share of gates not `unchanged` (what `--strict` fails), of intervals that miss the true ratio 1 (nominal 5%),
and the floor_1v1's median and 90th percentile. A configuration's run term rests on R - 1 degrees of freedom: its t
quantile falls from 4.30 at 3 runs to 2.78 at 5. No GPU and no lmbench run; docs/gate.md quotes the figures.
"""

from __future__ import annotations

import argparse
import statistics


def gates(runs: int, process: float, offset: float, *, repeats: int, trials: int, threshold: float,
          seed: int) -> tuple[float, float, float, float]:
    """(share not unchanged, share missing 1, floor_1v1 median, floor_1v1 90th percentile) over `trials` gates."""
    import numpy as np

    from lmbench.analyze.compare import decide
    from lmbench.analyze.noise import estimate

    rng = np.random.default_rng(seed)
    blocked = missed = 0
    floors = []
    for _ in range(trials):
        floor = estimate([list(1000 * np.exp(rng.normal(0, offset) + rng.normal(0, process, repeats)))
                          for _ in range(runs)])
        base, head = ([1000 * float(np.exp(rng.normal(0, offset) + rng.normal(0, process)))] for _ in range(2))
        verdict = decide(base, head, threshold=threshold, higher_is_better=True, noise=floor)
        blocked += verdict.verdict != "unchanged"
        missed += not verdict.ci_low <= 1 <= verdict.ci_high
        floors.append(floor.floor(1))
    return blocked / trials, missed / trials, statistics.median(floors), float(np.quantile(floors, 0.9))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--process", type=float, default=0.01)
    parser.add_argument("--offset", type=float, nargs="+", default=[0.0, 0.01])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trials", type=int, default=3000)
    parser.add_argument("--threshold", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=20261128)
    args = parser.parse_args(argv)
    print(f"1-vs-1 gates with a floor of R runs of {args.repeats} repeats: process noise {args.process:.1%}, "
          f"threshold {args.threshold:.0%}, {args.trials} trials a row")
    print("offset  runs  not unchanged  missed 1  floor_1v1 median  p90")
    for offset in args.offset:
        for runs in args.runs:
            blocked, missed, median, p90 = gates(runs, args.process, offset, repeats=args.repeats,
                                                 trials=args.trials, threshold=args.threshold, seed=args.seed)
            print(f"{offset:6.1%}  {runs:4d}  {blocked:13.1%}  {missed:8.1%}  {median:16.2%}  {p90:5.2%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

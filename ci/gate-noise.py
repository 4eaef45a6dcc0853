#!/usr/bin/env python3
"""How often the regression gate fails a pull request that changed nothing: a simulation through compare's own code.

    python3 ci/gate-noise.py [--repeats 3 5] [--sigma 0.005 0.01 0.02] [--configs 3] [--trials 2000]

Each trial draws the CI template's setting (ci/github/lmbench-regression.yml): `--configs` configurations, each
with `--repeats` ok repeats a side whose tokens/s is log-normal with a process noise of `--sigma` (the spread of
log(tokens/s) between fresh processes) and no change between the sides; no run offset, which the template's ABBA
order shares between them; no noise floor. It runs lmbench.analyze.compare.compare and gate.exit_code on those
records, with and without --strict, and prints the share of trials that exit 1 (the job fails), with a 95% Wilson
interval. No GPU and no lmbench run: the figures are of the statistics alone, which docs/gate.md quotes.
"""

from __future__ import annotations

import argparse
import math


def records(rng, configs: int, repeats: int, sigma: float) -> list[dict]:  # type: ignore[no-untyped-def]
    return [{"config_key": f"c{k}", "status": "ok", "config": {},
             "metrics": {"tokens_per_s": float(1000 * math.exp(rng.normal(0, sigma)))}}
            for k in range(configs) for _ in range(repeats)]


def wilson(hits: int, trials: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    z, p = 1.96, hits / trials
    centre, half = p + z * z / (2 * trials), z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return (centre - half) / (1 + z * z / trials), (centre + half) / (1 + z * z / trials)


def failure_rates(repeats: int, sigma: float, *, configs: int, trials: int, threshold: float,
                  seed: int) -> tuple[int, int]:
    """(trials that exit 1 with --strict, trials that exit 1 without) out of `trials` unchanged pull requests."""
    import numpy as np

    from lmbench.analyze.compare import compare
    from lmbench.analyze.gate import exit_code

    rng = np.random.default_rng(seed)
    strict = loose = 0
    for _ in range(trials):
        verdicts = compare(records(rng, configs, repeats, sigma), records(rng, configs, repeats, sigma),
                           threshold=threshold, strict=True)
        strict += exit_code(verdicts) == 1
        loose += any(v.verdict in ("regression", "failed", "missing") for v in verdicts)
    return strict, loose


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, nargs="+", default=[3, 5, 6])
    parser.add_argument("--sigma", type=float, nargs="+", default=[0.005, 0.01, 0.02],
                        help="process noise: the standard deviation of log(tokens/s) between fresh processes")
    parser.add_argument("--configs", type=int, default=3)
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--threshold", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=20261128)
    args = parser.parse_args(argv)
    print(f"unchanged pull requests failed by the gate: {args.configs} configurations, threshold "
          f"{args.threshold:.0%}, {args.trials} trials a row")
    print("repeats  sigma   --strict exit 1 (95% CI)    without --strict")
    for repeats in args.repeats:
        for sigma in args.sigma:
            strict, loose = failure_rates(repeats, sigma, configs=args.configs, trials=args.trials,
                                          threshold=args.threshold, seed=args.seed)
            low, high = wilson(strict, args.trials)
            print(f"{repeats:>7}  {sigma:.1%}  {strict / args.trials:6.1%} ({low:5.1%}-{high:5.1%})     "
                  f"{loose / args.trials:.1%}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The table lmbench.plan.parity.TOLERANCES is set from: how far each precision's smoothed loss strayed from its
reference on healthy runs, and how far an fp32 rerun strayed from itself (nondeterminism).

    python ci/parity-table.py RESULTS.jsonl [RESULTS.jsonl ...]

Several results files make one table (ci/gpu-validate.sh's stage 5 runs one `lmbench run --parity` a model, side
by side). Printed: the largest deviation per precision with where it was, then each model's worst, then the
rows whose parity ran without dropout (lmbench.plan.parity.other_dropout_masks) and the skipped ones.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from lmbench.plan.parity import ema

RERUN = "fp32 (rerun)"


def read(paths: list[Path]) -> list[dict]:
    records = []
    for path in paths:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                records.append(json.loads(line))
            except ValueError:
                print(f"parity-table: {path}:{number}: not a JSON line, left out", file=sys.stderr)
    return records


def deviations(records: list[dict]) -> list[tuple[str, str, int, bool, float]]:
    """(precision or RERUN, model, seed, dropout, largest relative deviation) of every judged row and every fp32
    reference measured twice."""
    found = []
    reruns: dict[str, dict[int, list[float]]] = defaultdict(dict)
    where: dict[str, dict] = {}
    for r in records:
        m, c = r.get("metrics") or {}, r["config"]
        reference = c["kernels"] == "eager" and c["checkpointing"] == "none" and c["precision"] == "fp32"
        if r["status"] == "ok" and reference:
            # Keyed by the whole configuration: a parity run may hold fp32 references with and without dropout.
            reruns[r["config_key"]][r["repeat"]] = ema(r["losses"])
            where[r["config_key"]] = c
        elif m.get("parity_max_rel_dev") is not None:
            found.append((c["precision"], c["model"], c["seed"], c.get("dropout", True), m["parity_max_rel_dev"]))
    for key, repeats in reruns.items():
        c = where[key]
        for repeat in sorted(repeats)[1:]:
            first = repeats[min(repeats)]
            dev = max(abs(a - b) / abs(b) for a, b in zip(repeats[repeat], first))
            found.append((RERUN, c["model"], c["seed"], c.get("dropout", True), dev))
    return found


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    records = read([Path(a) for a in argv])
    found = deviations(records)
    worst: dict[str, tuple[float, str]] = {}
    per_model: dict[str, dict[str, float]] = defaultdict(dict)
    for precision, model, seed, dropout, dev in found:
        label = f"{model} seed {seed}" + ("" if dropout else ", no dropout")
        if dev >= worst.get(precision, (-1.0, ""))[0]:
            worst[precision] = (dev, label)
        per_model[precision][model] = max(dev, per_model[precision].get(model, 0.0))
    print("precision        largest relative deviation of the EMA loss from its reference (fp32; amp-bf16 for FP8)")
    for name, (dev, label) in sorted(worst.items()):
        models = ", ".join(f"{model} {value:.3g}" for model, value in sorted(per_model[name].items()))
        print(f"{name:<16} {dev:.3g}  ({label})   per model: {models}")
    undropped = sorted({f"{r['config']['model']} {r['config']['precision']}" for r in records
                        if r["config"].get("dropout", True) is False})
    if undropped:
        print(f"without dropout  {', '.join(undropped)}")
    for line in sorted({f"{r['config']['precision']}: {r['reason']}" for r in records if r["status"] == "skipped"}):
        print(f"skipped  {line[:150]}")
    failed = sorted({f"{r['config_key']}: {r['status']}" for r in records if r["status"] not in ("ok", "skipped")})
    for line in failed:
        print(f"failed   {line[:150]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

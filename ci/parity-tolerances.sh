#!/usr/bin/env bash
# Measures how far each precision's loss curve strays from the fp32 reference on healthy runs, and how
# far an fp32 rerun strays from itself (nondeterminism), the basis of lmbench.plan.parity.TOLERANCES.
#   ci/parity-tolerances.sh [--device cpu|cuda] [more lmbench run options]
set -euo pipefail
out="${OUT:-runs/parity-tolerances-$(date +%Y%m%d-%H%M%S)}"
lmbench run --suite smoke --parity --out "$out" --repeats 2 \
    --set model=tiny-gpt2,tiny-llama,tiny-bert-mlm,tiny-torch-transformer-lm \
    --set precision=fp32,tf32,amp-fp16,amp-bf16,fp16,bf16 --set steps=30 --set lr=1e-3 "$@" > /dev/null
python3 - "$out/results.jsonl" <<'PY'
import json, sys
from collections import defaultdict
from lmbench.plan.parity import ema

records = [json.loads(line) for line in open(sys.argv[1])]
worst = defaultdict(float)
fp32 = defaultdict(dict)
for r in records:
    m = r["metrics"] or {}
    if r["config"]["precision"] == "fp32" and r["status"] == "ok":
        fp32[r["config"]["model"]][r["repeat"]] = ema(r["losses"])
    elif m.get("parity_max_rel_dev") is not None:
        worst[r["config"]["precision"]] = max(worst[r["config"]["precision"]], m["parity_max_rel_dev"])
for model, runs in fp32.items():
    if 0 in runs and 1 in runs:
        dev = max(abs(a - b) / abs(b) for a, b in zip(runs[1], runs[0]))
        worst["fp32 (rerun)"] = max(worst["fp32 (rerun)"], dev)
print("precision        largest relative deviation of the EMA loss from fp32")
for name, dev in sorted(worst.items()):
    print(f"{name:<16} {dev:.3g}")
PY

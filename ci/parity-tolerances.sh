#!/usr/bin/env bash
# Measures how far each precision's loss curve strays from its reference on healthy runs (fp32; amp-bf16 for
# FP8), and how far an fp32 rerun strays from itself (nondeterminism), the basis of
# lmbench.plan.parity.TOLERANCES.
#   ci/parity-tolerances.sh [--device cpu|cuda] [more lmbench run options, e.g. --set seed=0,1,2]
# Later --set options win over the defaults below. The FP8 figures in docs/parity.md came from
#   ci/parity-tolerances.sh --repeats 1 --set precision=fp8-tensorwise,fp8-rowwise --set seed=0,1,2,3,4
set -euo pipefail
out="${OUT:-runs/parity-tolerances-$(date +%Y%m%d-%H%M%S)}"
lmbench run --suite smoke --parity --out "$out" --repeats 2 \
    --set model=tiny-gpt2,tiny-llama,tiny-bert-mlm,tiny-torch-transformer-lm \
    --set precision=fp32,tf32,amp-fp16,amp-bf16,fp16,bf16,fp8-tensorwise,fp8-rowwise --set steps=30 --set lr=1e-3 \
    "$@" > /dev/null
python3 "$(dirname "$0")/parity-table.py" "$out/results.jsonl"

#!/usr/bin/env bash
# Runs lmbench's GPU checks in one go and collects results and logs under $OUT (default ./gpu-out).
#   ci/gpu-validate.sh [quick|full]
# quick: lmbench env, the GPU tests, smoke on cuda and the fp16 suite.
# full:  also precision, batch-sweep, memory, kernels and parallel.
set -uo pipefail
mode="${1:-quick}"
out="${OUT:-gpu-out}"
mkdir -p "$out"
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$out/validate.log"; }

log "lmbench env"
lmbench env > "$out/env.txt" 2>&1; cat "$out/env.txt"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true

log "GPU tests"
python -m pytest -q -m gpu tests > "$out/pytest-gpu.txt" 2>&1; tail -5 "$out/pytest-gpu.txt"

suites=(smoke fp16)
[[ "$mode" == full ]] && suites+=(precision batch-sweep memory kernels parallel)
for suite in "${suites[@]}"; do
    log "suite $suite"
    lmbench run --suite "$suite" --device cuda --out "$out/runs/$suite" > "$out/$suite.txt" 2>&1
    tail -30 "$out/$suite.txt"
done
log "kernel microbenchmarks"
mkdir -p "$out/kernels"
for n in 2048 4096 8192; do
    for op in rmsnorm layernorm; do
        lmbench kernels --op "$op" --shape "8192x$n" --dtype bf16 --csv "$out/kernels/$op-8192x$n.csv" \
            >> "$out/kernels.txt" 2>&1
    done
done
lmbench kernels --op linear-ce --shape 8192x4096x128256 --dtype bf16 --csv "$out/kernels/linear-ce.csv" \
    >> "$out/kernels.txt" 2>&1
cat "$out/kernels.txt"
log "done"

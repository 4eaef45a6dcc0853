#!/usr/bin/env bash
# Runs lmbench's GPU checks in one go and collects results, reports and logs under $OUT (default ./gpu-out),
# laid out as reports/<gpu>-<date>/ expects: one run directory (with its report) per suite.
#   ci/gpu-validate.sh [quick|full]
# quick: env, ceilings, GPU tests, smoke (cuda) and fp16.
# full:  also precision, batch-sweep, memory, kernels, parallel (world size 1), ci with 3 repeats,
#        kernel microbenchmarks, parity tolerances and tune.
set -uo pipefail
mode="${1:-quick}"
out="${OUT:-gpu-out}"
mkdir -p "$out"
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$out/validate.log"; }

log "lmbench env and the card's ceilings"
lmbench env > "$out/env.txt" 2>&1; cat "$out/env.txt"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
lmbench ceilings --out "$out/ceilings.json" | tee -a "$out/validate.log"

log "GPU tests"
python -m pytest -q -s -m gpu tests > "$out/pytest-gpu.txt" 2>&1; tail -15 "$out/pytest-gpu.txt"

suite_run() {  # suite, extra args...
    local suite="$1"; shift
    log "suite $suite $*"
    lmbench run --suite "$suite" --device cuda --out "$out/runs/$suite" "$@" > "$out/$suite.txt" 2>&1
    tail -25 "$out/$suite.txt"
    lmbench report "$out/runs/$suite" >> "$out/$suite.txt" 2>&1
}

suite_run smoke
suite_run fp16
if [[ "$mode" == full ]]; then
    suite_run precision
    suite_run batch-sweep
    suite_run memory
    suite_run kernels
    suite_run parallel
    suite_run ci --repeats 3

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

    log "parity tolerances on the GPU"
    OUT="$out/runs/parity-tolerances" ci/parity-tolerances.sh --device cuda > "$out/parity-tolerances.txt" 2>&1
    cat "$out/parity-tolerances.txt"

    log "tune"
    lmbench tune --model gpt2-124m --precision amp-bf16,bf16 --checkpointing none,full --device cuda \
        --budget-minutes 8 --out "$out/runs/tune-gpt2-124m" > "$out/tune-gpt2-124m.txt" 2>&1
    tail -30 "$out/tune-gpt2-124m.txt"
fi
log "done"

#!/usr/bin/env bash
# Runs lmbench's GPU checks and collects results, reports and logs under $OUT (default ./gpu-out), laid
# out as reports/<gpu>-<date>/ expects: one run directory (with its report) per suite.
#
#   ci/gpu-validate.sh STEP...     steps: env tests smoke fp16 precision batch-sweep memory kernels parallel
#                                         ci microbench parity tune
#   ci/gpu-validate.sh quick       = env tests smoke fp16
#   ci/gpu-validate.sh full        = every step
#
# Steps append to the same $OUT, so a machine that limits each command's time can run them a few at a
# time (quick first, then the suites, then microbench parity tune).
set -uo pipefail
out="${OUT:-gpu-out}"
mkdir -p "$out"
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$out/validate.log"; }

suite_run() {  # suite, extra args...
    local suite="$1"; shift
    log "suite $suite $*"
    lmbench run --suite "$suite" --device cuda --out "$out/runs/$suite" --resume "$@" > "$out/$suite.txt" 2>&1
    tail -25 "$out/$suite.txt"
    lmbench report "$out/runs/$suite" >> "$out/$suite.txt" 2>&1
}

step() {
    case "$1" in
        env)
            log "lmbench env and the card's ceilings"
            lmbench env > "$out/env.txt" 2>&1; cat "$out/env.txt"
            nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
            lmbench ceilings --out "$out/ceilings.json" | tee -a "$out/validate.log" ;;
        tests)
            log "GPU tests"
            python -m pytest -q -s -m gpu tests > "$out/pytest-gpu.txt" 2>&1; tail -20 "$out/pytest-gpu.txt" ;;
        smoke|fp16|precision|batch-sweep|memory|kernels|parallel)
            suite_run "$1" ;;
        ci)
            suite_run ci --repeats 3 ;;
        microbench)
            log "kernel microbenchmarks"
            mkdir -p "$out/kernels"
            for n in 2048 4096 8192; do
                for op in rmsnorm layernorm; do
                    lmbench kernels --op "$op" --shape "8192x$n" --dtype bf16 --csv "$out/kernels/$op-8192x$n.csv" \
                        >> "$out/kernels.txt" 2>&1
                done
            done
            lmbench kernels --op linear-ce --shape 8192x4096x128256 --dtype bf16 \
                --csv "$out/kernels/linear-ce.csv" >> "$out/kernels.txt" 2>&1
            cat "$out/kernels.txt" ;;
        parity)
            log "parity tolerances on the GPU"
            OUT="$out/runs/parity-tolerances" ci/parity-tolerances.sh --device cuda > "$out/parity-tolerances.txt" 2>&1
            cat "$out/parity-tolerances.txt" ;;
        tune)
            log "tune"
            lmbench tune --model gpt2-124m --precision amp-bf16,bf16 --checkpointing none,full --device cuda \
                --budget-minutes 8 --out "$out/runs/tune-gpt2-124m" > "$out/tune-gpt2-124m.txt" 2>&1
            tail -30 "$out/tune-gpt2-124m.txt" ;;
        *)
            echo "unknown step '$1'; steps: env tests smoke fp16 precision batch-sweep memory kernels parallel ci" \
                 "microbench parity tune, or quick / full" >&2
            exit 2 ;;
    esac
}

steps=("$@")
[[ ${#steps[@]} -eq 0 ]] && steps=(quick)
for s in "${steps[@]}"; do
    case "$s" in
        quick) for t in env tests smoke fp16; do step "$t"; done ;;
        full) for t in env tests smoke fp16 precision batch-sweep memory kernels parallel ci microbench parity tune; do
                  step "$t"; done ;;
        *) step "$s" ;;
    esac
done
log "done"

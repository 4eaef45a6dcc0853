#!/usr/bin/env bash
# Downloads the wheels an offline GPU machine needs for kernels=liger and the FP8 precisions, to carry there:
#
#   ci/liger-wheel.sh [DIR]     (default ci/wheels, ignored by git)
#
# Liger-Kernel (the `liger` extra) and torchao (the `fp8` extra) are pure-Python or abi3 wheels that fit any
# Linux x86_64 CPython >= 3.10; they are downloaded without their dependencies (torch and triton are on the
# GPU machine already). ci/gpu-validate.sh installs whatever lies in ci/wheels before its stage 6; by hand:
#   python3 -m pip install --no-index --no-deps ci/wheels/*.whl
# The versions are those pyproject.toml's extras allow, newest first; pin one with LIGER=... TORCHAO=...
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
DIR=${1:-$REPO/ci/wheels}
PY=${PYTHON:-python3}
mkdir -p "$DIR"
"$PY" -m pip download --no-deps --only-binary=:all: --dest "$DIR" \
    "liger-kernel${LIGER:+==$LIGER}" "torchao${TORCHAO:+==$TORCHAO}"
# Only the newest of each: an older wheel left from an earlier download must not be installed beside it.
"$PY" - "$DIR" <<'PY'
import sys
from pathlib import Path

newest = {}
for wheel in sorted(Path(sys.argv[1]).glob("*.whl"), key=lambda p: p.stat().st_mtime):
    newest.setdefault(wheel.name.split("-")[0], []).append(wheel)
for name, wheels in newest.items():
    for old in wheels[:-1]:
        old.unlink()
    print(f"{wheels[-1]} ({wheels[-1].stat().st_size / 2**20:.1f} MiB)")
PY

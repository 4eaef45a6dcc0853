#!/usr/bin/env bash
# Builds Apex's fused LayerNorm/RMSNorm and FusedAdam extensions, and nothing else, on a CUDA machine:
#
#   ci/build-apex.sh [APEX_CHECKOUT]     (default ci/apex-src, ignored by git; cloned when missing and online)
#
# Apex is not on the package index. Its setup.py builds every core extension at once (`--cuda_ext`: amp_C,
# syncbn, fused_layer_norm_cuda, mlp_cuda, fused_dense_cuda, the masked-softmax family, ...; many minutes of
# nvcc) and has no switch for one of them. lmbench uses two: `fused_layer_norm_cuda` (FusedLayerNorm and
# FusedRMSNorm, kernels=apex) and `amp_C` (multi_tensor_adam, behind FusedAdam: optimizer=apex-adam). So this
# script installs Apex's Python package without extensions (setup.py with no flags), then compiles exactly
# those two from the checkout's sources with torch.utils.cpp_extension, with the compiler flags Apex's
# setup.py gives them, for this GPU's compute capability only (torch.cuda.get_device_capability()).
#
# Needs: a CUDA GPU, nvcc of the CUDA version torch was built with (Apex refuses a mismatch; so does this
# script, since the extensions would fail to load), ninja (optional, faster). Offline machines: clone Apex
# elsewhere (git clone --depth 1 https://github.com/NVIDIA/apex ci/apex-src) and carry ci/apex-src there.
# Environment: PYTHON (default python3), MAX_JOBS (parallel compiler jobs; default: the CPU count).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
SRC=${1:-$REPO/ci/apex-src}
PY=${PYTHON:-python3}
if [[ ! -f $SRC/setup.py ]]; then
    echo "no Apex checkout in $SRC: cloning it" >&2
    git clone --depth 1 https://github.com/NVIDIA/apex "$SRC"
fi
SRC=$(cd "$SRC" && pwd)
ARCH=$("$PY" - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("ci/build-apex.sh: no CUDA GPU visible; the extensions are built for this machine's GPU")
major, minor = torch.cuda.get_device_capability()
print(f"{major}.{minor}")
PY
)
"$PY" - <<'PY'
import re, subprocess, sys, torch
from torch.utils.cpp_extension import CUDA_HOME
if CUDA_HOME is None:
    sys.exit("ci/build-apex.sh: nvcc not found (set CUDA_HOME); a CUDA toolkit is needed to compile Apex")
nvcc = subprocess.run([f"{CUDA_HOME}/bin/nvcc", "-V"], capture_output=True, text=True).stdout
found = re.search(r"release (\d+\.\d+)", nvcc)
if not found or found.group(1) != ".".join(torch.version.cuda.split(".")[:2]):
    sys.exit(f"ci/build-apex.sh: nvcc is CUDA {found and found.group(1)}, torch was built with CUDA "
             f"{torch.version.cuda}: the extensions would not load")
PY
echo "building Apex's fused_layer_norm_cuda and amp_C for compute capability $ARCH from $SRC" >&2
export TORCH_CUDA_ARCH_LIST=$ARCH MAX_JOBS=${MAX_JOBS:-$(nproc)}
# The Python package alone: without --cpp_ext/--cuda_ext (or APEX_* variables) setup.py compiles nothing.
(cd "$SRC" && env -u APEX_CPP_EXT -u APEX_CUDA_EXT "$PY" -m pip install --no-build-isolation --no-deps --no-index .)
BUILD=$(mktemp -d "${TMPDIR:-/tmp}/lmbench-apex-build.XXXXXX")
trap 'rm -rf "$BUILD"' EXIT
cat > "$BUILD/setup.py" <<PY
# The two extensions as Apex's setup.py (--cuda_ext) declares them, sources from the checkout.
from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CUDAExtension

src = "$SRC/csrc"
amp_c = ["amp_C_frontend.cpp", "multi_tensor_sgd_kernel.cu", "multi_tensor_scale_kernel.cu",
         "multi_tensor_axpby_kernel.cu", "multi_tensor_l2norm_kernel.cu", "multi_tensor_l2norm_kernel_mp.cu",
         "multi_tensor_l2norm_scale_kernel.cu", "multi_tensor_lamb_stage_1.cu", "multi_tensor_lamb_stage_2.cu",
         "multi_tensor_adam.cu", "multi_tensor_adagrad.cu", "multi_tensor_novograd.cu", "multi_tensor_lamb.cu",
         "multi_tensor_lamb_mp.cu", "update_scale_hysteresis.cu"]
setup(
    name="lmbench-apex-extensions",
    version="0.1",
    ext_modules=[
        CUDAExtension(name="amp_C", sources=[f"{src}/{name}" for name in amp_c],
                      extra_compile_args={"cxx": ["-O3"], "nvcc": ["-lineinfo", "-O3", "--use_fast_math"]}),
        CUDAExtension(name="fused_layer_norm_cuda",
                      sources=[f"{src}/layer_norm_cuda.cpp", f"{src}/layer_norm_cuda_kernel.cu"],
                      extra_compile_args={"cxx": ["-O3"], "nvcc": ["-maxrregcount=50", "-O3", "--use_fast_math"]}),
    ],
    cmdclass={"build_ext": BuildExtension},
)
PY
(cd "$BUILD" && "$PY" -m pip install --no-build-isolation --no-deps --no-index .)
"$PY" - <<'PY'
import torch
import amp_C, fused_layer_norm_cuda  # noqa: F401
from apex.normalization import FusedRMSNorm
from apex.optimizers import FusedAdam
x = torch.randn(4, 64, device="cuda", requires_grad=True)
norm = FusedRMSNorm(64).cuda()
norm(x).sum().backward()
FusedAdam(norm.parameters(), lr=1e-3, adam_w_mode=True).step()
print("Apex fused LayerNorm/RMSNorm and FusedAdam: built and working")
PY

"""Run by test_kernels.py in a child process: every Triton kernel compiles to a cubin for an H100 (sm_90).

Triton compiles for a named target without a GPU (its wheel carries ptxas), so a kernel that the
installed Triton cannot lower fails here, on a CPU, rather than in a lent GPU's minutes. The child
runs without TRITON_INTERPRET: under the interpreter `@triton.jit` makes interpreted functions,
which Triton's compiler cannot take. Each kernel is compiled in every branch of its constexpr flags,
for bf16 and fp32 tensors, with the warps its launcher picks.
"""

from __future__ import annotations

import itertools
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from lmbench.kernels import activations, cross_entropy, norms  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
#: Norm rows 4096 wide, a 7B model's hidden size (the backward's plan: 8 warps and a pipelined loop in bf16, 16
#: warps and the plain loop in fp32).
WIDTH = 4096


def compile_one(fn: object, signature: dict[str, str], constants: dict[str, object], warps: int = 4) -> None:
    source = ASTSource(fn=fn, signature={**signature, **dict.fromkeys(constants, "constexpr")}, constexprs=constants)
    kernel = triton.compile(source, target=TARGET, options={"num_warps": warps})
    if not kernel.asm.get("cubin"):
        raise SystemExit(f"{fn.__name__} {constants}: no cubin")


def compile_for(dtype: str) -> int:
    """Every kernel for `dtype`'s tensors; how many were compiled."""
    count = 0
    for fn, pointers in ((activations._gelu_fwd, 2), (activations._gelu_bwd, 3), (activations._swiglu_fwd, 3),
                         (activations._swiglu_bwd, 5)):
        names = list(fn.arg_names)
        compile_one(fn, {**dict.fromkeys(names[:pointers], f"*{dtype}"), names[pointers]: "i64"},
                    {"BLOCK": activations.BLOCK})
        count += 1
    strides = dict.fromkeys(("stride_x", "stride_r", "stride_s", "stride_y"), "i32")
    forward = {**dict.fromkeys(("X", "R", "S", "W", "B", "Y"), f"*{dtype}"), "Mean": "*fp32", "Rstd": "*fp32",
               **strides, "N": "i32", "eps": "fp32"}
    backward = {**dict.fromkeys(("X", "W", "DY", "DS", "DX"), f"*{dtype}"),
                **dict.fromkeys(("Mean", "Rstd", "DW", "DB"), "*fp32"),
                **dict.fromkeys(("stride_x", "stride_dy", "stride_ds", "stride_dx", "M", "N",
                                 "rows_per_program"), "i32")}
    for rms, bias, residual in itertools.product((True, False), repeat=3):
        flags = {"IS_RMS": rms, "HAS_BIAS": bias, "HAS_RESIDUAL": residual, "BLOCK_N": WIDTH}
        compile_one(norms._norm_fwd, forward, flags, norms._warps(WIDTH))
        plan = norms.backward_plan(WIDTH, rms=rms, itemsize=2 if dtype == "bf16" else 4, residual=residual)
        compile_one(norms._norm_bwd, backward, {**flags, "LOAD_STAGES": plan.load_stages}, plan.warps)
        count += 2
    # The backward's other row loop (plain or software-pipelined), which ci/norm-sweep.py times against it.
    compile_one(norms._norm_bwd, backward, {**flags, "LOAD_STAGES": 0 if plan.load_stages else 2}, plan.warps)
    count += 1
    for smooth in (True, False):
        flags = {"BLOCK_V": cross_entropy.BLOCK_V, "SMOOTH": smooth}
        compile_one(cross_entropy._ce_forward,
                    {"Logits": f"*{dtype}", "stride": "i32", "Labels": "*i64", "Loss": "*fp32", "Lse": "*fp32",
                     "V": "i32", "ignore_index": "i32", "smoothing": "fp32"}, flags)
        compile_one(cross_entropy._ce_backward,
                    {"Logits": f"*{dtype}", "stride": "i32", "Labels": "*i64", "Lse": "*fp32", "Factor": "*fp32",
                     "v0": "i32", "width": "i32", "V": "i32", "ignore_index": "i32", "smoothing": "fp32"}, flags)
        count += 2
    return count


def main() -> int:
    # The two dtypes in two forked processes (each compile is single-threaded Python, MLIR and ptxas): half the wall
    # time on two cores.
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(2) as pool:
        counts = pool.map(compile_for, ("bf16", "fp32"))
    print(f"ok {sum(counts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

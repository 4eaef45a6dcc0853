"""Distance to the roofline: the step time this card's measured ceilings would allow, and the measured one's ratio.

A step needs at least its hardware FLOPs at the measured matmul ceiling (`lmbench ceilings`:
a large bf16 GEMM) and at least its unavoidable bytes at the measured copy ceiling (a large
device-to-device copy). The roofline step time is the larger of the two; `roofline_ratio` is the
measured step time over it (1 would be a step at both ceilings; 3 means two thirds of the step is
lost to something else: small or unfused kernels, launch gaps, communication, stalls).

The compute roof is the measured GEMM ceiling of the precision's math mode (fp32 with TF32 off, tf32,
fp16, bf16; FP8 precisions against bf16, as their headline MFU). A ceilings file from before the other
modes were measured has bf16 only: other precisions are then held to it, and `roofline_ceiling` says so
(it once showed fp32 gpt2-124m 20x from a roof fp32 cannot reach).

Unavoidable bytes are a lower bound from the parameters alone, per device, activations excluded:
the forward and backward each read the weights once, the backward writes the gradients, and AdamW
reads parameters (or fp32 master weights), gradients and both moments and writes parameters and
moments back; `precision=fp16` also writes its half-precision copy of the master weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ByteWidths:
    """Bytes per parameter of each tensor a step touches, for one precision mode."""

    weights: int
    grads: int
    optimizer_state: int
    master: int = 0
    """fp32 master weights kept beside half-precision model weights (0: none)."""


#: fp32, tf32, the autocast and FP8 modes keep fp32 weights, gradients and AdamW state (casts per op);
#: fp16 keeps fp16 weights and gradients beside fp32 master weights and state; bf16 keeps everything in bf16.
BYTE_WIDTHS = {
    "fp32": ByteWidths(4, 4, 4), "tf32": ByteWidths(4, 4, 4), "amp-fp16": ByteWidths(4, 4, 4),
    "amp-bf16": ByteWidths(4, 4, 4), "fp16": ByteWidths(2, 2, 4, master=4), "bf16": ByteWidths(2, 2, 2),
    # torchao's float8 training keeps fp32 weights, gradients and AdamW state and casts per matmul, as autocast.
    "fp8-tensorwise": ByteWidths(4, 4, 4), "fp8-rowwise": ByteWidths(4, 4, 4),
}


def bytes_per_step(*, params: int, precision: str, updated: int | None = None) -> int:
    """Lower bound on the device memory traffic of one optimizer step: the forward and backward read all `params`
    weights and write their gradients; the optimizer updates `updated` of them (all by default; FSDP's shard)."""
    w = BYTE_WIDTHS[precision]
    updated = params if updated is None else updated
    width = w.master or w.weights
    forward_backward = params * (2 * w.weights + w.grads)
    adamw = updated * (2 * width + w.grads + 4 * w.optimizer_state)
    half_copy = updated * w.weights if w.master else 0
    return forward_backward + adamw + half_copy


def roofline(*, flops_per_step: float, bytes_per_step: float, matmul_flops_per_s: float, copy_bytes_per_s: float,
             step_time_s: float) -> dict[str, Any]:
    """The ceilings' step time, which one binds, and the measured step time's ratio to it (per device)."""
    compute_s, memory_s = flops_per_step / matmul_flops_per_s, bytes_per_step / copy_bytes_per_s
    bound = max(compute_s, memory_s)
    return {"roofline_compute_s": compute_s, "roofline_memory_s": memory_s, "roofline_step_time_s": bound,
            "roofline_bound": "compute" if compute_s >= memory_s else "memory",
            "roofline_ratio": step_time_s / bound if bound > 0 else None}


def for_record(metrics: dict[str, Any], config: dict[str, Any], ceilings: dict[str, Any]) -> dict[str, Any] | None:
    """The roofline of one ok record against `lmbench ceilings --out` figures; None when the record lacks what it needs.

    Per device: its share of the step's tokens and of the weights its forward and backward read (1/tp of them
    under tensor parallelism, 1/pp in a pipeline, about: the split is by blocks and heads, the embeddings and head
    where they fall), and of those the optimizer's shard under FSDP (1/dp; FSDP gathers the weights whole for the
    forward and backward, so they read all the rank's layout holds).
    """
    needed = ("hardware_flops_per_token", "tokens_per_step", "tokens_per_s", "params", "devices")
    if any(not metrics.get(name) for name in needed):
        return None
    devices = metrics["devices"]
    held = metrics["params"] / ((metrics.get("tp_degree") or 1) * (metrics.get("pp_degree") or 1))
    # Records from before the degrees were kept: plain FSDP shards over every device.
    shards = (metrics.get("dp_degree") or devices) if config.get("parallel") in ("fsdp", "fsdp+tp", "fsdp+pp") else 1
    step_time_s = metrics["tokens_per_step"] / metrics["tokens_per_s"]
    from lmbench.measure.peaks import PRECISION_MODE, mode_peak_flops

    mode = PRECISION_MODE[config["precision"]]
    measured = ceilings.get(f"{mode}_matmul_tflops")
    moved = bytes_per_step(params=int(held), precision=config["precision"], updated=int(held / shards))
    label = f"{mode} {measured:.0f} TFLOP/s" if measured else None
    device = (metrics.get("device_names") or [None])[0]
    peaks = [mode_peak_flops(device, name) for name in (mode, "bf16")]
    if not measured and ceilings.get("bf16_matmul_tflops") and peaks[0] and peaks[1] and peaks[0][0] == peaks[1][0]:
        # The same tensor cores at the same datasheet peak (fp16 and bf16 on an H100): bf16's measured ceiling
        # stands for this mode's, and says so.
        measured = ceilings["bf16_matmul_tflops"]
        label = f"bf16 {measured:.0f} TFLOP/s (no {mode} ceiling measured; {mode}'s datasheet peak is bf16's)"
    if not measured:
        # Another mode's ceiling is no roof for this one (bf16's tensor cores are 15x fp32's CUDA cores on an
        # H100): the memory roof stands alone, and neither the bound nor the distance can be said.
        return {"roofline_compute_s": None, "roofline_memory_s": moved / (ceilings["copy_gb_per_s"] * 1e9),
                "roofline_step_time_s": None, "roofline_bound": None, "roofline_ratio": None,
                "roofline_ceiling": f"none: no {mode} ceiling measured (lmbench ceilings measures it)"}
    found = roofline(flops_per_step=metrics["hardware_flops_per_token"] * metrics["tokens_per_step"] / devices,
                     bytes_per_step=moved, matmul_flops_per_s=measured * 1e12,
                     copy_bytes_per_s=ceilings["copy_gb_per_s"] * 1e9, step_time_s=step_time_s)
    return {**found, "roofline_ceiling": label}

"""Datasheet dense peak throughput per device and precision, one row per device with its source.

Vendors quote tensor-core peaks "with sparsity" (2:4 structured); a dense training step can reach
at most half of that, so the sparse figures are halved here and only dense peaks are stored.
An unknown device gives no peak, hence no MFU, rather than a wrong one.

FP8 precisions run only the transformer blocks' linears in FP8 (attention's score matmuls and the
LM head stay bf16), so neither peak bounds them exactly. Their headline `mfu` is taken against
the bf16 peak, which keeps it comparable with the bf16 row of the same model (the ratio of two
MFUs is the ratio of their throughputs), and `mfu_fp8_peak` against the dense FP8 peak, the
ceiling of the FP8 tensor cores that no real mix of FP8 and bf16 matmuls reaches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class DevicePeak:
    """Dense peak TFLOP/s of one device for each math mode lmbench uses."""

    device: str
    pattern: str
    """Regular expression searched for in torch.cuda.get_device_name(), case ignored. Each names its device exactly:
    a variant the table does not list (an H100 CNX, a GH200, an RTX 4090 D with fewer SMs, the RTX 4090 Laptop GPU,
    an RTX A1000) gets no row, hence no MFU, rather than a sibling's peak."""
    fp32_tflops: float
    """Non-tensor-core FP32 (precision=fp32 runs with TF32 off)."""
    tf32_tflops: float
    bf16_tflops: float
    fp16_tflops: float
    """FP16 tensor core with FP32 accumulation, which is what PyTorch uses."""
    source: str
    fp8_tflops: float | None = None
    """FP8 (E4M3/E5M2) tensor core, dense; None for a device without FP8 tensor cores or no datasheet figure."""


# Order matters: the first matching pattern wins, so specific variants come before generic names.
PEAKS: list[DevicePeak] = [
    DevicePeak(device="H100 NVL", pattern=r"H100.*NVL", fp32_tflops=60.0, tf32_tflops=417.5, bf16_tflops=835.5,
               fp16_tflops=835.5, fp8_tflops=1670.5,
               source="https://www.nvidia.com/en-us/data-center/h100/ (H100 NVL column, "
               "sparse tensor figures halved)"),
    DevicePeak(device="H100 PCIe", pattern=r"H100.*PCIe", fp32_tflops=51.0, tf32_tflops=378.0, bf16_tflops=756.5,
               fp16_tflops=756.5, fp8_tflops=1513.0,
               source="https://www.nvidia.com/en-us/data-center/h100/ (H100 PCIe column, "
               "sparse tensor figures halved)"),
    DevicePeak(device="H100 SXM", pattern=r"H100 (80GB HBM3|SXM)", fp32_tflops=67.0, tf32_tflops=494.5,
               bf16_tflops=989.5, fp16_tflops=989.5, fp8_tflops=1979.0,
               source="https://www.nvidia.com/en-us/data-center/h100/ (H100 SXM column, "
               "sparse tensor figures halved)"),
    DevicePeak(device="H200 NVL", pattern=r"H200.*NVL", fp32_tflops=60.0, tf32_tflops=417.5, bf16_tflops=835.5,
               fp16_tflops=835.5, fp8_tflops=1670.5,
               source="https://www.nvidia.com/en-us/data-center/h200/ (H200 NVL column, "
               "sparse tensor figures halved)"),
    DevicePeak(device="H200 SXM", pattern=r"(?<!G)H200", fp32_tflops=67.0, tf32_tflops=494.5, bf16_tflops=989.5,
               fp16_tflops=989.5, fp8_tflops=1979.0,
               source="https://www.nvidia.com/en-us/data-center/h200/ (H200 SXM column, "
               "sparse tensor figures halved)"),
    DevicePeak(device="A100", pattern=r"\bA100\b", fp32_tflops=19.5, tf32_tflops=156.0, bf16_tflops=312.0,
               fp16_tflops=312.0, source="https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/"
               "nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf (dense figures; same for 40/80 GB, PCIe/SXM)"),
    DevicePeak(device="B200", pattern=r"(?<!G)B200", fp32_tflops=75.0, tf32_tflops=1100.0, bf16_tflops=2250.0,
               fp16_tflops=2250.0, fp8_tflops=4500.0,
               source="https://www.nvidia.com/en-us/data-center/hgx/ (HGX "
               "B200, 'Individual Blackwell GPU Specifications' rows, sparse tensor figures halved)"),
    DevicePeak(device="L40S", pattern=r"L40S", fp32_tflops=91.6, tf32_tflops=183.0, bf16_tflops=362.05,
               fp16_tflops=362.05, fp8_tflops=733.0,
               source="https://www.nvidia.com/en-us/data-center/l40s/ (dense "
               "figures, the left of each 'dense | sparse' pair)"),
    DevicePeak(device="L4", pattern=r"\bL4\b", fp32_tflops=30.3, tf32_tflops=60.0, bf16_tflops=121.0,
               fp16_tflops=121.0, fp8_tflops=242.5,
               source="https://www.nvidia.com/en-us/data-center/l4/ (sparse tensor figures "
               "halved)"),
    DevicePeak(device="RTX 4090", pattern=r"RTX 4090(?! ?D\b)(?!.*Laptop)", fp32_tflops=82.6, tf32_tflops=82.6,
               bf16_tflops=165.2, fp16_tflops=165.2, source="https://images.nvidia.com/aem-dam/Solutions/geforce/ada/"
               "nvidia-ada-gpu-architecture.pdf (appendix A, GeForce RTX 4090; FP16/BF16 with FP32 accumulate)"),
]

#: Which math mode bounds each precision axis value.
PRECISION_MODE: dict[str, str] = {
    "fp32": "fp32", "tf32": "tf32", "amp-fp16": "fp16", "fp16": "fp16", "amp-bf16": "bf16", "bf16": "bf16",
    # The headline MFU of an FP8 precision is against the bf16 peak (see the module docstring).
    "fp8-tensorwise": "bf16", "fp8-rowwise": "bf16",
}


def find_device(device_name: str) -> DevicePeak | None:
    """The table row for a CUDA device name, or None when the device is not in the table."""
    if " MIG " in f" {device_name} ":
        # A MIG instance ("NVIDIA H100 80GB HBM3 MIG 3g.40gb") has a fraction of the GPU's SMs; the
        # datasheet peak is the whole GPU's, so an MFU against it would be wrong.
        return None
    for row in PEAKS:
        if re.search(row.pattern, device_name, re.IGNORECASE):
            return row
    return None


def peak_flops(device_name: str | None, precision: str) -> tuple[float, str] | None:
    """(dense peak FLOP/s, source) for the device and precision, or None when unknown."""
    return mode_peak_flops(device_name, PRECISION_MODE[precision])


def mode_peak_flops(device_name: str | None, mode: str) -> tuple[float, str] | None:
    """(dense peak FLOP/s, source) of one math mode (fp32, tf32, bf16, fp16, fp8), or None when unknown."""
    row = find_device(device_name) if device_name else None
    tflops = getattr(row, f"{mode}_tflops") if row else None
    return (tflops * 1e12, row.source) if row and tflops is not None else None

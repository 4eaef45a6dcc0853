"""Datasheet dense peak throughput per device and precision, one row per device with its source.

Vendors quote tensor-core peaks "with sparsity" (2:4 structured); a dense training step can reach
at most half of that, so the sparse figures are halved here and only dense peaks are stored.
An unknown device gives no peak, hence no MFU, rather than a wrong one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class DevicePeak:
    """Dense peak TFLOP/s of one device for each math mode lmbench uses."""

    device: str
    pattern: str
    """Regular expression matched against torch.cuda.get_device_name()."""
    fp32_tflops: float
    """Non-tensor-core FP32 (precision=fp32 runs with TF32 off)."""
    tf32_tflops: float
    bf16_tflops: float
    fp16_tflops: float
    """FP16 tensor core with FP32 accumulation, which is what PyTorch uses."""
    source: str


# Order matters: the first matching pattern wins, so specific variants come before generic names.
PEAKS: list[DevicePeak] = [
    DevicePeak(device="H100 NVL", pattern=r"H100.*NVL", fp32_tflops=60.0, tf32_tflops=417.5, bf16_tflops=835.5,
               fp16_tflops=835.5, source="https://www.nvidia.com/en-us/data-center/h100/ (H100 NVL column, "
               "sparse tensor figures halved)"),
    DevicePeak(device="H100 PCIe", pattern=r"H100.*PCIe", fp32_tflops=51.0, tf32_tflops=378.0, bf16_tflops=756.5,
               fp16_tflops=756.5, source="https://www.nvidia.com/en-us/data-center/h100/ (H100 PCIe column, "
               "sparse tensor figures halved)"),
    DevicePeak(device="H100 SXM", pattern=r"H100", fp32_tflops=67.0, tf32_tflops=494.5, bf16_tflops=989.5,
               fp16_tflops=989.5, source="https://www.nvidia.com/en-us/data-center/h100/ (H100 SXM column, "
               "sparse tensor figures halved)"),
    DevicePeak(device="H200 NVL", pattern=r"H200.*NVL", fp32_tflops=60.0, tf32_tflops=417.5, bf16_tflops=835.5,
               fp16_tflops=835.5, source="https://www.nvidia.com/en-us/data-center/h200/ (H200 NVL column, "
               "sparse tensor figures halved)"),
    DevicePeak(device="H200 SXM", pattern=r"H200", fp32_tflops=67.0, tf32_tflops=494.5, bf16_tflops=989.5,
               fp16_tflops=989.5, source="https://www.nvidia.com/en-us/data-center/h200/ (H200 SXM column, "
               "sparse tensor figures halved)"),
    DevicePeak(device="A100", pattern=r"A100", fp32_tflops=19.5, tf32_tflops=156.0, bf16_tflops=312.0,
               fp16_tflops=312.0, source="https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/"
               "nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf (dense figures; same for 40/80 GB, PCIe/SXM)"),
    DevicePeak(device="L4", pattern=r"\bL4\b", fp32_tflops=30.3, tf32_tflops=60.0, bf16_tflops=121.0,
               fp16_tflops=121.0, source="https://www.nvidia.com/en-us/data-center/l4/ (sparse tensor figures "
               "halved)"),
    DevicePeak(device="RTX 4090", pattern=r"RTX 4090", fp32_tflops=82.6, tf32_tflops=82.6, bf16_tflops=165.2,
               fp16_tflops=165.2, source="https://images.nvidia.com/aem-dam/Solutions/geforce/ada/"
               "nvidia-ada-gpu-architecture.pdf (appendix A, GeForce RTX 4090; FP16/BF16 with FP32 accumulate)"),
]

#: Which math mode bounds each precision axis value.
PRECISION_MODE: dict[str, str] = {
    "fp32": "fp32", "tf32": "tf32", "amp-fp16": "fp16", "fp16": "fp16", "amp-bf16": "bf16", "bf16": "bf16",
}


def find_device(device_name: str) -> DevicePeak | None:
    """The table row for a CUDA device name, or None when the device is not in the table."""
    if " MIG " in f" {device_name} ":
        # A MIG instance ("NVIDIA H100 80GB HBM3 MIG 3g.40gb") has a fraction of the GPU's SMs; the
        # datasheet peak is the whole GPU's, so an MFU against it would be wrong.
        return None
    for row in PEAKS:
        if re.search(row.pattern, device_name):
            return row
    return None


def peak_flops(device_name: str | None, precision: str) -> tuple[float, str] | None:
    """(dense peak FLOP/s, source) for the device and precision, or None when unknown."""
    if not device_name:
        return None
    row = find_device(device_name)
    if row is None:
        return None
    tflops = getattr(row, f"{PRECISION_MODE[precision]}_tflops")
    return tflops * 1e12, row.source

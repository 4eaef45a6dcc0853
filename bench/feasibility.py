"""Which configurations this machine and this lmbench version can run, and why not the others.

Anything refused here becomes a `skipped` row with the reason, decided in the parent before a
worker process is spent on it.
"""

from __future__ import annotations

from lmbench import __version__
from lmbench.config import Config
from lmbench.environment import Platform

#: Axis values that a later version fills in; until then they are skipped, never a crash.
NOT_YET: dict[str, frozenset[str]] = {
    "parallel": frozenset({"dp", "ddp", "fsdp"}),
    "kernels": frozenset({"triton", "apex", "liger"}),
    "optimizer": frozenset({"apex-adam"}),
    "checkpointing": frozenset({"selective"}),
}


def resolve_device(config: Config, platform: Platform) -> Config:
    """Turn device=auto into cuda when a GPU is visible, else cpu; the resolved value is part of the key."""
    if config.device != "auto":
        return config
    return config.replace(device="cuda" if platform.cuda_available else "cpu")


def skip_reason(config: Config, platform: Platform) -> str | None:
    """None when `config` can run here, else a one-line reason for the `skipped` row."""
    conflict = config.conflict()
    if conflict:
        return conflict
    for axis, values in NOT_YET.items():
        value = getattr(config, axis)
        if value in values:
            return f"{axis}={value} is not implemented in lmbench {__version__}"
    if config.device.startswith("cuda"):
        if not platform.cuda_available:
            return (f"device={config.device} but CUDA is not available (torch {platform.torch_version}, "
                    "no visible GPU)")
        index = int(config.device.partition(":")[2] or 0)
        if index >= platform.device_count:
            return f"device={config.device} but only {platform.device_count} CUDA device(s) are visible"
        major = platform.capability[0] if platform.capability else 0
        if config.precision in ("tf32", "bf16", "amp-bf16") and major < 8:
            return f"precision={config.precision} needs compute capability 8.0 or later (Ampere); this GPU is {major}.x"
    elif config.precision == "tf32":
        return "precision=tf32 needs a CUDA GPU with TF32 tensor cores; on the CPU it would just be fp32"
    if config.kernels == "compile" and config.warmup < 1:
        return "kernels=compile needs warmup >= 1 so compilation stays out of the measured window"
    return None

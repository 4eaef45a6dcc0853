"""Which attention kernel a step ran: torch's scaled_dot_product_attention picks one per call.

`attention=sdpa` leaves the choice to torch: on a GPU flash, memory-efficient or cuDNN attention, the first in its
priority order (which depends on the build and the GPU) that accepts the inputs (dtype, head size, a mask, dropout:
cuDNN's takes dropout only in multiples of 1/16, not GPT-2's 0.1), else the math backend, an unfused
decomposition, without a word. A CPU has a flash kernel of
its own, which takes no dropout. The record says which one ran (`attention_kernel`), seen from the ATen operators
of one warmup step (a dispatch mode: the backend's own operator, or the math path's `_safe_softmax`).
"""

from __future__ import annotations

from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

#: ATen operators of SDPA's fused backends, by the name the record gives them.
FUSED = {
    "_scaled_dot_product_flash_attention_for_cpu": "cpu-flash",
    "_scaled_dot_product_flash_attention": "flash",
    "_scaled_dot_product_efficient_attention": "efficient",
    "_scaled_dot_product_cudnn_attention": "cudnn",
    "_scaled_dot_product_fused_attention_overrideable": "overrideable",
}
#: The math backend's softmax (torch 2.5 on): what SDPA decomposes into when no fused kernel takes the call.
MATH_SOFTMAX = "_safe_softmax"


class AttentionWatch(TorchDispatchMode):
    """Names the attention kernels the operators dispatched under it ran: `kernel` once the block has ended."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = func.__name__.split(".")[0]  # aten._scaled_dot_product_flash_attention.default
        if name in FUSED:
            self.seen.add(FUSED[name])
        elif name == MATH_SOFTMAX:
            self.seen.add("math")
        return func(*args, **(kwargs or {}))

    @property
    def kernel(self) -> str | None:
        """The kernel(s) seen, joined by '+' (a model whose calls differ); None where no SDPA call ran (an eager
        attention implementation, or a step the watch did not see)."""
        return "+".join(sorted(self.seen)) or None


def fell_back(attention: str, kernel: str | None, device_type: str) -> str | None:
    """A warning when `attention=sdpa` on a GPU ran the math backend: the row measures unfused attention."""
    if attention != "sdpa" or device_type != "cuda" or kernel is None or "math" not in kernel.split("+"):
        return None
    return ("attention=sdpa ran torch's math backend on the GPU (no fused kernel took these inputs: dtype, head size, "
            "mask or dropout): the row measures unfused attention")

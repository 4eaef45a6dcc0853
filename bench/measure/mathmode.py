"""The math mode a precision runs its matmuls in: TF32 on for precision=tf32 only, so fp32 means true fp32.

Here rather than in lmbench.run.precision because measuring this device's ceilings needs it too
(lmbench.measure.ceilings times an fp32 GEMM with TF32 off and a tf32 one with it on).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def matmul_mode(precision: str) -> Iterator[None]:
    """TF32 on only for precision=tf32, so fp32 means true fp32 (PyTorch's default varies by release)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    allow = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved

"""A record of the ATen ops run inside a block: what tests use to see host synchronisations and allocations."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class OpLog(TorchDispatchMode):
    """Every ATen op run inside it, with its output."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        fresh = isinstance(out, torch.Tensor) and all(
            out.untyped_storage().data_ptr() != a.untyped_storage().data_ptr() for a in inputs)
        self.calls.append((func, out if fresh else None))
        return out

    def new_tensors(self, shape):
        """Ops that allocated a new tensor of `shape` (not a view, not in place, not out=)."""
        return [f for f, out in self.calls if out is not None and tuple(out.shape) == tuple(shape)]

    def host_reads(self):
        """Reads of a device value on the host (`.item()`, `int()`, `bool()`): each waits for the device."""
        return [f for f, _ in self.calls if f is torch.ops.aten._local_scalar_dense.default]

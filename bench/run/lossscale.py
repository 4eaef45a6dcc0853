"""A dynamic loss scale kept on the device, as torch.amp.GradScaler keeps it, for the modes GradScaler cannot serve.

GradScaler's algorithm and constants (scale 2^16, doubled after 2000 overflow-free steps in a row, halved and the
step skipped after an overflow) through the same ATen ops (`_amp_foreach_non_finite_check_and_unscale_`,
`_amp_update_scale_`), for two modes GradScaler does not fit:

- fp16 weights with fp32 master copies (Micikevicius et al. 2018; Apex O2): the gradients to check and unscale are
  the masters' fp32 copies of the fp16 ones, which GradScaler (checking an optimizer's own parameters) never sees;
- a model split between ranks (tensor and pipeline parallelism): each rank holds only part of the gradients, so an
  overflow one rank finds must skip the step on every rank, or the parts of the model would go out of step. The
  overflow flag is agreed (`agree`: a MAX all-reduce) before anything acts on it. GradScaler cannot: a tensor-
  parallel model's gradients mix DTensors (the sharded projections) and plain tensors (the replicated embeddings
  and norms), and its one check over all of them raises "got mixed torch.Tensor and DTensor".

The check, the skip and the scale stay on the device when the optimizer takes the overflow flag itself (torch's
fused AdamW, lmbench's default `adamw-fused`): its kernel leaves a flagged step's weights and state as they were.
Any other optimizer cannot be told, so the flag is read on the host, one wait a step, as GradScaler (and Apex) read
it for such an optimizer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: Makes a rank's overflow flag (a one-element float tensor, 1.0 where it found an inf/NaN gradient) every rank's.
Agree = Callable[[torch.Tensor], None]

#: torch.amp.GradScaler's defaults.
INIT_SCALE = 2.0**16
GROWTH_INTERVAL = 2000


def local(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's own shard (the check runs on what this rank holds; `agree` makes the verdict the group's; DTensor
    has no sharding rule for the foreach ops), else the tensor."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


class DynamicLossScale:
    """The scale, the overflow-free steps since it last changed, the overflow flag and the count of skipped steps,
    all device tensors: nothing here reads the device on the host unless the optimizer cannot skip a step itself."""

    def __init__(self, device: torch.device, *, init_scale: float = INIT_SCALE, growth_interval: int = GROWTH_INTERVAL,
                 agree: Agree | None = None) -> None:
        self.growth_interval = growth_interval
        self.agree = agree
        self.scale = torch.full((), init_scale, dtype=torch.float32, device=device)
        self._growth_tracker = torch.zeros((), dtype=torch.int32, device=device)
        self.found_inf = torch.zeros(1, device=device)
        self.skipped = torch.zeros((), dtype=torch.int64, device=device)

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to run backward from, in fp32: an fp16 loss times 2^16 would overflow before any gradient."""
        return loss.float() * self.scale

    def unscale(self, grads: list[torch.Tensor]) -> None:
        """Divide `grads` by the scale in place and set this rank's overflow flag (`agree_on_overflow` makes it every
        rank's where they split the model). One check per device and dtype, as the op requires."""
        self.found_inf.zero_()
        inv_scale = self.scale.double().reciprocal().float().reshape(1)
        groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
        for grad in grads:
            own = local(grad)
            groups.setdefault((own.device, own.dtype), []).append(own)
        for group in groups.values():
            torch._amp_foreach_non_finite_check_and_unscale_(group, self.found_inf, inv_scale)

    def agree_on_overflow(self) -> None:
        """The overflow flag made every rank's (`agree`), before `step` acts on it; nothing without `agree`."""
        if self.agree is not None:
            self.agree(self.found_inf)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """The optimizer's step unless the gradients overflowed; whether the parameters may have changed (an
        optimizer that skips a flagged step itself is always run, and leaves such a step's parameters as they were)."""
        if getattr(optimizer, "_step_supports_amp_scaling", False):
            # Read by the fused kernel, as GradScaler.step passes it; shaped as the step counts it is taken from.
            optimizer.found_inf = self.found_inf.view(())
            try:
                optimizer.step()
            finally:
                del optimizer.found_inf
            return True
        if self.found_inf.item():  # the one host read, for an optimizer that cannot skip itself
            return False
        optimizer.step()
        return True

    def update(self) -> None:
        """Count a skipped step; halve the scale after an overflow, double it after growth_interval good steps."""
        self.skipped += self.found_inf.to(torch.int64).sum()
        torch._amp_update_scale_(self.scale, self._growth_tracker, self.found_inf, 2.0, 0.5, self.growth_interval)

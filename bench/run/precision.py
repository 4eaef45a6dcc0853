"""Numeric modes of training: how weights are stored, how the forward runs, how gradients are scaled.

Each mode owns its state (loss scale, master weights, skipped-step count); the training loop
only calls `autocast()`, `backward(loss)` and `step()`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn as nn

from lmbench.run.lossscale import GROWTH_INTERVAL, INIT_SCALE, Agree, DynamicLossScale, local

OptimizerFactory = Callable[[list[torch.Tensor]], torch.optim.Optimizer]
Wrapper = Callable[[nn.Module], nn.Module]


def _unwrapped(model: nn.Module) -> nn.Module:
    return model


def cast_weights(model: nn.Module, dtype: torch.dtype, device: torch.device | None = None) -> nn.Module:
    """The model (on `device`) with its parameters in `dtype`; floating buffers keep theirs. Llama's RoPE
    frequencies (`inv_freq`) in bf16 put the rotary angles 0.85 rad off at position 2047 (transformers upcasts
    them only after the rounding): a pure-bf16 row trained on distorted positions, which recipes keep in fp32."""
    kept = {name: buffer.dtype for name, buffer in model.named_buffers() if buffer.is_floating_point()}
    model = model.to(device=device, dtype=dtype)
    for name, original in kept.items():
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner)
        module._buffers[leaf] = module._buffers[leaf].to(original)
    return model


class Precision:
    """fp32 / tf32 / bf16: weights in one dtype, no autocast, no loss scaling."""

    name = "fp32"
    weight_dtype = torch.float32
    autocast_dtype: torch.dtype | None = None
    applied: str | None = None
    """What the mode changed in the model, for the record (FP8: "float8 linears 12/12 (tensorwise)")."""

    def __init__(self, model: nn.Module, make_optimizer: OptimizerFactory, device: torch.device,
                 wrap: Wrapper = _unwrapped, *, agree: Agree | None = None) -> None:
        """`wrap` (data parallelism) is applied after the cast and before the optimizer sees the parameters; `agree`
        (a model split between ranks) makes one rank's gradient overflow every rank's, for the modes that scale the
        loss."""
        self.device = device
        self.model = wrap(cast_weights(model, self.weight_dtype, device))
        self.optimizer = make_optimizer(self._trainable(self.model))
        self._skipped_steps = 0

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps skipped because scaled gradients overflowed; read it after the window (it may
        wait for the device)."""
        return self._skipped_steps

    @staticmethod
    def _trainable(model: nn.Module) -> list[torch.Tensor]:
        return [p for p in model.parameters() if p.requires_grad]

    @property
    def loss_scale(self) -> float | None:
        return None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to run backward from (a pipeline's schedule runs it): times the loss scale, where there is one."""
        return loss

    def backward(self, loss: torch.Tensor) -> None:
        self.scaled(loss).backward()

    def step(self) -> None:
        """One optimizer step from the gradients the backward left: `check`, `agree`, `apply` (a pipeline stage times
        the first and the last as its own work, and the collective between them as a wait)."""
        self.check()
        self.agree()
        self.apply()

    def check(self) -> None:
        """The step's first half: a loss-scaled mode's gradients unscaled and checked for overflow."""

    def agree(self) -> None:
        """Between the halves: an overflow made every rank's where the model is split (a collective)."""

    def apply(self) -> None:
        """The step's second half: the optimizer's step (skipped on an overflow), the gradients cleared."""
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


class Bf16(Precision):
    """Pure bf16: weights, activations, gradients and optimizer state in bf16 (no master copy)."""

    name = "bf16"
    weight_dtype = torch.bfloat16


class AmpBf16(Precision):
    """fp32 weights, bf16 autocast; bf16's fp32-sized exponent needs no loss scaling."""

    name = "amp-bf16"
    autocast_dtype = torch.bfloat16


class Fp8(AmpBf16):
    """FP8 matmuls in the transformer blocks' linears (torchao float8 training), on top of amp-bf16.

    Master weights stay fp32 and everything outside the converted linears runs under bf16 autocast,
    as in torchao's and torchtitan's recipes: the only difference from amp-bf16, the parity
    reference, is the FP8 matmuls (pure bf16 weights would add their own rounding drift). Each
    Float8Linear scales its input, weight and output gradient to FP8 dynamically every step (per
    tensor or per row, by recipe). On a CUDA device the linear's input is cast to bf16 first; under
    CPU autocast torchao leaves it in fp32 (its autocast check is CUDA's), so a CPU run's FP8 matmuls
    return fp32.
    """

    name = "fp8-tensorwise"

    def __init__(self, model: nn.Module, make_optimizer: OptimizerFactory, device: torch.device,
                 wrap: Wrapper = _unwrapped, *, agree: Agree | None = None) -> None:
        from lmbench.models.float8 import convert

        # Before the move and any wrapping: data parallelism must see the Float8Linear modules.
        model, self.applied = convert(model, self.name)
        super().__init__(model, make_optimizer, device, wrap, agree=agree)


class Fp8Rowwise(Fp8):
    name = "fp8-rowwise"


class AmpFp16(Precision):
    """fp32 weights, fp16 autocast, torch.amp.GradScaler's dynamic loss scaling."""

    name = "amp-fp16"
    autocast_dtype = torch.float16

    def __init__(self, model: nn.Module, make_optimizer: OptimizerFactory, device: torch.device,
                 wrap: Wrapper = _unwrapped, *, agree: Agree | None = None) -> None:
        super().__init__(model, make_optimizer, device, wrap)
        self.scaler = torch.amp.GradScaler(device.type)
        self._one = torch.ones((), device=device)
        self._skipped = torch.zeros((), dtype=torch.int64, device=device)

    @property
    def loss_scale(self) -> float | None:
        return float(self.scaler.get_scale())

    @property
    def skipped_steps(self) -> int:
        return int(self._skipped)

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss)

    def _scale(self) -> torch.Tensor:
        # The scale as a device tensor: get_scale() reads it on the host, a synchronisation each time,
        # which would slow amp-fp16 down against amp-bf16 by two waits a step.
        return self.scaler.scale(self._one)

    def apply(self) -> None:
        before = self._scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        # GradScaler lowers the scale exactly when it skipped the step for inf/NaN gradients.
        self._skipped += self._scale() < before
        self.optimizer.zero_grad(set_to_none=True)


class _DeviceLossScaled(Precision):
    """A mode scaled by lmbench's own DynamicLossScale (`self.scale`)."""

    scale: DynamicLossScale

    @property
    def loss_scale(self) -> float | None:
        return float(self.scale.scale)

    @property
    def skipped_steps(self) -> int:
        return int(self.scale.skipped)

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scale.scaled(loss)

    def agree(self) -> None:
        self.scale.agree_on_overflow()


class SplitAmpFp16(_DeviceLossScaled):
    """amp-fp16 of a model split between ranks (tensor, pipeline parallelism): GradScaler's algorithm with the
    overflow agreed between the ranks (lmbench.run.lossscale), which GradScaler cannot do over a tensor-parallel
    model's mix of DTensor and plain gradients."""

    name = "amp-fp16"
    autocast_dtype = torch.float16

    def __init__(self, model: nn.Module, make_optimizer: OptimizerFactory, device: torch.device,
                 wrap: Wrapper = _unwrapped, *, agree: Agree | None = None) -> None:
        super().__init__(model, make_optimizer, device, wrap)
        self.scale = DynamicLossScale(device, agree=agree)
        self._params = self._trainable(self.model)

    def check(self) -> None:
        self.scale.unscale([p.grad for p in self._params if p.grad is not None])

    def apply(self) -> None:
        self.scale.step(self.optimizer)
        self.scale.update()
        self.optimizer.zero_grad(set_to_none=True)


class Fp16MasterWeights(_DeviceLossScaled):
    """fp16 weights and activations, fp32 master weights in the optimizer, dynamic loss scaling.

    The classic mixed-precision recipe (Micikevicius et al. 2018; Apex O2): the model runs in fp16,
    gradients are scaled up to stay representable, unscaled into fp32 copies, checked for inf/NaN
    (a step with overflow is skipped and the scale halved), and the fp32 result is copied back
    (lmbench.run.lossscale keeps the scale on the device).
    """

    name = "fp16"
    weight_dtype = torch.float16

    def __init__(self, model: nn.Module, make_optimizer: OptimizerFactory, device: torch.device,
                 wrap: Wrapper = _unwrapped, *, agree: Agree | None = None, init_scale: float = INIT_SCALE,
                 growth_interval: int = GROWTH_INTERVAL) -> None:
        self.device = device
        # Master copies come from the fp32 init, before the cast loses precision.
        model = model.to(device=device)
        self.params = self._trainable(model)
        self.master = [p.detach().float().clone().requires_grad_(True) for p in self.params]
        self.model = wrap(cast_weights(model, torch.float16))
        self.optimizer = make_optimizer(self.master)
        self.scale = DynamicLossScale(device, init_scale=init_scale, growth_interval=growth_interval, agree=agree)
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        """(master, parameter) of the step under way: those with a gradient, from `check` to `apply`."""

    def check(self) -> None:
        self._pairs = [(m, p) for m, p in zip(self.master, self.params) if p.grad is not None]
        for master, param in self._pairs:
            master.grad = param.grad.float()
        self.scale.unscale([m.grad for m, _ in self._pairs])

    def apply(self) -> None:
        pairs, self._pairs = self._pairs, []
        # A flagged step that the optimizer skipped itself left the masters as they were: copying them back changes
        # nothing.
        if self.scale.step(self.optimizer):
            with torch.no_grad():
                torch._foreach_copy_([local(p) for _, p in pairs], [local(m) for m, _ in pairs])
        self.scale.update()
        for master, param in pairs:
            master.grad = None
            param.grad = None


class Tf32(Precision):
    """fp32 storage with TF32 tensor-core matmuls and convolutions (Ampere and later)."""

    name = "tf32"


PRECISIONS: dict[str, type[Precision]] = {
    "fp32": Precision,
    "tf32": Tf32,
    "amp-fp16": AmpFp16,
    "amp-bf16": AmpBf16,
    "fp16": Fp16MasterWeights,
    "bf16": Bf16,
    "fp8-tensorwise": Fp8,
    "fp8-rowwise": Fp8Rowwise,
}

#: The modes whose implementation differs where the model is split between ranks.
SPLIT_PRECISIONS: dict[str, type[Precision]] = {"amp-fp16": SplitAmpFp16}


def mode(name: str, *, split: bool = False) -> type[Precision]:
    """The class of precision `name`; `split`: for a model split between ranks (tensor, pipeline parallelism)."""
    return SPLIT_PRECISIONS.get(name, PRECISIONS[name]) if split else PRECISIONS[name]

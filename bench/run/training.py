"""One optimizer step of a configuration: model, optimizer, precision, parallelism, kernel set and batches."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from functools import partial

import torch

from lmbench.models.kernel_sets import KERNEL_SETS
from lmbench.models.registry import MODELS, build_model, enable_checkpointing
from lmbench.plan.config import Config
from lmbench.run.data import POOL_SIZE, make_batches
from lmbench.run.parallel import WRAPPERS, gradient_sync
from lmbench.run.precision import PRECISIONS, Precision

#: Ranks draw different batches: seed + rank * this.
RANK_SEED_STRIDE = 1000


def _adamw(params: list[torch.Tensor], *, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, foreach=True)


def _adamw_fused(params: list[torch.Tensor], *, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, fused=True)


def _apex_adam(params: list[torch.Tensor], *, lr: float) -> torch.optim.Optimizer:
    from apex.optimizers import FusedAdam

    return FusedAdam(params, lr=lr, adam_w_mode=True)


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adamw": _adamw,
    "adamw-fused": _adamw_fused,
    "apex-adam": _apex_adam,
}


def _attention_context(attention: str) -> Callable[[], contextlib.AbstractContextManager]:
    if attention != "math":
        return contextlib.nullcontext
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return partial(sdpa_kernel, SDPBackend.MATH)


def replicas(config: Config) -> int:
    """GPUs one process drives: all visible ones under nn.DataParallel, else one."""
    return max(1, torch.cuda.device_count()) if config.parallel == "dp" else 1


def devices_used(config: Config, device: torch.device) -> list[torch.device]:
    """The devices one process trains on: nn.DataParallel replicates over cuda:0..N-1 (its default device_ids)."""
    count = replicas(config)
    return [device] if count == 1 else [torch.device("cuda", index) for index in range(count)]


class TrainingStep:
    """Callable that runs one optimizer step (all micro-batches) and returns its mean loss, unsynchronised."""

    def __init__(self, config: Config, device: torch.device, *, rank: int = 0) -> None:
        self.config = config
        self.spec = MODELS[config.model]
        torch.manual_seed(config.seed)
        model = build_model(self.spec, attention=config.attention, device=device)
        if config.checkpointing != "none":
            enable_checkpointing(model, selective=config.checkpointing == "selective")
        model.train()
        self.base_model = model
        """The model as built: not wrapped, not compiled (for counting parameters)."""
        kernel_set = KERNEL_SETS[config.kernels]
        model, self.kernels_applied = kernel_set.swap(model, self.spec)
        """What the kernel set swapped in, e.g. "norms 5/5, GELU-tanh 2/2" (None for eager and compile)."""
        make_optimizer = partial(OPTIMIZERS[kernel_set.optimizer or config.optimizer], lr=config.lr)
        wrap = partial(WRAPPERS[config.parallel], config=config, device=device)
        self.precision: Precision = PRECISIONS[config.precision](model, make_optimizer, device, wrap)
        self.parallel_model = self.precision.model
        self.model = kernel_set.finish(self.parallel_model)
        self.replicas = replicas(config)
        pool = min(POOL_SIZE, config.grad_accum * (config.steps + config.warmup))
        self.batches = make_batches(spec=self.spec, batch_size=config.batch_size * self.replicas,
                                    seq_len=config.seq_len, data=config.data, tokenizer=config.tokenizer,
                                    seed=config.seed + RANK_SEED_STRIDE * rank, count=pool, device=device)
        self._attention = _attention_context(config.attention)
        self._next = 0

    def __call__(self) -> torch.Tensor:
        accum = self.config.grad_accum
        total = self._micro_step(last=accum == 1)
        for micro in range(1, accum):
            total = total + self._micro_step(last=micro == accum - 1)
        self.precision.step()
        # One micro-batch (the common case) runs exactly a hand-written loop's operations: no scaling, no sum.
        return total if accum == 1 else total / accum

    def _micro_step(self, *, last: bool) -> torch.Tensor:
        """Forward and backward of the next micro-batch; its loss, detached, in fp32."""
        accum = self.config.grad_accum
        batch = self.batches[self._next % len(self.batches)]
        self._next += 1
        with gradient_sync(self.parallel_model, self.config.parallel, last), self._attention():
            with self.precision.autocast():
                loss = self.model(input_ids=batch.input_ids, labels=batch.labels).loss
            # nn.DataParallel returns one loss per replica.
            loss = loss.mean() if loss.dim() else loss
            self.precision.backward(loss if accum == 1 else loss / accum)
        return loss.detach().float()

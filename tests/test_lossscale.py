"""The loss scale of a model split between ranks: one rank's overflow skips the step on every rank."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from lmbench.run.lossscale import DynamicLossScale
from lmbench.run.precision import AmpFp16, Fp16MasterWeights, SplitAmpFp16, mode

CPU = torch.device("cpu")


def another_ranks_overflow(found_inf: torch.Tensor) -> None:
    """What the MAX all-reduce makes of this rank's clean flag when another rank overflowed."""
    found_inf.fill_(1.0)


def fused_adamw(params):
    return torch.optim.AdamW(params, lr=0.1, fused=True)


def sgd(params):
    return torch.optim.SGD(params, lr=0.1)


@pytest.mark.parametrize("make_optimizer", [sgd, fused_adamw])
@pytest.mark.parametrize("precision", [SplitAmpFp16, Fp16MasterWeights])
def test_an_overflow_found_on_another_rank_skips_this_ranks_step(precision, make_optimizer):
    torch.manual_seed(0)
    p = precision(nn.Linear(4, 2), make_optimizer, CPU, agree=another_ranks_overflow)
    before = [w.detach().clone() for w in p.model.parameters()]
    dtype = next(p.model.parameters()).dtype
    with p.autocast():
        loss = p.model(torch.ones(3, 4, dtype=dtype)).float().mean()
    p.backward(loss)
    assert all(torch.isfinite(w.grad).all() for w in p.model.parameters())  # nothing overflowed here
    p.step()
    assert p.skipped_steps == 1 and p.loss_scale == 2.0**15
    assert all(torch.equal(b, w) for b, w in zip(before, p.model.parameters()))
    assert all(w.grad is None for w in p.model.parameters())


def test_without_another_ranks_overflow_the_step_is_taken_and_unscaled():
    torch.manual_seed(0)
    reference = nn.Linear(4, 2)
    split = SplitAmpFp16(nn.Linear(4, 2), sgd, CPU, agree=lambda found_inf: None)
    split.model.load_state_dict(reference.state_dict())
    x = torch.randn(3, 4)
    with split.autocast():
        split.backward(split.model(x).float().mean())
    scaled = split.model.weight.grad.clone()
    split.step()
    with torch.autocast("cpu", dtype=torch.float16):
        reference(x).float().mean().backward()
    # The gradient was scaled by 2^16 for the backward and unscaled for the step: plain SGD's update.
    assert torch.allclose(scaled / 2.0**16, reference.weight.grad)
    with torch.no_grad():
        expected = reference.weight - 0.1 * reference.weight.grad
    assert torch.allclose(split.model.weight, expected)
    assert split.skipped_steps == 0 and split.loss_scale == 2.0**16


def test_the_loss_scale_grows_after_its_interval_of_clean_steps():
    scale = DynamicLossScale(CPU, init_scale=8.0, growth_interval=2)
    grads = [torch.ones(3)]
    for _ in range(2):
        scale.unscale(grads)
        scale.update()
    assert float(scale.scale) == 16.0 and int(scale.skipped) == 0


def test_split_models_get_the_agreed_scale_and_the_others_keep_gradscaler():
    assert mode("amp-fp16", split=True) is SplitAmpFp16
    assert mode("amp-fp16") is AmpFp16
    assert mode("fp16", split=True) is Fp16MasterWeights


def _tensor_parallel_ranks(rank: int, folder: str, precisions: list[str], results: dict) -> None:
    """Each precision in a process group of its own, one after the other: the two processes' start-up is paid once."""
    for precision in precisions:
        _tensor_parallel_rank(rank, f"{folder}/store-{precision}", precision, results)


def _tensor_parallel_rank(rank: int, store_path: str, precision: str, results: dict) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    from lmbench.run.training import OPTIMIZERS, _agree_between_ranks

    dist.init_process_group("gloo", rank=rank, world_size=2, store=dist.FileStore(store_path, 2))
    try:
        torch.manual_seed(0)
        # Sharded projections (DTensor gradients) between a replicated norm (plain ones): GradScaler's one check
        # over both raised "got mixed torch.Tensor and DTensor". Split first, as training splits a tp model before
        # its precision copies the parameters (fp16's fp32 masters must be the shards the model trains).
        model = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 16), nn.Linear(16, 8))
        parallelize_module(model, init_device_mesh("cpu", (2,)), {"1": ColwiseParallel(), "2": RowwiseParallel()})
        # lmbench's fused AdamW: one fused call per kind of parameter (DTensor, plain), each taking the flag.
        p = mode(precision, split=True)(model, partial(OPTIMIZERS["adamw-fused"], lr=0.1), CPU,
                                        agree=_agree_between_ranks)

        def whole() -> list[torch.Tensor]:
            # A copy: a replicated DTensor's full_tensor() is its own local tensor, which the step updates in place.
            return [(w.detach().full_tensor() if hasattr(w, "full_tensor") else w.detach()).clone()
                    for w in p.model.parameters()]

        def train_step(overflow: bool) -> None:
            with p.autocast():
                x = torch.randn(4, 8, dtype=next(p.model.parameters()).dtype)
                p.backward(p.model(x).float().pow(2).mean())
            if overflow and rank == 1:  # this rank's own shard of one projection; rank 0's gradients are clean
                p.model[1].weight.grad.to_local()[0, 0] = float("inf")
            p.step()

        before = whole()
        train_step(overflow=True)
        skipped = all(torch.equal(b, a) for b, a in zip(before, whole()))
        train_step(overflow=False)
        stepped = not any(torch.equal(b, a) for b, a in zip(before, whole()))
        results[precision, rank] = (p.skipped_steps, p.loss_scale, skipped, stepped)
    finally:
        dist.destroy_process_group()


SPLIT_PRECISIONS = ["amp-fp16", "fp16"]


@pytest.fixture(scope="module")
def tensor_parallel_results(tmp_path_factory) -> dict:
    """(precision, rank) -> (skipped steps, loss scale, first step skipped, second taken), every precision from one
    pair of spawned ranks."""
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_tensor_parallel_ranks, args=(str(tmp_path_factory.mktemp("tp")), SPLIT_PRECISIONS, results),
                 nprocs=2)
        return dict(results)


@pytest.mark.parametrize("precision", SPLIT_PRECISIONS)
def test_one_tensor_parallel_ranks_overflow_skips_the_step_on_both_ranks(tensor_parallel_results, precision):
    results = {rank: found for (which, rank), found in tensor_parallel_results.items() if which == precision}
    assert results == {0: (1, 2.0**15, True, True), 1: (1, 2.0**15, True, True)}

"""The training step's random streams: each data-parallel replica draws dropout masks of its own, the ranks of a
tensor-parallel group the same ones, and parallel=none the stream it always drew."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmbench.plan.config import Config
from lmbench.plan.layout import layout
from lmbench.run.training import TrainingStep, seed_replica

CPU = torch.device("cpu")

FIRST_DROPOUT_MASK = """
import json, os, sys
import torch, torch.distributed as dist
from lmbench.plan.config import Config
from lmbench.run.training import TrainingStep

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
for parallel in sys.argv[2:]:  # each a training step of its own, one after the other in this one group of ranks
    config = Config(model="tiny-gpt2", parallel=parallel, nproc=world, batch_size=2, seq_len=16, data="markov",
                    precision="fp32", device="cpu")
    step = TrainingStep(config, torch.device("cpu"), rank=rank, world=world)
    masks = []
    drop = next(m for m in step.base_model.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0)
    drop.register_forward_hook(lambda module, args, out: masks.append((out == 0).flatten().tolist()))
    step()
    with open(os.path.join(sys.argv[1], f"{parallel}-rank{rank}.json"), "w") as f:
        json.dump(masks[0], f)
    dist.barrier()
os._exit(0)
"""


def _none_mask() -> list[bool]:
    step = TrainingStep(Config(model="tiny-gpt2", batch_size=2, seq_len=16, data="markov", precision="fp32",
                               device="cpu"), CPU)
    masks = []
    drop = next(m for m in step.base_model.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0)
    drop.register_forward_hook(lambda module, args, out: masks.append((out == 0).flatten().tolist()))
    step()
    return masks[0]


@pytest.fixture(scope="module")
def first_masks(tmp_path_factory) -> Path:
    """The folder of every rank's first mask under ddp and under fsdp+tp, from one 4-rank torchrun job: its ranks'
    start-up (torch and transformers imported, on a 2-core CPU) paid once, not once a layout."""
    folder = tmp_path_factory.mktemp("masks")
    script = folder / "masks.py"
    script.write_text(FIRST_DROPOUT_MASK)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4",
                           str(script), str(folder), "ddp", "fsdp+tp"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return folder


# ddp over the job's 4 ranks: 4 replicas, each its own group (2 would do; 4 is what one job for both layouts runs).
@pytest.mark.parametrize("parallel, nproc, groups", [("ddp", 4, [0, 1, 2, 3]), ("fsdp+tp", 4, [0, 0, 1, 1])])
def test_data_parallel_replicas_draw_their_own_dropout_masks_and_a_tensor_parallel_group_one(first_masks, parallel,
                                                                                           nproc, groups):
    """Real torchrun over gloo, the first dropout's mask of the first step on every rank (GPT-2's embedding dropout,
    on activations every rank of a tensor-parallel group holds whole). Every rank was seeded alike and never again:
    DDP's ranks applied one mask to their different rows (a reviewer). Replica 0 keeps parallel=none's stream."""
    masks = [json.loads((first_masks / f"{parallel}-rank{rank}.json").read_text()) for rank in range(nproc)]
    assert 0 < sum(masks[0]) < len(masks[0])  # dropout is on
    for rank, group in enumerate(groups):
        assert masks[rank] == masks[groups.index(group)], f"rank {rank} drew other masks than its group's first"
        assert (masks[rank] != masks[0]) == (group != 0), f"rank {rank}, replica {group}"
    assert masks[0] == _none_mask()


def test_nn_data_parallel_replicas_draw_from_generators_seeded_apart(monkeypatch):
    """nn.DataParallel's replica i runs on cuda:i and draws its masks from that GPU's generator, which
    torch.manual_seed seeds alike on every GPU: replicas past the first get seeds of their own, the first keeps its
    stream (CPU generators stand in for the GPUs')."""
    gpus = tuple(torch.Generator().manual_seed(7) for _ in range(3))
    monkeypatch.setattr(torch.cuda, "default_generators", gpus)
    config = Config(parallel="dp", nproc=3, seed=7)
    seed_replica(config, layout(config), 0)
    firsts = [torch.rand(4, generator=g) for g in gpus]
    assert torch.equal(firsts[0], torch.rand(4, generator=torch.Generator().manual_seed(7)))
    assert not torch.equal(firsts[0], firsts[1]) and not torch.equal(firsts[1], firsts[2])


def test_parallel_none_keeps_the_stream_its_build_left():
    state = torch.get_rng_state()
    config = Config(seed=3)
    seed_replica(config, layout(config), 0)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("parallel, nproc, streams", [
    ("pp", 2, [0, 1]), ("tp", 2, [0, 0]), ("fsdp+pp", 4, [0, 1, 2, 3]), ("fsdp+tp", 4, [0, 0, 1, 1])])
def test_each_pipeline_stage_draws_its_own_stream_and_a_tensor_parallel_group_one(parallel, nproc, streams):
    """Every stage of a pipeline drew the same dropout masks (a reviewer: block 1 on stage 1 repeated block 0's on
    stage 0, micro-batch after micro-batch). The first stage of replica 0 keeps parallel=none's stream."""
    config = Config(parallel=parallel, nproc=nproc, seed=5)
    shape = layout(config)
    drawn = []
    for rank in range(nproc):
        torch.manual_seed(5)
        seed_replica(config, shape, rank)
        drawn.append(torch.rand(8))
    assert torch.equal(drawn[0], torch.rand(8, generator=torch.Generator().manual_seed(5)))
    for rank, stream in enumerate(streams):
        assert torch.equal(drawn[rank], drawn[streams.index(stream)]), f"rank {rank} left its stream's first rank"
        assert torch.equal(drawn[rank], drawn[0]) == (stream == 0), f"rank {rank}"


def test_a_pipeline_stage_counts_the_overflow_agreement_as_a_wait_not_as_its_work():
    """A loss-scaled mode's overflow all-reduce waits for the slowest stage: timed inside the optimizer step, it read
    a middle stage 92% busy where fp32's read 98% idle for the same wait (a reviewer)."""
    import time
    from types import SimpleNamespace

    from lmbench.run.pipeline import BusyClock

    calls = []

    class Waiting:
        def check(self) -> None:
            calls.append("check")

        def agree(self) -> None:
            calls.append("agree")
            time.sleep(0.3)  # the other stages' backward still running

        def apply(self) -> None:
            calls.append("apply")

    clock = BusyClock(CPU)
    clock.new_step()
    stage = SimpleNamespace(pipeline=SimpleNamespace(sum_tied_gradients=lambda: calls.append("tied"), clock=clock),
                            precision=Waiting())
    TrainingStep._pipeline_update(stage)
    assert calls == ["tied", "check", "agree", "apply"]
    assert clock.busy_s(1)[0] < 0.1

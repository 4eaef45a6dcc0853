"""No host synchronisation inside a training step: the device is synchronised at the window's edges only.

A read of a device value on the host (`.item()`, `bool(tensor)`, `nonzero`) inside a step makes the host wait
for the device every step, so it can no longer queue the next step's work ahead; on a GPU that shows as idle
time charged to the model. torch dispatches each such read to one of SYNC_OPS, so a dispatch spy over a real
step finds them on a CPU too (and on a GPU, where gpu-validate's stage 10 runs this file). transformers'
packed-sequence check was one in every GPT-2 and Llama forward (lmbench.models.registry.for_unpadded_batches
answers it without reading).
"""

import collections
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lmbench.plan.config import Config
from lmbench.run.training import TrainingStep

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SYNC_OPS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default,
            torch.ops.aten.nonzero.default}


class HostReads(TorchDispatchMode):
    """Counts the ops that read a device value on the host, by op and the caller's file:line outside torch."""

    def __init__(self) -> None:
        super().__init__()
        self.found: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func in SYNC_OPS:
            caller = next((f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}"
                           for frame in reversed(traceback.extract_stack()[:-1])
                           if "/torch/" not in frame.filename), "?")
            self.found[f"{func} from {caller}"] += 1
        return func(*args, **(kwargs or {}))


def host_reads(config: Config, *, strict: bool = True) -> collections.Counter:
    """The host reads of one step (after a first, which creates the optimizer's state). `strict` on a GPU also
    runs it under torch's sync debug mode set to "error", which sees waits the dispatcher cannot (a device-to-host
    copy, a kernel that reads its own result, torch.equal): such a wait raises."""
    step = TrainingStep(config, DEVICE)
    step()
    before = torch.cuda.get_sync_debug_mode() if DEVICE.type == "cuda" else None
    try:
        if strict and DEVICE.type == "cuda":
            torch.cuda.set_sync_debug_mode("error")
        with HostReads() as spy:
            step()
    finally:
        if before is not None:
            torch.cuda.set_sync_debug_mode(before)
    return spy.found


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-llama", "tiny-bert-mlm", "tiny-torch-transformer-lm"])
@pytest.mark.parametrize(("kernels", "precision"), [("eager", "fp32"), ("eager", "amp-fp16"), ("eager", "bf16"),
                                                    ("triton", "amp-bf16")])
def test_a_training_step_never_reads_the_device_on_the_host(model, kernels, precision):
    config = Config(model=model, batch_size=2, seq_len=16, device=DEVICE.type, kernels=kernels, precision=precision,
                    grad_accum=2, label_smoothing=0.1 if model == "tiny-llama" else 0.0)
    assert host_reads(config) == {}
    from lmbench.plan.feasibility import host_read_in_step

    assert host_read_in_step(config) is None  # nothing to warn of on these paths


@pytest.mark.parametrize("optimizer", ["adamw-fused", "adamw"])
def test_fp16_master_weights_read_the_overflow_flag_only_for_an_optimizer_that_cannot_skip_itself(optimizer):
    """precision=fp16 skips an overflowed step on the device when the optimizer takes the flag (fused AdamW, the
    default): no read. A foreach AdamW cannot, so the flag is read on the host once a step, as GradScaler reads it
    for such an optimizer; which also shows that the spy finds what it looks for."""
    config = Config(model="tiny-gpt2", batch_size=2, seq_len=16, device=DEVICE.type, precision="fp16",
                    optimizer=optimizer)
    found = host_reads(config, strict=optimizer == "adamw-fused")
    # What a run on a GPU warns of (feasibility.host_read_in_step) is what the spy finds.
    from lmbench.plan.feasibility import host_read_in_step

    assert (host_read_in_step(config) is None) == (optimizer == "adamw-fused")
    if optimizer == "adamw-fused":
        assert found == {}
        return
    import inspect

    from lmbench.run.lossscale import DynamicLossScale

    lines, first = inspect.getsourcelines(DynamicLossScale.step)
    line = first + next(i for i, text in enumerate(lines) if "self.found_inf.item()" in text)
    # The foreach AdamW's reads of its step counts, CPU tensors (no wait for a device), are found too.
    assert found[f"aten._local_scalar_dense.default from lossscale.py:{line}"] == 1

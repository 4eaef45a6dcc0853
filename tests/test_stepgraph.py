"""cuda_graph=true: the whole training step captured once and replayed (lmbench.run.stepgraph).

On a CPU: which configurations it refuses, and why. On a GPU: a replayed step trains exactly as the eager one.
"""

import dataclasses

import pytest
import torch

from lmbench.measure.environment import Platform
from lmbench.plan.config import CUDA_GRAPH_WARMUP, Config, ConfigError
from lmbench.plan.feasibility import skip_reason
from lmbench.run.stepgraph import StepNotCapturable
from lmbench.run.training import TrainingStep

H100 = Platform(cuda_available=True, device_count=8, capability=(9, 0), torch_version=torch.__version__,
                apex_available=False, liger_available=False)
CPU = dataclasses.replace(H100, cuda_available=False, device_count=0, capability=None)


@pytest.mark.parametrize(("axes", "reason"), [
    ({"device": "cpu"}, "cuda_graph=true needs a CUDA GPU: a CUDA graph holds the step's kernels"),
    ({"parallel": "ddp", "nproc": 2}, "cuda_graph=true is implemented for parallel=none; parallel=ddp would need "
                                      "its collectives captured too"),
    ({"kernels": "compile"}, "cuda_graph=true with kernels=compile: torch.compile makes its own CUDA graphs "
                             "(mode=reduce-overhead), which lmbench does not offer yet"),
    ({"precision": "fp16"}, "cuda_graph=true with precision=fp16: its loss scaling decides on the host whether to "
                            "skip each step (lmbench.run.precision.Fp16), which a CUDA graph cannot hold; amp-fp16's "
                            "scaler decides on the device"),
    ({"warmup": CUDA_GRAPH_WARMUP - 1}, f"cuda_graph=true needs warmup >= {CUDA_GRAPH_WARMUP}: its eager steps and the "
                                    "capture stay out of the measured window"),
])
def test_configurations_a_step_graph_cannot_run_are_skipped_with_the_reason(axes, reason):
    config = Config(**{"device": "cuda", "cuda_graph": True, **axes})
    assert skip_reason(config, CPU if config.device == "cpu" else H100) == reason


def test_a_capturable_configuration_is_not_skipped_and_off_changes_no_key():
    assert skip_reason(Config(device="cuda", cuda_graph=True, kernels="triton", precision="amp-bf16"), H100) is None
    # An axis added later enters the key only when set: every key measured before it stays.
    assert Config(cuda_graph=False).key == Config().key != Config(cuda_graph=True).key


def test_cuda_graph_must_be_true_or_false():
    with pytest.raises(ConfigError, match="cuda_graph='yes' must be true or false"):
        Config(cuda_graph="yes")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU's refusal")
def test_the_step_refuses_a_cpu_device_with_a_typed_error():
    with pytest.raises(StepNotCapturable, match="cuda_graph=true needs a CUDA device, not cpu"):
        TrainingStep(Config(model="tiny-gpt2", batch_size=2, seq_len=16, device="cpu", cuda_graph=True),
                     torch.device("cpu"))


def losses(config: Config, steps: int) -> list[float]:
    step = TrainingStep(config, torch.device("cuda"))
    return [step().item() for _ in range(steps)]


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("kernels", ["eager", "triton"])
@pytest.mark.parametrize(("precision", "accum"), [("fp32", 1), ("amp-bf16", 2), ("amp-fp16", 1)])
def test_a_replayed_step_trains_as_the_eager_step(model, kernels, precision, accum):
    """Eight steps: two eager, the capture (which replays once), five replays, each on the next batches of the
    pool; the losses are the eager run's (dropout off: a graph's masks come from other Philox offsets)."""
    base = Config(model=model, batch_size=2, seq_len=32, grad_accum=accum, precision=precision, kernels=kernels,
                  device="cuda", dropout=False, steps=8, warmup=0)
    eager = losses(base, 8)
    graphed = losses(base.replace(cuda_graph=True), 8)
    assert eager[-1] < eager[0]
    torch.testing.assert_close(torch.tensor(graphed), torch.tensor(eager), rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_a_step_that_waits_on_the_host_is_refused_before_any_capture(monkeypatch):
    config = Config(model="tiny-gpt2", batch_size=2, seq_len=32, device="cuda", cuda_graph=True, dropout=False)
    step = TrainingStep(config, torch.device("cuda"))
    real = step._eager_step
    monkeypatch.setattr(step.graph, "run", lambda: real() + real().item() * 0)
    with pytest.raises(StepNotCapturable, match="the step waits for the device on the host"):
        step()

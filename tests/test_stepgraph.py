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
    ({"kernels": "compile"}, "cuda_graph=true with kernels=compile: torch.compile makes its own CUDA graphs; set "
                             "compile_mode=reduce-overhead instead"),
    ({"precision": "fp16", "optimizer": "adamw"},
     "cuda_graph=true with precision=fp16 and optimizer=adamw: its loss scaling reads the overflow flag on the host "
     "unless the optimizer is fused (optimizer=adamw-fused), which a CUDA graph cannot hold"),
    ({"precision": "amp-fp16", "optimizer": "adamw"},
     "cuda_graph=true with precision=amp-fp16 and optimizer=adamw: GradScaler reads the overflow flags on the host "
     "unless the optimizer is fused (optimizer=adamw-fused)"),
    ({"kernels": "liger", "model": "tiny-llama"},
     "cuda_graph=true with kernels=liger: Liger's fused linear cross-entropy counts the labels on the host (an "
     ".item() every step), which a CUDA graph cannot hold"),
    ({"checkpointing": "selective"}, "cuda_graph=true with checkpointing=selective: torch.utils.checkpoint saves and "
                                     "restores the CUDA generator's state, which a capture forbids"),
    ({"warmup": CUDA_GRAPH_WARMUP - 1}, f"cuda_graph=true needs warmup >= {CUDA_GRAPH_WARMUP}: its eager steps and the "
                                    "capture stay out of the measured window"),
])
def test_configurations_a_step_graph_cannot_run_are_skipped_with_the_reason(axes, reason):
    config = Config(**{"device": "cuda", "cuda_graph": True, **axes})
    assert skip_reason(config, CPU if config.device == "cpu" else H100) == reason


@pytest.mark.parametrize("axes", [{"kernels": "apex"}, {"optimizer": "apex-adam"}])
def test_apex_adam_is_refused_even_where_apex_is_installed(axes):
    from lmbench.plan.feasibility import _cuda_graph_problem

    assert _cuda_graph_problem(Config(device="cuda", cuda_graph=True, **axes)) == (
        "cuda_graph=true with Apex's FusedAdam (optimizer=apex-adam, or kernels=apex's): lmbench does not build it "
        "capturable (its capturable mode is a constructor argument with the lr on the device)")


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
@pytest.mark.parametrize(("precision", "accum"), [("fp32", 1), ("amp-bf16", 2), ("amp-fp16", 1), ("fp16", 1)])
def test_a_replayed_step_trains_as_the_eager_step(model, kernels, precision, accum):
    """Eight steps: two eager, the capture (which replays once), five replays, each on the next batches of the
    pool; the losses are the eager run's (dropout off: a graph's masks come from other Philox offsets)."""
    base = Config(model=model, batch_size=2, seq_len=32, grad_accum=accum, precision=precision, kernels=kernels,
                  device="cuda", dropout=False, steps=8, warmup=0)
    eager = torch.tensor(losses(base, 8))
    graphed = torch.tensor(losses(base.replace(cuda_graph=True), 8))
    assert eager[-1] < eager[0]
    # Backward kernels may add with atomics: the bound is how far eager lands from itself, or 1e-4.
    noise = (torch.tensor(losses(base, 8)) - eager).abs().max().item()
    apart = (graphed - eager).abs().max().item()
    assert apart <= max(1e-4, 4 * noise), f"graphed {apart:.3g} from eager; eager run to run {noise:.3g}"


@pytest.mark.gpu
def test_a_step_that_waits_on_the_host_is_refused_before_any_capture(monkeypatch):
    config = Config(model="tiny-gpt2", batch_size=2, seq_len=32, device="cuda", cuda_graph=True, dropout=False)
    step = TrainingStep(config, torch.device("cuda"))
    real = step._eager_step
    monkeypatch.setattr(step.graph, "run", lambda: real() + real().item() * 0)
    with pytest.raises(StepNotCapturable, match="the step waits for the device on the host"):
        step()


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-llama"])
def test_the_captured_step_attends_as_the_eager_one(monkeypatch, model):
    """No explicit mask: transformers' packed-sequence check, which hands SDPA a mask while the stream is capturing,
    is answered without it (lmbench.models.registry.for_unpadded_batches), so flash attention stays possible in the
    graph."""
    import torch.nn.functional as F

    seen = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append((kwargs.get("attn_mask") is None and (len(args) < 4 or args[3] is None),
                     bool(kwargs.get("is_causal", False)), torch.cuda.is_current_stream_capturing()))
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    step = TrainingStep(Config(model=model, batch_size=2, seq_len=32, device="cuda", cuda_graph=True, dropout=False),
                        torch.device("cuda"))
    for _ in range(3):  # two eager steps and the capture
        step()
    assert {capturing for _, _, capturing in seen} == {False, True}
    assert all(no_mask and causal for no_mask, causal, _ in seen), seen


@pytest.mark.gpu
def test_the_allocated_peak_of_a_graphed_run_holds_the_step_it_replays(tmp_path):
    """A replay allocates nothing: without the capture's peak the window's would leave out activations."""
    from click.testing import CliRunner

    from lmbench.analyze import results
    from lmbench.cli import cli

    out = tmp_path / "run"
    done = CliRunner().invoke(cli, ["run", "--out", str(out), "--device", "cuda", "--set", "model=tiny-gpt2",
                                    "--set", "batch_size=8", "--set", "seq_len=256", "--set", "steps=5",
                                    "--set", "warmup=3", "--set", "cuda_graph=false,true", "--set", "dropout=false"])
    assert done.exit_code == 0, done.output
    records = {r["config"]["cuda_graph"]: r for r in results.read(out).records}
    assert all(r["status"] == "ok" for r in records.values()), [r["reason"] for r in records.values()]
    eager, graphed = (records[flag]["metrics"]["mem_peak_allocated_bytes"] for flag in (False, True))
    assert graphed >= 0.9 * eager


import math

import pytest
import torch
import torch.nn as nn
from op_log import OpLog

from lmbench.measure.mathmode import matmul_mode
from lmbench.run.precision import PRECISIONS, AmpFp16, Fp16MasterWeights

CPU = torch.device("cpu")


def sgd(params):
    return torch.optim.SGD(params, lr=0.1)


def tiny():
    torch.manual_seed(0)
    return nn.Linear(4, 2)


def fused_adamw(params):
    return torch.optim.AdamW(params, lr=0.1, fused=True)


def test_fp16_keeps_fp32_master_weights_and_half_model():
    p = Fp16MasterWeights(tiny(), sgd, CPU)
    assert all(w.dtype == torch.float16 for w in p.model.parameters())
    assert all(m.dtype == torch.float32 for m in p.master)
    assert p.optimizer.param_groups[0]["params"][0] is p.master[0]


@pytest.mark.parametrize("make_optimizer", [sgd, fused_adamw])
def test_fp16_overflow_skips_the_step_and_halves_the_scale(make_optimizer):
    # SGD: the flag read on the host; fused AdamW: the step skipped by the optimizer's kernel, on the device.
    p = Fp16MasterWeights(tiny(), make_optimizer, CPU, init_scale=1024.0)
    before = [w.detach().clone() for w in p.model.parameters()]
    masters = [m.detach().clone() for m in p.master]
    loss = p.model(torch.ones(3, 4, dtype=torch.float16)).float().sum()
    p.backward(loss)
    p.model.weight.grad[0, 0] = float("inf")
    p.step()
    assert p.skipped_steps == 1
    assert p.loss_scale == 512.0
    assert all(torch.equal(b, w) for b, w in zip(before, p.model.parameters()))
    assert all(torch.equal(b, m) for b, m in zip(masters, p.master))
    assert all(w.grad is None for w in p.model.parameters())
    # The skipped step is not counted as one of AdamW's: the next good step is its first.
    assert all(int(s["step"]) == 0 for s in p.optimizer.state.values()) if make_optimizer is fused_adamw else True
    p.backward(p.model(torch.ones(3, 4, dtype=torch.float16)).float().sum())
    p.step()
    assert p.skipped_steps == 1 and not all(torch.equal(b, w) for b, w in zip(before, p.model.parameters()))


@pytest.mark.parametrize("make_optimizer", [sgd, fused_adamw])
def test_fp16_step_reads_the_overflow_flag_only_for_an_optimizer_that_cannot_skip_itself(make_optimizer):
    p = Fp16MasterWeights(tiny(), make_optimizer, CPU)
    for _ in range(2):
        p.backward(p.model(torch.ones(3, 4, dtype=torch.float16)).float().sum())
        with OpLog() as ours:
            p.step()
        assert len(ours.host_reads()) == (1 if make_optimizer is sgd else 0)


def test_fp16_good_step_unscales_updates_master_and_copies_back():
    p = Fp16MasterWeights(tiny(), sgd, CPU, init_scale=8.0, growth_interval=2)
    master_before = p.master[1].detach().clone()  # bias
    loss = p.model(torch.ones(3, 4, dtype=torch.float16)).float().sum()
    p.backward(loss)
    p.step()
    # d(sum)/d(bias) = 3 per output; SGD lr 0.1 -> bias - 0.3, exactly unscaled from 8 * 3.
    assert torch.allclose(p.master[1], master_before - 0.3)
    assert torch.equal(p.model.bias, p.master[1].half())
    assert p.skipped_steps == 0 and p.loss_scale == 8.0
    p.backward(p.model(torch.ones(1, 4, dtype=torch.float16)).float().sum())
    p.step()
    assert p.loss_scale == 16.0  # grows after growth_interval good steps


def test_amp_fp16_counts_steps_gradscaler_skipped():
    p = AmpFp16(tiny(), sgd, CPU)
    with p.autocast():
        loss = p.model(torch.ones(3, 4)).float().sum()
    p.backward(loss)
    p.model.weight.grad[0, 0] = float("nan")
    scale = p.loss_scale
    p.step()
    assert p.skipped_steps == 1 and p.loss_scale == scale / 2




@pytest.mark.parametrize("make_optimizer", [sgd, fused_adamw])
def test_amp_fp16_step_waits_for_the_device_no_more_than_gradscaler_itself(make_optimizer):
    # GradScaler reads found_inf on the host once a step unless the optimizer takes the scaler (fused
    # AdamW); counting skipped steps must add no read of its own.
    p = AmpFp16(tiny(), make_optimizer, CPU)
    model = tiny()
    bare_opt, bare_scaler = make_optimizer(list(model.parameters())), torch.amp.GradScaler("cpu")
    for step in range(2):
        with p.autocast():
            p.backward(p.model(torch.ones(3, 4)).float().sum())
        with torch.autocast("cpu", dtype=torch.float16):
            bare_scaler.scale(model(torch.ones(3, 4)).float().sum()).backward()
        with OpLog() as ours:
            p.step()
        with OpLog() as bare:
            bare_scaler.step(bare_opt)
            bare_scaler.update()
            bare_opt.zero_grad(set_to_none=True)
        assert len(ours.host_reads()) == len(bare.host_reads()) <= 1
    # Both overflow at first (3 x 2**16 is past fp16) and skip alike; the device-side count agrees.
    assert p.loss_scale == bare_scaler.get_scale() < 2.0**16
    assert p.skipped_steps == round(math.log2(2.0**16 / bare_scaler.get_scale()))


# FP8 converts the linears of a model's transformer blocks, which a bare nn.Linear has not: tests/test_float8.py.
@pytest.mark.parametrize("name", [name for name in PRECISIONS if not name.startswith("fp8")])
def test_every_mode_trains_a_step_on_cpu(name):
    p = PRECISIONS[name](tiny(), sgd, CPU)
    x = torch.ones(3, 4, dtype=next(p.model.parameters()).dtype)
    before = p.model.weight.detach().clone()
    for _ in range(10):  # scaled modes may skip the first steps while the loss scale comes down
        with p.autocast():
            loss = p.model(x).float().sum()
        p.backward(loss)
        p.step()
    assert not torch.equal(before, p.model.weight)
    assert p.skipped_steps < 10


def test_tf32_switch_is_scoped():
    saved = torch.backends.cuda.matmul.allow_tf32
    with matmul_mode("tf32"):
        assert torch.backends.cuda.matmul.allow_tf32
    with matmul_mode("fp32"):
        assert not torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cuda.matmul.allow_tf32 == saved


def test_window_counts_its_own_loss_scale_overflows_and_warns(monkeypatch):
    """Warmup's skipped steps are not the window's; a window with skipped steps says so (they update nothing)."""
    from lmbench.plan.config import Config
    from lmbench.run.worker import measure

    unpatched = torch.amp.GradScaler.__init__

    def huge_scale(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        # 2**35 overflows fp16 gradients: every step skips and halves it until the gradients fit.
        unpatched(self, *args, **{**kwargs, "init_scale": 2.0**35})

    monkeypatch.setattr(torch.amp.GradScaler, "__init__", huge_scale)
    config = Config.from_mapping({"model": "tiny-gpt2", "batch_size": 2, "seq_len": 32, "steps": 20, "warmup": 5,
                                  "device": "cpu", "precision": "amp-fp16", "telemetry": False})
    record = measure(config)
    metrics = record["metrics"]
    assert record["status"] == "ok"
    assert metrics["overflow_skipped_warmup_steps"] == 5
    window = metrics["overflow_skipped_steps"]
    assert 0 < window < 20
    # The final scale is 2**35 halved once per skipped step (no growth within 2000 good steps).
    assert metrics["loss_scale_final"] == 2.0 ** (35 - 5 - window)
    assert any(f"{window} of 20 measured steps skipped the optimizer update" in w for w in record["warnings"])


def test_pure_16_bit_weights_keep_floating_buffers_in_fp32():
    """Llama's RoPE frequencies cast to bf16 put the rotary angles 0.85 rad off at position 2047 (a reviewer's
    finding, 2026-11-28): parameters take the dtype, buffers keep theirs."""
    from lmbench.models.registry import MODELS, build_model

    for mode in ("bf16", "fp16"):
        model = PRECISIONS[mode](build_model(MODELS["tiny-llama"], attention="sdpa"), sgd, CPU).model
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16 if mode == "bf16" else torch.float16}
        assert {b.dtype for b in model.buffers()} == {torch.float32}


def test_a_masked_lm_loss_is_fp32_under_16_bit_weights():
    """BERT's MLM loss is computed in the weights' dtype by transformers (the causal LMs upcast): pure bf16 recorded
    losses rounded to bf16's steps, and parity's 16-bit tolerances were set by that rounding."""
    from lmbench.plan.config import Config
    from lmbench.run.training import TrainingStep

    step = TrainingStep(Config(model="tiny-bert-mlm", precision="bf16", batch_size=2, seq_len=16, device="cpu"), CPU)
    batch = step.batches[0]
    with step.precision.autocast():
        assert step._loss(batch, 0.0).dtype == torch.float32


def test_data_parallel_replicas_run_under_the_callers_autocast_dtype(monkeypatch):
    """torch's parallel_apply re-enters autocast in each replica's thread with `enabled` only, and the dtype is
    thread-local: on two GPUs an amp-bf16 row ran fp16 autocast in its replicas. Shown on the CPU's autocast, whose
    default dtype (bf16) stands in for CUDA's (fp16), with torch's threading of the replicas."""
    import threading

    from lmbench.run import parallel

    def threaded(self, replicas, inputs, kwargs):
        enabled, out = torch.is_autocast_enabled("cpu"), [None] * len(replicas)

        def work(i):
            with torch.amp.autocast("cpu", enabled=enabled):
                out[i] = replicas[i](*inputs[i], **kwargs[i])

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(replicas))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return out

    class CpuDataParallel(parallel.DataParallel):
        device_type = "cpu"

    monkeypatch.setattr(nn.DataParallel, "parallel_apply", threaded)
    linear = tiny()
    x = torch.ones(3, 4)
    with torch.autocast("cpu", dtype=torch.float16):
        assert threaded(None, [linear], [(x,)], [{}])[0].dtype == torch.bfloat16  # torch's way: the dtype lost
        (out,) = CpuDataParallel(linear).parallel_apply([linear], [(x,)], [{}])
    assert out.dtype == torch.float16


@pytest.mark.gpu
def test_data_parallel_replicas_on_two_gpus_run_in_amp_bf16():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA GPUs (nn.DataParallel calls a single replica in the caller's thread)")
    from lmbench.run.parallel import DataParallel

    seen = []
    linear = nn.Linear(8, 8).cuda()
    linear.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        DataParallel(linear)(torch.ones(4, 8, device="cuda"))
    assert seen == [torch.bfloat16, torch.bfloat16]

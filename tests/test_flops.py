import importlib.util

import pytest

from lmbench.measure.flops import matmul_params, palm_flops_per_token, recompute_flops_per_token, rerun_params
from lmbench.measure.metrics import flops_utilisation, stall_note, tail_percentile, throughput
from lmbench.measure.peaks import PEAKS, find_device, peak_flops
from lmbench.models.registry import MODELS, build_model

# GPT-2 124M by hand. Per block: c_attn 768x2304 + 2304, attn c_proj 768x768 + 768,
# mlp c_fc 768x3072 + 3072, mlp c_proj 3072x768 + 768, two LayerNorms 2 x (768 + 768).
GPT2_BLOCK = (768 * 2304 + 2304) + (768 * 768 + 768) + (768 * 3072 + 3072) + (3072 * 768 + 768) + 2 * 1536
GPT2_NON_EMBEDDING = 12 * GPT2_BLOCK + 1536  # + final LayerNorm
GPT2_HEAD = 768 * 50257  # tied LM head: the matmul runs even though the weight is the embedding's


def test_gpt2_124m_block_count_by_hand():
    assert GPT2_BLOCK == 7_087_872
    assert GPT2_NON_EMBEDDING == 85_056_000


def test_gpt2_124m_flops_per_token_hand_count():
    model = build_model(MODELS["gpt2-124m"], attention="sdpa", device="meta")  # shapes only: no init
    n = matmul_params(model)
    assert n == GPT2_NON_EMBEDDING + GPT2_HEAD == 123_653_376
    flops = palm_flops_per_token(n_matmul_params=n, n_layers=12, n_heads=12, head_dim=64, seq_len=1024)
    # 6N = 741,920,256; 12 * 12 * 12 * 64 * 1024 = 113,246,208
    assert flops == 855_166_464


def test_torch_lm_counts_its_tied_head_once():
    from lmbench.models.torch_lm import TorchTransformerLM

    m = TorchTransformerLM(vocab_size=100, hidden=8, n_layers=1, n_heads=2, intermediate=16, max_positions=10)
    block = (8 * 24 + 24) + (8 * 8 + 8) + (8 * 16 + 16) + (16 * 8 + 8) + 2 * 16
    assert matmul_params(m) == block + 16 + 100 * 8


def test_peak_table_matches_device_names_and_cites_sources():
    assert find_device("NVIDIA H100 80GB HBM3").device == "H100 SXM"
    assert find_device("NVIDIA H100 PCIe").device == "H100 PCIe"
    assert find_device("NVIDIA H100 NVL").device == "H100 NVL"
    assert find_device("NVIDIA H200").device == "H200 SXM"
    assert find_device("NVIDIA A100-SXM4-80GB").device == "A100"
    assert find_device("NVIDIA A100 80GB PCIe").device == "A100"
    assert find_device("NVIDIA L4").device == "L4"
    assert find_device("NVIDIA L40S").device == "L40S"
    assert find_device("NVIDIA B200").device == "B200"
    assert find_device("NVIDIA GB200") is None  # another power envelope, other peaks
    assert find_device("NVIDIA GeForce RTX 4090").device == "RTX 4090"
    assert find_device("NVIDIA H100-PCIE-80GB").device == "H100 PCIe"  # case ignored
    assert find_device("NVIDIA H100 SXM5 94GB").device == "H100 SXM"
    # Variants the table has no figures for get no peak, not a sibling's (the SXM's, the H200's, the full 4090's).
    for unlisted in ("NVIDIA H100 CNX", "NVIDIA H100 80GB HBM2e", "NVIDIA GH200 480GB", "NVIDIA GeForce RTX 4090 D",
                     "NVIDIA H800", "NVIDIA H20", "NVIDIA RTX A1000", "NVIDIA RTX A1000 Laptop GPU",
                     "NVIDIA GeForce RTX 4090 Laptop GPU"):
        assert find_device(unlisted) is None, unlisted
    assert peak_flops("NVIDIA H100 80GB HBM3", "amp-bf16")[0] == pytest.approx(989.5e12)
    assert peak_flops("NVIDIA H100 80GB HBM3", "fp32")[0] == pytest.approx(67e12)
    assert peak_flops("NVIDIA A100-SXM4-40GB", "tf32")[0] == pytest.approx(156e12)
    assert peak_flops("Some Future GPU", "bf16") is None
    # A MIG instance has a fraction of the SMs: no MFU against the whole GPU's peak.
    assert peak_flops("NVIDIA H100 80GB HBM3 MIG 3g.40gb", "amp-bf16") is None
    assert peak_flops(None, "bf16") is None
    for row in PEAKS:
        assert row.source.startswith("https://")


def test_mfu_is_achieved_over_peak_and_absent_for_unknown_devices():
    m = flops_utilisation(flops_per_token=1_000_000, tokens_per_s_per_device=100_000_000.0,
                          device_name="NVIDIA H100 80GB HBM3", precision="bf16")
    assert m["tflops"] == pytest.approx(100.0)
    assert m["mfu"] == pytest.approx(100e12 / 989.5e12)
    cpu = flops_utilisation(flops_per_token=1_000_000, tokens_per_s_per_device=1e6, device_name=None,
                            precision="fp32")
    assert cpu["mfu"] is None and cpu["tflops"] == pytest.approx(1.0)


@pytest.mark.parametrize("device, fp8_tflops", [("NVIDIA H100 80GB HBM3", 1979.0), ("NVIDIA H100 PCIe", 1513.0),
                                                ("NVIDIA H100 NVL", 1670.5), ("NVIDIA H200", 1979.0),
                                                ("NVIDIA L40S", 733.0), ("NVIDIA L4", 242.5), ("NVIDIA B200", 4500.0)])
def test_fp8_mfu_is_stated_against_the_bf16_and_the_fp8_peak(device, fp8_tflops):
    m = flops_utilisation(flops_per_token=1_000_000, tokens_per_s_per_device=100_000_000.0, device_name=device,
                          precision="fp8-rowwise", hardware_flops_per_token=2_000_000)
    bf16 = find_device(device).bf16_tflops
    assert fp8_tflops == pytest.approx(2 * bf16, rel=0.02)  # every datasheet here about doubles bf16 for FP8
    assert m["peak_tflops"] == pytest.approx(bf16) and m["mfu"] == pytest.approx(100 / bf16)
    assert m["peak_fp8_tflops"] == pytest.approx(fp8_tflops)
    assert m["mfu_fp8_peak"] == pytest.approx(100 / fp8_tflops) and m["hfu_fp8_peak"] == pytest.approx(200 / fp8_tflops)


def test_fp8_mfu_is_absent_where_the_table_has_no_fp8_peak():
    a100 = flops_utilisation(flops_per_token=1, tokens_per_s_per_device=1.0, device_name="NVIDIA A100-SXM4-80GB",
                             precision="fp8-tensorwise")
    assert a100["mfu"] is not None and a100["peak_fp8_tflops"] is None and a100["mfu_fp8_peak"] is None
    assert "mfu_fp8_peak" not in flops_utilisation(flops_per_token=1, tokens_per_s_per_device=1.0,
                                                   device_name="NVIDIA H100 PCIe", precision="amp-bf16")


def test_throughput_uses_median_step_and_counts_all_ranks():
    t = throughput(step_times_s=[0.5, 0.4, 0.6, 2.0], tokens_per_step=1000, samples_per_step=4, world_size=2)
    assert t["step_time_median_s"] == pytest.approx(0.55)
    assert t["tokens_per_s"] == pytest.approx(2000 / 0.55)
    assert t["tokens_per_s_per_device"] == pytest.approx(1000 / 0.55)
    assert t["samples_per_s"] == pytest.approx(8 / 0.55)


def test_sustained_is_the_headline_and_stalls_are_counted():
    # Nine 10 ms steps and one 200 ms stall in a 0.3 s window: the median hides the stall.
    times = [0.01] * 9 + [0.2]
    t = throughput(step_times_s=times, tokens_per_step=100, samples_per_step=2, window_s=0.3)
    assert t["tokens_per_s_typical"] == pytest.approx(100 / 0.01)
    assert t["tokens_per_s"] == t["tokens_per_s_sustained"] == pytest.approx(1000 / 0.3)
    assert t["samples_per_s"] == pytest.approx(20 / 0.3) and t["tokens_per_s_per_device"] == t["tokens_per_s"]
    assert t["stalls"] is True and t["stall_steps"] == 1 and t["stall_excess_s"] == pytest.approx(0.19)
    # Ten steps have a p90 (one step beyond it), no p95 or p99: interpolated between the two slowest, they were
    # 0.183 s and 0.117 s, the stall with a haircut.
    assert t["step_time_p90_s"] == pytest.approx(0.01 + 0.1 * 0.19) and t["step_time_p10_s"] == pytest.approx(0.01)
    assert t["step_time_p95_s"] is None and t["step_time_p99_s"] is None
    assert stall_note(t) == "stalls: sustained 66.7% below typical (1 outlier step, +190 ms)"
    # Steps that agree to 0.1% have no interquartile range to speak of: one 0.7% slower is no stall (an H100 fp32
    # record counted it one), one 6% slower is.
    tight = [0.1000, 0.1001, 0.0999, 0.1000, 0.1001, 0.1000, 0.0999, 0.1000, 0.1007]
    assert throughput(step_times_s=tight, tokens_per_step=100, samples_per_step=2)["stall_steps"] == 0
    assert throughput(step_times_s=[*tight[:-1], 0.106], tokens_per_step=100, samples_per_step=2)["stall_steps"] == 1
    steady = throughput(step_times_s=[0.01] * 10, tokens_per_step=100, samples_per_step=2, window_s=0.101)
    assert steady["stalls"] is False and steady["stall_steps"] == 0 and stall_note(steady) is None
    # Ten 10 ms steps in a 0.2 s window: no step stands out, the time went between steps; the note says so.
    between = throughput(step_times_s=[0.01] * 10, tokens_per_step=100, samples_per_step=2, window_s=0.2)
    assert between["stalls"] is True and between["stall_steps"] == 0
    assert stall_note({**between, "window_s": 0.2, "steps_measured": 10}) == (
        "stalls: 50.0% below typical, spread over steps (mean 10 vs median 10 ms; 100 ms between steps)")


def test_full_checkpointing_recompute_hand_count():
    model = build_model(MODELS["gpt2-124m"], attention="sdpa", device="meta")
    assert rerun_params(model, "gpt2") == 12 * GPT2_BLOCK == 85_054_464
    # 2 x 85,054,464 + 4 x 12 x 12 x 64 x 1024 = 170,108,928 + 37,748,736
    assert recompute_flops_per_token(checkpointing="full", n_rerun_params=12 * GPT2_BLOCK, n_layers=12, n_heads=12,
                                     head_dim=64, seq_len=1024) == 207_857_664
    for mode in ("none", "selective"):
        assert recompute_flops_per_token(checkpointing=mode, n_rerun_params=1, n_layers=1, n_heads=1, head_dim=1,
                                         seq_len=1) == 0
    # Selective reruns a fused attention with dropout (GPT-2 on CUDA), its matmuls alone: 4 x 12 x 12 x 64 x 1024.
    assert recompute_flops_per_token(checkpointing="selective", n_rerun_params=12 * GPT2_BLOCK, n_layers=12,
                                     n_heads=12, head_dim=64, seq_len=1024, attention_rerun=True) == 37_748_736
    llama = build_model(MODELS["llama-1b"], attention="sdpa", device="meta")
    # Per layer: q, o 2048x2048, k, v 2048x512, gate/up 2048x8192, two RMSNorms; down_proj (8192x2048) is not rerun.
    assert rerun_params(llama, "llama") == 16 * (2 * 2048 * 2048 + 2 * 2048 * 512 + 2 * 2048 * 8192 + 2 * 2048)


def _attention_flops(query, key, *args, out_val=None, **kwargs) -> int:
    """CPU SDPA, which torch's FLOP counter has no formula for: QK^T and AV, 2 FLOPs a multiply-add."""
    *batch, length, dim = query
    heads = 1
    for size in batch:
        heads *= size
    return 4 * heads * length * key[-2] * dim


def _counted_step_flops(config):
    """FLOPs torch's counter sees in one training step (after a first one: compiled or lazy parts settled)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from lmbench.run.training import TrainingStep

    cpu_sdpa = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention_flops}
    step = TrainingStep(config, torch.device("cpu"))
    step()
    with FlopCounterMode(display=False, custom_mapping=cpu_sdpa) as counter:
        step()
    # A CPU's attention with dropout runs unfused: its matmuls are saved, nothing reruns.
    assert not step.reruns_attention
    return step, counter.get_total_flops()


@pytest.mark.parametrize("model, changes", [
    ("tiny-gpt2", {}), ("tiny-llama", {}), ("tiny-bert-mlm", {}), ("tiny-torch-transformer-lm", {}),
    # Without dropout nothing after GPT-2's c_proj saves its output: not rerun (a reviewer's count: the analytic
    # figure was 13,844,480 against 9,437,184 rerun, 2 x c_proj's weights x tokens too many).
    ("tiny-gpt2", {"dropout": False}), ("tiny-bert-mlm", {"dropout": False}),
    # A float8 linear saves its own input casts: Llama's down_proj reruns (59 matmuls a step against 57).
    pytest.param("tiny-llama", {"precision": "fp8-tensorwise"}, marks=pytest.mark.skipif(
        importlib.util.find_spec("torchao") is None, reason="needs torchao (the fp8 extra)")),
])
def test_recompute_count_matches_what_torch_counts_in_a_real_step(model, changes):
    """torch's FLOP counter over one real training step: full checkpointing adds the analytic recompute (which
    also counts biases and norms, as PaLM's N does), selective adds no matmul FLOPs at all."""
    from lmbench.plan.config import Config

    spec, counted = MODELS[model], {}
    for mode in ("none", "full", "selective"):
        config = Config(model=model, batch_size=2, seq_len=32, device="cpu", checkpointing=mode, **changes)
        step, counted[mode] = _counted_step_flops(config)
    per_token = recompute_flops_per_token(checkpointing="full", n_rerun_params=step.rerun_params,
                                          n_layers=spec.n_layers, n_heads=spec.n_heads, head_dim=spec.head_dim,
                                          seq_len=32)
    analytic = per_token * config.tokens_per_step
    assert counted["full"] - counted["none"] == pytest.approx(analytic, rel=0.03)
    assert counted["selective"] == counted["none"]


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-llama", "tiny-bert-mlm"])
def test_the_fused_losss_recomputed_logits_count_as_hardware_flops(model):
    """kernels=triton's fused linear cross-entropy recomputes the logits in its backward: torch's counter sees
    8 V d per scored position against eager's 6 V d per position (a reviewer: +57,344 FLOPs a token at tiny sizes,
    none of it in the hardware count), and the record's hardware FLOPs now hold it."""
    from lmbench.measure.flops import head_extra_flops_per_token
    from lmbench.plan.config import Config

    spec = MODELS[model]
    # 16 positions a sequence (a causal LM scores 15): the interpreted loss kernels run a program a row, and the
    # count per token is exact at any length.
    seq_len = 16
    base = Config(model=model, batch_size=2, seq_len=seq_len, device="cpu", dropout=False)
    _, eager = _counted_step_flops(base)
    step, fused = _counted_step_flops(base.replace(kernels="triton"))
    assert step.fused_loss
    extra = head_extra_flops_per_token(vocab=base.padded_vocab, hidden=spec.hidden, seq_len=seq_len,
                                       fused_recompute=True, causal=spec.objective == "causal-lm")
    assert fused - eager == pytest.approx(extra * base.tokens_per_step, rel=0.01)
    if model == "tiny-gpt2":  # and a record says so
        from lmbench.run.worker import measure

        m = measure(base.replace(kernels="triton", warmup=0, steps=1, telemetry=False))["metrics"]
        assert m["hardware_flops_per_token"] - m["flops_per_token"] == extra


def test_tensor_parallel_ranks_each_run_the_whole_lm_head():
    from lmbench.measure.flops import head_extra_flops_per_token

    # llama-1b at tp 2: 6 x 128256 x 2048 = 1.576 GFLOP a token more than PaLM's count, against its 7.4 GFLOP.
    assert head_extra_flops_per_token(vocab=128256, hidden=2048, seq_len=1024, tp=2) == 1_576_009_728
    assert head_extra_flops_per_token(vocab=128256, hidden=2048, seq_len=1024, tp=4) == 3 * 1_576_009_728
    assert head_extra_flops_per_token(vocab=50304, hidden=768, seq_len=1024, tp=1) == 0
    # The fused loss: 8 V d over the 1,023 scored positions of 1,024, less eager's 6 V d: +9.0% of gpt2-124m's count.
    fused = head_extra_flops_per_token(vocab=50257, hidden=768, seq_len=1024, fused_recompute=True)
    assert fused == 8 * 50257 * 768 * 1023 // 1024 - 6 * 50257 * 768 == 76_893_210
    assert fused / 855_166_464 == pytest.approx(0.090, abs=5e-4)
    assert head_extra_flops_per_token(vocab=50257, hidden=768, seq_len=1024, fused_recompute=True, causal=False) \
        == 2 * 50257 * 768


def test_hfu_exceeds_mfu_only_with_recompute():
    m = flops_utilisation(flops_per_token=1_000_000, tokens_per_s_per_device=100_000_000.0,
                          device_name="NVIDIA H100 80GB HBM3", precision="bf16", hardware_flops_per_token=1_300_000)
    assert m["hfu"] == pytest.approx(1.3 * m["mfu"]) and m["hardware_tflops"] == pytest.approx(130.0)
    same = flops_utilisation(flops_per_token=1_000_000, tokens_per_s_per_device=1e8,
                             device_name="NVIDIA H100 80GB HBM3", precision="bf16")
    assert same["hfu"] == same["mfu"] and same["hardware_flops_per_token"] == 1_000_000


def test_a_padded_vocabulary_trains_and_counts_its_rows_but_never_draws_them():
    """vocab_multiple=384 pads tiny-gpt2's 512 rows to 768: the model has them, its params and FLOPs count
    them (256 more LM-head rows x width 64), and no batch draws a token past the real 512."""
    import torch

    from lmbench.plan.config import Config
    from lmbench.run.training import TrainingStep

    base = Config(model="tiny-gpt2", batch_size=2, seq_len=16, steps=2, warmup=0, device="cpu")
    plain, padded = (TrainingStep(base.replace(vocab_multiple=m), torch.device("cpu")) for m in (1, 384))
    embedding = padded.base_model.get_input_embeddings()
    assert embedding.num_embeddings == 768 and plain.base_model.get_input_embeddings().num_embeddings == 512
    assert padded.matmul_params - plain.matmul_params == 256 * 64
    assert padded.param_count - plain.param_count == 256 * 64  # tied: the head shares the embedding's rows
    for step in (plain, padded):
        assert torch.isfinite(step())
    tokens = torch.cat([b.input_ids.flatten() for b in padded.batches])
    assert int(tokens.max()) < 512


def test_a_cv_just_past_the_limit_never_reads_as_equal_to_it():
    from lmbench.measure.metrics import unstable_steps

    assert unstable_steps([0.103]) == "unstable steps: cv 10.3% > 10%"
    assert unstable_steps([0.1004]) == "unstable steps: cv 10.04% > 10%"
    # The row's cv column is the median repeat's: the note says how many repeats were past the limit.
    assert unstable_steps([0.014, 0.148, 0.02]) == "unstable steps: cv 14.8% > 10% in 1 of 3 repeats"
    assert unstable_steps([0.1, 0.05]) is None


def test_a_tail_percentile_needs_a_step_beyond_it():
    steps = [0.01 * (i + 1) for i in range(100)]
    assert tail_percentile(steps, 99) == pytest.approx(0.01 + 0.99 * 0.99)
    assert tail_percentile(steps[:99], 99) is None and tail_percentile(steps[:20], 95) == pytest.approx(0.1905)
    assert tail_percentile(steps[:19], 95) is None and tail_percentile(steps[:19], 90) is not None
    assert tail_percentile(steps[:9], 10) is None and tail_percentile(steps[:9], 50) == pytest.approx(0.05)


def test_an_untied_head_is_counted_once():
    """Every registry model ties its head to its embedding: counting an untied one's weight twice (once as a
    parameter, once as the head) passed every test (a mutation test)."""
    import torch.nn as nn

    from lmbench.measure.flops import matmul_params

    class Untied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.block, self.head = nn.Embedding(100, 8), nn.Linear(8, 8), nn.Linear(8, 100, bias=False)

        def get_output_embeddings(self) -> nn.Module:
            return self.head

    assert matmul_params(Untied()) == 8 * 8 + 8 + 800  # the block and its bias, and the head once; no table

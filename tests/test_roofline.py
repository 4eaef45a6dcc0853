"""Roofline distance by hand: unavoidable bytes per precision, which ceiling binds, the measured ratio."""

import pytest

from lmbench.measure.roofline import bytes_per_step, for_record, roofline


def test_unavoidable_bytes_by_hand():
    # amp-bf16: fp32 weights read twice (8) + grads written (4); AdamW reads p, g, m, v and writes p, m, v (28).
    assert bytes_per_step(params=10**9, precision="amp-bf16") == 40 * 10**9
    # fp16: fp16 weights (4) + grads (2); AdamW on fp32 masters: 2 x 4 + 2 + 4 x 4 = 26; the fp16 copy written (2).
    assert bytes_per_step(params=10**9, precision="fp16") == 34 * 10**9
    # bf16 everywhere: 4 + 2 + (4 + 2 + 8).
    assert bytes_per_step(params=10**9, precision="bf16") == 20 * 10**9


def test_the_binding_ceiling_and_the_ratio():
    r = roofline(flops_per_step=600e12, bytes_per_step=40e9, matmul_flops_per_s=600e12, copy_bytes_per_s=2e12,
                 step_time_s=1.5)
    assert r == {"roofline_compute_s": 1.0, "roofline_memory_s": 0.02, "roofline_step_time_s": 1.0,
                 "roofline_bound": "compute", "roofline_ratio": 1.5}
    small = roofline(flops_per_step=1e9, bytes_per_step=40e9, matmul_flops_per_s=600e12, copy_bytes_per_s=2e12,
                     step_time_s=0.05)
    assert small["roofline_bound"] == "memory" and small["roofline_ratio"] == pytest.approx(2.5)


def test_a_record_against_measured_ceilings():
    ceilings = {"bf16_matmul_tflops": 600.0, "copy_gb_per_s": 2000.0}
    metrics = {"hardware_flops_per_token": 1e9, "tokens_per_step": 1_200_000, "tokens_per_s": 400_000, "params": 10**9,
               "devices": 2}
    # Per device: 600e12 FLOPs over 600 TFLOP/s = 1 s; measured step 3 s.
    r = for_record(metrics, {"precision": "amp-bf16", "parallel": "ddp"}, ceilings)
    assert r["roofline_step_time_s"] == pytest.approx(1.0) and r["roofline_ratio"] == pytest.approx(3.0)
    # FSDP shards what the optimizer updates, but the forward and backward gather every weight whole: amp-bf16 reads
    # 2 x 4 bytes of weights and writes 4 of gradients a parameter (12) whatever the sharding, and AdamW's 28 bytes
    # a parameter (weights and moments read and written, gradients read) fall to half.
    fsdp = for_record(metrics, {"precision": "amp-bf16", "parallel": "fsdp"}, ceilings)
    assert r["roofline_memory_s"] == pytest.approx(10**9 * (12 + 28) / 2000e9)
    assert fsdp["roofline_memory_s"] == pytest.approx(10**9 * (12 + 28 / 2) / 2000e9)
    # Pipelines across 2 FSDP groups of 2: each rank's stage holds half the weights, its optimizer a quarter.
    mesh = {**metrics, "devices": 4, "dp_degree": 2, "tp_degree": 1, "pp_degree": 2}
    staged = for_record(mesh, {"precision": "amp-bf16", "parallel": "fsdp+pp"}, ceilings)
    assert staged["roofline_memory_s"] == pytest.approx(10**9 * (12 / 2 + 28 / 4) / 2000e9)
    tp = for_record({**mesh, "dp_degree": 1, "tp_degree": 4, "pp_degree": 1}, {"precision": "amp-bf16",
                                                                               "parallel": "tp"}, ceilings)
    assert tp["roofline_memory_s"] == pytest.approx(10**9 * (12 + 28) / 4 / 2000e9)
    assert for_record({**metrics, "params": None}, {"precision": "fp32"}, ceilings) is None

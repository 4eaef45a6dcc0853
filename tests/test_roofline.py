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


def _roofline_record(batch, device_name=None, *, cpu=False):
    """A hand-made amp-bf16 record with what the roofline needs, measured on the H100 of its environment unless
    `device_name` (its GPUs' names) or `cpu` says otherwise."""
    from test_report import hand_record

    record = hand_record("amp-bf16", batch, 2000.0)
    record["metrics"].update(hardware_flops_per_token=1e9, params=10**9, devices=1)
    if device_name:
        record["metrics"]["device_names"] = [device_name]
    if cpu:
        record["env"]["device"] = {"type": "cpu", "name": "AMD EPYC", "physical_cores": 2}
    return record


H100_CEILINGS = {"device": "NVIDIA H100 80GB HBM3", "bf16_matmul_tflops": 1000.0, "copy_gb_per_s": 2000.0}


def test_the_roofline_holds_only_the_ceilings_own_device_s_records_and_says_which_it_left_out():
    from lmbench.analyze import report

    records = [_roofline_record(8), _roofline_record(16, "NVIDIA A100-SXM4-80GB"), _roofline_record(32, cpu=True)]
    grid = report.roofline_section(records, H100_CEILINGS)["roofline"]
    # 8 x 1024 tokens... hand_record's tokens_per_step is 1024: 1.02 ms of bf16 FLOPs, 20 ms of bytes, step 512 ms.
    assert grid.rows == [["8", "memory", "1.02", "20.00", "512.00", "25.60x", "bf16 1000 TFLOP/s"]]
    assert grid.note == ("Ceilings measured on NVIDIA H100 80GB HBM3. Left out: 1 configuration measured on NVIDIA "
                         "A100-SXM4-80GB; 1 configuration measured on a CPU (AMD EPYC) (another device's ceilings "
                         "are no roof for them).")
    # The H100's own records alone: every row, and no word of any left out.
    assert report.roofline_section(records[:1], H100_CEILINGS)["roofline"].note == (
        "Ceilings measured on NVIDIA H100 80GB HBM3.")


@pytest.mark.parametrize("others", [[("NVIDIA A100-SXM4-80GB", False)], [(None, True)]])
def test_ceilings_of_another_device_than_every_record_are_refused(others):
    from lmbench.analyze import report
    from lmbench.errors import UsageError

    records = [_roofline_record(8 * (i + 1), name, cpu=cpu) for i, (name, cpu) in enumerate(others)]
    ran = "a CPU (AMD EPYC)" if others[0][1] else "NVIDIA A100-SXM4-80GB"
    with pytest.raises(UsageError) as refused:
        report.roofline_section(records, H100_CEILINGS)
    assert str(refused.value) == (
        f"--ceilings: measured on NVIDIA H100 80GB HBM3, and no configuration here was (they ran on {ran}): another "
        "device's ceilings are no roof for them; give the ceilings of the GPU that ran them (lmbench ceilings --out "
        "FILE, run on it), or leave --ceilings out")


def _write_run(folder, records):
    import json

    folder.mkdir()
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_report_with_ceilings_of_the_run_s_gpu_or_another_s(tmp_path):
    import json

    from click.testing import CliRunner

    from lmbench.cli import cli

    ceilings = tmp_path / "ceilings.json"
    ceilings.write_text(json.dumps(H100_CEILINGS))
    h100 = _write_run(tmp_path / "h100", [_roofline_record(8)])
    result = CliRunner().invoke(cli, ["report", str(h100), "--out", str(tmp_path / "r1"), "--ceilings", str(ceilings)])
    assert result.exit_code == 0, result.output
    md = (tmp_path / "r1" / "report.md").read_text()
    assert "## Distance to the roofline" in md and "Ceilings measured on NVIDIA H100 80GB HBM3." in md
    # The H100's file against an A100 run: refused, and nothing written (it once gave a roofline with no word).
    a100 = _write_run(tmp_path / "a100", [_roofline_record(8, "NVIDIA A100-SXM4-80GB")])
    result = CliRunner().invoke(cli, ["report", str(a100), "--out", str(tmp_path / "r2"), "--ceilings", str(ceilings)])
    assert result.exit_code == 2
    assert result.stderr.startswith("lmbench: error: --ceilings: measured on NVIDIA H100 80GB HBM3, and no "
                                    "configuration here was (they ran on NVIDIA A100-SXM4-80GB)")
    assert not (tmp_path / "r2" / "report.md").exists()

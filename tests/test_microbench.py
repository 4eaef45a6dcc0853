import csv

import pytest
import torch
from click.testing import CliRunner

from lmbench.cli import cli
from lmbench.errors import UsageError
from lmbench.measure import microbench


def test_shapes_are_parsed_per_op():
    assert microbench.parse_shape(microbench.OPS["rmsnorm"], "8192x4096") == (8192, 4096)
    assert microbench.parse_shape(microbench.OPS["linear-ce"], "8192x4096x128256") == (8192, 4096, 128256)
    with pytest.raises(UsageError, match=r"^--shape '8x0': rmsnorm takes MxN \(positive integers\)$"):
        microbench.parse_shape(microbench.OPS["rmsnorm"], "8x0")


def test_bytes_moved_counts():
    # bf16 (2 bytes): fwd reads x and writes y; fwd+bwd adds reading x and dy and writing dx.
    assert microbench.OPS["rmsnorm"].bytes_moved((8192, 4096), 2, "fwd") == 2 * 8192 * 4096 * 2
    assert microbench.OPS["rmsnorm"].bytes_moved((8192, 4096), 2, "fwd+bwd") == 5 * 8192 * 4096 * 2
    assert microbench.OPS["linear-ce"].bytes_moved((8, 4, 10), 2, "fwd+bwd") == 4 * (8 * 4 + 10 * 4) * 2


def test_every_op_lists_ours_and_says_why_others_are_missing():
    for op in microbench.OPS.values():
        impls = op.impls()
        assert callable(impls["lmbench triton"]) and callable(impls["eager"])
        assert impls["liger"] == "Liger-Kernel is not installed" or callable(impls["liger"])


def test_csv_carries_gpu_and_versions(tmp_path):
    rows = [{"op": "rmsnorm", "shape": "2x2", "dtype": "bfloat16", "mode": "fwd", "impl": "eager", "status": "ok",
             "time_median_ms": 0.5, "time_p20_ms": 0.4, "time_p80_ms": 0.6, "gb_per_s": 1.0, "bytes_moved": 16,
             "peak_mem_bytes": 0, "reason": None}]
    path = tmp_path / "k.csv"
    microbench.write_csv(rows, path, {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.11", "triton": "3.6", "cuda": "13.0"})
    (row,) = csv.DictReader(path.open())
    assert row["gpu"] == "NVIDIA H100 80GB HBM3" and row["time_median_ms"] == "0.5" and row["triton"] == "3.6"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU message")
def test_cli_says_skipped_without_cuda():
    result = CliRunner().invoke(cli, ["kernels", "--op", "rmsnorm", "--shape", "64x64"])
    assert result.exit_code == 0
    assert result.output.startswith("skipped: lmbench kernels needs a CUDA GPU")


@pytest.mark.gpu
def test_measure_on_gpu_gives_every_available_impl_a_time(tmp_path):
    rows = microbench.measure(microbench.OPS["rmsnorm"], (1024, 1024), torch.bfloat16, "fwd+bwd",
                              torch.device("cuda"))
    by = {r["impl"]: r for r in rows}
    assert by["lmbench triton"]["status"] == "ok" and by["eager"]["status"] == "ok"
    assert 0 < by["lmbench triton"]["time_p20_ms"] <= by["lmbench triton"]["time_median_ms"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU message")
def test_ceilings_say_skipped_without_cuda():
    result = CliRunner().invoke(cli, ["ceilings"])
    assert result.exit_code == 0 and result.output.startswith("skipped: lmbench ceilings needs a CUDA GPU")


@pytest.mark.gpu
def test_ceilings_are_below_the_datasheet(tmp_path):
    from lmbench.measure.ceilings import measure
    from lmbench.measure.peaks import peak_flops

    figures = measure(torch.device("cuda"), matmul_n=4096, copy_bytes=2**28, repeats=5)
    peak = peak_flops(figures["device"], "bf16")
    assert figures["bf16_matmul_tflops"] > 10 and figures["copy_gb_per_s"] > 100
    if peak:
        assert figures["bf16_matmul_tflops"] * 1e12 < peak[0] * 1.05

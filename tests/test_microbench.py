import csv
import json
import statistics

import pytest
import torch
from click.testing import CliRunner

from lmbench.cli import cli
from lmbench.errors import UsageError
from lmbench.measure import graphtime, microbench


def test_shapes_are_parsed_per_op():
    assert microbench.parse_shape(microbench.OPS["rmsnorm"], "8192x4096") == (8192, 4096)
    assert microbench.parse_shape(microbench.OPS["linear-ce"], "8192x4096x128256") == (8192, 4096, 128256)
    with pytest.raises(UsageError, match=r"^--shape '8x0': rmsnorm takes MxN \(positive integers\)$"):
        microbench.parse_shape(microbench.OPS["rmsnorm"], "8x0")


def test_several_shapes_in_one_call():
    op = microbench.OPS["layernorm"]
    assert microbench.parse_shapes(op, "8192x2048, 8192x4096,8192x2048") == [(8192, 2048), (8192, 4096)]
    with pytest.raises(UsageError, match=r"^--shape '8192': layernorm takes MxN \(positive integers\)$"):
        microbench.parse_shapes(op, "8192x2048,8192")


def test_bandwidth_against_the_measured_copy_ceiling_in_table_and_csv(tmp_path):
    from rich.console import Console

    from lmbench.analyze.table import kernels_table

    rows = microbench.against_copy([
        {"op": "rmsnorm", "shape": "2x2", "dtype": "bfloat16", "mode": "fwd", "impl": "lmbench triton",
         "status": "ok", "time_median_ms": 0.5, "time_p20_ms": 0.4, "time_p80_ms": 0.6, "gb_per_s": 2700.0,
         "bytes_moved": 16, "peak_mem_bytes": 0, "reason": None},
        {"op": "rmsnorm", "shape": "2x2", "dtype": "bfloat16", "mode": "fwd", "impl": "apex", "status": "skipped",
         "reason": "Apex is not installed"}], 3000.0)
    assert rows[0]["pct_of_copy"] == pytest.approx(90.0) and "pct_of_copy" not in rows[1]
    console = Console(width=200, record=True)
    console.print(kernels_table(rows, title="t"))
    text = console.export_text()
    assert "% of copy" in text and "90%" in text and "skipped: Apex is not installed" in text
    microbench.write_csv(rows, tmp_path / "k.csv", {"gpu": "g", "torch": "t", "triton": "3.6", "cuda": "13.0"})
    first, second = csv.DictReader((tmp_path / "k.csv").open())
    assert (first["pct_of_copy"], first["copy_gb_per_s"], second["pct_of_copy"]) == ("90.0", "3000.0", "")


def test_a_bad_ceilings_file_is_refused_before_anything_runs(tmp_path):
    result = CliRunner().invoke(cli, ["kernels", "--op", "rmsnorm", "--shape", "64x64", "--ceilings",
                                      str(tmp_path / "none.json")])
    assert result.exit_code == 2 and "--ceilings" in result.output


def test_bytes_moved_counts():
    # bf16 (2 bytes): fwd reads x and writes y; fwd+bwd adds reading x and dy and writing dx.
    assert microbench.OPS["rmsnorm"].bytes_moved((8192, 4096), 2, "fwd") == 2 * 8192 * 4096 * 2
    assert microbench.OPS["rmsnorm"].bytes_moved((8192, 4096), 2, "fwd+bwd") == 5 * 8192 * 4096 * 2
    assert microbench.OPS["linear-ce"].bytes_moved((8, 4, 10), 2, "fwd+bwd") == 3 * (8 * 4 + 10 * 4) * 2


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
    assert {name: by[name]["bandwidth_from"] for name in ("eager", "compile", "lmbench triton")} == dict.fromkeys(
        ("eager", "compile", "lmbench triton"), "device"), [r.get("note") for r in rows]
    assert 0 < by["lmbench triton"]["time_p20_ms"] <= by["lmbench triton"]["time_median_ms"]
    # A second shape in the same process: torch.compile specialises again (a fresh cache), and still runs.
    second = {r["impl"]: r for r in microbench.measure(microbench.OPS["rmsnorm"], (2048, 512), torch.bfloat16,
                                                       "fwd+bwd", torch.device("cuda"))}
    assert second["compile"]["status"] == "ok" and second["compile"]["shape"] == "2048x512"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU message")
def test_ceilings_say_skipped_without_cuda(tmp_path):
    result = CliRunner().invoke(cli, ["ceilings", "--out", str(tmp_path / "c.json")])
    assert result.exit_code == 0 and result.output.startswith("skipped: lmbench ceilings needs a CUDA GPU")
    # The file asked for says so, and a report given it refuses it by name rather than reading no figure.
    assert json.loads((tmp_path / "c.json").read_text())["status"] == "skipped"
    refused = CliRunner().invoke(cli, ["kernels", "--op", "rmsnorm", "--shape", "64x64", "--ceilings",
                                       str(tmp_path / "c.json")])
    assert refused.exit_code == 2 and "holds no figures: lmbench ceilings was skipped there" in refused.output


@pytest.mark.gpu
def test_ceilings_are_below_the_datasheet(tmp_path):
    from lmbench.measure.ceilings import measure
    from lmbench.measure.peaks import peak_flops

    figures = measure(torch.device("cuda"), matmul_n=4096, copy_bytes=2**28, repeats=5)
    assert figures["bf16_matmul_tflops"] > 10 and figures["copy_gb_per_s"] > 100
    # Every mode below its datasheet peak, and fp32 with TF32 off far below tf32 (not silently TF32).
    for mode in ("bf16", "fp16", "tf32", "fp32"):
        peak = peak_flops(figures["device"], mode)
        if peak:
            assert 0 < figures[f"{mode}_matmul_tflops"] * 1e12 < peak[0] * 1.05, mode
    assert figures["fp32_matmul_tflops"] < figures["tf32_matmul_tflops"] / 2


def test_ceilings_measure_every_math_mode_on_a_cpu_with_cuda_events_faked(monkeypatch):
    """The code path of `lmbench ceilings` without a GPU: CUDA events timed on the host."""
    import time

    from lmbench.measure import ceilings

    class Event:
        def __init__(self, **_):
            self.t = 0.0

        def record(self):
            self.t = time.perf_counter()

        def synchronize(self):
            pass

        def elapsed_time(self, end):
            return (end.t - self.t) * 1e3

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "a CPU")
    before = torch.backends.cuda.matmul.allow_tf32
    figures = ceilings.measure(torch.device("cpu"), matmul_n=64, copy_bytes=2**16, repeats=2)
    assert all(figures[f"{mode}_matmul_tflops"] > 0 for mode in ("bf16", "fp16", "tf32", "fp32"))
    assert figures["copy_gb_per_s"] > 0 and figures["device"] == "a CPU"
    assert torch.backends.cuda.matmul.allow_tf32 == before  # the tf32 and fp32 GEMMs put the switch back


def test_calls_per_graph_aim_at_forty_ms_a_replay():
    assert [graphtime.calls_per_graph(ms) for ms in (0.5, 0.11, 53.0, 0.0)] == [80, 100, 1, 100]


def test_device_time_is_the_calls_graph_less_the_flushes_graph():
    assert graphtime.per_call_ms([10.0, 12.0], [2.0, 2.0], 4) == [2.0, 2.5]
    with pytest.raises(ValueError):
        graphtime.per_call_ms([10.0], [], 4)


def test_a_call_much_slower_between_events_than_on_the_device_is_called_launch_bound():
    # The H100's RMSNorm 8192x2048 under torch.compile: 0.53 ms a call between events, 0.11 ms for the native kernel.
    assert graphtime.launch_bound(0.53, 0.11) == (
        "launch-bound: 0.530 ms a call with the host in the loop, 0.110 ms on the device (4.8x)")
    assert graphtime.launch_bound(0.12, 0.11) is None


def test_bandwidth_comes_from_the_device_time_when_there_is_one(tmp_path):
    from rich.console import Console

    from lmbench.analyze.table import kernels_table

    base = {"op": "rmsnorm", "shape": "2x2", "dtype": "bfloat16", "mode": "fwd+bwd", "status": "ok", "reason": None,
            "time_median_ms": 0.5, "time_p20_ms": 0.4, "time_p80_ms": 0.6, "peak_mem_bytes": 0, "bytes_moved": 10**6}
    graphed = microbench.with_device_time({**base, "impl": "ours"}, [0.1, 0.1, 0.12, 0.08], 10**6)
    assert graphed["gb_per_s"] == pytest.approx(10.0) and graphed["bandwidth_from"] == "device"
    assert graphed["device_median_ms"] == pytest.approx(0.1) and graphed["note"].startswith("launch-bound: 0.500 ms")
    ungraphed = microbench.with_device_time({**base, "impl": "liger"}, None, 10**6,
                                            "no device time (RuntimeError: operation not permitted)")
    # No device time, no rate: 0.5 ms between events may be the host's (launch-bound), not the kernels'.
    assert ungraphed["gb_per_s"] is None and ungraphed["bandwidth_from"] is None
    assert ungraphed["note"] == ("no device time (RuntimeError: operation not permitted): no GB/s from an "
                                 "event-timed call")
    console = Console(width=250, record=True)
    console.print(kernels_table([graphed, ungraphed], title="t"))
    text = console.export_text()
    assert "0.1000" in text and "0.0920-0.1080" in text and "launch-bound" in text and "no device time" in text
    microbench.write_csv([graphed, ungraphed], tmp_path / "k.csv", {"gpu": "g", "torch": "t", "triton": "3.6",
                                                                     "cuda": "13.0"})
    first, second = csv.DictReader((tmp_path / "k.csv").open())
    assert (first["device_median_ms"], first["bandwidth_from"], second["device_median_ms"]) == ("0.1", "device", "")


def test_a_device_time_at_or_under_zero_is_no_device_time():
    row = {"time_median_ms": 0.5, "status": "ok"}
    empty = microbench.with_device_time(row, [0.0, -0.001, 0.001], 10**6)
    assert empty["bandwidth_from"] is None and empty["gb_per_s"] is None
    assert empty["note"] == "no device time (a median of 0.0000 ms): no GB/s from an event-timed call"
    assert "device_median_ms" not in empty


def test_a_compute_bound_op_gets_its_flop_rate_against_the_matmul_ceiling():
    """8192 x 4096 x 128256 fwd+bwd: 6 BT H V = 25.8 TFLOP a call; 37.38 ms is 691 TFLOP/s (torch.compile's on the
    H100), 90% of a 770 TFLOP/s bf16 ceiling; its bytes are 3 (BT H + V H) x 2 (read x and W, read them again and
    write their gradients), and no % of copy is given."""
    op = microbench.OPS["linear-ce"]
    shape = (8192, 4096, 128256)
    assert op.flops(shape, "fwd+bwd") == 6 * 8192 * 4096 * 128256
    assert op.bytes_moved(shape, 2, "fwd") * 3 == op.bytes_moved(shape, 2, "fwd+bwd") == (
        3 * (8192 * 4096 + 128256 * 4096) * 2)
    row = {"time_median_ms": 37.5, "time_p20_ms": 37.4, "time_p80_ms": 37.6, "status": "ok", "impl": "compile"}
    graphed = microbench.with_device_time(row, [37.38], op.bytes_moved(shape, 2, "fwd+bwd"),
                                          flops=op.flops(shape, "fwd+bwd"))
    assert graphed["tflops"] == pytest.approx(691, abs=1)
    rows = microbench.against_matmul(microbench.against_copy([graphed], 3000.0), 770.0)
    assert "pct_of_copy" not in rows[0] and rows[0]["pct_of_matmul"] == pytest.approx(89.7, abs=0.1)
    assert microbench.OPS["rmsnorm"].flops is None


def test_after_a_failed_capture_no_later_one_is_trusted(monkeypatch):
    """torch before 2.12 leaves its allocator believing a capture is under way after one failed (pytorch#180395)."""
    monkeypatch.setattr(graphtime, "_failed", ["RuntimeError: operation not permitted when stream is capturing"])
    with pytest.raises(graphtime.NotCapturable, match="an earlier capture in this process failed"):
        graphtime.device_times_ms(lambda: None, [], estimate_ms=1.0, device=None)


@pytest.mark.gpu
def test_device_time_takes_the_host_out_of_the_loop():
    """A call that sleeps 2 ms on the host around a 4 MB add: events see the sleep, the replayed graph does not;
    a large copy, which keeps the device busy, reads the same both ways."""
    import time

    device = torch.device("cuda")
    x = torch.zeros(2**20, device=device)

    def slow_host():
        time.sleep(0.002)
        x.add_(1)

    assert statistics.median(graphtime.device_times_ms(slow_host, [], estimate_ms=2.0, device=device)) < 0.2
    # A host wait is found in the warm-up, before any capture, and leaves later captures trusted.
    with pytest.raises(graphtime.NotCapturable, match="waits for the device on the host"):
        graphtime.device_times_ms(lambda: x.sum().item(), [], estimate_ms=0.1, device=device)
    assert not graphtime._failed
    src = torch.empty(2**28, dtype=torch.int8, device=device)
    dst = torch.empty_like(src)
    copy_ms = statistics.median(graphtime.device_times_ms(lambda: dst.copy_(src), [], estimate_ms=0.2, device=device))
    events = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        events.append(start.elapsed_time(end))
    assert copy_ms == pytest.approx(statistics.median(events), rel=0.2)

import csv
import dataclasses
import json
import statistics

import pytest
import torch
from click.testing import CliRunner

from lmbench.cli import cli
from lmbench.errors import UsageError
from lmbench.measure import graphtime, microbench, sidebyside


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
    # Interleaved (a 1024x1024 norm's graphs fit together on any card), each against ours, the clock beside.
    assert by["eager"]["device_timing"] == "interleaved" and by["eager"]["rounds"] == microbench.ROUNDS
    assert by["eager"]["vs_ours_low"] <= by["eager"]["vs_ours"] <= by["eager"]["vs_ours_high"]
    assert "vs_ours" not in by["lmbench triton"] and by["eager"]["sm_clock_min_mhz"] > 0
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
    # Calls launched back to back between each pair of events (the host's first launch spread over them); no NVML.
    assert "ms of calls launched back to back" in figures["method"] and figures["clocks"] is None
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


def test_a_captured_pair_kept_past_its_block_holds_no_graph():
    """`captured` releases its graphs when its block ends: a Captured still referenced (a loop variable) must not
    keep a graph's memory pool alive while the next implementation is captured."""
    held = graphtime.Captured(object(), object(), 4)
    held.release()
    assert held._work is None and held._flushes is None


def device_times_ms(fn, grads, *, estimate_ms, device, replays=graphtime.REPLAYS):
    """Device milliseconds of one call of `fn`, one figure per replay pair (CUDA only)."""
    with graphtime.captured(fn, grads, estimate_ms=estimate_ms, device=device) as graph:
        return [graph.sample() for _ in range(replays)]


def test_after_a_failed_capture_no_later_one_is_trusted(monkeypatch):
    """torch before 2.12 leaves its allocator believing a capture is under way after one failed (pytorch#180395):
    no later capture, and no empty_cache() (an internal assert there)."""
    monkeypatch.setattr(graphtime, "_failed", ["RuntimeError: operation not permitted when stream is capturing"])
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: pytest.fail("empty_cache() after a failed capture"))
    graphtime.empty_cache()
    with pytest.raises(graphtime.NotCapturable, match="an earlier capture in this process failed"):
        device_times_ms(lambda: None, [], estimate_ms=1.0, device=None)


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

    assert statistics.median(device_times_ms(slow_host, [], estimate_ms=2.0, device=device)) < 0.2
    # A host wait is found in the warm-up, before any capture, and leaves later captures trusted.
    with pytest.raises(graphtime.NotCapturable, match="waits for the device on the host"):
        device_times_ms(lambda: x.sum().item(), [], estimate_ms=0.1, device=device)
    assert not graphtime._failed
    src = torch.empty(2**28, dtype=torch.int8, device=device)
    dst = torch.empty_like(src)
    copy_ms = statistics.median(device_times_ms(lambda: dst.copy_(src), [], estimate_ms=0.2, device=device))
    events = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        events.append(start.elapsed_time(end))
    assert copy_ms == pytest.approx(statistics.median(events), rel=0.2)


class _FakeGraphs:
    """graphtime.captured on a CPU: each implementation's graph replays at a set time, scaled by a drift that
    grows with every replay (a card warming up), and the graphs held at once are counted."""

    def __init__(self, monkeypatch, times, *, refuse=()):
        import contextlib

        self.held, self.most_held, self.order, self.drift = 0, 0, [], 1.0
        fakes = self

        class Graph:
            def __init__(self, name):
                self.name = name

            def sample(self):
                fakes.order.append(self.name)
                fakes.drift *= 1.01
                return times[self.name] * fakes.drift

        @contextlib.contextmanager
        def captured(fn, grads, *, estimate_ms, device, target_ms=40.0, flush=None):
            name = fn()
            if name in refuse:
                raise graphtime.NotCapturable("it waits for the device on the host (x.item())")
            self.held += 1
            self.most_held = max(self.most_held, self.held)
            try:
                yield Graph(name)
            finally:
                self.held -= 1

        monkeypatch.setattr(graphtime, "captured", captured)
        monkeypatch.setattr(graphtime, "FLUSH_BYTES", 8)
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (1000, 2000))
        monkeypatch.setattr(graphtime, "empty_cache", lambda: None)
        clocks = iter([1980.0, 1980.0, 1755.0] + [1900.0] * 100)
        monkeypatch.setattr(sidebyside, "clock_reader", lambda device: lambda: (
            next(clocks), ["sw_power_cap"] if fakes.order.count("lmbench triton") == 2 else []))


def _timing(samples, *, interleaved=True):
    return sidebyside.DeviceTiming(samples=samples, why_not={}, rounds=4, interleaved=interleaved, clocks_mhz=[],
                                   clock_events=[])


def _timed(peaks):
    return {name: ((lambda name=name: name), 0.1, peak) for name, peak in peaks.items()}


def test_device_times_are_taken_in_interleaved_rounds_with_every_graph_held(monkeypatch):
    fakes = _FakeGraphs(monkeypatch, {"eager": 0.3, "lmbench triton": 0.1, "liger": 0.13})
    timing = sidebyside.device_times(_timed({"eager": 100, "lmbench triton": 100, "liger": 100}), [],
                                     device=torch.device("cpu"), rounds=4)
    assert timing.interleaved and fakes.most_held == 3 and timing.why_not == {}
    assert {name: len(times) for name, times in timing.samples.items()} == {"eager": 4, "lmbench triton": 4,
                                                                            "liger": 4}
    each = [tuple(fakes.order[i:i + 3]) for i in range(0, 12, 3)]
    assert all(sorted(r) == ["eager", "liger", "lmbench triton"] for r in each) and len(set(each)) > 1
    # A clock read after each round; a power cap seen after the second.
    assert timing.clocks_mhz == [1980.0, 1980.0, 1755.0, 1900.0] and timing.clock_events == ["sw_power_cap"]
    assert timing.columns() == {"rounds": 4, "device_timing": "interleaved", "sm_clock_min_mhz": 1755.0,
                                "sm_clock_max_mhz": 1980.0, "clock_events": "sw_power_cap"}
    # The drift (1% a replay, 12% over the session) cancels out of the ratio within each round: Liger's 1.3x of
    # ours comes back within a few percent, where its medians over the session would carry the drift's noise.
    rows = sidebyside.against([{"impl": name, "status": "ok"} for name in ("eager", "lmbench triton", "liger")],
                              timing, sidebyside.OURS)
    assert rows[2]["vs_ours"] == pytest.approx(1.3, rel=0.03) and rows[2]["vs_ours_verdict"] == "ours faster"
    assert rows[0]["vs_ours"] == pytest.approx(3.0, rel=0.03) and "vs_ours" not in rows[1]


def test_graphs_too_large_to_hold_together_are_timed_one_after_another(monkeypatch):
    fakes = _FakeGraphs(monkeypatch, {"eager": 0.3, "lmbench triton": 0.1})
    # 2 x (600 + 200) + 8 flush bytes > 1000 free: one graph at a time; 2 x (300 + 190) + 8 fits.
    assert not sidebyside.fit_together([600, 200], 1000) and sidebyside.fit_together([300, 190], 1000)
    timing = sidebyside.device_times(_timed({"eager": 600, "lmbench triton": 200}), [],
                                     device=torch.device("cpu"), rounds=3)
    assert not timing.interleaved and fakes.most_held == 1
    assert fakes.order == ["eager"] * 3 + ["lmbench triton"] * 3
    assert sidebyside.timing_caption([{"status": "ok", **timing.columns()}]) == (
        "device times: 3 rounds one implementation after another (their graphs would not fit in memory together), "
        "SM clock 1,980 MHz")


def test_an_implementation_that_cannot_be_captured_says_why_and_the_others_are_timed(monkeypatch):
    _FakeGraphs(monkeypatch, {"eager": 0.3, "lmbench triton": 0.1}, refuse={"eager"})
    timing = sidebyside.device_times(_timed({"eager": 1, "lmbench triton": 1}), [], device=torch.device("cpu"),
                                     rounds=2)
    assert list(timing.samples) == ["lmbench triton"] and len(timing.samples["lmbench triton"]) == 2
    assert timing.why_not == {"eager": "no device time: it waits for the device on the host (x.item())"}


def test_a_time_against_ours_is_a_difference_only_when_its_whole_interval_is():
    samples = {"lmbench triton": [0.10, 0.11, 0.10, 0.12], "liger": [0.101, 0.108, 0.102, 0.119],
               "compile": [0.09, 0.099, 0.09, 0.108], "eager": [0.0, 0.3, 0.3, 0.3]}
    rows = sidebyside.against([{"impl": name, "status": "ok"} for name in samples], _timing(samples),
                              "lmbench triton")
    liger, compiled, eager = rows[1], rows[2], rows[3]
    assert liger["vs_ours_low"] < 1 < liger["vs_ours_high"] and liger["vs_ours_verdict"] == "not told apart"
    assert compiled["vs_ours"] == pytest.approx(0.9) and compiled["vs_ours_verdict"] == "ours slower"
    # A replay read at or under its flushes: no ratio rather than a division by it.
    assert "vs_ours" not in eager
    # Without our row (it failed) no row gets a ratio.
    fresh = [{"impl": "liger", "status": "ok"}]
    assert "vs_ours" not in sidebyside.against(fresh, _timing({"liger": [0.1]}), "lmbench triton")[0]
    # Timed one after another, the rounds are no pairs: no ratio, no verdict.
    apart = sidebyside.against([{"impl": "compile", "status": "ok"}], _timing(samples, interleaved=False),
                               "lmbench triton")
    assert "vs_ours" not in apart[0]


def test_the_table_shows_each_time_against_ours_and_the_title_how_it_was_taken(tmp_path):
    from rich.console import Console

    from lmbench.analyze.table import kernels_table

    base = {"op": "rmsnorm", "shape": "2x2", "dtype": "bfloat16", "mode": "fwd+bwd", "status": "ok", "reason": None,
            "time_median_ms": 0.5, "time_p20_ms": 0.4, "time_p80_ms": 0.6, "peak_mem_bytes": 0, "bytes_moved": 10**6,
            "rounds": 10, "device_timing": "interleaved", "sm_clock_min_mhz": 1755.0, "sm_clock_max_mhz": 1980.0,
            "clock_events": "sw_power_cap"}
    ours = microbench.with_device_time({**base, "impl": "lmbench triton"}, [0.1] * 4, 10**6)
    liger = microbench.with_device_time({**base, "impl": "liger"}, [0.12] * 4, 10**6)
    rows = sidebyside.against([ours, liger], _timing({"lmbench triton": [0.1, 0.1, 0.11, 0.1],
                                                       "liger": [0.12, 0.12, 0.13, 0.12]}), "lmbench triton")
    caption = sidebyside.timing_caption(rows)
    assert caption == "device times: 10 interleaved rounds, SM clock 1,755-1,980 MHz, clock events: sw_power_cap"
    console = Console(width=300, record=True)
    console.print(kernels_table(rows, title=caption))
    text = console.export_text()
    assert "device vs ours (95%)" in text and "1.20x [1.18, 1.21] ours faster" in text
    microbench.write_csv(rows, tmp_path / "k.csv", {"gpu": "g", "torch": "t", "triton": "3.6", "cuda": "13.0"})
    first, second = csv.DictReader((tmp_path / "k.csv").open())
    assert (first["vs_ours"], second["vs_ours_verdict"], second["sm_clock_min_mhz"], second["clock_events"]) == (
        "", "ours faster", "1755.0", "sw_power_cap")
    assert sidebyside.timing_caption([{"status": "error"}]) == "no device times"


def test_liger_linear_ce_is_timed_forward_and_backward_together_only():
    # Liger's forward runs the gradients' matmuls and its backward rescales them in place: timed apart, its forward
    # read as slower than ours at a third of its FLOP rate and its backward drifted call by call (a reviewer).
    op = microbench.OPS["linear-ce"]
    assert op.timed_apart("liger", "fwd+bwd") is None
    assert "--mode fwd+bwd" in op.timed_apart("liger", "fwd") and op.timed_apart("liger", "bwd")
    assert op.timed_apart("lmbench triton", "fwd") is None and microbench.OPS["rmsnorm"].timed_apart("liger", "bwd") \
        is None
    only_liger = dataclasses.replace(op, impls=lambda: {"liger": lambda x, w, labels: 1 / 0})
    row, = microbench.measure(only_liger, (8, 4, 10), torch.float32, "bwd", torch.device("cpu"))
    assert row["status"] == "skipped" and "cannot be timed apart" in row["reason"]


def _out_of_memory(*args, **kwargs):
    # What the CUDA caching allocator raises for a tensor that does not fit (a CPU build raises the same class).
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 TiB")


def test_inputs_that_do_not_fit_are_an_oom_row_per_implementation():
    """op.inputs ran outside the per-implementation try: a --shape too large for the GPU ended the command with exit
    3 (trial 100, kernels_oom_sim.py). Implementations unavailable anyway keep their own reason."""
    op = dataclasses.replace(microbench.OPS["rmsnorm"], inputs=_out_of_memory,
                             impls=lambda: {"lmbench triton": lambda x, w: x, "apex": "Apex is not installed"})
    triton, apex = microbench.measure(op, (2**40, 2**20), torch.bfloat16, "fwd+bwd", torch.device("cpu"))
    assert (triton["impl"], triton["status"], triton["shape"]) == ("lmbench triton", "oom", "1099511627776x1048576")
    assert triton["reason"] == ("its inputs do not fit on the device (OutOfMemoryError: CUDA out of memory. Tried to "
                                "allocate 4.00 TiB)")
    assert (apex["status"], apex["reason"]) == ("skipped", "Apex is not installed")


def test_an_implementation_that_runs_out_of_memory_is_an_oom_row():
    op = dataclasses.replace(microbench.OPS["rmsnorm"], impls=lambda: {"eager": _out_of_memory})
    row, = microbench.measure(op, (8, 8), torch.float32, "bwd", torch.device("cpu"))
    assert (row["status"], row["reason"]) == ("oom", "OutOfMemoryError: CUDA out of memory. Tried to allocate 4.00 TiB")


def _fake_cuda(monkeypatch, name="NVIDIA H200"):
    from lmbench.measure import environment

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(environment, "capture", lambda device: {"device": {"name": name}, "torch": "t",
                                                                "triton": "3.6", "cuda": "13.0"})


def test_a_shape_that_does_not_fit_keeps_the_shapes_measured_before_it(tmp_path, monkeypatch):
    _fake_cuda(monkeypatch)
    small = microbench.OPS["rmsnorm"].inputs

    def inputs(shape, dtype, device):
        return small(shape, dtype, torch.device("cpu")) if shape[0] < 1024 else _out_of_memory()

    monkeypatch.setitem(microbench.OPS, "rmsnorm", dataclasses.replace(
        microbench.OPS["rmsnorm"], inputs=inputs, impls=lambda: {"eager": lambda x, w: x * w}))
    out = tmp_path / "k.csv"
    result = CliRunner().invoke(cli, ["kernels", "--op", "rmsnorm", "--shape", "8x8,4096x4096", "--mode", "bwd",
                                      "--dtype", "fp32", "--csv", str(out)])
    assert result.exit_code == 0, result.output
    first, second = csv.DictReader(out.open())
    assert first["shape"] == "8x8" and (second["shape"], second["status"]) == ("4096x4096", "oom")
    assert "oom: its inputs do not fit on the device" in result.output


def test_ceilings_of_another_gpu_are_refused_before_anything_runs(tmp_path, monkeypatch):
    """A ceilings file from an H100 put an H200's kernels against the H100's copy bandwidth, without a word."""
    _fake_cuda(monkeypatch)
    monkeypatch.setattr(microbench, "measure", lambda *a, **k: pytest.fail("measured with another GPU's ceilings"))
    path = tmp_path / "ceilings.json"
    path.write_text(json.dumps({"device": "NVIDIA H100 80GB HBM3", "bf16_matmul_tflops": 700.0,
                                "copy_gb_per_s": 3000.0}))
    result = CliRunner().invoke(cli, ["kernels", "--op", "rmsnorm", "--shape", "64x64", "--ceilings", str(path),
                                      "--csv", str(tmp_path / "k.csv")])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        f"lmbench: error: --ceilings '{path}' was measured on NVIDIA H100 80GB HBM3, not on this GPU (NVIDIA H200): "
        "another card's ceilings are no yardstick for this one's kernels; measure this GPU's with lmbench ceilings "
        "--out FILE")
    assert not (tmp_path / "k.csv").exists()
    path.write_text(json.dumps({"device": "NVIDIA H200", "bf16_matmul_tflops": 900.0, "copy_gb_per_s": 4000.0}))
    monkeypatch.setattr(microbench, "measure", lambda *a, **k: [])
    assert CliRunner().invoke(cli, ["kernels", "--op", "rmsnorm", "--shape", "64x64", "--ceilings", str(path),
                                    "--csv", str(tmp_path / "k.csv")]).exit_code == 0

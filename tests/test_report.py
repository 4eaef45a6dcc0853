"""Reports from real and hand-made results: DataFrame, exact Markdown, every plot, HTML in a real browser."""

import io
import shutil
import statistics
import subprocess
from html import escape
from pathlib import Path

import matplotlib
import pytest
from click.testing import CliRunner
from matplotlib.figure import Figure

from lmbench.analyze import frame, plots, report, results
from lmbench.analyze.table import Grid, markdown_table, percent_cell
from lmbench.cli import cli
from lmbench.plan.config import Config

GIB = 2**30


def hand_record(precision, batch, tps, *, repeat=0, status="ok", reason=None, telemetry=True, step_cv=0.01):
    config = Config(precision=precision, batch_size=batch, device="cuda").to_dict()
    key = Config(precision=precision, batch_size=batch, device="cuda").key
    metrics = None
    if status == "ok":
        peak = 67.0 if precision == "fp32" else 989.5
        metrics = {"tokens_per_s": tps, "step_time_median_s": 1024 / tps, "tokens_per_step": 1024, "mfu": 0.4,
                   "tflops": 0.4 * peak, "peak_tflops": peak, "peak_source": "the H100 SXM datasheet",
                   "step_time_cv": step_cv,
                   "mem_peak_allocated_bytes": 2 * GIB * batch / 8, "mem_peak_reserved_bytes": 3 * GIB * batch / 8,
                   "mem_nvml_used_peak_bytes": 4 * GIB * batch / 8,
                   "power_avg_w": 500.0 if telemetry else None, "energy_j": 100.0 if telemetry else None,
                   "j_per_token": 0.01 if telemetry else None, "tokens_per_j": 100.0 if telemetry else None,
                   "throttle_reasons": []}
    return {"schema_version": 1, "suite": "hand", "config_key": key, "repeat": repeat, "config": config,
            "status": status, "reason": reason, "metrics": metrics, "losses": [2.0, 1.9],
            "step_times_s": [0.1, 0.11, 0.09] if status == "ok" else None,
            "env": {"device": {"name": "NVIDIA H100 80GB HBM3", "memory_total_bytes": 80 * GIB}, "torch": "2.11",
                    "cuda": "13.0", "lmbench": "0.1.0", "lmbench_commit": "abc"}, "warnings": []}


HAND = [hand_record("fp32", 8, 1000.0), hand_record("fp32", 8, 1100.0, repeat=1),
        hand_record("amp-bf16", 8, 2000.0, step_cv=0.43),
        hand_record("amp-bf16", 16, 0, status="oom", reason="OutOfMemoryError: CUDA out of memory"),
        hand_record("fp32", 16, 1200.0, telemetry=False)]


def test_markdown_tables_exact_text():
    t = report.tables(HAND, baseline=("precision", "fp32"))
    assert t["throughput"] == "\n".join([
        "| batch_size | precision | status | tokens/s | cv over repeats | ms/step sustained | MFU | TFLOP/s per device "
        "| peak TFLOP/s | speedup vs precision=fp32 | Diff % | note |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        # 1024 tokens per step at the median of 1000 and 1100 tokens/s: 975.2 ms, not the median step (977.5).
        "| 8 | fp32 | ok (2/2) | 1,050 | 6.7% | 975.2 | 40.0% | 26.8 | 67 | 1.00x | +0.0% |  |",
        "| 8 | amp-bf16 | ok | 2,000 | - | 512.0 | 40.0% | 395.8 | 989.5 | 1.90x | +90.5% "
        "| unstable steps: cv 43.0% > 10% |",
        "| 16 | amp-bf16 | oom | - | - | - | - | - | - | - | - |  |",
        "| 16 | fp32 | ok | 1,200 | - | 853.3 | 40.0% | 26.8 | 67 | 1.00x | +0.0% |  |",
        "",
        # The same MFU beside peaks 15x apart: the note says what each is against, and where the peaks come from.
        "MFU: model FLOPs a token (PaLM: 6N + 12·L·H·Q·T, N without embedding tables, LM head counted, recomputation "
        "excluded) × tokens/s per device ÷ the precision's datasheet dense peak (fp32 with TF32 off: the CUDA cores' "
        "peak; the others: the tensor cores'; FP8: bf16's). Peaks: the H100 SXM datasheet.",
    ])
    assert t["failures"] == ("| batch_size | precision | status | reason |\n| --- | --- | --- | --- |\n"
                             "| 16 | amp-bf16 | oom | OutOfMemoryError: CUDA out of memory |")
    assert "| 16 | fp32 | ok | - | - | - | - |" in t["energy"]
    assert "| 8 | amp-bf16 | ok | 2.00 | 3.00 | 4.00 | - |" in t["memory"]


def test_tokens_per_s_and_step_time_of_a_row_come_from_the_same_samples():
    """Two repeats, 100 and 416.7 ms steps of 128 tokens: 1280 and 307 tokens/s. The row's tokens/s is their
    median (794) and its step time 128 / 794 = 161 ms, not the median step (258 ms, which is 495 tokens/s)."""
    records = [hand_record("fp32", 8, 128 / step, repeat=i) for i, step in enumerate([0.1, 0.41667])]
    for r in records:
        r["metrics"].update(tokens_per_step=128, step_time_median_s=128 / r["metrics"]["tokens_per_s"])
    row = report.tables(records)["throughput"].splitlines()[2]
    assert row == "| tiny-gpt2 | ok (2/2) | 794 | 86.7% | 161.3 | 40.0% | 26.8 | 67 |  |"
    s, = report.summarize(records)
    assert s.median("tokens_per_s") * s.step_time_s() == pytest.approx(128)
    assert s.step_time_s() == pytest.approx(128 / statistics.median([1280, 128 / 0.41667]))


def test_a_contended_repeat_is_left_out_of_the_row_while_a_quiet_one_stands():
    records = [hand_record("fp32", 8, 1000.0), hand_record("fp32", 8, 1100.0, repeat=1),
               hand_record("fp32", 8, 5.0, repeat=2)]
    records[2]["metrics"].update(host_other_cpu_cores=1.4, host_usable_cores=2)
    row = report.tables(records)["throughput"].splitlines()[2]
    assert row.startswith("| tiny-gpt2 | ok (3/3) | 1,050 |") and row.endswith("| 1 contended repeat left out |")
    for r in records[:2]:
        r["metrics"].update(host_other_cpu_cores=1.4, host_usable_cores=2)
    # Every repeat contended: the figure is theirs, and the note says what they were.
    row = report.tables(records)["throughput"].splitlines()[2]
    assert "| 1,000 |" in row and row.endswith("| contended: other processes used 1.4 of 2 cores |")


def test_the_plots_leave_out_contended_repeats_as_the_tables_do():
    from lmbench.analyze import plots

    records = [hand_record("fp32", 8, 1000.0), hand_record("fp32", 8, 5.0, repeat=1),
               hand_record("amp-bf16", 8, 7.0)]
    for r in records[1:]:
        r["metrics"].update(host_other_cpu_cores=1.4, host_usable_cores=2)
    kept = report.quiet_records([{**r, "run": "a"} for r in records])
    # fp32 has a quiet repeat to stand for its contended one; amp-bf16 has only its contended one, which stays.
    assert [(r["config"]["precision"], r["repeat"]) for r in kept] == [("fp32", 0), ("amp-bf16", 0)]
    df = report.quiet_frame(hand_frame(records), records)
    units = plots._units(df, ["precision"])
    assert sorted(zip(units["precision"], units["tokens_per_s"])) == [("amp-bf16", 7.0), ("fp32", 1000.0)]


def test_host_memory_growth_fills_the_memory_table_on_cpu():
    record = hand_record("fp32", 8, 1000.0)
    record["metrics"].update(mem_peak_allocated_bytes=None, mem_peak_reserved_bytes=None,
                             mem_nvml_used_peak_bytes=None, mem_host_peak_growth_bytes=0.25 * GIB,
                             mem_host_training_growth_bytes=0.75 * GIB)
    memory = report.tables([record])["memory"].splitlines()
    assert memory[0].endswith("| host RSS growth in training MiB | in window MiB |")
    assert memory[2] == "| tiny-gpt2 | ok | - | - | - | 768.0 | 256.0 |"
    # The summary (and tune) show the growth --max-memory caps: since training started.
    from lmbench.analyze.table import host_growth

    assert host_growth(record["metrics"]) == 0.75 * GIB
    assert host_growth({"mem_host_peak_growth_bytes": 5.0}) == 5.0  # a record from before the training figure


def test_several_runs_are_never_pooled():
    runs = [{**r, "run": name} for name, rs in (("base", HAND[:2]), ("pr", HAND[:1])) for r in rs]
    lines = report.tables(runs)["throughput"].splitlines()
    assert lines[0].startswith("| run | status | tokens/s |")
    assert lines[2].startswith("| base | ok (2/2) | 1,050 |") and lines[3].startswith("| pr | ok | 1,000 |")


def test_markdown_escapes_pipes():
    assert markdown_table(["a"], [["x|y"]]) == "| a |\n| --- |\n| x\\|y |"


def hand_frame(records):
    import pandas as pd

    return pd.DataFrame(frame.to_rows(records, run="hand"))


@pytest.mark.parametrize("records", [HAND, [r for r in HAND if r["status"] != "ok"], HAND[:1]],
                         ids=["mixed", "only-failed", "single"])
def test_every_plot_renders_from_hand_made_results(records, tmp_path):
    df = hand_frame(records)
    timeline = tmp_path / "t.csv"
    timeline.write_text("t_s,power_w,mem_used_bytes,gpu_util_pct,sm_clock_mhz,temp_c,clock_event_bits\n"
                        "0.0,300,1,99,1980,60,0\n0.05,650,1,99,1980,61,4\n0.1,640,1,99,1900,62,4\n")
    figures = [plots.tokens_vs_batch(df), plots.memory_vs_batch(df), plots.tokens_per_joule(df),
               plots.speedup_heatmap(df), plots.step_time_distributions(records),
               plots.power_over_time({"a": timeline}), plots.power_over_time({})]
    import matplotlib.pyplot as plt

    for fig in figures:
        assert isinstance(fig, Figure)
        fig.canvas.draw()  # Agg renders it, or raises
        plt.close(fig)
    assert matplotlib.get_backend().lower() == "agg"


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "run"
    result = CliRunner().invoke(cli, ["run", "--suite", "smoke", "--out", str(out), "--device", "cpu",
                                      "--set", "model=tiny-gpt2", "--set", "steps=3", "--set", "batch_size=2,4"])
    assert result.exit_code == 0, result.output
    return out


def test_dataframe_from_a_real_smoke_run(real_run):
    df, records, warnings = frame.load([real_run])
    assert len(df) == 4 and warnings == []
    for column in ("config_key", "repeat", "status", "batch_size", "precision", "tokens_per_s", "step_time_median_s",
                   "mem_peak_reserved_bytes", "energy_j", "gpu", "torch"):
        assert column in df.columns
    assert set(df["status"]) == {"ok"}
    assert (df["tokens_per_s"] > 0).all()
    # The axis as asked and the metric of the same name as applied are two columns, neither hiding the other.
    assert set(df["telemetry"]) == {True} and set(df["telemetry_applied"]) == {"off: not a CUDA device"}
    assert set(df["tp_degree"]) == {0} and set(df["tp_degree_applied"]) == {1}


def test_report_command_writes_everything(real_run, tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, ["report", str(real_run), "--out", str(out), "--baseline", "precision=fp32"])
    assert result.exit_code == 0, result.output
    md = (out / "report.md").read_text()
    assert "## Throughput" in md and "speedup vs precision=fp32" in md and "![tokens_vs_batch]" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 6 and "src=\"plots/" not in html
    assert len(list((out / "plots").glob("*.png"))) == 6
    assert (out / "results.csv").read_text().startswith("run,suite,config_key,repeat,status")


def test_report_bad_inputs(tmp_path, real_run):
    runner = CliRunner()
    result = runner.invoke(cli, ["report", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"lmbench: error: run directory '{tmp_path / 'missing'}' does not exist"
    result = runner.invoke(cli, ["report", str(real_run), "--baseline", "precision"])
    assert result.exit_code == 2 and "expected KEY=VALUE" in result.stderr
    corrupt = tmp_path / "corrupt"
    shutil.copytree(real_run, corrupt)
    with open(corrupt / "results.jsonl", "a") as f:
        f.write("{not json\n")
    result = runner.invoke(cli, ["report", str(corrupt), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0
    assert f"{corrupt / 'results.jsonl'}:5: skipped corrupt line" in result.stderr


def _colored_pixels(png: Path) -> int:
    import numpy as np
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    # matplotlib's first line colour (#1f77b4) and its neighbours: only a drawn plot has them.
    return int(((r < 80) & (g > 90) & (g < 150) & (b > 150)).sum())


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_html_report_renders_its_plots_in_headless_chromium(real_run, tmp_path):
    out = tmp_path / "report"
    assert CliRunner().invoke(cli, ["report", str(real_run), "--out", str(out)]).exit_code == 0
    page = out / "report.html"
    broken = tmp_path / "broken.html"
    broken.write_text(page.read_text().replace("data:image/png;base64,", "data:image/png;base64,AAAA"))
    shots = {}
    for name, html in (("report", page), ("broken", broken)):
        shot = tmp_path / f"{name}.png"
        subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={tmp_path / ('profile-' + name)}", "--hide-scrollbars",
                        "--window-size=1300,5000", f"--screenshot={shot}", html.as_uri()],
                       check=True, capture_output=True, timeout=120)
        shots[name] = _colored_pixels(shot)
    # The plots drew their lines; with the images broken the same page has none of that colour.
    assert shots["report"] > 500 and shots["broken"] < 50, shots


def heatmap_records():
    """precision x batch_size x seq_len, amp-bf16 twice as fast as fp32, longer sequences 10% slower."""
    records = []
    for seq, slow in ((64, 1.0), (128, 0.9)):
        for batch in (8, 16):
            for precision, speed in (("fp32", 1.0), ("amp-bf16", 2.0)):
                config = Config(precision=precision, batch_size=batch, seq_len=seq, device="cuda")
                record = hand_record(precision, batch, 1000.0 * speed * slow * batch / 8)
                records.append({**record, "config": config.to_dict(), "config_key": config.key})
    return records


def test_speedup_heatmap_never_pools_and_is_centred_on_one():
    """With a third varying axis, each panel holds one value of it and the baseline cells read 1.00x."""
    from matplotlib.colors import LogNorm

    fig = plots.speedup_heatmap(hand_frame(heatmap_records()), baseline=("precision", "fp32"))
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["seq_len=64", "seq_len=128"]
    for ax in panels:
        # x: precision (fp32, amp-bf16), y: batch size (8, 16).
        assert [t.get_text() for t in ax.texts] == ["1.00x", "2.00x", "1.00x", "2.00x"]
        image, = ax.images
        assert isinstance(image.norm, LogNorm) and image.norm(1.0) == pytest.approx(0.5)
        white_ish = image.cmap(image.norm(1.0))
        assert min(white_ish[:3]) > 0.9
        colours = {t.get_text(): t.get_color() for t in ax.texts}
        assert colours["1.00x"] == "black"  # dark text on the light centre
    assert "precision=fp32 with the other axes equal" in fig._suptitle.get_text()
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_speedup_heatmap_text_is_white_on_dark_cells_and_marks_missing_baselines():
    records = heatmap_records()
    records[0]["metrics"]["tokens_per_s"] = 100.0  # fp32 b8 s64: amp-bf16 beside it is 20x
    fig = plots.speedup_heatmap(hand_frame(records), baseline=("precision", "fp32"))
    panel = next(ax for ax in fig.axes if ax.images)
    colours = {t.get_text(): t.get_color() for t in panel.texts}
    assert colours["20.00x"] == "white"
    records = [r for r in heatmap_records() if not (r["config"]["precision"] == "fp32" and r["config"]["seq_len"] == 64
                                                    and r["config"]["batch_size"] == 8)]
    fig = plots.speedup_heatmap(hand_frame(records), baseline=("precision", "fp32"))
    panel = next(ax for ax in fig.axes if ax.images)
    assert [t.get_text() for t in panel.texts] == ["no baseline", "1.00x", "2.00x"]


def test_a_heatmap_where_nothing_pairs_with_its_baseline_says_so_instead_of_a_grid():
    """Pipeline rows and their parity reference differ in nproc and batch too: every panel would hold the reference
    against itself and "no baseline" cells, under titles too long to read."""
    records = [hand_record("fp32", 8, 1000.0), hand_record("amp-bf16", 16, 2000.0)]
    fig = plots.speedup_heatmap(hand_frame(records), baseline=("precision", "fp32"))
    assert not any(ax.images for ax in fig.axes)
    (why,) = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert why.startswith("no configuration pairs with a precision=fp32 one with every other axis equal")
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_speedup_heatmap_without_baseline_goes_across_a_treatment_never_across_models():
    records = heatmap_records()
    for r in records:
        r["config"]["model"] = "tiny-gpt2" if r["config"]["batch_size"] == 8 else "tiny-llama"
    fig = plots.speedup_heatmap(hand_frame(records))
    panel = next(ax for ax in fig.axes if ax.images)
    assert panel.get_xlabel() == "precision"
    assert "(one repeat each: a speed-up inside the step-time noise means nothing)" in fig._suptitle.get_text()
    import copy

    first = records[0]
    other = copy.deepcopy(first)
    other["config"]["model"], other["config_key"] = "tiny-bert-mlm", first["config_key"] + "-bert"
    only_models = [first, other]
    fig = plots.speedup_heatmap(hand_frame(only_models))
    assert not any(ax.images for ax in fig.axes)
    why = fig.axes[0].texts[0].get_text()
    assert why.startswith("only model varies: tokens/s across them\ncompares different work")


def test_run_summary_flags_unstable_steps_and_shows_host_memory():
    from rich.console import Console

    from lmbench.analyze.table import summary

    cpu = hand_record("fp32", 8, 1000.0, step_cv=0.25)
    cpu["metrics"].update(mem_peak_reserved_bytes=None, mem_host_peak_growth_bytes=3 * 2**20)
    gpu = hand_record("amp-bf16", 8, 2000.0)
    console = Console(width=200, record=True)
    console.print(summary([cpu, gpu]))
    rows = [line for line in console.export_text().splitlines() if line.startswith("│")]
    assert rows[0].split("│")[1:-1] == [" fp32      ", " ok     ", "    1,000 ", "   25.0% ", " 40.0% ",
                                        " +3.0 MiB RSS ", " unstable steps: cv 25.0% > 10% "]
    memory, note = rows[1].split("│")[6:8]
    assert memory == "     3.00 GiB " and note.strip() == ""


def test_html_tables_keep_every_cell_and_escape_text():
    grid = report.sections(HAND, baseline=("precision", "fp32"))["throughput"]
    page = grid.html()
    rows = page.split("<tr>")[2:]
    assert len(rows) == 4 and all(row.count("<td") == len(grid.headers) for row in rows)
    assert "<td></td>" in page  # an empty note stays a cell
    assert Grid(["a<b"], [["x&y"]]).html() == "<table><thead><tr><th>a&lt;b</th></tr></thead><tbody><tr><td>x&amp;y" \
                                              "</td></tr></tbody></table>"
    # The note (what MFU is against) follows the table, escaped.
    assert page.endswith("</table><p>MFU: model FLOPs a token (PaLM: 6N + 12·L·H·Q·T, N without embedding tables, "
                         "LM head counted, recomputation excluded) × tokens/s per device ÷ the precision&#x27;s "
                         "datasheet dense peak (fp32 with TF32 off: the CUDA cores&#x27; peak; the others: the tensor "
                         "cores&#x27;; FP8: bf16&#x27;s). Peaks: the H100 SXM datasheet.</p>")


def test_step_times_a_hundred_times_apart_get_a_log_axis():
    fast, slow = hand_record("fp32", 8, 1000.0), hand_record("amp-bf16", 8, 10.0)
    slow["step_times_s"] = [10.0, 11.0, 9.0]
    assert plots.step_time_distributions([fast, slow]).axes[0].get_xscale() == "log"
    assert plots.step_time_distributions([fast]).axes[0].get_xscale() == "linear"


def test_stalls_show_in_the_note_column():
    record = hand_record("fp32", 8, 1000.0, step_cv=0.5)
    record["metrics"].update(stalls=True, tokens_per_s_sustained=600.0, tokens_per_s_typical=1000.0, stall_steps=2,
                             stall_excess_s=0.8)
    row = report.tables([record])["throughput"].splitlines()[2]
    assert row.endswith("| stalls: sustained 40.0% below typical (2 outlier steps, +800 ms); unstable steps: cv 50.0% "
                        "> 10% |")
    # Three repeats, two stalled: how many, by how much, and the worst one's detail; not one unnamed note a repeat.
    again = {**record, "repeat": 1, "metrics": {**record["metrics"], "tokens_per_s_sustained": 900.0,
                                                 "stall_steps": 1, "stall_excess_s": 0.1}}
    steady = {**record, "repeat": 2, "metrics": {**record["metrics"], "stalls": False}}
    row = report.tables([record, again, steady])["throughput"].splitlines()[2]
    assert "| stalls in 2 of 3 repeats, sustained 10.0%-40.0% below typical (worst: sustained 40.0% below typical (2 " \
           "outlier steps, +800 ms)); unstable steps" in row


def profiled_record(precision, tps, fractions):
    record = hand_record(precision, 8, tps)
    record["metrics"].update({f"time_frac_{c}": v for c, v in fractions.items()}, profile_step_time_s=0.05,
                             comm_overlap_frac=None, profile_steps=3,
                             profile_top_kernels=[{"name": "sm90_xmma_gemm", "time_s": 0.02, "calls": 12.0}])
    return record


def test_an_unaligned_gemm_among_the_top_kernels_names_the_vocabulary_behind_it():
    """The H100's GPT-2 profile: the 50257-row LM head on sm75-era align1 CUTLASS kernels, 15.5 of 68 ms a step."""
    name = "void cutlass::Kernel2<cutlass_75_tensorop_bf16_s1688gemm_bf16_128x128_tn_align1>(cutlass_75_tensorop"
    assert report.kernel_note(name, {"model": "gpt2-124m", "vocab_multiple": 1}) == (
        "unaligned GEMM: a dimension is not a multiple of 8 elements; the vocabulary (50257) is not: try "
        "--set vocab_multiple=64")
    assert report.kernel_note(name, {"model": "gpt2-124m", "vocab_multiple": 64}) == (
        "unaligned GEMM: a dimension is not a multiple of 8 elements")
    aligned = "void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_64x4_tn_align8>"
    assert report.kernel_note(aligned, {"model": "gpt2-124m"}) == ""
    assert report.kernel_note("void at::native::vectorized_elementwise_kernel<align1>", {"model": "gpt2-124m"}) == ""


def test_where_the_time_goes_and_the_roofline(tmp_path):
    fractions = {"optimizer": 0.1, "data": 0.0, "attention": 0.2, "matmul": 0.4, "other": 0.2, "communication": 0.0,
                 "idle": 0.1}
    records = [profiled_record("fp32", 1000.0, fractions), hand_record("amp-bf16", 8, 2000.0)]
    grids = report.time_sections(records)
    # The hand-made window's median step is 1.024 s, so the profiled 50 ms one is 95% faster: no note.
    assert grids["time"].rows == [["fp32", "50.00", "-95%", "10.0%", "0.0%", "20.0%", "40.0%", "20.0%", "0.0%",
                                   "10.0%", "-", "other kernels 20% (matmul + attention 60%)", ""]]
    assert grids["kernels"].rows == [["fp32", "sm90_xmma_gemm", "20.000", "12", ""]]
    for r in records:
        r["metrics"].update(hardware_flops_per_token=1e9, params=10**9, devices=1)
    ceilings = {"device": "NVIDIA H100 80GB HBM3", "bf16_matmul_tflops": 1000.0, "copy_gb_per_s": 2000.0}
    # 1024 tokens x 1e9 FLOPs at 1000 TFLOP/s: 1.02 ms; 40e9 bytes (fp32 AdamW) at 2 TB/s: 20 ms; step 1024 ms.
    roof = report.roofline_section(records, ceilings)["roofline"]
    # Without fp32's own ceiling, bf16's is no roof for it: the memory roof alone, no bound, no distance (bf16's
    # 1.02 ms compute roof made fp32 read memory-bound, 51x from its roof).
    assert roof.rows[0] == ["fp32", "-", "-", "20.00", "1024.00", "-",
                            "none: no fp32 ceiling measured (lmbench ceilings measures it)"]
    assert roof.rows[1][-1] == "bf16 1000 TFLOP/s"
    # With fp32's own ceiling (TF32 off: 50 TFLOP/s), fp32 is held to it: 1024 x 1e9 / 50e12 = 20.48 ms.
    roof = report.roofline_section(records, {**ceilings, "fp32_matmul_tflops": 50.0})["roofline"]
    assert roof.rows[0] == ["fp32", "compute", "20.48", "20.00", "1024.00", "50.00x", "fp32 50 TFLOP/s"]
    # FP8 keeps fp32 weights and state (bytes as amp-bf16) and is held to the bf16 ceiling, as its headline MFU.
    fp8 = hand_record("fp8-rowwise", 8, 2000.0)
    fp8["metrics"].update(hardware_flops_per_token=1e9, params=10**9, devices=1)
    (row,) = report.roofline_section([fp8], ceilings)["roofline"].rows
    assert row[1:] == ["memory", "1.02", "20.00", "512.00", "25.60x", "bf16 1000 TFLOP/s"]  # 512 ms / 20 ms
    # fp16 without its own ceiling: on an H100 its datasheet peak is bf16's (the same tensor cores), so bf16's
    # measured ceiling stands for it and says so; on a device whose peaks are unknown it does not.
    fp16 = hand_record("amp-fp16", 8, 2000.0)
    fp16["metrics"].update(hardware_flops_per_token=1e9, params=10**9, devices=1,
                           device_names=["NVIDIA H100 80GB HBM3"])
    (row,) = report.roofline_section([fp16], ceilings)["roofline"].rows
    assert row[1:] == ["memory", "1.02", "20.00", "512.00", "25.60x",
                       "bf16 1000 TFLOP/s (no fp16 ceiling measured; fp16's datasheet peak is bf16's)"]
    fp16["metrics"]["device_names"] = ["Some Unknown Accelerator"]
    (row,) = report.roofline_section([fp16], {**ceilings, "device": "Some Unknown Accelerator"})["roofline"].rows
    assert row[1:] == ["-", "-", "20.00", "512.00", "-",
                       "none: no fp16 ceiling measured (lmbench ceilings measures it)"]
    df = hand_frame(records)
    paths = report.build(df, records, tmp_path / "r", runs=["hand"], ceilings=ceilings)
    md = paths["report.md"].read_text()
    assert "## Where the time goes" in md and "## Distance to the roofline" in md
    assert (tmp_path / "r" / "plots" / "time_breakdown.png").exists()
    assert report.time_sections([hand_record("fp32", 8, 1000.0)]) == {}


def test_tables_and_reports_say_what_device_ran():
    from lmbench.analyze.table import device_label

    cpu = {"env": {"device": {"type": "cpu", "name": "AMD EPYC", "physical_cores": 2}}}
    gpu = {"env": {"device": {"name": "NVIDIA H100 80GB HBM3", "driver": "580.65"}}}
    assert device_label([cpu, cpu]) == "AMD EPYC (CPU, 2 physical cores: no NVML power or energy, no MFU)"
    assert device_label([gpu, {}]) == "NVIDIA H100 80GB HBM3 (GPU, driver 580.65)"
    timed_out = {"status": "timeout", "config": {"device": "cpu"}, "env": None}
    assert device_label([timed_out]) == ("device cpu, not recorded (timeout: no configuration reported its "
                                         "environment)")


def test_a_breakdown_slower_than_its_window_says_the_profiler_overstates_idle():
    """Stage 1 on an H100: fp16 gpt2-124m ran 57.8 ms steps in its window and 65, 101 and 68 ms under the
    profiler (mean 78.1, median 68.0), with 36% idle against 3-11% for the other precisions. The report
    compares the median (one slow step does not make the note) and says so beside the breakdown."""
    fractions = {"optimizer": 0.017, "data": 0.0, "attention": 0.039, "matmul": 0.29, "other": 0.294,
                 "communication": 0.0, "idle": 0.36}
    profiled = {**{f"time_frac_{k}": v for k, v in fractions.items()}, "profile_top_kernels": [],
                "comm_overlap_frac": None}
    slow, close = hand_record("fp16", 8, 141_730.0), hand_record("amp-bf16", 8, 124_121.0)
    slow["metrics"].update(profiled, profile_step_time_s=0.0781, profile_step_time_median_s=0.068,
                           step_time_median_s=0.0578)
    # amp-bf16: one 78.9 ms step of three made the mean +8%; the median is +2%.
    close["metrics"].update(profiled, profile_step_time_s=0.0713, profile_step_time_median_s=0.0676,
                            step_time_median_s=0.066)
    old = hand_record("fp32", 8, 44_456.0)  # a record from before the median was kept: its mean
    old["metrics"].update(profiled, profile_step_time_s=0.0781, step_time_median_s=0.0578)
    grid = report.time_sections([slow, close, old])["time"]
    rows = {row[0]: dict(zip(grid.headers, row)) for row in grid.rows}
    assert rows["fp16"]["vs window"] == "+18%" and rows["fp16"]["note"] == (
        "18% slower under the profiler (its host cost): shares of the window's median step, the device's busy time as "
        "profiled, idle the rest")
    # The table shows the window's shares. The profiled shares are of the three steps' summed time, so 0.64 busy
    # is 0.64 x 78.1 ms (their mean) = 50.0 ms a step, 86.5% of the window's 57.8 ms: idle 13.5%, other kernels
    # 0.294 x 78.1 / 57.8 = 39.7%. (Scaled by the median profiled step, 68 ms, it read 24.7% idle, more than
    # the busy time allows: review 2026-11-28, from the stored H100 traces.)
    assert (rows["fp16"]["idle"], rows["fp16"]["other"], rows["amp-bf16"]["idle"]) == ("13.5%", "39.7%", "36.0%")
    assert rows["fp16"]["held back most by"] == ("other kernels 40% (matmul + attention 44%; idle less the "
                                                 "profiler's slowdown)")
    assert rows["amp-bf16"]["held back most by"] == "the host (GPU idle) 36% (matmul + attention 33%)"
    assert rows["amp-bf16"]["vs window"] == "+2%" and rows["amp-bf16"]["note"] == ""
    assert rows["fp32"]["vs window"] == "+35%" and "35% slower under the profiler" in rows["fp32"]["note"]
    # The step shown is the one "vs window" sets against the window's: the profiled median (68.0 ms, +18%), not the
    # mean (78.1 ms) beside it; a record from before the median was kept shows its mean, as vs window used.
    assert (rows["fp16"]["profiled step ms (median)"], rows["fp32"]["profiled step ms (median)"]) == ("68.00", "78.10")


def test_the_energy_table_names_throttling_and_a_window_too_short_for_its_energy():
    """Stage 1 on an H100: the fp16 window of 1.15 s gave 555.1 J by NVML's counter and 587.9 J by the sampled
    power; the record predates `energy_disagreement_frac`, so the report computes it."""
    short, long_, off = hand_record("fp16", 8, 1000.0), hand_record("fp32", 8, 500.0), hand_record(
        "amp-bf16", 8, 900.0, telemetry=False)
    short["metrics"].update(energy_j=555.1, energy_source="counter", energy_integral_j=587.9,
                            telemetry_window_s=1.15, throttle_reasons=["sw_power_cap"], sm_clock_avg_mhz=1825.4,
                            sm_clock_min_mhz=1650.0)
    long_["metrics"].update(energy_j=2357.8, energy_source="counter", energy_integral_j=2367.7,
                            telemetry_window_s=3.69, energy_disagreement_frac=0.0042)
    del off["metrics"]["throttle_reasons"]
    tiny = hand_record("bf16", 8, 800.0)
    tiny["metrics"].update(energy_j=12.0, energy_source="power-integral (window too short for the counter)",
                           energy_integral_j=12.0, telemetry_window_s=0.10, telemetry_samples=3)
    grid = report.sections([short, long_, off, tiny, {**tiny, "repeat": 1}])["energy"]
    rows = {row[0]: dict(zip(grid.headers, row)) for row in grid.rows}
    assert rows["fp16"]["throttling"] == "sw_power_cap" and rows["fp16"]["SM clock MHz avg (min)"] == "1825 (1650)"
    assert rows["amp-bf16"]["SM clock MHz avg (min)"] == "-"
    assert rows["fp16"]["note"] == ("power integral +5.9% vs counter over a 1.15 s window; lengthen the window to "
                                    "quote J/token")
    assert rows["fp32"]["throttling"] == "none" and rows["fp32"]["note"] == ""
    assert rows["amp-bf16"]["throttling"] == "-" and rows["amp-bf16"]["note"] == ""
    assert rows["bf16"]["note"] == ("a 0.10 s window, too short for NVML's counter: energy from 3 power samples "
                                    "(and 1 more repeat); lengthen the window to quote J/token")


def test_plots_against_batch_size_need_several_batch_sizes():
    """Stage 1 on an H100 ran one batch size: its 'throughput vs batch size' was a single column of dots."""
    one = [hand_record("fp32", 8, 1000.0), hand_record("amp-bf16", 8, 2000.0)]
    several = [*one, hand_record("fp32", 16, 1500.0)]
    assert "tokens_vs_batch" not in report.figures(hand_frame(one), one, None)
    assert {"tokens_vs_batch", "memory_vs_batch"} <= set(report.figures(hand_frame(several), several, None))


def test_a_run_where_nothing_ran_says_so_rather_than_unknown_or_none(tmp_path):
    from lmbench.analyze import results
    from lmbench.analyze.table import device_label
    from lmbench.cli import cli
    from lmbench.plan.config import Config

    skipped = results.make_record(suite="s", config=Config(device="cuda", cuda_graph=True).to_dict(), config_key="k",
                                  repeat=0, status="skipped", reason="cuda_graph=true needs a CUDA GPU")
    assert device_label([skipped]) == "no device: every configuration was skipped"
    run = tmp_path / "run"
    run.mkdir()
    results.append(run, skipped)
    done = CliRunner().invoke(cli, ["report", str(run), "--out", str(tmp_path / "report")])
    assert done.exit_code == 0, done.output
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Device: no device: every configuration was skipped  \n" in md and "None" not in md.split("\n\n")[1]
    throughput = md.split("## Throughput")[1].split("##")[0]
    assert "| skipped: cuda_graph=true needs a CUDA GPU |" in throughput
    assert "## Not measured: failures and skips" in md


def test_a_long_note_in_the_run_summary_ends_in_an_ellipsis():
    from rich.console import Console

    from lmbench.analyze.table import NOTE_WIDTH, summary

    record = hand_record("fp32", 8, 1000.0, step_cv=0.287)
    record["metrics"].update(stalls=True, tokens_per_s_sustained=860.0, tokens_per_s_typical=1000.0,
                             step_time_mean_s=0.0118, step_time_median_s=0.0102, window_s=1.0, steps_measured=3)
    console = Console(width=300, record=True)
    console.print(summary([record]))
    note = next(line for line in console.export_text().splitlines() if "stalls" in line).split("│")[-2].strip()
    assert note.endswith("…") and len(note) == NOTE_WIDTH, note


def test_parallel_runs_show_devices_batch_and_scaling_and_pair_with_one_process():
    def laid_out(parallel, nproc, tps, extra):
        r = hand_record("fp32", 8, tps)
        config = Config(parallel=parallel, nproc=nproc, batch_size=8, device="cuda")
        r.update(config=config.to_dict(), config_key=config.key)
        r["metrics"].update(extra)
        return r

    one = {"devices": 1, "global_batch_sequences": 8, "tokens_per_s_per_device": 1000.0}
    two = {"devices": 2, "global_batch_sequences": 16, "tokens_per_s_per_device": 950.0, "scaling_efficiency": 0.95}
    records = [laid_out("none", 1, 1000.0, one), laid_out("ddp", 2, 1900.0, two)]
    t = report.tables(records, baseline=("parallel", "none"))["throughput"].splitlines()
    assert t[0].startswith("| parallel | nproc | status | tokens/s | cv over repeats | ms/step sustained | MFU "
                           "| TFLOP/s per device | peak TFLOP/s | devices | sequences/step | tokens/s per device "
                           "| scaling efficiency | speedup vs parallel=none |")
    # ddp x 2 pairs with parallel=none's one process: nproc follows the mode.
    assert t[3].startswith("| ddp | 2 | ok | 1,900 | - | 538.9 | 40.0% | 26.8 | 67 | 2 | 16 | 950 | 0.95 | 1.90x "
                           "| +90.0% |")


def test_the_run_summary_leaves_out_contended_repeats_as_the_report_does():
    from rich.console import Console

    from lmbench.analyze.table import summary

    records = [hand_record("fp32", 8, 1000.0), hand_record("fp32", 8, 1100.0, repeat=1),
               hand_record("fp32", 8, 5.0, repeat=2)]
    records[2]["metrics"].update(host_other_cpu_cores=1.4, host_usable_cores=2)
    console = Console(width=250, record=True)
    console.print(summary(records))
    text = console.export_text()
    # Three ok repeats, one left out of the figures: the status still counts all three as ok.
    assert "1,050" in text and "1 contended repeat left out" in text and "ok (3/3 ok)" in text
    assert report.tables(records)["throughput"].splitlines()[2].startswith("| tiny-gpt2 | ok (3/3) | 1,050 |")


def test_an_axis_a_record_does_not_have_is_shown_as_unused():
    """A record from a newer lmbench carries an axis older records lack: their labels show it as `-`, not a crash."""
    from lmbench.analyze import plots

    assert plots.config_label({"model": "tiny-gpt2", "kernels": "eager"}, ["model", "foo_axis"]) == (
        "model=tiny-gpt2 foo_axis=-")


def test_a_window_too_short_for_the_ticks_gets_no_contention_note_in_the_report():
    """As in the run summary, compare and tune: 0.6 other cores over a 60 ms window is the ticks' rounding."""
    records = [hand_record("fp32", 8, 1000.0, repeat=i) for i in range(2)]
    for r in records:
        r["metrics"].update(host_other_cpu_cores=0.6, host_usable_cores=2, window_s=0.06)
    assert "contended" not in report.tables(records)["throughput"]
    for r in records:
        r["metrics"]["window_s"] = 5.0
    assert "contended: other processes used 0.6 of 2 cores" in report.tables(records)["throughput"]


def kernels_record(kernels, tps, *, repeat=0, contended=False):
    config = Config(kernels=kernels, device="cuda")
    record = hand_record("fp32", 8, tps, repeat=repeat)
    record.update(config=config.to_dict(), config_key=config.key)
    if contended:
        record["metrics"].update(host_other_cpu_cores=1.4, host_usable_cores=2)
    return record


def test_a_speedup_over_contended_repeats_is_not_shown():
    """A new user's run on a busy machine: every eager repeat ran beside a busy core, so compile read 36.47x faster
    (+3547.3%) in the table and the heatmap; on a quiet host it is about 1.1x. No ratio rests on such repeats."""
    records = [kernels_record("eager", 100.0, contended=True), kernels_record("eager", 100.0, repeat=1, contended=True),
               kernels_record("compile", 3647.0), kernels_record("compile", 3647.0, repeat=1)]
    rows = report.tables(records, baseline=("kernels", "eager"))["throughput"].splitlines()
    assert rows[0].endswith("| speedup vs kernels=eager | Diff % | note |")
    assert rows[2].endswith("| 1.00x | +0.0% | contended: other processes used 1.4 of 2 cores |")
    assert rows[3].endswith("| - | - | speedup not shown: every repeat of its kernels=eager counterpart ran on a "
                            "contended host |")
    # The other way round the row's own repeats are the contended ones; its note says that first.
    for r in records:
        r["metrics"].pop("host_other_cpu_cores", None)
    for r in records[2:]:
        r["metrics"].update(host_other_cpu_cores=1.4, host_usable_cores=2)
    rows = report.tables(records, baseline=("kernels", "eager"))["throughput"].splitlines()
    assert rows[3].endswith("| - | - | contended: other processes used 1.4 of 2 cores; speedup not shown: every "
                            "repeat of this configuration ran on a contended host |")
    # A quiet repeat stands for the contended ones: the ratio rests on it, and is shown.
    records[3]["metrics"].pop("host_other_cpu_cores")
    rows = report.tables(records, baseline=("kernels", "eager"))["throughput"].splitlines()
    assert rows[3].endswith("| 36.47x | +3547.0% | 1 contended repeat left out |")


def test_the_heatmap_shows_no_ratio_over_contended_repeats():
    import matplotlib.pyplot as plt

    def cells(records):
        # The repeats the report's figures rest on (report.figures): a contended one stays where none is quiet.
        fig = plots.speedup_heatmap(report.quiet_frame(hand_frame(records), records), baseline=("kernels", "eager"))
        panel = next(ax for ax in fig.axes if ax.images)
        plt.close(fig)
        return [t.get_text() for t in panel.texts], panel.images[0].norm.vmax

    texts, reach = cells([kernels_record("eager", 100.0, contended=True), kernels_record("compile", 3647.0)])
    # Neither does the colour scale stretch to the ratio it does not show.
    assert texts == ["1.00x", "contended\nbaseline"] and reach == pytest.approx(1.25)
    records = [kernels_record("eager", 100.0), kernels_record("compile", 3647.0, contended=True)]
    assert cells(records)[0] == ["1.00x", "contended"]
    records.append(kernels_record("compile", 3647.0, repeat=1))  # a quiet repeat stands for the contended one
    assert cells(records)[0] == ["1.00x", "36.47x"]


def test_the_contended_note_comes_first_so_a_cut_note_keeps_it():
    """The run summary cuts notes at NOTE_WIDTH: `contended: ...` came last, after stalls and unstable steps, and was
    the part cut off."""
    from rich.console import Console

    from lmbench.analyze.table import NOTE_WIDTH, summary

    record = hand_record("fp32", 8, 1000.0, step_cv=0.287)
    record["metrics"].update(stalls=True, tokens_per_s_sustained=860.0, tokens_per_s_typical=1000.0,
                             step_time_mean_s=0.0118, step_time_median_s=0.0102, window_s=1.0, steps_measured=3,
                             host_other_cpu_cores=1.4, host_usable_cores=2)
    console = Console(width=300, record=True)
    console.print(summary([record]))
    note = next(line for line in console.export_text().splitlines() if "stalls" in line).split("│")[-2].strip()
    assert note.startswith("contended: other processes used 1.4 of 2 cores; stalls: ") and len(note) == NOTE_WIDTH
    row = report.tables([record])["throughput"].splitlines()[2]
    assert "| contended: other processes used 1.4 of 2 cores; stalls: 14.0% below typical" in row
    # A failed repeat's reason no longer hides that the ok ones' figures were contended.
    failed = hand_record("fp32", 8, 0, repeat=1, status="error", reason="RuntimeError: boom")
    console = Console(width=300, record=True)
    console.print(summary([record, failed]))
    assert "contended: other processes used 1.4 of 2 cores; RuntimeError: boom" in console.export_text()


def test_one_measured_step_has_no_step_cv_rather_than_zero():
    """`--set steps=1 --set warmup=0` recorded step_time_cv 0.0 and the summary showed `step cv 0.0%`."""
    from rich.console import Console

    from lmbench.analyze.table import summary
    from lmbench.measure.metrics import throughput

    one = hand_record("fp32", 8, 1000.0)
    one["metrics"].update(throughput(step_times_s=[0.012], tokens_per_step=1024, samples_per_step=8, window_s=0.012))
    assert one["metrics"]["step_time_std_s"] is None and one["metrics"]["step_time_cv"] is None
    two = hand_record("fp32", 8, 1000.0, repeat=1, step_cv=0.25)
    for records, shown in (([one], "-"), ([one, two], "25.0%")):
        console = Console(width=200, record=True)
        console.print(summary(records))
        row = next(line for line in console.export_text().splitlines() if line.startswith("│"))
        assert row.split("│")[4].strip() == shown
    assert "unstable steps: cv 25.0% > 10%" in report.tables([one, two])["throughput"]
    df = hand_frame([one])
    assert df["step_time_cv"].isna().all()
    df.to_csv(io.StringIO())


def test_stall_notes_read_as_plain_milliseconds_and_count_one_step_as_one():
    from lmbench.measure.metrics import stall_note

    m = {"stalls": True, "tokens_per_s_sustained": 500.0, "tokens_per_s_typical": 1000.0, "stall_steps": 1,
         "stall_excess_s": 6.8234}
    assert stall_note(m) == "stalls: sustained 50.0% below typical (1 outlier step, +6,823 ms)"
    assert stall_note({**m, "stall_steps": 2, "stall_excess_s": 0.0123}) == (
        "stalls: sustained 50.0% below typical (2 outlier steps, +12.3 ms)")
    spread = {**m, "stall_steps": 0, "step_time_mean_s": 2.5, "step_time_median_s": 0.9996, "window_s": 30.0,
              "steps_measured": 10}
    assert stall_note(spread) == ("stalls: 50.0% below typical, spread over steps (mean 2,500 vs median 1,000 ms; "
                                  "5,000 ms between steps)")


def test_the_speedup_colour_bar_labels_never_overlap():
    """A 36.47x cell in a one-row heatmap: the labels 0.5x and 0.67x, 1.5x, 2x and 3x were drawn over each other."""
    import matplotlib.pyplot as plt

    # A bar 10 labels tall from 1/36.47 to 36.47: ticks 1.5 x 2 ln 36.47 / 10 = 1.08 apart in ln, so 2 (0.69 from 1)
    # and 5 (0.92 from 10) have no room; 10 and 3 (1.10 from 1, 1.20 from 10) do.
    assert plots.ratio_ticks(36.47, 10) == pytest.approx([0.1, 1 / 3, 1, 3, 10])
    # From 0.5x to 2x: 0.21 apart, so 1.25 (0.18 from 1.5) has no room at 10 labels tall and has at 20 (0.10).
    assert plots.ratio_ticks(2.0, 10) == pytest.approx([0.5, 2 / 3, 1, 1.5, 2])
    assert plots.ratio_ticks(2.0, 20) == pytest.approx([0.5, 2 / 3, 0.8, 1, 1.25, 1.5, 2])
    for speedup in (1.1, 2.0, 5.0, 10.0, 36.47, 200.0):
        records = [kernels_record("eager", 100.0), kernels_record("compile", 100.0 * speedup)]
        fig = plots.speedup_heatmap(hand_frame(records), baseline=("kernels", "eager"))
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        labels = [t for t in fig.axes[-1].yaxis.get_ticklabels() if t.get_visible() and t.get_text()]
        boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in labels]
        assert len(boxes) >= 3 and "1x" in [text for text, _ in boxes], (speedup, boxes)
        overlapping = [(a, b) for i, (a, box) in enumerate(boxes) for b, other in boxes[i + 1:] if box.overlaps(other)]
        assert overlapping == [], speedup
        plt.close(fig)


def test_a_run_of_unreadable_lines_says_why_it_has_no_results(tmp_path):
    from click.testing import CliRunner

    from lmbench.cli import cli

    run = tmp_path / "run"
    run.mkdir()
    (run / "results.jsonl").write_text('{"broken": \n')
    result = CliRunner().invoke(cli, ["report", str(run)])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"lmbench: error: no results in {run}: 1 line(s) skipped ({run}/results.jsonl:1: skipped corrupt line "
        "(Expecting value: line 1 column 12 (char 11)))")


def test_the_header_says_how_many_repeats_the_figures_rest_on():
    once = report.summarize([hand_record("fp32", 8, 1000.0), hand_record("amp-bf16", 8, 2000.0)])
    assert report.repeats_line(once) == ("each configuration measured once: no spread over repeats to quote "
                                         "(--repeats 3 gives one)")
    # HAND: fp32 b8 twice, amp-bf16 b8 and fp32 b16 once, amp-bf16 b16 out of memory.
    assert report.repeats_line(report.summarize(HAND)) == "figures are medians over repeats (1-2 ok a configuration)"
    failed = report.summarize([hand_record("amp-bf16", 16, 0, status="oom")])
    assert report.repeats_line(failed) == "no configuration measured"


def test_a_window_the_host_held_back_says_so_in_the_note():
    """The H100's gpt2-355m at batch 4 (stage 9): NVML saw the GPU busy 83% of the window; GPU-bound rows 99-100%."""
    held, busy = hand_record("fp32", 4, 1000.0), hand_record("fp32", 8, 1900.0)
    held["metrics"]["gpu_util_avg_pct"], busy["metrics"]["gpu_util_avg_pct"] = 83.27, 99.3
    notes = {row[0]: row[-1] for row in report.sections([held, busy])["throughput"].rows}
    assert notes == {"4": "GPU busy 83% of the window (NVML): the host held it back", "8": ""}
    # The run summary's note says it too.
    from rich.console import Console

    from lmbench.analyze.table import summary

    console = Console(width=300, record=True)
    console.print(summary([held, busy]))
    assert sum("GPU busy 83% of the window" in line for line in console.export_text().splitlines()) == 1


def test_throughput_notes_carry_throttling_and_the_records_own_warnings_and_the_header_what_is_fixed(tmp_path):
    throttled = hand_record("amp-bf16", 8, 2000.0)
    throttled["metrics"].update(throttle_reasons=["sw_power_cap", "gpu_idle"], throttled_power_or_heat=True,
                                sm_clock_avg_mhz=1825.0, sm_clock_min_mhz=1650.0)
    warned = hand_record("fp32", 8, 1000.0)
    warned["warnings"] = ["parallel=dp on one GPU is degenerate: DataParallel's scatter/gather without a second "
                          "replica", "energy: a 0.8 s window, too short", "clocks were throttled for power or heat "
                          "during the window (sw_power_cap); the figures may not be representative"]
    grid = report.sections([throttled, warned])["throughput"]
    notes = {row[0]: row[-1] for row in grid.rows}
    # The power cap beside the throughput it slowed (gpu_idle is no throttle); each warning said once, and the
    # energy and throttling warnings only where their own table or note says them.
    assert notes["amp-bf16"] == "clocks throttled (sw_power_cap), SM clock avg 1825 MHz"
    assert notes["fp32"] == ("parallel=dp on one GPU is degenerate: DataParallel's scatter/gather without a second "
                             "replica")
    run = tmp_path / "run"
    run.mkdir()
    for record in (throttled, warned):
        results.append(run, record)
    done = CliRunner().invoke(cli, ["report", str(run), "--out", str(tmp_path / "report")])
    assert done.exit_code == 0, done.output
    md = (tmp_path / "report" / "report.md").read_text()
    header = md.split("\n\n")[1].split("  \n")
    assert header[1].endswith("measured with lmbench 0.1.0 (abc)")
    assert header[2].startswith("Report rendered by lmbench ")
    # What no column shows: the model and the batch every row shares (device is away from its default).
    assert header[3] == ("Every configuration: model=tiny-gpt2, batch_size=8, seq_len=128, grad_accum=1, "
                         "parallel=none, kernels=eager, attention=sdpa, checkpointing=none, optimizer=adamw-fused, "
                         "device=cuda")
    assert header[4].startswith("2 records, 2 configurations; each configuration measured once")
    page = (tmp_path / "report" / "report.html").read_text()
    for line in header:
        assert f"<p>{escape(line.strip())}</p>" in page


def test_plots_tell_series_apart_mark_what_not_to_quote_and_show_the_out_of_memory_sizes():
    """Twelve power traces took ten colours (two pairs alike); legends named values without their axes; the
    tokens-per-joule bars drew figures the energy table says not to quote, and no spread over repeats."""
    from matplotlib.patches import Rectangle

    fp32 = [hand_record("fp32", 8, 1000.0), hand_record("fp32", 8, 1100.0, repeat=1)]
    fp32[1]["metrics"]["tokens_per_j"] = 120.0
    bf16 = hand_record("amp-bf16", 8, 2000.0)
    from lmbench.measure.telemetry import SHORT_WINDOW_SOURCE

    bf16["metrics"].update(energy_source=SHORT_WINDOW_SOURCE, telemetry_window_s=0.8, telemetry_samples=17)
    records = [*fp32, bf16, hand_record("amp-bf16", 16, 2500.0),
               hand_record("amp-bf16", 32, 0, status="oom", reason="OutOfMemoryError")]
    df = hand_frame(records)
    energy = plots.tokens_per_joule(df)
    ax = energy.axes[0]
    hatched = [patch.get_hatch() for patch in ax.patches if isinstance(patch, Rectangle) and patch.get_width() > 0]
    assert hatched == [None, "//", None]  # fp32 b8, amp-bf16 b8 (the short window), amp-bf16 b16
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "lowest to highest repeat", "not to quote: a window too short for NVML's counter, or counter and integral "
        "apart (energy table)"]
    over_batch = plots.tokens_vs_batch(df).axes[0]
    assert [t.get_text() for t in over_batch.get_legend().get_texts()] == [
        "precision=amp-bf16", "out of memory: precision=amp-bf16", "precision=fp32"]
    assert over_batch.get_ylim()[0] == 0
    assert [plots._style(i) for i in (0, 9, 10, 11)] == [
        {"color": "C0", "linestyle": "-"}, {"color": "C9", "linestyle": "-"}, {"color": "C0", "linestyle": "--"},
        {"color": "C1", "linestyle": "--"}]
    import matplotlib.pyplot as plt

    plt.close("all")


def test_a_cpu_run_s_tflops_keep_their_digits():
    """A 2-core CPU's 0.00166 TFLOP/s read 0.0: no work at all."""
    cpu = hand_record("fp32", 8, 1000.0)
    cpu["metrics"]["tflops"] = 0.00166
    row = report.sections([cpu])["throughput"].rows[0]
    assert row[6] == "0.00166"  # model, status, tokens/s, cv, ms/step, MFU, TFLOP/s


def test_planned_repeats_with_no_record_are_rows_and_lines_left_out_are_named(real_run, tmp_path):
    """A run stopped short (or a line lost) read as complete: the missing repeat vanished, and the loader's warnings
    reached only the terminal (review 2026-11-28). run.json's planned configurations name even one with no record."""
    import json

    short = tmp_path / "short"
    shutil.copytree(real_run, short)
    lines = (short / "results.jsonl").read_text().splitlines()
    assert len(json.loads((short / "run.json").read_text())["planned"]) == 4
    gone = [line for line in lines if json.loads(line)["config"]["batch_size"] == 4
            and json.loads(line)["config"]["precision"] == "amp-bf16"]
    # Batch 4 amp-bf16's record is gone, and a corrupt line stands last.
    (short / "results.jsonl").write_text("\n".join([line for line in lines if line not in gone] + ["{cut"]) + "\n")
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, ["report", str(short), "--out", str(out)])
    assert result.exit_code == 0, result.output
    md = (out / "report.md").read_text()
    assert f"Not recorded: 1 planned (configuration, repeat) pair(s) of 1 configuration(s) in {short}" in md
    assert f"Read with a warning: {short / 'results.jsonl'}:4: skipped corrupt line" in md
    assert "3 records, 4 configurations" in md
    assert "| 4 | amp-bf16 | not recorded | - |" in md
    failures = md.split("## Not measured")[1]
    assert "| 4 | amp-bf16 | not recorded | planned, with no readable record" in failures
    # The command that goes on with it, with the run's own plan (`lmbench run --resume DIR` alone is refused).
    assert f"(lmbench run --suite {json.loads((short / 'run.json').read_text())['plan']['suite']} --out {short}" \
        in " ".join(failures.split())
    html = (out / "report.html").read_text()
    assert "Not recorded: 1 planned" in html and "not recorded" in html


def test_the_energy_row_is_one_repeat_and_parity_shows_its_worst_beside_the_tolerance():
    """Medians taken apart mixed repeats (power of one, energy of another: J/token x tokens/s was not the power);
    the parity cell put the worst verdict beside the median deviation, inside the tolerance it failed."""
    rows = []
    for repeat, (tps, power, dev, verdict) in enumerate([(1000.0, 400.0, 1e-3, "ok"), (1100.0, 500.0, 0.3, "drift"),
                                                         (1050.0, 600.0, 2e-3, "ok")]):
        r = hand_record("bf16", 8, tps, repeat=repeat)
        r["metrics"].update(power_avg_w=power, energy_j=power * 2, j_per_token=power / tps, tokens_per_j=tps / power,
                            sm_clock_avg_mhz=1500 + repeat, sm_clock_min_mhz=1400 + repeat, parity=verdict,
                            parity_max_rel_dev=dev, parity_tolerance=0.015)
        rows.append(r)
    # A contended repeat's parity counts (the host does not change how it trains): its verdict and deviation both.
    contended = hand_record("bf16", 8, 900.0, repeat=3)
    contended["metrics"].update(host_other_cpu_cores=1.5, host_usable_cores=2, window_s=10.0, parity="drift",
                                parity_max_rel_dev=0.4, parity_tolerance=0.015)
    mixed = report.tables([rows[0], contended])["throughput"]
    assert "| drift | 0.4 | 0.015 |" in mixed and "1 contended repeat left out" in mixed
    t = report.tables(rows)
    # The repeat with the median tokens/s (1050): its power, energy, mJ/token, tokens/J and clocks together.
    assert "| ok (3/3) | 600 | 1200.0 | 571.429 | 2 | none | 1502 (1402) |" in t["energy"]
    assert "| drift | 0.3 | 0.015 |" in t["throughput"]
    assert t["throughput"].splitlines()[0].endswith("| parity | max loss dev | tolerance | note |")


def test_the_header_names_every_version_that_measured_the_records(tmp_path):
    older = hand_record("fp32", 8, 1000.0, repeat=1)
    older["env"] = {**older["env"], "torch": "2.9.0", "lmbench_commit": "def"}
    summaries = report.summarize([hand_record("fp32", 8, 1000.0), older])
    (device,) = [line for line in report.header_lines([hand_record("fp32", 8, 1000.0), older], summaries, ["r"])
                 if line.startswith("Device")]
    assert device.endswith("torch 2.11 / 2.9.0, CUDA 13.0, measured with lmbench 0.1.0 (abc) / 0.1.0 (def)")


def test_the_header_names_the_environment_variables_the_workers_ran_with():
    plain, launch_blocking = hand_record("fp32", 8, 1000.0), hand_record("fp32", 8, 1000.0, repeat=1)
    launch_blocking["env"] = {**launch_blocking["env"], "env_vars": {"CUDA_LAUNCH_BLOCKING": "1", "NCCL_ALGO": "Ring"}}
    records = [{**plain, "env": {**plain["env"], "env_vars": {}}}, launch_blocking]
    lines = report.header_lines(records, report.summarize(records), ["r"])
    assert "Environment variables (of those that change what runs): none / CUDA_LAUNCH_BLOCKING=1 NCCL_ALGO=Ring" \
        in lines
    assert not any(line.startswith("Environment") for line in report.header_lines([plain], report.summarize([plain]),
                                                                                   ["r"]))


def test_a_rerendered_report_drops_the_plots_it_no_longer_draws(real_run, tmp_path):
    out = tmp_path / "report"
    (out / "plots").mkdir(parents=True)
    (out / "plots" / "drawn_by_an_older_report.png").write_bytes(b"x")
    result = CliRunner().invoke(cli, ["report", str(real_run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert not (out / "plots" / "drawn_by_an_older_report.png").exists()
    assert len(list((out / "plots").glob("*.png"))) == 6


def test_markdown_cells_keep_what_reads_as_a_tag():
    assert Grid(["kernel"], [["CUDAFunctor_add<float>"]]).markdown().endswith("| CUDAFunctor_add&lt;float> |")


def test_a_cpu_profile_keeps_its_shares_as_profiled():
    """On a CPU the profiler slows the ops themselves, so the GPU's correction (same busy time, more idle) made a
    tiny CPU step read 0% idle and +177% (review 2026-11-28): its shares stay as profiled, and the note says why."""
    fractions = {"optimizer": 0.1, "data": 0.0, "attention": 0.1, "matmul": 0.3, "other": 0.2,
                 "communication": 0.0, "idle": 0.3}
    cpu = hand_record("fp32", 8, 1000.0)
    cpu["config"]["device"] = "cpu"
    cpu["metrics"].update({f"time_frac_{k}": v for k, v in fractions.items()}, profile_top_kernels=[],
                          comm_overlap_frac=None, profile_step_time_s=0.03, profile_step_time_median_s=0.03,
                          step_time_median_s=0.01, profile_device="cpu")
    grid = report.time_sections([cpu])["time"]
    cells = dict(zip(grid.headers, grid.rows[0]))
    assert (cells["idle"], cells["matmul"], cells["vs window"]) == ("30.0%", "30.0%", "+200%")
    assert cells["held back most by"] == "time outside ops 30% (matmul + attention 40%)"
    assert cells["note"] == ("200% slower under the profiler, which on a CPU slows the ops themselves: the shares "
                             "are as profiled")


def test_the_header_counts_the_repeats_the_figures_rest_on():
    """Two ok repeats, one left out as contended: the header said 'each configuration measured once ... --repeats
    3 gives one' of a --repeats 2 run (a reviewer's finding)."""
    quiet, busy = hand_record("fp32", 8, 1000.0), hand_record("fp32", 8, 400.0, repeat=1)
    busy["metrics"].update(host_other_cpu_cores=1.5, host_usable_cores=2, window_s=10.0)
    line = report.repeats_line(report.summarize([quiet, busy]))
    assert line == "figures rest on one repeat a configuration; 1 contended repeat left out: no spread over repeats " \
                   "to quote"
    assert report.repeats_line(report.summarize([quiet, hand_record("fp32", 8, 1100.0, repeat=1)])) == (
        "figures are medians over repeats (2 ok a configuration)")


def on(record, device, torch="2.11"):
    return {**record, "env": {**record["env"], "device": {**record["env"]["device"], "name": device}, "torch": torch}}


def test_repeats_from_two_devices_are_said_in_the_header_and_the_row():
    """Repeats of one configuration on an H100 and an A100 pooled into one median without a word: compare warns of
    them (environments.mixed), the report did not (a reviewer's finding, /tmp/review91/edge/mixedhw)."""
    records = [hand_record("fp32", 8, 1000.0), on(hand_record("fp32", 8, 2000.0, repeat=1), "NVIDIA A100", "2.5.0"),
               hand_record("fp32", 8, 1100.0, repeat=2), hand_record("amp-bf16", 8, 2000.0)]
    lines = report.header_lines(records, report.summarize(records), ["r"])
    key = records[0]["config_key"]
    assert [line for line in lines if line.startswith("Mixed")] == [
        f"Mixed environments: the run's repeats of configuration {key} come from more than one {field} ({values}): "
        "it was resumed or merged on another machine, or something was upgraded between them"
        for field, values in (("device", "NVIDIA H100 80GB HBM3 (GPU), NVIDIA A100 (GPU)"), ("torch", "2.11, 2.5.0"))]
    notes = {row[0]: row[-1] for row in report.sections(records)["throughput"].rows}
    assert notes == {"fp32": "figures pool repeats from 2 devices, 2 torch versions (the header names them)",
                     "amp-bf16": ""}
    # Two runs on two cards are two rows, each of one card: no mix.
    runs = [{**hand_record("fp32", 8, 1000.0), "run": "h100"},
            {**on(hand_record("fp32", 8, 2000.0), "A100"), "run": "a100"}]
    assert not [line for line in report.header_lines(runs, report.summarize(runs), ["h100", "a100"])
                if line.startswith("Mixed")]
    assert all(row[-1] == "" for row in report.sections(runs)["throughput"].rows)


def test_the_header_and_the_csv_say_when_and_on_which_card_and_software_the_records_were_measured():
    """The report named the device model and torch; not when the records were measured, the software under torch,
    which card of a fleet (its UUID) or its power limit (a reviewer's finding)."""
    records = [hand_record("fp32", 8, 1000.0), hand_record("fp32", 8, 1100.0, repeat=1),
               hand_record("amp-bf16", 8, 0, status="oom")]
    for record, stamp in zip(records, ("2026-11-26T20:48:30+00:00", "2026-11-26T21:05:02+00:00",
                                       "2026-11-26T20:50:00+00:00")):
        record["env"] = {**record["env"], "timestamp": stamp, "cudnn": 91900, "triton": "3.6.0",
                         "transformers": "5.17.0",
                         "device": {**record["env"]["device"], "uuid": "GPU-c09b4b21-3b56-8bf2-4ff7-95b9608619e1"}}
    records[0]["metrics"].update(power_limit_w=700.0, power_limit_min_w=700.0)
    records[1]["metrics"].update(power_limit_w=1200.0, power_limit_min_w=500.0)
    lines = report.header_lines(records, report.summarize(records), ["r"])
    assert lines[2] == ("Provenance: measured 2026-11-26T20:48:30+00:00 to 2026-11-26T21:05:02+00:00; cuDNN 91900, "
                        "Triton 3.6.0, transformers 5.17.0; GPU GPU-c09b4b21-3b56-8bf2-4ff7-95b9608619e1; power limit "
                        "700 W / 1200 W over the job's GPUs (the most capped 500 W)")
    row = hand_frame(records).iloc[0]
    assert (row["timestamp"], row["gpu_uuid"], row["cudnn"], row["triton"], row["transformers"]) == (
        "2026-11-26T20:48:30+00:00", "GPU-c09b4b21-3b56-8bf2-4ff7-95b9608619e1", 91900, "3.6.0", "5.17.0")
    assert row["power_limit_w"] == 700.0


def test_the_csv_tells_no_throttle_reason_from_an_unknown_one():
    """Both read "" in results.csv: a window whose samples had no reason set, and one where no sample read the bits
    (a driver without the call: null, unknown; a reviewer)."""
    records = [hand_record("fp32", 8, 1000.0, repeat=i) for i in range(3)]
    for record, reasons in zip(records, ([], None, ["sw_power_cap", "gpu_idle"])):
        record["metrics"]["throttle_reasons"] = reasons
    import pandas as pd

    column = hand_frame(records)["throttle_reasons"]
    assert column[0] == "none" and pd.isna(column[1]) and column[2] == "sw_power_cap,gpu_idle"


def test_markdown_header_lines_are_escaped_as_cells_are(tmp_path):
    """A corpus path /data/<corpus>|v2.txt lost its <corpus> on GitHub: the header lines were not escaped."""
    record = hand_record("fp32", 8, 1000.0)
    record["config"]["data"] = "/data/<corpus>|v2.txt"
    record["config_key"] = results.current_key(record)
    records = [{**record, "run": str(tmp_path)}]
    report.build(hand_frame(records), records, tmp_path / "out", runs=[str(tmp_path)])
    md = (tmp_path / "out" / "report.md").read_text()
    assert "data=/data/&lt;corpus>\\|v2.txt, " in md and "<corpus>" not in md
    assert "data=/data/&lt;corpus&gt;|v2.txt, " in (tmp_path / "out" / "report.html").read_text()


def test_the_power_trace_is_the_energy_table_s_repeat_never_a_failed_one(tmp_path):
    """Repeat 0 ran out of memory: its trace was drawn, though no figure of the report rests on it."""
    records = [hand_record("fp32", 8, 0, status="oom")] + [hand_record("fp32", 8, tps, repeat=i) for i, tps in
                                                           ((1, 5100.0), (2, 5000.0), (3, 5200.0))]
    (tmp_path / "telemetry").mkdir()
    for repeat in range(4):
        (tmp_path / "telemetry" / f"{records[0]['config_key']}-r{repeat}.csv").write_text("t_s,power_w\n0.0,300\n")
    found = report.timelines([{**r, "run": str(tmp_path)} for r in records], ["model"])
    # The median tokens/s, 5100, as the energy table's row.
    assert found == {"model=tiny-gpt2": tmp_path / "telemetry" / f"{records[0]['config_key']}-r1.csv"}


def test_the_power_plot_draws_the_window_s_own_samples_on_its_clock(tmp_path):
    """The timeline's first sample comes before the ranks' barrier (a DDP wait at 700 W), its last after the window:
    both were drawn as the window's power, on the sampler's clock (a reviewer)."""
    timeline = tmp_path / "t.csv"
    timeline.write_text("t_s,power_w,mem_used_bytes,gpu_util_pct,sm_clock_mhz,temp_c,clock_event_bits,window_t_s,"
                        "in_window\n0.0,700,1,99,1980,60,0,-0.3,0\n0.3,300,1,99,1980,61,0,0.0,1\n"
                        "0.8,320,1,99,1900,62,0,0.5,1\n1.4,90,1,0,1900,62,0,1.1,0\n")
    fig = plots.power_over_time({"a": timeline})
    (line,) = fig.axes[0].get_lines()
    assert list(line.get_xdata()) == [0.0, 0.5] and list(line.get_ydata()) == [300.0, 320.0]


def test_a_tiny_model_s_mfu_keeps_its_digits():
    """A tiny model's 0.0412% MFU read 0.0%, no work at all, beside a TFLOP/s with its digits."""
    record = hand_record("fp32", 8, 1000.0)
    record["metrics"]["mfu"] = 0.000412
    grid = report.sections([record])["throughput"]
    assert dict(zip(grid.headers, grid.rows[0]))["MFU"] == "0.0412%"
    assert [percent_cell(v) for v in (0.4, 0.01, 0.00999, 0.0, None)] == ["40.0%", "1.0%", "0.999%", "0%", "-"]


def test_nan_and_infinity_in_a_results_line_read_as_null(tmp_path):
    """Python's json writes NaN and Infinity (no JSON); a hand-made or older file's NaN went into medians, where
    statistics.median's answer depends on the order (a reviewer). lmbench's writer writes null (results.sanitize)."""
    import json

    from lmbench.analyze import results

    record = hand_record("fp32", 8, 1000.0)
    record["metrics"].update(power_avg_w=float("nan"), energy_j=float("inf"))
    record["losses"] = [2.0, float("nan")]
    (tmp_path / "results.jsonl").write_text(json.dumps(record) + "\n")
    assert "NaN" in (tmp_path / "results.jsonl").read_text()
    [read] = results.read(tmp_path).records
    assert read["metrics"]["power_avg_w"] is None and read["metrics"]["energy_j"] is None
    assert read["losses"] == [2.0, None] and read["metrics"]["tokens_per_s"] == 1000.0


def test_a_report_that_runs_out_of_room_leaves_the_previous_files_whole(tmp_path):
    """A full disk (here the file-size limit, which fails a write the same way: EFBIG after a partial write) while
    rendering again: exit 2, and each file is the previous rendering's, whole, never cut off (report.html was left
    truncated) or a temporary file left beside it."""
    import json
    import os
    import resource
    import signal
    import sys

    run = tmp_path / "run"
    run.mkdir()
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in HAND))
    out = tmp_path / "r"
    command = [sys.executable, "-c", "from lmbench.cli import main; main()", "report", str(run), "--out", str(out)]
    # The previous rendering in this process (the same command, one interpreter start fewer); the one that runs out
    # of room needs a process of its own for its file-size limit.
    first = CliRunner().invoke(cli, ["report", str(run), "--out", str(out)])
    assert first.exit_code == 0, first.output
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    page = before[out / "report.html"]
    assert len(page) > max(len(data) for path, data in before.items() if path.suffix == ".png")

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of the signal, as ENOSPC would come
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(page) // 2, resource.RLIM_INFINITY))

    failed = subprocess.run(command, capture_output=True, text=True, preexec_fn=limited,
                            env={**os.environ, "LMBENCH_LOG_DIR": str(tmp_path / "logs")})
    assert failed.returncode == 2, failed.stderr
    assert failed.stderr.startswith("lmbench: error: cannot save")
    after = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    assert after == before

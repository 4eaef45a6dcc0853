"""Reports from real and hand-made results: DataFrame, exact Markdown, every plot, HTML in a real browser."""

import shutil
import subprocess
from pathlib import Path

import matplotlib
import pytest
from click.testing import CliRunner
from matplotlib.figure import Figure

from lmbench import frame, plots, report
from lmbench.cli import cli
from lmbench.config import Config

GIB = 2**30


def hand_record(precision, batch, tps, *, repeat=0, status="ok", reason=None, telemetry=True):
    config = Config(precision=precision, batch_size=batch, device="cuda").to_dict()
    key = Config(precision=precision, batch_size=batch, device="cuda").key
    metrics = None
    if status == "ok":
        metrics = {"tokens_per_s": tps, "step_time_median_s": 1024 / tps, "mfu": 0.4, "step_time_cv": 0.01,
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


HAND = [hand_record("fp32", 8, 1000.0), hand_record("fp32", 8, 1100.0, repeat=1), hand_record("amp-bf16", 8, 2000.0),
        hand_record("amp-bf16", 16, 0, status="oom", reason="OutOfMemoryError: CUDA out of memory"),
        hand_record("fp32", 16, 1200.0, telemetry=False)]


def test_markdown_tables_exact_text():
    t = report.tables(HAND, baseline=("precision", "fp32"))
    assert t["throughput"] == "\n".join([
        "| batch_size | precision | status | tokens/s | cv over repeats | step ms | MFU | speedup vs precision=fp32 "
        "| Diff % |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        "| 8 | fp32 | ok (2/2) | 1,050 | 6.7% | 977.5 | 40.0% | 1.00x | +0.0% |",
        "| 8 | amp-bf16 | ok | 2,000 | - | 512.0 | 40.0% | 1.90x | +90.5% |",
        "| 16 | amp-bf16 | oom | - | - | - | - | - | - |",
        "| 16 | fp32 | ok | 1,200 | - | 853.3 | 40.0% | 1.00x | +0.0% |",
    ])
    assert t["failures"] == ("| batch_size | precision | status | reason |\n| --- | --- | --- | --- |\n"
                             "| 16 | amp-bf16 | oom | OutOfMemoryError: CUDA out of memory |")
    assert "| 16 | fp32 | ok | - | - | - | - |" in t["energy"]
    assert "| 8 | amp-bf16 | ok | 2.00 | 3.00 | 4.00 |" in t["memory"]


def test_markdown_escapes_pipes():
    assert report.markdown_table(["a"], [["x|y"]]) == "| a |\n| --- |\n| x\\|y |"


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

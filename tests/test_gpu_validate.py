"""ci/gpu-validate.sh rehearsed on the CPU: the script that spends a short GPU lease must work before the lease."""

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parent.parent / "ci" / "gpu-validate.sh"
STAGE_1_STEPS = ("install", "preflight", "env", "ceilings", "fp16", "report", "pytest-kernels", "pytest-gpu")


def rehearse(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "TMPDIR": str(tmp_path),
               **env}
    return subprocess.run(["bash", str(SCRIPT), *args], env=environ, capture_output=True, text=True, timeout=600)


def test_stage_1_rehearsal_packs_everything_into_one_tarball_and_a_summary(tmp_path):
    done = rehearse(tmp_path, "--rehearse", "1")
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    out = tmp_path / "out"
    # What comes back from the GPU machine: at most 8 files, none deeper than 2 folders.
    assert sorted(p.name for p in out.iterdir()) == ["stage1-summary.txt", "stage1.tar.gz"]
    summary = (out / "stage1-summary.txt").read_text()
    for step in STAGE_1_STEPS:
        assert re.search(rf"^{step} +ok +\d+s$", summary, re.M), summary
    assert "every step passed" in summary and "fp16:" in summary
    with tarfile.open(out / "stage1.tar.gz") as tar:
        names = set(tar.getnames())
        lines = tar.extractfile("stage1/runs/fp16/results.jsonl").read().splitlines()
    records = [json.loads(line) for line in lines]
    assert {r["config"]["precision"] for r in records} == {"fp32", "amp-fp16", "fp16", "amp-bf16"}
    assert all(r["status"] == "ok" and r["metrics"]["startup_s"] > 0 for r in records)
    assert {"stage1/summary.txt", "stage1/report/report.html", "stage1/logs/env.txt",
            "stage1/logs/pytest-kernels.txt"} <= names
    assert not list(tmp_path.glob("lmbench-stage1.*")), "the scratch directory is left behind"
    # What comes back is published by ci/publish-stage.py: a real run only, unless told it is a rehearsal.
    publish = [sys.executable, str(SCRIPT.parent / "publish-stage.py"), str(out), "--reports", str(tmp_path / "r")]
    refused = subprocess.run(publish, capture_output=True, text=True)
    assert refused.returncode == 2 and not (tmp_path / "r").exists()
    assert refused.stderr == f"publish-stage: error: {out / 'stage1.tar.gz'}: a CPU rehearsal, not a GPU run: " \
                             "reports/ holds real runs only\n"
    done = subprocess.run([*publish, "--allow-rehearsal"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    folder = next((tmp_path / "r").glob("cpu-20*"))
    assert (folder / "stage1" / "runs" / "fp16" / "results.jsonl").exists()
    readme = (folder / "README.md").read_text()
    assert "## Stage 1" in readme and summary.strip() in readme
    assert "[stage1/report/report.md](stage1/report/report.md)" in readme
    index = (tmp_path / "r" / "README.md").read_text()
    assert f"Each target from the newest of [{folder.name}]({folder.name}/README.md) that measured it" in index
    again = subprocess.run([*publish, "--allow-rehearsal"], capture_output=True, text=True)
    assert again.returncode == 2 and "already exists: pass --replace" in again.stderr
    merged = subprocess.run([*publish, "--allow-rehearsal", "--merge"], capture_output=True, text=True)
    assert merged.returncode == 2 and "is merged into" in merged.stderr and "already" in merged.stderr


def test_a_stage_out_of_time_skips_the_rest_and_still_packs(tmp_path):
    done = rehearse(tmp_path, "--rehearse", "1", STAGE_BUDGET_S="60")
    assert done.returncode == 1
    summary = (tmp_path / "out" / "stage1-summary.txt").read_text()
    assert re.search(r"^install +ok", summary, re.M)
    assert re.search(r"^pytest-gpu +skipped: stage budget spent", summary, re.M)
    assert "some steps did not pass" in summary
    assert (tmp_path / "out" / "stage1.tar.gz").stat().st_size > 0


@pytest.mark.parametrize("args", [(), ("15",), ("0",), ("--rehearse",), ("1", "2")])
def test_a_stage_must_be_named(tmp_path, args):
    done = rehearse(tmp_path, *args)
    assert done.returncode == 2 and "ci/gpu-validate.sh STAGE" in done.stderr
    assert not (tmp_path / "out").exists()

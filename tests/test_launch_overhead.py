"""ci/launch-overhead.py: on a CPU it says `skipped`; under Triton's interpreter it runs every case once."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "ci" / "launch-overhead.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU's answer")
def test_without_cuda_it_says_skipped():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and done.stdout.startswith("skipped: launch overhead needs a CUDA GPU")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the rehearsal is a CPU's")
def test_rehearsal_times_our_cases_and_names_what_could_not_run(tmp_path):
    table = tmp_path / "launch.csv"
    done = subprocess.run([sys.executable, str(SCRIPT), "--csv", str(table)], capture_output=True, text=True,
                          env={**os.environ, "TRITON_INTERPRET": "1"})
    assert done.returncode == 0, done.stderr
    rows = {line.split(",")[0]: line.split(",", 3)[1:] for line in table.read_text().splitlines()[1:]}
    for case in ("torch add_ (one kernel)", "triton empty kernel", "ours rmsnorm fwd (no grad)",
                 "ours rmsnorm fwd+bwd", "native rms_norm fwd+bwd"):
        host, wall, error = rows[case]
        assert error == "" and 0 < float(host) <= float(wall)

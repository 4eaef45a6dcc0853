"""The CI templates users copy (ci/slurm) do what their comments say, run with stand-ins for Slurm; lmbench's own
GPU scripts (ci/*.py) say `skipped` on a CPU."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
import torch
from ci_scripts import run

ROOT = Path(__file__).resolve().parents[1]


def _stand_in(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_the_slurm_script_gives_each_node_its_own_run_directory(tmp_path):
    # srun runs the task as node 1 would; lmbench prints its arguments, one a line.
    _stand_in(tmp_path, "srun", 'shift 2; SLURM_NODEID=1 "$@"\n')
    # A long node list: a reader that stops after the first line would kill scontrol with SIGPIPE (pipefail).
    _stand_in(tmp_path, "scontrol", "echo node-a; for i in $(seq 20000); do echo node-$i; done\n")
    _stand_in(tmp_path, "lmbench", "printf '%s\\n' \"$@\"\n")
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "node-[a-b]",
           "SLURM_JOB_ID": "42", "SLURM_JOB_NUM_NODES": "2"}
    out = subprocess.run(["bash", str(ROOT / "ci/slurm/lmbench.sbatch"), "parallel"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    args = dict(zip(out[1::2], out[2::2]))
    assert args["--out"] == "runs/parallel-slurm-42/node1"  # not a literal "node$SLURM_NODEID" shared by all
    assert (args["--node-rank"], args["--nnodes"], args["--rdzv-endpoint"]) == ("1", "2", "node-a:29500")
    assert out[-1] == "results: runs/parallel-slurm-42/node0/results.jsonl"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU's answer")
@pytest.mark.parametrize(("script", "says"), [("launch-overhead.py", "skipped: launch overhead needs a CUDA GPU"),
                                              ("norm-sweep.py", "skipped: ci/norm-sweep.py needs a CUDA GPU")])
def test_the_gpu_scripts_say_skipped_without_cuda(script, says):
    done = run(script, interpret=False)
    assert done.returncode == 0 and done.stdout.startswith(says)

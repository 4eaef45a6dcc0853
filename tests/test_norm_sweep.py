"""ci/norm-sweep.py: on a CPU it says `skipped`; under Triton's interpreter it runs the default plan and one
other on a small shape, checks their gradients agree and writes every row; plans are what the kernel launches."""

import csv

import pytest
import torch
from ci_scripts import run

from lmbench.kernels import norms


@pytest.mark.skipif(torch.cuda.is_available(), reason="the rehearsal is a CPU's")
def test_rehearsal_times_the_default_plan_and_another_with_equal_gradients(tmp_path):
    table = tmp_path / "sweep.csv"
    done = run("norm-sweep.py", "--csv", str(table), interpret=True)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(table.open()))
    assert {(r["op"], r["default"]) for r in rows} == {(op, d) for op in ("rmsnorm", "layernorm")
                                                         for d in ("True", "False")}
    assert all(r["status"] == "ok" and float(r["time_median_us"]) > 0 for r in rows), rows


def test_the_default_plan_is_the_measured_one_and_other_plans_give_the_same_gradients():
    assert norms.backward_plan(4096) == norms.BackwardPlan(programs_per_sm=2, warps=16, load_stages=0)
    x = torch.randn(37, 96, dtype=torch.bfloat16)
    w, dy = torch.randn(96, dtype=torch.bfloat16), torch.randn(37, 96, dtype=torch.bfloat16)
    _, _, mean, rstd = norms.norm_forward(x, w, None, 1e-6, rms=True)
    dx, dw, _, _ = norms.launch_backward(dy, x, w, False, mean, rstd, rms=True)
    other = norms.launch_backward(dy, x, w, False, mean, rstd, rms=True, plan=norms.BackwardPlan(8, 4, 2))
    # 8 programs a (stand-in) SM over 37 rows: more partial rows, the same sums.
    assert other[1].shape[0] > dw.shape[0]
    assert torch.equal(other[0], dx) and torch.allclose(other[1].sum(0), dw.sum(0), rtol=1e-5, atol=1e-5)

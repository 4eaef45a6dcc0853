"""ci/launch-overhead.py: on a CPU it says `skipped`; under Triton's interpreter it runs every case once."""

import pytest
import torch
from ci_scripts import run


@pytest.mark.skipif(torch.cuda.is_available(), reason="the rehearsal is a CPU's")
def test_rehearsal_times_our_cases_and_names_what_could_not_run(tmp_path):
    table = tmp_path / "launch.csv"
    done = run("launch-overhead.py", "--csv", str(table), interpret=True)
    assert done.returncode == 0, done.stderr
    rows = {line.split(",")[0]: line.split(",", 3)[1:] for line in table.read_text().splitlines()[1:]}
    for case in ("torch add_ (one kernel)", "triton empty kernel", "ours rmsnorm fwd (no grad)",
                 "ours rmsnorm fwd+bwd", "native rms_norm fwd+bwd"):
        host, wall, error = rows[case]
        assert error == "" and 0 < float(host) <= float(wall)

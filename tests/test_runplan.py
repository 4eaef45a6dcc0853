"""The refusal of a resume with another plan says how to resume: never with the very command it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmbench.plan.runplan import PlanMismatch, RunPlan, check

OUT = Path("runs/x")
SUITE = "/tmp/suites/tiny.toml"
THEN, NOW = "0" * 64, "1" * 64


def refusal(earlier: RunPlan, plan: RunPlan, *, suggest: bool = True) -> str:
    with pytest.raises(PlanMismatch) as err:
        check({"plan": earlier.to_json()}, plan, out=OUT, suggest=suggest)
    return str(err.value)


def test_an_edited_suite_file_is_to_be_restored_not_resumed_with_the_command_refused():
    """It said `resume it with lmbench run --suite .../tiny_d.toml ... --resume`, the command just refused, since
    the file at that path still held the edit (trial 100, tiny_d.toml)."""
    earlier = RunPlan(suite=SUITE, suite_sha256=THEN, device="cpu", repeats=3)
    line = refusal(earlier, RunPlan(suite=SUITE, suite_sha256=NOW, device="cpu", repeats=3))
    assert line == (f"--resume: 'runs/x' was started with another plan (suite: {SUITE} (sha256 111111111111) now, "
                    f"{SUITE} (sha256 000000000000) then); the suite file {SUITE} changed since the run started: "
                    "restore it as it was, or choose another --out")


def test_an_edited_suite_file_and_other_options_name_both_fixes():
    earlier = RunPlan(suite=SUITE, suite_sha256=THEN, overrides=("seed=1",))
    line = refusal(earlier, RunPlan(suite=SUITE, suite_sha256=NOW, overrides=("seed=2",)))
    assert line.endswith(f"the suite file {SUITE} changed since the run started: restore it as it was, then resume "
                         f"it with lmbench run --suite {SUITE} --out runs/x --set seed=1 --resume, or choose another "
                         "--out")
    # calibrate resumes itself, not with `lmbench run`.
    line = refusal(earlier, RunPlan(suite=SUITE, suite_sha256=NOW), suggest=False)
    assert line.endswith("restore it as it was, then resume it with the options it started with, or choose another "
                         "--out")


def test_a_builtin_suite_changed_by_another_lmbench_is_resumed_with_that_lmbench():
    line = refusal(RunPlan(suite="smoke", suite_sha256=THEN), RunPlan(suite="smoke", suite_sha256=NOW))
    assert line.endswith("; the built-in suite smoke is another in this lmbench than in the one that started the run "
                         "(run.json says which): resume with that lmbench, or choose another --out")


def test_another_suite_is_answered_with_the_command_of_the_one_it_started_with():
    line = refusal(RunPlan(suite=SUITE, suite_sha256=THEN), RunPlan(suite="smoke", suite_sha256=NOW))
    assert line.endswith(f"; resume it with lmbench run --suite {SUITE} --out runs/x --resume, or choose another --out")

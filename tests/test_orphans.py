"""Nothing a job started outlives it: torchrun's ranks (each in a session of its own) and their children included.

Review 98: a timed-out ddp job whose rank 0 ignored SIGTERM left that rank, and a child it had started, running
with parent 1 after the suite; the parent's signals went to torchrun's process group only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_faults import TINY

from lmbench.analyze import results
from lmbench.cli import cli
from lmbench.run import launcher, runner

#: Ignores SIGTERM, starts a child that ignores it too, writes both pids to the folder it is given, then waits.
_STUBBORN = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                          "signal.SIG_IGN); time.sleep(600)"])
for pid in (os.getpid(), child.pid):
    open(os.path.join(sys.argv[1], str(pid)), "w").close()
time.sleep(600)
"""

#: A stand-in for torchrun: starts the stubborn "rank" in a session of its own, then waits for it.
_AGENT = """
import subprocess, sys
subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], start_new_session=True).wait()
"""


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def run(tmp_path: Path, *sets: str) -> tuple[dict, Path]:
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", "--suite", str(suite), "--out", str(out), "--set", "precision=fp32",
                                      *[arg for value in sets for arg in ("--set", value)]])
    assert result.exit_code == 0, result.output
    record, = results.read(out).records
    return record, out


def pids(folder: Path) -> list[int]:
    return sorted(int(path.name) for path in folder.iterdir())


@pytest.fixture
def spawned(tmp_path: Path):
    """A folder for the pids of what a job starts; whatever of them is still alive at the end is killed, so a failing
    test leaves nothing behind."""
    folder = tmp_path / "pids"
    folder.mkdir()
    yield folder
    for pid in pids(folder):
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_rank_in_a_session_of_its_own_that_ignores_sigterm_does_not_outlive_its_timed_out_job(
        tmp_path, spawned, monkeypatch):
    """torchrun's shape without torchrun: the worker's "rank" is in another session, so SIGTERM and SIGKILL to the
    worker's process group never reached it or its child (both lived on with parent 1)."""
    monkeypatch.setattr(runner, "KILL_GRACE_S", 0.5)
    monkeypatch.setattr(runner, "worker_command", lambda config, job, result, launch: [
        sys.executable, "-c", _AGENT, _STUBBORN, str(spawned)])
    record, out = run(tmp_path, "timeout_s=3")
    assert record["status"] == "timeout"
    started = pids(spawned)
    assert len(started) == 2, "the rank and its child had started"
    assert not [pid for pid in started if alive(pid)]
    log = next((out / "logs").iterdir()).read_text()
    assert "--- lmbench: killed 2 process(es) the job left running: pids " in log


def test_a_rank_s_child_orphaned_by_a_job_that_ended_is_killed_with_it(tmp_path, spawned, monkeypatch):
    """A job that ended on its own (no timeout): the rank's session is gone with the rank, its child was
    reparented away from the job and lived on."""
    leaves = ("import os, subprocess, sys; child = subprocess.Popen([sys.executable, '-c', 'import time; "
              "time.sleep(600)'], start_new_session=True); open(os.path.join(sys.argv[1], str(child.pid)), 'w')"
              ".close()")
    monkeypatch.setattr(runner, "worker_command", lambda config, job, result, launch: [
        sys.executable, "-c", _AGENT, leaves, str(spawned)])
    record, _ = run(tmp_path, "timeout_s=60")
    assert record["status"] == "error" and record["reason"].startswith("worker exited with code 0 without a result")
    child, = pids(spawned)
    assert not alive(child)


_RANK0_HANGS = """
import os, signal, subprocess, sys
if os.environ.get("RANK") == "0" and "lmbench.run.worker" in sys.orig_argv:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                              "signal.SIG_IGN); time.sleep(600)"])
    for pid in (os.getpid(), child.pid):
        open(os.path.join(os.environ["ORPHANS_PIDS"], str(pid)), "w").close()
    import time
    time.sleep(600)
"""


def test_a_ddp_rank_that_ignores_sigterm_and_its_child_do_not_outlive_a_timed_out_job(tmp_path, spawned,
                                                                                       monkeypatch):
    """The review's reproduction under the real torchrun: a ddp CPU row whose rank 0 ignores SIGTERM and has
    started a child (a sitecustomize hook, before lmbench's worker runs); rank 1 waits for it."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_RANK0_HANGS)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("ORPHANS_PIDS", str(spawned))
    monkeypatch.setattr(runner, "KILL_GRACE_S", 1.0)
    started = time.monotonic()
    record, _ = run(tmp_path, "parallel=ddp", "nproc=2", "timeout_s=12")
    assert record["status"] == "timeout", record["reason"]
    rank0 = pids(spawned)
    assert len(rank0) == 2, "rank 0 and its child had started before the timeout"
    assert not [pid for pid in rank0 if alive(pid)]
    assert time.monotonic() - started < 60


def test_the_sweep_kills_an_adopted_orphan_reaps_it_and_leaves_what_was_there_before(tmp_path):
    assert launcher.adopt_orphans()
    before_child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        before = launcher.descendants()
        assert any(pid == before_child.pid for pid, _ in before)
        # A double fork: the middle process ends at once, its child is orphaned and, adopted, is this process's.
        middle = subprocess.run([sys.executable, "-c", "import subprocess, sys; print(subprocess.Popen([sys."
                                 "executable, '-c', 'import time; time.sleep(600)'], stdout=subprocess.DEVNULL, "
                                 "stderr=subprocess.DEVNULL).pid)"],
                                capture_output=True, text=True, check=True, timeout=60)
        orphan = int(middle.stdout)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{orphan}/stat").read_text().rsplit(")", 1)[1].split()[1] != str(os.getpid()):
            assert time.monotonic() < deadline, "the orphan was not adopted"
            time.sleep(0.02)
        assert launcher.sweep(before) == [orphan]
        assert not Path(f"/proc/{orphan}").exists(), "killed and reaped (no zombie left)"
        assert before_child.poll() is None, "a process that was there before the job is left alone"
    finally:
        before_child.kill()
        before_child.wait()


def test_a_pid_reused_by_another_process_is_not_killed():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (pid, start), = [p for p in launcher.descendants() if p[0] == sleeper.pid]
        assert not launcher._kill((pid, str(int(start) + 1)))  # the same pid, started at another moment
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_job_record_is_unchanged_by_the_sweep_when_nothing_is_left(tmp_path, monkeypatch):
    ok = ("import json, sys; json.dump({'status': 'ok', 'reason': None, 'metrics': {'tokens_per_s': 5.0}, "
          "'losses': [1.0]}, open(sys.argv[1], 'w'))")
    monkeypatch.setattr(runner, "worker_command", lambda config, job, result, launch: [
        sys.executable, "-c", ok, str(result)])
    record, out = run(tmp_path)
    assert record["status"] == "ok" and record["warnings"] == []
    assert "lmbench: killed" not in next((out / "logs").iterdir()).read_text()
    assert json.loads((out / "results.jsonl").read_text())["metrics"]["tokens_per_s"] == 5.0

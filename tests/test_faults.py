"""Fault injection (issue 14): every case is a reproduction, numbered as in the issue.

Workers are tests/fake_worker.py (a result in milliseconds, or a hang on request, with the real
parent-death handling of lmbench.run.worker), so signals, full disks and concurrent runs are cheap to
provoke. Every test checks the exit code, a one-line message without a traceback, what is in
results.jsonl, and (autouse fixture) that no process of the test is left behind.
"""

from __future__ import annotations

import errno
import inspect
import json
import os
import pty
import resource
import select
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import fake_worker
import pytest
from click.testing import CliRunner

from lmbench.analyze import results
from lmbench.analyze.compare import decide
from lmbench.cli import cli
from lmbench.plan.config import Config
from lmbench.run import runner
from lmbench.run.rundir import RunDirectory
from lmbench.tune import Tuner

TINY = """
name = "tiny"
[defaults]
model = "tiny-gpt2"
seq_len = 32
batch_size = 2
steps = 3
warmup = 1
device = "cpu"
[matrix]
precision = ["fp32", "amp-bf16"]
"""
THREE = ("--set", "precision=fp32,amp-bf16,bf16")


@pytest.fixture
def tiny(tmp_path: Path) -> str:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return str(path)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """In-process commands start fake workers; returns the folder where they leave their pids."""
    pids = tmp_path / "pids"
    pids.mkdir()
    monkeypatch.setattr(runner, "worker_command", fake_worker.command)
    monkeypatch.setenv("FAKE_WORKER_PIDS", str(pids))
    return pids


@pytest.fixture(autouse=True)
def no_process_left_behind(tmp_path: Path):
    yield
    deadline = time.monotonic() + 10
    while leftovers(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert leftovers(tmp_path) == []


def leftovers(tmp_path: Path) -> list[str]:
    """Live processes whose command line names this test's directory (workers carry their job's path)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if str(tmp_path) in cmdline and state != "Z":
            found.append(f"{proc.name}: {cmdline}")
    return found


def lmbench(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result, exit_code: int = 2) -> str:
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    line, = result.stderr.strip().splitlines()[-1:]
    assert line.startswith("lmbench: error"), result.stderr
    return line


def spawn(tmp_path: Path, *args: object, env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    """lmbench in a process of its own (fake workers), for signals and resource limits."""
    pids = tmp_path / "pids"
    pids.mkdir(exist_ok=True)
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    return subprocess.Popen([sys.executable, fake_worker.__file__, "--cli", *map(str, args)], cwd=tmp_path,
                            env={**os.environ, "FAKE_WORKER_PIDS": str(pids), **(env or {})}, **{**streams, **kw})


def wait_for(condition, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def lines(out: Path) -> list[str]:
    path = out / "results.jsonl"
    return path.read_text().splitlines() if path.exists() else []


def keys(out: Path) -> list[tuple[str, int]]:
    loaded = results.read(out)
    assert loaded.warnings == []
    return [(r["config"]["precision"], r["repeat"]) for r in loaded.records]


# 1. A partial last line loses the next record; a failed append leaves one.

def test_1_a_partial_last_line_is_moved_aside_before_the_next_append(tmp_path, tiny, fake):
    out = tmp_path / "run"
    assert lmbench("run", "--suite", tiny, "--out", out, *THREE).exit_code == 0
    # The bf16 record was never saved (killed writer); a partial line is all that is left of it.
    kept = lines(out)[:2]
    (out / "results.jsonl").write_text("\n".join(kept) + "\n")
    offset = (out / "results.jsonl").stat().st_size
    with open(out / "results.jsonl", "a") as f:
        f.write('{"config_key": "abc')
    result = lmbench("run", "--suite", tiny, "--out", out, *THREE, "--resume")
    assert result.exit_code == 0, result.output
    corrupt = out / "results.jsonl.corrupt"
    assert (f"lmbench: warning: {out}/results.jsonl: partial last line (19 bytes at byte offset {offset}) moved to "
            f"{corrupt}") in result.stderr
    assert corrupt.read_text() == '{"config_key": "abc\n'
    assert lines(out)[:2] == kept
    assert keys(out) == [("fp32", 0), ("amp-bf16", 0), ("bf16", 0)]


def test_1_a_whole_last_line_without_its_newline_is_completed_not_moved(tmp_path):
    path = tmp_path / "results.jsonl"
    record = {"config_key": "k", "repeat": 0, "status": "skipped", "config": {"model": "tiny-gpt2"}}
    path.write_text(json.dumps(record))
    note = results.append_line(path, {**record, "repeat": 1})
    assert note == f"{path}: the last line had no newline (byte offset 0); completed it"
    assert [r["repeat"] for r in results.read(path).records] == [0, 1]
    assert not path.with_name("results.jsonl.corrupt").exists()


def test_1_an_append_past_the_file_size_limit_leaves_the_file_as_it_was(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"a": 1}\n')
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100, hard))
    try:
        with pytest.raises(OSError) as err:
            results.append_line(path, {"padding": "x" * 200})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert err.value.errno == 27  # EFBIG: 91 bytes fitted, and were cut off again
    assert path.read_text() == '{"a": 1}\n'


@pytest.mark.slow
def test_1_6_a_file_size_limit_stops_the_run_and_resume_runs_what_was_unsaved(tmp_path, tiny):
    out = tmp_path / "run"

    def limit() -> None:
        # Room for two of this run's records (about 1.26 KB each, workers' error records) and not three.
        resource.setrlimit(resource.RLIMIT_FSIZE, (2700, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    proc = spawn(tmp_path, "run", "--suite", tiny, "--out", out, *THREE, preexec_fn=limit)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith(f"lmbench: error: cannot save '{out}/results.jsonl': File too large (")
    assert ("file-size limit 2.6 KiB); the 2 record(s) of this session are kept; once there is room, continue "
            f"with: lmbench run --suite {tiny} --out {out} --set precision=fp32,amp-bf16,bf16 --resume") in line
    assert "Traceback" not in stderr
    assert keys(out) == [("fp32", 0), ("amp-bf16", 0)]  # whole lines only: the third was cut off again
    result = lmbench("run", "--suite", tiny, "--out", out, *THREE, "--resume")
    assert result.exit_code == 0, result.output
    assert "2 record(s) kept, 1 job(s) to go" in result.stderr
    assert keys(out) == [("fp32", 0), ("amp-bf16", 0), ("bf16", 0)]


# 2. Two runs into one --out at once.

def test_2_a_second_run_into_a_locked_out_is_refused_and_says_who_holds_it(tmp_path, tiny, fake):
    out = tmp_path / "run"
    with RunDirectory(out, resume=False):
        line = one_line_error(lmbench("run", "--suite", tiny, "--out", out))
        assert line.startswith(f"lmbench: error: --out '{out}' is in use by lmbench (pid {os.getpid()} on ")
        assert line.endswith("; wait for it to finish or choose another directory")
        one_line_error(lmbench("tune", "--model", "tiny-gpt2", "--device", "cpu", "--seq-len", "16", "--out", out,
                               "--resume"))
    assert not (out / "results.jsonl").exists()
    assert lmbench("run", "--suite", tiny, "--out", out).exit_code == 0  # released with the directory


def test_2_a_file_system_without_locks_gets_a_warning_not_a_refusal(tmp_path, monkeypatch):
    def no_flock(fd, operation):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr("fcntl.flock", no_flock)
    with RunDirectory(tmp_path / "run", resume=False) as run_dir:
        notice, = run_dir.notices
    assert notice == (f"cannot lock '{tmp_path}/run' (Function not implemented): nothing stops a second run from "
                      "writing there too")


# 3. Signals to the parent and to the worker.

@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_3_a_signal_stops_the_worker_records_nothing_half_done_and_resume_finishes(tmp_path, tiny, fake, sig):
    out = tmp_path / "run"
    args = ["run", "--suite", tiny, "--out", out, *THREE, "--set", "seed=3", "--device", "cpu"]
    if sig == signal.SIGINT:
        args += ["--repeats", "2", "--parity"]
    proc = spawn(tmp_path, *args, env={"FAKE_WORKER_HANG": "-amp-bf16-"})
    pids = tmp_path / "pids"
    wait_for(lambda: len(list(pids.iterdir())) == 2 and len(lines(out)) == 1)
    hanging = max(int(p.name) for p in pids.iterdir())
    if sig == signal.SIGTERM:
        # 2. Meanwhile, a second run into the same directory is refused, naming the first.
        line = one_line_error(lmbench("run", *args[1:], "--resume"))
        assert f"is in use by lmbench (pid {proc.pid} on " in line
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, stderr
    assert not alive(hanging)
    what = "interrupted" if sig == signal.SIGINT else f"stopped by {signal.Signals(sig).name}"
    message = stderr.strip().splitlines()[-1]
    command = shlex.join(["lmbench", *map(str, args), "--resume"])
    assert message == (f"lmbench: {what}; 1 record(s) of this session are in {out}/results.jsonl; the configuration "
                       f"that was running has none and runs again on resume; continue with: {command}")
    assert "Traceback" not in stderr
    assert keys(out) == [("fp32", 0)] and list((out / "work").iterdir()) == []
    first = lines(out)[0]
    # 4. The hint is the exact command: following it resumes the same plan.
    result = lmbench(*shlex.split(command)[1:])
    assert result.exit_code == 0, result.output
    repeats = 2 if sig == signal.SIGINT else 1
    assert f"1 record(s) kept, {3 * repeats - 1} job(s) to go" in result.stderr
    assert lines(out)[0] == first
    assert sorted(keys(out)) == sorted((p, r) for p in ("fp32", "amp-bf16", "bf16") for r in range(repeats))


@pytest.mark.slow
def test_3_a_signal_during_the_first_job_says_nothing_was_recorded_yet(tmp_path, tiny, fake):
    """It named a results file that did not exist: '0 record(s) of this session are in .../results.jsonl'."""
    out = tmp_path / "run"
    proc = spawn(tmp_path, "run", "--suite", tiny, "--out", out, env={"FAKE_WORKER_HANG": "-fp32-"})
    wait_for(lambda: any((tmp_path / "pids").iterdir()))
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith("lmbench: interrupted; this session recorded nothing yet; the "
                                                      "configuration that was running has none")


@pytest.mark.slow
def test_3_a_signal_after_a_worker_wrote_its_result_keeps_that_measurement(tmp_path, tiny, fake):
    """The worker wrote its result and was still exiting when Ctrl-C came: the measurement is recorded, and resume
    runs only what had not run (before, the result was dropped with the work folder and measured again)."""
    out = tmp_path / "run"
    args = ["run", "--suite", tiny, "--out", out, *THREE, "--device", "cpu"]
    proc = spawn(tmp_path, *args, env={"FAKE_WORKER_LINGER": "-amp-bf16-"})
    wait_for(lambda: len(lines(out)) == 1 and any((out / "work").glob("*amp-bf16*.result.json")))
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "2 record(s) of this session are in" in stderr
    assert "the configuration running when it came had finished and is recorded" in stderr
    assert keys(out) == [("fp32", 0), ("amp-bf16", 0)] and list((out / "work").iterdir()) == []
    result = lmbench(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert "2 record(s) kept, 1 job(s) to go" in result.stderr
    assert keys(out) == [("fp32", 0), ("amp-bf16", 0), ("bf16", 0)]


@pytest.mark.slow
def test_3_a_hang_up_after_the_terminal_is_gone_still_stops_cleanly(tmp_path, tiny, fake):
    """A closed ssh session: the terminal lmbench writes to is gone (writes fail with EIO), then SIGHUP."""
    master, terminal = pty.openpty()
    out = tmp_path / "run"
    proc = spawn(tmp_path, "run", "--suite", tiny, "--out", out, env={"FAKE_WORKER_HANG": "-amp-bf16-"},
                 stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal)
    os.close(terminal)
    hung_up = threading.Event()

    def drain() -> None:  # a terminal that nobody reads would block the progress bar
        while not hung_up.is_set():
            if select.select([master], [], [], 0.1)[0]:
                os.read(master, 65536)

    reader = threading.Thread(target=drain)
    reader.start()
    wait_for(lambda: len(list((tmp_path / "pids").iterdir())) == 2 and len(lines(out)) == 1)
    hanging = max(int(p.name) for p in (tmp_path / "pids").iterdir())
    hung_up.set()
    reader.join()
    os.close(master)
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(timeout=60) == 128 + signal.SIGHUP
    assert not alive(hanging)
    assert keys(out) == [("fp32", 0)]


@pytest.mark.slow
def test_3_a_killed_parent_takes_its_worker_with_it(tmp_path, tiny, fake):
    out = tmp_path / "run"
    proc = spawn(tmp_path, "run", "--suite", tiny, "--out", out, env={"FAKE_WORKER_HANG": "-fp32-"})
    wait_for(lambda: any((tmp_path / "pids").iterdir()))
    worker = int(next((tmp_path / "pids").iterdir()).name)
    proc.kill()
    proc.communicate()
    wait_for(lambda: not alive(worker), timeout_s=10)
    assert not (out / "results.jsonl").exists()
    # The lock died with its holder; the interrupted job runs on resume.
    result = lmbench("run", "--suite", tiny, "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    assert keys(out) == [("fp32", 0), ("amp-bf16", 0)]


def test_3_a_result_a_killed_parent_never_recorded_is_kept_on_resume(tmp_path, tiny, fake):
    """SIGKILL after the worker wrote its result, before the parent recorded it: resume deleted the finished
    measurement and ran the job again (new-user trial). It is recorded once, from the file, and not run again."""
    out = tmp_path / "run"
    proc = spawn(tmp_path, "run", "--suite", tiny, "--out", out, env={"FAKE_WORKER_LINGER": "-fp32-"})
    wait_for(lambda: (out / "work").is_dir() and any((out / "work").glob("*-fp32-*.result.json")))
    proc.kill()
    proc.communicate()
    assert not (out / "results.jsonl").exists()
    before = set((tmp_path / "pids").iterdir())
    result = lmbench("run", "--suite", tiny, "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    assert keys(out) == [("fp32", 0), ("amp-bf16", 0)]
    fp32 = next(r for r in results.read(out).records if r["config"]["precision"] == "fp32")
    assert fp32["status"] == "ok" and fp32["metrics"]["tokens_per_s"] == 2000.0
    assert len(set((tmp_path / "pids").iterdir()) - before) == 1, "only amp-bf16 ran on resume"
    assert not list((out / "work").glob("*.result.json"))


def test_3_a_rank_under_torchrun_watches_the_lmbench_parent_by_pid(tmp_path):
    # A rank's own parent is the torchrun agent; the lmbench parent is further up, so it is watched.
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(tmp_path)])
    code = ("from lmbench.run.worker import exit_with_parent; import time; exit_with_parent(); "
            "print('armed', flush=True); "
            "time.sleep(60)")
    rank = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "LMBENCH_PARENT_PID": str(stand_in.pid)}, start_new_session=True)
    assert rank.stdout.readline() == "armed\n"
    stand_in.kill()
    stand_in.wait()
    assert rank.wait(timeout=10) == -signal.SIGKILL  # it killed its own session
    rank.stdout.close()


def _kill_the_first_worker(tmp_path, tiny, fake, monkeypatch, *, before=lambda: None):
    """Run the tiny suite with its fp32 worker hanging, SIGKILL that worker (after `before`); the two records."""
    monkeypatch.setenv("FAKE_WORKER_HANG", "-fp32-")

    def kill() -> None:
        wait_for(lambda: any(fake.iterdir()))
        before()
        os.kill(int(next(fake.iterdir()).name), signal.SIGKILL)

    killer = threading.Thread(target=kill)
    killer.start()
    out = tmp_path / "run"
    result = lmbench("run", "--suite", tiny, "--out", out)
    killer.join()
    assert result.exit_code == 0, result.output
    return results.read(out).records


def test_3_a_worker_killed_by_a_signal_is_an_error_record_and_the_suite_goes_on(tmp_path, tiny, fake, monkeypatch):
    first, second = _kill_the_first_worker(tmp_path, tiny, fake, monkeypatch)
    assert first["status"] == "error" and first["reason"].startswith("worker was killed by SIGKILL without a result")
    assert second["status"] == "ok"


def test_3_a_worker_the_out_of_memory_killer_ended_is_an_oom_record(tmp_path, tiny, fake, monkeypatch):
    """gpt2-124m at batch 8 x 1024 in fp32 took 24 GiB of a 23 GiB CPU host: the kernel's OOM killer SIGKILLed it
    and the row read `error` (killed by SIGKILL). A SIGKILL while the kernel's kill counter rose is the host's
    memory: an `oom` row, which tune takes for a memory edge."""
    from lmbench.measure import hostmem

    kills = [7]
    monkeypatch.setattr(hostmem, "oom_kills", lambda: kills[0])
    # As the kernel counts it, before its SIGKILL.
    first, second = _kill_the_first_worker(tmp_path, tiny, fake, monkeypatch,
                                           before=lambda: kills.__setitem__(0, kills[0] + 1))
    assert first["status"] == "oom", first["reason"]
    assert first["reason"].startswith("the host ran out of memory: the kernel's out-of-memory killer ended 1 "
                                      "process(es) while the job ran")
    assert "process(es) while the job ran (/proc/vmstat oom_kill; the kernel log names them), and the job was " \
           "SIGKILLed; worker was killed by SIGKILL without a result" in first["reason"]
    assert second["status"] == "ok"


def test_a_torchrun_rank_the_out_of_memory_killer_ended_is_oom_and_other_kills_stay_errors(monkeypatch):
    from lmbench.measure import hostmem
    from lmbench.run.runner import _host_oom

    rank = "rank 1 was killed by SIGKILL (torchrun's summary); then: RuntimeError: Connection reset by peer"
    monkeypatch.setattr(hostmem, "oom_kills", lambda: 4)
    assert _host_oom(1, rank, 3)[0] == "oom"  # torchrun exits 1; its summary names the SIGKILLed rank
    assert _host_oom(1, rank, 4) == ("error", rank)  # no kill by the kernel meanwhile: someone else's SIGKILL
    assert _host_oom(-signal.SIGSEGV, "worker was killed by SIGSEGV", 3)[0] == "error"  # a crash, not a kill
    assert _host_oom(-signal.SIGKILL, "worker was killed by SIGKILL", None)[0] == "error"  # no counter kept


def test_3_nothing_the_worker_left_running_outlives_it(tmp_path, tiny, fake, monkeypatch):
    """A straggler in a finished worker's session (a compile worker, a rank's helper; ranks end with os._exit) is
    killed before the next configuration is measured, not left holding a core or the GPU."""
    stragglers = tmp_path / "stragglers"
    stragglers.mkdir()
    monkeypatch.setenv("FAKE_WORKER_STRAGGLER", str(stragglers))
    result = lmbench("run", "--suite", tiny, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    pids = [int(p.name) for p in stragglers.iterdir()]
    assert len(pids) == 2

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"  # a zombie of the run

    assert all(gone(pid) for pid in pids)


# 4. --resume runs whatever plan it is given.

def test_4_resume_refuses_another_plan_naming_the_difference(tmp_path, tiny, fake):
    out = tmp_path / "run"
    assert lmbench("run", "--suite", tiny, "--out", out, "--set", "seed=1").exit_code == 0
    meta, before = (out / "run.json").read_text(), lines(out)
    line = one_line_error(lmbench("run", "--suite", tiny, "--out", out, "--set", "seed=2", "--resume"))
    assert line == (f"lmbench: error: --resume: '{out}' was started with another plan (overrides (--set, --device): "
                    f"seed=2 now, seed=1 then); resume it with lmbench run --suite {tiny} --out {out} --set seed=1 "
                    "--resume, or choose another --out")
    line = one_line_error(lmbench("run", "--suite", "smoke", "--out", out, "--set", "seed=1", "--repeats", "2",
                                  "--resume"))
    assert "(suite: smoke (sha256 " in line and f"now, {tiny} (sha256 " in line and "--repeats" not in line
    Path(tiny).write_text(TINY.replace("steps = 3", "steps = 4"))
    line = one_line_error(lmbench("run", "--suite", tiny, "--out", out, "--set", "seed=1", "--resume"))
    assert line.startswith(f"lmbench: error: --resume: '{out}' was started with another plan (suite: {tiny} (sha256 ")
    assert (out / "run.json").read_text() == meta and lines(out) == before
    Path(tiny).write_text(TINY)
    # The same plan spelled another way is the same plan.
    result = lmbench("run", "--suite", tiny, "--out", out, "--set", " seed = 01 ", "--resume")
    assert result.exit_code == 0, result.output
    assert "2 record(s) kept, 0 job(s) to go" in result.stderr
    assert json.loads((out / "run.json").read_text())["started"] == json.loads(meta)["started"]


def test_4_more_repeats_on_resume_extend_the_plan(tmp_path, tiny, fake):
    """CI interleaves two runs by resuming each with one more repeat at a time: that is the same plan, extended."""
    out = tmp_path / "run"
    assert lmbench("run", "--suite", tiny, "--out", out).exit_code == 0
    result = lmbench("run", "--suite", tiny, "--out", out, "--repeats", "2", "--resume")
    assert result.exit_code == 0, result.output
    assert "2 record(s) kept, 2 job(s) to go" in result.stderr
    assert sorted(r["repeat"] for r in results.read(out).records) == [0, 0, 1, 1]
    assert json.loads((out / "run.json").read_text())["plan"]["repeats"] == 2
    line = one_line_error(lmbench("run", "--suite", tiny, "--out", out, "--resume"))
    assert "(--repeats: 1 now, 2 then)" in line


CORPUS_SUITE = TINY.replace('device = "cpu"', 'device = "cpu"\ndata = "corpus.txt"')


def _two_corpora(tmp_path: Path) -> tuple[str, Path, Path]:
    """A suite reading data = "corpus.txt" (relative), and folders a/ and b/ holding different files of that name."""
    suite = tmp_path / "s" / "data.toml"
    suite.parent.mkdir()
    suite.write_text(CORPUS_SUITE)
    for name, word in (("a", "alpha"), ("b", "beta")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "corpus.txt").write_text(f"{word} text of the corpus. " * 200)
    return str(suite), tmp_path / "a", tmp_path / "b"


def test_4_resume_refuses_a_corpus_that_changed_under_the_same_keys(tmp_path, fake, monkeypatch):
    """A review's reproduction: a run started in a/ and resumed in b/ measured b's text under a's config_keys."""
    from lmbench.plan.config import corpus_identity

    suite, a, b = _two_corpora(tmp_path)
    out = tmp_path / "r1"
    monkeypatch.chdir(a)
    assert lmbench("run", "--suite", suite, "--device", "cpu", "--out", out).exit_code == 0
    sha_a = corpus_identity(str(a / "corpus.txt"))["data_sha256"]
    sha_b = corpus_identity(str(b / "corpus.txt"))["data_sha256"]
    assert json.loads((out / "run.json").read_text())["corpora"] == {"corpus.txt": sha_a}
    meta, before = (out / "run.json").read_text(), lines(out)
    monkeypatch.chdir(b)
    expected = (f"lmbench: error: --resume: data='corpus.txt' (here {b / 'corpus.txt'}) is other text than '{out}' "
                f"was measured on (sha256 {sha_a[:12]} then, {sha_b[:12]} now); restore the file, or measure it in a "
                "new run with another --out")
    for dry in ((), ("--dry-run",)):
        line = one_line_error(lmbench("run", "--suite", suite, "--device", "cpu", "--out", out, "--repeats", "2",
                                      "--resume", *dry))
        assert line == expected
    assert (out / "run.json").read_text() == meta and lines(out) == before
    # Edited in place: refused the same way; the text it was measured on back, the resume goes on.
    monkeypatch.chdir(a)
    original = (a / "corpus.txt").read_text()
    (a / "corpus.txt").write_text(original + "an edit\n")
    assert " is other text than " in one_line_error(lmbench("run", "--suite", suite, "--device", "cpu", "--out",
                                                            out, "--resume"))
    (a / "corpus.txt").write_text(original)
    result = lmbench("run", "--suite", suite, "--device", "cpu", "--out", out, "--repeats", "2", "--resume")
    assert result.exit_code == 0, result.output
    assert {r["metrics"]["data_sha256"] for r in results.read(out).records} == {sha_a}
    assert "different corpora" not in result.stderr


def test_4_a_run_that_already_mixes_corpora_is_warned_of_in_the_summary_and_the_report(tmp_path, fake, monkeypatch):
    """A run resumed by an older lmbench (no `corpora` in run.json) may hold two texts under one key."""
    suite, a, b = _two_corpora(tmp_path)
    out = tmp_path / "r1"
    monkeypatch.chdir(a)
    assert lmbench("run", "--suite", suite, "--device", "cpu", "--out", out).exit_code == 0
    meta = json.loads((out / "run.json").read_text())
    del meta["corpora"]
    (out / "run.json").write_text(json.dumps(meta))
    records = [json.loads(line) for line in lines(out)]
    mixed = {**records[0], "repeat": 1, "metrics": {**records[0]["metrics"], "data_sha256": "f" * 64}}
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*records, mixed]))
    key, sha = records[0]["config_key"], records[0]["metrics"]["data_sha256"]
    warning = (f"1 configuration(s) hold ok records of different corpora under one config_key, so their figures mix "
               f"different texts: {key} (data_sha256 {sha[:12]}, ffffffffffff); measure them again in a new run "
               "(another --out)")
    # Without run.json's corpora, the records say what was read: b's text is neither, a's is one of them.
    monkeypatch.chdir(b)
    assert " is other text than " in one_line_error(lmbench("run", "--suite", suite, "--device", "cpu", "--out",
                                                            out, "--repeats", "2", "--resume"))
    monkeypatch.chdir(a)
    result = lmbench("run", "--suite", suite, "--device", "cpu", "--out", out, "--repeats", "2", "--resume")
    assert result.exit_code == 0, result.output
    assert f"lmbench: warning: {warning}" in result.stderr
    assert lmbench("report", out).exit_code == 0
    assert warning in (out / "report" / "report.md").read_text()


def _skipping(monkeypatch: pytest.MonkeyPatch, reason: str) -> None:
    """This machine cannot run amp-bf16 (as a missing package or no CUDA would say), for `reason`."""
    real = runner.skip_reason
    monkeypatch.setattr(runner, "skip_reason", lambda config, platform, nnodes=1: reason
                        if config.precision == "amp-bf16" else real(config, platform, nnodes=nnodes))


def test_4_resume_judges_a_skip_again_and_its_new_record_supersedes_the_old(tmp_path, tiny, fake):
    out = tmp_path / "run"
    with pytest.MonkeyPatch.context() as patch:
        _skipping(patch, "no such package here")
        assert lmbench("run", "--suite", tiny, "--out", out).exit_code == 0
        # Still skipped, for the same reason: kept, and no second identical record.
        result = lmbench("run", "--suite", tiny, "--out", out, "--resume")
        assert result.exit_code == 0, result.output
        assert "2 record(s) kept, 0 job(s) to go" in result.stderr and len(lines(out)) == 2
        dry = lmbench("run", "--suite", tiny, "--out", out, "--resume", "--dry-run")
        assert [row.split("│")[-2].strip() for row in dry.stdout.splitlines() if "tiny-gpt2" in row] == ["kept"] * 2
        # Skipped for another reason now: that record supersedes the first.
        _skipping(patch, "another reason")
        assert lmbench("run", "--suite", tiny, "--out", out, "--resume").exit_code == 0
        assert [r["reason"] for r in results.read(out).records if r["status"] == "skipped"] == ["another reason"]
        assert len(lines(out)) == 3
    # The machine can run it now: the dry run says so, and the resume runs it.
    dry = lmbench("run", "--suite", tiny, "--out", out, "--resume", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert [row.split("│")[-2].strip() for row in dry.stdout.splitlines() if "tiny-gpt2" in row] == ["kept", "run"]
    said = "1 record(s) kept, 1 job(s) to go (1 of them skipped before, judged again on this machine)"
    assert said in dry.stderr
    result = lmbench("run", "--suite", tiny, "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    assert said in result.stderr
    # Every line stays in the file; readers count the repeat once, as measured, without a warning.
    assert [json.loads(line)["status"] for line in lines(out)] == ["ok", "skipped", "skipped", "ok"]
    assert keys(out) == [("fp32", 0), ("amp-bf16", 0)]
    assert [r["status"] for r in results.read(out).records] == ["ok", "ok"]
    again = lmbench("run", "--suite", tiny, "--out", out, "--resume")
    assert "2 record(s) kept, 0 job(s) to go" in again.stderr and len(lines(out)) == 4


def test_a_skipped_record_gives_way_to_a_later_one_but_a_measured_record_never_does(tmp_path):
    def record(repeat: int, status: str, tps: float | None = None) -> dict:
        return {"config_key": "k", "repeat": repeat, "status": status, "config": {"model": "tiny-gpt2"},
                "metrics": {"tokens_per_s": tps} if tps else None, "reason": None if tps else "why"}

    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [record(0, "skipped"), record(1, "ok", 5.0),
                                                              record(0, "ok", 7.0), record(1, "skipped"),
                                                              record(0, "skipped")]))
    loaded = results.read(path)
    assert [(r["repeat"], r["status"], (r["metrics"] or {}).get("tokens_per_s")) for r in loaded.records] == [
        (0, "ok", 7.0), (1, "ok", 5.0)]
    assert loaded.warnings == [f"{path}:4: skipped line: repeat 1 of k is already on line 2",
                               f"{path}:5: skipped line: repeat 0 of k is already on line 3"]


def test_4_a_dry_run_resume_of_a_directory_with_nothing_to_resume_says_so(tmp_path, tiny):
    out = tmp_path / "typo"
    result = lmbench("run", "--suite", tiny, "--out", out, "--resume", "--dry-run")
    assert result.exit_code == 0, result.output
    assert (f"lmbench: warning: --resume: nothing to resume in '{out}' (no results, run.json or probes there): this "
            "is a new run") in result.stderr
    assert "kept" not in result.stderr and "kept" not in result.stdout
    assert not out.exists()


# 5. Valid JSON of the wrong shape.

MALFORMED = [
    ('{"config_key": "x", "repeat": 0, "status": "ok"}', "config is not an object naming a model"),
    ('{"config_key": "x", "repeat": 0, "status": "ok", "config": {"model": "tiny-gpt2"}, "metrics": "oops"}',
     "metrics is not an object"),
    ('{"config_key": ["x"], "repeat": 0, "status": "ok", "config": {"model": "tiny-gpt2"}}',
     "config_key is not a non-empty string"),
    ('{"config_key": "x", "repeat": 0, "status": "ok", "config": null}', "config is not an object naming a model"),
    ('{"config_key": "x", "repeat": -1, "status": "error", "config": {"model": "tiny-gpt2"}}',
     "repeat is not an integer >= 0"),
    ('{"config_key": "x", "repeat": true, "status": "error", "config": {"model": "tiny-gpt2"}}',
     "repeat is not an integer >= 0"),
    ('{"config_key": "x", "repeat": 0, "status": "great", "config": {"model": "tiny-gpt2"}}',
     "status is not one of ok, oom, diverged, error, timeout, skipped"),
    ('{"config_key": "x", "repeat": 0, "status": "ok", "config": {"model": "tiny-gpt2"}, "metrics": {}}',
     "an ok record without a positive, finite metrics.tokens_per_s"),
    # Each of these crashed report, compare or the run summary (exit 3) before it was refused here.
    ('{"config_key": "x", "repeat": 0, "status": "ok", "config": {"model": "tiny-gpt2"}, '
     '"metrics": {"tokens_per_s": 0}}', "an ok record without a positive, finite metrics.tokens_per_s"),
    ('{"config_key": "x", "repeat": 0, "status": "ok", "config": {"model": "tiny-gpt2"}, '
     '"metrics": {"tokens_per_s": Infinity}}', "an ok record without a positive, finite metrics.tokens_per_s"),
    ('{"config_key": "x", "repeat": 0, "status": "ok", "config": {"model": "tiny-gpt2"}, '
     '"metrics": {"tokens_per_s": NaN}}', "an ok record without a positive, finite metrics.tokens_per_s"),
    ('{"config_key": "x", "repeat": 0, "status": "ok", "config": {"model": "tiny-gpt2"}, '
     '"metrics": {"tokens_per_s": 1.0, "step_time_cv": "y"}}', "metrics.step_time_cv is not a number"),
    ('{"config_key": "x", "repeat": 0, "status": "ok", "config": {"model": "tiny-gpt2"}, '
     '"metrics": {"tokens_per_s": 1.0, "mem_peak_allocated_bytes_per_rank": [1, "a"]}}',
     "metrics.mem_peak_allocated_bytes_per_rank is not a list of numbers"),
    ('{"config_key": "x", "repeat": 0, "status": "error", "config": {"model": "tiny-gpt2"}, "step_times_s": ["a"]}',
     "step_times_s holds something other than numbers"),
    ('{"config_key": "x", "repeat": 0, "status": "error", "config": {"model": "tiny-gpt2"}, "warnings": [1, {}]}',
     "warnings holds something other than text"),
    ('{"config_key": "x", "repeat": 0, "status": "error", "config": {"model": "tiny-gpt2"}, '
     '"env": {"device": "oops"}}', "env.device is not an object"),
    ('{"config_key": "x", "repeat": 0, "status": "skipped", "config": {"model": "tiny-gpt2", "batch_size": null}}',
     "config holds something other than strings, numbers and booleans"),
    ('{"config_key": "x", "repeat": 0, "status": "error", "config": {"model": "tiny-gpt2"}, "losses": ["a"]}',
     "losses holds something other than numbers"),
    ('{"config_key": "x", "repeat": 0, "status": "error", "config": {"model": "tiny-gpt2"}, "reason": 3}',
     "reason is not a string"),
    # A new-user trial's: report sorted a string batch size among integers; hostload added a string's cores.
    ('{"config_key": "x", "repeat": 0, "status": "skipped", "config": {"model": "tiny-gpt2", "batch_size": "4"}}',
     "config.batch_size is not an integer"),
    ('{"config_key": "x", "repeat": 0, "status": "ok", "config": {"model": "tiny-gpt2"}, '
     '"metrics": {"tokens_per_s": 1.0, "host_other_cpu_cores": "x"}}', "metrics.host_other_cpu_cores is not a number"),
    ("[1, 2]", "not a JSON object"),
    ('{"config_key": "x", "repe', "skipped corrupt line"),
]


def test_5_wrongly_shaped_lines_are_skipped_by_report_resume_and_compare(tmp_path, tiny, fake):
    out = tmp_path / "run"
    assert lmbench("run", "--suite", tiny, "--out", out).exit_code == 0
    good = lines(out)
    # Well shaped but foreign: a hand-written record of no planned configuration, with few metrics.
    foreign = ('{"suite": "tiny", "config_key": "x", "repeat": 0, "status": "ok", "config": {"model": "tiny-gpt2"}, '
               '"metrics": {"tokens_per_s": 1.0}}')
    with open(out / "results.jsonl", "a") as f:
        f.write("".join(line + "\n" for line, _ in MALFORMED) + good[0] + "\n" + foreign + "\n")
    expected = [f"{out}/results.jsonl:{3 + i}: {'skipped line: ' if 'corrupt' not in why else ''}{why}"
                for i, (_, why) in enumerate(MALFORMED)]
    expected.append(f"{out}/results.jsonl:{3 + len(MALFORMED)}: skipped line: repeat 0 of "
                    f"{json.loads(good[0])['config_key']} is already on line 1")
    loaded = results.read(out)
    assert [w.split(" (")[0] for w in loaded.warnings] == expected
    # The foreign record's config is too partial to key: it keeps the key it was written with.
    assert [json.dumps(r) for r in loaded.records] == [json.dumps(json.loads(g)) for g in [*good, foreign]]
    report = lmbench("report", out)
    assert report.exit_code == 0, report.output
    assert report.stderr.count("lmbench: warning: ") == len(expected)
    assert (out / "report" / "results.csv").read_text().count("\n") == 4  # header, two good records, the foreign
    resumed = lmbench("run", "--suite", tiny, "--out", out, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "3 record(s) kept, 0 job(s) to go" in resumed.stderr  # the foreign one is kept, not summarised
    # compare reads the same file as the candidate of a copy of itself (one directory named twice is refused).
    twin = tmp_path / "twin"
    shutil.copytree(out, twin)
    assert lmbench("compare", out, twin).exit_code == 0


# 6. Disk full: a real full file system (a 16 KiB tmpfs in a private mount namespace), where one can be made.

FULL_DISK = """
set -u
mount -t tmpfs -o size=16k tmpfs "$MNT"
run() { python "$FAKE" --cli "$@"; }
run run --suite "$SUITE" --out "$MNT/run" --set precision=fp32,amp-bf16,bf16 >/dev/null 2>"$OUT/full.err"
echo $? > "$OUT/full.rc"
cp -r "$MNT/run" "$OUT/full"
mount -o remount,size=1m "$MNT"
run run --suite "$SUITE" --out "$MNT/run" --set precision=fp32,amp-bf16,bf16 --resume >/dev/null 2>"$OUT/resume.err"
echo $? > "$OUT/resume.rc"
cp -r "$MNT/run" "$OUT/resumed"
mount -o remount,ro "$MNT"
run report "$MNT/run" >/dev/null 2>"$OUT/report.err"
echo $? > "$OUT/report.rc"
"""


def _in_a_small_tmpfs(tmp_path: Path, suite: str, script: str) -> tuple[Path, Path]:
    """Run `script` (sh) in a private mount namespace, where it mounts its own small tmpfs at $MNT and leaves its
    findings in $OUT; (MNT, OUT). Skips where no such namespace can be made."""
    probe = subprocess.run(["unshare", "--mount", "--map-root-user", "mount", "-t", "tmpfs", "tmpfs", str(tmp_path)],
                           capture_output=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode:
        pytest.skip("no private mount namespace here (unshare) for a small tmpfs")
    mnt, out = tmp_path / "mnt", tmp_path / "out"
    mnt.mkdir()
    out.mkdir()
    env = {**os.environ, "MNT": str(mnt), "OUT": str(out), "FAKE": fake_worker.__file__, "SUITE": suite}
    subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", script], env=env, timeout=300, check=True)
    return mnt, out


@pytest.mark.slow
def test_6_11_a_full_then_read_only_disk(tmp_path, tiny):
    mnt, out = _in_a_small_tmpfs(tmp_path, tiny, FULL_DISK)
    err = (out / "full.err").read_text()
    assert (out / "full.rc").read_text().strip() == "2", err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"lmbench: error: cannot save '{mnt}/run/") and ": No space left on device (" in line
    assert "record(s) of this session are kept; once there is room, continue with: lmbench run" in line
    assert "Traceback" not in err
    saved = keys(out / "full")
    assert saved == [("fp32", 0), ("amp-bf16", 0), ("bf16", 0)][: len(saved)]
    assert (out / "resume.rc").read_text().strip() == "0", (out / "resume.err").read_text()
    assert keys(out / "resumed") == [("fp32", 0), ("amp-bf16", 0), ("bf16", 0)]
    # 11. A report of a run directory that cannot be written.
    assert (out / "report.rc").read_text().strip() == "2"
    assert (out / "report.err").read_text() == (f"lmbench: error: cannot write to the report directory "
                                                f"'{mnt}/run/report': Read-only file system\n")


ALREADY_FULL = """
set -u
mount -t tmpfs -o size=64k tmpfs "$MNT"
head -c 1048576 /dev/zero > "$MNT/fill" 2>/dev/null
for command in run calibrate; do
    python "$FAKE" --cli $command --suite "$SUITE" --out "$MNT/$command" >/dev/null 2>"$OUT/$command.err"
    echo $? > "$OUT/$command.rc"
done
"""


@pytest.mark.slow
def test_6_a_disk_full_before_the_run_starts(tmp_path, tiny):
    """A disk already full: the lock holder's name cannot be written, which must not resurface as an internal
    error when the lock's file is closed (a buffered write failing again): one line, exit 2."""
    _, out = _in_a_small_tmpfs(tmp_path, tiny, ALREADY_FULL)
    for command in ("run", "calibrate"):
        err = (out / f"{command}.err").read_text()
        assert (out / f"{command}.rc").read_text().strip() == "2", err
        assert "Traceback" not in err and "internal error" not in err, err
        line = err.strip().splitlines()[-1]
        assert line.startswith("lmbench: error: ") and "No space left on device" in line, line


@pytest.mark.parametrize("failure", ["no result", "an error result"])
def test_6_a_worker_failing_on_a_full_disk_is_unsaved_not_failed(tmp_path, tiny, fake, monkeypatch, failure):
    """The worker fails at its first write (result, telemetry, log), maybe before its log says anything;
    a result-sized probe tells why."""
    def full_disk(path, mode="r", *args, **kwargs):
        if Path(path).name == ".room-probe":
            raise OSError(28, "No space left on device")
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(runner, "open", full_disk, raising=False)
    if failure == "no result":
        monkeypatch.setattr(runner, "worker_command", lambda *a: [sys.executable, "-c", "raise SystemExit(1)"])
    else:
        monkeypatch.setenv("FAKE_WORKER_ERROR", "OSError: [Errno 28] No space left on device")
    out = tmp_path / "run"
    line = one_line_error(lmbench("run", "--suite", tiny, "--out", out))
    assert line.startswith(f"lmbench: error: cannot save '{out}/work/tiny-gpt2-b2-s32-a1-fp32-")
    assert ".result.json': No space left on device (" in line
    assert not (out / "results.jsonl").exists()


def test_6_a_worker_that_failed_of_its_own_is_a_record_even_with_little_room(tmp_path, tiny, fake, monkeypatch):
    """A worker that wrote its result, an error of its own (a corpus too short), failed of nothing the storage did:
    with less room left than a result takes, the probe would fail, but the record is saved and the run goes on
    (before, the run stopped as 'cannot save', and every --resume ran the configuration and stopped again)."""
    def little_room(path, mode="r", *args, **kwargs):
        if Path(path).name == ".room-probe":
            raise OSError(27, "File too large")
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(runner, "open", little_room, raising=False)
    monkeypatch.setenv("FAKE_WORKER_ERROR", "DataError: the corpus has 2 tokens, fewer than one batch")
    out = tmp_path / "run"
    assert lmbench("run", "--suite", tiny, "--out", out).exit_code == 0
    assert [(r["status"], r["reason"]) for r in results.read(out).records] == [
        ("error", "DataError: the corpus has 2 tokens, fewer than one batch")] * 2


# 7. compare: a bad --junit path, a metric that is not a number or is zero everywhere.

def _hand_run(path: Path, *values: float) -> Path:
    path.mkdir()
    for repeat, value in enumerate(values):
        results.append(path, results.make_record(
            suite="s", config={"model": "tiny-gpt2"}, config_key="k", repeat=repeat, status="ok", reason=None,
            payload={"metrics": {"tokens_per_s": value, "nonfinite_losses": 0, "telemetry": "off: not a CUDA device",
                                 "step_time_median_s": 1 / value}}))
    return path


@pytest.mark.parametrize(("args", "message"), [
    (["--junit", "/nonexistent/dir/x.xml"],
     "lmbench: error: cannot write --junit '/nonexistent/dir/x.xml': No such file or directory"),
    (["--metric", "telemetry"],
     ("lmbench: error: --metric 'telemetry' has no numeric value in the ok records (e.g. 'off: not a CUDA device'); "
      "compare a number such as tokens_per_s or step_time_median_s")),
])
def test_7_compare_refuses_in_one_line_with_exit_2(tmp_path, args, message):
    base, cand = _hand_run(tmp_path / "a", 100.0, 101.0, 99.0), _hand_run(tmp_path / "b", 80.0, 81.0, 79.0)
    result = lmbench("compare", base, cand, *args)
    assert one_line_error(result) == message
    assert result.stdout == ""  # nothing printed before the refusal


def test_7_a_count_at_0_everywhere_is_unchanged_not_refused(tmp_path):
    """A gate on nonfinite_losses or stall_steps between two clean runs was refused as bad input (exit 2), so it
    could never pass (review)."""
    base, cand = _hand_run(tmp_path / "a", 100.0, 101.0, 99.0), _hand_run(tmp_path / "b", 80.0, 81.0, 79.0)
    result = lmbench("compare", base, cand, "--metric", "nonfinite_losses", "--strict")
    assert result.exit_code == 0, result.output
    assert "unchanged" in result.stdout and "median 0 on both sides" in result.stdout


@pytest.mark.filterwarnings("ignore::scipy.stats.DegenerateDataWarning")
def test_7_a_zero_median_has_no_ratio_and_no_verdict():
    verdict = decide([0.0, 0.0, 1.0, 0.0], [2.0, 2.0, 2.0, 2.0], threshold=0.05, higher_is_better=False)
    assert (verdict.verdict, verdict.ratio) == ("regression", None)
    assert verdict.note.startswith("median 0 in the baseline: no ratio; every candidate repeat (2) above every")
    verdict = decide([0.0, 0.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], threshold=0.05, higher_is_better=False)
    assert (verdict.verdict, verdict.ratio) == ("inconclusive", None)
    # Resampled medians of 0 give an unbounded interval end, not a ZeroDivisionError.
    assert decide([1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 1.0], threshold=0.05, higher_is_better=False).verdict


# 8. A huge matrix.

def test_8_a_matrix_above_max_configs_is_refused_before_it_is_built(tiny):
    values, values100 = ",".join(map(str, range(100))), ",".join(map(str, range(1, 101)))
    started = time.monotonic()
    result = lmbench("run", "--suite", tiny, "--set", f"seed={values}", "--set", f"grad_accum={values100}", "--set",
                     f"steps={values100}", "--dry-run")
    assert one_line_error(result) == (
        f"lmbench: error: {tiny} with --set seed, grad_accum, steps: the matrix has 2,000,000 points (2 precision x "
        "100 seed x 100 grad_accum x 100 steps), more than --max-configs 10,000; narrow it, or raise --max-configs")
    assert time.monotonic() - started < 30
    assert one_line_error(lmbench("run", "--suite", tiny, "--dry-run", "--max-configs", "1")).endswith(
        "more than --max-configs 1; narrow it, or raise --max-configs")
    assert lmbench("run", "--suite", tiny, "--dry-run", "--max-configs", "2").exit_code == 0


# 9. Accepted nonsense.

@pytest.mark.parametrize(("suite_text", "args", "message"), [
    (None, ["--set", "lr=inf"], "--set 'lr=inf': lr=inf must be a positive, finite number"),
    (None, ["--set", "timeout_s=inf"],
     "--set 'timeout_s=inf': timeout_s=inf must be a positive, finite number of seconds (at most 2,592,000)"),
    (None, ["--set", "nproc=100000"],
     "--set 'nproc=100000': nproc=100000 is more processes per node than lmbench runs (at most 64)"),
    (TINY + "[[exclude]]\nseed = 3\n", [],
     ("{suite}: [[exclude]] seed is neither in [matrix] nor in [defaults], so the rule would exclude nothing; matrix "
      "axes: precision")),
    (TINY + "[[exclude]]\nprecision = 'fp16'\n", [],
     ("{suite}: [[exclude]] precision='fp16' matches none of its values ('fp32', 'amp-bf16'), so the rule would "
      "exclude nothing")),
    (TINY.replace('name = "tiny"', 'name = "../../escaped"'), [],
     ("{suite}: name '../../escaped' is not a safe file name (up to 100 letters, digits, '.', '_', '+' or '-', not "
      "starting with '.'): run directories are named after it")),
    (None, ["--set", "data={empty}"], "--set 'data={empty}': data='{empty}' is an empty file"),
])
def test_9_nonsense_is_refused_at_validation(tmp_path, tiny, suite_text, args, message):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    if suite_text is not None:
        Path(tiny).write_text(suite_text)
    args = [a.format(empty=empty) for a in args]
    line = one_line_error(lmbench("run", "--suite", tiny, *args, "--dry-run"))
    assert line == "lmbench: error: " + message.format(suite=tiny, empty=empty)


def test_9_an_exclude_rule_on_a_default_axis_still_applies(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(TINY + "[[exclude]]\nmodel = 'tiny-gpt2'\nprecision = 'fp32'\n")
    result = lmbench("run", "--suite", path, "--dry-run")
    assert result.exit_code == 0 and result.output.startswith("1 configuration ") and "amp-bf16" in result.output


# 10. tune.

@pytest.mark.parametrize(("args", "message"), [
    (["--max-memory", "inf"], "--max-memory 'inf': must be a finite size of at least 1 byte"),
    (["--max-memory", "nan"], "--max-memory 'nan': must be a finite size of at least 1 byte"),
    (["--precision", "fp8"], ("--precision 'fp8': precision='fp8' is not one of: fp32, tf32, amp-fp16, amp-bf16, "
                             "fp16, bf16, fp8-tensorwise, fp8-rowwise")),
    (["--budget-minutes", "nan"], "--budget-minutes nan: must be a finite number"),
])
def test_10_tune_refuses_nonsense(args, message):
    line = one_line_error(lmbench("tune", "--model", "tiny-gpt2", "--device", "cpu", *args))
    assert line == "lmbench: error: " + message


def test_10_tune_resumes_over_a_truncated_probes_file(tmp_path, fake, monkeypatch):
    monkeypatch.setenv("FAKE_WORKER_OOM_ABOVE", "4")
    out = tmp_path / "tune"
    args = ["tune", "--model", "tiny-gpt2", "--seq-len", "16", "--device", "cpu", "--precision", "fp32",
            "--checkpointing", "none", "--max-batch", "8", "--margin", "0", "--max-memory", "30MiB", "--out", out]
    assert lmbench(*args).exit_code == 0
    probes = (out / "probes.jsonl").read_text().splitlines()
    assert [json.loads(p)["batch_size"] for p in probes] == [1, 2, 4, 8, 6, 5]
    cut = "\n".join(probes[:-1]) + "\n" + probes[-1][:20]
    (out / "probes.jsonl").write_text(cut)
    result = lmbench(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert (f"lmbench: warning: {out}/probes.jsonl: partial last line (20 bytes at byte offset "
            f"{len(cut) - 20}) moved to {out}/probes.jsonl.corrupt") in result.stderr
    again = (out / "probes.jsonl").read_text().splitlines()
    assert again[:-1] == probes[:-1] and json.loads(again[-1])["batch_size"] == 5  # only the lost probe re-ran
    # Batch 4, 3 and 2 measured once, and the two best confirmed to 3 repeats each: nothing again on resume.
    assert len(results.read(out).records) == 7


@pytest.mark.slow
def test_10_an_interrupted_tune_shows_what_it_found_and_writes_a_partial_winner(tmp_path, fake):
    """Cut by a signal (an outer timeout, Ctrl-C), tune said only how to resume: the GPU lease's tune named nothing.
    Now its tables and a tuned.toml that says it is partial come first, then the resume line."""
    out = tmp_path / "tune"
    args = ["tune", "--model", "tiny-gpt2", "--seq-len", "16", "--device", "cpu", "--precision", "fp32",
            "--checkpointing", "none", "--max-batch", "8", "--margin", "0", "--max-memory", "30MiB", "--out", out]
    proc = spawn(tmp_path, *args, env={"FAKE_WORKER_OOM_ABOVE": "4", "FAKE_WORKER_HANG": "-b3-"})
    wait_for(lambda: len(lines(out)) == 1 and len(list((tmp_path / "pids").iterdir())) == 8)  # 6 probes, 4, 3
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith("lmbench: interrupted; the probes and measurements made so "
                                                      "far are kept in")
    assert "cut short: interrupted" in stdout and f"winner as a suite (partial): {out}/tuned.toml" in stdout
    tuned = (out / "tuned.toml").read_text()
    assert tuned.startswith("# from a tune cut short (interrupted): the search and measurements are partial\n")
    assert "batch_size = 4" in tuned


def test_10_tune_measures_every_combination_s_chosen_size_before_any_smaller_one(tmp_path, fake, monkeypatch):
    """Under a tight budget the 3/4 and 1/2 sizes of the first combination were measured before the second was
    searched at all: every chosen size comes first now."""
    monkeypatch.setenv("FAKE_WORKER_OOM_ABOVE", "4")
    out = tmp_path / "tune"
    result = lmbench("tune", "--model", "tiny-gpt2", "--seq-len", "16", "--device", "cpu", "--precision", "fp32",
                     "--checkpointing", "none,full", "--max-batch", "8", "--margin", "0", "--confirm-repeats", "1",
                     "--max-memory", "30MiB", "--out", out)
    assert result.exit_code == 0, result.output
    measured = [(r["config"]["checkpointing"], r["config"]["batch_size"]) for r in results.read(out).records]
    assert measured == [("none", 4), ("full", 4), ("none", 3), ("none", 2), ("full", 3), ("full", 2)]


def test_10_tuner_skips_unreadable_probe_lines(tmp_path):
    with RunDirectory(tmp_path / "t", resume=False) as run_dir:
        (run_dir.path / "probes.jsonl").write_text('[1]\nnot json\n{"config_key": "k", "status": "ok"}\n')
        tuner = Tuner(Config(device="cpu"), run_dir, launch=lambda job, run_dir: ("ok", None, None))
    assert tuner.cache == {"k": ("ok", None)}
    assert tuner.warnings == [f"{run_dir.path}/probes.jsonl:2: skipped corrupt line",
                              f"{run_dir.path}/probes.jsonl:1: skipped line without config_key and status"]


# 11. report.

def test_11_report_refuses_unwritable_outputs_and_reads_a_run_once(tmp_path):
    run = _hand_run(tmp_path / "run", 100.0)
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert one_line_error(lmbench("report", run, "--out", blocker / "report")) == (
        f"lmbench: error: cannot write to --out '{blocker}/report': Not a directory")
    (run / "report").write_text("")
    assert one_line_error(lmbench("report", run)) == (
        f"lmbench: error: cannot write to the report directory '{run}/report': File exists")
    (run / "report").unlink()
    other = _hand_run(tmp_path / "other", 90.0)
    assert one_line_error(lmbench("report", run, other)) == (
        "lmbench: error: a report of several runs needs --out DIR (where to write the combined report)")
    (tmp_path / "link").symlink_to(run)
    result = lmbench("report", run, f"{run}/", tmp_path / "link")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("is given twice: its records are read once") == 1
    assert f"run directory {tmp_path}/link is the same directory as {run}: its records are read once" in result.stderr
    assert (run / "report" / "results.csv").read_text().count("\n") == 2


# 12. calibrate.

def test_12_calibrate_into_an_existing_out_can_be_resumed(tmp_path, tiny, fake):
    out = tmp_path / "cal"
    args = ["calibrate", "--suite", tiny, "--repeats", "2", "--runs", "3", "--out", out]
    assert lmbench(*args).exit_code == 0
    line = one_line_error(lmbench(*args))
    assert line == (f"lmbench: error: --out '{out}' already holds a calibration; pass --resume to finish it, or "
                    "choose another directory")
    (out / "noise-floor.json").unlink()
    (out / "b" / "results.jsonl").write_text("\n".join(lines(out / "b")[:1]) + "\n")
    result = lmbench(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert "1 record(s) kept, 3 job(s) to go" in result.stderr
    assert json.loads((out / "noise-floor.json").read_text())["repeats_per_run"] == 2
    assert len(results.read(out / "b").records) == 4
    # Fewer --runs than were measured would drop run c from the floor silently (trial).
    assert one_line_error(lmbench(*args, "--resume", "--runs", "2")) == (
        f"lmbench: error: --runs 2: the calibration in '{out}' holds 3 runs (a, b, c); resume with --runs 3 or more")


def test_4_resume_into_a_directory_with_nothing_to_resume_says_so_and_runs(tmp_path, tiny, fake):
    """Scripts pass --resume every time; a mistyped path would measure everything again, so it is said."""
    out = tmp_path / "typo"
    result = lmbench("run", "--suite", tiny, "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    assert (f"lmbench: warning: --resume: nothing to resume in '{out}' (no results, run.json or probes there): this "
            "is a new run") in result.stderr
    assert keys(out) == [("fp32", 0), ("amp-bf16", 0)]
    again = lmbench("run", "--suite", tiny, "--out", out, "--resume")
    assert again.exit_code == 0 and "nothing to resume" not in again.stderr


def test_a_profiled_record_written_under_the_old_key_is_read_under_todays(tmp_path, monkeypatch):
    """`profile` was hashed into config_key until it was keyed at its default (its steps come after the window):
    a profiled record of before is read under the key it has now, so it pairs with an unprofiled baseline and
    counts as done on --resume instead of being measured again."""
    from lmbench.plan import config as config_module
    from lmbench.plan.config import Config

    profiled = Config(profile=True)
    with monkeypatch.context() as patch:
        patch.setattr(config_module, "_KEYED_AT_DEFAULT", frozenset())
        old_key = profiled.key
    assert old_key != profiled.key == Config().key
    lines = [{"config_key": old_key, "repeat": 0, "status": "ok", "config": profiled.to_dict()},
             # A config this lmbench cannot read keeps its key as written.
             {"config_key": "odd", "repeat": 0, "status": "ok", "config": {"model": "tiny-gpt2", "profile": True,
                                                                             "no_such_axis": 1}},
             # An unprofiled record under another config's key (a line edited by hand, or a key from before a
             # default changed) is read as the configuration it measured, and the file's one warning says so.
             {"config_key": old_key, "repeat": 0, "status": "ok", "config": {**profiled.to_dict(), "profile": False,
                                                                            "seed": 1}}]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps({**line, "metrics": {"tokens_per_s": 1.0}}) + "\n"
                                                    for line in lines))
    loaded = results.read(tmp_path)
    assert loaded.warnings == [f"{tmp_path / 'results.jsonl'}: 1 record(s) carry a config_key their config does not "
                               f"have under this lmbench (first on line 3: {old_key}, its config's key "
                               f"{Config(seed=1).key}); read under their configs' keys, which compare and --resume "
                               "match by"]
    assert [r["config_key"] for r in loaded.records] == [Config().key, "odd", Config(seed=1).key]
    # Its side files keep the key they were written under: the report still finds its telemetry.
    assert [r.get("written_key") for r in loaded.records] == [old_key, None, old_key]
    from lmbench.analyze.report import timelines

    (tmp_path / "telemetry").mkdir()
    (tmp_path / "telemetry" / f"{old_key}-r0.csv").write_text("t_s,power_w\n")
    first = {**loaded.records[0], "run": str(tmp_path)}
    assert list(timelines([first], ["model"]).values()) == [tmp_path / "telemetry" / f"{old_key}-r0.csv"]


def test_a_record_measured_at_an_axis_old_default_does_not_pair_with_todays_default(tmp_path, monkeypatch):
    """An axis added after the first key format enters the key only away from its default: were that default
    changed, a record measured at the old one would carry today's default configuration's key. Read under its
    config's own key, it pairs with neither a run at the new default nor, on --resume, stands in for one."""
    from lmbench.plan import config as config_module
    from lmbench.plan.config import Config

    old = Config(vocab_multiple=1)
    old_key = old.key  # written while 1 was the default
    line = {"config_key": old_key, "repeat": 0, "status": "ok", "config": old.to_dict(),
            "metrics": {"tokens_per_s": 1.0}}
    (tmp_path / "results.jsonl").write_text(json.dumps(line) + "\n")
    monkeypatch.setitem(config_module.DEFAULTS, "vocab_multiple", 64)
    today = Config(vocab_multiple=64)
    assert today.key == old_key  # the collision the written key alone would make
    record, = results.read(tmp_path).records
    assert record["config_key"] == old.key != today.key
    assert record["written_key"] == old_key


_RANKS_FAIL = """
import json, sys, time
result, rank1_at, rank0_at = sys.argv[1], float(sys.argv[2]), sys.argv[3]
now = time.time()
with open(result + ".rank1", "w") as f:
    json.dump({"status": "oom", "reason": "OutOfMemoryError: CUDA out of memory", "failed_at": now + rank1_at,
               "rank": 1}, f)
if rank0_at != "none":
    with open(result, "w") as f:
        json.dump({"status": "error", "reason": "RuntimeError: Connection reset by peer", "metrics": None,
                   "failed_at": now + float(rank0_at), "losses": None, "step_times_s": None}, f)
raise SystemExit(1)
"""


@pytest.mark.parametrize(("rank1_at", "rank0_at", "status", "reason"), [
    # Rank 1 ran out of memory; rank 0's collective then lost its peer: the record names the cause.
    ("0", "0.5", "oom", "rank 1 failed first: OutOfMemoryError: CUDA out of memory"),
    # torchrun stopped rank 0 before it could write anything.
    ("0", "none", "oom", "rank 1 failed first: OutOfMemoryError: CUDA out of memory"),
    # Rank 0 failed first: its own failure stands.
    ("0.5", "0", "error", "RuntimeError: Connection reset by peer"),
])
def test_a_rank_that_failed_first_is_the_records_cause(tmp_path, tiny, monkeypatch, rank1_at, rank0_at, status,
                                                        reason):
    monkeypatch.setattr(runner, "worker_command", lambda config, job, result, launch: [
        sys.executable, "-c", _RANKS_FAIL, str(result), rank1_at, rank0_at])
    out = tmp_path / "run"
    assert lmbench("run", "--suite", tiny, "--out", out, "--set", "precision=fp32").exit_code == 0
    record, = results.read(out).records
    assert (record["status"], record["reason"]) == (status, reason)
    assert not list((out / "work").glob("*.rank*")), "a rank's failure file is removed once read"
    # Rank 0 exits 1 after a failed result on purpose (so torchrun ends the others): no failure on the way out.
    assert not any("wrote its result" in warning for warning in record["warnings"]), record["warnings"]


_RANK_FAILS_AFTER_AN_OK_RESULT = """
import json, sys, time
result = sys.argv[1]
with open(result, "w") as f:
    json.dump({"status": "ok", "reason": None, "metrics": {"tokens_per_s": 5.0}, "losses": [1.0]}, f)
with open(result + ".rank1", "w") as f:
    json.dump({"status": "error", "reason": "RuntimeError: a rank's teardown", "failed_at": time.time(), "rank": 1}, f)
raise SystemExit(1)
"""


def test_a_rank_that_fails_after_rank_0s_ok_result_is_named_in_a_warning(tmp_path, tiny, monkeypatch):
    monkeypatch.setattr(runner, "worker_command", lambda config, job, result, launch: [
        sys.executable, "-c", _RANK_FAILS_AFTER_AN_OK_RESULT, str(result)])
    out = tmp_path / "run"
    assert lmbench("run", "--suite", tiny, "--out", out, "--set", "precision=fp32").exit_code == 0
    record, = results.read(out).records
    assert record["status"] == "ok"
    assert ("the worker wrote its result, then exited with code 1 (rank 1 failed after it: RuntimeError: a rank's "
            "teardown)") in record["warnings"]


def test_a_failing_rank_other_than_0_leaves_its_failure_for_the_parent(tmp_path, monkeypatch):
    from lmbench.run import worker

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"config": {"model": "tiny-gpt2", "device": "cpu"}}))

    def oom(config, **kwargs):
        raise MemoryError("host out of memory")

    monkeypatch.setattr(worker, "measure", oom)
    result = tmp_path / "r.result.json"
    assert worker._run_job(job, result) == 1
    assert not result.exists()
    failure = json.loads(worker.rank_failure_path(result, 1).read_text())
    assert (failure["status"], failure["reason"], failure["rank"]) == ("oom", "MemoryError: host out of memory", 1)
    assert failure["failed_at"] == pytest.approx(time.time(), abs=60)


def test_resume_takes_a_matrix_in_any_order_and_records_a_suite_file_by_its_whole_path(tmp_path, tiny, fake,
                                                                                       monkeypatch):
    """The order of a --set's values orders the jobs, not the plan; a suite file given relative to one directory is
    recorded whole, so the resume command lmbench prints works from any other."""
    monkeypatch.chdir(tmp_path)
    assert lmbench("run", "--suite", "tiny.toml", "--out", "run", "--set", "precision=fp32,bf16").exit_code == 0
    assert json.loads((tmp_path / "run" / "run.json").read_text())["plan"]["suite"] == str(tmp_path / "tiny.toml")
    resumed = lmbench("run", "--suite", tiny, "--out", tmp_path / "run", "--set", "precision=bf16,fp32", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "2 record(s) kept, 0 job(s) to go" in resumed.stderr


def test_a_signal_at_the_start_of_a_workers_wait_stops_it(monkeypatch):
    """A signal landing as the wait for a worker begins stops the wait; held, it would have lasted up to timeout_s,
    and the second Ctrl-C is ignored by then (review)."""
    from lmbench.run import interrupts

    original = interrupts.Hold.raise_pending

    def signal_after_the_check(self, **kwargs):
        original(self, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # the handler runs at once, in this thread

    monkeypatch.setattr(interrupts.Hold, "raise_pending", signal_after_the_check)
    waited = []
    with pytest.raises(interrupts.Interrupted), interrupts.interruptible(), interrupts.holding() as hold:
        with hold.released():
            waited.append(True)
    assert waited == []
    # Outside a released span the same signal is held until the caller raises it.
    monkeypatch.setattr(interrupts.Hold, "raise_pending", original)
    with interrupts.interruptible(), interrupts.holding() as hold:
        os.kill(os.getpid(), signal.SIGINT)
        assert isinstance(hold.pending, interrupts.Interrupted)
    with pytest.raises(interrupts.Interrupted):
        hold.raise_pending(after_a_record=True)
    assert hold.pending.after_a_record


def test_a_hung_worker_is_a_timeout_that_says_where_it_was(tmp_path, tiny, fake, monkeypatch):
    """Just before the deadline the worker dumps its stacks: the record names the function it hung in, the log
    holds every thread's stack, and no dump is left behind."""
    monkeypatch.setenv("FAKE_WORKER_HANG", "-fp32-")
    out = tmp_path / "run"
    assert lmbench("run", "--suite", tiny, "--out", out, "--set", "precision=fp32", "--set", "timeout_s=4"
                   ).exit_code == 0
    record, = results.read(out).records
    assert record["status"] == "timeout"
    line = inspect.getsourcelines(fake_worker.hang)[1] + 2
    assert record["reason"] == ("no result within timeout_s=4 (worker killed); 1 s before it the worker was in "
                                f"hang (tests/fake_worker.py:{line}) (stacks in the log)")
    log = next((out / "logs").glob("*.log")).read_text()
    assert "rank 0's Python stacks just before timeout_s" in log and 'fake_worker.py", line' in log
    assert not list((out / "work").glob("*.stack.*"))


@pytest.mark.parametrize(("crash_at", "status"), [(3.2, "timeout"), (0.5, "error")])
def test_a_worker_that_crashes_once_its_stacks_are_due_is_a_timeout(tmp_path, tiny, fake, monkeypatch, crash_at,
                                                                    status):
    """faulthandler's dump reads every thread's frames without the GIL: in CI a worker still importing when its
    0.5 s timeout's dump came died of it (SIGSEGV) and was recorded as an error of its configuration. A crash
    after the stacks' moment (1 s before a 4 s timeout_s) is the timeout it was about to be; one before is not."""
    monkeypatch.setenv("FAKE_WORKER_CRASH_AT", str(crash_at))
    out = tmp_path / "run"
    assert lmbench("run", "--suite", tiny, "--out", out, "--set", "precision=fp32", "--set", "timeout_s=4"
                   ).exit_code == 0
    record, = results.read(out).records
    assert record["status"] == status, record["reason"]
    if status == "timeout":
        assert record["reason"].startswith("no result within timeout_s=4: the worker was killed by SIGSEGV once its "
                                           "stacks were due, ")
    else:
        assert record["reason"].startswith("worker was killed by SIGSEGV without a result")


def test_a_worker_that_hangs_after_writing_its_result_keeps_its_measurement(tmp_path, tiny, fake, monkeypatch):
    """A slow teardown past timeout_s after the result (review): recorded as a timeout that said 'no result', and
    its result file stayed in work/ for ever."""
    monkeypatch.setenv("FAKE_WORKER_LINGER", "-fp32-")
    out = tmp_path / "run"
    assert lmbench("run", "--suite", tiny, "--out", out, "--set", "precision=fp32", "--set", "timeout_s=3"
                   ).exit_code == 0
    record, = results.read(out).records
    assert record["status"] == "ok" and record["metrics"]["tokens_per_s"] == 2000.0
    assert not list((out / "work").iterdir())


_FAILS_OF_THE_STOP = """
import json, signal, sys, time
result = sys.argv[1]

def stopped(signum, frame):
    # As rank 0 under torchrun: rank 1 ended of the SIGTERM passed on, and rank 0's collective failed of it.
    with open(result + ".rank1", "w") as f:
        json.dump({"status": "error", "reason": "RuntimeError: rank 1's collective", "failed_at": time.time(),
                   "rank": 1}, f)
    with open(result, "w") as f:
        json.dump({"status": "error", "reason": "RuntimeError: Connection reset by peer", "metrics": None,
                   "losses": None}, f)
    raise SystemExit(1)

signal.signal(signal.SIGTERM, stopped)
while True:
    time.sleep(0.1)
"""


def test_a_result_written_once_the_timeout_stopped_the_worker_is_no_result(tmp_path, tiny, monkeypatch):
    """Review 98: a ddp job past timeout_s was recorded as `error` with rank 0's connection reset, the failure that
    lmbench's own SIGTERM caused, taken for a result written before a hang on the way out."""
    monkeypatch.setattr(runner, "worker_command", lambda config, job, result, launch: [
        sys.executable, "-c", _FAILS_OF_THE_STOP, str(result)])
    record, out = _one_fp32_record(tmp_path, tiny, "timeout_s=2")
    assert record["status"] == "timeout", record["reason"]
    assert record["reason"].startswith("no result within timeout_s=2 (worker killed)")
    assert record["warnings"] == []
    assert not list((out / "work").iterdir())


_MOVES_THE_CORPUS = """
import json, os, sys
os.replace(sys.argv[2], sys.argv[2] + ".moved")  # as a user tidying up while the job ran
with open(sys.argv[1], "w") as f:
    json.dump({"status": "ok", "reason": None, "metrics": {"tokens_per_s": 5.0}, "losses": [1.0]}, f)
"""


def test_a_corpus_moved_while_its_job_ran_keeps_the_measurement_with_an_unknown_hash(tmp_path, tiny, monkeypatch):
    """Review 98: the corpus's hash, read once the job had ended, raised FileNotFoundError: exit 3, and the finished
    measurement was lost (its result removed before the record was built)."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text to train on\n" * 200)
    monkeypatch.setattr(runner, "worker_command", lambda config, job, result, launch: [
        sys.executable, "-c", _MOVES_THE_CORPUS, str(result), str(corpus)])
    record, out = _one_fp32_record(tmp_path, tiny, f"data={corpus}")
    assert record["status"] == "ok" and record["metrics"]["tokens_per_s"] == 5.0
    assert (record["metrics"]["data_sha256"], record["metrics"]["data_bytes"]) == (None, None)
    assert record["warnings"] == [f"data={str(corpus)!r} could not be read once the job had ended (No such file or "
                                  "directory): its sha256 is unknown, so this record cannot show whether the corpus "
                                  "changed"]
    assert not list((out / "work").iterdir())


def test_a_result_whose_record_could_not_be_saved_is_recorded_on_resume_not_lost(tmp_path, tiny, monkeypatch):
    """The worker's result is removed once its record is saved, not before: a record that failed to save (here the
    append) is recorded from it on resume, without measuring the job again."""
    ok = ("import json, sys; json.dump({'status': 'ok', 'reason': None, 'metrics': {'tokens_per_s': 5.0}, "
          "'losses': [1.0]}, open(sys.argv[1], 'w'))")
    monkeypatch.setattr(runner, "worker_command", lambda config, job, result, launch: [
        sys.executable, "-c", ok, str(result)])

    def full(self, record):
        raise results.storage_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), self.results_path)

    monkeypatch.setattr(RunDirectory, "append", full)
    out = tmp_path / "run"
    one_line_error(lmbench("run", "--suite", tiny, "--out", out, "--set", "precision=fp32"))
    assert len(list((out / "work").glob("*.result.json"))) == 1
    monkeypatch.undo()
    monkeypatch.setattr(runner, "worker_command", lambda *a: [sys.executable, "-c", "raise SystemExit(5)"])
    result = lmbench("run", "--suite", tiny, "--out", out, "--set", "precision=fp32", "--resume")
    assert result.exit_code == 0, result.output
    record, = results.read(out).records
    assert record["status"] == "ok" and record["metrics"]["tokens_per_s"] == 5.0
    assert not list((out / "work").iterdir())


def test_12_calibrate_warns_of_floors_no_threshold_can_gate(tmp_path, tiny, fake, monkeypatch):
    """A floor of 100% or more: the advice to gate at or above it cannot be followed (--threshold is below 100%)."""
    from lmbench.analyze import noise

    calibrate = noise.calibrate

    def noisy(*args, **kwargs):
        estimates, payload = calibrate(*args, **kwargs)
        for entry in payload["configs"].values():
            entry.update(floor_1v1=1.35, floor_3v3=1.76)
        return estimates, payload

    monkeypatch.setattr(noise, "calibrate", noisy)
    # And the advice itself: twice such a floor is past what compare takes (a new user was advised 233%, then
    # refused 300%).
    monkeypatch.setattr(noise.ConfigNoise, "gate_threshold", lambda self, repeats: 2.331 if repeats == 1 else 1.714)
    result = lmbench("calibrate", "--suite", tiny, "--repeats", "2", "--runs", "2", "--out", tmp_path / "cal")
    assert result.exit_code == 0, result.output
    assert ("configuration(s) have floors of 100% or more (e.g. tiny-gpt2-" in result.stderr
            and "no --threshold (below 100%) can gate them" in result.stderr)
    assert result.stdout.splitlines()[-1] == (
        "no --threshold that compare takes (below 100%) gates this suite: about twice the floor, (1 + floor)² - 1, "
        "would be 171.4% even with 3 repeats a side; the runs differ too much for their windows: lengthen them (--set "
        "steps=...), or calibrate on a quieter host")


# A reviewer's failures of a worker (2026-11-28): each a record with a status and a reason, the suite going on.

def _one_fp32_record(tmp_path, tiny, *sets: str):
    out = tmp_path / "run"
    result = lmbench("run", "--suite", tiny, "--out", out, "--set", "precision=fp32",
                     *[arg for value in sets for arg in ("--set", value)])
    assert result.exit_code == 0, result.output
    record, = results.read(out).records
    return record, out


def test_a_worker_killed_by_a_signal_python_has_no_name_for_is_a_record(tmp_path, tiny, fake, monkeypatch):
    """signal.Signals(40) raises: the lookup ended the suite with exit 3 and no record."""
    monkeypatch.setenv("FAKE_WORKER_SIGNAL", "40")
    record, _ = _one_fp32_record(tmp_path, tiny)
    assert record["status"] == "error"
    assert record["reason"].startswith("worker was killed by signal 40 without a result")


def test_a_crash_is_oom_only_when_the_error_says_so_and_its_reason_is_the_error_not_the_chatter(tmp_path, tiny, fake,
                                                                                                 monkeypatch):
    """A worker that printed "out of memory pressure hint" and then crashed read as oom (tune takes it for a memory
    limit), and its reason quoted whatever line came last (a torchao import warning, most often)."""
    monkeypatch.setenv("FAKE_WORKER_SAY", "warning: out of memory pressure hint\nValueError: the shape is wrong\n"
                                          "UserWarning-ish chatter at the end")
    monkeypatch.setenv("FAKE_WORKER_SIGNAL", str(int(signal.SIGSEGV)))
    record, _ = _one_fp32_record(tmp_path, tiny)
    assert record["status"] == "error", record["reason"]
    assert record["reason"] == ("worker was killed by SIGSEGV without a result; last error in the log: ValueError: "
                                "the shape is wrong")
    from lmbench.run.runner import out_of_memory

    assert out_of_memory("[rank1]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert out_of_memory("MemoryError: can't allocate memory") and not out_of_memory("out of memory pressure hint")
    # Failures reported outside Python's exceptions (a reviewer's: an NCCL watchdog's OOM read as error).
    assert out_of_memory("terminate called after throwing an instance of 'c10::OutOfMemoryError'")
    assert out_of_memory("  what():  CUDA out of memory. Tried to allocate 20.00 MiB")
    assert out_of_memory("[rank1]:[E1128 10:00:00.1 ProcessGroupNCCL.cpp:1] CUDA error: out of memory")
    assert out_of_memory("host:1:2 [0] misc.cc:1 NCCL WARN Cuda failure 'out of memory'")
    # torchrun's own last word says that a rank failed, never why: the rank's error is quoted.
    log = ("[rank1]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\nTraceback (most recent "
           "call last):\n  File \"torchrun\", line 8\n"
           "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n")
    assert runner._last_word(log) == ("last error in the log: [rank1]: torch.OutOfMemoryError: CUDA out of memory. "
                                      "Tried to allocate 2.00 GiB")
    assert runner._last_word("triton.runtime.errors.OutOfResources: out of resource: shared memory\nbye") == (
        "last error in the log: triton.runtime.errors.OutOfResources: out of resource: shared memory")


def test_a_child_that_ignores_sigterm_does_not_outlive_a_timed_out_worker(tmp_path, tiny, fake, monkeypatch):
    stubborn = tmp_path / "stubborn"
    stubborn.mkdir()
    monkeypatch.setenv("FAKE_WORKER_STUBBORN", str(stubborn))
    record, _ = _one_fp32_record(tmp_path, tiny, "timeout_s=4")
    assert record["status"] == "timeout"
    pid, = [int(p.name) for p in stubborn.iterdir()]
    try:
        os.kill(pid, 0)
        alive = Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except ProcessLookupError:
        alive = False
    assert not alive


@pytest.mark.parametrize("text", ['{"status": "ok", "rea', '{"status": "ok"}',
                                  '{"status": "ok", "reason": null, "metrics": null}'])
def test_a_result_file_that_is_no_result_is_an_error_record_that_keeps_the_file(tmp_path, tiny, fake, monkeypatch,
                                                                               text):
    """Half a file said only 'unreadable' and was deleted; a payload with no reason or no metrics ended the suite
    (KeyError, exit 3) or would have crashed the progress line."""
    monkeypatch.setenv("FAKE_WORKER_RESULT", text)
    record, out = _one_fp32_record(tmp_path, tiny)
    assert record["status"] == "error"
    assert record["reason"].startswith("the worker's result file was unreadable (exited with code 0; kept as ")
    kept_file, = (out / "logs").glob("*.unreadable-result.json")
    assert kept_file.read_text() == text and kept_file.name in record["reason"]
    assert not list((out / "work").iterdir())


def test_a_worker_that_fails_after_writing_its_result_keeps_it_and_says_so(tmp_path, tiny, fake, monkeypatch):
    monkeypatch.setenv("FAKE_WORKER_EXIT", "1")
    record, _ = _one_fp32_record(tmp_path, tiny)
    assert record["status"] == "ok"
    assert "the worker wrote its result, then exited with code 1 (its log has its end)" in record["warnings"]


def test_a_lingering_worker_past_timeout_s_keeps_its_result_and_says_it_hung(tmp_path, tiny, fake, monkeypatch):
    monkeypatch.setenv("FAKE_WORKER_LINGER", "-fp32-")
    record, _ = _one_fp32_record(tmp_path, tiny, "timeout_s=3")
    assert record["status"] == "ok"
    assert any(w.startswith("the worker wrote its result, then hung on the way out until timeout_s=3")
               for w in record["warnings"])


def test_a_crash_well_after_its_stacks_were_dumped_is_its_own_and_the_log_keeps_them(tmp_path, tiny, fake,
                                                                                   monkeypatch):
    """timeout_s=8: the stacks' moment 2 s before the deadline; a SIGSEGV 0.5 s before it, the dump long done, is
    the worker's own crash, not the dump's (recorded as a timeout, its dump deleted though the reason sent the
    reader to the log)."""
    monkeypatch.setenv("FAKE_WORKER_CRASH_BEFORE_DEADLINE", "0.5")
    record, out = _one_fp32_record(tmp_path, tiny, "timeout_s=8")
    assert record["status"] == "error", record["reason"]
    assert record["reason"].startswith("worker was killed by SIGSEGV without a result")
    log = next((out / "logs").glob("*.log")).read_text()
    assert "rank 0's Python stacks just before timeout_s" in log


def test_a_loss_non_finite_since_warmup_says_so(tmp_path):
    """A loss gone to NaN in warmup read as 'non-finite at measured step 0', as if the window had done it."""
    from lmbench.run.worker import run_job

    config = Config(model="tiny-gpt2", batch_size=2, seq_len=16, steps=2, warmup=3, lr=1e38, device="cpu",
                    telemetry=False)
    (tmp_path / "job.json").write_text(json.dumps({"config": config.to_dict()}))
    assert run_job(tmp_path / "job.json", tmp_path / "result.json") == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "diverged"
    assert result["reason"] == "non-finite loss at measured step 0 of 2 (non-finite since warmup step 1 of 3)"


def test_the_summary_names_the_log_of_a_failed_configuration(tmp_path, tiny, fake, monkeypatch):
    monkeypatch.setenv("FAKE_WORKER_ERROR", "ValueError: a bad shape")
    out = tmp_path / "run"
    result = lmbench("run", "--suite", tiny, "--out", out, "--set", "precision=fp32")
    assert result.exit_code == 0, result.output
    record, = results.read(out).records
    assert f"logs: {out / 'logs'} (1 of this session's records failed; {record['config_key']}-r0.log is the " \
           "first's)" in " ".join(result.output.split())
    assert (out / "logs" / f"{record['config_key']}-r0.log").exists()

"""A stand-in for `lmbench.run.worker` in the fault-injection tests: a result in milliseconds, or a hang on request.

    python tests/fake_worker.py JOB_JSON RESULT_JSON     as the worker (the real parent-death handling included)
    python tests/fake_worker.py --cli ARGS...            lmbench's command line with this worker in place

Behaviour comes from the environment, which the parent passes on to its workers:
  FAKE_WORKER_PIDS=DIR   write this worker's pid to DIR/<pid> before anything else
  FAKE_WORKER_HANG=TEXT  hang (until killed) when TEXT is in the job's config key
  FAKE_WORKER_OOM_ABOVE=N  batch sizes above N end as `oom` (for tune's search)
  FAKE_WORKER_ERROR=TEXT   every job ends as `error` with this reason
  FAKE_WORKER_STRAGGLER=DIR  leave a child running in the worker's session (its pid in DIR/<pid>), then exit
  FAKE_WORKER_LINGER=TEXT  after writing the result, hang (until killed) when TEXT is in the job's config key
  FAKE_WORKER_CRASH_AT=S  die of SIGSEGV S seconds after the job starts (its stacks' dump crashing it)
  FAKE_WORKER_CRASH_BEFORE_DEADLINE=S  die of SIGSEGV S seconds before the job's deadline
  FAKE_WORKER_SAY=TEXT    print TEXT before anything else (a library's chatter in the log)
  FAKE_WORKER_SIGNAL=N    kill itself with signal N (after FAKE_WORKER_SAY)
  FAKE_WORKER_STUBBORN=DIR  leave a child that ignores SIGTERM (its pid in DIR/<pid>), then hang
  FAKE_WORKER_RESULT=TEXT  write TEXT as the result file, whatever it is, and exit 0
  FAKE_WORKER_EXIT=N      exit with code N after writing the result
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def command(config, job_path, result_path, launch) -> list[str]:
    """Drop-in for lmbench.run.launcher.worker_command."""
    return [sys.executable, str(HERE), str(job_path), str(result_path)]


def work(job_path: Path, result_path: Path) -> int:
    from lmbench.plan.config import Config
    from lmbench.run.worker import exit_with_parent

    exit_with_parent()
    if os.environ.get("FAKE_WORKER_PIDS"):
        (Path(os.environ["FAKE_WORKER_PIDS"]) / str(os.getpid())).write_text("")
    job = json.loads(job_path.read_text())
    config = Config.from_mapping(job["config"])
    if "deadline" in job:  # as the real worker: its stacks just before the deadline, for a hang's record
        from lmbench.run import stacks

        stacks.arm(result_path, 0, deadline=job["deadline"], timeout_s=config.timeout_s)
    if os.environ.get("FAKE_WORKER_SAY"):
        print(os.environ["FAKE_WORKER_SAY"], flush=True)
    if os.environ.get("FAKE_WORKER_SIGNAL"):
        os.kill(os.getpid(), int(os.environ["FAKE_WORKER_SIGNAL"]))
        hang()  # a signal whose default action is not to end the process
    if os.environ.get("FAKE_WORKER_STUBBORN"):
        import subprocess

        child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                                  "signal.SIG_IGN); time.sleep(600)"])
        (Path(os.environ["FAKE_WORKER_STUBBORN"]) / str(child.pid)).write_text("")
        hang()
    if os.environ.get("FAKE_WORKER_RESULT") is not None:
        result_path.write_text(os.environ["FAKE_WORKER_RESULT"])
        return 0
    if os.environ.get("FAKE_WORKER_CRASH_BEFORE_DEADLINE"):
        import signal

        time.sleep(max(0.0, job["deadline"] - float(os.environ["FAKE_WORKER_CRASH_BEFORE_DEADLINE"]) - time.time()))
        os.kill(os.getpid(), signal.SIGSEGV)
    if os.environ.get("FAKE_WORKER_CRASH_AT"):
        import signal

        time.sleep(float(os.environ["FAKE_WORKER_CRASH_AT"]))
        os.kill(os.getpid(), signal.SIGSEGV)
    if os.environ.get("FAKE_WORKER_HANG") and os.environ["FAKE_WORKER_HANG"] in config.key:
        hang()
    if os.environ.get("FAKE_WORKER_ERROR"):
        payload = {"status": "error", "reason": os.environ["FAKE_WORKER_ERROR"], "metrics": None, "losses": None}
    elif config.batch_size > int(os.environ.get("FAKE_WORKER_OOM_ABOVE") or 10**9):
        payload = {"status": "oom", "reason": "OutOfMemoryError: fake", "metrics": None, "losses": None}
    else:
        # Deterministic figures: a larger batch is faster, so tune's ranking is known.
        tps = 1000.0 * config.batch_size + config.seed
        payload = {"status": "ok", "reason": None, "losses": [2.0] * config.steps,
                   "step_times_s": [config.tokens_per_step / tps] * config.steps,
                   "metrics": {"tokens_per_s": tps, "step_time_median_s": config.tokens_per_step / tps,
                               "tokens_per_step": config.tokens_per_step, "step_time_cv": 0.0,
                               "mem_host_peak_growth_bytes": 2**20}}
    if os.environ.get("FAKE_WORKER_STRAGGLER"):
        import subprocess

        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        (Path(os.environ["FAKE_WORKER_STRAGGLER"]) / str(child.pid)).write_text("")
    tmp = result_path.with_name(result_path.name + ".tmp")
    tmp.write_text(json.dumps({**payload, "env": {"torch": "fake", "device": {"type": "cpu"}}}))
    tmp.replace(result_path)
    if os.environ.get("FAKE_WORKER_LINGER") and os.environ["FAKE_WORKER_LINGER"] in config.key:
        while True:  # a worker slow to exit after its result (a process group torn down, CUDA's teardown)
            time.sleep(0.1)
    return int(os.environ.get("FAKE_WORKER_EXIT") or 0)


def hang() -> None:
    while True:
        time.sleep(0.1)


def cli(args: list[str]) -> None:
    from lmbench import cli as lmbench_cli
    from lmbench.run import runner

    runner.worker_command = command
    sys.argv = ["lmbench", *args]
    lmbench_cli.main()


if __name__ == "__main__":
    if sys.argv[1] == "--cli":
        cli(sys.argv[2:])
    else:
        sys.exit(work(Path(sys.argv[1]), Path(sys.argv[2])))

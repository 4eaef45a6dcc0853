"""Where a hung job's ranks were (lmbench.run.stacks): the dumps each rank leaves and the clause the record gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmbench.run import stacks

OURS = Path(stacks.__file__).resolve().parent.parent
TORCH = "/venv/lib/python3.11/site-packages/torch"


def dump(main: str, *frames: tuple[str, int, str], other: bool = True) -> str:
    """A faulthandler dump as `stacks.arm` leaves it: a helper thread, then the main thread, run by `python -m`."""
    lines = ["Timeout (0:00:57)!"]
    if other:
        lines += ["Thread 0x00007f0000000002 (most recent call first):",
                  f'  File "{OURS}/measure/telemetry.py", line 90 in _sample',
                  '  File "/usr/lib/python3.11/threading.py", line 982 in run',
                  '  File "/usr/lib/python3.11/threading.py", line 1002 in _bootstrap', ""]
    lines.append(f"Thread {main} (most recent call first):")
    lines += [f'  File "{file}", line {line} in {function}' for file, line, function in frames]
    lines += [f'  File "{OURS}/run/worker.py", line 600 in <module>',
              '  File "<frozen runpy>", line 198 in _run_module_as_main'] if frames else []
    return "\n".join(lines) + "\n"


WAITING = dump("0x00007f0000000001", (f"{TORCH}/distributed/distributed_c10d.py", 2806, "all_reduce"),
               (f"{OURS}/run/distributed.py", 120, "gather"), (f"{OURS}/run/worker.py", 290, "measure"))
LOADING = dump("0x00007f0000000003", (f"{OURS}/run/data.py", 41, "batches"), (f"{OURS}/run/worker.py", 220, "measure"))


def test_the_main_threads_frames_are_read_innermost_first_and_other_threads_left_out():
    frames = stacks.main_stack(WAITING)
    assert [f.function for f in frames] == ["all_reduce", "gather", "measure", "<module>", "_run_module_as_main"]
    assert stacks.place(frames) == ("all_reduce (torch/distributed/distributed_c10d.py:2806) from "
                                    "lmbench/run/distributed.py:120 gather")
    assert stacks.place(stacks.main_stack(LOADING)) == "batches (lmbench/run/data.py:41)"


def test_ranks_at_one_place_are_named_together_and_the_odd_one_out_first():
    dumps = {0: WAITING, 1: LOADING, 2: WAITING, 3: WAITING, 5: WAITING}
    assert stacks.where(dumps, timeout_s=900) == (
        "3 s before it rank 1 in batches (lmbench/run/data.py:41); ranks 0,2-3,5 in all_reduce "
        "(torch/distributed/distributed_c10d.py:2806) from lmbench/run/distributed.py:120 gather")
    alone = stacks.where({0: LOADING}, timeout_s=2)
    assert alone == "0.5 s before it the worker was in batches (lmbench/run/data.py:41)"
    assert stacks.where({}, timeout_s=900) is None


@pytest.mark.parametrize("text", ["", "Timeout (0:00:57)!\n", dump("0x1", other=False), dump("0x1")])
def test_a_dump_without_a_main_thread_counts_as_none(tmp_path, text):
    result = tmp_path / "k.result.json"
    stacks.path(result, 0).write_text(text)
    assert stacks.collect(result) == {}
    stacks.clear(result)
    assert not list(tmp_path.iterdir())


def test_a_deadline_already_past_arms_nothing(tmp_path):
    import time

    assert not stacks.arm(tmp_path / "r.json", 0, deadline=time.time() + 1, timeout_s=8)
    assert not list(tmp_path.iterdir())


def test_the_worker_arms_its_dump_from_the_jobs_deadline_under_its_rank(tmp_path, monkeypatch):
    import json
    import time

    from lmbench.run import worker

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"config": {"model": "tiny-gpt2", "device": "cpu", "timeout_s": 4},
                               "deadline": time.time() + 3.5}))

    def stuck_in_measure(config, **kwargs):
        time.sleep(3)  # the dump comes at 2.5 s

    monkeypatch.setattr(worker, "measure", stuck_in_measure)
    from lmbench.measure import environment

    monkeypatch.setattr(environment, "capture", lambda device: {})  # its git lookup could outlast the 2.5 s
    result = tmp_path / "r.result.json"
    assert worker._run_job(job, result) == 0
    dumps = stacks.collect(result)
    assert list(dumps) == [1]
    assert stacks.place(stacks.main_stack(dumps[1])).startswith("stuck_in_measure (tests/test_stacks.py:")

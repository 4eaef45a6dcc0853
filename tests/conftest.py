"""Shared test set-up: CPU by default; `gpu` tests skip without CUDA; each pytest-xdist worker on CPUs of its own."""

from __future__ import annotations

import os
import shutil
import signal
import uuid

import pytest
from cpu_share import MARK, Workers, folder, start_order

# Before torch is imported: its thread pool is as wide as the CPUs it starts on (tests/cpu_share.py).
WORKERS = Workers.from_environment()

import torch  # noqa: E402

# Without a GPU, Triton kernels run under the interpreter; it must be set before any @triton.jit is
# defined (lmbench.kernels is imported by tests only, after this).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# A shell without job control starts background commands with SIGINT ignored, and lmbench rightly keeps a
# signal ignored on purpose (nohup). The tests that stop a run with SIGINT need it to arrive: the test session
# takes it back, and the processes it starts inherit the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_configure(config: pytest.Config) -> None:
    dist = getattr(config.option, "dist", "no")  # "no" without pytest-xdist, or without -n
    if dist == "no":
        return
    given = " ".join(config.invocation_params.args)
    # Plain `pytest -n N` deals tests out one by one: a file's module fixtures (real runs, minutes each) would run
    # on every worker. A file is one unit instead, in the order start_order gives (heaviest first), unless the
    # command line says otherwise.
    if dist == "load" and "--dist" not in given:
        config.option.dist = dist = "loadfile"
    if dist in ("loadfile", "loadscope") and "--loadscope-reorder" not in given:
        config.option.loadscopereorder = False
    # A crashed worker's file is dealt to its replacement, which crashes in turn, and with files left xdist 3.8 then
    # waits for ever: the first crash ends the run instead, red at once, not at CI's time limit.
    if "--max-worker-restart" not in given:
        config.option.maxworkerrestart = "0"
    if not config.option.testrunuid:
        config.option.testrunuid = uuid.uuid4().hex  # the controller's own, to remove the workers' lock files


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if WORKERS is not None:
        items.sort(key=start_order)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)  # the old style: the GPU machine's pytest may predate new-style wrappers
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    if WORKERS is None:
        yield
        return
    with WORKERS.running(alone=item.get_closest_marker(MARK) is not None):
        yield


def pytest_unconfigure(config: pytest.Config) -> None:
    if WORKERS is not None:
        WORKERS.close()
    elif getattr(config.option, "dist", "no") != "no" and config.option.testrunuid:
        shutil.rmtree(folder(config.option.testrunuid), ignore_errors=True)

"""Shared test set-up: CPU by default; `gpu` tests skip without CUDA."""

from __future__ import annotations

import os
import signal

import pytest
import torch

# Without a GPU, Triton kernels run under the interpreter; it must be set before any @triton.jit is
# defined (lmbench.kernels is imported by tests only, after this).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# A shell without job control starts background commands with SIGINT ignored, and lmbench rightly keeps a
# signal ignored on purpose (nohup). The tests that stop a run with SIGINT need it to arrive: the test session
# takes it back, and the processes it starts inherit the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

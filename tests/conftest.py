"""Shared test set-up: CPU by default; `gpu` tests skip without CUDA."""

from __future__ import annotations

import os

# Triton kernels run under the interpreter on CPU; it must be set before any @triton.jit is defined.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

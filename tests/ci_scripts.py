"""Runs a script of ci/ in a child process, as the GPU stages do: without TRITON_INTERPRET (on a CPU it then says
`skipped`), or with it (a rehearsal on the CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CI = Path(__file__).resolve().parent.parent / "ci"


def run(script: str, *args: str, interpret: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run([sys.executable, str(CI / script), *args], capture_output=True, text=True, env=env)


def load(script: str):  # type: ignore[no-untyped-def]
    """A script of ci/ as a module, for its functions (its main() is not run)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(script.removesuffix(".py").replace("-", "_"), CI / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

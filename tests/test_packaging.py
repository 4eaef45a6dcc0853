"""Every module of the installed package imports, and every third-party package it imports is declared."""

import ast
import importlib
import importlib.metadata
import pkgutil
import re
import sys
from pathlib import Path

import pytest

#: Imported only inside the kernel sets, optimizers or precisions that need them, each with an `unavailable` reason
#: (liger_kernel and torchao are the `liger` and `fp8` extras).
OPTIONAL = {"apex", "liger_kernel", "fused_layer_norm_cuda", "torchao"}


#: Packages that pyproject.toml maps from their own folders (kernels/, suites/), beside lmbench itself.
PACKAGES = ("lmbench", "lmbench.kernels", "lmbench.suites")


def _package_paths() -> dict[str, list[str]]:
    return {name: list(importlib.import_module(name).__path__) for name in PACKAGES}


def _modules() -> list[str]:
    names = set(PACKAGES)
    for package, paths in _package_paths().items():
        names |= {m.name for m in pkgutil.walk_packages(paths, package + ".")}
    return sorted(names)


def test_the_package_has_its_stages():
    names = _modules()
    assert {"lmbench.cli", "lmbench.kernels.norms", "lmbench.suites", "lmbench.analyze.plots"} <= set(names)


@pytest.mark.parametrize("name", _modules())
def test_every_module_imports(name):
    importlib.import_module(name)


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level names of every absolute import in the package's source files -> the files importing them."""
    found: dict[str, set[str]] = {}
    for root in {Path(p) for paths in _package_paths().values() for p in paths}:
        for path in root.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in ("lmbench", "__future__"):
                        found.setdefault(top, set()).add(path.name)
    return found


def test_every_third_party_import_is_declared():
    """A module imported by the package must come from a distribution pyproject.toml asks for (or be optional)."""
    declared = {re.match(r"[A-Za-z0-9_.-]+", r).group().lower().replace("_", "-")
                for r in importlib.metadata.requires("lmbench") or [] if "extra ==" not in r}
    providers = importlib.metadata.packages_distributions()
    missing = {}
    for top, files in _third_party_imports().items():
        if top in OPTIONAL:
            continue
        # A module not installed here (tomli on Python 3.11+) counts when a requirement names it.
        dists = {d.lower().replace("_", "-") for d in providers.get(top, [top])}
        if not dists & declared:
            missing[top] = sorted(files)
    assert not missing, f"imported but not declared in pyproject.toml dependencies: {missing}"

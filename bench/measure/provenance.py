"""Which lmbench made a record: the commit of the checkout it runs from, or of the one an install was built from.

Standard library only: setup.py loads this file by its path at build time, before lmbench is importable, and
writes the commit beside the installed package (BUILD_COMMIT), so `pip install .` from a clone keeps it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

#: The checkout's paths that make up what runs (pyproject.toml's package dirs): a change elsewhere (reports/, docs/,
#: tests/) changes nothing that measures or renders, and must not mark the commit dirty (a report rendered again
#: into reports/ read `-dirty` from the second stage on).
CODE_PATHS = ("bench", "kernels", "suites", "pyproject.toml")
#: The file a non-editable install's build writes into the package: the commit it was built from.
BUILD_COMMIT = "BUILD_COMMIT"


def checkout_commit(root: Path) -> str | None:
    """HEAD of the git checkout at `root`, suffixed `-dirty` with local changes to its code (CODE_PATHS); None when
    git cannot say."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        # No optional locks: `git status` would otherwise refresh the index under .git/index.lock, and a
        # worker killed meanwhile (a timeout) leaves that lock behind, blocking every later git command.
        dirty = subprocess.run(["git", "--no-optional-locks", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no", "--", *CODE_PATHS],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head


def built_commit(package: Path) -> str | None:
    """The commit an installed package was built from (its BUILD_COMMIT), None without one."""
    try:
        return (package / BUILD_COMMIT).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None

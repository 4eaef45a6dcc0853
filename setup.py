"""Everything about the package is in pyproject.toml; this only records, in a non-editable build from a git clone
(`pip install .`), the commit it was built from, which records would otherwise lose (`not a git checkout`).
An editable install reads the checkout's own commit at run time instead."""

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def write_build_commit(build_lib: Path, root: Path = HERE) -> str | None:
    """The checkout's commit (provenance.checkout_commit) written into the built package; None outside a clone."""
    if not (root / ".git").exists():
        return None
    spec = importlib.util.spec_from_file_location("lmbench_provenance", root / "bench" / "measure" / "provenance.py")
    provenance = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(provenance)
    commit = provenance.checkout_commit(root)
    if commit:
        target = build_lib / "lmbench" / provenance.BUILD_COMMIT
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(commit + "\n", encoding="utf-8")
    return commit


class BuildWithCommit(build_py):
    def run(self):
        super().run()
        if not getattr(self, "editable_mode", False):
            write_build_commit(Path(self.build_lib))


if __name__ == "__main__":
    setup(cmdclass={"build_py": BuildWithCommit})

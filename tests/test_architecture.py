"""The package's imports point one way, down the stages of a run, and never in a circle.

suite file -> Config (plan) -> worker process (run) -> timer/telemetry/FLOPs (measure) -> record in
results.jsonl -> DataFrame -> report, verdict, tuning (analyze). docs/architecture.md draws it.
"""

import ast
from pathlib import Path

import lmbench

#: Stages from the bottom: a module may import its own stage (without a cycle) or any stage below it.
STAGES = ["errors", "models", "measure", "plan", "analyze", "run", "commands"]
#: Modules at the top of the package, outside the stage subpackages.
TOP = {"__init__": "errors", "errors": "errors", "cli": "commands", "tune": "commands", "crash": "commands"}
ROOT = Path(lmbench.__file__).parent


def _stage(module: str) -> str:
    """`plan.config` -> plan; `cli` -> commands."""
    head, _, _ = module.partition(".")
    return TOP[head] if head in TOP else head


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1]) if parts[-1] == "__init__" and len(parts) > 1 else ".".join(parts)] = path
    return found


def _imports() -> dict[str, set[str]]:
    """Module -> the lmbench modules it imports (at any depth of its code, lazy imports included)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lmbench":
                base = node.module.removeprefix("lmbench").lstrip(".")
                targets = [f"{base}.{a.name}".lstrip(".") for a in node.names] + [base]
            elif isinstance(node, ast.Import):
                targets = [a.name.removeprefix("lmbench.") for a in node.names if a.name.startswith("lmbench.")]
            found |= {t for t in targets if t in modules and t != name and t != ""}
        graph[name] = found
    return graph


def test_every_module_sits_in_a_stage():
    for module in _modules():
        assert _stage(module) in STAGES, module
    assert {_stage(m) for m in _modules()} == set(STAGES)


def test_the_architecture_page_lists_every_module_in_its_stage():
    """docs/architecture.md's table had lost six modules (sdpa, graphtime, sidebyside, rounds, provenance, stacks)
    that other pages cite by name (a new user's docs check)."""
    import re

    page = (ROOT.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    listed = set()
    for line in page.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 3 and cells[0] in STAGES and cells[0] != "commands":
            package = cells[0]
            listed |= {package if name == package else f"{package}.{name}"
                       for name in re.findall(r"`([\w.]+)`", cells[1]) if not name.startswith("lmbench.")}
            listed.add(package)
    staged = {m for m in _modules() if m.partition(".")[0] in STAGES and m.partition(".")[0] != "commands"}
    assert staged - listed == set(), "modules the page does not list"
    assert listed - staged == set(), "modules the page lists that are gone"


def test_imports_point_down_the_stages():
    upward = [f"{module} ({_stage(module)}) imports {dep} ({_stage(dep)})"
              for module, deps in _imports().items() for dep in sorted(deps)
              if STAGES.index(_stage(dep)) > STAGES.index(_stage(module))]
    assert not upward, upward


def test_no_import_cycles():
    graph = _imports()
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                raise AssertionError(f"import cycle: {' -> '.join([*path[path.index(dep):], dep])}")
            if dep not in state:
                visit(dep, [*path, dep])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_every_stage_says_what_it_owns_and_may_import():
    for stage in STAGES[1:-1]:
        doc = ast.get_docstring(ast.parse((ROOT / stage / "__init__.py").read_text(encoding="utf-8")))
        assert doc and "May import:" in doc, stage


def test_the_public_surface_is_at_the_top():
    from lmbench.analyze.compare import compare
    from lmbench.analyze.frame import load
    from lmbench.plan.config import Config

    assert lmbench.Config is Config and lmbench.load_results is load and lmbench.compare is compare

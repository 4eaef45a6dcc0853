"""The package's imports point one way, down the stages of a run, and never in a circle.

suite file -> Config (plan) -> worker process (run) -> timer/telemetry/FLOPs (measure) -> record in
results.jsonl -> DataFrame -> report, verdict, tuning (analyze). docs/architecture.md draws it.
"""

import ast
from pathlib import Path

import lmbench

#: Each module's stage; a module may import its own stage (without a cycle) or any stage below it.
STAGES = ["errors", "models", "measure", "plan", "analyze", "run", "commands"]
LAYERS = {
    "errors": "errors", "__init__": "errors",
    "models": "models", "torch_lm": "models", "kernel_sets": "models",
    "timer": "measure", "telemetry": "measure", "nvml": "measure", "environment": "measure", "flops": "measure",
    "peaks": "measure", "metrics": "measure", "stats": "measure", "ceilings": "measure", "microbench": "measure",
    "breakdown": "measure", "roofline": "measure", "hostmem": "measure",
    "config": "plan", "suite": "plan", "feasibility": "plan", "parity": "plan", "runplan": "plan",
    "results": "analyze", "frame": "analyze", "compare": "analyze", "noise": "analyze", "gate": "analyze",
    "table": "analyze", "report": "analyze", "plots": "analyze", "baseline": "analyze",
    "runner": "run", "launcher": "run", "worker": "run", "training": "run", "precision": "run", "data": "run",
    "distributed": "run", "parallel": "run", "rundir": "run", "interrupts": "run", "profiling": "run",
    "cli": "commands", "tune": "commands", "crash": "commands",
}


def _imports() -> dict[str, set[str]]:
    """Module -> the lmbench modules it imports (at any depth of its code, lazy imports included)."""
    root = Path(lmbench.__file__).parent
    found = {}
    for path in root.glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "lmbench":
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lmbench."):
                names.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("lmbench.")}
        found[path.stem] = {n for n in names if n in LAYERS and n != path.stem}
    return found


def test_every_module_has_a_stage():
    assert set(_imports()) == set(LAYERS)


def test_imports_point_down_the_stages():
    upward = [f"{module} ({LAYERS[module]}) imports {dep} ({LAYERS[dep]})"
              for module, deps in _imports().items() for dep in sorted(deps)
              if STAGES.index(LAYERS[dep]) > STAGES.index(LAYERS[module])]
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

"""The house's plan, checked from the code's own imports: no import circle, no package importing one above it,
benchmarks outside the product, and the light modules light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("search", "em_backbones", "benchmarks")
# search's sub-packages from the bottom up: a module may import its own package and those below it.
SEARCH_FLOORS = ("search.errors", "search.imports", "search.inputs", "search.data", "search.plan", "search.training",
                 "search.outcome", "search.execution", "search.__main__")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py") if "plugin" not in p.parts}


def imports(path: Path, top_level_only: bool) -> set[str]:
    """Project modules `path` imports (`from a.b import c` counts a.b, or a.b.c when that is a module)."""
    known, found = modules(), set()
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                     for alias in node.names]
        found |= {name for name in names if name.split(".")[0] in PACKAGES}
    return found


def test_there_is_no_import_circle_even_through_imports_inside_functions():
    graph = {name: {i for i in imports(path, top_level_only=False) if i in modules() and i != name}
             for name, path in modules().items()}
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != "open", f"import circle: {' -> '.join([*trail, node, nxt])}"
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def floor_of(name: str) -> int:
    return max(i for i, prefix in enumerate(SEARCH_FLOORS) if name == prefix or name.startswith(prefix + "."))


def test_no_search_package_imports_one_above_it_and_nothing_imports_the_benchmarks():
    for name, path in modules().items():
        for imported in imports(path, top_level_only=False):
            assert not imported.startswith("benchmarks") or name.startswith("benchmarks"), (name, imported)
            if name.startswith("em_backbones"):
                assert not imported.startswith("search"), (name, imported)
            if name.startswith("search.") and imported.startswith("search.") and name != "search.__init__":
                assert floor_of(imported) <= floor_of(name), f"{name} imports {imported}, a floor above it"


def test_search_keeps_few_modules_at_its_top_level_and_long_modules_say_why():
    top = sorted(p.name for p in (REPO / "search").glob("*.py"))
    assert len(top) <= 6, top
    for name, path in modules().items():
        lines = path.read_text().count("\n")
        if lines > 300:
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            assert "lines" in doc and "why" in doc.lower(), f"{name}: {lines} lines and no reason in its docstring"


def test_planning_and_reporting_import_no_model_stack_and_no_ray():
    probe = ("import sys, search.plan.space, search.plan.schema, search.plan.sampling, search.data.tiles, "
             "search.outcome.results, search.outcome.summary, search.outcome.baselines, search.outcome.report, "
             "search.outcome.verdict, search.plan.terratorch_config; "
             "print(sorted(m for m in ('torch', 'terratorch', 'transformers', 'lightning', 'peft', 'bitsandbytes', "
             "'ray') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr[-1000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"

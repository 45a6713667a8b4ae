"""The package's import graph: no cycles, and imports go one way (DESIGN.md).

Read statically from the source (every ``import`` statement, including the lazy ones inside
functions and those under ``if TYPE_CHECKING:``), so an import that only runs on some path, or only
for a type checker, still counts: two modules that name each other are one unit, whichever way the
names are imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import counterclip

PACKAGE = Path(counterclip.__file__).parent

# What each part may import (besides itself and the base modules below everything). The order follows
# DESIGN.md: cli/server -> evaluation -> engine, explainers, report -> index_builder -> models.
BASE = {"errors", "scores", "calibration", "quality", "_fileio", "_lazy", "_version"}
ALLOWED = {
    "models": set(),
    "index_builder": {"models"},
    "shapes": {"models"},
    "explainers": {"models"},
    "report": {"models", "explainers"},
    "engine": {"models", "index_builder"},
    "evaluation": {"models", "index_builder", "engine", "explainers", "report", "shapes"},
    "server": {"models", "index_builder", "engine", "explainers", "report"},
    "client": {"engine"},  # the Engine's result objects, over HTTP
    "cli": {
        "models",
        "index_builder",
        "engine",
        "explainers",
        "report",
        "shapes",
        "evaluation",
        "server",
        "client",
    },
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, name: str) -> set[str]:
    """Absolute names of the counterclip modules a file imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {m for m in found if m == "counterclip" or m.startswith("counterclip.")}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        # an imported name may be a module or an attribute of one: keep the modules only
        edges[name] = {m for m in _imports(path, name) if m in modules and m != name}
    return edges


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import circles a depth-first walk of ``edges`` meets (each as a path back to its start)."""
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(edges.get(node, ())):
            # a package __init__ that re-exports its own modules is not a cycle with them
            if node.startswith(dep + ".") or dep.startswith(node + "."):
                continue
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return cycles


def test_no_import_cycles(graph) -> None:
    # the package façade imports lazily by name and is not part of any layer
    edges = {m: {d for d in deps if d != "counterclip"} for m, deps in graph.items() if m != "counterclip"}
    cycles = _cycles(edges)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_imports_go_one_way(graph) -> None:
    wrong = []
    for module, deps in graph.items():
        part = _part(module)
        if part in BASE or part == "" or part == "__main__":
            continue
        allowed = ALLOWED[part] | BASE | {part, ""}
        wrong += [f"{module} imports {dep}" for dep in sorted(deps) if _part(dep) not in allowed]
    assert not wrong, "\n".join(wrong)


def test_explainers_know_no_engine_and_no_synthetic_world(graph) -> None:
    for module, deps in graph.items():
        if _part(module) == "explainers":
            assert not {d for d in deps if _part(d) in ("engine", "shapes", "evaluation")}, module


def test_the_graph_is_read_right(graph) -> None:
    # a known edge in each direction style: absolute and lazy (inside a function)
    assert "counterclip.engine.criteria" in graph["counterclip.engine.posing"]
    assert "counterclip.index_builder" in graph["counterclip.engine.resources"]  # lazy, in open_parts


def test_lazy_and_type_checking_imports_are_edges(tmp_path: Path) -> None:
    # a circle closed by an import inside a function or under TYPE_CHECKING is still a circle
    source = tmp_path / "counterclip" / "part" / "a.py"
    source.parent.mkdir(parents=True)
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from counterclip.part.b import B\n"
        "def show():\n"
        "    from .c import draw\n",
        encoding="utf-8",
    )
    assert _imports(source, "counterclip.part.a") >= {"counterclip.part.b", "counterclip.part.c"}
    edges = {"counterclip.part.a": {"counterclip.part.b"}, "counterclip.part.b": {"counterclip.part.a"}}
    assert _cycles(edges) == [["counterclip.part.a", "counterclip.part.b", "counterclip.part.a"]]
    assert _cycles({"counterclip.part": {"counterclip.part.a"}, "counterclip.part.a": set()}) == []

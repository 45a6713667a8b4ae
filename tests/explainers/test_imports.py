"""Import direction: the explainers know no engine, no synthetic world, no evaluation and no rendering;
the models know none of the layers above them. Checked on the source of every module (also imports
inside functions) and at run time in a fresh interpreter."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import counterclip

PACKAGE_DIR = Path(counterclip.__file__).parent
FORBIDDEN = {
    "counterclip.explainers": (
        "counterclip.engine",
        "counterclip.shapes",
        "counterclip.evaluation",
        "counterclip.report",
    ),
    "counterclip.models": (
        "counterclip.engine",
        "counterclip.shapes",
        "counterclip.evaluation",
        "counterclip.report",
        "counterclip.explainers",
        "counterclip.index_builder",
    ),
    "counterclip.report": ("counterclip.engine", "counterclip.evaluation", "counterclip.shapes"),
}


def _modules(package: str) -> list[str]:
    """Every module of ``package`` (the package itself included)."""
    path = PACKAGE_DIR.parent / package.replace(".", "/")
    names = [package] + [m.name for m in pkgutil.walk_packages([str(path)], prefix=f"{package}.")]
    assert len(names) > 1
    return names


def _imported(module: str) -> set[str]:
    """Modules named by the import statements anywhere in ``module``'s source."""
    path = PACKAGE_DIR.parent / module.replace(".", "/")
    source = (path / "__init__.py") if path.is_dir() else path.with_suffix(".py")
    tree = ast.parse(source.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_module_imports_a_layer_above(package: str) -> None:
    offenders = {
        module: sorted(
            name
            for name in _imported(module)
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[package])
        )
        for module in _modules(package)
    }
    assert {m: names for m, names in offenders.items() if names} == {}


def test_importing_every_explainer_module_loads_no_engine_or_shapes() -> None:
    modules = _modules("counterclip.explainers") + _modules("counterclip.models")
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('counterclip.'))))\n"
    )
    loaded = json.loads(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )
    above = [
        m for m in loaded if m.split(".")[1] in ("engine", "shapes", "evaluation", "report", "index_builder")
    ]
    assert above == []

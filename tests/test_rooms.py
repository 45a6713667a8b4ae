"""Rooms stay small (issue 25): a module <= 500 lines, a class <= 300, a function <= 60, in the package
(tests and scripts aside). A feature that would grow a room past that gets its own module."""

from __future__ import annotations

import ast
from pathlib import Path

import counterclip

PACKAGE = Path(counterclip.__file__).parent
LIMITS = {"module": 500, "class": 300, "function": 60}


def _oversized(path: Path, root: Path = PACKAGE.parent) -> list[str]:
    source = path.read_text(encoding="utf-8")
    rel = path.relative_to(root)
    found = []
    if len(source.splitlines()) > LIMITS["module"]:
        found.append(f"{rel}: module of {len(source.splitlines())} lines")
    for node in ast.walk(ast.parse(source)):
        kind = "class" if isinstance(node, ast.ClassDef) else None
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            kind = "function"
        if kind is not None:
            span = node.end_lineno - node.lineno + 1
            if span > LIMITS[kind]:
                found.append(f"{rel}: {kind} {node.name} of {span} lines")
    return found


def test_no_room_over_the_limits() -> None:
    oversized = [line for path in sorted(PACKAGE.rglob("*.py")) for line in _oversized(path)]
    assert not oversized, "rooms over the limits:\n" + "\n".join(oversized)


def test_the_check_sees_a_long_function(tmp_path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(61))
    sample = tmp_path / "sample.py"
    sample.write_text(f"def long():\n{body}\n", encoding="utf-8")
    assert _oversized(sample, tmp_path) == ["sample.py: function long of 62 lines"]

"""Follow one counterfactual query through the package: which modules it enters, in order.

Prints the walk of ``Engine.counterfactuals`` on a small shapes index (bundled model): every call the
composer makes (depth 1) and every call those make (depth 2) into a counterclip module that control was not
already in; the composer's own module (where each stage returns to) and the stopwatch left out. Then
how many times the walk enters each module; the house rule (issue 25) is at most 3.

    python scripts/walk_query.py [--depth 1] [--side image|text] [--mode increase|decrease|flip]
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

COMPOSER = "engine.engine"
LEFT_OUT = ("engine.timing",)


def _module_of(frame) -> str | None:  # noqa: ANN001 - a frame
    name = frame.f_globals.get("__name__", "")
    return name.removeprefix("counterclip.") if name.startswith("counterclip.") else None


def trace_walk(call, depth: int) -> list[str]:  # noqa: ANN001 - a zero-argument callable
    """Modules the query enters below the composer (`counterclip.engine.engine`), up to ``depth`` calls deep.

    A call enters a module when control was not already in it: the module is not on the call stack.
    The composer's own module and the stopwatch (`engine.timing`, which reads the clock between stages and
    never sees the query) are left out.
    """
    walk: list[str] = []
    stack: list[str | None] = []

    def profiler(frame, event, arg):  # noqa: ANN001, ANN202
        if event not in ("call", "return"):
            return
        module = _module_of(frame)
        if event == "return":
            if stack:
                stack.pop()
            return
        if not stack and not (module == COMPOSER and frame.f_code.co_name == "counterfactuals"):
            return
        if 1 <= len(stack) <= depth and module not in (None, COMPOSER, *LEFT_OUT) and module not in stack:
            walk.append(module)
        stack.append(module)

    sys.setprofile(profiler)
    try:
        call()
    finally:
        sys.setprofile(None)
    return walk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--side", default="image")
    parser.add_argument("--mode", default="increase")
    args = parser.parse_args()
    from counterclip.engine import Engine
    from counterclip.index_builder import build_index
    from counterclip.shapes import generate_folder, vocabulary

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        generate_folder(base / "shapes", n=120, seed=3)
        (base / "vocab.txt").write_text("\n".join(vocabulary()) + "\n")
        build_index(
            base / "shapes", base / "idx", model="bundled:shapes", vocab=base / "vocab.txt", progress=False
        )
        with Engine.open(base / "idx", device="cpu") as engine:
            query = {"image": 1, "side": args.side, "mode": args.mode, "k": 5}
            if args.mode == "flip":
                query |= {"labels": ["a circle", "a square", "a triangle"], "target": "a square"}
            else:
                query["text"] = "a red square"
            engine.counterfactuals(**query)  # warm: per-generation statistics are computed once
            walk = trace_walk(lambda: engine.counterfactuals(**query), args.depth)
    print(f"walk of Engine.counterfactuals ({args.side}, {args.mode}; depth {args.depth}):")
    print("  " + " -> ".join(walk))
    entries = collections.Counter(walk)
    print("entries per module: " + ", ".join(f"{m} {n}" for m, n in entries.most_common()))
    print(f"most entries into one module: {max(entries.values())} (house rule: at most 3)")


if __name__ == "__main__":
    main()

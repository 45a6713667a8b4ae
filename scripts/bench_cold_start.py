"""Benchmark a cold ``counterclip search IDX --text ...`` with the bundled model: torch against ONNX.

A shapes folder (``--images`` rendered images plus the shapes vocabulary as captions) is indexed with
``bundled:shapes`` into a temp directory with its own ONNX cache; one ``--runtime onnx`` query exports the
text tower into the cache, one query per runtime warms the page cache. Then, for each runtime:

- **CLI wall**: ``python -m counterclip search IDX --text ... -k 10 --runtime R`` in a fresh process,
  ``--repeats`` times (median): what a user waits for, interpreter start and exit included;
- **breakdown**: a fresh process that takes the CLI's own steps with a clock between them (median of
  ``--repeats``): interpreter start, imports (the CLI and what the runtime's path imports: torch, open_clip
  and FAISS; or ONNX Runtime and FAISS), open (index + model, or index + cached text tower), text encode
  (first call), search (FAISS, metadata, calibration and warnings: the engine's ``search`` less its encode),
  and a warm query (a second text in the same process). It also lists which heavy modules got imported.

``--runtime onnx`` here is the torch-free path (`counterclip.models.onnx_text`); ``--runtime auto`` (the
default) takes it whenever the cache holds a checked text tower for the index's weights.

Usage::

    python scripts/bench_cold_start.py              # ~1-2 min on 2 loaded CPUs
    python scripts/bench_cold_start.py --repeats 5 --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TEXT = "a small red circle on a blue background"
WARM_TEXT = "a big green triangle"
RUNTIMES = ("torch", "onnx")

CHILD = r"""
import sys, time, json
entered = time.time()
stamps = {}
runtime, index_dir, text, warm_text = sys.argv[1:5]
t = time.perf_counter()
from pathlib import Path
import counterclip.cli
from counterclip.cli.engine_cmds import _open_engine
if runtime == "torch":
    import faiss, open_clip, torch
    import counterclip.engine.engine, counterclip.index_builder.index, counterclip.models.factory
else:
    import faiss, onnxruntime
    import counterclip.engine.engine, counterclip.index_builder.index, counterclip.models.onnx_text
stamps["imports"] = time.perf_counter() - t
t = time.perf_counter()
engine = _open_engine(Path(index_dir), "cpu", runtime, None, text_only=True)
stamps["open"] = time.perf_counter() - t
t = time.perf_counter()
engine.encode_text(text)
stamps["encode"] = time.perf_counter() - t
t = time.perf_counter()
result = engine.search(text=text, k=10)
stamps["search"] = time.perf_counter() - t - result.timings.get("encode", 0.0)
t = time.perf_counter()
engine.search(text=warm_text, k=10)
stamps["warm_query"] = time.perf_counter() - t
engine.close()
heavy = sorted(m for m in ("torch", "open_clip", "transformers", "onnxruntime", "faiss") if m in sys.modules)
ids = [item.id for item in result.items]
print(json.dumps({"entered": entered, "stamps": stamps, "ids": ids, "heavy": heavy, "finished": time.time()}))
"""


def prepare(work: Path, images: int) -> tuple[Path, dict[str, str]]:
    """A bundled-model index of ``images`` shapes images with the vocabulary, and an env with its cache."""
    from counterclip.index_builder import build_index
    from counterclip.shapes import generate_folder, vocabulary

    folder = work / "shapes"
    generate_folder(folder, n=images, seed=11, size=64)
    (work / "vocab.txt").write_text("\n".join(vocabulary()) + "\n")
    index_dir = work / "shapes.idx"
    build_index(
        folder, index_dir, model="bundled:shapes", vocab=work / "vocab.txt", device="cpu", progress=False
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "COUNTERCLIP_ONNX_CACHE": str(work / "onnx-cache"),
    }
    return index_dir, env


def cli_wall(index_dir: Path, env: dict[str, str], runtime: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "counterclip",
            "search",
            str(index_dir),
            "--text",
            TEXT,
            "-k",
            "10",
            "--runtime",
            runtime,
        ],
        env=env,
        capture_output=True,
        check=True,
    )
    return time.perf_counter() - started


def breakdown(index_dir: Path, env: dict[str, str], runtime: str, script: Path) -> dict:
    started = time.time()
    out = subprocess.run(
        [sys.executable, str(script), runtime, str(index_dir), TEXT, WARM_TEXT],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.time() - started
    record = json.loads(out.stdout.strip().splitlines()[-1])
    stamps = {"interpreter_start": record["entered"] - started, **record["stamps"]}
    stamps["exit"] = wall - (record["finished"] - started)
    return {"wall": wall, "stamps": stamps, "ids": record["ids"], "heavy": record["heavy"]}


def measure(work: Path, images: int = 120, repeats: int = 5) -> dict:
    """Build, warm up, then time ``repeats`` fresh processes per runtime (CLI wall and breakdown)."""
    index_dir, env = prepare(work, images)
    script = work / "cold_child.py"
    script.write_text(CHILD)
    for runtime in RUNTIMES:  # export the text tower (onnx), warm the page cache (both)
        cli_wall(index_dir, env, runtime)
    walls: dict[str, list[float]] = {r: [] for r in RUNTIMES}
    parts: dict[str, list[dict]] = {r: [] for r in RUNTIMES}
    for _ in range(repeats):  # alternate: this machine's speed drifts within minutes
        for runtime in RUNTIMES:
            walls[runtime].append(cli_wall(index_dir, env, runtime))
            parts[runtime].append(breakdown(index_dir, env, runtime, script))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    keys = list(parts["torch"][0]["stamps"])
    return {
        "index_images": images,
        "repeats": repeats,
        "interpreter_alone_seconds": time.perf_counter() - started,
        "cli_wall": walls,
        "cli_wall_median": {r: float(np.median(v)) for r, v in walls.items()},
        "breakdown_median": {
            r: {k: float(np.median([p["stamps"][k] for p in runs])) for k in keys}
            for r, runs in parts.items()
        },
        "heavy_modules": {r: runs[0]["heavy"] for r, runs in parts.items()},
        "same_top10": all(p["ids"] == parts["torch"][0]["ids"] for runs in parts.values() for p in runs),
        "load_average": os.getloadavg(),
    }


def print_report(report: dict) -> None:
    print(
        f"cold `counterclip search IDX --text ...`, bundled:shapes, {report['index_images']}-image index, "
        f"median of {report['repeats']} fresh processes each (load average {report['load_average'][0]:.2f}; "
        f"`python -c pass` alone {report['interpreter_alone_seconds']:.2f} s)"
    )
    for runtime, wall in report["cli_wall_median"].items():
        runs = ", ".join(f"{w:.2f}" for w in report["cli_wall"][runtime])
        verdict = "met" if wall <= 2.0 else "MISSED"
        print(f"  CLI wall {runtime:5s} {wall:5.2f} s  (runs: {runs})  target <= 2 s: {verdict}")
    keys = list(report["breakdown_median"]["torch"])
    print("  breakdown (s)  " + " ".join(f"{k:>17s}" for k in keys))
    for runtime, stamps in report["breakdown_median"].items():
        print(f"  {runtime:13s}  " + " ".join(f"{stamps[k]:17.3f}" for k in keys))
    for runtime, heavy in report["heavy_modules"].items():
        print(f"  {runtime}: imported {', '.join(heavy)}")
    print(f"  same top 10 on both runtimes: {report['same_top10']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=120, help="shapes images in the index")
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per runtime and measure")
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cc-cold-") as tmp:
        report = measure(Path(tmp), args.images, args.repeats)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)


if __name__ == "__main__":
    main()

"""Benchmark the ONNX Runtime encoder against torch, in one run; prints ratios, agreement and timings.

Part 1, building (ViT-B-32, random weights: speed does not depend on the values):
- 256 photo-sized JPEGs (640x480) generated into a temp folder;
- each runtime embeds them through the real build pipeline (`pipeline.embed_images`: threaded decode,
  the model's preprocessing, batched encode; the vectors go to an in-memory writer, not to shards):
  torch fp32, onnx fp32, onnx int8-dynamic, onnx int8-static;
- the runtimes alternate: the photos are split into ``--rounds`` parts, every runtime embeds each part in
  turn (the order reversed every other part), because this machine's speed drifts within minutes; each
  runtime embeds every photo once; throughput = photos / summed seconds per runtime;
- agreement over all 256 pipeline outputs: cosine of each runtime's embeddings to torch's, and recall@10
  of an exact index of the int8 embeddings against the torch fp32 index (each image a query, itself left out);
- the int8 towers are first accepted or refused by `OnnxEncoder` on a 64-image sample of the same
  folder (its bars: every cosine >= 0.99, recall@10 >= 0.98); a refused tower is reported with its figures
  and not timed.
Targets (issue 19): onnx fp32 / torch >= 1.1x with cosine >= 0.9999; int8 / torch >= 1.5x with cosine
>= 0.99 and recall@10 >= 0.98.

Part 2, a cold ``counterclip search IDX --text ...`` with the bundled model, torch against the torch-free
ONNX text path: `scripts/bench_cold_start.py` (CLI wall time and breakdown, median of fresh processes).

Usage::

    python scripts/bench_runtime.py                 # both parts (~5 min on 2 loaded CPUs)
    python scripts/bench_runtime.py --n 64 --rounds 1 --skip-cold
    python scripts/bench_runtime.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ARCH = "ViT-B-32"
RUNTIMES = ("torch", "onnx-fp32", "onnx-int8-dynamic", "onnx-int8-static")


def generate(folder: Path, n: int, size: tuple[int, int] = (640, 480), seed: int = 0) -> None:
    """``n`` photo-like JPEGs (smooth colour fields and grain) of ``size`` = (w, h)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    for i in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)).resize(
            (w, h), Image.Resampling.BICUBIC
        )
        pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, size=(h, w, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i:06d}.jpg", quality=90)


class MemoryWriter:
    """The `ShardWriter` calls `embed_images` makes, keeping the vectors in memory."""

    def __init__(self) -> None:
        self.vectors: list[np.ndarray] = []
        self.ids: list[int] = []

    def add(self, vectors: np.ndarray, ids: list[int], columns: list[dict]) -> None:
        self.vectors.append(vectors)
        self.ids += ids

    def fail(self, item_id: int, reason: str, size=None, sha256=None) -> None:
        raise RuntimeError(f"image {item_id} failed: {reason}")

    def close(self) -> None:
        pass


def run_pipeline(encoder, paths: list[Path], batch_size: int, workers: int) -> tuple[float, np.ndarray]:
    """One pass of the build pipeline over ``paths``; -> (seconds, (n, d) embeddings in path order)."""
    from counterclip.index_builder.decode import DecodeOptions
    from counterclip.index_builder.pipeline import WorkItem, embed_images

    writer = MemoryWriter()
    items = [WorkItem(i, str(p)) for i, p in enumerate(paths)]
    started = time.perf_counter()
    embed_images(
        items, encoder, writer, DecodeOptions(), batch_size=batch_size, workers=workers, prefetch_batches=2
    )
    seconds = time.perf_counter() - started
    assert writer.ids == list(range(len(paths)))
    return seconds, np.concatenate(writer.vectors)


def build_part(args: argparse.Namespace, work: Path) -> dict:
    import torch

    from counterclip.errors import QuantizationRefusedError
    from counterclip.index_builder import load_image
    from counterclip.models import load_model
    from counterclip.models.onnx_runtime import OnnxEncoder, compare, recall_at_k

    folder = work / "photos"
    generate(folder, args.n)
    paths = sorted(folder.glob("*.jpg"))
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = load_model(ARCH, device="cpu")
    model.fingerprint  # noqa: B018 - hashed once per load, as the builder does
    load_seconds = time.perf_counter() - t0
    threads = torch.get_num_threads()
    cache = work / "onnx-cache"
    sample = torch.stack([model.preprocess(load_image(p).image) for p in paths[: args.sample]])
    encoders: dict[str, object] = {"torch": model}
    setup: dict[str, dict] = {}
    for name, precision in (
        ("onnx-fp32", "fp32"),
        ("onnx-int8-dynamic", "int8-dynamic"),
        ("onnx-int8-static", "int8-static"),
    ):
        if name not in args.runtimes:
            continue
        t0 = time.perf_counter()
        encoder = OnnxEncoder(
            model,
            precision=precision,
            sample=None if precision == "fp32" else sample,
            cache_dir=cache,
            threads=threads,
            calibration_size=args.sample,
            check_batch_size=args.batch_size,
        )
        try:
            encoder.session("image")
        except QuantizationRefusedError as exc:
            setup[name] = {"refused": str(exc), "seconds": time.perf_counter() - t0}
            print(f"  {name}: REFUSED in {setup[name]['seconds']:.1f} s: {exc}", flush=True)
            continue
        info = encoder.runtime_info()["towers"]["image"]
        setup[name] = {"seconds": time.perf_counter() - t0, **info}
        print(
            f"  {name}: ready in {setup[name]['seconds']:.1f} s ({', '.join(encoder.exported) or 'cached'})",
            flush=True,
        )
        encoders[name] = encoder
    warm = sample[: args.batch_size]
    for encoder in encoders.values():  # first-call costs (allocations, kernels) out of the timed runs
        encoder.encode_images(warm, batch_size=args.batch_size)
    seconds = {name: 0.0 for name in encoders}
    per_round: dict[str, list[float]] = {name: [] for name in encoders}
    pieces: dict[str, list[np.ndarray]] = {name: [] for name in encoders}
    chunks = np.array_split(np.arange(len(paths)), args.rounds)
    for r, chunk in enumerate(chunks):
        order = list(encoders) if r % 2 == 0 else list(reversed(encoders))
        chunk_paths = [paths[i] for i in chunk]
        for name in order:
            took, vectors = run_pipeline(encoders[name], chunk_paths, args.batch_size, args.workers)
            seconds[name] += took
            per_round[name].append(len(chunk_paths) / took)
            pieces[name].append(vectors)
            print(f"  round {r + 1} {name}: {len(chunk_paths) / took:.2f} img/s", flush=True)
    # the model alone on the preprocessed sample (no decode), alternating the same way
    model_seconds = {name: 0.0 for name in encoders}
    for r in range(args.model_rounds):
        for name in list(encoders) if r % 2 == 0 else list(reversed(encoders)):
            t0 = time.perf_counter()
            encoders[name].encode_images(sample, batch_size=args.batch_size)
            model_seconds[name] += time.perf_counter() - t0
    model_ips = (
        {name: args.model_rounds * len(sample) / s for name, s in model_seconds.items()}
        if args.model_rounds
        else {}
    )
    outputs = {name: np.concatenate(v) for name, v in pieces.items()}
    ips = {name: len(paths) / s for name, s in seconds.items()}
    reference = outputs["torch"]
    agreement = {}
    for name in encoders:
        if name == "torch":
            continue
        figures = compare(reference, outputs[name]).to_dict()
        if "int8" in name:
            figures["recall_at_10_vs_fp32_index"] = recall_at_k(reference, outputs[name], 10)
            figures["vs_onnx_fp32"] = (
                compare(outputs["onnx-fp32"], outputs[name]).to_dict() if "onnx-fp32" in outputs else None
            )
        agreement[name] = figures
    # How crowded the fp32 embeddings are: random weights put every image in a narrow cone, so the 10th and
    # 11th neighbours are close and small int8 errors reorder them (a harder case than trained weights).
    unit_ref = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    sims = unit_ref @ unit_ref.T
    np.fill_diagonal(sims, -np.inf)
    top = -np.sort(-sims, axis=1)[:, :11]
    crowding = {
        "mean_pairwise_cosine": float(sims[np.isfinite(sims)].mean()),
        "median_gap_10th_11th_neighbour": float(np.median(top[:, 9] - top[:, 10])),
    }
    return {
        "crowding": crowding,
        "images": len(paths),
        "image_size": [640, 480],
        "batch_size": args.batch_size,
        "decode_workers": args.workers,
        "rounds": args.rounds,
        "threads": threads,
        "model_load_seconds": load_seconds,
        "setup_sample": len(sample),
        "setup": setup,
        "images_per_s": ips,
        "images_per_s_per_round": per_round,
        "ratio_to_torch": {name: ips[name] / ips["torch"] for name in ips},
        "model_only_images_per_s": model_ips,
        "model_only_ratio_to_torch": {name: model_ips[name] / model_ips["torch"] for name in model_ips},
        "model_only_rounds": args.model_rounds,
        "graphs": {name: setup[name].get("graph") for name in setup if "graph" in setup[name]},
        "agreement_to_torch": agreement,
    }


# --- part 2: cold query --------------------------------------------------------------------------------
def cold_part(args: argparse.Namespace, work: Path) -> dict:
    """`bench_cold_start.measure` in ``work / "cold"`` (a fresh index and ONNX cache)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_cold_start import measure

    (work / "cold").mkdir()
    return measure(work / "cold", args.cold_images, args.cold_repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=256, help="generated photos (part 1)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="the photos are split into this many parts, each embedded by every "
        "runtime in turn (order reversed every other part): each runtime embeds every photo once",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="decode threads")
    parser.add_argument(
        "--sample", type=int, default=64, help="images the int8 towers are calibrated/checked on"
    )
    parser.add_argument("--cold-images", type=int, default=120)
    parser.add_argument("--cold-repeats", type=int, default=5)
    parser.add_argument(
        "--runtimes",
        type=lambda text: [r.strip() for r in text.split(",") if r.strip()],
        default=list(RUNTIMES),
        help=f"comma-separated ONNX runtimes to time against torch (always timed), of {', '.join(RUNTIMES[1:])}",
    )
    parser.add_argument(
        "--model-rounds",
        type=int,
        default=2,
        help="rounds of the model alone on the preprocessed sample (no decode), alternated; 0 skips it",
    )
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--skip-cold", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the raw figures to this file")
    args = parser.parse_args()
    unknown = sorted(set(args.runtimes) - set(RUNTIMES))
    if unknown:
        parser.error(f"unknown runtimes {unknown}; expected some of {', '.join(RUNTIMES[1:])}")

    import onnxruntime
    import torch

    report: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "load_average_start": os.getloadavg(),
        }
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cc-bench-runtime-") as tmp:
        work = Path(tmp)
        if not args.skip_build:
            print(
                f"part 1: {ARCH} (random weights), {args.n} photos 640x480, {args.rounds} rounds", flush=True
            )
            report["build"] = build_part(args, work)
        if not args.skip_cold:
            print("part 2: cold text query, bundled:shapes", flush=True)
            report["cold"] = cold_part(args, work)
    report["machine"]["load_average_end"] = os.getloadavg()
    report["seconds"] = time.perf_counter() - started
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print_report(report)


def print_report(report: dict) -> None:
    m = report["machine"]
    print(
        f"\nmachine: {m['cpus']} CPUs, torch {m['torch']}, onnxruntime {m['onnxruntime']}, load average "
        f"{m['load_average_start'][0]:.2f} at start, {m['load_average_end'][0]:.2f} at end; total {report['seconds']:.0f} s"
    )
    if "build" in report:
        b = report["build"]
        print(
            f"\nbuild pipeline, {ARCH}: {b['images']} JPEGs {b['image_size'][0]}x{b['image_size'][1]}, batch "
            f"{b['batch_size']}, {b['decode_workers']} decode threads, {b['threads']} compute threads, {b['rounds']} rounds"
        )
        for name, setup in b["setup"].items():
            if "refused" in setup:
                print(f"  {name:18s} REFUSED: {setup['refused']}")
        for name, ips in b["images_per_s"].items():
            rounds = ", ".join(f"{x:.2f}" for x in b["images_per_s_per_round"][name])
            line = f"  {name:18s} {ips:6.2f} img/s  x{b['ratio_to_torch'][name]:.2f} of torch  (rounds: {rounds})"
            agreement = b["agreement_to_torch"].get(name)
            if agreement:
                line += (
                    f"  cosine to torch min {agreement['cosine_min']:.5f} mean {agreement['cosine_mean']:.5f}"
                )
                if "recall_at_10_vs_fp32_index" in agreement:
                    line += f"  recall@10 vs fp32 index {agreement['recall_at_10_vs_fp32_index']:.3f}"
            print(line)
        for name, ips in b.get("model_only_images_per_s", {}).items():
            print(
                f"  model alone {name:18s} {ips:6.2f} img/s  x{b['model_only_ratio_to_torch'][name]:.2f} of torch "
                f"({b['model_only_rounds']} rounds over the {b['setup_sample']} sample images, no decode)"
            )
        for name, graph in b.get("graphs", {}).items():
            if graph:
                extra = f", fallback: {graph['fallback_reason']}" if graph.get("fallback_reason") else ""
                fused = ", ".join(f"{op} {n}" for op, n in graph.get("fused", {}).items())
                print(
                    f"  graph {name}: {graph['optimization']} ({fused}; last layer for the pooled token: "
                    f"{graph.get('pooled_token_only', 0)} nodes{extra})"
                )
        for name, setup in b["setup"].items():
            if "refused" not in setup:
                check = setup.get("vs_fp32")
                accepted = (
                    f"; accepted on its {check['check_images']}-image check: cosine min {check['cosine_min']:.5f}, "
                    f"recall@10 {check['recall_at_10']:.3f}"
                    if check
                    else ""
                )
                print(f"  set-up {name}: {setup['seconds']:.1f} s (export/quantise + check){accepted}")
        crowd = b["crowding"]
        print(
            f"  fp32 embeddings: mean pairwise cosine {crowd['mean_pairwise_cosine']:.4f}, median gap between "
            f"the 10th and 11th neighbour {crowd['median_gap_10th_11th_neighbour']:.5f}"
        )
        print("  targets (issue 19) on all the photos:")
        for name, agreement in b["agreement_to_torch"].items():
            ratio = b["ratio_to_torch"][name]
            if "int8" in name:
                parts = [
                    ("speed >= 1.5x", ratio >= 1.5, f"{ratio:.2f}x"),
                    ("cosine >= 0.99", agreement["cosine_min"] >= 0.99, f"{agreement['cosine_min']:.5f}"),
                    (
                        "recall@10 >= 0.98",
                        agreement["recall_at_10_vs_fp32_index"] >= 0.98,
                        f"{agreement['recall_at_10_vs_fp32_index']:.3f}",
                    ),
                ]
            else:
                parts = [
                    ("speed >= 1.1x", ratio >= 1.1, f"{ratio:.2f}x"),
                    ("cosine >= 0.9999", agreement["cosine_min"] >= 0.9999, f"{agreement['cosine_min']:.6f}"),
                ]
            verdicts = "; ".join(
                f"{label}: {value} {'met' if ok else 'MISSED'}" for label, ok, value in parts
            )
            print(f"    {name:18s} {verdicts}")
    if "cold" in report:
        from bench_cold_start import print_report as print_cold

        print()
        print_cold(report["cold"])


if __name__ == "__main__":
    main()

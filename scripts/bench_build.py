"""Benchmark the index builder on a generated folder with the real ViT-B-32 architecture (random weights).

Reports, in one run:

- **model**: pure model throughput on pre-decoded, pre-processed tensors (224 px), in batches;
- **pipeline**: full `build_index` throughput on the same N images (scan, decode, preprocess, embed,
  write shards and SQLite, FAISS, recall measurement, manifest), in a fresh process; model loading
  (and hashing its weights for the fingerprint, done once per loaded model) is excluded, as it is from
  the model figure, and reported;
- their ratio (target >= 0.90);
- **naive**: a per-image loop (open, preprocess, encode one image at a time) and the pipeline's speed-up
  over it;
- **peak memory** (max RSS) of the pipeline process for N and 4N images, and its growth over the RSS
  after loading the model (target: flat, i.e. the same for N and 4N).

The model, pipeline and naive figures for N come from one process, with the same loaded model on the
same images, so they share the machine's conditions; the pipeline runs first, so that its peak RSS
does not include the N pre-decoded tensors of the model figure.

Speed does not depend on the weights' values, so random weights measure what pretrained ones would.

Usage::

    python scripts/bench_build.py                    # N = 128, batch 32, 640x480 JPEGs
    python scripts/bench_build.py --n 64 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ARCH = "ViT-B-32"


def max_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generate(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> None:
    """``n`` photo-like JPEGs (smooth colour fields, blobs and noise) of ``size`` = (w, h)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    for i in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)).resize(
            (w, h), Image.Resampling.BICUBIC
        )
        pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, size=(h, w, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i:06d}.jpg", quality=90)


def pure_model(model, paths: list[Path], batch_size: int) -> float:
    """Images per second of ``encode_images`` on tensors decoded and preprocessed beforehand."""
    from counterclip.index_builder import load_image

    pixels = torch.stack([model.preprocess(load_image(p).image) for p in paths])
    model.encode_images(pixels[:batch_size], batch_size=batch_size)  # warm-up
    started = time.perf_counter()
    for start in range(0, len(pixels), batch_size):
        model.encode_images(pixels[start : start + batch_size], batch_size=batch_size)
    return len(pixels) / (time.perf_counter() - started)


def naive_loop(model, paths: list[Path]) -> float:
    """Images per second of open -> preprocess -> encode, one image at a time."""
    model.encode_images(model.preprocess(Image.open(paths[0]).convert("RGB")))  # warm-up
    started = time.perf_counter()
    for path in paths:
        with Image.open(path) as image:
            model.encode_images(model.preprocess(image.convert("RGB")))
    return len(paths) / (time.perf_counter() - started)


def run_child(
    folder: Path, index_dir: Path, batch_size: int, workers: int, shard_size: int, naive: int = 0
) -> dict:
    """Run one measurement in a fresh process (so that its peak RSS is its own) and return its report."""
    command = [
        sys.executable,
        __file__,
        "--child",
        str(folder),
        str(index_dir),
        "--batch-size",
        str(batch_size),
        "--workers",
        str(workers),
        "--naive",
        str(naive),
        "--shard-size",
        str(shard_size),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child(folder: Path, index_dir: Path, batch_size: int, workers: int, shard_size: int, naive: int) -> None:
    """One process: load and warm up the model, build (timed, peak RSS), then, when ``naive`` > 0, the
    pure-model and naive figures on the same images with the same model (same conditions)."""
    from counterclip.index_builder import build_index, load_index_config
    from counterclip.models import load_model

    model = load_model(ARCH, device="cpu")
    config = load_index_config("default", shard_size=shard_size)
    size = model.vision_geometry.image_size
    warm_up = torch.zeros(batch_size, 3, *size)
    model.encode_images(warm_up, batch_size=batch_size)  # as for the model figure
    started = time.perf_counter()
    model.fingerprint  # noqa: B018 - hashing the weights is part of loading a model (computed once, cached)
    fingerprint_seconds = time.perf_counter() - started
    baseline = max_rss_mb()
    started = time.perf_counter()
    summary = build_index(
        folder, index_dir, model=model, batch_size=batch_size, workers=workers, progress=False, config=config
    )
    seconds = time.perf_counter() - started
    report = {
        "images": summary.indexed,
        "seconds": seconds,
        "images_per_s": summary.indexed / seconds,
        "rss_after_model_mb": baseline,
        "peak_rss_mb": max_rss_mb(),  # before the figures below hold all N tensors at once
        "stage_seconds": summary.stage_seconds,
        "fingerprint_seconds": fingerprint_seconds,
    }
    if naive:
        paths = sorted(folder.glob("*.jpg"))
        report["model_images_per_s"] = pure_model(model, paths, batch_size)
        report["naive_images_per_s"] = naive_loop(model, paths[:naive])
    print(json.dumps(report))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--n", type=int, default=128, help="images for the throughput figures (4N for memory)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--naive", type=int, default=24, help="images for the per-image loop")
    parser.add_argument(
        "--shard-size",
        type=int,
        default=64,
        help="vectors per shard (memory is bounded by one shard plus the decode window; below N, so that "
        "N and 4N both show the steady state)",
    )
    parser.add_argument("--size", default="640x480", help="generated JPEG size WxH")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--child", nargs=2, metavar=("FOLDER", "INDEX"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(
            Path(args.child[0]),
            Path(args.child[1]),
            args.batch_size,
            args.workers,
            args.shard_size,
            args.naive,
        )
        return

    w, h = (int(v) for v in args.size.lower().split("x"))
    work = Path(tempfile.mkdtemp(prefix="cc-bench-build-"))
    try:
        small, large = work / "n", work / "4n"
        t0 = time.perf_counter()
        generate(small, args.n, (w, h), seed=0)
        generate(large, 4 * args.n, (w, h), seed=1)
        generated = time.perf_counter() - t0
        run_n = run_child(small, work / "idx-n", args.batch_size, args.workers, args.shard_size, args.naive)
        run_4n = run_child(large, work / "idx-4n", args.batch_size, args.workers, args.shard_size)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    pipeline_ips = run_n["images_per_s"]
    model_ips = run_n["model_images_per_s"]
    naive_ips = run_n["naive_images_per_s"]
    growth_n = run_n["peak_rss_mb"] - run_n["rss_after_model_mb"]
    growth_4n = run_4n["peak_rss_mb"] - run_4n["rss_after_model_mb"]
    figures = {
        "arch": ARCH,
        "image_size": 224,
        "jpeg_size": f"{w}x{h}",
        "n": args.n,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "shard_size": args.shard_size,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "generate_seconds": round(generated, 1),
        "model_images_per_s": round(model_ips, 2),
        "pipeline_images_per_s": round(pipeline_ips, 2),
        "pipeline_over_model": round(pipeline_ips / model_ips, 3),
        "naive_images_per_s": round(naive_ips, 2),
        "pipeline_over_naive": round(pipeline_ips / naive_ips, 2),
        "pipeline_4n_images_per_s": round(run_4n["images_per_s"], 2),
        "peak_rss_mb_n": round(run_n["peak_rss_mb"], 1),
        "peak_rss_mb_4n": round(run_4n["peak_rss_mb"], 1),
        "rss_growth_over_model_mb_n": round(growth_n, 1),
        "rss_growth_over_model_mb_4n": round(growth_4n, 1),
        "stage_seconds_n": run_n["stage_seconds"],
        "fingerprint_seconds": round(run_n["fingerprint_seconds"], 2),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(
        f"{ARCH} (random weights) at 224 px, {w}x{h} JPEGs, batch {args.batch_size}, {args.workers} decode threads,"
    )
    print(
        f"{torch.get_num_threads()} torch threads on {os.cpu_count()} CPUs, shards of {args.shard_size} vectors"
    )
    print(f"  pure model (pre-decoded tensors) {model_ips:8.2f} img/s  ({args.n} images)")
    print(f"  full pipeline (build_index)      {pipeline_ips:8.2f} img/s  ({args.n} images)")
    print(f"  pipeline / model                 {pipeline_ips / model_ips:8.3f}   (target >= 0.90)")
    print(f"  naive per-image loop             {naive_ips:8.2f} img/s  ({args.naive} images)")
    print(f"  pipeline / naive                 {pipeline_ips / naive_ips:8.2f}x")
    print(
        f"  peak RSS, N = {args.n:<5d}              {run_n['peak_rss_mb']:8.1f} MB  (+{growth_n:.1f} MB over the loaded model)"
    )
    print(
        f"  peak RSS, 4N = {4 * args.n:<5d}             {run_4n['peak_rss_mb']:8.1f} MB  (+{growth_4n:.1f} MB over the loaded model)"
    )
    print(f"  pipeline stages for N (s): {run_n['stage_seconds']}")
    print(
        f"  (not timed: hashing the weights for the fingerprint, once per model: {run_n['fingerprint_seconds']:.2f} s)"
    )


if __name__ == "__main__":
    main()

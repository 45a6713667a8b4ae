"""Benchmark the index builder on a generated folder with the real ViT-B-32 architecture (random weights).

Reports, in one run:

- **model**: pure model throughput on pre-decoded, pre-processed tensors (224 px), in batches;
- **pipeline**: full `build_index` throughput on the same N images (scan, decode, preprocess, embed,
  write shards and SQLite, FAISS, recall measurement, manifest); model loading (and hashing its
  weights for the fingerprint, once per loaded model) is excluded, as it is from the model figure;
  two paths: **exact** (the default: the model gets the files' pixels) and **fast** (``--fast-decode``:
  JPEG draft and box reduce before preprocessing; its build measures it against the exact decode on 32
  images, and the lowest and median cosine are reported with it);
- their ratios to the model (target >= 0.90);
- **naive**: a per-image loop (open, preprocess, encode one image at a time) and the pipeline's
  speed-up over it;
- **peak memory** (max RSS) of a build of N and of 4N images, each in a fresh process, and its growth
  over the RSS after loading the model (target: flat).

The speed figures come from one process with one loaded model: model and pipeline are measured
alternately ``--repeats`` times (each pipeline run builds a fresh index) and the medians are compared,
because this machine's speed drifts by 10-20 % between runs of a minute. Speed does not depend on the
weights' values, so random weights measure what pretrained ones would.

Usage::

    python scripts/bench_build.py                    # N = 128, batch 32, 640x480 JPEGs (`make bench`)
    python scripts/bench_build.py --n 64 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
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
    """``n`` photo-like JPEGs (smooth colour fields and noise) of ``size`` = (w, h)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    for i in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)).resize(
            (w, h), Image.Resampling.BICUBIC
        )
        pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, size=(h, w, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i:06d}.jpg", quality=90)


def load_warm_model(batch_size: int):
    """ViT-B-32 with random weights, warmed up, its fingerprint computed; -> (model, fingerprint seconds)."""
    from counterclip.models import load_model

    model = load_model(ARCH, device="cpu")
    warm_up = torch.zeros(batch_size, 3, *model.vision_geometry.image_size)
    for _ in range(2):
        model.encode_images(warm_up, batch_size=batch_size)
    started = time.perf_counter()
    model.fingerprint  # noqa: B018 - hashing the weights is part of loading a model (computed once, cached)
    return model, time.perf_counter() - started


def timed_build(model, folder: Path, index_dir: Path, args: argparse.Namespace, fast: bool = False):
    """One `build_index` of ``folder`` into a new ``index_dir`` (``fast``: the fast decode); -> (seconds,
    summary)."""
    from counterclip.index_builder import build_index, load_index_config

    config = load_index_config("default", shard_size=args.shard_size)
    started = time.perf_counter()
    summary = build_index(
        folder,
        index_dir,
        model=model,
        batch_size=args.batch_size,
        workers=args.workers,
        progress=False,
        config=config,
        fast_decode=fast or None,
    )
    return time.perf_counter() - started, summary


def speed_child(folder: Path, work: Path, args: argparse.Namespace) -> dict:
    """Model and pipeline alternately, then the naive loop, all with one loaded model."""
    from counterclip.index_builder import load_image

    model, fingerprint_seconds = load_warm_model(args.batch_size)
    paths = sorted(folder.glob("*.jpg"))
    pixels = torch.stack([model.preprocess(load_image(p).image) for p in paths])
    model_ips, pipeline_ips, fast_ips, stages, fast_stages = [], [], [], [], []
    for repeat in range(args.repeats):
        started = time.perf_counter()
        for start in range(0, len(pixels), args.batch_size):
            model.encode_images(pixels[start : start + args.batch_size], batch_size=args.batch_size)
        model_ips.append(len(pixels) / (time.perf_counter() - started))
        seconds, summary = timed_build(model, folder, work / f"speed-{repeat}", args)
        pipeline_ips.append(summary.indexed / seconds)
        stages.append(summary.stage_seconds)
        seconds, summary = timed_build(model, folder, work / f"fast-{repeat}", args, fast=True)
        from counterclip.index_builder.manifest import Manifest

        check_seconds = Manifest.read(work / f"fast-{repeat}").settings.decode_check["seconds"]
        fast_ips.append(summary.indexed / (seconds - check_seconds))  # the measure is once per index
        fast_stages.append(summary.stage_seconds)
    fast_check = Manifest.read(work / "fast-0").settings.decode_check
    model.encode_images(model.preprocess(Image.open(paths[0]).convert("RGB")))  # warm-up at batch 1
    started = time.perf_counter()
    for path in paths[: args.naive]:
        with Image.open(path) as image:
            model.encode_images(model.preprocess(image.convert("RGB")))
    naive_ips = args.naive / (time.perf_counter() - started)
    return {
        "model_images_per_s": model_ips,
        "pipeline_images_per_s": pipeline_ips,
        "fast_images_per_s": fast_ips,
        "fast_check": fast_check,
        "naive_images_per_s": naive_ips,
        "stage_seconds": stages[len(stages) // 2],
        "fast_stage_seconds": fast_stages[len(fast_stages) // 2],
        "fingerprint_seconds": fingerprint_seconds,
    }


def memory_child(folder: Path, work: Path, args: argparse.Namespace) -> dict:
    """One build in this fresh process: peak RSS, and RSS after loading the model."""
    model, _ = load_warm_model(args.batch_size)
    baseline = max_rss_mb()
    seconds, summary = timed_build(model, folder, work / "memory", args)
    return {
        "images": summary.indexed,
        "images_per_s": summary.indexed / seconds,
        "rss_after_model_mb": baseline,
        "peak_rss_mb": max_rss_mb(),
    }


def run_child(mode: str, folder: Path, work: Path, args: argparse.Namespace) -> dict:
    """Run ``speed_child`` or ``memory_child`` in a fresh process and return its report."""
    command = [sys.executable, __file__, "--child", mode, str(folder), str(work)]
    for flag in ("batch_size", "workers", "shard_size", "repeats", "naive"):
        command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=128, help="images for the speed figures (4N for memory)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="decode threads")
    parser.add_argument("--repeats", type=int, default=3, help="alternating model / pipeline measurements")
    parser.add_argument("--naive", type=int, default=24, help="images for the per-image loop")
    parser.add_argument(
        "--shard-size",
        type=int,
        default=64,
        help="vectors per shard (a build holds one shard and the decode window: below N, so that N and 4N "
        "both show the steady state)",
    )
    parser.add_argument("--size", default="640x480", help="generated JPEG size WxH")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "FOLDER", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, folder, work = args.child
        report = (speed_child if mode == "speed" else memory_child)(Path(folder), Path(work), args)
        print(json.dumps(report))
        return

    w, h = (int(v) for v in args.size.lower().split("x"))
    work = Path(tempfile.mkdtemp(prefix="cc-bench-build-"))
    try:
        small, large = work / "n", work / "4n"
        generate(small, args.n, (w, h), seed=0)
        generate(large, 4 * args.n, (w, h), seed=1)
        (work / "s").mkdir(), (work / "m1").mkdir(), (work / "m4").mkdir()
        speed = run_child("speed", small, work / "s", args)
        mem_n = run_child("memory", small, work / "m1", args)
        mem_4n = run_child("memory", large, work / "m4", args)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    model_ips = statistics.median(speed["model_images_per_s"])
    pipeline_ips = statistics.median(speed["pipeline_images_per_s"])
    fast_ips = statistics.median(speed["fast_images_per_s"])
    check = speed["fast_check"]
    naive_ips = speed["naive_images_per_s"]
    growth_n = mem_n["peak_rss_mb"] - mem_n["rss_after_model_mb"]
    growth_4n = mem_4n["peak_rss_mb"] - mem_4n["rss_after_model_mb"]
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
        "model_images_per_s_runs": [round(v, 2) for v in speed["model_images_per_s"]],
        "pipeline_images_per_s_runs": [round(v, 2) for v in speed["pipeline_images_per_s"]],
        "model_images_per_s": round(model_ips, 2),
        "pipeline_images_per_s": round(pipeline_ips, 2),
        "pipeline_over_model": round(pipeline_ips / model_ips, 3),
        "fast_pipeline_images_per_s_runs": [round(v, 2) for v in speed["fast_images_per_s"]],
        "fast_pipeline_images_per_s": round(fast_ips, 2),
        "fast_over_model": round(fast_ips / model_ips, 3),
        "fast_decode_check": check,
        "fast_stage_seconds_n": speed["fast_stage_seconds"],
        "naive_images_per_s": round(naive_ips, 2),
        "pipeline_over_naive": round(pipeline_ips / naive_ips, 2),
        "peak_rss_mb_n": round(mem_n["peak_rss_mb"], 1),
        "peak_rss_mb_4n": round(mem_4n["peak_rss_mb"], 1),
        "rss_growth_over_model_mb_n": round(growth_n, 1),
        "rss_growth_over_model_mb_4n": round(growth_4n, 1),
        "pipeline_4n_images_per_s": round(mem_4n["images_per_s"], 2),
        "stage_seconds_n": speed["stage_seconds"],
        "fingerprint_seconds": round(speed["fingerprint_seconds"], 2),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    runs = ", ".join(
        f"{m:.1f}/{p:.1f}"
        for m, p in zip(speed["model_images_per_s"], speed["pipeline_images_per_s"], strict=True)
    )
    print(
        f"{ARCH} (random weights) at 224 px, {w}x{h} JPEGs, batch {args.batch_size}, {args.workers} decode threads,"
    )
    print(
        f"{torch.get_num_threads()} torch threads on {os.cpu_count()} CPUs, shards of {args.shard_size} vectors"
    )
    print(
        f"  pure model (pre-decoded tensors) {model_ips:8.2f} img/s  (median of {args.repeats}, {args.n} images)"
    )
    print(
        f"  exact pipeline (build_index)     {pipeline_ips:8.2f} img/s  (median of {args.repeats}; runs model/pipeline: {runs})"
    )
    print(f"  pipeline / model                 {pipeline_ips / model_ips:8.3f}   (target >= 0.90)")
    print(
        f"  fast decode pipeline             {fast_ips:8.2f} img/s  (--fast-decode; / model {fast_ips / model_ips:.3f};"
        f" its measure against the exact decode, once per index, not counted: {check['seconds']:.1f} s)"
    )
    print(
        f"  fast decode vs exact             lowest cosine {check['lowest']:.6f}, median {check['median']:.6f} "
        f"on {check['samples']} images ({check['shrunk']} shrunk; refused below {check['bound']})"
    )
    print(f"  naive per-image loop             {naive_ips:8.2f} img/s  ({args.naive} images)")
    print(f"  pipeline / naive                 {pipeline_ips / naive_ips:8.2f}x")
    print(
        f"  peak RSS, N = {args.n:<5d}              {mem_n['peak_rss_mb']:8.1f} MB  (+{growth_n:.1f} MB over the loaded model)"
    )
    print(
        f"  peak RSS, 4N = {4 * args.n:<5d}             {mem_4n['peak_rss_mb']:8.1f} MB  (+{growth_4n:.1f} MB over the loaded model)"
    )
    print(f"  pipeline stages for N (s): {speed['stage_seconds']}")
    print(f"  fast pipeline stages for N (s): {speed['fast_stage_seconds']}")
    print(
        f"  (not timed: hashing the weights for the fingerprint, once per model: {speed['fingerprint_seconds']:.2f} s)"
    )


if __name__ == "__main__":
    main()

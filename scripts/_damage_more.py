"""The damage battery beyond the index's own files (`check_damage.py`): the ONNX cache, the parts a
``merge`` reads, and the read cost of the shard checksums.

- ``onnx``: the cached towers of the bundled model damaged as in issue 28 (the text tower's weights with
  their signs flipped in place, the image tower garbled in the middle, each also with its record
  rewritten to match the damaged bytes); then ``search --runtime onnx`` and a build with
  ``--runtime onnx``: the answer must equal torch's (the tower exported again), never a wrong one.
- ``merge``: two shard sets, one part's ``vectors.npy`` sign-flipped / garbled / truncated / deleted or
  its ``items.jsonl`` edited / deleted; ``merge`` must exit 2 with one line naming the part and write
  nothing.
- ``bench_reads``: microseconds to read rows of 4 MB shards with block checksums, with the whole-file
  checksum (indexes before block checksums) and with unit-length checks only.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

CLI = Callable[[list[str]], tuple[int, str, str]]


def flip_sign_bits(path: Path, start: int, length: int) -> None:
    """Flip the sign bit of every float32 in ``[start, start + length)`` of a file (same size)."""
    data = bytearray(path.read_bytes())
    start -= start % 4
    for at in range(start + 3, min(start + length, len(data)), 4):
        data[at] ^= 0x80
    path.write_bytes(bytes(data))


def garble_middle(path: Path, seed: int = 0) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 256] = np.random.default_rng(seed).integers(0, 256, 256, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def rehash_record(onnx_file: Path) -> None:
    """Rewrite a cache record's hash to the damaged bytes (a record written over another file)."""
    from counterclip.models.onnx_cache import file_digest

    record_path = onnx_file.with_suffix(".json")
    record = json.loads(record_path.read_text())
    record["xxh3"] = file_digest(onnx_file)
    record_path.write_text(json.dumps(record))


def onnx_battery(index: Path, folder: Path, cli: CLI) -> dict[str, Any]:
    """The ONNX cache cases: each answer compared with torch's."""
    import os

    from counterclip.models import load_model
    from counterclip.models.onnx_runtime import OnnxEncoder

    base = Path(tempfile.mkdtemp(prefix="cc-onnx-damage-"))
    os.environ["COUNTERCLIP_ONNX_CACHE"] = str(base / "cache")
    argv = ["search", str(index), "--text", "a red circle", "-k", "5", "--json"]
    status, out, err = cli([*argv, "--runtime", "torch"])
    expected = [[i["id"], round(i["score_after"], 4)] for i in json.loads(out)["items"]]
    model = load_model("bundled:shapes", device="cpu")
    outcomes = []
    for tower in ("text", "image"):
        for damage in ("signs", "garble"):
            for record in ("kept", "rehashed"):
                shutil.rmtree(base / "cache", ignore_errors=True)
                encoder = OnnxEncoder(model)
                encoder.session(tower)
                path = encoder.cache.onnx_path(tower, "fp32")
                if damage == "signs":
                    flip_sign_bits(path, path.stat().st_size // 2, 4096)  # weights in the middle of the file
                else:
                    garble_middle(path)
                if record == "rehashed":
                    rehash_record(path)
                case = f"{tower}.fp32.onnx {damage}, record {record}"
                if tower == "text":
                    status, out, err = cli([*argv, "--runtime", "onnx"])
                    got = (
                        [[i["id"], round(i["score_after"], 4)] for i in json.loads(out)["items"]]
                        if status == 0
                        else None
                    )
                    verdict = (
                        "correct (exported again)"
                        if got == expected
                        else f"WRONG: exit {status} {got} {err[-200:]}"
                    )
                else:
                    verdict = _build_verdict(folder, base / "idx", cli, model)
                said = [line for line in err.splitlines() if "ONNX cache" in line] if tower == "text" else []
                outcomes.append({"case": case, "verdict": verdict, "warning": said[:1]})
    shutil.rmtree(base, ignore_errors=True)
    os.environ.pop("COUNTERCLIP_ONNX_CACHE", None)
    return {
        "cases": len(outcomes),
        "correct": sum(o["verdict"].startswith("correct") for o in outcomes),
        "outcomes": outcomes,
    }


def _build_verdict(folder: Path, index: Path, cli: CLI, model: Any) -> str:
    """Build with the ONNX runtime; its vectors must be torch's (cosine >= 0.9999)."""
    from PIL import Image

    from counterclip.index_builder import Index

    shutil.rmtree(index, ignore_errors=True)
    status, _, err = cli(
        [
            "build",
            str(folder),
            "--index",
            str(index),
            "--model",
            "bundled:shapes",
            "--runtime",
            "onnx",
            "--device",
            "cpu",
            "--json",
        ]
    )
    if status != 0:
        return f"FAILED: exit {status} {err[-200:]}"
    with Index.open(index) as idx:
        stored = idx.images.vectors(idx.images.ids)
        paths = [folder / m["path"] for m in idx.images.meta(idx.images.ids)]
    reference = model.encode_pil([Image.open(p).convert("RGB") for p in paths]).numpy()
    cos = float((stored * reference).sum(1).min())
    return f"correct (cosine to torch >= {cos:.5f})" if cos >= 0.9999 else f"WRONG: cosine to torch {cos:.3f}"


def merge_battery(folder: Path, cli: CLI) -> dict[str, Any]:
    """Damaged merge parts: ``merge`` must refuse by name and write nothing."""
    base = Path(tempfile.mkdtemp(prefix="cc-merge-damage-"))
    pristine = [base / f"p{i}" for i in range(2)]
    for i, part in enumerate(pristine):
        status, _, err = cli(
            [
                "build",
                str(folder),
                "--index",
                str(part),
                "--model",
                "bundled:shapes",
                "--shard",
                f"{i}/2",
                "--device",
                "cpu",
                "--json",
            ]
        )
        assert status == 0, err
    damages = {
        "vectors.npy sign flip": lambda p: flip_sign_bits(
            p / "vectors.npy", (p / "vectors.npy").stat().st_size - 64, 4
        ),
        "vectors.npy garbled": lambda p: garble_middle(p / "vectors.npy"),
        "vectors.npy truncated": lambda p: (p / "vectors.npy").write_bytes(
            (p / "vectors.npy").read_bytes()[:200]
        ),
        "vectors.npy deleted": lambda p: (p / "vectors.npy").unlink(),
        "items.jsonl edited": lambda p: (p / "items.jsonl").write_text(
            (p / "items.jsonl").read_text().replace('"row": 0', '"row": 1', 1)
        ),
        "items.jsonl deleted": lambda p: (p / "items.jsonl").unlink(),
    }
    outcomes = []
    for name, hurt in damages.items():
        work = base / "work"
        shutil.rmtree(work, ignore_errors=True)
        parts = [work / p.name for p in pristine]
        for src, dst in zip(pristine, parts, strict=True):
            shutil.copytree(src, dst)
        hurt(parts[1])
        status, _, err = cli(["merge", str(work / "idx"), *map(str, parts)])
        lines = [line for line in err.strip().splitlines() if line.strip()]
        named = status == 2 and len(lines) == 1 and str(parts[1]) in lines[0]
        written = (work / "idx").exists()
        verdict = (
            "refused by name, nothing written"
            if named and not written
            else f"FAILED: exit {status}, written {written}: {err[-300:]}"
        )
        outcomes.append({"case": name, "verdict": verdict})
    status, _, err = cli(["merge", str(base / "clean"), *map(str, pristine), "--json"])
    shutil.rmtree(base, ignore_errors=True)
    return {
        "cases": len(outcomes),
        "refused": sum(o["verdict"].startswith("refused") for o in outcomes),
        "clean_merge_exit": status,
        "outcomes": outcomes,
    }


def bench_reads(shards: int = 16, rows: int = 2048, dim: int = 512, repeats: int = 7) -> dict[str, Any]:
    """Median microseconds per shard: its first row read by a new reader, then 10 more rows of it."""
    from counterclip.index_builder.checksums import Checksum
    from counterclip.index_builder.shards import ShardReader, write_shard

    base = Path(tempfile.mkdtemp(prefix="cc-bench-reads-"))
    directory = base / "embeddings"
    directory.mkdir()
    rng = np.random.default_rng(0)
    sums: dict[str, Checksum] = {}
    for number in range(shards):
        vectors = rng.normal(size=(rows, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        sums.update(write_shard(directory, "images", number, vectors, np.arange(rows, dtype=np.int64)))
    whole = {name: Checksum(c.size, c.xxh3) for name, c in sums.items()}
    out: dict[str, Any] = {"shard_mb": round(rows * dim * 4 / 2**20, 1), "shards": shards}
    for label, checksums in (
        ("unit length only", None),
        ("block checksums", sums),
        ("whole-file checksum", whole),
    ):
        first, more = [], []
        for _ in range(repeats):
            reader = ShardReader(directory, "images", checksums)
            picks = rng.integers(0, rows, (shards, 11))
            started = time.perf_counter()
            for number in range(shards):
                reader.rows(np.array([number]), picks[number, :1], dim)
            first.append((time.perf_counter() - started) / shards * 1e6)
            started = time.perf_counter()
            for number in range(shards):
                reader.rows(np.full(10, number), picks[number, 1:], dim)
            more.append((time.perf_counter() - started) / shards * 1e6)
        out[label] = {
            "first_row_us": round(float(np.median(first)), 1),
            "ten_more_rows_us": round(float(np.median(more)), 1),
        }
    shutil.rmtree(base, ignore_errors=True)
    return out

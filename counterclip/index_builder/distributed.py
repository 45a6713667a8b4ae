"""Embedding beyond one process: N workers each embed every N-th file, then one merge; or Ray Data.

Both plug into the builder at one place, the embedder (`build_index(..., embedder=...)`), which turns
the pending rows of a build into vectors: the builder still scans, numbers the images (ids in path
order), embeds captions, compacts, builds FAISS and writes the manifest, so the result is the index a
single-process build makes (same ids, same vectors).

- `embed_shard` (``counterclip build FOLDER --index OUT --shard i/N``): one worker embeds the files at
  positions ``i, i+N, i+2N, ...`` of the sorted scan (stable: the builder's own order) into a *shard
  set* directory: ``shardset.json`` (the worker's model, decode options, its ``i/N``), ``vectors.npy``
  and ``items.jsonl`` (per file: path, size, mtime, content hash, size in pixels, or the error). Any
  scheduler can run the N workers (clip-retrieval's worker pattern).
- `merge_shard_sets` (``counterclip merge IDX SHARD_DIRS...``): checks that the sets are one complete
  split made with one model and that every part's files are the bytes its worker wrote (the checksums
  in its ``shardset.json``; a damaged part is refused by name before anything is written), then builds the index with `ShardSetEmbedder`, which reads the vectors
  instead of computing them (a file changed since its worker ran is embedded again here).
- `RayEmbedder` (``counterclip build --engine ray``, extra ``counterclip[ray]``; in `distributed_ray`):
  the same pipeline on Ray Data: the rows with their paths, decoding in CPU tasks, an actor pool holding
  the model, vectors carried with their ids back to the driver, which commits them to the index as a
  local build does.

Either way the build runs the builder's own stages (`builder`), the embedder being stage 5's; a worker
decodes as the build will (`build_plan.fresh_decode_options`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from counterclip._fileio import atomic_write
from counterclip.errors import IndexDamagedError, InputError
from counterclip.index_builder.build_plan import fresh_decode_options
from counterclip.index_builder.build_state import now
from counterclip.index_builder.checksums import Checksum, HashingWriter, checksum_bytes, mismatch
from counterclip.index_builder.config import IndexCfg, load_index_config
from counterclip.index_builder.decode import DecodeOptions
from counterclip.index_builder.distributed_ray import RayEmbedder
from counterclip.index_builder.pipeline import StageTimes, WorkItem, embed_images
from counterclip.index_builder.scan import ScanEntry, scan_folder
from counterclip.index_builder.shards import check_norms

LOG = logging.getLogger(__name__)
SHARDSET_FORMAT = "counterclip-shardset"
SHARDSET_FILE, VECTORS_FILE, ITEMS_FILE = "shardset.json", "vectors.npy", "items.jsonl"
_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
__all__ = [
    "ITEMS_FILE",
    "SHARDSET_FILE",
    "SHARDSET_FORMAT",
    "VECTORS_FILE",
    "RayEmbedder",
    "ShardSetEmbedder",
    "decode_options_for",
    "embed_shard",
    "merge_shard_sets",
    "parse_shard",
]


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/8"`` -> ``(2, 8)``: worker 2 of 8 (0-based).

    Raises:
        InputError: not ``i/N`` with ``0 <= i < N``.
    """
    match = _SHARD.match(text or "")
    if not match or not int(match.group(1)) < int(match.group(2)):
        raise InputError(f"--shard must be i/N with 0 <= i < N (e.g. 0/4 ... 3/4), not {text!r}")
    return int(match.group(1)), int(match.group(2))


def decode_options_for(model: Any, cfg: IndexCfg) -> DecodeOptions:
    """How a build decodes files for this model and recipe (`build_plan.fresh_decode_options`)."""
    return fresh_decode_options(cfg, model)


class _Collector:
    """The writer side of `embed_images` for a shard set: keeps vectors and columns by item."""

    def __init__(self) -> None:
        self.vectors: dict[int, np.ndarray] = {}
        self.columns: dict[int, dict[str, Any]] = {}
        self.errors: dict[int, dict[str, Any]] = {}

    def add(self, vectors: np.ndarray, ids: list[int], columns: list[dict[str, Any]]) -> None:
        for row, (item_id, cols) in enumerate(zip(ids, columns, strict=True)):
            self.vectors[item_id] = np.asarray(vectors[row], dtype=np.float32)
            self.columns[item_id] = cols

    def fail(self, item_id: int, reason: str, size: int | None = None, sha256: str | None = None) -> None:
        self.errors[item_id] = {"error": reason, "size": size, "sha256": sha256}

    def close(self) -> None:
        pass


def embed_shard(
    folder: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    shard: tuple[int, int],
    model: Any,
    config: str | os.PathLike[str] | IndexCfg | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    device: str = "auto",
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Embed worker ``i`` of ``N``'s files of ``folder`` into the shard set ``out_dir``.

    Args:
        folder: the image folder (the same for every worker).
        out_dir: this worker's shard set (a new or empty directory, or its own earlier result).
        shard: ``(i, N)``.
        model: a spec string, `ModelSpec` or loaded `ClipModel` (the same for every worker).
        config: recipe (decode limits, batch size). Default: None (``default``).
        batch_size / workers: as `build_index`.
        device: for a model given as a spec.
        on_progress: called with the number of files just done.

    Returns:
        The shard set's description (``shardset.json``).
    """
    from counterclip.models import ClipModel, load_model

    started, (i, n) = time.perf_counter(), shard
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise InputError(f"image folder {root} does not exist or is not a directory")
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and any(out.iterdir()) and not (out / SHARDSET_FILE).is_file():
        raise InputError(f"{out} is not empty and is not a shard set; choose a new or empty directory")
    model = model if isinstance(model, ClipModel) else load_model(model, device=device)
    cfg = load_index_config(config, batch_size=batch_size, workers=workers)
    options = decode_options_for(model, cfg)
    entries = sorted(scan_folder(root, exclude=(out,)), key=lambda e: e.key)
    mine = [e for position, e in enumerate(entries) if position % n == i]
    collector, times = _embed_files(root, mine, model, options, cfg, on_progress)
    out.mkdir(parents=True, exist_ok=True)
    embedded, sums = _write_vectors_and_items(out, mine, collector, model.embed_dim)
    description = {
        "format": SHARDSET_FORMAT,
        "shard": [i, n],
        "root": str(root),
        "model_spec": model.spec.to_dict(),
        "fingerprint": model.fingerprint,
        "embed_dim": model.embed_dim,
        "decode": asdict(options),
        "files": len(mine),
        "embedded": embedded,
        "checksums": {name: checksum.to_dict() for name, checksum in sorted(sums.items())},
        "created": now(),
        "seconds": round(time.perf_counter() - started, 3),
        "stage_seconds": {"decode": times.decode, "embed": times.embed, "wall": times.wall},
    }
    atomic_write(out / SHARDSET_FILE, json.dumps(description, indent=2, sort_keys=True) + "\n")
    return description


def _embed_files(
    root: Path,
    mine: list[ScanEntry],
    model: Any,
    options: DecodeOptions,
    cfg: IndexCfg,
    on_progress: Callable[[int], None] | None,
) -> tuple[_Collector, StageTimes]:
    """Embed a worker's files (by their position in ``mine``) as a local build embeds them."""
    items = [WorkItem(k, str(root / e.rel)) for k, e in enumerate(mine) if e.error is None]
    collector = _Collector()
    times = embed_images(
        items,
        model,
        collector,
        options,
        batch_size=cfg.batch_size,
        workers=cfg.workers,
        prefetch_batches=cfg.prefetch_batches,
        on_progress=on_progress,
    )
    return collector, times


def _write_vectors_and_items(
    out: Path, mine: list[ScanEntry], collector: _Collector, dim: int
) -> tuple[int, dict[str, Checksum]]:
    """A shard set's ``vectors.npy`` (the embedded files' vectors, in scan order) and ``items.jsonl``
    (per file: path, size, mtime, and its columns and row, or its error); returns the vectors written
    and the two files' checksums (recorded in ``shardset.json``, checked by the merge)."""
    rows = [k for k in range(len(mine)) if k in collector.vectors]
    vectors = np.stack([collector.vectors[k] for k in rows]) if rows else np.zeros((0, dim), np.float32)
    lines = []
    row_of = {k: r for r, k in enumerate(rows)}
    for k, entry in enumerate(mine):
        record: dict[str, Any] = {"path": entry.key.hex(), "size": entry.size, "mtime_ns": entry.mtime_ns}
        if entry.error is not None:
            record["error"] = entry.error
        elif k in collector.errors:
            record.update(collector.errors[k])
        else:
            record.update(collector.columns[k], row=row_of[k])
        lines.append(json.dumps(record, sort_keys=True))
    sums: dict[str, Checksum] = {}

    def save(handle: Any) -> None:
        writer = HashingWriter(handle)
        np.save(writer, vectors)
        sums[VECTORS_FILE] = writer.checksum()

    atomic_write(out / VECTORS_FILE, save)
    text = ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8")
    atomic_write(out / ITEMS_FILE, text)
    sums[ITEMS_FILE] = checksum_bytes(text)
    return len(rows), sums


@dataclass
class _Record:
    vector: np.ndarray | None
    columns: dict[str, Any]


class ShardSetEmbedder:
    """An embedder (same call as `pipeline.embed_images`) that reads vectors from shard sets.

    Args:
        dirs: the shard set directories of one complete split (every ``i`` of one ``N``).

    Raises:
        InputError: not a shard set, sets of different splits, roots, models or decode options, a
            worker missing or given twice.
    """

    def __init__(self, dirs: Iterable[str | os.PathLike[str]]) -> None:
        self.dirs = [Path(d).expanduser().absolute() for d in dirs]
        if not self.dirs:
            raise InputError("give the shard set directories to merge")
        self.sets = []
        for d in self.dirs:
            try:
                data = json.loads((d / SHARDSET_FILE).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                raise InputError(
                    f"{d} is not a shard set (no readable {SHARDSET_FILE}: did `counterclip build --shard` finish?)"
                ) from None
            if data.get("format") != SHARDSET_FORMAT:
                raise InputError(f"{d}/{SHARDSET_FILE} is not a counterclip shard set")
            self.sets.append(data)
        first = self.sets[0]
        n = first["shard"][1]
        for d, data in zip(self.dirs, self.sets, strict=True):
            for key in ("root", "fingerprint", "decode"):
                if data[key] != first[key]:
                    raise InputError(
                        f"shard set {d} differs from {self.dirs[0]} in its {key} ({data[key]!r} vs {first[key]!r}); "
                        "every worker must embed the same folder with the same model and recipe"
                    )
            if data["shard"][1] != n:
                raise InputError(
                    f"shard set {d} is worker {data['shard'][0]}/{data['shard'][1]}, others of /{n}"
                )
        have = sorted(data["shard"][0] for data in self.sets)
        if have != list(range(n)):
            missing = sorted(set(range(n)) - set(have))
            twice = sorted({i for i in have if have.count(i) > 1})
            what = f"missing worker(s) {', '.join(f'{i}/{n}' for i in missing)}" if missing else ""
            what += ("; " if what and twice else "") + (f"worker(s) given twice {twice}" if twice else "")
            raise InputError(f"the shard sets are not one complete split: {what}")
        self.root = Path(first["root"])
        self.fingerprint = first["fingerprint"]
        self.spec = first["model_spec"]
        self.decode = DecodeOptions(**first["decode"])
        for d, data in zip(self.dirs, self.sets, strict=True):
            verify_shard_set(d, data)  # every part, before anything is written
        self._records: dict[str, tuple[int, dict[str, Any]]] = {}
        self._vectors: list[np.ndarray] = []
        for number, d in enumerate(self.dirs):
            self._vectors.append(np.load(d / VECTORS_FILE, mmap_mode="r"))
            for line in (d / ITEMS_FILE).read_text(encoding="utf-8").splitlines():
                record = json.loads(line)
                self._records[record["path"]] = (number, record)
        self.reused = 0
        self.recomputed = 0

    def __call__(
        self,
        items: Iterable[WorkItem],
        model: Any,
        writer: Any,
        options: DecodeOptions,
        batch_size: int,
        workers: int,
        prefetch_batches: int,
        on_progress: Callable[[int], None] | None = None,
    ) -> StageTimes:
        started = time.perf_counter()
        if options != self.decode:
            raise InputError(
                "the index decodes files otherwise than the shard sets did (another recipe or model); "
                "merge into a new index"
            )
        times = StageTimes()
        again: list[WorkItem] = []
        root = str(self.root) + os.sep
        for item in items:
            rel = item.path[len(root) :] if item.path.startswith(root) else item.path
            key = os.fsencode(rel).hex()
            found = self._records.get(key)
            current = _stat(item.path)
            if found is None or current != (found[1]["size"], found[1]["mtime_ns"]):
                again.append(item)  # new or changed since its worker ran: embed it here
                continue
            number, record = found
            times.items += 1
            if "error" in record:
                times.failed += 1
                writer.fail(item.id, record["error"], record.get("size"), record.get("sha256"))
            else:
                columns = {k: record[k] for k in ("width", "height", "sha256", "size")}
                vector = np.asarray(self._vectors[number][record["row"]], dtype=np.float32)[None]
                writer.add(vector, [item.id], [columns])
            self.reused += 1
            if on_progress is not None:
                on_progress(1)
        if again:
            LOG.warning(
                "%d file(s) changed or appeared since the shard workers ran: embedding them here", len(again)
            )
            more = embed_images(
                again, model, writer, options, batch_size, workers, prefetch_batches, on_progress
            )
            self.recomputed += len(again)
            times.items += more.items
            times.failed += more.failed
            times.embed += more.embed
            times.decode += more.decode
        else:
            writer.close()
        times.wall = time.perf_counter() - started
        return times


def verify_shard_set(directory: Path, data: dict[str, Any]) -> None:
    """Check a shard set's ``vectors.npy`` and ``items.jsonl`` against the checksums its worker recorded.
    A set written before checksums were recorded is checked for unit-length vectors only (a warning).

    Raises:
        IndexDamagedError: a part whose file is missing or not the bytes its worker wrote, by name.
    """
    i, n = data["shard"]
    again = f"embed it again: counterclip build {data['root']} --index {directory} --shard {i}/{n}"
    recorded = data.get("checksums")
    if recorded is None:
        LOG.warning(
            "shard set %s records no checksums (made by an older version): unit lengths checked only",
            directory,
        )
        try:
            vectors = np.load(directory / VECTORS_FILE, mmap_mode="r", allow_pickle=False)
            check_norms(np.asarray(vectors), directory / VECTORS_FILE)
        except IndexDamagedError as exc:
            raise _damaged_part(directory, VECTORS_FILE, str(exc.reason), again) from None
        except (OSError, ValueError) as exc:
            raise _damaged_part(directory, VECTORS_FILE, str(exc)[:120], again) from None
        return
    for name in (VECTORS_FILE, ITEMS_FILE):
        if name not in recorded:
            raise _damaged_part(directory, name, "no checksum recorded for it", again)
        reason = mismatch(directory / name, Checksum.from_dict(recorded[name]))
        if reason is not None:
            raise _damaged_part(directory, name, reason, again)


def _damaged_part(directory: Path, name: str, reason: str, again: str) -> IndexDamagedError:
    return IndexDamagedError(
        f"shard set {directory}: {name} is damaged ({reason}); nothing was merged; {again}",
        file=str(directory / name),
        reason=reason,
    )


def _stat(path: str) -> tuple[int | None, int | None]:
    try:
        st = os.stat(path)
    except OSError:
        return None, None
    return st.st_size, st.st_mtime_ns


def merge_shard_sets(
    index_dir: str | os.PathLike[str],
    shard_dirs: Iterable[str | os.PathLike[str]],
    captions: str | os.PathLike[str] | None = None,
    vocab: str | os.PathLike[str] | None = None,
    memory_budget: str | int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> Any:
    """Assemble the shard sets of one split into the index ``index_dir`` (as `build_index` would make it).

    Returns:
        BuildSummary (``embedded`` counts vectors taken from the shard sets and any embedded again).
    """
    from counterclip.index_builder.builder import build_index
    from counterclip.models import ModelSpec, load_model

    embedder = ShardSetEmbedder(shard_dirs)
    model = load_model(ModelSpec.from_dict(embedder.spec), device=device)
    if model.fingerprint != embedder.fingerprint:
        raise InputError(
            f"the model {model.spec} loads other weights (fingerprint {model.fingerprint[:12]}) than the shard "
            f"workers used ({embedder.fingerprint[:12]})"
        )
    if not embedder.root.is_dir():
        raise InputError(f"the image folder {embedder.root} of the shard sets does not exist here")
    return build_index(
        embedder.root,
        index_dir,
        model=model,
        captions=captions,
        vocab=vocab,
        progress=progress,
        memory_budget=memory_budget,
        embedder=embedder,
    )

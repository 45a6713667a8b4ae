"""clip-retrieval interop: import its embedding folders as an index, export an index in its layout.

clip-retrieval's ``inference`` writes, per output partition ``P`` (zero-padded)::

    img_emb/img_emb_P.npy           (n, d) float16 or float32, L2-normalised image embeddings
    text_emb/text_emb_P.npy         (n, d) the captions' embeddings (absent when it ran without text)
    metadata/metadata_P.parquet     n rows: image_path, caption, url, width, height, ... (any subset)

Rows are tied by position across the three files. `import_clip_retrieval` checks the whole layout
first from the headers alone (widths against the model, row counts across files, metadata present),
then streams partition by partition, chunk by chunk, checking every vector (finite, unit norm) as it
goes; it writes into a temporary directory beside the index and renames it into place at the end, so a
bad input leaves nothing half-written. Each row becomes an image of the index (its vector as stored),
its caption a caption (the text vector as stored; captions said twice are kept once) linked to it.

An imported image whose file is not on this machine has no file to re-score it from: `item_sources`
records, per image, its original ``image_path``, its ``url`` and whether the file is here, and
`Index.images.meta` answers ``abs_path: None, has_file: False`` for it, so the engine gives its answers
the verdict ``unverifiable``.

`export_clip_retrieval` writes an index back in the same layout (float16 by default).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from counterclip.errors import InputError
from counterclip.index_builder.budget import parse_size, write_faiss
from counterclip.index_builder.calibrate import calibration_from_pairs
from counterclip.index_builder.captions import normalise
from counterclip.index_builder.checksums import Checksum, checksum_file
from counterclip.index_builder.config import IndexCfg, load_index_config
from counterclip.index_builder.decode import DecodeOptions
from counterclip.index_builder.manifest import (
    EMBEDDINGS_DIR,
    FORMAT_VERSION,
    KINDS,
    Manifest,
    ModelRecord,
    Settings,
    db_name,
    faiss_name,
)
from counterclip.index_builder.shards import iterate_shards, shard_names, write_shard
from counterclip.index_builder.sources import SOURCES_SCHEMA, SOURCES_TABLE, has_sources, item_sources
from counterclip.index_builder.store import Store

LOG = logging.getLogger(__name__)
GENERATION = 1  # an import writes the first generation of a new index
IMG_DIR, TEXT_DIR, META_DIR = "img_emb", "text_emb", "metadata"
NORM_TOLERANCE = 0.02  # |norm - 1| allowed (float16 rounding stays below 0.005)
IMPORT_SHARD_ROWS = 16384  # vectors per shard file of an imported index
KEY_PREFIX = "clip-retrieval:"  # path_key of an image without a local file (unique per row)
_PART = re.compile(r"^img_emb_(\d+)\.npy$")


# --- the layout ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Partition:
    """One partition of a clip-retrieval output folder."""

    key: str  # the zero-padded number, as in the file names
    img: Path
    text: Path | None
    meta: Path
    rows: int
    columns: tuple[str, ...]  # metadata columns present


def _npy_shape(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from the ``.npy`` header alone (nothing is read)."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)  # maps the file: reads the header only
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .npy file ({exc})") from None
    return array.shape, array.dtype


def _pq():
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        raise InputError("reading parquet needs pyarrow: pip install pyarrow") from None
    return pq


def scan_layout(src: str | os.PathLike[str], dim: int) -> list[Partition]:
    """Check a clip-retrieval output folder from the file headers and list its partitions.

    Raises:
        InputError: no ``img_emb/img_emb_*.npy``; a text or metadata file without its image file or the
            reverse; vectors of another width than ``dim`` or of a type other than float16/float32; row
            counts that differ between the files of a partition; metadata without ``image_path``,
            ``url`` or ``caption``. Each message names the file.
    """
    src = Path(src).expanduser()
    img_dir, text_dir, meta_dir = src / IMG_DIR, src / TEXT_DIR, src / META_DIR
    if not img_dir.is_dir():
        raise InputError(f"{src} is not a clip-retrieval output folder: no {IMG_DIR}/ directory")
    keys = sorted(
        (m.group(1) for m in (_PART.match(p.name) for p in img_dir.iterdir()) if m), key=lambda k: int(k)
    )
    if not keys:
        raise InputError(f"{img_dir} holds no img_emb_*.npy files")
    has_text = text_dir.is_dir() and any(text_dir.glob("text_emb_*.npy"))
    for directory, stem, ext in ((text_dir, "text_emb", "npy"), (meta_dir, "metadata", "parquet")):
        if directory.is_dir():
            for path in sorted(directory.glob(f"{stem}_*.{ext}")):
                key = path.name[len(stem) + 1 : -len(ext) - 1]
                if key not in keys:
                    raise InputError(f"{path} has no {IMG_DIR}/img_emb_{key}.npy (rows are tied by position)")
    pq = _pq()
    parts = []
    for key in keys:
        img = img_dir / f"img_emb_{key}.npy"
        shape, dtype = _npy_shape(img)
        _check_array(img, shape, dtype, dim)
        text = text_dir / f"text_emb_{key}.npy" if has_text else None
        if text is not None:
            if not text.is_file():
                raise InputError(f"{text} is missing ({img.name} has no caption vectors)")
            tshape, tdtype = _npy_shape(text)
            _check_array(text, tshape, tdtype, dim)
            if tshape[0] != shape[0]:
                raise InputError(
                    f"{text} has {tshape[0]} rows, {img} has {shape[0]}: rows are tied by position"
                )
        meta = meta_dir / f"metadata_{key}.parquet"
        if not meta.is_file():
            raise InputError(f"{meta} is missing: the metadata (image_path, caption, url) of {img.name}")
        try:
            info = pq.ParquetFile(meta)
            rows = info.metadata.num_rows
            columns = tuple(info.schema_arrow.names)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise InputError(f"{meta}: not a readable parquet file ({str(exc)[:120]})") from None
        if rows != shape[0]:
            raise InputError(
                f"{meta} has {rows} rows, {img} has {shape[0]}: rows are tied by position; "
                "re-export the partition"
            )
        if not {"image_path", "url", "caption"} & set(columns):
            raise InputError(
                f"{meta} has none of the columns image_path, url, caption (found {list(columns)})"
            )
        parts.append(Partition(key, img, text, meta, int(shape[0]), columns))
    return parts


def _check_array(path: Path, shape: tuple[int, ...], dtype: np.dtype, dim: int) -> None:
    if len(shape) != 2:
        raise InputError(f"{path}: expected a 2-D array (rows, width), found shape {shape}")
    if dtype not in (np.float16, np.float32):
        raise InputError(f"{path}: vectors of type {dtype}, expected float16 or float32")
    if shape[1] != dim:
        raise InputError(
            f"{path}: vectors of width {shape[1]}, the model embeds to {dim}; import with the model that "
            "made them (--model)"
        )


def _check_rows(path: Path, start: int, vectors: np.ndarray) -> np.ndarray:
    """float32 copy of a chunk after checking every row is finite and of unit norm."""
    out = np.asarray(vectors, dtype=np.float32)
    finite = np.isfinite(out).all(axis=1)
    if not finite.all():
        row = start + int(np.flatnonzero(~finite)[0])
        raise InputError(f"{path} row {row}: NaN or infinite values; the file is damaged")
    norms = np.linalg.norm(out, axis=1)
    bad = np.abs(norms - 1.0) > NORM_TOLERANCE
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{path} row {start + i}: norm {norms[i]:.4f}, expected 1 (clip-retrieval writes L2-normalised "
            "vectors; were they made with normalisation off?)"
        )
    return out / norms[:, None]


# --- import ------------------------------------------------------------------------------------------
@dataclass
class ImportSummary:
    """What an import did. ``to_dict()`` is the ``--json`` output; ``str()`` the human one."""

    index_dir: str
    source: str
    model: str
    partitions: int
    images: int  # rows imported
    with_file: int  # images whose file is on this machine (re-scored from it)
    captions: int  # distinct captions
    seconds: float
    images_index: dict[str, Any] = field(default_factory=dict)
    captions_index: dict[str, Any] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        def faiss_line(info: dict[str, Any]) -> str:
            recall = {k: v.get("recall_at_10") for k, v in info.get("recall_by_query", {}).items()}
            return f"{info.get('factory')} ({info.get('io')}) {info.get('search_params') or ''} recall@10 {recall}"

        return "\n".join(
            [
                f"index {self.index_dir} <- clip-retrieval {self.source} ({self.partitions} partitions)",
                f"  model      {self.model}",
                f"  images     {self.images} ({self.with_file} with their file here; the others are answered "
                "as unverifiable)",
                f"  captions   {self.captions}",
                f"  faiss      images: {faiss_line(self.images_index)}",
                f"             captions: {faiss_line(self.captions_index)}",
                f"  time       {self.seconds:.1f} s",
            ]
        )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _column(batch: Any, name: str, n: int) -> list[Any]:
    return batch.column(name).to_pylist() if name in batch.schema.names else [None] * n


def _meta_batches(meta: Path, columns: tuple[str, ...], chunk: int) -> Iterator[Any]:
    pq = _pq()
    wanted = [c for c in ("image_path", "caption", "url", "width", "height") if c in columns]
    yield from pq.ParquetFile(meta).iter_batches(batch_size=chunk, columns=wanted)


class _Importer:
    def __init__(
        self,
        src: Path,
        work: Path,
        model: Any,
        parts: list[Partition],
        image_root: Path,
        cfg: IndexCfg,
        encode_missing_text: bool,
        progress: Any,
    ) -> None:
        self.src, self.work, self.model, self.parts = src, work, model, parts
        self.image_root, self.cfg, self.progress = image_root, cfg, progress
        self.encode_missing_text = encode_missing_text
        self.dim = model.embed_dim
        self.emb_dir = work / EMBEDDINGS_DIR
        self.next_id = 1
        self.next_caption = 1
        self.caption_ids: dict[str, int] = {}
        self.local_keys: set[str] = set()
        self.shard = {"images": 0, "captions": 0}
        self.caption_buffer: list[tuple[int, np.ndarray | None, str]] = []
        self.with_file = 0
        self.pairs: list[tuple[int, int]] = []
        self.sums: dict[str, Checksum] = {}  # shard file -> checksum, as written

    def run(self, store: Store) -> None:
        conn = store.conn
        conn.executescript(SOURCES_SCHEMA)
        total = sum(p.rows for p in self.parts)
        task = self.progress.task("importing", total, "rows") if self.progress else None
        with store.bulk_insert():
            self._insert_all(store, conn, task)
        if self.progress:
            self.progress.done(task)

    def _insert_all(self, store: Store, conn: sqlite3.Connection, task: Any) -> None:
        position = 0
        for part in self.parts:
            img = np.load(part.img, mmap_mode="r")
            text = np.load(part.text, mmap_mode="r") if part.text is not None else None
            start = 0
            for batch in _meta_batches(part.meta, part.columns, IMPORT_SHARD_ROWS):
                n = batch.num_rows
                stop = start + n
                vectors = _check_rows(part.img, start, img[start:stop])
                tvecs = _check_rows(part.text, start, text[start:stop]) if text is not None else None
                with store.transaction():
                    self._rows(conn, part, start, batch, vectors, tvecs, position)
                position += n
                start = stop
                if self.progress:
                    self.progress.advance(task, n)
        with store.transaction():
            self._flush_captions(conn, final=True)

    def _rows(
        self,
        conn: sqlite3.Connection,
        part: Partition,
        start: int,
        batch: Any,
        vectors: np.ndarray,
        tvecs: np.ndarray | None,
        position: int,
    ) -> None:
        n = batch.num_rows
        paths, captions = _column(batch, "image_path", n), _column(batch, "caption", n)
        urls = _column(batch, "url", n)
        widths, heights = _column(batch, "width", n), _column(batch, "height", n)
        ids = np.arange(self.next_id, self.next_id + n, dtype=np.int64)
        self.next_id += n
        number = self.shard["images"]
        self.sums.update(write_shard(self.emb_dir, "images", number, vectors, ids))
        self.shard["images"] += 1
        images, sources, links = [], [], []
        root = os.fspath(self.image_root)  # os.path: a million pathlib objects cost seconds
        for r in range(n):
            item_id = int(ids[r])
            image_path, url = paths[r], urls[r]
            has_file = bool(image_path) and os.path.isfile(os.path.join(root, image_path))
            origin = f"{part.key}:{start + r}"
            if has_file and image_path not in self.local_keys:
                self.local_keys.add(image_path)
                key = image_path
                self.with_file += 1
            else:
                has_file = False
                key = f"{KEY_PREFIX}{origin}"
            shown = image_path or url or key
            images.append((item_id, os.fsencode(key), shown, widths[r], heights[r], number, r))
            sources.append((item_id, image_path, url, int(has_file), origin))
            caption = normalise(captions[r]) if isinstance(captions[r], str) else ""
            if caption:
                caption_id = self.caption_ids.get(caption)
                if caption_id is None:
                    caption_id = self.caption_ids[caption] = self.next_caption
                    self.next_caption += 1
                    vec = tvecs[r] if tvecs is not None else None
                    if vec is None and not self.encode_missing_text:
                        raise InputError(
                            f"{part.meta} row {start + r} has a caption but {self.src} has no {TEXT_DIR}/; "
                            "import with --encode-captions to embed the captions with the model"
                        )
                    self.caption_buffer.append((caption_id, vec, caption))
                links.append((caption_id, position + r, "captions-file", item_id))
                self.pairs.append((item_id, caption_id))
        conn.executemany(
            "INSERT INTO images (id, path_key, path, width, height, status, shard, row) "
            "VALUES (?, ?, ?, ?, ?, 'indexed', ?, ?)",
            images,
        )
        conn.executemany(f"INSERT INTO {SOURCES_TABLE} VALUES (?, ?, ?, ?, ?)", sources)
        conn.executemany(
            "INSERT INTO caption_links (caption_id, position, source, image_id) VALUES (?, ?, ?, ?)", links
        )
        self._flush_captions(conn, final=False)

    def _flush_captions(self, conn: sqlite3.Connection, final: bool) -> None:
        while len(self.caption_buffer) >= IMPORT_SHARD_ROWS or (final and self.caption_buffer):
            chunk = self.caption_buffer[:IMPORT_SHARD_ROWS]
            del self.caption_buffer[:IMPORT_SHARD_ROWS]
            missing = [i for i, (_, vec, _) in enumerate(chunk) if vec is None]
            vectors = np.zeros((len(chunk), self.dim), np.float32)
            for i, (_, vec, _) in enumerate(chunk):
                if vec is not None:
                    vectors[i] = vec
            if missing:
                encoded = self.model.encode_texts([chunk[i][2] for i in missing]).numpy()
                vectors[missing] = encoded
            number = self.shard["captions"]
            ids = np.array([c for c, _, _ in chunk], dtype=np.int64)
            self.sums.update(write_shard(self.emb_dir, "captions", number, vectors, ids))
            self.shard["captions"] += 1
            conn.executemany(
                "INSERT INTO captions (id, text, status, shard, row) VALUES (?, ?, 'indexed', ?, ?)",
                [(c, text, number, row) for row, (c, _, text) in enumerate(chunk)],
            )


def import_clip_retrieval(
    src: str | os.PathLike[str],
    index_dir: str | os.PathLike[str],
    model: Any,
    image_root: str | os.PathLike[str] | None = None,
    memory_budget: str | int | None = None,
    config: str | os.PathLike[str] | IndexCfg | None = None,
    encode_captions: bool = False,
    device: str = "auto",
    progress: bool = True,
) -> ImportSummary:
    """Import a clip-retrieval output folder as a new index.

    Args:
        src: the folder holding ``img_emb/``, ``text_emb/`` (optional) and ``metadata/``.
        index_dir: the index to create (a new or empty directory).
        model: the model that made the vectors: a spec string, `ModelSpec` or loaded `ClipModel`; its
            width must match, and it re-scores the answers whose file is on this machine.
        image_root: where relative ``image_path`` values are resolved. Default: None (``src``).
        memory_budget: RAM the FAISS indexes may use (``"2GB"`` or bytes). Default: None (by size).
        config: an `IndexCfg`, recipe name or JSON path. Default: None (``default``).
        encode_captions: embed captions with the model when ``text_emb/`` is absent. Default: False.
        device: for a model given as a spec. Default: ``auto``.
        progress: show a progress bar on stderr. Default: True.

    Returns:
        ImportSummary.

    Raises:
        InputError: a bad layout or row (see `scan_layout`): the message names the file and row; the
            index directory is left as it was (nothing half-written).
    """
    from counterclip.index_builder.progress import Progress as _Progress
    from counterclip.models import ClipModel, load_model

    started = time.perf_counter()
    src = Path(src).expanduser().resolve()
    index_dir = Path(index_dir).expanduser().absolute()
    if index_dir.exists() and (not index_dir.is_dir() or any(index_dir.iterdir())):
        raise InputError(f"{index_dir} exists and is not empty; import into a new or empty --index directory")
    if not isinstance(model, ClipModel) and not hasattr(model, "encode_texts"):
        model = load_model(model, device=device)
    parts = scan_layout(src, model.embed_dim)
    cfg = load_index_config(config, memory_budget=parse_size(memory_budget))
    root = Path(image_root).expanduser().resolve() if image_root is not None else src
    stage: dict[str, float] = {}
    work = index_dir.parent / f".{index_dir.name}.import{os.getpid()}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    (work / EMBEDDINGS_DIR).mkdir(parents=True)
    try:
        with _Progress(progress) as bar:
            store = Store(work / db_name(GENERATION))
            try:
                importer = _Importer(src, work, model, parts, root, cfg, encode_captions, bar)
                t0 = time.perf_counter()
                importer.run(store)
                stage["rows"] = time.perf_counter() - t0
                manifest, infos = _finish(work, store, model, cfg, root, src, importer, stage, bar)
            finally:
                store.close()
        manifest.write(work)
        if index_dir.exists():
            index_dir.rmdir()  # empty (checked above)
        os.replace(work, index_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    counts = manifest.counts
    return ImportSummary(
        index_dir=str(index_dir),
        source=str(src),
        model=str(model.spec),
        partitions=len(parts),
        images=counts["images"],
        with_file=importer.with_file,
        captions=counts["captions"],
        seconds=round(time.perf_counter() - started, 3),
        images_index=infos["images"],
        captions_index=infos["captions"],
        stage_seconds={k: round(v, 3) for k, v in stage.items()},
    )


def _finish(
    work: Path,
    store: Store,
    model: Any,
    cfg: IndexCfg,
    root: Path,
    src: Path,
    importer: _Importer,
    stage: dict[str, float],
    bar: Any,
) -> tuple[Manifest, dict[str, dict[str, Any]]]:
    """FAISS indexes, calibration and the manifest of an imported index (in ``work``)."""
    dim = model.embed_dim
    geometry = getattr(model, "vision_geometry", None)
    side = min(geometry.image_size) if geometry is not None and cfg.downscale else None
    decode = DecodeOptions(cfg.max_pixels, cfg.max_side, cfg.max_file_bytes, side)
    created = _now()
    source = {"format": "clip-retrieval", "dir": str(src), "partitions": len(importer.parts)}
    counts = {kind: store.count(kind, "indexed") for kind in KINDS}
    with store.transaction():
        store.set_meta(
            format_version=FORMAT_VERSION,
            model_spec=model.spec.to_dict(),
            fingerprint=model.fingerprint,
            embed_dim=dim,
            pair_score=model.pair_score.to_dict(),
            root=str(root),
            captions_file=None,
            vocab_file=None,
            index_kind="auto",
            config=cfg.to_dict(),
            decode=dataclasses.asdict(decode),
            created=created,
            imported_from=source,
            next_shard_images=importer.shard["images"],
            next_shard_captions=importer.shard["captions"],
        )
    t0 = time.perf_counter()
    infos = {}
    files: dict[str, Checksum] = {}
    for kind in KINDS:
        other = "captions" if kind == "images" else "images"
        numbers = sorted(store.referenced_shards(kind))
        other_numbers = sorted(store.referenced_shards(other))
        task = bar.task(f"FAISS index ({kind})", None, "step")

        def blocks(kind: str = kind, numbers: list[int] = numbers) -> Iterator[tuple[np.ndarray, np.ndarray]]:
            return iterate_shards(work / EMBEDDINGS_DIR, kind, numbers, checksums=importer.sums)

        def cross(
            other: str = other, numbers: list[int] = other_numbers
        ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
            return iterate_shards(work / EMBEDDINGS_DIR, other, numbers, checksums=importer.sums)

        name = faiss_name(kind, GENERATION)
        info = write_faiss(blocks, counts[kind], dim, cfg, "auto", work / name, kind, (cross, counts[other]))
        infos[kind] = {**info.to_dict(), "file": name}
        # the FAISS file and its on-disk lists (if any) are files of the generation: checksummed
        for listed in info.memory.get("files", [name]):
            files[listed] = checksum_file(work / listed)
        bar.done(task)
    stage["faiss"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    calibration = calibration_from_pairs(
        work, importer.pairs, model.pair_score, model.fingerprint, "import", store=store, dim=dim
    )
    stage["calibration"] = time.perf_counter() - t0
    generation = GENERATION
    last_run = {
        "finished": _now(),
        "imported": counts["images"],
        "with_file": importer.with_file,
        "source": source,
        "stage_seconds": {k: round(v, 3) for k, v in stage.items()},
    }
    counts = {
        **counts,
        "skipped": 0,
        "image_shards": importer.shard["images"],
        "caption_shards": importer.shard["captions"],
        "max_image_id": store.max_id("images"),
        "max_caption_id": store.max_id("captions"),
    }
    shards = {
        name: importer.sums[name]
        for kind in KINDS
        for number in store.referenced_shards(kind)
        for name in shard_names(kind, number)
    }
    with store.transaction():
        store.set_file_checksums(shards)
        for kind in KINDS:
            info = infos[kind]
            extra = {f: files[f].to_dict() for f in info.get("memory", {}).get("files", [])[1:]}
            store.set_meta(
                **{
                    f"faiss_{kind}": {
                        "state": "imported",
                        "info": {k: v for k, v in info.items() if k != "file"},
                        "file": info["file"],
                        "checksum": files[info["file"]].to_dict(),
                        "extra_files": extra,
                    }
                }
            )
        store.set_meta(generation=generation, last_run=last_run)
    store.finalize()
    files.update(shards)
    files[db_name(generation)] = checksum_file(work / db_name(generation))
    manifest = Manifest(
        generation=generation,
        created=created,
        updated=last_run["finished"],
        root=str(root),
        model=ModelRecord(model.spec, model.fingerprint, dim, model.pair_score.to_dict()),
        counts=counts,
        faiss=infos,
        settings=Settings(index_kind="auto", config=cfg.to_dict(), decode=dataclasses.asdict(decode)),
        last_run=last_run,
        calibration=calibration.to_dict() if calibration is not None else None,
        files={name: checksum.to_dict() for name, checksum in sorted(files.items())},
    )
    return manifest, infos


# --- export --------------------------------------------------------------------------------------------
@dataclass
class ExportSummary:
    """What an export wrote."""

    out_dir: str
    rows: int  # images written (one row each)
    partitions: int
    with_text: bool  # text_emb/ written (every image has a caption)
    captions_left_out: int  # captions linked to no image (clip-retrieval rows are images)
    dtype: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        text = "with text_emb/" if self.with_text else "without text_emb/ (some images have no caption)"
        return (
            f"exported {self.rows} rows in {self.partitions} partition(s) to {self.out_dir} ({self.dtype}, "
            f"{text}); {self.captions_left_out} caption(s) of no image left out; {self.seconds:.1f} s"
        )


def export_clip_retrieval(
    index_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    rows_per_file: int = 1_000_000,
    dtype: str = "float16",
) -> ExportSummary:
    """Write an index in clip-retrieval's layout (one row per image: its vector, its first caption's
    vector and text, its ``image_path`` and ``url``).

    Args:
        index_dir: the index.
        out_dir: a new or empty directory (written beside under a temporary name, then renamed).
        rows_per_file: rows per partition. Default: 1,000,000.
        dtype: ``float16`` (clip-retrieval's default) or ``float32``.

    Returns:
        ExportSummary. ``text_emb/`` is written only when every image has a caption (rows are tied).
    """
    import pyarrow as pa

    from counterclip.index_builder.index import Index

    if dtype not in ("float16", "float32"):
        raise InputError(f"--dtype must be float16 or float32, not {dtype!r}")
    if rows_per_file < 1:
        raise InputError("rows per file must be >= 1")
    started = time.perf_counter()
    out_dir = Path(out_dir).expanduser().absolute()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"{out_dir} exists and is not empty; export into a new or empty directory")
    pq = _pq()
    work = out_dir.parent / f".{out_dir.name}.export{os.getpid()}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    try:
        with Index.open(index_dir) as idx:
            ids = idx.images.ids
            query = idx._meta.query  # noqa: SLF001 - the index's own read-only connection
            first: dict[int, int] = {}
            for image_id, caption_id in query(
                "SELECT image_id, caption_id FROM caption_links WHERE image_id IS NOT NULL "
                "ORDER BY image_id, position"
            ):
                first.setdefault(int(image_id), int(caption_id))
            with_text = len(ids) > 0 and all(int(i) in first for i in ids)
            linked = set(first.values())
            left_out = int(sum(1 for c in idx.captions.ids if int(c) not in linked))
            sources = has_sources(query)
            nfiles = max(1, -(-len(ids) // rows_per_file))
            width = len(str(nfiles - 1)) if nfiles > 1 else 1
            for sub in (IMG_DIR, META_DIR) + ((TEXT_DIR,) if with_text else ()):
                (work / sub).mkdir(parents=True)
            for number in range(nfiles):
                chunk = ids[number * rows_per_file : (number + 1) * rows_per_file]
                key = str(number).zfill(width)
                metas = idx.images.meta(chunk)
                np.save(work / IMG_DIR / f"img_emb_{key}.npy", idx.images.vectors(chunk).astype(dtype))
                caption_ids = [first.get(int(i)) for i in chunk]
                texts: list[str | None] = [None] * len(chunk)
                known = [c for c in caption_ids if c is not None]
                if known:
                    by_id = {m["id"]: m["text"] for m in idx.captions.meta(known)}
                    texts = [by_id[c] if c is not None else None for c in caption_ids]
                if with_text:
                    np.save(
                        work / TEXT_DIR / f"text_emb_{key}.npy",
                        idx.captions.vectors(np.array(caption_ids, dtype=np.int64)).astype(dtype),
                    )
                extra = item_sources(query, [int(i) for i in chunk]) if sources else {}
                image_paths, urls = [], []
                for meta in metas:
                    if meta["id"] in extra:
                        image_paths.append(extra[meta["id"]][0])
                        urls.append(extra[meta["id"]][1])
                    else:
                        image_paths.append(str(idx.root / meta["path"]))
                        urls.append(None)
                table = pa.table(
                    {
                        "image_path": pa.array(image_paths, pa.string()),
                        "caption": pa.array(texts, pa.string()),
                        "url": pa.array(urls, pa.string()),
                        "width": pa.array([m["width"] for m in metas], pa.int64()),
                        "height": pa.array([m["height"] for m in metas], pa.int64()),
                    }
                )
                pq.write_table(table, work / META_DIR / f"metadata_{key}.parquet")
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return ExportSummary(
        out_dir=str(out_dir),
        rows=int(len(ids)),
        partitions=nfiles,
        with_text=with_text,
        captions_left_out=left_out,
        dtype=dtype,
        seconds=round(time.perf_counter() - started, 3),
    )

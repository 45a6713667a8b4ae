"""clip-retrieval import: its embedding folders as a new index (`interop` describes the layout).

The layout is checked from the headers first (`interop_layout.scan_layout`), and the vectors against fresh
encodes of a sample of their files found here (`parity.check_vectors`: another model or other
preprocessing is refused with the measured cosines, so an accepted import's unchanged files verify); then
partition by
partition, chunk by chunk, every vector is checked as it is read and written as it is, each row an image
of the index, each distinct caption a caption linked to it. The index is published through the builder's
own last stages (`build_faiss`, `build_finalize`: FAISS from the shards, calibration, checksums,
manifest), into a temporary directory beside the index renamed into place at the end, so a bad input
leaves nothing half-written.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from counterclip.errors import InputError
from counterclip.index_builder.agreement import Agreement
from counterclip.index_builder.budget import parse_size
from counterclip.index_builder.build_faiss import faiss_indexes
from counterclip.index_builder.build_finalize import generation_counts, index_calibration, publish
from counterclip.index_builder.build_plan import BuildPlan, ModelChoice, fresh_decode_options
from counterclip.index_builder.build_state import BuildState, now
from counterclip.index_builder.captions import normalise
from counterclip.index_builder.checksums import Checksum
from counterclip.index_builder.config import IndexCfg, load_index_config
from counterclip.index_builder.interop_layout import TEXT_DIR, Partition, check_rows, parquet, scan_layout
from counterclip.index_builder.manifest import EMBEDDINGS_DIR, Manifest, db_name
from counterclip.index_builder.parity import SAMPLE, check_vectors, spread
from counterclip.index_builder.progress import Progress
from counterclip.index_builder.shards import write_shard
from counterclip.index_builder.sources import SOURCES_SCHEMA, SOURCES_TABLE
from counterclip.index_builder.store import Store

GENERATION = 1  # an import writes the first generation of a new index
IMPORT_SHARD_ROWS = 16384  # vectors per shard file of an imported index
KEY_PREFIX = "clip-retrieval:"  # path_key of an image without a local file (unique per row)


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
    vectors_check: dict[str, Any] = field(
        default_factory=dict
    )  # `agreement.Agreement` of a sample with files

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
                "  checked    "
                + (
                    f"{Agreement(**self.vectors_check).in_words()} to fresh encodes"
                    if self.vectors_check.get("samples")
                    else "no file here to check the vectors against"
                ),
                f"  faiss      images: {faiss_line(self.images_index)}",
                f"             captions: {faiss_line(self.captions_index)}",
                f"  time       {self.seconds:.1f} s",
            ]
        )


def _column(batch: Any, name: str, n: int) -> list[Any]:
    return batch.column(name).to_pylist() if name in batch.schema.names else [None] * n


def _meta_batches(meta: Path, columns: tuple[str, ...], chunk: int) -> Iterator[Any]:
    wanted = [c for c in ("image_path", "caption", "url", "width", "height") if c in columns]
    yield from parquet().ParquetFile(meta).iter_batches(batch_size=chunk, columns=wanted)


class _Importer:
    """Writes the rows of the partitions into the work directory: shards, ``images``, ``captions``,
    ``caption_links`` and the `SOURCES_TABLE`."""

    def __init__(
        self,
        src: Path,
        work: Path,
        model: Any,
        parts: list[Partition],
        image_root: Path,
        encode_missing_text: bool,
        progress: Progress,
    ) -> None:
        self.src, self.work, self.model, self.parts = src, work, model, parts
        self.image_root, self.progress = image_root, progress
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
        self.sums: dict[str, Checksum] = {}  # shard file -> checksum, as written

    def run(self, store: Store) -> None:
        """Import every row (one transaction per chunk)."""
        conn = store.conn
        conn.executescript(SOURCES_SCHEMA)
        total = sum(p.rows for p in self.parts)
        task = self.progress.task("importing", total, "rows")
        with store.bulk_insert():
            self._insert_all(store, conn, task)
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
                vectors = check_rows(part.img, start, img[start:stop])
                tvecs = check_rows(part.text, start, text[start:stop]) if text is not None else None
                with store.transaction():
                    self._rows(conn, part, start, batch, vectors, tvecs, position)
                position += n
                start = stop
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
        """One chunk: its vectors as one shard, its rows as images, their captions linked to them."""
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
            origin = f"{part.key}:{start + r}"
            key, has_file = self._key(root, image_path, origin)
            shown = image_path or url or key
            images.append((item_id, os.fsencode(key), shown, widths[r], heights[r], number, r))
            sources.append((item_id, image_path, url, int(has_file), origin))
            caption_id = self._caption(part, start + r, captions[r], tvecs[r] if tvecs is not None else None)
            if caption_id is not None:
                links.append((caption_id, position + r, "captions-file", item_id))
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

    def _key(self, root: str, image_path: str | None, origin: str) -> tuple[str, bool]:
        """The row's ``path_key`` and whether its file is here: the image path when the file is here (and
        no earlier row took it), else a key of its partition row."""
        has_file = bool(image_path) and os.path.isfile(os.path.join(root, image_path))
        if has_file and image_path not in self.local_keys:
            self.local_keys.add(image_path)
            self.with_file += 1
            return image_path, True
        return f"{KEY_PREFIX}{origin}", False

    def _caption(self, part: Partition, row: int, text: Any, vector: np.ndarray | None) -> int | None:
        """The caption id of a row's caption (a new text is buffered with its vector); None: no caption."""
        caption = normalise(text) if isinstance(text, str) else ""
        if not caption:
            return None
        caption_id = self.caption_ids.get(caption)
        if caption_id is None:
            caption_id = self.caption_ids[caption] = self.next_caption
            self.next_caption += 1
            if vector is None and not self.encode_missing_text:
                raise InputError(
                    f"{part.meta} row {row} has a caption but {self.src} has no {TEXT_DIR}/; "
                    "import with --encode-captions to embed the captions with the model"
                )
            self.caption_buffer.append((caption_id, vector, caption))
        return caption_id

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

    Raises:
        InputError: a bad layout or row (see `scan_layout`), naming the file and row; vectors that are not
            the model's encodes of their files (`parity.check_vectors`). Nothing is half-written.
    """
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
    plan = _import_plan(model, cfg, root)  # and the vectors checked against their files, before any write:
    checked = check_vectors(model, _sample_with_files(parts, root), plan.decode, f"import of {src}")
    state = _work_state(index_dir, progress)
    try:
        with state.progress:
            manifest, importer = _import(state, plan, src, parts, encode_captions, checked)
        _into_place(state.index_dir, index_dir)
    except BaseException:
        shutil.rmtree(state.index_dir, ignore_errors=True)
        raise
    return ImportSummary(
        index_dir=str(index_dir), source=str(src), model=str(model.spec), partitions=len(parts),
        images=manifest.counts["images"], with_file=importer.with_file, captions=manifest.counts["captions"],
        seconds=round(time.perf_counter() - started, 3), images_index=manifest.faiss["images"],
        captions_index=manifest.faiss["captions"], stage_seconds=state.stage_seconds(),
        vectors_check=checked.to_dict(),
    )  # fmt: skip


def _into_place(work: Path, index_dir: Path) -> None:
    """The finished work directory renamed to ``index_dir`` (which is missing or empty)."""
    if index_dir.exists():
        index_dir.rmdir()
    os.replace(work, index_dir)


def _sample_with_files(parts: list[Partition], root: Path) -> list[tuple[Path, np.ndarray]]:
    """Up to `parity.SAMPLE` rows whose image file is here, evenly spread: (file, imported vector)."""
    rows = []
    for part in parts:
        if "image_path" not in part.columns:
            continue
        paths = parquet().read_table(part.meta, columns=["image_path"]).column("image_path").to_pylist()
        rows += [(part, r, root / p) for r, p in enumerate(paths) if p and (root / p).is_file()]
    return [
        (path, np.load(part.img, mmap_mode="r")[r].astype(np.float32))
        for part, r, path in spread(rows, SAMPLE)
    ]


def _work_state(index_dir: Path, progress: bool) -> BuildState:
    """The state of an import into a fresh work directory beside ``index_dir`` (renamed into place at the
    end): its first generation."""
    work = index_dir.parent / f".{index_dir.name}.import{os.getpid()}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    (work / EMBEDDINGS_DIR).mkdir(parents=True)
    return BuildState(work, Progress(progress), work_gen=GENERATION, work_path=work / db_name(GENERATION))


def _import_plan(model: Any, cfg: IndexCfg, root: Path) -> BuildPlan:
    """An import's settings, as a build records them: no caption files, FAISS kinds by size, the decode
    options a new index of this model fixes, no runtime record (the vectors were made elsewhere)."""
    choice = ModelChoice(model, model.spec, model.fingerprint, model.embed_dim, model.pair_score)
    decode = fresh_decode_options(cfg, model)
    return BuildPlan(root, cfg, None, None, "auto", decode, now(), choice, model, None)


def _import(
    state: BuildState,
    plan: BuildPlan,
    src: Path,
    parts: list[Partition],
    encode_captions: bool,
    checked: Agreement,
) -> tuple[Manifest, _Importer]:
    """The rows, then the builder's last stages: settings, FAISS, calibration, manifest (in ``work``)."""
    assert state.work_path is not None
    store = Store(state.work_path)
    try:
        importer = _Importer(
            src, state.index_dir, plan.model.model, parts, plan.root, encode_captions, state.progress
        )
        with state.timed("rows"):
            importer.run(store)
        source = {"format": "clip-retrieval", "dir": str(src), "partitions": len(parts)}
        with store.transaction():
            store.set_meta(
                **plan.settings_meta(),
                imported_from=source,
                next_shard_images=importer.shard["images"],
                next_shard_captions=importer.shard["captions"],
            )
            store.set_file_checksums(importer.sums)  # as written: the shards are not read again
        faiss = faiss_indexes(state, plan, store, built_from="imported")
        calibration = index_calibration(state, plan, store, "import")
        counts = generation_counts(store)
        last_run = {
            "finished": now(),
            "imported": counts["images"],
            "with_file": importer.with_file,
            "source": source,
            "vectors_check": checked.to_dict(),
            "stage_seconds": state.stage_seconds(),
        }
        manifest = publish(state, plan, store, faiss, calibration, counts, last_run)
    finally:
        store.close()
    return manifest, importer

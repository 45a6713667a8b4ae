"""`build_index` and `update_index`: image folder -> index directory, incrementally and resumably.

One run, under the writer lock:

1. check the index against the model (fingerprint) and the folder; remove ``manifest.json`` (from here
   on the index is "incomplete" until step 8 writes it again);
2. delete debris of an interrupted run (temp files, shards no row points at);
3. scan the folder into a temp table and diff it with ``items.sqlite`` in one transaction: new files
   become ``pending`` rows (new ids, in path order), changed files (size, mtime, then content hash) get
   a new id, deleted ones are removed;
4. embed every ``pending`` row (`pipeline.embed_images`), shard by shard: a re-run after a crash
   starts where the last committed shard ended;
5. captions: gather sidecars, the captions file and the vocabulary, embed new texts once;
6. compact shards that hold removed rows (and merge small ones), so removed vectors leave every file;
7. rebuild the FAISS indexes from the shards (skipped when nothing changed), measure recall@k;
8. bump the generation and write ``manifest.json`` atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from counterclip._fileio import TMP_SUFFIX
from counterclip.calibration import Calibration
from counterclip.errors import IndexFormatError, InputError
from counterclip.index_builder import captions as caption_sources
from counterclip.index_builder._fs import WriterLock
from counterclip.index_builder.budget import parse_size, write_faiss
from counterclip.index_builder.calibrate import calibration_from_pairs
from counterclip.index_builder.config import IndexCfg, load_index_config
from counterclip.index_builder.decode import DecodeOptions, file_sha256
from counterclip.index_builder.faiss_index import FaissInfo
from counterclip.index_builder.manifest import (
    DB_NAME,
    EMBEDDINGS_DIR,
    FAISS_FILES,
    FORMAT_VERSION,
    KINDS,
    LOCK_NAME,
    MANIFEST_NAME,
    Manifest,
    ModelRecord,
    Settings,
    invalidate_manifest,
)
from counterclip.index_builder.pipeline import ShardWriter, WorkItem, embed_images
from counterclip.index_builder.scan import display_path, scan_folder
from counterclip.index_builder.shards import (
    delete_shards,
    iterate_shards,
    read_ids,
    remove_debris,
    shard_paths,
    write_shard,
)
from counterclip.index_builder.sources import refuse_update_of_import
from counterclip.index_builder.store import Store
from counterclip.models import ClipModel, ModelSpec, load_model
from counterclip.scores import PairScore

LOG = logging.getLogger(__name__)
DEFAULT_MODEL = "bundled:shapes"
FAISS_CFG_KEYS = (  # the config fields a FAISS index depends on (others never force a rebuild)
    "exact_max",
    "hnsw_max",
    "hnsw_m",
    "hnsw_ef_construction",
    "ivf_codec",
    "recall_k",
    "recall_sample",
    "recall_target",
    "seed",
    "memory_budget",
)
TRANSIENT_ERRORS = ("permission denied", "file disappeared")  # decode reasons retried by every run


@dataclass
class BuildSummary:
    """What a build or update did. ``to_dict()`` is the ``--json`` output; ``str()`` the human one."""

    index_dir: str  # the index directory
    root: str  # the image folder
    model: str  # model spec string
    fingerprint: str  # model weights fingerprint
    indexed: int  # images in the index now
    skipped: int  # files that could not be indexed (see errors)
    embedded: int  # images embedded by this run
    added: int  # new files found by this run
    changed: int  # files whose content changed (re-embedded under a new id)
    removed: int  # files gone from the folder (removed from every structure)
    unchanged: int  # files already indexed
    captions: int  # distinct captions in the index now
    captions_embedded: int  # captions embedded by this run
    resumed: bool  # this run finished an interrupted one (no manifest was found)
    seconds: float  # wall time
    images_index: dict[str, Any] = field(default_factory=dict)  # FAISS kind, parameters, recall
    captions_index: dict[str, Any] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)  # [{path, reason}] of skipped files
    warnings: list[str] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)  # scan, decode, embed, write, faiss...

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        recall_k = self.images_index.get("recall_k", 10)
        recall = self.images_index.get(f"recall_at_{recall_k}")
        lines = [
            f"index {self.index_dir} <- {self.root}",
            f"  model      {self.model} ({self.fingerprint[:12]})",
            f"  images     {self.indexed} indexed, {self.skipped} skipped"
            f" | this run: {self.embedded} embedded, {self.added} new, {self.changed} changed,"
            f" {self.removed} removed, {self.unchanged} unchanged" + (" (resumed)" if self.resumed else ""),
            f"  captions   {self.captions} ({self.captions_embedded} embedded this run)",
            f"  faiss      {self.images_index.get('factory')} {self.images_index.get('search_params') or ''}"
            + (f" recall@{recall_k} {recall:.3f}" if recall is not None else ""),
            f"  time       {self.seconds:.1f} s",
        ]
        for error in self.errors[:20]:
            lines.append(f"  skipped    {error['path']}: {error['reason']}")
        if len(self.errors) > 20:
            lines.append(f"  ... and {len(self.errors) - 20} more skipped files (see --json)")
        lines += [f"  warning    {w}" for w in self.warnings]
        return "\n".join(lines)


def build_index(
    folder: str | os.PathLike[str],
    index_dir: str | os.PathLike[str],
    model: str | ModelSpec | ClipModel = DEFAULT_MODEL,
    captions: str | os.PathLike[str] | None = None,
    vocab: str | os.PathLike[str] | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    device: str = "auto",
    index_kind: str = "auto",
    progress: bool = True,
    config: str | os.PathLike[str] | IndexCfg | None = None,
    memory_budget: str | int | None = None,
    embedder: Any = None,
) -> BuildSummary:
    """Embed every image of ``folder`` into the index at ``index_dir`` (created, resumed or updated).

    Re-running on an existing index with the same model brings it up to date like `update_index`; a
    different model is an `IndexFormatError`, another process building it an `IndexLockedError`.

    Args:
        folder: the image folder (scanned recursively; paths are stored relative to it).
        index_dir: the index directory (created when missing).
        model: a model spec string, `ModelSpec` or loaded `ClipModel`. Default: ``bundled:shapes``.
        captions: a CSV (``path,caption``) or JSONL captions file. Default: None (the recorded one, if any).
        vocab: a file of free captions, one per line. Default: None (the recorded one, if any).
        batch_size: images per forward pass. Default: None (the config's, 64 in ``default``).
        workers: decode threads, 0 to decode inline. Default: None (the config's, 2 in ``default``).
        device: ``auto``, ``cpu`` or ``cuda`` (when ``model`` is a spec). Default: ``auto``.
        index_kind: ``auto`` (by size) or a FAISS factory string for the image index. Default: ``auto``.
        progress: show a rich progress bar on stderr. Default: True.
        config: an `IndexCfg`, a recipe name (see `list_index_configs`) or JSON path. Default: None
            (the recorded one for an existing index, else ``default``).
        memory_budget: RAM the FAISS indexes may use (``"2GB"`` or bytes): the kind, memory-mapping and
            on-disk lists follow it (`budget.plan_index`). Default: None (the kind follows the size).
        embedder: what turns the pending images into vectors, called like `pipeline.embed_images`
            (`distributed.ShardSetEmbedder`: from shard sets; `distributed.RayEmbedder`: on Ray Data).
            Default: None (`embed_images`, in this process).

    Returns:
        BuildSummary.

    Examples::

        >>> summary = build_index("photos/", "photos.idx", model="bundled:shapes", progress=False)
        >>> summary.indexed, summary.skipped
        (1200, 3)
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputError(f"image folder {root} does not exist or is not a directory")
    overrides = {"batch_size": batch_size, "workers": workers, "memory_budget": parse_size(memory_budget)}
    builder = _Builder(
        Path(index_dir),
        root.resolve(),
        model,
        captions,
        vocab,
        device,
        index_kind,
        config,
        overrides,
        progress,
    )
    builder.embedder = embedder or embed_images  # distributed.py: shard sets, Ray
    return builder.run()


def update_index(
    index_dir: str | os.PathLike[str],
    model: str | ModelSpec | ClipModel | None = None,
    captions: str | os.PathLike[str] | None = None,
    vocab: str | os.PathLike[str] | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    device: str = "auto",
    index_kind: str | None = None,
    progress: bool = True,
    config: str | os.PathLike[str] | IndexCfg | None = None,
) -> BuildSummary:
    """Bring an index up to date with its recorded folder (or finish an interrupted build).

    New files are added, changed ones re-embedded, deleted ones removed from every structure; ids are
    never reused. Arguments left as None keep the recorded settings (model spec, caption files, index
    kind, config); see `build_index` for their meaning.

    Examples::

        >>> update_index("photos.idx", progress=False).added
        12
    """
    index_dir = Path(index_dir)
    if not (index_dir / DB_NAME).is_file():
        raise IndexFormatError(
            f"no index at {index_dir} (run `counterclip build FOLDER --index {index_dir}` first)"
        )
    overrides = {"batch_size": batch_size, "workers": workers}
    return _Builder(
        index_dir, None, model, captions, vocab, device, index_kind, config, overrides, progress
    ).run()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class _Progress:
    """A rich progress display on stderr, or nothing."""

    def __init__(self, enabled: bool) -> None:
        self._progress = None
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                ProgressColumn,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.text import Text

            class RateColumn(ProgressColumn):
                def render(self, task: Any) -> Text:
                    speed = task.finished_speed or task.speed
                    unit = task.fields.get("unit", "it")
                    return Text(f"{speed:.1f} {unit}/s" if speed else "", style="progress.data.speed")

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                RateColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )

    def __enter__(self) -> _Progress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def task(self, description: str, total: int | None, unit: str = "it") -> Any:
        if self._progress is None:
            return None
        return self._progress.add_task(description, total=total, unit=unit)

    def advance(self, task: Any, n: int = 1) -> None:
        if self._progress is not None and task is not None:
            self._progress.advance(task, n)

    def done(self, task: Any) -> None:
        if self._progress is not None and task is not None:
            total = max(next(t.completed for t in self._progress.tasks if t.id == task), 1)
            self._progress.update(task, total=total, completed=total)


class _Builder:
    def __init__(
        self,
        index_dir: Path,
        root: Path | None,
        model: str | ModelSpec | ClipModel | None,
        captions: str | os.PathLike[str] | None,
        vocab: str | os.PathLike[str] | None,
        device: str,
        index_kind: str | None,
        config: str | os.PathLike[str] | IndexCfg | None,
        overrides: dict[str, Any],
        progress: bool,
    ) -> None:
        self.index_dir = index_dir.expanduser().absolute()
        self.root = root
        self.model_arg = model
        self.captions_arg = captions
        self.vocab_arg = vocab
        self.device = device
        self.index_kind_arg = index_kind
        self.config_arg = config
        self.overrides = overrides
        self.progress = _Progress(progress)
        self.emb_dir = self.index_dir / EMBEDDINGS_DIR
        self.warnings: list[str] = []
        self.stage: dict[str, float] = {}
        self.started = time.perf_counter()
        self._model: ClipModel | None = None
        self._score: PairScore | None = None
        self.spec: ModelSpec | None = None
        self.fingerprint = ""
        self.dim = 0
        self.embedder: Any = embed_images

    # --- entry ----------------------------------------------------------------------------------
    def run(self) -> BuildSummary:
        started = self.started = time.perf_counter()
        self._check_directory()
        self.index_dir.mkdir(parents=True, exist_ok=True)
        with WriterLock(self.index_dir):
            store = Store(self.index_dir)
            try:
                with self.progress:
                    summary = self._run(store)
            finally:
                store.close()
        summary.seconds = round(time.perf_counter() - started, 3)
        return summary

    def _check_directory(self) -> None:
        """Refuse to build into a non-empty directory that is not an index (never clobber user files)."""
        if not self.index_dir.exists():
            return
        if not self.index_dir.is_dir():
            raise InputError(f"index path {self.index_dir} exists and is not a directory")
        if (self.index_dir / DB_NAME).exists():
            return
        foreign = [p.name for p in self.index_dir.iterdir() if p.name not in (LOCK_NAME, EMBEDDINGS_DIR)]
        if foreign:
            raise InputError(
                f"{self.index_dir} is not empty and is not a counterclip index (found {sorted(foreign)[:3]}); "
                "choose a new or empty --index directory"
            )

    # --- settings -------------------------------------------------------------------------------
    def _resolve(self, store: Store) -> tuple[Path, IndexCfg]:
        refuse_update_of_import(self.index_dir, store.get_meta("imported_from"))  # interop.py
        recorded_root = store.get_meta("root")
        if self.root is None:
            if recorded_root is None:
                raise IndexFormatError(f"index {self.index_dir} records no image folder; rebuild it")
            self.root = Path(recorded_root)
            if not self.root.is_dir():
                raise InputError(
                    f"the image folder {self.root} recorded in index {self.index_dir} does not exist any more"
                )
        elif recorded_root is not None and Path(recorded_root) != self.root:
            raise InputError(
                f"index {self.index_dir} was built from {recorded_root}, not {self.root}; "
                f"run `counterclip update {self.index_dir}` or choose another --index directory"
            )
        recorded_spec = store.get_meta("model_spec")
        recorded_fp = store.get_meta("fingerprint")
        if self.model_arg is None and recorded_fp is not None:
            # Update with the recorded model: load it only if something needs embedding.
            self.spec = ModelSpec.from_dict(recorded_spec)
            self.fingerprint = recorded_fp
            self.dim = int(store.get_meta("embed_dim"))
            recorded_score = store.get_meta("pair_score")
            self._score = PairScore.from_dict(recorded_score) if recorded_score else None
        else:
            arg = DEFAULT_MODEL if self.model_arg is None else self.model_arg
            model = arg if isinstance(arg, ClipModel) else load_model(arg, device=self.device)
            if recorded_fp is not None and model.fingerprint != recorded_fp:
                raise IndexFormatError(
                    f"index {self.index_dir} was built with model {ModelSpec.from_dict(recorded_spec)} "
                    f"(fingerprint {recorded_fp}), not {model.spec} (fingerprint {model.fingerprint}); "
                    "use the same model, or build a new index for this one"
                )
            self._model = model
            self.spec, self.fingerprint, self.dim = model.spec, model.fingerprint, model.embed_dim
            self._score = model.pair_score
        recorded_cfg = store.get_meta("config")
        if self.config_arg is None and recorded_cfg is not None:
            cfg = IndexCfg.from_dict(recorded_cfg)
        else:
            cfg = load_index_config(self.config_arg)
        return self.root, load_index_config(cfg, **self.overrides)

    @property
    def pair_score(self) -> PairScore:
        """The model's pair score (recorded; the model is loaded only for an index that predates it)."""
        if self._score is None:
            self._score = self.model.pair_score
        return self._score

    @property
    def model(self) -> ClipModel:
        """The model, loaded on first use when an update runs with the recorded spec."""
        if self._model is None:
            model = load_model(self.spec, device=self.device)
            if model.fingerprint != self.fingerprint:
                raise IndexFormatError(
                    f"the model {self.spec} recorded in index {self.index_dir} now loads different weights "
                    f"(fingerprint {model.fingerprint}, the index was built with {self.fingerprint}); "
                    "pass the original weights with --model, or build a new index"
                )
            self._model = model
        return self._model

    def _caption_file(self, store: Store, key: str, arg: str | os.PathLike[str] | None) -> Path | None:
        if arg is not None and str(arg) != "":
            path = Path(arg).expanduser().resolve()
            if not path.is_file():
                raise InputError(f"{key.replace('_', ' ')} {path} does not exist")
            return path
        if arg is not None:  # "" clears the recorded file
            return None
        recorded = store.get_meta(key)
        if recorded is None:
            return None
        path = Path(recorded)
        if not path.is_file():
            self.warnings.append(
                f"{key.replace('_', ' ')} {path} recorded in the index is gone; its captions were removed"
            )
            return None
        return path

    def _decode_options(self, store: Store, cfg: IndexCfg) -> DecodeOptions:
        """How files are decoded: fixed when the index is created, so every vector is made the same way."""
        recorded = store.get_meta("decode")
        if recorded is not None:
            options = DecodeOptions(**recorded)
            wanted = (cfg.max_pixels, cfg.max_side, cfg.max_file_bytes, cfg.downscale)
            have = (
                options.max_pixels,
                options.max_side,
                options.max_file_bytes,
                options.min_side is not None,
            )
            if wanted != have:
                self.warnings.append(
                    "decode settings are fixed when an index is created; the new ones were ignored "
                    "(build a new index to change them)"
                )
            return options
        side = min(self.model.vision_geometry.image_size) if cfg.downscale else None
        return DecodeOptions(cfg.max_pixels, cfg.max_side, cfg.max_file_bytes, side)

    # --- the run --------------------------------------------------------------------------------
    def _run(self, store: Store) -> BuildSummary:
        root, cfg = self._resolve(store)
        captions_file = self._caption_file(store, "captions_file", self.captions_arg)
        vocab_file = self._caption_file(store, "vocab_file", self.vocab_arg)
        index_kind = self.index_kind_arg or store.get_meta("index_kind") or "auto"
        self.cfg = cfg

        self.emb_dir.mkdir(exist_ok=True)
        self._remove_debris(store)
        # An index that has settings but no manifest was left by an interrupted run: this one finishes it.
        resumed = store.get_meta("fingerprint") is not None and not (self.index_dir / MANIFEST_NAME).exists()

        t0 = time.perf_counter()
        sidecars: list[tuple[str, str]] = []
        self._scan_to_temp(store, root, sidecars)  # reads only: a refused run leaves the index valid

        self.decode = self._decode_options(store, cfg)

        invalidate_manifest(self.index_dir)  # from here on the index is incomplete until the end
        created = store.get_meta("created") or _now()
        with store.transaction():
            store.set_meta(
                format_version=FORMAT_VERSION,
                model_spec=self.spec.to_dict(),
                fingerprint=self.fingerprint,
                embed_dim=self.dim,
                pair_score=self.pair_score.to_dict() if self._score is not None else None,
                root=str(root),
                captions_file=str(captions_file) if captions_file else None,
                vocab_file=str(vocab_file) if vocab_file else None,
                index_kind=index_kind,
                config=cfg.to_dict(),
                decode=dataclasses.asdict(self.decode),
                created=created,
            )
            diff = self._apply_diff(store, root)
        self.stage["scan"] = time.perf_counter() - t0

        embedded = self._embed_pending_images(store, root)
        captions_embedded = self._sync_captions(store, root, sidecars, captions_file, vocab_file)

        t0 = time.perf_counter()
        for kind in KINDS:
            self._compact(store, kind)
        self.stage["compact"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        infos = {kind: self._faiss(store, kind, index_kind if kind == "images" else "auto") for kind in KINDS}
        self.stage["faiss"] = time.perf_counter() - t0
        calibration = self._calibration(store)

        counts = {
            "images": store.count("images", "indexed"),
            "captions": store.count("captions", "indexed"),
            "skipped": store.count("images", "error"),
            "image_shards": len(store.referenced_shards("images")),
            "caption_shards": len(store.referenced_shards("captions")),
            "max_image_id": store.max_id("images"),
            "max_caption_id": store.max_id("captions"),
        }
        last_run = {
            "finished": _now(),
            "embedded": embedded,
            "captions_embedded": captions_embedded,
            "resumed": resumed,
            **diff,
            "stage_seconds": {k: round(v, 3) for k, v in self.stage.items()},
            "warnings": list(self.warnings),
            "seconds": round(time.perf_counter() - self.started, 3),
        }
        generation = int(store.get_meta("generation", 0)) + 1
        with store.transaction():
            store.set_meta(generation=generation, last_run=last_run)
        Manifest(
            generation=generation,
            created=created,
            updated=last_run["finished"],
            root=str(root),
            model=ModelRecord(self.spec, self.fingerprint, self.dim, self.pair_score.to_dict()),
            counts=counts,
            faiss={kind: info.to_dict() for kind, info in infos.items()},
            settings=Settings(
                captions_file=str(captions_file) if captions_file else None,
                vocab_file=str(vocab_file) if vocab_file else None,
                index_kind=index_kind,
                config=cfg.to_dict(),
                decode=dataclasses.asdict(self.decode),
            ),
            last_run=last_run,
            calibration=calibration.to_dict() if calibration is not None else None,
        ).write(self.index_dir)
        return BuildSummary(
            index_dir=str(self.index_dir),
            root=str(root),
            model=str(self.spec),
            fingerprint=self.fingerprint,
            indexed=counts["images"],
            skipped=counts["skipped"],
            embedded=embedded,
            added=diff["added"],
            changed=diff["changed"],
            removed=diff["removed"],
            unchanged=diff["unchanged"],
            captions=counts["captions"],
            captions_embedded=captions_embedded,
            resumed=resumed,
            seconds=0.0,
            images_index=infos["images"].to_dict(),
            captions_index=infos["captions"].to_dict(),
            errors=[{"path": e["path"], "reason": e["reason"]} for e in store.errors()],
            warnings=self.warnings,
            stage_seconds={k: round(v, 3) for k, v in self.stage.items()},
        )

    def _remove_debris(self, store: Store) -> None:
        for kind in KINDS:
            remove_debris(self.emb_dir, kind, set(store.referenced_shards(kind)))
        for path in self.index_dir.glob(f"*{TMP_SUFFIX}"):
            path.unlink()

    # --- 3. scan + diff -------------------------------------------------------------------------
    def _scan_to_temp(self, store: Store, root: Path, sidecars: list[tuple[str, str]]) -> None:
        """Scan the folder into the connection's temp table ``scan`` (the index itself is not touched)."""
        try:
            os.listdir(root)
        except OSError as exc:
            raise InputError(f"cannot read the image folder {root}: {exc.strerror or exc}") from None
        conn = store.conn
        conn.execute("DROP TABLE IF EXISTS temp.scan")
        conn.execute(
            "CREATE TEMP TABLE scan (path_key BLOB PRIMARY KEY, path TEXT NOT NULL, size INTEGER, "
            "mtime_ns INTEGER, error TEXT)"
        )
        task = self.progress.task("scanning", None, "files")

        def rows() -> Iterator[tuple[Any, ...]]:
            for entry in scan_folder(root, exclude=(self.index_dir,), sidecars=sidecars):
                self.progress.advance(task)
                yield entry.key, display_path(entry.rel), entry.size, entry.mtime_ns, entry.error

        with store.transaction():
            conn.executemany("INSERT OR REPLACE INTO scan VALUES (?, ?, ?, ?, ?)", rows())
        self.progress.done(task)
        scanned = conn.execute("SELECT COUNT(*) FROM scan").fetchone()[0]
        indexed = store.count("images", "indexed")
        if scanned == 0 and indexed > 0:
            raise InputError(
                f"no image files under {root} any more, but the index holds {indexed} images; is the folder "
                f"(or its drive) missing? If they were really all deleted, remove {self.index_dir} and build again"
            )

    def _apply_diff(self, store: Store, root: Path) -> dict[str, int]:
        """Diff the temp table ``scan`` against ``images`` (call inside a transaction); returns the counts.

        New paths become ``pending`` rows with new ids (in path order); a file whose size or mtime moved
        is re-hashed when its size is unchanged, and only a different content gives it a new id; rows
        whose file is gone are deleted (their vectors leave the shards at compaction).
        """
        conn = store.conn
        scanned = conn.execute("SELECT COUNT(*) FROM scan").fetchone()[0]
        before = conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        gone = [
            r[0]
            for r in conn.execute(
                "SELECT i.id FROM images i LEFT JOIN scan s ON s.path_key = i.path_key WHERE s.path_key IS NULL"
            )
        ]
        candidates = conn.execute(
            "SELECT i.id, i.path_key, i.size, i.sha256, s.size, s.mtime_ns, s.error "
            "FROM images i JOIN scan s ON s.path_key = i.path_key "
            "WHERE NOT (i.size IS s.size AND i.mtime_ns IS s.mtime_ns AND (s.error IS NULL OR s.error IS i.error))"
        ).fetchall()
        replaced, touched = [], []
        for item_id, key, old_size, old_sha, size, mtime_ns, error in candidates:
            same = False
            if error is None and old_sha is not None and old_size == size:
                try:  # only the mtime moved (touch, copy): the content decides
                    same = file_sha256(root / os.fsdecode(key)) == old_sha
                except OSError:
                    same = False
            if same:
                touched.append((mtime_ns, item_id))
            else:
                replaced.append(item_id)
        conn.executemany("UPDATE images SET mtime_ns = ? WHERE id = ?", touched)
        # Reading failures may be transient (permissions fixed, network share back): retry them, same id.
        conn.execute(
            "UPDATE images SET status = 'pending', error = NULL WHERE status = 'error' AND size IS NOT NULL "
            f"AND error IN ({', '.join('?' * len(TRANSIENT_ERRORS))})",
            TRANSIENT_ERRORS,
        )
        conn.executemany("DELETE FROM images WHERE id = ?", [(i,) for i in gone + replaced])
        conn.execute(
            "INSERT INTO images (path_key, path, size, mtime_ns, status, error) "
            "SELECT s.path_key, s.path, s.size, s.mtime_ns, "
            "CASE WHEN s.error IS NULL THEN 'pending' ELSE 'error' END, s.error "
            "FROM scan s LEFT JOIN images i ON i.path_key = s.path_key WHERE i.id IS NULL ORDER BY s.path_key"
        )
        inserted = conn.execute("SELECT changes()").fetchone()[0]
        conn.execute("DROP TABLE temp.scan")
        diff = {
            "scanned": int(scanned),
            "added": int(inserted) - len(replaced),
            "changed": len(replaced),
            "removed": len(gone),
            "unchanged": int(before) - len(gone) - len(replaced),
        }
        LOG.info("scan of %s: %s", root, diff)
        return diff

    # --- 4. images --------------------------------------------------------------------------------
    def _pending(self, store: Store, root: Path) -> Iterator[WorkItem]:
        """Pending rows in id order, fetched in pages (flat memory, no cursor open across commits)."""
        last = -1
        while True:
            page = store.conn.execute(
                "SELECT id, path_key FROM images WHERE status = 'pending' AND id > ? ORDER BY id LIMIT 1024",
                (last,),
            ).fetchall()
            if not page:
                return
            for item_id, key in page:
                yield WorkItem(int(item_id), str(root / os.fsdecode(key)))
            last = page[-1][0]

    def _embed_pending_images(self, store: Store, root: Path) -> int:
        total = store.count("images", "pending")
        if total == 0:
            return 0
        cfg = self.cfg
        writer = ShardWriter(store, self.emb_dir, "images", cfg.shard_size, self.dim)
        task = self.progress.task("embedding images", total, "img")
        times = self.embedder(
            self._pending(store, root),
            self.model,
            writer,
            self.decode,
            batch_size=cfg.batch_size,
            workers=cfg.workers,
            prefetch_batches=cfg.prefetch_batches,
            on_progress=lambda n: self.progress.advance(task, n),
        )
        self.stage.update(
            decode_thread_seconds=times.decode,
            preprocess=times.preprocess,
            embed=times.embed,
            write=times.write,
            pipeline=times.wall,
        )
        return times.items - times.failed

    # --- 5. captions ------------------------------------------------------------------------------
    def _sync_captions(
        self,
        store: Store,
        root: Path,
        sidecars: list[tuple[str, str]],
        captions_file: Path | None,
        vocab_file: Path | None,
    ) -> int:
        t0 = time.perf_counter()
        conn = store.conn
        wanted = {stem for stem, _ in sidecars}
        stems: dict[str, list[str]] = {}
        ids: dict[str, int] = {}
        if wanted:
            for item_id, key in conn.execute("SELECT id, path_key FROM images WHERE status = 'indexed'"):
                rel = os.fsdecode(key)
                stem = os.path.splitext(rel)[0]
                if stem in wanted:
                    stems.setdefault(stem, []).append(rel)
                    ids[rel] = int(item_id)
        refs = list(caption_sources.sidecar_captions(root, sidecars, stems))
        if captions_file is not None:
            refs += caption_sources.captions_file(captions_file, root)
        if vocab_file is not None:
            refs += caption_sources.vocab_file(vocab_file)
        unknown = 0
        for ref in refs:
            if ref.image_rel is not None and ref.image_rel not in ids:
                row = conn.execute(
                    "SELECT id FROM images WHERE path_key = ? AND status = 'indexed'",
                    (os.fsencode(ref.image_rel),),
                ).fetchone()
                if row is not None:
                    ids[ref.image_rel] = int(row[0])
                elif ref.source == "captions-file":
                    unknown += 1
        if unknown:
            self.warnings.append(
                f"{unknown} caption(s) of {captions_file} name images that are not in the index; kept as free captions"
            )
        texts = list(dict.fromkeys(ref.text for ref in refs))
        existing = dict(conn.execute("SELECT text, id FROM captions").fetchall())
        with store.transaction():
            keep = set(texts)
            conn.executemany(
                "DELETE FROM captions WHERE id = ?", [(i,) for t, i in existing.items() if t not in keep]
            )
            conn.executemany(
                "INSERT INTO captions (text, status) VALUES (?, 'pending')",
                [(t,) for t in texts if t not in existing],
            )
            caption_ids = dict(conn.execute("SELECT text, id FROM captions").fetchall())
            conn.execute("DELETE FROM caption_links")
            conn.executemany(
                "INSERT INTO caption_links (caption_id, position, source, image_id) VALUES (?, ?, ?, ?)",
                [
                    (
                        caption_ids[ref.text],
                        position,
                        ref.source,
                        ids.get(ref.image_rel) if ref.image_rel else None,
                    )
                    for position, ref in enumerate(refs)
                ],
            )
        pending = conn.execute(
            "SELECT id, text FROM captions WHERE status = 'pending' ORDER BY id"
        ).fetchall()
        if pending:
            writer = ShardWriter(store, self.emb_dir, "captions", self.cfg.shard_size, self.dim)
            task = self.progress.task("embedding captions", len(pending), "txt")
            step = self.cfg.caption_batch_size
            for start in range(0, len(pending), step):
                chunk = pending[start : start + step]
                vectors = self.model.encode_texts([t for _, t in chunk], batch_size=step).numpy()
                writer.add(vectors, [int(i) for i, _ in chunk], [{} for _ in chunk])
                self.progress.advance(task, len(chunk))
            writer.close()
        self.stage["captions"] = time.perf_counter() - t0
        return len(pending)

    # --- 6. compaction ----------------------------------------------------------------------------
    def _compact(self, store: Store, kind: str) -> None:
        """Rewrite shards holding removed rows, and merge small shards, so every shard is fully live."""
        live = store.referenced_shards(kind)
        lengths = {n: len(read_ids(self.emb_dir, kind, n)) for n in live}
        dirty = {n for n in live if live[n] < lengths[n]}
        small = {n for n in live if live[n] < self.cfg.shard_size // 2}
        rewrite = sorted(dirty | (small if len(small | dirty) >= 2 else set()))
        if rewrite:
            rows = store.live_rows(kind, rewrite)
            number = int(store.get_meta(f"next_shard_{kind}", 0))
            moves: list[tuple[int, int, int]] = []
            buffer_vectors: list[np.ndarray] = []
            buffer_ids: list[int] = []

            def flush() -> None:
                nonlocal number
                if not buffer_ids:
                    return
                write_shard(
                    self.emb_dir, kind, number, np.concatenate(buffer_vectors), np.asarray(buffer_ids)
                )
                moves.extend((i, number, r) for r, i in enumerate(buffer_ids))
                number += 1
                buffer_vectors.clear(), buffer_ids.clear()

            by_shard: dict[int, list[tuple[int, int]]] = {}
            for item_id, shard, row in rows:
                by_shard.setdefault(shard, []).append((item_id, row))
            for shard in rewrite:
                picked = by_shard.get(shard, [])
                vectors = (
                    np.load(shard_paths(self.emb_dir, kind, shard)[0], mmap_mode="r") if picked else None
                )
                pos = 0
                while pos < len(picked):
                    take = min(self.cfg.shard_size - len(buffer_ids), len(picked) - pos)
                    sub = picked[pos : pos + take]
                    buffer_vectors.append(np.asarray(vectors[[r for _, r in sub]], dtype=np.float32))
                    buffer_ids.extend(i for i, _ in sub)
                    pos += take
                    if len(buffer_ids) >= self.cfg.shard_size:
                        flush()
            flush()
            with store.transaction():
                store.move_rows(kind, moves)
                store.set_meta(**{f"next_shard_{kind}": number})
            delete_shards(self.emb_dir, kind, rewrite)
            LOG.info("compacted %d %s shard(s) into %d", len(rewrite), kind, len(set(m[1] for m in moves)))
        remove_debris(self.emb_dir, kind, set(store.referenced_shards(kind)))

    # --- 7b. calibration ---------------------------------------------------------------------------
    def _calibration(self, store: Store) -> Calibration | None:
        """The calibration recorded with the index: one the user fitted (``counterclip calibrate``), else
        one fitted here on the images' own captions (sidecars, captions file) when there are enough."""
        user = store.get_meta("user_calibration")
        if user is not None:
            calibration = Calibration.from_dict(user, f"index {self.index_dir}: the recorded calibration")
            if calibration.fingerprint == self.fingerprint:
                return calibration
        t0 = time.perf_counter()
        pairs = store.conn.execute(
            "SELECT l.image_id, l.caption_id FROM caption_links l JOIN images i ON i.id = l.image_id "
            "JOIN captions c ON c.id = l.caption_id WHERE l.image_id IS NOT NULL "
            "AND i.status = 'indexed' AND c.status = 'indexed' ORDER BY l.image_id, l.position"
        ).fetchall()
        calibration = calibration_from_pairs(
            self.index_dir, pairs, self.pair_score, self.fingerprint, "build", store=store, dim=self.dim
        )
        self.stage["calibration"] = time.perf_counter() - t0
        return calibration

    # --- 7. FAISS ---------------------------------------------------------------------------------
    def _faiss(self, store: Store, kind: str, index_kind: str) -> FaissInfo:
        numbers = sorted(store.referenced_shards(kind))
        n = store.count(kind, "indexed")
        digest = hashlib.sha256()
        faiss_cfg = {k: v for k, v in self.cfg.to_dict().items() if k in FAISS_CFG_KEYS}
        digest.update(json.dumps([index_kind, faiss_cfg, numbers], sort_keys=True).encode())
        for number in numbers:
            digest.update(read_ids(self.emb_dir, kind, number).tobytes())
        state = digest.hexdigest()
        path = self.index_dir / FAISS_FILES[kind]
        previous = store.get_meta(f"faiss_{kind}")
        if previous and previous.get("state") == state and path.is_file():
            LOG.info("%s: FAISS index up to date", kind)
            return FaissInfo.from_dict(previous["info"])
        task = self.progress.task(f"FAISS index ({kind})", None, "step")

        def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            return iterate_shards(self.emb_dir, kind, numbers)

        other = "captions" if kind == "images" else "images"
        other_numbers = sorted(store.referenced_shards(other))
        cross = (lambda: iterate_shards(self.emb_dir, other, other_numbers), store.count(other, "indexed"))
        info = write_faiss(blocks, n, self.dim, self.cfg, index_kind, path, kind, cross)  # budget.py
        with store.transaction():
            store.set_meta(**{f"faiss_{kind}": {"state": state, "info": info.to_dict()}})
        self.progress.done(task)
        return info

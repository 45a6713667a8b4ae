"""`build_index` and `update_index`: image folder -> index directory, incrementally, resumably, and
beside the generation readers use.

One run, under the writer lock, makes generation G+1 from the current generation G:

1. find G (`integrity.locate`) and verify its files against their checksums; with ``repair`` note the
   damaged ones instead of stopping;
2. check the model (loaded now: a checkpoint changed in place is refused here), folder, settings and
   FAISS kind, before anything is written: a refused run leaves everything as it was;
3. copy ``items-G.sqlite`` to ``items-(G+1).sqlite`` (or resume that copy after an interrupted run),
   delete debris of interrupted runs; repairs: rows of damaged shards become ``pending`` again, damaged
   FAISS files are rebuilt, a damaged SQLite file means a fresh start from the images;
4. scan the folder into a temp table and diff it with the rows in one transaction: new files become
   ``pending`` rows (new ids, in path order), changed files (size, mtime, then content hash) get a new
   id, deleted ones are removed;
5. embed every ``pending`` row (`pipeline.embed_images`), shard by shard: a re-run after a crash starts
   where the last committed shard ended;
6. captions: gather sidecars, the captions file and the vocabulary, embed new texts once;
7. compact shards that hold removed rows (and merge small ones) into new shards; the old ones stay for
   the generations that list them;
8. rebuild the FAISS indexes from the shards into ``{kind}-(G+1).faiss`` (skipped when nothing changed:
   the file is shared), measure recall@k;
9. checksum new shards, close the SQLite file for good, write ``manifest-(G+1).json`` and switch
   ``manifest.json`` to it (the atomic moment), remove old generations no reader holds.

A disk that fills up, a permission error or a kill at any moment leaves G readable and the run
resumable: run it again.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from counterclip._fileio import atomic_write, fsync_dir
from counterclip.calibration import Calibration
from counterclip.errors import (
    AccessDeniedError,
    DiskFullError,
    IndexDamagedError,
    IndexFormatError,
    InputError,
)
from counterclip.index_builder import captions as caption_sources
from counterclip.index_builder._fs import WriterLock
from counterclip.index_builder.budget import parse_size, write_faiss
from counterclip.index_builder.calibrate import calibration_from_pairs, fit_on_captions_file
from counterclip.index_builder.checksums import Checksum, checksum_file, mismatch
from counterclip.index_builder.config import IndexCfg, load_index_config
from counterclip.index_builder.decode import DecodeError, DecodeOptions, file_sha256, load_image
from counterclip.index_builder.faiss_index import FaissInfo, choose_factory, new_index
from counterclip.index_builder.generations import collect_garbage, published_files, remove_debris
from counterclip.index_builder.integrity import Located, expected_files, locate, verify_files
from counterclip.index_builder.manifest import (
    EMBEDDINGS_DIR,
    FORMAT_VERSION,
    GC_LOCK_NAME,
    KINDS,
    LEGACY_DB_NAME,
    LEGACY_FILES,
    LOCK_NAME,
    MANIFEST_NAME,
    Manifest,
    ModelRecord,
    Settings,
    damaged_error,
    db_name,
    faiss_name,
    manifest_generations,
    manifest_name,
    repair_hint,
)
from counterclip.index_builder.pipeline import ShardWriter, WorkItem, embed_images
from counterclip.index_builder.scan import display_path, scan_folder
from counterclip.index_builder.shards import (
    delete_shards,
    iterate_shards,
    load_shard,
    read_ids,
    shard_names,
    write_shard,
)
from counterclip.index_builder.sources import refuse_update_of_import
from counterclip.index_builder.store import Store, sqlite_error
from counterclip.models import ClipModel, ModelSpec, load_model
from counterclip.models.onnx_common import check_runtime, runtime_record
from counterclip.scores import PairScore

LOG = logging.getLogger(__name__)
DEFAULT_MODEL = "bundled:shapes"
INT8_SAMPLE = 64  # images of the folder an int8 tower is checked (and calibrated) on
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
_SQLITE_SIDECARS = ("-wal", "-shm", "-journal")


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
    resumed: bool  # this run finished an interrupted one
    seconds: float  # wall time
    images_index: dict[str, Any] = field(default_factory=dict)  # FAISS kind, parameters, recall
    captions_index: dict[str, Any] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)  # [{path, reason}] of skipped files
    warnings: list[str] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)  # scan, decode, embed, write, faiss...
    generation: int = 0  # the generation this run published
    repaired: list[str] = field(default_factory=list)  # damaged files rebuilt (update --repair)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        recall_k = self.images_index.get("recall_k", 10)
        recall = self.images_index.get(f"recall_at_{recall_k}")
        lines = [
            f"index {self.index_dir} <- {self.root}",
            f"  model      {self.model} ({self.fingerprint[:12]})",
            f"  images     {self.indexed} indexed, {self.skipped} skipped",
            f"  this run   {self.embedded} embedded, {self.added} new, {self.changed} changed,"
            f" {self.removed} removed, {self.unchanged} unchanged" + (" (resumed)" if self.resumed else ""),
            f"  captions   {self.captions} ({self.captions_embedded} embedded this run)",
            f"  faiss      {self.images_index.get('factory')} {self.images_index.get('search_params') or ''}"
            + (f" recall@{recall_k} {recall:.3f}" if recall is not None else ""),
            f"  generation {self.generation}"
            + (f" (repaired {', '.join(self.repaired)})" if self.repaired else ""),
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
    runtime: str | None = None,
    precision: str | None = None,
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
        runtime: ``torch`` or ``onnx`` (extra ``onnx``): what embeds the images and captions; recorded in
            the manifest. Default: None (the recorded one for an existing index, else ``torch``).
        precision: ``onnx`` only: ``fp32``, ``int8-dynamic`` or ``int8-static`` for the image tower; int8 is
            checked (and static calibrated) on up to 64 of the folder's images and refused, with nothing
            written, when it misses the bars. Default: None (``fp32``, or the recorded one).

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
    check_runtime(runtime, precision)
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
    builder.runtime_arg, builder.precision_arg = runtime, precision
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
    repair: bool = False,
    user_calibration: Calibration | None = None,
    runtime: str | None = None,
    precision: str | None = None,
) -> BuildSummary:
    """Bring an index up to date with its recorded folder (or finish an interrupted build), as a new
    generation beside the one readers use.

    New files are added, changed ones re-embedded, deleted ones removed from every structure; ids are
    never reused. Arguments left as None keep the recorded settings (model spec, caption files, index
    kind, config); see `build_index` for their meaning. Every file of the current generation is
    verified first: a damaged one stops the update with an `IndexDamagedError` naming it, unless
    ``repair`` is set.

    Args:
        repair: rebuild what is damaged instead of stopping: FAISS files from the shards, shards from
            the images, the SQLite file from the images; the result equals a clean build. Default: False.
        user_calibration: a calibration to record with the new generation (``counterclip calibrate``);
            later updates keep it. Default: None (keep the recorded one).
        runtime, precision: as in `build_index`. Default: None (the recorded runtime and precision).

    Examples::

        >>> update_index("photos.idx", progress=False).added
        12
        >>> update_index("photos.idx", repair=True, progress=False).repaired
        ['images-000003.faiss']
    """
    index_dir = Path(index_dir)
    if not _looks_like_index(index_dir):
        raise IndexFormatError(
            f"no index at {index_dir} (run `counterclip build FOLDER --index {index_dir}` first)"
        )
    check_runtime(runtime, precision)
    overrides = {"batch_size": batch_size, "workers": workers}
    builder = _Builder(
        index_dir, None, model, captions, vocab, device, index_kind, config, overrides, progress, repair
    )
    builder.user_calibration = user_calibration
    builder.runtime_arg, builder.precision_arg = runtime, precision
    return builder.run()


def calibrate_index(
    index_dir: str | os.PathLike[str], captions: str | os.PathLike[str], model: ClipModel
) -> Calibration:
    """Fit a calibration on a captions file (``path,caption`` CSV or JSONL) and record it in the index.

    The captions are encoded with ``model`` (which must be the index's: same fingerprint) and are not
    added to the index. The calibration is recorded by an update (a new generation: readers of the
    current one are not disturbed), replaces any earlier one and is kept by later updates.

    Raises:
        InputError: a missing or malformed captions file, too few of its paths in the index.
        IndexFormatError: not an index, or built with another model.
    """
    calibration = fit_on_captions_file(index_dir, captions, model)
    update_index(index_dir, model=model, progress=False, user_calibration=calibration)
    return calibration


def _looks_like_index(index_dir: Path) -> bool:
    """A manifest, a generation or an items file (of this format or the first) is there."""
    if not index_dir.is_dir():
        return False
    return (
        (index_dir / MANIFEST_NAME).exists()
        or bool(manifest_generations(index_dir))
        or any(index_dir.glob("items-*.sqlite"))
        or (index_dir / LEGACY_DB_NAME).exists()
    )


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


class _MetaView:
    """The recorded settings a run is checked against before anything is written: read from the work
    in progress, the current generation's items file, or (when that is damaged) its manifest."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    def get_meta(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    @classmethod
    def from_db(cls, path: Path, published: bool) -> _MetaView:
        """All meta values of an items file (``published``: immutable, opened without locks)."""
        if published:
            conn = Store(path, readonly=True).conn
        else:
            conn = sqlite3.connect(path)
        try:
            return cls({k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")})
        finally:
            conn.close()

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> _MetaView:
        """The settings a manifest records (to rebuild an index whose items file is damaged)."""
        settings = manifest.settings
        return cls(
            {
                "root": manifest.root,
                "model_spec": manifest.model.spec.to_dict(),
                "fingerprint": manifest.model.fingerprint,
                "embed_dim": manifest.model.embed_dim,
                "config": settings.config or None,
                "captions_file": settings.captions_file,
                "vocab_file": settings.vocab_file,
                "index_kind": settings.index_kind,
                "decode": settings.decode or None,
                "created": manifest.created,
                "runtime": manifest.model.runtime,
            }
        )


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
        repair: bool = False,
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
        self.repair = repair
        self.emb_dir = self.index_dir / EMBEDDINGS_DIR
        self.warnings: list[str] = []
        self.stage: dict[str, float] = {}
        self.started = time.perf_counter()
        self._model: ClipModel | None = None
        self._score: PairScore | None = None
        self.spec: ModelSpec | None = None
        self.fingerprint = ""
        self.dim = 0
        self.base_gen = 0  # the generation the run starts from (0: none yet)
        self.work_gen = 0
        self.work_path: Path | None = None
        self.published: set[str] = set()  # files some manifest lists (never deleted by this run)
        self.verified: set[str] = set()  # files of the base generation whose checksums matched
        self._items_estimate = 0  # vectors the run will hold (for the disk-full message)
        self._base_bytes = 0
        self.user_calibration: Calibration | None = None  # one `counterclip calibrate` fitted
        self.embedder: Any = embed_images
        self.runtime_arg: str | None = None  # torch | onnx (None: the recorded one, else torch)
        self.precision_arg: str | None = None  # onnx precision (None: the recorded one, else fp32)
        self._encoder: Any = None  # what embeds: the model (torch) or an OnnxEncoder over it

    # --- entry ----------------------------------------------------------------------------------
    def run(self) -> BuildSummary:
        started = self.started = time.perf_counter()
        self._check_directory()
        try:
            self.index_dir.mkdir(parents=True, exist_ok=True)
            with WriterLock(self.index_dir), self.progress:
                summary = self._run()
        except OSError as exc:
            raise self._os_error(exc) from None
        except sqlite3.Error as exc:
            error = sqlite_error(exc, self.work_path or self.index_dir / "items.sqlite")
            if isinstance(error, DiskFullError):
                error = self._disk_full(str(exc))
            raise error from None
        summary.seconds = round(time.perf_counter() - started, 3)
        return summary

    def _check_directory(self) -> None:
        """Refuse to build into a non-empty directory that is not an index (never clobber user files)."""
        if not self.index_dir.exists():
            self._load_model_first()
            return
        if not self.index_dir.is_dir():
            raise InputError(f"index path {self.index_dir} exists and is not a directory")
        if _looks_like_index(self.index_dir):
            return
        ours = (LOCK_NAME, GC_LOCK_NAME, EMBEDDINGS_DIR)
        foreign = [
            p.name
            for p in self.index_dir.iterdir()
            if p.name not in ours and ".tmp" not in p.name  # debris
        ]
        if foreign:
            raise InputError(
                f"{self.index_dir} is not empty and is not a counterclip index (found {sorted(foreign)[:3]}); "
                "choose a new or empty --index directory"
            )

    # --- errors of the storage ------------------------------------------------------------------
    def _os_error(self, exc: OSError) -> Exception:
        """A one-line error for a failed write or read of the index (the run stays resumable)."""
        where = exc.filename or self.index_dir
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return self._disk_full(f"writing {where}")
        if exc.errno in (errno.EACCES, errno.EPERM):
            return AccessDeniedError(
                f"index {self.index_dir}: permission denied on {where}; run as a user who may write the index"
            )
        if exc.errno == errno.EROFS:
            return AccessDeniedError(f"index {self.index_dir} is on a read-only file system ({where})")
        return exc

    def _disk_full(self, what: str) -> DiskFullError:
        try:
            free = shutil.disk_usage(self.index_dir).free
        except OSError:
            free = 0
        need = self._space_needed()
        base = self.base_gen
        if base > 0:
            then = (
                f"generation {base} stays readable; free space and run `counterclip update {self.index_dir}`"
            )
        else:
            then = "free space and run the same build again"
        return DiskFullError(
            f"disk full: index {self.index_dir} needs about {_mb(need)} MB for this run, {_mb(free)} MB "
            f"are free ({what}); {then} to resume"
        )

    def _space_needed(self) -> int:
        """What a run writes, roughly: the items file copy, shards and FAISS files for every vector
        (plus room to compact), about 1 kB of SQLite per item, and SQLite's write-ahead log (twice the
        rows written, at most 4 MB between checkpoints)."""
        dim = self.dim or 512
        items = self._items_estimate
        wal = min(4 << 20, 2000 * items + (64 << 10))
        return int(self._base_bytes * 1.1 + items * (2.2 * (4 * dim + 8) + 1000) + wal)

    def _load_model_first(self) -> None:
        """A new index: load the model before the directory exists, so a model that cannot be loaded
        (no network, no GPU, a bad checkpoint) leaves no half-made index behind."""
        if not isinstance(self.model_arg, ClipModel):
            arg = DEFAULT_MODEL if self.model_arg is None else self.model_arg
            self.model_arg = load_model(arg, device=self.device)
        if self.root is not None:  # an export or an int8 check that fails leaves no directory either
            cfg = load_index_config(self.config_arg, **self.overrides)
            self._prepare_encoder(
                self.model_arg, {}, self.root, cfg, _fresh_decode_options(cfg, self.model_arg)
            )

    # --- settings -------------------------------------------------------------------------------
    def _resolve(self, meta: _MetaView) -> tuple[Path, IndexCfg]:
        refuse_update_of_import(self.index_dir, meta.get_meta("imported_from"))  # interop.py
        recorded_root = meta.get_meta("root")
        if self.root is None:
            if recorded_root is None:
                raise IndexFormatError(
                    f"index {self.index_dir} records no image folder yet (its first build stopped early); "
                    f"run `counterclip build FOLDER --index {self.index_dir}` again"
                )
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
        recorded_spec = meta.get_meta("model_spec")
        recorded_fp = meta.get_meta("fingerprint")
        if self.model_arg is None and recorded_fp is not None:
            self.spec = ModelSpec.from_dict(recorded_spec)
            self.fingerprint = recorded_fp
            self.dim = int(meta.get_meta("embed_dim"))
            recorded_score = meta.get_meta("pair_score")
            self._score = PairScore.from_dict(recorded_score) if recorded_score else None
            self.model  # noqa: B018 - load now: weights changed in place are refused before any write
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
        recorded_cfg = meta.get_meta("config")
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
        """The model (an update with the recorded spec loads it while checking, before any write)."""
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

    def _caption_file(self, meta: _MetaView, key: str, arg: str | os.PathLike[str] | None) -> Path | None:
        if arg is not None and str(arg) != "":
            path = Path(arg).expanduser().resolve()
            if not path.is_file():
                raise InputError(f"{key.replace('_', ' ')} {path} does not exist")
            return path
        if arg is not None:  # "" clears the recorded file
            return None
        recorded = meta.get_meta(key)
        if recorded is None:
            return None
        path = Path(recorded)
        if not path.is_file():
            self.warnings.append(
                f"{key.replace('_', ' ')} {path} recorded in the index is gone; its captions were removed"
            )
            return None
        return path

    def _decode_options(self, meta: _MetaView, cfg: IndexCfg) -> DecodeOptions:
        """How files are decoded: fixed when the index is created, so every vector is made the same way."""
        recorded = meta.get_meta("decode")
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
        return _fresh_decode_options(cfg, self.model)

    # --- the encoder ----------------------------------------------------------------------------
    def _prepare_encoder(
        self, model: ClipModel, recorded: dict[str, Any], root: Path, cfg: IndexCfg, decode: DecodeOptions
    ) -> None:
        """Choose the runtime (asked, else ``recorded``, else torch) and make its encoder ready: ONNX towers
        exported and checked, an int8 tower checked on the folder's own images, before anything is written."""
        if self._encoder is not None:
            return
        runtime = self.runtime_arg or str(recorded.get("runtime", "torch"))
        precision = self.precision_arg or (
            str(recorded.get("precision", "fp32")) if self.runtime_arg is None else "fp32"
        )
        if runtime == "torch":
            self._encoder = model
            self._runtime = runtime_record(None, _torch_version())
            return
        check_runtime(runtime, precision)
        from counterclip.models.onnx_runtime import OnnxEncoder

        sample = self._int8_sample(model, root, decode) if precision != "fp32" else None
        encoder = OnnxEncoder(model, precision=precision, sample=sample, check_batch_size=cfg.batch_size)
        for tower in ("image", "text"):
            encoder.session(tower)  # export, check (and quantise) now
        self._encoder = encoder
        self._runtime = encoder.manifest_record()

    def _int8_sample(self, model: ClipModel, root: Path, decode: DecodeOptions) -> Any:
        """Preprocessed pixels of up to `INT8_SAMPLE` of the folder's images, evenly spread in path order."""
        import torch

        paths = [e.rel for e in scan_folder(root, exclude=(self.index_dir,)) if e.error is None]
        paths.sort()
        step = max(1, len(paths) // INT8_SAMPLE)
        pixels = []
        for rel in paths[::step]:
            try:
                pixels.append(model.preprocess(load_image(root / rel, decode).image))
            except DecodeError:
                continue
            if len(pixels) == INT8_SAMPLE:
                break
        h, w = model.vision_geometry.image_size
        return torch.stack(pixels) if pixels else torch.zeros(0, 3, h, w)

    @property
    def encoder(self) -> Any:
        """What embeds this run's images and captions (prepared while checking, before any write)."""
        assert self._encoder is not None
        return self._encoder

    def _runtime_entry(self, recorded: dict[str, Any] | None, had_vectors: bool) -> dict[str, Any]:
        """This run's runtime record; when earlier vectors came from another runtime, its tolerance is the
        lower of both (the index holds vectors of each)."""
        entry = dict(self._runtime)
        if had_vectors and recorded:
            mine = f"{entry['runtime']}/{entry['precision']}"
            before = recorded.get("embedded_with") or [f"{recorded['runtime']}/{recorded['precision']}"]
            if {*before, mine} != {mine}:
                entry["embedded_with"] = sorted({*before, mine})
            entry["tolerance_cosine"] = min(
                float(entry["tolerance_cosine"]), float(recorded.get("tolerance_cosine", 1.0))
            )
        return entry

    def _check_index_kind(self, index_kind: str) -> None:
        """A FAISS factory string that cannot work is refused before anything is written."""
        if index_kind != "auto":
            _, factory = choose_factory(0, self.dim, self.cfg, index_kind)
            new_index(self.dim, factory)

    # --- 1. where the index stands ----------------------------------------------------------------
    def _verify_base(self, located: Located) -> dict[str, str]:
        """Verify every file of the generation the run starts from: ``{name: reason}`` of the damaged
        ones (with ``repair``); without it, the first damaged file stops the run."""
        if located.legacy:
            return {}
        expected = expected_files(self.index_dir, located) if located.generation else {}
        damage = dict(located.problems)
        damage.update(verify_files(self.index_dir, expected))
        if damage == {MANIFEST_NAME: "missing"} and located.manifest is not None:
            # A newest generation complete in every file, only the switch missing (a run killed between
            # its two manifest writes, or the file deleted): publishing it again is all there is to do.
            atomic_write(self.index_dir / MANIFEST_NAME, located.manifest.text())
            self.warnings.append(
                f"manifest.json was missing; restored from {manifest_name(located.generation)}"
            )
            damage = {}
        self.verified = {name for name in expected if name not in damage}
        self._base_bytes = sum(c.size for c in expected.values() if c is not None)
        if located.manifest is not None:
            self._items_estimate = sum(int(i.get("ntotal", 0)) for i in located.manifest.faiss.values())
        if damage and not self.repair:
            name, reason = sorted(damage.items())[0]
            error = damaged_error(self.index_dir, name, reason)
            if len(damage) > 1:
                error = IndexDamagedError(
                    f"{str(error).split('; run ')[0]} (and {len(damage) - 1} more damaged file(s)); "
                    f"{repair_hint(self.index_dir)}",
                    file=name,
                    reason=reason,
                )
            raise error
        return damage

    def _meta_view(self, located: Located, resume: bool, rebuild_all: bool) -> _MetaView:
        assert self.work_path is not None
        if resume:
            return _MetaView.from_db(self.work_path, published=False)
        if located.legacy:
            return _MetaView.from_db(self.index_dir / LEGACY_DB_NAME, published=False)
        if located.db_file is not None and not rebuild_all:
            return _MetaView.from_db(self.index_dir / located.db_file, published=True)
        if located.manifest is not None:
            return _MetaView.from_manifest(located.manifest)
        if located.generation:
            raise IndexDamagedError(
                f"index {self.index_dir} cannot be repaired: its items file and every manifest are damaged; "
                f"remove it and build again (`counterclip build FOLDER --index {self.index_dir}`)"
            )
        return _MetaView({})

    def _work_base(self, path: Path) -> int | None:
        """The generation an items file in progress was copied from (None if it cannot say)."""
        try:
            conn = sqlite3.connect(path)
            try:
                row = conn.execute("SELECT value FROM meta WHERE key = 'base_generation'").fetchone()
            finally:
                conn.close()
            return int(json.loads(row[0])) if row else None
        except (sqlite3.Error, ValueError, TypeError):
            return None

    def _discard(self, path: Path) -> None:
        """Remove an items file in progress that cannot be resumed (and its WAL)."""
        for suffix in ("", *_SQLITE_SIDECARS, ".tmp"):
            (path.parent / (path.name + suffix)).unlink(missing_ok=True)

    def _create_work_db(self, located: Located, rebuild_all: bool) -> None:
        """``items-(G+1).sqlite``: a copy of G's (or a fresh file), made under a temp name and renamed."""
        assert self.work_path is not None
        tmp = self.work_path.with_name(self.work_path.name + ".tmp")
        for suffix in ("", *_SQLITE_SIDECARS):  # a copy killed half-way
            tmp.with_name(tmp.name + suffix).unlink(missing_ok=True)
        dst = sqlite3.connect(tmp)
        try:
            source = None
            if located.legacy:
                source = sqlite3.connect(f"file:{self.index_dir / LEGACY_DB_NAME}?mode=ro", uri=True)
            elif located.db_file is not None and not rebuild_all:
                source = Store(self.index_dir / located.db_file, readonly=True).conn
            if source is not None:
                try:
                    source.backup(dst)
                finally:
                    source.close()
            dst.executescript("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);")
            values = {"base_generation": located.generation}
            for kind in KINDS:  # a shard number is never used twice, even after a fresh start
                row = dst.execute("SELECT value FROM meta WHERE key = ?", (f"next_shard_{kind}",)).fetchone()
                recorded = int(json.loads(row[0])) if row else 0
                values[f"next_shard_{kind}"] = max(recorded, self._highest_shard_on_disk(kind) + 1)
            dst.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in values.items()],
            )
            dst.commit()
        finally:
            dst.close()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.work_path)
        fsync_dir(self.index_dir)

    def _highest_shard_on_disk(self, kind: str) -> int:
        highest = -1
        if self.emb_dir.is_dir():
            for path in self.emb_dir.glob(f"{kind}-*.npy"):
                head = path.name[len(kind) + 1 :].split(".")[0]
                if head.isdigit():
                    highest = max(highest, int(head))
        return highest

    def _remove_debris(self, store: Store) -> None:
        assert self.work_path is not None
        keep = {self.work_path.name}
        for kind in KINDS:
            for number in store.referenced_shards(kind):
                keep.update(shard_names(kind, number))
            previous = store.get_meta(f"faiss_{kind}") or {}
            if previous.get("file"):
                keep.add(previous["file"])
                keep.update(previous.get("extra_files") or {})
        remove_debris(self.index_dir, keep)

    def _apply_repairs(self, store: Store, damage: dict[str, str]) -> None:
        """Make the next steps rebuild what is damaged: rows of damaged shards are embedded again,
        damaged FAISS files are rebuilt (manifests are written anew anyway)."""
        with store.transaction() as conn:
            for name in damage:
                for kind in KINDS:
                    faiss_meta = store.get_meta(f"faiss_{kind}") or {}
                    if faiss_meta.get("file") == name or name in (faiss_meta.get("extra_files") or {}):
                        conn.execute("DELETE FROM meta WHERE key = ?", (f"faiss_{kind}",))
                    prefix = f"{EMBEDDINGS_DIR}/{kind}-"
                    if name.startswith(prefix):
                        number = int(name[len(prefix) :].split(".")[0])
                        conn.execute(
                            f"UPDATE {kind} SET status = 'pending', shard = NULL, row = NULL "
                            "WHERE status = 'indexed' AND shard = ?",
                            (number,),
                        )
                        store.drop_file_checksums(shard_names(kind, number))
        for name, reason in sorted(damage.items()):
            LOG.warning("%s: repairing %s (%s)", self.index_dir, name, reason)

    # --- the run --------------------------------------------------------------------------------
    def _run(self) -> BuildSummary:
        located = locate(self.index_dir)
        damage = self._verify_base(located)
        self.base_gen = located.generation
        self.work_gen = located.generation + 1
        if self.repair:  # never reuse the number of a generation whose manifest is damaged
            self.work_gen = max([self.work_gen - 1, *manifest_generations(self.index_dir)]) + 1
        self.work_path = self.index_dir / db_name(self.work_gen)
        base_db = located.db_file
        rebuild_all = self.repair and located.generation > 0 and (base_db is None or base_db in damage)
        resume = (
            not self.repair
            and self.work_path.exists()
            and self._work_base(self.work_path) == located.generation
        )

        # --- checks before changes: nothing is written until they pass
        meta = self._meta_view(located, resume, rebuild_all)
        root, cfg = self._resolve(meta)
        self.cfg = cfg
        captions_file = self._caption_file(meta, "captions_file", self.captions_arg)
        vocab_file = self._caption_file(meta, "vocab_file", self.vocab_arg)
        index_kind = self.index_kind_arg or meta.get_meta("index_kind") or "auto"
        self._check_index_kind(index_kind)
        self.decode = self._decode_options(meta, cfg)
        self._recorded_runtime = meta.get_meta("runtime")
        self._prepare_encoder(self.model, self._recorded_runtime or {}, root, cfg, self.decode)
        created = meta.get_meta("created") or _now()

        # --- from here on files are written, none that a reader of the current generation uses
        self.emb_dir.mkdir(exist_ok=True)
        if not resume:
            self._discard(self.work_path)
            self._create_work_db(located, rebuild_all)
        self.published = published_files(self.index_dir)
        store = Store(self.work_path)
        try:
            self._remove_debris(store)
            if damage and not rebuild_all:
                self._apply_repairs(store, damage)
            summary = self._build(store, root, created, captions_file, vocab_file, index_kind, resume)
        finally:
            store.close()
        if located.legacy:
            for name in LEGACY_FILES:
                for suffix in ("", *_SQLITE_SIDECARS):
                    (self.index_dir / (name + suffix)).unlink(missing_ok=True)
            fsync_dir(self.index_dir)
        try:
            collect_garbage(self.index_dir)
            remove_debris(self.index_dir, keep=())  # files only an unreadable old manifest listed
        except OSError as exc:
            LOG.warning("%s: old generations were not removed (%s)", self.index_dir, exc)
        summary.repaired = sorted(damage)
        return summary

    def _build(
        self,
        store: Store,
        root: Path,
        created: str,
        captions_file: Path | None,
        vocab_file: Path | None,
        index_kind: str,
        resumed: bool,
    ) -> BuildSummary:
        t0 = time.perf_counter()
        self._runtime_final = self._runtime_entry(self._recorded_runtime, self.base_gen > 0)
        sidecars: list[tuple[str, str]] = []
        self._scan_to_temp(store, root, sidecars)
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
                config=self.cfg.to_dict(),
                decode=dataclasses.asdict(self.decode),
                created=created,
                runtime=self._runtime_final,
            )
            if self.user_calibration is not None:
                store.set_meta(user_calibration=self.user_calibration.to_dict())
            diff = self._apply_diff(store, root)
        self.stage["scan"] = time.perf_counter() - t0
        self._items_estimate = diff["scanned"] + store.count("captions", "indexed")

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
            "repair": self.repair,
            **diff,
            "stage_seconds": {k: round(v, 3) for k, v in self.stage.items()},
            "warnings": list(self.warnings),
            "seconds": round(time.perf_counter() - self.started, 3),
        }
        errors = store.errors()
        files = self._finalize(store, last_run)
        manifest = Manifest(
            generation=self.work_gen,
            created=created,
            updated=last_run["finished"],
            root=str(root),
            model=ModelRecord(
                self.spec,
                self.fingerprint,
                self.dim,
                self.pair_score.to_dict(),
                self._runtime_final,
            ),
            counts=counts,
            faiss={kind: {**info.to_dict(), "file": self._faiss_files[kind]} for kind, info in infos.items()},
            settings=Settings(
                captions_file=str(captions_file) if captions_file else None,
                vocab_file=str(vocab_file) if vocab_file else None,
                index_kind=index_kind,
                config=self.cfg.to_dict(),
                decode=dataclasses.asdict(self.decode),
            ),
            last_run=last_run,
            calibration=calibration.to_dict() if calibration is not None else None,
            files={name: checksum.to_dict() for name, checksum in sorted(files.items())},
        )
        manifest.write(self.index_dir)  # the switch: readers opening from now on see this generation
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
            errors=[{"path": e["path"], "reason": e["reason"]} for e in errors],
            warnings=self.warnings,
            stage_seconds={k: round(v, 3) for k, v in self.stage.items()},
            generation=self.work_gen,
        )

    def _finalize(self, store: Store, last_run: dict[str, Any]) -> dict[str, Checksum]:
        """Checksum the shards new in this generation (after checking them against their rows), record
        the generation, close the items file for good; returns every file of the generation."""
        assert self.work_path is not None
        recorded = store.file_checksums()
        files: dict[str, Checksum] = {}
        new: dict[str, Checksum] = {}
        for kind in KINDS:
            for number in sorted(store.referenced_shards(kind)):
                names = shard_names(kind, number)
                if all(name in recorded for name in names):
                    files.update({name: recorded[name] for name in names})
                    continue
                _, ids = load_shard(self.emb_dir, kind, number)  # shape and unit norms
                rows = store.conn.execute(
                    f"SELECT id, row FROM {kind} WHERE status = 'indexed' AND shard = ?", (number,)
                ).fetchall()
                if any(row >= len(ids) or ids[row] != item_id for item_id, row in rows):
                    raise damaged_error(
                        self.index_dir, names[1], f"its ids disagree with {self.work_path.name}"
                    )
                for name in names:
                    new[name] = files[name] = checksum_file(self.index_dir / name)
        self._faiss_files = {}
        for kind in KINDS:
            faiss_meta = store.get_meta(f"faiss_{kind}")
            self._faiss_files[kind] = faiss_meta["file"]
            files[faiss_meta["file"]] = Checksum.from_dict(faiss_meta["checksum"])
            for extra, checksum in (faiss_meta.get("extra_files") or {}).items():
                files[extra] = Checksum.from_dict(checksum)
        with store.transaction():
            store.set_file_checksums(new)
            store.drop_file_checksums(set(recorded) - set(files))
            store.set_meta(generation=self.work_gen, last_run=last_run)
        store.finalize()
        files[self.work_path.name] = checksum_file(self.work_path)
        return files

    # --- 4. scan + diff -------------------------------------------------------------------------
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
        self._items_estimate = max(self._items_estimate, int(scanned))  # for a disk-full message
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

    # --- 5. images --------------------------------------------------------------------------------
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
            self.encoder,
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

    # --- 6. captions ------------------------------------------------------------------------------
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
                vectors = np.asarray(self.encoder.encode_texts([t for _, t in chunk], batch_size=step))
                writer.add(vectors, [int(i) for i, _ in chunk], [{} for _ in chunk])
                self.progress.advance(task, len(chunk))
            writer.close()
        self.stage["captions"] = time.perf_counter() - t0
        return len(pending)

    # --- 7. compaction ----------------------------------------------------------------------------
    def _compact(self, store: Store, kind: str) -> None:
        """Rewrite shards holding removed rows, and merge small shards, so every shard is fully live.

        The rows move to new shards; old shards that a published generation lists stay for it (they
        leave with it), those written by this run are deleted now.
        """
        live = store.referenced_shards(kind)
        sums = store.file_checksums()
        lengths = {n: len(read_ids(self.emb_dir, kind, n, sums)) for n in live}
        dirty = {n for n in live if live[n] < lengths[n]}
        small = {n for n in live if live[n] < self.cfg.shard_size // 2}
        rewrite = sorted(dirty | (small if len(small | dirty) >= 2 else set()))
        if not rewrite:
            return
        rows = store.live_rows(kind, rewrite)
        number = int(store.get_meta(f"next_shard_{kind}", 0))
        moves: list[tuple[int, int, int]] = []
        new_sums: dict[str, Checksum] = {}
        buffer_vectors: list[np.ndarray] = []
        buffer_ids: list[int] = []

        def flush() -> None:
            nonlocal number
            if not buffer_ids:
                return
            new_sums.update(
                write_shard(
                    self.emb_dir, kind, number, np.concatenate(buffer_vectors), np.asarray(buffer_ids)
                )
            )
            moves.extend((i, number, r) for r, i in enumerate(buffer_ids))
            number += 1
            buffer_vectors.clear(), buffer_ids.clear()

        by_shard: dict[int, list[tuple[int, int]]] = {}
        for item_id, shard, row in rows:
            by_shard.setdefault(shard, []).append((item_id, row))
        for shard in rewrite:
            picked = by_shard.get(shard, [])
            vectors = load_shard(self.emb_dir, kind, shard, sums)[0] if picked else None
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
            store.set_file_checksums(new_sums)
            store.drop_file_checksums([name for n in rewrite for name in shard_names(kind, n)])
        unpublished = [n for n in rewrite if shard_names(kind, n)[0] not in self.published]
        delete_shards(self.emb_dir, kind, unpublished)
        LOG.info("compacted %d %s shard(s) into %d", len(rewrite), kind, len(set(m[1] for m in moves)))

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

    # --- 8. FAISS ---------------------------------------------------------------------------------
    def _faiss(self, store: Store, kind: str, index_kind: str) -> FaissInfo:
        numbers = sorted(store.referenced_shards(kind))
        sums = store.file_checksums()
        n = store.count(kind, "indexed")
        digest = hashlib.sha256()
        faiss_cfg = {k: v for k, v in self.cfg.to_dict().items() if k in FAISS_CFG_KEYS}
        digest.update(json.dumps([index_kind, faiss_cfg, numbers], sort_keys=True).encode())
        for number in numbers:
            digest.update(read_ids(self.emb_dir, kind, number, sums).tobytes())
        state = digest.hexdigest()
        previous = store.get_meta(f"faiss_{kind}") or {}
        name = previous.get("file")
        if previous.get("state") == state and name and previous.get("checksum"):
            path = self.index_dir / name
            if name in self.verified or mismatch(path, Checksum.from_dict(previous["checksum"])) is None:
                LOG.info("%s: FAISS index up to date (%s)", kind, name)
                return FaissInfo.from_dict(previous["info"])
        task = self.progress.task(f"FAISS index ({kind})", None, "step")

        def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            return iterate_shards(self.emb_dir, kind, numbers, checksums=sums)

        other = "captions" if kind == "images" else "images"
        other_numbers = sorted(store.referenced_shards(other))
        cross = (
            lambda: iterate_shards(self.emb_dir, other, other_numbers, checksums=sums),
            store.count(other, "indexed"),
        )
        name = faiss_name(kind, self.work_gen)
        info = write_faiss(blocks, n, self.dim, self.cfg, index_kind, self.index_dir / name, kind, cross)
        # the on-disk inverted lists (budget.py) are files of this generation too: listed and checksummed
        extra = {f: checksum_file(self.index_dir / f).to_dict() for f in info.memory.get("files", [])[1:]}
        with store.transaction():
            store.set_meta(
                **{
                    f"faiss_{kind}": {
                        "state": state,
                        "info": info.to_dict(),
                        "file": name,
                        "checksum": checksum_file(self.index_dir / name).to_dict(),
                        "extra_files": extra,
                    }
                }
            )
        self.progress.done(task)
        return info


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f}"


def _fresh_decode_options(cfg: IndexCfg, model: ClipModel) -> DecodeOptions:
    """The decode options a new index fixes: the recipe's limits, JPEG scaling to the model's input side."""
    side = min(model.vision_geometry.image_size) if cfg.downscale else None
    return DecodeOptions(cfg.max_pixels, cfg.max_side, cfg.max_file_bytes, side)


def _torch_version() -> str:
    import torch

    return torch.__version__

"""What the stages of one build or update share: the request, and the run's bookkeeping.

`BuildRequest` is what the caller asked for (frozen); `BuildState` is what the run has learnt and
must tell every stage: where it writes (the generation it starts from and the one it makes), which
files it must never delete, its warnings and stage timings, and enough of its size to say, when the
disk fills up, how much room it needs (`BuildState.os_error`).
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from counterclip.calibration import Calibration
from counterclip.errors import AccessDeniedError, DiskFullError
from counterclip.index_builder.manifest import EMBEDDINGS_DIR
from counterclip.index_builder.progress import Progress
from counterclip.index_builder.store import sqlite_error


@dataclass(frozen=True)
class BuildRequest:
    """The arguments of `build_index` / `update_index` (None: the recorded value, else the default)."""

    index_dir: Path  # the index directory (absolute)
    root: Path | None  # the image folder (None: the recorded one)
    model: Any  # a spec string, `ModelSpec` or loaded `ClipModel` (None: the recorded spec)
    captions: Any  # captions file path ("" clears the recorded one)
    vocab: Any  # vocabulary file path ("" clears the recorded one)
    device: str  # for a model given as a spec
    index_kind: str | None  # "auto" or a FAISS factory string for the images
    config: Any  # an `IndexCfg`, a recipe name or a JSON path
    overrides: dict[str, Any]  # IndexCfg fields given as arguments (batch_size, workers, memory_budget)
    progress: bool  # show a progress display
    repair: bool = False  # rebuild damaged files instead of stopping
    user_calibration: Calibration | None = None  # to record with the new generation
    runtime: str | None = None  # torch | onnx
    precision: str | None = None  # onnx precision
    embedder: Any = None  # what embeds the pending images (None: `pipeline.embed_images`)
    decode_check: dict[str, Any] | None = None  # a new index's fast decode, measured (`parity`)
    store: str | None = None  # a vector store to fill after the build (`stores.publish`)


@dataclass
class BuildState:
    """The bookkeeping one run shares between its stages."""

    index_dir: Path  # the index directory (absolute), or an import's work directory
    progress: Progress
    repair: bool = False
    warnings: list[str] = field(default_factory=list)  # for the summary and the manifest
    stage: dict[str, float] = field(default_factory=dict)  # seconds per stage, in the order they ran
    started: float = field(default_factory=time.perf_counter)
    base_gen: int = 0  # the generation the run starts from (0: none yet)
    work_gen: int = 0  # the generation it makes
    work_path: Path | None = None  # items-(work_gen).sqlite
    published: set[str] = field(default_factory=set)  # files some manifest lists (never deleted by this run)
    verified: set[str] = field(default_factory=set)  # files of the base generation whose checksums matched
    dim: int = 0  # the embedding width, once the model is known
    items_estimate: int = 0  # vectors the run will hold (for the disk-full message)
    base_bytes: int = 0  # size of the base generation's files

    @property
    def emb_dir(self) -> Path:
        """Where the shards live."""
        return self.index_dir / EMBEDDINGS_DIR

    def stage_seconds(self) -> dict[str, float]:
        """Seconds per stage so far, to the millisecond (for the summary and the manifest)."""
        return {k: round(v, 3) for k, v in self.stage.items()}

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Record the seconds the block takes as stage ``name``."""
        t0 = time.perf_counter()
        yield
        self.stage[name] = time.perf_counter() - t0

    # --- errors of the storage ----------------------------------------------------------------------
    def os_error(self, exc: OSError) -> Exception:
        """A one-line error for a failed write or read of the index (the run stays resumable)."""
        where = exc.filename or self.index_dir
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return self.disk_full(f"writing {where}")
        if exc.errno in (errno.EACCES, errno.EPERM):
            return AccessDeniedError(
                f"index {self.index_dir}: permission denied on {where}; run as a user who may write the index"
            )
        if exc.errno == errno.EROFS:
            return AccessDeniedError(f"index {self.index_dir} is on a read-only file system ({where})")
        return exc

    def sqlite_error(self, exc: sqlite3.Error) -> Exception:
        """A one-line error for a failed SQLite call (a full disk says how much room the run needs)."""
        error = sqlite_error(exc, self.work_path or self.index_dir / "items.sqlite")
        if isinstance(error, DiskFullError):
            error = self.disk_full(str(exc))
        return error

    def disk_full(self, what: str) -> DiskFullError:
        """The disk-full error: what the run needs, what is free, how to resume."""
        try:
            free = shutil.disk_usage(self.index_dir).free
        except OSError:
            free = 0
        need = self.space_needed()
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

    def space_needed(self) -> int:
        """What a run writes, roughly: the items file copy, shards and FAISS files for every vector
        (plus room to compact), about 1 kB of SQLite per item, and SQLite's write-ahead log (twice the
        rows written, at most 4 MB between checkpoints)."""
        dim = self.dim or 512
        items = self.items_estimate
        wal = min(4 << 20, 2000 * items + (64 << 10))
        return int(self.base_bytes * 1.1 + items * (2.2 * (4 * dim + 8) + 1000) + wal)


def now() -> str:
    """The time recorded in manifests: UTC, ISO 8601, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f}"

"""The embedding pipeline: reader -> mapper -> model -> writer.

- reader: the work items (id, absolute path) of rows still ``pending`` in ``items.sqlite``;
- mapper (`DecodeMapper`): read, hash and decode one file in a worker thread (Pillow releases the GIL),
  returning a fixed-key dict; a bounded window keeps ``prefetch_batches`` batches ready while the model
  runs on the current one, so memory depends on the batch size, not on the number of images;
- model: the model's own preprocessing, then batched ``encode_images``, in the calling thread (any
  `Encoder`: a torch `ClipModel` or an `OnnxEncoder`);
- writer (`ShardWriter`): buffers vectors, writes a shard every ``shard_size`` rows and commits the rows
  that point at it in one transaction (the unit of resume after a crash).

Preprocessing runs in the calling thread, not in the workers: its torch ops (to-tensor, normalise)
started from worker threads bring their own OpenMP thread teams, which compete with the model's. Measured
with ViT-B-32 on 2 CPUs (128 JPEGs, batch 32, images/s, model alone = 16.9): decode and preprocess in 2
threads 15.2; decode in 2 threads, preprocess here 16.7; everything inline 16.1.

Per-stage times are logged at the end.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from counterclip.index_builder.decode import DecodeError, DecodeOptions, load_image
from counterclip.index_builder.shards import write_shard
from counterclip.index_builder.store import Store
from counterclip.models.encoder import Encoder

LOG = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class WorkItem:
    """One image to embed."""

    id: int  # row id in items.sqlite (= FAISS id)
    path: str  # absolute path (os.fsdecode form)


class DecodeMapper:
    """``item -> {"id", "image", "width", "height", "sha256", "size", "error", "seconds"}``.

    ``image`` is what the model embeds (`LoadedImage.model_input`: the upright RGB image, shrunk as
    ``options`` allow, or under a family rule a file of another mode in its own mode), or None with
    ``error`` set to the reason. Never raises: one bad file must not stop a build.
    """

    KEYS = ("id", "image", "width", "height", "sha256", "size", "error", "seconds")

    def __init__(self, options: DecodeOptions) -> None:
        self.options = options

    def __call__(self, item: WorkItem) -> dict[str, Any]:
        started = time.perf_counter()
        out: dict[str, Any] = dict.fromkeys(self.KEYS)
        out["id"] = item.id
        try:
            loaded = load_image(item.path, self.options)
            out.update(
                image=loaded.model_input,
                width=loaded.width,
                height=loaded.height,
                sha256=loaded.sha256,
                size=loaded.size,
            )
        except DecodeError as exc:
            out["error"] = str(exc)
        except Exception as exc:  # noqa: BLE001 - any failure of one file is recorded, never fatal
            out["error"] = f"cannot decode: {type(exc).__name__}: {str(exc)[:200]}"
        out["seconds"] = time.perf_counter() - started
        return out


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int, window: int) -> Iterator[R]:
    """``map(fn, items)`` on ``workers`` threads, in order, with at most ``window`` items in flight.

    Threads, not processes: Pillow releases the GIL while decoding, and forked workers measured slower
    on 2 CPUs with ViT-B-32 (187 against 133 CPU-ms per image: they also pickle every image back).
    """
    if workers == 0:
        yield from map(fn, items)
        return
    pending: deque[Future[R]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cc-decode") as pool:
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


class ShardWriter:
    """Buffers embeddings of one kind and commits them shard by shard.

    ``add`` takes vectors with their ids and per-row column updates; ``fail`` records a skipped image.
    Each full shard is written (atomically) and then, in one transaction, its rows become ``indexed``
    and point at it, together with the errors seen so far and the shard counter.
    """

    def __init__(self, store: Store, directory: Path, kind: str, shard_size: int, dim: int) -> None:
        self.store = store
        self.directory = directory
        self.kind = kind
        self.shard_size = shard_size
        self.dim = dim
        self._vectors: list[np.ndarray] = []
        self._ids: list[int] = []
        self._columns: list[dict[str, Any]] = []
        self._errors: list[tuple[int, str, int | None, str | None]] = []
        self.shards_written = 0
        self.rows_written = 0
        self.seconds = 0.0

    def add(self, vectors: np.ndarray, ids: list[int], columns: list[dict[str, Any]]) -> None:
        """Buffer rows; every time the buffer reaches ``shard_size`` it is flushed as one shard."""
        assert vectors.shape == (len(ids), self.dim), (vectors.shape, len(ids), self.dim)
        start = 0
        while start < len(ids):
            take = min(self.shard_size - len(self._ids), len(ids) - start)
            chunk = slice(start, start + take)
            self._vectors.append(vectors[chunk])
            self._ids += ids[chunk]
            self._columns += columns[chunk]
            start += take
            if len(self._ids) >= self.shard_size:
                self.flush()

    def fail(self, item_id: int, reason: str, size: int | None = None, sha256: str | None = None) -> None:
        self._errors.append((item_id, reason, size, sha256))
        if len(self._errors) >= 1000 and not self._ids:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as one shard and commit them (and the buffered errors)."""
        if not self._ids and not self._errors:
            return
        started = time.perf_counter()
        number = None
        if self._ids:
            number = int(self.store.get_meta(f"next_shard_{self.kind}", 0))
            vectors = np.concatenate(self._vectors).astype(np.float32, copy=False)
            write_shard(self.directory, self.kind, number, vectors, np.asarray(self._ids, dtype=np.int64))
        with self.store.transaction() as conn:
            if number is not None:
                extra = sorted({k for cols in self._columns for k in cols})
                sets = ", ".join([f"{k} = ?" for k in extra] + ["status = 'indexed'", "shard = ?", "row = ?"])
                conn.executemany(
                    f"UPDATE {self.kind} SET {sets} WHERE id = ?",
                    [
                        (*(cols.get(k) for k in extra), number, row, item_id)
                        for row, (item_id, cols) in enumerate(zip(self._ids, self._columns, strict=True))
                    ],
                )
                self.store.set_meta(**{f"next_shard_{self.kind}": number + 1})
            if self._errors:
                conn.executemany(
                    f"UPDATE {self.kind} SET status = 'error', error = ?, size = COALESCE(?, size), "
                    "sha256 = ?, shard = NULL, row = NULL WHERE id = ?",
                    [(reason, size, sha, item_id) for item_id, reason, size, sha in self._errors],
                )
        if number is not None:
            self.shards_written += 1
            self.rows_written += len(self._ids)
        self._vectors, self._ids, self._columns, self._errors = [], [], [], []
        self.seconds += time.perf_counter() - started

    def close(self) -> None:
        self.flush()


@dataclass
class StageTimes:
    """Seconds per stage (decode is summed over worker threads)."""

    decode: float = 0.0
    preprocess: float = 0.0
    embed: float = 0.0
    write: float = 0.0
    wall: float = 0.0
    items: int = 0
    failed: int = 0
    extra: dict[str, float] = field(default_factory=dict)


def sample_pixels(
    items: Sequence[WorkItem], model: Encoder, options: DecodeOptions, n: int = 256, seed: int = 0
) -> torch.Tensor:
    """Preprocessed pixels ``(m, 3, H, W)`` of up to ``n`` of ``items`` drawn at random (seeded), in id order;
    files that fail to decode are skipped. The sample an int8 `OnnxEncoder` is calibrated and checked on.

    Take it large: the int8 check measures recall@10 on an index of the sample alone, which is sparser than
    the collection's (ViT-B-32, random weights: 0.986 on 64 images, 0.977 on all 256).
    """
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(items), size=min(n, len(items)), replace=False).tolist()) if items else []
    mapper = DecodeMapper(options)
    pixels = []
    for index in chosen:
        result = mapper(items[index])
        if result["error"] is None:
            pixels.append(model.preprocess(result["image"]))
    if not pixels:
        return torch.empty(0)
    return torch.stack(pixels)


def embed_images(
    items: Iterable[WorkItem],
    model: Encoder,
    writer: ShardWriter,
    options: DecodeOptions,
    batch_size: int,
    workers: int,
    prefetch_batches: int,
    on_progress: Callable[[int], None] | None = None,
) -> StageTimes:
    """Decode, preprocess, embed and write ``items``; returns the per-stage times.

    Args:
        items: `WorkItem` s in id order.
        model: an `Encoder` (``preprocess`` and ``encode_images``): a `ClipModel` or an `OnnxEncoder`.
        writer: the images `ShardWriter`.
        options: decode options.
        batch_size: images per forward pass.
        workers: decode threads (0 = inline).
        prefetch_batches: decoded batches kept ready ahead of the model.
        on_progress: called with the number of items just finished.
    """
    if not (callable(getattr(model, "preprocess", None)) and callable(getattr(model, "encode_images", None))):
        raise TypeError(
            f"embed_images needs an encoder with preprocess and encode_images, got {type(model).__name__}"
        )
    times = StageTimes()
    started = time.perf_counter()
    mapper = DecodeMapper(options)
    batch = _Batch(model, writer, times, on_progress)
    window = max(batch_size * prefetch_batches, workers)
    for result in ordered_map(mapper, items, workers, window):
        times.items += 1
        times.decode += result["seconds"]
        pixels = _preprocess(model, result, times)
        if result["error"] is not None:
            times.failed += 1
            writer.fail(result["id"], result["error"], result["size"], result["sha256"])
            if on_progress is not None:
                on_progress(1)
            continue
        batch.add(pixels, result["id"], {k: result[k] for k in ("width", "height", "sha256", "size")})
        if len(batch) == batch_size:
            batch.run()
    if len(batch):
        batch.run()
    t0 = time.perf_counter()
    writer.close()
    times.write += time.perf_counter() - t0
    times.wall = time.perf_counter() - started
    _log_times(times, workers)
    return times


def _log_times(times: StageTimes, workers: int) -> None:
    LOG.info(
        "embedded %d images (%d skipped) in %.2f s: decode %.2f s (over %d threads), preprocess %.2f s, "
        "embed %.2f s, write %.2f s",
        times.items - times.failed,
        times.failed,
        times.wall,
        times.decode,
        max(workers, 1),
        times.preprocess,
        times.embed,
        times.write,
    )


def _preprocess(model: Encoder, result: dict[str, Any], times: StageTimes) -> torch.Tensor | None:
    """The model's preprocessing of a decoded image (its error recorded in ``result`` if it fails)."""
    if result["error"] is not None:
        return None
    t0 = time.perf_counter()
    pixels = None
    try:
        pixels = model.preprocess(result.pop("image"))
    except Exception as exc:  # noqa: BLE001 - the model's transform failing on one image
        result["error"] = f"cannot preprocess: {type(exc).__name__}: {str(exc)[:200]}"
    times.preprocess += time.perf_counter() - t0
    return pixels


class _Batch:
    """The preprocessed images of the next forward pass; `run` embeds them and hands them to the writer."""

    def __init__(
        self,
        model: Encoder,
        writer: ShardWriter,
        times: StageTimes,
        on_progress: Callable[[int], None] | None,
    ) -> None:
        self.model, self.writer, self.times, self.on_progress = model, writer, times, on_progress
        self.pixels: list[torch.Tensor] = []
        self.ids: list[int] = []
        self.columns: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self.pixels)

    def add(self, pixels: torch.Tensor, item_id: int, columns: dict[str, Any]) -> None:
        self.pixels.append(pixels)
        self.ids.append(item_id)
        self.columns.append(columns)

    def run(self) -> None:
        t0 = time.perf_counter()
        vectors = self.model.encode_images(torch.stack(self.pixels), batch_size=len(self.pixels)).numpy()
        t1 = time.perf_counter()
        self.writer.add(vectors, list(self.ids), list(self.columns))
        self.times.embed += t1 - t0
        self.times.write += time.perf_counter() - t1
        if self.on_progress is not None:
            self.on_progress(len(self.ids))
        self.pixels.clear(), self.ids.clear(), self.columns.clear()

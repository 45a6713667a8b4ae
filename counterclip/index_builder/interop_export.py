"""clip-retrieval export: an index written in clip-retrieval's layout (`interop` describes it).

One row per image: its vector, its first caption's vector and text, its ``image_path`` and ``url``;
``text_emb/`` is written only when every image has a caption (rows are tied by position). Written beside
the output directory under a temporary name, then renamed.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from counterclip.errors import InputError
from counterclip.index_builder.interop_layout import IMG_DIR, META_DIR, TEXT_DIR, parquet
from counterclip.index_builder.sources import has_sources, item_sources


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
    from counterclip.index_builder.index import Index

    if dtype not in ("float16", "float32"):
        raise InputError(f"--dtype must be float16 or float32, not {dtype!r}")
    if rows_per_file < 1:
        raise InputError("rows per file must be >= 1")
    started = time.perf_counter()
    out_dir = Path(out_dir).expanduser().absolute()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"{out_dir} exists and is not empty; export into a new or empty directory")
    work = out_dir.parent / f".{out_dir.name}.export{os.getpid()}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    try:
        with Index.open(index_dir) as idx:
            export = _Export(idx, work, dtype)
            nfiles = max(1, -(-len(export.ids) // rows_per_file))
            width = len(str(nfiles - 1)) if nfiles > 1 else 1
            for sub in (IMG_DIR, META_DIR) + ((TEXT_DIR,) if export.with_text else ()):
                (work / sub).mkdir(parents=True)
            for number in range(nfiles):
                chunk = export.ids[number * rows_per_file : (number + 1) * rows_per_file]
                export.partition(str(number).zfill(width), chunk)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return ExportSummary(
        out_dir=str(out_dir),
        rows=int(len(export.ids)),
        partitions=nfiles,
        with_text=export.with_text,
        captions_left_out=export.left_out,
        dtype=dtype,
        seconds=round(time.perf_counter() - started, 3),
    )


class _Export:
    """The rows of an open index, written one partition at a time into ``work``."""

    def __init__(self, idx: Any, work: Path, dtype: str) -> None:
        self.idx, self.work, self.dtype = idx, work, dtype
        self.ids = idx.images.ids
        self.query = idx._meta.query  # noqa: SLF001 - the index's own read-only connection
        self.first: dict[int, int] = {}  # image id -> its first caption's id
        for image_id, caption_id in self.query(
            "SELECT image_id, caption_id FROM caption_links WHERE image_id IS NOT NULL "
            "ORDER BY image_id, position"
        ):
            self.first.setdefault(int(image_id), int(caption_id))
        self.with_text = len(self.ids) > 0 and all(int(i) in self.first for i in self.ids)
        linked = set(self.first.values())
        self.left_out = int(sum(1 for c in idx.captions.ids if int(c) not in linked))
        self.sources = has_sources(self.query)

    def partition(self, key: str, chunk: np.ndarray) -> None:
        """Write partition ``key``: image vectors, caption vectors (``with_text``) and metadata of ``chunk``."""
        import pyarrow as pa

        idx, work, dtype = self.idx, self.work, self.dtype
        metas = idx.images.meta(chunk)
        np.save(work / IMG_DIR / f"img_emb_{key}.npy", idx.images.vectors(chunk).astype(dtype))
        caption_ids = [self.first.get(int(i)) for i in chunk]
        texts: list[str | None] = [None] * len(chunk)
        known = [c for c in caption_ids if c is not None]
        if known:
            by_id = {m["id"]: m["text"] for m in idx.captions.meta(known)}
            texts = [by_id[c] if c is not None else None for c in caption_ids]
        if self.with_text:
            np.save(
                work / TEXT_DIR / f"text_emb_{key}.npy",
                idx.captions.vectors(np.array(caption_ids, dtype=np.int64)).astype(dtype),
            )
        image_paths, urls = self._origins(chunk, metas)
        table = pa.table(
            {
                "image_path": pa.array(image_paths, pa.string()),
                "caption": pa.array(texts, pa.string()),
                "url": pa.array(urls, pa.string()),
                "width": pa.array([m["width"] for m in metas], pa.int64()),
                "height": pa.array([m["height"] for m in metas], pa.int64()),
            }
        )
        parquet().write_table(table, work / META_DIR / f"metadata_{key}.parquet")

    def _origins(self, chunk: np.ndarray, metas: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
        """``(image paths, urls)``: an imported image's own, else the file's absolute path and no url."""
        extra = item_sources(self.query, [int(i) for i in chunk]) if self.sources else {}
        image_paths, urls = [], []
        for meta in metas:
            if meta["id"] in extra:
                image_paths.append(extra[meta["id"]][0])
                urls.append(extra[meta["id"]][1])
            else:
                image_paths.append(str(self.idx.root / meta["path"]))
                urls.append(None)
        return image_paths, urls

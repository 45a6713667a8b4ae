"""clip-retrieval's output layout: its partitions, checked from the file headers, and each chunk of
vectors checked as it is read (`interop` describes the layout)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from counterclip.errors import InputError

IMG_DIR, TEXT_DIR, META_DIR = "img_emb", "text_emb", "metadata"
NORM_TOLERANCE = 0.02  # |norm - 1| allowed (float16 rounding stays below 0.005)
_PART = re.compile(r"^img_emb_(\d+)\.npy$")


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


def parquet() -> Any:
    """``pyarrow.parquet`` (an `InputError` naming the fix when it is missing)."""
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
    pq = parquet()
    return [_partition(pq, key, img_dir, text_dir if has_text else None, meta_dir, dim) for key in keys]


def _partition(
    pq: Any, key: str, img_dir: Path, text_dir: Path | None, meta_dir: Path, dim: int
) -> Partition:
    """One partition, checked from its headers: widths, types, row counts, metadata columns."""
    img = img_dir / f"img_emb_{key}.npy"
    shape, dtype = _npy_shape(img)
    _check_array(img, shape, dtype, dim)
    text = text_dir / f"text_emb_{key}.npy" if text_dir is not None else None
    if text is not None:
        if not text.is_file():
            raise InputError(f"{text} is missing ({img.name} has no caption vectors)")
        tshape, tdtype = _npy_shape(text)
        _check_array(text, tshape, tdtype, dim)
        if tshape[0] != shape[0]:
            raise InputError(f"{text} has {tshape[0]} rows, {img} has {shape[0]}: rows are tied by position")
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
            f"{meta} has {rows} rows, {img} has {shape[0]}: rows are tied by position; re-export the partition"
        )
    if not {"image_path", "url", "caption"} & set(columns):
        raise InputError(f"{meta} has none of the columns image_path, url, caption (found {list(columns)})")
    return Partition(key, img, text, meta, int(shape[0]), columns)


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


def check_rows(path: Path, start: int, vectors: np.ndarray) -> np.ndarray:
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

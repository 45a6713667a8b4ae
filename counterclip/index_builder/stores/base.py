"""The store protocol: where the vectors of a collection live (FAISS + SQLite on local disk, LanceDB,
Qdrant), behind one small set of calls the builder, the engine and the tools use.

A store holds one collection: items with an integer id, a vector and a payload (a flat dict: path,
sha256, an app's own fields). Every store answers a search the same way: ``D (nq, k)`` inner products of
the query with the stored vectors made unit length, ``I (nq, k)`` ids, best first, ties by ascending
id, ``-inf`` / ``-1`` padding. The scores are computed here, in numpy, from the vectors the store
returns with its hits (`rank_hits`), so two stores over the same vectors give the same numbers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from counterclip.index_builder.stores.filters import Where

UNIT_TOLERANCE = 1e-3  # a row whose norm is this close to 1 is used as stored (FAISS's vectors, bit for bit)


@dataclass(frozen=True)
class StoreBatch:
    """One batch of a store's items (`VectorStore.iterate`)."""

    ids: np.ndarray  # (n,) int64
    vectors: np.ndarray | None  # (n, d) float32 unit rows, or None when not asked for
    payloads: list[dict[str, Any]]  # one dict per id ({} when not asked for)


class VectorStore(Protocol):
    """One collection of vectors with ids and payload (see the module docstring).

    Attributes:
        uri: the store's address (``lancedb://DIR/TABLE``, ``qdrant://HOST:PORT/NAME`` ...).
        kind: ``faiss``, ``lancedb`` or ``qdrant``.
    """

    uri: str
    kind: str

    def exists(self) -> bool:
        """Whether the collection exists (a store may be opened before its first build)."""

    def dim(self) -> int | None:
        """The vectors' width (None while the collection does not exist)."""

    def create(self, dim: int) -> None:
        """Create the empty collection for ``dim``-wide vectors."""

    def add(self, ids: np.ndarray, vectors: np.ndarray, payloads: list[dict[str, Any]]) -> None:
        """Insert or replace items: ``ids (n,)`` int64, ``vectors (n, d)`` float32, one payload each."""

    def delete(self, ids: np.ndarray) -> None:
        """Remove items (unknown ids are ignored)."""

    def search(self, xq: np.ndarray, k: int, where: Where | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items by inner product for each row of ``xq (nq, d)``, restricted to ``where``."""

    def fetch(self, ids: np.ndarray) -> np.ndarray:
        """``(n, d)`` float32 vectors of ``ids`` in their order; `KeyError` naming unknown ids."""

    def payloads(self, ids: np.ndarray) -> list[dict[str, Any] | None]:
        """The payload of each id, in order (None for an unknown id)."""

    def count(self, where: Where | None = None) -> int:
        """Number of items (matching ``where``)."""

    def iterate(
        self, batch: int = 10_000, vectors: bool = True, payloads: bool = True, where: Where | None = None
    ) -> Iterator[StoreBatch]:
        """Every item (matching ``where``) once, in batches."""

    def set_search_params(self, params: dict[str, Any]) -> None:
        """Use these ANN search settings from now on (recorded by the build, `ann.tune`)."""

    def close(self) -> None:
        """Release connections and handles."""


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """``(n, d)`` float32 with every row of unit length; rows already unit (within `UNIT_TOLERANCE`) are
    returned unchanged, bit for bit (a store built from FAISS's vectors gives FAISS's scores)."""
    out = np.ascontiguousarray(vectors, dtype=np.float32)
    if not len(out):
        return out
    norms = np.linalg.norm(out.astype(np.float64), axis=1)
    off = np.abs(norms - 1.0) > UNIT_TOLERANCE
    if off.any():
        out = out.copy()
        out[off] /= np.maximum(norms[off], 1e-12)[:, None].astype(np.float32)
    return out


def rank_hits(
    xq: np.ndarray, hits: list[tuple[np.ndarray, np.ndarray]], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """``D (nq, k)``, ``I (nq, k)`` from each query's hits (``(ids, vectors)``): scores recomputed as the
    inner product with the unit vectors, best first, ties by ascending id, padded with -inf / -1."""
    assert xq.ndim == 2 and len(hits) == len(xq), (xq.shape, len(hits))
    dist = np.full((len(xq), k), -np.inf, np.float32)
    labels = np.full((len(xq), k), -1, np.int64)
    for row, (ids, vectors) in enumerate(hits):
        if not len(ids):
            continue
        scores = unit_rows(vectors) @ xq[row].astype(np.float32)
        order = np.lexsort((ids, -scores))[:k]
        dist[row, : len(order)] = scores[order]
        labels[row, : len(order)] = ids[order]
    return dist, labels


def external_id(value: Any) -> int:
    """A stable non-negative int64 for a store's own id: an integer is itself, anything else (a UUID, a
    string key) a 63-bit hash of its text, so an app's collection keeps its ids and the engine its ints."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0:
        return int(value)
    digest = hashlib.blake2b(str(value).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF


def as_ids(ids: Any) -> np.ndarray:
    """``(n,)`` int64 from any sequence of ids."""
    return np.asarray(ids, dtype=np.int64).reshape(-1)


def unknown_ids_error(name: str, missing: list[int]) -> KeyError:
    """The `KeyError` a fetch raises for ids its store does not hold."""
    return KeyError(f"unknown {name} id(s) {missing[:10]}")

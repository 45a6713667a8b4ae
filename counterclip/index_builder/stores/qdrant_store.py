"""Qdrant as a store (extra ``counterclip[qdrant]``): a server (``qdrant://HOST:PORT/COLLECTION``, API key
from ``QDRANT_API_KEY``) or the client's embedded mode over a directory (``qdrant+local://DIR/COLLECTION``).

Points keep their own ids (integers, or UUIDs mapped to stable integers, `base.external_id`) and payload.
A server searches its HNSW graph with ``hnsw_ef`` tuned to the recall target (`ann.tune`); the embedded
mode searches exactly. Every server call has a timeout; a server that is down, slow or refuses the key
is one `StoreUnavailableError` line naming it and what to do.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from counterclip.errors import InputError, StoreUnavailableError
from counterclip.index_builder.stores.address import API_KEY_ENV, StoreURI
from counterclip.index_builder.stores.base import (
    StoreBatch,
    as_ids,
    external_id,
    rank_hits,
    unit_rows,
    unknown_ids_error,
)
from counterclip.index_builder.stores.filters import Where
from counterclip.index_builder.stores.qdrant_filter import to_qdrant

LOG = logging.getLogger(__name__)
CHUNK = 1000  # points per upsert / retrieve call
_LOCAL: dict[str, list[Any]] = {}  # directory -> [client, users]: the embedded mode locks its directory
_LOCAL_LOCK = threading.Lock()


class QdrantStore:
    """One Qdrant collection (see the module docstring; the calls are `base.VectorStore`'s)."""

    kind = "qdrant"

    def __init__(self, uri: StoreURI, vector_field: str = "vector", api_key: str | None = None) -> None:
        self.uri = str(uri)
        self._parsed, self._name, self._vector_field = uri, uri.name, vector_field
        self._params: dict[str, Any] = {}
        self._native: dict[int, Any] | None = None  # engine id -> UUID, when the points have UUIDs
        self._uuids: bool | None = None
        self._named: list[str | None] = []  # [the named vector to use, or None], once read
        self.local = uri.scheme == "qdrant+local"
        self._lock = threading.RLock() if self.local else None  # the embedded mode is not thread-safe
        self._client = self._connect(api_key)
        self._closed = False
        with self._call("list its collections"):
            self._client.get_collections()  # a server that is down or slow says so now, in one line

    def _connect(self, api_key: str | None) -> Any:
        from qdrant_client import QdrantClient

        if not self.local:
            host, _, port = self._parsed.location.partition(":")
            timeout = max(1, round(self._parsed.timeout))
            return QdrantClient(
                host=host,
                port=int(port),
                api_key=api_key,
                timeout=timeout,
                https=False,
                check_compatibility=False,
            )
        with _LOCAL_LOCK:
            entry = _LOCAL.get(self._parsed.location)
            if entry is None:
                try:
                    client = QdrantClient(path=self._parsed.location, force_disable_check_same_thread=True)
                except RuntimeError as exc:  # another process holds the directory
                    raise StoreUnavailableError(f"store {self.uri}: {_first_line(exc)}") from None
                entry = _LOCAL[self._parsed.location] = [client, 0]
                if len(_LOCAL) == 1:
                    atexit.register(_close_local_clients)
            entry[1] += 1
            return entry[0]

    @contextmanager
    def _call(self, what: str) -> Iterator[None]:
        """One client call: serialised in embedded mode; failures become one line naming the store."""
        from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

        try:
            if self._lock is not None:
                with self._lock:
                    yield
            else:
                yield
        except UnexpectedResponse as exc:
            raise _refused(self.uri, what, exc.status_code, _first_line(exc)) from None
        except (ResponseHandlingException, ConnectionError, TimeoutError, OSError) as exc:
            raise StoreUnavailableError(
                f"store {self.uri} did not answer ({what}: {_first_line(exc)}); start the Qdrant server or "
                f"check HOST:PORT, or allow it more time with ?timeout=SECONDS (now {self._parsed.timeout:g} s)"
            ) from None
        except ValueError as exc:  # the client's own checks (an unknown collection, a bad filter)
            raise InputError(f"store {self.uri}: {what}: {_first_line(exc)}") from None

    # --- the collection -------------------------------------------------------------------------
    def exists(self) -> bool:
        with self._call("look for the collection"):
            return bool(self._client.collection_exists(self._name))

    def _vectors_config(self) -> Any:
        with self._call("read the collection's settings"):
            return self._client.get_collection(self._name).config.params.vectors

    def _using(self) -> str | None:
        """The named vector to use, or None for the collection's unnamed one."""
        if not self._named:
            config = self._vectors_config()
            if isinstance(config, dict) and self._vector_field not in config:
                raise InputError(
                    f"store {self.uri} has no vector named {self._vector_field!r} (it has {sorted(config)})"
                )
            self._named.append(self._vector_field if isinstance(config, dict) else None)
        return self._named[0]

    def dim(self) -> int | None:
        if not self.exists():
            return None
        config = self._vectors_config()
        return int((config[self._using()] if isinstance(config, dict) else config).size)

    def create(self, dim: int) -> None:
        from qdrant_client import models

        with self._call("create the collection"):
            self._client.create_collection(
                self._name, vectors_config=models.VectorParams(size=int(dim), distance=models.Distance.DOT)
            )

    def add(self, ids: np.ndarray, vectors: np.ndarray, payloads: list[dict[str, Any]]) -> None:
        from qdrant_client import models

        ids, vectors = as_ids(ids), np.asarray(vectors, dtype=np.float32)
        for start in range(0, len(ids), CHUNK):
            part = slice(start, start + CHUNK)
            batch = models.Batch(
                ids=[int(i) for i in ids[part]], vectors=vectors[part].tolist(), payloads=payloads[part]
            )
            with self._call("write points"):
                self._client.upsert(self._name, points=batch, wait=True)

    def delete(self, ids: np.ndarray) -> None:
        from qdrant_client import models

        natives = [n for n in self.native_ids(as_ids(ids)) if n is not None]
        for start in range(0, len(natives), CHUNK):
            selector = models.PointIdsList(points=natives[start : start + CHUNK])
            with self._call("delete points"):
                self._client.delete(self._name, points_selector=selector, wait=True)

    # --- reading --------------------------------------------------------------------------------
    def native_ids(self, ids: np.ndarray) -> list[Any]:
        """The collection's own id of each engine id (UUIDs: through the stable hash, mapped once)."""
        if self._uuids is None:
            points, _ = self._scroll(1, False, False, None, None)
            self._uuids = bool(points) and not isinstance(points[0].id, int)
        if not self._uuids:
            return [int(i) for i in ids]
        if self._native is None or any(int(i) not in self._native for i in ids):
            self._native = {}
            for _ in self.iterate(vectors=False, payloads=False):
                pass  # iterating maps every point's id (`_engine_id`)
        return [self._native.get(int(i)) for i in ids]

    def _engine_id(self, native: Any) -> int:
        key = external_id(native)
        if not isinstance(native, int):
            if self._native is None:
                self._native = {}
            self._native[key] = native
        return key

    def search(
        self, xq: np.ndarray, k: int, where: Where | None = None, exact: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        from qdrant_client import models

        xq = np.ascontiguousarray(xq, dtype=np.float32)
        assert xq.ndim == 2 and k >= 1, (xq.shape, k)
        if not len(xq):
            return np.full((0, k), -np.inf, np.float32), np.full((0, k), -1, np.int64)
        params = models.SearchParams(
            hnsw_ef=self._params.get("hnsw_ef"), exact=exact or self._params.get("exact", False)
        )
        flt, using = (to_qdrant(where.node) if where is not None else None), self._using()
        requests = [
            models.QueryRequest(
                query=q.tolist(), limit=k, filter=flt, with_vector=True, params=params, using=using
            )
            for q in xq
        ]
        with self._call("search"):
            answers = self._client.query_batch_points(self._name, requests=requests)
        hits = [self._hits(answer.points, xq.shape[1]) for answer in answers]
        return rank_hits(xq, hits, k)

    def _hits(self, points: list[Any], dim: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.array([self._engine_id(p.id) for p in points], dtype=np.int64)
        vectors = np.array([self._vector_of(p) for p in points], dtype=np.float32).reshape(len(points), dim)
        return ids, vectors

    def _vector_of(self, point: Any) -> Any:
        vector = point.vector
        if isinstance(vector, dict):
            return vector[self._using() or ""]
        return vector

    def _retrieve(self, ids: np.ndarray, vectors: bool, payload: bool) -> dict[int, Any]:
        natives = self.native_ids(ids)
        out: dict[int, Any] = {}
        for start in range(0, len(natives), CHUNK):
            chunk = [n for n in natives[start : start + CHUNK] if n is not None]
            with self._call("read points"):
                points = self._client.retrieve(self._name, chunk, with_vectors=vectors, with_payload=payload)
            out.update({self._engine_id(p.id): p for p in points})
        return out

    def fetch(self, ids: np.ndarray) -> np.ndarray:
        ids = as_ids(ids)
        if not len(ids):
            return np.zeros((0, self.dim() or 0), np.float32)
        points = self._retrieve(ids, True, False)
        missing = [int(i) for i in ids if int(i) not in points]
        if missing:
            raise unknown_ids_error("item", missing)
        return unit_rows(np.array([self._vector_of(points[int(i)]) for i in ids], dtype=np.float32))

    def payloads(self, ids: np.ndarray) -> list[dict[str, Any] | None]:
        ids = as_ids(ids)
        points = self._retrieve(ids, False, True) if len(ids) else {}
        return [dict(points[int(i)].payload or {}) if int(i) in points else None for i in ids]

    def count(self, where: Where | None = None) -> int:
        if not self.exists():
            return 0
        with self._call("count points"):
            return int(
                self._client.count(self._name, count_filter=to_qdrant(where.node) if where else None).count
            )

    def _scroll(self, limit: int, vectors: bool, payloads: bool, where: Where | None, offset: Any) -> Any:
        with self._call("read points"):
            return self._client.scroll(
                self._name,
                limit=limit,
                offset=offset,
                with_vectors=[self._vector_field] if vectors and self._using() else vectors,
                with_payload=payloads,
                scroll_filter=to_qdrant(where.node) if where is not None else None,
            )

    def iterate(
        self, batch: int = 10_000, vectors: bool = True, payloads: bool = True, where: Where | None = None
    ) -> Iterator[StoreBatch]:
        if not self.exists():
            return
        dim, offset = self.dim() or 0, None
        while True:
            points, offset = self._scroll(batch, vectors, payloads, where, offset)
            if points:
                ids = np.array([self._engine_id(p.id) for p in points], dtype=np.int64)
                vecs = None
                if vectors:
                    raw = np.array([self._vector_of(p) for p in points], dtype=np.float32)
                    vecs = unit_rows(raw.reshape(len(points), dim))
                yield StoreBatch(ids, vecs, [dict(p.payload or {}) for p in points])
            if offset is None:
                return

    # --- the ANN index ----------------------------------------------------------------------------
    def set_search_params(self, params: dict[str, Any]) -> None:
        self._params = dict(params)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.local:
            self._client.close()
            return
        with _LOCAL_LOCK:
            entry = _LOCAL.get(self._parsed.location)
            if entry is not None:
                entry[1] -= 1
                if entry[1] <= 0:
                    del _LOCAL[self._parsed.location]
                    entry[0].close()


def _close_local_clients() -> None:
    """At exit, close the embedded clients still open (the client's own finaliser fails at shutdown)."""
    with _LOCAL_LOCK:
        for client, _ in _LOCAL.values():
            client.close()
        _LOCAL.clear()


def _refused(uri: str, what: str, status: int | None, detail: str) -> Exception:
    if status in (401, 403):
        return StoreUnavailableError(
            f"store {uri} refused the credentials ({what}: HTTP {status}); set {API_KEY_ENV} to the server's API key"
        )
    if status == 404:
        return InputError(f"store {uri}: not found ({what}); check the collection's name")
    return StoreUnavailableError(f"store {uri}: the server answered HTTP {status} ({what}: {detail})")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]

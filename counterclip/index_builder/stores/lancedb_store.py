"""LanceDB as a store (extra ``counterclip[lancedb]``): an embedded engine over a directory on local disk
or object storage, one table per collection (``lancedb://DIR/TABLE``).

Columns: the ids (``id``, int64; an attached table may use its own column, integer or text), the vectors
(``vector``, fixed-size float32 lists) and one column per payload field. Below `ann.EXACT_MAX` rows a search
is exact (LanceDB's flat scan); above it the build adds an IVF-PQ index with a re-ranking stage on the
raw vectors, tuned to the recall target (`ann.tune`), and a B-tree on the ids for fetches.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from counterclip.errors import InputError, StoreUnavailableError
from counterclip.index_builder.stores.address import StoreURI
from counterclip.index_builder.stores.base import (
    StoreBatch,
    as_ids,
    external_id,
    rank_hits,
    unit_rows,
    unknown_ids_error,
)
from counterclip.index_builder.stores.filters import Where

LOG = logging.getLogger(__name__)
CHUNK = 1000  # ids per ``IN (...)`` list
# types of counterclip's own payload fields (an app's other fields: as pyarrow infers them)
PAYLOAD_TYPES = {
    "path": pa.string(),
    "folder": pa.string(),
    "sha256": pa.string(),
    "size": pa.int64(),
    "mtime": pa.float64(),
    "width": pa.int64(),
    "height": pa.int64(),
    "captions": pa.list_(pa.string()),
    "text": pa.string(),
    "source": pa.string(),
    "image_ids": pa.list_(pa.int64()),
}


class LanceStore:
    """One LanceDB table (see the module docstring; the calls are `base.VectorStore`'s)."""

    kind = "lancedb"

    def __init__(self, uri: StoreURI, vector_field: str = "vector", id_field: str = "id") -> None:
        import lancedb

        self.uri = str(uri)
        self._name, self._vector, self._id = uri.name, vector_field, id_field
        try:
            self._db = lancedb.connect(uri.location)
        except (OSError, ValueError, RuntimeError) as exc:
            raise StoreUnavailableError(
                f"store {self.uri}: cannot open the LanceDB directory ({_first_line(exc)}); check the path "
                "or the bucket and its credentials"
            ) from None
        self._table: Any = None
        self._params: dict[str, Any] = {}
        self._native: dict[int, Any] | None = None  # engine id -> a text id column's value

    # --- the collection -------------------------------------------------------------------------
    def table(self) -> Any:
        if self._table is None:
            try:
                self._table = self._db.open_table(self._name)
            except ValueError as exc:
                raise InputError(f"store {self.uri}: {_first_line(exc)}") from None
        return self._table

    def exists(self) -> bool:
        listed = self._db.list_tables() if hasattr(self._db, "list_tables") else self._db.table_names()
        return self._name in getattr(listed, "tables", listed)

    def dim(self) -> int | None:
        if not self.exists():
            return None
        field = self.table().schema.field(self._vector)
        return int(field.type.list_size) if pa.types.is_fixed_size_list(field.type) else None

    def fields(self) -> list[str]:
        """The payload columns."""
        return [n for n in self.table().schema.names if n not in (self._vector, self._id)]

    def create(self, dim: int) -> None:
        self._dim = int(dim)  # the table is made by the first `add`, with its payload columns

    def _text_ids(self) -> bool:
        return not pa.types.is_integer(self.table().schema.field(self._id).type)

    def add(self, ids: np.ndarray, vectors: np.ndarray, payloads: list[dict[str, Any]]) -> None:
        ids, vectors = as_ids(ids), np.ascontiguousarray(vectors, dtype=np.float32)
        assert vectors.shape == (len(ids), vectors.shape[1]) and len(payloads) == len(ids)
        columns: dict[str, Any] = {
            self._id: pa.array(ids, pa.int64()),
            self._vector: pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1]),
        }
        for key in sorted({k for p in payloads for k in p}):
            columns[key] = pa.array([p.get(key) for p in payloads], PAYLOAD_TYPES.get(key))
        data = pa.table(columns)
        if not self.exists():
            self._table = self._db.create_table(self._name, data=data)
        elif self.table().count_rows(self._in(ids)) == 0:  # new ids only (a build): append, no join
            self.table().add(data)
        else:
            merge = (
                self.table().merge_insert(self._id).when_matched_update_all().when_not_matched_insert_all()
            )
            merge.execute(data)

    def delete(self, ids: np.ndarray) -> None:
        for chunk in _chunks(as_ids(ids)):
            self.table().delete(self._in(chunk))

    # --- reading --------------------------------------------------------------------------------
    def _in(self, ids: np.ndarray) -> str:
        if self._text_ids():
            natives = self.native_ids(ids)
            values = ", ".join("'" + str(v).replace("'", "''") + "'" for v in natives if v is not None)
            return f"{self._id} IN ({values or 'NULL'})"
        return f"{self._id} IN ({', '.join(str(int(i)) for i in ids) or 'NULL'})"

    def native_ids(self, ids: np.ndarray) -> list[Any]:
        """The table's own id of each engine id (a text id column: through the stable hash)."""
        if not self._text_ids():
            return [int(i) for i in ids]
        if self._native is None:
            column = self.table().search().select([self._id]).limit(None).to_arrow()[self._id].to_pylist()
            self._native = {external_id(v): v for v in column}
        return [self._native.get(int(i)) for i in ids]

    def _ids_of(self, column: pa.ChunkedArray) -> np.ndarray:
        if self._text_ids():
            return np.array([external_id(v) for v in column.to_pylist()], dtype=np.int64)
        return column.to_numpy().astype(np.int64)

    def _where(self, where: Where | None) -> str | None:
        return where.sql(_column) if where is not None else None

    def search(
        self, xq: np.ndarray, k: int, where: Where | None = None, exact: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        assert xq.ndim == 2 and k >= 1, (xq.shape, k)
        if not len(xq) or not self.exists():
            return np.full((len(xq), k), -np.inf, np.float32), np.full((len(xq), k), -1, np.int64)
        query = self.table().search(list(xq) if len(xq) > 1 else xq[0], vector_column_name=self._vector)
        query = query.metric("dot").limit(k).select([self._id, self._vector, "_distance"])
        sql = self._where(where)
        if sql is not None:
            query = query.where(sql, prefilter=True)
        if exact or self._params.get("exact"):
            query = query.bypass_vector_index()
        elif self._params:
            query = query.nprobes(int(self._params["nprobes"])).refine_factor(
                int(self._params["refine_factor"])
            )
        found = _run(self.uri, query.to_arrow)
        rows = (
            found["query_index"].to_numpy()
            if "query_index" in found.column_names
            else np.zeros(found.num_rows)
        )
        ids = self._ids_of(found[self._id])
        vectors = _vectors(found[self._vector], xq.shape[1])
        hits = [(ids[rows == q], vectors[rows == q]) for q in range(len(xq))]
        return rank_hits(xq, hits, k)

    def _select(self, ids: np.ndarray, columns: list[str]) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for chunk in _chunks(np.unique(ids)):
            query = self.table().search().where(self._in(chunk)).select(columns).limit(len(chunk))
            table = _run(self.uri, query.to_arrow)
            keys = self._ids_of(table[self._id])
            for key, row in zip(keys, table.to_pylist(), strict=True):
                out[int(key)] = row
        return out

    def fetch(self, ids: np.ndarray) -> np.ndarray:
        ids = as_ids(ids)
        if not len(ids):
            return np.zeros((0, self.dim() or 0), np.float32)
        rows = self._select(ids, [self._id, self._vector])
        missing = [int(i) for i in ids if int(i) not in rows]
        if missing:
            raise unknown_ids_error("item", missing)
        return unit_rows(np.asarray([rows[int(i)][self._vector] for i in ids], dtype=np.float32))

    def payloads(self, ids: np.ndarray) -> list[dict[str, Any] | None]:
        ids = as_ids(ids)
        if not len(ids) or not self.exists():
            return [None] * len(ids)
        rows = self._select(ids, [self._id, *self.fields()])
        return [_payload(rows.get(int(i)), self._id) for i in ids]

    def count(self, where: Where | None = None) -> int:
        if not self.exists():
            return 0
        return int(_run(self.uri, lambda: self.table().count_rows(self._where(where))))

    def iterate(
        self, batch: int = 10_000, vectors: bool = True, payloads: bool = True, where: Where | None = None
    ) -> Iterator[StoreBatch]:
        if not self.exists():
            return
        columns = [self._id] + ([self._vector] if vectors else []) + (self.fields() if payloads else [])
        query = self.table().search().select(columns).limit(None)
        sql = self._where(where)
        if sql is not None:
            query = query.where(sql)
        for record in query.to_batches(batch):
            table = pa.Table.from_batches([record])
            rows = table.drop_columns([self._vector]).to_pylist() if payloads else [{}] * table.num_rows
            vecs = unit_rows(_vectors(table[self._vector], self.dim() or 0)) if vectors else None
            yield StoreBatch(self._ids_of(table[self._id]), vecs, [_payload(r, self._id) or {} for r in rows])

    # --- the ANN index ----------------------------------------------------------------------------
    def set_search_params(self, params: dict[str, Any]) -> None:
        self._params = dict(params)

    def build_ann(self, partitions: int, sub_vectors: int) -> None:
        """An IVF-PQ index on the vectors (replacing any) and a B-tree on the ids."""
        table = self.table()
        table.create_index(
            metric="dot",
            num_partitions=partitions,
            num_sub_vectors=sub_vectors,
            vector_column_name=self._vector,
        )
        table.create_scalar_index(self._id, replace=True)

    def compact(self) -> None:
        """Merge the small fragments many writes leave (LanceDB's optimize)."""
        self.table().optimize()

    def has_ann(self) -> bool:
        return any(self._vector in i.columns for i in self.table().list_indices())

    def close(self) -> None:
        self._table = None


def _column(field: str) -> str:
    return ".".join(f"`{part}`" for part in field.split("."))


def _vectors(column: pa.ChunkedArray, dim: int) -> np.ndarray:
    if not len(column):
        return np.zeros((0, dim), np.float32)
    flat = pa.concat_arrays([chunk.flatten() for chunk in column.chunks]).to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float32).reshape(len(column), -1)


def _payload(row: dict[str, Any] | None, id_field: str) -> dict[str, Any] | None:
    if row is None:
        return None
    return {k: v for k, v in row.items() if k != id_field and not k.startswith("_")}


def _chunks(ids: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, len(ids), CHUNK):
        yield ids[start : start + CHUNK]


def _run(uri: str, call: Any) -> Any:
    """A LanceDB call; a filter naming an unknown column is the user's error, an unreachable bucket one line."""
    try:
        return call()
    except ValueError as exc:
        raise InputError(f"store {uri}: {_first_line(exc)}") from None
    except OSError as exc:
        raise StoreUnavailableError(
            f"store {uri}: LanceDB cannot read it ({_first_line(exc)}); check the path or the bucket"
        ) from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]

"""``--where`` on counterclip's own store: the filter as SQL over the images table gives an allow-list of
ids, and the allow-list a FAISS `IDSelector` in the search parameters (exact and approximate kinds alike).

The fields are the image rows' (`FIELDS`): the same names a built vector store's payload carries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import faiss
import numpy as np

from counterclip.errors import InputError
from counterclip.index_builder.stores.filters import Where

# field -> its SQL over the images table; folder: the path up to its last "/" (SQLite has no dirname)
FIELDS = {
    "path": "path",
    "folder": "rtrim(rtrim(path, replace(path, '/', '')), '/')",
    "sha256": "sha256",
    "size": "size",
    "mtime": "(mtime_ns / 1e9)",
    "width": "width",
    "height": "height",
}


def column(field: str) -> str:
    """The SQL of a field; `InputError` naming the fields there are."""
    if field not in FIELDS:
        raise InputError(
            f"--where: this index has no field {field!r}; its images have {', '.join(FIELDS)} "
            "(an app's own fields live in its vector store: attach it)"
        )
    return FIELDS[field]


def allowed_ids(where: Where, query: Callable[[str], list[tuple[Any, ...]]]) -> np.ndarray:
    """Ascending ids of the indexed images that pass ``where`` (``query`` runs SQL on the items file)."""
    sql = f"SELECT id FROM images WHERE status = 'indexed' AND {where.sql(column)} ORDER BY id"
    return np.asarray([row[0] for row in query(sql)], dtype=np.int64)


def with_selector(
    params: faiss.SearchParameters | None, selector: faiss.IDSelector
) -> tuple[faiss.SearchParameters, list[Any]]:
    """Search parameters (``params``: fresh ones from `faiss_index.make_search_params`, never shared) that
    search only the ids ``selector`` lets through, and the objects the caller keeps alive while searching
    (FAISS's Python objects do not own what they point to)."""
    if params is None:
        params = faiss.SearchParameters()
    params.sel = selector
    keep = [selector, params]
    if isinstance(params, faiss.IndexRefineSearchParameters):
        base = params.base_index_params or faiss.SearchParameters()
        base.sel = selector
        params.base_index_params = base
        keep.append(base)
    return params, keep

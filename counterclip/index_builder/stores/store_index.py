"""`StoreIndex`: an index whose vectors live in a vector store (LanceDB, Qdrant), opened from its side
directory (``store.json``, `side`), with the same face as counterclip's own `Index` (root, dim,
images, captions, calibration, decode, image ids by path), so the engine, ``search`` and ``serve`` run
over it unchanged.

`open_index` opens an index directory of either kind; `index_model_record` reads which model made it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from counterclip.calibration import Calibration
from counterclip.errors import IndexFormatError
from counterclip.index_builder.decode import DecodeOptions, LoadedImage, QuerySource, decode_query, load_image
from counterclip.index_builder.index import Index
from counterclip.index_builder.manifest import Manifest, ModelRecord
from counterclip.index_builder.stores.base import VectorStore
from counterclip.index_builder.stores.filters import Bool, Cmp, Where
from counterclip.index_builder.stores.side import SideManifest, is_store_index, read_side
from counterclip.index_builder.stores.store_collection import StoreCollection
from counterclip.index_builder.stores.uri import open_store

if TYPE_CHECKING:
    from counterclip.models import ClipModel

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreManifestView:
    """The part of a manifest the engine reads (``manifest.model.runtime``: how far stored vectors may sit
    from fresh encodes, `engine.verify.stale_cosine`)."""

    model: ModelRecord


class StoreIndex:
    """An index over a vector store (see the module docstring).

    Attributes:
        path: the side directory.
        side: its `side.SideManifest`.
        model_spec, fingerprint, dim: the model that made the vectors.
        root: the directory relative payload paths are relative to.
        images / captions: `store_collection.StoreCollection` (an attached collection has no captions).
        calibration: the `Calibration` recorded with it, or None.
    """

    generation = None  # a store changes in place: no generations to follow

    def __init__(
        self, path: Path, side: SideManifest, images: VectorStore, captions: VectorStore | None
    ) -> None:
        self.path, self.side = path, side
        self.manifest = StoreManifestView(side.model)
        self.model_spec, self.fingerprint = side.model.spec, side.model.fingerprint
        self.dim = int(side.model.embed_dim)
        self.root = Path(side.root) if side.root else path
        self.decode_options = DecodeOptions(**side.decode)
        self._stores = [s for s in (images, captions) if s is not None]
        self.images = StoreCollection("images", images, self.dim, side.fields, self.root)
        self.captions = StoreCollection("captions", captions, self.dim, side.fields, self.root)
        self.captions.images_store = images
        self.calibration = (
            Calibration.from_dict(side.calibration, f"index {path}: the store manifest's calibration")
            if side.calibration
            else None
        )

    @classmethod
    def open(cls, index_dir: str | os.PathLike[str], model: ClipModel | None = None) -> StoreIndex:
        """Open the side directory ``index_dir`` and its stores.

        Raises:
            IndexFormatError: no or a damaged ``store.json``; a store whose vectors have another width;
                ``model`` is not the one that made the vectors.
            StoreUnavailableError: a store that does not answer.
        """
        path = Path(index_dir).expanduser().absolute()
        side = read_side(path)
        if model is not None and model.fingerprint != side.model.fingerprint:
            raise IndexFormatError(
                f"index {path} reads vectors made by {side.model.spec} (fingerprint {side.model.fingerprint}), "
                f"not {model.spec} (fingerprint {model.fingerprint})"
            )
        opened: list[VectorStore] = []
        try:
            for kind in ("images", "captions"):
                uri = side.stores.get(kind)
                if uri is None:
                    opened.append(None)  # type: ignore[arg-type]
                    continue
                store = open_store(uri, side.fields.vector, side.fields.id)
                opened.append(store)
                _check_store(path, kind, store, side)
        except BaseException:
            for store in opened:
                if store is not None:
                    store.close()
            raise
        index = cls(path, side, opened[0], opened[1])
        LOG.info("opened %s over %s: %d images", path, side.stores["images"], index.images.count)
        return index

    def decode_query(self, source: QuerySource) -> LoadedImage:
        """Decode a query image as the build decoded the files (`decode.decode_query`)."""
        return decode_query(source, self.decode_options)

    def load_image(self, path: str | os.PathLike[str]) -> LoadedImage:
        """Decode a file (relative to the root, or absolute) as the build did."""
        p = Path(path)
        return load_image(p if p.is_absolute() else self.root / p, self.decode_options)

    def image_id_for_path(self, path: str | os.PathLike[str]) -> int | None:
        """The id of the image whose payload path is this file (relative to the root, or absolute)."""
        p = Path(path)
        forms = {str(p)}
        if p.is_absolute():
            try:
                forms.add(p.relative_to(self.root).as_posix())
            except ValueError:
                pass
        else:
            forms.add(str(self.root / p))
        field = self.side.fields.path
        node = Bool("or", tuple(Cmp(field, "=", form) for form in sorted(forms)))
        store = self.images.store
        for batch in store.iterate(
            batch=1, vectors=False, payloads=False, where=Where(f"{field} = path", node)
        ):
            return int(batch.ids[0]) if len(batch.ids) else None
        return None

    def errors(self) -> list[dict[str, Any]]:
        """Files a build skipped: recorded by counterclip's own index, not the store's (none here)."""
        return []

    def close(self) -> None:
        """Close the stores."""
        for store in self._stores:
            store.close()
        self._stores = []

    def __enter__(self) -> StoreIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"StoreIndex({str(self.path)!r}, store={self.side.stores['images']!r}, model={self.model_spec})"
        )


def _check_store(path: Path, kind: str, store: VectorStore, side: SideManifest) -> None:
    """The store exists and holds vectors of the recorded width."""
    dim = store.dim()
    if dim is None:
        raise IndexFormatError(
            f"index {path}: the store {store.uri} has no collection (was it deleted?); build or attach again"
        )
    if dim != side.model.embed_dim:
        raise IndexFormatError(
            f"index {path}: the store {store.uri} holds {kind} vectors of width {dim}, the model "
            f"{side.model.spec} makes {side.model.embed_dim}"
        )
    params = (side.ann.get(kind) or {}).get("search_params")
    if params:
        store.set_search_params(params)


def open_index(index_dir: str | os.PathLike[str], model: ClipModel | None = None) -> Index | StoreIndex:
    """Open an index directory: a `StoreIndex` when it reads a vector store (``store.json``), else
    counterclip's own `Index` (FAISS + SQLite)."""
    if is_store_index(index_dir):
        return StoreIndex.open(index_dir, model)
    return Index.open(index_dir, model)


def index_model_record(index_dir: str | os.PathLike[str]) -> ModelRecord:
    """The model record of an index directory of either kind (which model to load to query it)."""
    path = Path(index_dir).expanduser()
    return read_side(path).model if is_store_index(path) else Manifest.read(path).model

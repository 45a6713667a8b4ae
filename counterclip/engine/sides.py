"""Sides: which half of the (image, text) pair a counterfactual moves, and over which collection.

The image side moves the image embedding through the index's images (answers are files); the caption
side moves the text embedding through its captions (answers are texts). Everything that differs between
the two lives here: which items are the query itself, how close an item is to the original, how an item
is shown, and how it is re-scored from its source (the file, or the text). The engine itself never
branches on the side.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import numpy as np
from PIL import Image

from counterclip.engine.ranking import alignment, change_directions, edit_features
from counterclip.engine.readings import CaptionReader, reading_levels
from counterclip.engine.results import ResultItem
from counterclip.engine.words import content_words
from counterclip.index_builder.decode import DecodeError, LoadedImage

SIDES = ("image", "text")

Fresh = list[tuple[np.ndarray | None, str | None]]  # per id: a re-encoded vector, or why there is none


class CollectionLike(Protocol):
    """What a side needs from one collection of an index (`counterclip.index_builder.Collection`)."""

    name: str
    ids: np.ndarray

    @property
    def count(self) -> int: ...
    def vectors(self, ids: Any) -> np.ndarray: ...
    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...
    def meta(self, ids: Any) -> list[dict[str, Any]]: ...


class EncoderLike(Protocol):
    """What a side needs from the model to re-score items from their source."""

    def encode_pil(self, images: list[Image.Image]) -> Any: ...
    def encode_texts(self, texts: list[str]) -> Any: ...


class Side(abc.ABC):
    """One moving side of a pair over its collection.

    Attributes:
        name: ``image`` or ``text``: what the user asked to move.
        kind: ``image`` or ``caption``: what the returned items are.
        collection: the collection searched.
        start: ``(d,)`` the original embedding of the moving side (the path starts here).
    """

    name: ClassVar[str]
    kind: ClassVar[str]

    def __init__(self, collection: CollectionLike, start: np.ndarray) -> None:
        self.collection = collection
        self.start = np.asarray(start, dtype=np.float32)

    @abc.abstractmethod
    def copies_of_query(self, ids: np.ndarray) -> list[str | None]:
        """Per id, why it is the query again (never returned), or None. The embedding test (a candidate
        within `DUPLICATE_COS` of the original) is the caller's, the same for both sides."""

    def is_query(self, ids: np.ndarray) -> np.ndarray:
        """``(n,)`` bool: which ids are the query itself or a copy of it."""
        return np.array([why is not None for why in self.copies_of_query(ids)], dtype=bool)

    def proximity(self, ids: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """How close each item is to the original (higher is closer) and, for texts, the words changed.

        Default: the cosine to the original embedding, no word counts.
        """
        return vectors @ self.start, None

    def changes(self, ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """``(n, m)`` unit features of each item's change from the original: alike rows are the same way
        of moving the score. Default: the direction of the embedding difference."""
        return change_directions(self.start, vectors)

    @abc.abstractmethod
    def item(self, item_id: int) -> ResultItem:
        """A fresh `ResultItem` showing the item (path or text)."""

    @abc.abstractmethod
    def reencode(self, ids: np.ndarray) -> Fresh:
        """Fresh embeddings from each item's source, each with the reason it cannot be trusted (or None)."""


class ImageSide(Side):
    """Move the image: answers are indexed image files, re-encoded from their files before returning."""

    name = "image"
    kind = "image"

    def __init__(
        self,
        collection: CollectionLike,
        start: np.ndarray,
        query_id: int | None,
        model: EncoderLike,
        decode: Callable[[str], LoadedImage],
        query_sha256: str | None = None,
        reader: CaptionReader | None = None,
        reading_pool: int = 16,
        asked: tuple[str, str] = ("", ""),
    ) -> None:
        super().__init__(collection, start)
        self.query_id = query_id
        self.query_sha256 = query_sha256  # the query file's content hash (a copy elsewhere is the query)
        self.model = model
        self.decode = decode
        self.reader = reader  # None: answers by distance alone (no captions, or asked so)
        self.reading_pool = reading_pool
        # the words the answer should gain and lose (increase: the text's; decrease: lose the text's;
        # flip: gain the target's, lose the prediction's): their change costs nothing in the order
        self.gain, self.lose = (frozenset(content_words(text)) for text in asked)
        self._original_reading: set[str] | None = None

    @property
    def by_readings(self) -> bool:
        """Whether answers are ordered by the things the captions read as changed."""
        return self.reader is not None

    def proximity(self, ids: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """With a reader, among the ``reading_pool`` closest: first the items the index's captions read as
        making the asked change, fewest other things changed first (the image counterpart of the text
        side's fewest words); then the items whose readings show no asked change; distance orders each
        level, and the rest after them (`reading_levels`). The closest item across the line can change
        something the text did not ask for (a colour, the background) where one a little farther changes
        only the asked thing. Without a reader: the cosine."""
        cosine = vectors @ self.start
        if self.reader is None or not len(ids):
            return cosine, None
        nearest = np.argsort(-cosine, kind="stable")[: self.reading_pool]
        if self._original_reading is None:
            self._original_reading = self.reader.read(self.start)[0]
        changes = [self.reader.changes(self._original_reading, r) for r in self.reader.read(vectors[nearest])]
        pooled = reading_levels(changes, self.gain, self.lose)
        level = np.full(len(ids), pooled.max() + 1)
        level[nearest] = pooled
        # A step of 3 per level: more than any cosine gap (2), so distance only orders within a level (and
        # the variety stage, which weighs closeness against likeness, cannot trade a level for a direction).
        return cosine - 3.0 * level, None

    def copies_of_query(self, ids: np.ndarray) -> list[str | None]:
        """The query's own entry, and files with the query file's content (a copy under another name)."""
        why: list[str | None] = [
            "the query itself" if self.query_id is not None and int(i) == self.query_id else None for i in ids
        ]
        if self.query_sha256 and len(ids):
            for n, meta in enumerate(self.collection.meta(ids)):
                if why[n] is None and meta.get("sha256") == self.query_sha256:
                    why[n] = "a copy of the query's file"
        return why

    def item(self, item_id: int) -> ResultItem:
        meta = self.collection.meta([item_id])[0]
        return ResultItem(id=item_id, kind="image", path=meta["path"])

    def reencode(self, ids: np.ndarray) -> Fresh:
        """Decode each file as the index did; a missing, unreadable or changed file is a reason. An item
        imported without a file on this machine (``abs_path`` None) has nothing to re-score: ``(None,
        None)``, so its answer is ``unverifiable``."""
        loaded: list[tuple[Image.Image | None, str | None]] = []
        for meta in self.collection.meta(ids):
            if meta.get("abs_path") is None:
                loaded.append((None, None))
                continue
            try:
                decoded = self.decode(meta["abs_path"])
            except DecodeError:
                loaded.append((None, "file missing or unreadable"))
                continue
            if meta.get("sha256") and decoded.sha256 != meta["sha256"]:
                loaded.append((None, "changed since indexing"))
                continue
            loaded.append((decoded.model_input, None))
        present = [image for image, _ in loaded if image is not None]
        encoded = iter(as_array(self.model.encode_pil(present))) if present else iter(())
        return [(next(encoded), None) if image is not None else (None, reason) for image, reason in loaded]


class CaptionSide(Side):
    """Move the text: answers are captions of the index, re-encoded from their text before returning."""

    name = "text"
    kind = "caption"

    def __init__(
        self,
        collection: CollectionLike,
        start: np.ndarray,
        original_text: str,
        model: EncoderLike,
        by_words: bool = True,
    ) -> None:
        super().__init__(collection, start)
        self.original_text = original_text
        self.model = model
        self.by_words = by_words
        self._aligned: dict[int, tuple[int, set[int]]] = {}  # id -> (words changed, positions): per query

    def _alignments(self, ids: np.ndarray) -> list[tuple[int, set[int]]]:
        """Word alignment of each caption with the original, computed once per caption of this query."""
        missing = [int(i) for i in ids if int(i) not in self._aligned]
        if missing:
            for m in self.collection.meta(missing):
                self._aligned[int(m["id"])] = alignment(self.original_text, m["text"])
        return [self._aligned[int(i)] for i in ids]

    def copies_of_query(self, ids: np.ndarray) -> list[str | None]:
        """Captions that say the original text again: the same text (case, spacing and a final full stop
        aside), or the same content words reworded ("an image of a red circle", "a circle, red")."""
        if not len(ids):
            return []
        original, words = normalise_text(self.original_text), content_words(self.original_text)
        why: list[str | None] = []
        for meta in self.collection.meta(ids):
            if normalise_text(meta["text"]) == original:
                why.append("the query's text")
            elif content_words(meta["text"]) == words:
                why.append("a rewording of the query's text")
            else:
                why.append(None)
        return why

    def proximity(self, ids: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Fewest changed words first; embedding proximity breaks ties (it would otherwise prefer
        captions that add wrong attributes over ones that swap one word). ``by_words=False``: the cosine."""
        cosine = vectors @ self.start
        if not self.by_words or not len(ids):
            return cosine, None
        edits = np.array([distance for distance, _ in self._alignments(ids)])
        return -edits + 0.1 * cosine, edits

    def changes(self, ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """The word positions each caption edits (two captions that swap the same word are one change)."""
        positions = [edits for _, edits in self._alignments(ids)]
        return edit_features(self.original_text, [""] * len(positions), positions)

    def item(self, item_id: int) -> ResultItem:
        meta = self.collection.meta([item_id])[0]
        return ResultItem(id=item_id, kind="caption", text=meta["text"])

    def reencode(self, ids: np.ndarray) -> Fresh:
        texts = [m["text"] for m in self.collection.meta(ids)]
        return [(vec, None) for vec in as_array(self.model.encode_texts(texts))]


def normalise_text(text: str) -> str:
    """Lower case, single spaces, no final full stop: two captions that say the same thing compare equal."""
    return " ".join(text.lower().split()).rstrip(".")


def as_array(embeddings: Any) -> np.ndarray:
    """Embeddings as float32 numpy (encoders return torch tensors or numpy arrays)."""
    return np.asarray(embeddings.numpy() if hasattr(embeddings, "numpy") else embeddings, dtype=np.float32)

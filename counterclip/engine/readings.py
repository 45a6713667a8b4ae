"""What the model reads an image as, in the words of the index's own captions, and how many things two
such readings say differently.

A reading of an image vector is the set of content words of the `READINGS` captions the model ranks
highest for it, among the index's captions (a fixed sample of `SAMPLE` of a larger collection, held in
memory: an exact search of a few milliseconds that touches no index file; through the caption index at
1M captions it doubled a counterfactual's time and added 600 MB of mapped pages). Two readings differ by
a *thing* where a word of one is replaced by one of its substitutes in the other (``red -> blue``, ``left
-> top``: `counterclip.engine.words.Substitutes`, learnt from the captions alone). The image side can order
its answers by this count (`reading_levels`, with ``image_proximity="readings"``), and the quality
card's understandability reads it.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from counterclip.engine.words import Substitutes, content_words

READINGS = 10  # captions the model ranks highest for an image: the words it reads the image with
SAMPLE = 20_000  # captions a reader ranks (all of a smaller collection; 41 MB at width 512)


class CaptionsLike(Protocol):
    """What a reader needs of the index's caption collection."""

    ids: Any

    def vectors(self, ids: Any) -> np.ndarray: ...
    def meta(self, ids: Any) -> list[dict[str, Any]]: ...


class CaptionReader:
    """Reads image vectors in the words of an index's captions.

    Args:
        words: the content words of each caption the reader ranks.
        vectors: ``(m, d)`` their unit vectors (the model ranks captions by cosine for an image).
        substitutes: which words name different values of one thing.
    """

    def __init__(self, words: list[tuple[str, ...]], vectors: np.ndarray, substitutes: Substitutes) -> None:
        self.words = words
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.substitutes = substitutes

    @classmethod
    def of(cls, captions: CaptionsLike, substitutes: Substitutes, sample: int = SAMPLE) -> CaptionReader:
        """A reader over a collection's captions (a seeded sample of ``sample`` of a larger one)."""
        ids = np.asarray(captions.ids)
        if len(ids) > sample:
            ids = np.sort(np.random.default_rng(0).choice(ids, sample, replace=False))
        words = [
            content_words(m["text"])
            for start in range(0, len(ids), 5000)
            for m in captions.meta(ids[start : start + 5000])
        ]
        return cls(words, np.asarray(captions.vectors(ids), dtype=np.float32), substitutes)

    def read(self, vectors: np.ndarray) -> list[set[str]]:
        """One reading per row of ``vectors`` ``(n, d)``: the words of its `READINGS` closest captions."""
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        k = min(READINGS, len(self.words))
        if not len(vectors) or not k:
            return [set() for _ in vectors]
        nearest = np.argpartition(-(vectors @ self.vectors.T), k - 1, axis=1)[:, :k]
        return [{w for i in row for w in self.words[int(i)]} for row in nearest]

    def changes(self, original: set[str], answer: set[str]) -> list[tuple[str, str]]:
        """The things ``answer`` says differently from ``original`` (`reading_changes`)."""
        return reading_changes(original, answer, self.substitutes)


def reading_changes(original: set[str], answer: set[str], substitutes: Substitutes) -> list[tuple[str, str]]:
    """``(word, replacing word)`` for each word one reading says where the other says a substitute; a
    replacing word counts once (two readings of the original may name it "left" and "bottom")."""
    only_answer = answer - original
    changes: list[tuple[str, str]] = []
    for word in sorted(original - answer):
        replaced = sorted((substitutes.of(word) & only_answer) - {b for _, b in changes})
        if replaced:
            changes.append((word, replaced[0]))
    return changes


def reading_levels(
    changes: list[list[tuple[str, str]]], gain: frozenset[str], lose: frozenset[str]
) -> np.ndarray:
    """Per item (its reading's changes from the original's, ``(old, new)``), its level in the image side's
    order, lower first. A change is the asked one where its new word is one the answer should gain (the
    text's "blue" in ``red -> blue``; a flip's target) or its old word one it should lose (a decrease's
    text, a flip's prediction). Where an item shows an asked change: the number of its other, unasked
    changes; where none (the captions do not see the asked change: the item does not make it, or the
    readings blur it): one past the largest of those. The asked change itself costs nothing, and a reading
    that misses it does not thereby look like a smaller change."""
    if not changes:
        return np.zeros(0, dtype=np.int64)
    split = [split_changes(c, gain, lose) for c in changes]
    unasked = np.array([len(other) for _, other in split])
    shows_asked = np.array([bool(asked) for asked, _ in split], dtype=bool)
    beyond = int(unasked[shows_asked].max()) + 1 if shows_asked.any() else 0
    return np.where(shows_asked, unasked, beyond).astype(np.int64)


def split_changes(
    changes: list[tuple[str, str]], gain: frozenset[str], lose: frozenset[str]
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(asked, unasked)``: the changes whose new word is one to gain or whose old word is one to lose,
    and the others."""
    asked = [(old, new) for old, new in changes if new in gain or old in lose]
    return asked, [change for change in changes if change not in asked]

"""Words a query uses that the index's captions never do, with the closest words they do use.

A misspelt word ("bleu", "cirlce") gives the model a text it has rarely seen: its score means little, and
the answers a counterfactual query returns for it are answers to another question. The caption
collection tells which words the index knows; a word it has never seen is named, with the known words
one or two edits away ("bleu -> blue").
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Iterable

import numpy as np

_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W\d_]+)?", re.UNICODE)  # words and numbers ("a handwritten 7")


def words_of(text: str) -> list[str]:
    """Lower-case words of a text (letters only; numbers and punctuation dropped)."""
    return _WORD.findall(text.lower())


#: Words that frame a caption rather than say what is in the picture: articles, prepositions, and the
#: prompt templates' nouns ("a photo of", "an image of"). Two captions with the same other words say the
#: same thing, whatever their order ("a red circle" and "an image of a circle, red").
FRAMING_WORDS = frozenset(
    "a an the of on in at to with and or is are be this that it its there here some one "
    "photo photograph picture image rendering render drawing painting illustration shot view "
    "showing shows depicting depicts close up".split()
)


def tokens_of(text: str) -> list[str]:
    """Lower-case words and numbers of a text: what a caption says ("the digit 7" is not "the digit 3",
    though the spelling checks, which look at letters only, read both as the same words)."""
    return _TOKEN.findall(text.lower())


def content_words(text: str) -> tuple[str, ...]:
    """The words and numbers of a text that say what it shows (`FRAMING_WORDS` dropped), sorted: equal
    tuples mean the two texts only reword each other."""
    return tuple(sorted(word for word in tokens_of(text) if word not in FRAMING_WORDS))


def entails(caption: str, text: str) -> bool:
    """The caption says everything the text says (every content word of the text is one of its own)."""
    wanted = set(content_words(text))
    return bool(wanted) and wanted <= set(content_words(caption))


def edit_distance(a: str, b: str, limit: int) -> int:
    """Optimal-string-alignment distance (insert, delete, substitute, swap two neighbours), or
    ``limit + 1`` as soon as it exceeds ``limit``."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], previous2[j - 2] + 1)
        if min(current) > limit:
            return limit + 1
        previous2, previous = previous, current
    return previous[-1]


class Lexicon:
    """The words of a caption collection, with how often each occurs."""

    def __init__(self, texts: Iterable[str]) -> None:
        self.counts: Counter[str] = Counter(w for text in texts for w in words_of(text))

    def __len__(self) -> int:
        return len(self.counts)

    def closest(self, word: str, n: int = 3) -> list[str]:
        """Known words within one edit (words up to 5 letters) or two (longer), closest first, then the
        most frequent; difflib's close matches when no word is that close."""
        limit = 1 if len(word) <= 5 else 2
        near = [(edit_distance(word, known, limit), known) for known in self.counts]
        near = [(d, known) for d, known in near if d <= limit]
        if near:
            near.sort(key=lambda pair: (pair[0], -self.counts[pair[1]], pair[1]))
            return [known for _, known in near[:n]]
        return difflib.get_close_matches(word, self.counts, n=n, cutoff=0.8)

    def unknown(self, text: str) -> list[tuple[str, list[str]]]:
        """``(word, closest known words)`` for each word of ``text`` the collection never uses.

        One- and two-letter words are skipped (articles and prepositions say little about a match).
        """
        seen: set[str] = set()
        out = []
        for word in words_of(text):
            if len(word) <= 2 or word in self.counts or word in seen:
                continue
            seen.add(word)
            out.append((word, self.closest(word)))
        return out


class Swaps:
    """Captions of the index that say the same as a text but for one word ("a yellow cross" for "a yellow
    star"): the rival readings an image that really matches the text must not prefer.

    Each caption of L words is filed under L keys, the hash of its words with one masked, in sorted numpy
    arrays (16 bytes a key) rather than a dict of word tuples; the captions' words are kept as int32 codes
    of a vocabulary (a million captions: ~150 MB of keys, not gigabytes; tuples of word strings alone took
    ~700 bytes a caption). A lookup compares the words themselves, so a hash collision never makes a
    false rival.
    """

    def __init__(self, ids: Iterable[int], texts: Iterable[str]) -> None:
        item_ids: list[int] = []
        vocabulary: dict[str, int] = {}
        codes: list[int] = []
        starts = [0]
        keys: list[int] = []
        owners: list[int] = []
        for item_id, text in zip(ids, texts, strict=True):
            words = tuple(words_of(text))
            owner = len(item_ids)
            item_ids.append(int(item_id))
            codes.extend(vocabulary.setdefault(word, len(vocabulary)) for word in words)
            starts.append(len(codes))
            for i in range(len(words)):
                keys.append(hash(_masked(words, i)))
                owners.append(owner)
        key_array = np.asarray(keys, dtype=np.int64)
        order = np.argsort(key_array, kind="stable")  # stable: captions keep their order within a key
        self._keys = key_array[order]
        self._owners = np.asarray(owners, dtype=np.int64)[order]
        self._ids = np.asarray(item_ids, dtype=np.int64)
        self._codes = np.asarray(codes, dtype=np.int32)
        self._starts = np.asarray(starts, dtype=np.int64)
        self._vocabulary = list(vocabulary)

    def _words(self, owner: int) -> tuple[str, ...]:
        codes = self._codes[self._starts[owner] : self._starts[owner + 1]].tolist()
        return tuple(self._vocabulary[code] for code in codes)

    def of(self, text: str) -> list[int]:
        """Ids of the captions that differ from ``text`` in exactly one word (same length)."""
        words = tuple(words_of(text))
        found: dict[int, None] = {}
        for i in range(len(words)):
            masked = _masked(words, i)
            key = hash(masked)
            lo = int(np.searchsorted(self._keys, key, side="left"))
            hi = int(np.searchsorted(self._keys, key, side="right"))
            for owner in self._owners[lo:hi].tolist():
                other = self._words(owner)
                if other != words and len(other) == len(words) and _masked(other, i) == masked:
                    found[int(self._ids[owner])] = None
        return list(found)


def _masked(words: tuple[str, ...], i: int) -> tuple[str, ...]:
    return (*words[:i], "\0", *words[i + 1 :])


class Substitutes:
    """Which content words the index's captions use in each other's place ("red" and "orange" in "a red
    circle" / "an orange circle"; "top" and "left" in "... at the top" / "... on the left"): two such words
    name different values of one thing, so a caption saying one where a text says the other contradicts it.

    Learnt from the captions alone, without a list of attributes: two captions whose content words
    (`content_words` order kept, `FRAMING_WORDS` dropped) agree but at one position make the two words
    there substitutes. Keys are 64-bit hashes in a sorted numpy array, as in `Swaps`. Groups wider than
    ``widest`` words (a slot anything fills) teach nothing and are skipped.
    """

    def __init__(self, texts: Iterable[str], widest: int = 64) -> None:
        vocabulary: dict[str, int] = {}
        keys: list[int] = []
        codes: list[int] = []
        for text in texts:
            words = tuple(w for w in tokens_of(text) if w not in FRAMING_WORDS)
            for i, word in enumerate(words):
                keys.append(hash(_masked(words, i)))
                codes.append(vocabulary.setdefault(word, len(vocabulary)))
        self._words = list(vocabulary)
        self._pairs: dict[str, set[str]] = {}
        if not keys:
            return
        key_array, code_array = np.asarray(keys, dtype=np.int64), np.asarray(codes, dtype=np.int32)
        order = np.argsort(key_array, kind="stable")
        key_array, code_array = key_array[order], code_array[order]
        starts = np.flatnonzero(np.r_[True, key_array[1:] != key_array[:-1]])
        ends = np.r_[starts[1:], len(key_array)]
        for start, end in zip(starts[ends - starts > 1], ends[ends - starts > 1], strict=True):
            group = {self._words[c] for c in np.unique(code_array[start:end]).tolist()}
            if 1 < len(group) <= widest:
                for word in group:
                    self._pairs.setdefault(word, set()).update(group - {word})

    def of(self, word: str) -> set[str]:
        """The words the captions use in ``word``'s place (empty when none)."""
        return self._pairs.get(word, set())

    def contradiction(self, text: str, caption: str) -> tuple[str, str] | None:
        """``(word of text, word of caption)`` when the caption says one where the text says the other,
        else None. Words only one of them names are no contradiction (a caption names what it names)."""
        text_words, caption_words = set(content_words(text)), set(content_words(caption))
        caption_only = caption_words - text_words
        for word in sorted(text_words - caption_words):
            clash = sorted(self.of(word) & caption_only)
            if clash:
                return word, clash[0]
        return None

"""What changed between two captions, word by word, and where those words sit among a model's tokens.

Examples::

    >>> changed_words("a large green cross", "a large blue cross")
    ([2], [2])
    >>> marked_html("a large blue cross", [2], "mark")
    'a large <mark>blue</mark> cross'
"""

from __future__ import annotations

import difflib
import html
import re
from collections.abc import Sequence

_WORD = re.compile(r"\S+")


def _norm(text: str) -> str:
    """A word or token without case, punctuation or BPE end marks (``</w>``, ``Ġ``, ``##``)."""
    text = text.replace("</w>", "").replace("\u0120", "").replace("##", "")
    return "".join(c for c in text.lower() if c.isalnum())


def changed_words(original: str, answer: str) -> tuple[list[int], list[int]]:
    """Word positions that differ: ``(removed from original, added in answer)`` (a swap is both)."""
    before = [_norm(w) for w in _WORD.findall(original)]
    after = [_norm(w) for w in _WORD.findall(answer)]
    removed: list[int] = []
    added: list[int] = []
    matcher = difflib.SequenceMatcher(a=before, b=after, autojunk=False)
    for tag, a0, a1, b0, b1 in matcher.get_opcodes():
        if tag != "equal":
            removed += range(a0, a1)
            added += range(b0, b1)
    return removed, added


def marked_html(text: str, positions: Sequence[int], tag: str = "mark") -> str:
    """``text`` as HTML with the words at ``positions`` wrapped in ``<tag>`` (everything escaped)."""
    wanted = set(positions)
    out: list[str] = []
    last = 0
    for index, match in enumerate(_WORD.finditer(text)):
        out.append(html.escape(text[last : match.start()]))
        word = html.escape(match.group())
        out.append(f"<{tag}>{word}</{tag}>" if index in wanted else word)
        last = match.end()
    out.append(html.escape(text[last:]))
    return "".join(out)


def token_positions(tokens: Sequence[str], text: str, words: Sequence[int]) -> tuple[int, ...]:
    """Positions of the tokens that spell the words at ``words`` of ``text`` (tokens in text order,
    each word spelt by one or more consecutive tokens; special or unmatched tokens are skipped).

    Returns:
        Token positions, or ``()`` when the tokens do not spell the text.
    """
    targets = [_norm(w) for w in _WORD.findall(text)]
    wanted = set(words)
    marked: list[int] = []
    word, spelt = 0, ""
    for position, token in enumerate(tokens):
        piece = _norm(str(token))
        if not piece or word >= len(targets):
            continue
        while word < len(targets) and not targets[word]:
            word += 1
        if word >= len(targets):
            break
        if not targets[word].startswith(spelt + piece):
            if spelt:  # a word the tokens spell differently: give up rather than mark the wrong ones
                return ()
            continue  # a special token (start / end of text)
        spelt += piece
        if word in wanted:
            marked.append(position)
        if spelt == targets[word]:
            word, spelt = word + 1, ""
    return tuple(marked)

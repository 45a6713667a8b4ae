"""Stage 6, re-score: walk the ordered candidates, re-encode each from its source (the file, or the caption
text) and keep the first ``k`` that still pass; an entry whose file changed or vanished is reported stale,
never returned."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from counterclip.engine.candidates import Candidates
from counterclip.engine.options import EngineOptions
from counterclip.engine.ordering import Ordered
from counterclip.engine.posing import Posed
from counterclip.engine.resources import IndexLike, Resources
from counterclip.engine.results import ResultItem
from counterclip.index_builder.parity import STORED_VECTOR_COSINE

STALE_COS = STORED_VECTOR_COSINE  # a re-encoded file further than this from its stored vector changed


@dataclass(frozen=True)
class Rescored:
    """One answer that passed: its item (scores set, no verdict yet), the vector it was scored from."""

    item: ResultItem
    vector: np.ndarray  # (d,) the fresh vector, or the stored one when there was nothing to re-score
    rescored: bool  # True when ``vector`` was re-encoded from the item's source


@dataclass(frozen=True)
class Verified:
    """The answers in order (at most k) and the stale index entries met on the way."""

    answers: list[Rescored]
    stale: list[dict[str, Any]] = field(default_factory=list)
    left_out: dict[str, int] = field(default_factory=dict)  # the candidates' copies of the query, by why

    @property
    def items(self) -> list[ResultItem]:
        return [answer.item for answer in self.answers]


def verify(
    res: Resources, posed: Posed, found: Candidates, ordered: Ordered, opts: EngineOptions
) -> Verified:
    """The first ``opts.k`` ordered candidates that still pass when re-scored from their source; a
    re-encoding further than `stale_cosine` from its stored vector is "changed since indexing"."""
    stale_cos = stale_cosine(res.index, res.encoder)
    answers: list[Rescored] = []
    stale: list[dict[str, Any]] = []
    rows = ordered.rows
    for start in range(0, len(rows), opts.k):
        if len(answers) == opts.k:
            break
        batch = rows[start : start + opts.k]
        fresh = rescore(posed, found, batch, stale_cos) if opts.verify else [(None, None)] * len(batch)
        for row, (new, reason) in zip(batch, fresh, strict=True):
            if reason is not None:
                item = posed.side.item(int(found.ids[row]))
                stale.append({"id": item.id, "path": item.path, "text": item.text, "reason": reason})
                continue
            answer = _scored(posed, found, row, new)
            if answer is None:
                continue
            answer.item.word_edits = ordered.word_edits.get(row)
            answer.item.rank = len(answers) + 1
            answers.append(answer)
            if len(answers) == opts.k:
                break
    return Verified(answers, stale, found.left_out)


def rescore(
    posed: Posed, found: Candidates, rows: Any, stale_cos: float
) -> list[tuple[np.ndarray | None, str | None]]:
    """``(fresh vector, None)`` per row re-encoded from its source, or ``(vector or None, why it is
    stale)``: the source is gone, or its re-encoding lies further than ``stale_cos`` from the stored
    vector ("changed since indexing")."""
    out = []
    for row, (new, reason) in zip(rows, posed.side.reencode(found.ids[rows]), strict=True):
        if reason is None and new is not None and float(new @ found.vectors[row]) < stale_cos:
            reason = "changed since indexing"  # same bytes, another vector: not this model's
        out.append((new, reason))
    return out


def _scored(posed: Posed, found: Candidates, row: int, fresh: np.ndarray | None) -> Rescored | None:
    """The item of ``row`` scored from its fresh vector or, when there is none (no verification asked,
    or no source to re-score from), its stored one; None when the fresh vector no longer passes."""
    if fresh is not None and not bool(posed.criterion.valid(fresh[None])[0]):
        return None
    return rescored_item(posed, found, row, fresh)


def rescored_item(posed: Posed, found: Candidates, row: int, fresh: np.ndarray | None) -> Rescored:
    """The item of ``row`` with its scores from its fresh vector (or its stored one when there is none),
    whether or not it passes the rule (the nearest unlike neighbour need not)."""
    criterion, stored = posed.criterion, found.vectors[row]
    item = posed.side.item(int(found.ids[row]))
    vector = fresh if fresh is not None else stored
    item.score_before = criterion.original
    item.score_after = float(criterion.score(vector[None])[0])
    item.delta = item.score_after - criterion.original
    item.distance = float(1.0 - stored @ posed.side.start)
    item.step = int(found.steps[row]) if found.steps is not None else None
    return Rescored(item, vector, fresh is not None)


def stale_cosine(index: IndexLike, encoder: Any) -> float:
    """`STALE_COS`, widened by how far the index's stored vectors (its recorded runtime, e.g. int8) and
    the re-encodings (the encoder) may each sit from torch fp32: the angles add."""
    from counterclip.models.onnx_common import combine_cosines

    manifest = getattr(index, "manifest", None)
    built = (getattr(getattr(manifest, "model", None), "runtime", None) or {}).get("tolerance_cosine", 1.0)
    tolerance = getattr(encoder, "tolerance_cosine", 1.0)
    return combine_cosines(STALE_COS, float(built), float(tolerance))

"""Verdicts and warnings: what a user may conclude from a counterfactual answer, in words.

`verified` is an absolute claim: the answer passes the query's rule, was re-scored from its own file or
text, and a calibration of the model says it really matches (increase, flip) or really does not (decrease).
An answer that passes the rule only relative to what the index holds is `weak`; one that has no file to
re-score is `unverifiable`. The warnings say why a user should look twice: no calibration, nothing in the
index that really matches, words the index has never seen, a text cut at the model's context.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from counterclip.calibration import Calibration
from counterclip.engine.criteria import Criterion
from counterclip.engine.results import ResultItem
from counterclip.engine.words import Lexicon, Substitutes, entails

# A verdict is a claim: "verified" needs a clear reading, not a coin flip at the match line. Between the
# two bounds an answer stays "weak" (measured on 64-px shapes images the bundled model reads less surely:
# a small red triangle scored p(match) 0.50 for "a red square").
MATCH = 0.9  # p(match) at or above this: verified as a match
NO_MATCH = 0.1  # p(match) at or below this: verified as no match
# A CLIP score is relative to other texts: an image that scores "a yellow star" high but "a yellow cross"
# (a caption of the index one word away) clearly higher is read by the model as a yellow cross. Clearly:
# the rival wins a two-way softmax with probability >= 0.75, i.e. by more than ln 3 in score units.
RIVAL_MARGIN = float(np.log(3.0))
VERIFIERS = ("itm",)  # second verifiers (--verify-with): the model's image-text matching head


DEFAULT_MIN_EFFECT = 0.4  # EngineOptions.min_effect: the least move of p(match) a real change makes


@dataclass(frozen=True)
class Evidence:
    """What a query's verdicts rest on: the calibration (None: none holds for this model and index), the
    original's own reading, and the checks an answer must pass besides the calibrated probability."""

    calibration: Calibration | None
    doubt: str | None = None  # why this query's scores cannot be trusted (e.g. misspelt words), if so
    rivals: np.ndarray | None = None  # (r, d) the asked text's one-word swaps among the index's captions
    rival_texts: tuple[str, ...] = ()
    before: float | None = None  # the original's p(match) (flip: of the target label's text)
    settled: str | None = None  # the original already is past the verified line, in words
    min_effect: float = DEFAULT_MIN_EFFECT  # the least move of p(match) (flip: class probability)
    asked: str | None = None  # the text the answers must match (flip: the target label)
    substitutes: Substitutes | None = None  # words the index's captions use in each other's place

    @property
    def usable(self) -> bool:
        return self.calibration is not None and self.calibration.informative and self.doubt is None

    def doubting(self, reason: str | None) -> Evidence:
        """The same evidence for a query whose text gives ``reason`` to doubt its scores."""
        return dataclasses.replace(self, doubt=reason) if reason else self

    def with_rivals(self, vectors: np.ndarray, texts: list[str]) -> Evidence:
        """The same evidence, checking image answers against these rival captions of the asked text."""
        return dataclasses.replace(self, rivals=vectors, rival_texts=tuple(texts)) if len(texts) else self

    def for_query(self, **fields: object) -> Evidence:
        """The same calibration with one query's readings (`before`, `settled`, `min_effect`, ...)."""
        return dataclasses.replace(self, **fields)

    def p_match(self, score: float) -> float | None:
        if self.calibration is None:
            return None
        return float(self.calibration.probability(score))

    def judge(
        self,
        item: ResultItem,
        criterion: Criterion,
        vector: np.ndarray,
        rescored: bool,
        own_captions: list[str] = (),
    ) -> None:
        """Set ``item.verdict``, ``verified``, ``p_match``, ``rival`` and ``reason`` (why it is not
        verified) for an answer that passed the rule; ``own_captions``: what the index says of the item."""
        match = float(criterion.match_score(vector[None])[0])
        item.p_match = self.p_match(match)
        reason = self._unusable() or self._not_past_line(item.p_match, criterion.wants_match) or self.settled
        reason = reason or self._too_small(item, criterion, vector)
        if criterion.wants_match and self.rivals is not None and item.kind == "image":
            rival_scores = criterion.pair_score.against(self.rivals, vector)
            best = int(np.argmax(rival_scores))
            if float(rival_scores[best]) - match > RIVAL_MARGIN:
                item.rival = self.rival_texts[best]
                reason = reason or (
                    f"the model reads it as {item.rival!r} (a caption of the index one word away) more "
                    "than as the text"
                )
        reason = reason or self._contradicted(own_captions, criterion.wants_match)
        if not rescored:
            item.verdict, reason = "unverifiable", "no file to re-score it from"
        else:
            item.verdict = "weak" if reason else "verified"
        item.verified = item.verdict == "verified"
        item.reason = reason

    def _unusable(self) -> str | None:
        if self.doubt:
            return self.doubt
        if self.calibration is None:
            return "no calibration holds for this model and index"
        if not self.calibration.informative:
            return f"the {self.calibration.name()} hardly separates true pairs from others"
        return None

    @staticmethod
    def _not_past_line(p: float | None, wants_match: bool) -> str | None:
        if p is None:
            return "no calibrated p(match)"
        if wants_match and p < MATCH:
            return f"p(match) {p:.2f} is below the verified line {MATCH:g}"
        if not wants_match and p > NO_MATCH:
            return f"p(match) {p:.2f} is above the verified line {NO_MATCH:g}"
        return None

    def _too_small(self, item: ResultItem, criterion: Criterion, vector: np.ndarray) -> str | None:
        """A real change: p(match) (flip: the target's class probability) moves at least `min_effect`."""
        if criterion.mode == "flip":
            before, after = criterion.original, float(criterion.score(vector[None])[0])
            what = "the target's class probability"
        else:
            before, after, what = self.before, item.p_match, "p(match)"
        if before is None or after is None or abs(after - before) >= self.min_effect - 1e-12:
            return None
        return (
            f"{what} moves {before:.2f} -> {after:.2f}: less than the {self.min_effect:g} a real change needs"
        )

    def _contradicted(self, own_captions: list[str], wants_match: bool) -> str | None:
        """What the index's own captions of the item say against the verdict: for a match, a caption naming
        another value of something the text names; for no match, a caption that says all the text says."""
        if not self.asked:
            return None
        if not wants_match:
            still = next((c for c in own_captions if entails(c, self.asked)), None)
            return f"its own caption {still!r} still says what the text says" if still else None
        if self.substitutes is None:
            return None
        for caption in own_captions:
            clash = self.substitutes.contradiction(self.asked, caption)
            if clash:
                return f"its own caption {caption!r} says {clash[1]!r} where the text says {clash[0]!r}"
        return None

    def describe(self) -> str | None:
        return None if self.calibration is None else self.calibration.name()


def second_opinion(items: list[ResultItem], p_itm: list[float | None], wants_match: bool) -> str | None:
    """Record the matching head's p(match) on each answer (``item.p_itm``); an answer it disagrees with
    (below 0.5 where a match is asked, above 0.5 where no match is) is not `verified` (it becomes `weak`).

    Returns:
        The warning naming how many answers the head disagrees with (None when it agrees with all).
    """
    disagree = 0
    for item, p in zip(items, p_itm, strict=True):
        item.p_itm = p
        if p is None or (p >= 0.5 if wants_match else p <= 0.5):
            continue
        disagree += 1
        if item.verdict == "verified":
            item.verdict, item.verified = "weak", False
    if not disagree:
        return None
    side = "no match" if wants_match else "still a match"
    return (
        f"the image-text matching head reads {disagree} of {len(items)} answers as {side} (p_itm "
        f"{'< 0.5' if wants_match else '> 0.5'}): none of them is 'verified'"
    )


def query_warnings(
    texts: list[str],
    criterion: Criterion,
    evidence: Evidence,
    lexicon: Lexicon | None,
    tokens: dict[str, int],
    context: int | None,
    rivalled: list[str] = (),
) -> list[str]:
    """The warnings of one query, most important first.

    Args:
        texts: the query's texts (the text, or the flip labels).
        criterion: the query's criterion (its numbers: best and original scores).
        evidence: the calibration in use.
        lexicon: the words of the index's captions (None: the index holds no captions).
        tokens: tokens per text as the model's tokenizer counts them (for the context-length warning).
        context: the model's context length in tokens (None: unknown).
        rivalled: the rival captions the answers were read as (quoted in one warning).
    """
    out: list[str] = [evidence.settled] if evidence.settled else []
    out += [evidence.doubt] if evidence.doubt else []
    if rivalled:
        out.append(
            f"{len(rivalled)} answer(s) score higher for a caption of the index one word away "
            f"({', '.join(sorted(set(rivalled))[:3])}): the model reads them as that, marked 'weak'"
        )
    calibration = evidence.calibration
    shown = texts[0] if len(texts) == 1 else criterion.validity.target or texts[0]
    if calibration is None:
        out.append(
            "no calibration holds for this model and index, so no answer is 'verified' (only 'weak'): "
            "build the index with captions or run `counterclip calibrate IDX --captions FILE`"
        )
    elif not calibration.informative:
        out.append(
            f"the {calibration.name()} hardly separates true pairs from others, so no answer is 'verified' "
            "(is the model trained?)"
        )
    elif not evidence.settled:
        out += _absolute_warnings(shown, criterion, calibration)
    return out + text_warnings(texts, lexicon, tokens, context)


def text_warnings(
    texts: list[str], lexicon: Lexicon | None, tokens: dict[str, int], context: int | None
) -> list[str]:
    """Words the index's captions never use (with the closest ones they do) and texts cut at the model's
    context length."""
    out = []
    for text in texts:
        if lexicon is not None and len(lexicon):
            for word, closest in lexicon.unknown(text):
                if closest:
                    suggestion = " or ".join(repr(c) for c in closest)
                    out.append(
                        f"the index's captions never use {word!r}; did you mean {suggestion}? ({word} -> {closest[0]})"
                    )
                else:
                    out.append(f"the index's captions never use {word!r}: its score may mean little")
        count = tokens.get(text)
        if context is not None and count is not None and count > context:
            out.append(
                f"{text[:40]!r}... is {count} tokens long and the model reads {context}: the rest was cut"
            )
    return out


def no_match_warning(text: str, best: float, calibration: Calibration) -> str | None:
    """The warning for an index whose best item for ``text`` is not a match (None when it is one)."""
    p = float(calibration.probability(best))
    if p >= MATCH:
        return None
    if p >= 0.5:
        return (
            f"the best match the index holds for {text!r} is uncertain: score {best:.1f} (p(match) {p:.2f}); "
            "answers below the verified line are marked 'weak'"
        )
    true_pairs = (
        f", true pairs score {calibration.positives.p10:.1f}-{calibration.positives.p90:.1f}"
        if calibration.positives is not None
        else ""
    )
    return (
        f"the index holds nothing that matches {text!r} well: best score {best:.1f}{true_pairs} "
        f"(p(match) {p:.2f}); answers are the closest the index has, marked 'weak'"
    )


def _absolute_warnings(text: str, criterion: Criterion, calibration: Calibration) -> list[str]:
    """Nothing in the index matches (increase); the original does not match to begin with (decrease)."""
    best = criterion.best_match_score
    if criterion.wants_match and best is not None:
        warning = no_match_warning(text, best, calibration)
        return [warning] if warning else []
    if not criterion.wants_match:
        p = float(calibration.probability(criterion.original))
        if p < 0.5:
            return [
                f"the original does not match {text!r} to begin with: score {criterion.original:.1f} "
                f"(p(match) {p:.2f}), so there is no match to take away"
            ]
    return []

"""Query settings of the engine (one frozen dataclass; a query derives its own with ``dataclasses.replace``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from counterclip.engine.path import PathSettings


@dataclass(frozen=True)
class EngineOptions:
    """Query settings. Derive per-call variants with ``dataclasses.replace`` (never mutate shared state)."""

    k: int = 5  # results returned
    path: PathSettings = field(default_factory=PathSettings)  # gradient walk of the target embedding
    candidates_per_point: int = 64  # FAISS neighbours gathered around each path point
    candidates_around_origin: int = 256  # neighbours gathered around the original itself (0 = path only)
    candidates_at_target: int = 64  # neighbours gathered around the path's limit, the target embedding
    # increase: valid if score >= best - margin * min(best - original, best - typical), i.e. the candidate closes
    # 80% of the way from the original to the best match the index holds. A margin of the whole spread (the
    # earlier rule, 0.05 of it) refused the minimal answer of one query in five; a wide margin of the spread
    # lets the original's near-copies through. Chosen on a shapes set kept apart from the reported eval (seed 2,
    # 3k images, 150 queries, shipped model): margin 0.05 -> minimal@1 0.89; 0.1 -> 0.99; 0.2 and 0.3 -> 1.0;
    # 0.4 -> 0.97 (hit@1 drops too).
    match_margin: float = 0.2
    # decrease: valid if score <= best - margin * (best - typical). A caption or image that changes one thing
    # the text names still scores well above the typical non-match, so "closer to typical than to best" (the
    # earlier rule, margin 0.5) refused most one-attribute changes. Same held-apart set, text side: 0.1 and
    # 0.25 -> minimal@1 1.0; 0.4 -> 0.68; 0.5 -> 0.17.
    nomatch_margin: float = 0.25
    threshold: float | None = None  # absolute score threshold overriding the two rules above
    # "verified" needs a real change: the answer's p(match) differs from the original's by at least this
    # much (flip: the target's class probability), besides being past the verified line (0.9 / 0.1). 0.4
    # asks an increase to start from at most an even chance (0.5 -> 0.9) and a decrease from at least one.
    min_effect: float = 0.4
    # Distinct changes among the k: MMR weight on how unlike the already picked changes (embedding
    # difference directions; edited word positions for captions) the next answer is; 0 = closest first.
    diversity: float = 0.3
    change_pool: int = 256  # closest valid candidates the distinct-change ranking chooses among
    verify: bool = True  # re-encode returned items from their files / texts before returning them
    baseline_pool: int = 50  # "closest valid among the text's top N" baseline
    baselines: bool = True  # compute the baselines alongside
    typical_sample: int = 1024  # index vectors sampled to estimate a typical (non-matching) score
    text_proximity: str = "words"  # text side ranking: "words" (fewest word edits first) or "embedding"
    # image side ranking: "embedding" (the cosine to the original) or "readings" (among the reading_pool
    # closest valid candidates, those the index's captions read as making the asked change first, fewest
    # other things changed first: `counterclip.engine.readings`; the cosine where the index has no
    # captions or the model's readings of it do not hold). Not the default: on six shapes worlds its
    # answers changed fewer unasked attributes than the cosine's on three, as many on two, more on one
    # (1-2 queries of ~190 each way), for +11-13 ms a query (100k-1M vectors); the card's
    # understandability, which reads the same captions, favours it by construction.
    image_proximity: str = "embedding"
    reading_pool: int = 16
    # which calibration the verdicts use: "auto" (the best that holds, see Engine.evidence) or one source:
    # "native", "captions" (recorded with the index), "model" (shipped with it), "self", "none"
    calibration: str = "auto"
    # a second verifier: "itm" re-scores every answer with the model's image-text matching head (BLIP) and
    # an answer it disagrees with is not verified; None: the calibrated verdict alone
    verify_with: str | None = None
    # the quality card of every answer (`counterclip.engine.quality`): extra model passes, counted in it;
    # off by default, so a plain query costs what it did
    quality: bool = False
    # --where: only images whose payload passes this filter are candidates, on every store (the language:
    # counterclip.index_builder.stores.filters); None: the whole collection
    where: str | None = None


def query_options(
    defaults: EngineOptions, options: EngineOptions | None, k: int | None, overrides: dict[str, Any]
) -> EngineOptions:
    """The options of one query: the engine's defaults, then ``options``, then keyword overrides and ``k``.

    ``overrides`` are checked by the caller (`keywords.refuse_unknown`: an unknown one is the library's own
    `InputError`, the same message the HTTP service gives).
    """
    opts = options or defaults
    if overrides:
        opts = dataclasses.replace(opts, **overrides)
    return dataclasses.replace(opts, k=k) if k is not None else opts

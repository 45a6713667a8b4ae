"""The counterfactual engine's public face: open an index, search it, ask it for counterfactuals.

A counterfactual query is a one-way pipeline of stages, each a module with one job and plain data between
them; `Engine.counterfactuals` reads as the list of stages::

    request.resolve_image   the query image embedded (decoded like the index, or read from it)   QueryImage
    posing.pose             the moving side and the mode's criterion, with the index's numbers      Posed
    path.target_path        gradient ascent of the criterion's objective from the original     TargetPath
    candidates.gather       FAISS around the path points, less the query and its copies           Candidates
    ordering.order          valid on stored vectors, closest first, distinct changes              Ordered
    verify.verify           re-encoded from the file / text until k still pass; stale ones out    Verified
    judge.judge             verdicts, warnings, the second verifier's opinion                     Judged
    baselines.baselines     nearest unlike neighbour, first valid text match, closest valid       items
    quality.assess          (quality=True) the five qualities of every answer, beside references  cards
                            -> CounterfactualResult

What differs between the image and the caption side lives in `sides`; between increase, decrease and flip
in `criteria`; the pair score in `counterclip.scores`. What a query reads besides its own data (the pinned
index generation, the model, per-generation statistics) comes in one `resources.Resources`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from counterclip.engine import baselines, candidates, judge, ordering, posing, quality, request, verify
from counterclip.engine.keywords import refuse_unknown
from counterclip.engine.live import LiveIndex, one_generation
from counterclip.engine.options import EngineOptions, query_options
from counterclip.engine.path import target_path
from counterclip.engine.resources import GenerationState, IndexLike, Resources, check_model_fits, open_parts
from counterclip.engine.results import CounterfactualResult, SearchResult
from counterclip.engine.search import VectorHits, search_batch, search_vectors
from counterclip.engine.search import search as search_collection
from counterclip.engine.timing import Stopwatch
from counterclip.engine.verdicts import Evidence
from counterclip.engine.words import Lexicon

if TYPE_CHECKING:  # the models import torch; a text search with a torch-free text model needs none
    from counterclip.models import ClipModel

LOG = logging.getLogger(__name__)


class Engine:
    """Counterfactuals and search over one index.

    Safe for concurrent read queries from several threads: queries never mutate the engine; per-call
    settings are passed as arguments. A long-running engine follows the index's generations: each query
    reads one generation from start to end, and the first query after an update switches to the new
    one (no restart; see `counterclip.engine.live`).

    Examples::

        engine = Engine.open("photos.idx")
        result = engine.counterfactuals(image="cat.jpg", text="a photo of a dog", k=5)
        for item in result.items:
            print(item.rank, item.path, item.score_before, item.score_after)
    """

    def __init__(
        self,
        index: IndexLike,
        model: ClipModel,
        options: EngineOptions | None = None,
        encoder: Any = None,
    ) -> None:
        """An engine over ``index`` with the model that built it.

        Args:
            index: an opened index (`counterclip.index_builder.Index`) or any `IndexLike`.
            model: the `ClipModel` that built it (same fingerprint); explainers and reports use it.
            options: default query settings.
            encoder: what embeds queries and re-scores answers (same encode API as the model, e.g. an
                `counterclip.models.OnnxEncoder` over it). Default: the model itself (torch).
        """
        check_model_fits(index, model)
        self._live = LiveIndex(index)
        self.model = model
        self.encoder = encoder if encoder is not None else model
        self.options = options or EngineOptions()
        self._lock = threading.RLock()  # guards the lazily computed, then read-only, per-generation state

    @classmethod
    def open(
        cls,
        index_dir: str | Path,
        device: str = "auto",
        options: EngineOptions | None = None,
        runtime: str = "torch",
        precision: str = "fp32",
        model: str | ClipModel | None = None,
    ) -> Engine:
        """Open an index directory with the model it was built with.

        Args:
            index_dir: a directory written by ``counterclip build`` (FAISS, or ``--store``: a vector
                store), or by ``counterclip attach`` (an app's vector store collection).
            device: ``auto`` | ``cpu`` | ``cuda``.
            options: default query settings.
            runtime: ``torch`` or ``onnx`` (extra ``onnx``): what embeds queries and re-scores answers;
                an index built with one runtime can be queried with the other.
            precision: ``onnx`` only: the image tower's precision (int8 reuses a tower accepted before).
            model: where the index's model is now (spec or loaded model), if its files moved: accepted only
                for the recorded weights' fingerprint. Default: None (the recorded spec, absolute paths).
        """
        started = time.perf_counter()
        index, model, encoder = open_parts(index_dir, device, runtime, precision, model)
        LOG.info("opened %s in %.1f s", index_dir, time.perf_counter() - started)
        return cls(index, model, options, encoder)

    @property
    def index(self) -> IndexLike:
        """The index generation this thread's query reads (outside a query: the current one)."""
        return self._live.index

    def pinned(self) -> Any:
        """A context that keeps one index generation for the enclosed calls (re-entrant; yields the index).

        Every query pins one by itself; a caller that makes several calls about one answer (a server
        request: query, then metadata and files of the answers) pins around them all.
        """
        return self._live.pinned()

    def refresh(self) -> bool:
        """Switch to the index's newest generation now (queries do this by themselves); True if it changed."""
        return self._live.refresh(wait=True)

    def close(self) -> None:
        self._live.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def resources(self) -> Resources:
        """What a query reads: this thread's index generation, the model, the encoder, the defaults."""
        state = GenerationState(self._live.generation.cache, self._lock)
        return Resources(self.index, self.model, self.encoder, self.options, state)

    # --- the pieces a caller may want on their own ----------------------------------------------
    @property
    def pair_score(self):  # noqa: ANN201 - counterclip.scores.PairScore
        """The model's pair score: every score the engine reports is this one."""
        return self.model.pair_score

    def indexed_image(self, path: str | Path) -> Image.Image | None:
        """The upright RGB image of a file as the index decoded it (what its stored vector embeds); None
        when it is missing or unreadable. Relative paths are the index root's."""
        return request.indexed_image(self.index, path)

    def encode_text(self, text: str) -> np.ndarray:
        """``(d,)`` normalised embedding of a non-empty text."""
        return request.encode_text(self.encoder, text)

    @one_generation
    def resolve_image(self, image: str | Path | Image.Image | int) -> request.QueryImage:
        """Embed a query image given as a path, a PIL image, or an index id."""
        return request.resolve_image(self.index, self.encoder, image)

    @property
    def evidence(self) -> Evidence:
        """The calibration the verdicts use by default (see `resources.choose_calibration`)."""
        return self.evidence_for(self.options.calibration)

    def evidence_for(self, source: str) -> Evidence:
        """The calibration of ``source`` (see `EngineOptions.calibration`), computed once per generation."""
        return self.resources().evidence(source)

    @property
    def lexicon(self) -> Lexicon | None:
        """The words of the index's captions (None when it holds none), built once per generation."""
        return self.resources().lexicon

    # --- queries ----------------------------------------------------------------------------------
    @one_generation
    def search(
        self,
        text: str | None = None,
        image: str | Path | Image.Image | int | None = None,
        k: int = 10,
        collection: str = "images",
        where: str | None = None,
        **unknown: Any,
    ) -> SearchResult:
        """Plain retrieval by text or by image: a `SearchResult` of `SearchHit` items (similarity, score).

        Args:
            text: a query text, or
            image: a query image (path, PIL, or index id).
            k: results. Default: 10.
            collection: ``images`` or ``captions``: which collection of the index to search.
            where: only images that pass this filter (``'album = "2024"'``, on every store). Default: all.
        """
        refuse_unknown("search", unknown)
        return search_collection(self.resources(), text, image, k, collection, where)

    @one_generation
    def search_vectors(
        self, vectors: Any, k: int = 10, collection: str = "images", **unknown: Any
    ) -> VectorHits:
        """Faiss-like: ``(nq, d)`` (or ``(d,)``) embeddings in, normalised here; per query the ``k`` nearest ids
        and cosines out (``D, I = engine.search_vectors(x, 10)``; ``.scores``; id -1 past the end)."""
        refuse_unknown("search_vectors", unknown)
        return search_vectors(self.resources(), vectors, k, collection)

    @one_generation
    def search_batch(
        self,
        texts: Sequence[str] | None = None,
        images: Sequence[str | Path | Image.Image | int] | None = None,
        vectors: Any = None, k: int = 10, collection: str = "images", **unknown: Any,
    ) -> list[SearchResult]:  # fmt: skip
        """Plain retrieval for a batch of queries (exactly one of ``texts``, ``images`` or ``vectors``
        ``(nq, d)``): one `SearchResult` per query, in order, as `search` gives it."""
        refuse_unknown("search_batch", unknown)
        return search_batch(self.resources(), texts, images, vectors, k, collection)

    @one_generation
    def counterfactuals(
        self,
        image: str | Path | Image.Image | int,
        text: str | None = None,
        side: str = "image",
        mode: str = "increase",
        labels: Sequence[str] | None = None,
        target: str | None = None,
        k: int | None = None,
        options: EngineOptions | None = None,
        **overrides: Any,
    ) -> CounterfactualResult:
        """Verified counterfactuals for an (image, text) pair.

        Args:
            image: the query image (path, PIL image, or index id).
            text: the query text (required unless ``mode="flip"``).
            side: ``image`` (return images that move the score) or ``text`` (return captions).
            mode: ``increase`` (find near-original items that match the text), ``decrease`` (near-original
                items that stop matching), or ``flip`` (the zero-shot prediction over ``labels`` becomes
                ``target``; image side only).
            labels: class texts for ``flip``.
            target: the label the prediction must flip to (``flip``).
            k: results. Default: ``options.k``.
            options: settings; keyword ``overrides`` (e.g. ``match_margin=0.1``) replace fields of it.

        Returns:
            CounterfactualResult with verified items closest to the original first, the validity rule and
            threshold used, the baselines, stale entries found, and timings.
        """
        watch = Stopwatch()  # stages below: one line each, plain data between them
        refuse_unknown("counterfactuals", overrides)  # the library's own error, as over HTTP
        res, opts = self.resources(), query_options(self.options, options, k, overrides)
        asked = {"image": image, "text": text, "side": side, "mode": mode, "labels": labels, "target": target}
        posed = posing.pose(res, request.resolve(res, opts, **asked), opts)
        watch.lap("encode")
        walked = target_path(posed.side.start, posed.criterion, opts.path)
        watch.lap("path")
        found = candidates.gather(posed, walked.points, opts)
        verified = verify.verify(res, posed, found, ordering.order(posed, found, opts), opts)
        watch.lap("search_verify")
        judged = judge.judge(res, posed, verified, opts)
        watch.lap("judge")
        compared = {}
        if opts.baselines:
            compared = baselines.baselines(res, posed, judged.evidence, opts)
            watch.lap("baselines")
        graded = None
        if opts.quality:  # the answers' quality cards: extra passes, counted in them
            graded = quality.assess(res, posed, verified, judged, compared, opts, asked)
            watch.lap("quality")
        return CounterfactualResult(
            side=posed.side.name, mode=mode, text=text if mode != "flip" else None, query=posed.query,
            validity=posed.criterion.validity, items=judged.items, baselines=compared, stale=verified.stale,
            warnings=judged.warnings, calibration=judged.evidence.describe(), candidates=len(found.ids),
            path_values=walked.values.tolist(), timings=watch.total(), original=judged.original,
            left_out=judge.copies_left_out(verified.left_out), order=ordering.in_words(posed, opts), quality=graded,
        )  # fmt: skip

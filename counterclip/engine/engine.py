"""The counterfactual engine: open an index, encode queries, walk a target path, search, verify, rank.

A query reads as a straight line (`Engine.counterfactuals`): side -> criterion -> path -> candidates ->
rank -> verify -> baselines -> result. What differs between the image and the caption side lives in
`sides`; what differs between increase, decrease and flip lives in `criteria`; the pair score lives in
`counterclip.scores`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

from counterclip.calibration import MIN_PAIRS, Calibration, native_calibration, self_calibration
from counterclip.engine.criteria import MODES, Criterion, Decrease, Flip, Increase, check_labels
from counterclip.engine.live import LiveIndex, one_generation
from counterclip.engine.path import PathSettings, gradient_path
from counterclip.engine.ranking import mmr_order
from counterclip.engine.results import CounterfactualResult, ResultItem, SearchResult
from counterclip.engine.sides import SIDES, CaptionSide, CollectionLike, ImageSide, Side
from counterclip.engine.verdicts import (
    VERIFIERS,
    Evidence,
    misspelt,
    no_match_warning,
    query_warnings,
    second_opinion,
    text_warnings,
)
from counterclip.engine.words import Lexicon, Swaps
from counterclip.errors import InputError
from counterclip.index_builder.decode import DecodeError, LoadedImage
from counterclip.index_builder.decode import load_image as decode_image

if TYPE_CHECKING:  # the models import torch; a text search with a torch-free text model needs none
    from counterclip.models import ClipModel

LOG = logging.getLogger(__name__)
DUPLICATE_COS = 0.9999  # a candidate this close to the original is the original (or an exact copy)
STALE_COS = 0.999  # a re-encoded file further than this from its stored vector changed since indexing


class IndexLike(Protocol):
    """What the engine needs from an index (``counterclip.index_builder.Index`` implements it)."""

    root: Path
    dim: int
    images: CollectionLike
    captions: CollectionLike
    calibration: Calibration | None  # fitted on the index's known pairs, if any

    def image_id_for_path(self, path: str | Path) -> int | None: ...
    def load_image(self, path: str | Path) -> LoadedImage: ...


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
    # Distinct changes among the k: MMR weight on how unlike the already picked changes (embedding
    # difference directions; edited word positions for captions) the next answer is; 0 = closest first.
    diversity: float = 0.3
    change_pool: int = 256  # closest valid candidates the distinct-change ranking chooses among
    verify: bool = True  # re-encode returned items from their files / texts before returning them
    baseline_pool: int = 50  # "closest valid among the text's top N" baseline
    baselines: bool = True  # compute the baselines alongside
    typical_sample: int = 1024  # index vectors sampled to estimate a typical (non-matching) score
    text_proximity: str = "words"  # text side ranking: "words" (fewest word edits first) or "embedding"
    # which calibration the verdicts use: "auto" (the best that holds, see Engine.evidence) or one source:
    # "native", "captions" (recorded with the index), "model" (shipped with it), "self", "none"
    calibration: str = "auto"
    # a second verifier: "itm" re-scores every answer with the model's image-text matching head (BLIP) and
    # an answer it disagrees with is not verified; None: the calibrated verdict alone
    verify_with: str | None = None


@dataclass(frozen=True)
class QueryImage:
    """The query image, embedded: its vector, its index id (when indexed) and how it was given."""

    vector: np.ndarray  # (d,)
    id: int | None
    described: dict[str, Any]


@dataclass(frozen=True)
class _Asked:
    """What a counterfactual query asks, as given (checked by `Engine._check_query`)."""

    text: str | None
    side: str
    mode: str
    labels: Sequence[str] | None
    target: str | None


@dataclass
class _Candidates:
    """Candidates of one query after filtering: ids, stored vectors, the path step that found each."""

    ids: np.ndarray
    vectors: np.ndarray
    steps: np.ndarray | None


class _Stopwatch:
    """Seconds per stage of one query (``timings`` of the result)."""

    def __init__(self) -> None:
        self.started = self.last = time.perf_counter()
        self.timings: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = now - self.last
        self.last = now

    def total(self) -> dict[str, float]:
        self.timings["total"] = time.perf_counter() - self.started
        return self.timings


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
        if index.dim != model.embed_dim:
            raise InputError(
                f"index vectors have dimension {index.dim} but the model embeds to {model.embed_dim}"
            )
        built_with = getattr(index, "fingerprint", None)
        if built_with is not None and built_with != model.fingerprint:
            raise InputError(
                f"the index was built with another model (fingerprint {built_with[:12]}) than {model.spec} "
                f"({model.fingerprint[:12]}); open it with Engine.open(INDEX) to load its own model"
            )
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
    ) -> Engine:
        """Open an index directory with the model it was built with.

        Args:
            index_dir: a directory written by ``counterclip build``.
            device: ``auto`` | ``cpu`` | ``cuda``.
            options: default query settings.
            runtime: ``torch`` or ``onnx`` (extra ``onnx``): what embeds queries and re-scores answers;
                an index built with one runtime can be queried with the other.
            precision: ``onnx`` only: the image tower's precision (int8 reuses a tower accepted before).
        """
        from counterclip.index_builder import Index
        from counterclip.index_builder.manifest import Manifest
        from counterclip.models import load_model

        started = time.perf_counter()
        model = load_model(Manifest.read(Path(index_dir).expanduser()).model.spec, device=device)
        index = Index.open(index_dir, model=model)  # checks the fingerprint: same weights as the build
        encoder = None
        if runtime != "torch":
            from counterclip.models.onnx_runtime import create_encoder

            encoder = create_encoder(
                model, runtime, **({"precision": precision} if precision != "fp32" else {})
            )
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

    # --- encoding -----------------------------------------------------------------------------
    @property
    def pair_score(self):  # noqa: ANN201 - counterclip.scores.PairScore
        """The model's pair score: every score the engine reports is this one."""
        return self.model.pair_score

    def _decode(self, path: str | Path) -> LoadedImage:
        """Decode a file exactly as the index decoded its images (same limits and JPEG scaling), so a
        re-encoded indexed file reproduces its stored vector."""
        index_loader = getattr(self.index, "load_image", None)
        return index_loader(path) if index_loader is not None else decode_image(path)

    def indexed_image(self, path: str | Path) -> Image.Image | None:
        """The upright RGB image of a file as the index decoded it (what its stored vector embeds); None
        when it is missing or unreadable. Relative paths are the index root's."""
        try:
            return self._decode(path).image
        except DecodeError:
            return None

    def encode_text(self, text: str) -> np.ndarray:
        """``(d,)`` normalised embedding of a non-empty text."""
        if not isinstance(text, str) or not text.strip():
            raise InputError("text is empty: give the caption to score, e.g. --text 'a photo of a dog'")
        return _array(self.encoder.encode_texts([text.strip()]))[0]

    @one_generation
    def resolve_image(self, image: str | Path | Image.Image | int) -> QueryImage:
        """Embed a query image given as a path, a PIL image, or an index id."""
        if isinstance(image, (int, np.integer)) and not isinstance(image, bool):
            try:
                vector = self.index.images.vectors([int(image)])[0]
                path = self.index.images.meta([int(image)])[0]["path"]
            except KeyError:
                raise InputError(f"image id {int(image)} is not in the index") from None
            return QueryImage(vector, int(image), {"id": int(image), "path": path})
        if isinstance(image, Image.Image):
            # the builder's rules (EXIF orientation, alpha on white, 16-bit scaling, shrinking): a PIL copy
            # of an indexed file embeds like the file did
            decode_query = getattr(self.index, "decode_query", None)
            try:
                pil = decode_query(image).image if decode_query is not None else image.convert("RGB")
            except DecodeError as exc:
                raise InputError(f"query image is not usable: {exc}") from exc
            return QueryImage(_array(self.encoder.encode_pil([pil]))[0], None, {"pil": True})
        path = Path(image).expanduser()
        if not path.is_file():
            raise InputError(f"query image not found: {path}")
        try:
            # absolute: the index resolves relative paths against its own root, a user means the cwd
            pil = self._decode(path.resolve()).image
        except DecodeError as exc:
            raise InputError(f"query image {path} is not a readable image: {exc}") from exc
        indexed = self.index.image_id_for_path(path.resolve())
        return QueryImage(
            _array(self.encoder.encode_pil([pil]))[0], indexed, {"path": str(path), "id": indexed}
        )

    def _typical_sample(self, collection: CollectionLike) -> np.ndarray:
        """A fixed random sample of a collection's vectors (cached) for the typical-score estimate."""
        samples = self._live.generation.cache.setdefault("samples", {})
        with self._lock:
            if collection.name not in samples:
                ids = np.asarray(collection.ids)
                rng = np.random.default_rng(0)
                take = (
                    ids
                    if len(ids) <= self.options.typical_sample
                    else rng.choice(ids, self.options.typical_sample, replace=False)
                )
                samples[collection.name] = collection.vectors(np.sort(take))
            return samples[collection.name]

    # --- evidence ---------------------------------------------------------------------------------
    @property
    def evidence(self) -> Evidence:
        """The calibration the verdicts use (with the engine's options), chosen once per engine.

        ``auto``, in order: the model's own absolute score (a sigmoid link); a calibration the user fitted
        with ``counterclip calibrate``; the one shipped with the model; the one fitted at build time on the
        index's captions; one fitted from the index itself (images against the index's captions); none.
        """
        return self.evidence_for(self.options.calibration)

    def evidence_for(self, source: str) -> Evidence:
        """The calibration of ``source`` (see `EngineOptions.calibration`), computed once."""
        chosen = self._live.generation.cache.setdefault("evidence", {})
        with self._lock:
            if source not in chosen:
                chosen[source] = Evidence(self._choose_calibration(source))
            return chosen[source]

    def _choose_calibration(self, wanted: str) -> Calibration | None:
        if wanted not in ("auto", "native", "captions", "model", "self", "none"):
            raise InputError(
                f"calibration must be auto, native, captions, model, self or none, got {wanted!r}"
            )
        if wanted == "none":
            return None
        if wanted in ("auto", "native") and self.pair_score.absolute:
            return native_calibration()
        fingerprint = self.model.fingerprint
        from_index = getattr(self.index, "calibration", None)
        if from_index is not None and from_index.fingerprint != fingerprint:
            from_index = None  # fitted for another model: never applied
        shipped = getattr(self.model, "calibration", None)
        if shipped is not None and shipped.fingerprint != fingerprint:
            shipped = None
        if wanted == "captions":
            return from_index
        if wanted == "model":
            return shipped
        if wanted == "auto":
            if from_index is not None and from_index.extras.get("origin") == "calibrate":
                return from_index
            if shipped is not None or from_index is not None:
                return shipped or from_index
        if wanted not in ("auto", "self"):
            return None
        images, captions = self.index.images, self.index.captions
        if captions.count < 2 or images.count < MIN_PAIRS:
            return None
        rng = np.random.default_rng(0)
        image_ids = np.sort(rng.choice(images.ids, min(images.count, 1000), replace=False))
        caption_ids = np.sort(rng.choice(captions.ids, min(captions.count, 20000), replace=False))
        try:
            return self_calibration(
                images.vectors(image_ids), captions.vectors(caption_ids), self.pair_score, fingerprint
            )
        except InputError:
            return None

    @property
    def lexicon(self) -> Lexicon | None:
        """The words of the index's captions (None when it holds none), built once."""
        return self._caption_words()[0]

    def _caption_words(self) -> tuple[Lexicon | None, Swaps | None]:
        """The lexicon and the one-word-swap table of the index's captions, built once (a sample of 200k
        captions for larger collections: enough to know their words)."""
        cache = self._live.generation.cache
        with self._lock:
            if "words" not in cache and self.index.captions.count:
                ids = np.asarray(self.index.captions.ids)
                if len(ids) > 200_000:
                    ids = np.sort(np.random.default_rng(0).choice(ids, 200_000, replace=False))
                texts = [
                    m["text"]
                    for start in range(0, len(ids), 5000)
                    for m in self.index.captions.meta(ids[start : start + 5000])
                ]
                cache["words"] = Lexicon(texts), Swaps(ids, texts)
            return cache.get("words", (None, None))

    def _with_rivals(
        self, evidence: Evidence, criterion: Criterion, side: Side, texts: list[str]
    ) -> Evidence:
        """Evidence that checks image answers against the index's one-word swaps of the asked text."""
        _, swaps = self._caption_words()
        if swaps is None or side.kind != "image" or not criterion.wants_match:
            return evidence
        asked = criterion.validity.target or texts[0]
        ids = np.asarray(swaps.of(asked), dtype=np.int64)
        if not len(ids):
            return evidence
        rivals = [m["text"] for m in self.index.captions.meta(ids)]
        return evidence.with_rivals(self.index.captions.vectors(ids), rivals)

    def _token_counts(self, texts: list[str]) -> tuple[dict[str, int], int | None]:
        """Tokens per text and the model's context (the context-length warning), where the model says."""
        count = getattr(self.model, "count_tokens", None)
        context = getattr(self.model, "context_length", None)
        if count is None or context is None:
            return {}, None
        return {t: int(count(t)) for t in texts}, int(context)

    def _warnings(
        self, texts: list[str], criterion: Criterion, evidence: Evidence, rivalled: list[str]
    ) -> list[str]:
        tokens, context = self._token_counts(texts)
        return query_warnings(texts, criterion, evidence, self.lexicon, tokens, context, rivalled)

    # --- plain search ---------------------------------------------------------------------------
    @one_generation
    def search(
        self,
        text: str | None = None,
        image: str | Path | Image.Image | int | None = None,
        k: int = 10,
        collection: str = "images",
    ) -> SearchResult:
        """Plain retrieval by text or by image.

        Args:
            text: a query text, or
            image: a query image (path, PIL, or index id).
            k: results. Default: 10.
            collection: ``images`` or ``captions``: which collection of the index to search.
        """
        if (text is None) == (image is None):
            raise InputError("give exactly one of text or image to search by")
        if collection not in ("images", "captions"):
            raise InputError(f"collection must be images or captions, got {collection!r}")
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"k must be a positive number of results, got {k!r}")
        watch = _Stopwatch()
        exclude = None
        if text is not None:
            query_vec, query = self.encode_text(text), {"text": text}
        else:
            resolved = self.resolve_image(image)
            query_vec, query = resolved.vector, resolved.described
            exclude = resolved.id if collection == "images" else None
        watch.lap("encode")
        side = self._side(
            "image" if collection == "images" else "text", query_vec, exclude, text or "", self.options
        )
        scores, ids = side.collection.search(query_vec[None].astype(np.float32), k + (exclude is not None))
        cross_modal = (text is not None) == (collection == "images")  # an image-text pair: p(match) applies
        evidence = self.evidence if cross_modal else Evidence(None)
        items = []
        for score, item_id in zip(scores[0], ids[0], strict=True):
            if item_id < 0 or int(item_id) == exclude:
                continue
            item = side.item(int(item_id))
            item.score_after = float(self.pair_score.of_cos(float(score)))
            item.p_match = evidence.p_match(item.score_after) if evidence.usable else None
            item.distance = float(1.0 - score)
            item.rank = len(items) + 1
            items.append(item)
            if len(items) == k:
                break
        watch.lap("search")
        warnings = []
        if text is not None:
            warnings = text_warnings([text], self.lexicon, *self._token_counts([text]))
            if cross_modal and evidence.usable and items:
                warnings += [
                    w for w in [no_match_warning(text, items[0].score_after, evidence.calibration)] if w
                ]
        return SearchResult(query, items, watch.total(), warnings)

    # --- counterfactuals ------------------------------------------------------------------------
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
        opts = self._query_options(options, k, overrides)
        asked = _Asked(text, side, mode, labels, target)
        self._check_query(asked, opts)
        watch = _Stopwatch()
        moving, criterion, query = self._side_and_criterion(self.resolve_image(image), asked, opts)
        watch.lap("encode")
        path, values = gradient_path(moving.start, criterion.objective(), opts.path, stop=criterion.stop)
        watch.lap("path")
        candidates = self._candidates(moving, criterion, path, opts)
        texts = list(query.get("labels") or [text])
        evidence = self.evidence_for(opts.calibration).doubting(misspelt(texts, self.lexicon))
        evidence = self._with_rivals(evidence, criterion, moving, texts)
        items, stale = self._rank_and_verify(moving, criterion, candidates, opts, evidence)
        watch.lap("search_verify")
        baselines = self._baselines(moving, criterion, opts, evidence) if opts.baselines else {}
        if opts.baselines:
            watch.lap("baselines")
        warnings = self._warnings(texts, criterion, evidence, [repr(i.rival) for i in items if i.rival])
        if opts.verify_with:  # the baselines are re-scored too; the warning counts the answers
            for group in [*baselines.values(), items]:
                warning = self._second_opinion(image, moving.name, criterion, query, group)
            warnings += [warning] if warning else []
            watch.lap("verify_with")
        return CounterfactualResult(
            side=moving.name,
            mode=mode,
            text=text if mode != "flip" else None,
            query=query,
            validity=criterion.validity,
            items=items,
            baselines=baselines,
            stale=stale,
            warnings=warnings,
            calibration=evidence.describe(),
            candidates=len(candidates.ids),
            path_values=values.tolist(),
            timings=watch.total(),
        )

    def _second_opinion(
        self,
        image: str | Path | Image.Image | int,
        side: str,
        criterion: Criterion,
        query: dict[str, Any],
        answers: list[ResultItem],
    ) -> str | None:
        """Re-score every answer with the model's matching head (``item.p_itm``): the image-side answers'
        files against the text (flip: the target label), the text-side captions against the query image."""
        if not answers:
            return None
        text = query.get("target") or query.get("text")
        if side == "image":
            pils = [self.indexed_image(item.path) if item.path else None for item in answers]
            pairs = [(pil, text) for pil in pils]
        else:
            query_pil = self._query_pil(image)
            pairs = [(query_pil, item.text) for item in answers]
        scorable = [i for i, (pil, caption) in enumerate(pairs) if pil is not None and caption]
        p_itm: list[float | None] = [None] * len(answers)
        if scorable:
            scored = self.model.match_head([pairs[i][0] for i in scorable], [pairs[i][1] for i in scorable])
            for i, p in zip(scorable, scored, strict=True):
                p_itm[i] = float(p)
        return second_opinion(answers, p_itm, criterion.wants_match)

    def _query_pil(self, image: str | Path | Image.Image | int) -> Image.Image | None:
        """The query image itself (a path is the user's, relative to the working directory)."""
        if isinstance(image, Image.Image):
            return image.convert("RGB")
        if isinstance(image, (int, np.integer)):
            return self.indexed_image(self.index.images.meta([int(image)])[0]["path"])
        return self.indexed_image(Path(image).expanduser().resolve())

    def _query_options(self, options: EngineOptions | None, k: int | None, overrides: dict) -> EngineOptions:
        """The options of one query: defaults, then ``options``, then keyword overrides and ``k``."""
        opts = options or self.options
        if overrides:
            opts = dataclasses.replace(opts, **overrides)
        return dataclasses.replace(opts, k=k) if k is not None else opts

    def _check_query(self, asked: _Asked, opts: EngineOptions) -> None:
        side, mode, text = asked.side, asked.mode, asked.text
        if side not in SIDES:
            raise InputError(f"side must be one of {', '.join(SIDES)}, got {side!r}")
        if mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if opts.k < 1:
            raise InputError(f"k must be at least 1, got {opts.k}")
        if mode == "flip" and side != "image":
            raise InputError("mode flip works on the image side only (it flips the image's predicted label)")
        if mode != "flip" and text is None:
            raise InputError("text is required for modes increase and decrease")
        if opts.verify_with is not None and opts.verify_with not in VERIFIERS:
            raise InputError(f"verify_with must be one of {', '.join(VERIFIERS)}, got {opts.verify_with!r}")
        head = getattr(self.model, "match_head", None)
        if opts.verify_with is not None and (head is None or head([], []) is None):
            raise InputError(
                f"--verify-with {opts.verify_with} needs a model with an image-text matching head (BLIP); "
                f"{self.model.spec} ({getattr(self.model, 'family', 'clip')}) has none"
            )
        if side == "text" and self.index.captions.count == 0:
            raise InputError(
                "this index holds no captions: the text side needs a caption index "
                "(build with --vocab, --captions, or sidecar .txt files)"
            )

    def _side(
        self, name: str, start: np.ndarray, query_id: int | None, text: str, opts: EngineOptions
    ) -> Side:
        """The side named ``name`` (``image`` or ``text``) starting at ``start``."""
        if name == "image":
            return ImageSide(self.index.images, start, query_id, self.encoder, self._decode)
        return CaptionSide(self.index.captions, start, text, self.encoder, opts.text_proximity == "words")

    def _side_and_criterion(
        self, query_image: QueryImage, asked: _Asked, opts: EngineOptions
    ) -> tuple[Side, Criterion, dict[str, Any]]:
        """Encode the rest of the query; the moving side, the criterion and the query's description."""
        text, mode = asked.text, asked.mode
        if mode == "flip":
            labels, target = check_labels(asked.labels, asked.target)
            label_vecs = _array(self.encoder.encode_texts(labels))
            criterion = Flip.build(self.pair_score, query_image.vector, labels, label_vecs, target)
            probabilities = criterion.probabilities(query_image.vector[None])[0]
            query = {
                "image": query_image.described,
                "labels": labels,
                "target": target,
                "predicted": labels[int(np.argmax(probabilities))],
            }
            return self._side("image", query_image.vector, query_image.id, "", opts), criterion, query
        text_vec = self.encode_text(text)
        if asked.side == "image":
            moving = self._side("image", query_image.vector, query_image.id, text, opts)
            fixed = text_vec
        else:
            moving = self._side("text", text_vec, None, text, opts)
            fixed = query_image.vector
        best, typical = self._best_and_typical(moving.collection, fixed)
        margin = opts.match_margin if mode == "increase" else opts.nomatch_margin
        build = Increase.build if mode == "increase" else Decrease.build
        criterion = build(self.pair_score, fixed, moving.start, best, typical, margin, opts.threshold)
        return moving, criterion, {"image": query_image.described, "text": text}

    def _best_and_typical(self, collection: CollectionLike, fixed: np.ndarray) -> tuple[float, float]:
        """The best score the collection holds against ``fixed`` and the median over a sample of it."""
        best_cos, _ = collection.search(fixed[None].astype(np.float32), 1)
        best = self.pair_score.of_cos(float(best_cos[0, 0]))
        typical = self.pair_score.of_cos(float(np.median(self._typical_sample(collection) @ fixed)))
        return best, typical

    # --- candidates, ranking, verification ------------------------------------------------------
    def _candidates(
        self, side: Side, criterion: Criterion, path: np.ndarray, opts: EngineOptions
    ) -> _Candidates:
        """Distinct items found around the path points, with the first step that found each.

        The origin (step 0) is searched wider: near-original answers that change one thing often lie just
        beyond the original's closest copies, in a direction the steepest path does not take. The path's
        limit (the criterion's target point, step ``len(path)``) is searched too: in a large index the
        points of a short path only see near-copies of the original.
        """
        search = side.collection.search
        queries = path.astype(np.float32)
        rows: list[tuple[int, np.ndarray]] = []
        if opts.candidates_around_origin:
            rows += [(0, row) for row in search(queries[:1], opts.candidates_around_origin)[1]]
        rows += list(enumerate(search(queries, opts.candidates_per_point)[1]))
        if criterion.target_point is not None and opts.candidates_at_target:
            target = criterion.target_point[None].astype(np.float32)
            rows += [(len(path), row) for row in search(target, opts.candidates_at_target)[1]]
        first_step: dict[int, int] = {}
        for step, row in rows:
            for item_id in row:
                if item_id >= 0 and int(item_id) not in first_step:
                    first_step[int(item_id)] = step
        ids = np.fromiter(first_step.keys(), dtype=np.int64, count=len(first_step))
        steps = np.fromiter(first_step.values(), dtype=np.int64, count=len(first_step))
        return self._without_query(side, ids, steps)

    def _without_query(self, side: Side, ids: np.ndarray, steps: np.ndarray | None) -> _Candidates:
        """Drop the query itself and exact duplicates of the original."""
        vectors = side.collection.vectors(ids)
        if not len(ids):
            return _Candidates(ids, vectors, steps)
        keep = ((vectors @ side.start) < DUPLICATE_COS) & ~side.is_query(ids)
        return _Candidates(ids[keep], vectors[keep], steps[keep] if steps is not None else None)

    def _rank(
        self, side: Side, criterion: Criterion, found: _Candidates, opts: EngineOptions
    ) -> tuple[list[int], dict[int, int]]:
        """Rows of ``found`` that pass the criterion on their stored vectors, closest to the original first,
        with distinct changes among the head (MMR over the ``4 k`` closest, room for items that fail
        verification); and the words each row changes from the original caption (caption side by words)."""
        valid = np.flatnonzero(criterion.valid(found.vectors))
        relevance, edits = side.proximity(found.ids[valid], found.vectors[valid])
        words = {} if edits is None else dict(zip(valid.tolist(), edits.tolist(), strict=True))
        by_relevance = np.argsort(-relevance, kind="stable")
        valid, relevance = valid[by_relevance], relevance[by_relevance]
        pool = valid[: opts.change_pool]
        changes = side.changes(found.ids[pool], found.vectors[pool])
        head = mmr_order(relevance[: len(pool)], changes, min(len(pool), 4 * opts.k), opts.diversity)
        in_head = set(head)
        ranked = [int(valid[i]) for i in head] + [int(row) for i, row in enumerate(valid) if i not in in_head]
        return ranked, words

    def _rank_and_verify(
        self, side: Side, criterion: Criterion, found: _Candidates, opts: EngineOptions, evidence: Evidence
    ) -> tuple[list[ResultItem], list[dict[str, Any]]]:
        """The first ``k`` ranked candidates that still pass when re-scored from their source, judged."""
        if not len(found.ids):
            return [], []
        ranked, words = self._rank(side, criterion, found, opts)
        stale_cos = self._stale_cos()
        items: list[ResultItem] = []
        stale: list[dict[str, Any]] = []
        for start in range(0, len(ranked), opts.k):
            if len(items) == opts.k:
                break
            batch = ranked[start : start + opts.k]
            fresh = side.reencode(found.ids[batch]) if opts.verify else [(None, None)] * len(batch)
            for row, (new, reason) in zip(batch, fresh, strict=True):
                if opts.verify and new is not None and float(new @ found.vectors[row]) < stale_cos:
                    reason = "changed since indexing"  # same bytes, another vector: not this model's
                if opts.verify and reason is not None:
                    item = side.item(int(found.ids[row]))
                    stale.append({"id": item.id, "path": item.path, "text": item.text, "reason": reason})
                    continue
                item = self._scored_item(side, criterion, found, row, new)
                if item is None:
                    continue
                evidence.judge(
                    item, criterion, new if new is not None else found.vectors[row], new is not None
                )
                item.word_edits = words.get(row)
                item.rank = len(items) + 1
                items.append(item)
                if len(items) == opts.k:
                    break
        return items, stale

    def _stale_cos(self) -> float:
        """`STALE_COS`, widened by how far the index's stored vectors (its recorded runtime, e.g. int8) and
        this engine's re-encodings (its encoder) may each sit from torch fp32: the angles add."""
        from counterclip.models.onnx_common import combine_cosines

        manifest = getattr(self.index, "manifest", None)
        built = (getattr(getattr(manifest, "model", None), "runtime", None) or {}).get(
            "tolerance_cosine", 1.0
        )
        encoder = getattr(self.encoder, "tolerance_cosine", 1.0)
        return combine_cosines(STALE_COS, float(built), float(encoder))

    def _scored_item(
        self, side: Side, criterion: Criterion, found: _Candidates, row: int, fresh: np.ndarray | None
    ) -> ResultItem | None:
        """The item of ``row`` scored from its fresh vector or, when there is none (no verification asked,
        or no source to re-score from), its stored one; None when the fresh vector no longer passes."""
        stored = found.vectors[row]
        if fresh is not None and not bool(criterion.valid(fresh[None])[0]):
            return None
        item = side.item(int(found.ids[row]))
        vector = fresh if fresh is not None else stored
        item.score_before = criterion.original
        item.score_after = float(criterion.score(vector[None])[0])
        item.delta = item.score_after - criterion.original
        item.distance = float(1.0 - stored @ side.start)
        item.step = int(found.steps[row]) if found.steps is not None else None
        return item

    # --- baselines --------------------------------------------------------------------------------
    def _baselines(
        self, side: Side, criterion: Criterion, opts: EngineOptions, evidence: Evidence
    ) -> dict[str, list[ResultItem]]:
        """Nearest unlike neighbour (search by the criterion's probe alone, first valid in search order)
        and the closest valid candidate among the probe's top ``baseline_pool``."""
        _, ids = side.collection.search(criterion.baseline_probe[None].astype(np.float32), opts.baseline_pool)
        ids = ids[0][ids[0] >= 0]
        first = dataclasses.replace(opts, k=1, diversity=0.0)
        nearest: list[ResultItem] = []
        for item_id in self._without_query(side, ids, None).ids:
            single = self._without_query(side, np.array([item_id]), None)
            nearest, _ = self._rank_and_verify(side, criterion, single, first, evidence)
            if nearest:
                break
        closest, _ = self._rank_and_verify(
            side, criterion, self._without_query(side, ids, None), first, evidence
        )
        return {"nearest_unlike_neighbour": nearest, f"closest_valid_in_top{opts.baseline_pool}": closest}


def load_image(path: str | Path) -> Image.Image | None:
    """The upright RGB image of a file, decoded exactly as the index builder decodes it (so a re-encoded
    file is comparable with its stored vector); None if it is missing or unreadable."""
    try:
        return decode_image(path).image
    except DecodeError:
        return None


def _array(embeddings: Any) -> np.ndarray:
    """Embeddings as a float32 numpy array (encoders return torch tensors or numpy arrays)."""
    return np.asarray(embeddings.numpy() if hasattr(embeddings, "numpy") else embeddings, dtype=np.float32)

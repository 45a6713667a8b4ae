"""The counterfactual engine: open an index, encode queries, walk a target path, search, verify, rank."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from counterclip.engine.path import (
    PathSettings,
    gradient_path,
    label_objective,
    similarity_objective,
)
from counterclip.engine.ranking import mmr_order, word_edit_distance
from counterclip.engine.results import CounterfactualResult, ResultItem, SearchResult, Validity
from counterclip.errors import InputError
from counterclip.index_builder.decode import DecodeError
from counterclip.index_builder.decode import load_image as decode_image
from counterclip.models import ClipModel, load_model

LOG = logging.getLogger(__name__)
DUPLICATE_COS = 0.9999  # a candidate this close to the original is the original (or an exact copy)
STALE_COS = 0.999  # a re-encoded file further than this from its stored vector changed since indexing
MODES = ("increase", "decrease", "flip")
SIDES = ("image", "text")


class IndexLike(Protocol):
    """What the engine needs from an index (``counterclip.index_builder.Index`` implements it)."""

    root: Path
    dim: int

    def image_ids(self) -> np.ndarray: ...
    def caption_ids(self) -> np.ndarray: ...
    def image_vectors(self, ids: Sequence[int]) -> np.ndarray: ...
    def caption_vectors(self, ids: Sequence[int]) -> np.ndarray: ...
    def search_images(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...
    def search_captions(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...
    def image_meta(self, ids: Sequence[int]) -> list[dict[str, Any]]: ...
    def caption_meta(self, ids: Sequence[int]) -> list[dict[str, Any]]: ...
    def image_id_for_path(self, path: str | Path) -> int | None: ...


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
    diversity: float = 0.2  # MMR weight on diversity among the k (0 = closest first, no diversity)
    verify: bool = True  # re-encode returned items from their files / texts before returning them
    baseline_pool: int = 50  # "closest valid among the text's top N" baseline
    baselines: bool = True  # compute the baselines alongside
    typical_sample: int = 1024  # index vectors sampled to estimate a typical (non-matching) score
    text_proximity: str = "words"  # text side ranking: "words" (fewest word edits first) or "embedding"


class Engine:
    """Counterfactuals and search over one index.

    Safe for concurrent read queries from several threads: queries never mutate the engine; per-call
    settings are passed as arguments.

    Examples::

        engine = Engine.open("photos.idx")
        result = engine.counterfactuals(image="cat.jpg", text="a photo of a dog", k=5)
        for item in result.items:
            print(item.rank, item.path, item.score_before, item.score_after)
    """

    def __init__(self, index: IndexLike, model: ClipModel, options: EngineOptions | None = None) -> None:
        if index.dim != model.embed_dim:
            raise InputError(
                f"index vectors have dimension {index.dim} but the model embeds to {model.embed_dim}"
            )
        self.index = index
        self.model = model
        self.options = options or EngineOptions()
        self._sample_lock = threading.Lock()
        self._samples: dict[str, np.ndarray] = {}

    @classmethod
    def open(
        cls, index_dir: str | Path, device: str = "auto", options: EngineOptions | None = None
    ) -> Engine:
        """Open an index directory with the model it was built with.

        Args:
            index_dir: a directory written by ``counterclip build``.
            device: ``auto`` | ``cpu`` | ``cuda``.
            options: default query settings.
        """
        from counterclip.index_builder import Index

        started = time.perf_counter()
        probe = Index.open(index_dir)
        model = load_model(probe.model_spec, device=device)
        probe.close()
        index = Index.open(index_dir, model=model)  # checks the fingerprint: same weights as the build
        LOG.info("opened %s in %.1f s", index_dir, time.perf_counter() - started)
        return cls(index, model, options)

    def close(self) -> None:
        close = getattr(self.index, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _decode(self, path: str | Path):
        """Decode a file exactly as the index decoded its images (same limits and JPEG scaling), so a
        re-encoded indexed file reproduces its stored vector."""
        index_loader = getattr(self.index, "load_image", None)
        return index_loader(path) if index_loader is not None else decode_image(path)

    # --- encoding -----------------------------------------------------------------------------
    @property
    def logit_scale(self) -> float:
        return self.model.logit_scale

    def encode_text(self, text: str) -> np.ndarray:
        """``(d,)`` normalised embedding of a non-empty text."""
        if not isinstance(text, str) or not text.strip():
            raise InputError("text is empty: give the caption to score, e.g. --text 'a photo of a dog'")
        return self.model.encode_texts([text.strip()]).numpy()[0]

    def resolve_image(
        self, image: str | Path | Image.Image | int
    ) -> tuple[np.ndarray, int | None, dict[str, Any]]:
        """Embed a query image given as a path, a PIL image, or an index id.

        Returns:
            ``(embedding (d,), index id or None, description)``.
        """
        if isinstance(image, (int, np.integer)) and not isinstance(image, bool):
            try:
                meta = self.index.image_meta([int(image)])
            except KeyError:
                meta = []
            if not meta:
                raise InputError(f"image id {int(image)} is not in the index")
            return (
                self.index.image_vectors([int(image)])[0],
                int(image),
                {"id": int(image), "path": meta[0]["path"]},
            )
        if isinstance(image, Image.Image):
            return self.model.encode_pil([image.convert("RGB")]).numpy()[0], None, {"pil": True}
        path = Path(image).expanduser()
        if not path.is_file():
            raise InputError(f"query image not found: {path}")
        try:
            # absolute: the index resolves relative paths against its own root, a user means the cwd
            pil = self._decode(path.resolve()).image
        except DecodeError as exc:
            raise InputError(f"query image {path} is not a readable image: {exc}") from exc
        embedding = self.model.encode_pil([pil]).numpy()[0]
        indexed = self.index.image_id_for_path(path.resolve())
        return embedding, indexed, {"path": str(path), "id": indexed}

    def _typical_sample(self, kind: str) -> np.ndarray:
        """A fixed random sample of index vectors (cached) for the typical-score estimate."""
        with self._sample_lock:
            if kind not in self._samples:
                ids = self.index.image_ids() if kind == "image" else self.index.caption_ids()
                rng = np.random.default_rng(0)
                take = (
                    ids
                    if len(ids) <= self.options.typical_sample
                    else rng.choice(ids, self.options.typical_sample, replace=False)
                )
                vectors = (self.index.image_vectors if kind == "image" else self.index.caption_vectors)(
                    np.sort(take)
                )
                self._samples[kind] = vectors
            return self._samples[kind]

    # --- plain search ---------------------------------------------------------------------------
    def search(
        self,
        text: str | None = None,
        image: str | Path | Image.Image | int | None = None,
        k: int = 10,
        target: str = "images",
    ) -> SearchResult:
        """Plain retrieval by text or by image.

        Args:
            text: a query text, or
            image: a query image (path, PIL, or index id).
            k: results. Default: 10.
            target: ``images`` or ``captions``: which index to search.
        """
        if (text is None) == (image is None):
            raise InputError("give exactly one of text or image to search by")
        started = time.perf_counter()
        if text is not None:
            query_vec, query = self.encode_text(text), {"text": text}
            exclude = None
        else:
            query_vec, exclude, query = self.resolve_image(image)
        encoded = time.perf_counter()
        search = self.index.search_images if target == "images" else self.index.search_captions
        scores, ids = search(query_vec[None].astype(np.float32), k + (1 if exclude is not None else 0))
        items = []
        for score, item_id in zip(scores[0], ids[0], strict=True):
            if item_id < 0 or (target == "images" and exclude is not None and int(item_id) == exclude):
                continue
            items.append(self._make_item(int(item_id), "image" if target == "images" else "caption"))
            items[-1].score_after = float(score) * self.logit_scale
            items[-1].distance = float(1.0 - score)
            items[-1].rank = len(items)
            if len(items) == k:
                break
        done = time.perf_counter()
        return SearchResult(
            query, items, {"encode": encoded - started, "search": done - encoded, "total": done - started}
        )

    def _make_item(self, item_id: int, kind: str) -> ResultItem:
        if kind == "image":
            meta = self.index.image_meta([item_id])[0]
            return ResultItem(id=item_id, kind="image", path=meta["path"])
        meta = self.index.caption_meta([item_id])[0]
        return ResultItem(id=item_id, kind="caption", text=meta["text"])

    # --- counterfactuals ------------------------------------------------------------------------
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
        opts = (
            dataclasses.replace(options or self.options, **overrides)
            if overrides
            else (options or self.options)
        )
        if k is not None:
            opts = dataclasses.replace(opts, k=k)
        if side not in SIDES:
            raise InputError(f"side must be one of {', '.join(SIDES)}, got {side!r}")
        if mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if opts.k < 1:
            raise InputError(f"k must be at least 1, got {opts.k}")
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        image_vec, image_id, image_desc = self.resolve_image(image)
        if mode == "flip":
            if side != "image":
                raise InputError(
                    "mode flip works on the image side only (it flips the image's predicted label)"
                )
            return self._flip(image_vec, image_id, image_desc, labels, target, opts, timings, clock)
        if text is None:
            raise InputError("text is required for modes increase and decrease")
        text_vec = self.encode_text(text)
        timings["encode"] = time.perf_counter() - clock
        query = {"image": image_desc, "text": text}
        if side == "image":
            return self._pair_side(
                "image", image_vec, text_vec, image_id, text, mode, query, opts, timings, clock
            )
        if len(self.index.caption_ids()) == 0:
            raise InputError(
                "this index holds no captions: the text side needs a caption index (build with --vocab, --captions, or sidecar .txt files)"
            )
        return self._pair_side("caption", text_vec, image_vec, None, text, mode, query, opts, timings, clock)

    # validity -----------------------------------------------------------------------------------
    def _validity(
        self, mode: str, fixed_vec: np.ndarray, moving_kind: str, original: float, opts: EngineOptions
    ) -> Validity:
        """Thresholds for a pair score with one side fixed, from the index's own score distribution."""
        search = self.index.search_images if moving_kind == "image" else self.index.search_captions
        best_cos, _ = search(fixed_vec[None].astype(np.float32), 1)
        best = float(best_cos[0, 0]) * self.logit_scale
        typical = float(np.median(self._typical_sample(moving_kind) @ fixed_vec)) * self.logit_scale
        spread = max(best - typical, 1e-6)
        if mode == "increase":
            # The gap to close is measured from the original (or from the typical score when the original is
            # below it): an original that nearly matches leaves a small gap, so its own near-copies, which
            # lack what the text asks for, cannot pass by being almost as good as the best match.
            gap = max(min(best - original, spread), 1e-6)
            threshold = opts.threshold if opts.threshold is not None else best - opts.match_margin * gap
            start = "original" if best - original < spread else "typical score"
            rule = (
                f"score >= {threshold:.3f} (best match in the index {best:.3f} minus {opts.match_margin:g} of the "
                f"gap {gap:.3f} from the {start} to it) and above the original {original:.3f}"
            )
        else:
            threshold = opts.threshold if opts.threshold is not None else best - opts.nomatch_margin * spread
            rule = (
                f"score <= {threshold:.3f} (best match in the index {best:.3f} minus {opts.nomatch_margin:g} of "
                f"the best-typical spread {spread:.3f}) and below the original {original:.3f}"
            )
        if opts.threshold is not None:
            rule = f"score {'>=' if mode == 'increase' else '<='} {threshold:.3f} (user threshold)"
        return Validity(mode, rule, float(threshold), best, typical, original)

    @staticmethod
    def _passes(validity: Validity, score: float) -> bool:
        if validity.mode == "increase":
            return score >= validity.threshold and score > validity.original
        return score <= validity.threshold and score < validity.original

    # image or text side ----------------------------------------------------------------------------
    def _pair_side(
        self,
        kind: str,
        moving: np.ndarray,
        fixed: np.ndarray,
        exclude_id: int | None,
        text: str,
        mode: str,
        query: dict[str, Any],
        opts: EngineOptions,
        timings: dict[str, float],
        clock: float,
    ) -> CounterfactualResult:
        """One side of the pair moves (``kind`` image: the image embedding against the image index; caption:
        the text embedding against the caption index) while the other stays ``fixed``."""
        scale = self.logit_scale
        original = float(moving @ fixed) * scale
        validity = self._validity(mode, fixed, kind, original, opts)
        sign = 1.0 if mode == "increase" else -1.0
        stop_value = sign * validity.threshold
        objective = similarity_objective(fixed, scale, sign)
        path, values = gradient_path(moving, objective, opts.path, stop=lambda v: v >= stop_value)
        timings["path"] = time.perf_counter() - clock - sum(timings.values())

        def score_fn(vectors: np.ndarray) -> np.ndarray:
            return vectors @ fixed * scale

        def passes(score: float) -> bool:
            return self._passes(validity, score)

        original_text = text if kind == "caption" else None
        items, stale, candidates = self._search_verify_rank(
            kind,
            moving,
            exclude_id,
            path,
            score_fn,
            passes,
            original,
            opts,
            timings,
            clock,
            original_text=original_text,
            target_point=fixed if mode == "increase" else None,
        )
        baselines = {}
        if opts.baselines:
            started = time.perf_counter()
            probe = fixed if mode == "increase" else moving
            baselines = self._baselines(
                kind, moving, exclude_id, probe, score_fn, passes, original, opts, original_text=original_text
            )
            timings["baselines"] = time.perf_counter() - started
        timings["total"] = time.perf_counter() - clock
        side = "image" if kind == "image" else "text"
        return CounterfactualResult(
            side, mode, text, query, validity, items, baselines, stale, candidates, values.tolist(), timings
        )

    # flip -------------------------------------------------------------------------------------------
    def _flip(
        self,
        e0: np.ndarray,
        image_id: int | None,
        image_desc: dict[str, Any],
        labels: Sequence[str] | None,
        target: str | None,
        opts: EngineOptions,
        timings: dict[str, float],
        clock: float,
    ) -> CounterfactualResult:
        labels = [label.strip() for label in (labels or []) if label.strip()]
        if len(labels) < 2:
            raise InputError("mode flip needs at least two labels, e.g. --labels 'a cat,a dog'")
        if len(set(labels)) != len(labels):
            raise InputError("labels must be distinct")
        if target is None or target.strip() not in labels:
            raise InputError(f"target {target!r} is not one of the labels: {', '.join(labels)}")
        target_index = labels.index(target.strip())
        label_vecs = self.model.encode_texts(labels).numpy()
        scale = self.logit_scale

        def probabilities(vectors: np.ndarray) -> np.ndarray:
            logits = scale * vectors @ label_vecs.T
            logits -= logits.max(axis=-1, keepdims=True)
            p = np.exp(logits)
            return p / p.sum(axis=-1, keepdims=True)

        p0 = probabilities(e0[None])[0]
        if int(np.argmax(p0)) == target_index:
            raise InputError(
                f"the image is already classified as {labels[target_index]!r}; choose another target"
            )
        timings["encode"] = time.perf_counter() - clock
        validity = Validity(
            "flip",
            f"predicted label becomes {labels[target_index]!r} (argmax over {len(labels)} labels)",
            None,
            original=float(p0[target_index]),
            target=labels[target_index],
        )
        objective = label_objective(label_vecs, target_index, scale)
        path, values = gradient_path(e0, objective, opts.path, stop=lambda v: v >= np.log(0.5))
        timings["path"] = time.perf_counter() - clock - sum(timings.values())

        def score_fn(vectors: np.ndarray) -> np.ndarray:
            return probabilities(vectors)[:, target_index]

        def flipped_fn(vectors: np.ndarray) -> np.ndarray:
            return np.argmax(probabilities(vectors), axis=-1) == target_index

        items, stale, candidates = self._search_verify_rank(
            "image",
            e0,
            image_id,
            path,
            score_fn,
            None,
            float(p0[target_index]),
            opts,
            timings,
            clock,
            flipped_fn=flipped_fn,
            target_point=label_vecs[target_index],
        )
        baselines = {}
        if opts.baselines:
            started = time.perf_counter()
            baselines = self._baselines(
                "image",
                e0,
                image_id,
                label_vecs[target_index],
                score_fn,
                None,
                float(p0[target_index]),
                opts,
                flipped_fn=flipped_fn,
            )
            timings["baselines"] = time.perf_counter() - started
        timings["total"] = time.perf_counter() - clock
        query = {
            "image": image_desc,
            "labels": labels,
            "target": labels[target_index],
            "predicted": labels[int(np.argmax(p0))],
        }
        return CounterfactualResult(
            "image",
            "flip",
            None,
            query,
            validity,
            items,
            baselines,
            stale,
            candidates,
            values.tolist(),
            timings,
        )

    # shared machinery -----------------------------------------------------------------------------
    def _candidates(
        self,
        kind: str,
        path: np.ndarray,
        opts: EngineOptions,
        target_point: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Distinct ids found around the path points, with the first step that found each.

        The origin (step 0) is searched wider: near-original answers that change one thing often lie just
        beyond the original's closest copies, in a direction the steepest path does not take. The path's
        limit (the target embedding itself, step ``len(path)``) is searched too: in a large index the
        points of a short path only see near-copies of the original.
        """
        search = self.index.search_images if kind == "image" else self.index.search_captions
        queries = path.astype(np.float32)
        rows: list[tuple[int, np.ndarray]] = []
        if opts.candidates_around_origin:
            rows += [(0, row) for row in search(queries[:1], opts.candidates_around_origin)[1]]
        rows += list(enumerate(search(queries, opts.candidates_per_point)[1]))
        if target_point is not None and opts.candidates_at_target:
            target = target_point[None].astype(np.float32)
            rows += [(len(path), row) for row in search(target, opts.candidates_at_target)[1]]
        first_step: dict[int, int] = {}
        for step, row in rows:
            for item_id in row:
                if item_id >= 0 and int(item_id) not in first_step:
                    first_step[int(item_id)] = step
        found = np.fromiter(first_step.keys(), dtype=np.int64, count=len(first_step))
        steps = np.fromiter(first_step.values(), dtype=np.int64, count=len(first_step))
        return found, steps

    def _search_verify_rank(
        self,
        kind: str,
        e0: np.ndarray,
        exclude_id: int | None,
        path: np.ndarray,
        score_fn,
        passes,
        original: float,
        opts: EngineOptions,
        timings: dict[str, float],
        clock: float,
        original_text: str | None = None,
        flipped_fn=None,
        target_point: np.ndarray | None = None,
    ) -> tuple[list[ResultItem], list[dict[str, Any]], int]:
        started = time.perf_counter()
        ids, steps = self._candidates(kind, path, opts, target_point)
        items, stale, count = self._verify_rank(
            kind,
            e0,
            exclude_id,
            ids,
            steps,
            score_fn,
            passes,
            original,
            opts,
            original_text,
            flipped_fn,
            timings,
        )
        timings["search_verify"] = time.perf_counter() - started
        return items, stale, count

    def _filter_candidates(
        self, kind: str, e0: np.ndarray, exclude_id: int | None, ids: np.ndarray, original_text: str | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Drop the query itself and exact duplicates; return kept positions and their vectors."""
        vectors = (self.index.image_vectors if kind == "image" else self.index.caption_vectors)(ids)
        keep = (vectors @ e0) < DUPLICATE_COS
        if exclude_id is not None and kind == "image":
            keep &= ids != exclude_id
        if original_text is not None and kind == "caption" and len(ids):
            norm = _normalise_text(original_text)
            texts = [m["text"] for m in self.index.caption_meta(ids)]
            keep &= np.array([_normalise_text(t) != norm for t in texts])
        return np.flatnonzero(keep), vectors

    def _verify_rank(
        self,
        kind: str,
        e0: np.ndarray,
        exclude_id: int | None,
        ids: np.ndarray,
        steps: np.ndarray | None,
        score_fn,
        passes,
        original: float,
        opts: EngineOptions,
        original_text: str | None,
        flipped_fn,
        timings: dict[str, float] | None = None,
    ) -> tuple[list[ResultItem], list[dict[str, Any]], int]:
        """Score candidates from stored vectors, keep valid ones, rank (MMR), verify from files, return k."""
        if len(ids) == 0:
            return [], [], 0
        kept, vectors = self._filter_candidates(kind, e0, exclude_id, ids, original_text)
        ids, vectors = ids[kept], vectors[kept]
        steps = steps[kept] if steps is not None else None
        scores = score_fn(vectors)
        valid = (
            flipped_fn(vectors)
            if flipped_fn is not None
            else np.array([passes(float(s)) for s in scores], bool)
        )
        order = np.flatnonzero(valid)
        relevance = vectors[order] @ e0
        edits = None
        if kind == "caption" and original_text is not None and len(order) and opts.text_proximity == "words":
            # A text counterfactual is minimal when few words change; embedding proximity breaks ties
            # (it would otherwise prefer captions that add wrong attributes over ones that swap one word).
            texts = [m["text"] for m in self.index.caption_meta(ids[order])]
            edits = np.array([word_edit_distance(original_text, t) for t in texts])
            relevance = -edits + 0.1 * relevance
        by_relevance = np.argsort(-relevance, kind="stable")
        order, relevance = order[by_relevance], relevance[by_relevance]
        edit_of = (
            dict(zip(order.tolist(), edits[by_relevance].tolist(), strict=True)) if edits is not None else {}
        )
        # MMR over the head (diversity among the k, with room for items that fail verification)
        head = mmr_order(e0, vectors[order], min(len(order), 4 * opts.k), opts.diversity, relevance)
        in_head = set(head)
        ranked = [order[i] for i in head] + [row for i, row in enumerate(order) if i not in in_head]
        items: list[ResultItem] = []
        stale: list[dict[str, Any]] = []
        for start in range(0, len(ranked), opts.k):
            need = opts.k - len(items)
            if need <= 0:
                break
            batch = ranked[start : start + max(need, opts.k)]
            fresh = self._reencode(kind, ids[batch]) if opts.verify else None
            for j, row in enumerate(batch):
                item = self._make_item(int(ids[row]), kind)
                item.score_before = original
                item.step = int(steps[row]) if steps is not None else None
                item.distance = float(1.0 - vectors[row] @ e0)
                item.word_edits = edit_of.get(int(row))
                vec = vectors[row]
                if fresh is not None:
                    new, reason = fresh[j]
                    if new is not None and float(new @ vec) < STALE_COS:
                        reason = "changed since indexing"  # same bytes, another vector: not this model's
                    if reason is not None:
                        stale.append({"id": item.id, "path": item.path, "text": item.text, "reason": reason})
                        continue
                    vec = new
                    ok = (
                        bool(flipped_fn(vec[None])[0])
                        if flipped_fn is not None
                        else passes(float(score_fn(vec[None])[0]))
                    )
                    if not ok:
                        continue
                item.score_after = float(score_fn(vec[None])[0])
                item.delta = item.score_after - original
                item.verified = fresh is not None
                item.rank = len(items) + 1
                items.append(item)
                if len(items) == opts.k:
                    break
        return items, stale, len(ids)

    def _reencode(self, kind: str, ids: np.ndarray) -> list[tuple[np.ndarray | None, str | None]]:
        """Fresh embeddings from the files (images) or texts (captions), each with the reason it cannot
        be trusted: the file is missing/unreadable, or its bytes differ from the indexed ones."""
        if kind == "caption":
            texts = [m["text"] for m in self.index.caption_meta(ids)]
            return [(vec, None) for vec in self.model.encode_texts(texts).numpy()]
        loaded: list[tuple[Image.Image | None, str | None]] = []
        for meta in self.index.image_meta(ids):
            try:
                decoded = self._decode(meta["abs_path"])
            except DecodeError:
                loaded.append((None, "file missing or unreadable"))
                continue
            if meta.get("sha256") and decoded.sha256 != meta["sha256"]:
                loaded.append((None, "changed since indexing"))
                continue
            loaded.append((decoded.image, None))
        present = [image for image, _ in loaded if image is not None]
        encoded = iter(self.model.encode_pil(present).numpy()) if present else iter(())
        return [(next(encoded), None) if image is not None else (None, reason) for image, reason in loaded]

    def _baselines(
        self,
        kind: str,
        e0: np.ndarray,
        exclude_id: int | None,
        probe: np.ndarray,
        score_fn,
        passes,
        original: float,
        opts: EngineOptions,
        original_text: str | None = None,
        flipped_fn=None,
    ) -> dict[str, list[ResultItem]]:
        """Nearest unlike neighbour (search by the probe alone, first valid in search order) and the
        closest valid candidate among the probe's top ``baseline_pool``."""
        search = self.index.search_images if kind == "image" else self.index.search_captions
        _, ids = search(probe[None].astype(np.float32), opts.baseline_pool)
        ids = ids[0][ids[0] >= 0]
        # nearest unlike neighbour: search order, no proximity ranking
        nun_opts = dataclasses.replace(opts, k=1, diversity=0.0)
        kept, vectors = self._filter_candidates(kind, e0, exclude_id, ids, original_text)
        nun: list[ResultItem] = []
        for row in kept:
            item_ids = ids[row : row + 1]
            got, _, _ = self._verify_rank(
                kind,
                e0,
                exclude_id,
                item_ids,
                None,
                score_fn,
                passes,
                original,
                nun_opts,
                original_text,
                flipped_fn,
            )
            if got:
                nun = got
                break
        closest, _, _ = self._verify_rank(
            kind,
            e0,
            exclude_id,
            ids,
            None,
            score_fn,
            passes,
            original,
            dataclasses.replace(opts, k=1, diversity=0.0),
            original_text,
            flipped_fn,
        )
        return {"nearest_unlike_neighbour": nun, f"closest_valid_in_top{opts.baseline_pool}": closest}


def _normalise_text(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(".")


def load_image(path: str | Path) -> Image.Image | None:
    """The upright RGB image of a file, decoded exactly as the index builder decodes it (so a re-encoded
    file is comparable with its stored vector); None if it is missing or unreadable."""
    try:
        return decode_image(path).image
    except DecodeError:
        return None

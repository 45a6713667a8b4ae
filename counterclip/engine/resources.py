"""What a query reads besides its own data: the index generation it pinned, the model, the encoder, and
the statistics derived once per generation (a vector sample, the calibration, the captions' words).

`Resources` is built by `Engine` at the start of each query (one generation, see `live`) and handed to the
stages; the stages never reach back into the engine.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from counterclip.calibration import MIN_PAIRS, Calibration, native_calibration, self_calibration
from counterclip.engine.options import EngineOptions
from counterclip.engine.readings import CaptionReader
from counterclip.engine.sides import CollectionLike
from counterclip.engine.verdicts import Evidence
from counterclip.engine.words import Lexicon, Substitutes, Swaps
from counterclip.errors import InputError
from counterclip.index_builder.decode import LoadedImage

if TYPE_CHECKING:  # the models import torch; a text search with a torch-free text model needs none
    from counterclip.models import ClipModel

CALIBRATION_SOURCES = ("auto", "native", "captions", "model", "self", "none")


class IndexLike(Protocol):
    """What the engine needs from an index (``counterclip.index_builder.Index`` implements it)."""

    root: Path
    dim: int
    images: CollectionLike
    captions: CollectionLike
    calibration: Calibration | None  # fitted on the index's known pairs, if any

    def image_id_for_path(self, path: str | Path) -> int | None: ...
    def load_image(self, path: str | Path) -> LoadedImage: ...


class GenerationState:
    """Statistics derived from one index generation, each computed on first use and then read-only.

    Args:
        cache: the generation's cache (`counterclip.engine.live.Generation.cache`): a new generation
            starts with fresh statistics.
        lock: guards the first computation (several query threads may ask at once).
    """

    def __init__(self, cache: dict[str, Any], lock: threading.RLock) -> None:
        self._cache = cache
        self._lock = lock

    def typical_sample(self, collection: CollectionLike, size: int) -> np.ndarray:
        """A fixed random sample of ``size`` vectors of a collection (for the typical-score estimate)."""
        samples = self._cache.setdefault("samples", {})
        with self._lock:
            if collection.name not in samples:
                ids = np.asarray(collection.ids)
                rng = np.random.default_rng(0)
                take = ids if len(ids) <= size else rng.choice(ids, size, replace=False)
                samples[collection.name] = collection.vectors(np.sort(take))
            return samples[collection.name]

    def evidence(self, source: str, index: IndexLike, model: ClipModel) -> Evidence:
        """The calibration of ``source`` (see `EngineOptions.calibration`) as verdict evidence."""
        chosen = self._cache.setdefault("evidence", {})
        with self._lock:
            if source not in chosen:
                chosen[source] = Evidence(choose_calibration(source, index, model))
            return chosen[source]

    def readings_hold(self, index: IndexLike, model: ClipModel) -> bool:
        """Whether the model's readings of the index's images in its captions mean something: the test of
        the calibration fitted from the index (each image's best caption beats shuffled captions clearly,
        and the readings agree both ways); an untrained model or unrelated captions fail it."""
        with self._lock:
            if "readings_hold" not in self._cache:
                self._cache["readings_hold"] = _fitted_on_index(index, model) is not None
            return self._cache["readings_hold"]

    def caption_reader(self, index: IndexLike) -> CaptionReader | None:
        """A reader of images in the index's caption words (None: no captions that name substitutes)."""
        with self._lock:
            if "reader" not in self._cache:
                substitutes = self.caption_words(index).substitutes
                self._cache["reader"] = (
                    None if substitutes is None else CaptionReader.of(index.captions, substitutes)
                )
            return self._cache["reader"]

    def caption_words(self, index: IndexLike) -> CaptionWords:
        """What the index's captions say about words: which it uses, one-word swaps, substitutes (a sample
        of 200k captions for larger collections: enough to know their words)."""
        with self._lock:
            if "words" not in self._cache:
                self._cache["words"] = CaptionWords.of(index)
            return self._cache["words"]


@dataclass(frozen=True)
class CaptionWords:
    """The words of an index's captions (all None when it holds none)."""

    lexicon: Lexicon | None
    swaps: Swaps | None
    substitutes: Substitutes | None

    @classmethod
    def of(cls, index: IndexLike) -> CaptionWords:
        if not index.captions.count:
            return cls(None, None, None)
        ids = np.asarray(index.captions.ids)
        if len(ids) > 200_000:
            ids = np.sort(np.random.default_rng(0).choice(ids, 200_000, replace=False))
        texts = [
            m["text"]
            for start in range(0, len(ids), 5000)
            for m in index.captions.meta(ids[start : start + 5000])
        ]
        return cls(Lexicon(texts), Swaps(ids, texts), Substitutes(texts))


@dataclass(frozen=True)
class Resources:
    """One query's view of the engine: the pinned index generation, the model and encoder, the defaults."""

    index: IndexLike
    model: ClipModel
    encoder: Any  # what embeds queries and re-scores answers (the model, or an ONNX encoder over it)
    defaults: EngineOptions
    state: GenerationState

    @property
    def pair_score(self):  # noqa: ANN201 - counterclip.scores.PairScore
        return self.model.pair_score

    def evidence(self, source: str) -> Evidence:
        return self.state.evidence(source, self.index, self.model)

    def typical_sample(self, collection: CollectionLike) -> np.ndarray:
        return self.state.typical_sample(collection, self.defaults.typical_sample)

    @property
    def lexicon(self) -> Lexicon | None:
        return self.state.caption_words(self.index).lexicon

    @property
    def swaps(self) -> Swaps | None:
        return self.state.caption_words(self.index).swaps

    @property
    def substitutes(self) -> Substitutes | None:
        return self.state.caption_words(self.index).substitutes

    @property
    def readings_hold(self) -> bool:
        return self.state.readings_hold(self.index, self.model)

    @property
    def caption_reader(self) -> CaptionReader | None:
        """The index's reader of images in its caption words, where the model's readings hold."""
        if not self.index.captions.count or not self.readings_hold:
            return None
        return self.state.caption_reader(self.index)

    def token_counts(self, texts: list[str]) -> tuple[dict[str, int], int | None]:
        """Tokens per text and the model's context (the context-length warning), where the model says."""
        count = getattr(self.model, "count_tokens", None)
        context = getattr(self.model, "context_length", None)
        if count is None or context is None:
            return {}, None
        return {t: int(count(t)) for t in texts}, int(context)


def choose_calibration(wanted: str, index: IndexLike, model: ClipModel) -> Calibration | None:
    """The calibration ``wanted`` names for this model and index (None when it does not hold).

    ``auto``, in order: the model's own absolute score (a sigmoid link); a calibration the user fitted with
    ``counterclip calibrate``; the one shipped with the model; the one fitted at build time on the index's
    captions; one fitted from the index itself (images against the index's captions); none.
    """
    if wanted not in CALIBRATION_SOURCES:
        raise InputError(f"calibration must be auto, native, captions, model, self or none, got {wanted!r}")
    if wanted == "none":
        return None
    if wanted in ("auto", "native") and model.pair_score.absolute:
        return native_calibration()
    from_index = _for_model(getattr(index, "calibration", None), model)
    shipped = _for_model(getattr(model, "calibration", None), model)
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
    return _fitted_on_index(index, model)


def _for_model(calibration: Calibration | None, model: ClipModel) -> Calibration | None:
    """A calibration fitted for another model is never applied."""
    return calibration if calibration is not None and calibration.fingerprint == model.fingerprint else None


def _fitted_on_index(index: IndexLike, model: ClipModel) -> Calibration | None:
    """A calibration fitted from the index itself: a sample of its images against its captions."""
    images, captions = index.images, index.captions
    if captions.count < 2 or images.count < MIN_PAIRS:
        return None
    rng = np.random.default_rng(0)
    image_ids = np.sort(rng.choice(images.ids, min(images.count, 1000), replace=False))
    caption_ids = np.sort(rng.choice(captions.ids, min(captions.count, 20000), replace=False))
    try:
        return self_calibration(
            images.vectors(image_ids), captions.vectors(caption_ids), model.pair_score, model.fingerprint
        )
    except InputError:
        return None


def check_model_fits(index: IndexLike, model: ClipModel) -> None:
    """`InputError` when ``model`` is not the one the index was built with (width, fingerprint)."""
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


def open_parts(
    index_dir: str | Path, device: str, runtime: str, precision: str, model: Any = None
) -> tuple[IndexLike, ClipModel, Any]:
    """The index at ``index_dir`` (FAISS or a vector store), the model that built it (from where it is now,
    if ``model`` says so and the fingerprint agrees), and the encoder of ``runtime`` (None: the model)."""
    from counterclip.index_builder import open_index
    from counterclip.index_builder.index_model import load_index_model

    loaded = load_index_model(index_dir, None, model, device)
    index = open_index(index_dir, model=loaded)  # checks the fingerprint: same weights as the build
    encoder = None
    if runtime != "torch":
        from counterclip.models.onnx_runtime import create_encoder

        encoder = create_encoder(loaded, runtime, **({"precision": precision} if precision != "fp32" else {}))
    return index, loaded, encoder


def index_match_probability(index_dir: str | Path, model: ClipModel, score: float) -> float | None:
    """``p(match)`` of one pair score by the calibration the index's queries use (``auto``, see
    `choose_calibration`); None when none holds or it does not separate matches (`Calibration.informative`)."""
    from counterclip.index_builder import open_index

    index = open_index(index_dir, model=model)
    try:
        calibration = choose_calibration("auto", index, model)
    finally:
        index.close()
    if calibration is None or not calibration.informative:
        return None
    return float(calibration.probability(score))

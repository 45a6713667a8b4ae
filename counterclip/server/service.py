"""The blocking work behind each route (runs on the worker pool; no FastAPI here).

Every method takes a validated request and returns plain data; user errors raise `CounterclipError`
(422), refused files `NotServed` (404), refused uploads `UploadError` (413/422).
"""

from __future__ import annotations

import html
import logging
import os
import re
import threading
from contextlib import nullcontext
from typing import Any

from PIL import Image

from counterclip.engine.live import one_generation
from counterclip.errors import InputError
from counterclip.report.html import rule_in_words
from counterclip.server import explain as explain_api
from counterclip.server import words as page_words
from counterclip.server.admission import MemoryBudget
from counterclip.server.files import (
    IndexLookup,
    NotServed,
    decode_upload,
    describe_image,
    image_meta,
    load_indexed,
    read_indexed,
)
from counterclip.server.pool import WorkerPool
from counterclip.server.schemas import (
    CounterfactualRequest,
    ImageRef,
    MapsRequest,
    ReportRequest,
    SearchRequest,
)
from counterclip.server.settings import ServerSettings

LOG = logging.getLogger(__name__)


class Service:
    """One engine, its worker pool, and the per-request work.

    Args:
        engine: an open `Engine` (shared, read-only: queries never mutate it).
        settings: `ServerSettings`.
    """

    def __init__(self, engine: Any, settings: ServerSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.limits = settings.limits
        self.pool = WorkerPool(
            settings.pool_workers,
            settings.pool_threads,
            settings.queue,
            settings.retry_after,
            settings.max_wait,
        )
        self.budget = MemoryBudget(settings.memory_budget, settings.retry_after)
        self._lookup = IndexLookup(engine.index)
        self._lookup_lock = threading.Lock()

    def pinned(self) -> Any:
        """One index generation for the enclosed work (an engine without generations: a no-op)."""
        pinned = getattr(self.engine, "pinned", None)
        return pinned() if pinned is not None else nullcontext()

    @property
    def lookup(self) -> IndexLookup:
        """The captions / content-hash lookup of the generation this request reads (rebuilt per generation)."""
        index = self.engine.index
        with self._lookup_lock:
            if self._lookup.index is not index:
                self._lookup = IndexLookup(index)
            return self._lookup

    # --- input checks -------------------------------------------------------------------------
    def _check_text(self, field: str, text: str | None) -> None:
        if text is not None and len(text) > self.limits.max_text_chars:
            raise InputError(
                f"{field} is {len(text)} characters long; the limit is {self.limits.max_text_chars}"
            )

    def _check(self, request: SearchRequest | CounterfactualRequest) -> None:
        self._check_text("text", request.text)
        labels = getattr(request, "labels", None) or []
        if len(labels) > self.limits.max_labels:
            raise InputError(f"labels has {len(labels)} entries; the limit is {self.limits.max_labels}")
        for i, label in enumerate(labels):
            self._check_text(f"labels[{i}]", label)
        self._check_text("target", getattr(request, "target", None))

    def query_image(self, ref: ImageRef | None) -> int | Image.Image | None:
        """An index id, or the decoded upload (an upload of an indexed file becomes that file's id)."""
        if ref is None:
            return None
        if (ref.id is None) == (ref.base64 is None):
            raise InputError("image needs exactly one of id or base64")
        if ref.id is not None:
            image_meta(self.engine.index, ref.id)  # unknown ids are 404s, like /images/ID
            return ref.id
        loaded = decode_upload(ref.base64, self.limits, self.engine.index)
        indexed = self.lookup.id_for_sha256(loaded.sha256)
        return indexed if indexed is not None else loaded.model_input

    def query_pil(self, image: int | Image.Image) -> Image.Image:
        """The query image's pixels at full resolution (an id is read through the checked path)."""
        return (
            load_indexed(self.engine.index, image, full_resolution=True) if isinstance(image, int) else image
        )

    # --- descriptions ---------------------------------------------------------------------------
    def describe(self, ids: list[int]) -> dict[str, dict[str, Any]]:
        """id -> what the page shows for that image (file name, size, captions)."""
        wanted = sorted({int(i) for i in ids})
        if not wanted:
            return {}
        try:
            metas = self.engine.index.images.meta(wanted)
        except KeyError:
            metas = [m for i in wanted for m in self._meta_or_none(i)]
        return {str(m["id"]): describe_image(m, self.lookup.captions_of(m["id"])) for m in metas}

    def _meta_or_none(self, image_id: int) -> list[dict[str, Any]]:
        try:
            return [image_meta(self.engine.index, image_id)]
        except NotServed:
            return []

    @one_generation
    def describe_one(self, image_id: int) -> dict[str, Any]:
        meta = image_meta(self.engine.index, image_id)
        return describe_image(meta, self.lookup.captions_of(image_id))

    @one_generation
    def info(self) -> dict[str, Any]:
        """What the page header shows and the limits the page checks before uploading."""
        index = self.engine.index
        model = getattr(self.engine, "model", None)
        spec = getattr(model, "spec", None)
        return {
            "name": os.path.basename(os.path.normpath(str(index.root))),
            "images": index.images.count,
            "captions": index.captions.count,
            "generation": getattr(index, "generation", None),
            "model": str(spec) if spec is not None else type(model).__name__,
            "maps": hasattr(model, "image_tower"),  # every ClipModel: relevance on ViT, Grad-CAM otherwise
            "token_required": self.settings.token is not None,
            "limits": {
                "max_upload_bytes": self.limits.max_upload_bytes,
                "max_upload_pixels": self.limits.max_upload_pixels,
                "max_text_chars": self.limits.max_text_chars,
                "max_labels": self.limits.max_labels,
            },
        }

    # --- queries ------------------------------------------------------------------------------
    @one_generation
    def search(self, request: SearchRequest) -> dict[str, Any]:
        self._check(request)
        result = self.engine.search(
            text=request.text,
            image=self.query_image(request.image),
            k=request.k,
            collection=request.collection,
            **({"where": request.where} if request.where is not None else {}),  # --where, on every store
        )
        out = result.to_dict()
        image_ids = [i.id for i in result.items if i.kind == "image"]
        if isinstance(result.query.get("id"), int):
            image_ids.append(result.query["id"])
        out["images"] = self.describe(image_ids)
        out["numbers"] = page_words.search_numbers(self.engine, request.text is not None, request.collection)
        return out

    def _run_counterfactuals(self, request: CounterfactualRequest) -> tuple[Any, int | Image.Image]:
        self._check(request)
        image = self.query_image(request.image)
        overrides = {
            key: value
            for key in ("match_margin", "nomatch_margin", "threshold", "verify_with", "where")
            if (value := getattr(request, key)) is not None
        }
        if request.quality:  # the answers' quality cards (extra passes, counted in them)
            overrides["quality"] = True
        result = self.engine.counterfactuals(
            image=image,
            text=request.text,
            side=request.side,
            mode=request.mode,
            labels=request.labels,
            target=request.target,
            k=request.k,
            **overrides,
        )
        return result, image

    @one_generation
    def counterfactual(self, request: CounterfactualRequest) -> dict[str, Any]:
        result, image = self._run_counterfactuals(request)
        out = result.to_dict()
        ids = [i.id for i in result.items if i.kind == "image"]
        ids += [i.id for group in result.baselines.values() for i in group if i.kind == "image"]
        if isinstance(image, int):
            ids.append(image)
        out["images"] = self.describe(ids)
        out["rule_in_words"] = plain_text(rule_in_words(out))  # what the page shows; the report's wording
        out.update(page_words.result_words(self.engine, out))
        return out

    @one_generation
    def maps(self, request: MapsRequest) -> dict[str, Any]:
        """The explanation maps of one answer (``request.item``) of a counterfactual query."""
        self._check(request)
        image = self.query_image(request.image)
        text = request.target if request.mode == "flip" else request.text
        if not text:
            raise InputError("maps need the query text (or, for flip, the target label)")
        query, model = self.query_pil(image), self.engine.model
        if request.side == "image":
            answer = load_indexed(self.engine.index, request.item, full_resolution=True)
            p_match = self._p_match(answer, text)
            maps = explain_api.item_maps(
                model, "image", query, text, result_image=answer, p_match=p_match, quality=request.quality
            )
        else:
            try:
                caption = self.engine.index.captions.meta([request.item])[0]["text"]
            except (KeyError, IndexError) as exc:
                raise NotServed(f"caption id {request.item} is not in the index") from exc
            p_match = self._p_match(query, caption)
            maps = explain_api.item_maps(
                model, "text", query, text, result_text=caption, p_match=p_match, quality=request.quality
            )
        return {"item": request.item, "side": request.side, "text": text, "maps": maps}

    def _p_match(self, image: Image.Image, text: str) -> float | None:
        """The calibrated p(match) of one pair (None when no calibration holds), for a map's title."""
        evidence = self.engine.evidence
        if evidence.calibration is None:
            return None
        return evidence.p_match(explain_api.pair_score_of(self.engine.model, image, text))

    @one_generation
    def report(self, request: ReportRequest) -> str:
        """The self-contained HTML report of a counterfactual query."""
        result, image = self._run_counterfactuals(request)
        query = self.query_pil(image)

        def image_of(image_id: int) -> tuple[str, bytes] | None:
            try:
                data, meta = read_indexed(self.engine.index, image_id)
            except NotServed as exc:
                LOG.warning("report: %s", exc)
                return None
            return meta["path"], data

        return explain_api.report_html(
            self.engine.model, result, query, image_of, with_maps=request.maps, quality=request.quality
        )


def plain_text(markup: str) -> str:
    """The text of a small HTML fragment (tags dropped, entities decoded): the page sets it as text."""
    return html.unescape(re.sub(r"<[^>]+>", "", markup))

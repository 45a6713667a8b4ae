"""Request bodies. Unknown keys, NaN/Infinity, out-of-range numbers and broken text are 422s."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt

from counterclip.engine.request import control_character

MAX_ID = 2**63 - 1  # ids are int64 in FAISS and SQLite


def _unicode_text(value: str) -> str:
    """Text that can be encoded as UTF-8 (a lone surrogate such as "\\ud800" cannot) and holds no control
    character (a NUL, an escape: tab and line breaks are allowed)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"text is not valid Unicode (unpaired surrogate at position {exc.start})") from None
    reason = control_character(value)
    if reason is not None:
        raise ValueError(f"text {reason}")
    return value


Id = Annotated[StrictInt, Field(ge=0, le=MAX_ID)]
Text = Annotated[str, AfterValidator(_unicode_text)]


class Strict(BaseModel):
    """Unknown keys are errors; floats must be finite."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ImageRef(Strict):
    """A query image: an index id, or an uploaded file as base64 (a ``data:`` URL prefix is allowed)."""

    id: Id | None = None
    base64: str | None = None


class SearchRequest(Strict):
    text: Text | None = None
    image: ImageRef | None = None
    k: Annotated[StrictInt, Field(ge=1, le=1000)] = 10
    collection: Literal["images", "captions"] = "images"
    where: Annotated[Text, Field(max_length=2000)] | None = None  # only images that pass this filter


class CounterfactualRequest(Strict):
    image: ImageRef
    text: Text | None = None
    side: Literal["image", "text"] = "image"
    mode: Literal["increase", "decrease", "flip"] = "increase"
    labels: list[Text] | None = None
    target: Text | None = None
    k: Annotated[StrictInt, Field(ge=1, le=100)] | None = None
    match_margin: float | None = Field(None, ge=0, le=1)
    nomatch_margin: float | None = Field(None, ge=0, le=1)
    threshold: float | None = Field(None, ge=-1e4, le=1e4)
    verify_with: Literal["itm"] | None = None  # a second verifier: the model's image-text matching head
    quality: bool = False  # the quality card of every answer (and, for /maps, of every map); extra passes
    where: Annotated[Text, Field(max_length=2000)] | None = None  # only images that pass this filter


class MapsRequest(CounterfactualRequest):
    """The query of a counterfactual result and one of its items: the explanation maps of that item."""

    item: Id  # the result item's id (an image id on the image side, a caption id on the text side)


class ReportRequest(CounterfactualRequest):
    maps: bool = True  # include explanation maps (slower)

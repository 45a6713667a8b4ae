"""`Client`: a `counterclip serve` service behind the `Engine`'s ``search`` / ``counterfactuals`` calls.

An app written against `Engine` switches to a remote index by changing one line::

    engine = counterclip.Engine.open("photos.idx")                 # in process
    engine = counterclip.Client("http://gpu-box:8000", token=...)  # remote, same calls, same results

Images go over the wire as index ids (``int``) or as files (a path or a PIL image is uploaded; the server
cannot read the caller's disk). An upload is decoded by the index's own rules, like a path given to
`Engine` (so a PIL image may score slightly differently than in process when the index shrinks large
images), and an uploaded file that is in the index is that indexed image. Only the standard library is
used (no HTTP package needed).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from counterclip.engine.results import (
    CounterfactualQuality,
    CounterfactualResult,
    ResultItem,
    SearchHit,
    SearchResult,
    Validity,
)
from counterclip.engine.search import VectorHits
from counterclip.errors import CounterclipError, InputError

TOKEN_ENV = "COUNTERCLIP_TOKEN"
#: Settings the service takes per request (as keyword overrides of `EngineOptions`).
SERVER_OVERRIDES = ("match_margin", "nomatch_margin", "threshold", "quality", "where")
_NUMERIC = ("match_margin", "nomatch_margin", "threshold")
_JSON = (str, int, float, bool, list, dict, type(None))


class ServerError(CounterclipError):
    """The service failed (5xx) or could not be reached."""


def _build(cls: type, data: dict[str, Any]) -> Any:
    """A result dataclass from its ``to_dict()``; keys this version does not know are ignored."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def item_from_dict(data: dict[str, Any]) -> ResultItem:
    return _build(ResultItem, data)


def hit_from_dict(data: dict[str, Any]) -> SearchHit:
    """A `SearchHit` from its ``to_dict()`` (a service of the earlier shape: ``score_after`` is the score)."""
    return _build(SearchHit, {"score": data.get("score_after", 0.0), **data})


def search_result_from_dict(data: dict[str, Any]) -> SearchResult:
    """`SearchResult` from the service's JSON."""
    fields = dict(data)
    fields["items"] = [hit_from_dict(i) for i in data.get("items", [])]
    return _build(SearchResult, fields)


def counterfactual_result_from_dict(data: dict[str, Any]) -> CounterfactualResult:
    """`CounterfactualResult` from the service's JSON (the same object `Engine.counterfactuals` returns)."""
    fields = dict(data)
    fields["validity"] = _build(Validity, data["validity"])
    fields["items"] = [item_from_dict(i) for i in data.get("items", [])]
    fields["baselines"] = {
        name: [item_from_dict(i) for i in items] for name, items in data.get("baselines", {}).items()
    }
    if data.get("quality"):
        fields["quality"] = CounterfactualQuality.from_dict(data["quality"])
    return _build(CounterfactualResult, fields)


class Client:
    """A counterclip service with the `Engine`'s query signatures and result objects.

    Args:
        url: the service, e.g. ``http://127.0.0.1:8000``.
        token: the bearer token the service was started with; default the ``COUNTERCLIP_TOKEN``
            environment variable, or none.
        timeout: seconds to wait for one answer. Default 300.
        retries: how often a 503 (server busy) is retried, after its ``Retry-After``. Default 3.

    Examples::

        with counterclip.Client("http://127.0.0.1:8000") as engine:
            hits = engine.search(text="a red circle", k=5)
            result = engine.counterfactuals(image=hits.items[0].id, text="a blue circle", k=3)
            print(result.validity.rule, [i.path for i in result.items])
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        token: str | None = None,
        timeout: float = 300.0,
        retries: int = 3,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise InputError(f"client url must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        self.timeout = timeout
        self.retries = retries

    # --- plumbing ------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> bytes:
        data = None if body is None else json.dumps(body, allow_nan=False).encode("utf-8")
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return response.read()
            except urllib.error.HTTPError as exc:
                detail = _detail(exc)
                if exc.code == 503 and attempt < self.retries:
                    time.sleep(_retry_after(exc))
                    continue
                if exc.code == 401:
                    raise InputError(
                        f"{self.url} needs a token: Client(url, token=...) or set {TOKEN_ENV} ({detail})"
                    ) from None
                if 400 <= exc.code < 500:
                    raise InputError(detail) from None
                raise ServerError(f"{self.url}{path}: HTTP {exc.code}: {detail}") from None
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise ServerError(
                    f"cannot reach the counterclip service at {self.url} ({reason}); start it with `counterclip serve INDEX`"
                ) from None
        raise ServerError(f"{self.url}{path}: still busy after {self.retries} retries")  # pragma: no cover

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return json.loads(self._request("POST", path, body))

    @staticmethod
    def _image(image: str | Path | Image.Image | int | np.integer) -> dict[str, Any]:
        if isinstance(image, (int, np.integer)) and not isinstance(image, bool):
            return {"id": int(image)}
        if isinstance(image, Image.Image):
            data = _pil_bytes(image)
        else:
            path = Path(image).expanduser()
            if not path.is_file():
                raise InputError(f"query image not found: {path}")
            data = path.read_bytes()
        return {"base64": base64.b64encode(data).decode("ascii")}

    # --- the Engine's calls ----------------------------------------------------------------------
    def search(
        self,
        text: str | None = None,
        image: str | Path | Image.Image | int | None = None,
        k: int = 10,
        collection: str = "images",
        where: str | None = None,
        **unknown: Any,
    ) -> SearchResult:
        """Plain retrieval by text or by image; see `Engine.search` (an unknown keyword: the service's
        422, the library's own message)."""
        if (text is None) == (image is None):
            raise InputError("give exactly one of text or image to search by")
        body: dict[str, Any] = {"k": int(k), "collection": collection, **_passed(unknown)}
        if where is not None:
            body["where"] = where
        if text is not None:
            body["text"] = text
        else:
            body["image"] = self._image(image)
        return search_result_from_dict(self._post("/search", body))

    def search_vectors(
        self, vectors: Any, k: int = 10, collection: str = "images", **unknown: Any
    ) -> VectorHits:
        """Faiss-like search by embeddings ``(nq, d)``; see `Engine.search_vectors` (``D, I = ...``)."""
        array = np.asarray(vectors, dtype=np.float64)
        rows = array[None] if array.ndim == 1 else array
        body = {"vectors": rows.tolist(), "k": int(k), "collection": collection, **_passed(unknown)}
        data = self._post("/search/vectors", body)
        similarities = np.array(data["similarities"], dtype=np.float64)
        return VectorHits(
            np.nan_to_num(similarities, nan=-np.inf).astype(np.float32),
            np.array(data["ids"], dtype=np.int64),
            np.array(data["scores"], dtype=np.float64),
        )

    def search_batch(
        self,
        texts: list[str] | None = None,
        images: list[str | Path | Image.Image | int] | None = None,
        vectors: Any = None,
        k: int = 10,
        collection: str = "images",
        **unknown: Any,
    ) -> list[SearchResult]:
        """One `SearchResult` per query of a batch (texts, images or vectors); see `Engine.search_batch`."""
        body: dict[str, Any] = {"k": int(k), "collection": collection, **_passed(unknown)}
        if texts is not None:
            body["texts"] = list(texts)
        if images is not None:
            body["images"] = [self._image(image) for image in images]
        if vectors is not None:
            array = np.asarray(vectors, dtype=np.float64)
            body["vectors"] = (array[None] if array.ndim == 1 else array).tolist()
        return [search_result_from_dict(r) for r in self._post("/search/batch", body)["results"]]

    def counterfactuals(
        self,
        image: str | Path | Image.Image | int,
        text: str | None = None,
        side: str = "image",
        mode: str = "increase",
        labels: list[str] | None = None,
        target: str | None = None,
        k: int | None = None,
        options: Any = None,
        **overrides: Any,
    ) -> CounterfactualResult:
        """Verified counterfactuals for an (image, text) pair; see `Engine.counterfactuals`.

        The service takes ``match_margin``, ``nomatch_margin``, ``threshold``, ``verify_with``, ``where``
        and ``quality`` (the answers' quality cards, ``result.quality``) per request (as keyword overrides,
        or from ``options``); other settings are the service's own (its 422 says so), and a keyword nobody
        takes is the library's own error, as in process.
        """
        settings: dict[str, Any] = {}
        if options is not None:
            settings.update({key: getattr(options, key) for key in SERVER_OVERRIDES})
            k = options.k if k is None else k
        settings.update(overrides)
        body: dict[str, Any] = {"image": self._image(image), "side": side, "mode": mode}
        for key, value in (("text", text), ("labels", labels), ("target", target), ("k", k)):
            if value is not None:
                body[key] = list(value) if key == "labels" else value
        body.update(
            {key: float(value) if key in _NUMERIC else value for key, value in _passed(settings).items()}
        )
        return counterfactual_result_from_dict(self._post("/counterfactual", body))

    # --- extras ----------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """The service's counts and worker-pool state."""
        return json.loads(self._request("GET", "/health"))

    def image_bytes(self, image_id: int) -> bytes:
        """The file of an indexed image."""
        return self._request("GET", f"/images/{int(image_id)}")

    def close(self) -> None:
        """Nothing to release (one connection per call); present so a Client replaces an Engine."""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r}, token={'set' if self.token else 'none'})"


def _pil_bytes(image: Image.Image) -> bytes:
    """A PIL query as the service should decode it: the file's bytes when it was opened from one and not
    decoded yet, else lossless in its own mode (PNG, or TIFF for modes PNG cannot hold, such as CMYK) with
    its EXIF, so the service converts and rotates it as `Engine` would in process."""
    filename = getattr(image, "filename", "") or ""
    if getattr(image, "tile", None) and filename and os.path.isfile(filename):
        return Path(filename).read_bytes()
    exif = image.getexif()
    for fmt in ("PNG", "TIFF"):
        buffer = io.BytesIO()
        try:
            image.save(buffer, format=fmt, exif=exif)
            return buffer.getvalue()
        except (OSError, ValueError, KeyError):
            continue
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _passed(values: dict[str, Any]) -> dict[str, Any]:
    """Keyword values for the request body (None dropped; what JSON cannot hold, as text): the service
    checks the names, so an unknown one gets the library's message."""
    return {k: v if isinstance(v, _JSON) else str(v) for k, v in values.items() if v is not None}


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read() or b"{}")
    except (ValueError, OSError):
        return exc.reason or f"HTTP {exc.code}"
    detail = body.get("detail") if isinstance(body, dict) else None
    return detail if isinstance(detail, str) else json.dumps(detail) if detail else f"HTTP {exc.code}"


def _retry_after(exc: urllib.error.HTTPError) -> float:
    try:
        return min(30.0, max(0.1, float(exc.headers.get("Retry-After", "1"))))
    except ValueError:
        return 1.0

"""HTTP service for retrieval apps: search and counterfactuals over one index (FastAPI).

One engine per process; FastAPI runs the sync endpoints in a thread pool, which the engine supports
(queries never mutate it). Per-request settings go in the request body, never into shared state.
"""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field

from counterclip.errors import CounterclipError

if TYPE_CHECKING:
    from counterclip.engine import Engine

LOG = logging.getLogger(__name__)


class ImageRef(BaseModel):
    """A query image: an index id, or a base64-encoded file."""

    model_config = ConfigDict(extra="forbid")
    id: int | None = None
    base64: str | None = None


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str | None = None
    image: ImageRef | None = None
    k: int = Field(10, ge=1, le=1000)
    target: Literal["images", "captions"] = "images"


class CounterfactualRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: ImageRef
    text: str | None = None
    side: Literal["image", "text"] = "image"
    mode: Literal["increase", "decrease", "flip"] = "increase"
    labels: list[str] | None = None
    target: str | None = None
    k: int = Field(5, ge=1, le=100)
    match_margin: float | None = Field(None, ge=0)
    nomatch_margin: float | None = Field(None, ge=0)
    threshold: float | None = None


def _image(ref: ImageRef | None) -> int | Image.Image | None:
    if ref is None:
        return None
    if (ref.id is None) == (ref.base64 is None):
        raise HTTPException(422, "image needs exactly one of id or base64")
    if ref.id is not None:
        return ref.id
    try:
        with Image.open(io.BytesIO(base64.b64decode(ref.base64, validate=True))) as im:
            return im.convert("RGB")
    except (ValueError, UnidentifiedImageError, OSError) as exc:
        raise HTTPException(422, f"image.base64 is not a readable image: {exc}") from exc


def create_app(engine: Engine) -> FastAPI:
    """Build the FastAPI app around an open `Engine`."""
    app = FastAPI(title="counterclip", version="1")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "images": engine.index.images.count,
            "captions": engine.index.captions.count,
        }

    @app.post("/search")
    def search(request: SearchRequest) -> dict[str, Any]:
        try:
            return engine.search(
                text=request.text, image=_image(request.image), k=request.k, collection=request.target
            ).to_dict()
        except CounterclipError as exc:
            raise HTTPException(422, str(exc)) from exc

    @app.post("/counterfactual")
    def counterfactual(request: CounterfactualRequest) -> dict[str, Any]:
        overrides = {
            key: value
            for key in ("match_margin", "nomatch_margin", "threshold")
            if (value := getattr(request, key)) is not None
        }
        try:
            result = engine.counterfactuals(
                image=_image(request.image),
                text=request.text,
                side=request.side,
                mode=request.mode,
                labels=request.labels,
                target=request.target,
                k=request.k,
                **overrides,
            )
        except CounterclipError as exc:
            raise HTTPException(422, str(exc)) from exc
        return result.to_dict()

    @app.get("/images/{image_id}")
    def image_file(image_id: int) -> FileResponse:
        try:
            meta = engine.index.images.meta([image_id])
        except KeyError:
            meta = []
        if not meta or not Path(meta[0]["abs_path"]).is_file():
            raise HTTPException(404, f"no image with id {image_id}")
        return FileResponse(meta[0]["abs_path"])

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return _PAGE

    return app


_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>counterclip</title>
<style>body{font-family:system-ui;margin:24px}img{width:120px;height:120px;object-fit:contain}
.grid{display:flex;flex-wrap:wrap;gap:10px}.card{font-size:.8em;width:130px}</style></head><body>
<h1>counterclip</h1>
<p>Image id <input id="img" size="6" value="0"> text <input id="text" size="40" value="a photo of a dog">
<select id="mode"><option>increase</option><option>decrease</option></select>
<button onclick="go()">counterfactuals</button></p>
<div id="rule"></div><div class="grid" id="out"></div>
<script>
async function go(){
  const body={image:{id:parseInt(document.getElementById('img').value)},text:document.getElementById('text').value,
              mode:document.getElementById('mode').value,k:8};
  const r=await fetch('/counterfactual',{method:'POST',headers:{'Content-Type':'application/json'},body:JSON.stringify(body)});
  const j=await r.json(); const out=document.getElementById('out'); out.innerHTML='';
  if(!r.ok){document.getElementById('rule').textContent=j.detail;return;}
  document.getElementById('rule').textContent='valid when '+j.validity.rule;
  for(const it of j.items){const d=document.createElement('div');d.className='card';
    const img=document.createElement('img');img.src='/images/'+it.id;d.appendChild(img);
    d.appendChild(document.createTextNode('#'+it.rank+' '+it.score_before.toFixed(2)+' → '+it.score_after.toFixed(2)));
    out.appendChild(d);}
}
</script></body></html>"""

"""HTTP routes: the JSON API, indexed image files, the page and the API docs."""

from __future__ import annotations

import hmac
import mimetypes
import os
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Request, Response
from fastapi import Path as PathParam
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from counterclip.server.admission import PreparsedRoute
from counterclip.server.batch import add_batch_routes
from counterclip.server.files import open_indexed, stream_fd
from counterclip.server.schemas import (
    MAX_ID,
    CounterfactualRequest,
    MapsRequest,
    ReportRequest,
    SearchRequest,
)
from counterclip.server.security import TOKEN_COOKIE, session_cookie
from counterclip.server.service import Service

STATIC = Path(__file__).parent / "static"
SWAGGER_PREFIX = "static/swagger"
#: The page may load and call only its own origin; no inline script; images from the API or data: URIs.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
#: A downloaded report opened from the server's origin runs nothing.
REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

#: Digits only (the route matches ``[0-9]+``: ``/images/1.0`` and ``/images/%201`` are 404s, not id 1).
ImageId = Annotated[int, PathParam(ge=0, le=MAX_ID, description="index id of the image (digits only)")]


def swagger_path() -> Path | None:
    """The folder of the packaged Swagger UI (the server extra's ``swagger-ui-bundle-v2``), if installed."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    path = Path(str(swagger_ui_path))
    return path if (path / "swagger-ui-bundle.js").is_file() else None


class ErrorBody(BaseModel):
    """Every error: a one-line ``detail`` naming the field or the file and the fix."""

    detail: str
    errors: list[dict[str, Any]] | None = None  # validation errors: [{field, message, type}]


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (401, "missing or wrong token (only when the server has one)"),
        (404, "unknown id, or its file changed or moved since indexing"),
        (413, "request body or upload over the limit"),
        (422, "invalid request (the field and the problem in `detail`)"),
        (503, "all workers busy and the queue full; retry after `Retry-After` seconds"),
    )
}


def make_router(service: Service) -> APIRouter:
    """All routes, bound to one `Service` (added group by group, in the order the API docs list them)."""
    router = APIRouter(responses=ERRORS, route_class=PreparsedRoute)
    _add_status_routes(router, service)
    _add_query_routes(router, service)
    add_batch_routes(router, service)  # batch.py: /search/vectors, /search/batch
    _add_image_routes(router, service)
    _add_session_route(router, service)
    _add_page_routes(router)
    return router


def _add_status_routes(router: APIRouter, service: Service) -> None:
    """``/health`` and ``/info``."""

    @router.get("/health", tags=["service"])
    async def health() -> dict[str, Any]:
        """Counts, the index generation answering, worker-pool state (running + waiting, refused, measured
        seconds per kind of call) and the memory budget (reserved now, peak, refused)."""
        refresh = getattr(service.engine, "refresh", None)
        if refresh is not None:
            await run_in_threadpool(refresh)  # an update since the last query shows here at once
        index = service.engine.index
        return {
            "status": "ok",
            "generation": getattr(index, "generation", None),
            "images": index.images.count,
            "captions": index.captions.count,
            "pool": service.pool.stats(),
            "memory": service.budget.stats(),
        }

    @router.get("/info", tags=["service"])
    async def info() -> dict[str, Any]:
        """Index name and counts, model, whether maps are available, and the request limits."""
        return service.info()


def _add_query_routes(router: APIRouter, service: Service) -> None:
    """The queries, each run on the worker pool: search, counterfactual, maps, report."""
    pool = service.pool

    @router.post("/search", tags=["queries"])
    async def search(request: SearchRequest) -> dict[str, Any]:
        """Plain retrieval by text or by image (index id or upload). ``images`` describes each image item."""
        return await pool.run(service.search, request)

    @router.post("/counterfactual", tags=["queries"])
    async def counterfactual(request: CounterfactualRequest) -> dict[str, Any]:
        """Verified counterfactuals for an (image, text) pair; ``images`` describes each image shown."""
        return await pool.run(service.counterfactual, request)

    @router.post("/maps", tags=["queries"])
    async def maps(request: MapsRequest) -> dict[str, Any]:
        """Explanation maps of one answer (``item``) of a counterfactual query, as PNG data URIs with legends."""
        return await pool.run(service.maps, request)

    @router.post("/report", tags=["queries"], response_class=HTMLResponse)
    async def report(request: ReportRequest) -> HTMLResponse:
        """The self-contained HTML report of a counterfactual query (a download)."""
        html = await pool.run(service.report, request)
        name = f"counterclip-{request.side}-{request.mode}.html"
        return HTMLResponse(
            html,
            headers={
                "content-disposition": f'attachment; filename="{name}"',
                "content-security-policy": REPORT_CSP,
            },
        )


def _add_image_routes(router: APIRouter, service: Service) -> None:
    """An indexed image's file and its description."""

    @router.get("/images/{image_id:int}", tags=["images"], response_class=Response)
    async def image_file(
        image_id: ImageId, if_none_match: Annotated[str | None, Header()] = None
    ) -> Response:
        """The indexed file of an image id (only inside the indexed folder, only if unchanged since indexing)."""
        fd, size, meta = await run_in_threadpool(open_indexed, service.engine.index, image_id)
        etag = f'"{meta["sha256"][:32]}"' if meta.get("sha256") else None
        headers = {"cache-control": "private, max-age=3600"}
        if etag:
            headers["etag"] = etag
            if if_none_match == etag:
                await run_in_threadpool(os.close, fd)
                return Response(status_code=304, headers=headers)
        headers["content-length"] = str(size)
        media = mimetypes.guess_type(meta["path"])[0] or "application/octet-stream"
        return StreamingResponse(stream_fd(fd, size), media_type=media, headers=headers)

    @router.get("/images/{image_id:int}/meta", tags=["images"])
    async def image_info(image_id: ImageId) -> dict[str, Any]:
        """File name, size in pixels and captions of an image id."""
        return await service.pool.run(service.describe_one, image_id)


def _add_session_route(router: APIRouter, service: Service) -> None:
    """``/auth/session``: the token as a cookie, for the page."""

    @router.post("/auth/session", tags=["service"], status_code=204)
    async def session(authorization: Annotated[str | None, Header()] = None) -> Response:
        """Exchange 'Authorization: Bearer TOKEN' for a same-site cookie (so the page's images load); the
        cookie holds an HMAC of the token, not the token."""
        token = service.settings.token
        if token is None:
            return Response(status_code=204)
        given = (authorization or "")[7:].strip() if (authorization or "")[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(given.encode("latin-1", "replace"), token.encode()):
            raise HTTPException(
                401, "wrong token", headers={"www-authenticate": 'Bearer realm="counterclip"'}
            )
        response = Response(status_code=204)
        response.set_cookie(TOKEN_COOKIE, session_cookie(token), httponly=True, samesite="strict", path="/")
        return response


def _add_page_routes(router: APIRouter) -> None:
    """The page, its icon and the API docs (none of them in the schema)."""

    @router.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"content-security-policy": PAGE_CSP})

    @router.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    @router.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        if swagger_path() is None:
            raise HTTPException(
                404, "the API docs need the packaged Swagger UI: pip install 'counterclip[server]'"
            )
        return get_swagger_ui_html(
            openapi_url="openapi.json",
            title="counterclip API",
            swagger_js_url=f"{SWAGGER_PREFIX}/swagger-ui-bundle.js",
            swagger_css_url=f"{SWAGGER_PREFIX}/swagger-ui.css",
            swagger_favicon_url="static/favicon.svg",
        )

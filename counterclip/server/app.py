"""HTTP service and web app for retrieval apps: search and counterfactuals over one index (FastAPI).

One engine per process, shared by a bounded worker pool (`pool.WorkerPool`); per-request settings go
in the request body, never into shared state. Guards (`security`) check the Host header, the token
and the body size before any route runs, and turn any failure into a JSON error.

Examples::

    from counterclip.engine import Engine
    from counterclip.server.app import create_app
    from counterclip.server.settings import ServerSettings

    app = create_app(Engine.open("photos.idx"), ServerSettings(workers=2))
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from counterclip._version import __version__
from counterclip.errors import CounterclipError
from counterclip.server.admission import AdmissionGuard, tune_allocator
from counterclip.server.batch import unknown_keyword_error
from counterclip.server.files import NotServed, UploadError
from counterclip.server.pool import ServerBusy
from counterclip.server.routes import STATIC, make_router, swagger_path
from counterclip.server.security import AccessGuard, ErrorGuard
from counterclip.server.service import Service
from counterclip.server.settings import ServerSettings

if TYPE_CHECKING:
    from counterclip.engine import Engine

LOG = logging.getLogger(__name__)


def _error(status: int, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status)


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """One line naming the field and the problem; ``errors`` lists them all (never echoing the input). A
    keyword the query does not take gets the library's own message (`engine.keywords`), as in process."""
    errors = [
        {"field": _field(tuple(e.get("loc", ()))), "message": str(e.get("msg", "")), "type": e.get("type")}
        for e in exc.errors()
    ]
    extra = {e["field"] for e in errors if e["type"] == "extra_forbidden" and "." not in e["field"]}
    keyword_error = unknown_keyword_error(request.url.path, extra) if extra else None
    if keyword_error is not None:
        return _error(422, str(keyword_error), errors=errors)
    first = errors[0] if errors else {"field": "body", "message": "invalid request"}
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return _error(422, f"{first['field']}: {first['message']}{more}", errors=errors)


def _install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)

    @app.exception_handler(CounterclipError)
    async def user_error(_: Request, exc: CounterclipError) -> JSONResponse:
        return _error(422, str(exc))

    @app.exception_handler(NotServed)
    async def not_served(request: Request, exc: NotServed) -> JSONResponse:
        LOG.warning("refused %s: %s", request.url.path, exc)
        return _error(
            404, "no such image in the index (unknown id, or its file changed or moved since indexing)"
        )

    @app.exception_handler(UploadError)
    async def upload_error(_: Request, exc: UploadError) -> JSONResponse:
        return _error(exc.status, str(exc))

    @app.exception_handler(ServerBusy)
    async def busy(_: Request, exc: ServerBusy) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc)}, status_code=503, headers={"retry-after": str(exc.retry_after)}
        )


def create_app(engine: Engine, settings: ServerSettings | None = None) -> FastAPI:
    """Build the FastAPI app around an open `Engine`.

    Args:
        engine: an open `Engine` (its index and model are shared by all requests).
        settings: `ServerSettings`; default loopback only, no token, a pool sized to the machine.

    Returns:
        The ASGI app: the page at ``/``, the JSON API, ``/images/ID``, ``/docs``.

    Raises:
        InputError: settings that would expose the API (a non-loopback host without a token).
    """
    settings = settings or ServerSettings()
    service = Service(engine, settings)
    tune_allocator()  # freed bodies go back to the OS (see `admission.tune_allocator`)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        service.pool.shutdown()

    app = FastAPI(
        title="counterclip",
        version=__version__,
        description="Verified counterfactuals and search over one image index. The page is at `/`.",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.service = service
    app.include_router(make_router(service))
    _mount_static(app)
    _install_error_handlers(app)
    _install_openapi(app, settings)
    _install_guards(app, service)
    return app


def _mount_static(app: FastAPI) -> None:
    """The page's files at ``/static``, and the packaged Swagger UI (when installed) at ``/static/swagger``."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    swagger = swagger_path()
    if swagger is not None:
        app.mount("/static/swagger", StaticFiles(directory=swagger), name="swagger")
        # mounted after /static: Starlette matches in order, so give the longer prefix precedence
        app.router.routes.insert(0, app.router.routes.pop())


def _install_openapi(app: FastAPI, settings: ServerSettings) -> None:
    """The OpenAPI schema, built once; with a token it declares the bearer scheme for every call."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            if settings.token:
                schema.setdefault("components", {})["securitySchemes"] = {
                    "bearer": {"type": "http", "scheme": "bearer"}
                }
                schema["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _install_guards(app: FastAPI, service: Service) -> None:
    """The middleware: admission (pool place and memory budget before a body is read), Host and token
    checks, CORS when origins are given, and the last-resort error guard."""
    settings = service.settings
    # added innermost first: ErrorGuard ends outermost, so nothing escapes it
    app.add_middleware(
        AdmissionGuard, pool=service.pool, budget=service.budget, body_timeout=settings.body_timeout
    )
    app.add_middleware(AccessGuard, settings=settings)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type"],
        )
    app.add_middleware(ErrorGuard)

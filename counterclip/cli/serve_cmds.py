"""CLI: serve (the web app and the HTTP service for retrieval apps)."""

from __future__ import annotations

import errno
import logging
import socket
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from counterclip.cli._common import working
from counterclip.errors import InputError

if TYPE_CHECKING:
    from counterclip.server.settings import ServerSettings

LOG = logging.getLogger("counterclip.server")

# Options whose help needs more than the signature's line.
TOKEN_OPT = typer.Option(
    None,
    "--token",
    envvar="COUNTERCLIP_TOKEN",
    help="Bearer token callers must send (env COUNTERCLIP_TOKEN). Required when --host is not loopback.",
    show_default=False,
)
ALLOWED_HOST_OPT = typer.Option(
    [],
    "--allowed-host",
    help="A Host header name clients use (repeatable; '*' = any). Loopback names always work.",
)
CORS_ORIGIN_OPT = typer.Option(
    [],
    "--cors-origin",
    help="An origin allowed to call the API from a browser (repeatable). Default: CORS off.",
)

QUEUE_OPT = typer.Option(
    None,
    help="Queries waiting for a worker; beyond this the server answers 503 at once. "
    "Default: automatic, the queries the workers serve in --max-wait seconds (at most 64).",
    show_default=False,
)
MAX_WAIT_OPT = typer.Option(
    3.0, help="Automatic queue: seconds of measured work allowed to wait for a worker."
)
MEMORY_BUDGET_OPT = typer.Option(
    1024.0,
    help="Memory that requests in progress may hold (bodies x5 while parsed, uploads at width x height "
    "x 3), checked before a body is read; a request beyond it gets 503 + Retry-After at once.",
)


def serve(
    index: Path = typer.Argument(..., help="Index directory."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on. Off loopback a token is required."),
    port: int = typer.Option(8000, help="Port."),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    token: str = TOKEN_OPT,
    allowed_host: list[str] = ALLOWED_HOST_OPT,
    cors_origin: list[str] = CORS_ORIGIN_OPT,
    workers: int = typer.Option(None, help="Queries run at once. Default: one per core."),
    torch_threads: int = typer.Option(
        None, help="torch/FAISS threads per worker. Default: cores // workers."
    ),
    queue: int = QUEUE_OPT,
    max_wait: float = MAX_WAIT_OPT,
    memory_budget_mb: float = MEMORY_BUDGET_OPT,
    max_upload_mb: float = typer.Option(10.0, help="Largest uploaded image file, MB."),
    max_megapixels: float = typer.Option(
        40.0, help="Largest uploaded image, megapixels (read from its header)."
    ),
    max_text_chars: int = typer.Option(1000, help="Longest query text or label."),
) -> None:
    """Serve the web app at / and the JSON API (POST /search, /counterfactual, /maps, /report; GET /images/ID; /docs).

    Safe by default: only files of the index are served, requests are size-limited, and off loopback a
    token is required.

    Bounded under load: a request takes a pool place and its memory from --memory-budget-mb before its
    body is read; one that does not fit gets 503 + Retry-After at once, whatever the number of clients.

    Examples:

      counterclip serve photos.idx --port 8000        # then open http://127.0.0.1:8000/

      counterclip serve photos.idx --host 0.0.0.0 --token "$(python -c 'import secrets; print(secrets.token_urlsafe())')" --allowed-host gpu-box.lan

      curl -s localhost:8000/counterfactual -H 'content-type: application/json' -d '{"image": {"id": 3}, "text": "a dog"}'
    """
    _require_server_extra()
    from counterclip.server.settings import Limits, ServerSettings

    if not index.exists():
        raise InputError(
            f"index not found: {index} (build one with `counterclip build FOLDER --index {index}`)"
        )
    settings = ServerSettings(
        host=host,
        token=token or None,
        allowed_hosts=tuple(allowed_host),
        cors_origins=tuple(cors_origin),
        workers=workers,
        torch_threads=torch_threads,
        queue=queue,
        max_wait=max_wait,
        memory_budget=int(memory_budget_mb * 1024 * 1024),
        limits=Limits.sized_for_upload(
            int(max_upload_mb * 1024 * 1024), int(max_megapixels * 1_000_000), max_text_chars
        ),
    )  # raises InputError for a non-loopback host without a token
    _run(index, device, settings, port)


def _require_server_extra() -> None:
    """Import what the server runs on (not the engine: fast); without the ``server`` extra, a one-line
    error naming it."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise InputError(
            f"the server needs the 'server' extra: pip install 'counterclip[server]' ({exc.name} missing)"
        ) from exc


def _run(index: Path, device: str, settings: ServerSettings, port: int) -> None:
    """Take the port, then open the engine, then serve; the address is printed once the server listens
    (a taken port is one line at once, before the model loads)."""
    import uvicorn
    from PIL import Image

    from counterclip.server.settings import is_loopback, page_url

    listening = bind_port(settings.host, port)
    # uploads are checked against their own limits before decoding; Pillow's warning is noise here
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    logging.getLogger("counterclip").setLevel(logging.INFO)
    with working(f"loading model ({index}) ..."):
        from counterclip.engine import Engine
        from counterclip.server.app import create_app

        engine = Engine.open(index, device=device)
        app = create_app(engine, settings)
    lines = []
    if not is_loopback(settings.host):
        lines.append(
            f"counterclip: listening on {settings.host}:{port}, reachable from the network; every call needs the token"
        )
    lines.append(
        f"counterclip: {settings.pool_workers} worker(s) x {settings.pool_threads} thread(s), "
        f"queue {_queue_words(settings)}, memory budget {settings.memory_budget / 2**20:.0f} MB; "
        f"open {page_url(settings.host, port)}"
    )
    config = uvicorn.Config(app, log_level="info", server_header=False)
    _announcing_server()(config, lines).run(sockets=[listening])


def bind_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (not listening yet); a port another program holds is a one-line
    `InputError` naming it and the fix."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise InputError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    listening = socket.socket(family, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
    try:
        listening.bind((host, port))
    except OSError as exc:
        listening.close()
        if exc.errno == errno.EADDRINUSE:
            raise InputError(
                f"port {port} on {host} is taken by another program; stop it, or serve on another port "
                f"with --port {port + 1}"
            ) from None
        if exc.errno == errno.EACCES:
            raise InputError(
                f"port {port} needs more rights than this user has; use --port 8000 or above"
            ) from None
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return listening


def _announcing_server() -> Any:
    """``uvicorn.Server`` that prints the page's address once it listens (imported with the extra)."""
    import uvicorn

    class AnnouncingServer(uvicorn.Server):
        def __init__(self, config: Any, lines: list[str]) -> None:
            super().__init__(config)
            self.lines = lines

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if not self.should_exit:
                for line in self.lines:
                    typer.echo(line, err=True)

    return AnnouncingServer


def _queue_words(settings: ServerSettings) -> str:
    if settings.queue is not None:
        return str(settings.queue)
    return f"automatic ({settings.max_wait:g} s of work, at most 64)"


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    """Add ``serve``."""
    app.command()(serve)

"""CLI: serve (the web app and the HTTP service for retrieval apps)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import typer

from counterclip.errors import InputError

LOG = logging.getLogger("counterclip.server")


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    @app.command()
    def serve(
        index: Path = typer.Argument(..., help="Index directory."),
        host: str = typer.Option(
            "127.0.0.1", help="Interface to listen on. Off loopback a token is required."
        ),
        port: int = typer.Option(8000, help="Port."),
        device: str = typer.Option("auto", help="auto | cpu | cuda"),
        token: str = typer.Option(
            None,
            "--token",
            envvar="COUNTERCLIP_TOKEN",
            help="Bearer token callers must send (env COUNTERCLIP_TOKEN). Required when --host is not loopback.",
            show_default=False,
        ),
        allowed_host: list[str] = typer.Option(
            [],
            "--allowed-host",
            help="A Host header name clients use (repeatable; '*' = any). Loopback names always work.",
        ),
        cors_origin: list[str] = typer.Option(
            [],
            "--cors-origin",
            help="An origin allowed to call the API from a browser (repeatable). Default: CORS off.",
        ),
        workers: int = typer.Option(None, help="Queries run at once. Default: one per core."),
        torch_threads: int = typer.Option(
            None, help="torch/FAISS threads per worker. Default: cores // workers."
        ),
        queue: int = typer.Option(
            64, help="Queries waiting for a worker; beyond this the server answers 503."
        ),
        max_upload_mb: float = typer.Option(10.0, help="Largest uploaded image file, MB."),
        max_megapixels: float = typer.Option(
            40.0, help="Largest uploaded image, megapixels (read from its header)."
        ),
        max_text_chars: int = typer.Option(1000, help="Longest query text or label."),
    ) -> None:
        """Serve the web app at / and the JSON API (POST /search, /counterfactual, /maps, /report; GET /images/ID; /docs).

        Safe by default: only files of the index are served, requests are size-limited, and off loopback a
        token is required.

        Examples:

          counterclip serve photos.idx --port 8000        # then open http://127.0.0.1:8000/

          counterclip serve photos.idx --host 0.0.0.0 --token "$(python -c 'import secrets; print(secrets.token_urlsafe())')" --allowed-host gpu-box.lan

          curl -s localhost:8000/counterfactual -H 'content-type: application/json' -d '{"image": {"id": 3}, "text": "a dog"}'
        """
        try:
            import uvicorn

            from counterclip.server.app import create_app
            from counterclip.server.settings import Limits, ServerSettings, is_loopback
        except ImportError as exc:
            raise InputError(
                f"the server needs the 'server' extra: pip install 'counterclip[server]' ({exc.name} missing)"
            ) from exc
        from PIL import Image

        from counterclip.engine import Engine

        if not index.exists():
            raise InputError(
                f"index not found: {index} (build one with `counterclip build FOLDER --index {index}`)"
            )
        max_upload = int(max_upload_mb * 1024 * 1024)
        settings = ServerSettings(
            host=host,
            token=token or None,
            allowed_hosts=tuple(allowed_host),
            cors_origins=tuple(cors_origin),
            workers=workers,
            torch_threads=torch_threads,
            queue=queue,
            limits=Limits(
                max_upload_bytes=max_upload,
                max_body_bytes=max(16 * 1024 * 1024, max_upload * 4 // 3 + 64 * 1024),
                max_upload_pixels=int(max_megapixels * 1_000_000),
                max_text_chars=max_text_chars,
            ),
        )  # raises InputError for a non-loopback host without a token
        # uploads are checked against their own limits before decoding; Pillow's warning is noise here
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        logging.getLogger("counterclip").setLevel(logging.INFO)
        engine = Engine.open(index, device=device)
        app = create_app(engine, settings)
        if not is_loopback(host):
            typer.echo(
                f"counterclip: listening on {host}:{port}, reachable from the network; every call needs the token",
                err=True,
            )
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else (f"[{host}]" if ":" in host else host)
        typer.echo(
            f"counterclip: {settings.pool_workers} worker(s) x {settings.pool_threads} thread(s), "
            f"queue {settings.queue}; open http://{shown}:{port}/",
            err=True,
        )
        uvicorn.run(app, host=host, port=port, log_level="info", server_header=False)

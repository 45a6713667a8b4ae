"""CLI: serve (HTTP service for retrieval apps)."""

from __future__ import annotations

from pathlib import Path

import typer

from counterclip.errors import InputError


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    @app.command()
    def serve(
        index: Path = typer.Argument(..., help="Index directory."),
        host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
        port: int = typer.Option(8000, help="Port."),
        device: str = typer.Option("auto", help="auto | cpu | cuda"),
    ) -> None:
        """Serve search and counterfactuals over HTTP (POST /search, POST /counterfactual, GET /images/ID, GET /).

        Examples:

          counterclip serve photos.idx --port 8000

          curl -s localhost:8000/counterfactual -H 'content-type: application/json' -d '{"image": {"id": 3}, "text": "a dog"}'
        """
        try:
            import uvicorn

            from counterclip.server.app import create_app
        except ImportError as exc:
            raise InputError(
                f"the server needs the 'server' extra: pip install 'counterclip[server]' ({exc.name} missing)"
            ) from exc
        from counterclip.engine import Engine

        if not index.exists():
            raise InputError(f"index not found: {index}")
        engine = Engine.open(index, device=device)
        uvicorn.run(create_app(engine), host=host, port=port, log_level="info")

"""CLI: serve (HTTP service)."""

from __future__ import annotations

import typer

from counterclip.cli._common import not_implemented


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    @app.command()
    def serve() -> None:
        """HTTP service for retrieval apps (not implemented yet)."""
        not_implemented("serve")

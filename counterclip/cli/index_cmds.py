"""CLI: build, update, info (index builder issue)."""

from __future__ import annotations

import typer

from counterclip.cli._common import not_implemented


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    @app.command()
    def build() -> None:
        """Embed every image of a folder into an on-disk index (not implemented yet)."""
        not_implemented("build")

    @app.command()
    def update() -> None:
        """Bring an index up to date with its folder (not implemented yet)."""
        not_implemented("update")

    @app.command()
    def info() -> None:
        """Describe an index (not implemented yet)."""
        not_implemented("info")

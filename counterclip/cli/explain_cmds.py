"""CLI: explain, eval explainers (CLIP explainers issue)."""

from __future__ import annotations

import typer

from counterclip.cli._common import not_implemented


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    @app.command()
    def explain() -> None:
        """Attribution map for an (image, text) pair (not implemented yet)."""
        not_implemented("explain")

    @eval_app.command("explainers")
    def eval_explainers() -> None:
        """Measure explainer quality on the shapes world (not implemented yet)."""
        not_implemented("eval explainers")

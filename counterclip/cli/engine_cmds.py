"""CLI: search, counterfactual, demo, eval counterfactual (engine issue)."""

from __future__ import annotations

import typer

from counterclip.cli._common import not_implemented


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    @app.command()
    def search() -> None:
        """Plain retrieval from an index (not implemented yet)."""
        not_implemented("search")

    @app.command()
    def counterfactual() -> None:
        """Verified counterfactuals for an (image, text) pair (not implemented yet)."""
        not_implemented("counterfactual")

    @app.command()
    def demo() -> None:
        """Run the end-to-end demo on the bundled model (not implemented yet)."""
        not_implemented("demo")

    @eval_app.command("counterfactual")
    def eval_counterfactual() -> None:
        """Measure counterfactual quality on a shapes index (not implemented yet)."""
        not_implemented("eval counterfactual")

"""CLI: shapes generate, eval model (shapes world issue)."""

from __future__ import annotations

import typer

from counterclip.cli._common import not_implemented


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    shapes_app = typer.Typer(
        help="The shapes world: generated images with known attributes.", no_args_is_help=True
    )
    app.add_typer(shapes_app, name="shapes")

    @shapes_app.command()
    def generate() -> None:
        """Generate a shapes folder (not implemented yet)."""
        not_implemented("shapes generate")

    @eval_app.command("model")
    def eval_model() -> None:
        """Zero-shot accuracy of a model on the shapes world (not implemented yet)."""
        not_implemented("eval model")

"""CLI: explainers for CNN classifiers, text classifiers and tabular models (secondary explainers issue)."""

from __future__ import annotations

import typer


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    """Nothing yet: the secondary explainers issue adds its commands here."""

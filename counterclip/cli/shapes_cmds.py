"""CLI: ``shapes generate`` and ``eval model`` (the shapes world, issue 3)."""

from __future__ import annotations

from pathlib import Path

import typer

from counterclip.cli._common import out, print_json, working
from counterclip.errors import InputError


def _print_metrics(metrics: dict) -> None:
    """Human-readable table of evaluate_model's output."""
    from rich.table import Table

    from counterclip.shapes import ATTRIBUTES

    table = Table(title=f"shapes world, seed {metrics['seed']}")
    table.add_column("metric")
    splits = [s for s in ("seen", "heldout") if s in metrics]
    for split in splits:
        table.add_column(f"{split} (n={metrics[split]['n']})", justify="right")
    table.add_column("chance", justify="right")
    for attribute in ATTRIBUTES:
        row = [f"{metrics[s]['zero_shot'][attribute]:.3f}" for s in splits]
        table.add_row(f"zero-shot {attribute}", *row, f"{metrics['chance'][attribute]:.3f}")
    row = [f"{metrics[s]['full_caption_top1']:.3f}" for s in splits]
    table.add_row(
        f"full caption top-1 (of {metrics['n_candidates']})",
        *row,
        f"{metrics['chance']['full_caption_top1']:.3f}",
    )
    out.print(table)


def generate(
    out_dir: Path = typer.Argument(..., metavar="OUT", help="Output directory (created if missing)."),
    n: int = typer.Option(..., "--n", help="Number of images."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed writes the same bytes."),
    size: int = typer.Option(128, "--size", help="Image side in pixels."),
    holdout_only: bool = typer.Option(
        False, "--holdout-only", help="Only the held-out (shape, colour) pairs, for compositional tests."
    ),
    exclude: list[str] = typer.Option(
        None,
        "--exclude",
        help="A combination never generated, e.g. colour=blue,shape=circle (repeat for several).",
    ),
) -> None:
    """Write N shapes-world images (PNG), one caption .txt per image, and labels.jsonl.

    Examples:

      counterclip shapes generate shapes-out --n 500 --seed 0

      counterclip shapes generate heldout --n 100 --seed 1 --holdout-only

      counterclip shapes generate no-blue-squares --n 2000 --seed 3 --exclude colour=blue,shape=square
    """
    from counterclip.shapes import generate_folder, parse_exclusion

    try:
        combinations = [parse_exclusion(text) for text in exclude or []]
    except ValueError as exc:
        raise InputError(f"--exclude {exc}") from None

    if n < 1:
        raise InputError(f"--n must be at least 1, got {n}")
    if size < 16:
        raise InputError(f"--size must be at least 16 pixels, got {size}")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir} exists and is not a directory")
    records = generate_folder(
        out_dir, n=n, seed=seed, size=size, holdout_only=holdout_only, exclude=combinations
    )
    out.print(f"wrote {len(records)} images, captions and labels.jsonl to {out_dir}")


def vocabulary(
    out_file: Path = typer.Argument(..., metavar="FILE", help="Text file to write (one caption per line)."),
) -> None:
    """Write one canonical caption for every attribute combination the shapes captions name.

    Given to `counterclip build --vocab`, it gives the text side a caption for every one-attribute change.

    Examples:

      counterclip shapes vocabulary shapes-vocab.txt

      counterclip build shapes3k --index shapes3k.idx --model bundled:shapes --vocab shapes-vocab.txt
    """
    from counterclip.report.html import write_text_atomic
    from counterclip.shapes import vocabulary as shapes_vocabulary

    texts = shapes_vocabulary()
    write_text_atomic(out_file, "\n".join(texts) + "\n")
    out.print(f"wrote {len(texts)} captions to {out_file}")


def eval_model(
    model: str = typer.Option("bundled:shapes", "--model", help="Model spec (see `counterclip models`)."),
    n: int = typer.Option(2000, "--n", help="Images per split (seen and held-out)."),
    seed: int = typer.Option(7, "--seed", help="Random seed for the generated evaluation sets."),
    batch_size: int = typer.Option(128, "--batch-size", help="Images per forward pass."),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Zero-shot accuracy per attribute and full-caption top-1 on fresh shapes-world images.

    Seen and held-out (shape, colour) pairs are evaluated separately. Full-caption top-1 ranks the true
    "a {size} {colour} {shape} {position}" caption among all 300 combinations.

    Examples:

      counterclip eval model --model bundled:shapes --n 2000 --seed 7 --json
    """
    from counterclip.models import load_model
    from counterclip.shapes import evaluate_model

    if n < 1:
        raise InputError(f"--n must be at least 1, got {n}")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    with working(f"loading model {model} ...", enabled=not as_json):
        loaded = load_model(model, device=device)
    with working(f"rendering and scoring 2 x {n} shapes images", enabled=not as_json):
        metrics = evaluate_model(loaded, n=n, seed=seed, batch_size=batch_size)
    metrics = {"model": str(loaded.spec), "fingerprint": loaded.fingerprint, **metrics}
    if as_json:
        print_json(metrics)
    else:
        out.print(f"[bold]model[/]: {metrics['model']}  (fingerprint {metrics['fingerprint']})")
        _print_metrics(metrics)


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    """Add the ``shapes`` group and the ``eval model`` command."""
    shapes_app = typer.Typer(
        help="The shapes world: generated images with known attributes.", no_args_is_help=True
    )
    app.add_typer(shapes_app, name="shapes")
    shapes_app.command()(generate)
    shapes_app.command()(vocabulary)
    eval_app.command("model")(eval_model)

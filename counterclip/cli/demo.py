"""`counterclip demo`: the whole product on the bundled model, offline, in a couple of minutes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from counterclip.cli._common import out, working


@dataclass(frozen=True)
class DemoQuery:
    """The demo's query: an indexed image, its own caption, and the caption with the colour changed."""

    path: Path  # the image file, inside the generated folder
    own: str  # its full caption ("a large red circle on the left")
    asked: str  # the same caption with another colour


def run_demo(out_dir: Path, n: int = 400, device: str = "auto", seed: int = 0) -> dict[str, Path]:
    """Generate a shapes folder, build an index with ``bundled:shapes``, run one image-side and one
    text-side counterfactual query, and write an HTML report for each.

    Returns:
        Paths of what was written: ``folder``, ``index``, ``image_report``, ``text_report``.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    folder, index_dir = out_dir / "shapes", out_dir / "index"
    _build_demo_index(folder, index_dir, out_dir / "vocab.txt", n=n, seed=seed, device=device)
    query = _demo_query(folder)
    written = {"folder": folder, "index": index_dir}
    image_result, text_result, reports = _query_and_report(index_dir, query, out_dir, device)
    written.update(reports)
    _print_demo(query, image_result, text_result, written)
    out.print(f"done in {time.perf_counter() - started:.0f} s")
    return written


def _build_demo_index(folder: Path, index_dir: Path, vocab: Path, n: int, seed: int, device: str) -> None:
    """The shapes folder (generated unless there) and its index with the shapes vocabulary as captions."""
    with working("loading counterclip ..."):
        from counterclip.index_builder.builder import build_index
        from counterclip.report.html import write_text_atomic
        from counterclip.shapes import generate_folder
        from counterclip.shapes import vocabulary as shapes_vocabulary

    if not (folder / "labels.jsonl").is_file():
        out.print(f"generating {n} shapes images in {folder} ...")
        generate_folder(folder, n=n, seed=seed)
    write_text_atomic(vocab, "\n".join(shapes_vocabulary()) + "\n")
    out.print(f"building the index {index_dir} with bundled:shapes ...")
    summary = build_index(folder, index_dir, model="bundled:shapes", vocab=vocab, device=device)
    out.print(f"indexed {summary.indexed} images")


def _demo_query(folder: Path) -> DemoQuery:
    """The folder's first image, asked in another colour (blue, or red for a blue one)."""
    from counterclip.shapes import attrs_of, caption, read_labels

    record = read_labels(folder)[0]
    attrs = attrs_of(record)
    new_colour = "blue" if attrs.colour != "blue" else "red"
    return DemoQuery(
        path=folder / record["file"],
        own=caption(attrs, ["size", "colour", "shape", "position"]),
        asked=caption(attrs.replace(colour=new_colour), ["size", "colour", "shape", "position"]),
    )


def _query_and_report(
    index_dir: Path, query: DemoQuery, out_dir: Path, device: str
) -> tuple[Any, Any, dict[str, Path]]:
    """The image-side (increase) and text-side (decrease) results, and the report written for each."""
    from counterclip.cli.engine_cmds import original_image, write_report
    from counterclip.engine import Engine

    with working(f"loading model ({index_dir}) ..."):
        engine = Engine.open(index_dir, device=device)
    with engine:
        image = str(query.path)
        image_result = engine.counterfactuals(image=image, text=query.asked, mode="increase", k=5)
        text_result = engine.counterfactuals(image=image, text=query.own, side="text", mode="decrease", k=5)
        query_image = original_image(engine, image)
        reports = {
            "image_report": write_report(
                engine, image_result, out_dir / "report-image-side.html", query_image
            ),
            "text_report": write_report(engine, text_result, out_dir / "report-text-side.html", query_image),
        }
    return image_result, text_result, reports


def _print_demo(query: DemoQuery, image_result: Any, text_result: Any, written: dict[str, Path]) -> None:
    out.print(f"\n[bold]query[/] {query.path} ({query.own})", highlight=False)
    out.print(f"verdicts by the {image_result.calibration or 'no calibration'}", highlight=False)
    out.print(
        f"[bold]image side[/]: images close to it that match \u201c{query.asked}\u201d:", highlight=False
    )
    for item in image_result.items:
        out.print(
            f"  #{item.rank} {item.path}  score {item.score_before:.2f} -> {item.score_after:.2f}  "
            f"{item.verdict}  p(match) {_p(item.p_match)}  distance {item.distance:.3f}",
            highlight=False,
        )
    out.print(
        f"[bold]text side[/]: captions close to \u201c{query.own}\u201d that stop matching the image:",
        highlight=False,
    )
    for item in text_result.items:
        out.print(
            f"  #{item.rank} \u201c{item.text}\u201d  score {item.score_before:.2f} -> {item.score_after:.2f}  "
            f"{item.verdict}  p(match) {_p(item.p_match)}",
            highlight=False,
        )
    for warning in [*image_result.warnings, *text_result.warnings]:
        out.print(f"[yellow]warning[/] {warning}", highlight=False)
    out.print(f"\nreports: {written['image_report']}\n         {written['text_report']}")


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def demo(
    out_dir: Path = typer.Option(
        Path("demo-out"), "--out", help="Where the demo writes its folder, index and reports."
    ),
    n: int = typer.Option(400, "--n", help="Images to generate."),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
) -> None:
    """Generate a shapes folder, index it with bundled:shapes, run one image-side and one text-side
    counterfactual query, and write the reports.

    Examples:

      counterclip demo --out demo-out
    """
    run_demo(out_dir, n=n, device=device)


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    """Add ``demo``."""
    app.command()(demo)

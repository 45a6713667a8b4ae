"""`counterclip demo`: the whole product on the bundled model, offline, in a couple of minutes."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from counterclip.cli._common import out


def run_demo(out_dir: Path, n: int = 400, device: str = "auto", seed: int = 0) -> dict[str, Path]:
    """Generate a shapes folder, build an index with ``bundled:shapes``, run one image-side and one
    text-side counterfactual query, and write an HTML report for each.

    Returns:
        Paths of what was written: ``folder``, ``index``, ``image_report``, ``text_report``.
    """
    from counterclip.cli.engine_cmds import write_report
    from counterclip.engine import Engine
    from counterclip.index_builder import build_index
    from counterclip.report.html import write_text_atomic
    from counterclip.shapes import attrs_of, caption, generate_folder, read_labels
    from counterclip.shapes import vocabulary as shapes_vocabulary

    started = time.perf_counter()
    out_dir = Path(out_dir)
    folder, index_dir = out_dir / "shapes", out_dir / "index"
    if not (folder / "labels.jsonl").is_file():
        out.print(f"generating {n} shapes images in {folder} ...")
        generate_folder(folder, n=n, seed=seed)
    vocab = write_text_atomic(out_dir / "vocab.txt", "\n".join(shapes_vocabulary()) + "\n")
    out.print(f"building the index {index_dir} with bundled:shapes ...")
    summary = build_index(folder, index_dir, model="bundled:shapes", vocab=vocab, device=device)
    out.print(f"indexed {summary.indexed} images")
    records = read_labels(folder)
    record = records[0]
    attrs = attrs_of(record)
    new_colour = "blue" if attrs.colour != "blue" else "red"
    asked = caption(attrs.replace(colour=new_colour), ["size", "colour", "shape", "position"])
    own = caption(attrs, ["size", "colour", "shape", "position"])
    query_path = folder / record["file"]
    written = {"folder": folder, "index": index_dir}
    with Engine.open(index_dir, device=device) as engine:
        image_result = engine.counterfactuals(image=str(query_path), text=asked, mode="increase", k=5)
        text_result = engine.counterfactuals(
            image=str(query_path), text=own, side="text", mode="decrease", k=5
        )
        query_image = engine.indexed_image(query_path)
        written["image_report"] = write_report(
            engine, image_result, out_dir / "report-image-side.html", query_image
        )
        written["text_report"] = write_report(
            engine, text_result, out_dir / "report-text-side.html", query_image
        )
    out.print(f"\n[bold]query[/] {query_path} ({own})", highlight=False)
    out.print(f"verdicts by the {image_result.calibration or 'no calibration'}", highlight=False)
    out.print(f"[bold]image side[/]: images close to it that match \u201c{asked}\u201d:", highlight=False)
    for item in image_result.items:
        out.print(
            f"  #{item.rank} {item.path}  score {item.score_before:.2f} -> {item.score_after:.2f}  "
            f"{item.verdict}  p(match) {_p(item.p_match)}  distance {item.distance:.3f}",
            highlight=False,
        )
    out.print(
        f"[bold]text side[/]: captions close to \u201c{own}\u201d that stop matching the image:",
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
    out.print(f"done in {time.perf_counter() - started:.0f} s")
    return written


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    @app.command()
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

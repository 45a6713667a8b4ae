"""CLI: eval quality (the quality card over a query set, with the baselines and the shapes world's truth)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from counterclip.cli._common import metrics_table, out, print_json, progress_bar, say
from counterclip.errors import InputError

SIDES = {"image": ("image",), "text": ("text",), "both": ("image", "text"), "none": ()}
QUALITY_ROWS = ["faithfulness", "understandability", "completeness", "stability", "contrastivity"]


def eval_quality(
    index: Path = typer.Option(..., "--index", help="Index built from a shapes folder."),
    labels_file: Path = typer.Option(..., "--labels-file", help="That folder's labels.jsonl."),
    n_queries: int = typer.Option(50, "--n-queries", help="Queries per side."),
    side: str = typer.Option("both", "--side", help="image | text | both | none (maps only)."),
    maps: int = typer.Option(20, "--maps", help="Rendered images whose maps are measured (0: none)."),
    methods: str = typer.Option("relevance", "--methods", help="Comma-separated map methods."),
    seed: int = typer.Option(0, "--seed"),
    k: int = typer.Option(5, "-k"),
    image_proximity: str = typer.Option(None, "--image-proximity", help="readings | embedding (image side)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """The five qualities of explanations (faithfulness, understandability, completeness, stability,
    contrastivity) aggregated over a shapes query set: the engine's answers beside the nearest unlike
    neighbour and a random valid item, attribution maps beside random maps, and whether each number
    agrees with the world's truth.

    Examples:

      counterclip eval quality --index shapes1k.idx --labels-file shapes1k/labels.jsonl --n-queries 50 --maps 20

      counterclip eval quality --index shapes1k.idx --labels-file shapes1k/labels.jsonl --side image --maps 0 --json
    """
    from counterclip.cli.engine_cmds import _evaluation_overrides, _open_engine
    from counterclip.evaluation.quality import evaluate_quality
    from counterclip.evaluation.quality_maps import evaluate_map_quality

    if not labels_file.is_file():
        raise InputError(f"labels file not found: {labels_file}")
    if side not in SIDES:
        raise InputError(f"--side must be one of {', '.join(SIDES)}, got {side!r}")
    if n_queries < 1 or maps < 0:
        raise InputError("--n-queries must be at least 1 and --maps at least 0")
    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    overrides = _evaluation_overrides(None, None, None, image_proximity)
    report: dict[str, Any] = {}
    with _open_engine(index, device) as engine:
        if SIDES[side]:
            with progress_bar("queries with quality cards", enabled=not as_json) as bar:
                report["answers"] = evaluate_quality(
                    engine,
                    labels_file,
                    n_queries=n_queries,
                    seed=seed,
                    k=k,
                    sides=SIDES[side],
                    progress=bar,
                    **overrides,
                )
        if maps:
            with progress_bar("maps with quality cards", enabled=not as_json) as bar:
                report["maps"] = evaluate_map_quality(
                    engine.model, n=maps, seed=seed, methods=chosen, progress=bar
                )
    if as_json:
        print_json(report)
        return
    print_quality_evaluation(report)


def print_quality_evaluation(report: dict[str, Any]) -> None:
    """A table per side and one for the maps (a row per quality, a column per method), then how each
    number agrees with the truth."""
    answers = report.get("answers", {})
    for name in ("image_side", "text_side"):
        if name in answers:
            _print_section(f"{name.replace('_', ' ')}: {answers[name]['queries']} queries", answers[name])
    if "maps" in report:
        _print_section(f"maps: {report['maps']['images']} rendered images", report["maps"])
    say("[dim]--json has every card's definitions, references and the truth's figures[/]")


def _print_section(title: str, section: dict[str, Any]) -> None:
    columns = {
        method: {q: figures["card"][q]["value"] for q in QUALITY_ROWS}
        for method, figures in section["methods"].items()
    }
    columns["agreement with truth"] = dict(section["agreement"])
    out.print(metrics_table(title, columns, QUALITY_ROWS), highlight=False)
    for method, pair in section.get("paired", {}).items():
        ours, theirs = pair["gradient_path"]["card"], pair[method]["card"]
        figures = ", ".join(
            f"{q} {_figure(ours[q])} vs {_figure(theirs[q])}" for q in QUALITY_ROWS if q != "faithfulness"
        )
        truth_ours, truth_theirs = pair["gradient_path"]["truth"], pair[method]["truth"]
        truths = ", ".join(
            f"{key} {_figure(truth_ours[key])} vs {_figure(truth_theirs[key])}" for key in truth_ours
        )
        say(
            f"[dim]paired with the {method.replace('_', ' ')} over the {pair['queries']} queries both "
            f"answered (the same item in {pair['same_item']}): {figures}; by the truth: {truths}[/]"
        )


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    """Add ``eval quality``."""
    eval_app.command("quality")(eval_quality)

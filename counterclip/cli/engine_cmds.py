"""CLI: search, counterfactual, eval counterfactual."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from counterclip.cli._common import print_json, progress_bar, working
from counterclip.cli.query_printers import (
    print_counterfactual,
    print_counterfactual_evaluation,
    print_paths,
    print_search,
)
from counterclip.cli.store_cmds import WHERE_HELP
from counterclip.errors import InputError

IMAGE_OPT = typer.Option(None, "--image", help="Query image: a file path, or an index id as #ID.")


def _parse_image(value: str | None) -> str | int | None:
    if value is None:
        return None
    if value.startswith("#") and value[1:].isdigit():
        return int(value[1:])
    return value


RUNTIME_HELP = (
    "torch | onnx (extra counterclip[onnx]): what embeds the query and re-scores answers; gradients "
    "and maps stay torch."
)
PRECISION_HELP = "With --runtime onnx: fp32 | int8-dynamic | int8-static (an int8 tower accepted before)."


def _open_engine(
    index: Path,
    device: str,
    runtime: str = "torch",
    precision: str | None = None,
    text_only: bool = False,
    quiet: bool = False,
):
    """The engine over ``index``, with "loading model ..." and a spinner on stderr meanwhile (at once: the
    libraries and the model take seconds; nothing with ``quiet``, the commands' ``--json``)."""
    with working(f"loading model ({index}) ...", enabled=not quiet):
        return _open_engine_now(index, device, runtime, precision, text_only)


def _open_engine_now(index: Path, device: str, runtime: str, precision: str | None, text_only: bool):
    """The engine over ``index``. ``text_only`` (a text search) with ``auto`` or ``onnx``: the model's text
    tower from the ONNX cache without torch when the cache holds a checked one for the index's weights
    (`counterclip.models.onnx_text`); otherwise the model is loaded (``auto``: torch)."""
    from counterclip.models.onnx_common import check_runtime

    if runtime not in ("auto", "torch", "onnx"):
        raise InputError(f"--runtime must be auto, torch or onnx, got {runtime!r}")
    check_runtime(None if runtime == "auto" else runtime, precision)
    if not index.exists():
        raise InputError(
            f"index not found: {index} (build one with `counterclip build FOLDER --index {index}`)"
        )
    if text_only and runtime != "torch" and precision in (None, "fp32"):
        engine = _open_text_engine(index)
        if engine is not None:
            return engine
    from counterclip.engine import Engine

    return Engine.open(
        index, device=device, runtime="torch" if runtime == "auto" else runtime, precision=precision or "fp32"
    )


def _open_text_engine(index: Path):
    """An engine whose model is the torch-free cached text tower, or None when the cache cannot serve it."""
    import logging

    from counterclip.engine.engine import Engine
    from counterclip.index_builder.stores.store_index import index_model_record, open_index
    from counterclip.models.onnx_text import OnnxTextEncoder

    record = index_model_record(index)
    encoder, reason = OnnxTextEncoder.open(record.spec, record.fingerprint, score=record.score)
    if encoder is None:
        logging.getLogger(__name__).info("text query through the full model: %s", reason)
        return None
    return Engine(open_index(index), encoder)


def search_numbers(score: Any, by_text: bool, collection: str) -> dict[str, str]:
    """What a search's numbers mean: its score named for its kind of pair (`counterclip.scores.pair_kind`)."""
    from counterclip.scores import number_words, pair_kind

    return number_words(score, pair_kind(by_text, collection))


def captions_for(engine, ids) -> dict[int, list[str]]:
    """The captions the index links to each image id (for reports and the search table)."""
    from counterclip.report.engine_report import captions_of

    return captions_of(engine.index, ids)


def write_report(
    engine, result, path: Path, query_image=None, with_maps: bool = True, quality: bool = False
) -> Path:
    """The self-contained HTML report of a result (`counterclip.report.engine_report`), with a progress
    bar while the maps are drawn."""
    from counterclip.report.engine_report import report_of_result

    if not with_maps:
        return report_of_result(engine, result, path, query_image, with_maps=False)
    label = "maps + faithfulness" + (" + quality" if quality else "")
    with progress_bar(f"explaining the answers ({label})") as advance:
        return report_of_result(engine, result, path, query_image, True, quality, advance)


def original_image(engine, query: str | int):  # noqa: ANN201 - PIL image or None
    """The original as the index decodes it, for a report: a path as the user gave it (relative to the
    current folder, not to the index root), or an index id through its indexed file."""
    if isinstance(query, int):
        return engine.indexed_image(engine.index.images.meta([query])[0]["path"])
    return engine.indexed_image(Path(query).expanduser().resolve())


# Options whose help needs more than the signature's line.
SEARCH_PATHS_OPT = typer.Option(
    False, "--paths", help="Print only the full paths, one per line (captions: the texts), for piping."
)
SEARCH_PRINT0_OPT = typer.Option(
    False,
    "--print0",
    "-0",
    help="Like --paths, each path ended by a NUL byte instead of a newline (for xargs -0: names may hold "
    "newlines).",
)
SEARCH_RUNTIME_OPT = typer.Option(
    "auto",
    "--runtime",
    help="auto | torch | onnx (extra counterclip[onnx]). auto: a text query runs the ONNX text tower "
    "without loading torch when the cache holds one checked for this index's weights, else torch.",
)
MARGIN_OPT = typer.Option(
    None,
    "--margin",
    help="increase: valid within this share of the gap from the original's score to the best match "
    "(default 0.2); decrease: at least this share of the best-typical spread below the best match "
    "(default 0.25).",
)
DIVERSITY_OPT = typer.Option(
    None,
    "--diversity",
    min=0.0,
    max=1.0,
    help="Distinct changes before repeats among the k (default 0.3; 0 = closest first).",
)
CALIBRATION_OPT = typer.Option(
    "auto", "--calibration", help="The verdicts' calibration: auto | captions | model | self | none."
)
VERIFY_WITH_OPT = typer.Option(
    None,
    "--verify-with",
    help="A second verifier: itm re-scores every answer with the model's image-text matching head "
    "(BLIP); an answer it disagrees with is not verified.",
)
TARGET_OPT = typer.Option(
    None,
    "--target",
    help="The label the prediction must flip to (default: the runner-up, the most likely label other "
    "than the predicted one).",
)
EVAL_SIDE_OPT = typer.Option(
    "all", "--side", help="image | text | both (the two sides) | verdicts | diversity | all (every figure)."
)
NOMATCH_MARGIN_OPT = typer.Option(
    None, "--nomatch-margin", help="Override the decrease-mode validity margin (text side)."
)
QUALITY_OPT = typer.Option(
    False,
    "--quality",
    help="The quality card of every answer: faithfulness, understandability, completeness, stability, "
    "contrastivity, each beside the nearest unlike neighbour (extra forward passes, counted and shown; "
    "with --report, each map's card too).",
)
THREADS_OPT = typer.Option(
    None, "--threads", help="torch CPU threads (1 gives steadier latency on a busy machine)."
)


def search(
    index: Path = typer.Argument(..., help="Index directory."),
    text: str = typer.Option(None, "--text", help="Query text."),
    image: str = IMAGE_OPT,
    k: int = typer.Option(10, "-k", help="Number of results (at least 1)."),
    captions: bool = typer.Option(False, "--captions", help="Search the caption index instead of images."),
    paths: bool = SEARCH_PATHS_OPT,
    print0: bool = SEARCH_PRINT0_OPT,
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    runtime: str = SEARCH_RUNTIME_OPT,
    precision: str = typer.Option(None, "--precision", help=PRECISION_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    where: str = typer.Option(None, "--where", help=WHERE_HELP),
) -> None:
    """Plain retrieval from an index, by text or by image: rank, score, p(match) when the index has a
    calibration, full path and caption.

    Examples:

      counterclip search photos.idx --text "a dog on a beach" -k 5

      counterclip search photos.idx --text "a red car" -0 | xargs -0 cp -t picked/

      counterclip search photos.idx --image query.jpg --json
    """
    if (text is None) == (image is None):
        raise InputError("give exactly one of --text or --image")
    if k < 1:
        raise InputError(f"-k must be at least 1 (the number of results), got {k}")
    paths = paths or print0
    if paths and as_json:
        raise InputError("give --paths (or --print0) or --json, not both")
    collection = "captions" if captions else "images"
    with _open_engine(
        index, device, runtime, precision, text_only=text is not None, quiet=as_json or paths
    ) as engine:
        result = engine.search(text=text, image=_parse_image(image), k=k, collection=collection, where=where)
        root = engine.index.root
        shown = not (captions or paths or as_json)  # the table shows each image's first caption
        linked = captions_for(engine, [i.id for i in result.items]) if shown else {}
        numbers = search_numbers(getattr(engine, "pair_score", None), text is not None, collection)
    if as_json:
        print_json(result.to_dict())
    elif paths:
        print_paths(result, root, end=b"\0" if print0 else b"\n")
    else:
        query = f"\u201c{text}\u201d" if text is not None else str(image)
        print_search(result, query, collection, root, linked, numbers)


def counterfactual(
    index: Path = typer.Argument(..., help="Index directory."),
    image: str = typer.Option(..., "--image", help="Query image: a file path, or an index id as #ID."),
    text: str = typer.Option(None, "--text", help="Query text (not needed with --mode flip)."),
    side: str = typer.Option("image", "--side", help="image: return images; text: return captions."),
    mode: str = typer.Option("increase", "--mode", help="increase | decrease | flip"),
    labels: str = typer.Option(None, "--labels", help="Comma-separated class texts for --mode flip."),
    target: str = TARGET_OPT,
    k: int = typer.Option(5, "-k", help="Number of counterfactuals."),
    margin: float = MARGIN_OPT,
    threshold: float = typer.Option(
        None, "--threshold", help="Absolute score threshold (overrides --margin)."
    ),
    diversity: float = DIVERSITY_OPT,
    calibration: str = CALIBRATION_OPT,
    verify_with: str = VERIFY_WITH_OPT,
    quality: bool = QUALITY_OPT,
    report: Path = typer.Option(None, "--report", help="Write a self-contained HTML report here."),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    runtime: str = typer.Option("torch", "--runtime", help=RUNTIME_HELP),
    precision: str = typer.Option(None, "--precision", help=PRECISION_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    where: str = typer.Option(None, "--where", help=WHERE_HELP),
) -> None:
    """Verified counterfactuals for an (image, text) pair, closest to the original first.

    Examples:

      counterclip counterfactual photos.idx --image cat.jpg --text "a photo of a dog"

      counterclip counterfactual photos.idx --image cat.jpg --text "a photo of a cat" --mode decrease --report cf.html

      counterclip counterfactual photos.idx --image cat.jpg --mode flip --labels "a cat,a dog,a bird" --target "a dog"

      counterclip counterfactual photos.idx --image cat.jpg --mode flip --labels "a cat,a dog,a bird"   (target: the runner-up)

      counterclip counterfactual photos.idx --image cat.jpg --text "a photo of a cat" --side text --mode decrease

      counterclip counterfactual blip.idx --image cat.jpg --text "a photo of a dog" --verify-with itm --quality
    """
    _check_counterfactual_args(k, report)
    options = _counterfactual_options(
        mode, margin, threshold, diversity, calibration, verify_with, quality, where
    )
    with _open_engine(index, device, runtime, precision, quiet=as_json) as engine:
        query = _parse_image(image)
        flip_labels = [s for s in (labels or "").split(",") if s.strip()] or None
        result = engine.counterfactuals(
            image=query, text=text, side=side, mode=mode, labels=flip_labels, target=target, k=k, **options
        )
        if report is not None:
            write_report(engine, result, report, original_image(engine, query), quality=quality)
        root, score = engine.index.root, engine.pair_score
    if as_json:
        print_json({**result.to_dict(), "report": str(report) if report else None})
        return
    print_counterfactual(result, text, root, report, score)


def _check_counterfactual_args(k: int, report: Path | None) -> None:
    if k < 1:
        raise InputError(f"-k must be at least 1 (the number of counterfactuals), got {k}")
    if report is not None and report.is_dir():
        raise InputError(f"--report {report} is a folder; give a file name, e.g. {report / 'report.html'}")


def _counterfactual_options(
    mode: str,
    margin: float | None,
    threshold: float | None,
    diversity: float | None,
    calibration: str,
    verify_with: str | None,
    quality: bool = False,
    where: str | None = None,
) -> dict[str, Any]:
    """The `EngineOptions` overrides the flags ask for: ``--margin`` is the match margin, or with
    ``--mode decrease`` the no-match margin."""
    options: dict[str, Any] = {"quality": True} if quality else {}
    if margin is not None:
        options["nomatch_margin" if mode == "decrease" else "match_margin"] = margin
    if threshold is not None:
        options["threshold"] = threshold
    if diversity is not None:
        options["diversity"] = diversity
    options["calibration"] = calibration
    if verify_with is not None:
        options["verify_with"] = verify_with
    if where:
        options["where"] = where
    return options


def eval_counterfactual(
    index: Path = typer.Option(..., "--index", help="Index built from a shapes folder."),
    labels_file: Path = typer.Option(..., "--labels-file", help="That folder's labels.jsonl."),
    n_queries: int = typer.Option(200, "--n-queries", help="Queries per side."),
    seed: int = typer.Option(0, "--seed"),
    k: int = typer.Option(5, "-k"),
    side: str = EVAL_SIDE_OPT,
    margin: float = typer.Option(None, "--margin", help="Override the increase-mode validity margin."),
    nomatch_margin: float = NOMATCH_MARGIN_OPT,
    text_proximity: str = typer.Option(
        None, "--text-proximity", help="words | embedding (text-side ranking)."
    ),
    image_proximity: str = typer.Option(None, "--image-proximity", help="readings | embedding (image side)."),
    threads: int = THREADS_OPT,
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Measure counterfactual quality (hit@1, minimal@1, verified rate, distance, diversity, latency)
    for the gradient path and the baselines on a shapes-world index.

    Examples:

      counterclip shapes generate shapes3k --n 3000 --seed 1

      counterclip shapes vocabulary shapes-vocab.txt

      counterclip build shapes3k --index shapes3k.idx --model bundled:shapes --vocab shapes-vocab.txt

      counterclip eval counterfactual --index shapes3k.idx --labels-file shapes3k/labels.jsonl --n-queries 200 --seed 0 --json
    """
    from counterclip.evaluation.counterfactuals import SIDE_CHOICES, evaluate_counterfactuals

    if not labels_file.is_file():
        raise InputError(f"labels file not found: {labels_file}")
    if side not in SIDE_CHOICES:
        raise InputError(f"--side must be one of {', '.join(SIDE_CHOICES)}, got {side!r}")
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    with _open_engine(index, device, quiet=as_json) as engine:
        overrides = _evaluation_overrides(margin, nomatch_margin, text_proximity, image_proximity)
        measured = [s for s in SIDE_CHOICES[side] if s in ("image", "text")]
        label = f"queries ({', '.join(measured) or 'verdicts'} side)"
        with progress_bar(label, enabled=not as_json) as bar:
            report = evaluate_counterfactuals(
                engine,
                labels_file,
                n_queries=n_queries,
                seed=seed,
                k=k,
                sides=SIDE_CHOICES[side],
                progress=_one_bar_over(bar, max(len(measured), 1)),
                **overrides,
            )
    if as_json:
        print_json(report)
        return
    print_counterfactual_evaluation(report)


def _evaluation_overrides(
    margin: float | None,
    nomatch_margin: float | None,
    text_proximity: str | None,
    image_proximity: str | None = None,
) -> dict[str, Any]:
    """The `EngineOptions` overrides of ``eval counterfactual``'s flags."""
    overrides: dict[str, Any] = {}
    if margin is not None:
        overrides["match_margin"] = margin
    if nomatch_margin is not None:
        overrides["nomatch_margin"] = nomatch_margin
    if text_proximity is not None:
        if text_proximity not in ("words", "embedding"):
            raise InputError(f"--text-proximity must be words or embedding, got {text_proximity!r}")
        overrides["text_proximity"] = text_proximity
    if image_proximity is not None:
        if image_proximity not in ("readings", "embedding"):
            raise InputError(f"--image-proximity must be readings or embedding, got {image_proximity!r}")
        overrides["image_proximity"] = image_proximity
    return overrides


def _one_bar_over(bar: Callable[[int, int], None], sides: int) -> Callable[[int, int], None]:
    """``progress(done, total)`` for one bar over ``sides`` sides: the evaluation counts each side's
    queries from 1 again, so a count that drops starts the next side."""
    offset = last = 0

    def advance(done: int, total: int) -> None:
        nonlocal offset, last
        if done < last:
            offset += last
        last = done
        bar(offset + done, total * sides)

    return advance


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    """Add ``search``, ``counterfactual`` and ``eval counterfactual``."""
    app.command()(search)
    app.command()(counterfactual)
    eval_app.command("counterfactual")(eval_counterfactual)

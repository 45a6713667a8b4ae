"""CLI: search, counterfactual, eval counterfactual."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from counterclip.cli._common import metrics_table, out, print_json, progress_bar, say
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
    index: Path, device: str, runtime: str = "torch", precision: str | None = None, text_only: bool = False
):
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
    from counterclip.index_builder.index import Index
    from counterclip.index_builder.manifest import Manifest
    from counterclip.models.onnx_text import OnnxTextEncoder

    record = Manifest.read(index.expanduser()).model
    encoder, reason = OnnxTextEncoder.open(record.spec, record.fingerprint, score=record.score)
    if encoder is None:
        logging.getLogger(__name__).info("text query through the full model: %s", reason)
        return None
    return Engine(Index.open(index), encoder)


def _caption_cell(text: str, original: str | None) -> str:
    """A caption with the words that differ from ``original`` in bold and underlined (rich markup)."""
    if not original:
        return escape(f"\u201c{text}\u201d")
    from counterclip.report.words import changed_words

    _, added = changed_words(original, text)
    words = [
        f"[bold underline]{escape(w)}[/]" if i in added else escape(w) for i, w in enumerate(text.split())
    ]
    return "\u201c" + " ".join(words) + "\u201d"


def _items_table(title: str, items, mode: str | None = None, original: str | None = None) -> Table:
    """Counterfactual answers: rank, the item (its full path or text, folded, never cut), score before ->
    after, verdict and p(match), distance to the original."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("item", overflow="fold", ratio=3)
    table.add_column("p(target)" if mode == "flip" else "score", justify="right", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    table.add_column("p(match)", justify="right", no_wrap=True)
    table.add_column("dist", justify="right", no_wrap=True)
    digits = 3 if mode == "flip" else 2
    for i in items:
        before = "" if i.score_before is None else f"{i.score_before:.{digits}f} -> "
        table.add_row(
            str(i.rank),
            escape(i.path) if i.path else _caption_cell(i.text or "", original),
            f"{before}{i.score_after:.{digits}f}",
            _verdict_cell(i.verdict),
            "" if i.p_match is None else f"{i.p_match:.2f}",
            f"{i.distance:.3f}",
        )
    return table


def _verdict_cell(verdict: str | None) -> str:
    colour = {"verified": "green", "weak": "yellow", "unverifiable": "dim"}.get(verdict or "", "dim")
    return f"[{colour}]{verdict or '-'}[/]"


def _search_table(result, root: Path, captions: dict[int, list[str]]) -> Table:
    """Search hits: rank, score, p(match) when a calibration holds, the full path (folded, never cut)
    and the first caption the index holds for the image."""
    images = bool(result.items) and result.items[0].kind == "image"
    calibrated = any(i.p_match is not None for i in result.items)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, expand=False)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("score", justify="right", no_wrap=True)
    if calibrated:
        table.add_column("p(match)", justify="right", no_wrap=True)
    if images:
        # the path keeps its full width when the terminal allows (at least 12 columns left for the
        # caption); otherwise it folds onto more lines, never cut
        columns = 5 if calibrated else 4
        fixed = len(str(len(result.items))) + max(len(f"{i.score_after:.2f}") for i in result.items)
        fixed += (8 if calibrated else 0) + 3 * columns + 1
        longest = max(len(str(root / i.path)) for i in result.items)
        path_width = max(min(longest, out.width - fixed - 12), 12)
        table.add_column("path", overflow="fold", width=path_width)
        table.add_column("caption", overflow="fold", width=max(out.width - fixed - path_width, 12))
    else:
        table.add_column("caption", overflow="fold")
    for item in result.items:
        row = [str(item.rank), f"{item.score_after:.2f}"]
        if calibrated:
            row.append("" if item.p_match is None else f"{item.p_match:.2f}")
        if images:
            caption = (captions.get(item.id) or [""])[0]
            row += [escape(str(root / item.path)), escape(caption)]
        else:
            row.append(escape(item.text or ""))
        table.add_row(*row)
    return table


def captions_for(engine, ids) -> dict[int, list[str]]:
    """The captions the index links to each image id (for reports and the search table)."""
    from counterclip.server.files import IndexLookup

    lookup = IndexLookup(engine.index)
    return {int(i): lookup.captions_of(int(i)) for i in ids if i is not None}


def write_report(engine, result, path: Path, query_image=None, with_maps: bool = True) -> Path:
    """The self-contained HTML report of a result, with attribution maps (library: `counterclip.report`)."""
    from counterclip.report.counterfactual import counterfactual_maps, write_counterfactual_report

    maps = None
    if with_maps:
        with progress_bar("explaining the answers (maps + faithfulness)") as advance:
            maps = counterfactual_maps(
                engine.model,
                result,
                engine.index.root,
                query_image,
                engine.indexed_image,
                progress=lambda done, total: advance(done, total),
            )
    ids = [item.id for item in result.items] + [
        item.id for items in result.baselines.values() for item in items
    ]
    query_id = (result.query.get("image") or {}).get("id")
    captions = captions_for(engine, [*ids, query_id]) if result.side == "image" else {}
    query_captions = captions_for(engine, [query_id]).get(query_id, []) if query_id is not None else []
    return write_counterfactual_report(
        path, result, engine.index.root, query_image, maps, captions=captions, query_captions=query_captions
    )


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    @app.command()
    def search(
        index: Path = typer.Argument(..., help="Index directory."),
        text: str = typer.Option(None, "--text", help="Query text."),
        image: str = IMAGE_OPT,
        k: int = typer.Option(10, "-k", help="Number of results (at least 1)."),
        captions: bool = typer.Option(
            False, "--captions", help="Search the caption index instead of images."
        ),
        paths: bool = typer.Option(
            False,
            "--paths",
            help="Print only the full paths, one per line (captions: the texts), for piping.",
        ),
        device: str = typer.Option("auto", help="auto | cpu | cuda"),
        runtime: str = typer.Option(
            "auto",
            "--runtime",
            help="auto | torch | onnx (extra counterclip[onnx]). auto: a text query runs the ONNX text tower "
            "without loading torch when the cache holds one checked for this index's weights, else torch.",
        ),
        precision: str = typer.Option(None, "--precision", help=PRECISION_HELP),
        as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """Plain retrieval from an index, by text or by image: rank, score, p(match) when the index has a
        calibration, full path and caption.

        Examples:

          counterclip search photos.idx --text "a dog on a beach" -k 5

          counterclip search photos.idx --text "a red car" --paths | xargs -d '\\n' cp -t picked/

          counterclip search photos.idx --image query.jpg --json
        """
        if (text is None) == (image is None):
            raise InputError("give exactly one of --text or --image")
        if k < 1:
            raise InputError(f"-k must be at least 1 (the number of results), got {k}")
        if paths and as_json:
            raise InputError("give --paths or --json, not both")
        with _open_engine(index, device, runtime, precision, text_only=text is not None) as engine:
            result = engine.search(
                text=text, image=_parse_image(image), k=k, collection="captions" if captions else "images"
            )
            root = engine.index.root
            linked = (
                captions_for(engine, [i.id for i in result.items])
                if not (captions or paths or as_json)
                else {}
            )
        if as_json:
            print_json(result.to_dict())
            return
        if paths:
            lines = [str(root / i.path) if i.path else " ".join((i.text or "").split()) for i in result.items]
            sys.stdout.write("".join(line + "\n" for line in lines))
            sys.stdout.flush()
            return
        query = f"\u201c{text}\u201d" if text is not None else str(image)
        collection = "captions" if captions else "images"
        out.print(f"[bold]{len(result.items)} {collection}[/] for {escape(query)}", highlight=False)
        for warning in result.warnings:
            say(f"[yellow]warning[/] {escape(warning)}")
        out.print(_search_table(result, root, linked), highlight=False)

    @app.command()
    def counterfactual(
        index: Path = typer.Argument(..., help="Index directory."),
        image: str = typer.Option(..., "--image", help="Query image: a file path, or an index id as #ID."),
        text: str = typer.Option(None, "--text", help="Query text (not needed with --mode flip)."),
        side: str = typer.Option("image", "--side", help="image: return images; text: return captions."),
        mode: str = typer.Option("increase", "--mode", help="increase | decrease | flip"),
        labels: str = typer.Option(None, "--labels", help="Comma-separated class texts for --mode flip."),
        target: str = typer.Option(None, "--target", help="The label the prediction must flip to."),
        k: int = typer.Option(5, "-k", help="Number of counterfactuals."),
        margin: float = typer.Option(
            None,
            "--margin",
            help="increase: valid within this share of the gap from the original's score to the best match "
            "(default 0.2); decrease: at least this share of the best-typical spread below the best match "
            "(default 0.25).",
        ),
        threshold: float = typer.Option(
            None, "--threshold", help="Absolute score threshold (overrides --margin)."
        ),
        diversity: float = typer.Option(
            None,
            "--diversity",
            min=0.0,
            max=1.0,
            help="Distinct changes before repeats among the k (default 0.3; 0 = closest first).",
        ),
        calibration: str = typer.Option(
            "auto", "--calibration", help="The verdicts' calibration: auto | captions | model | self | none."
        ),
        verify_with: str = typer.Option(
            None,
            "--verify-with",
            help="A second verifier: itm re-scores every answer with the model's image-text matching head "
            "(BLIP); an answer it disagrees with is not verified.",
        ),
        report: Path = typer.Option(None, "--report", help="Write a self-contained HTML report here."),
        device: str = typer.Option("auto", help="auto | cpu | cuda"),
        runtime: str = typer.Option("torch", "--runtime", help=RUNTIME_HELP),
        precision: str = typer.Option(None, "--precision", help=PRECISION_HELP),
        as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """Verified counterfactuals for an (image, text) pair, closest to the original first.

        Examples:

          counterclip counterfactual photos.idx --image cat.jpg --text "a photo of a dog"

          counterclip counterfactual photos.idx --image cat.jpg --text "a photo of a cat" --mode decrease --report cf.html

          counterclip counterfactual photos.idx --image cat.jpg --mode flip --labels "a cat,a dog,a bird" --target "a dog"

          counterclip counterfactual photos.idx --image cat.jpg --text "a photo of a cat" --side text --mode decrease

          counterclip counterfactual blip.idx --image cat.jpg --text "a photo of a dog" --verify-with itm
        """
        if k < 1:
            raise InputError(f"-k must be at least 1 (the number of counterfactuals), got {k}")
        if report is not None and report.is_dir():
            raise InputError(
                f"--report {report} is a folder; give a file name, e.g. {report / 'report.html'}"
            )
        overrides = {}
        if margin is not None:
            overrides["nomatch_margin" if mode == "decrease" else "match_margin"] = margin
        if threshold is not None:
            overrides["threshold"] = threshold
        if diversity is not None:
            overrides["diversity"] = diversity
        overrides["calibration"] = calibration
        if verify_with is not None:
            overrides["verify_with"] = verify_with
        label_list = [s for s in (labels or "").split(",") if s.strip()] or None
        with _open_engine(index, device, runtime, precision) as engine:
            query = _parse_image(image)
            result = engine.counterfactuals(
                image=query,
                text=text,
                side=side,
                mode=mode,
                labels=label_list,
                target=target,
                k=k,
                **overrides,
            )
            if report is not None:
                query_image = engine.indexed_image(Path(query)) if isinstance(query, str) else None
                write_report(engine, result, report, query_image)
        if as_json:
            payload = result.to_dict()
            payload["report"] = str(report) if report else None
            print_json(payload)
            return
        say(f"[bold]valid when[/] {escape(result.validity.rule)}")
        say(f"[bold]verdicts[/] by the {escape(result.calibration or 'no calibration')}")
        for warning in result.warnings:
            say(f"[yellow]warning[/] {escape(warning)}")
        noun = "caption" if side == "text" else "image"
        title = f"{len(result.items)} counterfactual {noun}(s), closest to the original first"
        if side == "image":
            title += f" (in {engine.index.root})"
        original = text if side == "text" else None
        out.print(_items_table(title, result.items, mode, original), highlight=False)
        answered = {item.id: item.rank for item in result.items}
        for name, items in result.baselines.items():
            for item in items or [None]:
                if item is None:
                    out.print(f"baseline {name.replace('_', ' ')}: none valid", highlight=False)
                    continue
                shown = escape(item.path or f"\u201c{item.text}\u201d")
                same = f" (= answer #{answered[item.id]})" if item.id in answered else ""
                before = "" if item.score_before is None else f"{item.score_before:.2f} -> "
                say(
                    f"baseline {name.replace('_', ' ')}: {shown} {before}{item.score_after:.2f} "
                    f"{_verdict_cell(item.verdict)}{same}"
                )
        for entry in result.stale:
            out.print(
                f"[yellow]stale[/] {escape(str(entry.get('path') or entry.get('text')))}: {entry['reason']} "
                "(run counterclip update)",
                highlight=False,
            )
        if report is not None:
            out.print(f"report: {escape(str(report))}", highlight=False)

    @eval_app.command("counterfactual")
    def eval_counterfactual(
        index: Path = typer.Option(..., "--index", help="Index built from a shapes folder."),
        labels_file: Path = typer.Option(..., "--labels-file", help="That folder's labels.jsonl."),
        n_queries: int = typer.Option(200, "--n-queries", help="Queries per side."),
        seed: int = typer.Option(0, "--seed"),
        k: int = typer.Option(5, "-k"),
        side: str = typer.Option(
            "all",
            "--side",
            help="image | text | both (the two sides) | verdicts | diversity | all (every figure).",
        ),
        margin: float = typer.Option(None, "--margin", help="Override the increase-mode validity margin."),
        nomatch_margin: float = typer.Option(
            None, "--nomatch-margin", help="Override the decrease-mode validity margin (text side)."
        ),
        text_proximity: str = typer.Option(
            None, "--text-proximity", help="words | embedding (text-side ranking)."
        ),
        threads: int = typer.Option(
            None, "--threads", help="torch CPU threads (1 gives steadier latency on a busy machine)."
        ),
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
        from counterclip.evaluation.counterfactuals import evaluate_counterfactuals

        if not labels_file.is_file():
            raise InputError(f"labels file not found: {labels_file}")
        choices = {
            "both": ("image", "text"),
            "all": ("image", "text", "verdicts", "diversity"),
            "image": ("image",),
            "text": ("text",),
            "verdicts": ("verdicts",),
            "diversity": ("diversity",),
        }
        if side not in choices:
            raise InputError(f"--side must be one of {', '.join(choices)}, got {side!r}")
        sides = choices[side]
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        with _open_engine(index, device) as engine:
            overrides = {}
            if margin is not None:
                overrides["match_margin"] = margin
            if nomatch_margin is not None:
                overrides["nomatch_margin"] = nomatch_margin
            if text_proximity is not None:
                if text_proximity not in ("words", "embedding"):
                    raise InputError(f"--text-proximity must be words or embedding, got {text_proximity!r}")
                overrides["text_proximity"] = text_proximity
            measured = [s for s in sides if s in ("image", "text")]
            with progress_bar(
                f"queries ({', '.join(measured) or 'verdicts'} side)", enabled=not as_json
            ) as bar:
                sides_done = {"offset": 0, "last": 0}

                def advance(done: int, total: int) -> None:
                    # each side counts from 1 again: one bar over both
                    if done < sides_done["last"]:
                        sides_done["offset"] += sides_done["last"]
                    sides_done["last"] = done
                    bar(sides_done["offset"] + done, total * max(len(measured), 1))

                report = evaluate_counterfactuals(
                    engine,
                    labels_file,
                    n_queries=n_queries,
                    seed=seed,
                    k=k,
                    sides=sides,
                    progress=advance,
                    **overrides,
                )
        if as_json:
            print_json(report)
            return
        for side_name in ("image_side", "text_side"):
            if side_name not in report:
                continue
            section = report[side_name]
            title = (
                f"{side_name.replace('_', ' ')}: {section.get('drawn')} queries "
                f"({section.get('skipped_no_minimal_answer')} skipped)"
            )
            metrics = [
                "answered_rate",
                "minimal_swap_at_1",
                "verified_rate",
                "hit_at_1",
                "minimal_at_1",
                "mean_distance_top1",
                "diversity_at_k",
                "latency_ms_p50",
                "latency_ms_p95",
            ]
            methods = {name: values for name, values in section.items() if isinstance(values, dict)}
            out.print(metrics_table(title, methods, metrics), highlight=False)
        for name in ("verdicts", "decrease_diversity"):
            if name in report:
                figures = ", ".join(
                    f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}"
                    for key, value in report[name].items()
                )
                say(f"[bold]{name.replace('_', ' ')}[/]: {figures}")

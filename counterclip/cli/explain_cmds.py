"""CLI: explain (attribution maps for an image-text pair) and eval explainers (measured quality)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from counterclip.cli._common import (
    CliError,
    console,
    metrics_table,
    out,
    print_json,
    progress_bar,
    say,
    working,
)

#: Convenience flags of ``explain`` and the method option each sets (any option: ``--option KEY=VALUE``).
FLAG_OPTIONS: dict[str, str] = {
    "--blocks": "blocks",
    "--layer": "layer",
    "--cam-rule": "rule",
    "--direction": "direction",
    "--steps": "steps",
    "--samples": "num_samples",
}

#: The figures of each method ``eval explainers`` prints (``--json`` has them all).
EXPLAINER_METRICS = [
    "pointing_game",
    "deletion_auc",
    "deletion_auc_random",
    "deletion_below_random",
    "insertion_auc",
    "insertion_auc_random",
    "max_sensitivity",
    "cost_forward_multiple",
]


def model_spec_from_index(index: Path) -> Any:
    """The model spec an index was built with (read through the index's one `Manifest` owner)."""
    from counterclip.index_builder.manifest import MANIFEST_NAME
    from counterclip.index_builder.stores.side import is_store_index
    from counterclip.index_builder.stores.store_index import index_model_record

    if not (index / MANIFEST_NAME).is_file() and not is_store_index(index):
        raise CliError(
            f"{index / MANIFEST_NAME} not found: --index must be an index directory (or pass --model SPEC)"
        )
    return index_model_record(index).spec


def _load(model: str | None, index: Path | None, device: str):
    from counterclip.models import load_model

    if (model is None) == (index is None):
        raise CliError("give exactly one of --model SPEC or --index IDX")
    spec = model if model is not None else model_spec_from_index(index)  # type: ignore[arg-type]
    return load_model(spec, device=device)


def _open_image(path: Path | None):
    """The image to explain, as RGB; a missing ``--image``, file or decoder is a one-line error."""
    from PIL import Image, UnidentifiedImageError

    if path is None:
        raise CliError("--image is required (unless --list-layers or --list-methods)")
    if not path.is_file():
        raise CliError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise CliError(f"cannot read image {path}: {exc}") from exc


def _split(values: str | None) -> list[str]:
    return [v.strip() for v in values.split(",") if v.strip()] if values else []


def method_options(method: Any, flags: dict[str, Any], pairs: list[str]) -> dict[str, Any]:
    """The options of ``method`` (a registered `Method`) from the convenience flags given (not None) and
    ``--option KEY=VALUE`` strings (typed by the method's options dataclass); one that does not apply raises."""
    options: dict[str, Any] = {}
    for flag, value in flags.items():
        if value is None:
            continue
        name = FLAG_OPTIONS[flag]
        if name not in method.option_names():
            known = ", ".join(method.option_names()) or "none"
            raise CliError(f"{flag} does not apply to method {method.name} (its options: {known})")
        options[name] = value
    texts: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CliError(f"--option takes KEY=VALUE, got {pair!r}")
        texts[key.strip().replace("-", "_")] = value
    options.update(method.parse_options(texts))
    return options


def _print_methods(as_json: bool) -> None:
    """The registered explainer methods with their modalities, options (defaults) and description."""
    from counterclip.explainers import REGISTRY

    rows = [
        {
            "method": m.name,
            "modalities": list(m.modalities),
            "options": m.defaults(),
            "description": m.description,
        }
        for m in REGISTRY
    ]
    if as_json:
        print_json(rows)
        return
    for row in rows:
        options = ", ".join(f"{k}={v!r}" for k, v in row["options"].items()) or "none"
        out.print(f"[bold]{row['method']}[/] ({' | '.join(row['modalities'])}): {row['description']}")
        out.print(f"    options: {options}", highlight=False)


# Options of `explain` whose help needs more than the signature's line.
METHOD_OPT = typer.Option(
    "relevance", "--method", help="Explanation method (--list-methods shows them and their options)."
)
MODALITY_OPT = typer.Option(
    None, "--modality", help="image | text | both (default: both where the method supports it)."
)
BLOCKS_OPT = typer.Option(
    None, "--blocks", help="relevance, gradcam on ViT: use the last N blocks (default all)."
)
CAM_RULE_OPT = typer.Option(
    None, "--cam-rule", help="gradcam: hirescam (default for ViT) or gradcam (default for ResNet)."
)
OPTION_OPT = typer.Option(
    None, "--option", "-o", help="Any option of the method as KEY=VALUE (repeatable; see --list-methods)."
)
QUALITY_OPT = typer.Option(
    False,
    "--quality",
    help="The map's quality card: faithfulness, understandability, completeness, stability, contrastivity "
    "(a few more explanations and ~60 scored images).",
)
LIST_METHODS_OPT = typer.Option(
    False, "--list-methods", help="Print the methods, their modalities and options, and exit."
)


def explain(
    model: str = typer.Option(None, "--model", help="Model spec (e.g. bundled:shapes)."),
    index: Path = typer.Option(None, "--index", help="Index directory: use the model it was built with."),
    image: Path = typer.Option(None, "--image", help="Image file to explain."),
    text: str = typer.Option(None, "--text", help="Caption to explain (or use --labels)."),
    method: str = METHOD_OPT,
    modality: str = MODALITY_OPT,
    labels: str = typer.Option(
        None, "--labels", help="Comma-separated label set: explain a class probability."
    ),
    target: str = typer.Option(None, "--target", help="The label explained (default: the first)."),
    versus: str = typer.Option(None, "--versus", help="A second label: explain the margin target - versus."),
    blocks: int = BLOCKS_OPT,
    layer: str = typer.Option(None, "--layer", help="gradcam: one layer name (see --list-layers)."),
    cam_rule: str = CAM_RULE_OPT,
    direction: str = typer.Option(None, "--direction", help="pixel-cf: increase (default) | decrease."),
    steps: int = typer.Option(None, "--steps", help="ig / pixel-cf: number of steps."),
    samples: int = typer.Option(None, "--samples", help="lime: perturbed samples."),
    option: list[str] = OPTION_OPT,
    list_layers: bool = typer.Option(False, "--list-layers", help="Print Grad-CAM layer names and exit."),
    list_methods: bool = LIST_METHODS_OPT,
    out_file: Path = typer.Option(None, "--out", help="Write a PNG panel (image | map | overlay, tokens)."),
    quality: bool = QUALITY_OPT,
    device: str = typer.Option("cpu", help="auto | cpu | cuda"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Attribution map for an (image, text) pair: which patches and tokens drive the score.

    Examples:

      counterclip explain --model bundled:shapes --image cat.png --text "a red circle" --out map.png

      counterclip explain --index IDX --image x.png --labels "a red circle,a blue circle" --target "a blue circle" --method ig

      counterclip explain --model bundled:shapes --image x.png --text "a red circle" --method lime -o segmentation=slic

      counterclip explain --list-methods
    """
    from counterclip import explainers as ex

    if list_methods or list_layers:
        _print_listing(list_methods, model, index, device, as_json)
        return
    with working(f"loading model {model or index} ...", enabled=not as_json):
        clip = _load(model, index, device)
    registered = ex.REGISTRY.get(method)
    pil = _open_image(image)
    label_set, explained = _labels_and_target(clip, text, labels, target, versus)
    mode = modality or ("both" if "both" in registered.modalities and not label_set else "image")
    given = (blocks, layer, cam_rule, direction, steps, samples)  # in FLAG_OPTIONS' order
    options = method_options(registered, dict(zip(FLAG_OPTIONS, given, strict=True)), option or [])
    if out_file is not None and out_file.is_dir():
        raise CliError(f"--out {out_file} is a folder; give a PNG file name, e.g. {out_file / 'map.png'}")
    texts = label_set or [text]
    with working(f"explaining with {method}", enabled=not as_json):
        exp = ex.explain(clip, pil, texts, method=method, target=explained, modality=mode, **options)
    _annotate(exp, index, clip, explained)
    faithfulness = _faithfulness(registered, exp, clip, pil, texts, explained, as_json)
    card = _map_card(registered, exp, clip, pil, texts, explained, options, as_json) if quality else None
    _print_explanation(exp, faithfulness, _save_panel(pil, exp, out_file, faithfulness), as_json, card)


def _annotate(exp: Any, index: Path | None, clip: Any, explained: Any) -> None:
    """Mark a map of random weights; read a pair's p(match) by the calibration the index's queries use
    (it titles the map; without ``--index`` the model's own reading stands)."""
    exp.extras.update({"random_weights": True} if getattr(clip.spec, "source", None) == "random" else {})
    if index is None or explained is not None:
        return
    from counterclip.engine.resources import index_match_probability

    p_match = index_match_probability(index, clip, exp.score)
    exp.extras.update({"p_match": p_match} if p_match is not None else {})


def _print_listing(
    list_methods: bool, model: str | None, index: Path | None, device: str, as_json: bool
) -> None:
    """``--list-methods`` (it wins), or ``--list-layers`` of the model: the Grad-CAM layers, the default marked."""
    from counterclip import explainers as ex

    if list_methods:
        _print_methods(as_json)
        return
    clip = _load(model, index, device)
    names = ex.list_layers(clip)
    if as_json:
        print_json({"layers": names, "default": ex.default_layer(clip) if names else None})
    else:
        for name in names:
            out.print(name + ("  (default)" if name == ex.default_layer(clip) else ""))


def _labels_and_target(
    clip: Any, text: str | None, labels: str | None, target: str | None, versus: str | None
) -> tuple[list[str], Any]:
    """The label set (empty without ``--labels``) and the score explained: a class probability, or the
    margin of ``--target`` over ``--versus`` (None: the pair score of ``--text``)."""
    from counterclip import explainers as ex

    label_set = _split(labels)
    if label_set and text:
        raise CliError("give --text or --labels, not both")
    if not label_set and not text:
        raise CliError("give --text CAPTION or --labels a,b,c")
    if not label_set:
        if target or versus:
            raise CliError("--target/--versus need --labels")
        return label_set, None
    for name, flag in ((target, "--target"), (versus, "--versus")):
        if name is not None and name not in label_set:
            raise CliError(f"{flag} {name!r} is not one of --labels ({', '.join(label_set)})")
    index_a = label_set.index(target) if target else 0
    if versus is not None:
        return label_set, ex.Margin(index_a, label_set.index(versus), clip.pair_score)
    return label_set, ex.LabelProbability(index_a, clip.pair_score)


def _faithfulness(
    registered: Any, exp: Any, clip: Any, pil: Any, texts: list[str], explained: Any, as_json: bool
) -> Any:
    """How faithful an attribution map is (deletion and insertion against the score); None without one."""
    if not (registered.attribution and exp.pixel_map is not None):
        return None
    from counterclip.explainers.metrics import map_faithfulness

    with working("measuring the map's faithfulness", enabled=not as_json):
        return map_faithfulness(clip, pil, texts, exp.pixel_map, target=explained)


def _map_card(
    registered: Any,
    exp: Any,
    clip: Any,
    pil: Any,
    texts: list[str],
    explained: Any,
    options: dict,
    as_json: bool,
) -> Any:
    """The map's quality card (`counterclip.explainers.quality.map_quality`); None for a map of a change."""
    if not (registered.attribution and exp.pixel_map is not None):
        return None
    from counterclip.explainers.quality import map_quality

    with working("measuring the map's five qualities", enabled=not as_json):
        return map_quality(clip, pil, texts, explanation=exp, method=exp.method, target=explained, **options)


def _save_panel(pil: Any, exp: Any, out_file: Path | None, faithfulness: Any) -> dict[str, str]:
    """Write the PNG panel(s) of ``--out``: kind -> path (nothing without ``--out``)."""
    if out_file is None:
        return {}
    from counterclip.report import save_explanation

    saved = save_explanation(pil, exp, out_file, faithfulness=faithfulness)
    return {kind: str(path) for kind, path in saved.items()}


def _print_explanation(
    exp: Any, faithfulness: Any, written: dict[str, str], as_json: bool, card: Any = None
) -> None:
    """The explanation's summary as JSON, or in lines: notes, score, faithfulness, the top cell, the
    tokens, details, cost, the quality card (``--quality``) and the files written."""
    payload = exp.summary()
    payload["files"] = written
    payload["flags"] = exp.flags()
    payload["faithfulness"] = faithfulness.to_dict() if faithfulness is not None else None
    if card is not None:
        payload["quality"] = card.to_dict()
    if as_json:
        print_json(payload)
        return
    for flag in exp.flags():
        say(f"[yellow]note[/] {flag}")
    say(f"[bold]{exp.method}[/] score {exp.score:.4f} ({escape(exp.explains)}){_match_words(exp)}")
    if faithfulness is not None:
        say(faithfulness.describe())
    _print_map_details(exp, payload["extras"])
    out.print(f"cost: {exp.forward_passes} forward, {exp.backward_passes} backward, {exp.seconds:.2f} s")
    if card is not None:
        say(
            f"[bold]quality[/] of the map ({card.forward_passes} extra forward passes; --json has the definitions)"
        )
        for line in card.lines():
            out.print("  " + line, highlight=False)
    for kind, path in written.items():
        out.print(f"wrote {kind}: {path}")


def _match_words(exp: Any) -> str:
    """ "; p(match) 0.97: a match" for a pair whose p(match) is known, "" otherwise."""
    p_match = exp.extras.get("p_match")
    if p_match is None:
        return ""
    return f"; p(match) {p_match:.2f}: " + ("a match" if p_match >= 0.5 else "not a match")


def _print_map_details(exp: Any, extras: dict[str, Any]) -> None:
    """The most relevant (or most changed) cell of the grid, the tokens' values, what a pixel-space edit
    did, and the method's other figures."""
    if exp.patch_map is not None:
        import numpy as np

        grid = exp.patch_map
        row, col = np.unravel_index(int(np.argmax(grid)), grid.shape)
        what = "most changed" if exp.method == "pixel-cf" else "most relevant"
        out.print(f"{what} cell: row {row}, column {col} of a {grid.shape[0]}x{grid.shape[1]} grid")
    if exp.tokens is not None and exp.token_map is not None:
        out.print(
            "tokens: " + "  ".join(f"{t}={v:+.3f}" for t, v in zip(exp.tokens, exp.token_map, strict=False))
        )
    interesting = {k: v for k, v in extras.items() if k not in ("trajectory", "verified", "p_match")}
    if exp.method == "pixel-cf":
        moved = exp.extras["score_8bit"] - exp.score
        say(
            f"edited image (8-bit) scores {exp.extras['score_8bit']:.4f} ({moved:+.4f}): "
            + ("moved as asked" if exp.extras.get("verified") else "did NOT move as asked")
            + "; an edit of the pixels, not a verified counterfactual from the index"
        )
    if interesting:
        out.print(
            "details: "
            + ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in interesting.items()
            ),
            highlight=False,
        )


def eval_explainers(
    model: str = typer.Option("bundled:shapes", "--model", help="Model spec."),
    n: int = typer.Option(50, "--n", help="Number of shapes images."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    methods: str = typer.Option(
        None, "--methods", help="Comma-separated methods (default: every attribution method)."
    ),
    sensitivity_images: int = typer.Option(
        5, "--sensitivity-images", help="Images used for max-sensitivity."
    ),
    device: str = typer.Option("cpu", help="auto | cpu | cuda"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Measure explainer quality on generated shapes images (boxes known).

    Pointing game, deletion / insertion AUC beside a random order, max-sensitivity, cost per
    explanation; a text test with one wrong attribute word.

    Examples:

      counterclip eval explainers --model bundled:shapes --n 20 --seed 0

      counterclip eval explainers --model bundled:shapes --n 200 --seed 0 --json   # about 20 minutes on 2 cores
    """
    from counterclip.evaluation.explainers import evaluate_explainers
    from counterclip.models import load_model

    with working(f"loading model {model} ...", enabled=not as_json):
        clip = load_model(model, device=device)
    with progress_bar("explaining shapes images", enabled=not as_json) as advance:
        report = evaluate_explainers(
            clip,
            n=n,
            seed=seed,
            methods=_split(methods) or None,
            sensitivity_images=sensitivity_images,
            progress=advance,
        )
    if as_json:
        print_json(report)
        return
    title = f"explainers on {n} shapes images ({report['model']})"
    out.print(metrics_table(title, report["methods"], EXPLAINER_METRICS), highlight=False)
    for name, figures in report["text_test"].items():
        out.print(
            f"text test {name}: wrong word lowest {figures['wrong_word_lowest']}, "
            f"control {figures['control_colour_lowest']}, chance {figures['chance']:.2f} ({figures['cases']} cases)"
        )
    console.print(
        f"zero-shot colour+shape accuracy of the model on these images: {report['zero_shot_accuracy']:.3f}"
    )


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    """Add ``explain`` and ``eval explainers``."""
    app.command()(explain)
    eval_app.command("explainers")(eval_explainers)

"""CLI: explainers for CNN classifiers, text classifiers and tabular models (secondary explainers issue).

``explain-cnn``, ``explain-text-classifier`` and ``explain-tabular`` each write PNG (and HTML for text)
files into ``--out`` and print a summary, or JSON with ``--json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from counterclip.cli._common import out, print_json, working
from counterclip.errors import InputError

# The choices each command accepts (the libraries hold the same tuples: CNN_RUN_METHODS, TEXT_METHODS,
# TABULAR_METHODS; spelled here so `--help` needs no torch import).
CNN_CHOICES = ("gradcam", "guided-backprop", "guided-gradcam", "saliency", "ig", "lrp", "counterfactual")
TEXT_CHOICES = ("ig", "lime", "both")
TABULAR_CHOICES = ("pdp", "ice", "pdp-2d", "lime", "compare")


def _choice(value: str, choices: tuple[str, ...], option: str) -> str:
    if value not in choices:
        raise InputError(f"unknown {option} {value!r}; choose one of {', '.join(choices)}")
    return value


def _looks_like_path(source: str) -> bool:
    """A local path rather than a hub id (``org/name``): starts with / . ~, or has several parts."""
    return source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source


def _load_classifier(source: str, loader: Any) -> Any:
    """``loader(source)`` for a local directory (missing: named as such) or a hub id (no network: one
    line after one connection attempt, not a minute of retries)."""
    from counterclip.models.hub import hub_access

    local = Path(source).expanduser()
    if local.exists():
        if not local.is_dir():
            raise InputError(f"--model {source} is a file; give a directory saved with save_pretrained")
        return loader(str(local))
    if _looks_like_path(source):
        raise InputError(
            f"model directory not found: {source} (give a directory saved with save_pretrained, or a hub id)"
        )
    with hub_access(f"the classifier {source}", hint="give a local directory saved with save_pretrained"):
        return loader(source)


# Options whose help needs more than the signature's line.
WEIGHTS_OPT = typer.Option(
    None, "--weights", help="State dict: .safetensors or torch.save (weights only, never a pickled module)."
)
RANDOM_WEIGHTS_OPT = typer.Option(
    False, "--random-weights", help="Use random weights (for trying the tool; maps mean nothing)."
)
CNN_TARGETS_OPT = typer.Option(
    None, "--target", help="Class index or name; repeat to compare classes side by side. Default: top-1."
)
SWEEP_OPT = typer.Option(
    None, "--sweep", help="Grad-CAM at several layers: 'auto' (layer1..layer4) or comma-separated names."
)
GRID_OPT = typer.Option(
    None, "--grid", help="Grid points per feature (default 100; 20 for pdp-2d: 400 points, seconds)."
)


def explain_cnn_cmd(
    image: Path = typer.Argument(None, help="Image file (not needed with --list-layers)."),
    arch: str = typer.Option("resnet18", "--arch", help="torchvision architecture name."),
    weights: Path = WEIGHTS_OPT,
    random_weights: bool = RANDOM_WEIGHTS_OPT,
    num_classes: int = typer.Option(None, "--num-classes", help="Outputs (default: from the weights)."),
    labels: Path = typer.Option(None, "--labels", help="Class names, one per line (default: ImageNet's)."),
    method: str = typer.Option("gradcam", "--method", help=" | ".join(CNN_CHOICES)),
    targets: list[str] = CNN_TARGETS_OPT,
    layer: str = typer.Option(None, "--layer", help="Grad-CAM layer (named_modules name; default layer4)."),
    list_layers_flag: bool = typer.Option(
        False, "--list-layers", help="Print layer names and output shapes."
    ),
    sweep: str = SWEEP_OPT,
    size: int = typer.Option(224, "--size", help="Input side in pixels (resize + centre crop)."),
    steps: int = typer.Option(None, "--steps", help="IG steps (50) or counterfactual steps (100)."),
    baseline: str = typer.Option(
        "mean", "--baseline", help="IG baseline: mean (dataset-mean image) | black."
    ),
    from_class: str = typer.Option(None, "--from-class", help="Counterfactual: class A (default top-1)."),
    proximity: float = typer.Option(10.0, "--proximity", help="Counterfactual: proximity penalty weight."),
    out_dir: Path = typer.Option(Path("explain-cnn-out"), "--out", help="Output directory."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Attribution maps for a CNN image classifier (Captum), the layer sweep, or a pixel counterfactual.

    Examples:

      counterclip explain-cnn dog.jpg --arch resnet18 --weights r18.safetensors --target "German shepherd" --target "Labrador retriever"

      counterclip explain-cnn dog.jpg --weights r18.safetensors --method ig --steps 64 --baseline black --json

      counterclip explain-cnn dog.jpg --weights r18.safetensors --sweep auto

      counterclip explain-cnn cat.jpg --weights r18.safetensors --method counterfactual --target "tabby" --steps 200

      counterclip explain-cnn --arch vgg11 --random-weights --list-layers
    """
    _check_cnn_args(method, baseline, weights, random_weights, size)
    with working(f"loading model {arch} ...", enabled=not as_json):
        from counterclip.explainers.classic import cnn, cnn_runs

        model = cnn.load_cnn(arch, weights, num_classes)
    if list_layers_flag:
        _print_layers(model, size, as_json)
        return
    if image is None:
        raise InputError("give an IMAGE to explain (or --list-layers)")
    x, shown = cnn.preprocess_image(cnn_runs.read_image(image), size)
    names = cnn.load_class_names(labels, cnn_runs.num_outputs(model, x))
    request = _cnn_request(names, method, targets, layer, sweep, steps, baseline, from_class, proximity)
    with working(f"explaining with {method}", enabled=not as_json):
        result = cnn_runs.run_cnn(model, x, shown, request, names)
    files = _write_cnn_result(result, shown, out_dir, random_weights)
    asked = {"image": str(image), "arch": arch, "weights": str(weights) if weights else None}
    _print_cnn_result(result, asked, files, as_json)


def _cnn_request(
    names: list[str],
    method: str,
    targets: list[str] | None,
    layer: str | None,
    sweep: str | None,
    steps: int | None,
    baseline: str,
    from_class: str | None,
    proximity: float,
) -> Any:
    """The library's `CnnRequest` from the options: class names or indices resolved against ``names``,
    the sweep's comma-separated layers split."""
    from counterclip.explainers.classic import cnn, cnn_runs

    return cnn_runs.CnnRequest(
        method=method,
        targets=tuple(cnn.resolve_targets(targets or [], names)),
        layer=layer,
        sweep=tuple(s.strip() for s in sweep.split(",")) if sweep is not None else None,
        steps=steps,
        baseline=baseline,
        source=cnn.resolve_targets([from_class], names)[0] if from_class is not None else None,
        proximity=proximity,
    )


def _check_cnn_args(
    method: str, baseline: str, weights: Path | None, random_weights: bool, size: int
) -> None:
    _choice(method, CNN_CHOICES, "--method")
    _choice(baseline, ("mean", "black"), "--baseline")
    if weights is None and not random_weights:
        raise InputError("give --weights FILE (a state dict), or --random-weights to try the tool")
    if size < 8:
        raise InputError(f"--size must be at least 8 pixels, got {size}")


def _print_layers(model: Any, size: int, as_json: bool) -> None:
    """``--list-layers``: each layer's name, type and output shape for a ``size`` x ``size`` input."""
    from counterclip.explainers.classic import layers

    listing = layers.list_layers(model, (1, 3, size, size))
    if as_json:
        print_json([{"name": i.name, "type": i.type, "output_shape": i.output_shape} for i in listing])
        return
    for info in listing:
        shape = "x".join(map(str, info.output_shape)) if info.output_shape else "-"
        out.print(f"{info.name:<40} {info.type:<20} {shape}", highlight=False)


def _write_cnn_result(result: Any, shown: Any, out_dir: Path, random_weights: bool) -> list[str]:
    """Write the figures into ``out_dir`` (maps of random weights say so) and return their paths."""
    from counterclip.report.classic import write_cnn_result

    if random_weights:
        for explanation in result.explanations:
            explanation.extras["random_weights"] = True
    return [str(path) for path in write_cnn_result(result, shown, out_dir)]


def _print_cnn_result(result: Any, asked: dict[str, Any], files: list[str], as_json: bool) -> None:
    """The maps' summaries, their flags, the overlap of their top regions and the files, as JSON or lines."""
    from counterclip.explainers.figure import MapScale

    explanations = result.explanations
    payload: dict[str, Any] = dict(asked)
    empty = [MapScale.of(e.pixel_map).state == "empty" for e in explanations]
    if result.overlap is not None:
        # an empty map has no top region: its overlaps are undefined (null), not 0
        payload["overlap_iou_top20"] = [
            [None if empty[i] or empty[j] else float(v) for j, v in enumerate(row)]
            for i, row in enumerate(result.overlap.tolist())
        ]
    payload["explanations"] = [e.summary() for e in explanations]
    payload["flags"] = sorted({flag for e in explanations for flag in e.flags()})
    payload["files"] = files
    if as_json:
        print_json(payload)
        return
    for flag in payload["flags"]:
        out.print(f"[yellow]note[/] {flag}", highlight=False)
    for explanation in explanations:
        out.print(
            f"[bold]{explanation.method}[/] {explanation.explains}: score {explanation.score:.4f}"
            f"  ({explanation.forward_passes} forward / {explanation.backward_passes} backward passes,"
            f" {explanation.seconds:.2f} s)",
            highlight=False,
        )
    if "overlap_iou_top20" in payload:
        cells = [["n/a" if v is None else f"{v:.3f}" for v in row] for row in payload["overlap_iou_top20"]]
        out.print(
            "IoU of top-20% regions: "
            + "; ".join(" ".join(row) for row in cells)
            + (" (n/a: an empty map has no region)" if any(empty) else ""),
            highlight=False,
        )
    if result.flow == "counterfactual":
        _print_pixel_counterfactual(explanations[0].extras)
    out.print("wrote " + ", ".join(files), highlight=False)


def _print_pixel_counterfactual(extras: dict[str, Any]) -> None:
    out.print(
        f"{extras['source_name']} -> {extras['target_name']}: "
        f"{'reached' if extras['verified'] else 'NOT reached'} after {extras['steps_taken']} steps; "
        f"8-bit image p(target)={extras['final_probabilities']['target']:.3f}, "
        f"largest change {extras['linf_levels']} levels"
    )


def explain_text_cmd(
    text: str = typer.Argument(..., help="The text to explain."),
    model_source: str = typer.Option(
        ..., "--model", help="Hugging Face sequence classifier: a local directory or a cached hub id."
    ),
    method: str = typer.Option("ig", "--method", help=" | ".join(TEXT_CHOICES)),
    target: str = typer.Option(None, "--target", help="Label name or index (default: predicted)."),
    steps: int = typer.Option(50, "--steps", help="Integrated-gradients steps."),
    samples: int = typer.Option(500, "--samples", help="LIME perturbed samples."),
    seed: int = typer.Option(0, "--seed", help="LIME random seed."),
    out_dir: Path = typer.Option(Path("explain-text-out"), "--out", help="Output directory."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Token attributions for a text classifier: layer integrated gradients (pad baseline) and LIME.

    Examples:

      counterclip explain-text-classifier "a gripping, beautiful film" --model ./sst2-model

      counterclip explain-text-classifier "not bad at all" --model ./sst2-model --method both --target POSITIVE --json
    """
    from counterclip.explainers.classic.text_classifier import explain_text, load_text_classifier
    from counterclip.report.classic import write_token_result

    _choice(method, TEXT_CHOICES, "--method")
    with working(f"loading model {model_source} ...", enabled=not as_json):
        model, tokenizer = _load_classifier(model_source, load_text_classifier)
    with working(f"explaining with {method}", enabled=not as_json):
        explanations = explain_text(
            model, tokenizer, text, method, target, steps=steps, samples=samples, seed=seed
        )
    files = [str(path) for path in write_token_result(explanations, text, out_dir)]
    if as_json:
        print_json(
            {
                "text": text,
                "model": model_source,
                "explanations": [e.summary() for e in explanations],
                "files": files,
            }
        )
        return
    for explanation in explanations:
        pairs = " ".join(
            f"{token}:{value:+.3f}"
            for token, value in zip(explanation.tokens, explanation.token_map, strict=True)
        )
        note = explanation.extras.get("convergence_delta")
        out.print(
            f"[bold]{explanation.method}[/] {explanation.explains} = {explanation.score:.4f}"
            + (f" (convergence delta {note:+.2e})" if note is not None else ""),
            highlight=False,
        )
        out.print(pairs, highlight=False)
    out.print("wrote " + ", ".join(files), highlight=False)


def explain_tabular_cmd(
    csv_path: Path = typer.Option(None, "--csv", help="CSV with a header row."),
    target: str = typer.Option(None, "--target", help="Target column of the CSV."),
    dataset: str = typer.Option(None, "--dataset", help="Bundled: diabetes | wine | breast_cancer."),
    task: str = typer.Option("auto", "--task", help="auto | regression | classification (CSV only)."),
    model_kind: str = typer.Option(
        "random-forest", "--model", help="random-forest | gradient-boosting | linear"
    ),
    method: str = typer.Option("pdp", "--method", help=" | ".join(TABULAR_CHOICES)),
    features: list[str] = typer.Option(None, "--feature", help="Feature name (twice for pdp-2d)."),
    row: int = typer.Option(0, "--row", help="LIME: the row to explain."),
    centered: bool = typer.Option(
        False, "--centered", help="ICE/PDP curves centred at the first grid point."
    ),
    compare_model: str = typer.Option("linear", "--compare-model", help="compare: the second model kind."),
    target_class: str = typer.Option(None, "--target-class", help="Classifiers: the class to explain."),
    grid: int = GRID_OPT,
    samples: int = typer.Option(2000, "--samples", help="LIME perturbed samples."),
    seed: int = typer.Option(0, "--seed", help="Model and LIME random seed."),
    out_dir: Path = typer.Option(Path("explain-tabular-out"), "--out", help="Output directory."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Partial dependence (1-D, 2-D), ICE curves, LIME for one row, or two models' PDPs compared.

    The model is fitted here from the data (scikit-learn); no pickled model file is ever loaded.

    Examples:

      counterclip explain-tabular --dataset diabetes --feature bmi

      counterclip explain-tabular --csv houses.csv --target price --method ice --feature rooms --centered

      counterclip explain-tabular --dataset wine --method pdp-2d --feature alcohol --feature proline --target-class class_0

      counterclip explain-tabular --dataset breast_cancer --method lime --row 12 --json

      counterclip explain-tabular --dataset diabetes --method compare --feature bmi --model random-forest --compare-model linear
    """
    from counterclip.explainers.classic import tabular
    from counterclip.report.classic import write_tabular_result

    _choice(method, TABULAR_CHOICES, "--method")
    data = _tabular_data(csv_path, target, dataset, task)
    request = tabular.TabularRequest(
        method=method,
        model=model_kind,
        features=tuple(features or ()),
        row=row,
        centered=centered,
        compare_model=compare_model,
        target_class=target_class,
        grid=grid if grid is not None else (20 if method == "pdp-2d" else 100),
        samples=samples,
        seed=seed,
    )
    with working(f"fitting {model_kind} and computing {method}", enabled=not as_json):
        result = tabular.run_tabular(data, request)
    files = [str(path) for path in write_tabular_result(result, out_dir)]
    _print_tabular_result(result, data, model_kind, row, files, as_json)


def _tabular_data(csv_path: Path | None, target: str | None, dataset: str | None, task: str) -> Any:
    """The table to explain: a CSV with its target column, or a bundled dataset (exactly one)."""
    from counterclip.explainers.classic import tabular

    if (csv_path is None) == (dataset is None):
        raise InputError("give either --csv FILE --target COLUMN or --dataset NAME")
    if csv_path is None:
        return tabular.load_bundled(dataset)
    if target is None:
        raise InputError("--csv needs --target COLUMN (the column to predict)")
    return tabular.load_csv(csv_path, target, task)


def _print_tabular_result(
    result: Any, data: Any, model_kind: str, row: int, files: list[str], as_json: bool
) -> None:
    """The data, the model and each explanation's summary, as JSON or a line each (LIME: its top 8 conditions)."""
    explanations = result.explanations
    payload = {
        "data": data.source,
        "task": data.task,
        "rows": int(data.X.shape[0]),
        "model": model_kind,
        "explanations": [e.summary(drop_extras=("individual",)) for e in explanations],
        "files": files,
    }
    if as_json:
        print_json(payload)
        return
    for explanation in explanations:
        subject = f"row {row}" if explanation.method == "lime" else ", ".join(explanation.feature_names)
        out.print(
            f"[bold]{explanation.method}[/] {subject}: {explanation.explains}, "
            f"score {explanation.score:.4f} ({explanation.seconds:.2f} s)",
            highlight=False,
        )
        if explanation.method == "lime":
            for text, weight in explanation.extras["conditions"][:8]:
                out.print(f"  {weight:+.4f}  {text}", highlight=False)
    out.print("wrote " + ", ".join(files), highlight=False)


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    """Add ``explain-cnn``, ``explain-text-classifier`` and ``explain-tabular``."""
    app.command("explain-cnn")(explain_cnn_cmd)
    app.command("explain-text-classifier")(explain_text_cmd)
    app.command("explain-tabular")(explain_tabular_cmd)

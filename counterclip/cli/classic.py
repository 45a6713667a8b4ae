"""CLI: explainers for CNN classifiers, text classifiers and tabular models (secondary explainers issue).

``explain-cnn``, ``explain-text-classifier`` and ``explain-tabular`` each write PNG (and HTML for text)
files into ``--out`` and print a summary, or JSON with ``--json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import typer

from counterclip.cli._common import out, print_json
from counterclip.errors import InputError

CNN_CHOICES = ("gradcam", "guided-backprop", "guided-gradcam", "saliency", "ig", "lrp", "counterfactual")
TEXT_CHOICES = ("ig", "lime", "both")
TABULAR_CHOICES = ("pdp", "ice", "pdp-2d", "lime", "compare")


def _plain(value: Any) -> Any:
    """Numpy values (also nested in lists and dicts) as JSON-ready Python values."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _explanation_json(explanation: Any, drop: tuple[str, ...] = ()) -> dict:
    """An explanation as JSON (maps left out: they are in the PNGs), without the ``drop`` extras."""
    payload = explanation.to_dict(include_maps=False)
    payload["extras"] = {k: v for k, v in payload["extras"].items() if k not in drop}
    if explanation.token_map is not None:
        payload["token_map"] = explanation.token_map.tolist()
    if explanation.feature_values is not None:
        payload["feature_values"] = explanation.feature_values.tolist()
    return _plain(payload)


def _choice(value: str, choices: tuple[str, ...], option: str) -> str:
    if value not in choices:
        raise InputError(f"unknown {option} {value!r}; choose one of {', '.join(choices)}")
    return value


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    """Add ``explain-cnn``, ``explain-text-classifier`` and ``explain-tabular``."""

    @app.command("explain-cnn")
    def explain_cnn_cmd(
        image: Path = typer.Argument(None, help="Image file (not needed with --list-layers)."),
        arch: str = typer.Option("resnet18", "--arch", help="torchvision architecture name."),
        weights: Path = typer.Option(
            None,
            "--weights",
            help="State dict: .safetensors or torch.save (weights only, never a pickled module).",
        ),
        random_weights: bool = typer.Option(
            False, "--random-weights", help="Use random weights (for trying the tool; maps mean nothing)."
        ),
        num_classes: int = typer.Option(None, "--num-classes", help="Outputs (default: from the weights)."),
        labels: Path = typer.Option(
            None, "--labels", help="Class names, one per line (default: ImageNet's)."
        ),
        method: str = typer.Option("gradcam", "--method", help=" | ".join(CNN_CHOICES)),
        targets: list[str] = typer.Option(
            None,
            "--target",
            help="Class index or name; repeat to compare classes side by side. Default: top-1.",
        ),
        layer: str = typer.Option(
            None, "--layer", help="Grad-CAM layer (named_modules name; default layer4)."
        ),
        list_layers_flag: bool = typer.Option(
            False, "--list-layers", help="Print layer names and output shapes."
        ),
        sweep: str = typer.Option(
            None,
            "--sweep",
            help="Grad-CAM at several layers: 'auto' (layer1..layer4) or comma-separated names.",
        ),
        size: int = typer.Option(224, "--size", help="Input side in pixels (resize + centre crop)."),
        steps: int = typer.Option(None, "--steps", help="IG steps (50) or counterfactual steps (100)."),
        baseline: str = typer.Option(
            "mean", "--baseline", help="IG baseline: mean (dataset-mean image) | black."
        ),
        from_class: str = typer.Option(None, "--from-class", help="Counterfactual: class A (default top-1)."),
        proximity: float = typer.Option(
            10.0, "--proximity", help="Counterfactual: proximity penalty weight."
        ),
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
        from PIL import Image, UnidentifiedImageError

        from counterclip.explainers.classic import cnn, layers, plots
        from counterclip.explainers.classic.cnn_counterfactual import pixel_counterfactual
        from counterclip.report import panel, save_png

        _choice(method, CNN_CHOICES, "--method")
        _choice(baseline, ("mean", "black"), "--baseline")
        if weights is None and not random_weights:
            raise InputError("give --weights FILE (a state dict), or --random-weights to try the tool")
        if size < 8:
            raise InputError(f"--size must be at least 8 pixels, got {size}")
        model = cnn.load_cnn(arch, weights, num_classes)
        if list_layers_flag:
            listing = layers.list_layers(model, (1, 3, size, size))
            if as_json:
                print_json(
                    [{"name": i.name, "type": i.type, "output_shape": i.output_shape} for i in listing]
                )
            else:
                for info in listing:
                    shape = "x".join(map(str, info.output_shape)) if info.output_shape else "-"
                    out.print(f"{info.name:<40} {info.type:<20} {shape}", highlight=False)
            return
        if image is None:
            raise InputError("give an IMAGE to explain (or --list-layers)")
        if not image.is_file():
            raise InputError(f"image {image} does not exist")
        try:
            picture = Image.open(image)
            picture.load()
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"cannot read {image} as an image ({exc})") from exc
        x, shown = cnn.preprocess_image(picture, size)
        n_outputs = _n_outputs(model, x)
        names = cnn.load_class_names(labels, n_outputs)
        target_ids = cnn.resolve_targets(targets or [], names)
        if layer is not None:
            layers.get_layer(model, layer)
        files: list[str] = []
        payload: dict[str, Any] = {
            "image": str(image),
            "arch": arch,
            "weights": str(weights) if weights else None,
        }
        if method == "counterfactual":
            if len(target_ids) != 1:
                raise InputError("--method counterfactual needs exactly one --target (class B)")
            source = cnn.resolve_targets([from_class], names)[0] if from_class is not None else None
            result = pixel_counterfactual(
                model,
                shown,
                target_class=target_ids[0],
                source_class=source,
                steps=steps or 100,
                proximity=proximity,
                class_names=names,
            )
            files.append(str(save_png(result.extras["edited_image"], out_dir / "edited.png")))
            files.append(str(plots.save_counterfactual(shown, result, out_dir / "counterfactual.png")))
            explanations = [result]
        elif sweep is not None:
            sweep_layers = layers.default_sweep_layers(model) if sweep == "auto" else sweep.split(",")
            explanations = cnn.layer_sweep(
                model, x, [s.strip() for s in sweep_layers], target_ids[0] if target_ids else None, names
            )
            titles = [f"{e.extras['layer']} ({e.extras['class_name']})" for e in explanations]
            files.append(str(plots.save_panel(shown, explanations, out_dir / "sweep.png", titles=titles)))
        else:
            explanations = cnn.explain_cnn(
                model,
                x,
                method,
                target_ids or None,
                layer,
                names,
                n_steps=steps or 50,
                ig_baseline=cnn.black_baseline(size) if baseline == "black" else None,
            )
            if len(explanations) == 1:
                files.append(str(save_png(panel(shown, explanations[0]), out_dir / f"{method}.png")))
            else:
                titles = [f"{e.extras['class_name']} (p={e.extras['probability']:.3f})" for e in explanations]
                files.append(
                    str(plots.save_panel(shown, explanations, out_dir / f"{method}.png", titles=titles))
                )
                iou = cnn.overlap_matrix(explanations, fraction=0.2)
                payload["overlap_iou_top20"] = iou.tolist()
                files.append(
                    str(plots.save_overlap(shown, explanations, iou, out_dir / f"{method}-overlap.png"))
                )
        payload["explanations"] = [_explanation_json(e) for e in explanations]
        payload["files"] = files
        if as_json:
            print_json(payload)
            return
        for explanation in explanations:
            out.print(
                f"[bold]{explanation.method}[/] {explanation.target}: score {explanation.score:.4f}"
                f"  ({explanation.forward_passes} forward / {explanation.backward_passes} backward passes,"
                f" {explanation.seconds:.2f} s)",
                highlight=False,
            )
        if "overlap_iou_top20" in payload:
            out.print(f"IoU of top-20% regions: {np.round(payload['overlap_iou_top20'], 3).tolist()}")
        if method == "counterfactual":
            extras = explanations[0].extras
            out.print(
                f"{extras['source_name']} -> {extras['target_name']}: "
                f"{'verified' if extras['verified'] else 'NOT reached'} after {extras['steps_taken']} steps; "
                f"8-bit image p(target)={extras['final_probabilities']['target']:.3f}, "
                f"largest change {extras['linf_levels']} levels"
            )
        out.print("wrote " + ", ".join(files), highlight=False)

    @app.command("explain-text-classifier")
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
        from counterclip.explainers.classic import plots
        from counterclip.explainers.classic.text_classifier import (
            explain_text_ig,
            explain_text_lime,
            load_text_classifier,
        )
        from counterclip.report import panel, save_png

        _choice(method, TEXT_CHOICES, "--method")
        if not text.strip():
            raise InputError("the text to explain is empty")
        if steps < 1 or samples < 10:
            raise InputError("--steps must be at least 1 and --samples at least 10")
        model, tokenizer = load_text_classifier(model_source)
        explanations = []
        if method in ("ig", "both"):
            explanations.append(explain_text_ig(model, tokenizer, text, target, n_steps=steps))
        if method in ("lime", "both"):
            explanations.append(
                explain_text_lime(model, tokenizer, text, target, num_samples=samples, seed=seed)
            )
        files = []
        out_dir.mkdir(parents=True, exist_ok=True)
        for explanation in explanations:
            files.append(str(save_png(panel(_blank(), explanation), out_dir / f"{explanation.method}.png")))
        html_path = out_dir / "tokens.html"
        html_path.write_text(plots.token_html(explanations, title=text), encoding="utf-8")
        files.append(str(html_path))
        if as_json:
            print_json(
                {
                    "text": text,
                    "model": model_source,
                    "explanations": [_explanation_json(e) for e in explanations],
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
                f"[bold]{explanation.method}[/] {explanation.target} = {explanation.score:.4f}"
                + (f" (convergence delta {note:+.2e})" if note is not None else ""),
                highlight=False,
            )
            out.print(pairs, highlight=False)
        out.print("wrote " + ", ".join(files), highlight=False)

    @app.command("explain-tabular")
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
        compare_model: str = typer.Option(
            "linear", "--compare-model", help="compare: the second model kind."
        ),
        target_class: str = typer.Option(None, "--target-class", help="Classifiers: the class to explain."),
        grid: int = typer.Option(100, "--grid", help="Grid points per feature."),
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
        from counterclip.explainers.classic import plots, tabular

        _choice(method, TABULAR_CHOICES, "--method")
        if (csv_path is None) == (dataset is None):
            raise InputError("give either --csv FILE --target COLUMN or --dataset NAME")
        if csv_path is not None:
            if target is None:
                raise InputError("--csv needs --target COLUMN (the column to predict)")
            data = tabular.load_csv(csv_path, target, task)
        else:
            data = tabular.load_bundled(dataset)
        for feature in features or []:
            data.feature_index(feature)
        model = tabular.fit_model(data, model_kind, seed=seed)
        files: list[str] = []
        if method == "lime":
            explanations = [
                tabular.explain_lime_tabular(model, data, row, target_class, num_samples=samples, seed=seed)
            ]
            files.append(str(plots.save_lime_bars(explanations[0], out_dir / f"lime-row{row}.png")))
        else:
            wanted = 2 if method == "pdp-2d" else 1
            if len(features or []) != wanted:
                raise InputError(
                    f"--method {method} needs {wanted} --feature option(s), got {len(features or [])}"
                )
            kind = "both" if method == "ice" else "average"
            explanations = [
                tabular.explain_partial_dependence(
                    model,
                    data,
                    features,
                    kind=kind,
                    centered=centered,
                    grid_resolution=grid,
                    target_class=target_class,
                )
            ]
            labels = None
            if method == "compare":
                other = tabular.fit_model(data, compare_model, seed=seed)
                explanations.append(
                    tabular.explain_partial_dependence(
                        other,
                        data,
                        features,
                        centered=centered,
                        grid_resolution=grid,
                        target_class=target_class,
                    )
                )
                labels = [model_kind, compare_model]
            stem = f"{method}-{'-'.join(_safe(f) for f in features)}"
            figure = plots.pdp_figure(explanations, labels=labels)
            files.append(str(plots.save_figure(figure, out_dir / f"{stem}.png")))
        payload = {
            "data": data.source,
            "task": data.task,
            "rows": int(data.X.shape[0]),
            "model": model_kind,
            "explanations": [_explanation_json(e, drop=("individual",)) for e in explanations],
            "files": files,
        }
        if as_json:
            print_json(payload)
            return
        for explanation in explanations:
            subject = f"row {row}" if explanation.method == "lime" else ", ".join(explanation.feature_names)
            out.print(
                f"[bold]{explanation.method}[/] {subject}: {explanation.target}, "
                f"score {explanation.score:.4f} ({explanation.seconds:.2f} s)",
                highlight=False,
            )
            if explanation.method == "lime":
                for text, weight in explanation.extras["conditions"][:8]:
                    out.print(f"  {weight:+.4f}  {text}", highlight=False)
        out.print("wrote " + ", ".join(files), highlight=False)


def _n_outputs(model: Any, x: Any) -> int:
    """Number of classes the model outputs for one input."""
    import torch

    from counterclip.explainers.classic.layers import scoped_eval

    with scoped_eval(model), torch.no_grad():
        return int(model(x).shape[1])


def _blank() -> Any:
    """A 1x1 white image: `report.panel` draws only the token strip when the explanation has no pixel map."""
    from PIL import Image

    return Image.new("RGB", (1, 1), "white")


def _safe(name: str) -> str:
    """A feature name usable in a file name."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)

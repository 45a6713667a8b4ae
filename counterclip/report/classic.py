"""Figures for the classical explainers: multi-map panels, class-overlap figure, token-strip HTML,
partial dependence / ICE (scikit-learn's ``PartialDependenceDisplay``), LIME bars, and the counterfactual
trajectory; and the files of each ``explain-cnn`` / ``explain-text-classifier`` / ``explain-tabular`` run
(``write_*_result``). Single overlays, panels and token strips come from `counterclip.report.images` so
every explainer's pictures look alike. Matplotlib runs on the Agg backend; nothing is shown on screen.
"""

from __future__ import annotations

import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from counterclip.explainers.base import Explanation
from counterclip.explainers.classic.cnn import top_region_mask
from counterclip.explainers.classic.cnn_runs import OVERLAP_FRACTION, CnnResult
from counterclip.explainers.classic.tabular import TabularResult
from counterclip.explainers.figure import (
    FIGURE_CSS,
    MapFigure,
    MapScale,
    Tile,
    explanation_figure,
    map_title_for,
    overlay,
    tokens_html,
)
from counterclip.report.files import save_png, write_bytes_atomic, write_text_atomic


def _pyplot():
    """Matplotlib's pyplot on the Agg backend (set per call, never at import)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_panel(
    image: Image.Image,
    explanations: Sequence[Explanation],
    path: str | Path,
    titles: Sequence[str] | None = None,
    suptitle: str = "",
) -> Path:
    """The input image and one titled overlay per explanation side by side, each with its colour bar and
    its flags (empty map, random weights), saved as PNG (`counterclip.explainers.figure.MapFigure`)."""
    shown = image.convert("RGB")
    figure = MapFigure(suptitle or "; ".join(dict.fromkeys(e.explains for e in explanations)))
    figure.notes += sorted({flag for e in explanations for flag in e.flags() if flag.startswith("random")})
    figure.tiles.append(Tile("the image", shown))
    for position, explanation in enumerate(explanations):
        values = np.asarray(explanation.pixel_map, dtype=np.float64)
        scale = MapScale.of(values)
        title = (
            titles[position]
            if titles
            else map_title_for(explanation.explains, explanation.extras.get("p_match"))
        )
        figure.tiles.append(Tile(title, overlay(shown, values, scale=scale), scale))
    return figure.save(path)


def save_overlap(
    image: Image.Image,
    explanations: Sequence[Explanation],
    iou: np.ndarray,
    path: str | Path,
    fraction: float = 0.2,
) -> Path:
    """Top-``fraction`` regions of several class maps in one picture (one colour per class), plus IoUs."""
    plt = _pyplot()
    colours = np.array([[1.0, 0.1, 0.1], [0.1, 0.4, 1.0], [0.1, 0.8, 0.2], [1.0, 0.8, 0.0], [0.8, 0.2, 0.9]])
    base = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0 * 0.5
    tint = np.zeros_like(base)
    counts = np.zeros(base.shape[:2])
    empty = [MapScale.of(e.pixel_map).state == "empty" for e in explanations]
    for index, explanation in enumerate(explanations):
        if empty[index]:  # an empty map has no top region: nothing to draw, nothing to overlap
            continue
        mask = top_region_mask(explanation.pixel_map, fraction)
        tint[mask] += colours[index % len(colours)]
        counts += mask
    shown = np.where(counts[..., None] > 0, base + 0.5 * tint / np.maximum(counts, 1)[..., None], base)
    figure, axes = plt.subplots(1, 2, figsize=(8, 4))
    axes[0].imshow(np.clip(shown, 0, 1))
    axes[0].set_title(f"top {fraction:.0%} regions", fontsize=9)
    axes[0].axis("off")
    labels = [
        e.extras.get("class_name", e.explains) + (" (empty map)" if empty[i] else "")
        for i, e in enumerate(explanations)
    ]
    shown_iou = np.array(iou, dtype=np.float64)
    for i, blank in enumerate(empty):
        if blank:
            shown_iou[i, :] = np.nan
            shown_iou[:, i] = np.nan
    axes[1].imshow(np.nan_to_num(shown_iou, nan=0.0), vmin=0, vmax=1, cmap="viridis")
    axes[1].set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    axes[1].set_yticks(range(len(labels)), labels, fontsize=8)
    for i in range(len(labels)):
        for j in range(len(labels)):
            cell = "n/a" if np.isnan(shown_iou[i, j]) else f"{shown_iou[i, j]:.2f}"
            axes[1].text(j, i, cell, ha="center", va="center", color="white", fontsize=9)
    axes[1].set_title(
        f"IoU of top-{fraction:.0%} regions" + (" (n/a: an empty map has no region)" if any(empty) else ""),
        fontsize=9,
    )
    return _save(figure, path)


def save_counterfactual(image: Image.Image, explanation: Explanation, path: str | Path) -> Path:
    """Original, edited (8-bit) image, difference map and the probability trajectory of both classes."""
    plt = _pyplot()
    extras = explanation.extras
    figure, axes = plt.subplots(1, 4, figsize=(15, 3.8))
    axes[0].imshow(image)
    axes[0].set_title(f"original: {extras['source_name']}", fontsize=9)
    axes[1].imshow(extras["edited_image"])
    verdict = "verified" if extras["verified"] else "NOT reached"
    axes[1].set_title(f"edited ({verdict}): {extras['target_name']}", fontsize=9)
    shown = axes[2].imshow(explanation.pixel_map, cmap="magma")
    axes[2].set_title(f"|difference| (max {extras['linf_levels']} levels)", fontsize=9)
    figure.colorbar(shown, ax=axes[2], fraction=0.046)
    for axis in axes[:3]:
        axis.axis("off")
    steps = range(len(extras["trajectory"]["p_source"]))
    axes[3].plot(steps, extras["trajectory"]["p_source"], label=f"p({extras['source_name']})")
    axes[3].plot(steps, extras["trajectory"]["p_target"], label=f"p({extras['target_name']})")
    axes[3].set_xlabel("step")
    axes[3].set_ylabel("probability")
    axes[3].legend(fontsize=8)
    return _save(figure, path)


def token_html(explanations: Sequence[Explanation], title: str = "") -> str:
    """A self-contained HTML page with one word row per explanation, in the one visual language: colours
    on a scale centred at zero whose floor is a tenth of the change explained (`token_floor`), so
    attributions that are tiny beside the score stay pale; a colour bar and its reading per row."""
    parts = [
        "<!doctype html><html lang='en'><meta charset='utf-8'>",
        f"<title>{html.escape(title or 'token attributions')}</title>",
        f"<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}}{FIGURE_CSS}</style>",
        f"<h1>{html.escape(title)}</h1>" if title else "",
    ]
    for explanation in explanations:
        delta = explanation.extras.get("convergence_delta")
        note = f", convergence delta {delta:+.2e}" if delta is not None else ""
        parts.append(
            f"<h2>{html.escape(explanation.method)}: {html.escape(explanation.explains)}</h2>"
            f"<p>score {explanation.score:.4f}{html.escape(note)}</p>"
        )
        row = explanation_figure(explanation).tokens
        if row is not None:
            parts.append(tokens_html(row))
    return "\n".join(parts) + "\n"


def pdp_figure(explanations: Explanation | Sequence[Explanation], labels: Sequence[str] | None = None) -> Any:
    """``PartialDependenceDisplay`` of one PD/ICE explanation, or several models' PDPs on one axes.

    Args:
        explanations: from `explain_partial_dependence`; several must share the feature(s) and kind.
        labels: legend entries, one per explanation (model names) when comparing.

    Returns:
        The matplotlib ``Figure``.
    """
    from sklearn.inspection import PartialDependenceDisplay

    plt = _pyplot()
    items = [explanations] if isinstance(explanations, Explanation) else list(explanations)
    figure, axis = plt.subplots(figsize=(6, 4.5))
    target_axes: Any = axis
    limits = None
    if len(items) > 1 and all("average" in e.extras and len(e.feature_names) == 1 for e in items):
        # One shared y-range, or the first model's range clips the others' curves.
        values = np.concatenate([np.ravel(e.extras["average"]) for e in items])
        if any(e.extras["centered"] for e in items):
            values = np.concatenate([np.ravel(e.extras["average"] - e.extras["average"][0]) for e in items])
        pad = 0.05 * (values.max() - values.min() + 1e-12)
        limits = {1: (float(values.min() - pad), float(values.max() + pad))}
    for position, explanation in enumerate(items):
        extras = explanation.extras
        indices = extras["feature_indices"]
        drawing = extras["display"].value
        display = PartialDependenceDisplay(
            [drawing["pd_result"]],
            features=[tuple(indices)],
            feature_names=drawing["feature_names"],
            target_idx=extras["target_index"],
            deciles=drawing["deciles"],
            kind=extras["kind"],
            is_categorical=[tuple(drawing["is_categorical"])],
            random_state=0,
        )
        line_kw = {"label": labels[position], "color": f"C{position}"} if labels else None
        if extras["kind"] == "average":
            display.plot(ax=target_axes, centered=extras["centered"], line_kw=line_kw, pdp_lim=limits)
        else:
            display.plot(ax=target_axes, centered=extras["centered"], pd_line_kw=line_kw, pdp_lim=limits)
        target_axes = display.axes_
        categories = extras.get("categories") or {}
        if len(explanation.feature_names) == 1 and explanation.feature_names[0] in categories:
            # scikit-learn labels the bars with the ordinal codes; show the category names instead.
            levels = categories[explanation.feature_names[0]]
            codes = [int(code) for code in extras["grid_values"][0]]
            ax = np.ravel(target_axes)[0]
            ax.set_xticks(codes, [levels[code] for code in codes], rotation=30, ha="right")
    if labels:
        for ax in np.ravel(target_axes):
            ax.legend(fontsize=8)
    _title(figure, target_axes, items[0])
    return figure


def _title(figure: Any, axes: Any, first: Explanation) -> None:
    """What the plot shows, in the data's own words: the prediction (and its mean), by which feature."""
    if len(first.feature_names) == 1:  # the curve's values are the prediction itself: say which
        np.ravel(axes)[0].set_ylabel(f"mean {first.explains}", fontsize=8)
        figure.suptitle(f"{first.explains} by {first.feature_names[0]}", fontsize=10)
    else:
        figure.suptitle(first.explains, fontsize=10)


def save_lime_bars(explanation: Explanation, path: str | Path, top: int = 12) -> Path:
    """Horizontal bars of LIME's strongest conditions for a tabular row."""
    plt = _pyplot()
    conditions = sorted(explanation.extras["conditions"], key=lambda item: abs(item[1]), reverse=True)[:top][
        ::-1
    ]
    figure, axis = plt.subplots(figsize=(7, 0.4 * len(conditions) + 1.2))
    axis.barh(
        [text for text, _ in conditions],
        [weight for _, weight in conditions],
        color=["tab:green" if weight >= 0 else "tab:red" for _, weight in conditions],
    )
    axis.set_xlabel("LIME weight")
    axis.set_title(
        f"row {explanation.extras['row']}: {explanation.explains} = {explanation.score:.3f}", fontsize=9
    )
    return _save(figure, path)


def save_figure(figure: Any, path: str | Path) -> Path:
    """Save a matplotlib figure as PNG and close it."""
    return _save(figure, path)


def _save(figure: Any, path: str | Path) -> Path:
    plt = _pyplot()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return write_bytes_atomic(path, buffer.getvalue())


def write_cnn_result(result: CnnResult, shown: Image.Image, out_dir: str | Path) -> list[Path]:
    """The PNG files of one ``explain-cnn`` run, in ``out_dir``.

    ``counterfactual``: ``edited.png`` (the 8-bit edited image) and ``counterfactual.png``; ``sweep``:
    ``sweep.png``; ``maps``: ``METHOD.png`` (a panel, or one overlay per class) and, for several classes,
    ``METHOD-overlap.png``.
    """
    out_dir = Path(out_dir)
    explanations = result.explanations
    if result.flow == "counterfactual":
        [edited] = explanations
        return [
            save_png(edited.extras["edited_image"], out_dir / "edited.png"),
            save_counterfactual(shown, edited, out_dir / "counterfactual.png"),
        ]
    if result.flow == "sweep":
        titles = [f"{e.extras['layer']} ({e.extras['class_name']})" for e in explanations]
        return [save_panel(shown, explanations, out_dir / "sweep.png", titles=titles)]
    method = explanations[0].method
    if len(explanations) == 1:
        return [explanation_figure(explanations[0], shown).save(out_dir / f"{method}.png")]
    titles = [f"{e.extras['class_name']} (p={e.extras['probability']:.3f})" for e in explanations]
    files = [save_panel(shown, explanations, out_dir / f"{method}.png", titles=titles)]
    if result.overlap is not None:
        files.append(
            save_overlap(
                shown, explanations, result.overlap, out_dir / f"{method}-overlap.png", OVERLAP_FRACTION
            )
        )
    return files


def write_token_result(explanations: Sequence[Explanation], text: str, out_dir: str | Path) -> list[Path]:
    """The files of one ``explain-text-classifier`` run: ``METHOD.png`` (a token strip) per explanation,
    and ``tokens.html`` with every strip."""
    out_dir = Path(out_dir)
    files = [explanation_figure(e).save(out_dir / f"{e.method}.png") for e in explanations]
    files.append(write_text_atomic(out_dir / "tokens.html", token_html(explanations, title=text)))
    return files


def write_tabular_result(result: TabularResult, out_dir: str | Path) -> list[Path]:
    """The figure of one ``explain-tabular`` run: ``lime-rowN.png`` or ``METHOD-FEATURE[-FEATURE].png``."""
    out_dir = Path(out_dir)
    request = result.request
    if request.method == "lime":
        return [save_lime_bars(result.explanations[0], out_dir / f"lime-row{request.row}.png")]
    labels = result.models if request.method == "compare" else None
    stem = f"{request.method}-{'-'.join(_safe(f) for f in request.features)}"
    return [save_figure(pdp_figure(result.explanations, labels=labels), out_dir / f"{stem}.png")]


def _safe(name: str) -> str:
    """A feature name usable in a file name."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)

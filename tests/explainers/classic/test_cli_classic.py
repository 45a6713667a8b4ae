"""CLI: explain-cnn, explain-text-classifier, explain-tabular (files, JSON values, error paths with exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from classic_doubles import write_houses
from PIL import Image

from counterclip.cli import run
from counterclip.explainers.classic import explain_partial_dependence, fit_model, load_bundled


@pytest.fixture(scope="module")
def cnn_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A random 3-class ResNet-18 state dict (safetensors), a labels file and a small image."""
    from safetensors.torch import save_file

    directory = tmp_path_factory.mktemp("cnn_cli")
    torch.manual_seed(0)
    save_file(
        torchvision.models.resnet18(weights=None, num_classes=3).state_dict(),
        str(directory / "r18.safetensors"),
    )
    (directory / "labels.txt").write_text("cat\ndog\nfox\n")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)).save(directory / "img.png")
    return {
        "weights": directory / "r18.safetensors",
        "labels": directory / "labels.txt",
        "image": directory / "img.png",
    }


def _cnn_args(files: dict[str, Path], out: Path) -> list[str]:
    return [
        "explain-cnn",
        str(files["image"]),
        "--weights",
        str(files["weights"]),
        "--labels",
        str(files["labels"]),
        "--size",
        "32",
        "--out",
        str(out),
    ]


def test_explain_cnn_compares_classes(cnn_files, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # layer3 of this random network gives non-empty maps at 32 px: each map's top region is itself
    args = [*_cnn_args(cnn_files, tmp_path), "--target", "cat", "--target", "fox", "--json"]
    assert run([*args, "--layer", "layer3"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [e["extras"]["class_name"] for e in payload["explanations"]] == ["cat", "fox"]
    iou = np.array(payload["overlap_iou_top20"], dtype=float)
    assert iou.shape == (2, 2) and np.allclose(np.diag(iou), 1.0) and np.allclose(iou, iou.T)
    # layer4's maps are all zero here (ReLU of negative evidence): no region, so no IoU, and said so
    assert run(args) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["overlap_iou_top20"] == [[None, None], [None, None]]
    assert any(flag.startswith("empty map") for flag in payload["flags"])
    assert {Path(f).name for f in payload["files"]} == {"gradcam.png", "gradcam-overlap.png"}
    assert all(Path(f).is_file() for f in payload["files"])


def test_explain_cnn_counterfactual_and_sweep(
    cnn_files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        run(
            [
                *_cnn_args(cnn_files, tmp_path),
                "--method",
                "counterfactual",
                "--target",
                "dog",
                "--steps",
                "3",
                "--json",
            ]
        )
        == 0
    )
    payload = json.loads(capsys.readouterr().out)
    [result] = payload["explanations"]
    assert result["method"] == "pixel-cf" and isinstance(result["extras"]["verified"], bool)
    assert "edited_image" not in result["extras"] and (tmp_path / "edited.png").is_file()
    assert run([*_cnn_args(cnn_files, tmp_path), "--sweep", "auto", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [e["extras"]["layer"] for e in payload["explanations"]] == ["layer1", "layer2", "layer3", "layer4"]


def test_explain_cnn_list_layers(cnn_files, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        run(
            ["explain-cnn", "--weights", str(cnn_files["weights"]), "--list-layers", "--size", "32", "--json"]
        )
        == 0
    )
    listing = json.loads(capsys.readouterr().out)
    model = torchvision.models.resnet18(weights=None, num_classes=3)
    assert [row["name"] for row in listing] == [name for name, _ in model.named_modules() if name]
    assert listing[-1] == {"name": "fc", "type": "Linear", "output_shape": [1, 3]}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--layer", "layer9"], "error: unknown layer name 'layer9' for ResNet"),
        (["--target", "zebra"], "error: target class 'zebra' names no single class"),
        (["--method", "lrp"], "error: LRP does not support BasicBlock"),
        (["--method", "shap"], "error: unknown --method 'shap'"),
        (["--method", "ig", "--baseline", "white"], "error: unknown --baseline 'white'"),
    ],
)
def test_explain_cnn_errors_exit_2(
    cnn_files, tmp_path, extra, message, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run([*_cnn_args(cnn_files, tmp_path), *extra]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(message) and len(error.splitlines()) == 1


def test_explain_cnn_needs_weights(cnn_files, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["explain-cnn", str(cnn_files["image"])]) == 2
    assert "--weights FILE" in capsys.readouterr().err


def test_explain_text_classifier(
    tiny_bert_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "explain-text-classifier",
        "the movie was good",
        "--model",
        str(tiny_bert_dir),
        "--out",
        str(tmp_path),
    ]
    assert run([*args, "--method", "both", "--samples", "60", "--steps", "16", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    ig, lime = payload["explanations"]
    assert ig["tokens"] == ["[CLS]", "the", "movie", "was", "good", "[SEP]"] and lime["tokens"] == [
        "the",
        "movie",
        "was",
        "good",
    ]
    # Captum's delta is sum(attributions) - (f(input) - f(baseline)); the JSON must carry all three consistently.
    change = ig["score"] - ig["extras"]["baseline_score"]
    assert sum(ig["token_map"]) == pytest.approx(change + ig["extras"]["convergence_delta"], abs=1e-4)
    page = (tmp_path / "tokens.html").read_text()
    assert page.count('<span class="cc-tok') == 6 + 4 and (tmp_path / "ig.png").is_file()
    assert run([*args, "--target", "NEUTRAL"]) == 2
    assert "unknown target label 'NEUTRAL'" in capsys.readouterr().err


def test_explain_tabular_pdp_json_equals_library(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        run(
            [
                "explain-tabular",
                "--dataset",
                "diabetes",
                "--feature",
                "bmi",
                "--grid",
                "20",
                "--out",
                str(tmp_path),
                "--json",
            ]
        )
        == 0
    )
    payload = json.loads(capsys.readouterr().out)
    data = load_bundled("diabetes")
    expected = explain_partial_dependence(
        fit_model(data, "random-forest", seed=0), data, ["bmi"], grid_resolution=20
    )
    [pdp] = payload["explanations"]
    np.testing.assert_array_equal(pdp["extras"]["average"], expected.extras["average"])
    assert Path(payload["files"][0]).name == "pdp-bmi.png" and Path(payload["files"][0]).is_file()


@pytest.mark.parametrize(
    ("args", "out_name"),
    [
        (
            ["--dataset", "breast_cancer", "--method", "lime", "--row", "3", "--samples", "300"],
            "lime-row3.png",
        ),
        (
            ["--dataset", "diabetes", "--method", "compare", "--feature", "bmi", "--grid", "10"],
            "compare-bmi.png",
        ),
        (
            [
                "--dataset",
                "wine",
                "--method",
                "pdp-2d",
                "--feature",
                "alcohol",
                "--feature",
                "proline",
                "--grid",
                "6",
            ],
            "pdp-2d-alcohol-proline.png",
        ),
    ],
)
def test_explain_tabular_methods_write_figures(tmp_path: Path, args: list[str], out_name: str) -> None:
    assert run(["explain-tabular", *args, "--model", "gradient-boosting", "--out", str(tmp_path)]) == 0
    assert (tmp_path / out_name).is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "price", "--feature", "garden"], "error: feature 'garden' is not in houses.csv"),
        (["--target", "city", "--task", "regression"], "error: target column 'city' is not numeric"),
        (["--target", "cost"], "error: target column 'cost' is not in houses.csv"),
        (["--target", "price", "--method", "pdp"], "error: --method pdp needs 1 --feature"),
    ],
)
def test_explain_tabular_csv_errors_exit_2(
    tmp_path, args, message, capsys: pytest.CaptureFixture[str]
) -> None:
    houses = write_houses(tmp_path / "houses.csv")
    assert run(["explain-tabular", "--csv", str(houses), *args, "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(message) and len(error.splitlines()) == 1


def test_cli_choices_are_the_libraries_methods() -> None:
    from counterclip.cli import classic
    from counterclip.explainers.classic.cnn_runs import CNN_RUN_METHODS
    from counterclip.explainers.classic.tabular import TABULAR_METHODS
    from counterclip.explainers.classic.text_classifier import TEXT_METHODS

    assert (classic.CNN_CHOICES, classic.TEXT_CHOICES, classic.TABULAR_CHOICES) == (
        CNN_RUN_METHODS,
        TEXT_METHODS,
        TABULAR_METHODS,
    )

"""`eval quality` and `counterfactual --quality`: the card aggregated over a shapes query set with the
baselines and the truth, and the CLI that prints it (the library computes, the CLI parses and prints)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from counterclip.cli import run
from counterclip.evaluation.quality import METHODS, TRUTH, evaluate_quality, separation_auc
from counterclip.evaluation.quality_maps import evaluate_map_quality, mass_on_object
from counterclip.quality import QUALITIES


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from counterclip.index_builder import build_index
    from counterclip.shapes import generate_folder, vocabulary

    root = tmp_path_factory.mktemp("quality-eval")
    generate_folder(root / "shapes", n=150, seed=4, size=64)
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(vocabulary()) + "\n", encoding="utf-8")
    build_index(
        root / "shapes", root / "idx", model="bundled:shapes", vocab=vocab, device="cpu", progress=False
    )
    return root


def test_separation_auc_and_mass_on_object_by_hand() -> None:
    assert separation_auc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert separation_auc([0.1], [0.9]) == 0.0
    assert separation_auc([0.5], [0.5]) == 0.5
    assert separation_auc([], [0.5]) is None
    cells = np.zeros((4, 4))
    cells[0, 0], cells[3, 3] = 3.0, -1.0
    assert mass_on_object(cells, (0, 0, 10, 10), (64, 64)) == pytest.approx(0.75)  # the top-left cell only
    assert mass_on_object(cells, (0, 0, 64, 64), (64, 64)) == pytest.approx(1.0)


def test_the_answers_aggregate_beside_the_baselines_with_the_truth(site) -> None:
    from counterclip.engine import Engine

    with Engine.open(site / "idx", device="cpu") as engine:
        report = evaluate_quality(engine, site / "shapes" / "labels.jsonl", n_queries=3, seed=1, k=3)
    assert report["truth"] == TRUTH
    for side in ("image_side", "text_side"):
        section = report[side]
        assert section["queries"] == 3
        assert set(section["methods"]) <= set(METHODS) and "gradient_path" in section["methods"]
        ours = section["methods"]["gradient_path"]
        assert set(QUALITIES) <= set(ours["card"]) and ours["answers"] > 0
        assert 0 <= ours["truth"]["changed"] <= 5
        assert set(section["agreement"]) == set(QUALITIES) and section["agreement"]["faithfulness"] is None
        for method, pair in section["paired"].items():
            assert 0 <= pair["same_item"] <= pair["queries"] <= 3
            assert set(pair) == {"queries", "same_item", "gradient_path", method}


def test_paired_comparison_uses_only_queries_both_answered() -> None:
    from counterclip.evaluation.quality import _paired
    from counterclip.quality import Measure, QualityCard

    def card(value):
        measure = Measure(value, "d", True)
        return QualityCard("s", measure, measure, measure, measure, measure)

    def row(method, item_id, value, complete):
        return {"method": method, "id": item_id, "card": card(value), "truth": {"complete": complete}}

    rows = [
        [row("gradient_path", 4, 1.0, True), row("nearest_unlike_neighbour", 4, 1.0, True)],
        [row("gradient_path", 5, 0.8, True), row("nearest_unlike_neighbour", 6, 0.4, False)],
        [row("gradient_path", 8, 0.0, False)],  # the baseline gave nothing: left out of the pairing
        [row("nearest_unlike_neighbour", 7, 0.9, True)],  # the engine gave nothing: left out too
    ]
    paired = _paired(rows)
    assert set(paired) == {"nearest_unlike_neighbour"}
    pair = paired["nearest_unlike_neighbour"]
    assert pair["queries"] == 2 and pair["same_item"] == 1
    assert pair["gradient_path"]["card"]["completeness"] == pytest.approx(0.9)
    assert pair["nearest_unlike_neighbour"]["card"]["completeness"] == pytest.approx(0.7)
    assert pair["gradient_path"]["truth"]["complete"] == 1.0
    assert pair["nearest_unlike_neighbour"]["truth"]["complete"] == 0.5


def test_relevance_maps_beat_random_maps_on_faithfulness_and_stability() -> None:
    from counterclip.models import load_model

    report = evaluate_map_quality(
        load_model("bundled:shapes", device="cpu"), n=3, seed=0, methods=["relevance"]
    )
    relevance, random = (report["methods"][m]["card"] for m in ("relevance", "random"))
    for quality in ("faithfulness", "stability", "understandability"):
        assert relevance[quality]["value"] > random[quality]["value"], quality
    assert report["methods"]["relevance"]["mass_on_object"] > report["methods"]["random"]["mass_on_object"]


def test_counterfactual_quality_prints_a_short_block_and_json_has_it_all(site, capsys) -> None:
    image = str(site / "shapes" / "000000.png")
    base = [
        "counterfactual",
        str(site / "idx"),
        "--image",
        image,
        "--text",
        "a red circle",
        "-k",
        "2",
        "--device",
        "cpu",
    ]
    assert run(base) == 0
    plain = capsys.readouterr().out
    assert "quality of the" not in plain
    assert run([*base, "--quality"]) == 0
    shown = capsys.readouterr().out
    assert "quality of the" in shown and "extra forward" in shown
    for quality in QUALITIES:
        assert quality in shown
    assert run([*base, "--quality", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["quality"]["answers"]) == len(data["items"])
    assert data["quality"]["forward_passes"] > 0


def test_eval_quality_command(site, capsys) -> None:
    labels = str(site / "shapes" / "labels.jsonl")
    args = ["eval", "quality", "--index", str(site / "idx"), "--labels-file", labels, "--n-queries", "2"]
    assert run([*args, "--maps", "1", "--side", "image", "--json", "--device", "cpu"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "image_side" in data["answers"] and "text_side" not in data["answers"]
    assert set(data["maps"]["methods"]) == {"relevance", "random"}
    assert run([*args, "--maps", "0", "--side", "text", "--device", "cpu"]) == 0
    shown = capsys.readouterr().out
    assert "text side: 2 queries" in shown and "agreement" in shown
    assert "queries both answered" in shown
    assert run([*args, "--side", "sideways"]) == 2

"""Golden-value regression tests: fixed queries on a seeded shapes index and fixed maps, with the
values the code gave when they were recorded (``pytest -m regression``; kept out of the default run).

They hold refactors to identical answers: the same ids in the same order, the same scores and
thresholds to 4 decimals, the same maps to 4 decimals. After a change that is *meant* to move them,
re-record with ``COUNTERCLIP_UPDATE_GOLDENS=1 python -m pytest -m regression tests/regression`` and say
why in the commit message.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.regression

GOLDENS = Path(__file__).with_name("goldens.json")
UPDATE = os.environ.get("COUNTERCLIP_UPDATE_GOLDENS") == "1"
DECIMALS = 4


def _round(value):
    if isinstance(value, float):
        return round(value, DECIMALS)
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_round(v) for v in value]
    return value


def _check(name: str, got) -> None:
    got = _round(got)
    stored = json.loads(GOLDENS.read_text()) if GOLDENS.is_file() else {}
    if UPDATE:
        stored[name] = got
        GOLDENS.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
        return
    assert name in stored, f"no golden for {name}; record with COUNTERCLIP_UPDATE_GOLDENS=1"
    assert got == stored[name]


@pytest.fixture(scope="module")
def shapes_engine(tmp_path_factory):
    from counterclip.engine import Engine
    from counterclip.index_builder import build_index
    from counterclip.shapes import generate_folder, read_labels, vocabulary

    base = tmp_path_factory.mktemp("golden")
    folder = base / "shapes"
    generate_folder(folder, n=300, seed=11)
    vocab = base / "vocab.txt"
    vocab.write_text("\n".join(vocabulary()) + "\n")
    build_index(folder, base / "idx", model="bundled:shapes", vocab=vocab, progress=False, device="cpu")
    with Engine.open(base / "idx", device="cpu") as engine:
        yield engine, read_labels(folder)


def _summary(result) -> dict:
    return {
        "threshold": result.validity.threshold,
        "best": result.validity.best,
        "typical": result.validity.typical,
        "original": result.validity.original,
        "items": [[i.id, i.score_after, i.distance] for i in result.items],
        "baselines": {k: [[i.id, i.score_after] for i in v] for k, v in sorted(result.baselines.items())},
        "path_values": result.path_values,
    }


QUERIES = [
    ("image-increase-colour", {"image": 1, "text": "a large blue circle on the left", "mode": "increase"}),
    ("image-increase-shape", {"image": 5, "text": "a red square", "mode": "increase"}),
    ("image-decrease", {"image": 9, "text": "a red circle", "mode": "decrease"}),
    (
        "text-decrease",
        {"image": 3, "text": "a small green triangle at the top", "side": "text", "mode": "decrease"},
    ),
    ("text-increase", {"image": 4, "text": "a purple cross", "side": "text", "mode": "increase"}),
    (
        "flip",
        {
            "image": 7,
            "mode": "flip",
            "labels": ["a circle", "a square", "a triangle", "a cross"],
            "target": "a cross",
        },
    ),
]


@pytest.mark.parametrize("name,query", QUERIES, ids=[q[0] for q in QUERIES])
def test_counterfactual_goldens(shapes_engine, name, query):
    engine, _ = shapes_engine
    result = engine.counterfactuals(k=5, **query)
    _check(f"counterfactual/{name}", _summary(result))


def test_search_goldens(shapes_engine):
    engine, _ = shapes_engine
    by_text = engine.search(text="a small yellow star", k=5)
    by_image = engine.search(image=12, k=5)
    captions = engine.search(text="a blue square", k=5, collection="captions")
    _check(
        "search",
        {
            "text": [[i.id, i.score_after] for i in by_text.items],
            "image": [[i.id, i.score_after] for i in by_image.items],
            "captions": [[i.id, i.text, i.score_after] for i in captions.items],
        },
    )


MAPS = [
    ("relevance", {"modality": "both"}),
    ("gradcam", {}),
    ("ig", {"modality": "both", "steps": 8}),
    ("lime", {"modality": "image", "num_samples": 60, "seed": 0}),
    ("pixel-cf", {"steps": 5}),
]


@pytest.mark.parametrize("method,options", MAPS, ids=[m[0] for m in MAPS])
def test_map_goldens(method, options):
    from counterclip.explainers import explain
    from counterclip.models import load_model
    from counterclip.shapes import ShapeAttrs, render

    model = load_model("bundled:shapes", device="cpu")
    image, _ = render(ShapeAttrs("triangle", "green", "large", "left", "dark"), np.random.default_rng(1))
    exp = explain(model, image, "a large green triangle on the left", method=method, **options)
    got = {"score": exp.score}
    if exp.patch_map is not None:
        got["patch_map"] = np.asarray(exp.patch_map, dtype=np.float64).round(DECIMALS).tolist()
    if exp.token_map is not None:
        got["tokens"] = list(exp.tokens)
        got["token_map"] = np.asarray(exp.token_map, dtype=np.float64).round(DECIMALS).tolist()
    _check(f"map/{method}", got)


FULL_QUERIES = [
    ("image-increase", {"image": 2, "text": "a small red square at the top", "mode": "increase"}),
    ("image-decrease", {"image": 6, "text": "a green triangle", "mode": "decrease"}),
    ("text-increase", {"image": 8, "text": "a blue circle", "side": "text", "mode": "increase"}),
    (
        "text-decrease",
        {"image": 10, "text": "a yellow star on the right", "side": "text", "mode": "decrease"},
    ),
    (
        "flip",
        {
            "image": 13,
            "mode": "flip",
            "labels": ["a red shape", "a green shape", "a blue shape"],
            "target": "a blue shape",
        },
    ),
    ("by-file", {"image": "FILE:15", "text": "a large purple cross", "mode": "increase"}),
]


def _full(result) -> dict:
    """The whole answer as the API returns it, less the timings and the query's machine-specific paths."""
    got = result.to_dict()
    got.pop("timings")
    image = got["query"].get("image")
    if isinstance(image, dict) and "path" in image:
        image["path"] = Path(image["path"]).name
    return got


@pytest.mark.parametrize("name,query", FULL_QUERIES, ids=[q[0] for q in FULL_QUERIES])
def test_counterfactual_full_goldens(shapes_engine, name, query):
    """Whole results (verdicts, p(match), warnings, word edits, baselines, stale) pinned before the
    engine became a pipeline of stages: the move must change nothing a user sees."""
    engine, _ = shapes_engine
    query = dict(query)
    if isinstance(query["image"], str) and query["image"].startswith("FILE:"):
        item_id = int(query["image"].removeprefix("FILE:"))
        query["image"] = engine.index.root / engine.index.images.meta([item_id])[0]["path"]
    _check(f"counterfactual-full/{name}", _full(engine.counterfactuals(k=5, **query)))

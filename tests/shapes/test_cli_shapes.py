"""`counterclip shapes generate` and `counterclip eval model` through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from counterclip.cli import run
from counterclip.shapes import COLOURS, HOLDOUT, POSITIONS, SHAPES, SIZES, parse_caption, read_labels


def test_generate_writes_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "shapes"
    assert run(["shapes", "generate", str(out), "--n", "5", "--seed", "2", "--size", "48"]) == 0
    records = read_labels(out)
    assert [r["file"] for r in records] == [f"{i:06d}.png" for i in range(5)]
    assert sorted(p.name for p in out.glob("*.txt")) == [f"{i:06d}.txt" for i in range(5)]
    assert "wrote 5 images" in capsys.readouterr().out


def test_generate_holdout_only(tmp_path: Path) -> None:
    assert run(["shapes", "generate", str(tmp_path), "--n", "9", "--seed", "0", "--holdout-only"]) == 0
    assert all((r["shape"], r["colour"]) in HOLDOUT for r in read_labels(tmp_path))


def test_vocabulary_names_every_one_attribute_change(tmp_path: Path) -> None:
    out = tmp_path / "vocab.txt"
    assert run(["shapes", "vocabulary", str(out)]) == 0
    texts = out.read_text().splitlines()
    assert len(texts) == len(set(texts))
    parsed = {tuple(sorted(parse_caption(t).items())) for t in texts}
    # every full (size, colour, shape, position) combination is there, so every one-attribute change is
    full = {p for p in parsed if len(p) == 4 and "background" not in dict(p)}
    assert len(full) == len(SIZES) * len(COLOURS) * len(SHAPES) * len(POSITIONS)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n", "0", "--seed", "1"], "--n must be at least 1"),
        (["--n", "2", "--seed", "1", "--size", "8"], "--size"),
    ],
)
def test_generate_rejects_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert run(["shapes", "generate", str(tmp_path / "x"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_eval_model_json(tiny_openclip: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        run(
            [
                "eval",
                "model",
                "--model",
                tiny_openclip,
                "--n",
                "12",
                "--seed",
                "3",
                "--json",
                "--batch-size",
                "5",
            ]
        )
        == 0
    )
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["seed"] == 3 and metrics["seen"]["n"] == 12 and metrics["heldout"]["n"] == 12
    assert set(metrics["seen"]["zero_shot"]) == {"shape", "colour", "size", "position", "background"}
    assert all(0.0 <= v <= 1.0 for v in metrics["seen"]["zero_shot"].values())
    assert metrics["n_candidates"] == 300 and isinstance(metrics["fingerprint"], str)


def test_eval_model_table(tiny_openclip: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["eval", "model", "--model", tiny_openclip, "--n", "4", "--seed", "0"]) == 0
    text = capsys.readouterr().out
    assert "zero-shot position" in text and "full caption top-1" in text


def test_eval_model_rejects_bad_n(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["eval", "model", "--model", "bundled:shapes", "--n", "0"]) == 2
    assert "--n must be at least 1" in capsys.readouterr().err

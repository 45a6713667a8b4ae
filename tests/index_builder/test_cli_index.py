"""`counterclip build / update / info`: JSON summaries with the same numbers as the index, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ibhelpers import make_folder

from counterclip.cli import run
from counterclip.index_builder import Index


def test_build_update_info_json(
    tiny_openclip: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "photos"
    make_folder(root, 5)
    (root / "bad.png").write_bytes(b"")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("a cat\n")
    index_dir = tmp_path / "idx"
    argv = ["build", str(root), "--index", str(index_dir), "--model", tiny_openclip, "--device", "cpu"]
    assert run([*argv, "--vocab", str(vocab), "--batch-size", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["indexed"], summary["skipped"], summary["captions"]) == (5, 1, 1)
    assert summary["errors"] == [{"path": "bad.png", "reason": "empty file (0 bytes)"}]
    assert summary["index_dir"] == str(index_dir) and summary["seconds"] > 0

    make_folder(root, 2, start=50)
    assert run(["update", str(index_dir), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["added"], summary["embedded"], summary["indexed"]) == (2, 2, 7)

    assert run(["info", str(index_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    with Index.open(index_dir) as idx:
        assert info["images"] == idx.images.count == 7
        assert info["fingerprint"] == idx.fingerprint and info["model"] == tiny_openclip
    assert info["faiss"]["images"]["recall_at_10"] == 1.0 and info["faiss"]["images"]["kind"] == "flat"
    assert info["skipped"] == 1 and info["errors"][0]["path"] == "bad.png"
    assert info["size_on_disk_bytes"] > 0 and info["last_run"]["added"] == 2

    assert run(["info", str(index_dir)]) == 0  # human form
    text = capsys.readouterr().out
    assert "7 indexed, 1 skipped" in text and "recall@10 1.000" in text

    assert run(argv) == 0  # build again: an update with nothing to do
    assert "0 embedded" in capsys.readouterr().out


def test_cli_errors_are_one_line(
    tiny_openclip: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["info", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no index at") and len(err.splitlines()) == 1
    assert (
        run(["build", str(tmp_path / "nope"), "--index", str(tmp_path / "idx"), "--model", tiny_openclip])
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "photos").mkdir()
    bad = ["build", str(tmp_path / "photos"), "--index", str(tmp_path / "idx"), "--model", tiny_openclip]
    assert run([*bad, "--index-kind", "Bogus9"]) == 2
    assert "invalid FAISS index kind 'Bogus9'" in capsys.readouterr().err

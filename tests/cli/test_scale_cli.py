"""CLI of the scale commands: build --shard + merge, export, import (and its one-line errors, exit 2)."""

from __future__ import annotations

import json

import numpy as np

from counterclip.cli import run
from counterclip.index_builder import Index


def test_shard_merge_export_import_from_the_cli(tmp_path, tiny_openclip, capsys) -> None:
    from counterclip.shapes import generate_folder

    generate_folder(tmp_path / "f", n=9, seed=4, size=48)
    for i in range(2):
        assert (
            run(
                [
                    "build",
                    str(tmp_path / "f"),
                    "--index",
                    str(tmp_path / f"p{i}"),
                    "--model",
                    tiny_openclip,
                    "--shard",
                    f"{i}/2",
                    "--device",
                    "cpu",
                    "--json",
                ]
            )
            == 0
        )
    capsys.readouterr()
    assert (
        run(
            [
                "merge",
                str(tmp_path / "idx"),
                str(tmp_path / "p0"),
                str(tmp_path / "p1"),
                "--json",
                "--memory-budget",
                "1GB",
            ]
        )
        == 0
    )
    merged = json.loads(capsys.readouterr().out)
    assert merged["indexed"] == 9 and merged["images_index"]["io"] == "mmap"
    assert (
        run(
            [
                "export",
                str(tmp_path / "idx"),
                "--format",
                "clip-retrieval",
                "--out",
                str(tmp_path / "cr"),
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["rows"] == 9
    assert (
        run(
            [
                "import",
                str(tmp_path / "cr"),
                "--index",
                str(tmp_path / "imp"),
                "--model",
                tiny_openclip,
                "--device",
                "cpu",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["with_file"] == 9
    with Index.open(tmp_path / "idx") as a, Index.open(tmp_path / "imp") as b:
        np.testing.assert_allclose(a.images.vectors(a.images.ids), b.images.vectors(b.images.ids), atol=2e-3)
    # bad input: one line naming the file, exit 2, nothing written
    np.save(tmp_path / "cr/img_emb/img_emb_0.npy", np.load(tmp_path / "cr/img_emb/img_emb_0.npy")[:, :3])
    assert (
        run(
            [
                "import",
                str(tmp_path / "cr"),
                "--index",
                str(tmp_path / "bad"),
                "--model",
                tiny_openclip,
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "img_emb_0.npy: vectors of width 3" in err and not (tmp_path / "bad").exists()
    assert run(["build", str(tmp_path / "f"), "--index", str(tmp_path / "x"), "--shard", "2/2"]) == 2
    assert "--shard must be i/N" in capsys.readouterr().err

"""Damaged files: each data file of an index truncated, zeroed, garbled or deleted. Every read gives a
one-line error naming the file or the right answer (never a silent wrong score), `check` names the
file, a plain update refuses, and `update --repair` restores an index equal to a clean build."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ibhelpers import (
    DAMAGE_MODES,
    SMALL_SHARDS,
    assert_no_debris,
    assert_same_index,
    damage,
    make_folder,
    snapshot,
)

from counterclip.cli import run
from counterclip.errors import IndexDamagedError
from counterclip.index_builder import Index, build_index, check_index, update_index
from counterclip.index_builder.checksums import checksum_file
from counterclip.index_builder.manifest import Manifest, manifest_name

TARGETS = {  # what is damaged -> how to find its name in the manifest
    "items": lambda m: m.db_file,
    "images-faiss": lambda m: m.faiss_file("images"),
    "captions-faiss": lambda m: m.faiss_file("captions"),
    "image-vectors": lambda m: "embeddings/images-00001.npy",
    "image-ids": lambda m: "embeddings/images-00001.ids.npy",
    "caption-vectors": lambda m: "embeddings/captions-00000.npy",
    "manifest": lambda m: "manifest.json",
    "generation-manifest": lambda m: manifest_name(m.generation),
}


def answers(index_dir: Path) -> dict[str, Any]:
    """A reader's answers over the whole index: every vector, a search for each, all metadata."""
    with Index.open(index_dir) as idx:
        vectors = idx.images.vectors(idx.images.ids)
        dist, labels = idx.images.search(vectors, 4)
        cvec = idx.captions.vectors(idx.captions.ids)
        cdist, clabels = idx.captions.search(vectors, 2)
        return {
            "meta": idx.images.meta(idx.images.ids),
            "vectors": vectors,
            "search": (np.round(dist, 5), labels, np.round(cdist, 5), clabels),
            "captions": (idx.captions.meta(idx.captions.ids), cvec),
            "errors": idx.errors(),
        }


def same_answers(a: dict[str, Any], b: dict[str, Any]) -> bool:
    arrays = [a["vectors"], *a["search"], a["captions"][1]]
    others = [b["vectors"], *b["search"], b["captions"][1]]
    return (
        a["meta"] == b["meta"]
        and a["captions"][0] == b["captions"][0]
        and a["errors"] == b["errors"]
        and all(np.array_equal(x, y) for x, y in zip(arrays, others, strict=True))
    )


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, model) -> tuple[Path, Path, dict, dict]:
    root = tmp_path_factory.mktemp("photos")
    make_folder(root, 20)
    (root / "img0002.txt").write_text("two on a sidecar\n")
    (root / "empty.png").write_bytes(b"")
    vocab = root.parent / "vocab.txt"
    vocab.write_text("a cat\na dog\n")
    index_dir = tmp_path_factory.mktemp("pristine") / "idx"
    build_index(root, index_dir, model=model, vocab=vocab, progress=False, config=SMALL_SHARDS)
    return root, index_dir, answers(index_dir), snapshot(index_dir)


@pytest.mark.parametrize("mode", DAMAGE_MODES)
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_damaged_file(pristine, tmp_path: Path, target: str, mode: str) -> None:
    _, source, expected_answers, expected = pristine
    index_dir = tmp_path / "idx"
    shutil.copytree(source, index_dir)
    name = TARGETS[target](Manifest.read(index_dir))
    damage(index_dir / name, mode, seed=len(target))

    try:  # a reader: the right answer or an error naming the file
        got = answers(index_dir)
    except IndexDamagedError as exc:
        assert name in str(exc) and len(str(exc).splitlines()) == 1, str(exc)
    else:
        assert same_answers(got, expected_answers), "a silent wrong answer"

    report = check_index(index_dir)  # fsck names the file
    assert name in report.damaged, report.damaged

    if name == "manifest.json" and mode == "delete":  # only the switch is gone: update restores it
        assert update_index(index_dir, progress=False).warnings[0].startswith("manifest.json was missing")
    else:
        with pytest.raises(IndexDamagedError) as info:
            update_index(index_dir, progress=False)
        assert name in str(info.value)
        summary = update_index(index_dir, progress=False, repair=True)
        assert name in summary.repaired
    assert check_index(index_dir).ok
    assert_same_index(snapshot(index_dir), expected, same_ids=True)
    assert_no_debris(index_dir)


def _rewrite_manifest_checksum(index_dir: Path, name: str) -> None:
    """Record the current bytes of ``name`` as if they were right (damage before the checksum was taken)."""
    manifest = Manifest.read(index_dir)
    files = dict(manifest.files)
    files[name] = checksum_file(index_dir / name).to_dict()
    dataclasses.replace(manifest, files=files).write(index_dir)


def test_garbled_vectors_are_an_error_even_with_a_matching_checksum(pristine, tmp_path: Path) -> None:
    """Defence in depth: a FAISS file whose stored vectors are garbled cannot rank with absurd scores,
    and a garbled shard row is refused on read, even if the garbage had been checksummed."""
    _, source, _, _ = pristine
    index_dir = tmp_path / "idx"
    shutil.copytree(source, index_dir)
    manifest = Manifest.read(index_dir)
    faiss_file = index_dir / manifest.faiss_file("images")
    data = bytearray(faiss_file.read_bytes())
    vectors_at = len(data) - 8 * 20 - 8 - 20 * 32 * 4  # IDMap2 tail: ids; before it the flat codes
    data[vectors_at + 64 : vectors_at + 96] = b"\x7e" * 32  # huge floats in one stored vector
    faiss_file.write_bytes(bytes(data))
    _rewrite_manifest_checksum(index_dir, manifest.faiss_file("images"))
    with Index.open(index_dir) as idx, pytest.raises(IndexDamagedError, match="returned the score"):
        idx.images.search(idx.images.vectors(idx.images.ids), 3)

    shard = "embeddings/images-00000.npy"
    damage(index_dir / shard, "garble", seed=3)
    _rewrite_manifest_checksum(index_dir, shard)
    with Index.open(index_dir) as idx, pytest.raises(IndexDamagedError, match="not unit length"):
        idx.images.vectors(idx.images.ids)


def test_check_and_repair_from_the_command_line(
    pristine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, source, _, expected = pristine
    index_dir = tmp_path / "idx"
    shutil.copytree(source, index_dir)
    assert run(["check", str(index_dir)]) == 0
    assert "no damage found" in capsys.readouterr().out
    name = Manifest.read(index_dir).faiss_file("images")
    damage(index_dir / name, "garble")
    assert run(["check", str(index_dir)]) == 2
    captured = capsys.readouterr()
    assert f"damaged    {name}: checksum mismatch" in captured.out
    assert captured.err.strip().startswith("error:") and len(captured.err.strip().splitlines()) == 1
    for argv in (
        ["search", str(index_dir), "--text", "a cat"],
        ["info", str(index_dir)],
        ["update", str(index_dir)],
    ):
        assert run(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert name in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert run(["update", str(index_dir), "--repair", "--json"]) == 0
    assert name in capsys.readouterr().out
    assert run(["check", str(index_dir), "--json"]) == 0
    assert '"ok": true' in capsys.readouterr().out
    assert_same_index(snapshot(index_dir), expected, same_ids=True)

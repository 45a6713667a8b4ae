"""A folder with every kind of hard and broken file: good ones indexed with the right pixels, bad ones
reported with their reason, nothing stops the build."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from ibhelpers import NON_UTF8_NAME, SMALL_SHARDS, inject_permission_error, make_hard_folder

from counterclip.index_builder import Index, build_index

# Pillow warns about the 169-megapixel bomb before the builder refuses it; the refusal is what is tested.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, model) -> tuple[Path, Path, dict, object]:
    root = tmp_path_factory.mktemp("hard")
    expected = make_hard_folder(root)
    index_dir = tmp_path_factory.mktemp("idx") / "hard.idx"
    with pytest.MonkeyPatch.context() as monkeypatch:
        if os.geteuid() == 0:  # root can read mode-000 files: inject the error a user would get
            inject_permission_error(monkeypatch, {root / "bad/unreadable.jpg"})
        summary = build_index(root, index_dir, model=model, progress=False, config=SMALL_SHARDS)
    return root, index_dir, expected, summary


def test_at_least_fifteen_kinds(built) -> None:
    _, _, expected, _ = built
    assert len(expected["good"]) + len(expected["bad"]) >= 30
    assert len(expected["bad"]) >= 12


def test_every_bad_file_is_reported_with_its_reason(built) -> None:
    _, index_dir, expected, summary = built
    reported = {e["path"]: e["reason"] for e in summary.errors}
    assert set(reported) == set(expected["bad"])
    for rel, reason in expected["bad"].items():
        assert reason in reported[rel], (rel, reported[rel])
    assert summary.skipped == len(expected["bad"])
    with Index.open(index_dir) as idx:  # and the same list is stored in items.sqlite
        assert {e["path"]: e["reason"] for e in idx.errors()} == reported


def test_every_good_file_is_indexed_with_the_right_vector(built, model) -> None:
    root, index_dir, expected, summary = built
    assert summary.indexed == len(expected["good"])
    with Index.open(index_dir, model=model) as idx:
        paths = {m["path"]: m for m in idx.images.meta(idx.images.ids)}
        assert set(paths) == set(expected["good"])
        for rel in expected["good"]:
            meta = paths[rel]
            loaded = idx.load_image(rel)
            assert (meta["width"], meta["height"]) == (loaded.width, loaded.height), rel
            assert meta["sha256"] == loaded.sha256
            want = model.encode_images(model.preprocess(loaded.model_input)).numpy()
            np.testing.assert_allclose(idx.images.vectors([meta["id"]])[0], want, atol=1e-5, err_msg=rel)


def test_exif_rotated_image_is_stored_upright(built, model) -> None:
    _, index_dir, expected, _ = built
    with Index.open(index_dir) as idx:
        image_id = idx.image_id_for_path("good/exif_rotated.jpg")
        meta = idx.images.meta([image_id])[0]
        assert (meta["width"], meta["height"]) == (24, 40)
        upright = expected["good"]["good/exif_rotated.jpg"]
        stored = idx.images.vectors([image_id])[0]
        sideways = model.encode_images(model.preprocess(upright.transpose(2))).numpy()  # ROTATE_90
        want = model.encode_images(model.preprocess(upright)).numpy()
        assert float(stored @ want) > float(stored @ sideways)
        assert float(stored @ want) > 0.999


def test_non_utf8_name_round_trips(built) -> None:
    root, index_dir, _, _ = built
    name = "good/" + os.fsdecode(NON_UTF8_NAME)
    with Index.open(index_dir) as idx:
        image_id = idx.image_id_for_path(name)
        assert image_id is not None
        meta = idx.images.meta([image_id])[0]
        assert os.fsencode(meta["path"]) == b"good/" + NON_UTF8_NAME
        assert Path(meta["abs_path"]).read_bytes() == (root / name).read_bytes()
        assert idx.image_id_for_path(meta["abs_path"]) == image_id


def test_hidden_and_looped_paths_are_not_indexed(built) -> None:
    _, index_dir, expected, _ = built
    with Index.open(index_dir) as idx:
        for rel in expected["ignored"]:
            assert idx.image_id_for_path(rel) is None, rel


def test_rebuild_of_a_hard_folder_changes_nothing(built, model) -> None:
    root, index_dir, expected, _ = built
    with pytest.MonkeyPatch.context() as monkeypatch:
        if os.geteuid() == 0:
            inject_permission_error(monkeypatch, {root / "bad/unreadable.jpg"})
        again = build_index(root, index_dir, model=model, progress=False)
    assert (again.embedded, again.added, again.changed, again.removed) == (0, 0, 0, 0)
    assert again.skipped == len(expected["bad"])


def test_a_read_error_is_retried_by_the_next_run(built, model) -> None:
    """Permissions fixed later: the next run indexes the file (reading failures are not final)."""
    root, index_dir, expected, _ = built
    os.chmod(root / "bad/unreadable.jpg", 0o644)
    again = build_index(root, index_dir, model=model, progress=False)
    assert again.embedded == 1 and again.indexed == len(expected["good"]) + 1
    assert "bad/unreadable.jpg" not in {e["path"] for e in again.errors}

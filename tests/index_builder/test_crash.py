"""Crash safety: a real child process killed with SIGKILL mid-build; the re-run resumes from the
completed shards and ends with an index equal to a clean build. A half-written first build is never
opened as valid; a killed update leaves the previous generation readable, unchanged."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ibhelpers import SMALL_SHARDS, assert_no_debris, assert_same_index, make_folder, noise_image, snapshot

from counterclip.errors import IndexFormatError
from counterclip.index_builder import Index, build_index, update_index

CHILD = Path(__file__).with_name("crash_child.py")
N_GOOD = 40


def child(spec: str, folder: Path, index_dir: Path, op: str, mode: str, arg: str) -> subprocess.Popen:
    env = dict(os.environ)
    here = Path(__file__).resolve().parent
    env["PYTHONPATH"] = os.pathsep.join([str(here), str(here.parent), env.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [sys.executable, str(CHILD), spec, str(folder), str(index_dir), op, mode, arg],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def make_photos(root: Path) -> Path:
    make_folder(root, N_GOOD)
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    (root / "img0005.txt").write_text("five\n")
    (root / "img0030.txt").write_text("thirty\nfive\n")
    return root


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory, model) -> tuple[Path, dict]:
    root = make_photos(tmp_path_factory.mktemp("photos"))
    index_dir = tmp_path_factory.mktemp("clean") / "idx"
    build_index(root, index_dir, model=model, progress=False, config=SMALL_SHARDS)
    return root, snapshot(index_dir)


@pytest.mark.parametrize(
    ("mode", "arg", "resumed_embeds"),
    [
        ("after-shard-file", "2", N_GOOD - 8),  # one shard committed, the second written but not committed
        ("mid-shard-file", "4", N_GOOD - 8),  # 4th atomic write (shard 1 vectors) torn mid-write
        ("before-faiss", "1", 0),  # every shard committed
        ("before-manifest", "1", 0),  # everything but the manifest
    ],
)
def test_killed_build_resumes_to_a_clean_build(
    clean, tiny_openclip: str, model, tmp_path: Path, mode: str, arg: str, resumed_embeds: int
) -> None:
    root, expected = clean
    index_dir = tmp_path / "idx"
    proc = child(tiny_openclip, root, index_dir, "build", mode, arg)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    assert "finished" not in out
    with pytest.raises(IndexFormatError, match="incomplete"):
        Index.open(index_dir)
    summary = build_index(root, index_dir, model=model, progress=False)
    assert summary.resumed
    assert summary.embedded == resumed_embeds  # resumed from the completed shards, nothing redone
    assert_same_index(snapshot(index_dir), expected, same_ids=True)
    assert_no_debris(index_dir)


def test_sigkill_from_outside_at_a_random_moment(clean, tiny_openclip: str, model, tmp_path: Path) -> None:
    root, expected = clean
    index_dir = tmp_path / "idx"
    proc = child(tiny_openclip, root, index_dir, "build", "slow", "0.15")
    assert proc.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 120
    while not list((index_dir / "embeddings").glob("images-*.npy")) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    proc.kill()  # SIGKILL
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    with pytest.raises(IndexFormatError):
        Index.open(index_dir)
    summary = build_index(root, index_dir, model=model, progress=False)
    assert summary.resumed and 0 < summary.embedded < N_GOOD
    assert_same_index(snapshot(index_dir), expected, same_ids=True)
    assert_no_debris(index_dir)


def test_killed_update_during_compaction_resumes(tiny_openclip: str, model, tmp_path: Path) -> None:
    root = make_photos(tmp_path / "photos")
    index_dir = tmp_path / "idx"
    build_index(root, index_dir, model=model, progress=False, config=SMALL_SHARDS)
    before = snapshot(index_dir)
    for i in (0, 1, 2, 17, 33):
        (root / f"img{i:04d}.jpg").unlink()
    noise_image(999).save(root / "img0009.jpg")
    make_folder(root, 3, start=500)
    proc = child(tiny_openclip, root, index_dir, "update", "during-compaction", "1")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    with Index.open(index_dir) as idx:  # the killed update never switched: generation 1 as it was
        assert idx.generation == 1
    assert_same_index(snapshot(index_dir), before, same_ids=True)
    summary = update_index(index_dir, progress=False)
    assert summary.resumed and summary.generation == 2
    assert summary.embedded == 0  # the killed run had embedded everything; only the tail was redone
    fresh = tmp_path / "fresh"
    shutil.rmtree(fresh, ignore_errors=True)
    build_index(root, fresh, model=model, progress=False, config=SMALL_SHARDS)
    assert_same_index(snapshot(index_dir), snapshot(fresh), same_ids=False)
    assert_no_debris(index_dir)


def test_debris_of_a_copy_killed_half_way_is_removed(clean, model, tmp_path: Path) -> None:
    """A kill while the items file is being made leaves a temp file and its SQLite journal (found by
    scripts/check_crash.py): the next run is not confused by them and removes them."""
    root, expected = clean
    index_dir = tmp_path / "idx"
    (index_dir / "embeddings").mkdir(parents=True)
    (index_dir / ".lock").write_text("")
    (index_dir / "items-000001.sqlite.tmp").write_bytes(b"SQLite format 3\0 torn")
    (index_dir / "items-000001.sqlite.tmp-journal").write_bytes(b"\xd9\xd5\x05\xf9 torn")
    build_index(root, index_dir, model=model, progress=False, config=SMALL_SHARDS)
    assert_same_index(snapshot(index_dir), expected, same_ids=True)
    assert_no_debris(index_dir)
    # and the same debris beside a complete index is removed by the next update
    (index_dir / "items-000002.sqlite.tmp-journal").write_bytes(b"torn")
    (index_dir / "embeddings/images-00099.npy.tmp").write_bytes(b"torn")
    update_index(index_dir, progress=False)
    assert_no_debris(index_dir)

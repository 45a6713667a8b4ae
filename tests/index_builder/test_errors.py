"""Clear errors: another model, a locked index, a half-written or foreign index, a vanished folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from ibhelpers import SMALL_SHARDS, make_folder

from counterclip.errors import IndexDamagedError, IndexFormatError, IndexLockedError, InputError
from counterclip.index_builder import Index, build_index, update_index
from counterclip.index_builder._fs import WriterLock
from counterclip.models import load_model


@pytest.fixture(scope="module")
def other_model(tmp_path_factory: pytest.TempPathFactory):
    """Same tiny architecture, other weights."""
    from tiny_models import write_tiny_openclip

    config, weights = write_tiny_openclip(tmp_path_factory.mktemp("other"), seed=1)
    return load_model(f"{config}:{weights}", device="cpu")


@pytest.fixture()
def built(tmp_path: Path, model) -> tuple[Path, Path]:
    root = tmp_path / "photos"
    make_folder(root, 6)
    build_index(root, tmp_path / "idx", model=model, progress=False, config=SMALL_SHARDS)
    return root, tmp_path / "idx"


def test_model_mismatch_names_both_models(built, model, other_model) -> None:
    root, index_dir = built
    assert other_model.fingerprint != model.fingerprint
    with pytest.raises(IndexFormatError) as info:
        Index.open(index_dir, model=other_model)
    text = str(info.value)
    assert str(model.spec) in text and str(other_model.spec) in text
    assert model.fingerprint in text and other_model.fingerprint in text
    with pytest.raises(IndexFormatError, match="was built with model"):
        build_index(root, index_dir, model=other_model, progress=False)
    with Index.open(index_dir, model=model) as idx:  # the right model opens it, and the index still works
        assert idx.images.count == 6
        assert load_model(idx.model_spec, device="cpu").fingerprint == idx.fingerprint == model.fingerprint


def test_second_builder_gets_locked_error(built, model) -> None:
    root, index_dir = built
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.ftruncate(fd, 0); os.write(fd, str(os.getpid()).encode())\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n",
            str(index_dir / ".lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(IndexLockedError) as info:
            build_index(root, index_dir, model=model, progress=False)
        assert str(info.value).startswith(
            f"index {index_dir} is locked by another process (pid {holder.pid})"
        )
        with pytest.raises(IndexLockedError):
            update_index(index_dir, progress=False)
        Index.open(index_dir).close()  # readers of a complete index are not blocked
    finally:
        holder.kill()
        holder.wait()
    assert build_index(root, index_dir, model=model, progress=False).indexed == 6  # the lock died with it


def test_open_during_a_first_build_is_a_locked_error(tmp_path: Path) -> None:
    index_dir = tmp_path / "idx"
    (index_dir / "embeddings").mkdir(parents=True)  # what a first build has made before its manifest
    with WriterLock(index_dir), pytest.raises(IndexLockedError, match="building it"):
        Index.open(index_dir)
    with pytest.raises(IndexFormatError, match="not a counterclip index"):
        Index.open(index_dir)


def test_damaged_or_edited_manifest_is_never_opened(built) -> None:
    root, index_dir = built
    pointer = index_dir / "manifest.json"
    manifest = json.loads(pointer.read_text())
    pointer.unlink()  # generation files remain: this is damage, not an interrupted build
    with pytest.raises(
        IndexDamagedError, match="manifest.json is missing; run `counterclip update .* --repair`"
    ):
        Index.open(index_dir)
    # a manifest edited by hand (here: another generation) no longer matches its checksum
    manifest["generation"] += 1
    pointer.write_text(json.dumps(manifest))
    with pytest.raises(IndexDamagedError, match="manifest.json is damaged"):
        Index.open(index_dir)
    manifest["generation"] -= 1
    manifest["format_version"] = 99
    pointer.write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="format version 99"):
        Index.open(index_dir)
    pointer.write_text("{ garbled")
    with pytest.raises(IndexDamagedError, match="manifest.json is damaged"):
        update_index(index_dir, progress=False)  # a plain update refuses to build on damage
    summary = update_index(index_dir, progress=False, repair=True)
    assert summary.indexed == 6 and summary.repaired == ["manifest.json"]
    with Index.open(index_dir) as idx:
        assert idx.images.count == 6 and idx.generation == 2
    pointer.unlink()  # only the switch is missing, every file of generation 2 verifies: update restores it
    summary = update_index(index_dir, progress=False)
    assert summary.warnings == ["manifest.json was missing; restored from manifest-000002.json"]
    with Index.open(index_dir) as idx:
        assert idx.images.count == 6 and idx.generation == 3


def test_not_an_index(tmp_path: Path, model) -> None:
    with pytest.raises(IndexFormatError, match="no index at"):
        Index.open(tmp_path / "missing")
    with pytest.raises(IndexFormatError, match="not a counterclip index"):
        Index.open(tmp_path)
    with pytest.raises(IndexFormatError, match="no index at"):
        update_index(tmp_path / "missing", progress=False)
    (tmp_path / "photos").mkdir()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/thesis.tex").write_text("precious")
    with pytest.raises(InputError, match="is not empty and is not a counterclip index"):
        build_index(tmp_path / "photos", tmp_path / "mine", model=model, progress=False)
    assert (tmp_path / "mine/thesis.tex").read_text() == "precious"
    with pytest.raises(InputError, match="does not exist"):
        build_index(tmp_path / "nope", tmp_path / "idx", model=model, progress=False)


def test_other_folder_and_vanished_folder(built, model, tmp_path: Path) -> None:
    root, index_dir = built
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(InputError, match="was built from"):
        build_index(tmp_path / "elsewhere", index_dir, model=model, progress=False)
    for path in root.iterdir():  # an unmounted drive looks like an empty folder
        path.unlink()
    with pytest.raises(InputError, match="no image files under"):
        update_index(index_dir, progress=False)
    with Index.open(index_dir) as idx:  # nothing lost: the index is still complete
        assert idx.images.count == 6


def test_lock_dies_with_its_process_not_with_forked_children(tmp_path: Path) -> None:
    """A writer killed by SIGKILL frees the lock even while a process it forked (a decode worker) lives on."""
    import os
    import signal
    import time

    read, write = os.pipe()
    writer = os.fork()
    if writer == 0:  # the writer: take the lock, fork a long-lived worker, die
        try:
            WriterLock(tmp_path).acquire()
            worker = os.fork()
            if worker == 0:
                time.sleep(30)
                os._exit(0)
            os.write(write, f"{worker}\n".encode())
        finally:
            os.kill(os.getpid(), signal.SIGKILL)
    os.close(write)
    worker = int(os.read(read, 64).decode())
    os.close(read)
    os.waitpid(writer, 0)
    try:
        os.kill(worker, 0)  # still alive
        WriterLock(tmp_path).acquire().release()  # raises IndexLockedError if the worker kept the lock
    finally:
        os.kill(worker, signal.SIGKILL)

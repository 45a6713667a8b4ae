"""Full disks, read-only file systems and permission errors: one line naming the index (and the space
needed), exit status 2, no traceback; the interrupted run resumes to an index equal to a clean build,
and the generation readers use stays readable throughout.

The real full disk is a small tmpfs mounted by the test (root only; skipped with the reason otherwise);
the other cases inject the error and run anywhere."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from ibhelpers import SMALL_SHARDS, assert_no_debris, assert_same_index, make_folder, snapshot

from counterclip.cli import run
from counterclip.errors import AccessDeniedError, DiskFullError, IndexFormatError
from counterclip.index_builder import Index, budget, build_index, update_index


def error_line(stderr: str) -> str:
    """The one line a failed command prints besides its progress bars (which end with the run)."""
    lines = [line for line in stderr.strip().splitlines() if "━" not in line]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def _mount(directory: Path, options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)], capture_output=True, text=True
    )


@pytest.fixture()
def small_disk(tmp_path: Path):
    """A 160 kB tmpfs (unmounted afterwards); ``remount(options)`` changes its size or makes it read-only."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    directory = tmp_path / "disk"
    directory.mkdir()
    done = _mount(directory, "size=160k")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")

    def remount(options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(directory)], check=True)

    try:
        yield directory, remount
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def test_full_disk_build_and_update(small_disk, tiny_openclip: str, model, tmp_path: Path, capsys) -> None:
    disk, remount = small_disk
    root = tmp_path / "photos"
    make_folder(root, 60)
    index_dir = disk / "idx"
    argv = ["build", str(root), "--index", str(index_dir), "--model", tiny_openclip, "--device", "cpu"]
    assert run([*argv, "--config", "exact"]) == 2
    err = error_line(capsys.readouterr().err)
    assert err.startswith(f"error: disk full: index {index_dir} needs about "), err
    assert "MB are free" in err and err.endswith("free space and run the same build again to resume")
    with pytest.raises(IndexFormatError, match="incomplete"):
        Index.open(index_dir)

    remount("size=32m")  # space freed: the same run resumes
    summary = build_index(root, index_dir, model=model, progress=False, config="exact")
    assert summary.resumed and summary.indexed == 60
    clean = tmp_path / "clean"
    build_index(root, clean, model=model, progress=False, config="exact")
    assert_same_index(snapshot(index_dir), snapshot(clean))

    # an update that runs out of space leaves the generation readers use as it was
    before = snapshot(index_dir)
    reader = Index.open(index_dir)
    make_folder(root, 40, start=100)
    filler = disk / "filler"
    filler.write_bytes(b"\0" * (shutil.disk_usage(disk).free - 48 * 1024))
    with pytest.raises(DiskFullError, match="generation 1 stays readable"):
        update_index(index_dir, progress=False)
    assert reader.images.count == 60 and reader.images.search(reader.images.vectors(reader.images.ids), 3)
    assert_same_index(snapshot(index_dir), before)
    filler.unlink()
    summary = update_index(index_dir, progress=False)
    assert summary.indexed == 100 and summary.generation == 2
    reader.close()
    clean = tmp_path / "clean2"
    build_index(root, clean, model=model, progress=False, config="exact")
    assert_same_index(snapshot(index_dir), snapshot(clean), same_ids=False)
    assert_no_debris(index_dir)

    remount("ro")  # readers work on a read-only file system; writers get one line
    with Index.open(index_dir) as idx:
        assert idx.images.count == 100
    make_folder(root, 1, start=900)
    assert run(["update", str(index_dir)]) == 2
    assert "read-only file system" in error_line(capsys.readouterr().err)


@pytest.fixture()
def built(tmp_path: Path, model) -> tuple[Path, Path]:
    root = tmp_path / "photos"
    make_folder(root, 12)
    build_index(root, tmp_path / "idx", model=model, progress=False, config=SMALL_SHARDS)
    return root, tmp_path / "idx"


def test_disk_full_while_writing_faiss(built, model, monkeypatch, capsys, tmp_path: Path) -> None:
    """Injected ENOSPC at the FAISS write (any machine): one line, generation 1 intact, resumable."""
    root, index_dir = built
    before = snapshot(index_dir)
    make_folder(root, 5, start=50)

    def no_space(*args, **kwargs):  # noqa: ANN002, ANN003
        raise OSError(errno.ENOSPC, "No space left on device", str(index_dir / "images-000002.faiss.tmp"))

    monkeypatch.setattr(budget, "write_index_atomic", no_space)  # budget.write_faiss writes the file
    assert run(["update", str(index_dir)]) == 2
    err = error_line(capsys.readouterr().err)
    assert err.startswith(f"error: disk full: index {index_dir} needs about "), err
    assert "generation 1 stays readable" in err and "images-000002.faiss.tmp" in err
    assert_same_index(snapshot(index_dir), before)
    monkeypatch.undo()
    summary = update_index(index_dir, progress=False)
    assert summary.resumed and summary.embedded == 0 and summary.indexed == 17  # embedded before the error
    clean = tmp_path / "clean"
    build_index(root, clean, model=model, progress=False, config=SMALL_SHARDS)
    assert_same_index(snapshot(index_dir), snapshot(clean))


def test_permission_denied_while_writing(built, monkeypatch, capsys) -> None:
    root, index_dir = built
    make_folder(root, 2, start=50)

    def denied(*args, **kwargs):  # noqa: ANN002, ANN003
        raise PermissionError(
            errno.EACCES, "Permission denied", str(index_dir / "embeddings/images-00002.npy")
        )

    monkeypatch.setattr("counterclip.index_builder.shards.atomic_write", denied)
    with pytest.raises(AccessDeniedError, match="permission denied on .*images-00002.npy"):
        update_index(index_dir, progress=False)
    assert run(["update", str(index_dir)]) == 2
    assert "permission denied" in error_line(capsys.readouterr().err)
    with Index.open(index_dir) as idx:
        assert idx.generation == 1 and idx.images.count == 12


def test_any_command_turns_storage_errors_into_one_line(monkeypatch, capsys, tmp_path: Path) -> None:
    """An OSError no library code named (here: writing a vocabulary file) is still one line, exit 2."""
    from counterclip.report import html

    target = tmp_path / "vocab.txt"

    def full(*args, **kwargs):  # noqa: ANN002, ANN003
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(html, "write_text_atomic", full)
    assert run(["shapes", "vocabulary", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: no space left on the device ({target}); free space and run the command again"]
    with pytest.raises(OSError):  # --debug shows the traceback instead
        run(["--debug", "shapes", "vocabulary", str(target)])

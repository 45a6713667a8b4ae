"""``search --print0`` (``-0``): paths ended by NUL bytes, so a file name holding a newline pipes whole;
``--paths`` refuses such a name instead of splitting it."""

from __future__ import annotations

import os

from counterclip.cli import run


def test_print0_keeps_a_name_with_a_newline_whole(tmp_path, capsysbinary) -> None:
    from counterclip.index_builder import build_index
    from counterclip.shapes import generate_folder

    folder = tmp_path / "f"
    generate_folder(folder, n=4, seed=3, size=48)
    first = sorted(p for p in folder.iterdir() if p.suffix == ".png")[0]
    odd = folder / "two\nlines.png"
    first.rename(odd)
    build_index(folder, tmp_path / "idx", model="bundled:shapes", device="cpu", progress=False)
    capsysbinary.readouterr()

    assert run(["search", str(tmp_path / "idx"), "--text", "a red circle", "-k", "4", "-0"]) == 0
    out = capsysbinary.readouterr().out
    names = out.split(b"\0")
    assert names[-1] == b"" and len(names) == 5  # four paths, each ended by NUL
    indexed = sorted(os.fsencode(p) for p in folder.resolve().iterdir() if p.suffix == ".png")
    assert sorted(names[:-1]) == indexed and os.fsencode(odd.resolve()) in names

    assert run(["search", str(tmp_path / "idx"), "--text", "a red circle", "-k", "4", "--paths"]) == 2
    captured = capsysbinary.readouterr()
    assert captured.out == b""
    assert b"holds a newline" in captured.err and b"--print0" in captured.err

    assert (
        run(["search", str(tmp_path / "idx"), "--text", "a red circle", "-k", "1", "--print0", "--json"]) == 2
    )

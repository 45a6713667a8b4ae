"""Caption sources: sidecar ``NAME.txt`` files, a captions file (CSV or JSONL of path, caption), and a
vocabulary (one free caption per line).

Each source yields `CaptionRef` s in a deterministic order; texts are whitespace-normalised so that
duplicates (the same caption for many images, or in two sources) are embedded once.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from counterclip.errors import InputError

SOURCES = ("sidecar", "captions-file", "vocab")


@dataclass(frozen=True)
class CaptionRef:
    """One occurrence of a caption."""

    text: str  # normalised text
    source: str  # "sidecar" | "captions-file" | "vocab"
    image_rel: str | None  # the image it describes (relative path), None for free captions


def normalise(text: str) -> str:
    """Collapse whitespace; the key under which duplicates are embedded once."""
    return " ".join(text.split())


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} {path} is not UTF-8 text: {exc}") from None
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def sidecar_captions(
    root: Path, sidecars: list[tuple[str, str]], stems: dict[str, list[str]]
) -> Iterator[CaptionRef]:
    """Captions from ``NAME.txt`` beside ``NAME.<image ext>`` (one caption per non-empty line).

    Args:
        root: the image folder.
        sidecars: ``(rel_stem, rel_path)`` of the ``.txt`` files the scan found.
        stems: ``rel_stem -> [image rel paths]`` of indexed images.
    """
    for stem, rel in sorted(sidecars, key=lambda s: os.fsencode(s[1])):
        images = stems.get(stem)
        if not images:
            continue
        try:
            text = (root / rel).read_text(encoding="utf-8-sig", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            caption = normalise(line)
            if caption:
                for image in images:
                    yield CaptionRef(caption, "sidecar", image)


def _relative(path_text: str, root: Path) -> str | None:
    if not path_text:
        return None
    path = Path(path_text)
    if path.is_absolute():
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            return path.as_posix()
    return path.as_posix()


def captions_file(path: Path, root: Path) -> Iterator[CaptionRef]:
    """Captions from a CSV (header with ``path`` and ``caption`` columns) or JSONL file
    (``{"path": ..., "caption": ...}`` per line). An empty path makes a free caption."""
    text = _read_text(path, "captions file")
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"captions file {path}, line {number}: invalid JSON ({exc.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("caption", record.get("text")), str):
                raise InputError(
                    f'captions file {path}, line {number}: expected {{"path": ..., "caption": ...}}'
                )
            caption = normalise(record.get("caption", record.get("text")))
            if caption:
                yield CaptionRef(caption, "captions-file", _relative(str(record.get("path") or ""), root))
        return
    reader = csv.DictReader(text.splitlines())
    fields = [f.strip().lower() for f in reader.fieldnames or []]
    if "caption" not in fields or "path" not in fields:
        raise InputError(
            f"captions file {path} needs a header with 'path' and 'caption' columns (found {fields or 'none'}); "
            'or use JSONL lines {"path": ..., "caption": ...}'
        )
    reader.fieldnames = fields
    for row in reader:
        caption = normalise(row.get("caption") or "")
        if caption:
            yield CaptionRef(caption, "captions-file", _relative((row.get("path") or "").strip(), root))


def vocab_file(path: Path) -> Iterator[CaptionRef]:
    """One free caption per non-empty line (lines starting with ``#`` are comments)."""
    for line in _read_text(path, "vocabulary file").splitlines():
        caption = normalise(line)
        if caption and not caption.startswith("#"):
            yield CaptionRef(caption, "vocab", None)

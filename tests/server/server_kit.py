"""Helpers for the server tests: a colour-world engine (no model weights) that records what a built index
records per file, and a live uvicorn server in a thread (keep-alive, concurrency and memory checks)."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from doubles import ArrayCollection, ArrayIndex, ColourModel, colour_vector, make_colour_index
from live_server import ThreadServer, free_port  # noqa: F401 - re-exported for the server tests

pytest.importorskip("fastapi")

from counterclip.engine import Engine, EngineOptions  # noqa: E402

LOCAL = "http://127.0.0.1:8000"  # TestClient base URL: a Host the default allow-list accepts
COLOURS = {0: (90, 90, 200), 1: (200, 60, 60), 2: (250, 20, 20), 3: (100, 100, 220), 4: (20, 200, 20)}


class RecordedImages(ArrayCollection):
    """The colour index's images with what a built index records per file (size, mtime, sha256, pixels)
    and its unknown-id behaviour (KeyError)."""

    def __init__(self, base: ArrayCollection) -> None:
        super().__init__(base.name, base.root, base._table)
        self.recorded: dict[int, dict[str, Any]] = {}
        for item_id, (name, _) in self._table.items():
            path = Path(self.root) / name
            st = path.stat()
            self.recorded[item_id] = {
                "size": st.st_size,
                "mtime": st.st_mtime_ns / 1e9,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "width": 8,
                "height": 8,
            }

    def meta(self, ids) -> list[dict[str, Any]]:
        out = []
        for i in np.asarray(ids, dtype=np.int64).reshape(-1):
            if int(i) not in self._table:
                raise KeyError(f"unknown image id {int(i)}")
            out.append({**super().meta([int(i)])[0], **self.recorded[int(i)]})
        return out


class MetaIndex(ArrayIndex):
    """The colour index whose images carry what a built index records per file."""

    def __init__(self, base: ArrayIndex) -> None:
        self.root, self.dim, self.captions = base.root, base.dim, base.captions
        self.images = RecordedImages(base.images)
        self.calibration = None


class ColourEngine(Engine):
    """The colour engine, plus two texts that misbehave on purpose: "boom" raises an unexpected error,
    "block" waits until `release` is set (to fill the worker pool)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.release = threading.Event()
        self.blocked = threading.Event()

    def search(self, text=None, image=None, k=10, collection="images"):
        if text == "boom":
            raise RuntimeError("a bug, not a user error")
        if text == "block":
            self.blocked.set()
            self.release.wait(30)
            text = "red"
        return super().search(text=text, image=image, k=k, collection=collection)


def make_colour_engine(root: Path) -> ColourEngine:
    texts = {"red": colour_vector((255, 0, 0)), "blue": colour_vector((0, 0, 255))}
    index = MetaIndex(make_colour_index(root, COLOURS))
    return ColourEngine(index, ColourModel(texts), EngineOptions(k=3, diversity=0.0))


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of a process (Linux /proc)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def has_proc() -> bool:
    return os.path.exists("/proc/self/status")

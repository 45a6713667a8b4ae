"""Seconds per stage of one query (the ``timings`` of a result)."""

from __future__ import annotations

import time


class Stopwatch:
    """Laps of one query: ``lap(stage)`` after each stage, ``total()`` at the end."""

    def __init__(self) -> None:
        self.started = self.last = time.perf_counter()
        self.timings: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = now - self.last
        self.last = now

    def total(self) -> dict[str, float]:
        self.timings["total"] = time.perf_counter() - self.started
        return self.timings

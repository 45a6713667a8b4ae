"""``counterclip check`` on an index that reads a vector store: has the store drifted from the side
directory? Its count per collection against the one recorded, and the recorded sample of vectors
(``store-sample.npy``) against what the store holds for the same ids now (gone, or changed: a cosine
below `CHANGED_COS`). An attached collection that the app keeps filling drifts by design: the report says
so and ``counterclip attach`` again records the new state.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from counterclip.index_builder.stores.side import read_sample, read_side
from counterclip.index_builder.stores.uri import open_store

CHANGED_COS = 0.999  # a sampled vector further than this from the recorded one has changed


@dataclass
class StoreCheckReport:
    """What `check_store` found. ``drift`` lists one line per difference (empty: none)."""

    index_dir: str
    kind: str  # "built" or "attached"
    store: str
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # collection -> recorded, now
    sampled: int = 0  # sampled vectors compared
    missing: int = 0  # sampled ids the store no longer holds
    changed: int = 0  # sampled ids whose vector changed
    lowest_cosine: float | None = None  # over the sampled ids still held
    drift: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fix(self) -> str:
        """What to run to bring the side directory back in line."""
        if self.kind == "built":
            return f"run `counterclip update {self.index_dir}` (it fills the store again)"
        return f"run `counterclip attach {self.store} ... --index {self.index_dir}` again"


def check_store(index_dir: str | os.PathLike[str]) -> StoreCheckReport:
    """Compare the stores of ``index_dir`` with its side manifest (see the module docstring).

    Raises:
        IndexFormatError: no or a damaged side manifest.
        StoreUnavailableError: a store that does not answer.
    """
    started, path = time.perf_counter(), Path(index_dir).expanduser().absolute()
    side = read_side(path)
    report = StoreCheckReport(str(path), side.kind, str(side.stores["images"]))
    for kind, uri in side.stores.items():
        if uri is None:
            continue
        store = open_store(uri, side.fields.vector, side.fields.id)
        try:
            recorded, now = side.counts.get(kind, 0), store.count()
            report.counts[kind] = {"recorded": recorded, "now": now}
            if now != recorded:
                report.drift.append(f"{kind}: the store holds {now} items, {recorded} when recorded")
            if kind == "images":
                _compare_sample(report, store, np.asarray(side.sample_ids, dtype=np.int64), read_sample(path))
        finally:
            store.close()
    report.seconds = round(time.perf_counter() - started, 2)
    return report


def _compare_sample(report: StoreCheckReport, store: Any, ids: np.ndarray, recorded: np.ndarray) -> None:
    held = (
        np.array([p is not None for p in store.payloads(ids)], dtype=bool) if len(ids) else np.zeros(0, bool)
    )
    report.sampled, report.missing = len(ids), int((~held).sum())
    if held.any():
        cosines = np.sum(store.fetch(ids[held]) * recorded[held], axis=1)
        report.lowest_cosine = round(float(cosines.min()), 6)
        report.changed = int((cosines < CHANGED_COS).sum())
    if report.missing:
        report.drift.append(
            f"images: {report.missing} of {report.sampled} sampled ids are gone from the store"
        )
    if report.changed:
        report.drift.append(
            f"images: {report.changed} of {report.sampled} sampled vectors changed (lowest cosine "
            f"{report.lowest_cosine:.4f} to the recorded ones)"
        )

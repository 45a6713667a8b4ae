"""The FAISS kind of a collection under a memory budget (autofaiss-style): `plan_index`.

The most exact kind whose index fits the budget, for ``n`` vectors of width ``d``:

- ``Flat`` (exact) while ``n * 4d`` fits (and ``n <= exact_max``);
- ``HNSW{M},Flat`` while its graph and vectors fit (and ``n <= hnsw_max``);
- ``IVF{nlist},PQ{m}x4fs`` with a re-ranking stage: 4-bit product-quantised codes (``m = d / 4``: 4
  dimensions per sub-quantizer) scanned with SIMD lookups (FAISS "fast scan"), then the best candidates
  re-ranked: with the exact vectors (``RFlat``, memory-mapped) when they fit the budget too, else with
  8-bit codes (``Refine(SQ8)``), else with the exact vectors read from disk beyond the budget (coarser
  codes if even the 4-bit ones do not fit). At 1M CLIP-like vectors of width 512 this searched 4-6x
  faster than IVF-SQ8 (one byte per dimension, scanned in full) at the same recall: SQ8's scan is what
  made search cost grow with the collection (``scripts/bench_scale.py``). The re-ranking rows are counted
  in RAM: a server's searches keep touching them, so their pages stay resident;
- above that, ``IVF{nlist},SQ8`` built as IVF shards merged into on-disk inverted lists
  (`faiss.contrib.ondisk.merge_ondisk`), opened read-only: RAM holds the coarse quantizer only.

Every kind but the last is memory-mapped when opened (``IO_FLAG_MMAP_IFC``, faiss >= 1.11): a search
reads the pages it touches. Without a budget the kind follows the size alone
(`faiss_index.choose_factory`) and the file is read into RAM, as before.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any

import faiss

from counterclip.errors import InputError
from counterclip.index_builder.config import IndexCfg
from counterclip.index_builder.faiss_index import choose_factory

HAS_MMAP = hasattr(faiss, "IO_FLAG_MMAP_IFC")  # faiss >= 1.11 maps Flat, SQ, PQ, HNSW codes
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)


def parse_size(text: str | int | None) -> int | None:
    """``"2GB"`` -> 2_000_000_000; also ``1.5G``, ``800MB``, ``512MiB``, a plain number of bytes; None
    stays None.

    Raises:
        InputError: anything else.
    """
    if text is None or isinstance(text, int):
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise InputError(f"invalid memory size {text!r}; use a number with a unit, like 2GB, 800MB or 1.5G")
    value, unit = float(match.group(1)), (match.group(2) or "").lower()
    base = 1024 if "i" in unit else 1000
    power = {"": 0, "b": 0, "k": 1, "m": 2, "g": 3, "t": 4}[unit[:1] if unit[:1] in "kmgt" else ""]
    size = int(value * base**power)
    if size < 1:
        raise InputError(f"invalid memory size {text!r}: it must be positive")
    return size


def format_size(n: int) -> str:
    """Bytes for people: ``1.50 GB``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


@dataclass(frozen=True)
class Plan:
    """The index chosen for a collection under a budget."""

    kind: str  # flat | hnsw | ivf
    factory: str  # FAISS factory string of the index (as `FaissInfo.factory`)
    wrapper: str  # the id map around it: IDMap2 | IDMap | "" (IVF lists carry the ids themselves)
    io: str  # ram | mmap | ondisk: how it is opened
    ram_bytes: int  # estimated RAM of the index when every page is touched (the quantizer only when ondisk)
    disk_bytes: int  # estimated size of its files
    budget: int | None  # the budget of this collection, bytes
    reason: str  # one line: why this kind

    @property
    def built(self) -> str:
        """The factory string given to FAISS."""
        return f"{self.wrapper},{self.factory}" if self.wrapper else self.factory

    def to_dict(self) -> dict[str, Any]:
        return {
            "factory": self.built,
            "ram_bytes": self.ram_bytes,
            "disk_bytes": self.disk_bytes,
            "budget_bytes": self.budget,
            "reason": self.reason,
        }


def nlist_for(n: int, per_root: float = 2.0) -> int:
    """Inverted lists for ``n`` vectors: a power of two near ``per_root * sqrt(n)``, at least 16, and at
    most ``n / 39`` (FAISS wants ~39 training points per centroid)."""
    nlist = 2 ** round(math.log2(max(16.0, per_root * math.sqrt(max(n, 1)))))
    while nlist > 16 and nlist * 39 > n:
        nlist //= 2
    return nlist


def nlist_fast_scan(n: int) -> int:
    """Inverted lists of a fast-scan index: near ``sqrt(n)``, half as many as `nlist_for`. Scanning 4-bit
    codes is cheap, while training and assigning cost grow with the lists (1M vectors of width 512 here:
    1024 lists train and fill in about 25 s, 2048 in about 60 s)."""
    return nlist_for(n, per_root=1.0)


def _fast_scan_m(d: int) -> list[int]:
    """Sub-quantizer counts of a 4-bit fast-scan PQ for width ``d``, most precise first: 4, 8 then 16
    dimensions each (even counts that divide ``d``; the SIMD kernels pair sub-quantizers)."""
    return [d // w for w in (4, 8, 16) if d % w == 0 and d // w >= 2 and (d // w) % 2 == 0]


def plan_index(n: int, d: int, budget: int | None, cfg: IndexCfg, override: str = "auto") -> Plan:
    """The most exact FAISS index for ``n`` vectors of width ``d`` whose RAM fits ``budget`` bytes.

    Args:
        n: vectors in the collection.
        d: their width.
        budget: bytes this collection's index may hold in RAM; None: the size decides (as without a budget).
        cfg: `IndexCfg` (``exact_max``, ``hnsw_max``, ``hnsw_m``).
        override: ``auto`` or a FAISS factory string used as given (its estimate is still recorded).

    Returns:
        Plan.
    """
    mmap = "mmap" if HAS_MMAP and budget is not None else "ram"
    ids = 8 * n  # the id of every vector (IVF lists, or the IDMap)
    if override and override != "auto":
        kind, factory = choose_factory(n, d, cfg, override)
        return Plan(kind, factory, "IDMap2", mmap, n * 4 * d + ids, n * 4 * d + ids, budget, "asked for")
    if budget is None:
        kind, factory = choose_factory(n, d, cfg)
        size = n * 4 * d + 2 * ids if kind != "ivf" else n * d + ids
        return Plan(kind, factory, "IDMap2", "ram", size, size, None, "by size (no memory budget)")
    flat = n * 4 * d + ids
    if n <= cfg.exact_max and flat <= budget:
        return Plan("flat", "Flat", "IDMap", mmap, flat, flat, budget, "exact search fits the budget")
    hnsw = n * (4 * d + 8 * cfg.hnsw_m + 16) + ids
    if n <= cfg.hnsw_max and hnsw <= budget:
        return Plan("hnsw", f"HNSW{cfg.hnsw_m},Flat", "IDMap", mmap, hnsw, hnsw, budget, "HNSW graph fits")
    fast_scan = _plan_fast_scan(n, d, budget, mmap)
    if fast_scan is not None:
        return fast_scan
    nlist = nlist_for(n)
    quantizer = nlist * 4 * d
    sq8 = n * d + ids + quantizer
    return Plan(
        "ivf",
        f"IVF{nlist},SQ8",
        "",
        "ondisk",
        quantizer,
        sq8,
        budget,
        "no compressed index fits: inverted lists on disk, RAM holds the quantizer",
    )


def _plan_fast_scan(n: int, d: int, budget: int, mmap: str) -> Plan | None:
    """A 4-bit fast-scan IVF-PQ with the most exact re-ranking stage that fits ``budget`` (None: none)."""
    nlist_fs = nlist_fast_scan(n)
    ids = 8 * n

    def codes(m: int) -> int:
        """RAM of the fast-scan part: codes (m/2 bytes), the ids in the lists and in the id map (re-ranking
        works on positions), the quantizer."""
        return n * m // 2 + ids + n * 8 + nlist_fs * 4 * d

    # then the re-ranking stage, whose rows a server ends up holding (memory-mapped pages stay resident
    # while searches keep touching them): counted in RAM when they should fit
    m = _fast_scan_m(d)[0]
    for refine, per_row, why in (
        ("RFlat", 4 * d, "exact re-ranking from the vectors, memory-mapped, fits"),
        ("Refine(SQ8)", d, "re-ranking with 8-bit codes fits"),
    ):
        ram = codes(m) + n * per_row
        if ram <= budget:
            reason = f"4-bit PQ{m} codes (fast scan); {why}"
            return Plan("ivf", f"IVF{nlist_fs},PQ{m}x4fs,{refine}", "IDMap", mmap, ram, ram, budget, reason)
    for m in _fast_scan_m(d):
        if codes(m) <= budget:
            return Plan(
                "ivf",
                f"IVF{nlist_fs},PQ{m}x4fs,RFlat",
                "IDMap",
                mmap,
                codes(m),
                codes(m) + n * 4 * d,
                budget,
                f"4-bit PQ{m} codes (fast scan) fit; exact re-ranking from vectors on disk, beyond the budget",
            )
    return None


def collection_budget(total: int | None, n: int, n_other: int) -> int | None:
    """A collection's share of the index budget: in proportion to its vectors."""
    if total is None:
        return None
    return max(1, int(total * n / max(n + n_other, 1)))


def exact_refine(plan: Plan, n: int, d: int, reached: float, cfg: IndexCfg) -> Plan:
    """``plan`` (fast scan re-ranked with 8-bit codes) re-ranked with the exact vectors instead, read from
    disk beyond the budget."""
    ram = plan.ram_bytes - n * d
    reason = (
        f"re-ranking with 8-bit codes reached recall@{cfg.recall_k} {reached:.3f} < {cfg.recall_target}; "
        "exact re-ranking from the vectors on disk, beyond the budget"
    )
    factory = plan.factory.removesuffix("Refine(SQ8)") + "RFlat"
    return replace(plan, factory=factory, ram_bytes=ram, disk_bytes=ram + n * 4 * d, reason=reason)

"""`build_index` and `update_index`: image folder -> index directory, incrementally, resumably, and
beside the generation readers use.

One run, under the writer lock, makes generation G+1 from the current generation G, in stages that
share one `build_state.BuildState` (each stage a module with one job)::

    build_base      1. where the index stands: find G, verify its files against their checksums
                       (``repair``: note the damaged ones instead of stopping)
    build_plan      2. the plan, checks before changes: folder, model (loaded now), recipe, caption
                       files, FAISS kind, decode options, encoder (build_encoder); a refused run has
                       written nothing
    build_work      3. the work generation: items-(G+1).sqlite copied from G's (or resumed), debris of
                       interrupted runs deleted, repairs applied
    build_scan      4. scan and diff: new files pending, changed ones a new id, deleted ones removed
    build_embed     5. decode and embed -> write shards: every pending row, shard by shard (the unit of
                       resume); the embedder may be distributed's (shard sets, Ray)
    build_captions  6. captions: sidecars, captions file, vocabulary; new texts embedded once
    build_compact   7. compaction: shards holding removed rows (and small ones) rewritten
    build_faiss     8. FAISS: each collection's index from its shards (kept when nothing changed)
    build_finalize  9. calibration, checksums, the items file closed, manifest-(G+1).json written and
                       manifest.json switched to it (the atomic moment)
    build_work         old generations no reader holds are removed

A disk that fills up, a permission error or a kill at any moment leaves G readable and the run
resumable: run it again. `interop_import` publishes an imported index through stages 8 and 9.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from counterclip.calibration import Calibration
from counterclip.errors import IndexFormatError, InputError
from counterclip.index_builder._fs import WriterLock
from counterclip.index_builder.budget import parse_size
from counterclip.index_builder.build_base import Base, check_directory, find_base, looks_like_index, meta_view
from counterclip.index_builder.build_captions import sync_captions
from counterclip.index_builder.build_compact import compact_shards
from counterclip.index_builder.build_embed import embed_pending
from counterclip.index_builder.build_encoder import Encoding
from counterclip.index_builder.build_faiss import faiss_indexes
from counterclip.index_builder.build_finalize import generation_counts, index_calibration, publish
from counterclip.index_builder.build_plan import DEFAULT_MODEL, BuildPlan, load_model_first, plan_run
from counterclip.index_builder.build_scan import Scanned, scan_and_diff
from counterclip.index_builder.build_state import BuildRequest, BuildState, now
from counterclip.index_builder.build_work import open_work, retire_old
from counterclip.index_builder.calibrate import fit_on_captions_file
from counterclip.index_builder.config import IndexCfg
from counterclip.index_builder.faiss_index import FaissInfo
from counterclip.index_builder.pipeline import embed_images
from counterclip.index_builder.progress import Progress
from counterclip.index_builder.store import Store
from counterclip.index_builder.stores.publish import (
    check_store_first,
    publish_to_store,
    published_store,
    store_line,
)
from counterclip.models import ClipModel, ModelSpec
from counterclip.models.onnx_common import check_runtime

__all__ = ["DEFAULT_MODEL", "BuildSummary", "build_index", "calibrate_index", "update_index"]


@dataclass
class BuildSummary:
    """What a build or update did. ``to_dict()`` is the ``--json`` output; ``str()`` the human one."""

    index_dir: str  # the index directory
    root: str  # the image folder
    model: str  # model spec string
    fingerprint: str  # model weights fingerprint
    indexed: int  # images in the index now
    skipped: int  # files that could not be indexed (see errors)
    embedded: int  # images embedded by this run
    added: int  # new files found by this run
    changed: int  # files whose content changed (re-embedded under a new id)
    removed: int  # files gone from the folder (removed from every structure)
    unchanged: int  # files already indexed
    captions: int  # distinct captions in the index now
    captions_embedded: int  # captions embedded by this run
    resumed: bool  # this run finished an interrupted one
    seconds: float  # wall time
    images_index: dict[str, Any] = field(default_factory=dict)  # FAISS kind, parameters, recall
    captions_index: dict[str, Any] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)  # [{path, reason}] of skipped files
    warnings: list[str] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)  # scan, decode, embed, write, faiss...
    generation: int = 0  # the generation this run published
    repaired: list[str] = field(default_factory=list)  # damaged files rebuilt (update --repair)
    store: dict[str, Any] | None = None  # build --store: what the store publication did (`publish`)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.store is None:
            del data["store"]
        return data

    def _run_line(self) -> str:
        return _summary_run_line(self)

    def __str__(self) -> str:
        recall_k = self.images_index.get("recall_k", 10)
        recall = self.images_index.get(f"recall_at_{recall_k}")
        lines = [
            f"index {self.index_dir} <- {self.root}",
            f"  model      {self.model} ({self.fingerprint[:12]})",
            f"  images     {self.indexed} indexed, {self.skipped} skipped (could not be read; listed below)"
            if self.skipped
            else f"  images     {self.indexed} indexed",
            f"  this run   {self._run_line()}" + (" (resumed)" if self.resumed else ""),
            f"  captions   {self.captions} ({self.captions_embedded} embedded this run)",
            f"  faiss      {self.images_index.get('factory')} {self.images_index.get('search_params') or ''}"
            + (f" recall@{recall_k} {recall:.3f}" if recall is not None else ""),
            f"  generation {self.generation}"
            + (f" (repaired {', '.join(self.repaired)})" if self.repaired else ""),
            f"  time       {self.seconds:.1f} s",
        ]
        for error in self.errors[:20]:
            lines.append(f"  skipped    {error['path']}: {error['reason']}")
        if len(self.errors) > 20:
            lines.append(f"  ... and {len(self.errors) - 20} more skipped files (see --json)")
        lines += [f"  warning    {w}" for w in self.warnings]
        if self.store is not None:
            lines.append(store_line(self.store))
        return "\n".join(lines)


def _summary_run_line(summary: BuildSummary) -> str:
    """What this run did: the files found, then what became of them (skipped ones counted apart)."""
    found = summary.added + summary.changed
    skipped = max(found - summary.embedded, 0)  # new or changed files that could not be embedded
    parts = [f"{summary.added} new", f"{summary.changed} changed", f"{summary.removed} removed"]
    parts.append(f"{summary.unchanged} unchanged")
    done = f"{summary.embedded} embedded" + (f", {skipped} skipped" if skipped else "")
    return f"{', '.join(parts)} files: {done}"


def build_index(
    folder: str | os.PathLike[str],
    index_dir: str | os.PathLike[str],
    model: str | ModelSpec | ClipModel = DEFAULT_MODEL,
    captions: str | os.PathLike[str] | None = None,
    vocab: str | os.PathLike[str] | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    device: str = "auto",
    index_kind: str = "auto",
    progress: bool = True,
    config: str | os.PathLike[str] | IndexCfg | None = None,
    memory_budget: str | int | None = None,
    embedder: Any = None,
    runtime: str | None = None,
    precision: str | None = None,
    fast_decode: bool | None = None,
    store: str | None = None,
) -> BuildSummary:
    """Embed every image of ``folder`` into the index at ``index_dir`` (created, resumed or updated).

    Re-running on an existing index with the same model brings it up to date like `update_index`; a
    different model is an `IndexFormatError`, another process building it an `IndexLockedError`.

    Args:
        folder: the image folder (scanned recursively; paths are stored relative to it).
        index_dir: the index directory (created when missing).
        model: a model spec string, `ModelSpec` or loaded `ClipModel`. Default: ``bundled:shapes``.
        captions: a CSV (``path,caption``) or JSONL captions file. Default: None (the recorded one, if any).
        vocab: a file of free captions, one per line. Default: None (the recorded one, if any).
        batch_size: images per forward pass. Default: None (the config's, 64 in ``default``).
        workers: decode threads, 0 to decode inline. Default: None (the config's, 2 in ``default``).
        device: ``auto``, ``cpu`` or ``cuda`` (when ``model`` is a spec). Default: ``auto``.
        index_kind: ``auto`` (by size) or a FAISS factory string for the image index. Default: ``auto``.
        progress: show a rich progress bar on stderr. Default: True.
        config: an `IndexCfg`, a recipe name (see `list_index_configs`) or JSON path. Default: None
            (the recorded one for an existing index, else ``default``).
        memory_budget: RAM the FAISS indexes may use (``"2GB"`` or bytes): the kind, memory-mapping and
            on-disk lists follow it (`budget.plan_index`). Default: None (the kind follows the size).
        embedder: what embeds the pending images, called like `pipeline.embed_images` (`distributed`'s
            `ShardSetEmbedder`: from shard sets, `RayEmbedder`: on Ray Data). Default: None (here).
        runtime: ``torch`` or ``onnx`` (extra ``onnx``): what embeds the images and captions; recorded in
            the manifest. Default: None (the recorded one for an existing index, else ``torch``).
        precision: ``onnx`` only: ``fp32``, ``int8-dynamic`` or ``int8-static`` image tower (int8 checked on up
            to 64 of the folder's images, refused below the bars). Default: None (``fp32``, or the recorded).
        fast_decode: shrink large images first (measured; refused below `parity.FAST_DECODE_MIN_COSINE`).
        store: a vector store to fill and search (``lancedb://DIR/TABLE``, ``qdrant://...``); None: FAISS only.

    Examples::

        >>> build_index("photos/", "photos.idx", model="bundled:shapes", progress=False).indexed
        1200
    """
    root = _checked_arguments(folder, runtime, precision)
    overrides = _overrides(batch_size, workers, parse_size(memory_budget), fast_decode)
    return _run(BuildRequest(
        index_dir=Path(index_dir).expanduser().absolute(), root=root, model=model, captions=captions, vocab=vocab,
        device=device, index_kind=index_kind, config=config, overrides=overrides, progress=progress,
        runtime=runtime, precision=precision, embedder=embedder, store=store,  # embedder: distributed.py
    ))  # fmt: skip


def update_index(
    index_dir: str | os.PathLike[str],
    model: str | ModelSpec | ClipModel | None = None,
    captions: str | os.PathLike[str] | None = None,
    vocab: str | os.PathLike[str] | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    device: str = "auto",
    index_kind: str | None = None,
    progress: bool = True,
    config: str | os.PathLike[str] | IndexCfg | None = None,
    repair: bool = False,
    user_calibration: Calibration | None = None,
    runtime: str | None = None,
    precision: str | None = None,
    fast_decode: bool | None = None,
) -> BuildSummary:
    """Bring an index up to date with its recorded folder (or finish an interrupted build), as a new
    generation beside the one readers use.

    New files are added, changed ones re-embedded, deleted ones removed from every structure; ids are
    never reused. Arguments left as None keep the recorded settings (model spec, caption files, index
    kind, config); see `build_index` for their meaning. Every file of the current generation is
    verified first: a damaged one stops the update with an `IndexDamagedError` naming it, unless
    ``repair`` is set.

    Args:
        repair: rebuild what is damaged instead of stopping: FAISS files from the shards, shards from
            the images, the SQLite file from the images; the result equals a clean build. Default: False.
        user_calibration: a calibration to record with the new generation (``counterclip calibrate``);
            later updates keep it. Default: None (keep the recorded one).
        runtime, precision: as in `build_index`. Default: None (the recorded runtime and precision).
        fast_decode: as in `build_index`; it applies only to an index whose first build has not recorded
            its decode yet (afterwards a different choice is ignored with a warning). Default: None.

    Examples::

        >>> update_index("photos.idx", progress=False).added
        12
        >>> update_index("photos.idx", repair=True, progress=False).repaired
        ['images-000003.faiss']
    """
    index_dir = Path(index_dir)
    if not looks_like_index(index_dir):
        raise IndexFormatError(
            f"no index at {index_dir} (run `counterclip build FOLDER --index {index_dir}` first)"
        )
    check_runtime(runtime, precision)
    overrides = {"batch_size": batch_size, "workers": workers, "downscale": fast_decode}
    return _run(BuildRequest(
        index_dir=index_dir.expanduser().absolute(), root=None, model=model, captions=captions, vocab=vocab,
        device=device, index_kind=index_kind, config=config, overrides=overrides, progress=progress,
        repair=repair, user_calibration=user_calibration, runtime=runtime, precision=precision,
    ))  # fmt: skip


def calibrate_index(
    index_dir: str | os.PathLike[str], captions: str | os.PathLike[str], model: ClipModel
) -> Calibration:
    """Fit a calibration on a captions file (``path,caption`` CSV or JSONL) and record it in the index.

    The captions are encoded with ``model`` (which must be the index's: same fingerprint) and are not
    added to the index. The calibration is recorded by an update (a new generation: readers of the
    current one are not disturbed), replaces any earlier one and is kept by later updates.

    Raises:
        InputError: a missing or malformed captions file, too few of its paths in the index.
        IndexFormatError: not an index, or built with another model.
    """
    calibration = fit_on_captions_file(index_dir, captions, model)
    update_index(index_dir, model=model, progress=False, user_calibration=calibration)
    return calibration


def _overrides(batch_size: int | None, workers: int | None, budget: int | None, fast: bool | None) -> dict:
    """The `IndexCfg` fields given as arguments (None: the recipe's or the recorded value)."""
    return {"batch_size": batch_size, "workers": workers, "memory_budget": budget, "downscale": fast}


def _checked_arguments(folder: str | os.PathLike[str], runtime: str | None, precision: str | None) -> Path:
    """The image folder, absolute, once the folder and the runtime are known to work (else a one-line error)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputError(f"image folder {root} does not exist or is not a directory")
    check_runtime(runtime, precision)
    return root.resolve()


# --- the run: the stages in order ---------------------------------------------------------------------
def _run(request: BuildRequest) -> BuildSummary:
    """One build or update under the writer lock; storage failures become one-line errors. With a vector
    store (``--store``, or recorded by an earlier one) the store is checked first and filled last."""
    if request.store is not None:  # a store that does not answer or holds other vectors: refused now
        request = dataclasses.replace(
            request, model=check_store_first(request.store, request.model, request.device)
        )
    state = BuildState(request.index_dir, Progress(request.progress), repair=request.repair)
    encoding = None
    with state.progress:  # from the start: loading the model takes seconds, and says so
        if check_directory(request.index_dir):  # a new index: the model first, so a failure leaves nothing
            with state.progress.step("loading the model"):  # short: the bars share its column
                model, encoding, decode_check = load_model_first(request)
            request = dataclasses.replace(request, model=model, decode_check=decode_check)
        try:
            request.index_dir.mkdir(parents=True, exist_ok=True)
            with WriterLock(request.index_dir):
                summary = _stages(state, request, encoding)
        except OSError as exc:
            raise state.os_error(exc) from None
        except sqlite3.Error as exc:
            raise state.sqlite_error(exc) from None
    summary.seconds = round(time.perf_counter() - state.started, 3)
    store = request.store or published_store(request.index_dir)  # the store follows every update
    if store is not None:
        summary.store = publish_to_store(request.index_dir, store)
    return summary


def _stages(state: BuildState, request: BuildRequest, encoding: Encoding | None) -> BuildSummary:
    """Generation G -> G+1, stage by stage (see the module docstring)."""
    base = find_base(state)  # 1. G, verified
    with state.progress.step("loading the model") if encoding is None else nullcontext():
        plan = plan_run(state, request, meta_view(state, base), encoding)  # 2. checks before changes
    store = open_work(state, base)  # 3. items-(G+1).sqlite: from here on files are written
    try:
        scanned = scan_and_diff(state, plan, store, request.user_calibration)  # 4.
        embedded = {
            "embedded": embed_pending(state, plan, store, request.embedder or embed_images),  # 5.
            "captions_embedded": sync_captions(state, plan, store, scanned.sidecars),  # 6.
        }
        compact_shards(state, store, plan.cfg.shard_size)  # 7.
        faiss = faiss_indexes(state, plan, store)  # 8.
        calibration = index_calibration(state, plan, store, "build")  # 9.
        summary = _publish(state, plan, store, base, scanned, faiss, calibration, embedded)
    finally:
        store.close()
    retire_old(state, base)
    summary.repaired = sorted(base.damage)
    return summary


def _publish(
    state: BuildState,
    plan: BuildPlan,
    store: Store,
    base: Base,
    scanned: Scanned,
    faiss: dict[str, FaissInfo],
    calibration: Calibration | None,
    embedded: dict[str, int],
) -> BuildSummary:
    """Stage 9's manifest with this run's record (``embedded``: images and captions embedded), and the
    summary of the run."""
    counts = generation_counts(store)
    last_run = {
        "finished": now(),
        **embedded,
        "resumed": base.resume,
        "repair": state.repair,
        **scanned.diff,
        "stage_seconds": state.stage_seconds(),
        "warnings": list(state.warnings),
        "seconds": round(time.perf_counter() - state.started, 3),
    }
    errors = store.errors()
    publish(state, plan, store, faiss, calibration, counts, last_run)
    diff, model = scanned.diff, plan.model
    return BuildSummary(
        index_dir=str(state.index_dir),
        root=str(plan.root),
        model=str(model.spec),
        fingerprint=model.fingerprint,
        indexed=counts["images"],
        skipped=counts["skipped"],
        added=diff["added"],
        changed=diff["changed"],
        removed=diff["removed"],
        unchanged=diff["unchanged"],
        captions=counts["captions"],
        resumed=base.resume,
        seconds=0.0,
        images_index=faiss["images"].to_dict(),
        captions_index=faiss["captions"].to_dict(),
        errors=[{"path": e["path"], "reason": e["reason"]} for e in errors],
        warnings=state.warnings,
        stage_seconds=state.stage_seconds(),
        generation=state.work_gen,
        **embedded,
    )

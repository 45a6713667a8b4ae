"""CLI: build, update, info, check (the index builder)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import typer

from counterclip.cli._common import out, print_json, working
from counterclip.cli.store_cmds import STORE_HELP, check_store_index, store_info


def _quiet_pillow() -> None:
    """Pillow warns about images over its pixel limit; the builder refuses and reports them itself."""
    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _print_summary(summary, as_json: bool) -> None:  # noqa: ANN001 - BuildSummary
    if as_json:
        print_json(summary.to_dict())
    else:
        out.print(str(summary), highlight=False, markup=False)


RUNTIME_HELP = "torch | onnx (extra counterclip[onnx]): what embeds the images and captions"
PRECISION_HELP = "With --runtime onnx: fp32 | int8-dynamic | int8-static (int8 checked on your images)."


# Options of `build` whose help needs more than the signature's line.
MODEL_OPT = typer.Option("bundled:shapes", "--model", "-m", help="Model spec (see `counterclip models`).")
BATCH_SIZE_OPT = typer.Option(
    None, "--batch-size", min=1, help="Images per forward pass (default 64, or the recipe's)."
)
WORKERS_OPT = typer.Option(
    None, "--workers", min=0, help="Decode workers, 0 = decode inline (default 2, or the recipe's)."
)
INDEX_KIND_OPT = typer.Option(
    "auto", "--index-kind", help="auto (by size) or a FAISS factory string, e.g. HNSW32,Flat or IVF256,SQ8."
)
CONFIG_OPT = typer.Option(None, "--config", help="Index recipe name (default, exact, compact) or JSON file.")
MEMORY_BUDGET_OPT = typer.Option(
    None, "--memory-budget", help="RAM the FAISS indexes may use, e.g. 2GB (default: by size)."
)
FAST_DECODE_OPT = typer.Option(
    None,
    "--fast-decode",
    help="Shrink large images before the model's preprocessing (JPEG draft, box reduce): faster, but not "
    "the files' pixels; measured on 32 images against the exact decode and refused below cosine 0.995.",
)
UPDATE_MODEL_OPT = typer.Option(
    None, "--model", "-m", help="Where the index's model is now, if its files moved (same weights only)."
)
CHECK_MODEL_HELP = (
    "Also re-encode a sample of the indexed files with the index's model and report the lowest and median "
    "cosine to the stored vectors."
)
SHARD_OPT = typer.Option(
    None, "--shard", help="i/N: embed only every N-th file (worker i) into a shard set at --index."
)

# `build`'s help is given to typer here rather than as its docstring: with twenty options and five
# examples, the command would otherwise not read as parse -> build -> print on one screen.
BUILD_HELP = """Embed every image of FOLDER into an on-disk index (FAISS + SQLite + embedding shards).

    Re-running on an existing index with the same model updates it (new, changed and deleted files);
    a run that was killed resumes from its last completed shard. Bad files are skipped and reported.

    Examples:

      counterclip build ~/Photos --index photos.idx

      counterclip build shapes/ --index shapes.idx --vocab captions.txt --json

      counterclip build ~/Photos --index photos.idx --model ViT-B-32:/models/vit-b-32.safetensors --device cuda

      counterclip build ~/Photos --index parts/0 --shard 0/4   (then `counterclip merge photos.idx parts/*`)

      counterclip build ~/Photos --index photos.idx --engine ray --ray-address auto --memory-budget 2GB
    """


def build(
    folder: Path = typer.Argument(..., help="Image folder (scanned recursively)."),
    index: Path = typer.Option(..., "--index", "-i", help="Index directory (created, resumed or updated)."),
    model: str = MODEL_OPT,
    captions: Path = typer.Option(None, "--captions", help="Captions file: CSV (path,caption) or JSONL."),
    vocab: Path = typer.Option(None, "--vocab", help="Free captions, one per line."),
    batch_size: int = BATCH_SIZE_OPT,
    workers: int = WORKERS_OPT,
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    index_kind: str = INDEX_KIND_OPT,
    config: str = CONFIG_OPT,
    memory_budget: str = MEMORY_BUDGET_OPT,
    shard: str = SHARD_OPT,
    engine: str = typer.Option("local", "--engine", help="local | ray (extra counterclip[ray])."),
    ray_address: str = typer.Option(None, "--ray-address", help="An existing Ray cluster (default: local)."),
    ray_actors: int = typer.Option(1, "--ray-actors", min=1, help="Model actors in the Ray pool."),
    runtime: str = typer.Option(None, "--runtime", help=RUNTIME_HELP + " (default: torch, or as recorded)."),
    precision: str = typer.Option(None, "--precision", help=PRECISION_HELP),
    fast_decode: bool = FAST_DECODE_OPT,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    store: str = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """`counterclip build` (its help: `BUILD_HELP`): a shard set with ``--shard``, else the whole index."""
    with working("loading counterclip ...", enabled=not as_json):  # then the builder's own lines
        from counterclip.index_builder.builder import build_index

    _quiet_pillow()
    _check_build_engine(engine, runtime, shard)
    if shard is not None:
        _embed_shard_set(folder, index, shard, model, config, batch_size, workers, device, as_json)
        return
    summary = build_index(
        folder,
        index,
        model=model,
        captions=captions,
        vocab=vocab,
        batch_size=batch_size,
        workers=workers,
        device=device,
        index_kind=index_kind,
        progress=not as_json,
        config=config,
        memory_budget=memory_budget,
        embedder=_ray_embedder(ray_address, ray_actors) if engine == "ray" else None,
        runtime=runtime,
        precision=precision,
        fast_decode=fast_decode,
        store=store,
    )
    _print_summary(summary, as_json)


def _check_build_engine(engine: str, runtime: str | None, shard: str | None) -> None:
    """Refuse an unknown ``--engine``, and ONNX where the embedding leaves this process."""
    from counterclip.errors import InputError

    if engine not in ("local", "ray"):
        raise InputError(f"--engine must be local or ray, not {engine!r}")
    if runtime == "onnx" and (engine == "ray" or shard is not None):
        # Ray actors and shard workers load the torch model themselves; an ONNX session does not travel
        raise InputError("--runtime onnx embeds in this process: use it without --engine ray and --shard")


def _ray_embedder(address: str | None, actors: int) -> Any:
    """The builder's embedder on Ray Data (extra ``ray``)."""
    from counterclip.index_builder.distributed import RayEmbedder

    return RayEmbedder(address, actors=actors)


def _embed_shard_set(
    folder: Path,
    index: Path,
    shard: str,
    model: str,
    config: str | None,
    batch_size: int | None,
    workers: int | None,
    device: str,
    as_json: bool,
) -> None:
    """Embed worker i of N's files into the shard set at ``index`` and describe it."""
    from counterclip.index_builder.distributed import embed_shard, parse_shard

    described = embed_shard(
        folder, index, parse_shard(shard), model, config, batch_size, workers, device=device
    )
    if as_json:
        print_json(described)
        return
    out.print(
        f"shard set {index}: worker {shard}, {described['embedded']} of {described['files']} files "
        f"embedded in {described['seconds']:.1f} s; merge all N with `counterclip merge IDX DIRS...`",
        highlight=False,
        markup=False,
    )


def update(
    index: Path = typer.Argument(..., help="Index directory."),
    captions: Path = typer.Option(None, "--captions", help="Replace the recorded captions file."),
    vocab: Path = typer.Option(None, "--vocab", help="Replace the recorded vocabulary file."),
    batch_size: int = typer.Option(
        None, "--batch-size", min=1, help="Images per forward pass (default: as recorded)."
    ),
    workers: int = typer.Option(None, "--workers", min=0, help="Decode workers (default: as recorded)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    index_kind: str = typer.Option(
        None, "--index-kind", help="Change the FAISS kind (auto or a factory string)."
    ),
    repair: bool = typer.Option(
        False,
        "--repair",
        help="Rebuild damaged files (FAISS from the shards, shards and SQLite from the images).",
    ),
    runtime: str = typer.Option(None, "--runtime", help=RUNTIME_HELP + " (default: as recorded)."),
    precision: str = typer.Option(None, "--precision", help=PRECISION_HELP),
    fast_decode: bool = FAST_DECODE_OPT,
    model: str = UPDATE_MODEL_OPT,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Bring an index up to date with its folder: add new files, re-embed changed ones, remove deleted
    ones (ids are never reused). Also finishes a build that was interrupted.

    The update is written as a new generation beside the current one, which readers (a running
    server) keep using until they move on; every file is verified first, and a damaged one stops the
    update unless --repair is given.

    Examples:

      counterclip update photos.idx

      counterclip update photos.idx --json

      counterclip update photos.idx --repair

      counterclip update photos.idx --model hf:/new/place/blip   (the model's files moved)
    """
    with working("loading counterclip ...", enabled=not as_json):  # then the builder's own lines
        from counterclip.index_builder.builder import update_index

    _quiet_pillow()
    summary = update_index(
        index,
        model=model,
        captions=captions,
        vocab=vocab,
        batch_size=batch_size,
        workers=workers,
        device=device,
        index_kind=index_kind,
        progress=not as_json,
        repair=repair,
        runtime=runtime,
        precision=precision,
        fast_decode=fast_decode,
    )
    _print_summary(summary, as_json)


def calibrate(
    index: Path = typer.Argument(..., help="Index directory."),
    captions: Path = typer.Option(
        ..., "--captions", help="Captions of indexed images: CSV (path,caption) or JSONL."
    ),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    as_json: bool = typer.Option(False, "--json", help="Print the calibration as JSON."),
) -> None:
    """Fit p(match | score) on images with known captions and record it in the index: verdicts of
    counterfactual queries then say "verified" only for answers this calibration calls a match.

    The captions are not added to the index. Paths are relative to the indexed folder.

    Examples:

      counterclip calibrate photos.idx --captions photo-captions.csv
    """
    from counterclip.index_builder.builder import calibrate_index
    from counterclip.index_builder.index_model import load_index_model

    with working("loading the index's model and fitting p(match) ...", enabled=not as_json):
        model = load_index_model(index, device=device)
        calibration = calibrate_index(index, captions, model)
    if as_json:
        print_json(calibration.to_dict())
        return
    out.print(
        f"{calibration.name()}\nmatch line: score {calibration.score_at():.2f} "
        f"(true pairs {calibration.positives.p10:.1f}-{calibration.positives.p90:.1f}, "
        f"others {calibration.negatives.p10:.1f}-{calibration.negatives.p90:.1f})",
        highlight=False,
        markup=False,
    )


def check(
    index: Path = typer.Argument(..., help="Index directory."),
    model: bool = typer.Option(False, "--model", help=CHECK_MODEL_HELP),
    sample: int = typer.Option(64, "--sample", min=1, help="With --model: files re-encoded."),
    device: str = typer.Option("auto", "--device", help="With --model: auto | cpu | cuda"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Verify every file of an index (fsck): sizes and checksums, SQLite's integrity check, FAISS and
    shards against the rows. Names each damaged file; exit status 2 when one is found. With --model, also
    whether the index still reflects its model (exit status 2 below the stored-vector line, 0.999).

    Examples:

      counterclip check photos.idx

      counterclip check photos.idx --model --json
    """
    from counterclip.errors import IndexDamagedError
    from counterclip.index_builder import check_index
    from counterclip.index_builder.parity import check_model
    from counterclip.index_builder.stores.side import is_store_index, read_side

    if is_store_index(index):  # a vector store: its drift; a built one has its FAISS generation too
        check_store_index(index, as_json)
        if read_side(index).kind == "attached":
            return
    report = check_index(index)
    checked = check_model(index, sample=sample, device=device) if model and not report.damaged else None
    if as_json:
        print_json({**report.to_dict(), **({"model_check": checked.to_dict()} if checked else {})})
    else:
        lines = [f"damaged    {name}: {reason}" for name, reason in sorted(report.damaged.items())]
        lines.append(
            f"index {report.index_dir} generation {report.generation}: {report.files} files, "
            f"{report.bytes / 1e6:.1f} MB verified in {report.seconds:.1f} s"
            + ("" if report.damaged else "; no damage found")
        )
        if checked is not None:
            lines.append(f"model      {checked.in_words()}")
            lines += [f"below      {b['path']}: cosine {b['cosine']:.6f}" for b in checked.agreement.below]
        out.print("\n".join(lines), highlight=False, markup=False)
    if checked is not None and not checked.agreement.holds:
        raise IndexDamagedError(
            f"index {report.index_dir} no longer reflects {checked.model}: lowest cosine "
            f"{checked.agreement.lowest:.6f} to fresh encodes, below {checked.agreement.bound}; "
            f"rebuild it (or run `counterclip update {report.index_dir}` if files changed)"
        )
    if report.damaged:
        names = ", ".join(sorted(report.damaged))
        raise IndexDamagedError(
            f"index {report.index_dir} has {len(report.damaged)} damaged file(s): {names}; "
            f"run `counterclip update {report.index_dir} --repair`"
        )


def info(
    index: Path = typer.Argument(..., help="Index directory."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Describe an index: counts, model spec and fingerprint, FAISS kind and measured recall, skipped
    files, build time, size on disk.

    Examples:

      counterclip info photos.idx

      counterclip info photos.idx --json
    """
    from counterclip.index_builder.stores.side import is_store_index

    if is_store_index(index):
        store_info(index, as_json)
        return
    with working(f"opening {index} ...", enabled=not as_json):
        from counterclip.index_builder import Index
        from counterclip.index_builder.calibration_source import calibration_in_use

        with Index.open(index) as idx:
            payload = idx.describe()
            calibration = calibration_in_use(idx)
    if as_json:
        print_json(payload)
        return
    out.print("\n".join(_info_lines(payload, calibration)), highlight=False, markup=False)


def _info_lines(payload: dict[str, Any], calibration: Any) -> list[str]:
    """`info`'s lines, labels aligned: the index, its model and FAISS, its runs, skipped files (20)."""
    images = payload["faiss"]["images"]
    k = images.get("recall_k", 10)
    recall = images.get(f"recall_at_{k}")
    last_run = payload["last_run"]
    lines = [
        f"index      {payload['index']}",
        f"folder     {payload['root']}",
        f"images     {payload['images']} indexed, {payload['skipped']} skipped",
        f"captions   {payload['captions']}",
        f"model      {payload['model']}  (fingerprint {payload['fingerprint']}, d={payload['embed_dim']})",
        f"faiss      images: {images['factory']} {images['search_params'] or ''}".rstrip(),
        *(
            [f"           recall@{k} {recall:.3f} on {images['recall_queries']} queries"]
            if recall is not None
            else []
        ),
        f"           captions: {payload['faiss']['captions']['factory']}",
        f"built      {payload['created']}, updated {payload['updated']} (generation {payload['generation']})",
        f"last run   {_last_run_line(last_run)}",
        f"runtime    {_runtime_line(payload['runtime'])}",
        f"decode     {payload['decode']}",
        f"on disk    {payload['size_on_disk_bytes'] / 1e6:.1f} MB",
        "calibrated " + calibration.words,  # the calibration the verdicts use, aligned with the labels
    ]
    lines += [f"skipped    {e['path']}: {e['reason']}" for e in payload["errors"][:20]]
    if len(payload["errors"]) > 20:
        lines.append(f"... and {len(payload['errors']) - 20} more (see --json)")
    return lines


def _last_run_line(last_run: dict[str, Any]) -> str:
    """The last run as the build summary says it: the files found, then what became of them."""
    added, changed, embedded = (int(last_run.get(k, 0)) for k in ("added", "changed", "embedded"))
    skipped = max(added + changed - embedded, 0)
    return (
        f"{added} new, {changed} changed, {last_run.get('removed', 0)} removed files: {embedded} embedded"
        + (f", {skipped} skipped" if skipped else "")
        + f" ({last_run.get('seconds', 0):.1f} s)"
    )


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    """Add ``build``, ``update``, ``calibrate``, ``check`` and ``info``."""
    app.command(help=BUILD_HELP)(build)
    app.command()(update)
    app.command()(calibrate)
    app.command()(check)
    app.command()(info)


def _runtime_line(record: dict) -> str:
    """``onnx 1.23.2 int8-dynamic: cosine to torch image 0.999998, text 0.999999; int8 to fp32 0.9950 ...``"""
    line = f"{record['runtime']} {record.get('version') or ''} {record.get('precision', 'fp32')}".replace(
        "  ", " "
    )
    vs_torch = record.get("vs_torch") or {}
    if vs_torch:
        line += ": cosine to torch " + ", ".join(f"{t} {v['cosine_min']:.6f}" for t, v in vs_torch.items())
    vs_fp32 = record.get("vs_fp32")
    if vs_fp32:
        line += (
            f"; int8 to fp32 cosine {vs_fp32['cosine_min']:.4f}, recall@10 {vs_fp32.get('recall_at_10', 0):.3f}"
            f" on {vs_fp32.get('check_images')} images"
        )
    if record.get("embedded_with"):
        line += f" (vectors from {', '.join(record['embedded_with'])})"
    if not vs_torch and record["runtime"] == "torch" and not record.get("version"):
        line += " (not recorded: built before runtimes were)"
    return line

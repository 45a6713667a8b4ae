"""CLI: attach (an app's vector store collection), and what check and info say about an index that reads a
vector store (`counterclip.index_builder.stores`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from counterclip.cli._common import out, print_json

STORE_HELP = (
    "Also fill this vector store and search it: lancedb://DIR/TABLE, qdrant://HOST:PORT/COLLECTION "
    "(API key: QDRANT_API_KEY) or qdrant+local://DIR/COLLECTION (extras counterclip[lancedb] / [qdrant])."
)
WHERE_HELP = "Only images whose fields pass this filter, e.g. 'album = \"2024\"' or 'width >= 640 and not folder = \"tmp\"'."


def attach(
    uri: str = typer.Argument(..., help="The collection: lancedb://DIR/TABLE, qdrant://HOST:PORT/NAME, ..."),
    index: Path = typer.Option(..., "--index", "-i", help="Side directory to write (what queries open)."),
    model: str = typer.Option(..., "--model", "-m", help="The model that made the collection's vectors."),
    vector_field: str = typer.Option("vector", "--vector-field", help="The vectors' field (named vector)."),
    path_field: str = typer.Option("path", "--path-field", help="The payload field naming the image file."),
    caption_field: str = typer.Option(
        None, "--caption-field", help="The payload field with each image's caption(s): calibration."
    ),
    id_field: str = typer.Option("id", "--id-field", help="LanceDB: the id column."),
    root: Path = typer.Option(
        None,
        "--root",
        help="Relative paths are relative to this; serve shows files under it only "
        "(default: the folder the paths share, or here).",
    ),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Register a collection an app already filled, without copying it: counterfactuals and search then
    run over it (verification re-encodes from the payload's path). Refused, with measured cosines, when
    its vectors were not made by --model.

    Examples:

      counterclip attach qdrant://localhost:6333/photos --model ViT-B-32:laion2b_s34b_b79k --vector-field image --path-field file --index photos.idx

      counterclip attach lancedb://app.lance/photos --model bundled:shapes --caption-field caption --index photos.idx
    """
    from counterclip.index_builder.stores.attach import attach_collection

    done = attach_collection(
        uri, index, model, vector_field, path_field, caption_field, id_field, root, device=device
    )
    if as_json:
        print_json(done)
        return
    agreement, search = done["agreement"], done["ann"]
    lines = [
        f"attached   {done['store']} as {done['index']}",
        f"images     {done['images']}",
        f"model      {model}: cosine to fresh encodes lowest {agreement['lowest']:.4f}, median "
        f"{agreement['median']:.4f} over {agreement['samples']} files",
        f"search     {search['kind']} {search['search_params'] or ''} recall@{search['recall_k']} "
        f"{search['recall_at_k']:.3f} on {search['recall_queries']} queries",
        f"calibrated {done['calibration'] or 'none (give --caption-field to fit one on your captions)'}",
    ]
    out.print("\n".join(lines), highlight=False, markup=False)


def check_store_index(index: Path, as_json: bool) -> None:
    """`check` on an index that reads a vector store: drift of the store from the side directory (and,
    for a built one, the FAISS generation beside it, by the caller)."""
    from counterclip.errors import IndexDamagedError
    from counterclip.index_builder.stores.drift import check_store

    report = check_store(index)
    if as_json:
        print_json(report.to_dict())
    else:
        lines = [f"drift      {line}" for line in report.drift]
        counts = ", ".join(f"{k} {v['now']}" for k, v in report.counts.items())
        lines.append(
            f"store {report.store} ({report.kind}): {counts}; {report.sampled} sampled vectors compared in "
            f"{report.seconds:.1f} s" + ("" if report.drift else "; no drift found")
        )
        out.print("\n".join(lines), highlight=False, markup=False)
    if report.drift:
        raise IndexDamagedError(
            f"index {report.index_dir}: the store {report.store} drifted from the side directory "
            f"({'; '.join(report.drift)}); {report.fix()}"
        )


def store_info(index: Path, as_json: bool) -> None:
    """`info` on an index that reads a vector store: the side manifest."""
    from counterclip.index_builder.stores.side import read_side

    side = read_side(index)
    payload: dict[str, Any] = {"index": str(index), **side.to_dict()}
    if as_json:
        print_json(payload)
        return
    images = side.ann.get("images", {})
    lines = [
        f"index      {index} ({side.kind})",
        f"store      {side.stores['images']}"
        + (f", captions {side.stores['captions']}" if side.stores["captions"] else ""),
        "items      " + ", ".join(f"{k} {v}" for k, v in side.counts.items()),
        f"model      {side.model.spec}  (fingerprint {side.model.fingerprint}, d={side.model.embed_dim})",
        f"search     {images.get('kind')} {images.get('search_params') or ''} recall@{images.get('recall_k')} "
        f"{images.get('recall_at_k')} on {images.get('recall_queries')} queries",
        f"fields     vector {side.fields.vector}, path {side.fields.path}, caption {side.fields.caption}",
        f"calibrated {'yes' if side.calibration else 'none recorded'}",
    ]
    out.print("\n".join(lines), highlight=False, markup=False)


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    """Add ``attach``."""
    app.command()(attach)

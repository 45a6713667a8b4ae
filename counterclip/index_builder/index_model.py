"""The model an index was built with, loaded from where the manifest says its files are, or from where the
user says they are now (accepted only when the weights' fingerprint is the recorded one).

A model spec records absolute paths (`counterclip.models.spec.absolute_path`), so an index opens from any
working directory; when the files moved, the error names the recorded path and how to point to the new one.
"""

from __future__ import annotations

import os
from pathlib import Path

from counterclip.errors import ModelLoadError
from counterclip.index_builder.manifest import ModelRecord
from counterclip.models import ClipModel, ModelSpec, load_model
from counterclip.models.spec import local_paths


def relocate_hint(index_dir: str | os.PathLike[str]) -> str:
    """How to point an index to its model's new place."""
    return (
        f"if they moved, point to them: `counterclip update {index_dir} --model SPEC` records the new place, "
        f"or Engine.open({str(index_dir)!r}, model=SPEC) uses it once (either only when the weights' "
        "fingerprint is the recorded one)"
    )


def load_index_model(
    index_dir: str | os.PathLike[str],
    record: ModelRecord | None = None,
    model: str | ModelSpec | ClipModel | None = None,
    device: str = "auto",
) -> ClipModel:
    """The model that built the index at ``index_dir``.

    Args:
        index_dir: the index directory.
        record: its manifest's model record. Default: None (read from the manifest).
        model: where the model is now (a spec or a loaded model), instead of the recorded spec. Default:
            None (the recorded spec).
        device: for a spec. Default: ``auto``.

    Raises:
        ModelLoadError: ``model`` loads other weights than the recorded fingerprint; or the recorded files
            are gone (the message names them and how to point to the new place).
    """
    if record is None:  # either kind of index: counterclip's own, or a vector store's side directory
        from counterclip.index_builder.stores.store_index import index_model_record

        record = index_model_record(index_dir)
    if model is not None:
        loaded = model if isinstance(model, ClipModel) else load_model(model, device=device)
        if loaded.fingerprint != record.fingerprint:
            raise ModelLoadError(
                f"{loaded.spec} loads other weights (fingerprint {loaded.fingerprint[:12]}) than the model index "
                f"{index_dir} was built with ({record.spec}, fingerprint {record.fingerprint[:12]}); point to "
                "that model's files"
            )
        return loaded
    try:
        return load_model(record.spec, device=device)
    except ModelLoadError as exc:
        gone = [p for p in local_paths(record.spec) if not Path(p).expanduser().exists()]
        if not gone:
            raise
        where = (
            "" if Path(gone[0]).is_absolute() else f" (relative to {Path.cwd()}: recorded before paths were)"
        )
        raise ModelLoadError(
            f"the model files {gone[0]}{where} recorded in index {index_dir} for {record.spec} are not there; "
            + relocate_hint(index_dir)
        ) from exc

"""clip-retrieval interop: import its embedding folders as an index, export an index in its layout.

clip-retrieval's ``inference`` writes, per output partition ``P`` (zero-padded)::

    img_emb/img_emb_P.npy           (n, d) float16 or float32, L2-normalised image embeddings
    text_emb/text_emb_P.npy         (n, d) the captions' embeddings (absent when it ran without text)
    metadata/metadata_P.parquet     n rows: image_path, caption, url, width, height, ... (any subset)

Rows are tied by position across the three files. `import_clip_retrieval` checks the whole layout
first from the headers alone (widths against the model, row counts across files, metadata present),
then streams partition by partition, chunk by chunk, checking every vector (finite, unit norm) as it
goes; it writes into a temporary directory beside the index and renames it into place at the end, so a
bad input leaves nothing half-written. Each row becomes an image of the index (its vector as stored),
its caption a caption (the text vector as stored; captions said twice are kept once) linked to it.

An imported image whose file is not on this machine has no file to re-score it from: `item_sources`
records, per image, its original ``image_path``, its ``url`` and whether the file is here, and
`Index.images.meta` answers ``abs_path: None, has_file: False`` for it, so the engine gives its answers
the verdict ``unverifiable``.

`export_clip_retrieval` writes an index back in the same layout (float16 by default).

The modules: `interop_layout` (the layout, checked), `interop_import` (rows -> the builder's last
stages: FAISS, calibration, manifest), `interop_export`. This module gathers their public names.
"""

from __future__ import annotations

from counterclip.index_builder.interop_export import ExportSummary, export_clip_retrieval
from counterclip.index_builder.interop_import import (
    GENERATION,
    IMPORT_SHARD_ROWS,
    KEY_PREFIX,
    ImportSummary,
    import_clip_retrieval,
)
from counterclip.index_builder.interop_layout import (
    IMG_DIR,
    META_DIR,
    NORM_TOLERANCE,
    TEXT_DIR,
    Partition,
    scan_layout,
)

__all__ = [
    "GENERATION",
    "IMG_DIR",
    "IMPORT_SHARD_ROWS",
    "KEY_PREFIX",
    "META_DIR",
    "NORM_TOLERANCE",
    "TEXT_DIR",
    "ExportSummary",
    "ImportSummary",
    "Partition",
    "export_clip_retrieval",
    "import_clip_retrieval",
    "scan_layout",
]

"""A Ray build hands the model a palette, 16-bit, transparent or CMYK file in its own mode, as a local
build does: the same vectors (the family's transform converts it where its library does)."""

from __future__ import annotations

import numpy as np
import pytest
from parity_kit import write_files

from counterclip.index_builder import Index, build_index
from counterclip.index_builder.distributed_ray import RayEmbedder


def test_a_ray_build_embeds_every_mode_like_a_local_build(model, tmp_path) -> None:
    ray = pytest.importorskip("ray", reason="Ray is not installed (extra counterclip[ray])")
    names = sorted(write_files(tmp_path / "photos"))
    build_index(tmp_path / "photos", tmp_path / "local", model=model, progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        embedder = RayEmbedder(actors=1)
        build_index(tmp_path / "photos", tmp_path / "ray", model=model, progress=False, embedder=embedder)
    finally:
        ray.shutdown()
    vectors = []
    for name in ("local", "ray"):
        with Index.open(tmp_path / name) as idx:
            vectors.append(idx.images.vectors([idx.image_id_for_path(n) for n in names]))
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)
    with Index.open(tmp_path / "local") as idx:  # and these are the model's inputs in their own modes
        modes = {n: idx.load_image(n).model_input.mode for n in names}
    assert {modes["rgba.png"], modes["palette.png"], modes["grey16.png"], modes["cmyk.jpg"]} == {
        "RGBA", "P", "I;16", "CMYK",
    }  # fmt: skip

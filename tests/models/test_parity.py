"""Parity is the contract: for every family and runtime counterclip runs, the stored image vectors and every
score the engine, the CLI and the server report equal what the family's own library computes from the same
file (`parity_kit.reference`): cosine >= 0.99999 per vector, score gap <= 1e-4 x the family's scale.

Tiny random models drawn wide (their embeddings spread, so a decode that changes pixels shows), over files
that trip decoders (larger than twice the input side, non-square, EXIF-rotated, RGBA, palette, 16-bit, CMYK),
queried by path, by the bytes of an upload and through the Client. The decode counterclip used before
(shrinking, its own RGB conversion) misses the bounds on the same files: the matrix can tell.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from live_server import ThreadServer
from parity_kit import SCORE_GAP, TEXTS, VECTOR_COSINE, reference, write_family, write_files
from PIL import Image

from counterclip.cli import run
from counterclip.engine import Engine
from counterclip.index_builder import Index, build_index
from counterclip.index_builder.decode import DecodeOptions, load_image

FAMILIES = (
    "open_clip",
    "open_clip_siglip",
    "bundled",
    "hf_clip",
    "hf_siglip",
    "hf_siglip_masked",
    "hf_blip",
    "slip",
)
ONNX_FAMILIES = FAMILIES  # every family exports its towers (fp32)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    base = tmp_path_factory.mktemp("parity")
    indexed = write_files(base / "photos")
    queries = write_files(base / "queries", seed=100, prefix="q_")
    return SimpleNamespace(
        folder=base / "photos", names=sorted(indexed), queries=[base / "queries" / n for n in sorted(queries)]
    )


@pytest.fixture(scope="module", params=FAMILIES)
def family(
    request: pytest.FixtureRequest, files, tmp_path_factory: pytest.TempPathFactory
) -> SimpleNamespace:
    name = request.param
    base = tmp_path_factory.mktemp(name)
    spec = write_family(name, base / "model")
    build_index(files.folder, base / "idx", model=spec, progress=False, device="cpu", workers=0)
    engine = Engine.open(base / "idx", device="cpu")
    yield SimpleNamespace(name=name, spec=spec, ref=reference(name, spec), index=base / "idx", engine=engine)
    engine.close()


def _close(got: float, want: float, scale: float, what: str) -> None:
    assert abs(got - want) <= SCORE_GAP * scale, (what, got, want, abs(got - want) / scale)


def test_stored_vectors_are_the_librarys(family, files) -> None:
    paths = [files.folder / n for n in files.names]
    want = family.ref.vectors(paths)
    with Index.open(family.index) as idx:
        ids = [idx.image_id_for_path(p) for p in paths]
        assert None not in ids  # every file was indexed
        stored = idx.images.vectors(ids).astype(np.float64)
    cosines = (stored * want).sum(axis=1)
    assert cosines.min() >= VECTOR_COSINE, dict(zip(files.names, cosines.round(7), strict=True))
    # the teeth: the decode used before (shrunk, counterclip's own RGB) is further off on these files
    model = family.engine.model
    side = min(model.vision_geometry.image_size)
    before = [load_image(p, DecodeOptions(min_side=side)).image for p in paths]
    old = model.encode_pil(before).numpy().astype(np.float64)
    assert (old * want).sum(axis=1).min() < VECTOR_COSINE


def test_search_scores_are_the_librarys(family, files) -> None:
    paths = [files.folder / n for n in files.names]
    want = family.ref.scores(paths, TEXTS)
    scale = family.ref.scale
    for j, text in enumerate(TEXTS):
        hits = family.engine.search(text=text, k=len(paths))
        assert len(hits.items) == len(paths)
        for item in hits.items:
            _close(item.score_after, want[files.names.index(item.path), j], scale, (text, item.path))


def test_query_images_by_path_and_by_bytes_are_the_librarys(family, files) -> None:
    """An image search from a file that is not indexed, given as a path and as an upload's bytes: every
    hit's score is the library's image-image cosine on its scale."""
    indexed = family.ref.vectors([files.folder / n for n in files.names])
    for query in files.queries[:4]:
        q = family.ref.vectors([query])[0]
        for form in (query, Image.open(io.BytesIO(query.read_bytes()))):
            hits = family.engine.search(image=form, k=len(files.names))
            for item in hits.items:
                want = family.ref.scale * float(q @ indexed[files.names.index(item.path)]) + family.ref.bias
                _close(item.score_after, want, family.ref.scale, (query.name, item.path))


def test_counterfactual_scores_are_the_librarys(family, files) -> None:
    scale = family.ref.scale
    for query in (files.queries[0], files.queries[3]):
        result = family.engine.counterfactuals(image=query, text=TEXTS[0], k=3, baselines=False)
        _close(result.original["score"], family.ref.scores([query], TEXTS[:1])[0, 0], scale, query.name)
        for item in result.items:  # re-scored from their files
            want = family.ref.scores([files.folder / item.path], TEXTS[:1])[0, 0]
            _close(item.score_after, want, scale, item.path)


def test_the_cli_json_reports_the_librarys_scores(family, files, capsys: pytest.CaptureFixture) -> None:
    paths = [files.folder / n for n in files.names]
    want = family.ref.scores(paths, TEXTS[1:2])[:, 0]
    assert run(["search", str(family.index), "--text", TEXTS[1], "-k", "3", "--json", "--device", "cpu"]) == 0
    items = json.loads(capsys.readouterr().out)["items"]
    assert len(items) == 3
    for item in items:
        _close(item["score_after"], want[files.names.index(item["path"])], family.ref.scale, item["path"])
    query = files.queries[2]
    argv = ["counterfactual", str(family.index), "--image", str(query), "--text", TEXTS[1], "--json"]
    assert run([*argv, "--device", "cpu", "-k", "2"]) == 0
    original = json.loads(capsys.readouterr().out)["original"]
    _close(original["score"], family.ref.scores([query], TEXTS[1:2])[0, 0], family.ref.scale, query.name)


def test_the_server_and_client_report_the_librarys_scores(family, files) -> None:
    from counterclip.client import Client
    from counterclip.server.app import create_app
    from counterclip.server.settings import ServerSettings

    paths = [files.folder / n for n in files.names]
    want = family.ref.scores(paths, TEXTS[2:])[:, 0]
    scale = family.ref.scale
    with ThreadServer(create_app(family.engine, ServerSettings(workers=1))) as server:
        client = Client(server.url)
        for item in client.search(text=TEXTS[2], k=len(paths)).items:
            _close(item.score_after, want[files.names.index(item.path)], scale, item.path)
        for query in files.queries[3:6]:  # uploaded as bytes: large JPEG, palette, RGBA
            q = family.ref.vectors([query])[0]
            indexed = family.ref.vectors(paths)
            for item in client.search(image=query, k=3).items:
                expected = scale * float(q @ indexed[files.names.index(item.path)]) + family.ref.bias
                _close(item.score_after, expected, scale, (query.name, item.path))
            result = client.counterfactuals(image=query, text=TEXTS[2], k=2)
            _close(result.original["score"], family.ref.scores([query], TEXTS[2:])[0, 0], scale, query.name)


@pytest.mark.parametrize("family", ["hf_blip"], indirect=True)  # the one family with a matching head
def test_blips_matching_head_is_the_librarys(family, files) -> None:
    paths = [files.folder / n for n in files.names]
    texts = [TEXTS[i % len(TEXTS)] for i in range(len(paths))]
    want = family.ref.match(paths, texts)
    with Index.open(family.index) as idx:
        images = [idx.load_image(p).model_input for p in paths]
    got = family.engine.model.match_head(images, texts)
    np.testing.assert_allclose(got, want, atol=SCORE_GAP)
    result = family.engine.counterfactuals(
        image=files.queries[1], text=TEXTS[0], k=3, baselines=False, verify_with="itm"
    )
    for item in result.items:
        if item.p_itm is not None:
            _close(
                item.p_itm, float(family.ref.match([files.folder / item.path], TEXTS[:1])[0]), 1.0, item.path
            )


@pytest.mark.parametrize("name", ONNX_FAMILIES)
def test_onnx_fp32_is_the_librarys(name: str, files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("COUNTERCLIP_ONNX_CACHE", str(tmp_path / "onnx"))
    spec = write_family(name, tmp_path / "model")
    ref = reference(name, spec)
    build_index(files.folder, tmp_path / "idx", model=spec, progress=False, device="cpu", runtime="onnx")
    paths = [files.folder / n for n in files.names]
    want = ref.vectors(paths)
    with Index.open(tmp_path / "idx") as idx:
        assert idx.manifest.model.runtime_name == "onnx"
        stored = idx.images.vectors([idx.image_id_for_path(p) for p in paths]).astype(np.float64)
    assert (stored * want).sum(axis=1).min() >= VECTOR_COSINE
    scores = ref.scores(paths, TEXTS[:1])[:, 0]
    with Engine.open(tmp_path / "idx", device="cpu", runtime="onnx") as engine:
        for item in engine.search(text=TEXTS[0], k=len(paths)).items:
            _close(item.score_after, scores[files.names.index(item.path)], ref.scale, item.path)
        result = engine.counterfactuals(image=files.queries[4], text=TEXTS[0], k=2, baselines=False)
        _close(result.original["score"], ref.scores(files.queries[4:5], TEXTS[:1])[0, 0], ref.scale, "query")

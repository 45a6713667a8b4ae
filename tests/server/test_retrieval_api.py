"""For retrieval apps: search by vectors (faiss-like) and by a batch of texts, images or vectors, in process
and through the Client; search hits carry ``similarity`` and no counterfactual fields; an unknown keyword is
the library's own error, with the same message over HTTP."""

from __future__ import annotations

import urllib.error
import urllib.request

import numpy as np
import pytest

from counterclip.client import Client
from counterclip.engine import SearchHit
from counterclip.errors import InputError

HIT_KEYS = {"id", "kind", "path", "text", "similarity", "score", "score_after", "p_match", "distance", "rank"}


def _stored(engine) -> tuple[np.ndarray, np.ndarray]:
    ids = engine.index.images.ids
    return ids, engine.index.images.vectors(ids).astype(np.float64)


def test_a_search_hit_carries_similarity_and_no_counterfactual_fields(shapes_engine) -> None:
    ids, stored = _stored(shapes_engine)
    text = shapes_engine.encode_text("a red circle").astype(np.float64)
    result = shapes_engine.search(text="a red circle", k=5)
    order = ids[np.argsort(-(stored @ text), kind="stable")][:5]
    assert [hit.id for hit in result.items] == order.tolist()
    for hit in result.items:
        assert isinstance(hit, SearchHit) and set(hit.to_dict()) == HIT_KEYS
        cosine = float(stored[list(ids).index(hit.id)] @ text)
        assert hit.similarity == pytest.approx(cosine, abs=1e-5)
        assert hit.score == pytest.approx(shapes_engine.pair_score.of_cos(cosine), abs=1e-4)
        assert hit.score_after == hit.score and hit.distance == pytest.approx(1 - hit.similarity)
        assert hit.to_dict()["score_after"] == hit.score and 0.0 <= hit.p_match <= 1.0


def test_search_vectors_is_faiss_like(shapes_engine) -> None:
    ids, stored = _stored(shapes_engine)
    queries = stored[[0, 5, 9]] * 3.0  # not unit length: normalised by the engine
    D, I = shapes_engine.search_vectors(queries, k=4)  # noqa: E741, N806 - FAISS's names
    assert D.shape == I.shape == (3, 4) and I.dtype == np.int64
    brute = (stored @ (queries / 3.0).T).T
    for row in range(3):
        best = np.argsort(-brute[row], kind="stable")[:4]
        assert I[row].tolist() == ids[best].tolist()
        np.testing.assert_allclose(D[row], brute[row][best], atol=1e-5)
    assert I[:, 0].tolist() == ids[[0, 5, 9]].tolist() and np.allclose(D[:, 0], 1.0, atol=1e-5)
    hits = shapes_engine.search_vectors(
        stored[0], k=len(ids) + 3
    )  # one (d,) query, more than the index holds
    assert hits.ids.shape == (1, len(ids) + 3) and (hits.ids[0, -3:] == -1).all()
    assert np.isneginf(hits.similarities[0, -3:]).all() and np.isnan(hits.scores[0, -3:]).all()
    np.testing.assert_allclose(hits.scores[0, :3], shapes_engine.pair_score.of_cos(hits.similarities[0, :3]))
    with pytest.raises(InputError, match=r"query vectors must have shape \(n, 128\)"):
        shapes_engine.search_vectors(np.ones((2, 5)))


def test_search_batch_answers_like_one_search_each(shapes_engine) -> None:
    texts = ["a red circle", "a blue square on the left", "a small green star"]
    batch = shapes_engine.search_batch(texts=texts, k=3)
    for text, result in zip(texts, batch, strict=True):
        single = shapes_engine.search(text=text, k=3)
        assert result.query == {"text": text} and [h.id for h in result.items] == [h.id for h in single.items]
        np.testing.assert_allclose(
            [h.score for h in result.items], [h.score for h in single.items], atol=1e-5
        )
    by_image = shapes_engine.search_batch(images=[2, 7], k=3)
    assert [h.id for h in by_image[0].items] == [h.id for h in shapes_engine.search(image=2, k=3).items]
    assert 7 not in [h.id for h in by_image[1].items]  # an indexed query image is left out of its hits
    ids, stored = _stored(shapes_engine)
    by_vector = shapes_engine.search_batch(vectors=stored[:2], k=1)
    assert [r.items[0].id for r in by_vector] == ids[:2].tolist() and by_vector[1].query == {"vector": 1}
    with pytest.raises(InputError, match="exactly one of texts, images or vectors"):
        shapes_engine.search_batch(texts=texts, vectors=stored[:1])


def test_the_client_answers_like_the_engine(shapes_engine, shapes_server) -> None:
    client = Client(shapes_server.url)
    ids, stored = _stored(shapes_engine)
    local = shapes_engine.search_vectors(stored[[1, 3]], k=5)
    remote = client.search_vectors(stored[[1, 3]], k=5)
    assert remote.ids.tolist() == local.ids.tolist()
    np.testing.assert_allclose(remote.similarities, local.similarities, atol=1e-6)
    np.testing.assert_allclose(remote.scores, local.scores, atol=1e-5)
    padded = client.search_vectors(stored[0], k=len(ids) + 1)
    assert padded.ids[0, -1] == -1 and np.isneginf(padded.similarities[0, -1])
    texts = ["a red circle", "a purple cross"]
    for got, want in zip(
        client.search_batch(texts=texts, k=3), shapes_engine.search_batch(texts=texts, k=3), strict=True
    ):
        for a, b in zip(got.items, want.items, strict=True):
            assert (a.id, a.path, a.rank) == (b.id, b.path, b.rank)
            assert (a.similarity, a.score, a.p_match) == pytest.approx(
                (b.similarity, b.score, b.p_match), abs=1e-6
            )
    images = client.search_batch(images=[4], k=2)
    assert [h.id for h in images[0].items] == [h.id for h in shapes_engine.search(image=4, k=2).items]
    hits = client.search(text="a red circle", k=2).items
    assert isinstance(hits[0], SearchHit) and hits[0].similarity == pytest.approx(
        shapes_engine.search(text="a red circle", k=2).items[0].similarity, abs=1e-6
    )


def _message(call) -> str:
    with pytest.raises(InputError) as caught:
        call()
    return str(caught.value)


def test_an_unknown_keyword_is_the_librarys_error_in_process_and_over_http(
    shapes_engine, shapes_server
) -> None:
    client = Client(shapes_server.url)
    here = _message(lambda: shapes_engine.search(text="a red circle", kk=3))
    assert here == "kk: search() takes no such keyword; did you mean 'k'?"
    assert _message(lambda: client.search(text="a red circle", kk=3)) == here
    here = _message(lambda: shapes_engine.counterfactuals(image=1, text="a red circle", match_margn=0.1))
    assert here == "match_margn: counterfactuals() takes no such keyword; did you mean 'match_margin'?"
    assert _message(lambda: client.counterfactuals(image=1, text="a red circle", match_margn=0.1)) == here
    here = _message(lambda: shapes_engine.search_vectors(np.ones(128), colection="images"))
    assert here == _message(lambda: client.search_vectors(np.ones(128), colection="images"))
    assert _message(lambda: client.counterfactuals(image=1, text="a red circle", diversity=0.5)).startswith(
        "the service takes only match_margin, nomatch_margin, threshold, verify_with per request, not diversity"
    )
    request = urllib.request.Request(
        shapes_server.url + "/search", data=b'{"text": "a red circle", "kk": 3}', method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 422
    assert b"kk: search() takes no such keyword; did you mean 'k'?" in caught.value.read()


def test_a_pil_query_reaches_the_service_as_it_reaches_the_engine(
    shapes_engine, shapes_server, tmp_path
) -> None:
    """A decoded RGBA image and an EXIF-rotated file opened by Pillow score the same through the Client."""
    from PIL import Image

    root = shapes_engine.index.root
    rgba = Image.open(root / "000003.png").convert("RGBA")
    alpha = np.full(rgba.size[::-1], 255, np.uint8)
    alpha[:, : rgba.size[0] // 2] = 0
    rgba.putalpha(Image.fromarray(alpha))
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(root / "000005.png").convert("RGB").save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    client = Client(shapes_server.url)
    for query in (
        rgba,
        Image.open(tmp_path / "rotated.jpg"),
        Image.open(root / "000006.png").convert("CMYK"),
    ):
        local = shapes_engine.search(image=query, k=4).items
        remote = client.search(image=query, k=4).items
        assert [h.id for h in remote] == [h.id for h in local]
        np.testing.assert_allclose([h.similarity for h in remote], [h.similarity for h in local], atol=1e-5)

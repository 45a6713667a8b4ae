"""A second verifier (``verify_with="itm"``): the matching head's reading of each answer is recorded, and
an answer it disagrees with is never ``verified``. The head's own numbers on a tiny BLIP are checked in
tests/models/test_family_pipeline.py; here the rule, on hand-made answers and on real verified answers of
the bundled model given a stand-in head."""

from __future__ import annotations

import numpy as np
import pytest

from counterclip.engine import Engine
from counterclip.engine.results import ResultItem
from counterclip.engine.verdicts import second_opinion
from counterclip.errors import InputError


def _items(verdicts: list[str]) -> list[ResultItem]:
    return [
        ResultItem(id=i, kind="image", verdict=v, verified=v == "verified") for i, v in enumerate(verdicts)
    ]


def test_a_match_asked_and_a_head_that_reads_no_match_is_not_verified() -> None:
    items = _items(["verified", "verified", "weak", "unverifiable"])
    warning = second_opinion(items, [0.2, 0.8, 0.1, None], wants_match=True)
    assert [i.verdict for i in items] == ["weak", "verified", "weak", "unverifiable"]
    assert [i.verified for i in items] == [False, True, False, False]
    assert [i.p_itm for i in items] == [0.2, 0.8, 0.1, None]
    assert warning is not None and "2 of 4 answers as no match" in warning


def test_no_match_asked_and_a_head_that_still_reads_a_match_is_not_verified() -> None:
    items = _items(["verified", "verified"])
    warning = second_opinion(items, [0.2, 0.7], wants_match=False)
    assert [i.verdict for i in items] == ["verified", "weak"]
    assert warning is not None and "1 of 2 answers as still a match" in warning
    agreeing = _items(["verified"])
    assert second_opinion(agreeing, [0.3], wants_match=False) is None
    assert agreeing[0].verdict == "verified" and agreeing[0].p_itm == 0.3


@pytest.fixture(scope="module")
def shapes_index(tmp_path_factory):
    from counterclip.index_builder import build_index
    from counterclip.shapes import generate_folder

    root = tmp_path_factory.mktemp("verify_with")
    generate_folder(root / "shapes", n=60, seed=5, size=64)
    build_index(root / "shapes", root / "idx", model="bundled:shapes", device="cpu", progress=False)
    return root


def test_verify_with_on_real_verified_answers(shapes_index, monkeypatch) -> None:
    query = str(shapes_index / "shapes" / "000000.png")
    with Engine.open(shapes_index / "idx", device="cpu") as engine:
        with pytest.raises(InputError, match="image-text matching head"):
            engine.counterfactuals(
                image=query, text="a red circle", verify_with="itm"
            )  # the bundled CLIP has none
        plain = engine.counterfactuals(image=query, text="a blue square", k=3)
        verified = [i.id for i in plain.items if i.verdict == "verified"]
        assert verified, "the bundled model verifies some answers here (the case the head must overrule)"
        seen: list[tuple[int, str]] = []

        def head(images, texts):  # a stand-in matching head that reads every pair as no match
            seen.extend((image.size[0], text) for image, text in zip(images, texts, strict=True))
            return np.full(len(images), 0.25)

        monkeypatch.setattr(engine.model, "match_head", head, raising=False)
        second = engine.counterfactuals(image=query, text="a blue square", k=3, verify_with="itm")
        assert [i.id for i in second.items] == [i.id for i in plain.items]  # same answers, re-read
        assert all(i.p_itm == 0.25 and i.verdict != "verified" for i in second.items)
        assert any(
            f"{len(second.items)} of {len(second.items)} answers as no match" in w for w in second.warnings
        )
        assert ("a blue square" in {t for _, t in seen}) and len(seen) >= len(second.items)
        with pytest.raises(InputError, match="verify_with must be one of itm"):
            engine.counterfactuals(image=query, text="a blue square", verify_with="ocr")


def test_the_services_counterfactual_request_takes_verify_with() -> None:
    pydantic = pytest.importorskip("pydantic")
    from counterclip.server.schemas import CounterfactualRequest

    request = CounterfactualRequest(image={"id": 0}, text="a red circle", verify_with="itm")
    assert request.verify_with == "itm"
    assert CounterfactualRequest(image={"id": 0}, text="a red circle").verify_with is None
    with pytest.raises(pydantic.ValidationError):
        CounterfactualRequest(image={"id": 0}, text="a red circle", verify_with="ocr")

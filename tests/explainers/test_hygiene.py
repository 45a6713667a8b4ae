"""Contract tests for every registered method (run with its ``cheap_options``): no hook survives (also on
errors), model state and inputs unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from clip_doubles import patch_image

from counterclip.explainers import REGISTRY, explain
from counterclip.models.base import weights_fingerprint

METHODS = REGISTRY.names()


def _cheap(method: str) -> dict:
    return dict(REGISTRY.get(method).cheap_options)


def _hook_count(module: torch.nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in module.modules()
    )


def _state(model) -> tuple:
    return (
        weights_fingerprint(model.module),
        [m.training for m in model.module.modules()],
        [p.requires_grad for p in model.module.parameters()],
        [p.grad for p in model.module.parameters()],
    )


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backend", ["tiny_vit", "tiny_hf"])
def test_model_and_inputs_come_back_unchanged(method: str, backend: str, request) -> None:
    model = request.getfixturevalue(backend)
    image = patch_image(5)
    image_bytes = image.tobytes()
    hooks_before = _hook_count(model.module)
    params = list(model.module.parameters())
    params[0].requires_grad_(False)  # an unusual mix of flags, and train mode, must both survive
    model.module.train()
    try:
        before = _state(model)
        explain(model, image, "a red circle", method=method, **_cheap(method))
        after = _state(model)
    finally:
        params[0].requires_grad_(True)
        model.module.eval()
    assert after[0] == before[0]  # weights
    assert after[1] == before[1] and any(after[1])  # train/eval flags
    assert after[2] == before[2] and not after[2][0]  # requires_grad flags
    assert all(g is None for g in after[3])  # no parameter gradient written
    assert _hook_count(model.module) == hooks_before
    assert image.tobytes() == image_bytes


class _Boom(RuntimeError):
    pass


def _exploding_target(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    raise _Boom("target failed")


_exploding_target.describe = lambda texts: "boom"  # type: ignore[attr-defined]


@pytest.mark.parametrize("method", METHODS)
def test_no_hook_survives_a_failing_call(method: str, tiny_vit) -> None:
    hooks_before = _hook_count(tiny_vit.module)
    modes = [m.training for m in tiny_vit.module.modules()]
    with pytest.raises(_Boom):
        explain(tiny_vit, patch_image(1), "x", method=method, target=_exploding_target, **_cheap(method))
    assert _hook_count(tiny_vit.module) == hooks_before
    assert [m.training for m in tiny_vit.module.modules()] == modes


def test_explain_works_under_no_grad_and_with_frozen_weights(tiny_vit) -> None:
    flags = [p.requires_grad for p in tiny_vit.module.parameters()]
    for p in tiny_vit.module.parameters():
        p.requires_grad_(False)
    try:
        with torch.no_grad():
            exp = explain(tiny_vit, patch_image(2), "a red circle", method="relevance", modality="both")
    finally:
        for p, flag in zip(tiny_vit.module.parameters(), flags, strict=True):
            p.requires_grad_(flag)
    assert np.isfinite(exp.patch_map).all() and exp.patch_map.max() > 0
    assert exp.token_map.max() > 0

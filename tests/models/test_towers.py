"""Tower internals on both backends: the attention recompute reproduces each module's own output, the
captured inputs are what each block feeds its attention, and no hook outlives its block."""

from __future__ import annotations

import pytest
import torch

from counterclip.models import load_model


@pytest.fixture(scope="module")
def models(tiny_openclip: str, tiny_hf_dir) -> dict:
    return {
        "open_clip": load_model(tiny_openclip, device="cpu"),
        "hf": load_model(f"hf:{tiny_hf_dir}", device="cpu"),
    }


def _inputs(model, rgb_images):
    pixels = model.preprocess_batch(rgb_images[:2])
    tokens = model.tokenize(["a red circle on the left", "a blue square"])
    return pixels, tokens


def _hook_count(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def _record_outputs(modules):
    """Forward hooks that keep each module's own output (first element of a tuple)."""
    outputs: dict[int, torch.Tensor] = {}

    def keep(index):
        def hook(module, args, output):
            outputs[index] = (output[0] if isinstance(output, tuple) else output).detach().clone()

        return hook

    return outputs, [m.register_forward_hook(keep(i)) for i, m in enumerate(modules)]


@pytest.mark.parametrize("backend", ["open_clip", "hf"])
@pytest.mark.parametrize("tower_name", ["image", "text"])
def test_attention_recompute_equals_the_modules_own_output(models, backend, tower_name, rgb_images) -> None:
    model = models[backend]
    tower = model.image_tower() if tower_name == "image" else model.text_tower()
    pixels, tokens = _inputs(model, rgb_images)

    def forward():
        return model.image_features(pixels) if tower_name == "image" else model.text_features(tokens)

    attentions = [tower.attention_of(block) for block in tower.blocks]
    assert len(attentions) == 2
    hooks_before = _hook_count(model.module)
    # Reference: the modules' own outputs, with nothing replaced.
    reference, handles = _record_outputs(attentions)
    with torch.no_grad():
        expected = forward()
    for handle in handles:
        handle.remove()
    # Recomputed: the capture hook replaces every attention output by the recomputed one.
    with torch.enable_grad(), tower.capture_attention([0, 1]) as capture:
        recomputed, handles = _record_outputs(attentions)  # registered after: sees the replaced output
        got = forward()
    for handle in handles:
        handle.remove()
    assert _hook_count(model.module) == hooks_before  # every capture hook is gone
    for index in (0, 1):
        ours = tower.tokens_first(recomputed[index])
        theirs = tower.tokens_first(reference[index])
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.detach(), expected, atol=1e-5, rtol=0)
    probs = capture.ordered()
    assert all(p.shape == (2, p.shape[1], p.shape[2], p.shape[2]) for p in probs)
    for p in probs:
        torch.testing.assert_close(p.sum(-1), torch.ones_like(p.sum(-1)), atol=1e-5, rtol=0)
        assert p.requires_grad  # on the path to the embedding
    if tower_name == "text":
        assert torch.all(probs[0][0, 0].triu(1) == 0)  # the text tower's causal mask was applied


def test_capture_attention_inputs_are_the_pre_attention_norm_outputs(models, rgb_images) -> None:
    for model, norm_name in ((models["open_clip"], "ln_1"), (models["hf"], "layer_norm1")):
        tower = model.image_tower()
        pixels, _ = _inputs(model, rgb_images)
        norms = [getattr(block, norm_name) for block in tower.blocks]
        reference, handles = _record_outputs(norms)
        try:
            with torch.no_grad(), tower.capture_attention_inputs([1, 0]) as stores:
                model.image_features(pixels)
        finally:
            for handle in handles:
                handle.remove()
        assert [s["x"].shape[0] for s in stores] == [2, 2]  # batch first whatever the tower's layout
        torch.testing.assert_close(stores[0]["x"], tower.tokens_first(reference[1]), atol=0, rtol=0)
        torch.testing.assert_close(stores[1]["x"], tower.tokens_first(reference[0]), atol=0, rtol=0)
        assert _hook_count(model.module) == 0


def test_hooks_are_removed_when_the_forward_pass_fails(models) -> None:
    model = models["open_clip"]
    tower = model.image_tower()
    with pytest.raises(RuntimeError):
        with tower.capture_attention([0, 1]), tower.capture_attention_inputs([0]):
            model.image_features(torch.zeros(1, 3, 7, 7))  # wrong size: the patch embedding fails
    assert _hook_count(model.module) == 0


def test_geometry_and_layers_come_from_the_backend(models) -> None:
    oc, hf = models["open_clip"].image_tower(), models["hf"].image_tower()
    assert (oc.grid, oc.prefix_tokens, hf.grid, hf.prefix_tokens) == ((4, 4), 1, (4, 4), 1)
    assert oc.layer_names() == ["transformer.resblocks.0", "transformer.resblocks.1"]
    assert hf.layer_names() == ["encoder.layers.0", "encoder.layers.1"]
    assert hf.default_layer() == "encoder.layers.1" and hf.layer("encoder.layers.0") is hf.blocks[0]

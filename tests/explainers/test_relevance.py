"""Relevance maps (Chefer et al. 2021): hand-set oracle, hook transparency, HF oracle, text maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from clip_doubles import OnePatchModel, patch_image

from counterclip.explainers import PairSimilarity, explain
from counterclip.explainers._core.common import prepare, select_blocks
from counterclip.explainers.relevance import rollout


@pytest.mark.parametrize("background", ["random", "dark"])
def test_relevance_peaks_on_the_only_patch_the_score_depends_on(
    one_patch_model: OnePatchModel, background: str
) -> None:
    image = patch_image(3, background=background)  # the bright patch is NOT the one the model reads
    exp = explain(one_patch_model, image, "anything", method="relevance")
    assert exp.patch_map.shape == (4, 4)
    assert exp.pixel_map.shape == (32, 32)
    assert int(np.argmax(exp.patch_map)) == one_patch_model.patch
    others = np.delete(exp.patch_map.reshape(-1), one_patch_model.patch)
    assert np.abs(others).max() < 1e-6 * exp.patch_map.max()


def test_relevance_value_matches_hand_computed_gradient(one_patch_model: OnePatchModel) -> None:
    image = patch_image(9, background="random", seed=3)
    exp = explain(one_patch_model, image, "anything", method="relevance")
    # The class token attends only to patch p, so R[cls, p] = dscore/dA[cls, p] = <dscore/d cls, v_p>,
    # with v_p the patch's mean colour and the embedding (rgb_p, 1); compute that directly.
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
    row, col = divmod(one_patch_model.patch, 4)
    rgb = pixels[row * 8 : row * 8 + 8, col * 8 : col * 8 + 8].reshape(-1, 3).mean(0).double()
    emb = torch.cat([rgb, torch.ones(1, dtype=torch.float64)]).requires_grad_(True)
    text = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64) / 3**0.5
    score = 10.0 * torch.nn.functional.normalize(emb, dim=0) @ text
    (grad,) = torch.autograd.grad(score, emb)
    expected = float((grad[:3] * rgb).sum())
    assert exp.score == pytest.approx(float(score.detach()), rel=1e-5)
    assert exp.patch_map.max() == pytest.approx(expected, rel=1e-4)


def test_rollout_of_identity_free_attention_adds_products() -> None:
    # Two blocks with hand-set attention and gradient 1: R = (I + A2)(I + A1).
    a1 = torch.tensor([[[[0.5, 0.5], [0.0, 1.0]]]])
    a2 = torch.tensor([[[[0.2, 0.8], [1.0, 0.0]]]])
    r = rollout([a1, a2], [torch.ones_like(a1), torch.ones_like(a2)])
    expected = (torch.eye(2) + a2[0, 0]) @ (torch.eye(2) + a1[0, 0])
    assert torch.allclose(r[0], expected)


def test_select_blocks() -> None:
    assert select_blocks(4, None) == [0, 1, 2, 3]
    assert select_blocks(4, 1) == [3]
    assert select_blocks(4, 2) == [2, 3]
    assert select_blocks(4, [0, -1]) == [0, 3]


def test_hf_relevance_matches_reference_from_output_attentions(tiny_hf, rgb_images) -> None:
    model = tiny_hf
    image, text = rgb_images[2], "a small blue square"
    exp = explain(model, image, text, method="relevance", modality="both")
    # Reference: HF eager attention with output_attentions=True keeps the probabilities in the graph.
    inputs = prepare(model, image, text)
    pixel_values = inputs.codec.to_model(inputs.pixels)
    vision = model.module.vision_model(pixel_values=pixel_values, output_attentions=True)
    text_out = model.module.text_model(input_ids=inputs.tokens, output_attentions=True)
    image_emb = torch.nn.functional.normalize(model.module.visual_projection(vision.pooler_output), dim=-1)
    text_emb = torch.nn.functional.normalize(model.module.text_projection(text_out.pooler_output), dim=-1)
    score = PairSimilarity(model.pair_score)(image_emb, text_emb)[0]
    attentions = list(vision.attentions) + list(text_out.attentions)
    grads = torch.autograd.grad(score, attentions)
    n_image = len(vision.attentions)
    r_image = rollout(attentions[:n_image], grads[:n_image])[0]
    expected_image = r_image[0, 1:].detach().numpy().reshape(4, 4)
    eot = int(model.eot_positions(inputs.tokens)[0])
    r_text = rollout(attentions[n_image:], grads[n_image:])[0]
    expected_text = r_text[eot, 1:eot].detach().numpy()
    assert exp.score == pytest.approx(float(score.detach()), rel=1e-5)
    np.testing.assert_allclose(exp.patch_map, expected_image, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(exp.token_map, expected_text, rtol=1e-4, atol=1e-6)
    assert exp.tokens == ["a", "small", "blue", "square"]
    assert exp.pixel_map.shape == (image.height, image.width)


def test_open_clip_text_map_covers_the_caption_tokens(tiny_vit, rgb_images) -> None:
    exp = explain(tiny_vit, rgb_images[1], "a large red circle", method="relevance", modality="text")
    assert exp.tokens == ["a", "large", "red", "circle"]
    assert exp.token_map.shape == (4,)
    assert np.all(exp.token_map >= 0) and exp.token_map.max() > 0
    assert exp.pixel_map is None
    assert (exp.forward_passes, exp.backward_passes) == (1, 1)


def test_last_block_only_differs_from_all_blocks(tiny_vit, rgb_images) -> None:
    all_blocks = explain(tiny_vit, rgb_images[0], "a red circle", method="relevance")
    last = explain(tiny_vit, rgb_images[0], "a red circle", method="relevance", blocks=1)
    assert last.extras["blocks"] == [1] and all_blocks.extras["blocks"] == [0, 1]
    assert not np.allclose(last.patch_map, all_blocks.patch_map)


def test_counterfactual_maps(tiny_vit, rgb_images) -> None:
    from counterclip.explainers import EmbeddingMargin, image_counterfactual_maps, text_counterfactual_maps
    from counterclip.explainers._core.common import PixelCodec, image_embedding

    query, result = rgb_images[0], rgb_images[1]
    pair_map, margin_map = image_counterfactual_maps(tiny_vit, query, result, "a red circle")
    assert pair_map.pixel_map.shape == margin_map.pixel_map.shape == (result.height, result.width)
    codec = PixelCodec.of(tiny_vit)
    emb = {
        name: image_embedding(tiny_vit, codec, codec.pil_to_pixels(im))[0]
        for name, im in (("q", query), ("r", result))
    }
    text = tiny_vit.text_features(tiny_vit.tokenize(["a red circle"])).detach()[0]
    expected = EmbeddingMargin(text, emb["q"], tiny_vit.pair_score)(emb["r"][None], text[None])
    assert margin_map.score == pytest.approx(float(expected), abs=1e-4)
    pair, margin = text_counterfactual_maps(tiny_vit, query, "a red circle", "a blue circle")
    assert (
        pair.tokens == ["a", "blue", "circle"]
        and margin.explains == "margin 'a blue circle' over 'a red circle'"
    )

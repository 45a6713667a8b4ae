"""The model families beside CLIP (BLIP, SigLIP through Hugging Face and open_clip, SLIP) on tiny random
models written in the test: each family's score equals its own forward, embeddings are unit-norm, the
fingerprint is stable, the towers recompute their own attention, and bad checkpoints are one clear error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from family_models import (
    write_tiny_blip,
    write_tiny_blip_without_heads,
    write_tiny_openclip_siglip,
    write_tiny_siglip,
    write_tiny_slip,
)
from PIL import Image

from counterclip.cli import run
from counterclip.errors import ModelLoadError
from counterclip.models import load_model
from counterclip.models.families import FAMILIES

TEXTS = ["a red circle", "a small blue square on the left", "a green star"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("families")
    reference = write_tiny_slip(root / "slip" / "checkpoint.pt")
    return {
        "blip": f"hf:{write_tiny_blip(root / 'blip')}",
        "siglip": f"hf:{write_tiny_siglip(root / 'siglip')}",
        "open_clip_siglip": write_tiny_openclip_siglip(root / "oc_siglip"),
        "slip": f"slip:{root / 'slip' / 'checkpoint.pt'}",
        "slip_reference": reference,
        "root": root,
    }


@pytest.fixture(scope="module")
def models(files) -> dict:
    return {name: load_model(files[name], device="cpu") for name in FAMILY_SPECS}


FAMILY_SPECS = ("blip", "siglip", "open_clip_siglip", "slip")


@pytest.fixture()
def images() -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 256, size=(40 + 8 * i, 48, 3), dtype=np.uint8)) for i in range(2)]


def _scores(model, images) -> torch.Tensor:
    return model.score(model.encode_pil(images), model.encode_texts(TEXTS))


def test_blip_score_is_its_contrastive_forward_and_match_head_its_itm_forward(models, images) -> None:
    model = models["blip"]
    assert model.family == "blip"
    assert model.pair_score.scale == 1.0 and model.pair_score.bias == 0.0  # a plain cosine
    pixels = model.preprocess_batch(images)
    encoded = model._tokenizer(
        TEXTS, padding="max_length", max_length=35, truncation=True, return_tensors="pt"
    )
    with torch.no_grad():
        own = model.module(
            input_ids=encoded["input_ids"],
            pixel_values=pixels,
            attention_mask=encoded["attention_mask"],
            use_itm_head=False,
        ).itm_score
    torch.testing.assert_close(_scores(model, images), own, atol=1e-5, rtol=0)
    # the matching head: one forward per pair, p(match) = softmax(itm logits)[:, 1]
    pairs_images = [images[0], images[1], images[0]]
    with torch.no_grad():
        logits = model.module(
            input_ids=encoded["input_ids"],
            pixel_values=model.preprocess_batch(pairs_images),
            attention_mask=encoded["attention_mask"],
            use_itm_head=True,
        ).itm_score
    expected = torch.softmax(logits, dim=-1)[:, 1].double().numpy()
    np.testing.assert_allclose(model.match_head(pairs_images, TEXTS), expected, atol=1e-6)
    assert model.match_head([], []).shape == (0,)


def test_blip_text_embedding_ignores_padding(models) -> None:
    model = models["blip"]
    padded = model.tokenize(["a small blue square"])
    length = int((padded != 0).sum())
    assert padded.shape[1] == model.context_length == 35  # BLIP's retrieval length (max positions 40)
    with torch.no_grad():
        full = model.text_features(padded)
        short = model.text_features(padded[:, :length])
    torch.testing.assert_close(full, short, atol=1e-6, rtol=0)


def test_siglip_score_is_siglip_logits_with_bias(models, images) -> None:
    model = models["siglip"]
    assert model.family == "siglip"
    score = model.pair_score
    assert score.link == "sigmoid" and score.absolute
    assert score.scale == pytest.approx(10.0) and score.bias == pytest.approx(-10.0)
    tokens = model.tokenize(TEXTS)
    assert tokens.shape[1] == model.context_length == 16  # padded to the full context, as SigLIP trained
    with torch.no_grad():
        own = model.module(input_ids=tokens, pixel_values=model.preprocess_batch(images)).logits_per_image
    ours = _scores(model, images)
    torch.testing.assert_close(ours, own, atol=1e-5, rtol=0)
    torch.testing.assert_close(score.match_probability(ours), torch.sigmoid(own), atol=1e-6, rtol=0)


def test_open_clip_siglip_config_scores_with_its_logit_bias(models, images) -> None:
    model = models["open_clip_siglip"]
    assert model.family == "siglip"
    assert model.pair_score.link == "sigmoid" and model.pair_score.bias == pytest.approx(-10.0)
    with torch.no_grad():
        own, _ = model.module.get_logits(model.preprocess_batch(images), model.tokenize(TEXTS))
    torch.testing.assert_close(_scores(model, images), own, atol=1e-5, rtol=0)


def test_slip_score_is_the_slip_models_own(models, files, images) -> None:
    model, reference = models["slip"], files["slip_reference"]
    assert model.family == "slip" and model.pair_score.link == "softmax"
    pixels, tokens = model.preprocess_batch(images), model.tokenize(TEXTS)
    with torch.no_grad():
        image_emb = torch.nn.functional.normalize(reference.encode_image(pixels), dim=-1)
        text_emb = torch.nn.functional.normalize(reference.encode_text(tokens), dim=-1)
        own = reference.logit_scale.exp() * image_emb @ text_emb.T
    torch.testing.assert_close(_scores(model, images), own, atol=1e-5, rtol=0)
    # ImageNet normalisation: a mid-grey image maps to (0.5 - mean) / std per channel
    grey = model.preprocess(Image.new("RGB", (64, 64), (128, 128, 128)))
    expected = (128 / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(grey[:, 0, 0].numpy(), expected, atol=1e-5)
    assert tuple(grey.shape) == (3, 32, 32)


@pytest.mark.parametrize("name", FAMILY_SPECS)
def test_embeddings_are_unit_norm(models, images, name) -> None:
    model = models[name]
    for emb in (model.encode_pil(images), model.encode_texts(TEXTS)):
        assert emb.shape[1] == model.embed_dim
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(len(emb)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", FAMILY_SPECS)
def test_fingerprint_is_stable_and_follows_the_weights(models, files, name) -> None:
    again = load_model(files[name], device="cpu")
    assert again.fingerprint == models[name].fingerprint
    with torch.no_grad():
        next(again.module.parameters()).add_(1e-3)
    again._fingerprint = None
    assert again.fingerprint != models[name].fingerprint


@pytest.mark.parametrize("name", FAMILY_SPECS)
def test_text_positions_cover_the_texts_own_tokens(models, name) -> None:
    model = models[name]
    tokens = model.tokenize(TEXTS)
    for text, positions, row in zip(TEXTS, model.text_positions(tokens), tokens.tolist(), strict=True):
        content = row[positions.content]
        assert len(content) == len(model.token_strings(text))  # the text's own tokens, no padding
    if name in ("siglip", "open_clip_siglip"):  # read at the last position, after the padding
        assert all(p.pooled == tokens.shape[1] - 1 for p in model.text_positions(tokens))
    if name == "blip":  # read at [CLS]
        assert all(p.pooled == 0 for p in model.text_positions(tokens))


def _hook_count(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


@pytest.mark.parametrize("name", FAMILY_SPECS)
@pytest.mark.parametrize("tower_name", ["image", "text"])
def test_attention_recompute_keeps_the_towers_output(models, images, name, tower_name) -> None:
    model = models[name]
    tower = model.image_tower() if tower_name == "image" else model.text_tower()
    pixels, tokens = model.preprocess_batch(images), model.tokenize(TEXTS[:2])

    def forward():
        return model.image_features(pixels) if tower_name == "image" else model.text_features(tokens)

    with torch.no_grad():
        expected = forward()
    hooks = _hook_count(model.module)
    indices = list(range(len(tower.blocks)))
    pooled = tower_name == "image" and tower.readout == "pool"
    with torch.enable_grad(), tower.capture_attention(indices) as capture:
        if pooled:
            with tower.capture_pool_attention() as pool:
                got = forward()
            pool_probs = pool.ordered()[0]
            gh, gw = tower.grid
            assert pool_probs.shape[0] == len(images)
            assert (
                pool_probs.shape[-1] == gh * gw + tower.prefix_tokens - tower.pool_from
            )  # the tokens it reads
            torch.testing.assert_close(
                pool_probs.sum(-1), torch.ones_like(pool_probs.sum(-1)), atol=1e-5, rtol=0
            )
        else:
            got = forward()
    assert _hook_count(model.module) == hooks
    torch.testing.assert_close(got.detach(), expected, atol=1e-5, rtol=0)
    for probs in capture.ordered():
        torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)), atol=1e-5, rtol=0)
    if tower_name == "text" and name == "blip":  # [PAD] keys are masked out
        padding = tokens[0] == 0
        assert torch.all(capture.ordered()[0][0][..., padding] == 0)


def test_models_lists_every_family_with_an_example_spec(capsys) -> None:
    assert run(["models", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    listed = {f["family"]: f for f in payload["families"]}
    assert set(listed) == {"clip", "siglip", "blip", "slip"} == {f.name for f in FAMILIES}
    assert all(f["examples"] and f["examples"][0]["spec"] for f in listed.values())
    assert any(e["spec"].startswith("slip:") for e in listed["slip"]["examples"])
    assert any(e["spec"].startswith("hf:") for e in listed["blip"]["examples"])


def test_models_describes_a_loaded_family(files, capsys) -> None:
    assert run(["models", files["siglip"], "--json", "--device", "cpu"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["family"] == "siglip"
    assert payload["pair_score"]["link"] == "sigmoid" and payload["pair_score"]["bias"] == pytest.approx(
        -10.0
    )


# --- bad input: one clear error each, exit 2 from the CLI ----------------------------------------------
def _cli_error(argv: list[str], capsys) -> str:
    assert run(argv) == 2
    out = capsys.readouterr()
    text = " ".join((out.out + out.err).split())
    assert "Traceback" not in text
    return text


def test_a_checkpoint_of_an_unknown_family_is_one_clear_error(tmp_path, capsys) -> None:
    directory = tmp_path / "bert"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    with pytest.raises(ModelLoadError, match="'bert' model .*clip, siglip, blip"):
        load_model(f"hf:{directory}", device="cpu")
    text = _cli_error(["models", f"hf:{directory}", "--device", "cpu"], capsys)
    assert "error:" in text and "'bert'" in text and "model_type" in text


def test_a_config_with_a_missing_head_is_one_clear_error(tmp_path, capsys) -> None:
    directory = write_tiny_blip_without_heads(tmp_path / "blip_model")
    with pytest.raises(ModelLoadError, match="lacks the contrastive and matching heads") as caught:
        load_model(f"hf:{directory}", device="cpu")
    message = str(caught.value)
    assert "BlipModel" in message and "BlipForImageTextRetrieval" in message and "\n" not in message
    assert any(head in message for head in ("itm_head", "text_proj", "vision_proj", "text_encoder"))
    text = _cli_error(["models", f"hf:{directory}", "--device", "cpu"], capsys)
    assert "lacks the contrastive and matching heads" in text


class Smuggled:
    """An object a SLIP checkpoint must never unpickle."""


def test_a_slip_file_with_unexpected_globals_is_refused_unread(tmp_path, capsys) -> None:
    path = tmp_path / "evil.pt"
    write_tiny_slip(path, extra=Smuggled())
    with pytest.raises(
        ModelLoadError, match=r"holds a pickled .*Smuggled, which counterclip does not unpickle"
    ):
        load_model(f"slip:{path}", device="cpu")
    text = _cli_error(["models", f"slip:{path}", "--device", "cpu"], capsys)
    assert "Smuggled" in text


def test_a_slip_checkpoint_of_another_kind_is_one_clear_error(tmp_path) -> None:
    simclr = tmp_path / "simclr.pt"
    write_tiny_slip(simclr, model="SIMCLR_VITB16")
    with pytest.raises(ModelLoadError, match="SIMCLR checkpoint .* no text tower"):
        load_model(f"slip:{simclr}", device="cpu")
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(ModelLoadError, match="not a SLIP checkpoint"):
        load_model(f"slip:{plain}", device="cpu")
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(f"slip:{tmp_path / 'missing.pt'}", device="cpu")


def test_open_clip_siglip_tokenizer_positions_and_strings_align(models, files) -> None:
    """open_clip's SigLIP tokenizer (no start token, end of text 1, padding to the context) over a
    SentencePiece vocabulary: the text's own tokens are found and named, whatever its case and punctuation."""
    from open_clip.tokenizer import SigLipTokenizer
    from transformers import SiglipTokenizer

    model = models["open_clip_siglip"]
    wrapper = SigLipTokenizer.__new__(SigLipTokenizer)  # its __init__ fetches a vocabulary file
    wrapper.tokenizer = SiglipTokenizer(str(files["root"] / "siglip" / "spiece.model"))
    wrapper.tokenizer.pad_token_id, wrapper.tokenizer.eos_token_id = 1, 1
    wrapper.context_length = model.context_length
    original = model._tokenizer
    model._tokenizer = wrapper
    try:
        text = "A small, blue SQUARE!"
        tokens = model.tokenize([text])
        (positions,) = model.text_positions(tokens)
        assert positions.pooled == model.context_length - 1 and positions.content == slice(0, 4)
        assert model.token_strings(text) == ["a", "small", "blue", "square"]
        assert tokens[0, 4] == 1  # end of text right after the text's own tokens
    finally:
        model._tokenizer = original

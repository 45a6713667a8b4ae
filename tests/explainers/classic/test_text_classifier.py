"""Text classifiers: layer IG completeness on a tiny random BERT, pad baseline, LIME text, label errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from counterclip.errors import InputError, ModelLoadError
from counterclip.explainers.classic import explain_text_ig, explain_text_lime, load_text_classifier
from counterclip.explainers.classic.text_classifier import pad_baseline, resolve_label

TEXT = "the film was great but the plot was boring"


@pytest.fixture(scope="module")
def classifier(tiny_bert_dir: Path):
    return load_text_classifier(tiny_bert_dir)


def test_ig_completeness_on_tiny_bert(classifier) -> None:
    model, tokenizer = classifier
    explanation = explain_text_ig(model, tokenizer, TEXT, target="POSITIVE", n_steps=64)
    encoded = tokenizer(TEXT, return_tensors="pt")
    with torch.no_grad():  # the oracle: the target logit at the input and at the pad baseline
        at_input = model(**encoded).logits[0, 1]
        baseline_ids = pad_baseline(tokenizer, encoded["input_ids"])
        at_baseline = model(input_ids=baseline_ids, attention_mask=encoded["attention_mask"]).logits[0, 1]
    assert abs(float(at_input - at_baseline)) > 0.05  # the check below is not vacuous
    assert explanation.token_map.sum() == pytest.approx(float(at_input - at_baseline), abs=1e-3)
    assert explanation.score == pytest.approx(float(at_input), abs=1e-5)
    assert abs(explanation.extras["convergence_delta"]) < 1e-3
    assert explanation.tokens == ["[CLS]", *TEXT.split(), "[SEP]"]
    assert (
        explanation.token_map[0] == 0.0 and explanation.token_map[-1] == 0.0
    )  # CLS/SEP kept in the baseline
    assert explanation.extras["label_name"] == "POSITIVE"
    # 64 interpolation steps, plus input and baseline once to read the layer, and once more for the delta.
    assert (explanation.forward_passes, explanation.backward_passes) == (64 + 4, 64)


def test_pad_baseline_keeps_cls_and_sep(classifier) -> None:
    _, tokenizer = classifier
    ids = tokenizer("the zebra film", return_tensors="pt")["input_ids"]  # "zebra" is [UNK]: content, padded
    baseline = pad_baseline(tokenizer, ids)
    pad, cls, sep = tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id
    assert baseline.tolist() == [[cls, pad, pad, pad, sep]]


def test_ig_leaves_model_as_it_was(classifier) -> None:
    model, tokenizer = classifier
    model.train()
    try:
        explain_text_ig(model, tokenizer, "a good movie", n_steps=4)
        assert model.training and all(m.training for m in model.modules())
        assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    finally:
        model.eval()


def test_lime_text_weights_words_and_is_seeded(classifier) -> None:
    model, tokenizer = classifier
    first = explain_text_lime(model, tokenizer, TEXT, target=0, num_samples=150, seed=3)
    second = explain_text_lime(model, tokenizer, TEXT, target=0, num_samples=150, seed=3)
    assert first.tokens == TEXT.split()
    np.testing.assert_array_equal(first.token_map, second.token_map)
    assert np.abs(first.token_map).max() > 0
    assert first.forward_passes == 150 and first.extras["label_name"] == "NEGATIVE"
    with torch.no_grad():
        probability = torch.softmax(model(**tokenizer(TEXT, return_tensors="pt")).logits, -1)[0, 0]
    assert first.score == pytest.approx(float(probability), abs=1e-5)


def test_labels_and_loading_errors(classifier, tmp_path: Path) -> None:
    model, _ = classifier
    assert resolve_label(model, "positive") == 1 and resolve_label(model, 0) == 0
    with pytest.raises(InputError, match="unknown target label 'NEUTRAL'.*NEGATIVE, POSITIVE"):
        resolve_label(model, "NEUTRAL")
    with pytest.raises(InputError, match="out of range"):
        resolve_label(model, 5)
    with pytest.raises(ModelLoadError, match="cannot load a sequence classifier"):
        load_text_classifier(tmp_path / "missing")

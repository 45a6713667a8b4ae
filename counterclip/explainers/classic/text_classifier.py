"""Token attributions for Hugging Face sequence classifiers: layer integrated gradients and LIME text.

Integrated gradients run on the word-embedding layer (``model.get_input_embeddings()``) from a baseline
where every token except the special ones (CLS, SEP, ...) is the pad token, so the special tokens stay in
place and each word's attribution is measured against "nothing there". The convergence delta (sum of
attributions minus the change of the target logit) is reported.

Examples::

    >>> model, tokenizer = load_text_classifier("distilbert-base-uncased-finetuned-sst-2-english")
    >>> ig = explain_text_ig(model, tokenizer, "a gripping, beautiful film", target="POSITIVE")
    >>> list(zip(ig.tokens, ig.token_map.round(2)))
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from counterclip.errors import InputError, ModelLoadError
from counterclip.explainers.base import Explanation
from counterclip.explainers.classic.layers import PassCounter, model_device, scoped_eval


def load_text_classifier(source: str | Path) -> tuple[nn.Module, object]:
    """``AutoModelForSequenceClassification`` and its tokenizer from a hub id or a local directory.

    Returns:
        ``(model, tokenizer)``. A hub id is only fetched when the network and the hub cache allow it.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source))
        model = AutoModelForSequenceClassification.from_pretrained(str(source))
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"cannot load a sequence classifier from {source!s}: {first} "
            "(give a local directory saved with save_pretrained, or a hub id cached on this machine)"
        ) from exc
    return model, tokenizer


def label_names(model: nn.Module) -> list[str]:
    """The model's class labels (``config.id2label``), index order."""
    n_labels = int(model.config.num_labels)
    id2label = getattr(model.config, "id2label", None) or {}
    return [str(id2label.get(i, f"LABEL_{i}")) for i in range(n_labels)]


def resolve_label(model: nn.Module, target: str | int | None, logits: torch.Tensor | None = None) -> int:
    """A class index from an index, a label name (case-insensitive), or the top prediction when None."""
    names = label_names(model)
    if target is None:
        if logits is None:
            raise InputError("no target label and no logits to pick the predicted one")
        return int(logits.argmax())
    text = str(target).strip()
    if text.lstrip("-").isdigit() and text not in names:
        index = int(text)
        if not 0 <= index < len(names):
            raise InputError(f"target label {index} is out of range: the classifier has {len(names)} labels")
        return index
    lowered = [name.lower() for name in names]
    if text.lower() not in lowered:
        raise InputError(f"unknown target label {text!r}; the classifier's labels are {', '.join(names)}")
    return lowered.index(text.lower())


def explain_text_ig(
    model: nn.Module,
    tokenizer: object,
    text: str,
    target: str | int | None = None,
    n_steps: int = 50,
    internal_batch_size: int | None = 16,
    max_length: int = 512,
) -> Explanation:
    """Layer integrated gradients of the target logit w.r.t. the word embeddings, summed per token.

    Args:
        model: a Hugging Face sequence classifier.
        tokenizer: its tokenizer (fast or slow).
        text: the input text.
        target: label name or index. Default: the predicted label.
        n_steps: integration steps.
        internal_batch_size: interpolated inputs per forward pass.
        max_length: tokens kept (truncation).

    Returns:
        `Explanation` with ``tokens`` (the tokenizer's tokens, CLS/SEP included), ``token_map``
        ``(n_tokens,)`` attributions summing to ``score - baseline score`` up to the reported
        ``extras["convergence_delta"]``; ``score`` is the target logit.
    """
    started = time.perf_counter()
    input_ids, attention_mask = _encode(tokenizer, text, max_length, model_device(model))
    baseline_ids = pad_baseline(tokenizer, input_ids)
    logits_of = _logits_function(model)
    with scoped_eval(model):
        with torch.no_grad():
            logits = logits_of(input_ids, attention_mask)[0]
            baseline_logits = logits_of(baseline_ids, attention_mask)[0]
        label = resolve_label(model, target, logits)
        with PassCounter(model) as passes:
            attributions, delta = _layer_integrated_gradients(
                model,
                logits_of,
                (input_ids, baseline_ids, attention_mask),
                label,
                n_steps,
                internal_batch_size,
            )
    names = label_names(model)
    return Explanation(
        method="ig",
        modality="text",
        score=float(logits[label]),
        tokens=tokenizer.convert_ids_to_tokens(input_ids[0].tolist()),
        token_map=attributions[0].sum(dim=-1).detach().float().cpu().numpy(),
        explains=f"logit of {names[label]!r} (label {label})",
        forward_passes=passes.forward,
        backward_passes=passes.backward,
        seconds=time.perf_counter() - started,
        extras=_ig_extras(label, names[label], logits, baseline_logits, float(delta[0]), n_steps),
    )


def _ig_extras(
    label: int, name: str, logits: torch.Tensor, baseline_logits: torch.Tensor, delta: float, n_steps: int
) -> dict[str, object]:
    """What the IG explanation records besides its map: the label, its probability, the baseline's score
    and how closely the attributions add up (``convergence_delta``)."""
    return {
        "label": label,
        "label_name": name,
        "probability": float(torch.softmax(logits, dim=0)[label]),
        "baseline_score": float(baseline_logits[label]),
        "baseline": "pad token at every non-special position (CLS/SEP kept)",
        "convergence_delta": delta,
        "n_steps": n_steps,
    }


def _encode(
    tokenizer: object, text: str, max_length: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, each ``(1, n_tokens)`` on ``device`` (truncated to ``max_length``)."""
    encoded = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)
    input_ids = encoded["input_ids"].to(device)
    attention_mask = encoded.get("attention_mask", torch.ones_like(encoded["input_ids"])).to(device)
    return input_ids, attention_mask


def _logits_function(model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(ids, mask) -> logits`` of the classifier, the mask widened to the batch of ids."""

    def logits_of(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # LayerIG expands the mask along with the interpolated batch; keep shapes aligned for safety.
        if mask.shape[0] != ids.shape[0]:
            mask = mask.expand(ids.shape[0], -1)
        return model(input_ids=ids, attention_mask=mask).logits

    return logits_of


def _layer_integrated_gradients(
    model: nn.Module,
    logits_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    label: int,
    n_steps: int,
    internal_batch_size: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Captum's layer IG of the ``label`` logit at the word embeddings, from the baseline ids to the ids
    (``inputs``: ids, baseline ids, attention mask); -> (attributions ``(1, n_tokens, d)``, delta ``(1,)``)."""
    from captum.attr import LayerIntegratedGradients

    input_ids, baseline_ids, attention_mask = inputs
    return LayerIntegratedGradients(logits_of, model.get_input_embeddings()).attribute(
        input_ids,
        baselines=baseline_ids,
        additional_forward_args=(attention_mask,),
        target=label,
        n_steps=n_steps,
        internal_batch_size=internal_batch_size,
        return_convergence_delta=True,
    )


def pad_baseline(tokenizer: object, input_ids: torch.Tensor) -> torch.Tensor:
    """``input_ids`` with every token but CLS/SEP-like specials replaced by the pad token, ``(1, n_tokens)``."""
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise InputError(
            "the tokenizer has no pad token, so there is no pad baseline; set tokenizer.pad_token"
        )
    # Structural tokens (CLS, SEP, BOS, EOS) stay; an unknown or mask token in the input carries content.
    special = set(tokenizer.all_special_ids) - {tokenizer.unk_token_id, tokenizer.mask_token_id}
    keep = torch.tensor(
        [[token in special for token in row] for row in input_ids.tolist()],
        dtype=torch.bool,
        device=input_ids.device,
    )
    return torch.where(keep, input_ids, torch.full_like(input_ids, pad_id))


def predict_proba_texts(
    model: nn.Module, tokenizer: object, texts: Sequence[str], batch_size: int = 64, max_length: int = 512
) -> np.ndarray:
    """Class probabilities ``(len(texts), n_labels)`` for a list of texts, in batches."""
    rows = []
    with scoped_eval(model), torch.no_grad():
        for start in range(0, len(texts), batch_size):
            encoded = tokenizer(
                list(texts[start : start + batch_size]),
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_length,
            )
            encoded = {name: tensor.to(model_device(model)) for name, tensor in encoded.items()}
            rows.append(torch.softmax(model(**encoded).logits, dim=-1).float().cpu().numpy())
    return np.concatenate(rows, axis=0)


def explain_text_lime(
    model: nn.Module,
    tokenizer: object,
    text: str,
    target: str | int | None = None,
    num_samples: int = 500,
    seed: int = 0,
) -> Explanation:
    """LIME text: weights of a local linear model over the words of ``text``, for one label.

    Words are masked by position (``bow=False``, replaced with the tokenizer's unknown token), so a word
    that occurs twice gets two weights.

    Returns:
        `Explanation` with ``tokens`` the words and ``token_map`` ``(n_words,)`` their LIME weights for
        the label's probability; ``score`` is that probability; ``extras`` has LIME's ``intercept``,
        ``local_prediction`` and ``r2`` (its fit score).
    """
    from lime.lime_text import LimeTextExplainer

    started = time.perf_counter()
    calls = {"forward": 0}

    def classifier_fn(texts: list[str]) -> np.ndarray:
        calls["forward"] += len(texts)
        return predict_proba_texts(model, tokenizer, texts)

    probabilities = predict_proba_texts(model, tokenizer, [text])[0]
    label = resolve_label(model, target, torch.from_numpy(probabilities))
    mask = getattr(tokenizer, "unk_token", None) or "UNKWORDZ"
    explainer = LimeTextExplainer(bow=False, mask_string=mask, random_state=seed)
    explanation = explainer.explain_instance(
        text, classifier_fn, labels=(label,), num_features=10_000, num_samples=num_samples
    )
    words = explanation.domain_mapper.indexed_string.inverse_vocab
    weights = np.zeros(len(words))
    for index, weight in explanation.as_map()[label]:
        weights[index] = weight
    names = label_names(model)
    return Explanation(
        method="lime",
        modality="text",
        score=float(probabilities[label]),
        tokens=[str(word) for word in words],
        token_map=weights,
        explains=f"probability of {names[label]!r} (label {label})",
        forward_passes=calls["forward"],
        backward_passes=0,
        seconds=time.perf_counter() - started,
        extras={
            "label": label,
            "label_name": names[label],
            "intercept": float(explanation.intercept[label]),
            "local_prediction": float(np.ravel(explanation.local_pred)[0]),
            "r2": float(explanation.score),
            "num_samples": num_samples,
        },
    )


#: What ``explain-text-classifier --method`` takes.
TEXT_METHODS: tuple[str, ...] = ("ig", "lime", "both")


def explain_text(
    model: nn.Module,
    tokenizer: object,
    text: str,
    method: str = "ig",
    target: str | int | None = None,
    steps: int = 50,
    samples: int = 500,
    seed: int = 0,
) -> list[Explanation]:
    """Token attributions of ``text`` by ``method`` (``ig``, ``lime`` or ``both``: IG first, then LIME).

    Args:
        model, tokenizer: from `load_text_classifier`.
        text: the input text (not empty).
        method: one of `TEXT_METHODS`.
        target: label name or index (default: the predicted label).
        steps: integrated-gradients steps (at least 1).
        samples: LIME perturbed samples (at least 10).
        seed: LIME random seed.

    Returns:
        One `Explanation` per method.
    """
    if method not in TEXT_METHODS:
        raise InputError(f"unknown text method {method!r}; choose one of {', '.join(TEXT_METHODS)}")
    if not text.strip():
        raise InputError("the text to explain is empty")
    if steps < 1 or samples < 10:
        raise InputError("--steps must be at least 1 and --samples at least 10")
    explanations = []
    if method in ("ig", "both"):
        explanations.append(explain_text_ig(model, tokenizer, text, target, n_steps=steps))
    if method in ("lime", "both"):
        explanations.append(explain_text_lime(model, tokenizer, text, target, num_samples=samples, seed=seed))
    return explanations

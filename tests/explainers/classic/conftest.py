"""Fixtures for the classical explainers: a tiny CNN with a planted detector, a tiny random BERT classifier."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (
    "the a film movie was is great good bad awful boring plot actors story and but not very".split()
)


class TinyCnn(nn.Module):
    """conv(3->4) -> ReLU -> conv(4->6) -> ReLU -> global average pool -> linear(6->3)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def planted_detector_cnn() -> TinyCnn:
    """A `TinyCnn` whose class 1 fires only on a bright patch in the red channel.

    Channel 0 of the first conv sums a 3x3 red neighbourhood minus a threshold, so it is positive only
    where the red channel is bright; the second conv passes it through and the head reads it as class 1.
    """
    model = TinyCnn()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        model.features[0].weight[0, 0] = 1.0
        model.features[0].bias[0] = -4.0  # a 3x3 window of red values near 1 sums to ~9; noise stays below 4
        model.features[2].weight[0, 0, 1, 1] = 1.0
        model.classifier.weight[1, 0] = 5.0
    return model


@pytest.fixture()
def tiny_cnn() -> TinyCnn:
    """A seeded random `TinyCnn` (training mode, as users hand models over)."""
    torch.manual_seed(0)
    return TinyCnn()


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny random BERT sequence classifier (2 labels) with a word-level vocabulary."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    directory = tmp_path_factory.mktemp("tiny_bert")
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(TINY_VOCAB) + "\n")
    # transformers 5 takes the vocabulary file as `vocab` (a `vocab_file` keyword is silently ignored).
    tokenizer = BertTokenizerFast(vocab=str(vocab_file), do_lower_case=True)
    config = BertConfig(
        vocab_size=len(TINY_VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
        initializer_range=0.5,  # large random weights, so the logits depend visibly on the words
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory

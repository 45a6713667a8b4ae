"""Fixtures for the classical explainers: a seeded tiny CNN and a saved tiny random BERT classifier."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from classic_doubles import TINY_VOCAB, TinyCnn


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

"""Test doubles for the classical explainers (a module with a unique name, importable from every test file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


def write_houses(path: Path, rows: int = 120) -> Path:
    """A CSV of 120 houses: price = 50 * rooms + a city effect (north 100, east 40, south 0) - age + noise."""
    rng = np.random.default_rng(0)
    lines = ["rooms,city,age,price"]
    for _ in range(rows):
        rooms, city, age = rng.integers(1, 7), rng.choice(["north", "south", "east"]), rng.uniform(0, 50)
        price = 50 * rooms + {"north": 100, "south": 0, "east": 40}[city] - age + rng.normal(0, 5)
        lines.append(f"{rooms},{city},{age:.2f},{price:.2f}")
    path.write_text("\n".join(lines) + "\n")
    return path

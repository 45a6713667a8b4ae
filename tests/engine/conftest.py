"""Fixtures for the engine tests."""

from __future__ import annotations

import numpy as np
import pytest
from doubles import colour_texts_table


@pytest.fixture()
def colour_texts() -> dict[str, np.ndarray]:
    return colour_texts_table()

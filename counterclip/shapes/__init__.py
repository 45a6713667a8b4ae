"""The shapes world: rendered images with known attributes, captions, and model evaluation.

Public API (re-exported from ``counterclip.shapes.world`` and ``counterclip.shapes.evaluate``).
"""

from __future__ import annotations

from counterclip.shapes.evaluate import evaluate_model, full_caption_candidates
from counterclip.shapes.world import (
    ATTRIBUTES,
    BACKGROUNDS,
    COLOURS,
    FULL_CAPTION,
    HOLDOUT,
    POSITIONS,
    SHAPES,
    SIZES,
    TEMPLATES,
    VALUES,
    ShapeAttrs,
    attribute_prompts,
    attrs_of,
    caption,
    generate_folder,
    parse_caption,
    parse_exclusion,
    random_caption,
    read_labels,
    render,
    sample_attrs,
    seen_pairs,
    vocabulary,
)

__all__ = [
    "ATTRIBUTES",
    "BACKGROUNDS",
    "COLOURS",
    "FULL_CAPTION",
    "HOLDOUT",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "TEMPLATES",
    "VALUES",
    "ShapeAttrs",
    "attribute_prompts",
    "attrs_of",
    "caption",
    "evaluate_model",
    "full_caption_candidates",
    "generate_folder",
    "parse_caption",
    "parse_exclusion",
    "random_caption",
    "read_labels",
    "render",
    "sample_attrs",
    "seen_pairs",
    "vocabulary",
]

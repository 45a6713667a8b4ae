"""Fit the calibration shipped with the bundled shapes model: ``counterclip/data/shapes/calibration.json``.

The shapes world knows the truth of every caption, so the calibration is fitted on exactly what
"verified" must mean: a caption is a match when every attribute it names is the image's own. Positives
are true captions (random attribute subsets and phrase templates, as users and the sidecars write them);
negatives are captions with one attribute wrong (the hard case a counterfactual lives on) and captions
of other random images that are false for this one.

    python scripts/calibrate_bundled.py --n 3000 --seed 5

prints the fitted line, the AUC and the accuracy on a separate seeded set, and writes the file.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch

from counterclip.calibration import fit_calibration
from counterclip.engine.words import FRAMING_WORDS, words_of
from counterclip.models import bundled_dir, load_model
from counterclip.shapes import TEMPLATES, VALUES, caption, render, sample_attrs

NAMED = [
    ("colour", "shape"),
    ("size", "colour", "shape"),
    ("colour", "shape", "position"),
    ("colour", "shape", "background"),
    ("size", "colour", "shape", "position"),
    ("size", "colour", "shape", "position", "background"),
]


def fitted_vocabulary() -> list[str]:
    """The content words of every caption the fit can draw (values and templates): the calibration's domain
    (`counterclip.engine.domain`), recorded with it."""
    texts = list(TEMPLATES) + [value for values in VALUES.values() for value in values]
    texts += [caption(sample_attrs(np.random.default_rng(0)), named, "{}") for named in NAMED]
    return sorted({w for text in texts for w in words_of(text) if w not in FRAMING_WORDS and len(w) > 2})


def pairs(model, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores of true captions and of false ones (one attribute wrong; another image's) for n images."""
    rng = np.random.default_rng(seed)
    images, texts, truth = [], [], []
    for _ in range(n):
        attrs = sample_attrs(rng, include_holdout=True)
        images.append(render(attrs, rng)[0])
        named = NAMED[int(rng.integers(len(NAMED)))]
        template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
        attribute = named[int(rng.integers(len(named)))]
        others = [v for v in VALUES[attribute] if v != getattr(attrs, attribute)]
        wrong = attrs.replace(**{attribute: others[int(rng.integers(len(others)))]})
        other = sample_attrs(rng, include_holdout=True)
        false_other = any(getattr(other, a) != getattr(attrs, a) for a in named)
        texts.append(
            [
                caption(attrs, named, template),
                caption(wrong, named, template),
                caption(other, named, template),
            ]
        )
        truth.append(false_other)
    image_vecs = model.encode_pil(images).numpy()
    flat = model.encode_texts([t for row in texts for t in row]).numpy().reshape(n, 3, -1)
    score = model.pair_score
    positives = score.pairs(image_vecs, flat[:, 0])
    negatives = np.concatenate(
        [score.pairs(image_vecs, flat[:, 1]), score.pairs(image_vecs, flat[:, 2])[truth]]
    )
    return positives, negatives


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="images to fit on")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--out", type=Path, default=bundled_dir("shapes") / "calibration.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_model("bundled:shapes", device="cpu")
    positives, negatives = pairs(model, args.n, args.seed)
    calibration = fit_calibration(
        positives,
        negatives,
        "model",
        model.fingerprint,
        f"shapes world, {args.n} images with true, one-attribute-wrong and other captions",
        seed=args.seed,
    )
    calibration = dataclasses.replace(calibration, extras={"vocabulary": fitted_vocabulary()})
    check_pos, check_neg = pairs(model, 1000, args.seed + 1)
    accuracy = (
        np.sum(calibration.probability(check_pos) >= 0.5) + np.sum(calibration.probability(check_neg) < 0.5)
    ) / (len(check_pos) + len(check_neg))
    print(f"match line: score {calibration.score_at():.3f}; AUC {calibration.auc:.4f}")
    print(f"true pairs {calibration.positives}; others {calibration.negatives}")
    print(f"accuracy on 1000 other images (seed {args.seed + 1}): {accuracy:.4f}")
    calibration.write(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

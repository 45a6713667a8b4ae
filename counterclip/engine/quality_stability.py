"""Stability of counterfactual answers: the same query again under small perturbations (its image
re-encoded as a JPEG, a little pixel noise, a paraphrase of its text), and which answers come back.

A perturbed query keeps the original's identity (its index id and file hash, so the original itself is
never an answer to it) and runs the stages that choose the answers (pose, target path, candidates,
order, and the baselines' nearest unlike neighbour) on the stored vectors: no answer is re-encoded, so
each perturbation costs one forward pass (the perturbed image or text).
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from counterclip.engine import baselines, candidates, ordering, posing, verify
from counterclip.engine.options import EngineOptions
from counterclip.engine.path import target_path
from counterclip.engine.posing import Posed
from counterclip.engine.request import Asked, QueryImage, Resolved, query_pil
from counterclip.engine.resources import Resources
from counterclip.engine.sides import as_array
from counterclip.errors import InputError

JPEG_QUALITY = 75  # the re-encoded JPEG copy of the query image
NOISE = 0.02  # standard deviation of the Gaussian pixel noise, in [0, 1] units (about 5 / 255)
NOISE_SEED = 0
#: Phrases that frame a caption without saying what it shows: a paraphrase drops or adds one.
FRAMES = ("a photo of", "a photograph of", "an image of", "a picture of", "a rendering of")
PERTURBATIONS = ("jpeg", "noise", "paraphrase")


def paraphrase(text: str) -> str:
    """The text said another way, its content words unchanged: a leading frame ("a photo of") dropped,
    or "a picture of" added when it has none."""
    stripped = " ".join(text.split())
    for frame in FRAMES:
        if stripped.lower().startswith(frame + " "):
            return stripped[len(frame) + 1 :]
    return f"a picture of {stripped}"


def jpeg_copy(image: Image.Image, quality: int = JPEG_QUALITY) -> Image.Image:
    """The image saved as a JPEG of ``quality`` and read back."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as again:
        return again.convert("RGB")


def noisy_copy(image: Image.Image, sigma: float = NOISE, seed: int = NOISE_SEED) -> Image.Image:
    """The image with Gaussian pixel noise of ``sigma`` (in [0, 1] units), seeded."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    noisy = pixels + np.random.default_rng(seed).normal(0.0, sigma, pixels.shape)
    return Image.fromarray((np.clip(noisy, 0, 1) * 255).round().astype(np.uint8))


@dataclass(frozen=True)
class Perturbed:
    """The answers of one perturbed query: the answers' ids in order, the nearest unlike neighbour's."""

    name: str  # jpeg | noise | paraphrase
    ids: list[int]
    nearest_unlike: int | None


def perturbed_answers(res: Resources, posed: Posed, asked: dict, opts: EngineOptions) -> list[Perturbed]:
    """The answers of the query under each perturbation that applies (``res.encoder`` embeds them; a
    counting encoder counts the passes). A perturbed query the engine refuses (a flip whose perturbed
    image already has the target label) has no answers."""
    quiet = dataclasses.replace(opts, quality=False, verify=False, verify_with=None)
    found = []
    for name, resolved in _perturbed_queries(res, posed, asked):
        try:
            found.append(_answers(res, name, resolved, quiet))
        except InputError:
            found.append(Perturbed(name, [], None))
    return found


def _perturbed_queries(res: Resources, posed: Posed, asked: dict) -> list[tuple[str, Resolved]]:
    """``(name, resolved query)`` for each perturbation: the image ones when the query image can be read,
    the paraphrase always (flip: of every label and the target)."""
    side, criterion = posed.side, posed.criterion
    image_vector = criterion.fixed if side.name == "text" else side.start
    described = posed.query.get("image") or {}
    original = QueryImage(image_vector, described.get("id"), described, getattr(side, "query_sha256", None))
    queries = []
    pil = query_pil(res.index, posed.image)
    if pil is not None:
        for name, copy in (("jpeg", jpeg_copy(pil)), ("noise", noisy_copy(pil))):
            vector = as_array(res.encoder.encode_pil([copy]))[0]
            queries.append((name, Resolved(Asked(**asked), dataclasses.replace(original, vector=vector))))
    if criterion.mode == "flip":
        labels = [paraphrase(label) for label in posed.query["labels"]]
        target = paraphrase(posed.query["target"])
        reworded = Asked(**{**asked, "labels": labels, "target": target})
    else:
        reworded = Asked(**{**asked, "text": paraphrase(posed.texts[0])})
    queries.append(("paraphrase", Resolved(reworded, original)))
    return queries


def _answers(res: Resources, name: str, resolved: Resolved, opts: EngineOptions) -> Perturbed:
    """The stages that choose the answers, on one perturbed query."""
    posed = posing.pose(res, resolved, opts)
    walked = target_path(posed.side.start, posed.criterion, opts.path)
    found = candidates.gather(posed, walked.points, opts)
    chosen = verify.verify(res, posed, found, ordering.order(posed, found, opts), opts)
    compared = baselines.baselines(res, posed, res.evidence(opts.calibration), opts)
    nearest = compared.get("nearest_unlike_neighbour") or []
    return Perturbed(name, [item.id for item in chosen.items], nearest[0].id if nearest else None)

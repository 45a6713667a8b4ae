"""The model families counterclip runs, each with its score and an example ``--model`` spec per backend.

What ``counterclip models`` lists and the README shows. A loaded model says its family
(`ClipModel.family`); the spec says which backend loaded it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """One model family.

    Attributes:
        name: what `ClipModel.family` says (``clip``, ``siglip``, ``blip``, ``slip``).
        title: the family's usual name.
        score: the pair score, in words.
        examples: ``(spec, what it loads)`` per backend that loads the family.
    """

    name: str
    title: str
    score: str
    examples: tuple[tuple[str, str], ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "family": self.name,
            "title": self.title,
            "score": self.score,
            "examples": [{"spec": spec, "loads": loads} for spec, loads in self.examples],
        }


FAMILIES: tuple[Family, ...] = (
    Family(
        "clip",
        "CLIP",
        "logit_scale * cos; softmax over texts (calibrated for verdicts)",
        (
            ("bundled:shapes", "the small CLIP shipped with counterclip (offline)"),
            ("ViT-B-32:laion2b_s34b_b79k", "open_clip architecture + pretrained tag (or ARCH:/path/ckpt)"),
            ("hf:openai/clip-vit-base-patch32", "Hugging Face CLIPModel (hub id or saved directory)"),
        ),
    ),
    Family(
        "siglip",
        "SigLIP",
        "logit_scale * cos + logit_bias; sigmoid: the model's own p(match) per pair",
        (
            ("ViT-B-16-SigLIP:webli", "open_clip SigLIP config + pretrained tag"),
            ("hf:google/siglip-base-patch16-224", "Hugging Face SiglipModel"),
        ),
    ),
    Family(
        "blip",
        "BLIP",
        "cosine of the contrastive head (scale 1); the matching head verifies with --verify-with itm",
        (("hf:Salesforce/blip-itm-base-coco", "Hugging Face BlipForImageTextRetrieval"),),
    ),
    Family(
        "slip",
        "SLIP",
        "logit_scale * cos (CLIP's score); softmax over texts",
        (("slip:/path/to/slip_base_100ep.pt", "a facebookresearch/SLIP training checkpoint"),),
    ),
)


def family(name: str) -> Family:
    """The family called ``name`` (KeyError for an unknown one)."""
    for item in FAMILIES:
        if item.name == name:
            return item
    raise KeyError(name)

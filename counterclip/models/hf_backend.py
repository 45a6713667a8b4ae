"""Hugging Face backend: a hub id or a saved directory, its family read from ``config.json``'s ``model_type``.

``hf:DIR_OR_ID`` loads ``clip`` (``CLIPModel``), ``siglip`` (``SiglipModel``, `counterclip.models.hf_siglip`)
and ``blip`` (``BlipForImageTextRetrieval``, `counterclip.models.hf_blip`). What every family shares lives
in `HFModel`: where the files are, loading with eager attention (explainers recompute attention, see
`counterclip.models.towers`), and refusing a checkpoint whose weights do not fill the class (a missing
head would otherwise be a random one, silently). A new Hugging Face family is one `HFModel` subclass and
one line in `HF_FAMILIES`.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn

from counterclip.errors import ModelLoadError
from counterclip.models.base import ClipModel, VisionGeometry
from counterclip.models.registry import OFFLINE_HINT
from counterclip.models.spec import ModelSpec
from counterclip.models.towers import SplitProjectionRecompute, TowerInternals

LOG = logging.getLogger(__name__)

# config.json model_type -> the ClipModel class that loads it ("module:attribute", imported on first use)
HF_FAMILIES: dict[str, str] = {
    "clip": "counterclip.models.hf_backend:HFClipModel",
    "siglip": "counterclip.models.hf_siglip:HFSiglipModel",
    "blip": "counterclip.models.hf_blip:HFBlipModel",
}


def _where(spec: ModelSpec) -> str:
    return f"Hugging Face model {spec.name!r}" if spec.source == "hub" else str(Path(spec.name).expanduser())


def hf_source(spec: ModelSpec) -> str:
    """The hub id or local directory of ``spec`` (a local directory must hold a ``config.json``)."""
    if spec.source != "local":
        return spec.name
    local = Path(spec.name).expanduser()
    if not local.is_dir():
        raise ModelLoadError(f"Hugging Face model directory not found: {local}")
    if not (local / "config.json").is_file():
        raise ModelLoadError(f"{local} has no config.json: not a saved Hugging Face model directory")
    return str(local)


def read_config(spec: ModelSpec) -> dict[str, Any]:
    """``config.json`` of ``spec`` as a dict (fetched from the hub for a hub id)."""
    source = hf_source(spec)
    if spec.source == "local":
        path = Path(source) / "config.json"
    else:
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(source, "config.json"))
        except Exception as exc:  # offline, unknown repo, gated repo: all one answer for the user
            raise ModelLoadError(
                f"could not fetch {spec.name!r} from the Hugging Face hub; {OFFLINE_HINT}"
            ) from exc
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path} does not hold a model configuration (a JSON object)")
    return config


def load_hf(spec: ModelSpec, device: torch.device) -> ClipModel:
    """The ``hf`` backend: the family named by ``config.json``'s ``model_type``, loaded by its class."""
    config = read_config(spec)
    model_type = config.get("model_type")
    if model_type not in HF_FAMILIES:
        known = ", ".join(HF_FAMILIES)
        raise ModelLoadError(
            f"{_where(spec)} is a {model_type!r} model (config.json model_type); `hf:` loads the families "
            f"{known}: pass a checkpoint of one of them"
        )
    module, _, attribute = HF_FAMILIES[model_type].partition(":")
    return getattr(importlib.import_module(module), attribute)(spec, device, config)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers prints a load report for missing weights; counterclip raises one line instead."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def processor_rgb_rule(processor: Any) -> str:
    """``pillow-white`` when ``processor`` composites a transparent image on white, else ``pillow``: a
    transparent black probe must give the pixels of a white one."""
    probe = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    try:
        transparent = processor(images=probe, return_tensors="pt")["pixel_values"]
        white = processor(images=Image.new("RGB", (8, 8), (255, 255, 255)), return_tensors="pt")[
            "pixel_values"
        ]
    except (ValueError, TypeError, RuntimeError):  # a processor that takes no RGBA: converted before it
        return "pillow"
    return "pillow-white" if torch.equal(transparent, white) else "pillow"


class HFModel(ClipModel):
    """What every Hugging Face family shares: files, loading, the missing-weights check.

    Subclasses name the transformers class (``MODULE``) and the heads a checkpoint must fill (``HEADS``,
    for the error message), and implement the `ClipModel` hooks over it.
    """

    MODULE: ClassVar[str]  # the transformers class, e.g. "CLIPModel"
    HEADS: ClassVar[str] = "projections"  # what a checkpoint without them lacks, in words
    EXAMPLE: ClassVar[str] = "openai/clip-vit-base-patch32"  # a checkpoint of the right class

    def __init__(self, spec: ModelSpec, device: torch.device, config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.device = device
        self.config = config if config is not None else read_config(spec)
        self._rgb: str | None = None
        source = hf_source(spec)
        self.module: nn.Module = self._load_module(source).to(device).eval()
        try:
            self._load_processors(source)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(
                f"{_where(spec)} has no usable tokenizer or image processor files: {str(exc).splitlines()[0]}"
            ) from exc

    def _load_module(self, source: str) -> nn.Module:
        """``MODULE.from_pretrained`` with eager attention; a weight the checkpoint does not fill is an error."""
        import transformers

        architectures = self.config.get("architectures") or []
        try:
            with _quiet_transformers():
                module, info = getattr(transformers, self.MODULE).from_pretrained(
                    source, attn_implementation="eager", output_loading_info=True
                )
        except OSError as exc:
            if self.spec.source == "hub":
                raise ModelLoadError(
                    f"could not fetch {self.spec.name!r} from the Hugging Face hub; {OFFLINE_HINT}"
                ) from exc
            raise ModelLoadError(
                f"could not load a {self.MODULE} from {source}: {str(exc).splitlines()[0]}"
            ) from exc
        except (ValueError, KeyError, RuntimeError, TypeError) as exc:
            raise ModelLoadError(
                f"{source} is not a loadable {self.MODULE}: {str(exc).splitlines()[0]}"
            ) from exc
        missing = sorted(info.get("missing_keys") or ())
        if missing:
            saved_as = f" (its config.json names {', '.join(architectures)})" if architectures else ""
            shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
            raise ModelLoadError(
                f"{_where(self.spec)} lacks the {self.HEADS} of a {self.MODULE}{saved_as}: no weights for "
                f"{shown}; pass a {self.MODULE} checkpoint (e.g. {self.EXAMPLE})"
            )
        return module

    def _load_processors(self, source: str) -> None:
        """The tokenizer and image processor saved beside the weights."""
        from transformers import AutoImageProcessor, AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(source)
        self._image_processor = AutoImageProcessor.from_pretrained(source)

    # --- shared inputs ------------------------------------------------------------------------
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """The image processor's pixels: a non-RGB image is converted by the processor itself, as it does
        for its library's users (converted by Pillow first only for a processor that would not)."""
        if image.mode != "RGB" and not getattr(self._image_processor, "do_convert_rgb", False):
            image = image.convert("RGB")
        return self._image_processor(images=image, return_tensors="pt")["pixel_values"][0]

    @property
    def rgb_conversion(self) -> str:
        """What this image processor does with transparency, asked of the processor itself (transformers 5
        composites it on white; earlier versions, like Pillow, drop it): ``pillow-white`` or ``pillow``."""
        if self._rgb is None:
            self._rgb = processor_rgb_rule(self._image_processor)
        return self._rgb

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        encoded = self._tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.context_length,
            return_tensors="pt",
        )
        return encoded["input_ids"]

    @staticmethod
    def vit_geometry(cfg: Any, prefix: int) -> VisionGeometry:
        """The geometry of a square ViT from its vision config (``image_size``, ``patch_size``)."""
        size, patch = int(cfg.image_size), int(cfg.patch_size)
        return VisionGeometry((size, size), (patch, patch), (size // patch, size // patch), prefix)


class HFClipModel(HFModel):
    """A `ClipModel` over ``transformers.CLIPModel``.

    Loaded with eager attention so explainers can ask the towers for attention probabilities that stay
    in the autograd graph (``output_attentions=True``).
    """

    MODULE = "CLIPModel"

    def __init__(self, spec: ModelSpec, device: torch.device, config: dict[str, Any] | None = None) -> None:
        super().__init__(spec, device, config)
        self.context_length = int(self.module.config.text_config.max_position_embeddings)
        self.embed_dim = int(self.module.config.projection_dim)

    def _load_processors(self, source: str) -> None:
        from transformers import CLIPImageProcessor, CLIPTokenizerFast

        self._image_processor = CLIPImageProcessor.from_pretrained(source)
        self._tokenizer = CLIPTokenizerFast.from_pretrained(source)

    def token_strings(self, text: str) -> list[str]:
        tokens = self._tokenizer.tokenize(text)[: self.context_length - 2]
        return [t.replace("</w>", "") for t in tokens]

    # --- features -----------------------------------------------------------------------------
    def image_features(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        pooled = self.module.vision_model(pixel_values=pixels).pooler_output
        emb = self.module.visual_projection(pooled)
        return nn.functional.normalize(emb, dim=-1) if normalize else emb

    def text_features(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        # CLIP's text tower is causal and pools at end-of-text, so padding after it cannot change the result.
        pooled = self.module.text_model(input_ids=tokens).pooler_output
        emb = self.module.text_projection(pooled)
        return nn.functional.normalize(emb, dim=-1) if normalize else emb

    @property
    def logit_scale(self) -> float:
        return float(self.module.logit_scale.detach().exp().item())

    # --- geometry for explainers --------------------------------------------------------------
    @property
    def vision_geometry(self) -> VisionGeometry:
        return self.vit_geometry(self.module.config.vision_config, 1)

    def image_tower(self) -> TowerInternals:
        geometry = self.vision_geometry
        return self._tower(self.module.vision_model, geometry.grid_size, geometry.num_prefix_tokens)

    def text_tower(self) -> TowerInternals:
        return self._tower(self.module.text_model)

    @staticmethod
    def _tower(tower: nn.Module, grid: tuple[int, int] | None = None, prefix: int = 0) -> TowerInternals:
        """``CLIPEncoderLayer`` blocks: ``layer_norm1`` -> ``self_attn`` (``CLIPAttention``), batch first."""
        return TowerInternals(
            tower,
            tuple(tower.encoder.layers),
            attention_of=lambda block: block.self_attn,
            recompute=SplitProjectionRecompute(),
            norm_of=lambda block: block.layer_norm1,
            grid=grid,
            prefix_tokens=prefix,
        )

    def token_embedding(self) -> nn.Module:
        return self.module.text_model.embeddings.token_embedding

    def eot_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        eos = self.module.config.text_config.eos_token_id
        if eos == 2:  # old configs: the end-of-text token is the largest id (transformers does the same)
            return tokens.to(torch.int).argmax(dim=-1)
        return (tokens.to(torch.int) == eos).to(torch.int).argmax(dim=-1)

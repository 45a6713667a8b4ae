"""The parity contract's test kit: files that trip decoders, tiny models of every family drawn wide, and
each family's own library call on a file (the reference the index, the engine, the CLI and the server must
equal).

The reference opens a file as its family's users do: ``ImageOps.exif_transpose(Image.open(path))``, then
the family's own processor or transform (which converts the mode where its library does: open_clip after
resizing, Hugging Face before, SLIP's loader at opening).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from family_models import (
    TinySlip,
    write_tiny_blip,
    write_tiny_openclip_siglip,
    write_tiny_siglip,
    write_tiny_slip,
)
from PIL import Image, ImageOps
from tiny_models import write_tiny_hf_clip, write_tiny_openclip

TEXTS = ("a red circle", "a blue square on the left", "a small green star")
WIDE = 3.0  # weight factor of the tiny random models: their embeddings spread (a collapsed model hides gaps)
VECTOR_COSINE = 0.99999  # the contract: per stored or query vector, to the library's
SCORE_GAP = 1e-4  # the contract: per score, times the family's scale


# --- files ----------------------------------------------------------------------------------------------
def _smooth(seed: int, size: tuple[int, int], channels: int = 3) -> np.ndarray:
    """A seeded picture: coarse colour blobs plus grain, ``(h, w, channels)`` uint8."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 6, channels)).astype(np.uint8)
    mode = "RGB" if channels == 3 else "RGBA"
    image = Image.fromarray(coarse, mode).resize(size, Image.Resampling.BICUBIC)
    grain = rng.normal(0, 20, (size[1], size[0], channels))
    return np.clip(np.asarray(image, dtype=np.float64) + grain, 0, 255).astype(np.uint8)


def write_files(folder: Path, seed: int = 0, prefix: str = "") -> dict[str, str]:
    """The files of the matrix in ``folder``: name -> what it tests. Seeds differ per ``seed``."""
    folder.mkdir(parents=True, exist_ok=True)
    made = {}

    def save(name: str, what: str, image: Image.Image, **kwargs: Any) -> None:
        image.save(folder / f"{prefix}{name}", **kwargs)
        made[f"{prefix}{name}"] = what

    # over twice the largest tiny input side (160), JPEG: what the old decode drafted and box-reduced
    save(
        "large.jpg",
        "larger than twice the input side",
        Image.fromarray(_smooth(seed, (480, 360))),
        quality=92,
    )
    save("wide.png", "non-square", Image.fromarray(_smooth(seed + 1, (150, 60))))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways, shown rotated
    save("exif.jpg", "EXIF-rotated", Image.fromarray(_smooth(seed + 2, (90, 60))), exif=exif, quality=95)
    rgba = _smooth(seed + 3, (80, 80), channels=4)
    rgba[:, :27, 3] = 0  # transparent over colour: libraries disagree on what is under it
    rgba[:, 27:54, 3] = 128
    rgba[:, 54:, 3] = 255
    save("rgba.png", "RGBA", Image.fromarray(rgba, "RGBA"))
    palette = Image.fromarray(_smooth(seed + 4, (80, 80))).convert(
        "P", palette=Image.Palette.ADAPTIVE, colors=24
    )
    save("palette.png", "palette with a transparent index", palette, transparency=3)
    ramp = np.add.outer(np.arange(50) * 9, np.arange(70) * 6).astype(np.float64)
    grey = (ramp + np.random.default_rng(seed + 5).normal(0, 20, ramp.shape)).clip(0, 65535).astype(np.uint16)
    save("grey16.png", "16-bit greyscale", Image.fromarray(grey))
    save("cmyk.jpg", "CMYK", Image.fromarray(_smooth(seed + 6, (64, 48))).convert("CMYK"), quality=95)
    return made


def opened(path: Path) -> Image.Image:
    """The image as Pillow opens it, EXIF orientation applied: what a family's users hand its library."""
    return ImageOps.exif_transpose(Image.open(path))


# --- tiny models, drawn wide ----------------------------------------------------------------------------
def _widen(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every weight matrix (not the token and position tables) times `WIDE`."""
    return {
        key: value * WIDE
        if value.ndim >= 2 and ("embed" not in key.lower() or "patch" in key or "conv1" in key)
        else value
        for key, value in state.items()
    }


def _widen_safetensors(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    save_file({k: v.contiguous() for k, v in _widen(load_file(str(path))).items()}, str(path))


def write_family(name: str, directory: Path) -> str:
    """A tiny random model of family ``name`` drawn wide, saved in ``directory``; returns its spec."""
    if name == "bundled":
        return "bundled:shapes"
    if name == "open_clip":
        config, weights = write_tiny_openclip(directory, name="cc-parity-vit")
        _widen_safetensors(weights)
        return f"{config}:{weights}"
    if name == "open_clip_siglip":
        spec = write_tiny_openclip_siglip(directory)
        _widen_safetensors(Path(spec.rsplit(":", 1)[1]))
        return spec
    if name == "slip":
        write_tiny_slip(directory / "slip.pt")
        checkpoint = torch.load(directory / "slip.pt", weights_only=False)  # written by the line above
        checkpoint["state_dict"] = _widen(checkpoint["state_dict"])
        torch.save(checkpoint, directory / "slip.pt")
        return f"slip:{directory / 'slip.pt'}"
    if name == "hf_siglip_masked":  # a tokenizer that hands the model a padding mask: the library masks
        saved = write_tiny_siglip(directory, masked=True)
    else:
        writer = {"hf_clip": write_tiny_hf_clip, "hf_siglip": write_tiny_siglip, "hf_blip": write_tiny_blip}[
            name
        ]
        saved = writer(directory)
    for weights in saved.glob("*.safetensors"):
        _widen_safetensors(weights)
    return f"hf:{saved}"


# --- each family's own library -------------------------------------------------------------------------
def _unit(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x.detach().float(), dim=-1).numpy().astype(np.float64)


class OpenClipReference:
    """open_clip's ``create_model_and_transforms`` + ``encode_image`` / ``encode_text``."""

    def __init__(self, config: Path, weights: Path) -> None:
        import open_clip

        open_clip.add_model_config(config)
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            config.stem, pretrained=str(weights)
        )
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(config.stem)
        self.scale = float(self.model.logit_scale.detach().exp())
        bias = getattr(self.model, "logit_bias", None)
        self.bias = float(bias.detach()) if bias is not None else 0.0

    def open(self, path: Path) -> Image.Image:
        return opened(path)

    @torch.no_grad()
    def vectors(self, paths: Sequence[Path]) -> np.ndarray:
        return _unit(self.model.encode_image(torch.stack([self.preprocess(self.open(p)) for p in paths])))

    @torch.no_grad()
    def scores(self, paths: Sequence[Path], texts: Sequence[str]) -> np.ndarray:
        texts_ = _unit(self.model.encode_text(self.tokenizer(list(texts))))
        return self.scale * (self.vectors(paths) @ texts_.T) + self.bias


class SlipReference(OpenClipReference):
    """SLIP's own model class with SLIP's eval transform, on the image its loader gives (``convert("RGB")``
    at opening, `pil_loader`)."""

    def __init__(self, checkpoint: Path) -> None:
        from open_clip.tokenizer import SimpleTokenizer
        from torchvision import transforms

        state = torch.load(checkpoint, weights_only=False)["state_dict"]
        self.model = TinySlip().eval()
        self.model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
        self.preprocess = transforms.Compose(
            [
                transforms.Resize(32),
                transforms.CenterCrop(32),
                transforms.ToTensor(),
                transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
            ]
        )
        self.tokenizer = SimpleTokenizer(context_length=16)
        self.scale, self.bias = float(self.model.logit_scale.detach().exp()), 0.0

    def open(self, path: Path) -> Image.Image:
        return opened(path).convert("RGB")


class HFReference:
    """A Hugging Face model class with ``AutoProcessor``: ``get_image_features`` and the forward's logits."""

    def __init__(self, directory: Path, module: str, padding: Any) -> None:
        import transformers

        self.processor = transformers.AutoProcessor.from_pretrained(directory)
        self.model = getattr(transformers, module).from_pretrained(directory).eval()
        self.padding = padding
        config = self.model.config
        self.scale = (
            float(self.model.logit_scale.detach().exp()) if hasattr(self.model, "logit_scale") else 1.0
        )
        self.bias = (
            float(self.model.logit_bias.detach())
            if getattr(self.model, "logit_bias", None) is not None
            else 0.0
        )
        del config

    def pixels(self, paths: Sequence[Path]) -> torch.Tensor:
        return self.processor(images=[opened(p) for p in paths], return_tensors="pt")["pixel_values"]

    @torch.no_grad()
    def vectors(self, paths: Sequence[Path]) -> np.ndarray:
        out = self.model.get_image_features(pixel_values=self.pixels(paths))
        return _unit(out if isinstance(out, torch.Tensor) else out.pooler_output)

    @torch.no_grad()
    def scores(self, paths: Sequence[Path], texts: Sequence[str]) -> np.ndarray:
        inputs = self.processor(
            text=list(texts), images=[opened(p) for p in paths], padding=self.padding, return_tensors="pt"
        )
        return self.model(**inputs).logits_per_image.double().numpy()


class BlipReference(HFReference):
    """``BlipForImageTextRetrieval``: the contrastive head (``use_itm_head=False``, the plain cosine) and the
    matching head (``use_itm_head=True``)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, "BlipForImageTextRetrieval", True)

    @torch.no_grad()
    def vectors(self, paths: Sequence[Path]) -> np.ndarray:
        # what the forward's contrastive head computes for the image side
        hidden = self.model.vision_model(pixel_values=self.pixels(paths)).last_hidden_state
        return _unit(self.model.vision_proj(hidden[:, 0, :]))

    @torch.no_grad()
    def scores(self, paths: Sequence[Path], texts: Sequence[str]) -> np.ndarray:
        inputs = self.processor(
            text=list(texts), images=[opened(p) for p in paths], padding=True, return_tensors="pt"
        )
        return self.model(**inputs, use_itm_head=False).itm_score.double().numpy()

    @torch.no_grad()
    def match(self, paths: Sequence[Path], texts: Sequence[str]) -> np.ndarray:
        """p(match) of the matching head for the pairs ``(paths[i], texts[i])``."""
        inputs = self.processor(
            text=list(texts), images=[opened(p) for p in paths], padding=True, return_tensors="pt"
        )
        logits = self.model(**inputs, use_itm_head=True).itm_score
        return torch.softmax(logits.double(), dim=-1)[:, 1].numpy()


def reference(name: str, spec: str) -> Any:
    """The family's own library over the model of ``spec`` (as `write_family` wrote it)."""
    if name == "bundled":
        from counterclip.models.factory import bundled_dir

        return OpenClipReference(
            bundled_dir("shapes") / "config.json", bundled_dir("shapes") / "weights.safetensors"
        )
    if name in ("open_clip", "open_clip_siglip"):
        config, weights = spec.rsplit(":", 1)
        return OpenClipReference(Path(config), Path(weights))
    if name == "slip":
        return SlipReference(Path(spec.removeprefix("slip:")))
    directory = Path(spec.removeprefix("hf:"))
    if name == "hf_blip":
        return BlipReference(directory)
    module = "CLIPModel" if name == "hf_clip" else "SiglipModel"
    return HFReference(directory, module, True if name == "hf_clip" else "max_length")

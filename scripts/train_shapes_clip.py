"""Train the small CLIP bundled with counterclip on the shapes world (run once; the weights are shipped).

The model is a plain open_clip ``CLIP`` built from ``counterclip/data/shapes/config.json`` and trained with
open_clip's own tokenizer and eval image transform, so ``load_model("bundled:shapes")`` needs no special
code. What makes position and composition learnable (see issue 3's trial notes):

- multi-positive soft targets: every image-caption pair in the batch whose caption is true of the image
  is a positive (captions often name only some attributes), in both directions;
- captions sample which attributes they name: full 4-attribute captions half of the time, single-attribute
  captions in the zero-shot prompt templates, and random subsets;
- hard negatives: the batch is made of groups of images that differ from the group's first image in
  exactly one attribute (shape most often);
- objects in unnamed colours (greys and pale colours too), far from every named colour, whose captions never
  name colour: without them shape features are learned per colour and held-out pairs fail;
- held-out (shape, colour) pairs never appear, neither as images nor in captions (nor as an unnamed colour
  whose nearest named colour would make one).

Images are rendered on the fly (in a prefetch thread) at 128 px and go through the model's eval transform,
exactly as evaluation images do. The learning-rate schedule follows the larger of step progress and
wall-clock progress, so a run always ends (with a fully decayed learning rate) within ``--minutes``.

Example (the defaults are the shipped recipe except the batch size)::

    .venv/bin/python scripts/train_shapes_clip.py --minutes 55 --batch-size 128 --seed 0 2>&1 | tee /tmp/train.log

How the shipped weights were made (55.0 training minutes, 5043 steps at about 0.65 s/step, on a 2-core CPU
that was otherwise nearly idle; the checkpoint is 11.9 MB of fp16)::

    train_shapes_clip.py --minutes 55 --batch-size 128 --seed 0 --eval-every 200 --eval-n 200 \
        --p-free-colour 0.5 --free-saturation-min 0.0 --checkpoint-dir /tmp/ckpt_v3 --out /tmp/ckpt_v3/shipped.safetensors

Seed-7 results (``counterclip eval model --model bundled:shapes --n 2000 --seed 7``): zero-shot shape,
colour, size, position and background 1.000 on seen (shape, colour) pairs; on held-out pairs shape 0.891,
colour 0.9995, size 0.999, position and background 1.000; full-caption top-1 1.000 seen, 0.911 held-out.
Held-out shape is the slowest figure: 0.00 at step 1000, 0.27 at 1200, 0.69 at 2000, 0.84 at 3200, 0.89 at
the end (quick evals of 200 images in the log).

What mattered, against the previous shipped run (1113 steps at 3 s/step on a CPU shared with other jobs:
shape 0.67 seen / 0.00 held-out): three to four times the steps; shape-changing hard negatives and
single-attribute captions weighted up (shape 0.35 instead of 0.2); and half of the objects in unnamed
colours from the first step, greys and pale colours included. An intermediate run that added unnamed
colours only at a saturation of 0.6 or more learned shape per colour (held-out shape 0.03 at step 1400,
grey circles called triangles) until greys were added.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import math
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from counterclip.shapes import (
    ATTRIBUTES,
    FULL_CAPTION,
    TEMPLATES,
    VALUES,
    ShapeAttrs,
    attribute_prompts,
    caption,
    evaluate_model,
)
from counterclip.shapes.world import HOLDOUT, RGB, render, sample_attrs

REPO = Path(__file__).resolve().parents[1]
CONFIG_PATH = REPO / "counterclip" / "data" / "shapes" / "config.json"
WEIGHTS_PATH = REPO / "counterclip" / "data" / "shapes" / "weights.safetensors"
MODEL_NAME = "counterclip-shapes-train"  # the name the config is registered under with open_clip

# Which attribute a hard-negative variant changes. Shape is the slow one to learn (position is fast once the
# patch positions start from sine-cosine codes), so shape variants are the most frequent.
VARIANT_WEIGHTS = {"shape": 0.35, "colour": 0.15, "size": 0.15, "position": 0.2, "background": 0.15}
# L1 distance (0-765) an unnamed training colour keeps from every named colour's nominal RGB (jitter is
# at most 3 x 18 = 54, so this is well outside every named colour's cloud).
FREE_COLOUR_MIN_DISTANCE = 150
# Which attribute a single-attribute caption names.
SINGLE_WEIGHTS = {"shape": 0.35, "colour": 0.15, "size": 0.15, "position": 0.2, "background": 0.15}


@dataclass(frozen=True)
class TrainCfg:
    """Training settings (the command-line flags)."""

    steps: int  # maximum optimizer steps
    minutes: float  # wall-clock budget; the schedule ends by then
    batch_size: int  # images per step
    group_size: int  # images per hard-negative group (1 = no hard negatives)
    lr: float  # peak AdamW learning rate
    min_lr_ratio: float  # final learning rate as a fraction of lr
    warmup: int  # linear warm-up steps
    weight_decay: float  # AdamW weight decay on matrices
    p_full: float  # probability a caption names exactly FULL_CAPTION
    p_all: float  # probability a caption names all five attributes
    p_single: float  # probability a caption names one attribute (else a random 2-3 subset)
    seed: int  # seeds numpy (data) and torch (init)
    threads: int  # torch intra-op threads
    eval_every: int  # steps between quick evaluations (and checkpoints)
    eval_n: int  # images per split in quick evaluations
    final_eval_n: int  # images per split in the final evaluation
    checkpoint_dir: str  # where intermediate checkpoints go (outside the repo)
    out: str  # the shipped fp16 safetensors file
    resume: str | None  # a checkpoint to resume from
    sincos_positions: bool  # initialise the image position embedding with 2-D sine-cosine codes
    attr_weight: float  # weight of the per-attribute zero-shot classification loss (0 = off)
    p_free_colour: float  # probability an image's object has an unnamed random colour
    free_saturation_min: float  # lowest HSV saturation of an unnamed colour (0 allows greys)


def parse_args(argv: list[str] | None = None) -> TrainCfg:
    """Parse the command line into a TrainCfg."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--minutes", type=float, default=40.0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.02)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--p-full", type=float, default=0.45)
    p.add_argument("--p-all", type=float, default=0.1)
    p.add_argument("--p-single", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--eval-n", type=int, default=300)
    p.add_argument("--final-eval-n", type=int, default=2000)
    p.add_argument("--checkpoint-dir", default="/tmp/shapes_clip_ckpt")
    p.add_argument("--out", default=str(WEIGHTS_PATH))
    p.add_argument("--resume", default=None)
    p.add_argument("--no-sincos-positions", dest="sincos_positions", action="store_false")
    p.add_argument("--attr-weight", type=float, default=1.0)
    p.add_argument("--p-free-colour", type=float, default=0.5)
    p.add_argument("--free-saturation-min", type=float, default=0.0)
    return TrainCfg(**vars(p.parse_args(argv)))


# ---------------------------------------------------------------------------------------------------- data


def _weighted_choice(rng: np.random.Generator, weights: dict[str, float]) -> str:
    keys = list(weights)
    probs = np.array([weights[k] for k in keys])
    return keys[int(rng.choice(len(keys), p=probs / probs.sum()))]


def sample_group(rng: np.random.Generator, group_size: int) -> list[ShapeAttrs]:
    """A seen base object plus variants that each differ from it in exactly one attribute (never HOLDOUT)."""
    base = sample_attrs(rng)
    group = [base]
    while len(group) < group_size:
        attribute = _weighted_choice(rng, VARIANT_WEIGHTS)
        others = [v for v in VALUES[attribute] if v != getattr(base, attribute)]
        variant = base.replace(**{attribute: others[int(rng.integers(len(others)))]})
        if not variant.is_holdout:
            group.append(variant)
    return group


def sample_named(rng: np.random.Generator, cfg: TrainCfg) -> tuple[str, ...]:
    """Which attributes one training caption names."""
    u = rng.random()
    if u < cfg.p_full:
        return FULL_CAPTION
    if u < cfg.p_full + cfg.p_all:
        return ATTRIBUTES
    if u < cfg.p_full + cfg.p_all + cfg.p_single:
        return (_weighted_choice(rng, SINGLE_WEIGHTS),)
    k = int(rng.integers(2, 4))
    return tuple(ATTRIBUTES[i] for i in sorted(rng.choice(len(ATTRIBUTES), size=k, replace=False)))


def free_colour(rng: np.random.Generator, shape: str, saturation_min: float = 0.0) -> tuple[int, int, int]:
    """A random colour far from every named colour (so it is no named colour), greys included when
    ``saturation_min`` is 0.

    Never one whose nearest named colour would make ``(shape, colour)`` a HOLDOUT pair: a cyan circle is
    closest to blue, and blue circles must stay unseen.
    """
    while True:
        hsv = (rng.random(), rng.uniform(saturation_min, 1.0), rng.uniform(0.5, 0.95))
        candidate = tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(*hsv))
        distances = {
            name: sum(abs(a - b) for a, b in zip(candidate, rgb, strict=True)) for name, rgb in RGB.items()
        }
        nearest = min(distances, key=distances.__getitem__)
        if distances[nearest] >= FREE_COLOUR_MIN_DISTANCE and (shape, nearest) not in HOLDOUT:
            return candidate


@dataclass
class Batch:
    """One training batch: pixels, unique captions, and which captions are true of which images."""

    pixels: torch.Tensor  # (B, 3, H, W) float32, normalised by the model's transform
    texts: list[str]  # U unique captions
    consistent: torch.Tensor  # (B, U) bool: caption j is true of image i
    labels: torch.Tensor  # (B, 5) long: value index of each attribute (ATTRIBUTES order)
    template: int  # which TEMPLATES entry this step's attribute prompts use


def make_batch(rng: np.random.Generator, cfg: TrainCfg, preprocess) -> Batch:
    """Render a batch of hard-negative groups and sample one caption per image."""
    attrs: list[ShapeAttrs] = []
    while len(attrs) < cfg.batch_size:
        attrs.extend(sample_group(rng, cfg.group_size))
    attrs = attrs[: cfg.batch_size]
    # Some objects get a random colour that is none of the named ones (their captions never name colour),
    # so shape features must work for any hue, not only for the (shape, colour) pairs seen in training.
    free = [bool(rng.random() < cfg.p_free_colour) for _ in attrs]
    images: list[Image.Image] = [
        render(a, rng, 128, rgb=free_colour(rng, a.shape, cfg.free_saturation_min) if f else None)[0]
        for a, f in zip(attrs, free, strict=True)
    ]
    pixels = torch.stack([preprocess(im) for im in images])

    texts: list[str] = []
    caption_codes: list[list[int]] = []  # per unique caption: value index per attribute, -1 = not named
    seen: dict[str, int] = {}
    for a, f in zip(attrs, free, strict=True):
        named = sample_named(rng, cfg)
        if f:
            named = tuple(n for n in named if n != "colour") or ("shape",)
        text = caption(a, named, TEMPLATES[int(rng.integers(len(TEMPLATES)))])
        if text not in seen:
            seen[text] = len(texts)
            texts.append(text)
            caption_codes.append([VALUES[n].index(getattr(a, n)) if n in named else -1 for n in ATTRIBUTES])
    image_codes = torch.tensor([[VALUES[n].index(getattr(a, n)) for n in ATTRIBUTES] for a in attrs])
    # Unnamed colours: code -2 matches no caption that names a colour, and the attribute loss ignores it.
    image_codes[torch.tensor(free, dtype=torch.bool), ATTRIBUTES.index("colour")] = -2
    codes = torch.tensor(caption_codes)
    consistent = ((codes[None, :, :] == -1) | (codes[None, :, :] == image_codes[:, None, :])).all(dim=2)
    template = int(rng.integers(len(TEMPLATES)))
    return Batch(pixels=pixels, texts=texts, consistent=consistent, labels=image_codes, template=template)


class Prefetcher:
    """Builds batches in a background thread (torch's matmuls release the GIL, so rendering overlaps)."""

    def __init__(self, cfg: TrainCfg, preprocess, seed: int, depth: int = 3) -> None:
        self._queue: queue.Queue[Batch] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._rng = np.random.default_rng(seed)
        self._thread = threading.Thread(target=self._run, args=(cfg, preprocess), daemon=True)
        self._thread.start()

    def _run(self, cfg: TrainCfg, preprocess) -> None:
        while not self._stop.is_set():
            batch = make_batch(self._rng, cfg, preprocess)
            while not self._stop.is_set():
                try:
                    self._queue.put(batch, timeout=0.5)
                    break
                except queue.Full:
                    continue

    def get(self) -> Batch:
        """The next batch (blocks until one is ready)."""
        return self._queue.get()

    def close(self) -> None:
        """Stop the worker thread."""
        self._stop.set()


# --------------------------------------------------------------------------------------------------- model


def multi_positive_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, consistent: torch.Tensor, scale
) -> torch.Tensor:
    """Symmetric soft-target CLIP loss: targets are uniform over the consistent pairs of each row/column.

    image_emb: (B, d), text_emb: (U, d), both normalised; consistent: (B, U) bool, every row and column
    has at least one True.
    """
    logits = scale * image_emb @ text_emb.T
    positives = consistent.float()
    image_to_text = -(positives / positives.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
    text_to_image = -(positives / positives.sum(0, keepdim=True) * F.log_softmax(logits, dim=0)).sum(0).mean()
    return (image_to_text + text_to_image) / 2


def attribute_loss(
    image_emb: torch.Tensor, prompt_emb: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Zero-shot classification loss of every image on every attribute, through the text tower.

    image_emb: (B, d) normalised; prompt_emb: (sum of value counts, d) normalised single-attribute prompts,
    grouped by attribute in ATTRIBUTES/VALUES order; labels: (B, 5). Why: the contrastive batch holds only a
    few position captions, so the position signal per step is weak; this gives every image a label for
    every attribute each step (it is the image-to-text direction over all single-attribute captions).
    """
    losses, start = [], 0
    for column, attribute in enumerate(ATTRIBUTES):
        count = len(VALUES[attribute])
        logits = scale * image_emb @ prompt_emb[start : start + count].T
        losses.append(F.cross_entropy(logits, labels[:, column].clamp(min=-1), ignore_index=-1))
        start += count
    return torch.stack(losses).mean()


def attribute_prompt_texts(template: int) -> list[str]:
    """The single-attribute prompts of one template, grouped by attribute (see attribute_loss)."""
    return [attribute_prompts(a)[v][template] for a in ATTRIBUTES for v in VALUES[a]]


class OpenClipEncoder:
    """The ``counterclip.models`` encoder interface over a raw open_clip model (for evaluate_model)."""

    def __init__(self, model: torch.nn.Module, preprocess, tokenizer) -> None:
        self.model = model
        self._preprocess = preprocess
        self._tokenizer = tokenizer

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """(3, H, W) float32 pixels."""
        return self._preprocess(image)

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, d) normalised image embeddings."""
        return F.normalize(self.model.encode_image(pixels), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """(n, d) normalised text embeddings."""
        return F.normalize(self.model.encode_text(self._tokenizer(list(texts))), dim=-1)

    @property
    def logit_scale(self) -> float:
        """exp of the learned logit scale."""
        return float(self.model.logit_scale.exp())


def build_model() -> tuple[torch.nn.Module, object, object]:
    """The open_clip model, eval transform and tokenizer for the bundled config (the loader's code path)."""
    tmp = Path(tempfile.mkdtemp(prefix="shapes_cfg_"))
    shutil.copy(CONFIG_PATH, tmp / f"{MODEL_NAME}.json")
    open_clip.add_model_config(tmp / f"{MODEL_NAME}.json")
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME)
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    return model, preprocess, tokenizer


def sincos_positional_embedding(grid: int, width: int, temperature: float = 100.0) -> torch.Tensor:
    """Fixed 2-D sine-cosine position codes, ``(grid * grid, width)``, entries in [-1, 1] (as in MAE).

    Temperature 100 instead of MAE's 10000: with an 8 x 8 grid most of MAE's frequencies would be constant.
    """
    assert width % 4 == 0, "width must be divisible by 4"
    quarter = width // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    ys, xs = torch.meshgrid(
        torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32), indexing="ij"
    )
    x_angles = xs.flatten()[:, None] * omega[None, :]
    y_angles = ys.flatten()[:, None] * omega[None, :]
    return torch.cat([x_angles.sin(), x_angles.cos(), y_angles.sin(), y_angles.cos()], dim=1)


@torch.no_grad()
def init_vision_positions(model: torch.nn.Module) -> None:
    """Start the image tower's (learned) position embedding from 2-D sine-cosine codes.

    Why: open_clip initialises it as N(0, 1/width), about ten times smaller than the patch embeddings, and
    in the issue's trial position never left chance. The codes only set the initial value; the parameter
    is still learned and keeps its name and shape, so the shipped state_dict is a plain open_clip one.
    """
    visual = model.visual
    grid_h, grid_w = visual.grid_size
    assert grid_h == grid_w, "square patch grid expected"
    pos = visual.positional_embedding  # (1 + grid * grid, width): class token first
    pos[0].zero_()
    pos[1:].copy_(sincos_positional_embedding(grid_h, pos.shape[1]))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only (not norms, biases, embeddings' scale-free parameters or the logit scale)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "logit_scale" in name or "embedding" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def save_fp16(model: torch.nn.Module, path: str | Path) -> int:
    """Write the state_dict as fp16 safetensors atomically (temp file, then rename); return its size."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to(torch.float16).contiguous().clone() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt", "dtype": "float16"})
    os.chmod(tmp, 0o644)  # package data must be world-readable (the temp file is created 0600)
    os.replace(tmp, path)
    return path.stat().st_size


def quick_report(metrics: dict) -> str:
    """One line summarising evaluate_model's output."""
    parts = []
    for split in ("seen", "heldout"):
        if split in metrics:
            zs = " ".join(f"{a[:3]}={v:.3f}" for a, v in metrics[split]["zero_shot"].items())
            parts.append(f"{split}: {zs} full={metrics[split]['full_caption_top1']:.3f}")
    return " | ".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Train, checkpoint, evaluate and ship the bundled model."""
    cfg = parse_args(argv)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model, preprocess, tokenizer = build_model()
    if cfg.sincos_positions:
        init_vision_positions(model)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"config {json.dumps(json.loads(CONFIG_PATH.read_text()))}", flush=True)
    print(f"params {n_params / 1e6:.2f}M; cfg {cfg}", flush=True)

    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6
    )
    ckpt_dir = Path(cfg.checkpoint_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    start_step, elapsed_before = 0, 0.0
    if cfg.resume:
        state = torch.load(cfg.resume, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_step, elapsed_before = state["step"], state["elapsed"]
        print(f"resumed from {cfg.resume} at step {start_step}", flush=True)

    encoder = OpenClipEncoder(model, preprocess, tokenizer)
    prefetch = Prefetcher(cfg, preprocess, seed=cfg.seed + start_step)
    budget = cfg.minutes * 60
    t0 = time.perf_counter() - elapsed_before
    step, progress, loss_avg = start_step, 0.0, None
    last_log = time.perf_counter()
    try:
        while progress < 1.0 and step < cfg.steps:
            # Schedule on whichever is further along, steps or wall clock, so the run ends within budget.
            progress = max(step / cfg.steps, (time.perf_counter() - t0) / budget)
            warm = min(1.0, (step + 1) / cfg.warmup)
            cosine = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (
                1 + math.cos(math.pi * min(progress, 1.0))
            )
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * warm * cosine

            model.train()
            batch = prefetch.get()
            prompts = attribute_prompt_texts(batch.template) if cfg.attr_weight > 0 else []
            tokens = tokenizer(batch.texts + prompts)  # one text forward pass for captions and prompts
            image_emb = F.normalize(model.encode_image(batch.pixels), dim=-1)
            all_text_emb = F.normalize(model.encode_text(tokens), dim=-1)
            text_emb, prompt_emb = all_text_emb[: len(batch.texts)], all_text_emb[len(batch.texts) :]
            scale = model.logit_scale.exp()
            loss = multi_positive_loss(image_emb, text_emb, batch.consistent, scale)
            if cfg.attr_weight > 0:
                loss = loss + cfg.attr_weight * attribute_loss(image_emb, prompt_emb, batch.labels, scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            with torch.no_grad():  # as in CLIP: cap the temperature at 100
                model.logit_scale.clamp_(0, math.log(100))
            step += 1
            loss_avg = loss.item() if loss_avg is None else 0.95 * loss_avg + 0.05 * loss.item()

            if step % 20 == 0 or step == start_step + 1:
                now = time.perf_counter()
                print(
                    f"step {step} loss {loss.item():.4f} avg {loss_avg:.4f} lr {optimizer.param_groups[0]['lr']:.2e} "
                    f"scale {model.logit_scale.exp().item():.1f} texts {len(batch.texts)} "
                    f"{(now - last_log) / (20 if step > start_step + 1 else 1):.2f}s/step "
                    f"elapsed {(now - t0) / 60:.1f}min progress {progress:.3f}",
                    flush=True,
                )
                last_log = now
            if step % cfg.eval_every == 0:
                model.eval()
                metrics = evaluate_model(encoder, n=cfg.eval_n, seed=10_000 + step, heldout_n=cfg.eval_n)
                print(f"eval step {step}: {quick_report(metrics)} ({metrics['seconds']}s)", flush=True)
                torch.save(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "step": step,
                        "elapsed": time.perf_counter() - t0,
                    },
                    ckpt_dir / "last.pt",
                )
                save_fp16(model, ckpt_dir / f"weights_step{step}.safetensors")
    finally:
        prefetch.close()

    train_minutes = (time.perf_counter() - t0) / 60
    model.eval()
    size = save_fp16(model, cfg.out)
    print(
        f"trained {step} steps in {train_minutes:.1f} min; wrote {cfg.out} ({size / 1e6:.2f} MB)", flush=True
    )
    # Evaluate the shipped fp16 weights as the loader will see them (fp16 -> fp32).
    from safetensors.torch import load_file

    model.load_state_dict({k: v.float() for k, v in load_file(cfg.out).items()}, strict=True)
    metrics = evaluate_model(encoder, n=cfg.final_eval_n, seed=7)
    print("final eval (seed 7): " + quick_report(metrics), flush=True)
    print(json.dumps(metrics, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Tiny random models of every family counterclip runs besides CLIP, written inside the tests.

Nothing is downloaded: the tokenizers are made here from the shapes world's words (a BERT WordPiece
vocabulary for BLIP, a SentencePiece model trained on the shapes captions for SigLIP, open_clip's bundled
BPE for the open_clip SigLIP config and SLIP).
"""

from __future__ import annotations

import argparse
import io
import json
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from counterclip.shapes.world import vocabulary


def shapes_words() -> list[str]:
    """Every word of the shapes world's captions, in first-seen order."""
    words: dict[str, None] = {}
    for text in vocabulary():
        for word in text.lower().replace(",", " ").replace(".", " ").split():
            words[word] = None
    return list(words)


# --- BLIP ----------------------------------------------------------------------------------------------
def write_tiny_blip(directory: Path, seed: int = 0) -> Path:
    """A saved tiny random ``BlipForImageTextRetrieval`` (hidden size 32, 2 layers) with a BERT tokenizer."""
    from transformers import BertTokenizerFast, BlipConfig, BlipForImageTextRetrieval, BlipImageProcessor

    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *shapes_words()]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(str(directory / "vocab.txt")).save_pretrained(directory)
    BlipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(directory)
    config = BlipConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 40,
            "pad_token_id": 0,
            "bos_token_id": 2,
            "sep_token_id": 3,
            "eos_token_id": 3,
            "initializer_range": 0.5,  # at BERT's 0.02 a random tiny text tower maps every caption alike
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
            "initializer_range": 0.02,  # BLIP's default (1e-10) gives every random image the same embedding
        },
        image_text_hidden_size=24,
    )
    torch.manual_seed(seed)
    BlipForImageTextRetrieval(config).eval().save_pretrained(directory)
    return directory


def write_tiny_blip_without_heads(directory: Path, seed: int = 0) -> Path:
    """A tiny ``BlipModel`` (no retrieval heads) saved with the same files: a checkpoint missing its head."""
    from transformers import BlipModel

    write_tiny_blip(directory, seed)
    config = json.loads((directory / "config.json").read_text())
    from transformers import BlipConfig

    torch.manual_seed(seed)
    for weights in directory.glob("*.safetensors"):
        weights.unlink()
    BlipModel(
        BlipConfig(**{k: v for k, v in config.items() if k in ("text_config", "vision_config")})
    ).save_pretrained(directory)
    return directory


# --- SigLIP (Hugging Face) ----------------------------------------------------------------------------
def write_tiny_siglip(directory: Path, seed: int = 0, masked: bool = False) -> Path:
    """A saved tiny random ``SiglipModel`` with a ``SiglipTokenizer`` trained on the shapes captions.

    Like Google's released SigLIP tokenizers it hands the model ``input_ids`` only (no padding mask);
    ``masked``: one that also returns an ``attention_mask`` (the library then masks the padding)."""
    import sentencepiece as spm
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(vocabulary()),
        model_writer=model,
        vocab_size=48,
        model_type="word",
        hard_vocab_limit=False,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    (directory / "spiece.model").write_bytes(model.getvalue())
    names = ["input_ids", "attention_mask"] if masked else ["input_ids"]
    tokenizer = SiglipTokenizer(str(directory / "spiece.model"), model_max_length=16, model_input_names=names)
    tokenizer.save_pretrained(directory)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(directory)
    config = SiglipConfig(
        text_config={
            "vocab_size": tokenizer.vocab_size,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": None,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
    )
    torch.manual_seed(seed)
    module = SiglipModel(config).eval()
    with torch.no_grad():  # SigLIP's released initial values (a random init leaves both at 0)
        module.logit_scale.fill_(float(torch.log(torch.tensor(10.0))))
        module.logit_bias.fill_(-10.0 + 5.0 * seed)
    module.save_pretrained(directory)
    return directory


# --- SigLIP (open_clip) --------------------------------------------------------------------------------
TINY_OPENCLIP_SIGLIP_CONFIG = {
    "embed_dim": 64,
    "init_logit_bias": -10,
    "custom_text": True,
    "vision_cfg": {
        "image_size": 160,
        "timm_model_name": "test_vit",
        "timm_model_pretrained": False,
        "timm_pool": "map",
        "timm_proj": "none",
    },
    "text_cfg": {
        "context_length": 16,
        "vocab_size": 49408,
        "width": 32,
        "heads": 2,
        "layers": 2,
        "no_causal_mask": True,
        "proj_bias": True,
        "pool_type": "last",
        "norm_kwargs": {"eps": 1e-6},
    },
}


def write_tiny_openclip_siglip(directory: Path, seed: int = 0) -> str:
    """A tiny open_clip SigLIP-style config (timm ``test_vit`` with a "map" pool, a bidirectional text tower
    read at its last position, a logit bias) and a seeded checkpoint; returns the spec string."""
    import open_clip
    from safetensors.torch import save_file

    from counterclip.models.open_clip_backend import register_config_file

    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "cc-tiny-sigmoid.json"
    config.write_text(json.dumps(TINY_OPENCLIP_SIGLIP_CONFIG))
    arch = register_config_file(config)
    torch.manual_seed(seed)
    module = open_clip.create_model(arch)
    weights = directory / f"cc-tiny-sigmoid-seed{seed}.safetensors"
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(weights))
    return f"{config}:{weights}"


# --- SLIP ---------------------------------------------------------------------------------------------
class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _Block(nn.Module):
    """OpenAI CLIP's residual attention block, as SLIP's models.py uses it (sequence first)."""

    def __init__(self, width: int, heads: int, mask: torch.Tensor) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, 4 * width)),
                    ("gelu", _QuickGELU()),
                    ("c_proj", nn.Linear(4 * width, width)),
                ]
            )
        )
        self.ln_2 = nn.LayerNorm(width)
        self.mask = mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=self.mask)[0]
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    """SLIP's ``Transformer``: ``resblocks``, run sequence first."""

    def __init__(self, width: int, heads: int, layers: int, mask: torch.Tensor) -> None:
        super().__init__()
        self.resblocks = nn.Sequential(*[_Block(width, heads, mask) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


class TinySlip(nn.Module):
    """A SLIP-shaped model with SLIP's attribute names (models.SLIP): the reference the loader must match.

    ``visual`` is timm's ViT without classifier, as ``timm.create_model(..., num_classes=0)`` gives.
    """

    def __init__(self, vision_width: int = 48, text_width: int = 32, embed_dim: int = 24, context: int = 16):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        self.visual = VisionTransformer(
            img_size=32, patch_size=8, embed_dim=vision_width, depth=2, num_heads=12, num_classes=0
        )
        mask = torch.full((context, context), float("-inf")).triu(1)
        self.transformer = _Transformer(text_width, 8, 2, mask)
        self.token_embedding = nn.Embedding(49408, text_width)
        self.positional_embedding = nn.Parameter(torch.randn(context, text_width) * 0.01)
        self.ln_final = nn.LayerNorm(text_width)
        self.image_projection = nn.Parameter(torch.randn(vision_width, embed_dim) * vision_width**-0.5)
        self.text_projection = nn.Parameter(torch.randn(text_width, embed_dim) * text_width**-0.5)
        self.logit_scale = nn.Parameter(torch.ones([]) * torch.log(torch.tensor(1 / 0.07)))
        self.image_mlp = nn.Sequential(
            OrderedDict(
                [
                    ("layer1", nn.Linear(vision_width, 16)),
                    ("bn1", nn.BatchNorm1d(16)),
                    ("relu1", nn.ReLU(inplace=True)),
                    ("layer2", nn.Linear(16, 8)),
                ]
            )
        )

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image) @ self.image_projection

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(text) + self.positional_embedding
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection


class _DistributedWrapper(nn.Module):
    """What DistributedDataParallel adds to a state dict: the ``module.`` prefix."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


def write_tiny_slip(path: Path, seed: int = 0, model: str = "SLIP_VITB16", extra: object = None) -> TinySlip:
    """Save a tiny SLIP checkpoint the way SLIP's main.py does (``torch.save`` of a dict with the DDP
    state dict, optimizer and scaler states, ``best_acc1`` and the ``argparse.Namespace`` of args).

    Args:
        path: where to write.
        seed: weights seed.
        model: ``args.model``.
        extra: an object stored under ``extra`` (a test of what the loader refuses).

    Returns:
        The reference model, in eval mode.
    """
    torch.manual_seed(seed)
    reference = TinySlip().eval()
    wrapped = _DistributedWrapper(reference)
    optimizer = torch.optim.AdamW(wrapped.parameters(), lr=1e-3)
    args = argparse.Namespace(
        model=model,
        ssl_mlp_dim=16,
        ssl_emb_dim=8,
        ssl_scale=1.0,
        ssl_temp=0.1,
        lr=3e-3,
        epochs=25,
        output_dir="./output",
        dataset="yfcc15m",
        betas=(0.9, 0.98),
    )
    checkpoint = {
        "epoch": 1,
        "state_dict": wrapped.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000},
        "best_acc1": 0.0,
        "args": args,
    }
    if extra is not None:
        checkpoint["extra"] = extra
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return reference

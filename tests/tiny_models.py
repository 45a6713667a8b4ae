"""Tiny CLIP models written inside tests (no weights are ever downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_OPENCLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def write_tiny_openclip(directory: Path, name: str = "cc-tiny-vit", seed: int = 0) -> tuple[Path, Path]:
    """Write a tiny open_clip config JSON and a seeded random checkpoint; return (config, weights)."""
    import open_clip
    from safetensors.torch import save_file

    from counterclip.models.open_clip_backend import register_config_file

    directory.mkdir(parents=True, exist_ok=True)
    config = directory / f"{name}.json"
    config.write_text(json.dumps(TINY_OPENCLIP_CONFIG))
    arch = register_config_file(config)
    torch.manual_seed(seed)
    module = open_clip.create_model(arch)
    weights = directory / f"{name}-seed{seed}.safetensors"
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(weights))
    return config, weights


_HF_SPECIALS = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}


def write_broken_for_int8(directory: Path) -> str:
    """A tiny open_clip model whose int8 image tower really breaks; returns its model spec. In each block
    one MLP hidden unit is always 0 (its c_fc row and bias are 0, and GELU(0) = 0) and its c_proj column is
    huge. fp32 is unaffected (0 x 1e4 = 0), but int8 weights get one scale per output channel set by that
    column, and every other weight of c_proj rounds to 0: the MLPs vanish."""
    from safetensors.torch import load_file, save_file

    config, weights = write_tiny_openclip(directory, name="cc-tiny-vit", seed=2)
    state = load_file(str(weights))
    for block in range(2):
        prefix = f"visual.transformer.resblocks.{block}.mlp"
        state[f"{prefix}.c_fc.weight"][0, :] = 0.0
        state[f"{prefix}.c_fc.bias"][0] = 0.0
        state[f"{prefix}.c_proj.weight"][:, 0] = 1e4
    broken = weights.with_name("broken.safetensors")
    save_file(state, str(broken))
    return f"{config}:{broken}"


def write_tiny_hf_clip(directory: Path, seed: int = 0) -> Path:
    """Save a tiny random `transformers.CLIPModel` with processor files to ``directory``.

    The tokenizer files are made from open_clip's bundled BPE vocabulary (the same one CLIP uses), so
    nothing is downloaded.
    """
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    simple = SimpleTokenizer()
    # open_clip names the special tokens <start_of_text>/<end_of_text>; HF's CLIP tokenizer expects <|...|>.
    vocab = {_HF_SPECIALS.get(token, token): index for token, index in simple.encoder.items()}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    merges = sorted(simple.bpe_ranks.items(), key=lambda item: item[1])
    (directory / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(f"{a} {b}" for (a, b), _ in merges) + "\n"
    )
    tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
    tokenizer.save_pretrained(directory)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        directory
    )
    config = CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "vocab_size": len(vocab),
            "eos_token_id": vocab["<|endoftext|>"],
            "bos_token_id": vocab["<|startoftext|>"],
            "pad_token_id": vocab["<|endoftext|>"],
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=24,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(directory)
    return directory

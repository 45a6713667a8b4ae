"""CLI: models (list what `--model` accepts, or load one and describe it)."""

from __future__ import annotations

from typing import Any

import typer

from counterclip.cli._common import out, print_json, working


def models(
    spec: str = typer.Argument(None, help="A model spec to load and describe; omit to list what is known."),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List the model families (CLIP, SigLIP, BLIP, SLIP) with an example spec each, or load one model
    and print its family, spec, pair score, embedding size and weights fingerprint.

    Examples:

      counterclip models

      counterclip models bundled:shapes --json

      counterclip models ViT-B-32:/path/to/open_clip_weights.safetensors
    """
    if spec is None:
        with working("listing the models ...", enabled=not as_json):
            known = _known_models()
        if as_json:
            print_json(known)
        else:
            _print_known_models(known)
        return
    with working(f"loading model {spec} ...", enabled=not as_json):
        payload = _model_payload(spec, device)
    if as_json:
        print_json(payload)
    else:
        for key, value in payload.items():
            out.print(f"[bold]{key}[/]: {value}")


#: The spec forms `--model` accepts (the models package parses each: `counterclip.models.spec`).
SPEC_FORMS = [
    "bundled:NAME",
    "ARCH",
    "ARCH:TAG",
    "ARCH:/path/ckpt",
    "CONFIG.json:/path/ckpt",
    "hf:HUB_ID",
    "hf:/local/dir",
    "local-dir:/dir",
    "hf-hub:ORG/REPO",
    "slip:/path/ckpt.pt",
]


def _known_models() -> dict[str, Any]:
    """The families with their examples, the bundled models, open_clip's architectures, the spec forms."""
    import open_clip

    from counterclip.models import list_bundled_models
    from counterclip.models.families import FAMILIES

    return {
        "families": [family.to_dict() for family in FAMILIES],
        "bundled": [f"bundled:{n}" for n in list_bundled_models()],
        "open_clip_architectures": open_clip.list_models(),
        "forms": list(SPEC_FORMS),
    }


def _print_known_models(known: dict[str, Any]) -> None:
    from counterclip.models.families import FAMILIES

    out.print("[bold]families[/] (hf: reads the family from config.json's model_type):")
    for family in FAMILIES:
        examples = "  ".join(spec for spec, _ in family.examples)
        out.print(f"  [bold]{family.title}[/]: {examples}  [dim]({family.score})[/]", highlight=False)
    out.print("[bold]bundled[/]: " + (", ".join(known["bundled"]) or "none installed"))
    out.print("[bold]spec forms[/]: " + "  ".join(known["forms"]))
    out.print(
        f"[bold]open_clip architectures[/] ({len(known['open_clip_architectures'])}): "
        + ", ".join(known["open_clip_architectures"])
    )


def _model_payload(spec: str, device: str) -> dict[str, Any]:
    """Load the model of ``spec`` and describe it: family, spec, pair score, sizes, fingerprint, device."""
    from counterclip.models import load_model

    model = load_model(spec, device=device)
    geometry = model.vision_geometry
    return {
        "family": model.family,
        "spec": model.spec.to_dict(),
        "spec_string": str(model.spec),
        "pair_score": model.pair_score.to_dict(),
        "embed_dim": model.embed_dim,
        "context_length": model.context_length,
        "logit_scale": model.logit_scale,
        "image_size": list(geometry.image_size),
        "grid_size": list(geometry.grid_size) if geometry.grid_size else None,
        "fingerprint": model.fingerprint,
        "device": str(model.device),
    }


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    """Add ``models``."""
    app.command()(models)

"""CLI: models (list what `--model` accepts, or load one and describe it)."""

from __future__ import annotations

import typer

from counterclip.cli._common import out, print_json


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    @app.command()
    def models(
        spec: str = typer.Argument(
            None, help="A model spec to load and describe; omit to list what is known."
        ),
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
        import open_clip

        from counterclip.models import list_bundled_models, load_model
        from counterclip.models.families import FAMILIES

        if spec is None:
            payload = {
                "families": [family.to_dict() for family in FAMILIES],
                "bundled": [f"bundled:{n}" for n in list_bundled_models()],
                "open_clip_architectures": open_clip.list_models(),
                "forms": [
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
                ],
            }
            if as_json:
                print_json(payload)
                return
            out.print("[bold]families[/] (hf: reads the family from config.json's model_type):")
            for family in FAMILIES:
                examples = "  ".join(spec for spec, _ in family.examples)
                out.print(f"  [bold]{family.title}[/]: {examples}  [dim]({family.score})[/]", highlight=False)
            out.print("[bold]bundled[/]: " + (", ".join(payload["bundled"]) or "none installed"))
            out.print("[bold]spec forms[/]: " + "  ".join(payload["forms"]))
            out.print(
                f"[bold]open_clip architectures[/] ({len(payload['open_clip_architectures'])}): "
                + ", ".join(payload["open_clip_architectures"])
            )
            return
        model = load_model(spec, device=device)
        geometry = model.vision_geometry
        payload = {
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
        if as_json:
            print_json(payload)
        else:
            for key, value in payload.items():
                out.print(f"[bold]{key}[/]: {value}")

"""Model loading prints no third-party progress bars or log lines, and leaves the libraries' own settings
as it found them."""

from __future__ import annotations

import logging

from family_models import write_tiny_blip

from counterclip.models import load_model


def test_loading_prints_nothing_and_restores_the_settings(tmp_path, tiny_openclip, capfd) -> None:
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as hf_logging

    blip = write_tiny_blip(tmp_path / "blip")
    capfd.readouterr()
    before = (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled(), are_progress_bars_disabled())
    levels = {name: logging.getLogger(name).level for name in ("transformers", "open_clip", "timm")}
    for spec in (f"hf:{blip}", tiny_openclip, "bundled:shapes"):
        assert load_model(spec, device="cpu").embed_dim > 0
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")  # no "Loading weights 100%|...|", no load report
    after = (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled(), are_progress_bars_disabled())
    assert after == before and before[1] is True
    assert {name: logging.getLogger(name).level for name in levels} == levels

"""Rendering of results: heat-map overlays, explanation panels, token strips (PNG), HTML reports, and the
figures of the classical explainers. Imports go one way: report -> explainers (never back)."""

from counterclip.report.files import png_data_uri, save_png, write_text_atomic
from counterclip.report.images import colorize, overlay, panel, save_explanation, token_strip

__all__ = [
    "colorize",
    "overlay",
    "panel",
    "png_data_uri",
    "save_explanation",
    "save_png",
    "token_strip",
    "write_text_atomic",
]

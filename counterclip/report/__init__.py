"""Rendering of results: heat-map overlays, explanation panels, token strips (PNG), HTML reports."""

from counterclip.report.images import colorize, overlay, panel, png_data_uri, save_png, token_strip

__all__ = ["colorize", "overlay", "panel", "png_data_uri", "save_png", "token_strip"]

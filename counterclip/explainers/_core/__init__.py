"""Internals of the CLIP explainers (targets, attention capture, model guards, pixel codec)."""

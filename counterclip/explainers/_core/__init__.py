"""Internals of the CLIP explainers (method registry, targets, model guard, pixel codec)."""

"""Measured quality, above the parts it measures: it imports the engine, the explainers and the shapes
world (whose known attributes make quality measurable), and none of them imports it.

Modules: `counterclip.evaluation.explainers` (``counterclip eval explainers``). Import them directly;
this package imports nothing on its own.
"""

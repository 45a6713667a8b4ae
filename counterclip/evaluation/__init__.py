"""Measured quality on the shapes world, where every attribute is known.

The engine and the explainers know no synthetic world; the harnesses that judge them against the shapes
world's labels live here, above both: `counterfactuals` (``counterclip eval counterfactual``) and
`explainers` (``counterclip eval explainers``).
"""

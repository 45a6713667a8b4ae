"""Classical (secondary) explainers: CNN image classifiers, text classifiers, tabular models.

Every function returns the shared `counterclip.explainers.base.Explanation`. Heavy imports (Captum,
LIME, transformers, matplotlib) happen inside the calls, so importing this package is cheap.
"""

from counterclip.explainers.classic.cnn import (
    CNN_METHODS,
    black_baseline,
    explain_cnn,
    layer_sweep,
    load_class_names,
    load_cnn,
    overlap_matrix,
    preprocess_image,
    resolve_targets,
    top_region_iou,
    top_region_mask,
)
from counterclip.explainers.classic.cnn_counterfactual import pixel_counterfactual
from counterclip.explainers.classic.layers import LayerInfo, get_layer, list_layers, scoped_eval
from counterclip.explainers.classic.tabular import (
    BUNDLED_DATASETS,
    MODEL_KINDS,
    TabularData,
    explain_lime_tabular,
    explain_partial_dependence,
    fit_model,
    load_bundled,
    load_csv,
)
from counterclip.explainers.classic.text_classifier import (
    explain_text_ig,
    explain_text_lime,
    load_text_classifier,
)

__all__ = [
    "BUNDLED_DATASETS",
    "CNN_METHODS",
    "MODEL_KINDS",
    "LayerInfo",
    "TabularData",
    "black_baseline",
    "explain_cnn",
    "explain_lime_tabular",
    "explain_partial_dependence",
    "explain_text_ig",
    "explain_text_lime",
    "fit_model",
    "get_layer",
    "layer_sweep",
    "list_layers",
    "load_bundled",
    "load_class_names",
    "load_cnn",
    "load_csv",
    "load_text_classifier",
    "overlap_matrix",
    "pixel_counterfactual",
    "preprocess_image",
    "resolve_targets",
    "scoped_eval",
    "top_region_iou",
    "top_region_mask",
]

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
from counterclip.explainers.classic.cnn_runs import (
    CNN_RUN_METHODS,
    CnnRequest,
    CnnResult,
    num_outputs,
    read_image,
    run_cnn,
)
from counterclip.explainers.classic.layers import LayerInfo, get_layer, list_layers, scoped_eval
from counterclip.explainers.classic.tabular import (
    BUNDLED_DATASETS,
    MODEL_KINDS,
    TABULAR_METHODS,
    TabularData,
    TabularRequest,
    TabularResult,
    explain_lime_tabular,
    explain_partial_dependence,
    fit_model,
    load_bundled,
    load_csv,
    run_tabular,
)
from counterclip.explainers.classic.text_classifier import (
    TEXT_METHODS,
    explain_text,
    explain_text_ig,
    explain_text_lime,
    load_text_classifier,
)

__all__ = [
    "BUNDLED_DATASETS",
    "CNN_METHODS",
    "CNN_RUN_METHODS",
    "MODEL_KINDS",
    "TABULAR_METHODS",
    "TEXT_METHODS",
    "CnnRequest",
    "CnnResult",
    "LayerInfo",
    "TabularData",
    "TabularRequest",
    "TabularResult",
    "black_baseline",
    "explain_cnn",
    "explain_lime_tabular",
    "explain_partial_dependence",
    "explain_text",
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
    "num_outputs",
    "overlap_matrix",
    "pixel_counterfactual",
    "preprocess_image",
    "read_image",
    "resolve_targets",
    "run_cnn",
    "run_tabular",
    "scoped_eval",
    "top_region_iou",
    "top_region_mask",
]

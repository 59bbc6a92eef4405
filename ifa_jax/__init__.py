"""ifa_jax: integrated feature analysis and class activation maps for JAX/Flax models.

The package is the library: probes, CAM methods, the streaming analysis and what is
computed from it; it needs jax, flax and numpy. The application (datasets, reference
models, training and the ``ifa-jax`` runner) is :mod:`ifa_jax.runner`, installed with the
``runner`` extra.
"""

import importlib
import warnings
from typing import TYPE_CHECKING

from ifa_jax import (
    analysis,
    cams,
    decompose,
    dff,
    diagnostics,
    explaining,
    inputs,
    metrics,
    modules,
    scale,
)
from ifa_jax.analysis import analyze
from ifa_jax.cams import METHODS, CamResult, cam, cam_layers, cams_per_layer, fuse, upsample
from ifa_jax.dff import concept_maps, concept_scores, dff_dataset
from ifa_jax.explaining import Explanation, explain, fullgrad, guided, smoothing
from ifa_jax.explaining.guided import guided_backprop, guided_gradcam
from ifa_jax.explaining.smoothing import (
    aug_smooth,
    eigen_smooth,
    explain_smoothed,
    sess,
    smoothgrad,
)
from ifa_jax.frameworks import equinox_probe, function_probe, haiku_probe
from ifa_jax.legrad import legrad_probe
from ifa_jax.modules import NnxReLU, ReLU
from ifa_jax.probe import LayerProbe, ProbeResult, linen_layers, linen_probe, nnx_probe
from ifa_jax.tokens import attention_to_grid, tokens_to_grid

if TYPE_CHECKING:  # for type checkers; at run time plots is imported on first use
    from ifa_jax import plots

__version__ = "0.1.0"


# Modules that moved to the application, ifa_jax.runner (see CHANGELOG).
_MOVED = {
    "data": "ifa_jax.runner.data",
    "models": "ifa_jax.runner.models",
    "train": "ifa_jax.runner.train",
}


def __getattr__(name: str):
    # plots needs matplotlib (the `plots` extra): imported on first use, not with ifa_jax.
    if name == "plots":
        return importlib.import_module("ifa_jax.plots")
    if name in _MOVED:
        warnings.warn(
            f"ifa_jax.{name} moved to {_MOVED[name]} (the application, extra 'runner'); "
            f"import it from there",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(_MOVED[name])
    raise AttributeError(f"module 'ifa_jax' has no attribute {name!r}")


__all__ = [
    "METHODS",
    "CamResult",
    "Explanation",
    "NnxReLU",
    "ReLU",
    "LayerProbe",
    "ProbeResult",
    "analysis",
    "analyze",
    "attention_to_grid",
    "aug_smooth",
    "cam",
    "cams",
    "cam_layers",
    "cams_per_layer",
    "concept_maps",
    "concept_scores",
    "decompose",
    "dff",
    "dff_dataset",
    "diagnostics",
    "eigen_smooth",
    "equinox_probe",
    "explain",
    "explaining",
    "explain_smoothed",
    "function_probe",
    "fullgrad",
    "fuse",
    "guided",
    "guided_backprop",
    "guided_gradcam",
    "haiku_probe",
    "inputs",
    "legrad_probe",
    "linen_layers",
    "linen_probe",
    "metrics",
    "modules",
    "nnx_probe",
    "plots",
    "scale",
    "sess",
    "smoothgrad",
    "smoothing",
    "tokens_to_grid",
    "upsample",
]

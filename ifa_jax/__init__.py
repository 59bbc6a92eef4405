"""ifa_jax: integrated feature analysis and class activation maps for JAX/Flax models."""

import importlib
from typing import TYPE_CHECKING

from ifa_jax import (
    analysis,
    cams,
    data,
    decompose,
    dff,
    diagnostics,
    fullgrad,
    metrics,
    models,
    scale,
    smoothing,
)
from ifa_jax.cams import METHODS, CamResult, cam, cam_layers, cams_per_layer, fuse, upsample
from ifa_jax.dff import concept_maps, concept_scores, dff_dataset
from ifa_jax.explaining import explain
from ifa_jax.frameworks import equinox_probe, function_probe, haiku_probe
from ifa_jax.guided import guided_backprop, guided_gradcam
from ifa_jax.legrad import legrad_probe
from ifa_jax.probe import LayerProbe, ProbeResult, linen_layers, linen_probe, nnx_probe
from ifa_jax.smoothing import aug_smooth, eigen_smooth, explain_smoothed, sess, smoothgrad
from ifa_jax.tokens import attention_to_grid, tokens_to_grid

if TYPE_CHECKING:  # for type checkers; at run time plots is imported on first use
    from ifa_jax import plots

__version__ = "0.1.0"


def __getattr__(name: str):
    # plots needs matplotlib (the `plots` extra): imported on first use, not with ifa_jax.
    if name == "plots":
        return importlib.import_module("ifa_jax.plots")
    raise AttributeError(f"module 'ifa_jax' has no attribute {name!r}")


__all__ = [
    "METHODS",
    "CamResult",
    "LayerProbe",
    "ProbeResult",
    "analysis",
    "attention_to_grid",
    "aug_smooth",
    "cam",
    "cams",
    "cam_layers",
    "cams_per_layer",
    "concept_maps",
    "concept_scores",
    "data",
    "decompose",
    "dff",
    "dff_dataset",
    "diagnostics",
    "eigen_smooth",
    "equinox_probe",
    "explain",
    "explain_smoothed",
    "function_probe",
    "fullgrad",
    "fuse",
    "guided_backprop",
    "guided_gradcam",
    "haiku_probe",
    "legrad_probe",
    "linen_layers",
    "linen_probe",
    "metrics",
    "models",
    "nnx_probe",
    "plots",
    "scale",
    "sess",
    "smoothgrad",
    "smoothing",
    "tokens_to_grid",
    "upsample",
]

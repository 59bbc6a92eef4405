"""ifa_jax: integrated feature analysis and class activation maps for JAX/Flax models.

The package is the library: probes, CAM methods, the streaming analysis and what is
computed from it; it needs jax, flax and numpy. The application (datasets, reference
models, training and the ``ifa-jax`` runner) is :mod:`ifa_jax.runner`, installed with the
``runner`` extra.

Examples:
    The Grad-CAM of a small Linen CNN at its rectified conv layer, explaining class 0 of
    the first image and class 2 of the second:

    >>> import flax.linen as nn
    >>> import jax
    >>> import ifa_jax
    >>> class Net(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         a = ifa_jax.ReLU(name="relu")(nn.Conv(4, (3, 3), name="conv")(x))
    ...         return nn.Dense(3, name="head")(a.mean(axis=(1, 2)))
    >>> x = jax.random.uniform(jax.random.key(1), (2, 6, 6, 1))
    >>> variables = Net().init(jax.random.key(0), x)
    >>> probe = ifa_jax.linen_probe(Net(), "relu")
    >>> result = probe(variables, x, target=[0, 2])
    >>> result.logits.shape, result.activations.shape, result.gradients.shape
    ((2, 3), (2, 6, 6, 4), (2, 6, 6, 4))
    >>> maps = ifa_jax.cam(result.activations, result.gradients, "gradcam")
    >>> maps.cam.shape, maps.importance.shape, maps.max.shape
    ((2, 6, 6), (2, 4), (2,))
    >>> ifa_jax.upsample(maps.cam, (12, 12)).shape
    (2, 12, 12)
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
    probes,
    scale,
)
from ifa_jax.analysis import analyze, analyze_methods
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
from ifa_jax.modules import NnxReLU, ReLU
from ifa_jax.probes import (
    LayerProbe,
    ProbeResult,
    attention_to_grid,
    equinox_probe,
    function_probe,
    haiku_probe,
    hf_probe,
    legrad_probe,
    linen_layers,
    linen_probe,
    nnx_probe,
    tokens_to_grid,
)

if TYPE_CHECKING:  # for type checkers; at run time plots is imported on first use
    from ifa_jax import plots

__version__ = "0.1.0"


# Modules that moved (see CHANGELOG): {old name: (new module, what it is now)}.
_APPLICATION = "the application, extra 'runner'"
_MOVED = {
    "data": ("ifa_jax.runner.data", _APPLICATION),
    "models": ("ifa_jax.runner.models", _APPLICATION),
    "train": ("ifa_jax.runner.train", _APPLICATION),
    "probe": ("ifa_jax.probes", "the probes subpackage"),
    "frameworks": ("ifa_jax.probes", "the probes subpackage"),
    "tokens": ("ifa_jax.probes.tokens", "in the probes subpackage"),
    "legrad": ("ifa_jax.probes.legrad", "in the probes subpackage"),
}


def __getattr__(name: str):
    # plots needs matplotlib (the `plots` extra): imported on first use, not with ifa_jax.
    if name == "plots":
        return importlib.import_module("ifa_jax.plots")
    if name in _MOVED:
        new, what = _MOVED[name]
        warnings.warn(
            f"ifa_jax.{name} moved to {new} ({what}); import it from there",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(new)
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
    "analyze_methods",
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
    "hf_probe",
    "inputs",
    "legrad_probe",
    "linen_layers",
    "linen_probe",
    "metrics",
    "modules",
    "nnx_probe",
    "plots",
    "probes",
    "scale",
    "sess",
    "smoothgrad",
    "smoothing",
    "tokens_to_grid",
    "upsample",
]

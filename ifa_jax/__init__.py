"""ifa_jax: integrated feature analysis and class activation maps for JAX/Flax models."""

from ifa_jax import analysis, cams, data, decompose, diagnostics, metrics, models, plots, scale
from ifa_jax.cams import METHODS, CamResult, cam, upsample
from ifa_jax.explaining import explain
from ifa_jax.probe import LayerProbe, ProbeResult, linen_layers, linen_probe, nnx_probe

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "CamResult",
    "LayerProbe",
    "ProbeResult",
    "analysis",
    "cam",
    "cams",
    "data",
    "decompose",
    "diagnostics",
    "explain",
    "linen_layers",
    "linen_probe",
    "metrics",
    "models",
    "nnx_probe",
    "plots",
    "scale",
    "upsample",
]

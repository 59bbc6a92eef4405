"""Explaining a model's outputs: a probe and a CAM method in one call, at every entry
point with one calling convention.

Every entry point takes ``(probe, variables, x, target, method, *, ...)``, ``method`` the
CAM method it runs (where it has a choice), and returns an
:class:`~ifa_jax.explaining.explainer.Explanation` ``(probe_result, cam_result)``, except
Guided GradCAM, whose :class:`~ifa_jax.explaining.guided.GuidedGradCam` holds both:

* :mod:`~ifa_jax.explaining.explainer`: :func:`explain` (every method of
  :data:`ifa_jax.cams.REGISTRY`) and the model runs of the methods that need them
  (:func:`forward_weights`, :func:`input_map`);
* :mod:`~ifa_jax.explaining.smoothing`: smoothed CAMs (augmentation, noise, eigen) and
  SESS;
* :mod:`~ifa_jax.explaining.fullgrad`: FullGrad at input resolution;
* :mod:`~ifa_jax.explaining.guided`: guided backpropagation and Guided GradCAM.
"""

from ifa_jax.explaining import explainer, fullgrad, guided, smoothing
from ifa_jax.explaining.explainer import (
    Explanation,
    callable_target,
    explain,
    forward_weights,
    input_map,
)

__all__ = [
    "Explanation",
    "callable_target",
    "explain",
    "explainer",
    "forward_weights",
    "fullgrad",
    "guided",
    "input_map",
    "smoothing",
]

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

Examples:
    GradCAM of output 0 of a small Linen model, in one call:

    >>> import jax
    >>> import flax.linen as nn
    >>> import ifa_jax
    >>> class Net(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         a = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
    ...         return nn.Dense(3, name="head")(a.mean(axis=(1, 2)))
    >>> net = Net()
    >>> x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1))
    >>> variables = net.init(jax.random.key(1), x)
    >>> probe = ifa_jax.linen_probe(net, "conv")
    >>> probe_result, cam_result = ifa_jax.explain(probe, variables, x, 0, "gradcam")
    >>> probe_result.activations.shape, cam_result.cam.shape, cam_result.importance.shape
    ((2, 8, 8, 4), (2, 8, 8), (2, 4))
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

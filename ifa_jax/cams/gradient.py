"""Gradient-weighted methods: M = w * A with weights from the gradients G at the layer.

Each is ``fn(inputs: CamInputs, /, **options) -> M (B, *spatial, K)`` (a
:class:`~ifa_jax.cams.method.LayerFn`); those with one weight per channel, ``M_k = w_k A_k``,
also give their weights (B, K) alone (``*_weights``, the entries' ``weights``). Their
entries are in :mod:`ifa_jax.cams.builtin`.

Examples:
    Two channels of ones with constant gradients 1 and 0.5: GradCAM weighs them so:

    >>> import jax.numpy as jnp
    >>> from ifa_jax import cams
    >>> A = jnp.ones((1, 2, 2, 2))
    >>> G = jnp.ones((1, 2, 2, 2)) * jnp.array([1.0, 0.5])
    >>> result = cams.cam(A, G, "gradcam")
    >>> result.importance.tolist(), result.cam[0].tolist()
    ([[4.0, 2.0]], [[1.5, 1.5], [1.5, 1.5]])
    >>> cams.cam(A, G, "hirescam").importance.tolist()          # M = G * A
    [[4.0, 2.0]]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ifa_jax.cams._grid import grid_sum, per_channel, spatial_axes
from ifa_jax.cams.method import CamInputs

Array = jax.Array

GRADCAMPP_EPS = 1e-6  # pytorch-grad-cam's; with gradients ~1e-3 it dominates alpha's denominator
XGRADCAM_EPS = 1e-7  # pytorch-grad-cam's
EPS = XGRADCAM_EPS  # XGradCAM's default eps (ifa_jax.consistency builds its tangent with it)


def _bk(w: Array) -> Array:
    """Weights (B, 1.., K) with the grid axes kept -> (B, K)."""
    return w.reshape(w.shape[0], w.shape[-1])


def gradcam_weights(inputs: CamInputs) -> Array:
    """GradCAM's w (B, K): the grid mean of G."""
    A, G = inputs.activations, inputs.gradients
    assert G is not None
    return jnp.mean(G, axis=spatial_axes(A))


def gradcam(inputs: CamInputs) -> Array:
    """GradCAM: M = (grid mean of G) * A."""
    return per_channel(gradcam_weights(inputs), inputs.activations)


def gradcampp_weights(A: Array, G: Array, eps) -> Array:
    """GradCAM++'s w (B, 1.., K) from A and G (B, *spatial, K), grid axes kept."""
    g2 = G * G
    alpha = jnp.where(G != 0, g2 / (2.0 * g2 + grid_sum(A) * g2 * G + eps), 0.0)
    return jnp.sum(jax.nn.relu(G) * alpha, axis=spatial_axes(A), keepdims=True)


def gradcampp_channel_weights(inputs: CamInputs, *, eps=GRADCAMPP_EPS) -> Array:
    """GradCAM++'s w (B, K), from :func:`gradcampp_weights`."""
    assert inputs.gradients is not None
    return _bk(gradcampp_weights(inputs.activations, inputs.gradients, eps))


def gradcampp(inputs: CamInputs, *, eps=GRADCAMPP_EPS) -> Array:
    """GradCAM++: M = w * A, w from :func:`gradcampp_weights`."""
    return per_channel(gradcampp_channel_weights(inputs, eps=eps), inputs.activations)


def xgradcam_weights(inputs: CamInputs, *, eps=XGRADCAM_EPS) -> Array:
    """XGradCAM's w (B, K) = sum(G A) / (sum(A) + eps), sums over the grid."""
    A, G = inputs.activations, inputs.gradients
    assert G is not None
    return _bk(grid_sum(G * A) / (grid_sum(A) + eps))


def xgradcam(inputs: CamInputs, *, eps=XGRADCAM_EPS) -> Array:
    """XGradCAM: M = sum(G A) / (sum(A) + eps) * A, sums over the grid."""
    return per_channel(xgradcam_weights(inputs, eps=eps), inputs.activations)


def hirescam(inputs: CamInputs) -> Array:
    """HiResCAM: M = G * A element-wise."""
    assert inputs.gradients is not None
    return inputs.gradients * inputs.activations


def layercam(inputs: CamInputs) -> Array:
    """LayerCAM: M = relu(G) * A element-wise."""
    assert inputs.gradients is not None
    return jax.nn.relu(inputs.gradients) * inputs.activations


def elementwise(inputs: CamInputs) -> Array:
    """GradCAMElementWise: M = relu(G * A)."""
    assert inputs.gradients is not None
    return jax.nn.relu(inputs.gradients * inputs.activations)

"""Methods from the activations alone (and a key): FEM and the random baseline.

Each is ``fn(inputs: CamInputs, /, **options) -> M (B, *spatial, K)``; the eigen and
kernel-PCA methods are in :mod:`ifa_jax.cams.eigen`.

Examples:
    FEM from the activations alone, and the random baseline from a key:

    >>> import jax
    >>> from ifa_jax import cams
    >>> A = jax.random.uniform(jax.random.key(0), (2, 4, 4, 3))
    >>> cams.cam(A, None, "fem").cam.shape
    (2, 4, 4)
    >>> cams.cam(A, None, "randomcam", key=jax.random.key(1)).importance.shape
    (2, 3)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ifa_jax.cams._grid import per_channel, spatial_axes
from ifa_jax.cams.method import CamInputs

Array = jax.Array

FEM_K = 2.0  # FEM's k-sigma threshold (Fuad et al. 2020)


def randomcam(inputs: CamInputs) -> Array:
    """Random baseline: M = w * A, w ~ uniform[-1, 1] (B, K) from the key."""
    A, key = inputs.activations, inputs.key
    assert key is not None
    w = jax.random.uniform(key, (A.shape[0], A.shape[-1]), A.dtype, minval=-1.0, maxval=1.0)
    return per_channel(w, A)


def fem(inputs: CamInputs, *, k=FEM_K) -> Array:
    """FEM: M = mean(A) where A > mean(A) + k std(A) (per channel), else 0."""
    A = inputs.activations
    axes = spatial_axes(A)
    mean = jnp.mean(A, axis=axes, keepdims=True)
    # The mask is piecewise constant: the threshold carries no gradient.
    threshold = jax.lax.stop_gradient(mean + k * jnp.std(A, axis=axes, keepdims=True))
    return mean * jnp.greater(A, threshold).astype(A.dtype)

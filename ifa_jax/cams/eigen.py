"""Eigen methods: the first principal component of A (or G A) per sample, and kernel PCA.

Each is ``fn(inputs: CamInputs, /, **options) -> M (B, *spatial, K)``.

Examples:
    EigenCAM of activations whose channels are one map times three factors: the
    first component gives that map back, up to scale:

    >>> import jax.numpy as jnp
    >>> from ifa_jax import cams
    >>> u = jnp.array([[0.0, 1.0], [2.0, 3.0]])
    >>> A = (u[..., None] * jnp.array([1.0, 2.0, 2.0]))[None]    # (1, 2, 2, 3), rank one
    >>> L = cams.cam(A, None, "eigencam").cam
    >>> [round(v, 4) for v in (L / L.max()).ravel().tolist()]
    [0.0, 0.3333, 0.6667, 1.0]
    >>> sorted(cams.KPCA_KERNELS)
    ['cosine', 'linear', 'poly', 'rbf', 'sigmoid']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ifa_jax.cams._grid import per_channel, spatial_axes
from ifa_jax.cams.method import CamInputs

Array = jax.Array


def first_component(a: Array) -> Array:
    """Per sample, the first right singular vector v (B, K) of a reshaped (B, P, K).

    Its sign is fixed so that sum_p (a v)_p >= 0: the CAM points where a is large.
    """
    flat = a.reshape(a.shape[0], -1, a.shape[-1])
    _, _, vt = jnp.linalg.svd(flat, full_matrices=False)
    v = vt[:, 0, :]
    sign = jnp.sign(jnp.einsum("bpk,bk->b", flat, v))
    return v * jnp.where(sign == 0, 1.0, sign)[:, None]


def eigencam(inputs: CamInputs) -> Array:
    """EigenCAM: M = v * A, v the first right singular vector of A."""
    A = inputs.activations
    return per_channel(first_component(A), A)


def eigengradcam(inputs: CamInputs) -> Array:
    """EigenGradCAM: M = v * (G A), v the first right singular vector of G A."""
    assert inputs.gradients is not None
    ga = inputs.gradients * inputs.activations
    return per_channel(first_component(ga), ga)


def _safe_sqrt(x: Array) -> Array:
    """sqrt(max(x, 0)) with a finite gradient (0) where x <= 0."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


# Kernels of KPCA-CAM on rows x, y of X (B, P, K), as scikit-learn defines them
# (coef0 = 1, degree = 3, its defaults): (X, gamma) -> (B, P, P).
def _dot(X: Array) -> Array:
    return jnp.einsum("bpk,bqk->bpq", X, X)


def _rbf(X: Array, gamma) -> Array:
    sq = jnp.sum(X * X, axis=-1)
    dist = jnp.maximum(sq[:, :, None] + sq[:, None, :] - 2.0 * _dot(X), 0.0)
    return jnp.exp(-gamma * dist)


def _cosine(X: Array, gamma) -> Array:
    del gamma
    sq = jnp.sum(X * X, axis=-1, keepdims=True)
    unit = X / jnp.sqrt(jnp.where(sq > 0, sq, 1.0))  # zero rows stay zero, as in sklearn
    return _dot(unit)


KPCA_KERNELS: dict[str, Callable[[Array, Any], Array]] = {
    "linear": lambda X, gamma: _dot(X),
    "poly": lambda X, gamma: (gamma * _dot(X) + 1.0) ** 3,
    "rbf": _rbf,
    "sigmoid": lambda X, gamma: jnp.tanh(gamma * _dot(X) + 1.0),
    "cosine": _cosine,
}


def kpcacam(inputs: CamInputs, *, kernel="sigmoid", gamma=None) -> Array:
    """KPCA-CAM: the first kernel-PCA component of the grid cells, spread as M = L / K."""
    if not isinstance(kernel, str) or kernel not in KPCA_KERNELS:
        raise ValueError(
            f"kpcacam kernel must be one of {', '.join(KPCA_KERNELS)}; got {kernel!r} "
            "(under jit, pass it as a static argument)"
        )
    A = inputs.activations
    B, K = A.shape[0], A.shape[-1]
    X = A.reshape(B, -1, K)
    X = X - jnp.mean(X, axis=1, keepdims=True)  # each channel centred over the grid
    km = KPCA_KERNELS[kernel](X, 1.0 / K if gamma is None else gamma)
    # centre in feature space (sklearn's KernelCenterer)
    km = (
        km
        - jnp.mean(km, axis=1, keepdims=True)
        - jnp.mean(km, axis=2, keepdims=True)
        + jnp.mean(km, axis=(1, 2), keepdims=True)
    )
    values, vectors = jnp.linalg.eigh(km)  # ascending
    u = vectors[:, :, -1]
    top = jnp.take_along_axis(u, jnp.argmax(jnp.abs(u), axis=1)[:, None], axis=1)
    u = u * jnp.where(top < 0, -1.0, 1.0)  # sklearn's sign: the largest |entry| is positive
    L = (u * _safe_sqrt(values[:, -1])[:, None]).reshape(A.shape[:-1])
    return jnp.broadcast_to(L[..., None] / K, A.shape)


def segeigencam(inputs: CamInputs) -> Array:
    """SegEigenCAM: M = s v X, X = |G| A centred over the grid, v its first component."""
    assert inputs.gradients is not None
    X = jnp.abs(inputs.gradients) * inputs.activations
    X = X - jnp.mean(X, axis=spatial_axes(X), keepdims=True)  # centred, as pytorch-grad-cam
    flat = X.reshape(X.shape[0], -1, X.shape[-1])
    _, _, vt = jnp.linalg.svd(flat, full_matrices=False)
    v = vt[:, 0, :]
    projection = jnp.einsum("bpk,bk->bp", flat, v)
    # Sign correction (Chung and Ying 2025, eq. 13): the larger extreme is positive.
    flip = jnp.abs(jnp.min(projection, axis=1)) > jnp.abs(jnp.max(projection, axis=1))
    return per_channel(v * jnp.where(flip, -1.0, 1.0)[:, None], X)

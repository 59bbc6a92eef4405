"""Grid helpers the method families share: axes, sums and weights over (B, *spatial, K)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def spatial_axes(a: Array) -> tuple[int, ...]:
    """The grid axes of (B, *spatial, K): all but the first and the last."""
    if not 3 <= a.ndim <= 5:
        raise ValueError(
            f"activations must have shape (B, *spatial, K) with 1-3 spatial axes; got {a.shape}"
        )
    return tuple(range(1, a.ndim - 1))


def grid_sum(a: Array) -> Array:
    """(B, *spatial, K) -> (B, 1.., K): sums over the grid, keeping dims for broadcasting."""
    return jnp.sum(a, axis=spatial_axes(a), keepdims=True)


def per_channel(w: Array, a: Array) -> Array:
    """Weights (B, K) broadcast over the grid of a (B, *spatial, K), times a."""
    return w.reshape(w.shape[0], *(1,) * (a.ndim - 2), w.shape[-1]) * a

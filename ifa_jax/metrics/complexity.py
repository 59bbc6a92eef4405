"""Complexity of a map: is the relevance concentrated on a few cells?

Two metrics of maps (B, *spatial) (any number of spatial axes), on the absolute values
|L| as in Quantus 0.6.0 (its division by the maximum changes neither), batched and
jitted, one value per sample:

* :func:`sparseness` (Chalasani et al. 2020): the Gini index of |L|,
  sum_i (2i - n - 1) a_(i) / (n sum_i a_(i)) over the n values sorted ascending; 0 for a
  uniform map, (n - 1) / n for a single cell. Higher is sparser (simpler to read).
* :func:`complexity` (Bhatt et al. 2020): the entropy of the fractional contribution
  p = |L| / sum |L|, -sum p log p (natural log, 0 log 0 = 0); 0 for a single cell,
  log n for a uniform map. Lower is simpler.

An all-zero map has neither (undefined, see :class:`~ifa_jax.metrics.scores.Scores`).

Examples:
    A map with all its mass on one cell and a uniform one:

    >>> import numpy as np
    >>> from ifa_jax.metrics.complexity import complexity, sparseness
    >>> maps = np.stack([np.eye(4)[0].reshape(2, 2), np.ones((2, 2))])
    >>> sparseness(maps).tolist()
    [0.75, 0.0]
    >>> [round(v, 4) for v in complexity(maps).tolist()], round(float(np.log(4)), 4)
    ([0.0, 1.3863], 1.3863)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ifa_jax.metrics._common import check_maps
from ifa_jax.metrics.scores import Scores

Array = jax.Array

_ALL_ZERO = "the map is all zeros"


def _flat_abs(maps: Any) -> Array:
    maps = check_maps(maps)
    return jnp.abs(maps.reshape(maps.shape[0], -1))


@jax.jit
def _gini(a: Array) -> tuple[Array, Array]:
    n = a.shape[1]
    total = a.sum(axis=1)
    defined = total > 0
    weights = 2 * jnp.arange(1, n + 1, dtype=a.dtype) - n - 1
    value = (jnp.sort(a, axis=1) * weights).sum(axis=1) / (n * jnp.where(defined, total, 1))
    return jnp.where(defined, value, 0), defined


def sparseness(maps: Any) -> Scores:
    """Sparseness (Chalasani et al. 2020): the Gini index of |L| over the grid.

    G = sum_i (2i - n - 1) a_(i) / (n sum a), a_(1) <= ... <= a_(n) the sorted |L|. In
    [0, (n - 1) / n]: 0 for a uniform map, (n - 1) / n for all mass on one cell; higher is
    sparser. Invariant to scaling the map. (Quantus adds 1e-7 to every cell of its
    max-normalised map, which lowers G by a relative n 1e-7 / sum a.)

    Args:
        maps: (B, *spatial) maps.

    Returns:
        :class:`~ifa_jax.metrics.scores.Scores` (B,); undefined for an all-zero map.

    Raises:
        ValueError: maps that are not (B, *spatial) with 1-3 spatial axes, or not finite.
    """
    value, defined = _gini(_flat_abs(maps))
    return Scores(value, defined, _ALL_ZERO)


@jax.jit
def _entropy(a: Array) -> tuple[Array, Array]:
    total = a.sum(axis=1, keepdims=True)
    defined = total[:, 0] > 0
    p = a / jnp.where(total > 0, total, 1)
    terms = jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1)), 0)
    # every term is <= 0; abs turns the -0.0 of a one-cell map into 0.0
    return jnp.where(defined, jnp.abs(terms.sum(axis=1)), 0), defined


def complexity(maps: Any) -> Scores:
    """Complexity (Bhatt et al. 2020): the entropy of the fractional contribution.

    H = -sum p log p with p = |L| / sum |L| (natural log, 0 log 0 = 0). In [0, log n]:
    0 for all mass on one cell, log n for a uniform map; lower is simpler. Invariant to
    scaling the map. (Quantus adds 1e-12 inside the log, which raises H by about
    n 1e-12 for n non-zero cells.)

    Args:
        maps: (B, *spatial) maps.

    Returns:
        :class:`~ifa_jax.metrics.scores.Scores` (B,); undefined for an all-zero map.

    Raises:
        ValueError: maps that are not (B, *spatial) with 1-3 spatial axes, or not finite.
    """
    value, defined = _entropy(_flat_abs(maps))
    return Scores(value, defined, _ALL_ZERO)

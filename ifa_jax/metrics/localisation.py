"""Localisation given ground-truth masks: does the map's relevance fall on the object?

Four metrics on maps (B, *spatial) and boolean masks of the same shape (1-3 spatial
axes), batched and jitted, one value per sample; higher is better for all four. The
definitions follow Quantus 0.6.0 (its defaults: no absolute value; its division by the
maximum changes none of these values):

* :func:`pointing_game` (Zhang et al. 2018): 1 when a cell of the map's maximum lies in
  the mask, else 0 (``weighted=True``: a hit scores 1 - mask share of the grid).
* :func:`energy_pointing_game` (Wang et al. 2020, Score-CAM): the share of the map's
  positive mass inside the mask, sum(max(L, 0) m) / sum(max(L, 0)).
* :func:`relevance_mass_accuracy` (Arras et al. 2022): sum(L m) / sum(L).
* :func:`relevance_rank_accuracy` (Arras et al. 2022): with K the mask's size, the share
  of the K highest cells that lie in the mask.

Masks must be non-empty (a ``ValueError`` names the first empty one). A map whose
denominator is 0 (no positive mass, a zero sum) gives an undefined value: see
:class:`~ifa_jax.metrics.scores.Scores`.

Examples:
    A map peaked in a 2 x 2 mask, and one peaked outside it (on a faint ramp, so that no
    two cells tie):

    >>> import numpy as np
    >>> from ifa_jax.metrics import localisation as loc
    >>> maps = np.tile(np.linspace(0.0, 0.01, 16).reshape(4, 4), (2, 1, 1))
    >>> maps[0, 1, 1], maps[0, 3, 3] = 1.0, 0.5
    >>> maps[1, 3, 3], maps[1, 0, 0] = 1.0, 0.5
    >>> masks = np.zeros((2, 4, 4), bool)
    >>> masks[:, :2, :2] = True
    >>> loc.pointing_game(maps, masks).tolist()
    [1.0, 0.0]
    >>> [round(v, 2) for v in loc.energy_pointing_game(maps, masks).tolist()]
    [0.64, 0.32]
    >>> loc.relevance_rank_accuracy(maps, masks).tolist()
    [0.25, 0.25]
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from ifa_jax.metrics._common import check_maps, check_masks
from ifa_jax.metrics.scores import Scores

Array = jax.Array


def _inputs(maps: Any, masks: Any) -> tuple[Array, Array]:
    maps = check_maps(maps)
    masks = check_masks(masks, maps)
    B = maps.shape[0]
    return maps.reshape(B, -1), masks.reshape(B, -1)


@functools.partial(jax.jit, static_argnames="weighted")
def _pointing(maps: Array, masks: Array, weighted: bool) -> Array:
    at_max = maps == maps.max(axis=1, keepdims=True)
    hit = jnp.any(at_max & masks, axis=1).astype(maps.dtype)
    if weighted:
        hit = hit * (1 - masks.mean(axis=1, dtype=maps.dtype))
    return hit


def pointing_game(maps: Any, masks: Any, *, weighted: bool = False) -> Scores:
    """Pointing game (Zhang et al. 2018): does the map's maximum fall in the mask?

    1 when any cell holding the map's maximum is in the mask (ties count as a hit, as in
    Quantus), else 0. With ``weighted``, a hit scores 1 - |mask| / n (a hit on a small
    object counts more). Every value is defined.

    Args:
        maps: (B, *spatial) maps, 1-3 spatial axes.
        masks: (B, *spatial) boolean masks, each non-empty.
        weighted: weigh hits by the share of the grid outside the mask.

    Returns:
        :class:`~ifa_jax.metrics.scores.Scores` with values (B,) in {0, 1} (in [0, 1)
        when weighted).

    Raises:
        ValueError: maps that are not (B, *spatial) or not finite, masks of another shape,
            not boolean, or empty.
    """
    m, s = _inputs(maps, masks)
    value = _pointing(m, s, bool(weighted))
    return Scores(value, jnp.ones(value.shape, bool), "")


@jax.jit
def _mass_share(maps: Array, masks: Array) -> tuple[Array, Array]:
    total = maps.sum(axis=1)
    inside = jnp.where(masks, maps, 0).sum(axis=1)
    defined = total != 0
    return jnp.where(defined, inside / jnp.where(defined, total, 1), 0), defined


def energy_pointing_game(maps: Any, masks: Any) -> Scores:
    """Energy-based pointing game (Wang et al. 2020): the share of the map's positive
    mass inside the mask, sum(max(L, 0) m) / sum(max(L, 0)), in [0, 1].

    Wang et al. use bounding boxes as masks; any mask works. A uniform map scores the
    mask's share of the grid, a map inside the mask 1.

    Args:
        maps: (B, *spatial) maps, 1-3 spatial axes.
        masks: (B, *spatial) boolean masks, each non-empty.

    Returns:
        :class:`~ifa_jax.metrics.scores.Scores` (B,); undefined for a map without
        positive values.

    Raises:
        ValueError: as for :func:`pointing_game`.
    """
    m, s = _inputs(maps, masks)
    value, defined = _mass_share(jnp.maximum(m, 0), s)
    return Scores(value, defined, "the map has no positive values")


def relevance_mass_accuracy(maps: Any, masks: Any) -> Scores:
    """Relevance mass accuracy (Arras et al. 2022): sum(L m) / sum(L).

    As in Quantus, the signed map is summed (in [0, 1] for maps >= 0; negative values
    can push it outside). Pass ``jnp.maximum(maps, 0)`` for the positive mass only
    (which is :func:`energy_pointing_game`).

    Args:
        maps: (B, *spatial) maps, 1-3 spatial axes.
        masks: (B, *spatial) boolean masks, each non-empty.

    Returns:
        :class:`~ifa_jax.metrics.scores.Scores` (B,); undefined for a map summing to 0.

    Raises:
        ValueError: as for :func:`pointing_game`.
    """
    m, s = _inputs(maps, masks)
    value, defined = _mass_share(m, s)
    return Scores(value, defined, "the map sums to 0")


@jax.jit
def _rank_accuracy(maps: Array, masks: Array) -> Array:
    k = masks.sum(axis=1)
    order = jnp.argsort(-maps, axis=1, stable=True)
    in_mask = jnp.take_along_axis(masks, order, axis=1)
    top_k = jnp.arange(maps.shape[1])[None, :] < k[:, None]
    return (in_mask & top_k).sum(axis=1) / k


def relevance_rank_accuracy(maps: Any, masks: Any) -> Scores:
    """Relevance rank accuracy (Arras et al. 2022): with K = |mask|, the share of the K
    highest cells of the map that lie in the mask, in [0, 1].

    Ties are ranked by the cells' flat index (a stable sort); Quantus' unstable sort may
    break them another way. Every value is defined.

    Args:
        maps: (B, *spatial) maps, 1-3 spatial axes.
        masks: (B, *spatial) boolean masks, each non-empty.

    Returns:
        :class:`~ifa_jax.metrics.scores.Scores` (B,).

    Raises:
        ValueError: as for :func:`pointing_game`.
    """
    m, s = _inputs(maps, masks)
    value = _rank_accuracy(m, s).astype(m.dtype)
    return Scores(value, jnp.ones(value.shape, bool), "")

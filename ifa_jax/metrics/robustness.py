"""Robustness of a map to input noise: max- and average-sensitivity (Yeh et al. 2019).

Each input is perturbed ``n_samples`` times by uniform noise in the L-inf ball of radius
``radius`` (every element of x, channels included, ``x + U(-radius, radius)``, not
clipped), explained again for the same target, and each perturbation scores
``||L(x + noise) - L(x)||_F / ||L(x)||_F`` (the Frobenius norm over the grid). Max-
sensitivity is the largest of the n ratios, average-sensitivity their mean; lower is
more robust. The defaults are Quantus 0.6.0's (``radius`` its ``lower_bound`` 0.2, 200
samples, raw maps: no absolute value, no normalisation). Noise j is drawn from
``jax.random.fold_in(key, j)``, so a result does not depend on ``chunk_size``.

An explanation function has the signature
``explain_fn(x (N, *in, C), target (N,) int) -> maps (N, *spatial)``. Build one from
:func:`ifa_jax.explain` and a probe with a closure (as below) or a
:class:`jax.tree_util.Partial` of a function ``(probe, variables, x, target)``. The n
perturbations of a batch of B inputs go to it in calls of ``chunk_size * B`` rows (all
n at once by default); lower ``chunk_size`` when they do not fit in memory.

Examples:
    Grad-CAM of a small CNN, upsampled to the input grid, under noise of radius 0.1:

    >>> import flax.linen as nn
    >>> import jax
    >>> import ifa_jax
    >>> from ifa_jax.metrics.robustness import sensitivity
    >>> class Net(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         a = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
    ...         return nn.Dense(3, name="head")(a.mean(axis=(1, 2)))
    >>> x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1))
    >>> variables = Net().init(jax.random.key(1), x)
    >>> probe = ifa_jax.linen_probe(Net(), "conv")
    >>> def explain_fn(x, target):
    ...     _, result = ifa_jax.explain(probe, variables, x, target, "gradcam")
    ...     return ifa_jax.cams.upsample(result.cam, x.shape[1:-1])
    >>> s = sensitivity(explain_fn, x, [0, 2], key=jax.random.key(2), radius=0.1, n_samples=4)
    >>> s.ratios.shape
    (2, 4)
    >>> bool((s.max.value >= s.average.value).all())
    True
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ifa_jax._checks import positive_int, prng_key
from ifa_jax.metrics._common import class_targets
from ifa_jax.metrics.scores import Scores

Array = jax.Array
ExplainFn = Callable[[Array, Array], Array]

_ZERO_MAP = "the map of the unperturbed input is all zeros"


class Sensitivity(NamedTuple):
    """ratios: (B, n) ||L(x + noise_j) - L(x)||_F / ||L(x)||_F (0 where undefined).
    max, average: :class:`~ifa_jax.metrics.scores.Scores` (B,), max- and
    average-sensitivity, undefined where L(x) is all zeros."""

    ratios: Array
    max: Scores
    average: Scores


@functools.partial(jax.jit, static_argnames=("n", "radius"))
def _perturbed(
    key: Array, x: Array, target: Array, start: Array, n: int, radius: float
) -> tuple[Array, Array]:
    """Inputs + noise for perturbations start .. start + n - 1, stacked (n * B, *in, C),
    and their targets (n * B,)."""

    def one(j):
        return x + jax.random.uniform(jax.random.fold_in(key, j), x.shape, x.dtype, -radius, radius)

    rows = jax.vmap(one)(start + jnp.arange(n))
    return rows.reshape(-1, *x.shape[1:]), jnp.tile(target, n)


@jax.jit
def _summary(chunks: tuple[Array, ...], maps: Array) -> tuple[Array, ...]:
    r = jnp.concatenate(chunks, axis=1)
    return r, r.max(axis=1), r.mean(axis=1), jnp.any(maps != 0, axis=1)


@jax.jit
def _ratios(maps: Array, perturbed: Array) -> Array:
    """(B, n) ratios of maps (B, m) and perturbed maps (n, B, m); 0 where ||maps|| = 0."""
    norm = jnp.linalg.norm(maps, axis=1)
    diff = jnp.linalg.norm(perturbed - maps[None], axis=2).T
    return jnp.where(norm[:, None] > 0, diff / jnp.where(norm > 0, norm, 1)[:, None], 0)


def _explain(explain_fn: ExplainFn, x: Array, target: Array, like: tuple | None) -> Array:
    maps = jnp.asarray(explain_fn(x, target))
    expected = (x.shape[0], *like) if like is not None else None
    if maps.ndim < 2 or maps.shape[0] != x.shape[0] or (expected and maps.shape != expected):
        want = f"{expected}" if expected else f"({x.shape[0]}, *spatial)"
        raise ValueError(
            f"explain_fn must return one map per input row, shape {want}; got {maps.shape}"
        )
    return maps


def sensitivity(
    explain_fn: ExplainFn,
    x: Any,
    target: Any,
    *,
    key: Any,
    radius: float = 0.2,
    n_samples: int = 200,
    chunk_size: int | None = None,
    maps: Any = None,
) -> Sensitivity:
    """Max- and average-sensitivity (Yeh et al. 2019) of ``explain_fn`` at ``x``.

    Args:
        explain_fn: ``(x (N, *in, C), target (N,)) -> maps (N, *spatial)``.
        x: (B, *in, C) float inputs.
        target: an int or (B,) ints, the class explained at every perturbation.
        key: a PRNG key (``jax.random.key(0)``); noise j uses ``fold_in(key, j)``.
        radius: the L-inf radius of the uniform noise, > 0.
        n_samples: perturbations per input, >= 1.
        chunk_size: perturbations per call of ``explain_fn`` (None: all at once).
        maps: (B, *spatial) the maps of x, or None to compute them with ``explain_fn``.

    Returns:
        A :class:`Sensitivity` (ratios (B, n), max and average :class:`Scores` (B,)).

    Raises:
        ValueError: inputs that are not (B, *in, C) floats, a bad target, key, radius,
            count or chunk size, or maps of a shape other than explain_fn's.
    """
    x = jnp.asarray(x)
    if x.ndim < 2 or x.shape[0] == 0 or not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"x must be a non-empty float batch (B, *in, C); got shape {x.shape}, dtype "
            f"{x.dtype}. Convert images to floats first (x / 255)."
        )
    if not callable(explain_fn):
        raise TypeError(f"explain_fn must be callable (x, target) -> maps; got {explain_fn!r}")
    B = x.shape[0]
    target = class_targets(target, B)
    key = prng_key(key)
    if key is None:
        raise ValueError("key is None; pass a PRNG key, e.g. key=jax.random.key(0)")
    radius = float(radius)
    if not radius > 0:
        raise ValueError(f"radius must be > 0 (the L-inf size of the noise); got {radius}")
    n = positive_int("n_samples", n_samples, "perturbations per input")
    chunk = n if chunk_size is None else min(positive_int("chunk_size", chunk_size), n)
    if maps is None:
        maps = _explain(explain_fn, x, target, None)
    else:
        maps = jnp.asarray(maps)
        if maps.ndim < 2 or maps.shape[0] != B:
            raise ValueError(f"maps must be (B={B}, *spatial); got shape {maps.shape}")
    spatial = tuple(maps.shape[1:])
    flat = maps.reshape(B, -1)
    ratios = []
    for start in range(0, n, chunk):
        c = min(chunk, n - start)
        rows, targets = _perturbed(key, x, target, jnp.asarray(start), c, radius)
        out = _explain(explain_fn, rows, targets, spatial)
        ratios.append(_ratios(flat, out.reshape(c, B, -1)))
    r, top, mean, defined = _summary(tuple(ratios), flat)
    return Sensitivity(r, Scores(top, defined, _ZERO_MAP), Scores(mean, defined, _ZERO_MAP))


def max_sensitivity(explain_fn: ExplainFn, x: Any, target: Any, **kwargs: Any) -> Scores:
    """Max-sensitivity: the largest of the n ratios (:func:`sensitivity`'s ``max``).

    Args:
        explain_fn: as for :func:`sensitivity`.
        x: (B, *in, C) inputs.
        target: an int or (B,) ints.
        **kwargs: ``key`` (required), ``radius``, ``n_samples``, ``chunk_size``, ``maps``.

    Returns:
        :class:`~ifa_jax.metrics.scores.Scores` (B,), lower is more robust.

    Raises:
        ValueError: as for :func:`sensitivity`.
    """
    return sensitivity(explain_fn, x, target, **kwargs).max


def average_sensitivity(explain_fn: ExplainFn, x: Any, target: Any, **kwargs: Any) -> Scores:
    """Average-sensitivity: the mean of the n ratios (:func:`sensitivity`'s ``average``).

    Args:
        explain_fn: as for :func:`sensitivity`.
        x: (B, *in, C) inputs.
        target: an int or (B,) ints.
        **kwargs: ``key`` (required), ``radius``, ``n_samples``, ``chunk_size``, ``maps``.

    Returns:
        :class:`~ifa_jax.metrics.scores.Scores` (B,), lower is more robust.

    Raises:
        ValueError: as for :func:`sensitivity`.
    """
    return sensitivity(explain_fn, x, target, **kwargs).average

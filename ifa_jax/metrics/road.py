"""ROAD, RemOve And Debias (Rong et al. 2022): the change of the target score when the
most (MoRF) or least (LeRF) relevant pixels are removed and filled in by noisy linear
imputation, so that the removal itself leaves no shape the model could read.

The definitions are pytorch-grad-cam 1.5.7's (``ROADMostRelevantFirst``,
``ROADLeastRelevantFirst``, their averages over percentiles and ``ROADCombined``):

* at percentile p, MoRF removes the cells whose saliency is at or above the p-th
  percentile of the image's saliency (``numpy.percentile``, linear interpolation), about
  (100 - p)% of them; LeRF does the same with ``1 - saliency``, removing the least
  salient (100 - p)%;
* the removed cells are imputed: each is the weighted mean of its in-bounds neighbours
  (the 3 x 3 stencil with weights 1/6 on the sides and 1/12 on the corners), a sparse
  linear system per image solved here on the device by preconditioned conjugate gradients,
  plus ``noise`` times a standard normal draw;
* the score is ``score(imputed) - score(x)`` (negative: the score dropped); the averages
  are the means over the percentiles and the combined score is
  ``(LeRF average - MoRF average) / 2``: higher is better (removing the relevant cells
  hurts, removing the irrelevant ones does not).

The stencil is the 3 x 3 binomial kernel ``[1, 2, 1] (x) [1, 2, 1]`` without its centre,
normalised; on 1-D signals and 3-D volumes the same construction gives ``[1, 0, 1] / 2``
and the 3 x 3 x 3 kernel with weights 4, 2, 1 (over 56) on faces, edges and corners.

Examples:
    A score that reads the centre pixel: at percentile 90, MoRF removes the most salient
    cell, the centre, and imputes it from its neighbours (0), so the score drops by 1;
    LeRF removes the least salient cell, a corner, and the score stays:

    >>> import numpy as np
    >>> from ifa_jax.metrics.road import road, road_masks
    >>> def score(x, target):
    ...     return x[:, 1, 1, 0]
    >>> x = np.zeros((1, 3, 3, 1), np.float32)
    >>> x[0, 1, 1, 0] = 1.0
    >>> saliency = np.arange(9, dtype=np.float32).reshape(1, 3, 3) / 10
    >>> saliency[0, 1, 1] = 1.0
    >>> road_masks(saliency, [90], "morf")[0, 0].astype(int)
    Array([[0, 0, 0],
           [0, 1, 0],
           [0, 0, 0]], dtype=int32)
    >>> road_masks(saliency, [90], "lerf")[0, 0].astype(int)
    Array([[1, 0, 0],
           [0, 0, 0],
           [0, 0, 0]], dtype=int32)
    >>> r = road(score, x, saliency, 0, percentiles=[90], noise=0.0)
    >>> float(r.morf[0, 0]), float(r.lerf[0, 0]), float(r.combined[0])
    (-1.0, 0.0, 0.5)
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.sparse.linalg import cg
from jax.typing import ArrayLike

from ifa_jax._checks import index_targets, positive_int, prng_key
from ifa_jax.metrics._common import as_scorer, check_inputs, check_scores
from ifa_jax.metrics.confidence import ScoreFn

Array = jax.Array

ORDERS = ("morf", "lerf")
ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
NOISE = 0.01  # pytorch-grad-cam's NoisyLinearImputer default (absolute std)
TOL = 1e-6  # conjugate gradients: residual relative to the right-hand side


class ROAD(NamedTuple):
    """percentiles: (P,). morf, lerf: (B, P) score changes ``score(imputed) - score(x)``
    at each percentile. morf_average, lerf_average: (B,) their means over the
    percentiles. combined: (B,) ``(lerf_average - morf_average) / 2``, higher is better."""

    percentiles: Array
    morf: Array
    lerf: Array
    morf_average: Array
    lerf_average: Array
    combined: Array


def neighbour_weights(ndim: int) -> np.ndarray:
    """The imputation stencil of rank ``ndim`` (1-3): shape (3,) * ndim, centre 0, sum 1.

    The binomial kernel ``[1, 2, 1]`` on every axis (an outer product) without its centre,
    normalised; in 2-D: 1/6 on the sides and 1/12 on the corners, pytorch-grad-cam's.

    Args:
        ndim: the number of spatial axes, 1-3.

    Returns:
        The weights, float64, shape (3,) * ndim.

    Raises:
        ValueError: ndim outside 1-3.
    """
    if ndim not in (1, 2, 3):
        raise ValueError(f"ROAD imputes grids of 1-3 spatial axes; got {ndim}")
    w = functools.reduce(np.multiply.outer, [np.array([1.0, 2.0, 1.0])] * ndim)
    w[(1,) * ndim] = 0.0
    return w / w.sum()


def _percentiles(v: Array, percentiles: tuple[float, ...]) -> Array:
    """numpy.percentile(v, p) for each p of rows v (B, n) of float32, rounding as NumPy
    does for float32 input (index and fraction in float64, the interpolation in the
    array's dtype): (B, P)."""
    n = v.shape[1]
    s = jnp.sort(v, axis=1)
    out = []
    for p in percentiles:
        virtual = (n - 1) * (p / 100.0)
        lo = min(max(int(np.floor(virtual)), 0), n - 1)
        hi = min(lo + 1, n - 1)
        gamma = virtual - lo
        a, b = s[:, lo], s[:, hi]
        if gamma >= 0.5:
            out.append(b - (b - a) * jnp.asarray(1.0 - gamma, v.dtype))
        else:
            out.append(a + (b - a) * jnp.asarray(gamma, v.dtype))
    return jnp.stack(out, 1)


def _check_percentiles(percentiles: Any) -> tuple[float, ...]:
    p = np.asarray(percentiles, np.float64).reshape(-1)
    if p.size == 0 or not np.all(np.isfinite(p)) or np.any((p < 0) | (p > 100)):
        raise ValueError(
            f"percentiles must be a non-empty list of numbers in [0, 100]; got {percentiles!r}"
        )
    return tuple(float(q) for q in p)


@functools.partial(jax.jit, static_argnames=("percentiles", "order"))
def _masks(saliency: Array, percentiles: tuple[float, ...], order: str) -> Array:
    B = saliency.shape[0]
    values = saliency if order == "morf" else 1 - saliency
    thr = _percentiles(values.reshape(B, -1), percentiles)
    return values[:, None] >= thr.reshape(B, len(percentiles), *([1] * (values.ndim - 1)))


def road_masks(saliency: ArrayLike, percentiles: Sequence[float], order: str) -> Array:
    """The cells ROAD removes: True where removed, at each percentile.

    MoRF (``order='morf'``) removes the cells with ``saliency >= percentile(saliency, p)``,
    LeRF (``'lerf'``) those with ``1 - saliency >= percentile(1 - saliency, p)``, the
    percentile over each image's grid with ``numpy.percentile``'s linear interpolation.

    Args:
        saliency: (B, *in) maps, any real values (ROAD's metrics take [0, 1]).
        percentiles: P values in [0, 100].
        order: 'morf' or 'lerf'.

    Returns:
        (B, P, *in) bool.

    Raises:
        ValueError: an unknown order or percentiles outside [0, 100].
    """
    if order not in ORDERS:
        raise ValueError(f"order {order!r} is not one of {ORDERS}")
    s = jnp.asarray(saliency)
    if s.ndim < 2 or s.shape[0] == 0:
        raise ValueError(f"saliency must have shape (B, *in) with B >= 1; got {s.shape}")
    return _masks(s, _check_percentiles(percentiles), order)


def _shift_sum(z: Array, weights: np.ndarray) -> Array:
    """sum_o w_o z[cell + o] over the stencil's offsets o, zero outside the grid.
    z: (*in, C); weights: (3,) * len(in)."""
    nd = weights.ndim
    padded = jnp.pad(z, [(1, 1)] * nd + [(0, 0)])
    total = jnp.zeros_like(z)
    for offset in itertools.product((0, 1, 2), repeat=nd):
        w = float(weights[offset])
        if w:
            window = tuple(slice(o, o + n) for o, n in zip(offset, z.shape[:nd]))
            total = total + w * padded[window]
    return total


def _impute_one(x: Array, removed: Array, tol: float, maxiter: int | None) -> Array:
    """Linear imputation of one image x (*in, C) where ``removed`` (*in,) is True: each
    removed cell the weighted mean of its in-bounds neighbours, known or imputed.

    The equations ``s_i z_i - sum_{j removed} w_ij z_j = sum_{j known} w_ij x_j`` (s_i the
    weight of i's in-bounds neighbours) form a symmetric positive (semi-)definite system
    on the removed cells; conjugate gradients with a Jacobi preconditioner solve it,
    matrix-free, from z = 0 (a region with no known neighbour stays 0)."""
    weights = neighbour_weights(x.ndim - 1)
    u = removed[..., None].astype(x.dtype)
    s = _shift_sum(jnp.ones_like(u), weights)
    inv_s = jnp.where(s > 0, 1.0 / jnp.where(s > 0, s, 1.0), 0.0) * u

    def operator(z):
        return u * (s * z - _shift_sum(u * z, weights))

    rhs = u * _shift_sum((1 - u) * x, weights)
    z, _ = cg(operator, rhs, tol=tol, maxiter=maxiter, M=lambda r: inv_s * r)
    return jnp.where(removed[..., None], z, x)


@functools.partial(jax.jit, static_argnames=("tol", "maxiter"))
def _impute(x, removed, noise_draw, noise, *, tol, maxiter):
    filled = jax.vmap(lambda a, m: _impute_one(a, m, tol, maxiter))(x, removed)
    return filled + jnp.where(removed[..., None], noise * noise_draw, 0.0).astype(x.dtype)


def _check_solver(noise: float, key: Any, tol: float, maxiter: int | None) -> Any:
    if not (np.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite std >= 0 (0 for none); got {noise!r}")
    key = prng_key(key)
    if noise > 0 and key is None:
        raise ValueError(
            f"noise={noise} needs a PRNG key, e.g. key=jax.random.key(0); or pass noise=0.0"
        )
    if not (np.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be > 0 (e.g. {TOL}); got {tol!r}")
    if maxiter is not None:
        positive_int("maxiter", maxiter, "conjugate-gradient iterations")
    return key


def noisy_linear_imputation(
    x: ArrayLike,
    removed: ArrayLike,
    *,
    key: Any = None,
    noise: float = NOISE,
    tol: float = TOL,
    maxiter: int | None = None,
) -> Array:
    """ROAD's noisy linear imputation: removed cells become the weighted mean of their
    in-bounds neighbours (:func:`neighbour_weights`), plus ``noise`` * N(0, 1).

    Every channel is imputed alike; the known cells are kept. The linear system of each
    image is solved on the device by conjugate gradients to a residual of ``tol`` relative
    to its right-hand side (the images in one vmapped solve, each stopping on its own).

    Args:
        x: (B, *in, C) inputs, 1-3 spatial axes.
        removed: (B, *in) bool, True where a cell is removed.
        key: PRNG key of the noise (needed when noise > 0).
        noise: the noise's std (absolute), >= 0; pytorch-grad-cam's default 0.01.
        tol: the solver's relative residual, > 0.
        maxiter: the solver's iteration limit (None: JAX's, 10 times the cells).

    Returns:
        (B, *in, C) the imputed inputs.

    Raises:
        ValueError: shapes that do not fit, noise < 0, noise without a key, tol <= 0.
    """
    x, removed = jnp.asarray(x), jnp.asarray(removed)
    if not 3 <= x.ndim <= 5:
        raise ValueError(
            f"inputs x must have shape (B, *spatial, C) with 1-3 spatial axes; got {x.shape}"
        )
    if removed.shape != x.shape[:-1]:
        raise ValueError(f"removed has shape {removed.shape} but x {x.shape} needs {x.shape[:-1]}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    key = _check_solver(noise, key, tol, maxiter)
    draw = jnp.zeros_like(x) if key is None else jax.random.normal(key, x.shape, x.dtype)
    return _impute(x, removed.astype(bool), draw, float(noise), tol=float(tol), maxiter=maxiter)


@functools.partial(jax.jit, static_argnames=("percentiles", "tol", "maxiter", "images_per_batch"))
def _road_core(
    score_fn, x, saliency, target, keys, noise, *, percentiles, tol, maxiter, images_per_batch
):
    B, P = x.shape[0], len(percentiles)
    masks = jnp.concatenate(
        [_masks(saliency, percentiles, "morf"), _masks(saliency, percentiles, "lerf")], 1
    )  # (B, 2P, *in)
    b = min(images_per_batch, B)
    pad = (-B) % b

    def chunked(a):
        a = jnp.concatenate([a, jnp.repeat(a[-1:], pad, 0)]) if pad else a
        return a.reshape(-1, b, *a.shape[1:])

    def one_chunk(args):
        xc, mc, tc, kc = args
        draw = jax.vmap(lambda k: jax.random.normal(k, (2 * P, *x.shape[1:]), x.dtype))(kc)
        rows = jnp.broadcast_to(xc[:, None], draw.shape).reshape(-1, *x.shape[1:])
        imputed = _impute(
            rows,
            mc.reshape(-1, *mc.shape[2:]),
            draw.reshape(rows.shape),
            noise,
            tol=tol,
            maxiter=maxiter,
        )
        stack = jnp.concatenate([xc, imputed])
        t = jnp.concatenate([tc, jnp.repeat(tc, 2 * P)])
        scores = score_fn(stack, t)
        check_scores("the inputs and their imputations", scores, t.shape)
        return scores[b:].reshape(b, 2 * P) - scores[:b, None]

    out = jax.lax.map(one_chunk, tuple(chunked(a) for a in (x, masks, target, keys)))
    out = out.reshape(-1, 2 * P)[:B]
    morf, lerf = out[:, :P], out[:, P:]
    morf_avg, lerf_avg = morf.mean(1), lerf.mean(1)
    return ROAD(
        jnp.asarray(percentiles, x.dtype), morf, lerf, morf_avg, lerf_avg, (lerf_avg - morf_avg) / 2
    )


def road(
    score_fn: ScoreFn,
    x: ArrayLike,
    saliency: ArrayLike,
    target: Any,
    *,
    key: Any = None,
    percentiles: Sequence[float] = ROAD_PERCENTILES,
    noise: float = NOISE,
    tol: float = TOL,
    maxiter: int | None = None,
    images_per_batch: int = 4,
) -> ROAD:
    """ROAD (Rong et al. 2022) as pytorch-grad-cam 1.5.7 defines it: MoRF and LeRF score
    changes at each percentile, their averages and the combined score.

    At percentile p the cells of :func:`road_masks` are removed and imputed
    (:func:`noisy_linear_imputation`); the result is ``score(imputed) - score(x)``.
    ``combined = (mean LeRF - mean MoRF) / 2``: higher is better. pytorch-grad-cam's
    ``ROADMostRelevantFirst(p)`` is ``morf`` at p, ``ROADMostRelevantFirstAverage`` is
    ``morf_average``, ``ROADCombined`` is ``combined``.

    The noise of image i, order o and percentile j is drawn from ``split(key, B)[i]``, so
    it does not depend on ``images_per_batch``. All 2P imputations of ``images_per_batch``
    images (and the images) go through ``score_fn`` in one forward batch
    (memory ~ (2P + 1) images_per_batch inputs), looped with ``lax.map``.

    Args:
        score_fn: ``(x, target) -> (N,)``, e.g. from
            :func:`ifa_jax.metrics.confidence.model_scorer`.
        x: (B, *in, C) inputs, 1-3 spatial axes.
        saliency: (B, *in) in [0, 1] on the input grid.
        target: an int or (B,) ints.
        key: PRNG key of the imputation noise (needed when noise > 0).
        percentiles: P percentiles in [0, 100]; pytorch-grad-cam's averages use 10 ... 90.
        noise: the imputation noise's std, >= 0 (0: deterministic).
        tol: the imputation solver's relative residual.
        maxiter: the solver's iteration limit (None: 10 times the cells).
        images_per_batch: images per forward batch, >= 1.

    Returns:
        The :class:`ROAD` scores.

    Raises:
        ValueError: shapes that do not fit, bad percentiles, noise, tol or batch size, a
            missing key, or scores of the wrong shape or not finite.
    """
    x, saliency = check_inputs(x, saliency)
    t = index_targets(target, x.shape[0], indices_only=True)
    images_per_batch = positive_int(
        "images_per_batch", images_per_batch, "images per forward batch"
    )
    percentiles = _check_percentiles(percentiles)
    key = _check_solver(noise, key, tol, maxiter)
    keys = jax.random.split(jax.random.key(0) if key is None else key, x.shape[0])
    out = _road_core(
        as_scorer(score_fn),
        x,
        saliency,
        t,
        keys,
        float(noise),
        percentiles=percentiles,
        tol=float(tol),
        maxiter=maxiter,
        images_per_batch=images_per_batch,
    )
    check_scores("the ROAD imputations", out.morf)
    check_scores("the ROAD imputations", out.lerf)
    return out

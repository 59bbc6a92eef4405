"""Insertion and deletion curves and their AUCs (Petsiuk et al. 2018): windows of any
spatial rank ranked by saliency, every step of an image in one forward batch.

Examples:
    A 4 x 4 image bright in its upper half, saliency on that half, windows of 2 x 2 and a
    score that reads the mean brightness: deleting the salient windows first drops the
    score at once, inserting them first raises it at once:

    >>> import numpy as np
    >>> from ifa_jax.metrics.insertion_deletion import insertion_deletion, window_ids
    >>> window_ids((4, 4), 2)[0]
    array([[0, 0, 1, 1],
           [0, 0, 1, 1],
           [2, 2, 3, 3],
           [2, 2, 3, 3]], dtype=int32)
    >>> def score(x, target):
    ...     return x.mean(axis=(1, 2, 3))
    >>> x = np.zeros((1, 4, 4, 1), np.float32)
    >>> x[:, :2] = 1.0
    >>> saliency = x[..., 0]
    >>> r = insertion_deletion(score, x, saliency, 0, window=2, insertion_baseline="zeros")
    >>> print(np.asarray(r.fraction), np.asarray(r.deletion), np.asarray(r.insertion))
    [0.   0.25 0.5  0.75 1.  ] [[0.5  0.25 0.   0.   0.  ]] [[0.   0.25 0.5  0.5  0.5 ]]
    >>> float(r.deletion_auc[0]), float(r.insertion_auc[0])
    (0.125, 0.375)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ifa_jax._checks import index_targets
from ifa_jax.metrics._common import as_scorer, check_inputs, check_scores
from ifa_jax.metrics.confidence import ScoreFn

Array = jax.Array

BASELINES = ("zeros", "blur")


def _gaussian_kernel(sigma: float, truncate: float) -> np.ndarray:
    radius = int(truncate * sigma + 0.5)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (t / sigma) ** 2)
    return w / w.sum()


@functools.partial(jax.jit, static_argnames=("sigma", "truncate"))
def blur(x: Array, sigma: float = 5.0, truncate: float = 4.0) -> Array:
    """Gaussian blur of inputs (B, *spatial, C) over the spatial axes (any rank).

    Separable, radius ``int(truncate * sigma + 0.5)``, edges repeated (the same as
    ``scipy.ndimage.gaussian_filter(mode='nearest')`` with zero sigma on batch and channel).

    Args:
        x: (B, *spatial, C) inputs.
        sigma: the gaussian's std in cells, > 0.
        truncate: the radius in stds.

    Returns:
        The blurred inputs, of the shape and dtype of ``x``.

    Raises:
        ValueError: sigma <= 0.
    """
    if sigma <= 0:
        raise ValueError(f"blur sigma must be > 0; got {sigma}")
    w = _gaussian_kernel(float(sigma), float(truncate))
    r = (len(w) - 1) // 2
    out = x
    for axis in range(1, x.ndim - 1):
        n = out.shape[axis]
        pad = [(0, 0)] * out.ndim
        pad[axis] = (r, r)
        padded = jnp.pad(out, pad, mode="edge")
        # w has at least one tap, so the sum is an array, never the int start value 0
        out = cast(
            Array,
            sum(
                float(wj) * jax.lax.slice_in_dim(padded, j, j + n, axis=axis)
                for j, wj in enumerate(w)
            ),
        )
    return out.astype(x.dtype)


def _window_sizes(window: int | Sequence[int], n_axes: int) -> tuple[int, ...]:
    """One window size per spatial axis: an int repeated n_axes times, or the sizes given."""
    if np.ndim(window) == 0:
        return (int(cast(int, window)),) * n_axes
    return tuple(int(w) for w in cast(Sequence[int], window))


def window_ids(spatial: Sequence[int], window: int | Sequence[int]) -> tuple[np.ndarray, tuple]:
    """Window index of every grid cell (*spatial,) and the window counts per axis.

    Windows tile the grid from the origin; edge windows may be partial (ceil division).

    Args:
        spatial: the grid's shape.
        window: one size for every axis, or one per axis.

    Returns:
        (ids (*spatial,) int32, counts per axis).

    Raises:
        ValueError: a window of another rank than the grid, or a size < 1.
    """
    spatial = tuple(int(n) for n in spatial)
    win = _window_sizes(window, len(spatial))
    if len(win) != len(spatial):
        raise ValueError(
            f"window {tuple(win)} has {len(win)} axes but the input grid "
            f"{spatial} has {len(spatial)}; give one size per spatial axis or an int"
        )
    if any(w < 1 for w in win):
        raise ValueError(f"window sizes must be >= 1; got {tuple(win)}")
    counts = tuple(-(-n // w) for n, w in zip(spatial, win))
    grids = np.meshgrid(*[np.arange(n) // w for n, w in zip(spatial, win)], indexing="ij")
    return np.ravel_multi_index(grids, counts).astype(np.int32), counts


class InsertionDeletion(NamedTuple):
    """fraction: (S+1,) share of windows deleted/inserted after each step (0 ... 1).
    deletion, insertion: (B, S+1) target score after each step, step 0 included.
    deletion_auc, insertion_auc: (B,) trapezoid areas over ``fraction``."""

    fraction: Array
    deletion: Array
    insertion: Array
    deletion_auc: Array
    insertion_auc: Array


def curve_auc(curve: Array, fraction: Array) -> Array:
    """Trapezoid area of curves (..., S+1) over x positions ``fraction`` (S+1,).

    Args:
        curve: (..., S+1) values.
        fraction: (S+1,) x positions.

    Returns:
        (...) areas.
    """
    curve, fraction = jnp.asarray(curve), jnp.asarray(fraction)
    return jnp.sum(jnp.diff(fraction) * (curve[..., 1:] + curve[..., :-1]) / 2, axis=-1)


@functools.partial(jax.jit, static_argnames=("window", "windows_per_step", "images_per_batch"))
def _insdel_core(
    score_fn, x, saliency, target, base_del, base_ins, *, window, windows_per_step, images_per_batch
):
    B, spatial = x.shape[0], x.shape[1:-1]
    ids, counts = window_ids(spatial, window)
    W = int(np.prod(counts))
    steps = -(-W // windows_per_step)
    thresholds = np.minimum(np.arange(steps + 1) * windows_per_step, W)
    fraction = jnp.asarray(thresholds / W, x.dtype)
    flat_ids = jnp.asarray(ids.reshape(-1))
    thr = jnp.asarray(thresholds.reshape(-1, *([1] * len(spatial))))

    def step_masks(sal):  # (*in) -> (S+1, *in): True where the window is deleted/inserted
        sums = jax.ops.segment_sum(sal.reshape(-1), flat_ids, num_segments=W)
        order = jnp.argsort(-sums, stable=True)  # largest saliency first, ties by index
        rank = jnp.zeros(W, jnp.int32).at[order].set(jnp.arange(W, dtype=jnp.int32))
        return rank[jnp.asarray(ids)][None] < thr

    b = min(images_per_batch, B)
    pad = (-B) % b

    def chunked(a):
        a = jnp.concatenate([a, jnp.zeros((pad, *a.shape[1:]), a.dtype)]) if pad else a
        return a.reshape(-1, b, *a.shape[1:])

    def one_chunk(args):
        xc, sc, tc, dc, ic = args
        m = jax.vmap(step_masks)(sc)[..., None]  # (b, S+1, *in, 1)
        deleted = jnp.where(m, dc[:, None], xc[:, None])
        inserted = jnp.where(m, xc[:, None], ic[:, None])
        stack = jnp.concatenate([deleted, inserted]).reshape(-1, *x.shape[1:])
        t = jnp.tile(jnp.repeat(tc, steps + 1), 2)
        scores = score_fn(stack, t)
        check_scores("insertion and deletion steps", scores, t.shape)  # shape: at trace time
        return scores.reshape(2, b, steps + 1)

    out = jax.lax.map(
        one_chunk, tuple(chunked(a) for a in (x, saliency, target, base_del, base_ins))
    )
    out = jnp.moveaxis(out, 1, 0).reshape(2, -1, steps + 1)[:, :B]
    deletion, insertion = out[0], out[1]
    return InsertionDeletion(
        fraction, deletion, insertion, curve_auc(deletion, fraction), curve_auc(insertion, fraction)
    )


def _baseline(spec: Any, x: Array, blur_sigma: float, what: str) -> Array:
    if isinstance(spec, str):
        if spec == "zeros":
            return jnp.zeros_like(x)
        if spec == "blur":
            return blur(x, float(blur_sigma))
        raise ValueError(f"{what} {spec!r} is not one of {BASELINES} (or an array)")
    b = jnp.asarray(spec, x.dtype)
    try:
        return jnp.broadcast_to(b, x.shape)
    except ValueError:
        raise ValueError(
            f"{what} has shape {b.shape}, which does not broadcast to the inputs {x.shape}"
        ) from None


def insertion_deletion(
    score_fn: ScoreFn,
    x: Array,
    saliency: ArrayLike,
    target: Any,
    *,
    window: int | Sequence[int] = 4,
    windows_per_step: int = 1,
    deletion_baseline: Any = "zeros",
    insertion_baseline: Any = "blur",
    blur_sigma: float = 5.0,
    images_per_batch: int = 4,
) -> InsertionDeletion:
    """Deletion and insertion curves and AUCs (Petsiuk et al. 2018).

    The input grid is tiled by windows of size ``window`` (int or one size per spatial
    axis; edge windows may be partial), ranked by the saliency summed in each window
    (largest first, ties by window index). Deletion replaces ``windows_per_step`` windows
    per step with ``deletion_baseline`` (``'zeros'``, ``'blur'`` or an array broadcastable
    to x); insertion starts from ``insertion_baseline`` and puts the input's windows back in
    the same order. The curves are the target score after each step, step 0 included; AUCs
    are trapezoids over the fraction of windows (x-axis in [0, 1]).

    x: (B, *in, C); saliency: (B, *in) in [0, 1]; target: int or (B,). All 2 (S+1) steps of
    an image run in one forward batch; ``images_per_batch`` images at a time (memory
    ~ 2 (S+1) images_per_batch inputs), looped with ``lax.map``.

    Args:
        score_fn: ``(x, target) -> (N,)``, e.g. from
            :func:`ifa_jax.metrics.confidence.model_scorer`.
        x: (B, *in, C) inputs.
        saliency: (B, *in) in [0, 1].
        target: an int or (B,) ints.
        window: the window size, one for every axis or one per axis.
        windows_per_step: windows replaced per step, >= 1.
        deletion_baseline: 'zeros', 'blur' or an array broadcastable to x.
        insertion_baseline: 'zeros', 'blur' or an array broadcastable to x.
        blur_sigma: the std of the 'blur' baselines.
        images_per_batch: images per forward batch, >= 1.

    Returns:
        The :class:`InsertionDeletion` curves and AUCs.

    Raises:
        ValueError: shapes that do not fit, a bad window, step or batch count, an
            unknown baseline, or scores of the wrong shape or not finite.
    """
    x, saliency = check_inputs(x, saliency)
    t = index_targets(target, x.shape[0], indices_only=True)
    if windows_per_step < 1 or images_per_batch < 1:
        raise ValueError(
            f"windows_per_step and images_per_batch must be >= 1; got "
            f"{windows_per_step} and {images_per_batch}"
        )
    window_ids(x.shape[1:-1], window)  # validates the window before compiling
    win = _window_sizes(window, x.ndim - 2)
    out = _insdel_core(
        as_scorer(score_fn),
        x,
        saliency,
        t,
        _baseline(deletion_baseline, x, blur_sigma, "deletion_baseline"),
        _baseline(insertion_baseline, x, blur_sigma, "insertion_baseline"),
        window=win,
        windows_per_step=int(windows_per_step),
        images_per_batch=int(images_per_batch),
    )
    for name in ("deletion", "insertion"):
        check_scores(f"the {name} steps", getattr(out, name))
    return out

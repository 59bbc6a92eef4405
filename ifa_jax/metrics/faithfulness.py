"""Faithfulness by random and ordered removal, as Quantus 0.6.0 defines it:
:func:`faithfulness_correlation` (Bhatt et al. 2020) and :func:`pixel_flipping` (Bach et
al. 2015).

* Faithfulness correlation: in each of ``nr_runs`` runs, a random subset of
  ``subset_size`` cells is set to the baseline; the Pearson correlation, over the runs, of
  the saliency summed over the subset with the score drop ``score(x) - score(perturbed)``.
  In [-1, 1], higher is better.
* Pixel-flipping: the cells are set to the baseline in order of decreasing saliency,
  ``cells_per_step`` at a time, and the score is read after every step; the curve should
  fall fast, so a lower area is better.

Quantus's default baseline ``'black'`` is each image's minimum over all its values. A
cell is a point of the input grid with all its channels (Quantus draws and orders single
values of the (C, *in) array; with one channel the two are the same).

Monotonicity (Arya et al. 2019) is not here: Quantus 0.6.0's ``Monotonicity`` passes the
baseline image, not the input, to its perturbation, so every step writes the baseline
over the baseline and its curve is flat; pixel-flipping has a reference to agree with.

Examples:
    A score that reads one pixel: only the runs whose subset holds that pixel change the
    score, and they are the runs with the larger saliency sums, so the correlation is
    high; flipping that pixel first drops the score at once:

    >>> import jax
    >>> import numpy as np
    >>> from ifa_jax.metrics.faithfulness import faithfulness_correlation, pixel_flipping
    >>> def score(x, target):
    ...     return x[:, 0, 0, 0]
    >>> x = np.ones((1, 4, 4, 1), np.float32)
    >>> x[0, 3, 3, 0] = 0.0  # the image's minimum, the 'black' baseline
    >>> saliency = np.full((1, 4, 4), 0.1, np.float32)
    >>> saliency[0, 0, 0] = 1.0
    >>> fc = faithfulness_correlation(
    ...     score, x, saliency, 0, key=jax.random.key(0), nr_runs=20, subset_size=4)
    >>> round(fc.correlation[0], 3)
    1.0
    >>> pf = pixel_flipping(score, x, saliency, 0, cells_per_step=4)
    >>> np.asarray(pf.fraction), np.asarray(pf.curve)
    (array([0.25, 0.5 , 0.75, 1.  ], dtype=float32), array([[0., 0., 0., 0.]], dtype=float32))
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ifa_jax._checks import index_targets, positive_int, prng_key
from ifa_jax.metrics._common import as_scorer, check_inputs, check_scores
from ifa_jax.metrics.confidence import ScoreFn
from ifa_jax.metrics.correlation import pearson
from ifa_jax.metrics.insertion_deletion import curve_auc

Array = jax.Array

BASELINES = ("black", "white", "mean")  # per image: min, max, mean of all its values
NR_RUNS = 100  # Quantus's FaithfulnessCorrelation defaults
SUBSET_SIZE = 224


class FaithfulnessCorrelation(NamedTuple):
    """correlation: B values in [-1, 1], None where undefined (constant sums or drops).
    attribution_sums, score_drops: (B, R) per run, the saliency summed over the subset
    and ``score(x) - score(perturbed)``."""

    correlation: list[float | None]
    attribution_sums: Array
    score_drops: Array


class PixelFlipping(NamedTuple):
    """fraction: (S,) share of cells flipped after each step (1/S ... 1). curve: (B, S)
    the score after each step (the unperturbed score is not a step, as in Quantus).
    auc: (B,) trapezoid area of the curve over ``fraction``; lower is better. Quantus's
    ``return_auc_per_sample`` value is the area at unit spacing,
    ``numpy.trapezoid(curve, axis=1)``."""

    fraction: Array
    curve: Array
    auc: Array


def _baseline_values(x: Array, baseline: Any) -> Array:
    """(B,) the value each image's removed cells take."""
    axes = tuple(range(1, x.ndim))
    if isinstance(baseline, str):
        if baseline == "black":
            return jnp.min(x, axis=axes)
        if baseline == "white":
            return jnp.max(x, axis=axes)
        if baseline == "mean":
            return jnp.mean(x, axis=axes)
        raise ValueError(f"baseline {baseline!r} is not one of {BASELINES} or a number")
    if np.ndim(baseline) != 0 or not np.isfinite(float(baseline)):
        raise ValueError(
            f"baseline must be one of {BASELINES} or a finite number; got {baseline!r}"
        )
    return jnp.full(x.shape[:1], float(baseline), x.dtype)


def _chunked(a: Array, b: int) -> Array:
    """(B, ...) as (ceil(B / b), b, ...), padded by repeating the last row."""
    pad = (-a.shape[0]) % b
    a = jnp.concatenate([a, jnp.repeat(a[-1:], pad, 0)]) if pad else a
    return a.reshape(-1, b, *a.shape[1:])


def random_subsets(key: Any, batch: int, cells: int, nr_runs: int, subset_size: int) -> Array:
    """Random subsets of cells without replacement, one per image and run.

    Image i's subsets come from ``split(key, batch)[i]`` (run r from ``split(., nr_runs)[r]``),
    so they do not depend on how the batch is chunked.

    Args:
        key: a PRNG key.
        batch: the number of images B.
        cells: the number of cells of the grid, N.
        nr_runs: runs per image, R >= 1.
        subset_size: cells per subset, 1 <= S <= N.

    Returns:
        (B, R, S) int32 flat cell indices (C order over the grid).

    Raises:
        ValueError: a bad key, count or size.
    """
    k = prng_key(key)
    if k is None:
        raise ValueError("random subsets need a PRNG key, e.g. key=jax.random.key(0)")
    nr_runs = positive_int("nr_runs", nr_runs, "runs per image")
    subset_size = positive_int("subset_size", subset_size, "cells per subset")
    if subset_size > cells:
        raise ValueError(
            f"subset_size {subset_size} exceeds the {cells} cells of the grid; pass at most {cells}"
        )
    return _draw_subsets(k, batch, cells, nr_runs, subset_size)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _draw_subsets(key, batch, cells, nr_runs, subset_size):
    def one(k):
        return jax.random.permutation(k, cells)[:subset_size]

    keys = jax.vmap(lambda k: jax.random.split(k, nr_runs))(jax.random.split(key, batch))
    return jax.vmap(jax.vmap(one))(keys).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("images_per_batch",))
def _fc_core(score_fn, x, saliency, target, subsets, base, *, images_per_batch):
    B, R = subsets.shape[:2]
    n = int(np.prod(x.shape[1:-1]))
    b = min(images_per_batch, B)

    def one_chunk(args):
        xc, sc, tc, ic, bc = args  # (b, *in, C), (b, *in), (b,), (b, R, S), (b,)
        hit = jax.vmap(jax.vmap(lambda i: jnp.zeros(n, bool).at[i].set(True)))(ic)
        hit = hit.reshape(b, R, *x.shape[1:-1], 1)
        perturbed = jnp.where(hit, bc.reshape(b, 1, *[1] * (x.ndim - 1)), xc[:, None])
        stack = jnp.concatenate([xc, perturbed.reshape(-1, *x.shape[1:])])
        t = jnp.concatenate([tc, jnp.repeat(tc, R)])
        scores = score_fn(stack, t)
        check_scores("the inputs and their perturbations", scores, t.shape)
        drops = scores[:b, None] - scores[b:].reshape(b, R)
        sums = jnp.take_along_axis(sc.reshape(b, 1, n), ic, axis=2).sum(-1)
        return sums, drops

    chunks = tuple(_chunked(a, b) for a in (x, saliency, target, subsets, base))
    sums, drops = jax.lax.map(one_chunk, chunks)
    return sums.reshape(-1, R)[:B], drops.reshape(-1, R)[:B]


def faithfulness_correlation(
    score_fn: ScoreFn,
    x: ArrayLike,
    saliency: ArrayLike,
    target: Any,
    *,
    key: Any = None,
    subsets: ArrayLike | None = None,
    nr_runs: int = NR_RUNS,
    subset_size: int = SUBSET_SIZE,
    baseline: Any = "black",
    images_per_batch: int = 4,
) -> FaithfulnessCorrelation:
    """Faithfulness correlation (Bhatt et al. 2020), Quantus 0.6.0's
    ``FaithfulnessCorrelation`` with its defaults (100 runs, 224 cells, 'black').

    For each image and run r, the cells of a random subset (:func:`random_subsets`, or
    ``subsets`` given) are set to the baseline; ``correlation`` is Pearson's r over the
    runs of the saliency summed over the subset and the score drop. Quantus normalises
    the saliency by its maximum first, which leaves r as it is. All runs of
    ``images_per_batch`` images and the images go through ``score_fn`` in one forward
    batch (memory ~ (R + 1) images_per_batch inputs).

    Args:
        score_fn: ``(x, target) -> (N,)``, e.g. from
            :func:`ifa_jax.metrics.confidence.model_scorer` (Quantus: logits by default).
        x: (B, *in, C) inputs.
        saliency: (B, *in) in [0, 1] on the input grid.
        target: an int or (B,) ints.
        key: PRNG key of the subsets (when ``subsets`` is None).
        subsets: (B, R, S) flat cell indices (C order), each row without repeats, in place
            of drawing them; ``nr_runs`` and ``subset_size`` then come from its shape.
        nr_runs: runs per image R (>= 3 for a correlation).
        subset_size: cells per subset S.
        baseline: 'black' (each image's minimum), 'white' (maximum), 'mean' or a number.
        images_per_batch: images per forward batch, >= 1.

    Returns:
        The :class:`FaithfulnessCorrelation`.

    Raises:
        ValueError: shapes that do not fit, a missing key, bad subsets, counts or
            baseline, or scores of the wrong shape or not finite.
    """
    x, saliency = check_inputs(x, saliency)
    B, n = x.shape[0], int(np.prod(x.shape[1:-1]))
    t = index_targets(target, B, indices_only=True)
    images_per_batch = positive_int(
        "images_per_batch", images_per_batch, "images per forward batch"
    )
    if subsets is None:
        idx = random_subsets(key, B, n, nr_runs, subset_size)
    else:
        idx = jnp.asarray(subsets)
        if idx.ndim != 3 or idx.shape[0] != B or not jnp.issubdtype(idx.dtype, jnp.integer):
            raise ValueError(
                f"subsets must be integer cell indices of shape ({B}, runs, size); got "
                f"{idx.shape}, dtype {idx.dtype}"
            )
        host = np.asarray(idx)
        if host.size and (host.min() < 0 or host.max() >= n):
            raise ValueError(
                f"subsets index cells outside 0 ... {n - 1}: min {host.min()}, max {host.max()}"
            )
        srt = np.sort(host, axis=-1)
        if np.any(srt[..., 1:] == srt[..., :-1]):
            raise ValueError(
                "subsets repeat a cell within a run; draw each run without replacement"
            )
        idx = idx.astype(jnp.int32)
    sums, drops = _fc_core(
        as_scorer(score_fn),
        x,
        saliency,
        t,
        idx,
        _baseline_values(x, baseline),
        images_per_batch=images_per_batch,
    )
    check_scores("the perturbed inputs", drops)
    a, d = np.asarray(sums, np.float64), np.asarray(drops, np.float64)
    return FaithfulnessCorrelation([pearson(u, v) for u, v in zip(a, d)], sums, drops)


@functools.partial(jax.jit, static_argnames=("cells_per_step", "images_per_batch"))
def _pf_core(score_fn, x, saliency, target, base, *, cells_per_step, images_per_batch):
    B, n = x.shape[0], int(np.prod(x.shape[1:-1]))
    steps = -(-n // cells_per_step)
    flipped = jnp.asarray(np.minimum((np.arange(steps) + 1) * cells_per_step, n))
    b = min(images_per_batch, B)

    def one_chunk(args):
        xc, sc, tc, bc = args
        order = jnp.argsort(-sc.reshape(b, n), axis=1, stable=True)  # ties by cell index
        rank = jax.vmap(lambda o: jnp.zeros(n, jnp.int32).at[o].set(jnp.arange(n)))(order)
        m = (rank[:, None] < flipped[None, :, None]).reshape(b, steps, *x.shape[1:-1], 1)
        perturbed = jnp.where(m, bc.reshape(b, 1, *[1] * (x.ndim - 1)), xc[:, None])
        t = jnp.repeat(tc, steps)
        scores = score_fn(perturbed.reshape(-1, *x.shape[1:]), t)
        check_scores("the flipping steps", scores, t.shape)
        return scores.reshape(b, steps)

    chunks = tuple(_chunked(a, b) for a in (x, saliency, target, base))
    curve = jax.lax.map(one_chunk, chunks).reshape(-1, steps)[:B]
    fraction = (flipped / n).astype(x.dtype)
    return PixelFlipping(fraction, curve, curve_auc(curve, fraction))


def pixel_flipping(
    score_fn: ScoreFn,
    x: ArrayLike,
    saliency: ArrayLike,
    target: Any,
    *,
    cells_per_step: int = 1,
    baseline: Any = "black",
    images_per_batch: int = 1,
) -> PixelFlipping:
    """Pixel-flipping (Bach et al. 2015), Quantus 0.6.0's ``PixelFlipping``.

    The cells are set to the baseline in order of decreasing saliency (ties by cell
    index; Quantus's unstable sort orders ties as it happens to), ``cells_per_step`` more
    at each of the S = ceil(N / cells_per_step) steps, and the score is read after each.
    All S steps of ``images_per_batch`` images go through ``score_fn`` in one forward
    batch (memory ~ S images_per_batch inputs: raise ``cells_per_step`` on large grids).

    Args:
        score_fn: ``(x, target) -> (N,)`` (Quantus: logits by default).
        x: (B, *in, C) inputs.
        saliency: (B, *in) in [0, 1] on the input grid.
        target: an int or (B,) ints.
        cells_per_step: cells flipped per step, >= 1 (Quantus's ``features_in_step`` for
            one channel).
        baseline: 'black' (each image's minimum), 'white', 'mean' or a number.
        images_per_batch: images per forward batch, >= 1.

    Returns:
        The :class:`PixelFlipping` curves and areas.

    Raises:
        ValueError: shapes that do not fit, a bad step, batch size or baseline, or scores
            of the wrong shape or not finite.
    """
    x, saliency = check_inputs(x, saliency)
    t = index_targets(target, x.shape[0], indices_only=True)
    cells_per_step = positive_int("cells_per_step", cells_per_step, "cells flipped per step")
    images_per_batch = positive_int(
        "images_per_batch", images_per_batch, "images per forward batch"
    )
    out = _pf_core(
        as_scorer(score_fn),
        x,
        saliency,
        t,
        _baseline_values(x, baseline),
        cells_per_step=cells_per_step,
        images_per_batch=images_per_batch,
    )
    check_scores("the flipping steps", out.curve)
    return out

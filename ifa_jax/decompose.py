"""Feature selection masks and decomposition of channel importances (docs/method.md).

Inputs are plain arrays from the analysis pass: importance rows IM (C, K) (one row per
class; rows of classes without counted samples are NaN), IM_diff (C, K), IM_all (K,), the
channel covariance of per-sample importances (K, K), contributions M (B, *spatial, K).

Selection (:func:`select`) gives binary masks (C, K) float32, one row per class:

* ``top``: the n channels with the largest IM_c (signed);
* ``diff_top``: the n channels with the largest |IM_diff_c|; ``reverse_diff_top``: the
  other K - n channels (its complement);
* ``max``: the single channel with the largest IM_c; ``index``: one given channel;
* ``freq``: every channel with IM_c strictly above ``threshold``;
* ``random``: n channels uniformly at random per class (explicit ``key``); ``all``: ones.

n = round(ratio * K), rounding halves up, at least 1. Ties are broken by channel index,
lower index first, so a mask always has exactly n ones.

Decomposition: the eigen-spectrum of the covariance of S (N x K) gives the principal
directions of the per-sample importance vectors and the number of components carrying
90/95/99% of their variance (:func:`explained_variance`); :func:`class_svd` does the same
for the class x channel matrix IM; :func:`component_cam` projects contribution maps on a
direction (a per-component CAM); :func:`effective_rank` and :func:`near_zero_channels`
quantify redundancy.

All array functions are pure jnp and jit-able. Value checks (NaN rows, asymmetric or zero
covariance, empty masks) run when the inputs are concrete and are skipped under ``jit``,
where the documented fallback (NaN ratios, empty rows) is returned instead.

Examples:
    Masks of the top half of 4 channels for 2 classes, and the spectrum of a covariance
    whose first direction carries most of the variance:

    >>> import numpy as np
    >>> from ifa_jax.decompose import effective_rank, explained_variance, select
    >>> im = np.array([[3.0, 1.0, 0.0, 2.0], [0.0, 2.0, 4.0, 1.0]])
    >>> print(select(im, "top", ratio=0.5))
    [[1. 0. 0. 1.]
     [0. 1. 1. 0.]]
    >>> spectrum = explained_variance(np.diag([9.0, 0.5, 0.4, 0.1]))
    >>> print(np.asarray(spectrum.ratio).round(2))
    [0.9  0.05 0.04 0.01]
    >>> {level: int(n) for level, n in spectrum.n_components.items()}
    {90: 1, 95: 2, 99: 3}
    >>> round(float(effective_rank(np.array([1.0, 1.0, 0.0, 0.0]))), 3)
    2.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ifa_jax._checks import is_traced

Array = jax.Array

MODES = ("top", "diff_top", "reverse_diff_top", "max", "index", "freq", "random", "all")
LEVELS = (90, 95, 99)
_LEVEL_TOL = 1e-6


def _concrete(x) -> np.ndarray | None:
    """x as NumPy when it holds values (not a tracer under jit), else None."""
    if is_traced(x):
        return None
    return np.asarray(x)


def n_selected(ratio: float | None, channels: int) -> int:
    """Channels a ratio selects: round(ratio * K), halves up, at least 1.

    ratio must lie in (0, 1]. E.g. K = 10: 0.25 -> 3, 0.24 -> 2, 0.01 -> 1, 1.0 -> 10.

    Args:
        ratio: the share of the channels, in (0, 1].
        channels: K.

    Returns:
        The number of channels n, in [1, K].

    Raises:
        ValueError: ratio is None or outside (0, 1].
    """
    if ratio is None:
        raise ValueError(
            "this mode needs ratio=... in (0, 1], e.g. ratio=0.1 for 10% of the channels"
        )
    r = float(ratio)
    if not (math.isfinite(r) and 0.0 < r <= 1.0):
        raise ValueError(
            f"ratio must lie in (0, 1] (a share of the {channels} channels); got {ratio!r}"
        )
    # a tiny slack so that e.g. 0.35 * 10 = 3.4999999999999996 still rounds to 4
    return int(min(channels, max(1, math.floor(r * channels + 0.5 + 1e-9))))


def _rank_desc(scores: Array) -> Array:
    """Rank of each entry along the last axis, 0 = largest; ties: lower index first."""
    order = jnp.argsort(-scores, axis=-1, stable=True)
    return jnp.argsort(order, axis=-1, stable=True)


def top_mask(scores: Array, n: int) -> Array:
    """Float32 mask of the n largest scores along the last axis (ties: lower index).

    Args:
        scores: (..., K) scores.
        n: how many to select per row.

    Returns:
        (..., K) float32, exactly n ones per row (for n <= K).
    """
    return (_rank_desc(scores) < n).astype(jnp.float32)


SELECT_FIX = (
    "Select on present classes only (e.g. {name}[present]), fill the rows explicitly (e.g. "
    "with IM_all), or use mode 'all', 'index' or 'random', which do not read importances"
)


def _check_rows(rows, name: str, fix: str = SELECT_FIX) -> None:
    """Refuse non-finite rows (classes without counted samples), naming them and ``fix``
    (formatted with ``name``)."""
    arr = _concrete(rows)
    if arr is None:
        return
    bad = ~np.isfinite(arr.reshape(-1, arr.shape[-1])).all(-1)
    if bad.any():
        which = [int(c) for c in np.flatnonzero(bad)]
        raise ValueError(
            f"{name} has non-finite rows for class(es) {which}: those classes had no counted "
            "sample in the analysis (see Summary.present). " + fix.format(name=name)
        )


def select(
    importance_rows: ArrayLike,
    mode: str,
    *,
    ratio: float | None = None,
    index: int | None = None,
    threshold: float | None = None,
    key: Array | None = None,
    im_diff: ArrayLike | None = None,
) -> Array:
    """Binary channel masks, float32 of the shape of ``importance_rows`` ((C, K) or (K,)).

    importance_rows: IM (C, K), one row per class (or one row (K,)). Modes and their
    arguments: top(ratio), diff_top(ratio, im_diff), reverse_diff_top(ratio, im_diff),
    max, index(index), freq(threshold), random(ratio, key), all. Arguments a mode does
    not use are ignored. The diff modes read ``im_diff`` (IM_c - IM_all, same shape),
    never ``importance_rows``, and raise if it is missing.

    Errors (when inputs are concrete): unknown mode; ratio outside (0, 1]; a non-finite row
    in the matrix the mode reads (names the classes); freq with a row where no channel
    exceeds the threshold; reverse_diff_top whose complement is empty (ratio selects all).
    jit: ``jax.jit(select, static_argnames=("mode", "ratio", "index"))``.

    Args:
        importance_rows: IM (C, K), one row per class, or one row (K,).
        mode: one of :data:`MODES`.
        ratio: the share of channels selected (top, diff_top, reverse_diff_top, random).
        index: the channel of mode 'index'.
        threshold: the importance a channel must exceed in mode 'freq'.
        key: the PRNG key of mode 'random'.
        im_diff: IM_c - IM_all, of the shape of ``importance_rows`` (the diff modes).

    Returns:
        Float32 masks of the shape of ``importance_rows``, 1 on the selected channels.

    Raises:
        ValueError: on the errors listed above, a shape that is not (C, K) or (K,), and a
            missing argument of the mode.
    """
    rows = jnp.asarray(importance_rows)
    if rows.ndim not in (1, 2):
        raise ValueError(f"importance_rows must be (C, K) or (K,); got shape {rows.shape}")
    K = rows.shape[-1]
    if mode not in MODES:
        raise ValueError(f"unknown selection mode {mode!r}; use one of {MODES}")
    if mode == "all":
        return jnp.ones(rows.shape, jnp.float32)
    if mode == "index":
        if index is None or isinstance(index, bool) or int(index) != index:
            raise ValueError(f"mode 'index' needs index=<int channel in [0, {K})>; got {index!r}")
        if not 0 <= int(index) < K:
            raise ValueError(f"channel index {index} is out of range for {K} channels")
        return jnp.broadcast_to(jax.nn.one_hot(int(index), K, dtype=jnp.float32), rows.shape)
    if mode == "random":
        n = n_selected(ratio, K)
        if key is None:
            raise ValueError("mode 'random' needs an explicit PRNG key: key=jax.random.key(0)")
        u = jax.random.uniform(key, rows.shape)
        return top_mask(u, n)
    if mode in ("diff_top", "reverse_diff_top"):
        if im_diff is None:
            raise ValueError(
                f"mode {mode!r} needs im_diff=IM_c - IM_all (the analysis "
                "Summary.im_diff), of the same shape as importance_rows"
            )
        diff = jnp.asarray(im_diff)
        if diff.shape != rows.shape:
            raise ValueError(f"im_diff has shape {diff.shape} but importance_rows {rows.shape}")
        _check_rows(diff, "im_diff")
        n = n_selected(ratio, K)
        mask = top_mask(jnp.abs(diff), n)
        if mode == "diff_top":
            return mask
        if n == K:
            raise ValueError(
                f"reverse_diff_top with ratio {ratio} selects the complement of "
                f"all {K} channels, which is empty; use ratio < {1 - 0.5 / K:.4g}"
            )
        return 1.0 - mask
    _check_rows(rows, "importance_rows")
    if mode == "top":
        return top_mask(rows, n_selected(ratio, K))
    if mode == "max":
        return top_mask(rows, 1)
    # freq
    if threshold is None:
        raise ValueError(
            "mode 'freq' needs threshold=...: channels with IM strictly above it are selected"
        )
    mask = (rows > threshold).astype(jnp.float32)
    arr = _concrete(rows)
    if arr is not None:
        empty = ~(arr.reshape(-1, K) > threshold).any(-1)
        if empty.any():
            which = [int(c) for c in np.flatnonzero(empty)]
            best = float(arr.reshape(-1, K)[empty].max())
            raise ValueError(
                f"freq threshold {threshold} selects no channel for class(es) "
                f"{which} (their largest IM is {best:.6g}); lower the threshold"
            )
    return mask


# --------------------------------------------------------------------------- spectra


def _fix_signs(vecs: Array) -> Array:
    """Flip each column so that its largest-magnitude entry is positive (deterministic)."""
    idx = jnp.argmax(jnp.abs(vecs), axis=0)
    sign = jnp.sign(vecs[idx, jnp.arange(vecs.shape[1])])
    return vecs * jnp.where(sign == 0, 1.0, sign)


def _n_components(cumulative: Array, levels: Sequence[float]) -> dict:
    K = cumulative.shape[-1]
    return {lv: jnp.minimum(jnp.sum(cumulative < lv / 100.0 - _LEVEL_TOL) + 1, K) for lv in levels}


def _check_levels(levels) -> tuple:
    levels = tuple(levels)
    for lv in levels:
        if not 0 < float(lv) <= 100:
            raise ValueError(f"variance levels are percentages in (0, 100]; got {lv!r}")
    return levels


class Spectrum(NamedTuple):
    """Eigen-spectrum of a (K, K) covariance of per-sample importances S (N, K).

    eigenvalues: (K,) descending, >= 0: variance along each principal direction (the
    singular values of the covariance; the squared singular values of centred S over N).
    ratio: (K,) eigenvalue / total. cumulative: (K,) running sum of ratio.
    n_components: {level %: smallest number of components whose cumulative ratio reaches
    level}. directions: (K, K) unit eigenvectors as columns, in the same order, each with
    its largest-magnitude entry positive.
    """

    eigenvalues: Array
    ratio: Array
    cumulative: Array
    n_components: dict
    directions: Array


def _square(cov, name="covariance") -> Array:
    cov = jnp.asarray(cov)
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"{name} must be a square (K, K) matrix; got shape {cov.shape}")
    arr = _concrete(cov)
    if arr is not None:
        if not np.isfinite(arr).all():
            raise ValueError(
                f"{name} has non-finite entries; no counted sample, or inf/NaN "
                "importances (check the analysis Summary)"
            )
        scale = max(np.abs(arr).max(), np.finfo(np.float32).tiny)
        asym = np.abs(arr - arr.T).max() / scale
        if asym > 1e-4:
            raise ValueError(
                f"{name} is not symmetric (relative asymmetry {asym:.3g}); pass "
                "the (K, K) channel covariance, not a data matrix"
            )
    return cov


def explained_variance(covariance: ArrayLike, levels: Sequence[float] = LEVELS) -> Spectrum:
    """Spectrum of the importance covariance: eigenvalues, explained ratios, cumulative,
    components needed for each level (default 90/95/99%) and principal directions.

    Uses ``jnp.linalg.eigh`` of the symmetrised matrix; tiny negative eigenvalues from
    round-off are clipped to 0. A zero covariance raises (concrete) or gives NaN ratios
    (under jit). Read it as: few components reaching 95% = the model's decision at this
    layer lives in a low-dimensional subspace of the K channels (redundancy).

    Args:
        covariance: (K, K) channel covariance of the per-sample importances.
        levels: variance levels in percent, each in (0, 100].

    Returns:
        The :class:`Spectrum` (eigenvalues, ratio and cumulative (K,), n_components,
            directions (K, K)).

    Raises:
        ValueError: a matrix that is not square, symmetric and finite, an all-zero
            covariance, or a level outside (0, 100].
    """
    levels = _check_levels(levels)
    cov = _square(covariance)
    arr = _concrete(cov)
    if arr is not None and not np.any(arr):
        raise ValueError(
            "covariance is all zero: the importances do not vary across samples "
            "(a single counted sample, or a dead layer); analyse more data"
        )
    sym = 0.5 * (cov + cov.T)
    w, v = jnp.linalg.eigh(sym)
    w = jnp.clip(w[::-1], 0.0, None)
    v = _fix_signs(v[:, ::-1])
    ratio = w / jnp.sum(w)
    cumulative = jnp.cumsum(ratio)
    return Spectrum(w, ratio, cumulative, _n_components(cumulative, levels), v)


def principal_directions(covariance: Array, r: int) -> Array:
    """The r leading principal directions (K, r) of a covariance, as unit columns.

    Args:
        covariance: (K, K) channel covariance.
        r: the number of directions, in [1, K].

    Returns:
        (K, r) unit columns, largest eigenvalue first.

    Raises:
        ValueError: r outside [1, K], or a covariance :func:`explained_variance` refuses.
    """
    cov = _square(covariance)
    K = cov.shape[0]
    if not (isinstance(r, (int, np.integer)) and 1 <= r <= K):
        raise ValueError(f"r must be an int in [1, {K}]; got {r!r}")
    return explained_variance(cov).directions[:, :r]


class ClassSVD(NamedTuple):
    """SVD of the class x channel matrix IM (C, K), q = min(C, K) components.

    singular_values: (q,) descending. ratio: s^2 / sum s^2 (share of the matrix' energy,
    or of the between-class variance when centred). cumulative: running sum of ratio.
    n_components: {level %: components reaching it}. class_scores: (C, q) = U S, each
    class' coordinates. directions: (K, q) right singular vectors (columns), largest-
    magnitude entry positive. center: whether the column means were subtracted.
    """

    singular_values: Array
    ratio: Array
    cumulative: Array
    n_components: dict
    class_scores: Array
    directions: Array
    center: bool


def class_svd(
    im_class: ArrayLike, *, center: bool = True, levels: Sequence[float] = LEVELS
) -> ClassSVD:
    """SVD of IM (C, K). ``center=True`` (default) subtracts the unweighted mean over
    classes first, so the components are the directions in which classes *differ*
    (rank <= C - 1); ``center=False`` keeps the shared importance pattern, which then
    dominates the first component. Rows must be finite: pass ``im_class[present]``.

    Args:
        im_class: IM (C, K), finite rows.
        center: subtract the mean over classes first.
        levels: variance levels in percent, each in (0, 100].

    Returns:
        The :class:`ClassSVD`; q = min(C, K) components.

    Raises:
        ValueError: a matrix that is not (C, K), a non-finite row, or an all-zero
            (centred) matrix.
    """
    levels = _check_levels(levels)
    im = jnp.asarray(im_class)
    if im.ndim != 2:
        raise ValueError(f"im_class must be (C, K); got shape {im.shape}")
    _check_rows(
        im,
        "im_class",
        "Pass the present classes' rows, class_svd(summary.im_class[summary.present]); the "
        "components then span those classes only",
    )
    if center:
        im = im - jnp.mean(im, axis=0, keepdims=True)
    arr = _concrete(im)
    if arr is not None and not np.any(arr):
        raise ValueError(
            "the (centred) class matrix is all zero: every class has the same "
            "importances" + (" (or C = 1; use center=False)" if center else "")
        )
    u, s, vt = jnp.linalg.svd(im, full_matrices=False)
    v = vt.T
    idx = jnp.argmax(jnp.abs(v), axis=0)
    sign = jnp.sign(v[idx, jnp.arange(v.shape[1])])
    sign = jnp.where(sign == 0, 1.0, sign)
    v, u = v * sign, u * sign
    energy = s * s
    ratio = energy / jnp.sum(energy)
    cumulative = jnp.cumsum(ratio)
    return ClassSVD(s, ratio, cumulative, _n_components(cumulative, levels), u * s, v, bool(center))


def effective_rank(variances: ArrayLike, kind: str = "entropy") -> Array:
    """Effective rank of S (N, K) from its variance spectrum (covariance eigenvalues).

    kind='entropy' (Roy & Vetterli 2007): exp(H(p)), p_i = sigma_i / sum_j sigma_j over the
    singular values sigma_i = sqrt(variance_i) of centred S. kind='participation':
    (sum var)^2 / sum var^2. Both equal r for r equal non-zero values and 1 for rank one;
    participation weighs the large components more (it is <= the entropy rank).
    For the class SVD pass ``singular_values ** 2``. A zero spectrum raises (concrete).

    Args:
        variances: (K,) the variance spectrum (covariance eigenvalues), >= 0.
        kind: 'entropy' or 'participation'.

    Returns:
        The effective rank (), between 1 and the number of non-zero variances.

    Raises:
        ValueError: a spectrum that is not 1-D, finite and non-negative, an all-zero
            spectrum, or an unknown kind.
    """
    var = jnp.asarray(variances)
    if var.ndim != 1:
        raise ValueError(f"variances must be a 1-D spectrum; got shape {var.shape}")
    arr = _concrete(var)
    if arr is not None:
        if not np.isfinite(arr).all() or (arr < -1e-6 * max(np.abs(arr).max(), 1e-30)).any():
            raise ValueError(
                "variances must be finite and non-negative (eigenvalues of a "
                f"covariance); got min {arr.min():.6g}"
            )
        if not np.any(arr > 0):
            raise ValueError("variances are all zero: the effective rank is undefined")
    var = jnp.clip(var, 0.0, None)
    if kind == "participation":
        return jnp.sum(var) ** 2 / jnp.sum(var * var)
    if kind != "entropy":
        raise ValueError(f"unknown effective-rank kind {kind!r}; use 'entropy' or 'participation'")
    sigma = jnp.sqrt(var)
    p = sigma / jnp.sum(sigma)
    plogp = jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)
    return jnp.exp(-jnp.sum(plogp))


def near_zero_channels(im_all: ArrayLike, *, rtol: float = 0.01) -> Array:
    """Bool (K,): channels with |IM_all_k| <= rtol * max_j |IM_all_j| (near-zero importance).

    ``mask.mean()`` is the share of channels that contribute almost nothing to the CAM on
    average (redundant). If every channel is exactly zero, all are near zero.

    Args:
        im_all: (K,) the importance over all classes.
        rtol: the share of the largest magnitude below which a channel is near zero, in
            [0, 1).

    Returns:
        (K,) bool.

    Raises:
        ValueError: ``im_all`` not (K,) or not finite, or rtol outside [0, 1).
    """
    im = jnp.asarray(im_all)
    if im.ndim != 1:
        raise ValueError(f"im_all must be (K,); got shape {im.shape}")
    if not 0.0 <= float(rtol) < 1.0:
        raise ValueError(f"rtol must lie in [0, 1); got {rtol!r}")
    arr = _concrete(im)
    if arr is not None and not np.isfinite(arr).all():
        raise ValueError("im_all has non-finite entries: no counted sample? check the analysis")
    mag = jnp.abs(im)
    return mag <= rtol * jnp.max(mag)


def component_cam(contributions: Array, direction: Array) -> Array:
    """Per-component CAM sum_k v_k M_k.

    contributions M: (B, *spatial, K); direction v: (K,) -> (B, *spatial), or (K, r) ->
    (B, *spatial, r) (one CAM per column). v = ones gives the raw CAM L; v = e_k gives M_k.
    Use the common scale of the full CAM to display it.

    Args:
        contributions: M (B, *spatial, K), 1-3 spatial axes.
        direction: v (K,) or (K, r).

    Returns:
        (B, *spatial) for a (K,) direction, (B, *spatial, r) for (K, r).

    Raises:
        ValueError: shapes that do not fit.
    """
    M = jnp.asarray(contributions)
    v = jnp.asarray(direction)
    if not 3 <= M.ndim <= 5:
        raise ValueError(
            f"contributions must be (B, *spatial, K) with 1-3 spatial axes; got {M.shape}"
        )
    if v.ndim not in (1, 2) or v.shape[0] != M.shape[-1]:
        raise ValueError(f"direction must be (K,) or (K, r) with K = {M.shape[-1]}; got {v.shape}")
    return jnp.tensordot(M, v, axes=1)


def project(importance: Array, directions: Array, *, mean: Array | None = None) -> Array:
    """Coordinates (N, r) of importance vectors (N, K) on directions (K, r) (or (K,) -> (N,)).

    With ``mean`` (K,) (e.g. IM_all) the vectors are centred first, as for PCA scores;
    without it the raw importances are projected.

    Args:
        importance: (N, K) importance vectors.
        directions: (K, r) or (K,).
        mean: (K,) subtracted first, or None.

    Returns:
        (N, r), or (N,) for a (K,) direction.

    Raises:
        ValueError: shapes that do not fit.
    """
    s = jnp.asarray(importance)
    d = jnp.asarray(directions)
    if s.ndim != 2:
        raise ValueError(f"importance must be (N, K); got shape {s.shape}")
    if d.ndim not in (1, 2) or d.shape[0] != s.shape[1]:
        raise ValueError(f"directions must be (K,) or (K, r) with K = {s.shape[1]}; got {d.shape}")
    if mean is not None:
        mean = jnp.asarray(mean)
        if mean.shape != (s.shape[1],):
            raise ValueError(f"mean must be (K,) = ({s.shape[1]},); got {mean.shape}")
        s = s - mean
    return s @ d

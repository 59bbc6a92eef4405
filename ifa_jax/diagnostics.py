"""What the feature distributions reveal (docs/method.md): overfitting, outliers,
confounders and redundancy.

Pure functions of plain arrays (the analysis Summary's fields and per-sample arrays), in
NumPy float64, returning NamedTuples / dicts of plain Python floats and ints that a report
can print. Each docstring says how to read the numbers. Bad input raises ValueError
naming the value and the fix.

Examples:
    CAM maxima that drop from the train to the validation split, and a 4 x 4 mean CAM
    of each of 2 classes whose mass sits on the border for class 1:

    >>> import numpy as np
    >>> from ifa_jax.diagnostics import border_mass, distribution_shift
    >>> shift = distribution_shift([4.0, 5.0, 6.0, 7.0], [2.0, 3.0, 4.0, 5.0])
    >>> shift.ks, shift.median_shift, shift.median_shift_iqr
    (0.5, -2.0, -1.3333333333333333)
    >>> centre, frame = np.zeros((4, 4)), np.ones((4, 4))
    >>> centre[1:3, 1:3] = 1.0
    >>> frame[1:3, 1:3] = 0.0
    >>> border = border_mass(np.stack([centre, frame]))
    >>> border.per_class, border.uniform, border.worst_class
    ({0: 0.0, 1: 1.0}, 0.75, 1)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from ifa_jax import decompose
from ifa_jax._checks import per_sample_values

KS_C05 = 1.358  # asymptotic two-sample KS coefficient for a 5% test: c(0.05)


# --------------------------------------------------------------------------- helpers


def _ratio(num: float, den: float) -> float:
    """num / den with a zero denominator read as 0 (num == 0) or +-inf (documented)."""
    if den > 0:
        return num / den
    return 0.0 if num == 0 else math.copysign(math.inf, num)


def _used_classes(n_classes: int, present) -> np.ndarray:
    if present is None:
        return np.arange(n_classes)
    p = np.asarray(present)
    if p.shape != (n_classes,) or p.dtype != bool:
        raise ValueError(
            f"present must be a bool array of shape ({n_classes},); got {p.dtype} {p.shape}"
        )
    return np.flatnonzero(p)


def _finite_rows(arr: np.ndarray, used: np.ndarray, name: str) -> None:
    flat = arr.reshape(arr.shape[0], -1)[used]
    bad = ~np.isfinite(flat).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{name} has non-finite rows for class(es) "
            f"{[int(c) for c in used[bad]]} (no counted sample); pass "
            "present=Summary.present to skip them"
        )


# --------------------------------------------------------------------------- overfitting


def ks_statistic(a: ArrayLike, b: ArrayLike) -> float:
    """Two-sample Kolmogorov-Smirnov statistic D = max_x |F_a(x) - F_b(x)| in [0, 1].

    Args:
        a: (N,) one sample.
        b: (M,) the other.

    Returns:
        D, a float in [0, 1].

    Raises:
        ValueError: an empty or non-finite sample.
    """
    a = np.sort(per_sample_values(a, "a"))
    b = np.sort(per_sample_values(b, "b"))
    pooled = np.concatenate([a, b])
    fa = np.searchsorted(a, pooled, side="right") / a.size
    fb = np.searchsorted(b, pooled, side="right") / b.size
    return float(np.max(np.abs(fa - fb)))


def wasserstein_1d(a: ArrayLike, b: ArrayLike) -> float:
    """1-D Wasserstein (earth mover's) distance W1 = integral |F_a - F_b| dx, in the
    samples' own units (for equal sizes: mean |sort(a) - sort(b)|).

    Args:
        a: (N,) one sample.
        b: (M,) the other.

    Returns:
        W1, a float >= 0.

    Raises:
        ValueError: an empty or non-finite sample.
    """
    a = np.sort(per_sample_values(a, "a"))
    b = np.sort(per_sample_values(b, "b"))
    pooled = np.sort(np.concatenate([a, b]))
    widths = np.diff(pooled)
    fa = np.searchsorted(a, pooled[:-1], side="right") / a.size
    fb = np.searchsorted(b, pooled[:-1], side="right") / b.size
    return float(np.sum(np.abs(fa - fb) * widths))


class Shift(NamedTuple):
    """How one per-sample quantity's distribution moves from the train to the val split.

    ks: two-sample KS statistic D in [0, 1] (0: same distribution; 1: disjoint).
    ks_critical: 1.358 sqrt((n+m)/(nm)), the asymptotic 5% critical value; D above it
    means the difference is unlikely to be sampling noise.
    wasserstein: W1 in the quantity's units; wasserstein_iqr: W1 / train IQR.
    median_train, median_val, median_shift (= val - train), median_shift_iqr (/ train IQR).
    iqr_train: P75 - P25 of the train split. n_train, n_val: sample counts.
    Relative values with a zero train IQR are 0 (no shift) or +-inf.
    Reading: |median_shift_iqr| or wasserstein_iqr above ~0.5 is a shift a person would
    see in the CAMs; for CAM maxima a negative median_shift (weaker CAMs on validation
    data than on training data) is the overfitting signature.
    """

    ks: float
    ks_critical: float
    wasserstein: float
    wasserstein_iqr: float
    median_train: float
    median_val: float
    median_shift: float
    median_shift_iqr: float
    iqr_train: float
    n_train: int
    n_val: int


def distribution_shift(train: ArrayLike, val: ArrayLike) -> Shift:
    """Compare two 1-D samples (train split first). See :class:`Shift`.

    Args:
        train: (N,) a per-sample quantity on the train split.
        val: (M,) the same on the validation split.

    Returns:
        The :class:`Shift` from train to val.

    Raises:
        ValueError: an empty or non-finite sample.
    """
    a = per_sample_values(train, "train")
    b = per_sample_values(val, "val")
    q25, med_a, q75 = np.percentile(a, [25, 50, 75])
    med_b = float(np.median(b))
    iqr = float(q75 - q25)
    w = wasserstein_1d(a, b)
    shift = med_b - float(med_a)
    n, m = a.size, b.size
    return Shift(
        ks_statistic(a, b),
        KS_C05 * math.sqrt((n + m) / (n * m)),
        w,
        _ratio(w, iqr),
        float(med_a),
        med_b,
        shift,
        _ratio(shift, iqr),
        iqr,
        n,
        m,
    )


def overfitting(
    train_max: ArrayLike,
    train_min: ArrayLike,
    val_max: ArrayLike,
    val_min: ArrayLike,
    *,
    train_importance: ArrayLike | None = None,
    val_importance: ArrayLike | None = None,
) -> dict[str, Shift]:
    """Train vs validation distributions of per-sample CAM extremes (and importances).

    Reading: an overfitted model explains its training samples with stronger CAMs than
    unseen ones: KS above ks_critical and a negative median_shift for 'cam_max'.

    Args:
        train_max: (N,) max of the raw CAM on the feature grid, per train sample.
        train_min: (N,) min of the same.
        val_max: (M,) max of the raw CAM, per validation sample.
        val_min: (M,) min of the same.
        train_importance: optional (N, K): adds 'cam_mass' (sum_k s_k, the total signed
            CAM mass) and 'importance_norm' (||s||_2).
        val_importance: (M, K), given with ``train_importance``.

    Returns:
        ``{name: Shift}`` for 'cam_max', 'cam_min' (and 'cam_mass', 'importance_norm').

    Raises:
        ValueError: only one of the importances, importances that are not (N, K) with
            the same K, or an empty or non-finite sample.
    """
    out = {
        "cam_max": distribution_shift(train_max, val_max),
        "cam_min": distribution_shift(train_min, val_min),
    }
    if (train_importance is None) != (val_importance is None):
        raise ValueError("pass both train_importance and val_importance, or neither")
    if train_importance is not None:
        s_tr = np.asarray(train_importance, np.float64)
        s_va = np.asarray(val_importance, np.float64)
        if s_tr.ndim != 2 or s_va.ndim != 2 or s_tr.shape[1] != s_va.shape[1]:
            raise ValueError(
                f"importances must be (N, K) with the same K; got {s_tr.shape} and {s_va.shape}"
            )
        out["cam_mass"] = distribution_shift(s_tr.sum(1), s_va.sum(1))
        out["importance_norm"] = distribution_shift(
            np.linalg.norm(s_tr, axis=1), np.linalg.norm(s_va, axis=1)
        )
    return out


# --------------------------------------------------------------------------- outliers


def within_class_covariance(
    covariance: ArrayLike, class_means: ArrayLike, class_counts: ArrayLike, *, ddof: int = 0
) -> np.ndarray:
    """Pooled within-class covariance (K, K) from the total covariance and class means.

    Uses total scatter = within + between, between = sum_c n_c (mu_c - mu)(mu_c - mu)^T,
    and returns within / (N - C_present).

    Args:
        covariance: (K, K) of s over the counted samples, normalised by N - ddof.
        class_means: (C, K) of the same samples; classes with count 0 (NaN rows) are
            ignored.
        class_counts: (C,) samples per class.
        ddof: the covariance's delta degrees of freedom (the analysis Summary uses 0).

    Returns:
        (K, K) float64.

    Raises:
        ValueError: shapes that do not fit, negative or non-finite counts, a non-finite
            mean of a counted class, or no within-class degree of freedom.
    """
    cov = np.asarray(covariance, np.float64)
    means = np.asarray(class_means, np.float64)
    counts = np.asarray(class_counts, np.float64)
    K = cov.shape[-1]
    if (
        cov.shape != (K, K)
        or means.ndim != 2
        or means.shape[1] != K
        or counts.shape != (means.shape[0],)
    ):
        raise ValueError(
            f"expected covariance (K, K), class_means (C, K), class_counts (C,); "
            f"got {cov.shape}, {means.shape}, {counts.shape}"
        )
    if (counts < 0).any() or not np.isfinite(counts).all():
        raise ValueError(f"class_counts must be finite and >= 0; got {counts}")
    used = np.flatnonzero(counts > 0)
    _finite_rows(means, used, "class_means")
    total = counts.sum()
    dof = total - used.size
    if dof <= 0:
        raise ValueError(
            f"{int(total)} counted samples in {used.size} classes leave no "
            "within-class degrees of freedom; analyse more samples"
        )
    mu = counts[used] @ means[used] / total
    dev = means[used] - mu
    between = (dev * counts[used, None]).T @ dev
    within = cov * (total - ddof) - between
    within = 0.5 * (within + within.T)
    return within / dof


def _mahalanobis(importance, labels, class_means, covariance, n_components, rtol):
    s = np.asarray(importance, np.float64)
    y = np.asarray(labels)
    means = np.asarray(class_means, np.float64)
    cov = np.asarray(covariance, np.float64)
    if s.ndim != 2:
        raise ValueError(f"importance must be (N, K); got shape {s.shape}")
    N, K = s.shape
    if means.ndim != 2 or means.shape[1] != K or cov.shape != (K, K):
        raise ValueError(
            f"expected class_means (C, {K}) and covariance ({K}, {K}); got "
            f"{means.shape} and {cov.shape}"
        )
    if y.shape != (N,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be ints of shape ({N},); got {y.dtype} {y.shape}")
    bad = (y < 0) | (y >= means.shape[0])
    if bad.any():
        raise ValueError(
            f"label {int(y[bad][0])} is outside [0, {means.shape[0]}) "
            f"({int(bad.sum())} sample(s)); pass class_means with one row per "
            "class"
        )
    if not np.isfinite(s).all():
        raise ValueError("importance has non-finite entries; drop those samples first")
    _finite_rows(means, np.unique(y), "class_means")
    if not np.isfinite(cov).all():
        raise ValueError("covariance has non-finite entries")
    if not (isinstance(n_components, (int, np.integer)) and 1 <= n_components <= K):
        raise ValueError(f"n_components must be an int in [1, {K}]; got {n_components!r}")
    w, v = np.linalg.eigh(0.5 * (cov + cov.T))
    w, v = w[::-1], v[:, ::-1]
    if not w[0] > 0:
        raise ValueError(
            "covariance is zero (or negative definite): no spread to measure "
            "distances against; analyse more samples"
        )
    keep = np.flatnonzero(w[:n_components] > rtol * w[0])
    coords = (s - means[y]) @ v[:, keep]
    return np.sqrt(np.sum(coords**2 / w[keep], axis=1)), int(keep.size)


def outlier_scores(
    importance: ArrayLike,
    labels: ArrayLike,
    class_means: ArrayLike,
    covariance: ArrayLike,
    n_components: int,
    *,
    rtol: float = 1e-6,
) -> np.ndarray:
    """Mahalanobis distance (N,) of each importance vector from its class mean, in the
    subspace of the covariance's top ``n_components`` principal directions.

    Reading: for Gaussian classes d^2 follows chi^2 with r = components used, so d ~ sqrt(r)
    is typical and d above sqrt(r) + 3 is rare.

    Args:
        importance: (N, K) per-sample importances.
        labels: (N,) int classes.
        class_means: (C, K).
        covariance: (K, K): pass the pooled within-class covariance
            (:func:`within_class_covariance`) as the method asks; the total covariance
            also works but is inflated along between-class directions.
        n_components: principal directions used.
        rtol: singular covariance: directions with eigenvalue <= rtol * largest are
            dropped (pseudo-inverse), so fewer than n_components may be used (see
            :func:`outliers`).

    Returns:
        (N,) float64 distances.

    Raises:
        ValueError: shapes that do not fit, labels out of range, or non-finite values.
    """
    return _mahalanobis(importance, labels, class_means, covariance, n_components, rtol)[0]


class Outliers(NamedTuple):
    """The samples farthest from their class in importance space, worst first.

    indices: sample indices into the arrays given; distances: their Mahalanobis distances;
    labels: their classes. n_components: principal directions used (after dropping
    singular ones). median: median distance over all samples, for comparison
    (typical ~ sqrt(n_components)). Inspect the CAMs of the listed samples: label noise,
    acquisition artefacts or atypical cases show up here.
    """

    indices: tuple
    distances: tuple
    labels: tuple
    n_components: int
    median: float


def outliers(
    importance: ArrayLike,
    labels: ArrayLike,
    class_means: ArrayLike,
    covariance: ArrayLike,
    *,
    n_components: int | None = None,
    worst: int = 10,
    rtol: float = 1e-6,
) -> Outliers:
    """The ``worst`` samples by :func:`outlier_scores` (ties: lower index first).

    n_components=None uses the number of components carrying 95% of the covariance's
    variance.

    Args:
        importance: (N, K) per-sample importances.
        labels: (N,) int classes.
        class_means: (C, K).
        covariance: (K, K), as for :func:`outlier_scores`.
        n_components: principal directions used (None: those carrying 95%).
        worst: how many samples to list, >= 1.
        rtol: as for :func:`outlier_scores`.

    Returns:
        The :class:`Outliers`.

    Raises:
        ValueError: worst < 1, or what :func:`outlier_scores` refuses.
    """
    cov = np.asarray(covariance, np.float64)
    if n_components is None:
        spec = decompose.explained_variance(cov, levels=(95,))
        n_components = int(spec.n_components[95])
    if not (isinstance(worst, (int, np.integer)) and worst >= 1):
        raise ValueError(f"worst must be a positive int; got {worst!r}")
    d, used = _mahalanobis(importance, labels, class_means, cov, n_components, rtol)
    order = np.argsort(-d, kind="stable")[:worst]
    y = np.asarray(labels)
    return Outliers(
        tuple(int(i) for i in order),
        tuple(float(d[i]) for i in order),
        tuple(int(y[i]) for i in order),
        used,
        float(np.median(d)),
    )


# --------------------------------------------------------------------------- confounders


class SharedChannels(NamedTuple):
    """Channels important for every class alike (candidate confounders).

    channels: the top channels by mean importance over classes (positive means only),
    most important first. commonality: for each, min_c IM_c / max_c IM_c over the classes
    used: 1 = exactly as important for every class (carries no class information: a
    shared background, text marker, scanner artefact...), near 0 or negative =
    class-specific. mean_importance: the mean over classes. n_shared: how many of them
    have commonality >= threshold. classes: the classes compared.
    """

    channels: tuple
    commonality: tuple
    mean_importance: tuple
    n_shared: int
    threshold: float
    classes: tuple


def shared_channels(
    im_class: ArrayLike,
    *,
    present: ArrayLike | None = None,
    n_top: int = 10,
    threshold: float = 0.8,
) -> SharedChannels:
    """See :class:`SharedChannels`.

    Args:
        im_class: (C, K) importance per class.
        present: (C,) bool, the classes with counted samples, or None (all).
        n_top: the top channels examined, >= 1.
        threshold: the commonality from which a channel counts as shared.

    Returns:
        The :class:`SharedChannels`.

    Raises:
        ValueError: im_class not (C, K), n_top < 1, fewer than 2 classes present, or a
            non-finite row of a present class.
    """
    im = np.asarray(im_class, np.float64)
    if im.ndim != 2:
        raise ValueError(f"im_class must be (C, K); got shape {im.shape}")
    if not (isinstance(n_top, (int, np.integer)) and n_top >= 1):
        raise ValueError(f"n_top must be a positive int; got {n_top!r}")
    used = _used_classes(im.shape[0], present)
    if used.size < 2:
        raise ValueError(
            f"need at least 2 classes with counted samples to compare; got {used.size}"
        )
    _finite_rows(im, used, "im_class")
    rows = im[used]
    mean = rows.mean(0)
    order = np.argsort(-mean, kind="stable")
    top = [int(k) for k in order if mean[k] > 0][:n_top]
    common = [float(rows[:, k].min() / rows[:, k].max()) for k in top]
    return SharedChannels(
        tuple(top),
        tuple(common),
        tuple(float(mean[k]) for k in top),
        int(sum(c >= threshold for c in common)),
        float(threshold),
        tuple(int(c) for c in used),
    )


def border_ring(spatial: Sequence[int], width: int) -> np.ndarray:
    """Bool mask of the grid cells within ``width`` cells of any edge (any rank).

    Args:
        spatial: the grid's shape, 1-3 axes.
        width: the ring's width in cells, >= 1.

    Returns:
        Bool of shape ``spatial``.

    Raises:
        ValueError: width < 1 or a ring that covers the whole grid.
    """
    spatial = tuple(int(n) for n in spatial)
    if not (isinstance(width, (int, np.integer)) and width >= 1):
        raise ValueError(f"width must be a positive int (cells); got {width!r}")
    if any(2 * width >= n for n in spatial):
        raise ValueError(
            f"a border of width {width} covers the whole grid {spatial}; use "
            f"width < {min(spatial) / 2:g}"
        )
    ring = np.zeros(spatial, bool)
    for ax, n in enumerate(spatial):
        idx = [slice(None)] * len(spatial)
        idx[ax] = np.r_[0:width, n - width : n]
        ring[tuple(idx)] = True
    return ring


class BorderMass(NamedTuple):
    """Share of each class' mean |CAM| mass in the outer ring of the feature grid.

    per_class: {class: share in [0, 1]}. uniform: the share a uniform map would put there
    (ring cells / all cells). width: ring width in cells. worst_class, worst: the class
    with the largest share and that share. Reading: a share well above ``uniform`` means the
    model looks at the borders (rulers, text, scanner frames), a confounder candidate.
    """

    per_class: dict
    uniform: float
    width: int
    worst_class: int
    worst: float


def border_mass(
    cam_mean: ArrayLike, *, width: int = 1, present: ArrayLike | None = None
) -> BorderMass:
    """See :class:`BorderMass`.

    Args:
        cam_mean: (C, *spatial) the mean CAM per class, 1-3 spatial axes.
        width: the ring's width in cells.
        present: (C,) bool, the classes with counted samples, or None (all).

    Returns:
        The :class:`BorderMass`.

    Raises:
        ValueError: a bad shape or width, no class present, a non-finite row, or a class
            whose mean CAM is zero everywhere.
    """
    cm = np.asarray(cam_mean, np.float64)
    if not 2 <= cm.ndim <= 4:
        raise ValueError(f"cam_mean must be (C, *spatial) with 1-3 spatial axes; got {cm.shape}")
    ring = border_ring(cm.shape[1:], width)
    used = _used_classes(cm.shape[0], present)
    if used.size == 0:
        raise ValueError("no class is present; nothing to measure")
    _finite_rows(cm, used, "cam_mean")
    per = {}
    for c in used:
        mag = np.abs(cm[c])
        total = mag.sum()
        if total == 0:
            raise ValueError(
                f"the mean CAM of class {int(c)} is zero everywhere; its border "
                "share is undefined (exclude it with present=...)"
            )
        per[int(c)] = float(mag[ring].sum() / total)
    worst = max(per, key=lambda c: (per[c], -c))
    return BorderMass(per, float(ring.mean()), int(width), worst, per[worst])


class Confounders(NamedTuple):
    """shared: :class:`SharedChannels`; border: :class:`BorderMass`."""

    shared: SharedChannels
    border: BorderMass


def confounders(
    im_class: ArrayLike,
    cam_mean: ArrayLike,
    *,
    present: ArrayLike | None = None,
    n_top: int = 10,
    threshold: float = 0.8,
    width: int = 1,
) -> Confounders:
    """Both confounder checks: channels shared by all classes and border mass.

    Args:
        im_class: (C, K) importance per class.
        cam_mean: (C, *spatial) the mean CAM per class.
        present: (C,) bool, the classes with counted samples, or None (all).
        n_top: as for :func:`shared_channels`.
        threshold: as for :func:`shared_channels`.
        width: as for :func:`border_mass`.

    Returns:
        The :class:`Confounders`.

    Raises:
        ValueError: what :func:`shared_channels` or :func:`border_mass` refuses.
    """
    return Confounders(
        shared_channels(im_class, present=present, n_top=n_top, threshold=threshold),
        border_mass(cam_mean, width=width, present=present),
    )


# --------------------------------------------------------------------------- redundancy


class Redundancy(NamedTuple):
    """How few channels / directions carry the decision at this layer.

    n_channels: K. near_zero_count / near_zero_share: channels with |IM_all| <= rtol x the
    largest (contribute ~nothing on average). effective_rank: Roy-Vetterli entropy rank of
    S; participation_ratio: (sum lambda)^2 / sum lambda^2 (both between 1 and K).
    n_components: {level %: principal components reaching that share of variance}.
    first_component_share: variance share of the first component. Reading: an effective
    rank or a 95% component count much smaller than K means most channels are redundant;
    the paper finds 5-25% of the features suffice.
    """

    n_channels: int
    near_zero_count: int
    near_zero_share: float
    effective_rank: float
    participation_ratio: float
    n_components: dict
    first_component_share: float


def redundancy(
    im_all: ArrayLike,
    covariance: ArrayLike,
    *,
    rtol: float = 0.01,
    levels: Sequence[float] = decompose.LEVELS,
) -> Redundancy:
    """See :class:`Redundancy`.

    Args:
        im_all: (K,) importance over all classes.
        covariance: (K, K) of the per-sample importances s.
        rtol: as for :func:`ifa_jax.decompose.near_zero_channels`.
        levels: variance levels in percent.

    Returns:
        The :class:`Redundancy`.

    Raises:
        ValueError: shapes that do not fit, or what
            :func:`ifa_jax.decompose.explained_variance` refuses.
    """
    im = np.asarray(im_all, np.float64)
    cov = np.asarray(covariance, np.float64)
    if im.ndim != 1 or cov.shape != (im.size, im.size):
        raise ValueError(
            f"expected im_all (K,) and covariance (K, K); got {im.shape} and {cov.shape}"
        )
    near = np.asarray(decompose.near_zero_channels(im, rtol=rtol))
    spec = decompose.explained_variance(cov, levels=levels)
    eig = np.asarray(spec.eigenvalues)
    return Redundancy(
        int(im.size),
        int(near.sum()),
        float(near.mean()),
        float(decompose.effective_rank(eig, "entropy")),
        float(decompose.effective_rank(eig, "participation")),
        {lv: int(n) for lv, n in spec.n_components.items()},
        float(spec.ratio[0]),
    )

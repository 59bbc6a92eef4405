"""Diagnostics against tests/reference.py, scipy (when installed) and analytic cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ifa_jax import diagnostics as dg
from tests import reference as ref


def _rng(seed=0):
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------- overfitting


@pytest.mark.parametrize("n, m", [(20, 20), (17, 31), (5, 1)])
def test_ks_and_wasserstein_match_naive_reference(n, m):
    rng = _rng(n + m)
    a, b = rng.normal(size=n), rng.normal(0.4, 1.5, size=m)
    b[:1] = a[:1]  # a shared value: a tie across the samples
    assert dg.ks_statistic(a, b) == pytest.approx(ref.ks_statistic(a, b), abs=1e-12)
    assert dg.wasserstein_1d(a, b) == pytest.approx(ref.wasserstein_1d(a, b), rel=1e-10)


def test_ks_and_wasserstein_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = _rng(1)
    a, b = rng.exponential(size=40), rng.exponential(1.3, size=25)
    assert dg.ks_statistic(a, b) == pytest.approx(stats.ks_2samp(a, b).statistic, abs=1e-12)
    assert dg.wasserstein_1d(a, b) == pytest.approx(stats.wasserstein_distance(a, b), rel=1e-10)


def test_distribution_shift_analytic():
    a = np.arange(101.0)  # median 50, IQR 50
    same = dg.distribution_shift(a, a)
    assert (same.ks, same.wasserstein, same.median_shift) == (0.0, 0.0, 0.0)
    moved = dg.distribution_shift(a, a - 10.0)
    assert moved.wasserstein == pytest.approx(10.0)
    assert moved.median_shift == pytest.approx(-10.0)
    assert moved.median_shift_iqr == pytest.approx(-0.2)
    assert moved.wasserstein_iqr == pytest.approx(0.2)
    assert moved.ks == pytest.approx(10 / 101)
    assert moved.ks_critical == pytest.approx(1.358 * math.sqrt(2 / 101))
    far = dg.distribution_shift(a, a + 1000.0)
    assert far.ks == 1.0 and far.ks > far.ks_critical
    const = dg.distribution_shift(np.ones(5), np.full(4, 3.0))  # zero train IQR
    assert const.median_shift_iqr == math.inf and const.iqr_train == 0.0
    assert dg.distribution_shift(np.ones(5), np.ones(3)).median_shift_iqr == 0.0


def test_overfitting_report_and_errors():
    rng = _rng(2)
    tr_max, va_max = rng.normal(5, 1, 60), rng.normal(3, 1, 40)
    tr_min, va_min = rng.normal(-1, 1, 60), rng.normal(-1, 1, 40)
    s_tr, s_va = rng.normal(size=(60, 4)), rng.normal(size=(40, 4))
    out = dg.overfitting(tr_max, tr_min, va_max, va_min, train_importance=s_tr, val_importance=s_va)
    assert set(out) == {"cam_max", "cam_min", "cam_mass", "importance_norm"}
    assert out["cam_max"].median_shift < 0 and out["cam_max"].ks > out["cam_max"].ks_critical
    assert out["cam_mass"].ks == pytest.approx(ref.ks_statistic(s_tr.sum(1), s_va.sum(1)))
    assert isinstance(out["cam_max"].ks, float) and out["cam_max"].n_val == 40
    with pytest.raises(ValueError, match="both"):
        dg.overfitting(tr_max, tr_min, va_max, va_min, train_importance=s_tr)
    with pytest.raises(ValueError, match="val.*empty"):
        dg.overfitting(tr_max, tr_min, [], va_min)
    with pytest.raises(ValueError, match="non-finite"):
        dg.distribution_shift([1.0, np.nan], [1.0])


# --------------------------------------------------------------------------- outliers


def _classes(seed=0, n=60, k=5, c=3):
    rng = _rng(seed)
    labels = np.arange(n) % c
    centres = rng.normal(0, 5, size=(c, k))
    s = centres[labels] + rng.normal(size=(n, k)) * np.linspace(0.5, 2, k)
    return s, labels, c


def _summary(s, labels, c):
    """What the analysis Summary holds: class means, counts, total covariance (ddof=0)."""
    means = np.stack([s[labels == j].mean(0) for j in range(c)])
    counts = np.bincount(labels, minlength=c).astype(float)
    cen = s - s.mean(0)
    return means, counts, cen.T @ cen / len(s)


def test_within_class_covariance_from_summary_statistics():
    s, labels, c = _classes()
    means, counts, cov = _summary(s, labels, c)
    got = dg.within_class_covariance(cov, means, counts, ddof=0)
    np.testing.assert_allclose(got, ref.within_class_covariance(s, labels), rtol=1e-10)
    unbiased = cov * len(s) / (len(s) - 1)
    np.testing.assert_allclose(
        dg.within_class_covariance(unbiased, means, counts, ddof=1), got, rtol=1e-10
    )
    # a class without counted samples (NaN row, count 0) is ignored
    means4 = np.vstack([means, np.full(5, np.nan)])
    np.testing.assert_allclose(
        dg.within_class_covariance(cov, means4, np.r_[counts, 0.0]), got, rtol=1e-10
    )
    with pytest.raises(ValueError, match="degrees of freedom"):
        dg.within_class_covariance(cov, means, np.array([1.0, 1.0, 1.0]))


@pytest.mark.parametrize("r", [1, 3, 5])
def test_outlier_scores_match_reference(r):
    s, labels, c = _classes(1)
    means, counts, cov = _summary(s, labels, c)
    w = dg.within_class_covariance(cov, means, counts)
    got = dg.outlier_scores(s, labels, means, w, r)
    np.testing.assert_allclose(got, ref.mahalanobis(s, labels, means, w, r), rtol=1e-8)
    if r == 5:  # full rank: the textbook Mahalanobis distance
        x = s - means[labels]
        want = np.sqrt(np.einsum("nk,kl,nl->n", x, np.linalg.inv(w), x))
        np.testing.assert_allclose(got, want, rtol=1e-8)


def test_planted_outlier_ranks_first_and_singular_covariance_is_handled():
    s, labels, c = _classes(2, k=6)
    s[:, 5] = 1.0  # a constant channel: the covariance is singular
    s[17] += np.array([0, 0, 12.0, 0, 0, 0])
    means, counts, cov = _summary(s, labels, c)
    w = dg.within_class_covariance(cov, means, counts)
    out = dg.outliers(s, labels, means, w, n_components=6, worst=3)
    assert out.indices[0] == 17 and out.labels[0] == labels[17]
    assert out.n_components == 5  # the null direction is dropped (pseudo-inverse)
    assert all(np.isfinite(out.distances)) and out.distances[0] > 3 * out.median
    assert list(out.distances) == sorted(out.distances, reverse=True)
    auto = dg.outliers(s, labels, means, w)  # n_components for 95% of the variance
    assert 1 <= auto.n_components <= 5


def test_outlier_errors():
    s, labels, c = _classes(3)
    means, _, cov = _summary(s, labels, c)
    with pytest.raises(ValueError, match="label 7"):
        dg.outlier_scores(s, np.where(labels == 0, 7, labels), means, cov, 2)
    bad = means.copy()
    bad[1] = np.nan
    with pytest.raises(ValueError, match=r"class\(es\) \[1\]"):
        dg.outlier_scores(s, labels, bad, cov, 2)
    with pytest.raises(ValueError, match="n_components"):
        dg.outlier_scores(s, labels, means, cov, 0)
    with pytest.raises(ValueError, match="ints"):
        dg.outlier_scores(s, labels.astype(float), means, cov, 2)
    with pytest.raises(ValueError, match="zero"):
        dg.outlier_scores(s, labels, means, np.zeros((5, 5)), 2)


# --------------------------------------------------------------------------- confounders


def test_shared_channels():
    im = np.array(
        [
            [5.0, 4.0, 0.1, -1.0, 2.0],
            [5.0, 0.2, 3.0, -1.0, 2.2],
            [np.nan] * 5,
            [4.0, 0.0, 0.0, -2.0, 1.8],
        ]
    )
    present = np.array([True, True, False, True])
    out = dg.shared_channels(im, present=present, n_top=3, threshold=0.8)
    rows = im[present]
    assert out.channels == (0, 4, 1)  # by mean over classes; negative-mean channel 3 skipped
    for k, common in zip(out.channels, out.commonality):
        assert common == pytest.approx(rows[:, k].min() / rows[:, k].max())
    assert out.commonality[0] == pytest.approx(0.8) and out.n_shared == 2
    assert out.classes == (0, 1, 3)
    assert dg.shared_channels(im, present=present).channels == (0, 4, 1, 2)
    with pytest.raises(ValueError, match=r"\[2\].*present"):
        dg.shared_channels(im)
    with pytest.raises(ValueError, match="at least 2"):
        dg.shared_channels(im, present=np.array([True, False, False, False]))
    with pytest.raises(ValueError, match="bool"):
        dg.shared_channels(im, present=np.array([1, 1, 0, 1]))


@pytest.mark.parametrize(
    "spatial, width", [((9,), 2), ((5, 6), 1), ((4, 5, 6), 1)], ids=["1d", "2d", "3d"]
)
def test_border_mass_matches_reference(spatial, width):
    cm = _rng(4).normal(size=(3, *spatial))
    out = dg.border_mass(cm, width=width)
    for c in range(3):
        assert out.per_class[c] == pytest.approx(ref.border_share(cm[c], width), rel=1e-12)
    ring = dg.border_ring(spatial, width)
    assert out.uniform == pytest.approx(ring.mean())
    assert out.worst == max(out.per_class.values())
    uniform = dg.border_mass(np.ones((1, *spatial)), width=width)
    assert uniform.per_class[0] == pytest.approx(uniform.uniform)


def test_border_mass_centre_and_edges_and_errors():
    cm = np.zeros((3, 5, 5))
    cm[0, 2, 2] = -4.0  # all mass at the centre
    cm[1, 0, 3] = 1.0  # all mass on the border
    cm[2] = np.nan
    out = dg.border_mass(cm, present=np.array([True, True, False]))
    assert out.per_class == {0: 0.0, 1: 1.0} and out.worst_class == 1
    assert out.uniform == pytest.approx(16 / 25)
    with pytest.raises(ValueError, match="whole grid"):
        dg.border_mass(cm[:2], width=3)
    with pytest.raises(ValueError, match="zero everywhere"):
        dg.border_mass(np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="spatial"):
        dg.border_mass(np.zeros(4))
    both = dg.confounders(
        np.array([[1.0, 2.0], [1.0, 1.0], [0.0, 0.0]]),
        cm,
        present=np.array([True, True, False]),
        n_top=2,
    )
    assert both.shared.channels == (1, 0) and both.border.per_class[1] == 1.0


# --------------------------------------------------------------------------- redundancy


def test_redundancy_analytic():
    im_all = np.array([4.0, 0.0, -2.0, 0.001, 1.0, 0.0])
    cov = np.diag([3.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    out = dg.redundancy(im_all, cov)
    assert out.n_channels == 6 and out.near_zero_count == 3
    assert out.near_zero_share == pytest.approx(0.5)
    assert out.first_component_share == pytest.approx(0.75, rel=1e-6)
    assert out.n_components == {90: 2, 95: 2, 99: 2}
    assert out.participation_ratio == pytest.approx(16 / 10, rel=1e-5)
    assert out.effective_rank == pytest.approx(ref.effective_rank([3.0, 1.0], "entropy"), rel=1e-5)
    assert 1.0 < out.effective_rank < 2.0
    assert isinstance(out.effective_rank, float)
    with pytest.raises(ValueError, match="expected"):
        dg.redundancy(im_all, np.eye(5))

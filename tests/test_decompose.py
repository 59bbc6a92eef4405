"""Selection masks and decompositions against tests/reference.py and analytic cases."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ifa_jax import cams
from ifa_jax import decompose as dc
from tests import reference as ref

C, K = 3, 10


def _im(seed=0):
    return np.array(jax.random.normal(jax.random.key(seed), (C, K)))


def _cov(seed=0, k=6, n=40):
    s = np.asarray(jax.random.normal(jax.random.key(seed), (n, k))) * np.arange(1, k + 1)
    s = s - s.mean(0)
    return s.T @ s / n


# --------------------------------------------------------------------------- selection


@pytest.mark.parametrize(
    "ratio, n", [(0.25, 3), (0.24, 2), (0.35, 4), (0.01, 1), (1.0, 10), (0.1, 1), (0.15, 2)]
)
def test_n_selected_rounds_half_up_at_least_one(ratio, n):
    assert dc.n_selected(ratio, K) == n


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5, float("nan"), None])
def test_ratio_outside_unit_interval_is_an_error(ratio):
    with pytest.raises(ValueError, match="ratio"):
        dc.select(_im(), "top", ratio=ratio)


@pytest.mark.parametrize("mode", ["top", "diff_top", "reverse_diff_top", "max"])
@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.55])
def test_ranked_modes_match_reference(mode, ratio):
    im, diff = _im(1), _im(2)
    got = dc.select(im, mode, ratio=ratio, im_diff=diff)
    want = ref.select(im, mode, n=dc.n_selected(ratio, K), diff=diff)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == jnp.float32 and got.shape == (C, K)
    expect = {"max": 1, "reverse_diff_top": K - dc.n_selected(ratio, K)}.get(
        mode, dc.n_selected(ratio, K)
    )
    np.testing.assert_array_equal(got.sum(1), expect)  # exactly n: not one too few


def test_top_counts_exactly_and_picks_largest():
    row = np.array([[0.5, 3.0, -1.0, 2.0, 0.0]])
    np.testing.assert_array_equal(dc.select(row, "top", ratio=0.4), [[0, 1, 0, 1, 0]])
    np.testing.assert_array_equal(dc.select(row, "max"), [[0, 1, 0, 0, 0]])
    np.testing.assert_array_equal(dc.select(row[0], "top", ratio=0.2), [0, 1, 0, 0, 0])


def test_ties_broken_by_lower_channel_index():
    row = np.array([[1.0, 2.0, 2.0, 0.0, 2.0, 2.0]])
    np.testing.assert_array_equal(dc.select(row, "top", ratio=0.5), [[0, 1, 1, 0, 1, 0]])
    np.testing.assert_array_equal(dc.select(row, "max"), [[0, 1, 0, 0, 0, 0]])
    diff = np.array([[-2.0, 2.0, 0.0, 2.0, 1.0, -2.0]])  # |.| ties across signs
    np.testing.assert_array_equal(
        dc.select(row, "diff_top", ratio=0.5, im_diff=diff), [[1, 1, 0, 1, 0, 0]]
    )
    np.testing.assert_array_equal(
        dc.select(row, "reverse_diff_top", ratio=0.5, im_diff=diff), [[0, 0, 1, 0, 1, 1]]
    )


def test_diff_modes_read_im_diff_not_importance():
    im = np.array([[5.0, 4.0, 0.0, 0.0]])
    diff = np.array([[0.0, 0.1, -3.0, 1.0]])
    np.testing.assert_array_equal(
        dc.select(im, "diff_top", ratio=0.25, im_diff=diff), [[0, 0, 1, 0]]
    )
    with pytest.raises(ValueError, match="im_diff"):
        dc.select(im, "diff_top", ratio=0.25)
    with pytest.raises(ValueError, match="shape"):
        dc.select(im, "diff_top", ratio=0.25, im_diff=diff[:, :3])
    with pytest.raises(ValueError, match="empty"):
        dc.select(im, "reverse_diff_top", ratio=1.0, im_diff=diff)


def test_index_freq_all():
    im = _im(3)
    np.testing.assert_array_equal(dc.select(im, "index", index=4), ref.select(im, "index", index=4))
    np.testing.assert_array_equal(dc.select(im, "all"), np.ones((C, K)))
    thr = -0.2
    np.testing.assert_array_equal(
        dc.select(im, "freq", threshold=thr), ref.select(im, "freq", threshold=thr)
    )
    # strictly above: a value equal to the threshold is not selected
    np.testing.assert_array_equal(
        dc.select(np.array([[1.0, 2.0]]), "freq", threshold=1.0), [[0, 1]]
    )
    for kw, match in (({"index": K}, "out of range"), ({"index": None}, "index=")):
        with pytest.raises(ValueError, match=match):
            dc.select(im, "index", **kw)
    with pytest.raises(ValueError, match="threshold="):
        dc.select(im, "freq")
    with pytest.raises(ValueError, match=r"class\(es\) \[1\].*largest IM is -1"):
        dc.select(np.array([[1.0, 0.0], [-1.0, -2.0]]), "freq", threshold=0.5)


def test_random_mode_is_keyed_and_counts():
    im = _im()
    m1 = dc.select(im, "random", ratio=0.3, key=jax.random.key(0))
    m2 = dc.select(im, "random", ratio=0.3, key=jax.random.key(0))
    m3 = dc.select(im, "random", ratio=0.3, key=jax.random.key(1))
    np.testing.assert_array_equal(m1, m2)
    assert not np.array_equal(m1, m3)
    np.testing.assert_array_equal(np.asarray(m1).sum(1), 3)
    assert len({tuple(r) for r in np.asarray(m1)}) > 1  # rows drawn independently
    with pytest.raises(ValueError, match="key"):
        dc.select(im, "random", ratio=0.3)


def test_nan_rows_name_the_class_unless_mode_ignores_values():
    im = _im()
    im[1] = np.nan
    for mode in ("top", "max", "freq"):
        with pytest.raises(ValueError, match=r"class\(es\) \[1\]"):
            dc.select(im, mode, ratio=0.2, threshold=0.0)
    with pytest.raises(ValueError, match=r"im_diff.*\[1\]"):
        dc.select(im, "diff_top", ratio=0.2, im_diff=im)
    assert np.asarray(dc.select(im, "all")).sum() == C * K
    assert np.asarray(dc.select(im, "index", index=0)).sum() == C


def test_select_unknown_mode_and_jit():
    with pytest.raises(ValueError, match="unknown selection mode"):
        dc.select(_im(), "bottom")
    f = jax.jit(dc.select, static_argnames=("mode", "ratio"))
    im = _im(4)
    np.testing.assert_array_equal(f(im, mode="top", ratio=0.3), dc.select(im, "top", ratio=0.3))


# --------------------------------------------------------------------------- spectra


def test_explained_variance_analytic_diagonal():
    sp = dc.explained_variance(np.diag([1.0, 4.0, 2.0, 3.0]))
    np.testing.assert_allclose(sp.eigenvalues, [4, 3, 2, 1], rtol=1e-6)
    np.testing.assert_allclose(sp.ratio, [0.4, 0.3, 0.2, 0.1], rtol=1e-6)
    np.testing.assert_allclose(sp.cumulative, [0.4, 0.7, 0.9, 1.0], rtol=1e-6)
    assert {k: int(v) for k, v in sp.n_components.items()} == {90: 3, 95: 4, 99: 4}
    # directions are the permuted unit vectors, with positive signs
    np.testing.assert_allclose(np.abs(sp.directions), np.eye(4)[:, [1, 3, 2, 0]], atol=1e-6)
    assert np.all(np.asarray(sp.directions).max(0) > 0)


def test_explained_variance_matches_reference_and_is_rotation_invariant():
    cov = _cov(0)
    sp = dc.explained_variance(cov, levels=(50, 90, 99))
    w, ratio, cum, n = ref.spectrum(cov, levels=(50, 90, 99))
    np.testing.assert_allclose(sp.eigenvalues, w, rtol=1e-4)
    np.testing.assert_allclose(sp.ratio, ratio, rtol=1e-4)
    np.testing.assert_allclose(sp.cumulative, cum, rtol=1e-5)
    assert {k: int(v) for k, v in sp.n_components.items()} == n
    V = np.asarray(sp.directions)
    np.testing.assert_allclose(V.T @ V, np.eye(6), atol=1e-5)
    np.testing.assert_allclose(
        V @ np.diag(np.asarray(sp.eigenvalues)) @ V.T, cov, rtol=1e-4, atol=1e-4
    )
    q, _ = np.linalg.qr(np.asarray(jax.random.normal(jax.random.key(5), (6, 6))))
    rot = dc.explained_variance(q @ cov @ q.T)
    np.testing.assert_allclose(rot.eigenvalues, sp.eigenvalues, rtol=1e-4)
    P = dc.principal_directions(cov, 2)
    assert P.shape == (6, 2)
    np.testing.assert_allclose(P, V[:, :2])


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((3, 3)), "all zero"),
        (np.ones((3, 2)), "square"),
        (np.array([[1.0, 2.0], [0.0, 1.0]]), "symmetric"),
        (np.array([[np.nan, 0.0], [0.0, 1.0]]), "non-finite"),
    ],
)
def test_explained_variance_bad_covariance(bad, match):
    with pytest.raises(ValueError, match=match):
        dc.explained_variance(bad)


def test_principal_directions_bad_r():
    with pytest.raises(ValueError, match="r must"):
        dc.principal_directions(np.eye(3), 4)


def test_class_svd_centred_and_not():
    im = _im(6)
    out = dc.class_svd(im, center=False)
    np.testing.assert_allclose(out.singular_values, np.linalg.svd(im, compute_uv=False), rtol=1e-5)
    np.testing.assert_allclose(out.class_scores @ out.directions.T, im, atol=1e-5)
    cen = dc.class_svd(im)
    centred = im - im.mean(0)
    np.testing.assert_allclose(
        cen.singular_values, np.linalg.svd(centred, compute_uv=False), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(np.asarray(cen.class_scores).sum(0), 0.0, atol=1e-5)
    assert float(cen.singular_values[-1]) < 1e-5  # rank <= C - 1 after centring
    # a rank-one matrix: one component carries everything
    r1 = np.outer([1.0, 2.0, -1.0], np.arange(K, dtype=float))
    out = dc.class_svd(r1, center=False)
    assert float(out.ratio[0]) == pytest.approx(1.0, abs=1e-6)
    assert int(out.n_components[99]) == 1
    bad = im.copy()
    bad[2] = np.nan
    # Names the classes and class_svd's own fix, not select()'s modes.
    with pytest.raises(ValueError, match=r"\[2\].*im_class\[summary\.present\]") as e:
        dc.class_svd(bad)
    assert "mode" not in str(e.value)


def test_effective_rank_analytic_and_reference():
    for kind in ("entropy", "participation"):
        assert float(dc.effective_rank(jnp.asarray([2.0, 2.0, 2.0, 0.0]), kind)) == pytest.approx(
            3.0, rel=1e-5
        )
        assert float(dc.effective_rank(jnp.asarray([5.0, 0.0, 0.0]), kind)) == pytest.approx(
            1.0, rel=1e-6
        )
    w = np.asarray(dc.explained_variance(_cov(1)).eigenvalues)
    for kind in ("entropy", "participation"):
        assert float(dc.effective_rank(w, kind)) == pytest.approx(
            ref.effective_rank(w, kind), rel=1e-5
        )
    assert float(dc.effective_rank(w, "participation")) <= float(dc.effective_rank(w)) + 1e-5
    with pytest.raises(ValueError, match="all zero"):
        dc.effective_rank(np.zeros(3))
    with pytest.raises(ValueError, match="kind"):
        dc.effective_rank(np.ones(3), "renyi")


def test_near_zero_channels():
    im = np.array([10.0, -0.05, 0.09, -10.0, 0.11, 3.0])
    np.testing.assert_array_equal(
        dc.near_zero_channels(im, rtol=0.01), [False, True, True, False, False, False]
    )
    np.testing.assert_array_equal(dc.near_zero_channels(np.zeros(3)), [True] * 3)
    with pytest.raises(ValueError, match="rtol"):
        dc.near_zero_channels(im, rtol=1.0)
    with pytest.raises(ValueError, match="non-finite"):
        dc.near_zero_channels(np.array([np.nan, 1.0]))


# --------------------------------------------------------------------------- component CAMs


@pytest.mark.parametrize(
    "shape", [(2, 7, 5), (2, 3, 4, 5), (1, 3, 2, 2, 5)], ids=["1d", "2d", "3d"]
)
def test_component_cam_matches_reference(shape):
    M = jax.random.normal(jax.random.key(len(shape)), shape)
    v = jax.random.normal(jax.random.key(9), (shape[-1],))
    f = jax.jit(dc.component_cam)
    np.testing.assert_allclose(f(M, v), ref.component_cam(M, v), rtol=1e-5, atol=1e-5)
    # v = ones is the raw CAM, v = e_k is M_k, columns give one CAM each
    np.testing.assert_allclose(f(M, jnp.ones(shape[-1])), cams.reduce(M).cam, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(f(M, jnp.eye(shape[-1])[2]), M[..., 2])
    np.testing.assert_allclose(
        dc.component_cam(M, jnp.stack([v, 2 * v], 1))[..., 1],
        2 * ref.component_cam(M, v),
        rtol=1e-5,
        atol=1e-5,
    )


def test_component_cam_and_project_shape_errors():
    with pytest.raises(ValueError, match="K = 5"):
        dc.component_cam(jnp.ones((2, 3, 5)), jnp.ones(4))
    with pytest.raises(ValueError, match="spatial"):
        dc.component_cam(jnp.ones((2, 5)), jnp.ones(5))
    with pytest.raises(ValueError, match="K = 4"):
        dc.project(jnp.ones((3, 4)), jnp.ones((5, 2)))


def test_project_with_and_without_mean():
    s = np.asarray(jax.random.normal(jax.random.key(2), (8, 6)))
    P = np.asarray(dc.principal_directions(_cov(2), 3))
    np.testing.assert_allclose(dc.project(s, P), s @ P, rtol=1e-5, atol=1e-6)
    mu = s.mean(0)
    scores = np.asarray(dc.project(s, P, mean=mu))
    np.testing.assert_allclose(scores, (s - mu) @ P, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores.mean(0), 0.0, atol=1e-5)

"""Faithfulness metrics (ROAD, ARCC, faithfulness correlation, pixel-flipping) against
naive NumPy references: loops over samples, runs and percentiles, the imputation system
built cell by cell and solved by scipy's sparse solver, the stencil written out."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import sparse, stats
from scipy.sparse.linalg import spsolve

from ifa_jax import metrics
from ifa_jax.metrics.arcc import complexity

CLASSES = 3

# pytorch-grad-cam's 2-D weights, written out; 1-D and 3-D: the binomial kernel's
# [1, 2, 1] outer products without the centre, normalised.
STENCILS = {
    1: {(-1,): 0.5, (1,): 0.5},
    2: {
        (dy, dx): (1 / 12 if dy and dx else 1 / 6)
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
        if dy or dx
    },
    3: {
        o: {1: 4, 2: 2, 3: 1}[sum(map(bool, o))] / 56
        for o in itertools.product((-1, 0, 1), repeat=3)
        if any(o)
    },
}


def _weights(shape, seed=0):
    return np.random.default_rng(seed).normal(size=(CLASSES, *shape)).astype(np.float32)


_SCORES = {}


def make_score(W):
    """A smooth score of every input value: tanh(<x, W[target]> / 4); one function per W,
    so the metrics' compilations are reused across tests."""
    if id(W) not in _SCORES:
        _SCORES[id(W)] = (W, _score_of(W))  # W kept alive: its id stays its own
    return _SCORES[id(W)][1]


def _score_of(W):
    Wj = jnp.asarray(W)

    def score(x, target):
        return jnp.tanh(jnp.sum(x * Wj[target], axis=tuple(range(1, x.ndim))) / 4)

    return score


def np_score(W, x, target):
    return np.tanh(np.sum(x * W[target]) / 4)


def ref_impute(img, removed, noise_draw=None, noise=0.0):
    """Each removed cell = the weighted mean of its in-bounds neighbours (known or not):
    one sparse system per image, built cell by cell, solved in float64."""
    shape = removed.shape
    cells = list(itertools.product(*map(range, shape)))
    unknown = [c for c in cells if removed[c]]
    vid = {c: k for k, c in enumerate(unknown)}
    A = sparse.lil_matrix((len(unknown), len(unknown)))
    b = np.zeros((len(unknown), img.shape[-1]))
    for c in unknown:
        k, total = vid[c], 0.0
        for off, w in STENCILS[len(shape)].items():
            nb = tuple(i + o for i, o in zip(c, off))
            if not all(0 <= i < n for i, n in zip(nb, shape)):
                continue
            total += w
            if removed[nb]:
                A[k, vid[nb]] = -w
            else:
                b[k] += w * img[nb].astype(np.float64)
        A[k, k] = total
    out = img.astype(np.float64).copy()
    if unknown:
        sol = spsolve(sparse.csc_matrix(A), b).reshape(len(unknown), -1)
        for c in unknown:
            out[c] = sol[vid[c]]
            if noise_draw is not None:
                out[c] += noise * noise_draw[c]
    return out


def ref_road(W, x, sal, target, percentiles):
    """pytorch-grad-cam's ROAD, sample by sample: keep the cells below the percentile
    (of 1 - sal for LeRF), impute the rest, report score(imputed) - score(x)."""
    B, P = x.shape[0], len(percentiles)
    morf, lerf = np.zeros((B, P)), np.zeros((B, P))
    for i in range(B):
        y = np_score(W, x[i], target[i])
        for j, p in enumerate(percentiles):
            for out, values in ((morf, sal[i]), (lerf, np.float32(1) - sal[i])):
                keep = values < np.percentile(values, p)
                out[i, j] = np_score(W, ref_impute(x[i], ~keep), target[i]) - y
    return morf, lerf


@pytest.fixture(scope="module")
def case2d():
    """(W, x (3, 6, 5, 2), saliency (3, 6, 5) with a plateau of zeros, targets)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 6, 5, 2)).astype(np.float32)
    sal = rng.random((3, 6, 5)).astype(np.float32)
    sal[1, :3] = 0.0  # ties: a percentile that lands on the plateau removes all of it
    return _weights((6, 5, 2)), x, sal, np.array([0, 2, 1])


# --------------------------------------------------------------------------- ROAD


def test_neighbour_weights_match_the_stencils():
    for nd, stencil in STENCILS.items():
        w = metrics.neighbour_weights(nd)
        assert w.shape == (3,) * nd and w[(1,) * nd] == 0
        for off, value in stencil.items():
            assert w[tuple(o + 1 for o in off)] == pytest.approx(value)
        assert w.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="1-3 spatial axes; got 4"):
        metrics.neighbour_weights(4)


def test_road_masks_are_numpy_percentile_thresholds(case2d):
    _, _, sal, _ = case2d
    percentiles = [0, 10, 33.3, 50, 80, 90, 100]
    for order in ("morf", "lerf"):
        got = np.asarray(metrics.road_masks(sal, percentiles, order))
        for i in range(sal.shape[0]):
            values = sal[i] if order == "morf" else np.float32(1) - sal[i]
            for j, p in enumerate(percentiles):
                np.testing.assert_array_equal(got[i, j], ~(values < np.percentile(values, p)))
    # the plateau: MoRF at 10 on image 1 (a third of it zeros) removes every cell
    assert np.asarray(metrics.road_masks(sal, [10], "morf"))[1, 0].all()


def test_road_masks_bad_inputs(case2d):
    sal = case2d[2]
    with pytest.raises(ValueError, match="not one of"):
        metrics.road_masks(sal, [50], "most")
    with pytest.raises(ValueError, match=r"in \[0, 100\]"):
        metrics.road_masks(sal, [120], "morf")
    with pytest.raises(ValueError, match="non-empty"):
        metrics.road_masks(sal, [], "morf")


@pytest.mark.parametrize("shape", [(12,), (6, 5), (4, 3, 3)], ids=["1d", "2d", "3d"])
def test_imputation_solves_the_neighbour_system(shape):
    rng = np.random.default_rng(len(shape))
    x = rng.normal(size=(2, *shape, 2)).astype(np.float32)
    removed = rng.random((2, *shape)) < 0.6
    removed[1] = False
    removed[(1, Ellipsis, slice(1, 3))] = True  # a block along the last axis
    got = np.asarray(metrics.noisy_linear_imputation(x, removed, noise=0.0))
    want = np.stack([ref_impute(x[i], removed[i]) for i in range(2)])
    np.testing.assert_allclose(got, want, atol=2e-5)
    np.testing.assert_array_equal(got[~removed], x[~removed])  # known cells kept


def test_imputation_noise_is_added_to_removed_cells_only():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 5, 4, 1)).astype(np.float32)
    removed = rng.random((2, 5, 4)) < 0.5
    key = jax.random.key(3)
    plain = np.asarray(metrics.noisy_linear_imputation(x, removed, noise=0.0))
    noisy = np.asarray(metrics.noisy_linear_imputation(x, removed, key=key, noise=0.5))
    draw = np.asarray(jax.random.normal(key, x.shape))
    np.testing.assert_allclose(
        noisy - plain, np.where(removed[..., None], 0.5 * draw, 0), atol=1e-6
    )
    with pytest.raises(ValueError, match="needs a PRNG key"):
        metrics.noisy_linear_imputation(x, removed, noise=0.5)
    with pytest.raises(ValueError, match="noise must be"):
        metrics.noisy_linear_imputation(x, removed, noise=-1.0)
    with pytest.raises(ValueError, match="tol must be"):
        metrics.noisy_linear_imputation(x, removed, noise=0.0, tol=0.0)
    with pytest.raises(ValueError, match="removed has shape"):
        metrics.noisy_linear_imputation(x, removed[:, :3], noise=0.0)


def test_road_matches_the_reference(case2d):
    W, x, sal, target = case2d
    percentiles = (20, 40, 60, 80)  # ARCC's (one compilation for both tests); 20 on a plateau
    r = metrics.road(make_score(W), x, sal, target, percentiles=percentiles, noise=0.0)
    morf, lerf = ref_road(W, x, sal, target, percentiles)
    np.testing.assert_allclose(np.asarray(r.morf), morf, atol=1e-5)
    np.testing.assert_allclose(np.asarray(r.lerf), lerf, atol=1e-5)
    np.testing.assert_allclose(np.asarray(r.morf_average), morf.mean(1), atol=1e-5)
    np.testing.assert_allclose(np.asarray(r.combined), (lerf.mean(1) - morf.mean(1)) / 2, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(r.percentiles), percentiles)


@pytest.mark.parametrize("shape", [(12,), (4, 3, 3)], ids=["1d", "3d"])
def test_road_other_ranks_match_the_reference(shape):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, *shape, 1)).astype(np.float32)
    sal = rng.random((2, *shape)).astype(np.float32)
    W, target = _weights((*shape, 1), seed=2), np.array([1, 0])
    r = metrics.road(make_score(W), x, sal, target, percentiles=(30, 70), noise=0.0)
    morf, lerf = ref_road(W, x, sal, target, (30, 70))
    np.testing.assert_allclose(np.asarray(r.morf), morf, atol=1e-5)
    np.testing.assert_allclose(np.asarray(r.lerf), lerf, atol=1e-5)


def test_road_noise_is_per_image(case2d):
    """Noise drawn per image: the same with any images_per_batch, another with another key."""
    W, x, sal, target = case2d
    score, key = make_score(W), jax.random.key(11)
    p = (20, 60)
    a = metrics.road(score, x, sal, target, key=key, percentiles=p, images_per_batch=1)
    b = metrics.road(score, x, sal, target, key=key, percentiles=p, images_per_batch=3)
    c = metrics.road(
        score, x, sal, target, key=jax.random.key(12), percentiles=p, images_per_batch=3
    )
    np.testing.assert_allclose(np.asarray(a.morf), np.asarray(b.morf), atol=1e-6)
    np.testing.assert_allclose(np.asarray(a.lerf), np.asarray(b.lerf), atol=1e-6)
    assert not np.allclose(np.asarray(a.morf), np.asarray(c.morf), atol=1e-6)


def test_road_bad_inputs(case2d):
    W, x, sal, target = case2d
    score = make_score(W)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        metrics.road(score, x, sal, target)
    with pytest.raises(ValueError, match=r"saliency must lie in \[0, 1\]"):
        metrics.road(score, x, sal * 2, target, noise=0.0)
    with pytest.raises(ValueError, match="saliency has shape"):
        metrics.road(score, x, sal[:, :4], target, noise=0.0)
    with pytest.raises(ValueError, match="images_per_batch"):
        metrics.road(score, x, sal, target, noise=0.0, images_per_batch=0)


# --------------------------------------------------------------------------- faithfulness


def _cell_subsets(rng, B, R, n, S):
    return np.stack([[rng.choice(n, S, replace=False) for _ in range(R)] for _ in range(B)])


def test_faithfulness_correlation_matches_the_reference(case2d):
    W, x, sal, target = case2d
    B, n, R = x.shape[0], 30, 8
    subsets = _cell_subsets(np.random.default_rng(3), B, R, n, 6)
    fc = metrics.faithfulness_correlation(make_score(W), x, sal, target, subsets=subsets)
    for i in range(B):
        flat, base = x[i].reshape(n, -1), x[i].min()  # Quantus's 'black': the image's min
        sums, drops = [], []
        for r in range(R):
            pert = flat.copy()
            pert[subsets[i, r]] = base
            drops.append(
                np_score(W, x[i], target[i]) - np_score(W, pert.reshape(x[i].shape), target[i])
            )
            sums.append(sal[i].reshape(-1)[subsets[i, r]].sum())
        np.testing.assert_allclose(np.asarray(fc.attribution_sums[i]), sums, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(fc.score_drops[i]), drops, atol=1e-5)
        assert fc.correlation[i] == pytest.approx(stats.pearsonr(sums, drops)[0], abs=1e-4)


def test_faithfulness_correlation_draws_subsets_per_image(case2d):
    W, x, sal, target = case2d
    key = jax.random.key(4)
    idx = np.asarray(metrics.random_subsets(key, 3, 30, 5, 7))
    assert idx.shape == (3, 5, 7) and idx.min() >= 0 and idx.max() < 30
    assert all(len(set(row)) == 7 for row in idx.reshape(-1, 7))
    a = metrics.faithfulness_correlation(
        make_score(W), x, sal, target, key=key, nr_runs=5, subset_size=7, images_per_batch=2
    )
    b = metrics.faithfulness_correlation(make_score(W), x, sal, target, subsets=idx)
    np.testing.assert_allclose(np.asarray(a.score_drops), np.asarray(b.score_drops), atol=1e-6)


def test_faithfulness_correlation_undefined_and_bad_inputs(case2d):
    W, x, sal, target = case2d

    def flat_score(x, target):
        return jnp.zeros(x.shape[0])

    fc = metrics.faithfulness_correlation(
        flat_score, x, sal, target, key=jax.random.key(0), nr_runs=4, subset_size=3
    )
    assert fc.correlation == [None, None, None]  # constant drops: r undefined, not NaN
    score = make_score(W)
    with pytest.raises(ValueError, match="exceeds the 30 cells"):
        metrics.faithfulness_correlation(
            score, x, sal, target, key=jax.random.key(0), subset_size=31
        )
    with pytest.raises(ValueError, match="need a PRNG key"):
        metrics.faithfulness_correlation(score, x, sal, target, subset_size=3)
    with pytest.raises(ValueError, match="repeat a cell"):
        metrics.faithfulness_correlation(score, x, sal, target, subsets=np.zeros((3, 4, 2), int))
    with pytest.raises(ValueError, match="subsets must be"):
        metrics.faithfulness_correlation(score, x, sal, target, subsets=np.zeros((2, 4, 2), int))
    with pytest.raises(ValueError, match="baseline"):
        metrics.faithfulness_correlation(
            score, x, sal, target, key=jax.random.key(0), subset_size=3, baseline="grey"
        )


@pytest.mark.parametrize("step, baseline", [(1, "black"), (7, 0.5)])
def test_pixel_flipping_matches_the_reference(case2d, step, baseline):
    W, x, sal, target = case2d
    pf = metrics.pixel_flipping(
        make_score(W), x, sal, target, cells_per_step=step, baseline=baseline, images_per_batch=2
    )
    n = 30
    steps = -(-n // step)
    for i in range(x.shape[0]):
        order = np.argsort(-sal[i].reshape(-1), kind="stable")
        base = x[i].min() if baseline == "black" else baseline
        pert, curve = x[i].reshape(n, -1).copy(), []
        for s in range(steps):
            pert[order[s * step : (s + 1) * step]] = base
            curve.append(np_score(W, pert.reshape(x[i].shape), target[i]))
        np.testing.assert_allclose(np.asarray(pf.curve[i]), curve, atol=1e-5)
        fraction = np.minimum((np.arange(steps) + 1) * step, n) / n
        np.testing.assert_allclose(np.asarray(pf.fraction), fraction, rtol=1e-6)
        assert float(pf.auc[i]) == pytest.approx(np.trapezoid(curve, fraction), abs=1e-5)
    with pytest.raises(ValueError, match="cells_per_step"):
        metrics.pixel_flipping(make_score(W), x, sal, target, cells_per_step=0)


# --------------------------------------------------------------------------- ARCC


def test_arcc_matches_the_reference(case2d):
    W, x, sal, target = case2d
    rng = np.random.default_rng(9)
    again = rng.random(sal.shape).astype(np.float32)
    seen = []

    def explain_fn(xm, t):
        seen.append(np.asarray(xm))
        return again

    r = metrics.arcc(make_score(W), explain_fn, x, sal, target, noise=0.0)
    np.testing.assert_allclose(seen[0], x * sal[..., None], rtol=1e-6)
    morf, lerf = ref_road(W, x, sal, target, (20, 40, 60, 80))
    road = np.clip(lerf.mean(1) - morf.mean(1), 0, 1)  # 2 x combined
    comp = np.abs(sal).reshape(3, -1).mean(1)
    coh = np.array([(stats.pearsonr(a.ravel(), s.ravel())[0] + 1) / 2 for a, s in zip(again, sal)])
    want = 3 / (1 / coh + 1 / (1 - comp) + 1 / np.maximum(road, 1e-8))
    np.testing.assert_allclose(np.asarray(r.complexity), comp, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(r.coherency), coh, atol=1e-5)
    np.testing.assert_allclose(np.asarray(r.road), road, atol=1e-5)
    np.testing.assert_allclose(np.asarray(r.arcc), want, atol=1e-4)
    np.testing.assert_allclose(np.asarray(complexity(sal)), comp, rtol=1e-6)


def test_arcc_bad_explanations(case2d):
    W, x, sal, target = case2d
    with pytest.raises(ValueError, match="explain_fn returned maps of shape"):
        metrics.arcc(make_score(W), lambda xm, t: sal[:, :2], x, sal, target, noise=0.0)

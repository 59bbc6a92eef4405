"""Localisation and complexity metrics against naive NumPy loops, analytic cases,
invariants and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from ifa_jax import metrics
from ifa_jax.metrics.scores import Scores

SHAPES = {1: (9,), 2: (5, 6), 3: (3, 4, 2)}


def _batch(ndim, seed=0, B=4):
    rng = np.random.default_rng(seed)
    spatial = SHAPES[ndim]
    maps = rng.normal(size=(B, *spatial)).astype(np.float32)
    maps[0] = np.abs(maps[0])  # one map without negative values
    masks = rng.random((B, *spatial)) < 0.3
    masks.reshape(B, -1)[:, 0] = True  # never empty
    return maps, masks


# naive references: one sample at a time, straight from the definitions
def ref_pointing(m, s, weighted=False):
    m, s = m.ravel(), s.ravel()
    hit = float(any(s[i] for i in range(m.size) if m[i] == m.max()))
    return hit * (1 - s.sum() / s.size) if weighted else hit


def ref_energy(m, s):
    pos = np.maximum(m.ravel().astype(np.float64), 0)
    return pos[s.ravel()].sum() / pos.sum()


def ref_mass(m, s):
    m = m.ravel().astype(np.float64)
    return m[s.ravel()].sum() / m.sum()


def ref_rank(m, s):
    m, s = m.ravel(), s.ravel()
    k = int(s.sum())
    top = sorted(range(m.size), key=lambda i: (-m[i], i))[:k]
    return sum(bool(s[i]) for i in top) / k


def ref_gini(m):
    a = np.sort(np.abs(m.ravel().astype(np.float64)))
    n = a.size
    return sum((2 * (i + 1) - n - 1) * a[i] for i in range(n)) / (n * a.sum())


def ref_entropy(m):
    a = np.abs(m.ravel().astype(np.float64))
    p = a / a.sum()
    return -sum(q * np.log(q) for q in p if q > 0)


LOCALISATION = [
    (metrics.pointing_game, ref_pointing),
    (metrics.energy_pointing_game, ref_energy),
    (metrics.relevance_mass_accuracy, ref_mass),
    (metrics.relevance_rank_accuracy, ref_rank),
]


@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("fn,ref", LOCALISATION, ids=lambda f: getattr(f, "__name__", ""))
def test_localisation_matches_a_naive_loop(fn, ref, ndim):
    maps, masks = _batch(ndim, seed=ndim)
    got = fn(maps, masks)
    assert isinstance(got, Scores) and np.asarray(got.value).shape == (len(maps),)
    want = [ref(m, s) for m, s in zip(maps, masks)]
    np.testing.assert_allclose(got.tolist(), want, rtol=1e-5, atol=1e-6)


def test_weighted_pointing_game_matches_a_naive_loop():
    maps, masks = _batch(2)
    want = [ref_pointing(m, s, weighted=True) for m, s in zip(maps, masks)]
    np.testing.assert_allclose(
        metrics.pointing_game(maps, masks, weighted=True).tolist(), want, rtol=1e-6
    )


def test_a_delta_inside_and_outside_the_mask():
    maps = np.zeros((2, 4, 4), np.float32)
    maps[0, 0, 0] = maps[1, 3, 3] = 2.0
    masks = np.zeros((2, 4, 4), bool)
    masks[:, :2, :2] = True
    for fn in (
        metrics.pointing_game,
        metrics.energy_pointing_game,
        metrics.relevance_mass_accuracy,
    ):
        assert fn(maps, masks).tolist() == [1.0, 0.0], fn.__name__
    # the top 4 cells: the delta, then zeros by flat index: (0, 0) (0, 1) (0, 2) (0, 3)
    # in the first map ((0, 0) is the delta), (0, 0) (0, 1) (0, 2) in the second
    assert metrics.relevance_rank_accuracy(maps, masks).tolist() == [0.5, 0.5]
    maps = np.where(masks, maps, maps - 1.0)  # cells outside sink below those inside
    assert metrics.relevance_rank_accuracy(maps, masks).tolist() == [1.0, 0.75]


def test_ties_at_the_maximum_count_as_a_hit():
    maps = np.zeros((1, 6), np.float32)
    maps[0, [1, 4]] = 1.0
    mask = np.zeros((1, 6), bool)
    mask[0, 4] = True
    assert metrics.pointing_game(maps, mask).tolist() == [1.0]


def test_uniform_map_scores_the_mask_share():
    maps = np.ones((1, 10), np.float32)
    mask = np.zeros((1, 10), bool)
    mask[0, :3] = True
    np.testing.assert_allclose(metrics.energy_pointing_game(maps, mask).tolist(), [0.3])
    np.testing.assert_allclose(metrics.relevance_mass_accuracy(maps, mask).tolist(), [0.3])


@pytest.mark.parametrize(
    "fn",
    [
        metrics.pointing_game,
        metrics.energy_pointing_game,
        metrics.relevance_mass_accuracy,
        metrics.relevance_rank_accuracy,
        metrics.sparseness,
        metrics.complexity,
    ],
    ids=lambda f: f.__name__,
)
def test_scaling_the_map_changes_nothing(fn):
    maps, masks = _batch(2, seed=5)
    args = (masks,) if fn not in (metrics.sparseness, metrics.complexity) else ()
    a = fn(maps, *args).tolist()
    b = fn(maps * 7.5, *args).tolist()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_undefined_samples_are_flagged_never_nan():
    maps = np.zeros((2, 5), np.float32)
    maps[1] = [0.0, 1.0, 2.0, 0.0, 1.0]
    maps[0] = [-1.0, -2.0, 0.0, 0.0, 0.0]  # no positive mass; sums to -3
    masks = np.ones((2, 5), bool)
    energy = metrics.energy_pointing_game(maps, masks)
    assert energy.tolist() == [None, 1.0] and not np.isnan(np.asarray(energy.value)).any()
    assert energy.mean() == {
        "mean": 1.0,
        "n": 1,
        "undefined": 1,
        "reason": "the map has no positive values",
    }
    zero = np.zeros((1, 5), np.float32)
    for fn in (metrics.sparseness, metrics.complexity):
        s = fn(zero)
        assert s.tolist() == [None] and float(np.asarray(s.value)[0]) == 0.0
    assert metrics.relevance_mass_accuracy(zero, masks[:1]).tolist() == [None]


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_complexity_matches_naive_loops(ndim):
    maps, _ = _batch(ndim, seed=10 + ndim)
    np.testing.assert_allclose(
        metrics.sparseness(maps).tolist(), [ref_gini(m) for m in maps], rtol=1e-5
    )
    np.testing.assert_allclose(
        metrics.complexity(maps).tolist(), [ref_entropy(m) for m in maps], rtol=1e-5
    )


def test_complexity_analytic_cases():
    n = 12
    maps = np.stack([np.ones(n), np.eye(n)[3] * -4.0, np.r_[np.ones(n // 2), np.zeros(n // 2)]])
    np.testing.assert_allclose(metrics.sparseness(maps).tolist(), [0.0, (n - 1) / n, 0.5])
    np.testing.assert_allclose(
        metrics.complexity(maps).tolist(), [np.log(n), 0.0, np.log(n // 2)], atol=1e-6
    )


@pytest.mark.parametrize(
    "maps,masks,match",
    [
        (np.ones((2, 3, 3)), np.ones((2, 3, 4), bool), "masks have shape"),
        (np.ones((2, 3, 3)), np.full((2, 3, 3), 0.5), "masks must be boolean"),
        (np.ones((2, 3, 3)), np.zeros((2, 3, 3), bool), "mask\\(s\\) are empty"),
        (np.ones(3), np.ones(3, bool), "non-empty batch"),
        (np.ones((1, 2, 2, 2, 2)), np.ones((1, 2, 2, 2, 2), bool), "1-3 spatial axes"),
        (np.full((1, 3), np.nan), np.ones((1, 3), bool), "non-finite"),
    ],
)
def test_bad_inputs_raise(maps, masks, match):
    with pytest.raises(ValueError, match=match):
        metrics.pointing_game(maps, masks)


def test_bad_maps_raise_for_complexity():
    with pytest.raises(ValueError, match="non-empty batch"):
        metrics.sparseness(np.ones(4))

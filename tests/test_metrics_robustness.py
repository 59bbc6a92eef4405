"""Max/average sensitivity and the random-logit test against naive loops and invariants."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ifa_jax import metrics

KEY = jax.random.key(3)


def np_explain(x, target):
    """A map that depends on the input and the class: (N, *in, C) -> (N, *in)."""
    w = (np.asarray(target) + 1.0).reshape(-1, *([1] * (x.ndim - 2)))
    return np.sin(3 * x).sum(-1) * w + (x**2).sum(-1)


@jax.jit
def explain_fn(x, target):
    """np_explain in JAX, one compilation per shape."""
    w = (target + 1.0).reshape(-1, *([1] * (x.ndim - 2)))
    return jnp.sin(3 * x).sum(-1) * w + (x**2).sum(-1)


def ref_ratios(fn, x, target, key, radius, n):
    """One sample and one perturbation at a time, noise as documented."""
    x = np.asarray(x, np.float64)
    out = np.zeros((len(x), n))
    for j in range(n):
        noise = np.asarray(jax.random.uniform(jax.random.fold_in(key, j), x.shape), np.float64)
        noise = noise * 2 * radius - radius
        for b in range(len(x)):
            t = np.array([target[b]])
            a = fn(x[b : b + 1], t)
            ap = fn(x[b : b + 1] + noise[b : b + 1], t)
            out[b, j] = np.linalg.norm(ap - a) / np.linalg.norm(a)
    return out


@pytest.mark.parametrize("spatial", [(7,), (4, 5), (3, 2, 4)], ids=["1d", "2d", "3d"])
def test_sensitivity_matches_a_naive_loop(spatial):
    x = jax.random.uniform(jax.random.key(0), (3, *spatial, 2))
    target = [0, 2, 1]
    s = metrics.sensitivity(explain_fn, x, target, key=KEY, radius=0.1, n_samples=4)
    want = ref_ratios(np_explain, x, target, KEY, 0.1, 4)
    np.testing.assert_allclose(np.asarray(s.ratios), want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(s.max.tolist(), want.max(1), rtol=1e-4)
    np.testing.assert_allclose(s.average.tolist(), want.mean(1), rtol=1e-4)


def test_chunks_change_nothing_and_calls_are_batched():
    x = jax.random.uniform(jax.random.key(1), (2, 4, 4, 1))
    rows = []

    def recording(x, target):
        rows.append(np.asarray(x))
        return explain_fn(x, target)

    whole = metrics.sensitivity(recording, x, 1, key=KEY, radius=0.05, n_samples=4)
    assert [r.shape[0] for r in rows] == [2, 8]  # the maps of x, then all 4 x 2 rows
    noise = rows[1].reshape(4, *x.shape) - np.asarray(x)[None]
    assert np.abs(noise).max() <= 0.05 + 1e-6 and np.abs(noise).max() > 0.03
    rows.clear()
    parts = metrics.sensitivity(recording, x, 1, key=KEY, radius=0.05, n_samples=4, chunk_size=3)
    assert [r.shape[0] for r in rows] == [2, 6, 2]
    np.testing.assert_allclose(np.asarray(parts.ratios), np.asarray(whole.ratios), rtol=1e-6)
    maps = explain_fn(x, jnp.array([1, 1]))
    given = metrics.max_sensitivity(explain_fn, x, 1, key=KEY, radius=0.05, n_samples=4, maps=maps)
    np.testing.assert_allclose(given.tolist(), whole.max.tolist(), rtol=1e-6)


def test_a_map_that_ignores_the_input_is_perfectly_robust_and_a_zero_map_undefined():
    x = jax.random.uniform(jax.random.key(2), (2, 3, 3, 1))

    def constant(x, target):
        return jnp.ones(x.shape[:-1]).at[0].set(0.0)

    s = metrics.average_sensitivity(constant, x, 0, key=KEY, n_samples=3)
    assert s.tolist() == [None, 0.0]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"radius": 0.0}, "radius must be > 0"),
        ({"key": None}, "key is None"),
        ({"n_samples": 0}, "n_samples must be an int >= 1"),
        ({"chunk_size": 0}, "chunk_size must be an int >= 1"),
        ({"maps": np.ones((3, 3))}, "maps must be"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    x = jnp.ones((2, 3, 3, 1))
    with pytest.raises(ValueError, match=match):
        metrics.sensitivity(explain_fn, x, 0, **{"key": KEY, "n_samples": 2, **kwargs})


def test_bad_inputs_and_explain_functions_raise():
    with pytest.raises(ValueError, match="float batch"):
        metrics.sensitivity(explain_fn, np.ones((2, 3, 1), np.uint8), 0, key=KEY)
    with pytest.raises(ValueError, match="class must stay the same"):
        metrics.sensitivity(explain_fn, jnp.ones((2, 3, 1)), "predicted", key=KEY)
    with pytest.raises(ValueError, match="class must stay the same"):
        metrics.random_logit(explain_fn, jnp.ones((2, 3, 3, 1)), "predicted", 3, key=KEY)
    with pytest.raises(ValueError, match="one map per input row"):
        metrics.sensitivity(lambda x, t: jnp.ones((1, 3)), jnp.ones((2, 3, 1)), 0, key=KEY)


def test_other_classes_skip_the_target_and_cover_the_rest():
    target = jnp.repeat(jnp.arange(4), 200)
    off = np.asarray(metrics.other_classes(KEY, target, 4))
    assert (off != np.asarray(target)).all()
    for t in range(4):
        assert set(off[np.asarray(target) == t]) == set(range(4)) - {t}
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        metrics.other_classes(KEY, jnp.zeros(2, int), 1)
    with pytest.raises(ValueError, match="targets must lie in"):
        metrics.other_classes(KEY, jnp.array([0, 5]), 3)


def ref_ssim(a, b, win):
    """Naive SSIM: each map / its max |value|, data range over the pair, every full
    uniform window, population statistics."""
    a, b = a / np.abs(a).max(), b / np.abs(b).max()
    both = np.concatenate([a.ravel(), b.ravel()])
    c1, c2 = (0.01 * (both.max() - both.min())) ** 2, (0.03 * (both.max() - both.min())) ** 2
    vals = []
    for i in range(a.shape[0] - win + 1):
        for j in range(a.shape[1] - win + 1):
            u, v = a[i : i + win, j : j + win].ravel(), b[i : i + win, j : j + win].ravel()
            mu, mv = u.mean(), v.mean()
            cov = ((u - mu) * (v - mv)).mean()
            vals.append(
                (2 * mu * mv + c1)
                * (2 * cov + c2)
                / ((mu**2 + mv**2 + c1) * (u.var() + v.var() + c2))
            )
    return float(np.mean(vals))


def test_random_logit_matches_a_naive_ssim():
    x = jax.random.uniform(jax.random.key(4), (3, 9, 8, 2))
    target = jnp.array([0, 3, 1])
    got = metrics.random_logit(explain_fn, x, target, 5, key=KEY, win_size=5)
    off = metrics.other_classes(KEY, target, 5)
    a = np_explain(np.asarray(x, np.float64), target)
    b = np_explain(np.asarray(x, np.float64), off)
    want = [ref_ssim(u, v, 5) for u, v in zip(a, b)]
    np.testing.assert_allclose(got.tolist(), want, rtol=1e-5)
    assert max(want) < 0.999  # the class changes the map


def test_random_logit_class_blind_maps_score_one_and_constants_are_undefined():
    x = jax.random.uniform(jax.random.key(5), (2, 8, 8, 1))

    def blind(x, target):
        return x[..., 0].at[1].set(0.5)

    got = metrics.random_logit(blind, x, [0, 1], 3, key=KEY)
    assert got.defined.tolist() == [True, False]
    np.testing.assert_allclose(got.tolist()[0], 1.0)


def test_random_logit_other_ranks_need_a_similarity():
    x = jax.random.uniform(jax.random.key(6), (2, 6, 1))
    with pytest.raises(ValueError, match="SSIM needs 2-D maps"):
        metrics.random_logit(explain_fn, x, 0, 3, key=KEY)

    def corr(a, b):
        return jnp.array([np.corrcoef(u, v)[0, 1] for u, v in zip(a, b)])

    got = metrics.random_logit(explain_fn, x, 0, 3, key=KEY, similarity=corr)
    assert got.defined.tolist() == [True, True] and max(got.tolist()) <= 1.0

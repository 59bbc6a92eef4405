"""Deep Feature Factorization: planted factors, the NMF invariant, the NumPy reference,
streaming vs one batch, grids of every rank, the sign check, the dataset pass."""

from __future__ import annotations

from itertools import permutations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ifa_jax import dff as D
from ifa_jax.probes import function_probe
from tests import reference as ref

N_COMPONENTS, CHANNELS = 4, 16
STEPS = 20  # map and concept sweeps in the streaming tests (one compilation each)


def planted(cells: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """X = H W (cells, K) >= 0 with a unique NMF: every concept has 3 private channels and
    every 5th cell shows a single concept."""
    rng = np.random.default_rng(seed)
    W = rng.random((N_COMPONENTS, CHANNELS)) * (rng.random((N_COMPONENTS, CHANNELS)) < 0.4)
    for j in range(N_COMPONENTS):
        W[:, 3 * j : 3 * j + 3] = 0.0
        W[j, 3 * j : 3 * j + 3] = 1.0 + rng.random(3)
    H = rng.random((cells, N_COMPONENTS)) * (rng.random((cells, N_COMPONENTS)) < 0.4)
    pure = np.arange(0, cells, 5)
    H[pure] = np.eye(N_COMPONENTS)[pure % N_COMPONENTS] * (0.5 + rng.random((len(pure), 1)))
    return (H @ W).astype(np.float32), H, W


def best_match(found, truth) -> float:
    """The smallest cosine between matched concepts under the best permutation."""
    a = np.asarray(found, np.float64)
    b = np.asarray(truth, np.float64)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    cos = a @ b.T
    n = len(cos)
    return max(min(cos[i, p[i]] for i in range(n)) for p in permutations(range(n)))


@pytest.fixture(scope="module")
def data():
    """A (24, 5, 5, K) with planted concepts W (n, K)."""
    X, _, W = planted(24 * 25)
    return X.reshape(24, 5, 5, CHANNELS), W


@pytest.fixture(scope="module")
def streamed(data):
    """Streaming DFF over the data split into batches of 8 and of 12 (10 passes each)."""
    A, _ = data
    out = {}
    for size in (8, 12):
        state = D.init(N_COMPONENTS, CHANNELS, key=jax.random.key(0))
        losses = []
        for _ in range(10):
            for lo in range(0, len(A), size):
                state = D.update(state, A[lo : lo + size], steps=STEPS)
            losses.append(float(D.pass_loss(state)))
            state = D.refit(state, steps=STEPS)
        out[size] = (state.concepts, losses)
    return out


def test_dff_recovers_planted_factors(data):
    A, W = data
    f = D.dff(A, N_COMPONENTS, iterations=500, key=jax.random.key(0))
    assert f.concepts.shape == (N_COMPONENTS, CHANNELS)
    assert f.maps.shape == (24, 5, 5, N_COMPONENTS)
    assert float(D.reconstruction_error(A, *f)) < 5e-3
    assert best_match(f.concepts, W) > 0.99
    np.testing.assert_allclose(f.maps.reshape(-1, N_COMPONENTS).max(0), 1.0, rtol=1e-6)
    again = D.dff(A, N_COMPONENTS, iterations=500, key=jax.random.key(0))
    np.testing.assert_array_equal(again.concepts, f.concepts)  # deterministic given the key


def test_multiplicative_updates_never_increase_the_loss(data):
    A, _ = data
    X = jnp.asarray(A.reshape(-1, CHANNELS))
    H, W = D.random_init(jax.random.key(3), X, N_COMPONENTS)
    losses = [float(D.loss(X, H, W))]
    for _ in range(60):
        H, W = D.mu_step(X, H, W)
        losses.append(float(D.loss(X, H, W)))
    steps = np.diff(losses)
    assert (steps <= 1e-6 * np.array(losses[:-1])).all(), steps.max()
    assert losses[-1] < 0.05 * losses[0]


def test_dff_matches_the_numpy_loop_reference():
    X, _, _ = planted(12, seed=1)
    X = X[:, :6]  # small enough for the loops
    A = X.reshape(3, 4, 6)
    rng = np.random.default_rng(2)
    H0, W0 = rng.random((12, 2)) + 0.1, rng.random((2, 6)) + 0.1
    Hr, Wr = ref.nmf_multiplicative(X, H0, W0, iterations=4)
    f = D.dff(A, 2, iterations=4, init=(H0.reshape(3, 4, 2), W0))
    peak = Hr.max(0)
    np.testing.assert_allclose(f.maps.reshape(12, 2), Hr / peak, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(f.concepts, Wr * peak[:, None], rtol=1e-4, atol=1e-6)


def test_streaming_matches_one_batch_and_ignores_the_split(data, streamed):
    A, W = data
    (c8, loss8), (c12, loss12) = streamed[8], streamed[12]
    np.testing.assert_allclose(c8, c12, rtol=1e-4, atol=1e-5)  # the split does not matter
    # near 0 the loss from the sums is float32 round-off: compare it to 1e-3
    np.testing.assert_allclose(loss8, loss12, rtol=1e-3, atol=1e-3)
    assert best_match(c8, W) > 0.99
    one = D.dff(A, N_COMPONENTS, iterations=500, key=jax.random.key(0))
    assert best_match(c8, one.concepts) > 0.99  # the same concepts as one batch
    maps = D.concept_maps(A, c8, steps=STEPS)
    assert maps.shape == (24, 5, 5, N_COMPONENTS)
    streamed_err = float(D.reconstruction_error(A, c8, maps))
    assert streamed_err < 5e-3 and float(D.reconstruction_error(A, *one)) < 5e-3
    assert loss8[-1] < 0.1 * loss8[0]


def test_merge_and_padding(data, streamed):
    A, _ = data
    state = D.init(N_COMPONENTS, CHANNELS, key=jax.random.key(1))
    whole = D.update(state, A[:12], steps=STEPS)
    # rows 8..11, then 4 padding rows (valid=False) that must count for nothing
    rest = D.update(state, A[np.r_[8:12, 0:4]], np.arange(8) < 4, steps=STEPS)
    merged = D.merge(D.update(state, A[:8], steps=STEPS), rest)
    for a, b in zip(whole, merged):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert float(merged.cells) == 12 * 25


@pytest.mark.parametrize("grid", [(25,), (3, 5, 5)], ids=["1d", "3d"])
def test_grids_of_any_rank(grid):
    B = 600 // int(np.prod(grid))
    X, _, W = planted(600)
    A = X.reshape(B, *grid, CHANNELS)
    f = D.dff(A, N_COMPONENTS, iterations=300, key=jax.random.key(0))
    assert f.maps.shape == (B, *grid, N_COMPONENTS)
    assert float(D.reconstruction_error(A, *f)) < 1e-2
    assert best_match(f.concepts, W) > 0.99
    if len(grid) == 3:
        assert D.concept_maps(A, f.concepts, steps=STEPS).shape == (B, *grid, N_COMPONENTS)


def test_negative_activations_name_the_fix(data):
    A, _ = data
    with pytest.raises(ValueError, match="tap the ReLU's output"):
        D.dff(A - 0.5, 2, key=jax.random.key(0))
    D.dff(A - 1e-7, N_COMPONENTS, iterations=1, key=jax.random.key(0))  # round-off: clipped
    state = D.init(2, CHANNELS, key=jax.random.key(0))
    with pytest.raises(ValueError, match="tap the ReLU's output"):
        D.update(state, A - 0.5)
    traced = jax.jit(D.update, static_argnames="steps")(state, A[:2] - 0.5, steps=1)
    with pytest.raises(ValueError, match="tap the ReLU's output"):
        D.check(traced)
    with pytest.raises(ValueError, match="key=jax.random.key"):
        D.dff(A, 2)
    with pytest.raises(ValueError, match=r"n_components=17 is more than .* 16 channels.*<= 16"):
        D.dff(A, CHANNELS + 1, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"n_components=17 .*<= 16"):
        D.init(CHANNELS + 1, CHANNELS, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"give \(n, K\) = \(n, 16\) concepts"):
        D.concept_maps(A, np.ones(CHANNELS))
    bad = A.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        D.dff(bad, 2, key=jax.random.key(0))


def test_concept_scores_through_a_dense_head():
    concepts = np.array([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]])
    kernel = np.arange(6.0).reshape(3, 2)
    bias = np.array([0.5, -1.0])
    np.testing.assert_allclose(
        D.concept_scores(concepts, kernel, bias), concepts @ kernel + bias, rtol=1e-6
    )
    with pytest.raises(ValueError, match=r"\(3, outputs\)"):
        D.concept_scores(concepts, kernel.T)
    with pytest.raises(ValueError, match=r"bias has shape \(3,\).*give bias \(2,\)"):
        D.concept_scores(concepts, kernel, np.zeros(3))
    with pytest.raises(ValueError, match=r"give \(n, K\) concepts"):
        D.concept_scores(concepts[0], kernel)


def test_dff_dataset_through_the_probe():
    rng = np.random.default_rng(5)
    params = {"w": rng.normal(size=(2, 6)).astype(np.float32), "head": np.ones((6, 3), np.float32)}
    probe = function_probe(
        lambda p, x: jax.nn.relu(x @ p["w"]),  # a 1x1 convolution + ReLU: (B, 6, 5, 6)
        lambda p, a: a.mean(axis=(1, 2)) @ p["head"],
        name="relu",
    )
    variables = params
    x = jnp.asarray(rng.normal(size=(10, 6, 5, 2)).astype(np.float32))
    batches = [x[:4], (x[4:8], np.zeros(4)), (x[8:], np.zeros(2))]  # the last one is padded
    out = D.dff_dataset(
        probe,
        variables,
        lambda: (b for b in batches),  # a fresh one-shot generator every pass
        3,
        epochs=3,
        key=jax.random.key(0),
        map_steps=STEPS,
        concept_steps=STEPS,
    )
    assert out.concepts.shape == (3, 6) and out.losses.shape == (4,)  # + the map-only pass
    assert out.cells == 10 * 30
    # the same passes by hand on the activations: padding changed nothing
    A = probe.forward_activations(variables, x)[1]["relu"]
    state = D.init(3, 6, key=jax.random.key(0))
    padded = jnp.concatenate([A[8:], A[:2]])  # one batch shape, one compilation
    losses = []
    for epoch in range(4):
        for a, valid in ((A[:4], None), (A[4:8], None), (padded, np.arange(4) < 2)):
            state = D.update(state, a, valid, steps=STEPS)
        losses.append(float(D.pass_loss(state)))
        state = D.refit(state, steps=STEPS) if epoch < 3 else state
    np.testing.assert_allclose(out.concepts, D.peak_concepts(state), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(out.losses, losses, rtol=1e-4)
    np.testing.assert_allclose(
        out.maps(x[:4]), D.concept_maps(A[:4], out.concepts, steps=STEPS), atol=1e-4
    )
    # the returned concepts: maps over the data peak at 1, losses[-1] is their error
    maps = D.concept_maps(A, out.concepts, steps=STEPS)
    np.testing.assert_allclose(maps.reshape(-1, 3).max(0), 1.0, rtol=1e-4)
    final = float(D.reconstruction_error(A, out.concepts, maps))
    np.testing.assert_allclose(out.losses[-1], final, rtol=1e-3)
    with pytest.raises(ValueError, match="one-shot iterator"):
        D.dff_dataset(probe, variables, iter([x[:4]]), 3, epochs=1, key=jax.random.key(0))

"""The CAM family against the naive NumPy references in tests/reference.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

from ifa_jax import cams
from tests import reference as ref
from tests.conftest import random_ag

SHAPES = {1: (3, 7, 5), 2: (3, 4, 5, 6), 3: (2, 3, 4, 2, 5)}
LOCAL_METHODS = (
    "gradcam",
    "gradcam++",
    "xgradcam",
    "hirescam",
    "layercam",
    "eigencam",
    "eigengradcam",
)


@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("method", LOCAL_METHODS)
def test_methods_match_reference_under_jit(method, ndim):
    shape = SHAPES[ndim]
    A, G = random_ag(jax.random.key(ndim), shape)
    K = shape[-1]
    f = jax.jit(cams.cam, static_argnames="method")
    expected_M = ref.channel_weights(A, G, method)
    for mask in (
        np.ones(K, np.float32),
        (np.arange(K) % 2).astype(np.float32),
        np.asarray(jax.random.bernoulli(jax.random.key(9), 0.5, (shape[0], K)), np.float32),
    ):
        out = f(A, G, method=method, mask=mask)
        L, s, mx, mn = ref.cam_outputs(expected_M, mask)
        np.testing.assert_allclose(out.contributions, expected_M, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out.cam, L, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out.importance, s, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out.max, mx, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out.min, mn, rtol=1e-5, atol=1e-6)


def test_gradcampp_zero_gradient_gives_zero_alpha():
    A = jnp.ones((1, 2, 2, 2))
    G = jnp.zeros((1, 2, 2, 2)).at[0, 0, 0, 0].set(1.0)
    M = cams.contributions(A, G, "gradcam++")
    # Channel 1 has G == 0 everywhere: its weight must be exactly 0, not NaN.
    assert np.all(np.asarray(M[..., 1]) == 0.0)
    expected = 1.0 / (2.0 + 4.0 + cams.EPS)
    np.testing.assert_allclose(M[0, 0, 0, 0], expected, rtol=1e-6)


def test_importance_sums_to_cam_mass():
    A, G = random_ag(jax.random.key(1), SHAPES[2], positive=False)
    out = cams.cam(A, G, "hirescam", mask=jnp.arange(6) < 4)
    np.testing.assert_allclose(out.importance.sum(-1), out.cam.sum((1, 2)), rtol=1e-5)
    assert np.all(np.asarray(out.importance[:, 4:]) == 0)


def test_eigencam_sign_points_at_large_activations():
    A = jnp.zeros((1, 3, 3, 2)).at[0, 1, 1, 0].set(5.0).at[0, 0, 0, 1].set(1.0)
    out = cams.cam(A, None, "eigencam")
    assert out.cam[0, 1, 1] == out.max[0] and out.max[0] > 0


def test_cam_is_differentiable():
    A, G = random_ag(jax.random.key(2), (2, 3, 3, 4))

    def f(A, G):
        return jnp.sum(jnp.tanh(cams.cam(A, G, "gradcam++").cam))

    jax.test_util.check_grads(f, (A, G), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)
    ga = jax.jit(jax.grad(lambda A: cams.cam(A, G, "gradcam").cam.sum()))(A)
    # d/dA sum L = d/dA sum_k mean(G_k) * sum(A_k) = mean(G_k) broadcast over the grid.
    np.testing.assert_allclose(
        ga, jnp.broadcast_to(G.mean((1, 2), keepdims=True), A.shape), rtol=1e-5
    )


@pytest.mark.parametrize("ndim", [2, 3])
def test_scorecam_weights_match_reference(ndim):
    in_spatial = {2: (8, 6), 3: (4, 6, 4)}[ndim]
    A, _ = random_ag(jax.random.key(3), (2, *[s // 2 for s in in_spatial], 5))
    x = jax.random.uniform(jax.random.key(4), (2, *in_spatial, 2))
    W = jax.random.normal(jax.random.key(5), x.shape[1:])

    def score(xm):
        return jnp.tanh(jnp.sum(xm * W, axis=tuple(range(1, xm.ndim))))

    def resize(a):
        return jax.image.resize(a, (a.shape[0], *in_spatial), "linear")

    # chunk_size 2 does not divide the 5 channels: the padded last chunk is dropped.
    # The score depends on each row's target, so the targets must follow their samples.
    got = jax.jit(
        lambda A, x: cams.scorecam_weights(
            A, x, lambda xm, t: score(xm) * (1.0 + t), jnp.array([0, 1]), chunk_size=2
        )
    )(A, x)
    want = ref.scorecam_weights(
        A, x, lambda xm: np.asarray(score(jnp.asarray(xm))) * [1, 2], resize
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_ablation_weights_match_reference():
    A, _ = random_ag(jax.random.key(6), (3, 4, 5))
    W = jax.random.normal(jax.random.key(7), (4, 5))

    def ablated(delta):
        return jnp.sum(jnp.tanh(A + delta) * W, axis=(1, 2))

    base = ablated(jnp.zeros_like(A))
    got = jax.jit(lambda A: cams.ablation_weights(A, ablated, base, chunk_size=3))(A)
    want = ref.ablation_weights(A, lambda d: ablated(jnp.asarray(d)), base)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_forward_weights_feed_cam():
    A, _ = random_ag(jax.random.key(8), (2, 3, 4))
    w = jnp.arange(8.0).reshape(2, 4)
    out = cams.cam(A, None, "scorecam", weights=w)
    np.testing.assert_allclose(out.contributions, w[:, None, :] * A, rtol=1e-6)


def test_upsample_to_input_grid():
    L = jnp.arange(8.0).reshape(2, 2, 2)
    up = cams.upsample(L, (4, 4))
    assert up.shape == (2, 4, 4)
    np.testing.assert_allclose(up.mean((1, 2)), L.mean((1, 2)), rtol=1e-5)
    with pytest.raises(ValueError, match="spatial_shape"):
        cams.upsample(L, (4, 4, 4))


def test_bad_inputs_have_clear_errors():
    A, G = random_ag(jax.random.key(0), (2, 3, 3, 4))
    with pytest.raises(ValueError, match=r"unknown CAM method 'gradcamm'.*gradcam\+\+"):
        cams.cam(A, G, "gradcamm")
    with pytest.raises(ValueError, match=r"mask has shape \(3,\).*\(4,\)"):
        cams.cam(A, G, "gradcam", mask=jnp.ones(3))
    with pytest.raises(ValueError, match="rank|1-3 spatial"):
        cams.cam(A[:, 0, 0], G[:, 0, 0], "gradcam")
    with pytest.raises(ValueError, match="gradients have shape"):
        cams.cam(A, G[:, :2], "gradcam")
    with pytest.raises(ValueError, match="needs forward passes"):
        cams.cam(A, G, "scorecam")
    with pytest.raises(ValueError, match="needs the gradients"):
        cams.cam(A, None, "gradcam")


def test_aliases():
    assert cams.canonical_method("FullCAM") == "hirescam"
    assert cams.canonical_method("Grad-CAM++") == "gradcam++"

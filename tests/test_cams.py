"""The CAM family against the naive NumPy references in tests/reference.py."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

from ifa_jax import cams
from ifa_jax.explaining import explain, forward_weights
from ifa_jax.probes import linen_probe, target_scores
from ifa_jax.runner.models import ConvNet
from tests import reference as ref
from tests.conftest import random_ag

SHAPES = {1: (3, 7, 5), 2: (3, 4, 5, 6), 3: (2, 3, 4, 2, 5)}
# Every method cam() computes from A (and G, key) alone, from the table.
LOCAL_METHODS = tuple(m for m in cams.LAYER_METHODS if cams.REGISTRY[m].fn is not None)
KEY = jax.random.key(42)  # for the methods that need one; the others ignore it


@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("method", LOCAL_METHODS)
def test_methods_match_reference_under_jit(method, ndim):
    shape = SHAPES[ndim]
    A, G = random_ag(jax.random.key(ndim), shape)
    A = A**3  # sparse, heavy-tailed like post-ReLU features (FEM's 2-sigma mask is not empty)
    K = shape[-1]
    f = jax.jit(cams.cam, static_argnames="method")
    expected_M = ref.channel_weights(A, G, method, key=KEY)
    assert np.abs(expected_M).max() > 0
    for mask in (
        np.ones(K, np.float32),
        (np.arange(K) % 2).astype(np.float32),
        np.asarray(jax.random.bernoulli(jax.random.key(9), 0.5, (shape[0], K)), np.float32),
    ):
        out = f(A, G, method=method, mask=mask, key=KEY)
        L, s, mx, mn = ref.cam_outputs(expected_M, mask)
        np.testing.assert_allclose(out.contributions, expected_M, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out.cam, L, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out.importance, s, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out.max, mx, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out.min, mn, rtol=1e-5, atol=1e-5)


def test_gradcampp_zero_gradient_gives_zero_alpha():
    A = jnp.ones((1, 2, 2, 2))
    G = jnp.zeros((1, 2, 2, 2)).at[0, 0, 0, 0].set(1.0)
    M = cams.contributions(A, G, "gradcam++")
    # Channel 1 has G == 0 everywhere: its weight must be exactly 0, not NaN.
    assert np.all(np.asarray(M[..., 1]) == 0.0)
    # alpha = 1 / (2 + sum(A) + eps) at the one non-zero gradient; eps = 1e-6 by default
    np.testing.assert_allclose(M[0, 0, 0, 0], 1.0 / (6.0 + 1e-6), rtol=1e-6)
    # With gradients ~1e-3 eps dominates alpha's denominator: eps is an option.
    small = G * 1e-3
    for eps in (1e-6, 1e-7, 0.5):
        M = jax.jit(cams.contributions, static_argnames="method")(A, small, "gradcam++", eps=eps)
        g = 1e-3
        np.testing.assert_allclose(M[0, 0, 0, 0], g**3 / (2 * g**2 + 4 * g**3 + eps), rtol=1e-5)


def test_eps_options_match_reference():
    A, G = random_ag(jax.random.key(5), SHAPES[2])
    G = G * 1e-3  # the regime where eps matters
    for method in ("gradcam++", "xgradcam"):
        for eps in (1e-7, 1e-4):
            got = cams.contributions(A, G, method, eps=eps)
            want = ref.channel_weights(A, G, method, eps=eps)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-9)
    default = cams.contributions(A, G, "gradcam++")
    assert not np.allclose(default, cams.contributions(A, G, "gradcam++", eps=1e-7), rtol=1e-3)
    np.testing.assert_allclose(
        default, ref.channel_weights(A, G, "gradcam++"), rtol=1e-4, atol=1e-9
    )


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

    jax.test_util.check_grads(jax.jit(f), (A, G), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)
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
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_scorecam_names_the_reshape_for_a_token_layer():
    """Tokens (B, T, D) read as a 1-D grid cannot mask a 2-D input: the error names the fix."""
    tokens, x = jnp.ones((2, 5, 3)), jnp.ones((2, 4, 4, 1))
    with pytest.raises(ValueError, match=r"1 and 2.*reshape=ifa_jax.tokens_to_grid"):
        cams.scorecam_weights(tokens, x, lambda xm, t: xm.sum((1, 2, 3)), jnp.zeros(2, int))


def test_ablation_weights_match_reference():
    A, _ = random_ag(jax.random.key(6), (3, 4, 5))
    W = jax.random.normal(jax.random.key(7), (4, 5))

    def ablated(delta):
        return jnp.sum(jnp.tanh(A + delta) * W, axis=(1, 2))

    base = ablated(jnp.zeros_like(A))
    got = jax.jit(lambda A: cams.ablation_weights(A, ablated, base, chunk_size=3))(A)
    want = ref.ablation_weights(A, lambda d: ablated(jnp.asarray(d)), base)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


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


@pytest.mark.parametrize("method", LOCAL_METHODS)
def test_every_method_is_differentiable(method):
    """Reverse-mode gradients through the CAM agree with finite differences."""
    A, G = random_ag(jax.random.key(2), (2, 3, 3, 4))
    A = A + 0.1  # away from ReLU kinks of A itself

    def f(A, G):
        return jnp.sum(jnp.tanh(cams.cam(A, G, method, key=KEY).cam))

    # eps 3e-3: float32 finite differences of an eigenvector need a larger step
    jax.test_util.check_grads(
        jax.jit(f), (A, G), order=1, modes=["rev"], atol=2e-2, rtol=2e-2, eps=3e-3
    )


def test_randomcam_needs_an_explicit_key():
    A, G = random_ag(jax.random.key(3), SHAPES[2])
    with pytest.raises(ValueError, match=r"randomcam needs a PRNG key: pass key="):
        cams.cam(A, G, "randomcam")
    f = jax.jit(cams.contributions, static_argnames="method")
    M1 = f(A, None, "random", key=jax.random.key(1))
    np.testing.assert_array_equal(M1, f(A, None, "randomcam", key=jax.random.key(1)))
    M2 = f(A, None, "randomcam", key=jax.random.key(2))
    assert not np.allclose(M1, M2)
    w = np.asarray(M1 / A)[:, 0, 0, :]  # (B, K): one weight per sample and channel
    np.testing.assert_allclose(M1 / A, np.broadcast_to(w[:, None, None, :], A.shape), rtol=1e-5)
    assert np.all(np.abs(w) <= 1.0) and len(np.unique(np.round(w, 6))) == w.size


def test_fem_spike_and_gradient():
    # One spike of 5 on a 3x3 grid: mean 5/9, std sqrt(25/9 - 25/81); the 2-sigma mask
    # keeps only the spike, where M = the channel mean.
    A = jnp.zeros((1, 3, 3, 2)).at[0, 1, 2, 0].set(5.0).at[..., 1].set(1.0)
    out = cams.cam(A, None, "fem")
    expected = np.zeros((1, 3, 3))
    expected[0, 1, 2] = 5.0 / 9.0
    np.testing.assert_allclose(out.cam, expected, rtol=1e-6)  # constant channel 1: no mask
    assert float(cams.cam(A, None, "fem", k=5.0).cam.max()) == 0.0  # 5-sigma: nothing
    # d sum(L) / dA_k = mean over the grid of the mask (the mask is constant a.e.).
    acts = random_ag(jax.random.key(4), (2, 5, 4, 3))[0] ** 3
    ga = jax.grad(lambda a: cams.cam(a, None, "fem", k=1.0).cam.sum())(acts)
    above = np.asarray(acts) > np.asarray(
        acts.mean((1, 2), keepdims=True) + acts.std((1, 2), keepdims=True)
    )
    assert 0 < above.mean() < 1
    np.testing.assert_allclose(ga, np.broadcast_to(above.mean((1, 2), keepdims=True), acts.shape))


def test_kpcacam_linear_kernel_is_centred_pca():
    """With a linear kernel, kernel PCA is PCA: the map is the centred cells' projection
    on their first principal direction."""
    A, _ = random_ag(jax.random.key(5), (2, 4, 5, 3))
    L = cams.cam(A, None, "kpcacam", kernel="linear").cam
    for n in range(2):
        X = np.asarray(A[n], np.float64).reshape(-1, 3)
        X = X - X.mean(0)
        proj = X @ np.linalg.svd(X)[2][0]
        proj = proj if proj[np.argmax(np.abs(proj))] > 0 else -proj
        np.testing.assert_allclose(np.asarray(L[n]).ravel(), proj, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kernel", list(cams.KPCA_KERNELS))
def test_kpcacam_matches_scikit_learn(kernel):
    """pytorch-grad-cam's KPCA_CAM: KernelPCA(n_components=1, kernel, gamma) of each
    sample's centred (cells, channels) matrix, fit_transform."""
    decomposition = pytest.importorskip("sklearn.decomposition")
    A, _ = random_ag(jax.random.key(6), (2, 6, 3, 4))
    for gamma in (None, 0.7):
        f = functools.partial(cams.cam, method="kpcacam", kernel=kernel, gamma=gamma)
        L = jax.jit(f)(A).cam
        for n in range(2):
            X = np.asarray(A[n], np.float64).reshape(-1, 4)
            X = X - X.mean(0)
            kpca = decomposition.KernelPCA(n_components=1, kernel=kernel, gamma=gamma)
            want = kpca.fit_transform(X)[:, 0]
            want_ref = ref.kpca_projection(A[n].reshape(-1, 4), kernel=kernel, gamma=gamma)
            np.testing.assert_allclose(want_ref, want, rtol=1e-8, atol=1e-10)
            np.testing.assert_allclose(np.asarray(L[n]).ravel(), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"kpcacam kernel must be one of linear, poly"):
        cams.cam(A, None, "kpcacam", kernel="laplacian")


def test_elementwise_is_relu_of_hirescam():
    A, G = random_ag(jax.random.key(7), SHAPES[3], positive=False)
    M = cams.contributions(A, G, "gradcamelementwise")
    np.testing.assert_allclose(M, jax.nn.relu(cams.contributions(A, G, "hirescam")))
    assert float(M.min()) == 0.0 and float(jnp.min(G * A)) < 0


# --------------------------------------------------------------------------- methods that
# need the model: explain() on a small GAP ConvNet (1-D, 2-D, 3-D) against the loops in
# tests/reference.py. score="probability" so that the score is not piecewise linear at the
# layer (ShapleyCAM's Hessian is then not zero).
FORWARD_METHODS = tuple(cams.FORWARD_METHODS)
FEWER_RUNS = {"sscam": {"samples": 3}, "iscam": {"samples": 3}, "smoothgradcam++": {"samples": 3}}


@pytest.fixture(scope="module")
def image_convnet():
    """(model, variables, x (3, 6, 5, 2)): a 2-D GAP ConvNet with 5 classes, for the
    invariants that need one grid rank only."""
    model = ConvNet(ndim=2, features=(4, 6), num_classes=5)
    x = jax.random.normal(jax.random.key(2), (3, 6, 5, 2))
    return model, model.init(jax.random.key(12), x), x


def model_oracle(probe, variables, x, target, score="logit"):
    """(probe result, ref.ModelOracle): the model runs the references may ask for."""
    result = probe(variables, x, target, score=score)
    (layer,) = probe.layers

    def scored(logits, t):
        return target_scores(logits, jnp.asarray(t), score)

    def gradient(inputs, delta):
        inputs = jnp.asarray(inputs, jnp.float32)
        d = jnp.zeros_like(result.activations) if delta is None else jnp.asarray(delta)

        def total(d):
            return scored(probe.forward_with(variables, inputs, {layer: d}), result.target).sum()

        return np.asarray(jax.grad(total)(d))

    outputs = result.logits.shape[-1]
    oracle = ref.ModelOracle(
        x=np.asarray(x),
        target=np.asarray(result.target),
        logits=np.asarray(result.logits),
        gradients=np.asarray(result.gradients),
        score_inputs=lambda xm, t: np.asarray(
            scored(probe.forward(variables, jnp.asarray(xm, jnp.float32)), t)
        ),
        score_with_delta=lambda d: np.asarray(
            scored(probe.forward_with(variables, x, {layer: jnp.asarray(d)}), result.target)
        ),
        gradient=gradient,
        class_gradients=lambda: np.asarray(probe.per_class(variables, x, jnp.arange(outputs))[2]),
        resize=lambda a: np.asarray(
            jax.image.resize(jnp.asarray(a), (a.shape[0], *x.shape[1:-1]), "linear")
        ),
        variables=variables,
    )
    return result, oracle


@pytest.mark.parametrize("method", FORWARD_METHODS)
def test_forward_methods_match_reference_under_jit(method, convnet):
    model, variables, x = convnet
    probe = linen_probe(model, "relu1")
    result, oracle = model_oracle(probe, variables, x, "predicted", "probability")
    options = FEWER_RUNS.get(method, {})
    _, out = explain(
        probe, variables, x, "predicted", method, score="probability", key=KEY, **options
    )
    want = ref.forward_weights(method, result.activations, oracle, key=KEY, **options)
    assert np.abs(want).max() > 0
    A = np.asarray(result.activations, np.float64)
    expected_M = A * want.reshape(want.shape[0], *(1,) * (A.ndim - 2), want.shape[-1])
    L, s, mx, mn = ref.cam_outputs(expected_M)
    tol = {"rtol": 1e-4, "atol": 1e-6}
    np.testing.assert_allclose(out.contributions, expected_M, **tol)
    np.testing.assert_allclose(out.cam, L, **tol)
    np.testing.assert_allclose(out.importance, s, **tol)
    np.testing.assert_allclose(out.max, mx, **tol)
    np.testing.assert_allclose(out.min, mn, **tol)


def test_classic_cam_is_gradcam_times_cells_on_a_gap_head(convnet):
    """On global average pooling + a dense head, G_k = W[k, c] / cells at the rectified
    last layer: GradCAM = CAM / cells, and sum(CAM) / cells + b_c is the logit."""
    model, variables, x = convnet
    probe = linen_probe(model, "relu2")
    result, oracle = model_oracle(probe, variables, x, "predicted")
    W = variables["params"]["head"]["kernel"]  # (K, O)
    want = ref.forward_weights("cam", result.activations, oracle, head=W)
    cells = int(np.prod(result.activations.shape[1:-1]))
    _, gradcam = explain(probe, variables, x, "predicted", "gradcam")
    for head in (W, np.asarray(W), lambda v: v["params"]["head"]["kernel"], None):
        _, out = explain(probe, variables, x, "predicted", "cam", head=head)
        np.testing.assert_allclose(
            out.importance,
            want * result.activations.sum(axis=tuple(range(1, x.ndim - 1))),
            rtol=1e-5,
            atol=1e-6,
        )
        np.testing.assert_allclose(
            out.contributions, gradcam.contributions * cells, rtol=1e-4, atol=1e-6
        )
    bias = np.asarray(variables["params"]["head"]["bias"])[np.asarray(result.target)]
    total = np.asarray(out.cam).reshape(x.shape[0], -1).sum(1) / cells + bias
    np.testing.assert_allclose(total, result.score, rtol=1e-5, atol=1e-5)


def test_classic_cam_head_errors(convnet):
    model, variables, x = convnet
    probe = linen_probe(model, "relu1")  # 4 channels; the head reads 6
    W = variables["params"]["head"]["kernel"]
    with pytest.raises(
        ValueError,
        match=r"cam head= must be the dense head's weights \(K, O\) = \(4, 3\).*\(6, 3\)",
    ):
        explain(probe, variables, x, "predicted", "cam", head=W)
    with pytest.raises(ValueError, match="cam reads the head's column.*callable target"):
        explain(linen_probe(model, "relu2"), variables, x, lambda y: y[:, 0], "cam", head=W)


def test_shapleycam_is_gradcam_where_the_score_is_piecewise_linear(image_convnet):
    """After the layer the ConvNet is ReLU, pooling and dense: for the logit the Hessian
    at the layer is zero and ShapleyCAM is GradCAM; the softmax's curvature is not."""
    model, variables, x = image_convnet
    probe = linen_probe(model, "relu1")
    _, shapley = explain(probe, variables, x, "predicted", "shapleycam")
    _, gradcam = explain(probe, variables, x, "predicted", "gradcam")
    np.testing.assert_allclose(shapley.contributions, gradcam.contributions, rtol=1e-5, atol=1e-8)
    _, shapley = explain(probe, variables, x, "predicted", "shapleycam", score="probability")
    _, gradcam = explain(probe, variables, x, "predicted", "gradcam", score="probability")
    gap = np.abs(shapley.importance - gradcam.importance).max()
    assert gap > 1e-2 * np.abs(gradcam.importance).max()


def test_score_cam_variants_reduce_to_scorecam(image_convnet):
    """SS-CAM without noise and IS-CAM with one step (scale 1) are ScoreCAM; SS-CAM's
    noise follows the key, not the chunking."""
    model, variables, x = image_convnet
    probe = linen_probe(model, "relu2")
    _, score = explain(probe, variables, x, "predicted", "scorecam")
    _, ss = explain(probe, variables, x, "predicted", "sscam", key=KEY, std=0.0, samples=2)
    _, integrated = explain(probe, variables, x, "predicted", "iscam", samples=1)
    np.testing.assert_allclose(ss.contributions, score.contributions, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(integrated.contributions, score.contributions, rtol=1e-5, atol=1e-7)
    _, a = explain(probe, variables, x, "predicted", "sscam", key=KEY, samples=2, chunk_size=4)
    _, b = explain(probe, variables, x, "predicted", "sscam", key=KEY, samples=2, chunk_size=1)
    _, c = explain(probe, variables, x, "predicted", "sscam", key=jax.random.key(7), samples=2)
    np.testing.assert_allclose(a.contributions, b.contributions, rtol=1e-5, atol=1e-7)
    assert not np.allclose(a.contributions, c.contributions, rtol=1e-3)
    np.testing.assert_allclose(cams.iscam_coefficients(4), [0.25, 0.75, 1.5, 2.5], rtol=1e-6)


def test_smoothgradcampp_without_noise_is_gradcampp(image_convnet):
    model, variables, x = image_convnet
    probe = linen_probe(model, "relu1")
    _, plain = explain(probe, variables, x, "predicted", "gradcam++", eps=1e-4)
    _, smooth = explain(
        probe, variables, x, "predicted", "smoothgradcam++", key=KEY, std=0.0, samples=2, eps=1e-4
    )
    np.testing.assert_allclose(smooth.contributions, plain.contributions, rtol=1e-5, atol=1e-7)
    _, noisy = explain(probe, variables, x, "predicted", "smoothgradcam++", key=KEY, samples=2)
    assert not np.allclose(noisy.contributions, plain.contributions, rtol=1e-2)


def test_finercam_contrasts_the_nearest_classes(image_convnet):
    logits = jnp.array([[0.0, 5.0, 4.5, 1.0, 6.0], [1.0, 0.0, 2.0, 2.0, 0.0]])
    got = cams.finer_comparisons(logits, jnp.array([1, 0]), 3)
    # sample 0: |l - 5| = 5, -, 0.5, 4, 1; sample 1: ties 1, 1, 1 broken by class index
    np.testing.assert_array_equal(got, [[2, 4, 3], [1, 2, 3]])
    assert cams.finer_comparisons(logits, jnp.array([1, 0]), 9).shape == (2, 4)
    model, variables, x = image_convnet
    probe = linen_probe(model, "relu1")
    # alpha = 0: the objective is y_c sum(p) / (sum(p) + 1e-9), GradCAM's up to 1e-9
    _, finer = explain(probe, variables, x, "predicted", "finercam", alpha=0.0)
    _, gradcam = explain(probe, variables, x, "predicted", "gradcam")
    np.testing.assert_allclose(finer.contributions, gradcam.contributions, rtol=1e-5, atol=1e-7)
    _, one = explain(probe, variables, x, "predicted", "finercam", comparisons=1)
    assert not np.allclose(one.contributions, gradcam.contributions, rtol=1e-2)
    with pytest.raises(ValueError, match="finercam contrasts the target.*callable target"):
        explain(probe, variables, x, lambda y: y[:, 0], "finercam")
    with pytest.raises(ValueError, match="finercam comparisons must be an int >= 1; got 0"):
        explain(probe, variables, x, "predicted", "finercam", comparisons=0)


def test_forward_method_options_are_checked(image_convnet):
    model, variables, x = image_convnet
    probe = linen_probe(model, "relu1")
    with pytest.raises(ValueError, match="sscam samples must be an int >= 1; got 0"):
        explain(probe, variables, x, 0, "sscam", key=KEY, samples=0)
    with pytest.raises(ValueError, match=r"smoothgradcam\+\+ std must be a finite number >= 0"):
        explain(probe, variables, x, 0, "smoothgradcam++", key=KEY, std=-1.0)
    with pytest.raises(ValueError, match="iscam option samples=2.5 must be an integer"):
        explain(probe, variables, x, 0, "iscam", samples=2.5)


@pytest.mark.parametrize("method", FORWARD_METHODS)
def test_forward_methods_are_differentiable(method):
    """Reverse-mode gradients of the CAM with respect to the input, through the probe and
    the method's model runs, agree with finite differences."""
    model = ConvNet(ndim=1, features=(3, 4), num_classes=3)
    x = jax.random.normal(jax.random.key(0), (2, 6, 2))
    variables = model.init(jax.random.key(1), x)
    probe = linen_probe(model, "relu1")
    target = jnp.array([0, 2])
    options = tuple(FEWER_RUNS.get(method, {}).items())

    def f(x):
        result = probe(variables, x, target, score="probability")
        w = forward_weights(
            probe,
            variables,
            x,
            result.activations,
            result,
            method,
            layer="relu1",
            score="probability",
            options=options,
            key=KEY,
        )
        return jnp.sum(jnp.tanh(cams.cam(result.activations, None, method, weights=w).cam))

    # Jitted: one compile beats dispatching every op of the method's model runs eagerly.
    jax.test_util.check_grads(
        jax.jit(f), (x,), order=1, modes=["rev"], atol=2e-2, rtol=2e-2, eps=1e-3
    )


def test_weights_entries_give_their_methods_contributions():
    """A method's ``weights`` (w (B, K)) gives its fn's M = w * A, options included."""
    A, G = random_ag(jax.random.key(3), SHAPES[2])
    inputs = cams.CamInputs(A, G, None)
    with_weights = [m for m in cams.LAYER_METHODS if getattr(cams.REGISTRY[m], "weights", None)]
    assert {"gradcam", "gradcam++", "xgradcam"} <= set(with_weights)
    for m in with_weights:
        spec = cams.REGISTRY[m]
        for opts in ({}, {"eps": 1e-3}) if "eps" in spec.options else ({},):
            w = spec.weights(inputs, **opts)
            assert w.shape == (A.shape[0], A.shape[-1])
            np.testing.assert_array_equal(w[:, None, None, :] * A, spec.fn(inputs, **opts))
    with pytest.raises(ValueError, match="weights="):
        cams.LayerMethod(
            "fw", None, needs=frozenset({"forward_passes"}), forward=lambda a, p: a[:, 0],
            weights=lambda inputs: inputs.activations[:, 0],
        )  # fmt: skip


@pytest.mark.parametrize("ndim", [1, 3])
def test_reduce_weighted_matches_the_reference_of_each_weighting(ndim):
    A, _ = random_ag(jax.random.key(ndim), SHAPES[ndim])
    B, K = A.shape[0], A.shape[-1]
    W = jax.random.normal(jax.random.key(5), (B, 3, K))
    outs = cams.reduce_weighted(A, W)
    assert len(outs) == 3
    for m, out in enumerate(outs):
        M = np.asarray(W[:, m]).reshape(B, *(1,) * ndim, K) * np.asarray(A)
        L, s, mx, mn = ref.cam_outputs(M)
        np.testing.assert_allclose(out.cam, L, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out.importance, s, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out.max, mx, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out.min, mn, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out.contributions, M, rtol=1e-6)
    with pytest.raises(ValueError, match=r"\(B, M, K\)"):
        cams.reduce_weighted(A, W[:, 0])

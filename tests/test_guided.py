"""Guided Backpropagation and Guided GradCAM (ifa_jax.guided) against a hand-written
network with an explicit guided backward pass in NumPy, and against pytorch-grad-cam's
guided backprop on golden data (tests/data/peers_guided.npz; no torch needed)."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import ifa_jax
from ifa_jax import cams
from ifa_jax.explaining import guided
from ifa_jax.probes import linen_probe
from ifa_jax.runner import models
from ifa_jax.runner.models import MnistCNN

# --------------------------------------------------------------------------- the reference


def conv_same(a, W):
    """Cross-correlation with SAME padding: a (B, *S, Ci), W (*K, Ci, Co), odd K."""
    kernel, spatial = W.shape[:-2], a.shape[1:-1]
    pads = [(0, 0)] + [(k // 2, k // 2) for k in kernel] + [(0, 0)]
    padded = np.pad(a, pads)
    out = np.zeros((a.shape[0], *spatial, W.shape[-1]))
    for off in itertools.product(*(range(k) for k in kernel)):
        window = padded[(slice(None), *(slice(o, o + n) for o, n in zip(off, spatial)))]
        out += np.einsum("b...i,io->b...o", window, W[off])
    return out


def conv_same_transpose(g, W):
    """The input gradient of conv_same: g (B, *S, Co) -> (B, *S, Ci)."""
    kernel, spatial = W.shape[:-2], g.shape[1:-1]
    padded = np.zeros((g.shape[0], *(n + k - 1 for n, k in zip(spatial, kernel)), W.shape[-2]))
    for off in itertools.product(*(range(k) for k in kernel)):
        where = (slice(None), *(slice(o, o + n) for o, n in zip(off, spatial)))
        padded[where] += np.einsum("b...o,io->b...i", g, W[off])
    return padded[(slice(None), *(slice(k // 2, k // 2 + n) for k, n in zip(kernel, spatial)))]


def naive_guided(convs, head, x, target, guided_relu=True):
    """Saliency (B, *S, C) of ReLU convs -> global mean -> dense, backpropagated by hand.

    convs: [(W (*K, Ci, Co), b (Co,))]; head: (W (K, O), b (O,)). ``guided_relu=False``
    gives the plain input gradient (for the check that the two differ)."""
    a, pre = np.asarray(x, np.float64), []
    for W, b in convs:
        z = conv_same(a, W) + b
        pre.append(z)
        a = np.maximum(z, 0)
    cells = np.prod(a.shape[1:-1])
    logits = a.mean(axis=tuple(range(1, a.ndim - 1))) @ head[0] + head[1]
    t = np.argmax(logits, -1) if isinstance(target, str) else np.broadcast_to(target, len(x))
    g_pooled = np.eye(logits.shape[-1])[t] @ head[0].T  # (B, K)
    g = np.broadcast_to(g_pooled[:, *([None] * (a.ndim - 2)), :] / cells, a.shape)
    for (W, _), z in zip(convs[::-1], pre[::-1]):
        g = (np.maximum(g, 0) if guided_relu else g) * (z > 0)
        g = conv_same_transpose(g, W)
    return g


def linen_weights(variables, n_convs):
    p = jax.tree.map(np.asarray, variables["params"])
    convs = [(p[f"conv{i}"]["kernel"], p[f"conv{i}"]["bias"]) for i in range(1, n_convs + 1)]
    return convs, (p["head"]["kernel"], p["head"]["bias"])


def assert_saliency(actual, expected):
    scale = np.abs(expected).max()
    assert scale > 0
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-4, atol=1e-5 * scale)


# --------------------------------------------------------------------------- guided_backprop


def test_linen_convnet_matches_naive_reference(convnet):
    """1-D, 2-D and 3-D; the guided map differs from the plain gradient."""
    model, variables, x = convnet
    convs, head = linen_weights(variables, 2)
    target = np.arange(x.shape[0]) % 3
    expected = naive_guided(convs, head, x, target)
    plain = naive_guided(convs, head, x, target, guided_relu=False)
    assert np.abs(plain - expected).max() > 0.1 * np.abs(expected).max()
    forward = functools.partial(model.apply, variables)
    assert_saliency(guided.guided_backprop(forward, x, jnp.asarray(target)), expected)
    assert_saliency(guided.guided_backprop(forward, x), naive_guided(convs, head, x, "predicted"))


def test_plain_function_with_max_zero_relus():
    """ReLUs written as max(x, 0.0) and max(0.0, x) in plain jnp, with params as a pytree."""
    rng = np.random.default_rng(0)
    convs = [
        (rng.normal(size=(3, 3, 2, 4)), rng.normal(size=4) * 0.1),
        (rng.normal(size=(3, 3, 4, 5)), rng.normal(size=5) * 0.1),
    ]
    head = (rng.normal(size=(5, 3)), rng.normal(size=3))
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), (convs, head))
    x = rng.normal(size=(2, 5, 4, 2)).astype(np.float32)

    def conv(a, W, b):
        dims = ("NHWC", "HWIO", "NHWC")
        return jax.lax.conv_general_dilated(a, W, (1, 1), "SAME", dimension_numbers=dims) + b

    def forward(params, x):
        (c1, c2), (Wh, bh) = params
        a = jnp.maximum(conv(x, *c1), 0.0)
        a = jnp.maximum(0.0, conv(a, *c2))
        return a.mean(axis=(1, 2)) @ Wh + bh

    f = functools.partial(forward, params)
    assert_saliency(guided.guided_backprop(f, x, 0), naive_guided(convs, head, x, 0))
    # Every head weight of class 2 is negative, so no gradient passes the last ReLUs.
    assert np.all(head[0][:, 2] < 0)
    np.testing.assert_array_equal(guided.guided_backprop(f, x, 2), 0.0)


def test_model_without_relus_gives_the_input_gradient():
    """tanh, GELU and relu6 (a custom_jvp other than relu keeps its own rule)."""
    k1, k2, kx = jax.random.split(jax.random.key(0), 3)
    W1, W2 = jax.random.normal(k1, (3, 6)), jax.random.normal(k2, (6, 4))

    def forward(x):
        h = jax.nn.gelu(jnp.tanh(x.mean(axis=1) @ W1)) + jax.nn.relu6(3 * x.sum(axis=1) @ W1)
        return h @ W2

    x = jax.random.normal(kx, (3, 5, 3))
    expected = jax.grad(lambda x: forward(x)[:, 1].sum())(x)
    assert float(jnp.abs(expected).max()) > 0
    np.testing.assert_allclose(guided.guided_backprop(forward, x, 1), expected, rtol=1e-6)


def test_mnist_cnn_guides_every_relu(mnist):
    """MnistCNN (relu modules, max-pooling, nn.relu in the dense part) against the same
    network written by hand with guided_relu at its three ReLUs."""
    model, variables, x = mnist
    x = x[:2]
    p = variables["params"]

    def by_hand(x):
        def pool(a):
            return jax.lax.reduce_window(
                a, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 3, 3, 1), "VALID"
            )

        def conv(a, layer):
            dims = ("NHWC", "HWIO", "NHWC")
            out = jax.lax.conv_general_dilated(
                a, p[layer]["kernel"], (1, 1), "VALID", dimension_numbers=dims
            )
            return out + p[layer]["bias"]

        a = pool(guided.guided_relu(conv(x, "conv1")))
        a = pool(guided.guided_relu(conv(a, "conv2"))).reshape(x.shape[0], -1)
        a = guided.guided_relu(a @ p["fc1"]["kernel"] + p["fc1"]["bias"])
        return a @ p["head"]["kernel"] + p["head"]["bias"]

    target = jnp.array([3, 7])
    expected = jax.grad(lambda x: jnp.take_along_axis(by_hand(x), target[:, None], 1).sum())(x)
    actual = guided.guided_backprop(functools.partial(model.apply, variables), x, target)
    plain = jax.grad(
        lambda x: jnp.take_along_axis(model.apply(variables, x), target[:, None], 1).sum()
    )(x)
    assert float(jnp.abs(plain - expected).max()) > 0.1 * float(jnp.abs(expected).max())
    assert_saliency(actual, np.asarray(expected))


def test_guided_relu_backward_rule():
    """grad_in = relu(grad_out) * (x > 0), pytorch-grad-cam's GuidedBackpropReLU rule."""
    x = jnp.array([-1.0, 0.0, 2.0, 3.0, -4.0])
    g = jnp.array([5.0, 6.0, -7.0, 8.0, 9.0])
    _, vjp = jax.vjp(guided.guided_relu, x)
    np.testing.assert_array_equal(vjp(g)[0], [0.0, 0.0, 0.0, 8.0, 0.0])
    np.testing.assert_array_equal(guided.guided_relu(x), jax.nn.relu(x))


def test_nnx_model_matches_naive_reference(nnx_model):
    model, x = nnx_model
    convs = [
        (np.asarray(c.kernel[...]), np.asarray(c.bias[...])) for c in (model.conv1, model.conv2)
    ]
    head = (np.asarray(model.head.kernel[...]), np.asarray(model.head.bias[...]))
    actual = guided.guided_backprop(lambda x: model(x), x, 1)
    assert_saliency(actual, naive_guided(convs, head, x, 1))


def test_equinox_model_matches_naive_reference():
    eqx = pytest.importorskip("equinox")
    k1, k2, k3, kx = jax.random.split(jax.random.key(5), 4)
    layers = [
        eqx.nn.Conv(1, 2, 3, 3, padding="SAME", key=k1),
        eqx.nn.Conv(1, 3, 4, 3, padding="SAME", key=k2),
    ]
    linear = eqx.nn.Linear(4, 3, key=k3)

    def per_sample(x):  # (T, C), channels last
        a = x.T
        for layer in layers:
            a = jax.nn.relu(layer(a))
        return linear(a.mean(axis=1))

    x = jax.random.normal(kx, (2, 7, 2))
    convs = [(np.asarray(c.weight).transpose(2, 1, 0), np.asarray(c.bias)[:, 0]) for c in layers]
    head = (np.asarray(linear.weight).T, np.asarray(linear.bias))
    actual = guided.guided_backprop(eqx.filter_jit(jax.vmap(per_sample)), x, 0)
    assert_saliency(actual, naive_guided(convs, head, x, 0))


@pytest.mark.parametrize("convnet", [2], ids=["2d"], indirect=True)
def test_under_jit_and_with_traced_parameters(convnet):
    model, variables, x = convnet
    convs, head = linen_weights(variables, 2)

    @jax.jit
    def saliency(variables, x):
        return guided.guided_backprop(lambda x: model.apply(variables, x), x, 2)

    assert_saliency(saliency(variables, x), naive_guided(convs, head, x, 2))


def test_scan_and_cond_are_entered():
    """ReLUs inside lax.scan, jax.checkpoint and lax.cond: as guided_relu written by hand."""
    Ws = jax.random.normal(jax.random.key(0), (3, 4, 4))
    W_out = jax.random.normal(jax.random.key(2), (4, 3))
    x = jax.random.normal(jax.random.key(1), (2, 5, 4))

    def by_hand(x, relu):
        for W in Ws:
            x = relu(x @ W)
        return relu(x).mean(axis=1) @ W_out

    def scanned(x):
        x, _ = jax.lax.scan(lambda a, W: (jax.nn.relu(a @ W), None), x, Ws)
        x = jax.checkpoint(lambda a: jax.lax.cond(True, jax.nn.relu, jnp.tanh, a))(x)
        return x.mean(axis=1) @ W_out

    expected = jax.grad(lambda x: by_hand(x, guided.guided_relu)[:, 1].sum())(x)
    plain = jax.grad(lambda x: by_hand(x, jax.nn.relu)[:, 1].sum())(x)
    assert float(jnp.abs(plain - expected).max()) > 0.1 * float(jnp.abs(expected).max()) > 0
    np.testing.assert_allclose(guided.guided_backprop(scanned, x, 1), expected, rtol=1e-5)


def test_targets_callable_and_probability():
    W = jax.random.normal(jax.random.key(0), (3, 4))
    x = jax.random.normal(jax.random.key(1), (2, 5, 3))

    def forward(x):
        return jax.nn.relu(x.mean(axis=1) @ W)

    by_index = guided.guided_backprop(forward, x, 2)
    np.testing.assert_array_equal(
        guided.guided_backprop(forward, x, lambda logits: logits[:, 2]), by_index
    )
    prob = guided.guided_backprop(forward, x, 2, score="probability")
    by_fn = guided.guided_backprop(forward, x, lambda logits: jax.nn.softmax(logits)[:, 2])
    np.testing.assert_allclose(prob, by_fn, rtol=1e-6)


# --------------------------------------------------------------------------- errors


def test_errors_name_the_problem():
    W = jnp.ones((3, 4))
    x = jnp.ones((2, 5, 3))

    def forward(x):
        return jax.nn.relu(x.mean(axis=1) @ W)

    def looped(x):
        def body(c):
            return jax.nn.relu(c[0]), c[1] + 1

        return jax.lax.while_loop(lambda c: c[1] < 2, body, (forward(x), 0))[0]

    @jax.custom_vjp
    def block(a):
        return jax.nn.relu(a)

    block.defvjp(lambda a: (jax.nn.relu(a), None), lambda _, g: (g,))

    with pytest.raises(ValueError, match="ReLU inside the primitive 'while'.*lax.scan"):
        guided.guided_backprop(looped, x, 0)
    with pytest.raises(ValueError, match="custom_vjp"):
        guided.guided_backprop(lambda x: block(x.mean(axis=1) @ W), x, 0)
    with pytest.raises(ValueError, match="floating.*astype"):
        guided.guided_backprop(forward, x.astype(jnp.int32), 0)
    with pytest.raises(ValueError, match="target index 4 is out of range"):
        guided.guided_backprop(forward, x, 4)
    with pytest.raises(ValueError, match="'label' is not understood"):
        guided.guided_backprop(forward, x, "label")
    with pytest.raises(ValueError, match=r"one score per sample, shape \(2,\)"):
        guided.guided_backprop(forward, x, lambda logits: logits)
    with pytest.raises(ValueError, match=r"1-3 spatial axes; got shape \(2, 3\)"):
        guided.guided_backprop(forward, x[:, 0], 0)


def test_a_while_loop_without_relu_is_kept():
    W = jax.random.normal(jax.random.key(0), (3, 4))
    x = jax.random.normal(jax.random.key(1), (2, 5, 3))

    def forward(x):
        a = jax.nn.relu(x.mean(axis=1) @ W)
        steps = jax.lax.while_loop(lambda i: i < 3, lambda i: i + 1, 0)
        return a * steps.astype(a.dtype)

    expected = jax.grad(lambda x: jnp.maximum(x.mean(axis=1) @ W, 0)[:, 1].sum() * 3)(x)
    assert float(jnp.abs(expected).max()) > 0
    np.testing.assert_allclose(guided.guided_backprop(forward, x, 1), expected, rtol=1e-6)


# --------------------------------------------------------------------------- guided_gradcam


@pytest.mark.parametrize("convnet", [2], ids=["2d"], indirect=True)
@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_guided_gradcam_is_saliency_times_rectified_cam(convnet, method):
    model, variables, x = convnet
    probe = linen_probe(model, "relu2")
    out = ifa_jax.guided_gradcam(probe, variables, x, method=method)
    result, cam_result = ifa_jax.explain(probe, variables, x, method=method)
    convs, head = linen_weights(variables, 2)
    assert_saliency(out.guided, naive_guided(convs, head, x, "predicted"))
    np.testing.assert_array_equal(out.probe_result.target, result.target)
    np.testing.assert_allclose(out.cam_result.cam, cam_result.cam, rtol=1e-6)
    heat = np.asarray(cams.upsample(np.maximum(cam_result.cam, 0), x.shape[1:-1]))
    assert heat.min() >= 0 and heat.max() > 0
    np.testing.assert_allclose(out.cam, heat, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        out.guided_cam, np.asarray(out.guided) * heat[..., None], rtol=1e-5, atol=1e-9
    )


def test_guided_gradcam_on_mnist_is_zero_where_the_cam_is(mnist):
    model, variables, x = mnist
    probe = linen_probe(model, "relu2")
    out = ifa_jax.guided_gradcam(probe, variables, x[:2], jnp.array([1, 2]))
    assert out.guided_cam.shape == x[:2].shape and out.cam.shape == x[:2].shape[:-1]
    cold = np.asarray(out.cam) == 0
    assert np.all(np.asarray(out.guided_cam)[cold] == 0)
    direct = guided.guided_backprop(
        lambda x: MnistCNN().apply(variables, x), x[:2], jnp.array([1, 2])
    )
    assert_saliency(out.guided, np.asarray(direct))


# --------------------------------------------------------------------------- pytorch-grad-cam

PEERS = Path(__file__).parent / "data" / "peers.npz"
PEERS_GUIDED = PEERS.with_name("peers_guided.npz")
PEER_RTOL = 1e-4  # max |ours - theirs| / max |theirs|, per image


def relative_errors(ours, theirs) -> np.ndarray:
    """Per image: max |ours - theirs| / max |theirs|."""
    ours, theirs = (np.asarray(a, np.float64).reshape(len(a), -1) for a in (ours, theirs))
    return np.abs(ours - theirs).max(1) / np.abs(theirs).max(1)


@pytest.fixture(scope="module")
def peer_guided():
    """{case: (model, variables, x, labels)} rebuilt from peers.npz, and the arrays of
    peers_guided.npz (pytorch-grad-cam's guided backprop on the same cases)."""
    for path in (PEERS, PEERS_GUIDED):
        if not path.exists():
            pytest.skip(f"{path} is missing: python -m experiments.golden_peers --guided")
    with np.load(PEERS_GUIDED) as data:
        theirs = {k: data[k] for k in data.files}
    digest = hashlib.sha256(PEERS.read_bytes()).hexdigest()
    assert str(theirs["peers_sha256"]) == digest, (
        f"{PEERS_GUIDED.name} was made from another {PEERS.name}: rerun "
        "python -m experiments.golden_peers --guided"
    )
    with np.load(PEERS) as data:
        stored = {k: data[k] for k in data.files}
    cases = {}
    for name in ("mnist_cnn", "convnet"):
        spec = json.loads(str(stored[f"{name}/spec"]))
        prefix = f"{name}/variables/"
        flat = {k[len(prefix) :]: jnp.asarray(v) for k, v in stored.items() if k.startswith(prefix)}
        model = getattr(models, spec["model"])(**spec["kwargs"])
        variables = traverse_util.unflatten_dict(flat, sep="/")
        cases[name] = (model, variables, stored[f"{name}/x"], stored[f"{name}/labels"])
    return cases, theirs


def test_equals_pytorch_grad_cams_guided_backprop(peer_guided):
    """pytorch-grad-cam 1.5.7's GuidedBackpropReLUModel (one image at a time, target = the
    label's logit) on torch twins of the two trained CNNs of peers.npz, every ReLU a module
    so that it is swapped: ``guided_backprop`` equals it to 1e-4 relative per image, and so
    does the saliency of ``guided_gradcam`` (through the probe's forward)."""
    cases, theirs = peer_guided
    assert PEERS_GUIDED.stat().st_size < 100_000
    for name, (model, variables, x, labels) in cases.items():
        expected = theirs[f"{name}/logit/pytorch-grad-cam/GuidedBackprop"]
        assert expected.shape == x.shape and np.all(np.abs(expected).max(axis=(1, 2, 3)) > 0)
        ours = guided.guided_backprop(functools.partial(model.apply, variables), x, labels)
        assert relative_errors(ours, expected).max() < PEER_RTOL, name
        if name == "convnet":
            probe = linen_probe(model, "relu2")
            via_probe = guided.guided_gradcam(probe, variables, x, labels).guided
            assert relative_errors(via_probe, expected).max() < PEER_RTOL
        if name == "mnist_cnn":
            # The comparison can fail: with the twin's functional F.relu after fc1, which
            # pytorch-grad-cam leaves plain, its map is far from ours.
            plain = theirs[f"{name}/logit/pytorch-grad-cam/GuidedBackprop+functional_relu"]
            assert relative_errors(ours, plain).max() > 0.1

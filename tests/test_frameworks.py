"""Probes for plain functions, Equinox and Haiku: checked against a hand-split model.

One small CNN (conv -> relu -> conv -> relu2 -> mean -> dense) is written four ways with
the same weights: as plain functions (the hand-split reference: A from ``features``, G
from ``jax.vjp`` of ``head``), as a Linen model (the CAM reference, through
``linen_probe``, itself checked against a hand split in test_probe.py), as a per-sample
channels-first Equinox model, as a batched channels-last Equinox model, and as Haiku.
"""

from __future__ import annotations

import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ifa_jax
from ifa_jax import cams, explain
from ifa_jax.probes import equinox_layers, equinox_probe, function_probe, haiku_probe, linen_probe
from ifa_jax.runner.models import ReLU

eqx = pytest.importorskip("equinox")
hk = pytest.importorskip("haiku")

TOL = {"rtol": 1e-5, "atol": 1e-5}
KEY = jax.random.key(7)  # for the methods that need one (randomcam)
TARGET = jnp.array([0, 2, 1])


def conv(x, p):
    """SAME 3x3 convolution, channels last: x (B, H, W, C), w (3, 3, C, K)."""
    dims = ("NHWC", "HWIO", "NHWC")
    return jax.lax.conv_general_dilated(x, p["w"], (1, 1), "SAME", dimension_numbers=dims) + p["b"]


def features(p, x):
    """The reference's first part: x (B, H, W, 2) -> A = relu2 (B, H, W, 6)."""
    return jax.nn.relu(conv(jax.nn.relu(conv(x, p["conv1"])), p["conv2"]))


def head(p, a):
    """The reference's second part: A (B, H, W, 6) -> logits (B, 3)."""
    return a.mean(axis=(1, 2)) @ p["head"]["w"] + p["head"]["b"]


@pytest.fixture(scope="module")
def case():
    """(params in Haiku's layout {layer: {w, b}}, x (3, 6, 5, 2) channels last)."""
    k = iter(jax.random.split(jax.random.key(0), 7))
    shapes = {"conv1": (3, 3, 2, 4), "conv2": (3, 3, 4, 6), "head": (6, 3)}
    params = {
        name: {
            "w": jax.random.normal(next(k), shape) / 3,
            "b": 0.1 * jax.random.normal(next(k), shape[-1:]),
        }
        for name, shape in shapes.items()
    }
    return params, jax.random.normal(next(k), (3, 6, 5, 2))


@pytest.fixture(scope="module")
def hand_split(case):
    """A, G and the logits by hand, under jit: one vjp of head at A = features(x)."""
    params, x = case

    @jax.jit
    def split(params, x):
        a = features(params, x)
        logits, vjp = jax.vjp(lambda a: head(params, a), a)
        (g,) = vjp(jax.nn.one_hot(TARGET, 3))
        return a, g, logits

    return split(params, x)


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(4, (3, 3), padding="SAME", name="conv1")(x))
        h = ReLU(name="relu2")(nn.Conv(6, (3, 3), padding="SAME", name="conv2")(h))
        return nn.Dense(3, name="head")(h.mean(axis=(1, 2)))


def linen_variables(params):
    return {
        "params": {n: {"kernel": p["w"], "bias": p["b"]} for n, p in params.items()},
    }


def equinox_per_sample(params):
    """Equinox's own layers: per sample, channels first (C, H, W)."""
    k = jax.random.split(jax.random.key(1), 3)
    model = eqx.nn.Sequential(
        [
            eqx.nn.Conv2d(2, 4, 3, padding=1, key=k[0]),
            eqx.nn.Lambda(jax.nn.relu),
            eqx.nn.Conv2d(4, 6, 3, padding=1, key=k[1]),
            eqx.nn.Lambda(jax.nn.relu),
            eqx.nn.Lambda(lambda a: a.mean(axis=(1, 2))),
            eqx.nn.Linear(6, 3, key=k[2]),
        ]
    )
    c1, c2, d = params["conv1"], params["conv2"], params["head"]
    return eqx.tree_at(
        lambda m: (
            m.layers[0].weight,
            m.layers[0].bias,
            m.layers[2].weight,
            m.layers[2].bias,
            m.layers[5].weight,
            m.layers[5].bias,
        ),
        model,
        (
            c1["w"].transpose(3, 2, 0, 1),
            c1["b"][:, None, None],
            c2["w"].transpose(3, 2, 0, 1),
            c2["b"][:, None, None],
            d["w"].T,
            d["b"],
        ),
    )


class NHWCConv(eqx.Module):
    w: jax.Array
    b: jax.Array

    def __call__(self, x):
        return conv(x, {"w": self.w, "b": self.b})


class BatchedNet(eqx.Module):
    """A batched, channels-last Equinox model (B, H, W, C), tapped at relu2."""

    conv1: NHWCConv
    conv2: NHWCConv
    relu2: eqx.nn.Lambda
    head: dict

    def __call__(self, x):
        h = self.relu2(self.conv2(jax.nn.relu(self.conv1(x))))
        return head({"head": self.head}, h)


def haiku_net(x):
    h = jax.nn.relu(hk.Conv2D(4, 3, name="conv1")(x))
    h = hk.to_module(jax.nn.relu)(name="relu2")(hk.Conv2D(6, 3, name="conv2")(h))
    return hk.Linear(3, name="head")(h.mean(axis=(1, 2)))


PATHS = ("function", "equinox", "equinox_batched", "haiku")


@pytest.fixture(scope="module")
def probes(case):
    """{path: (probe at relu2, variables)}, built once for every test."""
    params, _ = case
    batched = BatchedNet(
        NHWCConv(**params["conv1"]),
        NHWCConv(**params["conv2"]),
        eqx.nn.Lambda(jax.nn.relu),
        params["head"],
    )
    per_sample = equinox_probe(equinox_per_sample(params), lambda m: m.layers[3])
    whole_batch = equinox_probe(
        batched, "relu2", batched=True, channel_axis=-1, input_channel_axis=-1
    )
    return {
        "function": (function_probe(features, head, name="relu2"), params),
        "equinox": (per_sample, per_sample.variables),
        "equinox_batched": (whole_batch, whole_batch.variables),
        "haiku": (haiku_probe(hk.without_apply_rng(hk.transform(haiku_net)), "relu2"), params),
    }


@pytest.fixture(scope="module")
def linen_cams(case, hand_split):
    """{method: CamResult} of the equivalent Linen model, the CAM reference."""
    params, x = case
    probe, variables = linen_probe(LinenNet(), "relu2"), linen_variables(params)
    out = probe(variables, x, TARGET)
    a, g, _ = hand_split
    np.testing.assert_allclose(out.activations, a, **TOL)
    np.testing.assert_allclose(out.gradients, g, **TOL)
    return {m: explain(probe, variables, x, TARGET, m, key=KEY)[1] for m in cams.LAYER_METHODS}


@pytest.mark.parametrize("path", PATHS)
def test_every_method_equals_the_reference(path, case, probes, hand_split, linen_cams):
    _, x = case
    probe, variables = probes[path]
    a, g, logits = hand_split
    out = probe(variables, x, TARGET)
    np.testing.assert_allclose(out.logits, logits, **TOL)
    np.testing.assert_allclose(out.activations, a, **TOL)
    np.testing.assert_allclose(out.gradients, g, **TOL)
    assert float(jnp.abs(g).max()) > 1e-3  # the comparison is not of zeros
    for method in cams.LAYER_METHODS:
        result, got = explain(probe, variables, x, TARGET, method, key=KEY)
        np.testing.assert_allclose(result.gradients, g, **TOL)
        for field, mine, want in zip(got._fields, got, linen_cams[method]):
            np.testing.assert_allclose(mine, want, **TOL, err_msg=f"{method} {field}")


@pytest.mark.parametrize("path", PATHS)
def test_one_forward_pass_and_one_vjp(path, case, probes):
    _, x = case
    probe, variables = probes[path]
    text = str(
        jax.make_jaxpr(
            lambda v, x: probe._core(v, x, None, mode="predicted", fn=None, score="logit")
        )(variables, x)
    )
    # The forward's two convs and no other: the vjp stops at relu2's output.
    assert text.count("conv_general_dilated") == 2
    # The dense head once forward and once in the vjp to A; none for its weights.
    assert text.count("dot_general") == 2


def test_equinox_variables_compose_with_jit(case, probes, hand_split):
    _, x = case
    probe, params = probes["equinox"]
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(params))
    grads = jax.jit(lambda p, x: probe(p, x, TARGET).gradients)(params, x)
    np.testing.assert_allclose(grads, hand_split[1], **TOL)


def test_equinox_where_forms_and_the_model_is_untouched(case, hand_split):
    params, x = case
    model = equinox_per_sample(params)
    assert equinox_layers(model) == [f"layers/{i}" for i in range(6)]
    for where in ("layers.3", "layers/3", lambda m: m.layers[3]):
        probe = equinox_probe(model, where)
        assert probe.layers == ("layers/3",) and probe.single
    assert not equinox_probe(model, ["layers.3"]).single  # a list gives dicts
    both = equinox_probe(model, lambda m: (m.layers[1], m.layers[3]))
    arrays = both.variables
    assert both.layers == ("layers/1", "layers/3") and not both.single
    logits, acts = both.forward_activations(arrays, x)
    np.testing.assert_allclose(acts["layers/3"], hand_split[0], **TOL)
    want_relu1 = jax.nn.relu(conv(x, params["conv1"]))
    np.testing.assert_allclose(acts["layers/1"], want_relu1, **TOL)
    np.testing.assert_allclose(logits, hand_split[2], **TOL)
    assert isinstance(model.layers[3], eqx.nn.Lambda)  # the probe tapped a copy
    np.testing.assert_allclose(jax.vmap(model)(x.transpose(0, 3, 1, 2)), hand_split[2], **TOL)


def test_equinox_errors_name_the_fix(case):
    params, x = case
    model = equinox_per_sample(params)
    with pytest.raises(ValueError, match=r"layer 'layers/9' not found; layers: layers/0, "):
        equinox_probe(model, "layers.9")
    with pytest.raises(ValueError, match=r"picks an array of shape \(4, 2, 3, 3\), which is"):
        equinox_probe(model, lambda m: m.layers[0].weight)
    with pytest.raises(ValueError, match=r"layer 'layers/5' outputs shape \(3, 3\); a CAM"):
        equinox_probe(model, "layers.5").forward_activations(*_arrays_and(model, x))
    dropout = eqx.tree_at(lambda m: m.layers[1], model, eqx.nn.Dropout(0.5))
    probe = equinox_probe(dropout, "layers.3")
    arrays = probe.variables
    with pytest.raises(ValueError, match=r"eqx\.nn\.inference_mode\(model\) before"):
        probe.forward_activations(arrays, x)
    inference = equinox_probe(eqx.nn.inference_mode(dropout), "layers.3")
    arrays = inference.variables
    assert inference.forward_activations(arrays, x)[1]["layers/3"].shape == (3, 6, 5, 6)

    class VmapsItself(eqx.Module):
        inner: eqx.nn.Sequential

        def __call__(self, x):
            return jax.vmap(self.inner)(x)

    probe = equinox_probe(VmapsItself(model), "inner.layers.3", batched=True)
    arrays = probe.variables
    with pytest.raises(ValueError, match="runs inside a jax.vmap of the model's own"):
        probe.forward_activations(arrays, x)
    probe = equinox_probe(model, "layers.3", channel_axis=3)
    arrays = probe.variables
    with pytest.raises(ValueError, match="channel_axis=3 is out of range for a per-sample"):
        probe.forward_activations(arrays, x)


def _arrays_and(model, x):
    return eqx.filter(model, eqx.is_array), x


def test_haiku_with_state_and_rng(case, hand_split):
    params, x = case
    transformed = hk.transform_with_state(haiku_net)
    _, state = transformed.init(jax.random.key(0), x)
    probe = haiku_probe(transformed, "relu2")
    logits, acts = probe.forward_activations((params, state), x)
    np.testing.assert_allclose(acts["relu2"], hand_split[0], **TOL)
    np.testing.assert_allclose(logits, hand_split[2], **TOL)
    with pytest.raises(ValueError, match=r"takes variables=\(params, state\)"):
        probe.forward_activations(params, x)
    with pytest.raises(ValueError, match="layer 'relu3' not found; layers: conv1, conv2, relu2"):
        haiku_probe(hk.transform(haiku_net), "relu3").forward_activations(params, x)


@pytest.mark.parametrize(
    ("module", "build"),
    [
        ("equinox", lambda: equinox_probe(None, "layers.0")),
        ("haiku", lambda: haiku_probe(None, "relu2")),
    ],
)
def test_optional_frameworks_say_how_to_install(monkeypatch, module, build):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(ImportError, match=rf"needs {module}, .*pip install 'ifa_jax\[{module}\]'"):
        build()


def test_function_probe_with_a_token_reshape():
    """A plain function whose features are tokens (class token + a 2x2 patch grid): with
    reshape=tokens_to_grid() the probe's A and G are the patch tokens on their grid, and
    G equals jax.grad of the head through the tokens, class token dropped."""
    k1, k2 = jax.random.split(jax.random.key(3))
    params = {"w": jax.random.normal(k1, (3, 4)), "v": jax.random.normal(k2, (4, 2))}

    def features(p, x):  # x (B, 4, 3) -> tokens (B, 5, 4), a class token of zeros first
        tokens = x @ p["w"]
        return jnp.concatenate([jnp.zeros_like(tokens[:, :1]), tokens], axis=1)

    def head(p, t):  # every token, the class token included, reaches the logits
        return jnp.tanh(t).mean(axis=1) @ p["v"]

    x = jax.random.normal(jax.random.key(4), (2, 4, 3))
    probe = function_probe(features, head, reshape=ifa_jax.tokens_to_grid(prefix=1))
    out = probe(params, x, jnp.array([0, 1]))
    tokens = features(params, x)
    want_g = jax.vmap(jax.grad(lambda t, c: head(params, t[None])[0, c]))(tokens, jnp.array([0, 1]))
    np.testing.assert_allclose(out.activations, tokens[:, 1:].reshape(2, 2, 2, 4), atol=1e-6)
    np.testing.assert_allclose(out.gradients, want_g[:, 1:].reshape(2, 2, 2, 4), atol=1e-6)

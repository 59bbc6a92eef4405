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
    with pytest.raises(ValueError, match="runs inside a jax.vmap in the model's code"):
        probe.forward_activations(arrays, x)
    per_sample = equinox_probe(VmapsItself(model).inner, "layers.3")  # what it advises
    assert per_sample(per_sample.variables, x, 0).activations.shape == (3, 6, 5, 6)
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


# --------------------------------------------------------------------------- Equinox (issue 26)


class EqxBlock(eqx.Module):
    """A pre-norm transformer block written as Equinox's own are: per sample, tokens
    (T, D), the norm applied per token with jax.vmap."""

    norm1: eqx.nn.LayerNorm
    attn: eqx.nn.MultiheadAttention

    def __init__(self, dim, key):
        self.norm1 = eqx.nn.LayerNorm(dim)
        self.attn = eqx.nn.MultiheadAttention(2, dim, key=key)

    def __call__(self, x):
        h = jax.vmap(self.norm1)(x)
        return x + self.attn(h, h, h)


class EqxViT(eqx.Module):
    """Patch tokens (4, 3) -> a class token and 4 patch tokens of width 8 -> two blocks
    -> the class token's logits (3,)."""

    embed: eqx.nn.Linear
    cls: jax.Array
    blocks: tuple
    head: eqx.nn.Linear

    def __init__(self, key):
        k = jax.random.split(key, 5)
        self.embed = eqx.nn.Linear(3, 8, key=k[0])
        self.cls = jax.random.normal(k[1], (1, 8))
        self.blocks = (EqxBlock(8, k[2]), EqxBlock(8, k[3]))
        self.head = eqx.nn.Linear(8, 3, key=k[4])

    def __call__(self, x):
        h = jnp.concatenate([self.cls, jax.vmap(self.embed)(x)])
        for block in self.blocks:
            h = block(h)
        return self.head(h[0])


def _by_hand_at_last_norm(vit, x, target):
    """(A, G) at the last block's norm1, per sample (5, 8), by jax.grad of the model
    split there."""

    def upto(xi):
        h = jnp.concatenate([vit.cls, jax.vmap(vit.embed)(xi)])
        h = vit.blocks[0](h)
        return h, jax.vmap(vit.blocks[1].norm1)(h)

    def after(a, h, c):
        return vit.head((h + vit.blocks[1].attn(a, a, a))[0])[c]

    h, a = jax.vmap(upto)(x)
    g = jax.vmap(jax.grad(after))(a, h, target)
    return a, g


def test_equinox_taps_a_submodule_the_model_vmaps_over_tokens():
    vmap = jax.vmap
    vit = EqxViT(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2, 4, 3))
    target = jnp.array([0, 2])
    want_a, want_g = _by_hand_at_last_norm(vit, x, target)
    probe = equinox_probe(vit, lambda m: m.blocks[1].norm1, channel_axis=-1, input_channel_axis=-1)
    out = probe(probe.variables, x, target)
    assert out.activations.shape == (2, 5, 8)  # every token, not one token's slice
    np.testing.assert_allclose(out.activations, want_a, **TOL)
    np.testing.assert_allclose(out.gradients, want_g, **TOL)
    assert jax.vmap is vmap  # itself again once the probe has run


def test_equinox_reshape_lays_tokens_on_a_grid():
    vit = EqxViT(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2, 4, 3))
    target = jnp.array([1, 0])
    want_a, want_g = _by_hand_at_last_norm(vit, x, target)
    probe = equinox_probe(
        vit,
        "blocks.1.norm1",
        reshape=ifa_jax.tokens_to_grid(prefix=1),
        channel_axis=-1,
        input_channel_axis=-1,
    )
    out = probe(probe.variables, x, target)
    np.testing.assert_allclose(out.activations, want_a[:, 1:].reshape(2, 2, 2, 8), **TOL)
    np.testing.assert_allclose(out.gradients, want_g[:, 1:].reshape(2, 2, 2, 8), **TOL)
    _, cam = explain(probe, probe.variables, x, target, "gradcam")
    assert cam.cam.shape == (2, 2, 2)


def test_equinox_where_none_taps_the_natural_layer(case, hand_split):
    params, x = case
    cnn = equinox_probe(equinox_per_sample(params))
    assert cnn.layer is None and "found on the first call" in repr(cnn)
    out = cnn(cnn.variables, x, TARGET)
    assert cnn.layer == "layers/3"  # the last layer with a spatial output: relu2
    assert "layers/3" in repr(cnn) and "the last layer with a spatial output" in repr(cnn)
    np.testing.assert_allclose(out.activations, hand_split[0], **TOL)

    vit = EqxViT(jax.random.key(0))
    tokens = jax.random.normal(jax.random.key(1), (2, 4, 3))
    auto = equinox_probe(vit, channel_axis=-1, input_channel_axis=-1)
    got = auto(auto.variables, tokens, jnp.array([0, 2]))
    # the norm before the last attention, its 1 + 2 x 2 tokens laid on a 2 x 2 grid
    assert auto.layer == "blocks/1/norm1"
    want_a, want_g = _by_hand_at_last_norm(vit, tokens, jnp.array([0, 2]))
    np.testing.assert_allclose(got.activations, want_a[:, 1:].reshape(2, 2, 2, 8), **TOL)
    np.testing.assert_allclose(got.gradients, want_g[:, 1:].reshape(2, 2, 2, 8), **TOL)


def test_equinox_vmap_it_cannot_see_through_gets_advice_that_works():
    class Hidden(eqx.Module):
        """Vmaps the norm through a lambda: the probe sees one token at a time."""

        norm: eqx.nn.LayerNorm
        head: eqx.nn.Linear

        def __call__(self, x):
            h = jax.vmap(lambda t: self.norm(t))(x)
            return self.head(h.mean(axis=0))

    model = Hidden(eqx.nn.LayerNorm(4), eqx.nn.Linear(4, 2, key=jax.random.key(0)))
    x = jax.random.normal(jax.random.key(1), (2, 5, 4))
    probe = equinox_probe(model, "norm", channel_axis=-1, input_channel_axis=-1)
    with pytest.raises(ValueError, match=r"jax\.vmap\(self\.layer\)\(x\)"):
        probe(probe.variables, x, 0)
    with pytest.raises(ValueError, match=r"jax\.vmap\(self\.layer\)\(x\)"):
        probe.forward_activations(probe.variables, x)


# --------------------------------------------------------------------------- Haiku (issue 26)


def test_haiku_layer_none_taps_the_natural_layer(case, hand_split):
    params, x = case
    net = hk.without_apply_rng(hk.transform(haiku_net))
    probe = haiku_probe(net)
    assert probe.layer is None
    out = probe(params, x, TARGET)
    assert probe.layer == "relu2"  # the last module with a spatial output
    assert repr(probe) == "LayerProbe(layer='relu2': the last layer with a spatial output)"
    np.testing.assert_allclose(out.activations, hand_split[0], **TOL)
    np.testing.assert_allclose(out.gradients, hand_split[1], **TOL)


def test_haiku_model_that_needs_an_rng_names_the_fix():
    def dropout_net(x, is_training=True):
        h = hk.to_module(jax.nn.relu)(name="relu")(hk.Conv2D(4, 3, name="conv")(x))
        if is_training:
            h = hk.dropout(hk.next_rng_key(), 0.5, h)
        return hk.Linear(2, name="head")(h.mean(axis=(1, 2)))

    net = hk.transform(dropout_net)
    x = jnp.ones((2, 5, 5, 1))
    params = net.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"haiku_probe\(transformed, layer, is_training=False\)"):
        haiku_probe(net, "relu")(params, x, 0)
    with pytest.raises(ValueError, match=r"random numbers inside the probe"):
        haiku_probe(net)(params, x, 0)  # finding the natural layer runs the model too
    out = haiku_probe(net, "relu", is_training=False)(params, x, 0)
    assert out.activations.shape == (2, 5, 5, 4)


def test_every_factory_takes_its_keywords_in_the_same_place():
    """The layer second (None: the natural layer), then output= and reshape= first among
    the keywords; every factory returns the probe alone."""
    import inspect

    from ifa_jax import probes

    for factory in (linen_probe, ifa_jax.nnx_probe, equinox_probe, haiku_probe, ifa_jax.hf_probe):
        params = list(inspect.signature(factory).parameters.values())
        assert params[1].name in ("layers", "where") and params[1].default is None, factory
        keywords = [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
        assert keywords[:2] == ["output", "reshape"], factory
        assert inspect.signature(factory).return_annotation in ("LayerProbe", probes.LayerProbe)
    keywords = inspect.signature(function_probe).parameters
    assert list(keywords)[2:4] == ["output", "reshape"]
    assert list(inspect.signature(ifa_jax.legrad_probe).parameters)[2] == "output"

"""The layer probe: one forward + one vjp, checked against hand-split models."""

from __future__ import annotations

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ifa_jax import explain
from ifa_jax.probes import linen_probe, nnx_probe
from ifa_jax.runner.models import ConvNet


def mnist_split(variables):
    """MnistCNN cut by hand at conv2: features(x) -> A, head(A) -> logits."""
    p = variables["params"]

    def conv(name, feats, k, x):
        return nn.Conv(feats, (k, k), padding="VALID").apply({"params": p[name]}, x)

    def features(x):
        h = nn.max_pool(nn.relu(conv("conv1", 100, 5, x)), (3, 3), strides=(3, 3))
        return conv("conv2", 200, 3, h)

    def head(a):
        h = nn.max_pool(nn.relu(a), (3, 3), strides=(3, 3)).reshape(a.shape[0], -1)
        h = nn.relu(nn.Dense(512).apply({"params": p["fc1"]}, h))
        return nn.Dense(10).apply({"params": p["head"]}, h)

    return features, head


def test_gradients_equal_hand_split_model(mnist):
    model, variables, x = mnist
    features, head = mnist_split(variables)
    target = jnp.array([0, 3, 9, 3])
    out = linen_probe(model, "conv2")(variables, x, target)
    A = features(x)
    want_g = jax.grad(lambda a: jnp.sum(head(a)[jnp.arange(4), target]))(A)
    np.testing.assert_allclose(out.activations, A, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.logits, head(A), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.gradients, want_g, rtol=1e-5, atol=1e-7)
    # Per sample: the gradient of sample 1's score alone equals row 1 of G.
    g1 = jax.grad(lambda a: head(a)[1, 3])(A)
    np.testing.assert_allclose(out.gradients[1], g1[1], rtol=1e-5, atol=1e-7)


def test_one_forward_pass_and_no_parameter_gradients(mnist):
    model, variables, x = mnist
    probe = linen_probe(model, "conv2")
    jaxpr = jax.make_jaxpr(
        lambda v, x: probe._core(v, x, None, mode="predicted", fn=None, score="logit")
    )(variables, x)
    text = str(jaxpr)
    # Two convs in the forward; the vjp stops at conv2's output so it needs none.
    assert text.count("conv_general_dilated") == 2


def test_targets(mnist):
    model, variables, x = mnist
    probe = linen_probe(model, "conv2")
    pred = probe(variables, x)
    logits = np.asarray(pred.logits)
    np.testing.assert_array_equal(pred.target, logits.argmax(-1))
    np.testing.assert_allclose(pred.score, logits.max(-1), rtol=1e-6)
    fixed = probe(variables, x, 7)
    np.testing.assert_allclose(fixed.score, logits[:, 7], rtol=1e-6)
    labels = np.array([1, 2, 3, 4])
    per_sample = probe(variables, x, labels, score="probability")
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(per_sample.score, probs[np.arange(4), labels], rtol=1e-5)
    custom = probe(variables, x, lambda z: z[:, 2] - z[:, 5])
    np.testing.assert_allclose(custom.score, logits[:, 2] - logits[:, 5], rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(custom.target) == -1)
    # Gradients of a callable target are the difference of the two class gradients.
    g2, g5 = probe(variables, x, 2).gradients, probe(variables, x, 5).gradients
    np.testing.assert_allclose(custom.gradients, g2 - g5, rtol=1e-4, atol=1e-6)


def test_several_layers_in_one_pass(mnist):
    model, variables, x = mnist
    both = linen_probe(model, ["conv1", "conv2"])(variables, x, 1)
    only = linen_probe(model, "conv2")(variables, x, 1)
    assert set(both.activations) == {"conv1", "conv2"}
    assert both.activations["conv1"].shape == (4, 24, 24, 100)
    np.testing.assert_allclose(both.gradients["conv2"], only.gradients, rtol=1e-5, atol=1e-7)
    # forward_activations: the logits and every layer's A from one plain forward pass
    probe = linen_probe(model, ["conv1", "conv2"])
    logits, acts = probe.forward_activations(variables, x)
    np.testing.assert_allclose(logits, both.logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(acts["conv1"], both.activations["conv1"], rtol=1e-5, atol=1e-6)
    # explain picks a layer of a multi-layer probe, and refuses a layer it does not tap
    _, picked = explain(probe, variables, x, 1, layer="conv2")
    np.testing.assert_allclose(
        picked.cam,
        explain(linen_probe(model, "conv2"), variables, x, 1)[1].cam,
        rtol=1e-5,
        atol=1e-6,
    )
    with pytest.raises(
        ValueError,
        match=r"this probe taps several layers \('conv1', 'conv2'\); "
        "pass layer=...",
    ):
        explain(probe, variables, x, 1)
    with pytest.raises(
        ValueError,
        match="layer 'conv1' is not tapped by this probe; tapped: "
        r"\('conv2',\)",
    ):
        explain(linen_probe(model, "conv2"), variables, x, 1, layer="conv1")


def test_nested_layer_by_name_and_path(nested):
    model, variables, x = nested
    by_name = linen_probe(model, "conv2")(variables, x, 0)
    by_path = linen_probe(model, "backbone/conv2")(variables, x, 0)
    np.testing.assert_array_equal(by_name.activations, by_path.activations)
    assert linen_probe(model, "backbone")(variables, x, 0).activations.shape == (2, 6, 6, 16)


def test_nnx_model_matches_hand_split(nnx_model):
    model, x = nnx_model
    probe = nnx_probe(model, "conv2")
    state = probe.variables
    out = probe(state, x, 1)
    a = model.conv2(jax.nn.relu(model.conv1(x)))

    def head(a):
        return model.head(jnp.mean(jax.nn.relu(a), axis=(1, 2)))

    np.testing.assert_allclose(out.activations, a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        out.gradients, jax.grad(lambda a: head(a)[:, 1].sum())(a), rtol=1e-5, atol=1e-7
    )
    assert type(model.conv2).__name__ == "Conv"  # the user's model is untouched
    with pytest.raises(ValueError, match="layer 'conv7' not found; layers: conv1, conv2, head"):
        nnx_probe(model, "conv7")


def test_nnx_relu_module_taps_the_rectified_features():
    from flax import nnx

    from ifa_jax import NnxReLU

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
            self.relu = NnxReLU()
            self.head = nnx.Linear(4, 3, rngs=rngs)

        def __call__(self, x):
            return self.head(self.relu(self.conv(x)).mean(axis=(1, 2)))

    model = Net(nnx.Rngs(0))
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 1)).astype(np.float32)
    probe = nnx_probe(model, "relu")
    state = probe.variables
    out = probe(state, x, 2)
    a = np.maximum(np.asarray(model.conv(x)), 0)
    np.testing.assert_allclose(out.activations, a, rtol=1e-5, atol=1e-6)
    assert (a == 0).any() and (a > 0).any()  # rectified, not the conv's raw output
    grad = jax.grad(lambda a: model.head(a.mean(axis=(1, 2)))[:, 2].sum())(jnp.asarray(a))
    np.testing.assert_allclose(out.gradients, grad, rtol=1e-5, atol=1e-7)


def test_gradcam_equals_classic_cam_for_linear_head(convnet):
    """GAP + dense after the layer: GradCAM = classic CAM (Zhou et al. 2016) / grid size."""
    model, variables, x = convnet
    linear = ConvNet(ndim=model.ndim, features=model.features, num_classes=3, relu_last=False)
    _, result = explain(linen_probe(linear, "conv2"), variables, x, 2, "gradcam")
    A = linen_probe(linear, "conv2")(variables, x, 2).activations
    w = variables["params"]["head"]["kernel"][:, 2]
    classic = jnp.einsum("b...k,k->b...", A, w)
    grid = np.prod(A.shape[1:-1])
    np.testing.assert_allclose(result.cam * grid, classic, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "scorecam", "ablationcam"])
def test_explain_every_rank(convnet, method):
    model, variables, x = convnet
    probe = linen_probe(model, "conv2")
    res, out = explain(probe, variables, x, 1, method, mask=jnp.ones(6))
    assert out.cam.shape == x.shape[:-1]
    assert out.importance.shape == (x.shape[0], 6)
    if method == "ablationcam":
        # With a linear head after GAP, zeroing channel k removes exactly its share.
        linear = ConvNet(ndim=model.ndim, features=model.features, num_classes=3, relu_last=False)
        res, out = explain(linen_probe(linear, "conv2"), variables, x, 1, method)
        w = variables["params"]["head"]["kernel"][:, 1]
        share = res.activations.mean(tuple(range(1, x.ndim - 1))) * w
        grid = tuple(range(1, x.ndim - 1))
        # AblationCAM weight w_k = y - y^(k) = mean(A_k) W_k, so s_k = w_k * sum(A_k).
        np.testing.assert_allclose(
            out.importance, share * res.activations.sum(grid), rtol=1e-4, atol=1e-5
        )


def test_probe_composes_with_outer_jit_and_vmap(mnist):
    model, variables, x = mnist
    probe = linen_probe(model, "conv2")
    f = jax.jit(lambda v, x: probe(v, x, 3).gradients)
    np.testing.assert_allclose(
        f(variables, x), probe(variables, x, 3).gradients, rtol=1e-5, atol=1e-7
    )


def test_bad_inputs(mnist):
    model, variables, x = mnist
    with pytest.raises(
        ValueError,
        match=r"layer 'conv9' not found; layers: conv1, relu1, conv2, "
        r"relu2, "
        r"fc1, head",
    ):
        linen_probe(model, "conv9")(variables, x)
    with pytest.raises(ValueError, match=r"layer 'fc1' outputs shape \(4, 512\).*rank 3-5"):
        linen_probe(model, "fc1")(variables, x)
    probe = linen_probe(model, "conv2")
    with pytest.raises(ValueError, match=r"target index 10 is out of range.*\[0, 9\]"):
        probe(variables, x, 10)
    with pytest.raises(ValueError, match=r"target index -1 is out of range"):
        probe(variables, x, np.array([0, 1, -1, 2]))
    with pytest.raises(ValueError, match=r"target has shape \(3,\) but the batch has 4"):
        probe(variables, x, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="integer class indices"):
        probe(variables, x, np.array([0.5, 1, 2, 3]))
    with pytest.raises(ValueError, match="'label' is not understood"):
        probe(variables, x, "label")
    with pytest.raises(ValueError, match="score 'prob'"):
        probe(variables, x, score="prob")
    with pytest.raises(
        ValueError,
        match=r"'conv' is ambiguous: it matches block1/conv, "
        r"block2/conv; give the full path",
    ):
        linen_probe(ConvNetTwice(), "conv")(*_twice_inputs())
    assert linen_probe(ConvNetTwice(), "block2/conv")(*_twice_inputs()).activations.shape == (
        1,
        4,
        4,
        2,
    )


class ConvNetTwice(nn.Module):
    """Two submodules both ending in 'conv': a bare 'conv' is ambiguous."""

    @nn.compact
    def __call__(self, x):
        x = Wrap(name="block1")(x)
        x = Wrap(name="block2")(x)
        return x.mean((1, 2))


class Wrap(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Conv(2, (3, 3), name="conv")(x)


def _twice_inputs():
    x = jnp.ones((1, 4, 4, 1))
    return ConvNetTwice().init(jax.random.key(0), x), x


def test_non_finite_values_are_reported(mnist):
    model, variables, x = mnist
    probe = linen_probe(model, "conv2")
    bad = jax.tree.map(lambda a: a, variables)
    bad["params"]["conv2"]["bias"] = variables["params"]["conv2"]["bias"].at[0].set(jnp.nan)
    with pytest.raises(FloatingPointError, match=r"144 non-finite activations at layer 'conv2'"):
        probe(bad, x)


def test_per_class_gradients_equal_one_probe_per_class(mnist):
    model, variables, x = mnist
    probe = linen_probe(model, "relu2")
    classes = jnp.array([0, 3, 7])
    logits, A, G = jax.jit(probe.per_class, static_argnames="score")(
        variables, x, classes, score="probability"
    )
    assert G.shape == (3, *A.shape)
    for i, c in enumerate([0, 3, 7]):
        one = probe(variables, x, c, score="probability")
        np.testing.assert_allclose(G[i], one.gradients, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(logits, one.logits, rtol=1e-6)
    # One forward: the convs appear once, the batched backward stops at relu2.
    text = str(jax.make_jaxpr(lambda v, x: probe.per_class(v, x, classes))(variables, x))
    assert text.count("conv_general_dilated") == 2


def test_batchnorm_model_in_inference_mode_gives_per_sample_gradients():
    """ResNet with BatchNorm (train=False): a sample's G does not depend on its batch."""
    from ifa_jax.runner.models import ResNet

    model = ResNet(num_classes=3, width=4, stage_sizes=(1, 1, 1, 1))
    x = jax.random.normal(jax.random.key(5), (3, 16, 16, 3))
    variables = model.init(jax.random.key(6), x, train=False)
    probe = linen_probe(model, "stage4", train=False)
    batch = probe(variables, x, 1)
    alone = probe(variables, x[1:2], 1)
    assert batch.activations.shape[0] == 3 and batch.activations.ndim == 4
    np.testing.assert_allclose(batch.gradients[1:2], alone.gradients, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(batch.score[1], alone.score[0], rtol=1e-5)


# --------------------------------------------------------------------------- layer=None


def test_the_tapped_layer_is_visible_on_the_probe(mnist):
    """probe.layer and repr show the layer: the natural one once the probe has run (or
    output_shapes has, abstractly), the named one from the start."""
    model, variables, x = mnist
    auto = linen_probe(model)
    assert auto.layer is None
    assert repr(auto) == "LayerProbe(layer=the natural layer, found on the first call)"
    auto.output_shapes(variables, x)  # finds it without computing anything
    assert auto.layer == "relu2"
    assert repr(auto) == "LayerProbe(layer='relu2': the last layer with a spatial output)"
    named = linen_probe(model, "conv2")
    assert named.layer == "conv2" and repr(named) == "LayerProbe(layer='conv2')"
    several = linen_probe(model, ["conv1", "conv2"])
    assert several.layer is None and repr(several) == "LayerProbe(layers=('conv1', 'conv2'))"
    with pytest.raises(TypeError, match=r"probe = nnx_probe\(model, layer\)"):
        probe, state = linen_probe(model, "conv2")  # the old pair of nnx_probe


def test_layer_none_picks_the_last_spatial_layer_after_its_relu(mnist, nested, caplog):
    from ifa_jax.probes import linen_natural_layer
    from ifa_jax.runner.models import ResNet

    model, variables, x = mnist
    assert linen_natural_layer(model, variables, x) == (
        "relu2",
        "the last layer with a spatial output",
    )
    with caplog.at_level(logging.INFO, logger="ifa_jax"):
        auto = linen_probe(model)(variables, x, 3)
    assert "layer=None: tapping 'relu2'" in caplog.text
    np.testing.assert_array_equal(
        auto.gradients, linen_probe(model, "relu2")(variables, x, 3).gradients
    )
    # A stage or block that ends after its inner layers is picked over them.
    resnet = ResNet(num_classes=3, width=4, stage_sizes=(1, 1, 1, 1))
    spec = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    template = jax.eval_shape(lambda: resnet.init(jax.random.key(0), jnp.zeros(spec.shape)))
    assert linen_natural_layer(resnet, template, spec, train=False)[0] == "stage4"
    nested_model, nested_variables, nested_x = nested
    assert linen_natural_layer(nested_model, nested_variables, nested_x)[0] == "backbone"


class _TwoBlocks(nnx.Module):
    """Pre-norm attention blocks held in an nnx.List, a head on token 0."""

    def __init__(self, rngs):
        self.embed = nnx.Linear(2, 8, rngs=rngs)
        self.blocks = nnx.List([_Block(rngs), _Block(rngs)])
        self.head = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h[:, 0])


class _Block(nnx.Module):
    def __init__(self, rngs):
        self.norm = nnx.LayerNorm(8, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=8, decode=False, rngs=rngs)

    def __call__(self, x):
        return x + self.attn(self.norm(x))


def test_nnx_layer_none(nnx_model):
    from ifa_jax.probes import nnx_natural_layer

    model, x = nnx_model
    assert nnx_natural_layer(model, x)[0] == "conv2"
    tokens = _TwoBlocks(nnx.Rngs(0))
    t = jax.random.normal(jax.random.key(1), (2, 5, 2))
    assert nnx_natural_layer(tokens, t) == (
        "blocks/1/norm",
        "the norm before the last attention, 'blocks/1/attn'",
    )
    auto = nnx_probe(tokens)
    state = auto.variables
    named = nnx_probe(tokens, "blocks/1/norm")
    # 5 tokens: a class token and a 2 x 2 grid of patches, laid on the grid automatically
    got = auto(state, t, 1).gradients
    assert got.shape == (2, 2, 2, 8) and auto.layer == "blocks/1/norm"
    tokens_g = named(state, t, 1).gradients
    np.testing.assert_array_equal(got, tokens_g[:, 1:].reshape(2, 2, 2, 8))
    # by hand: d head(h + attn(a))[:, 1] / d a at a = norm(h), h the first block's output
    h = tokens.blocks[0](tokens.embed(t))
    a = tokens.blocks[1].norm(h)
    want = jax.grad(lambda a: tokens.head((h + tokens.blocks[1].attn(a))[:, 0])[:, 1].sum())(a)
    np.testing.assert_allclose(tokens_g, want, rtol=1e-5, atol=1e-7)


def test_layer_none_without_a_grid_layer_is_an_error():
    class Mlp(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2, name="out")(nn.Dense(4, name="hidden")(x))

    x = jnp.ones((2, 3))
    variables = Mlp().init(jax.random.key(0), x)
    with pytest.raises(
        ValueError,
        match=r"layer=None found no layer with a grid output.*"
        r"name the layer.*hidden \(2, 4\), out \(2, 2\)",
    ):
        linen_probe(Mlp())(variables, x)


class _Outputs(dict):
    """Like transformers' ModelOutput: a dict subclass registered as a pytree that takes
    only arrays, so it cannot be rebuilt with shapes in it."""

    def __init__(self, **fields):
        if not all(hasattr(v, "shape") for v in fields.values()):
            raise TypeError("_Outputs holds arrays")
        super().__init__(**fields)


jax.tree_util.register_pytree_with_keys(
    _Outputs,
    lambda o: ([(jax.tree_util.DictKey(k), v) for k, v in o.items()], tuple(o)),
    lambda keys, leaves: _Outputs(**dict(zip(keys, leaves))),
)


class _Body(nn.Module):
    @nn.compact
    def __call__(self, x):
        a = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
        return _Outputs(features=a, pooled=a.mean(axis=(1, 2)))


class _OutputsNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        return _Outputs(logits=nn.Dense(3, name="head")(_Body(name="body")(x)["pooled"]))


def test_a_module_output_that_cannot_be_rebuilt_is_listed_by_key_path():
    """The layer search lists such an output as {key path: shape} (it used to rebuild it,
    which transformers' ModelOutput refuses); layer=None and output='logits' work."""
    from ifa_jax.probes import linen_layers

    model, x = _OutputsNet(), jnp.ones((2, 8, 8, 1))
    variables = model.init(jax.random.key(0), x)
    layers = linen_layers(model, variables, x)
    assert layers["body"] == {"['features']": (2, 8, 8, 4), "['pooled']": (2, 4)}
    probe = linen_probe(model, output="logits")
    assert probe(variables, x, 0).activations.shape == (2, 8, 8, 4)
    assert probe.layer == "body/conv"

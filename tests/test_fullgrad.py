"""FullGrad ("fullgrad", kind "input") against the channel-by-channel NumPy reference, in
1-D, 2-D and 3-D, with BatchNorm's effective bias, through an NNX probe, and its errors.
pytorch-grad-cam's maps are compared in tests/test_peer_golden.py (the PEERS table)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ifa_jax
from ifa_jax.explaining import fullgrad as F
from ifa_jax.runner import models
from tests import reference as ref

RTOL = 1e-5
RNG = np.random.default_rng(0)


def _random(shapes):
    """Random float32 arrays shaped like a tree of ShapeDtypeStructs (no init compiles)."""
    return jax.tree.map(lambda s: jnp.asarray(RNG.normal(size=s.shape), jnp.float32), shapes)


class ConvBN(nn.Module):
    """conv (no bias) -> BatchNorm -> relu -> conv -> relu -> mean -> dense: FullGrad's
    biased layers are the BatchNorm and the second conv, not the first."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), use_bias=False, name="conv1")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        x = nn.Conv(5, (3, 3), strides=(2, 2), name="conv2")(nn.relu(x))
        return nn.Dense(3, name="head")(jnp.mean(nn.relu(x), axis=(1, 2)))


def _positive(n):
    return jnp.asarray(RNG.uniform(0.5, 2.0, n), jnp.float32)


def _reference(model, variables, x, target, layers, biases, minmax=True, probe=None):
    """ref.fullgrad with gradients from jax.grad (input) and a linen_probe (layers)."""
    probe = probe or ifa_jax.linen_probe(model, list(layers))
    result = probe(variables, x, target)

    def score(x):
        return jnp.take_along_axis(model.apply(variables, x), target[:, None], -1).sum()

    grad_x = jax.jit(jax.grad(score))(x)
    biased = [(biases[k], result.gradients[k]) for k in layers]
    return ref.fullgrad(x, grad_x, biased, minmax=minmax)


def test_matches_reference_in_3d():
    """3-D (1-D: the NNX test, 2-D: the BatchNorm test and the golden maps)."""
    shape = (2, 6, 5, 4, 1)
    model = models.ConvNet(ndim=3, features=(3, 4), num_classes=3)
    x = _random(jax.ShapeDtypeStruct(shape, jnp.float32))
    variables = _random(jax.eval_shape(model.init, jax.random.key(0), x))
    target = jnp.array([0, 2])
    probe = ifa_jax.linen_probe(model, ["conv1", "conv2"])  # the reference's gradients
    explanation = F.fullgrad(probe, variables, x, target, minmax=False)
    assert isinstance(explanation, ifa_jax.Explanation)
    got = explanation.cam_result.cam
    biases = {k: variables["params"][k]["bias"] for k in ("conv1", "conv2")}
    want = _reference(model, variables, x, target, tuple(biases), biases, False, probe)
    assert got.shape == shape[:-1]
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * np.abs(want).max())


@pytest.fixture(scope="module")
def convbn():
    model = ConvBN()
    x = _random(jax.ShapeDtypeStruct((2, 9, 7, 2), jnp.float32))
    variables = _random(jax.eval_shape(model.init, jax.random.key(0), x))
    # scale and var > 0, and a mean: the effective bias is not beta
    variables["params"]["bn"]["scale"] = _positive(4)
    variables["batch_stats"]["bn"]["var"] = _positive(4)
    return model, variables, x


def test_batchnorm_effective_bias_and_resize(convbn):
    """2-D, the BatchNorm's bias is beta - mean * gamma / sqrt(var + eps), conv1 (no bias)
    is left out, and conv2's 5x4 grid is resized to 9x7; explain's map in [0, 1]."""
    model, variables, x = convbn
    target = jnp.array([1, 0])
    probe = ifa_jax.linen_probe(model, "conv2")
    _, out = ifa_jax.explain(probe, variables, x, target, "fullgrad")
    p, s = variables["params"]["bn"], variables["batch_stats"]["bn"]
    biases = {
        "bn": p["bias"] - s["mean"] * p["scale"] / jnp.sqrt(s["var"] + 1e-3),
        "conv2": variables["params"]["conv2"]["bias"],
    }
    want = _reference(model, variables, x, target, ("bn", "conv2"), biases)
    assert out.cam.shape == x.shape[:-1]
    np.testing.assert_allclose(out.cam, want, rtol=RTOL, atol=RTOL)
    assert float(jnp.min(out.cam)) == 0.0 and 0.99 < float(jnp.max(out.cam)) <= 1.0


def test_pieces_are_the_input_and_the_biased_layers(convbn):
    model, variables, x = convbn
    probe = ifa_jax.linen_probe(model, "conv2")
    result = probe(variables, x, "predicted")
    inputs = ifa_jax.cams.ModelInputs(
        probe, variables, x, result.target, lambda logits, t: logits[jnp.arange(2), t],
        True, result.logits, None, None,
    )  # fmt: skip

    names = []

    @jax.jit
    def both(x):
        model = inputs._replace(x=x)
        (named, first), (auto, second) = (
            F.fullgrad_pieces(model, ("conv2",)),
            F.fullgrad_pieces(model),
        )
        names.extend([first, second])
        return named, auto

    pieces, auto = both(x)
    assert names == [("conv2",), ("bn", "conv2")]
    assert pieces.shape == (2, 2, 9, 7) and auto.shape == (2, 3, 9, 7)
    np.testing.assert_allclose(auto[:, 2], pieces[:, 1], rtol=1e-6)
    # each piece sums min-max scaled channels: within [0, channels]
    assert float(auto[:, 0].max()) <= 2.0 and float(auto[:, 1].max()) <= 4.0


class NnxNet(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(1, 3, (3,), rngs=rngs)
        self.head = nnx.Linear(3, 2, rngs=rngs)

    def __call__(self, x):
        return self.head(jnp.mean(nnx.relu(self.conv(x)), axis=1))


def test_other_probes_take_their_tapped_layers():
    graphdef, shapes = nnx.split(nnx.eval_shape(lambda: NnxNet(nnx.Rngs(0))))
    model = nnx.merge(graphdef, _random(shapes))
    x = _random(jax.ShapeDtypeStruct((2, 10, 1), jnp.float32))
    probe = ifa_jax.nnx_probe(model, "conv")
    state = probe.variables
    got = F.fullgrad(probe, state, x, 1, layers="conv")[1].cam  # one name: not 'c', 'o', ...
    result = probe(state, x, 1)
    grad_x = jax.jit(jax.grad(lambda x: model(x)[:, 1].sum()))(x)
    want = ref.fullgrad(x, grad_x, [(model.conv.bias[...], result.gradients)])
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL)
    for layers in ("conv", ["conv"]):  # explain takes one name, and a list as a tuple
        _, out = ifa_jax.explain(probe, state, x, 1, "fullgrad", layers=layers)
        np.testing.assert_allclose(out.cam, got, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="linen_probe models only; for this probe pass layers"):
        F.fullgrad(probe, state, x, 1)
    with pytest.raises(ValueError, match=r"layers \['head'\] are not tapped by this probe"):
        F.fullgrad(probe, state, x, 1, layers=("head",))


def _framework_case(probe, params, x, bias):
    """FullGrad through another framework's probe of one conv layer, against the
    reference with that layer's bias (K,) and the probe's gradients."""
    (layer,) = probe.layers
    got = F.fullgrad(probe, params, x, 1, layers=layer)[1].cam
    result = probe(params, x, 1)
    grad_x = jax.jit(jax.grad(lambda x: probe.forward(params, x)[:, 1].sum()))(x)
    want = ref.fullgrad(x, grad_x, [(bias, result.gradients)])
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL)


def test_equinox_bias_is_a_field_shaped_k_1():
    """An Equinox layer path is followed through fields and indices ('layers.0'), and a
    Conv's bias (K, 1) is read as (K,); the error for an untapped layer names no nnx_probe."""
    eqx = pytest.importorskip("equinox")
    keys = jax.random.split(jax.random.key(0), 2)
    model = eqx.nn.Sequential([
        eqx.nn.Conv1d(1, 3, 3, key=keys[0]), eqx.nn.Lambda(jax.nn.relu),
        eqx.nn.Lambda(lambda a: a.mean(axis=1)), eqx.nn.Linear(3, 2, key=keys[1]),
    ])  # fmt: skip
    probe = ifa_jax.equinox_probe(model, "layers.0")
    params = probe.variables
    x = _random(jax.ShapeDtypeStruct((2, 10, 1), jnp.float32))
    assert model.layers[0].bias.shape == (3, 1)
    _framework_case(probe, params, x, model.layers[0].bias[:, 0])
    with pytest.raises(ValueError, match="not tapped by this probe") as error:
        F.fullgrad(probe, params, x, 1, layers="layers/3")
    assert "nnx_probe" not in str(error.value)


def test_haiku_bias_is_named_b():
    hk = pytest.importorskip("haiku")

    def net(x):
        a = jax.nn.relu(hk.Conv1D(3, 3, name="conv")(x))
        return hk.Linear(2, name="head")(a.mean(axis=1))

    transformed = hk.without_apply_rng(hk.transform(net))
    x = _random(jax.ShapeDtypeStruct((2, 10, 1), jnp.float32))
    params = _random(jax.eval_shape(transformed.init, jax.random.key(0), x))
    probe = ifa_jax.haiku_probe(transformed, "conv")
    _framework_case(probe, params, x, params["conv"]["b"])


def test_errors_name_the_fix(convbn):
    model, variables, x = convbn
    probe = ifa_jax.linen_probe(model, "conv2")
    with pytest.raises(ValueError, match="'conv1'.*has no bias"):
        F.fullgrad(probe, variables, x, layers=("conv1",))
    with pytest.raises(ValueError, match="'head' outputs shape \\(2, 3\\), not a grid"):
        F.fullgrad(probe, variables, x, layers=("head",))
    with pytest.raises(ValueError, match="takes no channel mask"):
        ifa_jax.explain(probe, variables, x, 0, "fullgrad", mask=jnp.ones(5))


def test_pieces_equal_pytorch_grad_cams():
    """Each bias piece (conv1, conv2) as pytorch-grad-cam's FullGrad made it on the golden
    mnist_cnn twin (tests/data/peers.npz), resized from 24x24 and 6x6 to 28x28 (convnet's
    layers are on the input grid: its map is compared in tests/test_peer_golden.py)."""
    case = "mnist_cnn"
    from tests.test_peer_golden import GOLDEN, max_relative_error, probed

    probe, variables, x, labels, result = probed(case, "logit")
    inputs = ifa_jax.cams.ModelInputs(
        probe, variables, x, labels, lambda logits, t: logits[jnp.arange(len(t)), t],
        True, result.logits, None, None,
    )  # fmt: skip
    names = []

    @jax.jit
    def pieces_of(x):
        pieces, layers = F.fullgrad_pieces(inputs._replace(x=x))
        names.extend(layers)
        return pieces

    pieces = pieces_of(x)
    key = f"{case}/logit/pytorch-grad-cam/FullGrad"
    theirs = GOLDEN[f"{key}/bias_pieces"]
    assert len(names) == len(GOLDEN[f"{key}/bias_layers"]) == theirs.shape[1] == 2
    for i in range(theirs.shape[1]):
        assert max_relative_error(pieces[:, 1 + i], theirs[:, i]) <= 1e-4

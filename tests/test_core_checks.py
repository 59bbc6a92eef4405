"""Argument checks of the core library (issue 21, items 8-12 and 17): wrong types and
values name the argument and the fix; integer images, zero gradients and NaN training
data are reported where they enter; module names with dots are tapped as written."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ifa_jax import analysis, cams, explain, scale
from ifa_jax.probes import ZeroGradientWarning, linen_probe, resolve_layer
from ifa_jax.runner import data, train
from ifa_jax.runner.models import ConvNet, ReLU
from tests.conftest import random_variables

MODEL = ConvNet(ndim=2, features=(4, 6), num_classes=3)


@pytest.fixture(scope="module")
def net():
    """(probe at relu2, variables, x (4, 6, 5, 2) float32 in [0, 1], y (4,))."""
    x = np.random.default_rng(0).uniform(size=(4, 6, 5, 2)).astype(np.float32)
    return linen_probe(MODEL, "relu2"), random_variables(MODEL, x), x, np.array([0, 1, 2, 0])


def test_wrong_argument_types_name_the_argument_and_the_fix(net):
    probe, variables, x, y = net
    cam_max = np.array([1.0, 2.0, 4.0, 8.0])
    result = analysis.Analysis(None, None, {"cam_max": cam_max})  # type: ignore[arg-type]
    assert result.percentiles("cam_max", qs=[50]) == {50: float(np.percentile(cam_max, 50))}
    with pytest.raises(ValueError, match=r"qs must be a sequence of percentiles.*got '50'"):
        result.percentiles("cam_max", qs="50")  # was read as the percentiles 5 and 0
    with pytest.raises(ValueError, match=r"each of qs must be a number .*got '50'"):
        result.percentiles("cam_max", qs=["50"])
    with pytest.raises(ValueError, match=r"hi_percentile must be a number .*got '90'"):
        scale.common_scale(cam_max, cam_max * 0, hi_percentile="90")
    with pytest.raises(ValueError, match=r"key must be one PRNG key, e.g. key=jax.random.key\(0"):
        explain(probe, variables, x, 0, "randomcam", key=0)
    with pytest.raises(ValueError, match=r"got list \['cat'.*names.index\(n\) for n in target"):
        probe(variables, x, ["cat", "dog", "cat", "dog"])
    with pytest.raises(ValueError, match=r"num_classes must be an int >= 1.*got '3'"):
        analysis.analyze(probe, variables, [(x, y)], num_classes="3", progress=False)
    with pytest.raises(ValueError, match=r"callable target must return float scores.*int32"):
        probe(variables, x, lambda z: jnp.argmax(z, -1))


def test_counts_and_sizes_below_one_are_refused(net):
    probe, variables, x, y = net
    for bad in (0, -2):
        with pytest.raises(ValueError, match=rf"chunk_size must be an int >= 1.*got {bad}"):
            explain(probe, variables, x, 0, "scorecam", chunk_size=bad)
        with pytest.raises(ValueError, match=rf"chunk_size must be an int >= 1.*got {bad}"):
            analysis.analyze(probe, variables, [(x, y)], num_classes=3, chunk_size=bad)
    A = jnp.ones((2, 3, 3, 4))
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1"):
        cams.ablation_weights(A, lambda d: d.sum((1, 2, 3)), jnp.ones(2), chunk_size=0)
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1"):
        cams.scorecam_weights(
            A, jnp.ones((2, 6, 6, 1)), lambda v, t: v.sum((1, 2, 3)), y[:2], chunk_size=0
        )
    with pytest.raises(
        ValueError, match=r"every size of spatial_shape \(0, 0\) must be an int >= 1"
    ):
        cams.upsample(jnp.ones((2, 3, 3)), (0, 0))  # was an empty array
    with pytest.raises(ValueError, match="spatial_shape must be a tuple of sizes"):
        cams.upsample(jnp.ones((2, 3)), 6)


class _Uint8Source:
    """A plug-in source whose gather returns uint8 images 0..255."""

    name, num_classes, input_shape = "uint8 source", 3, (6, 5, 2)

    def __len__(self):
        return 4

    def gather(self, idx):
        return np.full((len(idx), 6, 5, 2), 200, np.uint8), np.zeros(len(idx), np.int32)


def test_integer_images_warn_in_analyze_and_in_training(net):
    probe, variables, x, y = net
    images = (x * 255).astype(np.uint8)
    # The warning comes with batch 0, before the step: the label check then stops the pass.
    with (
        pytest.warns(
            analysis.IntegerInputWarning, match=r"batch 0 are integers \(dtype uint8\).*x / 255"
        ),
        pytest.raises(ValueError, match="label 7 is outside"),
    ):
        analysis.analyze(probe, variables, [(images, y + 5)], num_classes=3, progress=False)
    # Training: the warning comes before anything compiles (the class check then stops it).
    with (
        pytest.warns(
            analysis.IntegerInputWarning, match=r"training inputs \(uint8 source\).*as_images"
        ),
        pytest.raises(ValueError, match="3 classes"),
    ):
        small = ConvNet(ndim=2, features=(4,), num_classes=2)
        config = train.TrainConfig(batch_size=4, progress=False)
        train.train(small, _Uint8Source(), None, config, variables=random_variables(small, x))


def test_integer_images_warn_in_explain(net):
    probe, variables, x, y = net
    images = (x * 255).astype(np.uint8)
    with pytest.warns(
        analysis.IntegerInputWarning, match=r"the inputs x are integers \(dtype uint8\).*x / 255"
    ) as record:
        explain(probe, variables, images.astype(np.float32) / 255, y)  # no warning
        explain(probe, variables, images, y)
    assert len(record) == 1 and record[0].filename == __file__


class _Stopped(nn.Module):
    """relu1 -> stop_gradient -> head: the tapped layer gets no gradient."""

    @nn.compact
    def __call__(self, x):
        h = ReLU(name="relu1")(nn.Conv(4, (3, 3), name="conv1")(x))
        return nn.Dense(3, name="head")(jax.lax.stop_gradient(h).mean(axis=(1, 2)))


def test_analyze_warns_once_when_the_layer_gets_no_gradient(net):
    _, _, x, y = net
    model = _Stopped()
    probe, variables = linen_probe(model, "relu1"), random_variables(model, x)
    with pytest.warns(ZeroGradientWarning) as caught:
        got = analysis.analyze_methods(
            probe,
            variables,
            [(x, y), (x, y)],
            num_classes=3,
            count="all",
            methods=("gradcam", "eigencam"),
            progress=False,
        )
    assert len(caught) == 1  # once for the pass, not per batch
    message = str(caught[0].message)
    assert "'relu1'" in message and "every sample analysed" in message
    assert "statistics of gradcam are all zero" in message and "eigencam" not in message
    assert "stop_gradient" in message
    cam = got["gradcam"].samples
    np.testing.assert_array_equal(cam["cam_max"], 0.0)
    assert np.ptp(got["eigencam"].samples["cam_max"]) > 0  # A itself is not zero
    with pytest.raises(ValueError, match=r"degenerate.*8 CAMs is exactly 0.*ZeroGradientWarning"):
        scale.common_scale(cam["cam_max"], cam["cam_min"])


def test_nan_inputs_in_training_are_named_as_a_data_fault():
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(8, 6, 5, 2)).astype(np.float32)
    x[5, 2, 3, 1] = np.nan
    ds = data.Dataset(x, np.arange(8, dtype=np.int32) % 3, 3, name="digits")
    config = train.TrainConfig(epochs=1, batch_size=4, progress=False)
    model = ConvNet(ndim=2, features=(4,), num_classes=3)
    with pytest.raises(
        FloatingPointError,
        match=r"NaN or inf inputs: 1 example.*example 5 of digits.*not the learning rate",
    ):
        train.train(model, ds, None, config)


class _Dotted(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = ReLU(name="relu.1")(nn.Conv(4, (3, 3), name="conv")(x))
        return nn.Dense(3, name="head")(h.mean(axis=(1, 2)))


def test_module_names_with_dots_are_matched_as_written(net):
    _, _, x, _ = net
    assert resolve_layer("relu.1", ["conv", "relu.1"]) == "relu.1"
    assert resolve_layer("net/relu.1", ["net/conv", "net/relu.1"]) == "net/relu.1"
    # dots still read as "/" when nothing matches as written
    assert resolve_layer("backbone.conv2", ["backbone/conv2"]) == "backbone/conv2"
    assert resolve_layer("layers.3", ["layers/2", "layers/3"]) == "layers/3"
    model = _Dotted()
    variables = random_variables(model, x)
    out = linen_probe(model, "relu.1")(variables, x, 0)
    _, state = model.apply(variables, x, capture_intermediates=True)
    want = state["intermediates"]["relu.1"]["__call__"][0]
    np.testing.assert_allclose(out.activations, want, rtol=1e-6)

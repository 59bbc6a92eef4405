"""Argument checks of the core library (issue 21, items 8, 9 and 17): wrong types and
values name the argument and the fix; module names with dots are tapped as written."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from ifa_jax import analysis, cams, explain, scale
from ifa_jax.models import ConvNet, ReLU
from ifa_jax.probe import linen_probe, resolve_layer
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

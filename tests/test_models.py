"""Tests of the reference models added for issue 4: ResNet and the 1-D / 3-D ConvNets."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ifa_jax.probes import linen_probe
from ifa_jax.runner.models import ConvNet, ResNet, ResNet50


def _stage4_shape(model, shape):
    """Abstract (no compilation) logits shape and ``stage4`` output shape for inputs ``shape``."""

    def run():
        x = jnp.zeros(shape)
        variables = model.init(jax.random.key(0), x)
        logits, state = model.apply(
            variables, x, capture_intermediates=(lambda m, _: m.name == "stage4")
        )
        return logits, state["intermediates"]["stage4"]["__call__"][0], variables

    logits, feats, variables = jax.eval_shape(run)
    return logits.shape, feats.shape, variables


def test_resnet18_layout_matches_torchvision_parameter_count():
    _, feats, variables = _stage4_shape(ResNet(num_classes=1000, width=64), (1, 224, 224, 3))
    assert feats == (1, 7, 7, 512)
    assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"])) == 11_689_512
    assert [k for k in variables["params"] if k.startswith("stage")] == [
        "stage1",
        "stage2",
        "stage3",
        "stage4",
    ]
    assert set(variables["params"]["stage1"]) == {"block1", "block2"}


@pytest.mark.parametrize(
    "shape, feats",
    [
        ((2, 32, 32, 3), (2, 4, 4, 64)),
        ((2, 64, 1), (2, 8, 64)),
        ((2, 8, 16, 16, 1), (2, 1, 2, 2, 64)),
    ],
    ids=["image-32", "signal-1d", "volume-3d"],
)
def test_resnet_is_rank_agnostic(shape, feats):
    logits, got, _ = _stage4_shape(ResNet(num_classes=5, width=8), shape)
    assert logits == (2, 5) and got == feats


def test_resnet_train_flag_uses_batch_statistics():
    model = ResNet(num_classes=3, width=4, stage_sizes=(1,))
    x = jax.random.uniform(jax.random.key(1), (4, 8, 8, 1))
    variables = model.init(jax.random.key(0), x)
    _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    before = variables["batch_stats"]["stem_bn"]["mean"]
    assert not np.allclose(updates["batch_stats"]["stem_bn"]["mean"], before)
    np.testing.assert_array_equal(model.apply(variables, x), model.apply(variables, x, train=False))
    with pytest.raises(ValueError, match="stem"):
        ResNet(stem="medium").init(jax.random.key(0), x)


@pytest.mark.parametrize("ndim, shape", [(1, (2, 20, 3)), (3, (2, 5, 6, 7, 1))])
def test_convnet_serves_as_1d_and_3d_cnn(ndim, shape):
    model = ConvNet(ndim=ndim, features=(4, 8), num_classes=3)
    logits, state = jax.eval_shape(
        lambda: model.apply(
            model.init(jax.random.key(0), jnp.zeros(shape)),
            jnp.zeros(shape),
            capture_intermediates=lambda m, _: m.name == "conv2",
        )
    )
    assert logits.shape == (2, 3)
    assert state["intermediates"]["conv2"]["__call__"][0].shape == (*shape[:-1], 8)
    with pytest.raises(ValueError, match=f"rank {ndim + 2}"):
        model.init(jax.random.key(0), jnp.zeros((2, 4, 4, 4, 4, 1)[: ndim + 3]))


def test_resnet50_layout():
    """ResNet-50 has the torchvision parameter count (25,557,032 with a 1000-class head)
    and a 2048-channel stage4 on a 7x7 grid at 224x224."""
    model = ResNet50(num_classes=1000)
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    count = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(variables["params"]))
    assert count == 25_557_032
    probe = linen_probe(model, "stage4", train=False)
    logits, acts = probe.output_shapes(variables, x)
    assert logits == (1, 1000) and acts["stage4"] == (1, 7, 7, 2048)

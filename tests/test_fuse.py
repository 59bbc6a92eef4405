"""Several layers: cams.cams_per_layer on a multi-layer probe's dicts, and cams.fuse
against a naive upsample-and-combine reference, with and without common scales."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ifa_jax
from ifa_jax import cams
from ifa_jax.probes import linen_probe
from ifa_jax.runner.models import MnistCNN
from ifa_jax.scale import apply_scale, scale_from_bounds

COMBINE = {"mean": np.mean, "max": np.max, "sum": np.sum}


def naive_fuse(maps, shape, how, scales=None):
    """Each map (scaled on its own grid when a scale is given) resized to ``shape``
    (jax.image.resize, linear: what cams.upsample documents), then combined per cell."""
    resized = []
    for i, L in enumerate(maps):
        if scales is not None:
            L = apply_scale(L, scales[i])
        resized.append(np.asarray(jax.image.resize(L, (L.shape[0], *shape), "linear"), np.float64))
    return COMBINE[how](np.stack(resized), axis=0)


@pytest.mark.parametrize(
    "grids, shape",
    [([(5,), (9,)], (12,)), ([(3, 4), (6, 8)], (12, 16)), ([(2, 2, 3), (4, 4, 6)], (8, 8, 6))],
    ids=["1d", "2d", "3d"],
)
def test_fuse_against_naive_upsample_and_combine(grids, shape):
    maps = [jax.random.normal(jax.random.key(i), (2, *g)) for i, g in enumerate(grids)]
    for how in COMBINE:
        fused = cams.fuse({"a": maps[0], "b": maps[1]}, shape, how=how)
        assert fused.shape == (2, *shape)
        np.testing.assert_allclose(fused, naive_fuse(maps, shape, how), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(cams.fuse(maps, shape, how=how), fused)  # a list too


def test_fuse_puts_each_layer_on_its_scale_first():
    maps = [jax.random.normal(jax.random.key(i), (3, 4 * (i + 1), 4 * (i + 1))) for i in range(2)]
    scales = [
        scale_from_bounds(-0.5, 1.5),
        scale_from_bounds(-1.0, 2.0, mode="tanh", remove_negative=True),
    ]
    fused = cams.fuse(
        {"low": maps[0], "high": maps[1]}, (8, 8), scale=dict(zip(("low", "high"), scales))
    )
    np.testing.assert_allclose(
        fused, naive_fuse(maps, (8, 8), "mean", scales), rtol=1e-5, atol=1e-6
    )
    one = cams.fuse(maps, (8, 8), how="max", scale=scales[1])
    np.testing.assert_allclose(
        one, naive_fuse(maps, (8, 8), "max", [scales[1]] * 2), rtol=1e-5, atol=1e-6
    )
    jitted = jax.jit(cams.fuse, static_argnames=("shape", "how"))
    np.testing.assert_allclose(jitted(maps, (8, 8), how="max", scale=scales[1]), one, rtol=1e-6)


@pytest.fixture(scope="module")
def two_layers():
    """(probe of relu1 (24x24) and relu2 (6x6), variables, x (2, 28, 28, 1)), a slim MNIST CNN."""
    model = MnistCNN(width1=4, width2=6, hidden=8)
    x = jax.random.uniform(jax.random.key(0), (2, 28, 28, 1))
    return linen_probe(model, ["relu1", "relu2"]), model.init(jax.random.key(1), x), x


def test_multi_layer_dicts_through_cams_per_layer_and_fuse(two_layers):
    probe, variables, x = two_layers
    out = probe(variables, x, 3)
    masks = {"relu2": jnp.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])}
    per_layer = ifa_jax.cams_per_layer(out.activations, out.gradients, "gradcam++", masks)
    assert list(per_layer) == ["relu1", "relu2"]
    for layer, result in per_layer.items():
        alone = cams.cam(
            out.activations[layer], out.gradients[layer], "gradcam++", masks.get(layer)
        )
        for field in cams.CamResult._fields:
            np.testing.assert_array_equal(getattr(result, field), getattr(alone, field))
    maps = {k: r.cam for k, r in per_layer.items()}
    fused = ifa_jax.fuse(maps, (28, 28))
    np.testing.assert_allclose(
        fused, naive_fuse(list(maps.values()), (28, 28), "mean"), rtol=1e-5, atol=1e-7
    )
    # cams_per_layer's results go in as they are (each stands for its map)
    np.testing.assert_array_equal(ifa_jax.fuse(per_layer, (28, 28)), fused)
    one = per_layer["relu1"]
    np.testing.assert_array_equal(ifa_jax.fuse(one, (28, 28)), cams.upsample(one.cam, (28, 28)))


def test_fuse_and_cams_per_layer_errors(two_layers):
    L = jnp.ones((2, 3, 3))
    with pytest.raises(ValueError, match=r"how='median' is not one of \('mean', 'max', 'sum'\)"):
        cams.fuse([L], (6, 6), how="median")
    with pytest.raises(ValueError, match="at least one CAM"):
        cams.fuse({}, (6, 6))
    with pytest.raises(ValueError, match="or a list of CAMs; got ArrayImpl"):
        cams.fuse(L, (6, 6))
    with pytest.raises(ValueError, match="share their batch size"):
        cams.fuse({"a": L, "b": jnp.ones((3, 3, 3))}, (6, 6))
    s = scale_from_bounds(0.0, 1.0)
    with pytest.raises(ValueError, match=r"no entry for layer\(s\) \['b'\]"):
        cams.fuse({"a": L, "b": L}, (6, 6), scale={"a": s})
    with pytest.raises(ValueError, match="a dict of scales needs the CAMs as a dict"):
        cams.fuse([L], (6, 6), scale={"a": s})
    with pytest.raises(ValueError, match="must be an ifa_jax.scale.Scale"):
        cams.fuse({"a": L}, (6, 6), scale=(0.0, 1.0))
    probe, variables, x = two_layers
    out = probe(variables, x, 0)
    with pytest.raises(ValueError, match="takes A as a dict"):
        cams.cams_per_layer(out.activations["relu1"], None, "eigencam")
    with pytest.raises(ValueError, match=r"G's layers \['relu1'\] differ"):
        cams.cams_per_layer(out.activations, {"relu1": out.gradients["relu1"]})

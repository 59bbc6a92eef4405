"""RefineCAM (kind "layers") against the loop reference in tests/reference.py, through
cams.cam_layers and explain, and its refusals."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from ifa_jax import cams
from ifa_jax.explaining import explain
from ifa_jax.probes import linen_probe
from ifa_jax.runner.models import MnistCNN
from tests import reference as ref

# Two or three layers per rank whose grids differ, the largest size of each axis coming
# from different layers.
GRIDS = {
    1: {"a": (7,), "b": (4,), "c": (9,)},
    2: {"a": (6, 3), "b": (3, 5)},
    3: {"a": (4, 2, 3), "b": (2, 3, 2)},
}


def layers(ndim: int, scale: float = 1.0):
    """A, G dicts of random layers on GRIDS[ndim], batch 2, 3-5 channels (NumPy's random
    numbers: jax.random would compile once per shape)."""
    rng = np.random.default_rng(ndim)
    A, G = {}, {}
    for i, (name, grid) in enumerate(GRIDS[ndim].items()):
        shape = (2, *grid, 3 + i)
        A[name] = (rng.uniform(size=shape) ** 2).astype(np.float32)  # post-ReLU-like
        G[name] = (scale * rng.normal(size=shape)).astype(np.float32)
    return A, G


@functools.cache
def jitted(**options):
    return jax.jit(functools.partial(cams.cam_layers, method="refinecam", **options))


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_refinecam_matches_reference(ndim):
    A, G = layers(ndim)
    out = jitted()(A, G)
    want = ref.refinecam(A, G)
    assert out.cam.shape == want.shape == (2, *(max(s) for s in zip(*GRIDS[ndim].values())))
    np.testing.assert_allclose(out.cam, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.contributions[..., 0], want, rtol=1e-5, atol=1e-6)
    # a product of maps in [0, 1], each with its maximum 1 (up to eps) somewhere
    assert float(out.cam.min()) >= 0.0 and float(out.cam.max()) <= 1.0


def test_refinecam_options_reach_the_base_and_the_grid():
    A, G = layers(2, scale=1e-2)  # small gradients: GradCAM++'s eps matters
    for options in ({"base": "layercam", "shape": (7, 8)}, {"eps": 1e-3}):
        got = jitted(**options)(A, G).cam
        want = ref.refinecam(A, G, **options)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(jitted(eps=1e-3)(A, G).cam, jitted()(A, G).cam, atol=1e-3)
    # base_options as (name, value) pairs: hashable, as explain needs its options
    fem = jitted(base="fem", base_options=(("k", 0.5),))(A, G)
    np.testing.assert_allclose(fem.cam, ref.refinecam(A, G, base="fem", k=0.5), atol=1e-6)
    key = jax.random.key(3)
    random = jitted(base="randomcam")(A, G, key=key)
    np.testing.assert_allclose(random.cam, ref.refinecam(A, G, "randomcam", key=key), atol=1e-6)


def test_refinecam_through_explain():
    """A probe of two layers of a small MnistCNN (grids 15x15 and 3x3): the map is the
    reference's of the probe's own A and G; a probe of one layer is refused."""
    model = MnistCNN(width1=3, width2=4, hidden=8, num_classes=3)
    x = np.random.default_rng(0).uniform(size=(2, 19, 19, 1)).astype(np.float32)
    variables = model.init(jax.random.key(1), x)
    probe = linen_probe(model, ["relu1", "relu2"])
    result, out = explain(probe, variables, x, np.array([0, 2]), "refinecam")
    assert out.cam.shape == (2, 15, 15)
    want = ref.refinecam(result.activations, result.gradients)
    np.testing.assert_allclose(out.cam, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"at least two layers; got \['relu2'\].*linen_probe"):
        explain(linen_probe(model, "relu2"), variables, x, 0, "refinecam")


def test_refinecam_refusals():
    A, G = layers(2)
    with pytest.raises(ValueError, match=r"at least two layers; got \['a'\]"):
        cams.cam_layers({"a": A["a"]}, {"a": G["a"]}, "refinecam")
    with pytest.raises(ValueError, match=r"base must be a method of kind 'layer'.*'refinecam'"):
        cams.cam_layers(A, G, "refinecam", base="refinecam")
    with pytest.raises(ValueError, match=r"no forward passes.*base='scorecam'.*forward passes"):
        cams.cam_layers(A, G, "refinecam", base="scorecam")
    with pytest.raises(ValueError, match=r"unknown CAM method 'nope'"):
        cams.cam_layers(A, G, "refinecam", base="nope")
    with pytest.raises(ValueError, match=r"gradcam has no option 'eps'"):
        cams.cam_layers(A, G, "refinecam", base="gradcam", eps=1e-3)
    with pytest.raises(ValueError, match=r"shape=\(6,\) must give a positive size for each"):
        cams.cam_layers(A, G, "refinecam", shape=(6,))
    with pytest.raises(ValueError, match=r"as many spatial axes"):
        cams.cam_layers({**A, "flat": A["a"][:, 0]}, {**G, "flat": G["a"][:, 0]}, "refinecam")
    with pytest.raises(ValueError, match=r"randomcam needs a PRNG key"):
        cams.cam_layers(A, G, "refinecam", base="randomcam")
    with pytest.raises(ValueError, match=r"refinecam is a method of kind 'layers'"):
        cams.cam(A["a"], G["a"], "refinecam")

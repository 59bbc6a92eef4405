"""Every public entry point that takes inputs and targets, called inside the user's own
``jax.jit`` with x and y closed over as jax arrays (the first thing a CAM-based loss
writes), equals the same call made eagerly; a traced out-of-range target is finite and
reported under checkify."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.experimental import checkify

from ifa_jax import consistency, explain, scale
from ifa_jax.explaining import guided, smoothing
from ifa_jax.probes import equinox_probe, function_probe, haiku_probe, linen_probe, nnx_probe
from ifa_jax.runner.models import ConvNet, NnxCNN
from tests.conftest import random_variables

eqx = pytest.importorskip("equinox")
hk = pytest.importorskip("haiku")

KEY = jax.random.key(5)
TOL = {"rtol": 1e-5, "atol": 1e-6}


def _features(p, x):
    dims = ("NHWC", "HWIO", "NHWC")
    return jax.nn.relu(
        jax.lax.conv_general_dilated(x, p["w"], (1, 1), "SAME", dimension_numbers=dims)
    )


def _head(p, a):
    return a.mean(axis=(1, 2)) @ p["v"]


def _haiku_net(x):
    a = hk.to_module(jax.nn.relu)(name="relu")(hk.Conv2D(4, 3)(x))
    return hk.Linear(3)(a.mean(axis=(1, 2)))


def _numpy_arrays(tree, rng):
    """Every ShapeDtypeStruct of ``tree`` drawn with NumPy (no init to compile)."""

    def draw(leaf):
        if not isinstance(leaf, jax.ShapeDtypeStruct):
            return leaf
        return jnp.asarray(rng.normal(0.0, 0.5, leaf.shape), leaf.dtype)

    return jax.tree.map(draw, tree)


@pytest.fixture(scope="module")
def setups():
    """{framework: (probe, variables, x, y)}: tiny 3-class CNNs, inputs (B, 6, *, C)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(3, 6, 5, 2)).astype(np.float32)
    y = np.array([0, 2, 1])
    linen = ConvNet(ndim=2, features=(4, 6), num_classes=3)

    def per_sample():
        keys = jax.random.split(jax.random.key(1))
        return eqx.nn.Sequential(
            [
                eqx.nn.Conv2d(2, 4, 3, padding=1, key=keys[0]),
                eqx.nn.Lambda(jax.nn.relu),
                eqx.nn.Lambda(lambda a: a.mean(axis=(1, 2))),
                eqx.nn.Linear(4, 3, key=keys[1]),
            ]
        )

    equinox = _numpy_arrays(eqx.filter_eval_shape(per_sample), rng)
    haiku = hk.without_apply_rng(hk.transform(_haiku_net))
    fn_params = {"w": (3, 3, 2, 4), "v": (4, 3)}
    fn_params = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in fn_params.items()}
    graphdef, state = nnx.split(nnx.eval_shape(lambda: NnxCNN(2, (4, 6), 3, rngs=nnx.Rngs(0))))
    nnx_p = nnx_probe(nnx.merge(graphdef, _numpy_arrays(state, rng)), "conv2")
    nnx_state = nnx_p.variables
    eqx_p = equinox_probe(equinox, lambda m: m.layers[1])
    return {
        "linen": (linen_probe(linen, "relu2"), random_variables(linen, x), x, y),
        "nnx": (nnx_p, nnx_state, x, y),
        "equinox": (eqx_p, eqx_p.variables, x, y),
        "haiku": (haiku_probe(haiku, "relu"), random_variables(haiku, x), x, y),
        "function": (function_probe(_features, _head), fn_params, x, y),
    }


def _class_levels(p, v, x, y):
    sc = (scale.scale_from_bounds(-1.0, 1.0),)
    masks = jnp.ones((3, 6))
    return consistency.class_levels(p, v, x, y[:2], masks, sc, methods=("gradcam",))[0]


# entry point: (probe, variables, x, y) -> an array
ENTRIES = {
    "probe": lambda p, v, x, y: p(v, x, y).gradients,
    "explain gradcam": lambda p, v, x, y: explain(p, v, x, y, "gradcam")[1].cam,
    "explain scorecam": lambda p, v, x, y: explain(p, v, x, y, "scorecam")[1].cam,
    "explain finercam": lambda p, v, x, y: explain(p, v, x, y, "finercam")[1].cam,
    "explain randomcam": lambda p, v, x, y: explain(p, v, x, y, "randomcam", key=KEY)[1].cam,
    "explain fullgrad": lambda p, v, x, y: explain(p, v, x, y, "fullgrad")[1].cam,
    "aug smoothing": lambda p, v, x, y: smoothing.aug_smooth(p, v, x, y)[1].cam,
    "guided backprop": lambda p, v, x, y: guided.guided_backprop(
        functools.partial(p.forward, v), x, y
    ),
    "guided gradcam": lambda p, v, x, y: guided.guided_gradcam(p, v, x, y).guided_cam,
    "consistency levels": _class_levels,
}
CASES = [("linen", e) for e in ENTRIES] + [
    (f, "probe") for f in ("nnx", "equinox", "haiku", "function")
]


@pytest.mark.parametrize(("framework", "entry"), CASES, ids=[f"{f}-{e}" for f, e in CASES])
def test_entry_points_under_a_users_jit_with_closed_over_arrays(setups, framework, entry):
    probe, variables, x, y = setups[framework]
    f = ENTRIES[entry]
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    got = jax.jit(lambda v: f(probe, v, xj, yj))(variables)
    want = f(probe, variables, x, y)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, **TOL)


def test_a_traced_out_of_range_target_is_finite_and_reported_under_checkify(setups):
    probe, variables, x, _ = setups["linen"]
    xj = jnp.asarray(x)
    bad = jnp.array([1, 3, -1])  # 3 outputs: rows 1 and 2 name none (-1 must not wrap)
    run = jax.jit(lambda v, t: probe(v, xj, t))
    got = run(variables, bad)
    want = probe(variables, x, 1)
    np.testing.assert_allclose(got.score[0], want.score[0], **TOL)
    np.testing.assert_allclose(got.gradients[0], want.gradients[0], **TOL)
    np.testing.assert_array_equal(got.score[1:], 0.0)
    np.testing.assert_array_equal(got.gradients[1:], 0.0)
    # per_class (consistency) likewise: class 3 gets zero gradients
    _, _, G = jax.jit(lambda v, c: probe.per_class(v, xj, c))(variables, jnp.array([1, 3]))
    np.testing.assert_allclose(G[0], want.gradients, **TOL)
    np.testing.assert_array_equal(G[1], 0.0)

    err, _ = checkify.checkify(run, errors=checkify.user_checks)(variables, bad)
    assert "target index 3 is out of range" in str(err.get())
    err, _ = checkify.checkify(run, errors=checkify.user_checks)(variables, jnp.array([0, 1, 2]))
    assert err.get() is None
    # the same targets closed over are concrete: refused while tracing, as eagerly
    with pytest.raises(ValueError, match="target index -1 is out of range"):
        jax.jit(lambda v: probe(v, xj, bad).gradients)(variables)

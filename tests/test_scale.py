"""The common intensity scale against tests/reference.py and analytic cases."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ifa_jax import scale as sc
from tests import reference as ref

CAM_SHAPES = {1: (3, 7), 2: (3, 4, 5), 3: (2, 3, 4, 2)}


def _cams(ndim, seed=0):
    return 2.0 * jax.random.normal(jax.random.key(seed), CAM_SHAPES[ndim]) + 0.5


# --------------------------------------------------------------------------- percentiles


def test_percentiles_match_reference_and_label_95_is_the_95th():
    v = np.arange(101.0)  # P_q = q exactly
    table = sc.percentiles(v)
    assert list(table) == [25, 50, 75, 90, 95, 99]
    assert table[95] == 95.0 and table[99] == 99.0
    rng = np.random.default_rng(0)
    x = rng.normal(size=37)
    got = sc.percentiles(x, qs=(0, 12.5, 50, 95, 100))
    assert 12.5 in got
    for q, val in got.items():
        assert val == pytest.approx(ref.percentile(x, q), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.array([]), "empty"),
        (np.array([1.0, np.nan]), "non-finite"),
        (np.ones((2, 2)), "1-D"),
    ],
)
def test_percentiles_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        sc.percentiles(bad)


def test_percentiles_bad_q():
    with pytest.raises(ValueError, match="outside"):
        sc.percentiles([1.0, 2.0], qs=(101,))
    with pytest.raises(ValueError, match="at least one"):
        sc.percentiles([1.0, 2.0], qs=())


# --------------------------------------------------------------------------- common_scale


def test_common_scale_bounds_from_percentiles():
    mx = np.arange(1.0, 102.0)  # P90 = 91
    mn = -np.arange(0.0, 101.0)  # P50 = -50
    s = sc.common_scale(mx, mn)
    assert (s.vmax, s.vmin, s.mode, s.remove_negative) == (91.0, -50.0, "norm", False)
    s = sc.common_scale(mx, mn, ratio=1.5, hi_percentile=95, lo_percentile=25)
    assert s.vmax == pytest.approx(1.5 * 96.0) and s.vmin == pytest.approx(1.5 * -75.0)
    s = sc.common_scale(mx, mn, remove_negative=True)
    assert s.vmin == 0.0 and s.vmax == 91.0
    s = sc.common_scale(mx, mn, mode="tanh", remove_negative=True)
    assert s.vmin == 0.0


@pytest.mark.parametrize(
    "kwargs, mx, mn, match",
    [
        ({}, [1.0, 1.0], [1.0, 1.0], "degenerate.*vmax = 1.*vmin = 1"),
        ({"lo_percentile": 100, "hi_percentile": 0}, [1.0, 5.0], [0.0, 4.0], "degenerate"),
        ({}, [], [], "empty"),
        ({}, [1.0, np.inf], [0.0, 0.0], "non-finite"),
        ({}, [1.0, 2.0], [0.0], "samples"),
        ({}, [0.0, 1.0], [1.0, 0.0], "swapped"),
        ({"ratio": 0.0}, [1.0, 2.0], [0.0, 0.0], "ratio"),
        ({"mode": "log"}, [1.0, 2.0], [0.0, 0.0], "unknown scale mode"),
        ({"hi_percentile": 120}, [1.0, 2.0], [0.0, 0.0], "outside"),
        ({"remove_negative": True}, [-1.0, -0.5], [-3.0, -2.0], "remove_negative"),
    ],
)
def test_common_scale_errors_never_fall_back(kwargs, mx, mn, match):
    with pytest.raises(ValueError, match=match):
        sc.common_scale(np.asarray(mx), np.asarray(mn), **kwargs)


# --------------------------------------------------------------------------- apply / invert


@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("mode", ["norm", "tanh"])
def test_apply_scale_matches_reference_under_jit(mode, ndim):
    L = _cams(ndim, ndim)
    f = jax.jit(sc.apply_scale, static_argnames="clip")
    for rn in (False, True):
        s = sc.scale_from_bounds(-1.0, 2.5, mode=mode, remove_negative=rn)
        for clip in (False, True):
            want = ref.rescale(L, -1.0, 2.5, mode, remove_negative=rn, clip=clip)
            np.testing.assert_allclose(f(L, s, clip=clip), want, rtol=1e-5, atol=1e-6)


def test_bounds_map_to_their_targets():
    for vmin, vmax in ((-1.0, 3.0), (0.2, 0.3), (-7.0, -2.0)):
        x = jnp.asarray([vmin, vmax])
        n = sc.apply_scale(x, sc.scale_from_bounds(vmin, vmax))
        np.testing.assert_allclose(n, [0.0, 1.0], atol=1e-6)
        t = sc.apply_scale(x, sc.scale_from_bounds(vmin, vmax, mode="tanh"))
        np.testing.assert_allclose(t, [0.05, 0.95], atol=1e-6)


def test_clip_and_remove_negative():
    s = sc.scale_from_bounds(-1.0, 1.0, remove_negative=True)
    assert s.vmin == 0.0
    out = sc.apply_scale(jnp.asarray([-5.0, 0.5, 3.0]), s)
    np.testing.assert_allclose(out, [0.0, 0.5, 3.0])  # relu, then /vmax; unclipped
    np.testing.assert_allclose(sc.apply_scale(jnp.asarray([3.0]), s, clip=True), [1.0])
    t = sc.scale_from_bounds(0.0, 1.0, mode="tanh")
    assert float(sc.apply_scale(jnp.asarray(-10.0), t)) < 0  # tanh below vmin goes negative
    assert float(sc.apply_scale(jnp.asarray(-10.0), t, clip=True)) == 0.0


@pytest.mark.parametrize("mode", ["norm", "tanh"])
def test_invert_is_exact_round_trip(mode):
    L = _cams(2, 7)
    s = sc.common_scale(
        L.reshape(3, -1).max(1),
        L.reshape(3, -1).min(1),
        mode=mode,
        lo_percentile=0,
        hi_percentile=100,
    )
    v = sc.apply_scale(L, s)
    np.testing.assert_allclose(sc.invert_scale(v, s), L, rtol=1e-4, atol=1e-4)
    if mode == "norm":  # the documented closed form
        np.testing.assert_allclose(sc.invert_scale(v, s), v * (s.vmax - s.vmin) + s.vmin, rtol=1e-6)
    else:
        np.testing.assert_allclose(
            sc.invert_scale(v, s), (np.arctanh(v) - s.b) / s.a, rtol=1e-5, atol=1e-6
        )


def test_tanh_coefficients_solved_exactly():
    s = sc.scale_from_bounds(-2.0, 6.0, mode="tanh")
    assert math.tanh(s.a * -2.0 + s.b) == pytest.approx(0.05, abs=1e-12)
    assert math.tanh(s.a * 6.0 + s.b) == pytest.approx(0.95, abs=1e-12)


def test_scale_is_a_pytree_mode_is_static():
    traces = []

    @jax.jit
    def f(L, s):
        traces.append(s.mode)
        return sc.apply_scale(L, s)

    L = _cams(1)
    f(L, sc.scale_from_bounds(0.0, 1.0))
    out = f(L, sc.scale_from_bounds(-3.0, 4.0))  # new bounds: same trace
    assert traces == ["norm"]
    np.testing.assert_allclose(out, (L + 3.0) / 7.0, rtol=1e-6)
    f(L, sc.scale_from_bounds(0.0, 1.0, mode="tanh"))  # new mode: retrace
    assert traces == ["norm", "tanh"]
    assert len(jax.tree_util.tree_leaves(sc.scale_from_bounds(0.0, 1.0))) == 4


# --------------------------------------------------------------------------- baseline


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_minmax_per_image_matches_reference(ndim):
    L = _cams(ndim, 3)
    out = sc.minmax_per_image(L)
    np.testing.assert_allclose(out, ref.minmax_per_image(L), rtol=1e-5, atol=1e-6)
    flat = np.asarray(out).reshape(L.shape[0], -1)
    np.testing.assert_allclose(flat.min(1), 0.0, atol=1e-6)
    np.testing.assert_allclose(flat.max(1), 1.0, atol=1e-5)


def test_minmax_constant_image_is_zero_and_rank_check():
    np.testing.assert_array_equal(sc.minmax_per_image(jnp.full((2, 3, 3), 4.0)), 0.0)
    with pytest.raises(ValueError, match="B, \\*spatial"):
        sc.minmax_per_image(jnp.ones(5))

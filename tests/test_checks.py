"""The shared input checks (ifa_jax._checks, ifa_jax._stats): one function and one
message for each check, whichever module calls it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ifa_jax import _checks, _stats, diagnostics, metrics, scale


def test_per_sample_values_one_message_everywhere():
    calls = [
        lambda v: scale.percentiles(v),
        lambda v: metrics.pearson(v, v),
        lambda v: diagnostics.ks_statistic(v, v),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r"must be a 1-D array \(N,\); got shape \(2, 2\)"):
            call(np.ones((2, 2)))
        with pytest.raises(ValueError, match="is empty; pass at least one value per sample"):
            call(np.array([]))
        with pytest.raises(
            ValueError,
            match=r"has 1 non-finite value\(s\) \(first at index 1: "
            r"inf\)",
        ):
            call(np.array([1.0, np.inf, 2.0]))
        with pytest.raises(ValueError, match="must be numeric; got dtype <U1"):
            call(np.array(["a", "b"]))
    np.testing.assert_array_equal(_checks.per_sample_values([True, False], "v"), [1.0, 0.0])
    np.testing.assert_array_equal(
        _checks.per_sample_values(np.array([1, 2.5], object), "v"), [1.0, 2.5]
    )


def test_is_traced():
    x = jnp.ones(3)
    assert not _checks.is_traced(x, np.ones(2), 1.0)
    assert jax.jit(lambda a: jnp.float32(_checks.is_traced(x, a)))(x) == 1.0


def test_pad_batch_zeroes_invalid_rows_and_pads():
    x, y, valid = _checks.pad_batch(
        np.full((2, 3), np.nan), np.array([[4], [1]]), [False, True], 4, 0, size_from="s", fix="f"
    )
    assert x.shape == (4, 3) and np.isnan(x[1]).all() and (x[[0, 2, 3]] == 0).all()
    np.testing.assert_array_equal(y, [0, 1, 0, 0])
    np.testing.assert_array_equal(valid, [False, True, False, False])
    with pytest.raises(
        ValueError,
        match="batch 3 has 2 samples, more than the first batch's size 1; use one batch size",
    ):
        _checks.pad_batch(
            x[:2], y[:2], None, 1, 3, size_from="the first batch's size", fix="use one batch size"
        )
    with pytest.raises(ValueError, match="batch 0: label 5 is outside \\[0, 3\\); fix it"):
        _checks.label_range(np.array([0, 5, 9]), np.array([True, True, False]), 3, 0, "fix it")
    _checks.label_range(np.array([0, 9]), np.array([True, False]), 3, 0, "ignored")


def test_one_minmax_for_scorecam_and_the_per_image_baseline():
    L = jnp.array([[[0.0, 2.0], [1.0, 4.0]], [[3.0, 3.0], [3.0, 3.0]]])
    exact = _stats.minmax_per_image(L, eps=0.0)
    np.testing.assert_allclose(exact[0], [[0.0, 0.5], [0.25, 1.0]])
    np.testing.assert_array_equal(exact[1], 0.0)  # a constant image maps to 0
    assert scale.minmax_per_image is _stats.minmax_per_image
    np.testing.assert_allclose(
        scale.minmax_per_image(L)[0], np.asarray(L[0]) / (4 + 1e-7), rtol=1e-6
    )

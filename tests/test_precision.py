"""Mixed precision: the model in bfloat16, the CAMs and statistics in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ifa_jax import analysis, linen_probe
from ifa_jax.runner.models import ConvNet

C = 3
METHODS = ("gradcam", "scorecam")  # a gradient method and a forward-pass one


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(0)
    x = rng.random((32, 8, 8, 2), dtype=np.float32)
    y = rng.integers(0, C, 32).astype(np.int32)
    model = ConvNet(ndim=2, features=(4, 6), num_classes=C)
    variables = model.init(jax.random.key(1), x[:1])
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 32, 16)]
    return linen_probe(model, "conv2"), variables, batches


def _analyze(case, **kwargs):
    probe, variables, batches = case
    out = analysis.analyze_methods(
        probe,
        variables,
        batches,
        num_classes=C,
        methods=METHODS,
        count="all",  # the same samples count in both precisions (no prediction flips)
        progress=False,
        **kwargs,
    )
    assert isinstance(out, dict)
    return out


def _relative(got, want):
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def test_bfloat16_model_is_close_to_float32_and_accumulates_in_float32(case):
    """bfloat16 keeps 8 significant bits: each rounding is off by at most 2^-9 (relative)
    and the two convolutions, the head and the vjp back to the layer add a few such
    roundings, so A and G carry relative errors of order 1e-2 at worst. IM_c averages them
    over the samples (measured: 3e-3); 2e-2 allows for about five roundings. A per-sample
    CAM maximum is a single value, not an average: 5e-2 of the largest one."""
    f32 = _analyze(case)
    bf16 = _analyze(case, compute_dtype=jnp.bfloat16)
    for m in METHODS:
        want, got = f32[m], bf16[m]
        for field, value in got.state._asdict().items():
            assert value.dtype == jnp.float32, (m, field, value.dtype)
        for field in ("cam_max", "cam_min", "score"):
            assert got.samples[field].dtype == np.float32, (m, field)
        error = _relative(got.summary.im_class, want.summary.im_class)
        assert 0 < error < 2e-2, (m, error)  # > 0: the model really ran in bfloat16
        assert _relative(got.summary.cam_mean, want.summary.cam_mean) < 2e-2, m
        peak = np.abs(want.samples["cam_max"]).max()
        assert np.abs(got.samples["cam_max"] - want.samples["cam_max"]).max() < 5e-2 * peak, m
        np.testing.assert_array_equal(got.summary.class_counts, want.summary.class_counts)


def test_float32_compute_dtype_changes_nothing(case):
    plain, same = _analyze(case), _analyze(case, compute_dtype="float32")
    for m in METHODS:
        for a, b in zip(plain[m].state, same[m].state):
            np.testing.assert_array_equal(a, b)


def test_batch_stats_casts_bfloat16_features_to_float32(case):
    probe, variables, batches = case
    x, y = batches[0]
    half = jax.tree.map(lambda v: v.astype(jnp.bfloat16), variables)
    assert probe(half, jnp.asarray(x, jnp.bfloat16), y).activations.dtype == jnp.bfloat16
    stats, per = analysis.batch_stats(
        probe, half, jnp.asarray(x, jnp.bfloat16), jnp.asarray(y), jnp.ones(len(y), bool)
    )
    assert stats.importance.dtype == stats.cam.dtype == jnp.float32
    assert per.cam_max.dtype == per.score.dtype == jnp.float32


@pytest.mark.parametrize("bad", ["int8", "not-a-dtype", np.int32])
def test_compute_dtype_must_be_floating(case, bad):
    probe, variables, batches = case
    with pytest.raises(ValueError, match="compute_dtype must be a floating dtype"):
        analysis.analyze(probe, variables, batches, num_classes=C, compute_dtype=bad)

"""consistency_levels against a per-class loop over probe calls, and the tanh inversion."""

from __future__ import annotations

import numpy as np
import pytest

from ifa_jax import cams, scale
from ifa_jax.consistency import LEVELS, consistency_levels, summarize_consistency
from ifa_jax.probes import linen_probe
from ifa_jax.runner.models import ConvNet


@pytest.fixture(scope="module")
def setup():
    import jax

    model = ConvNet(ndim=2, features=(4, 6), num_classes=3)
    x = np.asarray(jax.random.uniform(jax.random.key(0), (10, 6, 5, 2)))
    variables = model.init(jax.random.key(1), x[:1])
    return linen_probe(model, "conv2"), variables, x


def _reference(probe, variables, x, sc, masks, c, method):
    """Per class, one plain probe call and the CAM computed from scratch, in NumPy."""
    res = probe(variables, x, c)
    M = np.asarray(cams.contributions(res.activations, res.gradients, method))
    L = M.sum(-1)
    Ls = M[..., np.asarray(masks[c]) > 0].sum(-1)
    L_ = np.maximum(L, 0) if sc.remove_negative else L
    z = sc.a * L_ + sc.b
    Lm = L.reshape(len(L), -1)
    per_image = (Lm - Lm.min(1, keepdims=True)) / (np.ptp(Lm, 1, keepdims=True) + 1e-7)
    clipped = np.clip(z, 0, 1) if sc.mode == "norm" else np.maximum(z, 0)
    zs = sc.a * (np.maximum(Ls, 0) if sc.remove_negative else Ls) + sc.b
    means = [v.reshape(len(v), -1).mean(1) for v in (z, clipped, per_image, zs)]
    return np.stack(means), np.asarray(res.logits)


@pytest.mark.parametrize("mode", ["norm", "tanh"])
def test_levels_equal_a_per_class_loop(setup, mode):
    probe, variables, x = setup
    scales = {m: scale.scale_from_bounds(-0.2, 0.5, mode=mode) for m in ("gradcam", "hirescam")}
    masks = np.zeros((3, 6), np.float32)
    masks[:, :2] = 1
    valid = np.ones(len(x), bool)
    valid[-3:] = False  # padding rows of the last batch are dropped
    batches = [(x[:5], np.zeros(5, np.int32), valid[:5]), (x[5:], np.zeros(5, np.int32), valid[5:])]
    got = consistency_levels(
        probe, variables, batches, scales=scales, masks=masks, classes=[2, 0], group=1
    )
    assert got.levels.shape == (2, 2, len(LEVELS), 7)
    for c in (2, 0):
        for m in scales:
            want, logits = _reference(probe, variables, x[valid], scales[m], masks, c, m)
            for j, level in enumerate(LEVELS):
                np.testing.assert_allclose(got.of(c, m, level), want[j], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.logits, logits, rtol=1e-6)


def test_tanh_and_norm_give_the_same_r(setup):
    """The level is affine in the CAM under both modes, so r cannot depend on the mode."""
    probe, variables, x = setup
    batches = [(x, np.zeros(len(x), np.int32), np.ones(len(x), bool))]
    rs = []
    for mode in ("norm", "tanh"):
        sc = {"hirescam": scale.scale_from_bounds(-0.2, 0.1, mode=mode)}
        levels = consistency_levels(
            probe, variables, batches, scales=sc, masks=np.ones((3, 6)), classes=[0, 1, 2]
        )
        summary = summarize_consistency(levels).per_class["hirescam"]
        rs.append([summary[str(c)]["common"]["pearson"] for c in range(3)])
        squashed = np.tanh(levels.of(0, "hirescam", "common"))
        assert not np.allclose(squashed, levels.of(0, "hirescam", "common"))
    np.testing.assert_allclose(rs[0], rs[1], rtol=1e-5)


def test_empty_inputs_are_refused(setup):
    probe, variables, _ = setup
    sc = {"gradcam": scale.scale_from_bounds(0, 1)}
    with pytest.raises(ValueError, match="classes is empty"):
        consistency_levels(probe, variables, [], scales=sc, masks=np.ones((3, 6)), classes=[])
    with pytest.raises(ValueError, match="batches is empty"):
        consistency_levels(probe, variables, [], scales=sc, masks=np.ones((3, 6)), classes=[0])


@pytest.mark.parametrize("mode", ["norm", "tanh"])
def test_the_jvp_path_equals_the_per_class_vjps(setup, mode):
    from ifa_jax.consistency import common_levels

    probe, variables, x = setup
    methods = ("gradcam", "hirescam", "xgradcam")
    scales = {m: scale.scale_from_bounds(-0.2, 0.5, mode=mode) for m in methods}
    valid = np.ones(len(x), bool)
    valid[-2:] = False
    batches = [(x[:5], np.zeros(5, np.int32), valid[:5]), (x[5:], np.zeros(5, np.int32), valid[5:])]
    vjp = consistency_levels(
        probe, variables, batches, scales=scales, masks=np.ones((3, 6)), classes=[0, 1, 2]
    )
    jvp = common_levels(probe, variables, batches, scales=scales)
    assert jvp.names == ("common",) and jvp.levels.shape == (3, 3, 1, 8)
    for c in range(3):
        for m in methods:
            np.testing.assert_allclose(
                jvp.of(c, m, "common"), vjp.of(c, m, "common"), rtol=1e-5, atol=1e-6
            )
    np.testing.assert_allclose(jvp.logits, vjp.logits, rtol=1e-6)
    summary = summarize_consistency(jvp).summary
    assert set(summary["gradcam"]) == {"common", "auroc"}


def test_both_paths_read_dict_batches_as_analyze_does(setup):
    from ifa_jax.consistency import common_levels

    probe, variables, x = setup
    scales = {"gradcam": scale.scale_from_bounds(-0.2, 0.5)}
    y = np.zeros(len(x), np.int32)
    valid = np.arange(len(x)) < 8
    tuples = [(x[:5], y[:5], valid[:5]), (x[5:], y[5:], valid[5:])]
    dicts = [{"img": a, "lab": b, "ok": v} for a, b, v in tuples]
    keys = ("img", "lab", "ok")
    for fn, kwargs in (
        (consistency_levels, {"masks": np.ones((3, 6)), "classes": [0, 2]}),
        (common_levels, {}),
    ):
        want = fn(probe, variables, tuples, scales=scales, **kwargs)
        got = fn(probe, variables, dicts, scales=scales, keys=keys, **kwargs)
        np.testing.assert_array_equal(got.levels, want.levels)
        assert got.levels.shape[-1] == 8  # the rows with ok False are dropped
        with pytest.raises(ValueError, match=r"batch 0 is a dict with keys 'img'.* no 'image'"):
            fn(probe, variables, dicts, scales=scales, **kwargs)


def test_the_jvp_path_refuses_what_is_not_linear(setup):
    from ifa_jax.consistency import common_levels

    probe, variables, x = setup
    batches = [(x, np.zeros(len(x), np.int32))]
    with pytest.raises(ValueError, match=r"gradcam\+\+'s CAM mass is not linear"):
        common_levels(
            probe, variables, batches, scales={"gradcam++": scale.scale_from_bounds(0, 1)}
        )
    with pytest.raises(ValueError, match=r"removes negatives \(relu\), which is not linear"):
        common_levels(
            probe,
            variables,
            batches,
            scales={"gradcam": scale.scale_from_bounds(-1, 1, remove_negative=True)},
        )

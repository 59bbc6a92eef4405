"""SESS (ifa_jax.smoothing.sess, method "sess" of kind "input"): against a loop over
scales and windows explaining one patch at a time (tests/reference.py), the one-window
case against the base CAM, the layout's facts, the errors, and pytorch-grad-cam's SESS
maps stored in tests/data/peers.npz."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from ifa_jax import cams, scale
from ifa_jax.explaining import Explanation, explain, smoothing
from ifa_jax.probes import linen_probe
from ifa_jax.runner import models
from ifa_jax.runner.models import ConvNet
from tests import reference

PEERS = Path(__file__).parent / "data" / "peers.npz"  # experiments/golden_peers.py


@functools.cache
def _model(ndim: int):
    """A small GAP CNN with 3 classes and its variables (which fit every input size)."""
    model = ConvNet(ndim=ndim, features=(4, 6), num_classes=3)
    x = jnp.zeros((1,) * (ndim + 1) + (2,))
    return model, jax.jit(model.init)(jax.random.key(ndim), x)


def convnet(shape, seed=0):
    """(probe at relu2, variables, x (*shape, 2)) of :func:`_model`."""
    model, variables = _model(len(shape) - 1)
    x = jax.random.normal(jax.random.key(seed), (*shape, 2))
    return linen_probe(model, "relu2"), variables, x


def _golden_case(data, case: str):
    """(probe, variables, x, labels) of one case of experiments/golden_peers.py's file."""
    spec = json.loads(str(data[f"{case}/spec"]))
    prefix = f"{case}/variables/"
    flat = {k[len(prefix) :]: jnp.asarray(data[k]) for k in data.files if k.startswith(prefix)}
    model = getattr(models, spec["model"])(**spec["kwargs"])
    variables = traverse_util.unflatten_dict(flat, sep="/")
    x, labels = jnp.asarray(data[f"{case}/x"]), jnp.asarray(data[f"{case}/labels"])
    return linen_probe(model, spec["layer"]), variables, x, labels


def loop_reference(probe, variables, x, target, base="gradcam", score="logit", **kw):
    """reference.sess with every patch explained on its own through ifa_jax.explain."""

    def cam_of(patch, n):
        patch = jnp.asarray(patch, jnp.float32)[None]
        return explain(probe, variables, patch, target[n : n + 1], base, score=score)[1].cam[0]

    def logits_of(patch):
        return probe.forward(variables, jnp.asarray(patch, jnp.float32)[None])[0]

    return reference.sess(np.asarray(x), cam_of, logits_of, np.asarray(target), **kw)


CASES = {
    # rectangular 2-D, rescaled, pre-filtered, theta, patches explained in chunks
    "2d": (
        (2, 7, 6),
        "gradcam",
        {"scales": (6, 9), "window": 4, "step": 3, "pre_filter_ratio": 0.3, "theta": 0.05},
        {"batch_size": 4},
    ),
    # 1-D, a forward-pass base method on the probability, max pooling, no blur
    "1d": (
        (2, 10),
        "scorecam",
        {"scales": (10, 13), "window": 4, "step": 3, "pool": "max", "smooth": False},
        {"batch_size": None, "score": "probability"},
    ),
    # 3-D, patches weighted by their raw logit
    "3d": (
        (1, 5, 4, 4),
        "gradcam++",
        {"scales": (4,), "window": 3, "step": 2, "softmax_scores": False},
        {},
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_matches_the_loop_over_scales_and_windows(case):
    shape, base, kw, extra = CASES[case]
    kw = dict(kw)
    probe, variables, x = convnet(shape)
    target = jnp.array([1, 2][: shape[0]])
    score = extra.get("score", "logit")
    want = loop_reference(probe, variables, x, target, base, score, **kw)
    window, step = kw.pop("window"), kw.pop("step")
    got = smoothing.sess(
        probe, variables, x, target, base_method=base, window_size=window, step_size=step,
        **kw, **extra,
    ).cam_result.cam  # fmt: skip
    assert got.shape == x.shape[:-1]
    assert float(np.max(want)) > 0.99  # not a blank map
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_through_explain_and_other_targets():
    """explain(..., "sess") is sess's map as a CamResult; a callable target reading logit
    c gives target c's map (its scores are the callable on the softmax, as with c's)."""
    probe, variables, x = convnet((2, 6, 6))
    kw = {"scales": (6, 9), "window_size": 4, "step_size": 3}
    result, out = smoothing.sess(probe, variables, x, 1, **kw)
    got = out.cam
    same = explain(
        probe, variables, x, 1, "sess", base_method="gradcam", scales=(6, 9), window_size=4,
        step_size=3,
    )  # fmt: skip
    assert isinstance(same, Explanation) and isinstance(same.cam_result, cams.CamResult)
    np.testing.assert_array_equal(same.cam_result.cam, got)
    np.testing.assert_array_equal(same.probe_result.target, result.target)
    assert out.contributions.shape == (*x.shape[:-1], 1)
    np.testing.assert_array_equal(result.target, [1, 1])
    by_callable = smoothing.sess(probe, variables, x, lambda logits: logits[:, 1], **kw)[1].cam
    np.testing.assert_allclose(by_callable, got, atol=1e-6)


@pytest.mark.skipif(not PEERS.exists(), reason="no golden data")
def test_one_window_over_the_input_is_the_base_cam():
    """One scale equal to the input and a window covering it: one patch of weight 1, so
    SESS is the base CAM relu'd, min-max'd, enlarged, min-max'd (pytorch-grad-cam's
    post-processing), then blurred and min-max'd. On the golden MnistCNN (a 6 x 6 grid)."""
    with np.load(PEERS) as data:
        probe, variables, x, _ = _golden_case(data, "mnist_cnn")
    x = x[:2]
    _, base = explain(probe, variables, x, 0, "xgradcam")
    assert base.cam.shape == (2, 6, 6) and float(jnp.max(base.cam)) > 0
    L = scale.minmax_per_image(jax.nn.relu(base.cam))
    L = scale.minmax_per_image(cams.upsample(L, (28, 28)))
    got = smoothing.sess(probe, variables, x, 0, base_method="xgradcam", scales=(28,))[1].cam
    want = scale.minmax_per_image(smoothing.gaussian_blur(L))
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_layout_blur_and_paste():
    # the paper's scales for 224 inputs; windows moved back inside the last cells
    assert smoothing.sess_scales(224) == tuple(range(224, 929, 64))
    assert smoothing.window_starts(30, 8, 8) == (0, 8, 16, 22)
    assert smoothing.window_starts(8, 8, 8) == (0,)
    assert smoothing.sess_layout((6, 9), 4, 4, (6, 8)) == [
        ((6, 9), tuple((a, b) for a in (0, 2) for b in (0, 4, 5))),
        ((8, 12), tuple((a, b) for a in (0, 4) for b in (0, 4, 8))),
    ]
    L = jax.random.uniform(jax.random.key(0), (2, 4, 13))  # an axis shorter than the radius
    np.testing.assert_allclose(smoothing.gaussian_blur(L), reference.gaussian_blur(L), atol=1e-6)
    L = jax.random.uniform(jax.random.key(1), (1, 3, 4, 2))
    np.testing.assert_allclose(
        smoothing.gaussian_blur(L, 5, 1.5), reference.gaussian_blur(L, 5, 1.5), atol=1e-6
    )


def test_errors():
    probe, variables, x = convnet((1, 6, 6))
    run = functools.partial(smoothing.sess, probe, variables, x, 0)
    with pytest.raises(ValueError, match=r"scales \[4\] are below the window size 5"):
        run(window_size=5, scales=(4, 6))
    with pytest.raises(ValueError, match=r"scales \[6\] are below the window size 7"):
        run(window_size=7, scales=(6,))  # a window larger than the input needs larger scales
    with pytest.raises(ValueError, match="window_size must be an int >= 1; got 0"):
        run(window_size=0)
    with pytest.raises(ValueError, match="pool must be 'mean' or 'max'; got 'sum'"):
        run(pool="sum")
    with pytest.raises(ValueError, match=r"pre_filter_ratio .* must be in \[0, 1\); got 1.0"):
        run(pre_filter_ratio=1.0)
    with pytest.raises(ValueError, match="num_scales must be an int >= 1; got 0"):
        run(num_scales=0)
    with pytest.raises(ValueError, match="sess cannot wrap itself"):
        run(base_method="sess")
    with pytest.raises(ValueError, match="gradcam has no option 'eps'"):
        run(eps=1e-3)
    with pytest.raises(ValueError, match="randomcam needs a PRNG key: pass key="):
        run(base_method="randomcam")  # the base's needs hold inside SESS
    with pytest.raises(ValueError, match="unknown CAM method 'nocam'"):
        run(base_method="nocam")
    with pytest.raises(ValueError, match="must be hashable"):
        explain(probe, variables, x, 0, "sess", scales=[6, 8])  # a list: use a tuple
    with pytest.raises(ValueError, match="takes no channel mask"):
        explain(probe, variables, x, 0, "sess", mask=jnp.ones(6))
    with pytest.raises(ValueError, match="smooths methods of one layer.*sess is of kind 'input'"):
        smoothing.aug_smooth(probe, variables, x, 0, "sess")


# Tolerances against pytorch-grad-cam. convnet: measured 5e-7. mnist_cnn (28 x 28, scales
# 28 ... 116): at 116 / 28 = 29 / 7 some resize samples fall exactly on a cell; OpenCV 5.1's
# cv2.resize of a pasted patch map leaves +-1e-15 residues there (where the exact weight is
# 0), which its mean over the patches "above theta = 0" counts as covering patches, diluting
# those cells; ours counts exact zeros as zero. Measured: 5 of 8 images to 4e-7, the other
# three to 7e-4, 1.4e-3 and 5.8e-3.
GOLDEN = (
    ("convnet", "SESS", 2e-5),
    pytest.param("mnist_cnn", "SESS", 1e-2, marks=pytest.mark.slow),
)


@pytest.mark.skipif(not PEERS.exists(), reason="no golden data")
@pytest.mark.parametrize("case, key, atol", GOLDEN)
def test_equals_pytorch_grad_cam(case, key, atol):
    """pytorch-grad-cam 1.5.7's SESS (GradCAM base, its defaults, logit targets) on torch
    twins of the trained golden CNNs: its per-image fused maps, min-max scaled as its
    forward does, equal ours with the same defaults (tolerances above)."""
    with np.load(PEERS) as data:
        stored = f"{case}/logit/pytorch-grad-cam/{key}"
        if stored not in data.files:
            pytest.skip(f"peers.npz holds no {stored}")
        theirs = data[stored]
        probe, variables, x, labels = _golden_case(data, case)
    got = smoothing.sess(probe, variables, x, labels).cam_result.cam
    want = reference.minmax_per_image(theirs)
    assert float(want.max()) > 0.99
    np.testing.assert_allclose(got, want, atol=atol)

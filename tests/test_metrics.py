"""ifa_jax.metrics against naive NumPy references (tests/reference_metrics.py) and known cases."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
import scipy.stats
from sklearn.metrics import roc_auc_score

from ifa_jax import cams, explain, metrics
from ifa_jax.probes import linen_probe
from ifa_jax.runner.models import ConvNet
from tests import reference_metrics as ref

# --------------------------------------------------------------------------- helpers


def linear_softmax(weights):
    """score_fn(x, t): softmax probability of class t under a linear model (O, *in, C)."""
    w = jnp.asarray(weights)

    def score(x, t):
        logits = jnp.einsum("b...,o...->bo", x, w)
        return jax.nn.softmax(logits, -1)[jnp.arange(x.shape[0]), t]

    def score_one(xn, t):  # float64 reference for one sample
        logits = np.array([np.sum(xn * np.asarray(w[o], np.float64)) for o in range(len(w))])
        e = np.exp(logits - logits.max())
        return float(e[t] / e.sum())

    return score, score_one


def top_k(rows, ratio):
    """Local selection helper: the round(ratio * K) (>= 1) most important channels per row."""
    rows = np.asarray(rows)
    K = rows.shape[-1]
    k = max(1, round(ratio * K))
    flat = rows.reshape(-1, K)
    out = np.zeros_like(flat, np.float32)
    for r, row in enumerate(flat):
        out[r, np.argsort(-row, kind="stable")[:k]] = 1
    return out.reshape(rows.shape)


def convnet_parts(model, variables):
    """ConvNet cut by hand at conv2: x -> A, with the dense head's kernel and bias."""
    p = variables["params"]
    k = (model.kernel,) * model.ndim

    def features(x):
        h = nn.relu(nn.Conv(model.features[0], k, padding="SAME").apply({"params": p["conv1"]}, x))
        return nn.Conv(model.features[1], k, padding="SAME").apply({"params": p["conv2"]}, h)

    return features, np.asarray(p["head"]["kernel"]), np.asarray(p["head"]["bias"])


# --------------------------------------------------------------------------- consistency, AUROC


def test_correlations_match_references_with_ties():
    rng = np.random.default_rng(0)
    a = np.round(rng.normal(size=40), 1)  # rounding makes ties
    b = np.round(0.5 * a + rng.normal(size=40), 1)
    assert np.unique(a).size < 40 and np.unique(b).size < 40
    np.testing.assert_allclose(metrics.pearson(a, b), ref.pearson(a, b), rtol=1e-12)
    np.testing.assert_allclose(metrics.spearman(a, b), ref.spearman(a, b), rtol=1e-12)
    np.testing.assert_allclose(metrics.spearman(a, b), scipy.stats.spearmanr(a, b)[0], rtol=1e-12)
    np.testing.assert_allclose(metrics.rankdata(a), scipy.stats.rankdata(a))
    # Known cases: an increasing affine map is +1 (Pearson), any monotone map +1 (Spearman).
    assert metrics.pearson(a, 3 * a + 2) == pytest.approx(1.0, abs=1e-12)
    assert metrics.pearson(a, -a) == pytest.approx(-1.0, abs=1e-12)
    assert metrics.spearman(a, np.exp(a)) == pytest.approx(1.0, abs=1e-12)
    out = metrics.consistency(jnp.asarray(a, jnp.float32), b)
    assert out["n"] == 40 and out["reason"] is None
    np.testing.assert_allclose(out["pearson"], ref.pearson(np.float32(a), b), rtol=1e-6)
    np.testing.assert_allclose(out["spearman"], ref.spearman(a, b), rtol=1e-12)


def test_consistency_undefined_cases_say_why():
    for act, score, reason in [
        ([1.0, 2.0], [3.0, 1.0], "fewer than 3 samples (n=2)"),
        ([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0], "constant activation"),
        ([1.0, 2.0, 3.0], [5.0, 5.0, 5.0], "constant score"),
        ([2.0, 2.0, 2.0], [5.0, 5.0, 5.0], "constant activation and score"),
    ]:
        out = metrics.consistency(act, score)
        assert out == {"pearson": None, "spearman": None, "n": len(act), "reason": reason}
    assert metrics.pearson([1, 1, 1], [1, 2, 3]) is None
    assert metrics.spearman([1, 2], [1, 2]) is None


def test_correlation_bad_inputs():
    with pytest.raises(ValueError, match="activation has 3 values but score has 4"):
        metrics.consistency([1, 2, 3], [1, 2, 3, 4])
    with pytest.raises(
        ValueError,
        match=r"activation must be a 1-D array \(N,\); got shape "
        r"\(2, 3\)",
    ):
        metrics.consistency(np.ones((2, 3)), np.ones(6))
    with pytest.raises(ValueError, match="score is empty"):
        metrics.consistency([1.0], [])
    with pytest.raises(
        ValueError,
        match=r"score has 1 non-finite value\(s\) \(first at "
        r"index 2: nan\)",
    ):
        metrics.consistency([1, 2, 3], [1, 2, np.nan])


def test_activation_level_any_rank():
    rng = np.random.default_rng(1)
    for shape in [(3, 7), (3, 4, 5), (2, 3, 4, 5)]:
        c = rng.uniform(size=shape)
        want = [np.mean(c[n]) for n in range(shape[0])]
        np.testing.assert_allclose(metrics.activation_level(c), want, rtol=1e-6)
    with pytest.raises(ValueError, match=r"CAMs \(B, \*spatial\); got shape \(5,\)"):
        metrics.activation_level(np.ones(5))


def test_auroc_matches_sklearn_and_pairs_with_ties():
    rng = np.random.default_rng(2)
    scores = np.round(rng.normal(size=50), 1)
    positives = rng.uniform(size=50) < 0.4 + 0.3 * (scores > 0)
    out = metrics.auroc(scores, positives)
    assert out["positives"] == positives.sum() and out["negatives"] == (~positives).sum()
    np.testing.assert_allclose(out["auroc"], roc_auc_score(positives, scores), rtol=1e-12)
    np.testing.assert_allclose(out["auroc"], ref.auroc(scores, positives), rtol=1e-12)
    assert metrics.auroc([1, 2, 3, 4], [0, 0, 1, 1])["auroc"] == 1.0
    assert metrics.auroc([4, 3, 2, 1], [False, False, True, True])["auroc"] == 0.0
    assert metrics.auroc([1, 1, 1, 1], [0, 1, 0, 1])["auroc"] == 0.5
    single = metrics.auroc([0.1, 0.2, 0.3], [True, True, True])
    assert single == {
        "auroc": None,
        "positives": 3,
        "negatives": 0,
        "reason": "only one class present (no negatives)",
    }
    assert metrics.auroc([0.1, 0.2], [0, 0])["reason"] == "only one class present (no positives)"
    with pytest.raises(ValueError, match="positives must be a 1-D bool array"):
        metrics.auroc([0.1, 0.2], [0.5, 1.0])
    with pytest.raises(ValueError, match="scores has 3 values but positives has 2"):
        metrics.auroc([0.1, 0.2, 0.3], [True, False])


# --------------------------------------------------------------------------- drop / increase


def test_confidence_change_matches_reference(convnet):
    model, variables, x = convnet
    probe = linen_probe(model, "conv2")
    score_fn = metrics.model_scorer(probe, variables)
    rng = np.random.default_rng(3)
    saliency = rng.uniform(size=x.shape[:-1]).astype(np.float32)
    saliency[0] = 1.0  # unmasked: no drop, no increase for sample 0
    target = np.array([0, 2, 1])

    forward = jax.jit(probe.forward)

    def score_one(xn, t):
        logits = np.asarray(forward(variables, jnp.asarray(xn[None], jnp.float32)))[0]
        e = np.exp(logits - logits.max())
        return float(e[t] / e.sum())

    y, ym = metrics.confidence_scores(score_fn, x, saliency, target)
    assert float(y[0]) == pytest.approx(float(ym[0]), rel=1e-6)
    out = metrics.confidence_change(score_fn, x, saliency, target)
    want_drop, want_inc = ref.drop_increase(score_one, np.asarray(x), saliency, target)
    assert out["n"] == 3
    np.testing.assert_allclose(out["average_drop"], want_drop, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["average_increase"], want_inc)


def test_a_target_the_model_has_no_output_for_is_refused_by_the_metrics(convnet):
    """model_scorer scores a target outside the outputs NaN (the probe alone scores it 0,
    which gave silent zeros), and each metric then names the target."""
    model, variables, x = convnet
    score_fn = metrics.model_scorer(linen_probe(model, "conv2"), variables)
    outputs = model.apply(variables, x).shape[-1]
    assert np.isnan(np.asarray(score_fn(x[:2], jnp.array([outputs, -1])))).all()
    saliency = np.full(x.shape[:-1], 0.5, np.float32)
    bad = np.array([0, outputs, 1])
    for call in (
        lambda: metrics.confidence_scores(score_fn, x, saliency, bad),
        lambda: metrics.road(score_fn, x, saliency, bad, noise=0.0, percentiles=(50,)),
        lambda: metrics.pixel_flipping(score_fn, x, saliency, bad, cells_per_step=16),
    ):
        with pytest.raises(FloatingPointError, match="one of the model's outputs"):
            call()


def test_drop_increase_known_values_and_errors():
    out = metrics.drop_increase([0.5, 0.8, 0.2, 0.4], [0.25, 0.8, 0.3, 0.0])
    # drops: 0.5, 0, 0 (increase), 1 -> mean 0.375; one increase in four.
    assert out == {"average_drop": pytest.approx(37.5), "average_increase": 25.0, "n": 4}
    with pytest.raises(ValueError, match=r"y <= 0 for 1 sample\(s\) \(first at index 1: -2"):
        metrics.drop_increase([0.5, -2.0], [0.1, 0.1])
    score, _ = linear_softmax(np.ones((2, 4, 4, 1)))
    x = np.ones((2, 4, 4, 1), np.float32)
    with pytest.raises(
        ValueError,
        match=r"saliency has shape \(2, 3, 3\) but the inputs "
        r"\(2, 4, 4, 1\) need \(2, 4, 4\).*upsample",
    ):
        metrics.confidence_scores(score, x, np.ones((2, 3, 3)), 0)
    with pytest.raises(ValueError, match=r"saliency must lie in \[0, 1\]; got min 0, max 2"):
        metrics.confidence_scores(score, x, np.linspace(0, 2, 32).reshape(2, 4, 4), 0)
    with pytest.raises(ValueError, match=r"target has shape \(3,\) but the batch has 2"):
        metrics.confidence_scores(score, x, np.ones((2, 4, 4)), np.array([0, 1, 1]))
    with pytest.raises(
        ValueError,
        match=r"score_fn must return one score per row, shape "
        r"\(4,\); got \(4, 2\)",
    ):
        metrics.confidence_scores(lambda x, t: x.reshape(4, -1)[:, :2], x, np.ones((2, 4, 4)), 0)


# --------------------------------------------------------------------------- insertion / deletion


def test_insertion_deletion_known_region():
    """score = mean of the input over a region covering exactly 2 of 6 windows."""
    region = np.zeros((8, 12), np.float32)
    region[0:4, 4:12] = 1  # windows (0, 1) and (0, 2) of the 2 x 3 grid of 4 x 4 windows

    def score(x, t):
        return jnp.sum(x[..., 0] * region, axis=(1, 2)) / region.sum()

    x = np.ones((2, 8, 12, 1), np.float32)
    saliency = np.stack([region, 1 - region])  # the region first, then the region last
    out = metrics.insertion_deletion(score, x, saliency, 0, window=4, insertion_baseline="zeros")
    np.testing.assert_allclose(out.fraction, np.arange(7) / 6, rtol=1e-6)
    np.testing.assert_allclose(
        out.deletion, [[1, 0.5, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0.5, 0]], atol=1e-6
    )
    np.testing.assert_allclose(
        out.insertion, [[0, 0.5, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0.5, 1]], atol=1e-6
    )
    np.testing.assert_allclose(out.deletion_auc, [1 / 6, 5 / 6], rtol=1e-5)
    np.testing.assert_allclose(out.insertion_auc, [5 / 6, 1 / 6], rtol=1e-5)
    # Two windows per step: the region goes in the first step.
    two = metrics.insertion_deletion(
        score, x, saliency, 0, window=(4, 4), windows_per_step=2, insertion_baseline="zeros"
    )
    np.testing.assert_allclose(two.deletion[0], [1, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(two.insertion[0], [0, 1, 1, 1], atol=1e-6)


@pytest.mark.parametrize(
    "shape,window,wps",
    [((3, 10, 2), (3,), 1), ((3, 6, 5, 2), (2, 2), 2), ((2, 4, 3, 5, 1), (2, 2, 2), 3)],
    ids=["1d", "2d", "3d"],
)
def test_insertion_deletion_matches_reference(shape, window, wps):
    rng = np.random.default_rng(len(shape))
    x = rng.normal(size=shape).astype(np.float32)
    # Multiples of 1/8: window sums are exact in float32 and float64, so ties are real ties.
    saliency = (np.round(rng.uniform(size=shape[:-1]) * 8) / 8).astype(np.float32)
    saliency[0] = 0.5  # all windows of sample 0 tie apart from partial ones
    score, score_one = linear_softmax(rng.normal(size=(3, *shape[1:])) / 2)
    target = np.arange(shape[0]) % 3
    out = metrics.insertion_deletion(
        score,
        x,
        saliency,
        target,
        window=window,
        windows_per_step=wps,
        blur_sigma=1.0,
        images_per_batch=2,
    )
    blurred = scipy.ndimage.gaussian_filter(
        x.astype(np.float64), (0, *[1.0] * len(window), 0), mode="nearest", truncate=4.0
    )
    d, i, auc_d, auc_i, frac = ref.insertion_deletion(
        score_one, x, saliency, target, window, wps, np.zeros_like(x), blurred
    )
    np.testing.assert_allclose(out.fraction, frac, rtol=1e-6)
    np.testing.assert_allclose(out.deletion, d, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out.insertion, i, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out.deletion_auc, auc_d, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out.insertion_auc, auc_i, rtol=1e-4, atol=1e-6)


def test_blur_matches_scipy():
    x = np.random.default_rng(5).normal(size=(2, 9, 7, 3)).astype(np.float32)
    want = scipy.ndimage.gaussian_filter(x.astype(np.float64), (0, 1.5, 1.5, 0), mode="nearest")
    np.testing.assert_allclose(metrics.blur(x, 1.5), want, rtol=1e-5, atol=1e-6)


def test_insertion_deletion_bad_inputs():
    score, _ = linear_softmax(np.ones((2, 4, 4, 1)))
    x, s = np.ones((2, 4, 4, 1), np.float32), np.ones((2, 4, 4), np.float32)
    with pytest.raises(
        ValueError,
        match=r"window \(2, 2, 2\) has 3 axes but the input grid "
        r"\(4, 4\) has 2",
    ):
        metrics.insertion_deletion(score, x, s, 0, window=(2, 2, 2))
    with pytest.raises(ValueError, match=r"window sizes must be >= 1; got \(0, 2\)"):
        metrics.insertion_deletion(score, x, s, 0, window=(0, 2))
    with pytest.raises(ValueError, match="deletion_baseline 'mean' is not one of"):
        metrics.insertion_deletion(score, x, s, 0, deletion_baseline="mean")
    with pytest.raises(ValueError, match=r"inputs x must have shape \(B, \*spatial, C\)"):
        metrics.insertion_deletion(score, np.ones((2, 4)), np.ones((2,)), 0)
    with pytest.raises(ValueError, match="inputs x are empty"):
        metrics.insertion_deletion(score, np.ones((0, 4, 4, 1)), np.ones((0, 4, 4)), 0)
    with pytest.raises(
        ValueError,
        match=r"score_fn must return one score per row, shape "
        r"\(20,\); got \(20, 4\)",
    ):
        metrics.insertion_deletion(
            lambda x, t: x[:, 0, :, 0], x, s, 0, window=2, insertion_baseline="zeros"
        )
    with pytest.raises(FloatingPointError, match="non-finite score"):
        metrics.insertion_deletion(
            lambda x, t: jnp.log(x[:, 0, 0, 0] - 1), x, s, 0, window=2, insertion_baseline="zeros"
        )


# --------------------------------------------------------------------------- feature subsets


def _subset_data(model, variables, x0, n=7):
    """n inputs shaped like x0, labels = the model's predictions with two flipped."""
    x = np.asarray(jax.random.normal(jax.random.key(11), (n, *x0.shape[1:])))
    logits = np.asarray(model.apply(variables, x))
    y = logits.argmax(-1)
    y[[1, 4]] = (y[[1, 4]] + 1) % logits.shape[-1]
    return x, y, logits


def _reference_accuracy(model, variables, x, y, keep_rows):
    """keep_rows: (N, K) the mask applied to each sample."""
    features, kernel, bias = convnet_parts(model, variables)
    logits = ref.gap_head_logits(np.asarray(features(x)), keep_rows, kernel, bias)
    return float(np.mean(logits.argmax(-1) == y))


def test_subset_accuracy_shared_mask_matches_reference(convnet):
    model, variables, x0 = convnet
    probe = linen_probe(model, "conv2")
    x, y, _ = _subset_data(model, variables, x0)
    mask = np.array([1, 0, 1, 1, 0, 0], np.float32)
    batches = [(x[:3], y[:3]), (x[3:6], y[3:6]), (x[6:], y[6:])]  # short last batch
    out = metrics.subset_accuracy(probe, variables, batches, mask)
    want = _reference_accuracy(model, variables, x, y, np.tile(mask, (7, 1)))
    assert out["n"] == 7 and out["correct"] == round(want * 7)
    assert out["accuracy"] == pytest.approx(want) and out["full_accuracy"] == pytest.approx(5 / 7)


@pytest.fixture(scope="module")
def convnet10():
    """(model, variables, x0): a 2-D ConvNet with 10 channels at conv2 and 3 classes."""
    model = ConvNet(ndim=2, features=(4, 10), num_classes=3)
    x0 = jnp.zeros((1, 6, 5, 2))
    return model, jax.jit(model.init)(jax.random.key(21), x0), x0


def test_subset_accuracy_per_class_rows_and_valid_flags(convnet10):
    model, variables, x0 = convnet10
    probe = linen_probe(model, "conv2")
    x, y, logits = _subset_data(model, variables, x0)
    masks = (np.random.default_rng(1).uniform(size=(3, 10)) < 0.4).astype(np.float32)
    valid = np.array([True, True, False, True, True, True, True])
    batches = [(x[:4], y[:4], valid[:4]), (x[4:], y[4:], valid[4:])]
    wants = {}
    for row, rows_of in [("label", y), ("predicted", logits.argmax(-1))]:
        out = metrics.subset_accuracy(probe, variables, batches, masks, row=row)
        wants[row] = _reference_accuracy(
            model, variables, x[valid], y[valid], masks[rows_of[valid]]
        )
        assert out["n"] == 6
        assert out["accuracy"] == pytest.approx(wants[row]), row
    # The masks (seed) are chosen so that the two choices give different accuracies: the
    # test tells them apart (labels 1 and 4 are not the predictions).
    assert wants["label"] != pytest.approx(wants["predicted"])


def test_subset_accuracy_curve_full_ratio_is_plain_accuracy(convnet10):
    model, variables, x0 = convnet10
    probe = linen_probe(model, "conv2")
    x, y, _ = _subset_data(model, variables, x0, n=9)
    plain = float(np.mean(np.asarray(probe.forward(variables, x)).argmax(-1) == y))
    importance = np.random.default_rng(6).normal(size=(3, 10))
    ratios = (0.1, 0.25, 0.5, 1.0)
    gen = ((x[i : i + 4], y[i : i + 4]) for i in range(0, 9, 4))  # a generator, read once
    curve = metrics.subset_accuracy_curve(
        probe, variables, gen, importance, ratios, select_fn=top_k
    )
    assert curve["ratios"] == list(ratios) and curve["n"] == 9
    assert curve["channels"] == [1.0, 2.0, 5.0, 10.0]
    assert curve["accuracy"][-1] == plain == curve["full_accuracy"]  # exactly
    for ratio, acc in zip(ratios, curve["accuracy"]):
        want = _reference_accuracy(model, variables, x, y, top_k(importance, ratio)[y])
        assert acc == pytest.approx(want), ratio
    shared = metrics.subset_accuracy_curve(
        probe, variables, [(x, y)], importance[0], (0.3, 1.0), select_fn=top_k
    )
    assert shared["accuracy"][-1] == plain
    want = _reference_accuracy(model, variables, x, y, np.tile(top_k(importance[0], 0.3), (9, 1)))
    assert shared["accuracy"][0] == pytest.approx(want)


def test_subset_accuracy_bad_inputs(mnist):
    model, variables, x = mnist
    probe = linen_probe(model, "conv2")
    y = np.zeros(4, np.int32)
    with pytest.raises(
        ValueError,
        match=r"channel mask has shape \(7,\); layer 'conv2' has 200 "
        r"channels and the model 10 outputs, so pass \(200,\)",
    ):
        metrics.subset_accuracy(probe, variables, [(x, y)], np.ones(7))
    with pytest.raises(ValueError, match=r"channel mask has shape \(3, 200\).*\(10, 200\)"):
        metrics.subset_accuracy(probe, variables, [(x, y)], np.ones((3, 200)))
    with pytest.raises(ValueError, match=r"batch 0: label 10 is outside \[0, 10\)"):
        metrics.subset_accuracy(probe, variables, [(x, y + 10)], np.ones(200))
    with pytest.raises(ValueError, match="batches is empty"):
        metrics.subset_accuracy(probe, variables, [], np.ones(200))
    with pytest.raises(ValueError, match="no valid samples"):
        metrics.subset_accuracy(probe, variables, [(x, y, np.zeros(4, bool))], np.ones(200))
    with pytest.raises(ValueError, match="layer 'conv1' is not tapped by this probe"):
        metrics.subset_accuracy(probe, variables, [(x, y)], np.ones(200), layer="conv1")
    with pytest.raises(ValueError, match="row 'truth' is not one of"):
        metrics.subset_accuracy(probe, variables, [(x, y)], np.ones((10, 200)), row="truth")
    with pytest.raises(ValueError, match=r"ratios must lie in \(0, 1\]; got \[1.5\]"):
        metrics.subset_accuracy_curve(
            probe, variables, [(x, y)], np.ones(200), (1.5,), select_fn=top_k
        )


# --------------------------------------------------------------------------- sanity check


ORDER = ["head", "fc1", "conv2", "conv1"]


@pytest.fixture(scope="module")
def cascade(mnist):
    """Every step of the cascading randomisation of the MNIST CNN, top layer first."""
    return list(metrics.cascading_randomization(mnist[1], jax.random.key(5), ORDER))


def test_cascading_randomization_top_down(mnist, cascade):
    variables = mnist[1]
    order, steps = ORDER, cascade
    assert [name for name, _ in steps] == order
    p0 = variables["params"]
    for i, (_, tree) in enumerate(steps):
        assert set(tree) == set(variables)
        p = tree["params"]
        for j, name in enumerate(order):
            kernel, kernel0 = np.asarray(p[name]["kernel"]), np.asarray(p0[name]["kernel"])
            if j <= i:  # randomised: new values, same std, zero mean
                assert kernel.shape == kernel0.shape
                assert not np.allclose(kernel, kernel0)
                assert kernel.std() == pytest.approx(kernel0.std(), rel=0.1)
                assert abs(kernel.mean()) < 0.1 * kernel0.std()
                assert np.corrcoef(kernel.ravel(), kernel0.ravel())[0, 1] < 0.1
            else:
                np.testing.assert_array_equal(kernel, kernel0)
            np.testing.assert_array_equal(p[name]["bias"].shape, p0[name]["bias"].shape)
    # Explicit key: the same key gives the same trees; a bare params tree works too.
    again = list(metrics.cascading_randomization(p0, jax.random.key(5), order[:1]))
    np.testing.assert_array_equal(
        again[0][1]["head"]["kernel"], steps[0][1]["params"]["head"]["kernel"]
    )
    other = next(metrics.cascading_randomization(p0, jax.random.key(6), order[:1]))[1]
    assert not np.allclose(other["head"]["kernel"], again[0][1]["head"]["kernel"])
    with pytest.raises(
        ValueError,
        match=r"layer\(s\) \['dense9'\] not found among the "
        r"top-level parameter names \['conv1', 'conv2', "
        r"'fc1', 'head'\]",
    ):
        metrics.cascading_randomization(variables, jax.random.key(0), ["head", "dense9"])
    with pytest.raises(ValueError, match=r"order names \['head'\] more than once"):
        metrics.cascading_randomization(variables, jax.random.key(0), ["head", "head"])


def test_randomised_model_cams_decorrelate(mnist, cascade):
    """Adebayo et al.: CAMs of a re-initialised model should not track the original's."""
    model, variables, x = mnist
    probe = linen_probe(model, "conv2")
    target = np.array([0, 1, 2, 3])
    randomised = cascade[-1][1]
    reseeded = jax.jit(model.init)(jax.random.key(99), x)
    base = explain(probe, variables, x, target)[1].cam
    same = metrics.rank_correlation(base, explain(probe, variables, x, target)[1].cam)
    np.testing.assert_allclose(same, 1.0, rtol=1e-12)
    for other in (randomised, reseeded):
        rho = np.array(metrics.rank_correlation(base, explain(probe, other, x, target)[1].cam))
        assert np.mean(np.abs(rho)) < 0.35, rho

    # SSIM of min-max scaled, upsampled CAMs: 1 with itself, far lower for the random model.
    def scaled(cam):
        up = np.asarray(cams.upsample(cam, (28, 28)))
        lo, hi = up.min((1, 2), keepdims=True), up.max((1, 2), keepdims=True)
        return (up - lo) / (hi - lo)

    a = scaled(base)
    np.testing.assert_allclose(metrics.ssim(a, a, win_size=7), 1.0, rtol=1e-12)
    s = metrics.ssim(a, scaled(explain(probe, reseeded, x, target)[1].cam), win_size=7)
    assert np.all(s < 0.5), s


def test_rank_correlation_matches_reference():
    rng = np.random.default_rng(7)
    a = np.round(rng.uniform(size=(3, 4, 5)), 1)
    b = np.round(a + rng.normal(scale=0.3, size=a.shape), 1)
    b[2] = 0.25  # constant map: undefined
    out = metrics.rank_correlation(a, b)
    for n in range(2):
        np.testing.assert_allclose(out[n], ref.spearman(a[n].ravel(), b[n].ravel()), rtol=1e-12)
    assert out[2] is None
    assert metrics.rank_correlation(a[:, :, :, None], -a[:, :, :, None]) == [-1.0] * 3
    with pytest.raises(ValueError, match=r"cam_a has shape \(3, 4, 5\) but cam_b \(3, 20\)"):
        metrics.rank_correlation(a, a.reshape(3, 20))
    with pytest.raises(ValueError, match=r"cam_a must be a non-empty batch of maps"):
        metrics.rank_correlation(np.ones(4), np.ones(4))


@pytest.mark.parametrize("window,win_size", [("gaussian", 7), ("uniform", 3)])
def test_ssim_matches_reference_and_known_cases(window, win_size):
    rng = np.random.default_rng(8)
    a = rng.uniform(size=(2, 9, 8))
    b = np.clip(a + rng.normal(scale=0.2, size=a.shape), 0, 1)
    out = metrics.ssim(a, b, window=window, win_size=win_size, sigma=1.5, data_range=1.0)
    want = [ref.ssim(a[n], b[n], window, win_size, 1.5, 1.0) for n in range(2)]
    np.testing.assert_allclose(out, want, rtol=1e-10)
    assert 0 < out.min() < out.max() < 1
    one = metrics.ssim(a[0], a[0], window=window, win_size=win_size)
    assert isinstance(one, float) and one == pytest.approx(1.0, abs=1e-12)
    # Constant maps c1, c2: SSIM = (2 c1 c2 + C1) / (c1^2 + c2^2 + C1) (variances vanish).
    c1, c2, C1 = 0.2, 0.7, (0.01 * 2.0) ** 2
    got = metrics.ssim(
        np.full((8, 8), c1), np.full((8, 8), c2), data_range=2.0, window=window, win_size=win_size
    )
    assert got == pytest.approx((2 * c1 * c2 + C1) / (c1**2 + c2**2 + C1), rel=1e-10)


def test_ssim_bad_inputs():
    with pytest.raises(
        ValueError,
        match=r"win_size 11 does not fit maps of 6x6; pass "
        r"win_size <= 6",
    ):
        metrics.ssim(np.ones((6, 6)), np.ones((6, 6)))
    with pytest.raises(ValueError, match=r"a has shape \(6, 6\) but b \(6, 5\)"):
        metrics.ssim(np.ones((6, 6)), np.ones((6, 5)))
    with pytest.raises(
        ValueError,
        match=r"2-D maps \(H, W\) or a batch \(B, H, W\); got "
        r"\(2, 3, 4, 5\)",
    ):
        metrics.ssim(np.ones((2, 3, 4, 5)), np.ones((2, 3, 4, 5)))


def test_metrics_ask_for_class_indices_not_predicted(convnet):
    """The metrics score given classes; 'predicted' gets a message that does not offer
    it back."""
    model, variables, x = convnet
    score_fn = metrics.model_scorer(linen_probe(model, "conv2"), variables)
    saliency = np.full(x.shape[:-1], 0.5, np.float32)
    with pytest.raises(ValueError, match=r"integer class indices.*jnp.argmax") as info:
        metrics.confidence_scores(score_fn, x, saliency, "predicted")
    assert "'predicted'," not in str(info.value)

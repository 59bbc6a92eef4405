"""The runner's evaluations and report sections on small hand-made cases (no training)."""

from __future__ import annotations

import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from ifa_jax import metrics, runner, scale
from ifa_jax.probes import linen_probe
from ifa_jax.runner import data, evaluations, models, report, stages
from tests.conftest import random_variables


def _analysis_numbers(missing_train, missing_validation):
    return {
        "analysis": {
            "gradcam": {
                "train": {"missing_classes": missing_train},
                "validation": {"missing_classes": missing_validation},
            }
        }
    }


def test_report_names_the_classes_without_counted_samples():
    assert report.missing_classes_note(_analysis_numbers([], []), "gradcam") == []
    note = "\n".join(report.missing_classes_note(_analysis_numbers([3, 7], [3]), "gradcam"))
    assert "train split: classes 3, 7; validation split: class 3" in note
    assert "no importance row" in note and "first channels" in note


# --------------------------------------------------------------------------- sanity check


class AgainstTheAlphabet(nn.Module):
    """Layers whose names sort against their call order (z_first runs first), plus a
    parameter of the root module itself, which no submodule call reaches."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), name="z_first")(x))
        x = nn.relu(nn.Conv(4, (3, 3), name="m_middle")(x))
        x = x * self.param("gain", nn.initializers.ones, (4,))
        return nn.Dense(3, name="a_last")(x.mean((1, 2)))


def _sorted_by_name(variables):
    """As a loaded checkpoint comes back: the parameter dict sorted by name."""
    return {"params": dict(sorted(variables["params"].items()))}


def test_top_down_order_follows_the_calls_not_the_names():
    model, x = AgainstTheAlphabet(), jnp.zeros((2, 6, 6, 1))
    variables = _sorted_by_name(random_variables(model, x))
    assert list(variables["params"]) == ["a_last", "gain", "m_middle", "z_first"]
    order = metrics.top_down_order(model, variables, jax.ShapeDtypeStruct(x.shape, x.dtype))
    assert order.order == ["a_last", "m_middle", "z_first", "gain"]
    assert order.uncalled == ["gain"]
    with pytest.raises(ValueError, match="no 'params' collection"):
        metrics.top_down_order(model, {"batch_stats": {}}, x)


def test_sanity_randomises_from_the_output_down_and_the_report_lists_the_order():
    model = AgainstTheAlphabet()
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(6, 6, 6, 1)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    ds = data.Dataset(x, y, 3, "six")
    config = runner.Config(
        name="order", dataset="sklearn_digits", model="convnet", layer="m_middle",
        methods=("gradcam",), sanity_samples=3,
    )  # fmt: skip
    ctx = stages.RunContext(config, None, data.Splits(ds, ds), model, print)  # type: ignore[arg-type]
    ctx.variables = _sorted_by_name(random_variables(model, jnp.asarray(x)))
    ctx.probe = linen_probe(model, "m_middle")
    ctx.analyses = {"gradcam": {"validation": (None, {"label": y})}}  # type: ignore[dict-item]
    numbers, _ = evaluations.sanity(ctx)
    steps = [r["randomised_down_to"] for r in numbers["steps"]]
    assert steps == ["a_last", "m_middle", "z_first", "gain"]  # not z_first, m_middle, ...
    assert numbers["order"] == steps
    assert numbers["uncalled"] == ["gain"] and numbers["samples"] == 3
    # Each row's r is the mean Spearman r of the per-image min-max maps: check the first.
    idx = ctx.sample_indices(3)
    ref = np.asarray(scale.minmax_per_image(ctx.explain(x[idx], y[idx])[1].cam))
    first = next(
        iter(metrics.cascading_randomization(ctx.variables, jax.random.key(1), ["a_last"]))
    )
    out = np.asarray(scale.minmax_per_image(ctx.explain(x[idx], y[idx], variables=first[1])[1].cam))
    want = np.mean([stats.spearmanr(a.ravel(), b.ravel())[0] for a, b in zip(ref, out)])
    assert numbers["steps"][0]["rank_correlation"] == pytest.approx(want, abs=1e-6)
    text = "\n".join(evaluations.report_sanity(ctx, numbers))
    assert "(a_last → m_middle → z_first → gain)" in text
    assert "| a_last |" in text.split("| z_first |")[0]  # the table in that order
    assert "gain: never called as a submodule" in text


# --------------------------------------------------------------------------- feature subsets


class TwoChannels(nn.Module):
    """A 1x1 conv then global average pool and a dense head: with identity weights the
    logit of class c is the mean of channel c."""

    @nn.compact
    def __call__(self, x):
        a = nn.Conv(2, (1, 1), use_bias=False, name="conv")(x)
        return nn.Dense(2, use_bias=False, name="head")(a.mean((1, 2)))


def test_subsets_report_the_predicted_and_the_label_mask_rows():
    # Channel c is class c's only important channel, so keeping 1 of 2 channels keeps the
    # row's class alone. Images 0-1 (label 0) are misclassified as 1: the predicted row
    # keeps channel 1 (still wrong), the label row channel 0 (now right). Images 2-3 are
    # right either way. Full model: 2 of 4; predicted row: 2 of 4; label row: 4 of 4.
    x = np.zeros((4, 2, 2, 2), np.float32)
    x[..., 0] = np.array([0.25, 0.25, 0.25, 0.5])[:, None, None]
    x[..., 1] = np.array([0.5, 0.5, 0.5, 0.25])[:, None, None]
    y = np.array([0, 0, 1, 0])
    ds = data.Dataset(x, y, 2, "four")
    eye = jnp.eye(2)
    variables = {"params": {"conv": {"kernel": eye[None, None]}, "head": {"kernel": eye}}}
    config = runner.Config(
        name="rows", dataset="sklearn_digits", model="convnet", layer="conv",
        methods=("gradcam",), subset_ratios=(0.5, 1.0), subset_modes=("top",), batch_size=4,
    )  # fmt: skip
    ctx = stages.RunContext(config, None, data.Splits(ds, ds), TwoChannels(), print)  # type: ignore[arg-type]
    ctx.variables, ctx.probe = variables, linen_probe(TwoChannels(), "conv")
    summary = types.SimpleNamespace(im_class=np.eye(2), im_diff=np.eye(2) - 0.5)
    ctx.analyses = {"gradcam": {"train": (summary, {})}}  # type: ignore[dict-item]
    numbers, _ = evaluations.subsets(ctx)
    top = numbers["top"]
    assert top["full_accuracy"] == 0.5
    assert top["accuracy"] == [0.5, 0.5]  # the predicted class's row
    assert top["accuracy_label_row"] == [1.0, 0.5]  # the label's row: an oracle
    text = "\n".join(evaluations.report_subsets(ctx, numbers))
    assert "| top, predicted | 0.500 | 0.500 |" in text
    assert "| top, label | 1.000 | 0.500 |" in text
    assert "*label*: the row of the sample's true class, an oracle" in text
    assert set(evaluations.SUBSET_MODE_TEXT) == set(runner.SUBSET_MODES)


def test_figure_numbers_never_read_minus_zero():
    values = (-0.04, -0.0, -0.0004, 12.93, -1234.4)
    assert [report.number(v) for v in values] == ["-0.04", "0", "-0.0004", "12.9", "-1234"]


# --------------------------------------------------------------------------- explanations


def _ctx(**config):
    fields = {"name": "words", "dataset": "sklearn_digits", "model": "convnet", **config}
    return types.SimpleNamespace(config=runner.Config(**fields), method="gradcam")


def test_methods_with_identical_levels_are_found_and_reported_as_one_result():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 1, 4, 20)) * 50  # (classes, methods, scalings, images)
    levels = np.concatenate([a, a * (1 + 1e-9), a + rng.normal(size=a.shape) * 1e-2], axis=1)
    assert evaluations.coinciding_methods(levels, ("gradcam", "hirescam", "xgradcam")) == [
        ["gradcam", "hirescam"]
    ]
    assert evaluations.coinciding_methods(levels[:, [0, 2]], ("gradcam", "xgradcam")) == []
    row = {k: {"mean_pearson": 1.0, "min_pearson": 1.0} for k in evaluations.LEVELS}
    numbers = {
        "per_class": {
            m: {c: {"common": {"pearson": 1.0}, "auroc": {"auroc": 0.9}} for c in "01"}
            for m in ("gradcam", "hirescam")
        },
        "summary": {m: {**row, "auroc": {"mean": 0.9}} for m in ("gradcam", "hirescam")},
        "coincide": [["gradcam", "hirescam"]],
    }
    text = "\n".join(evaluations.report_consistency(_ctx(), numbers))
    assert "**gradcam and hirescam coincide**" in text and "global average pool" in text
    assert "averaged over the 2 class(es)" in text and "*AUROC*: how well" in text


def test_scale_coverage_says_what_share_to_expect_and_why():
    cov = {"gradcam": {"vmin": -0.1, "vmax": 2.0, "above_vmax": 0.11, "below_vmin": 0.49}}
    text = "\n".join(evaluations.report_scale_coverage(_ctx(), cov))
    assert "expect about 10% above vmax and about 50% below vmin" in text
    assert "about half of the maps reach below vmin is by construction" in text
    text = "\n".join(evaluations.report_scale_coverage(_ctx(scale_ratio=1.5), cov))
    assert "vmax is 1.5 x the 90th percentile" in text and "expect" not in text


def test_faithfulness_names_each_number_and_its_direction():
    f = {
        "samples": 4,
        "confidence_common": {"average_drop": 23.0, "average_increase": 5.0},
        "confidence_per_image": {"average_drop": 12.0, "average_increase": 9.0},
        "insertion_deletion": {"insertion_auc": 0.7, "deletion_auc": 0.5},
    }
    text = "\n".join(evaluations.report_faithfulness(_ctx(), f))
    assert "| common | 23.0 | 5.0 |" in text and "| per-image | 12.0 | 9.0 |" in text
    assert "average drop (%) ↓" in text and "increase (%) ↑" in text
    assert "Insertion AUC 0.700 (higher is better" in text
    assert "deletion AUC 0.500 (lower is better" in text


def test_gradcam_and_hirescam_coincide_after_the_last_relu_of_a_gap_dense_model():
    """ConvNet's relu2 feeds a global average pool and a dense head, so G is constant over
    the grid there and GradCAM's map is HiResCAM's and XGradCAM's (its weights sum(G * A)
    / sum(A) are then G too): the evaluation says they coincide and keeps GradCAM++, whose
    weights are not, apart."""
    model = models.ConvNet(ndim=2, features=(4, 6), num_classes=3)
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(9, 6, 6, 1)).astype(np.float32)
    y = np.arange(9) % 3
    ds = data.Dataset(x, y, 3, "nine")
    methods = ("gradcam", "hirescam", "xgradcam", "gradcam++")
    config = runner.Config(
        name="gap", dataset="sklearn_digits", model="convnet", layer="relu2",
        methods=methods, batch_size=9,
    )  # fmt: skip
    ctx = stages.RunContext(config, None, data.Splits(ds, ds), model, print)  # type: ignore[arg-type]
    ctx.variables = random_variables(model, jnp.asarray(x))
    ctx.probe = linen_probe(model, "relu2")
    summary = types.SimpleNamespace(im_class=rng.normal(size=(3, 6)))
    ctx.analyses = {"gradcam": {"train": (summary, {})}}  # type: ignore[dict-item]
    ctx.scales = {m: scale.scale_from_bounds(-0.5, 0.5) for m in methods}
    numbers, arrays = evaluations.consistency(ctx)
    np.testing.assert_allclose(arrays["gradcam common"], arrays["hirescam common"], rtol=1e-5)
    assert numbers["coincide"] == [["gradcam", "hirescam", "xgradcam"]]
    assert "**gradcam, hirescam and xgradcam coincide**" in "\n".join(
        evaluations.report_consistency(ctx, numbers)
    )

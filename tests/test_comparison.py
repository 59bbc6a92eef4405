"""The method comparison: its table's numbers against NumPy, ranks with mixed directions,
metrics that need masks, the report section and the figure, and one run through the
runner's data path on a tiny model."""

from __future__ import annotations

import types
from typing import NamedTuple

import jax
import numpy as np
import pytest

from ifa_jax import metrics
from ifa_jax.probes import linen_probe
from ifa_jax.runner import comparison, data, models, stages
from ifa_jax.runner.config import Config
from tests.figure_checks import figure_problems

N, H, W = 6, 8, 8


def brightness(x, target):
    """A positive score linear in the input: 0.1 + the mean pixel (the target is ignored)."""
    return 0.1 + x.mean(axis=(1, 2, 3))


def counting(maps_of):
    """An explainer returning ``maps_of(x)`` that counts its calls."""

    def explain(x, target):
        explain.calls += 1
        return maps_of(x)

    explain.calls = 0
    return explain


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.uniform(size=(N, H, W, 1)).astype(np.float32), np.arange(N) % 3


def _left_half(x, target=None):
    maps = np.zeros(x.shape[:-1], np.float32)
    maps[:, :, : W // 2] = 1
    return maps


def _masses(inputs):
    """Share of the map's mass on the mask (a localisation metric needing masks)."""
    maps = np.asarray(inputs.maps, np.float64)
    return (maps * inputs.masks).sum(axis=(1, 2)) / maps.sum(axis=(1, 2))


MASS = comparison.Metric("mass", "higher", True, _masses, "mass on the mask", "test metric")
METRICS = comparison.METRICS  # the table as shipped (a test below replaces it)


def test_table_matches_a_numpy_reference(images):
    x, y = images
    explainers = {
        "left": counting(_left_half),
        "bright": counting(lambda x: x[..., 0]),
    }
    # The four metrics checked here (the others explain other inputs: more calls).
    table = comparison.chosen_metrics(("average_drop", "increase", "insertion_auc", "deletion_auc"))
    numbers = comparison.score_methods(explainers, brightness, x, y, metric_table=table)
    assert numbers["samples"] == N and numbers["skipped"] == {}
    for name, explain in explainers.items():
        assert explain.calls == 2  # one call compiles, the timed one is the second
        maps = _left_half(x) if name == "left" else x[..., 0]
        score = 0.1 + x.mean(axis=(1, 2, 3), dtype=np.float64)
        masked = 0.1 + (x[..., 0] * maps).mean(axis=(1, 2), dtype=np.float64)
        want = {
            "average_drop": np.maximum(0, score - masked) / score * 100,
            "increase": (masked > score) * 100.0,
        }
        row = numbers["methods"][name]
        assert row["seconds_per_image"] > 0
        for metric, values in want.items():
            got = row["values"][metric]
            assert got["n"] == N
            assert got["mean"] == pytest.approx(values.mean(), rel=1e-5, abs=1e-5)
            assert got["std"] == pytest.approx(values.std(ddof=1), rel=1e-4, abs=1e-5)
            assert got["sem"] == pytest.approx(values.std(ddof=1) / np.sqrt(N), rel=1e-4, abs=1e-5)
        # Insertion and deletion are the library's curves, windows of 1 cell (8 // 7).
        curves = metrics.insertion_deletion(brightness, x, maps, y, window=1)
        for metric in ("insertion_auc", "deletion_auc"):
            assert row["values"][metric]["mean"] == pytest.approx(
                float(np.mean(getattr(curves, metric))), rel=1e-5
            )
    # The map that keeps the bright pixels drops the brightness less than the half map.
    means = {m: r["values"]["average_drop"]["mean"] for m, r in numbers["methods"].items()}
    assert means["bright"] < means["left"]


def test_a_metric_needing_masks_is_skipped_without_masks_and_scored_with_them(images):
    x, y = images
    explainers = {"left": _left_half}
    table = (*comparison.METRICS[:1], MASS)
    without = comparison.score_methods(explainers, brightness, x, y, metric_table=table)
    assert without["skipped"] == {"mass": "the dataset has no ground-truth masks"}
    assert set(without["methods"]["left"]["values"]) == {"average_drop"}
    masks = np.zeros((N, H, W), bool)
    masks[:, :4, :] = True  # the top half: a quarter of the canvas is on both
    masks[0] = True
    got = comparison.score_methods(explainers, brightness, x, y, masks=masks, metric_table=table)
    assert got["skipped"] == {}
    want = np.array([1.0] + [0.5] * (N - 1))  # mass of the left half on the mask
    assert got["methods"]["left"]["values"]["mass"]["mean"] == pytest.approx(want.mean())


class Defined(NamedTuple):
    """Shaped like ifa_jax.metrics.Scores: values with a flag for the defined ones."""

    value: np.ndarray
    defined: np.ndarray
    reason: str


def test_undefined_values_are_left_out_of_the_mean_and_count(images):
    x, y = images

    def compute(inputs):
        assert inputs.num_classes == 3
        return Defined(np.arange(N, dtype=np.float64), np.arange(N) % 2 == 0, "odd")

    table = (comparison.Metric("even", "higher", False, compute, "even", "even"),)
    numbers = comparison.score_methods(
        {"m": _left_half}, brightness, x, y, num_classes=3, metric_table=table
    )
    got = numbers["methods"]["m"]["values"]["even"]
    assert got["n"] == 3 and got["mean"] == pytest.approx(2.0)  # mean of 0, 2, 4
    nan = (comparison.Metric("nan", "lower", False, lambda i: np.full(N, np.nan), "n", "n"),)
    undefined = comparison.score_methods({"m": _left_half}, brightness, x, y, metric_table=nan)
    assert undefined["methods"]["m"]["values"]["nan"] == {
        "mean": None,
        "std": None,
        "sem": None,
        "n": 0,
    }


def test_each_metric_draws_its_own_key_the_same_for_every_method(images):
    x, y = images
    seen = {}

    def record(name):
        def compute(inputs):
            seen.setdefault(name, []).append(np.asarray(jax.random.key_data(inputs.key)))
            return np.zeros(len(inputs.x))

        return comparison.Metric(name, "lower", False, compute, name, name)

    table = (record("a"), record("b"))
    comparison.score_methods(
        {"m1": _left_half, "m2": _left_half}, brightness, x, y, metric_table=table
    )
    np.testing.assert_array_equal(seen["a"][0], seen["a"][1])
    assert not np.array_equal(seen["a"][0], seen["b"][0])


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda x, y: comparison.score_methods(
                {"m": _left_half}, brightness, x, y, metric_table=(MASS, MASS)
            ),
            "metric name.s. mass appear more than once",
        ),
        (
            lambda x, y: comparison.score_methods({}, brightness, x, y),
            "no methods to compare",
        ),
        (
            lambda x, y: comparison.score_methods(
                {"m": _left_half}, brightness, x, y, masks=np.ones((N, H, W, 1), bool)
            ),
            r"masks have shape \(6, 8, 8, 1\) but the inputs \(6, 8, 8, 1\) need \(6, 8, 8\)",
        ),
        (
            lambda x, y: comparison.score_methods(
                {"m": lambda x, t: np.ones((N, 2, 2))}, brightness, x, y
            ),
            r"method 'm' gave maps of shape \(6, 2, 2\); the metrics need \(6, 8, 8\)",
        ),
        (
            lambda x, y: comparison.score_methods(
                {"m": _left_half},
                brightness,
                x,
                y,
                metric_table=(comparison.Metric("s", "lower", False, lambda i: 0.0, "s", "s"),),
            ),
            r"metric 's' returned shape \(\); it must return one value per sample, \(6,\)",
        ),
        (
            lambda x, y: comparison.Metric("s", "up", False, _masses, "s", "s"),
            "metric 's': direction must be one of .'higher', 'lower'.; got 'up'",
        ),
    ],
)
def test_bad_comparisons_raise(images, call, message):
    with pytest.raises(ValueError, match=message):
        call(*images)


def test_ranks_follow_each_columns_direction_with_ties_and_gaps():
    values = np.array(
        [
            [1.0, 0.2, 5.0],
            [3.0, 0.9, np.nan],
            [1.0 + 1e-9, 0.5, 7.0],  # ties with row 0 in column 0 (float round-off)
        ]
    )
    ranks = comparison.column_ranks(values, ("lower", "higher", "higher"))
    np.testing.assert_array_equal(ranks[:, :2], [[1, 3], [3, 1], [1, 2]])
    assert np.isnan(ranks[1, 2]) and ranks[0, 2] == 2 and ranks[2, 2] == 1
    # A direction turned around turns the ranks around (no ties there).
    flipped = comparison.column_ranks(values[:, 1:2], ("lower",))
    np.testing.assert_array_equal(flipped[:, 0], [1, 3, 2])
    with pytest.raises(ValueError, match="one direction per metric"):
        comparison.column_ranks(values, ("lower",))


def _numbers():
    """A comparison's numbers: 'a' is best at drop (lower), 'b' at insertion (higher),
    'b' is cheaper; the mask metric was skipped."""

    def summary(mean):
        return {"mean": mean, "std": 0.5, "sem": 0.25, "n": 4}

    meta = {
        "average_drop": {"direction": "lower", "needs_masks": False},
        "insertion_auc": {"direction": "higher", "needs_masks": False},
        "mass": {"direction": "higher", "needs_masks": True},
    }
    labels = {"average_drop": "average drop (%)", "insertion_auc": "insertion AUC", "mass": "mass"}
    return {
        "samples": 4,
        "backend": "cpu",
        "metrics": {
            k: {**v, "label": labels[k], "description": f"about {k}"} for k, v in meta.items()
        },
        "skipped": {"mass": "the dataset has no ground-truth masks"},
        "methods": {
            "a": {
                "seconds_per_image": 0.002,
                "values": {"average_drop": summary(12.5), "insertion_auc": summary(0.4)},
            },
            "b": {
                "seconds_per_image": 0.001,
                "values": {"average_drop": summary(30.0), "insertion_auc": summary(0.7)},
            },
        },
    }


def test_report_marks_the_best_per_column_in_its_direction():
    lines = comparison.report_comparison(None, _numbers())  # type: ignore[arg-type]
    text = "\n".join(lines)
    header = "| method | average drop (%) ↓ | insertion AUC ↑ | cost (ms / image) ↓ |"
    assert header in lines
    assert "| a | **12.5 ± 0.2** | 0.400 ± 0.250 | 2.00 |" in lines
    assert "| b | 30.0 ± 0.2 | **0.700 ± 0.250** | **1.00** |" in lines
    assert "*average drop (%)* (lower is better): about average_drop" in text
    assert "Not computed: mass (the dataset has no ground-truth masks)" in text
    assert "How to read it" in text and "cpu backend" in text
    assert comparison.report_comparison(None, {}) == []  # type: ignore[arg-type]


def test_figure_ranks_columns_marks_the_best_and_reads_cleanly():
    ctx = types.SimpleNamespace(evaluations={"comparison": (_numbers(), {})})
    fig = comparison.draw_comparison(ctx)  # type: ignore[arg-type]
    assert fig is not None and figure_problems(fig) == []
    ax = fig.axes[0]
    cells = {t.get_text(): t.get_fontweight() for t in ax.texts}
    assert cells == {
        "12.5": "bold",
        "0.4": "normal",
        "2": "normal",
        "30": "normal",
        "0.7": "bold",
        "1": "bold",
    }
    # Colours are ranks: 1 for the best of each column whatever its direction.
    np.testing.assert_array_equal(ax.images[0].get_array().filled(np.nan), [[1, 2, 2], [2, 1, 1]])
    assert comparison.draw_comparison(types.SimpleNamespace(evaluations={})) is None  # type: ignore[arg-type]


def test_the_runner_evaluation_reads_the_masks_of_the_validation_split(monkeypatch):
    """compare_methods on a tiny untrained model: the split's masks reach the metrics."""
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(12, H, W, 1)).astype(np.float32)
    y = np.arange(12, dtype=np.int32) % 3
    masks = np.zeros((12, H, W), bool)
    masks[np.arange(12), np.arange(12) % H] = True  # one row per image
    validation = data.Dataset(x, y, 3, "toy", masks)
    config = Config(
        name="toy",
        dataset="sklearn_digits",
        model="convnet",
        layer="relu2",
        methods=("gradcam",),
        faithfulness_samples=6,
    )
    model = models.ConvNet(ndim=2, features=(4, 8), num_classes=3)
    ctx = stages.RunContext(config, None, data.Splits(validation, validation), model, print)  # type: ignore[arg-type]
    ctx.variables = model.init(jax.random.key(0), x[:1])
    ctx.probe = linen_probe(model, "relu2")
    ctx.analyses = {m: {"validation": (None, {"label": y})} for m in config.methods}  # type: ignore[dict-item]
    monkeypatch.setattr(comparison, "METRICS", (MASS,))
    numbers, arrays = comparison.compare_methods(ctx)
    assert arrays == {} and numbers["skipped"] == {} and numbers["samples"] == 6
    picked = ctx.sample_indices(6)
    for m in config.methods:
        maps = np.asarray(comparison.method_maps(ctx, m)(x[picked], y[picked]), np.float64)
        want = (maps * masks[picked]).sum(axis=(1, 2)) / maps.sum(axis=(1, 2))
        got = numbers["methods"][m]["values"]["mass"]["mean"]
        assert got == pytest.approx(float(np.nanmean(want)), rel=1e-5)
    # Every metric of the table through the run's own explainers (ARCC and the
    # sensitivities explain other inputs, random-logit other classes): finite where the
    # metric needs no masks, or defined on the masks given.
    monkeypatch.setattr(comparison, "METRICS", METRICS)
    everything, _ = comparison.compare_methods(ctx)
    assert everything["skipped"] == {}
    for m in config.methods:
        values = everything["methods"][m]["values"]
        assert set(values) == {metric.name for metric in METRICS}
        assert all(v["mean"] is not None and np.isfinite(v["mean"]) for v in values.values())
    # comparison_samples overrides faithfulness_samples; 0 skips the comparison.
    ctx.config = Config(**{**config.__dict__, "comparison_samples": 0})
    assert comparison.compare_methods(ctx) == ({}, {})


def test_every_metric_of_the_table_scores_a_map_on_the_object_best(images):
    """The full table on maps that are the mask and its complement: every metric gives a
    finite mean, the localisation metrics rank the map on the object first whatever their
    direction, and maps that depend neither on the input nor on the class have
    sensitivity 0 and random-logit SSIM 1."""
    x, y = images
    masks = np.zeros((N, H, W), bool)
    masks[:, :, : W // 2] = True

    def right_half(x, target=None):
        return 1 - _left_half(x)

    numbers = comparison.score_methods(
        {"on": _left_half, "off": right_half}, brightness, x, y, masks=masks, num_classes=3
    )
    assert numbers["skipped"] == {}
    names = [m.name for m in comparison.METRICS]
    assert set(numbers["metrics"]) == set(names)
    means = {
        (method, name): row["values"][name]["mean"]
        for method, row in numbers["methods"].items()
        for name in names
    }
    assert all(v is not None and np.isfinite(v) for v in means.values()), means
    localisation = [m for m in comparison.METRICS if m.needs_masks]
    assert {m.name for m in localisation} == {
        "pointing_game",
        "relevance_mass",
        "relevance_rank",
    }
    values = np.array([[means[(r, m.name)] for m in localisation] for r in ("on", "off")])
    ranks = comparison.column_ranks(values, [m.direction for m in localisation])
    np.testing.assert_array_equal(ranks, [[1] * 3, [2] * 3])
    assert means[("on", "pointing_game")] == 1.0 and means[("off", "relevance_mass")] == 0.0
    for method in ("on", "off"):
        assert means[(method, "max_sensitivity")] == pytest.approx(0.0, abs=1e-6)
        assert means[(method, "random_logit")] == pytest.approx(1.0, abs=1e-6)


def test_a_config_names_its_comparison_metrics():
    chosen = comparison.chosen_metrics(("road", "average_drop"))
    assert [m.name for m in chosen] == ["road", "average_drop"]
    assert comparison.chosen_metrics(None) == comparison.METRICS
    with pytest.raises(ValueError, match="unknown comparison metric.*'roads'.*choose from"):
        comparison.chosen_metrics(("roads",))
    with pytest.raises(ValueError, match="comparison_metrics has unknown.*'nope'.*road"):
        Config(comparison_metrics=("nope",))
    with pytest.raises(ValueError, match="comparison_metrics has unknown or no metric"):
        Config(comparison_metrics=())
    with pytest.raises(ValueError, match="comparison_metrics names 'road' more than once"):
        Config(comparison_metrics=("road", "average_drop", "road"))

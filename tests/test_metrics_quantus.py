"""ifa_jax's metrics against Quantus 0.6.0 on identical inputs, without Quantus.

tests/data/quantus_metrics.npz holds what experiments/golden_quantus.py recorded (its
docstring lists the keys, the settings and how the robustness metrics got ifa_jax's
noise). Every value must agree to 1e-4.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ifa_jax import metrics

DATA = Path(__file__).parent / "data" / "quantus_metrics.npz"
GOLDEN = dict(np.load(DATA))
TOL = 1e-4


@jax.jit
def explain_fn(x, target):
    """experiments.golden_quantus.explain_np in JAX."""
    w = (target + 1.0)[:, None, None]
    return jnp.sin(3 * x).sum(-1) * w + (x**2).sum(-1) - (x[..., 0] * x[..., 1]) * (2 - w)


MASKED = {
    "PointingGame": metrics.pointing_game,
    "RelevanceMassAccuracy": metrics.relevance_mass_accuracy,
    "RelevanceRankAccuracy": metrics.relevance_rank_accuracy,
}
UNMASKED = {"Sparseness": metrics.sparseness, "Complexity": metrics.complexity}


def test_the_file_is_small_and_from_quantus_0_6_0():
    assert DATA.stat().st_size < 200_000
    assert str(GOLDEN["version"]) == "quantus 0.6.0"


@pytest.mark.parametrize("name", [*MASKED, *UNMASKED])
def test_map_metrics_equal_quantus(name):
    maps, masks = GOLDEN["maps"], GOLDEN["masks"]
    got = MASKED[name](maps, masks) if name in MASKED else UNMASKED[name](maps)
    np.testing.assert_allclose(got.tolist(), GOLDEN[f"quantus/{name}"], rtol=TOL, atol=TOL)


@pytest.fixture(scope="module")
def sensitivity():
    return metrics.sensitivity(
        explain_fn,
        GOLDEN["x"],
        GOLDEN["target"],
        key=jax.random.key(int(GOLDEN["key_seed"])),
        radius=float(GOLDEN["radius"]),
        n_samples=int(GOLDEN["n_samples"]),
    )


def test_max_and_average_sensitivity_equal_quantus(sensitivity):
    np.testing.assert_allclose(
        sensitivity.max.tolist(), GOLDEN["quantus/MaxSensitivity"], rtol=TOL, atol=TOL
    )
    np.testing.assert_allclose(
        sensitivity.average.tolist(), GOLDEN["quantus/AvgSensitivity"], rtol=TOL, atol=TOL
    )


def test_random_logit_equals_quantus_with_two_classes():
    got = metrics.random_logit(explain_fn, GOLDEN["x"], GOLDEN["target"], 2, key=jax.random.key(0))
    np.testing.assert_allclose(got.tolist(), GOLDEN["quantus/RandomLogit"], rtol=TOL, atol=TOL)

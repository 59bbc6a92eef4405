"""The faithfulness metrics against pytorch-grad-cam 1.5.7 and Quantus 0.6.0, on identical
weights, inputs and maps, without torch.

tests/data/peers_metrics.npz holds what experiments/golden_metrics.py recorded on the
torch twins of the two CNN cases of tests/data/peers.npz (whose Flax variables, digits and
labels are used here): pytorch-grad-cam's GradCAM maps, its ROAD values (per percentile,
averaged and combined; imputation noise 0, and on the 8x8 case with its noise, the draws
stored), its ARCC and ARCC's parts, and Quantus's faithfulness correlation and
pixel-flipping curves (its random subsets redrawn here from the stored seed).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from ifa_jax import metrics
from ifa_jax.probes import linen_probe
from ifa_jax.runner import models

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "peers_metrics.npz"
PEERS = DATA / "peers.npz"
ATOL = 1e-4  # metric values (score differences, correlations, harmonic means)
CASES = [("mnist_cnn", "logit"), ("mnist_cnn", "probability"), ("convnet", "logit")]


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as data:
        arrays = {k: data[k] for k in data.files}
    assert str(arrays["peers_sha256"]) == hashlib.sha256(PEERS.read_bytes()).hexdigest(), (
        "peers.npz changed since peers_metrics.npz was made: rerun experiments/golden_metrics.py"
    )
    return arrays


@pytest.fixture(scope="module")
def cases():
    """{case: (probe, variables, x, labels)} rebuilt from peers.npz."""
    with np.load(PEERS) as data:
        arrays = {k: data[k] for k in data.files}
    out = {}
    for name in ("mnist_cnn", "convnet"):
        prefix = f"{name}/variables/"
        flat = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
        variables = traverse_util.unflatten_dict(flat, sep="/")
        spec = json.loads(str(arrays[f"{name}/spec"]))
        model = getattr(models, spec["model"])(**spec["kwargs"])
        probe = linen_probe(model, spec["layer"])
        out[name] = (probe, variables, arrays[f"{name}/x"], arrays[f"{name}/labels"])
    return out


def _close(ours, theirs, what):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    err = np.abs(ours - theirs).max()
    assert err <= ATOL, f"{what}: max |ours - peer| = {err:.3g} > {ATOL}"


@pytest.mark.parametrize("name, score", CASES)
def test_road_equals_pytorch_grad_cam(golden, cases, name, score):
    probe, variables, x, labels = cases[name]
    prefix = f"{name}/{score}/"
    cam = golden[prefix + "cam"]
    r = metrics.road(
        metrics.model_scorer(probe, variables, score),
        x,
        cam,
        labels,
        percentiles=tuple(golden["percentiles"]),
        noise=0.0,
    )
    for field in ("morf", "lerf", "morf_average", "lerf_average", "combined"):
        _close(getattr(r, field), golden[prefix + "road/" + field], f"{prefix}road/{field}")


def test_road_with_the_peers_noise(golden, cases):
    """pytorch-grad-cam's noisy ROADCombined: our noiseless imputation plus its recorded
    draws, through our model."""
    probe, variables, x, labels = cases["convnet"]
    prefix = "convnet/logit/"
    cam, noise = golden[prefix + "cam"], golden[prefix + "road_noisy/noise"]
    score_fn = metrics.model_scorer(probe, variables, "logit")
    percentiles = tuple(golden["percentiles"])
    y = np.asarray(score_fn(jnp.asarray(x), jnp.asarray(labels)))
    averages = []
    for o, order in enumerate(("morf", "lerf")):
        masks = np.asarray(metrics.road_masks(cam, percentiles, order))
        changes = []
        for j in range(len(percentiles)):
            filled = metrics.noisy_linear_imputation(x, masks[:, j], noise=0.0)
            assert np.all(noise[o, j][~masks[:, j]] == 0)  # the peer's noise: removed cells only
            changes.append(np.asarray(score_fn(filled + noise[o, j], jnp.asarray(labels))) - y)
        averages.append(np.mean(changes, axis=0))
    _close((averages[1] - averages[0]) / 2, golden[prefix + "road_noisy/combined"], "noisy ROAD")


@pytest.mark.parametrize("name, score", CASES)
def test_arcc_equals_pytorch_grad_cam(golden, cases, name, score):
    probe, variables, x, labels = cases[name]
    prefix = f"{name}/{score}/arcc/"
    cam = golden[f"{name}/{score}/cam"]
    explain_fn = metrics.cam_explainer(probe, variables, "gradcam", score=score)
    again = explain_fn(jnp.asarray(x * cam[..., None]), jnp.asarray(labels))
    _close(again, golden[prefix + "masked_cam"], prefix + "masked_cam")
    r = metrics.arcc(
        metrics.model_scorer(probe, variables, score), explain_fn, x, cam, labels, noise=0.0
    )
    for field in ("complexity", "coherency", "road", "arcc"):
        _close(getattr(r, field), golden[prefix + field], prefix + field)


def _quantus_subsets(seed, batch, runs, cells, size):
    """Quantus's draws, run by run and image by image, from the legacy stream."""
    stream = np.random.RandomState(int(seed))
    out = np.zeros((batch, runs, size), np.int64)
    for r in range(runs):
        for i in range(batch):
            out[i, r] = stream.choice(cells, size, replace=False)
    return out


def test_faithfulness_equals_quantus(golden, cases):
    probe, variables, x, labels = cases["mnist_cnn"]
    sal = golden["mnist_cnn/quantus/saliency"]
    score_fn = metrics.model_scorer(probe, variables, "logit")
    subsets = _quantus_subsets(golden["mnist_cnn/quantus/seed"], len(labels), 100, 784, 224)
    fc = metrics.faithfulness_correlation(score_fn, x, sal, labels, subsets=subsets)
    _close(fc.correlation, golden["mnist_cnn/quantus/faithfulness_correlation"], "Quantus FC")
    # Quantus's PixelFlipping reads probabilities (its softmax=True default), unlike its
    # FaithfulnessCorrelation (softmax=False: logits)
    probability = metrics.model_scorer(probe, variables, "probability")
    pf = metrics.pixel_flipping(probability, x, sal, labels, cells_per_step=28, images_per_batch=8)
    curve = golden["mnist_cnn/quantus/pixel_flipping"]
    scale = np.abs(curve).max()
    err = np.abs(np.asarray(pf.curve) - curve).max() / scale
    assert err <= ATOL, f"pixel-flipping curves: max |ours - Quantus| / max |Quantus| = {err:.3g}"
    auc = np.trapezoid(np.asarray(pf.curve, np.float64), dx=1, axis=1)
    auc_ref = golden["mnist_cnn/quantus/pixel_flipping_auc"]
    assert np.abs(auc - auc_ref).max() / np.abs(auc_ref).max() <= ATOL

"""Golden data from Quantus 0.6.0: tests/data/quantus_metrics.npz, read by
tests/test_metrics_quantus.py (which needs neither Quantus nor torch).

Regenerate from the repository root with the project's Python and, on its path, the
packages of a second venv that holds Quantus (torch only for the model wrapper that its
robustness and randomisation metrics insist on; the model is never run):

    python3 -m venv <venv>
    <venv>/bin/pip install quantus==0.6.0 torch==2.13.0
    python -m experiments.golden_quantus --quantus-site <venv>/lib/python3.11/site-packages

It runs in about 20 s and prints each metric's values. Inputs (B = 6, a 12 x 10 grid):

- ``maps`` (B, 12, 10) float32 signed maps without ties; ``masks`` (B, 12, 10) bool blobs,
  the maps raised on some of them so that the pointing game hits and misses;
- ``x`` (B, 12, 10, 2) float32 inputs in [0, 1], ``target`` (B,) in {0, 1}, ``key_seed``,
  ``radius``, ``n_samples``: the sensitivity's noise is ifa_jax's
  (``jax.random.key(key_seed)``); its perturbed inputs, recorded from
  :func:`ifa_jax.metrics.sensitivity`, are what Quantus' perturbation function returns,
  step by step, so both see the same noise.

Quantus' values (keys ``quantus/<Metric>``, (B,) float64), at Quantus' defaults unless
said: ``PointingGame``, ``RelevanceMassAccuracy``, ``RelevanceRankAccuracy``,
``Sparseness``, ``Complexity`` (on ``maps`` and ``masks``, ``model=None``);
``MaxSensitivity``, ``AvgSensitivity`` (``nr_samples``, ``lower_bound`` = radius, the
explanation function :func:`explain_np`); ``RandomLogit`` with ``num_classes=2`` (the
other class is then the only one, so Quantus' NumPy draw does not matter), one sample per
batch (Quantus divides each batch of maps by its largest value; ifa_jax each map by its
own) and a similarity function that is scikit-image's 2-D SSIM of the maps on their
grid (uniform 7 x 7 window, population covariance, data range over the pair) instead of
Quantus' default SSIM of the flattened maps.

Not stored: ``PointingGame(weighted=True)``, which raises in Quantus 0.6.0 (it assigns a
(n, 1) array into a boolean index of its bool hit array, which would also turn the
weight back into True), and the energy-based pointing game, which Quantus lacks.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "quantus_metrics.npz"
B, H, W, C = 6, 12, 10, 2
KEY_SEED, RADIUS, N_SAMPLES = 7, 0.1, 5


def explain_np(x: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The explanation of the robustness and random-logit metrics, channels last:
    (N, H, W, C), (N,) -> (N, H, W). tests/test_metrics_quantus.py has its JAX twin."""
    w = (np.asarray(target, np.float64) + 1.0)[:, None, None]
    x = np.asarray(x, np.float64)
    return np.sin(3 * x).sum(-1) * w + (x**2).sum(-1) - (x[..., 0] * x[..., 1]) * (2 - w)


def inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(B, H, W)).astype(np.float32)
    masks = np.zeros((B, H, W), bool)
    for b in range(B):
        r, c = rng.integers(0, H - 4), rng.integers(0, W - 4)
        masks[b, r : r + rng.integers(2, 5), c : c + rng.integers(2, 5)] = True
    maps[:3] += 2.5 * masks[:3]  # three maps peak in their mask
    maps[4] = np.abs(maps[4])
    x = rng.random((B, H, W, C)).astype(np.float32)
    target = np.array([0, 1, 1, 0, 1, 0])
    return {"maps": maps, "masks": masks, "x": x, "target": target}


def perturbed_rows(x: np.ndarray, target: np.ndarray) -> np.ndarray:
    """ifa_jax's perturbed inputs (N_SAMPLES, B, H, W, C), recorded from the metric."""
    import jax

    from ifa_jax import metrics

    rows = []

    def recording(xp, t):
        rows.append(np.asarray(xp))
        return explain_np(np.asarray(xp), np.asarray(t))

    metrics.sensitivity(
        recording, x, target, key=jax.random.key(KEY_SEED), radius=RADIUS, n_samples=N_SAMPLES
    )
    return rows[1].reshape(N_SAMPLES, *x.shape)


def quantus_values(data: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    import quantus
    import skimage.metrics
    import torch

    maps, masks, x, target = data["maps"], data["masks"], data["x"], data["target"]
    x_cf = np.moveaxis(x, -1, 1).astype(np.float64)  # Quantus takes channels first
    a = maps[:, None].astype(np.float64)
    s = masks[:, None]
    out: dict[str, np.ndarray] = {}
    common = {"disable_warnings": True}
    for name, metric in {
        "PointingGame": quantus.PointingGame(**common),
        "RelevanceMassAccuracy": quantus.RelevanceMassAccuracy(**common),
        "RelevanceRankAccuracy": quantus.RelevanceRankAccuracy(**common),
        "Sparseness": quantus.Sparseness(**common),
        "Complexity": quantus.Complexity(**common),
    }.items():
        values = metric(model=None, x_batch=x_cf, y_batch=target, a_batch=a.copy(), s_batch=s)
        out[name] = np.asarray(values, np.float64)

    def explain_func(model, inputs, targets, **kwargs):
        return explain_np(np.moveaxis(np.asarray(inputs), 1, -1), targets)[:, None]

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(H * W * C, 2))

    def replay():
        """Quantus' perturbation function: ifa_jax's perturbed rows, step by step."""
        step = iter(range(N_SAMPLES))

        def perturb(arr, indices, **kwargs):
            return np.moveaxis(rows[next(step)], -1, 1).reshape(arr.shape).astype(np.float64)

        return perturb

    sensitivities = {"MaxSensitivity": quantus.MaxSensitivity,
                     "AvgSensitivity": quantus.AvgSensitivity}  # fmt: skip
    for name, cls in sensitivities.items():
        metric = cls(nr_samples=N_SAMPLES, lower_bound=RADIUS, perturb_func=replay(), **common)
        values = metric(
            model=model, x_batch=x_cf, y_batch=target, explain_func=explain_func, batch_size=B
        )
        out[name] = np.asarray(values, np.float64)

    def grid_ssim(a_flat, b_flat, batched=False, **kwargs):
        def one(u, v):
            u, v = u.reshape(H, W), v.reshape(H, W)
            both = np.concatenate([u.ravel(), v.ravel()])
            return skimage.metrics.structural_similarity(
                u, v, win_size=7, data_range=float(both.max() - both.min()),
                use_sample_covariance=False,
            )  # fmt: skip

        return [one(u, v) for u, v in zip(a_flat, b_flat)] if batched else one(a_flat, b_flat)

    metric = quantus.RandomLogit(num_classes=2, similarity_func=grid_ssim, **common)
    values = metric(
        model=model, x_batch=x_cf, y_batch=target, explain_func=explain_func, batch_size=1
    )
    out["RandomLogit"] = np.asarray(values, np.float64)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quantus-site", required=True, help="site-packages of a venv with quantus==0.6.0"
    )
    args = parser.parse_args()
    sys.path.append(args.quantus_site)
    import quantus

    start = time.perf_counter()
    data = inputs()
    rows = perturbed_rows(data["x"], data["target"])
    values = quantus_values(data, rows)
    for name, v in values.items():
        print(f"{name:24s}", np.round(v, 5))
    np.savez_compressed(
        OUT,
        version=np.array(f"quantus {quantus.__version__}"),
        key_seed=np.array(KEY_SEED),
        radius=np.array(RADIUS),
        n_samples=np.array(N_SAMPLES),
        **data,
        **{f"quantus/{k}": v for k, v in values.items()},
    )
    size, seconds = OUT.stat().st_size / 1e3, time.perf_counter() - start
    print(f"wrote {OUT.name} ({size:.0f} KB) in {seconds:.0f} s")


if __name__ == "__main__":
    main()

"""Golden data for the faithfulness metrics: tests/data/peers_metrics.npz, read by
tests/test_metrics_golden.py (which needs no torch).

Regenerate (from the repository root) in a venv with the peers installed as the
docstring of experiments/golden_peers.py describes, plus Quantus
(``pip install quantus==0.6.0``; scikit-learn, jax and flax as there):

    python -m experiments.golden_metrics

It runs in about a minute and prints what it stored (the file is about 150 KB). It trains
nothing: the two CNN cases of tests/data/peers.npz (their Flax variables, eight digits and
their labels; the file's sha256 is stored) are ported to torch as in golden_peers, and on
each case and target score pytorch-grad-cam 1.5.7's ``GradCAM`` on the case's layer gives
the maps (B, H, W) that every metric evaluates. Then:

- ROAD: ``ROADMostRelevantFirst(p)`` and ``ROADLeastRelevantFirst(p)`` for p = 10 ... 90,
  ``ROADMostRelevantFirstAverage``, ``ROADLeastRelevantFirstAverage`` and ``ROADCombined``
  with the imputation noise set to 0 (``NoisyLinearImputer``'s default is 0.01, drawn with
  ``torch.randn_like``, which ifa_jax cannot reproduce); on the 8x8 case also
  ``ROADCombined`` with its default noise, the draws recorded and stored as a field on the
  input grid per order, percentile and image (zero on the kept cells);
- ARCC (``metrics.arcc.ARCC`` with ``GradCAM`` on the same layer as its base method,
  ROAD noise 0), its three parts (``Complexity``, ``Coherency``, ``ROADCombined([20, 40, 60,
  80])``, the last doubled and clipped as ARCC does) and the maps ``Coherency`` recomputes
  on the masked inputs;
- Quantus 0.6.0 on the 28x28 case, each with its own default score:
  ``FaithfulnessCorrelation`` with its defaults (100 runs, 224 cells, 'black'; logits,
  ``softmax=False``) and ``PixelFlipping(features_in_step=28)`` ('black'; probabilities,
  its ``softmax=True``), on maps ``0.9 GradCAM + 0.1 u`` (u uniform,
  stored) so that no two cells tie (Quantus orders ties by NumPy's unstable sort).
  Quantus draws each subset with ``np.random.choice``, run by run and image by image;
  here that call answers from ``np.random.RandomState(SEED).choice(784, 224,
  replace=False)`` in the same order (the legacy generator's stream is fixed), so the test
  redraws the subsets from the seed.

Keys (``case`` in ``mnist_cnn``, ``convnet``; ``score`` in ``logit``, ``probability``):

- ``versions``; ``peers_sha256``; ``percentiles`` (9,) = 10 ... 90;
- ``{case}/{score}/cam`` (B, H, W): the GradCAM maps;
- ``{case}/{score}/road/morf``, ``.../road/lerf`` (B, 9): per percentile, noise 0;
  ``.../road/morf_average``, ``.../road/lerf_average``, ``.../road/combined`` (B,);
- ``convnet/logit/road_noisy/combined`` (B,) and ``convnet/logit/road_noisy/noise``
  (2, 9, B, H, W, C): MoRF then LeRF, ``0.01 * randn`` on the removed cells;
- ``{case}/{score}/arcc/{arcc,complexity,coherency,road}`` (B,) and
  ``{case}/{score}/arcc/masked_cam`` (B, H, W);
- ``mnist_cnn/quantus/saliency`` (B, H, W), ``.../seed``, ``.../faithfulness_correlation``
  (B,), ``.../pixel_flipping`` (B, 28) and ``.../pixel_flipping_auc`` (B,).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from experiments.bench import torch_twins  # noqa: E402
from experiments.golden_peers import CASES, stored_case, torch_model  # noqa: E402
from experiments.golden_peers import OUT as PEERS

OUT = PEERS.with_name("peers_metrics.npz")
PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
SEED = 0
QUANTUS_RUNS, QUANTUS_SUBSET, QUANTUS_STEP = 100, 224, 28


def versions() -> list[str]:
    out = []
    for package in ("torch", "grad-cam", "quantus", "numpy", "scipy"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out.append(f"{package} {importlib.metadata.version(package)}")
    return out


@contextlib.contextmanager
def imputer_noise(noise: float):
    """Every NoisyLinearImputer built inside uses ``noise`` (the ROAD classes build their
    own with the default)."""
    from pytorch_grad_cam.metrics import road

    defaults = road.NoisyLinearImputer.__init__.__defaults__
    road.NoisyLinearImputer.__init__.__defaults__ = (noise, *defaults[1:])
    try:
        yield
    finally:
        road.NoisyLinearImputer.__init__.__defaults__ = defaults


@contextlib.contextmanager
def recorded_noise(seen: list):
    """Record each imputation's noise, scattered on the grid: (H, W, C) per call."""
    from pytorch_grad_cam.metrics import road

    call = road.NoisyLinearImputer.__call__
    draw = torch.randn_like

    def recording(self, img, mask):
        drawn = []

        def randn_like(t, *args, **kwargs):
            out = draw(t, *args, **kwargs)
            drawn.append(out.clone())
            return out

        torch.randn_like = randn_like
        try:
            result = call(self, img, mask)
        finally:
            torch.randn_like = draw
        (noise,) = drawn  # (C, removed cells)
        field = torch.zeros(img.shape[0], mask.numel())
        field[:, torch.from_numpy(np.flatnonzero(mask.numpy().reshape(-1) == 0))] = noise
        seen.append(self.noise * field.reshape(img.shape).permute(1, 2, 0).numpy())
        return result

    road.NoisyLinearImputer.__call__ = recording
    try:
        yield
    finally:
        road.NoisyLinearImputer.__call__ = call


def golden_road(tm, xt, cams, targets, *, noisy: bool) -> dict[str, np.ndarray]:
    from pytorch_grad_cam.metrics import road

    out = {}
    with imputer_noise(0.0):
        for order, one in (
            ("morf", road.ROADMostRelevantFirst),
            ("lerf", road.ROADLeastRelevantFirst),
        ):
            out[f"road/{order}"] = np.stack(
                [one(p)(xt, cams, targets, tm) for p in PERCENTILES], axis=1
            )
        out["road/morf_average"] = road.ROADMostRelevantFirstAverage(list(PERCENTILES))(
            xt, cams, targets, tm
        )
        out["road/lerf_average"] = road.ROADLeastRelevantFirstAverage(list(PERCENTILES))(
            xt, cams, targets, tm
        )
        out["road/combined"] = road.ROADCombined(list(PERCENTILES))(xt, cams, targets, tm)
    if noisy:
        seen: list[np.ndarray] = []
        torch.manual_seed(SEED)
        with recorded_noise(seen):
            out["road_noisy/combined"] = road.ROADCombined(list(PERCENTILES))(xt, cams, targets, tm)
        # ROADCombined runs LeRF first, then MoRF; each percentile over the batch
        B, P = cams.shape[0], len(PERCENTILES)
        fields = np.stack(seen).reshape(2, P, B, *seen[0].shape)
        out["road_noisy/noise"] = fields[::-1].astype(np.float32)  # MoRF first
    return out


def golden_arcc(tm, layer_module, xt, cams, targets) -> dict[str, np.ndarray]:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.metrics import arcc, road

    base = GradCAM(model=tm, target_layers=[layer_module])
    out = {}
    with imputer_noise(0.0):
        out["arcc/arcc"] = arcc.ARCC(base_method=base)(xt, cams, targets, tm)
        combined = road.ROADCombined(percentiles=[20, 40, 60, 80])(xt, cams, targets, tm)
    out["arcc/complexity"] = arcc.Complexity()(cams)
    out["arcc/coherency"] = arcc.Coherency()(xt, cams, targets, tm, base)
    out["arcc/road"] = (combined * 2).clip(0, 1)
    mixed = xt * torch.from_numpy(cams).unsqueeze(1)
    out["arcc/masked_cam"] = base(input_tensor=mixed, targets=targets)
    return out


def golden_quantus(tm, x, labels, cams) -> dict[str, np.ndarray]:
    import quantus

    rng = np.random.default_rng(SEED)
    u = rng.random(cams.shape).astype(np.float32)
    sal = (0.9 * cams + 0.1 * u).astype(np.float32)
    x_cf = np.moveaxis(x, -1, 1).astype(np.float32)
    a = sal[:, None]
    n = int(np.prod(cams.shape[1:]))
    stream = np.random.RandomState(SEED)
    choice = np.random.choice
    calls = []

    def from_stream(a, size=None, replace=True, p=None):
        assert (a, size, replace, p) == (n, QUANTUS_SUBSET, False, None), (a, size, replace)
        calls.append(a)
        return stream.choice(n, QUANTUS_SUBSET, replace=False)

    np.random.choice = from_stream  # Quantus's subsets, drawn from a stream the test redraws
    try:
        fc = quantus.FaithfulnessCorrelation(
            nr_runs=QUANTUS_RUNS,
            subset_size=QUANTUS_SUBSET,
            return_aggregate=False,
            disable_warnings=True,
        )(model=tm, x_batch=x_cf, y_batch=labels, a_batch=a, channel_first=True)
    finally:
        np.random.choice = choice
    assert len(calls) == QUANTUS_RUNS * len(labels), len(calls)
    pf = quantus.PixelFlipping(features_in_step=QUANTUS_STEP, disable_warnings=True)
    curves = np.asarray(pf(model=tm, x_batch=x_cf, y_batch=labels, a_batch=a, channel_first=True))
    # Quantus's return_auc_per_sample calls np.trapz, which NumPy 2.4 no longer has: its
    # value is the unit-spacing trapezoid of the curve, taken here
    auc = np.trapezoid(curves, dx=1, axis=1)
    return {
        "quantus/saliency": sal,
        "quantus/seed": np.array(SEED),
        "quantus/faithfulness_correlation": np.asarray(fc, np.float64),
        "quantus/pixel_flipping": curves.astype(np.float32),
        "quantus/pixel_flipping_auc": np.asarray(auc, np.float64),
    }


def golden_case(case, arrays) -> dict[str, np.ndarray]:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import (
        ClassifierOutputSoftmaxTarget,
        ClassifierOutputTarget,
    )

    spec, variables, x, labels = stored_case(arrays, case.name)
    tm, modules = torch_model(case, variables)
    xt = torch_twins.to_torch_input(x)
    with torch.no_grad():
        np.testing.assert_allclose(
            tm(xt).numpy(), arrays[f"{case.name}/logits"], rtol=1e-5, atol=1e-5
        )
    layer_module = modules[spec["layer"]]
    out = {}
    target = {"logit": ClassifierOutputTarget, "probability": ClassifierOutputSoftmaxTarget}
    for score in case.scores:
        targets = [target[score](int(c)) for c in labels]
        cams = GradCAM(model=tm, target_layers=[layer_module])(input_tensor=xt, targets=targets)
        cams = np.asarray(cams, np.float32)
        prefix = f"{case.name}/{score}/"
        parts = {"cam": cams}
        parts.update(golden_road(tm, xt, cams, targets, noisy=case.name == "convnet"))
        parts.update(golden_arcc(tm, layer_module, xt, cams, targets))
        out.update({prefix + k: np.asarray(v) for k, v in parts.items()})
        print(
            f"{case.name}/{score}: ROAD combined {np.round(parts['road/combined'], 3)}, "
            f"ARCC {np.round(parts['arcc/arcc'], 3)}"
        )
        if case.name == "mnist_cnn" and score == "logit":
            q = golden_quantus(tm, x, labels, cams)
            out.update({f"{case.name}/{k}": v for k, v in q.items()})
            print(
                f"{case.name}: Quantus faithfulness correlation "
                f"{np.round(q['quantus/faithfulness_correlation'], 3)}, pixel-flipping AUC "
                f"{np.round(q['quantus/pixel_flipping_auc'], 2)}"
            )
    return out


def main() -> None:
    torch.manual_seed(SEED)
    with np.load(PEERS) as data:
        arrays = {k: data[k] for k in data.files}
    out = {
        "versions": np.array(versions()),
        "peers_sha256": np.array(hashlib.sha256(Path(PEERS).read_bytes()).hexdigest()),
        "percentiles": np.array(PERCENTILES),
    }
    for case in CASES:
        out.update(golden_case(case, arrays))
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KB): {', '.join(out['versions'])}")


if __name__ == "__main__":
    main()

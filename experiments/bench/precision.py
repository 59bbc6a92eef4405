"""Mixed precision: the analysis pass with the model in bfloat16 against float32.

    python -m experiments.bench.precision [--samples 512] [--batch 128] [--epochs 1]
                                          [--repeats 5] [--min-time 1.0]

The MNIST CNN (``ifa_jax.runner.models.MnistCNN``, layer relu2) on the embedded MNIST digits:
trained for ``--epochs`` on the training split (0: random weights), analysed on the first
``--samples`` validation digits. It prints, for one process on this machine:

* speed: the whole ``analyze()`` pass of the runner's four methods (GradCAM, GradCAM++,
  XGradCAM, HiResCAM from one probe call per batch), ``compute_dtype=None`` (float32) vs
  ``jnp.bfloat16``, interleaved over ``--repeats`` rounds; images/s (medians) and the
  paired ratio bf16 / f32 (median, min and max over rounds; a measurement repeats the
  pass to last ``--min-time`` seconds);
* accuracy, per method, of bfloat16 against float32: the relative error of the importance
  matrices IM_c (Frobenius norm over the classes present in both), the largest relative
  error of the percentiles (25 ... 99) of the per-sample CAM maxima, and of the minima
  (what the common scale is built from), and, for the methods with a jvp path, the mean
  consistency r over classes (``consistency.common_levels``, model in the same
  precision) in both; the accuracy of both on these digits.

On the norm scale the activation level is affine in the CAM mass, so Pearson r does not
depend on the scale's bounds: the r difference measures the model's bfloat16 rounding in
the masses and logits. On a CPU without native bfloat16 arithmetic bf16 may be slower.
"""

from __future__ import annotations

import argparse
import platform
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench.timing import Entry, time_interleaved
from ifa_jax import analysis, scale
from ifa_jax.consistency import LINEAR_METHODS, common_levels, summarize_consistency
from ifa_jax.probes import linen_probe
from ifa_jax.runner import data
from ifa_jax.runner import train as training
from ifa_jax.runner.models import MnistCNN

METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam")
PRECISIONS = {"f32": None, "bf16": jnp.bfloat16}


def _model(epochs: int, batch: int):
    """MnistCNN variables (trained for ``epochs``, random for 0) and the validation split."""
    splits = data.load_mnist_embedded()
    model = MnistCNN()
    if epochs > 0:
        config = training.TrainConfig(epochs=epochs, batch_size=batch, lr=2e-3, progress=False)
        variables, _ = training.train(model, splits.train, splits.validation, config)
    else:
        variables = model.init(jax.random.key(0), splits.train.x[:1])
    return model, variables, splits.validation


def cast_floating(variables, dtype):
    """The variables' floating leaves in ``dtype`` (what ``compute_dtype`` does)."""
    return jax.tree.map(
        lambda v: v.astype(dtype) if jnp.issubdtype(v.dtype, jnp.floating) else v, variables
    )


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """||got - want|| / ||want|| (Frobenius), over the entries finite in both."""
    ok = np.isfinite(got) & np.isfinite(want)
    return float(np.linalg.norm((got - want)[ok]) / np.linalg.norm(want[ok]))


def percentile_error(got: analysis.Analysis, want: analysis.Analysis, which: str) -> float:
    """The largest relative error of the percentiles (25 ... 99) of ``which``."""
    p_got, p_want = got.percentiles(which), want.percentiles(which)
    return max(abs(p_got[q] - p_want[q]) / abs(p_want[q]) for q in p_want)


def mean_r(probe, variables, batches, result: dict[str, analysis.Analysis]) -> dict[str, float]:
    """Mean Pearson r over classes of the common level vs the logit, linear methods."""
    linear = [m for m in METHODS if m in LINEAR_METHODS]
    scales = {
        m: scale.common_scale(result[m].samples["cam_max"], result[m].samples["cam_min"])
        for m in linear
    }
    levels = common_levels(probe, variables, batches, scales=scales)
    summary = summarize_consistency(levels).summary
    return {m: summary[m]["common"]["mean_pearson"] for m in linear}


def run(samples: int, batch: int, epochs: int, repeats: int, min_time: float) -> None:
    """Measure and print the speed and accuracy tables (see the module docstring)."""
    model, variables, validation = _model(epochs, batch)
    x, y = validation.x[:samples], validation.y[:samples]
    batches = [(x[i : i + batch], y[i : i + batch]) for i in range(0, len(x), batch)]
    probe = linen_probe(model, "relu2")

    def analyse(dtype):
        result = analysis.analyze_methods(
            probe,
            variables,
            batches,
            num_classes=10,
            methods=METHODS,
            progress=False,
            compute_dtype=dtype,
        )
        assert isinstance(result, dict)
        return result

    entries = {
        name: Entry(f"analyze {name}", "ifa", len(x), lambda d=dtype: analyse(d))
        for name, dtype in PRECISIONS.items()
    }
    time_interleaved(list(entries.values()), repeats=repeats, min_time=min_time)
    f32, bf16 = entries["f32"], entries["bf16"]
    ratios = [a / b for a, b in zip(f32.times, bf16.times)]  # bf16 speed / f32 speed

    print(
        f"MnistCNN at relu2, {len(x)} validation digits (28x28), batch {batch}, "
        f"{'trained ' + str(epochs) + ' epoch(s)' if epochs else 'random weights'}; "
        f"jax {jax.__version__} on {jax.devices()[0].device_kind} "
        f"({platform.machine()}, {jax.local_device_count()} device(s)); one process, "
        f"{repeats} interleaved rounds"
    )
    print(f"\nanalyze(), {len(METHODS)} methods in one pass")
    print("| precision | images/s | first call (s) |")
    print("|---|---|---|")
    for name, e in entries.items():
        print(f"| {name} | {e.images_per_s:.0f} | {e.first_s:.2f} |")
    print(
        f"bf16 / f32 speed (paired per round): median {statistics.median(ratios):.2f}, "
        f"min {min(ratios):.2f}, max {max(ratios):.2f}"
    )

    results = {name: analyse(dtype) for name, dtype in PRECISIONS.items()}
    rs = {
        name: mean_r(
            probe,
            variables if dtype is None else cast_floating(variables, dtype),
            [(a.astype(dtype or np.float32), b) for a, b in batches],
            results[name],
        )
        for name, dtype in PRECISIONS.items()
    }
    print("\nbf16 against f32, per method (relative errors; percentiles: the largest of 25..99)")
    print("| method | IM_c | cam_max percentiles | cam_min percentiles | r f32 | r bf16 | r diff |")
    print("|---|---|---|---|---|---|---|")
    for m in METHODS:
        want, got = results["f32"][m], results["bf16"][m]
        r32, r16 = rs["f32"].get(m), rs["bf16"].get(m)
        r_cells = (
            f"{r32:.6f} | {r16:.6f} | {abs(r16 - r32):.1e}"
            if r32 is not None and r16 is not None
            else "- | - | -"
        )
        print(
            f"| {m} | {relative_error(got.summary.im_class, want.summary.im_class):.1e} | "
            f"{percentile_error(got, want, 'cam_max'):.1e} | "
            f"{percentile_error(got, want, 'cam_min'):.1e} | {r_cells} |"
        )
    accuracy = {
        name: float(np.mean(r[METHODS[0]].samples["prediction"] == y))
        for name, r in results.items()
    }
    print(f"\naccuracy on these digits: f32 {accuracy['f32']:.4f}, bf16 {accuracy['bf16']:.4f}")


def main(argv=None) -> None:
    """Command line: see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=512, help="validation digits analysed")
    p.add_argument("--batch", type=int, default=128, help="batch size")
    p.add_argument("--epochs", type=int, default=1, help="training epochs (0: random weights)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement")
    args = p.parse_args(argv)
    run(args.samples, args.batch, args.epochs, args.repeats, args.min_time)


if __name__ == "__main__":
    main()

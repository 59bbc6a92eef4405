"""How the consistency evaluation's cost grows with the number of classes: jvp vs vjp path.

    python -m experiments.bench.class_scaling [--classes 10,100,1000] [--samples 256]
                                              [--batch 128] [--repeats 3]

A MnistCNN trunk (layer relu2) with a synthetic head of C classes and random weights, on
the embedded MNIST digits. For each C it times, interleaved over rounds in one process:

* floor: one jitted forward + vjp to the layer (one class), the cost of one model pass;
* jvp: ``consistency.common_levels``: the 'common' level of every class for GradCAM,
  HiResCAM and XGradCAM, from one forward linearised at the layer (one jvp per method);
* vjp: ``consistency.consistency_levels`` for the same methods: one forward and C vjps
  per batch (in groups of 16 classes), which also gives the clipped, per-image and
  subset levels.

It prints seconds per 1,000 images (medians over rounds) and each path's paired ratio to
the floor. The vjp path at many classes is slow on a CPU: ``--vjp-samples`` limits the
images it runs on (the figure is scaled to 1,000 images and says so).
"""

from __future__ import annotations

import argparse
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench.floor import make_floor
from experiments.bench.timing import Entry, time_interleaved
from ifa_jax import scale
from ifa_jax.consistency import LINEAR_METHODS, common_levels, consistency_levels
from ifa_jax.probes import linen_probe
from ifa_jax.runner import data
from ifa_jax.runner.models import MnistCNN


def _batches(x, y, batch):
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, len(x), batch)]


def _ratio_to_floor(e: Entry, floor: Entry) -> tuple[float, float, float]:
    """Median, min and max over rounds of (e's seconds per image) / (floor's)."""
    n = min(len(e.times), len(floor.times))
    r = [(e.times[i] / e.images) / (floor.times[i] / floor.images) for i in range(n)]
    return statistics.median(r), min(r), max(r)


def _variants(C, x, y, *, batch, vjp_samples) -> list[Entry]:
    """floor, jvp and vjp entries for a head of C classes."""
    model = MnistCNN(num_classes=C)
    variables = model.init(jax.random.key(0), x[:1])
    probe = linen_probe(model, "relu2")
    scales = {m: scale.scale_from_bounds(0.0, 1.0) for m in LINEAR_METHODS}
    floor_fn = make_floor(probe)
    xb, yb = jnp.asarray(x[:batch]), jnp.asarray(y[:batch] % C)
    nv = min(vjp_samples, len(x))
    masks = np.ones((C, 200), np.float32)

    def floor():
        return jax.block_until_ready(floor_fn(variables, xb, yb))

    def jvp():
        return common_levels(probe, variables, _batches(x, y, batch), scales=scales)

    def vjp():
        return consistency_levels(
            probe,
            variables,
            _batches(x[:nv], y[:nv], min(batch, nv)),
            scales=scales,
            masks=masks,
            classes=range(C),
        )

    return [
        Entry("floor", "floor", batch, floor),
        Entry("jvp", "ifa", len(x), jvp),
        Entry("vjp", "ifa", nv, vjp),
    ]


def run(classes=(10, 100, 1000), *, samples=256, vjp_samples=64, batch=128, repeats=3):
    """Time the three variants for each class count; returns rows for printing."""
    splits = data.load_mnist_embedded()
    x = splits.validation.x[:samples]
    y = splits.validation.y[:samples].astype(np.int32)
    rows = []
    for C in classes:
        entries = _variants(C, x, y, batch=batch, vjp_samples=vjp_samples)
        time_interleaved(entries, repeats=repeats, min_time=0.0)
        floor, jvp, vjp = entries
        rows.append((C, floor, jvp, vjp, _ratio_to_floor(jvp, floor), _ratio_to_floor(vjp, floor)))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", default="10,100,1000")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--vjp-samples", type=int, default=64)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    classes = tuple(int(c) for c in args.classes.split(","))
    rows = run(
        classes,
        samples=args.samples,
        vjp_samples=args.vjp_samples,
        batch=args.batch,
        repeats=args.repeats,
    )
    print(
        f"MnistCNN trunk, layer relu2, random weights, batch {args.batch}, "
        f"{jax.device_count()} {jax.default_backend()} device(s), {args.repeats} rounds; "
        f"jvp on {args.samples} images, vjp on {min(args.vjp_samples, args.samples)}; "
        "seconds per 1,000 images (median), ratio to the floor (median [min, max])"
    )
    print(
        f"{'classes':>8} {'floor s':>9} {'jvp s':>9} {'vjp s':>10} {'jvp/floor':>22} "
        f"{'vjp/floor':>24}"
    )
    for C, floor, jvp, vjp, rj, rv in rows:
        per_k = [1000 * e.seconds / e.images for e in (floor, jvp, vjp)]
        print(
            f"{C:>8} {per_k[0]:>9.2f} {per_k[1]:>9.2f} {per_k[2]:>10.2f} "
            f"{rj[0]:>8.2f} [{rj[1]:.2f}, {rj[2]:.2f}] {rv[0]:>10.2f} [{rv[1]:.2f}, {rv[2]:.2f}]"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

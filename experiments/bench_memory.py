"""Peak RSS of the analysis pass at 5,000 and 50,000 samples (the embedded MNIST, repeated).

    python -m experiments.bench_memory [--sizes 5000 50000] [--batch 256]

Each size runs in a fresh subprocess (peak RSS only grows within a process) and prints its
peak resident memory, throughput and the ratio to the smallest size. The state of the
pass has a fixed size; only per-sample scalars (a few bytes per sample) grow with N, so
the ratio should stay close to 1 (target: within 10%).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np


class Repeated:
    """A data source that cycles over a dataset to a length of ``n`` samples."""

    def __init__(self, ds, n):
        self.ds, self.n = ds, n
        self.num_classes, self.name = ds.num_classes, f"{ds.name}x{n}"

    def __len__(self):
        return self.n

    @property
    def input_shape(self):
        return self.ds.input_shape

    def gather(self, indices):
        return self.ds.gather(np.asarray(indices) % len(self.ds))


def one_size(n: int, batch: int) -> dict:
    import jax

    from ifa_jax import analysis, linen_probe
    from ifa_jax.runner import data
    from ifa_jax.runner.models import MnistCNN

    splits = data.load_mnist_embedded()
    source = Repeated(splits.train, n)
    model = MnistCNN()
    variables = model.init(jax.random.key(0), splits.train.x[:1])
    probe = linen_probe(model, "conv2")
    start = time.perf_counter()
    result = analysis.analyze(
        probe, variables, data.batches(source, batch), num_classes=10, count="all", progress=False
    )
    seconds = time.perf_counter() - start
    assert result.summary.seen == n
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"samples": n, "peak_rss_mib": peak_mib, "seconds": seconds, "images_per_s": n / seconds}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one_size(args.one, args.batch)))
        return
    rows = []
    for n in args.sizes:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "experiments.bench_memory",
                "--one",
                str(n),
                "--batch",
                str(args.batch),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]["peak_rss_mib"]
    print(f"{'samples':>8} {'peak RSS MiB':>13} {'ratio':>6} {'img/s':>8}")
    for r in rows:
        print(
            f"{r['samples']:>8} {r['peak_rss_mib']:>13.1f} {r['peak_rss_mib'] / base:>6.3f} "
            f"{r['images_per_s']:>8.0f}"
        )


if __name__ == "__main__":
    main()

"""End to end: the whole integrated feature analysis of embedded MNIST as the runner does
it, in seconds per 1,000 images, with the model passes counted."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench.cases import E2E_METHODS
from experiments.bench.floor import make_floor
from experiments.bench.jax_side import scale_of
from experiments.bench.timing import Entry, time_interleaved
from ifa_jax import analysis, cams, decompose, scale
from ifa_jax.consistency import consistency_levels, summarize_consistency
from ifa_jax.probes import LayerProbe, linen_probe
from ifa_jax.runner import data
from ifa_jax.runner.models import MnistCNN


def counting_probe(probe: LayerProbe):
    """A probe that counts the executions of its model (one per forward pass of a batch)."""
    counter = {"calls": 0}

    def bump():
        counter["calls"] += 1

    def tapped(variables, x, deltas):
        jax.debug.callback(bump)
        return probe.tapped(variables, x, deltas)

    return dataclasses.replace(probe, tapped=tapped), counter


def ifa_pipeline(probe, variables, ds, *, batch: int, methods: Sequence[str]) -> dict:
    """One analysis pass (all methods), common scales, consistency evaluation: seconds."""
    t0 = time.perf_counter()
    # As the runner does: every method from one probe call per batch (one model pass).
    analyses = analysis.analyze_methods(
        probe,
        variables,
        ((b.x, b.y, b.mask) for b in data.batches(ds, batch)),
        num_classes=ds.num_classes,
        methods=tuple(methods),
        progress=False,
        keep_importance=True,
        count="all",
    )  # random weights: few samples are correct
    t1 = time.perf_counter()
    scales = {
        cams.canonical_method(m): scale_of(
            analyses[m].samples["cam_max"], analyses[m].samples["cam_min"]
        )
        for m in methods
    }
    t2 = time.perf_counter()
    masks = decompose.select(np.nan_to_num(analyses[methods[0]].summary.im_class), "top", ratio=0.1)
    summarize_consistency(
        consistency_levels(
            probe,
            variables,
            ((b.x, b.y, b.mask) for b in data.batches(ds, batch)),
            scales=scales,
            masks=masks,
            classes=range(ds.num_classes),
        )
    )
    t3 = time.perf_counter()
    return {"analysis_s": t1 - t0, "scale_s": t2 - t1, "consistency_s": t3 - t2, "total_s": t3 - t0}


def end_to_end(
    samples: int,
    *,
    batch: int = 256,
    methods: Sequence[str] = E2E_METHODS,
    repeats: int = 3,
    log: Callable[[str], None] = print,
) -> dict:
    """The whole analysis of ``samples`` embedded-MNIST digits with a random MnistCNN.

    Mirrors the runner (``runner.stages.stage_analyse``: one analysis pass for all methods;
    ``consistency.consistency_levels``). Runs it twice (cold: with tracing and
    compilation; warm: caches filled), counts
    the model passes on a 2-batch dataset, and measures the floor at the same batch, so that
    ``floor_bound_s_per_1k`` = passes x 1000 / floor throughput is the time the passes alone
    would take at the floor's speed.
    """
    splits = data.load_mnist_embedded()
    x = np.concatenate([splits.train.x, splits.validation.x])
    y = np.concatenate([splits.train.y, splits.validation.y])
    reps = -(-samples // len(y))
    x, y = np.concatenate([x] * reps)[:samples], np.concatenate([y] * reps)[:samples]
    ds = data.Dataset(x, y, 10, f"mnist_embedded[{samples}]")
    model = MnistCNN()
    variables = model.init(jax.random.key(0), x[:1])
    probe = linen_probe(model, "relu2")
    cold = ifa_pipeline(probe, variables, ds, batch=batch, methods=methods)
    warm = ifa_pipeline(probe, variables, ds, batch=batch, methods=methods)

    counting, counter = counting_probe(probe)
    small = data.Dataset(x[: 2 * batch], y[: 2 * batch], 10, "count")
    counts = {}
    counter["calls"] = 0
    analysis.analyze_methods(
        counting,
        variables,
        ((b.x, b.y, b.mask) for b in data.batches(small, batch)),
        num_classes=10,
        methods=tuple(methods),
        progress=False,
        count="all",
    )
    jax.effects_barrier()
    counts["analysis"] = counter["calls"] / 2

    counter["calls"] = 0
    sc = {cams.canonical_method(m): scale.scale_from_bounds(0.0, 1.0) for m in methods}
    consistency_levels(
        counting,
        variables,
        ((b.x, b.y, b.mask) for b in data.batches(small, batch)),
        scales=sc,
        masks=np.ones((10, 200)),
        classes=range(10),
    )
    jax.effects_barrier()
    counts["consistency"] = counter["calls"] / 2
    analysis_passes = counts["analysis"]
    passes = analysis_passes + counts["consistency"]

    floor = make_floor(probe)
    xb, yb = jnp.asarray(x[:batch]), jnp.asarray(y[:batch], jnp.int32)
    e = Entry("floor", "floor", batch, lambda: jax.block_until_ready(floor(variables, xb, yb)))
    time_interleaved([e], repeats=repeats, min_time=0.2)
    per_1k = {f"{k}_per_1k": v * 1000 / samples for k, v in warm.items()}
    out = {
        "samples": samples,
        "batch": batch,
        "methods": list(methods),
        "classes": 10,
        "cold_s": cold,
        "warm_s": warm,
        "cold_s_per_1k": cold["total_s"] * 1000 / samples,
        "warm_s_per_1k": warm["total_s"] * 1000 / samples,
        **per_1k,
        "model_passes": {
            "per_stage": counts,
            "analysis": analysis_passes,
            "evaluation": counts["consistency"],
            "total": passes,
        },
        "floor_images_per_s": e.images_per_s,
        "floor_bound_s_per_1k": passes * 1000 / e.images_per_s,
    }
    out["warm_x_floor_bound"] = out["floor_bound_s_per_1k"] / out["warm_s_per_1k"]
    return out

"""Every registered CAM method through ``ifa_jax.explain``, timed against GradCAM.

The methods come from :data:`ifa_jax.cams.REGISTRY` when the section runs, so a method
registered later joins by itself. Each runs with its default options on the benchmark's
``mnist256`` case (MnistCNN, random weights, 28x28x1, batch 256), with the targets of the
case's random labels:

* kind ``"layer"``: the probe of layer ``relu2``;
* kind ``"layers"``: a probe of ``relu1`` and ``relu2`` (RefineCAM);
* kind ``"input"``: the ``relu2`` probe (SESS runs its base method there);
* LeGrad (``legrad``, ``legradlayers``) reads a transformer's attention probabilities,
  which a CNN has none of: it runs on :class:`ifa_jax.runner.models.ViT` (defaults: patch 7,
  depth 2, random weights) on the same inputs, through
  :func:`ifa_jax.probes.legrad_probe` (``block2``; ``block1`` and ``block2``);
* methods that need a key get ``key=jax.random.key(0)``.

Every call ends in ``block_until_ready`` on explain's outputs; the timing is
:func:`~experiments.bench.timing.time_interleaved` (first call with the compile, a
warm-up call, then rounds over all methods in turn). A method whose warm-up call takes
>= ``SLOW_S`` seconds is timed in fewer rounds. SS-CAM and IS-CAM run ScoreCAM's K = 200
masked forward passes per image 35 and 10 times: at batch 256 one call takes minutes on
2 CPU cores, so they run on the first images of the batch (``SLICES``; the row's batch
says which). The ratio to GradCAM is per image, method / GradCAM, taken within each round.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import jax

from experiments.bench.cases import Case, make_cases, setup_case
from experiments.bench.report import versions
from experiments.bench.timing import Entry, time_interleaved, time_ratios
from ifa_jax import cams, explain
from ifa_jax.probes import legrad_probe, linen_probe
from ifa_jax.runner.models import ViT

CASE = "mnist256"
REFERENCE = "gradcam"
LAYERS = ("relu1", "relu2")  # the probe of kind-"layers" methods
VIT_METHODS = {"legrad": "block2", "legradlayers": ("block1", "block2")}
VIT_LABEL = "ViT(patch 7, depth 2)"
# Images per call of the methods too slow for the whole batch: (full, quick).
SLICES = {"sscam": (16, 8), "iscam": (32, 16)}
SLOW_S = 5.0  # a warm-up call this long marks a slow method: timed in slow_rounds only


def method_names(names: Sequence[str] | None = None) -> list[str]:
    """The canonical names to time: ``names`` (or every registered method), GradCAM first."""
    chosen = list(cams.REGISTRY) if names is None else [cams.canonical_method(n) for n in names]
    return [REFERENCE, *dict.fromkeys(n for n in chosen if n != REFERENCE)]


def method_rows_plan(case: Case, names: Sequence[str], *, quick: bool) -> list[dict]:
    """For each method: its kind, model and probe layers, batch and explain() keywords."""
    plan = []
    for name in names:
        spec = cams.get_method(name)
        batch = min(case.batch, SLICES[name][quick]) if name in SLICES else case.batch
        row: dict[str, Any] = {"method": name, "kind": spec.kind, "batch": batch}
        if name in VIT_METHODS:
            blocks = VIT_METHODS[name]
            row.update(
                model=VIT_LABEL, layers=[blocks] if isinstance(blocks, str) else list(blocks)
            )
        else:
            row.update(
                model="MnistCNN",
                layers=list(LAYERS) if spec.kind == "layers" else [case.layer],
            )
        row["key"] = "key" in spec.needs
        plan.append(row)
    return plan


def method_entries(case: Case, plan: Sequence[dict]) -> list[Entry]:
    """One timed ``explain`` call per planned row."""
    model, variables, probe, x, y = setup_case(case)
    probes = {(case.layer,): probe, LAYERS: linen_probe(model, list(LAYERS))}
    vit_variables = None
    if any(r["model"] == VIT_LABEL for r in plan):
        vit = ViT(num_classes=case.num_classes)
        vit_variables = vit.init(jax.random.key(1), x[:1])
        for blocks in VIT_METHODS.values():
            probes[(VIT_LABEL, blocks)] = legrad_probe(vit, blocks)

    def call(row: dict) -> Callable[[], Any]:
        if row["model"] == VIT_LABEL:
            p, v = probes[(VIT_LABEL, VIT_METHODS[row["method"]])], vit_variables
        else:
            p, v = probes[tuple(row["layers"])], variables
        b = row["batch"]
        xb, yb = x[:b], y[:b]
        key = jax.random.key(0) if row["key"] else None

        def run():
            return jax.block_until_ready(explain(p, v, xb, yb, row["method"], key=key))

        return run

    return [Entry(r["method"], "ifa", r["batch"], call(r)) for r in plan]


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run_methods(
    *,
    quick: bool = False,
    names: Sequence[str] | None = None,
    batch: int | None = None,
    repeats: int | None = None,
    slow_rounds: int | None = None,
    min_time: float | None = None,
) -> dict:
    """Time every method (or ``names``) and return the section's figures.

    ``batch`` overrides the case's batch (tests); ``repeats`` rounds (default 5, quick 3),
    of which slow methods take ``slow_rounds`` (default 2, quick 1).
    """
    case = make_cases(quick)[CASE]
    if batch is not None:
        case = dataclasses.replace(case, batch=batch)
    repeats = repeats if repeats is not None else (3 if quick else 5)
    slow_rounds = slow_rounds if slow_rounds is not None else (1 if quick else 2)
    min_time = min_time if min_time is not None else (0.2 if quick else 0.4)
    plan = method_rows_plan(case, method_names(names), quick=quick)
    entries = method_entries(case, plan)
    time_interleaved(
        entries, repeats=repeats, min_time=min_time, slow_s=SLOW_S, slow_rounds=slow_rounds
    )
    reference = entries[0]
    rows = []
    for row, e in zip(plan, entries):
        out = {k: v for k, v in row.items() if k != "key"}
        out["error"] = e.error
        if e.error is None and reference.error is None:
            ratios = time_ratios(e, reference)
            out.update(
                rounds=len(e.times),
                ms_per_batch_median=1000 * e.seconds,
                seconds_all=e.times,
                calls_per_round=e.number,
                first_call_s=e.first_s,
                images_per_s=e.images_per_s,
                ratio_to_gradcam=_spread(ratios),
                ratio_to_gradcam_all=ratios,
            )
        rows.append(out)
    threads = versions()["jax_cpu_threads"]
    return {
        "case": case.name,
        "description": (
            f"{case.describe()}, random weights, {threads} CPU threads, "
            f"{'quick' if quick else 'full'}, each method's default options"
        ),
        "batch": case.batch,
        "layer": case.layer,
        "threads": threads,
        "quick": quick,
        "repeats": repeats,
        "slow_rounds": slow_rounds,
        "slow_s": SLOW_S,
        "min_time_s": min_time,
        "reference": REFERENCE,
        "rows": rows,
    }

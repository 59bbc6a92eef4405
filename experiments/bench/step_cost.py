"""What the analysis step costs beyond its floor, in XLA's own accounting, and on the CPU.

    python -m experiments.bench.step_cost [--quick] [--cases mnist64,mnist256,resnet18]
                                          [--repeats 7] [--min-time 0.2] [--json out.json]

For each case (:mod:`experiments.bench.cases`, random weights) it compiles the floor (one
jitted forward + vjp to the layer, :func:`experiments.bench.floor.make_floor`) and the
pass's step (:func:`ifa_jax.analysis.step.pass_step`, as ``analyze`` runs it: probe, CAMs,
statistics merge) with 1 and 4 methods, and prints for each the compiled step's ``flops``
and ``bytes accessed`` (``compiled.cost_analysis()``) and the ops of its optimised HLO's
entry computation (fusions, dots and convolutions, all ops that are no view or tuple: each
a kernel launch on a GPU).
Small models are memory-bandwidth and launch bound on a GPU, so the bytes and kernels the
step adds to the floor are what a GPU pays for the analysis.

The step after the probe is then taken apart: the same step with the probe's results
given (A, G, logits), compiled once per output kept (XLA drops what the output does not
need): the importances alone, the CAM maps' max/min, the K statistics (count, mean, m2,
comoment) and the per-class mean CAM. Then the CPU time of floor and steps, interleaved
over ``--repeats`` rounds (step / floor time: median [min, max] of paired ratios), and the
end of a pass: finalizing the 4 methods' states of the case's C, K and grid.

``--quick``: the MnistCNN batch 64 case only, 3 rounds, no minimum time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
import time
from collections import Counter
from typing import Any

import jax
import jax.numpy as jnp

from experiments.bench.cases import E2E_METHODS, make_cases, setup_case
from experiments.bench.floor import make_floor
from experiments.bench.timing import Entry, time_interleaved, time_ratios
from ifa_jax import analysis
from ifa_jax.analysis.step import _step, pass_step
from ifa_jax.probes.core import ProbeResult

STEP_CASES = ("mnist64", "mnist256", "resnet18")
# The ops of an entry computation that are no kernel: views, tuples and parameters.
_NOT_KERNELS = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast"}
_OPCODE = re.compile(r"=\s.*?\b([a-z][a-z0-9\-]*)\(")


def entry_ops(hlo_text: str) -> Counter:
    """Opcode counts of the ENTRY computation of an optimised HLO module's text."""
    ops: Counter = Counter()
    inside = False
    for line in hlo_text.splitlines():
        if line.startswith("ENTRY"):
            inside = True
            continue
        if inside:
            if line.startswith("}"):
                break
            m = _OPCODE.search(line)
            if m:
                ops[m.group(1)] += 1
    return ops


def compiled_cost(compiled) -> dict[str, Any]:
    """flops, bytes accessed and entry-op counts of a compiled function."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    ops = entry_ops(compiled.as_text())
    return {
        "flops": float(cost.get("flops", float("nan"))),
        "bytes": float(cost.get("bytes accessed", float("nan"))),
        "fusions": ops["fusion"],
        "custom_calls": ops["custom-call"],
        "dots": ops["dot"] + ops["convolution"],
        "kernels": sum(n for op, n in ops.items() if op not in _NOT_KERNELS),
    }


@dataclasses.dataclass(frozen=True)
class GivenProbe:
    """A stand-in probe that returns the A, G and logits it is given as ``variables``: the
    step with it is the step after the probe (CAMs and statistics), nothing else."""

    layers: tuple[str, ...] = ("layer",)

    def __call__(self, variables, x, target, *, score="logit"):
        logits = variables["logits"]
        picked = jnp.take_along_axis(logits, target[:, None], axis=-1)[:, 0]
        return ProbeResult(logits, picked, target, variables["A"], variables["G"])


def _select(kept: str):
    """The step after the probe, keeping one part of its outputs."""

    def tail(states, given, y, valid, num_classes, methods):
        new, pers = _step(
            states,
            GivenProbe(),
            given,
            y,
            y,
            valid,
            num_classes=num_classes,
            method=methods,
            keep_importance=True,
        )
        parts = {
            "all": (new, pers),
            "importances": [p.importance for p in pers],
            "cam max/min": [(p.cam_max, p.cam_min) for p in pers],
            "K statistics": [(s.count, s.mean, s.m2, s.comoment) for s in new],
            "cam_mean": [s.cam_mean for s in new],
        }
        return parts[kept]

    return jax.jit(tail, static_argnames=("num_classes", "methods"))


TAIL_PARTS = ("all", "importances", "cam max/min", "K statistics", "cam_mean")


def _step_kwargs(methods: tuple[str, ...], num_classes: int) -> dict[str, Any]:
    return {
        "num_classes": num_classes,
        "method": methods,
        "target": "label",
        "score": "logit",
        "count": "correct",
        "chunk_size": 16,
        "keep_importance": False,
        "options": (),
        "array_options": None,
        "key": None,
    }


def measure_case(
    name: str,
    *,
    repeats: int,
    min_time: float,
    log,
    batch: int | None = None,
    parts: tuple[str, ...] = TAIL_PARTS,
) -> dict:
    """Cost analysis, the parts after the probe and the CPU timing of one case (``batch``
    overrides the case's)."""
    case = make_cases(quick=True)[name]
    if batch is not None:
        case = dataclasses.replace(case, batch=batch)
    _, variables, probe, x, y = setup_case(case)
    C = case.num_classes
    floor = make_floor(probe)
    logits, A, G = jax.block_until_ready(floor(variables, x, y))
    valid = jnp.ones((case.batch,), bool)
    K, grid = A.shape[-1], tuple(A.shape[1:-1])
    out: dict[str, Any] = {"case": case.describe(), "layer_shape": list(A.shape), "classes": C}
    log(f"== {case.describe()}: A {tuple(A.shape)}, {C} classes")

    variants = {"floor": (floor, (variables, x, y))}
    steps = {}
    for methods in (("gradcam",), E2E_METHODS):
        states = tuple(analysis.init(C, K, grid) for _ in methods)
        kw = _step_kwargs(methods, C)
        label = f"step, {len(methods)} method{'s' if len(methods) > 1 else ''}"
        steps[label] = (states, kw)
        variants[label] = (
            jax.jit(lambda s, v, x, y, ok, kw=kw: pass_step(s, probe, v, x, y, ok, None, **kw)),
            (states, variables, x, y, valid),
        )
    costs, compiled = {}, {}
    for label, (fn, args) in variants.items():
        compiled[label] = fn.lower(*args).compile()
        costs[label] = compiled_cost(compiled[label])
    out["cost"] = costs
    base = costs["floor"]
    log(f"  {'':22s} {'GFLOP':>8s} {'MB accessed':>12s} {'x floor':>8s} "
        f"{'fusions':>8s} {'dots':>8s} {'kernels':>8s}")  # fmt: skip
    for label, c in costs.items():
        log(
            f"  {label:22s} {c['flops'] / 1e9:8.3f} {c['bytes'] / 1e6:12.2f} "
            f"{c['bytes'] / base['bytes']:8.3f} {c['fusions']:8d} {c['dots']:8d} "
            f"{c['kernels']:8d}"
        )

    given = {"A": A, "G": G, "logits": logits}
    states4 = steps[f"step, {len(E2E_METHODS)} methods"][0]
    tail = {}
    for kept in parts:
        part = _select(kept).lower(states4, given, y, valid, C, E2E_METHODS).compile()
        tail[kept] = compiled_cost(part)
    out["after_probe_4_methods"] = tail
    log(f"  after the probe, {len(E2E_METHODS)} methods, output kept:")
    for kept, c in tail.items():
        log(
            f"    {kept:20s} {c['flops'] / 1e9:8.4f} GFLOP {c['bytes'] / 1e6:9.2f} MB "
            f"({c['bytes'] / base['bytes']:.3f} x floor's bytes) {c['kernels']:4d} kernels"
        )

    def timed(label):  # the compiled step itself: no second compilation
        fn, args = compiled[label], variants[label][1]
        return lambda: jax.block_until_ready(fn(*args))

    entries = [Entry(label, "floor" if label == "floor" else "ifa", case.batch, timed(label))
               for label in variants]  # fmt: skip
    time_interleaved(entries, repeats=repeats, min_time=min_time)
    out["cpu_seconds"] = {e.name: e.seconds for e in entries}
    out["cpu_time_x_floor"] = {}
    for e in entries[1:]:
        r = time_ratios(e, entries[0])
        out["cpu_time_x_floor"][e.name] = {
            "median": statistics.median(r),
            "min": min(r),
            "max": max(r),
        }
        log(
            f"  CPU {e.name}: {e.seconds * 1e3:.2f} ms, time x floor {statistics.median(r):.3f} "
            f"[{min(r):.3f}, {max(r):.3f}] ({len(r)} rounds; floor {entries[0].seconds * 1e3:.2f}"
            " ms)"
        )
    return out


def finalize_cost(
    num_methods: int = 4,
    num_classes: int = 1000,
    num_channels: int = 512,
    grid: tuple[int, ...] = (4, 4),
    *,
    repeats: int = 7,
    log=print,
) -> dict[str, Any]:
    """Seconds to finalize ``num_methods`` device states (C, K, grid) at the end of a pass:
    one :func:`ifa_jax.analysis.finalize` per state, and :func:`ifa_jax.analysis.finalize_all`
    (one transfer for all); median [min, max] over ``repeats`` interleaved calls."""
    key = jax.random.key(0)
    states = []
    for i in range(num_methods):
        k = jax.random.fold_in(key, i)
        s = analysis.init(num_classes, num_channels, grid)
        s = s._replace(
            count=jnp.full((num_classes,), 3.0),
            mean=jax.random.normal(k, s.mean.shape),
            m2=jnp.abs(jax.random.normal(k, s.m2.shape)),
            cam_mean=jax.random.normal(k, s.cam_mean.shape),
            seen=jnp.asarray(3.0 * num_classes),
        )
        states.append(s)
    states = jax.block_until_ready(tuple(states))
    ways = {"finalize per state": lambda: [analysis.finalize(s) for s in states]}
    if hasattr(analysis, "finalize_all"):
        ways["finalize_all (one transfer)"] = lambda: analysis.finalize_all(states)
    what = f"{num_methods} states, {num_classes} classes, K={num_channels}, grid {grid}"
    out: dict[str, Any] = {"what": what}
    times: dict[str, list[float]] = {w: [] for w in ways}
    for r in range(repeats + 1):
        for w, fn in ways.items():
            t0 = time.perf_counter()
            fn()
            if r:
                times[w].append(time.perf_counter() - t0)
    for w, ts in times.items():
        out[w] = {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts)}
        log(
            f"== end of a pass, {w}, {what}: {statistics.median(ts) * 1e3:.2f} ms "
            f"[{min(ts) * 1e3:.2f}, {max(ts) * 1e3:.2f}] ({repeats} calls, interleaved)"
        )
    return out


def run(
    cases=STEP_CASES,
    *,
    repeats: int = 7,
    min_time: float = 0.2,
    batch: int | None = None,
    parts: tuple[str, ...] = TAIL_PARTS,
    finalize_sizes: tuple[int, int, int, tuple[int, ...]] = (4, 1000, 512, (4, 4)),
    log=print,
) -> dict[str, Any]:
    """All cases and the end-of-pass cost (``finalize_sizes``: methods, classes, channels,
    grid); returns the figures as a dict."""
    out: dict[str, Any] = {"backend": jax.default_backend(), "cases": {}}
    for name in cases:
        out["cases"][name] = measure_case(
            name, repeats=repeats, min_time=min_time, log=log, batch=batch, parts=parts
        )
    out["finalize"] = finalize_cost(*finalize_sizes, repeats=repeats, log=log)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="mnist64 only, 3 rounds, no min time")
    p.add_argument("--cases", default=",".join(STEP_CASES), help="comma-separated case names")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--min-time", type=float, default=None)
    p.add_argument("--json", default=None, help="write the figures to this JSON file")
    args = p.parse_args(argv)
    cases = ("mnist64",) if args.quick else tuple(args.cases.split(","))
    repeats = args.repeats or (3 if args.quick else 7)
    min_time = args.min_time if args.min_time is not None else (0.0 if args.quick else 0.2)
    out = run(cases, repeats=repeats, min_time=min_time)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The allocator section: the default and the tuned memory allocator, one process each.

    python -m experiments.benchmark --only allocator [--allocator-rounds 3]
                                    [--allocators default,tuned,jemalloc,tcmalloc]

XLA:CPU takes its per-call buffers from ``malloc``; how the allocator serves them decides
how many pages each call faults in (:mod:`ifa_jax.runner.allocator`). The allocator is
fixed when a process starts, so every allocator gets its own worker process (``python -m
experiments.bench.allocator --worker``), started with its environment:

* ``default``: glibc malloc as it comes (``GLIBC_TUNABLES`` and ``LD_PRELOAD`` removed);
* ``tuned``: ``GLIBC_TUNABLES`` = :data:`ifa_jax.runner.allocator.TUNABLES`, what the
  ``ifa-jax`` command, ``make demo`` and the benchmark run with;
* ``jemalloc`` / ``tcmalloc``: the library preloaded (``LD_PRELOAD``), when installed
  (Debian: ``apt-get install libjemalloc2 google-perftools``); skipped otherwise.

The workers run in turn, allocator after allocator, for ``rounds`` rounds, so a shared
machine's load hits them alike. Each worker sets up the ``mnist256`` case (MnistCNN with
random weights, 28x28x1, layer relu2) and measures three variants, each after a first
call (compile) and a warm-up call, over calls lasting >= ``min_time`` seconds:

* floor: the jitted forward + vjp to the layer at batch 256 (:mod:`~experiments.bench.floor`);
* step: ``analysis.analysis_step`` of GradCAM, GradCAM++, XGradCAM and HiResCAM from one
  probe call, batch 256;
* analyze: ``analysis.analyze()`` of the same 4 methods over 1,024 images (4 host batches
  of 256, the runner's options).

Per call: wall time, the system share of the CPU time (sys / (user + sys)) and the minor
page faults, from ``getrusage`` around the calls; and the worker's peak RSS. "x default"
is the default worker's wall time over this one's in the same round (median, [min, max]).
"""

from __future__ import annotations

import argparse
import ctypes.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from experiments.tuned import allocator as allocator_module

# The repository root: experiments/bench/allocator.py -> ../../
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CASE = "mnist256"
ANALYZE_BATCHES = 4
VARIANTS = ("floor", "step", "analyze")
ALLOCATORS = ("default", "tuned", "jemalloc", "tcmalloc")
# The library each preloaded allocator is looked up by (ctypes.util.find_library).
PRELOAD = {"jemalloc": "jemalloc", "tcmalloc": "tcmalloc_minimal"}


def describe_variants(batch: int = 256) -> dict[str, str]:
    return {
        "floor": f"floor, batch {batch} (jitted forward + vjp)",
        "step": f"analysis step, 4 methods, batch {batch}",
        "analyze": f"analyze() 4 methods, {ANALYZE_BATCHES * batch:,} images",
    }


def allocator_environ(name: str) -> dict[str, str] | None:
    """The environment of a worker with allocator ``name``; None when it is not installed."""
    alloc = allocator_module()
    plain = alloc.plain_environ()
    if name == "default":
        return plain
    if name == "tuned":
        return alloc.tuned_environ(plain)
    if name in PRELOAD:
        lib = ctypes.util.find_library(PRELOAD[name])
        if lib is None:
            return None
        return {**plain, "LD_PRELOAD": lib, alloc.MARKER: "1"}
    raise ValueError(f"unknown allocator {name!r}; choose from {', '.join(ALLOCATORS)}")


# ------------------------------------------------------------------------------ worker


def _usage() -> tuple[float, float, float, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), r.ru_utime, r.ru_stime, r.ru_minflt


def measure(fn: Callable[[], object], min_time: float) -> dict:
    """First call, warm-up call, then calls lasting >= min_time: per-call figures."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    fn()
    warm = time.perf_counter() - t0
    calls = max(1, round(min_time / max(warm, 1e-9))) if min_time > 0 else 1
    before = _usage()
    for _ in range(calls):
        fn()
    after = _usage()
    wall, user, sys_, faults = (b - a for a, b in zip(before, after))
    return {
        "calls": calls,
        "first_s": first,
        "wall_s": wall / calls,
        "user_s": user / calls,
        "sys_s": sys_ / calls,
        "sys_share": sys_ / (user + sys_) if user + sys_ > 0 else 0.0,
        "minor_faults": faults / calls,
    }


def worker(min_time: float, batch: int = 256) -> dict:
    """The three variants in this process, with whatever allocator it was started with."""
    import dataclasses

    import jax
    import jax.numpy as jnp
    import numpy as np

    from experiments.bench.cases import E2E_METHODS, make_cases, setup_case
    from experiments.bench.floor import make_floor
    from ifa_jax import analysis

    case = dataclasses.replace(make_cases()[CASE], batch=batch)
    _, variables, probe, x, y = setup_case(case)
    floor = make_floor(probe)
    a_shape = probe.output_shapes(variables, x)[1][probe.layers[0]]
    state = [
        tuple(
            analysis.init(case.num_classes, a_shape[-1], tuple(a_shape[1:-1])) for _ in E2E_METHODS
        )
    ]
    valid = jnp.ones((batch,), bool)

    def step():
        state[0], per = analysis.analysis_step(
            state[0],
            probe,
            variables,
            x,
            y,
            valid,
            num_classes=case.num_classes,
            method=E2E_METHODS,
        )
        jax.block_until_ready((state[0], per))

    host = [(np.asarray(x), np.asarray(y))] * ANALYZE_BATCHES

    def analyze():
        analysis.analyze_methods(
            probe,
            variables,
            host,
            num_classes=case.num_classes,
            methods=E2E_METHODS,
            count="all",
            keep_importance=True,
            progress=False,
        )

    fns = {
        "floor": lambda: jax.block_until_ready(floor(variables, x, y)),
        "step": step,
        "analyze": analyze,
    }
    out = {v: measure(fns[v], min_time) for v in VARIANTS}
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["environment"] = {
        k: os.environ.get(k) for k in ("GLIBC_TUNABLES", "LD_PRELOAD", "XLA_FLAGS")
    }
    out["cpu_threads"] = len(os.sched_getaffinity(0))
    return out


def run_worker(env: dict[str, str], min_time: float, batch: int) -> dict:
    """One worker process with ``env``; its result."""
    # A small shell forks the worker: Linux carries a parent's peak RSS into a child it
    # forks and execs (see experiments.bench.memory), which would hide the worker's own.
    command = [
        sys.executable,
        "-m",
        "experiments.bench.allocator",
        "--worker",
        "--min-time",
        str(min_time),
    ]
    command += ["--batch", str(batch)]
    out = subprocess.run(
        ["sh", "-c", '"$0" "$@"; exit $?', *command],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    if out.returncode != 0:
        raise RuntimeError(f"allocator worker failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ section


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run_allocators(
    allocators: Sequence[str] = ALLOCATORS,
    *,
    rounds: int = 3,
    min_time: float = 1.0,
    batch: int = 256,
    log: Callable[[str], None] = print,
) -> dict:
    """Workers of each allocator in turn over ``rounds`` rounds; per variant and allocator:
    wall, sys share, faults per call, peak RSS, and the paired ratio to ``default``."""
    envs, skipped = {}, {}
    for name in dict.fromkeys(("default", *allocators)):
        env = allocator_environ(name)
        if env is None:
            skipped[name] = f"lib{PRELOAD[name]} not found"
        else:
            envs[name] = env
    runs: dict[str, list[dict]] = {name: [] for name in envs}
    for r in range(rounds):
        for name, env in envs.items():
            runs[name].append(run_worker(env, min_time, batch))
        log(f"  allocator round {r + 1}/{rounds} done")
    rows = []
    for v in VARIANTS:
        for name, results in runs.items():
            wall = [res[v]["wall_s"] for res in results]
            ratio = [d[v]["wall_s"] / res[v]["wall_s"] for d, res in zip(runs["default"], results)]
            rows.append(
                {
                    "variant": v,
                    "allocator": name,
                    "wall_ms": _spread([1000 * w for w in wall]),
                    "sys_share": _spread([res[v]["sys_share"] for res in results]),
                    "minor_faults_per_call": _spread([res[v]["minor_faults"] for res in results]),
                    "x_default": _spread(ratio),
                    "calls": [res[v]["calls"] for res in results],
                }
            )
    first = next(iter(runs.values()))[0]
    return {
        "case": f"MnistCNN 28x28x1 (random weights), layer relu2, batch {batch}",
        "variants": describe_variants(batch),
        "rounds": rounds,
        "min_time_s": min_time,
        "cpu_threads": first["cpu_threads"],
        "tunables": allocator_module().TUNABLES,
        "environments": {name: res[0]["environment"] for name, res in runs.items()},
        "peak_rss_mib": {
            name: _spread([r["peak_rss_mib"] for r in res]) for name, res in runs.items()
        },
        "skipped": skipped,
        "rows": rows,
    }


def format_allocators(res: dict) -> str:
    """The section's table: one row per variant and allocator."""
    lines = [
        f"== allocator: {res['case']}, {res['cpu_threads']} CPU threads; one worker process "
        f"per allocator, {res['rounds']} rounds in turn; medians [min, max] over rounds ==",
        f"  tuned = GLIBC_TUNABLES={res['tunables']}",
        f"{'variant':42}{'allocator':10}{'wall ms':>24}{'sys share':>11}{'faults/call':>13}"
        f"{'x default':>22}",
    ]
    described = res["variants"]
    for r in res["rows"]:
        w, q = r["wall_ms"], r["x_default"]
        wall = f"{w['median']:.1f} [{w['min']:.1f}, {w['max']:.1f}]"
        ratio = f"{q['median']:.2f} [{q['min']:.2f}, {q['max']:.2f}]"
        lines.append(
            f"{described[r['variant']]:42}{r['allocator']:10}{wall:>24}"
            f"{r['sys_share']['median']:>11.2f}{r['minor_faults_per_call']['median']:>13,.0f}"
            f"{ratio:>22}"
        )
    rss = ", ".join(f"{k} {v['median']:.0f}" for k, v in res["peak_rss_mib"].items())
    lines.append(f"  peak RSS of a worker (MiB, median): {rss}")
    for name, why in res["skipped"].items():
        lines.append(f"  {name}: not run ({why})")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help="measure in this process (internal)")
    p.add_argument("--min-time", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--allocators", default=",".join(ALLOCATORS))
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.min_time, args.batch)))
        return 0
    names = [a.strip() for a in args.allocators.split(",") if a.strip()]
    res = run_allocators(names, rounds=args.rounds, min_time=args.min_time, batch=args.batch)
    print(format_allocators(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())

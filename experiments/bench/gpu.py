"""The accelerator benchmark: one prepared script that runs unchanged on a GPU machine.

    python -m experiments.bench.gpu [--out DIR] [--sections scale,quick,resnet50,breakdown]
                                    [--smoke | --cpu] [--cases mnist,resnet50]
                                    [--variants floor_device,...] [--budget-s S]

Sections (each guarded: a failure is recorded and the next section still runs; ``scale``
alone by default, the others when named):

* ``scale`` (:mod:`~experiments.bench.scale`): the marginal cost per image and the fixed
  cost per pass of each variant (the floor on device data and fed from host batches, the
  4-method step alone, ``analyze_methods`` with 1 and 4 methods and in bfloat16, the jvp
  consistency at 1,000 classes), from whole passes at 3 dataset sizes timed interleaved
  over rounds: MnistCNN 28x28x1 at batch 256 up to 51,200 images and ResNet-50 224x224x3
  at batch 64 up to 10,240 images; ``--cpu`` (the default on a CPU backend) takes sizes
  and a ResNet that a 2-core CPU runs in minutes. It prints the issue's targets as met or
  not; on an accelerator it starts no new round after ``--budget-s`` (420 s; never fewer
  than one round) to keep the whole run within about 8 minutes;
* ``quick``: the benchmark's quick mode without the PyTorch peers: MnistCNN at batch 64
  and 256, ResNet-18 at 112x112 batch 32, the 3-D CNN at batch 2, and the end-to-end run on
  1,000 embedded MNIST digits;
* ``breakdown``: where ``analyze()``'s time goes beyond its jitted step, on the quick
  ResNet-18 case (112x112, batch 32, 8 host batches): the uploads alone, the steps alone on
  device inputs, the whole pass, and a profile of the host side of one warm pass;
* ``resnet50``: ResNet-50 at 224x224 with a 1,000-class head (random weights), end to
  end: one analysis pass over host batches (GradCAM, GradCAM++, XGradCAM and HiResCAM from
  one probe call per batch; also in bfloat16 where ``analyze`` has ``compute_dtype``), and
  the consistency evaluation of the linear methods by the jvp path (one forward
  linearised at ``stage4`` per batch, whatever the class count), against the floor (one
  jitted forward + vjp to ``stage4``) at the same batch, timed interleaved over rounds in
  this process; each as a fixed cost per pass and a marginal cost per image.

Writes ``gpu.json`` under ``--out`` after every section, and prints the figures.
``--smoke`` shrinks every case (a tiny bottleneck ResNet at 32x32) to check the script on
a CPU (under a minute per section on 2 cores, most of it compilation); its figures mean
nothing. ``--repeats`` sets the rounds of every section.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench import scale
from experiments.bench.cases import E2E_METHODS, randomise_batchnorm
from experiments.bench.floor import make_floor
from experiments.bench.jax_side import scale_of
from experiments.bench.timing import Entry, time_interleaved
from ifa_jax import analysis
from ifa_jax.consistency import LINEAR_METHODS, common_levels
from ifa_jax.probes import linen_probe
from ifa_jax.runner.models import ResNet, ResNet50

SECTIONS = ("scale", "quick", "resnet50", "breakdown")
DEFAULT_SECTIONS = ("scale",)  # the others take minutes more on a GPU: named when wanted
# The scale section's time on an accelerator (rounds are cut to fit, never below one): the
# whole run, with start-up and compilation, within about 8 minutes.
GPU_BUDGET_S = 420.0


def ratio_spread(a: Entry, b: Entry) -> dict:
    """a's throughput over b's, paired round by round: median, min and max."""
    n = min(len(a.times), len(b.times))
    r = [(a.images / a.times[i]) / (b.images / b.times[i]) for i in range(n)]
    if not r:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"median": statistics.median(r), "min": min(r), "max": max(r)}


def environment() -> dict:
    """Versions and the device this process runs on."""
    import flax

    dev = jax.devices()[0]
    return {
        "jax": jax.__version__,
        "flax": flax.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "device": getattr(dev, "device_kind", str(dev)),
        "device_count": jax.device_count(),
    }


def resnet50_end_to_end(
    *, batches: int, batch: int, repeats: int, smoke: bool, log: Callable[[str], None]
) -> dict:
    """ResNet-50 224x224 (1,000 classes): analysis pass and jvp consistency vs the floor.

    Each variant runs on a short pass (``batches // 4`` host batches) and a long one
    (``batches``), so its time splits into a fixed cost per pass (set-up, the final
    transfer and summary) and a marginal cost per batch: the slope, which is what a pass
    over a large dataset costs per image.
    """
    if smoke:
        model = ResNet(num_classes=10, width=4, stage_sizes=(1, 1, 1, 1), block="bottleneck")
        side, classes = 32, 10
    else:
        model, side, classes = ResNet50(num_classes=1000), 224, 1000
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(batch, side, side, 3)).astype(np.float32)
    y = rng.integers(0, classes, batch).astype(np.int32)
    variables = model.init(jax.random.key(0), jnp.asarray(x[:1]), train=False)
    variables = randomise_batchnorm(variables, jax.random.key(1))
    probe = linen_probe(model, "stage4", train=False)
    grid = probe.output_shapes(variables, jnp.asarray(x[:1]))[1]["stage4"]
    short, long = max(1, batches // 4), batches

    def analyse(n, **options):
        return analysis.analyze_methods(
            probe,
            variables,
            [(x, y)] * n,
            num_classes=classes,
            methods=E2E_METHODS,
            progress=False,
            count="all",
            **options,
        )

    first = analyse(1)
    scales = {
        m: scale_of(first[m].samples["cam_max"], first[m].samples["cam_min"])
        for m in LINEAR_METHODS
    }

    def consistency(n):
        return common_levels(probe, variables, [(x, y)] * n, scales=scales)

    variants = {"analysis": analyse, "consistency_jvp": consistency}
    if "compute_dtype" in inspect.signature(analysis.analyze).parameters:
        variants["analysis_bf16"] = lambda n: analyse(n, compute_dtype=jnp.bfloat16)
    floor_fn = make_floor(probe)
    xb, yb = jax.device_put(x), jax.device_put(y)
    entries = [
        Entry("floor", "floor", batch, lambda: jax.block_until_ready(floor_fn(variables, xb, yb)))
    ]
    for name, fn in variants.items():
        for n in (short, long):
            entries.append(Entry(f"{name} {n}", "ifa", n * batch, functools.partial(fn, n)))
    time_interleaved(entries, repeats=repeats, min_time=0.0)
    floor = entries[0]
    out = {
        "case": f"{'smoke ' if smoke else ''}ResNet-50 {side}x{side}x3, {classes} classes, "
        f"layer stage4 {tuple(grid[1:])}, batch {batch}, passes of {short} and {long} host "
        f"numpy batches, methods {', '.join(E2E_METHODS)}; consistency: jvp path for "
        f"{', '.join(LINEAR_METHODS)}; {repeats} interleaved rounds",
        "floor_images_per_s": floor.images_per_s,
    }
    log(f"  floor {floor.images_per_s:.1f} img/s (batch {batch})")
    for name in variants:
        a, b = (next(e for e in entries if e.name == f"{name} {n}") for n in (short, long))
        rounds = range(min(len(a.times), len(b.times), len(floor.times)))
        slope = [(b.times[i] - a.times[i]) / ((long - short) * batch) for i in rounds]
        fixed = [a.times[i] - short * batch * slope[i] for i in rounds]
        x_floor = [(floor.times[i] / batch) / slope[i] for i in rounds]
        out[name] = {
            "seconds_short_long": [a.seconds, b.seconds],
            "fixed_s_per_pass": statistics.median(fixed),
            "marginal_images_per_s": 1 / statistics.median(slope),
            "marginal_x_floor": {
                "median": statistics.median(x_floor),
                "min": min(x_floor),
                "max": max(x_floor),
            },
            "whole_long_pass_x_floor": ratio_spread(b, floor),
        }
        r, w = out[name]["marginal_x_floor"], out[name]["whole_long_pass_x_floor"]
        log(
            f"  {name:<16} fixed {out[name]['fixed_s_per_pass']:.3f} s/pass, marginal "
            f"{out[name]['marginal_images_per_s']:.0f} img/s = x floor {r['median']:.2f} "
            f"[{r['min']:.2f}, {r['max']:.2f}]; whole {long}-batch pass x floor "
            f"{w['median']:.2f}"
        )
    return out


def analyze_breakdown(*, smoke: bool, repeats: int, log: Callable[[str], None]) -> dict:
    """Uploads, steps on device inputs and the whole analyze() pass on the quick ResNet-18
    case, interleaved; then the top host functions of one warm pass (cProfile)."""
    import cProfile
    import io
    import pstats

    from experiments.bench.cases import make_cases, setup_case

    case = make_cases(quick=True)["resnet18"]
    if smoke:
        case = dataclasses.replace(case, input_shape=(32, 32, 3), batch=4)
    _, variables, probe, x, y = setup_case(case)
    hx, hy = np.asarray(x), np.asarray(y)
    valid = np.ones(len(hy), bool)
    n = 8
    batches = [(hx, hy)] * n
    options = {
        "num_classes": case.num_classes,
        "methods": E2E_METHODS,
        "progress": False,
        "count": "all",
    }
    placed = jax.device_put((hx, hy, valid))
    states = tuple(
        analysis.init(case.num_classes, *_channels_and_grid(probe, variables, x))
        for _ in E2E_METHODS
    )

    def uploads():
        return jax.block_until_ready([jax.device_put((hx, hy, valid)) for _ in range(n)])

    def steps():
        out = None
        for _ in range(n):
            out = analysis.analysis_step(
                states,
                probe,
                variables,
                *placed,
                num_classes=case.num_classes,
                method=E2E_METHODS,
                count="all",
            )
        return jax.block_until_ready(out)

    def whole():
        return analysis.analyze_methods(probe, variables, batches, **options)

    entries = [
        Entry("uploads", "ifa", n * case.batch, uploads),
        Entry("steps on device inputs", "ifa", n * case.batch, steps),
        Entry("analyze()", "ifa", n * case.batch, whole),
    ]
    time_interleaved(entries, repeats=repeats, min_time=0.0)
    out: dict = {"case": f"{case.describe()}, {n} host batches, methods {E2E_METHODS}"}
    for e in entries:
        out[e.name] = {"ms_per_batch": 1000 * e.seconds / n, "images_per_s": e.images_per_s}
        log(f"  {e.name:<24} {1000 * e.seconds / n:>8.2f} ms per batch")
    profile = cProfile.Profile()
    profile.enable()
    whole()
    profile.disable()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(20)
    out["profile_top20_tottime"] = text.getvalue()
    log(text.getvalue())
    return out


def _channels_and_grid(probe, variables, x) -> tuple[int, tuple[int, ...]]:
    shape = probe.output_shapes(variables, x)[1][probe.layers[0]]
    return shape[-1], tuple(shape[1:-1])


def _names(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument(
        "--sections",
        default=",".join(DEFAULT_SECTIONS),
        help=f"comma-separated, of {', '.join(SECTIONS)} (default: {', '.join(DEFAULT_SECTIONS)})",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny cases, for a CPU check")
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="scale: the CPU sizes (the default when JAX runs on a CPU, unless --smoke)",
    )
    parser.add_argument(
        "--cases", default="mnist,resnet50", help="scale: the cases (mnist, resnet50)"
    )
    parser.add_argument(
        "--variants",
        default=",".join(scale.VARIANTS),
        help="scale: the variants (the two floors always run)",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        help="scale: no new round once the section would run past this many seconds "
        f"(default {GPU_BUDGET_S:.0f} on an accelerator, none on a CPU)",
    )
    parser.add_argument(
        "--batches", type=int, help="ResNet-50: host batches in the long pass (default 16)"
    )
    parser.add_argument("--batch", type=int, help="ResNet-50 batch (default 64)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    sections = _names(args.sections)
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    for flag, given, known in (
        ("--cases", _names(args.cases), scale.CASES),
        ("--variants", _names(args.variants), scale.VARIANTS),
    ):
        wrong = sorted(set(given) - set(known))
        if wrong or not given:
            what = f"unknown {', '.join(wrong)}" if wrong else "none given"
            parser.error(f"{flag}: {what}; known: {', '.join(known)}")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "gpu.json")
    results: dict = {"environment": environment(), "argv": sys.argv[1:]}
    print(json.dumps(results["environment"]), flush=True)

    def save():
        with open(path + ".tmp", "w") as f:
            json.dump(results, f, indent=1, default=float)
        os.replace(path + ".tmp", path)

    def save_part(section: str, part: dict):
        results[section] = part
        save()

    for name in sections:
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            if name == "scale":
                cpu = args.cpu or jax.default_backend() == "cpu"
                mode = "smoke" if args.smoke else "cpu" if cpu else "gpu"
                budget = GPU_BUDGET_S if mode == "gpu" else float("inf")
                results[name] = scale.run_scale(
                    mode,
                    rounds=1 if args.smoke else args.repeats,
                    cases=_names(args.cases),
                    names=_names(args.variants),
                    budget_s=budget if args.budget_s is None else args.budget_s,
                    log=lambda s: print(s, flush=True),
                    save=functools.partial(save_part, name),
                )
            elif name == "breakdown":
                results[name] = analyze_breakdown(
                    smoke=args.smoke,
                    repeats=1 if args.smoke else args.repeats,
                    log=lambda s: print(s, flush=True),
                )
            elif name == "quick":
                from experiments.bench.suite import run_benchmark

                results[name] = run_benchmark(
                    ["mnist64"] if args.smoke else ["mnist64", "mnist256", "resnet18", "cnn3d"],
                    quick=True,
                    peers=False,
                    e2e_samples=64 if args.smoke else 1000,
                    repeats=1 if args.smoke else args.repeats,
                    batch=16 if args.smoke else None,
                    log=lambda s: print(s, flush=True),
                )
            else:
                results[name] = resnet50_end_to_end(
                    batches=args.batches or (4 if args.smoke else 16),
                    batch=args.batch or (4 if args.smoke else 64),
                    repeats=1 if args.smoke else args.repeats,
                    smoke=args.smoke,
                    log=lambda s: print(s, flush=True),
                )
        except Exception as err:  # keep the other sections' figures
            traceback.print_exc()
            results[name] = {"error": f"{type(err).__name__}: {err}"}
        results[name + "_wall_s"] = time.perf_counter() - t0
        save()
    print(f"wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Marginal and fixed cost of a pass over a dataset: each variant timed at several sizes.

A pass over n images costs ``fixed + n * marginal``: set-up, the last transfers and the
summary once per pass, then a cost per image. Each variant (the floor on device data,
the floor fed from host NumPy batches, ``analyze_methods`` with 1 and 4 methods and in
bfloat16, the 4-method step alone, the jvp consistency of 1,000 classes) runs whole passes
at every size, interleaved with the others over rounds in one process, and a least-squares
line through each round's times gives its fixed cost and its marginal cost per image.
The marginal cost is what a large dataset costs per image, and it is compared, round by
round, with the floor's (one jitted forward + vjp to the layer, :mod:`.floor`).

Host batches come from a small pool of distinct NumPy batches, cycled (every batch is
still copied to the device); ResNet-50 at 10,000 images would otherwise hold 6 GB of
float32 images on the host. Where ``analyze_methods`` takes ``preprocess``, the host
batches are uint8 images scaled inside the jitted step (:func:`to_unit`), and the floors
apply the same function in their jit, so every path moves the same bytes.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench.cases import E2E_METHODS, randomise_batchnorm
from experiments.bench.floor import make_floor
from ifa_jax import analysis, scale
from ifa_jax.consistency import LINEAR_METHODS, common_levels
from ifa_jax.probes import linen_probe
from ifa_jax.runner.models import MnistCNN, ResNet, ResNet50

MODES = ("gpu", "cpu", "smoke")
CASES = ("mnist", "resnet50")
POOL = 4  # distinct host batches, cycled
JVP_CLASSES = 1000
VARIANTS = (
    "floor_device",
    "floor_host",
    "step4_device",
    "analyze1",
    "analyze4",
    "analyze4_direct",
    "analyze4_bf16",
    "jvp1000",
)
TARGETS = {
    "analyze4_x_floor_host": 0.8,
    "step4_x_floor_device": 0.8,
    "fixed_x_step": 1.0,  # an upper bound: the fixed cost per pass below one step
    "jvp1000_x_floor_host": 0.7,
}


def to_unit(x: jax.Array) -> jax.Array:
    """uint8 images (B, *spatial, C) -> float32 in [0, 1]; the host batches' preprocess.

    Defined once at module level, so every pass hands the same function to the jit.
    """
    return x.astype(jnp.float32) / 255


def takes(fn: Callable, name: str) -> bool:
    """Whether ``fn`` has a parameter ``name`` (the script runs on library versions with
    and without ``preprocess``, ``prefetch`` and ``compute_dtype``)."""
    return name in inspect.signature(fn).parameters


@dataclasses.dataclass(frozen=True)
class ScaleCase:
    """One model and its pass sizes. sizes: images per pass, each a multiple of batch."""

    name: str
    label: str
    model: Callable[[int], Any]  # num_classes -> flax module
    input_shape: tuple[int, ...]  # (*spatial, C)
    layer: str
    num_classes: int
    batch: int
    sizes: tuple[int, ...]
    apply_kwargs: tuple[tuple[str, Any], ...] = ()


def scale_cases(mode: str) -> dict[str, ScaleCase]:
    """The MnistCNN and ResNet cases of a mode.

    gpu: MnistCNN 28x28x1 at batch 256 over 12,800-51,200 images; ResNet-50 224x224x3 at
    batch 64 over 2,560-10,240 images. cpu: the same MnistCNN over 1,024-4,096 images;
    the ResNet-50 layout at width 16 (a quarter of the channels) on 96x96x3 over 256-1,024
    images (its floor runs at about 440 images/s on 2 CPU cores). smoke: tiny models and
    passes of 1-3 batches, a check of the script (most of its time is compilation).

    Raises:
        ValueError: an unknown mode.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    eval_mode = (("train", False),)
    mnist = {"gpu": (256, (12_800, 25_600, 51_200)), "cpu": (256, (1_024, 2_048, 4_096))}
    if mode == "smoke":
        return {
            "mnist": ScaleCase(
                "mnist", "smoke MnistCNN", _mnist, (28, 28, 1), "relu2", 10, 8, (8, 16, 24)
            ),
            "resnet50": ScaleCase(
                "resnet50",
                "smoke bottleneck ResNet (width 4, 1-1-1-1)",
                _tiny_resnet,
                (32, 32, 3),
                "stage4",
                JVP_CLASSES,
                4,
                (4, 8, 12),
                eval_mode,
            ),
        }
    batch, sizes = mnist[mode]
    if mode == "gpu":
        resnet = ScaleCase(
            "resnet50", "ResNet-50", _resnet50, (224, 224, 3), "stage4", JVP_CLASSES, 64,
            (2_560, 5_120, 10_240), eval_mode,
        )  # fmt: skip
    else:
        resnet = ScaleCase(
            "resnet50", "ResNet-50 layout at width 16", _resnet50_w16, (96, 96, 3), "stage4",
            JVP_CLASSES, 64, (256, 512, 1_024), eval_mode,
        )  # fmt: skip
    return {
        "mnist": ScaleCase("mnist", "MnistCNN", _mnist, (28, 28, 1), "relu2", 10, batch, sizes),
        "resnet50": resnet,
    }


def _mnist(classes: int):
    return MnistCNN(num_classes=classes)


def _resnet50(classes: int):
    return ResNet50(num_classes=classes)


def _resnet50_w16(classes: int):
    return ResNet50(num_classes=classes, width=16)


def _tiny_resnet(classes: int):
    return ResNet(num_classes=classes, width=4, stage_sizes=(1, 1, 1, 1), block="bottleneck")


@dataclasses.dataclass
class Variant:
    """One timed pass. ``run(k)`` makes a whole pass over k batches and finishes it
    (block_until_ready or host results). floor_host / floor_device: the names of the floors
    its marginal cost is compared with (None: not compared)."""

    name: str
    what: str
    run: Callable[[int], Any]
    floor_host: str | None = "floor_host"
    floor_device: str | None = "floor_device"


def cycled(pool: Sequence[Any], k: int) -> Iterator[Any]:
    """k batches from the pool, in turn."""
    for i in range(k):
        yield pool[i % len(pool)]


def host_pool(
    case: ScaleCase, classes: int, *, uint8: bool, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """POOL distinct host batches (x (B, *input_shape) uint8 or float32 in [0, 1], y (B,)
    int32 labels below ``classes``)."""
    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(POOL):
        x = rng.integers(0, 256, (case.batch, *case.input_shape), dtype=np.uint8)
        y = rng.integers(0, classes, case.batch).astype(np.int32)
        pool.append((x if uint8 else (x / np.float32(255)).astype(np.float32), y))
    return pool


def floor_pass(floor: Callable, variables: Any, batches, *, put: bool) -> Any:
    """The floor over batches with no host sync between them; ``put``: each host batch
    goes through ``jax.device_put`` first. Blocks on the last result."""
    out = None
    for x, y in batches:
        if put:
            x, y = jax.device_put((x, y))
        out = floor(variables, x, y)
    return jax.block_until_ready(out)


def _floor_fn(probe, preprocess: Callable | None) -> Callable:
    floor = make_floor(probe)
    if preprocess is None:
        return floor
    return jax.jit(lambda variables, x, y: floor(variables, preprocess(x), y))


def _setup(case: ScaleCase, classes: int, seed: int):
    """(variables, probe) of the case's model with ``classes`` outputs, random weights."""
    model = case.model(classes)
    kwargs = dict(case.apply_kwargs)
    x = jnp.zeros((1, *case.input_shape), jnp.float32)
    # one compiled init instead of one small compilation per initializer's shape
    variables = jax.jit(functools.partial(model.init, **kwargs))(jax.random.key(seed), x)
    if "batch_stats" in variables:
        variables = randomise_batchnorm(variables, jax.random.key(seed + 1))
    return variables, linen_probe(model, case.layer, **kwargs)


def make_variants(case: ScaleCase, names: Sequence[str] = VARIANTS) -> list[Variant]:
    """The variants of a case that this library version supports (floors first).

    analyze_methods and common_levels get uint8 batches and ``preprocess=to_unit`` where
    they take ``preprocess``, float32 batches otherwise; each gets a host floor fed the
    same way (one more floor where common_levels differs from analyze_methods, and for
    MnistCNN a floor of the 1,000-class model that the jvp consistency runs).
    """
    uint8 = takes(analysis.analyze_methods, "preprocess")
    prep = to_unit if uint8 else None
    variables, probe = _setup(case, case.num_classes, 0)
    floor = _floor_fn(probe, prep)
    pool = host_pool(case, case.num_classes, uint8=uint8)
    placed = jax.device_put(pool)
    C = case.num_classes
    out = [
        Variant("floor_device", "floor, data on the device", lambda k: floor_pass(
            floor, variables, cycled(placed, k), put=False)),
        Variant("floor_host", "floor, host batches -> device_put", lambda k: floor_pass(
            floor, variables, cycled(pool, k), put=True)),
    ]  # fmt: skip

    options: dict[str, Any] = {"num_classes": C, "progress": False, "count": "all"}
    if uint8:
        options["preprocess"] = to_unit

    def analyse(methods, k, **more):
        return analysis.analyze_methods(
            probe, variables, cycled(pool, k), methods=methods, **options, **more
        )

    layer_shape = probe.output_shapes(variables, placed[0][0])[1][case.layer]
    step = jax.jit(
        lambda states, variables, x, y, valid: analysis.analysis_step(
            states, probe, variables, x if prep is None else prep(x), y, valid,
            num_classes=C, method=E2E_METHODS, count="all",
        )
    )  # fmt: skip
    valid = jax.device_put(np.ones(case.batch, bool))

    def step_pass(k):
        states = tuple(
            analysis.init(C, layer_shape[-1], tuple(layer_shape[1:-1])) for _ in E2E_METHODS
        )
        for x, y in cycled(placed, k):
            states, _ = step(states, variables, x, y, valid)
        return jax.block_until_ready(states)

    out += [
        Variant("step4_device", "analysis step, 4 methods, data on the device", step_pass,
                floor_host=None),
        Variant("analyze1", "analyze_methods, gradcam", lambda k: analyse(("gradcam",), k)),
        Variant("analyze4", "analyze_methods, 4 methods", lambda k: analyse(E2E_METHODS, k)),
    ]  # fmt: skip
    if uint8 and takes(analysis.analyze_methods, "prefetch"):
        # the input path before preprocess= and prefetch=: float32 over the bus, no thread
        floats = host_pool(case, C, uint8=False)
        out.append(
            Variant(
                "analyze4_direct",
                "analyze_methods, 4 methods, float32 host batches, prefetch=0",
                lambda k: analysis.analyze_methods(
                    probe, variables, cycled(floats, k), methods=E2E_METHODS,
                    num_classes=C, progress=False, count="all", prefetch=0,
                ),
            )
        )  # fmt: skip
    if takes(analysis.analyze_methods, "compute_dtype"):
        out.append(
            Variant(
                "analyze4_bf16",
                "analyze_methods, 4 methods, compute_dtype bfloat16",
                lambda k: analyse(E2E_METHODS, k, compute_dtype=jnp.bfloat16),
            )
        )
    if "jvp1000" in names:
        out += _jvp_variants(case, uint8=uint8, own=(variables, probe))
    # the floors stay: every other variant is compared with them
    return [v for v in out if v.name in names or v.name.startswith("floor")]


def _jvp_variants(case: ScaleCase, *, uint8: bool, own: tuple[Any, Any]) -> list[Variant]:
    """common_levels (the jvp path) for the linear methods at 1,000 classes, and the host
    floor it is compared with when that is not the case's own (another model or another
    input dtype). own: the case's (variables, probe), used when it has 1,000 classes."""
    jvp_uint8 = uint8 and takes(common_levels, "preprocess")
    prep = to_unit if jvp_uint8 else None
    own_model = case.num_classes == JVP_CLASSES
    variables, probe = own if own_model else _setup(case, JVP_CLASSES, 0)
    pool = host_pool(case, JVP_CLASSES, uint8=jvp_uint8, seed=1)
    scales = {m: scale.scale_from_bounds(0.0, 1.0) for m in LINEAR_METHODS}
    more: dict[str, Any] = {"preprocess": to_unit} if jvp_uint8 else {}
    out = []
    ref = "floor_host"
    if not own_model or jvp_uint8 != uint8:
        ref = "floor_host_jvp"
        floor = _floor_fn(probe, prep)
        what = f"floor of the {JVP_CLASSES}-class model" if not own_model else "floor"
        what += ", host batches" + (" (uint8)" if jvp_uint8 else " (float32)") + " -> device_put"
        out.append(
            Variant(ref, what, lambda k: floor_pass(floor, variables, cycled(pool, k), put=True),
                    floor_host=None, floor_device=None)
        )  # fmt: skip
    out.append(
        Variant(
            "jvp1000",
            f"common_levels (jvp path), {', '.join(LINEAR_METHODS)}, {JVP_CLASSES} classes",
            lambda k: common_levels(probe, variables, cycled(pool, k), scales=scales, **more),
            floor_host=ref,
            floor_device="floor_device" if own_model else None,
        )
    )
    return out


def fit_line(images: Sequence[float], seconds: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``seconds = fixed + images * slope``: (fixed s, slope s per image).

    Raises:
        ValueError: fewer than 2 distinct sizes.
    """
    n = np.asarray(images, float)
    if len(set(n.tolist())) < 2:
        raise ValueError(f"a line needs at least 2 distinct sizes; got {list(images)}")
    slope, fixed = np.polyfit(n, np.asarray(seconds, float), 1)
    return float(fixed), float(slope)


def time_sizes(
    variants: Sequence[Variant],
    batches: Sequence[int],
    *,
    rounds: int,
    deadline: float = math.inf,
    log: Callable[[str], None] = print,
) -> dict[str, dict]:
    """Each variant's first call (trace + compile) at the smallest size, a warm-up call at
    every size (a pass may compile something per size: ``analyze``'s last chunk of
    per-sample values is stacked at a length that depends on the batch count), then
    ``rounds`` rounds: every size (ascending in even rounds, descending in odd ones), every
    variant in turn at it. Rounds after the first stop when the last round's time would
    end past ``deadline`` (a time.perf_counter() value).

    Returns:
        ``{name: {'first_s', 'warm_s', 'seconds': [[s per size] per round]}}``, or
        ``{name: {'error': ...}}`` for a variant that raised.
    """
    out: dict[str, dict] = {}
    live = []
    for v in variants:
        try:
            warm = []
            for k in (batches[0], *batches):
                t0 = time.perf_counter()
                v.run(k)
                warm.append(time.perf_counter() - t0)
            out[v.name] = {"first_s": warm[0], "warm_s": warm[1], "seconds": []}
            live.append(v)
        except Exception as err:  # e.g. a variant this library version or device refuses
            out[v.name] = {"error": f"{type(err).__name__}: {err}".splitlines()[0]}
            log(f"  {v.name}: {out[v.name]['error']}")
    for r in range(rounds):
        t0 = time.perf_counter()
        order = range(len(batches)) if r % 2 == 0 else range(len(batches) - 1, -1, -1)
        row = {v.name: [math.nan] * len(batches) for v in live}
        for i in order:
            for v in live:
                t = time.perf_counter()
                v.run(batches[i])
                row[v.name][i] = time.perf_counter() - t
        for v in live:
            out[v.name]["seconds"].append(row[v.name])
        spent = time.perf_counter() - t0
        if r + 1 < rounds and time.perf_counter() + spent > deadline:
            log(f"  stopped after {r + 1} of {rounds} rounds: the time budget")
            break
    return out


def _spread(values: Sequence[float]) -> dict:
    ok = [v for v in values if math.isfinite(v)]
    if not ok:
        return {"median": math.nan, "min": math.nan, "max": math.nan}
    return {"median": statistics.median(ok), "min": min(ok), "max": max(ok)}


def _ratio(ref: float, slope: float) -> float:
    """The variant's throughput over the reference's: ref seconds per image / its own."""
    return ref / slope if slope > 0 and ref > 0 else math.nan


def summarize(
    case: ScaleCase, variants: Sequence[Variant], timed: dict[str, dict]
) -> dict[str, dict]:
    """Per variant: the fits of every round, the marginal throughput, the fixed cost per
    pass, its ratio to one step, and the marginal cost against the floors, paired by round.

    One step: the 4-method step's marginal time per batch (step4_device; analyze4's where
    the step was not timed).
    """
    images = list(case.sizes)
    fits = {
        name: [fit_line(images, secs) for secs in t["seconds"]]
        for name, t in timed.items()
        if "error" not in t and t["seconds"]
    }
    step_ref = "step4_device" if "step4_device" in fits else "analyze4"
    out: dict[str, dict] = {}
    for v in variants:
        t = timed.get(v.name, {"error": "not run"})
        if v.name not in fits:
            out[v.name] = {"what": v.what, "error": t.get("error", "no round")}
            continue
        fixed = [f for f, _ in fits[v.name]]
        slope = [s for _, s in fits[v.name]]
        med = statistics.median(slope)
        row: dict[str, Any] = {
            "what": v.what,
            "seconds_per_size": {
                str(n): statistics.median(s[i] for s in t["seconds"]) for i, n in enumerate(images)
            },
            "rounds": len(slope),
            "marginal_images_per_s": 1 / med if med > 0 else math.nan,
            "step_ms_per_batch": 1000 * med * case.batch,
            "fixed_s_per_pass": _spread(fixed),
            "compile_s": t["first_s"] - t["warm_s"],
        }
        if step_ref in fits:
            steps = [s * case.batch for _, s in fits[step_ref]]
            row["fixed_x_step"] = _spread(
                [f / s if s > 0 else math.nan for f, s in zip(fixed, steps)]
            )
        for key, ref in (("x_floor_host", v.floor_host), ("x_floor_device", v.floor_device)):
            if ref in fits and ref != v.name:
                row[key] = _spread([_ratio(r, s) for (_, r), s in zip(fits[ref], slope)])
                row[key]["floor"] = ref
        out[v.name] = row
    if "analyze4" in fits and "analyze4_direct" in fits:
        # the input pipeline's gain: the direct float32 path's time per image over analyze4's
        old, new = ([s for _, s in fits[n]] for n in ("analyze4_direct", "analyze4"))
        out["analyze4"]["x_direct"] = _spread([_ratio(a, b) for a, b in zip(old, new)])
    return out


def targets(rows: dict[str, dict]) -> dict[str, dict]:
    """The issue's targets for one case: each figure (a median over rounds), its bound,
    and whether it is met (None where the figure is missing)."""

    def fig(name, key):
        v = rows.get(name, {}).get(key)
        return v["median"] if isinstance(v, dict) else math.nan

    checks = {
        "analyze 4 methods, marginal x floor with the host path >= 0.8": (
            fig("analyze4", "x_floor_host"),
            ">=",
            TARGETS["analyze4_x_floor_host"],
        ),
        "step alone, 4 methods, marginal x floor on device data >= 0.8": (
            fig("step4_device", "x_floor_device"),
            ">=",
            TARGETS["step4_x_floor_device"],
        ),
        "analyze 1 method, fixed cost per pass / one step < 1": (
            fig("analyze1", "fixed_x_step"),
            "<",
            TARGETS["fixed_x_step"],
        ),
        "analyze 4 methods, fixed cost per pass / one step < 1": (
            fig("analyze4", "fixed_x_step"),
            "<",
            TARGETS["fixed_x_step"],
        ),
        f"jvp consistency, {JVP_CLASSES} classes, marginal x floor with the host path >= 0.7": (
            fig("jvp1000", "x_floor_host"),
            ">=",
            TARGETS["jvp1000_x_floor_host"],
        ),
    }
    out = {}
    for text, (value, op, bound) in checks.items():
        met = None
        if math.isfinite(value):
            met = value >= bound if op == ">=" else value < bound
        out[text] = {"value": value, "bound": bound, "met": met}
    return out


def run_case(
    case: ScaleCase,
    *,
    rounds: int,
    names: Sequence[str] = VARIANTS,
    deadline: float = math.inf,
    log: Callable[[str], None] = print,
) -> dict:
    """Build, time and summarize one case; prints its table."""
    if any(n % case.batch or n <= 0 for n in case.sizes) or len(set(case.sizes)) < 2:
        raise ValueError(
            f"{case.name}: sizes {case.sizes} must be at least 2 distinct positive multiples "
            f"of the batch {case.batch}"
        )
    uint8 = takes(analysis.analyze_methods, "preprocess")
    prefetch = inspect.signature(analysis.analyze_methods).parameters.get("prefetch")
    shape = "x".join(map(str, case.input_shape))
    desc = (
        f"{case.label} {shape}, {case.num_classes} classes, layer {case.layer}, batch "
        f"{case.batch}, passes of {', '.join(f'{n:,}' for n in case.sizes)} images, host "
        f"batches {'uint8 + preprocess' if uint8 else 'float32'} (a pool of {POOL}, cycled), "
        f"analyze prefetch {prefetch.default if prefetch is not None else 'n/a'}, random "
        f"weights; {rounds} interleaved rounds"
    )
    log(f"  {desc}")
    variants = make_variants(case, names)
    with warnings.catch_warnings():  # random labels: some of 1,000 classes are missing
        warnings.simplefilter("ignore", analysis.MissingClassesWarning)
        timed = time_sizes(
            variants,
            [n // case.batch for n in case.sizes],
            rounds=rounds,
            deadline=deadline,
            log=log,
        )
    rows = summarize(case, variants, timed)
    result = {"case": desc, "rows": rows, "targets": targets(rows)}
    log(format_case(result))
    return result


def _fmt(s: dict | None) -> str:
    if not s:
        return "-"
    return f"{s['median']:.2f} [{s['min']:.2f}, {s['max']:.2f}]"


def format_case(result: dict) -> str:
    """The case's table and its targets, as printed."""
    head = (
        f"  {'variant':<16} {'marginal img/s':>14} {'step ms/batch':>13} "
        f"{'fixed s/pass':>12} {'fixed/step':>18} {'x floor host':>18} {'x floor device':>18} "
        f"{'compile s':>9}"
    )
    lines = [head]
    for name, r in result["rows"].items():
        if "error" in r:
            lines.append(f"  {name:<16} error: {r['error']}")
            continue
        lines.append(
            f"  {name:<16} {r['marginal_images_per_s']:>14,.0f} {r['step_ms_per_batch']:>13.2f} "
            f"{r['fixed_s_per_pass']['median']:>12.3f} {_fmt(r.get('fixed_x_step')):>18} "
            f"{_fmt(r.get('x_floor_host')):>18} {_fmt(r.get('x_floor_device')):>18} "
            f"{r['compile_s']:>9.1f}"
        )
    gain = result["rows"].get("analyze4", {}).get("x_direct")
    if gain:
        lines.append(
            "  analyze4 (uint8 + preprocess, prefetch) over analyze4_direct (float32, "
            f"prefetch=0), marginal throughput: {_fmt(gain)}"
        )
    for text, t in result["targets"].items():
        state = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        lines.append(f"  target: {text}: {t['value']:.2f} -> {state}")
    return "\n".join(lines)


def run_scale(
    mode: str,
    *,
    rounds: int,
    cases: Sequence[str] = CASES,
    names: Sequence[str] = VARIANTS,
    budget_s: float = math.inf,
    log: Callable[[str], None] = print,
    save: Callable[[dict], None] | None = None,
) -> dict:
    """The scale section: every named case of the mode (:func:`scale_cases`), in turn.

    budget_s: rounds after a case's first stop once the section would run past it.
    save: called with the results so far after each case (a run cut short keeps them).

    Raises:
        ValueError: an unknown mode, case or variant name.
    """
    known = scale_cases(mode)
    bad = sorted(set(cases) - set(known)) + sorted(set(names) - set(VARIANTS))
    if bad:
        raise ValueError(
            f"unknown case or variant {', '.join(bad)}; cases: {', '.join(known)}, "
            f"variants: {', '.join(VARIANTS)}"
        )
    deadline = time.perf_counter() + budget_s
    out: dict = {
        "mode": mode,
        "budget_s": budget_s if math.isfinite(budget_s) else None,
        "targets": TARGETS,
    }
    for name in cases:
        log(f"-- {name}")
        out[name] = run_case(known[name], rounds=rounds, names=names, deadline=deadline, log=log)
        if save is not None:
            save(out)
    return out

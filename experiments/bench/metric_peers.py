"""The evaluation metrics of :mod:`ifa_jax.metrics` against their peers, on the same inputs.

Peers: pytorch-grad-cam 1.5.7 (``ROADCombined``, ``ARCC``) and Quantus 0.6.0
(``FaithfulnessCorrelation``, ``PixelFlipping``, ``PointingGame``,
``RelevanceMassAccuracy``, ``RelevanceRankAccuracy``, ``Sparseness``, ``Complexity``,
``MaxSensitivity``, ``AvgSensitivity``, ``RandomLogit``). The case: the benchmark's
MnistCNN (random weights, 28x28x1, layer ``relu2``, 10 classes) at batch 32 (quick: 8),
inputs of :func:`~experiments.bench.cases.setup_case`, each explained for its predicted
class (with random weights the GradCAM of a random label is often all zero); the peers get its torch
twin (:mod:`~experiments.bench.torch_twins`, logits checked). Every metric of both sides
evaluates the same maps: ifa_jax's GradCAM of the case, scaled as pytorch-grad-cam scales
its CAMs (:func:`ifa_jax.metrics.cam_explainer`, equal to pytorch-grad-cam's GradCAM in
the golden tests); the localisation metrics get blob masks (one random rectangle per
image). Each metric's options, the same on both sides:

* ROAD combined: percentiles 10 ... 90, the peer's default imputation noise (0.01), the
  logit of the class (``ClassifierOutputTarget``); ARCC: the same target, GradCAM of
  ``relu2`` as the method it reruns on the masked inputs (ifa_jax: ``cam_explainer``);
* faithfulness correlation: 100 runs of 224 cells, 'black', logits; pixel-flipping: 28
  cells a step, 'black', probabilities (Quantus' ``softmax=True`` default);
* max- and average-sensitivity: ``nr_samples`` 10 (Quantus' default is 200; fewer to keep
  it short), radius 0.2; random logit: 10 classes. The explanation function is GradCAM of
  ``relu2`` on the input grid: for Quantus pytorch-grad-cam's ``GradCAM`` of the torch
  twin, for ifa_jax ``cam_explainer`` of the Flax model under ``jax.jit``.

Each metric's ifa_jax call and its peer's calls (one per thread count: torch's threads
and, through threadpoolctl where installed, NumPy's BLAS threads) are timed interleaved
(:func:`~experiments.bench.timing.time_interleaved`), and the speed-up is the peer's
seconds per image over ifa_jax's in the same round: median [min, max] over rounds, for the
peer's faster thread count. A missing peer (no torch, pytorch-grad-cam or Quantus) is
reported, and ifa_jax's rows are still timed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import io
import os
import statistics
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench.cases import make_cases, setup_case
from experiments.bench.report import versions
from experiments.bench.timing import Entry, time_interleaved, time_ratios
from ifa_jax import metrics

CASE = "mnist64"
PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
FC_RUNS, FC_SUBSET, PF_STEP = 100, 224, 28
RADIUS = 0.2
SAMPLES = 10  # sensitivity's perturbations per image (Quantus' default: 200)
# (metric, peer package, peer call): the rows, in order
METRICS = (
    ("road_combined", "grad-cam", "ROADCombined(10..90)"),
    ("arcc", "grad-cam", "ARCC(GradCAM)"),
    ("faithfulness_correlation", "quantus", "FaithfulnessCorrelation(100, 224)"),
    ("pixel_flipping", "quantus", "PixelFlipping(28)"),
    ("pointing_game", "quantus", "PointingGame"),
    ("relevance_mass_accuracy", "quantus", "RelevanceMassAccuracy"),
    ("relevance_rank_accuracy", "quantus", "RelevanceRankAccuracy"),
    ("sparseness", "quantus", "Sparseness"),
    ("complexity", "quantus", "Complexity"),
    ("max_sensitivity", "quantus", f"MaxSensitivity({SAMPLES})"),
    ("avg_sensitivity", "quantus", f"AvgSensitivity({SAMPLES})"),
    ("random_logit", "quantus", "RandomLogit(10)"),
)


def metric_peer_versions() -> dict[str, Any]:
    """For each peer ('grad-cam', 'quantus'): its versions, or why it cannot be used."""
    out: dict[str, Any] = {}
    try:
        import torch
    except Exception as err:  # ImportError, or a broken build
        reason = f"torch: {type(err).__name__}: {err}"
        return {"grad-cam": {"missing": reason}, "quantus": {"missing": reason}}
    for package, module in (("grad-cam", "pytorch_grad_cam"), ("quantus", "quantus")):
        try:
            with (
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
            ):
                __import__(module)
            out[package] = {
                package: importlib.metadata.version(package),
                "torch": torch.__version__,
            }
        except Exception as err:
            out[package] = {"missing": f"{module}: {type(err).__name__}: {err}"}
    return out


def blob_masks(batch: int, side: tuple[int, int], seed: int = 0) -> np.ndarray:
    """(B, H, W) bool: one random rectangle of 4 to 11 cells a side per image."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((batch, *side), bool)
    for b in range(batch):
        h, w = rng.integers(4, 12, size=2)
        r, c = rng.integers(0, side[0] - h), rng.integers(0, side[1] - w)
        masks[b, r : r + h, c : c + w] = True
    return masks


def _done(out: Any) -> Any:
    return jax.block_until_ready(out)


def ifa_calls(variables, probe, x, y, sal, masks, num_classes: int) -> dict[str, Callable]:
    """One call per metric, each ending with its results on the host or ready."""
    logit = metrics.model_scorer(probe, variables, "logit")
    prob = metrics.model_scorer(probe, variables, "probability")
    explain_fn = jax.jit(metrics.cam_explainer(probe, variables, "gradcam"))
    key = jax.random.key(0)
    return {
        "road_combined": lambda: _done(
            metrics.road(logit, x, sal, y, key=key, percentiles=PERCENTILES).combined
        ),
        "arcc": lambda: _done(metrics.arcc(logit, explain_fn, x, sal, y, key=key).arcc),
        "faithfulness_correlation": lambda: (
            metrics.faithfulness_correlation(
                logit, x, sal, y, key=key, nr_runs=FC_RUNS, subset_size=FC_SUBSET
            ).correlation
        ),
        "pixel_flipping": lambda: _done(
            metrics.pixel_flipping(prob, x, sal, y, cells_per_step=PF_STEP).curve
        ),
        "pointing_game": lambda: metrics.pointing_game(sal, masks).tolist(),
        "relevance_mass_accuracy": lambda: metrics.relevance_mass_accuracy(sal, masks).tolist(),
        "relevance_rank_accuracy": lambda: metrics.relevance_rank_accuracy(sal, masks).tolist(),
        "sparseness": lambda: metrics.sparseness(sal).tolist(),
        "complexity": lambda: metrics.complexity(sal).tolist(),
        "max_sensitivity": lambda: metrics.max_sensitivity(
            explain_fn, x, y, key=key, radius=RADIUS, n_samples=SAMPLES
        ).tolist(),
        "avg_sensitivity": lambda: metrics.average_sensitivity(
            explain_fn, x, y, key=key, radius=RADIUS, n_samples=SAMPLES
        ).tolist(),
        "random_logit": lambda: metrics.random_logit(
            explain_fn, x, y, num_classes, key=key
        ).tolist(),
    }


@contextlib.contextmanager
def peer_threads(n: int):
    """torch's intra-op threads and (where threadpoolctl is installed) BLAS threads = n."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            yield
        else:
            with threadpool_limits(limits=n):
                yield
    finally:
        torch.set_num_threads(before)


def peer_calls(
    case, model, variables, x, y, sal, masks, available: set[str]
) -> tuple[dict[str, Callable], dict[str, Any]]:
    """The peers' calls on the torch twin, for the packages in ``available``."""
    import torch

    from experiments.bench.torch_twins import (
        check_logits,
        to_torch_input,
        torch_twin,
        torch_twin_layer,
    )

    tm = torch_twin(case, model, variables).eval()
    info = {"logits_max_abs_diff": check_logits(case, model, variables, tm, x[:8])}
    layer = torch_twin_layer(case, tm)
    xt = to_torch_input(x)
    labels = np.asarray(y)
    sal_np = np.asarray(sal, np.float32)
    calls: dict[str, Callable] = {}
    if "grad-cam" in available:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.metrics.arcc import ARCC
        from pytorch_grad_cam.metrics.road import ROADCombined
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        targets = [ClassifierOutputTarget(int(c)) for c in labels]
        base = GradCAM(model=tm, target_layers=[layer])
        road = ROADCombined(percentiles=list(PERCENTILES))
        arcc = ARCC(base_method=base)
        calls["road_combined"] = lambda: road(xt, sal_np, targets, tm)
        calls["arcc"] = lambda: arcc(xt, sal_np, targets, tm)
    if "quantus" in available:
        import quantus
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        x_cf = np.moveaxis(np.asarray(x), -1, 1).astype(np.float32)
        a = sal_np[:, None]
        s = masks[:, None]
        explainer = GradCAM(model=tm, target_layers=[layer])

        def explain_func(model, inputs, targets, **kwargs):
            t = torch.from_numpy(np.asarray(inputs, np.float32))
            cls = [ClassifierOutputTarget(int(c)) for c in np.asarray(targets).reshape(-1)]
            return explainer(input_tensor=t, targets=cls)[:, None]

        quiet = {"disable_warnings": True}
        batch = {"batch_size": len(labels)}
        fc = quantus.FaithfulnessCorrelation(
            nr_runs=FC_RUNS, subset_size=FC_SUBSET, return_aggregate=False, **quiet
        )
        pf = quantus.PixelFlipping(features_in_step=PF_STEP, **quiet)
        model_based = {"faithfulness_correlation": fc, "pixel_flipping": pf}
        for name, metric in model_based.items():
            calls[name] = lambda m=metric: m(
                model=tm, x_batch=x_cf, y_batch=labels, a_batch=a, channel_first=True, **batch
            )
        for name, cls in (
            ("pointing_game", quantus.PointingGame),
            ("relevance_mass_accuracy", quantus.RelevanceMassAccuracy),
            ("relevance_rank_accuracy", quantus.RelevanceRankAccuracy),
            ("sparseness", quantus.Sparseness),
            ("complexity", quantus.Complexity),
        ):
            metric = cls(**quiet)
            calls[name] = lambda m=metric: m(
                model=None, x_batch=x_cf, y_batch=labels, a_batch=a.copy(), s_batch=s, **batch
            )
        explained = {
            "max_sensitivity": quantus.MaxSensitivity(
                nr_samples=SAMPLES, lower_bound=RADIUS, **quiet
            ),
            "avg_sensitivity": quantus.AvgSensitivity(
                nr_samples=SAMPLES, lower_bound=RADIUS, **quiet
            ),
            "random_logit": quantus.RandomLogit(num_classes=case.num_classes, **quiet),
        }
        for name, metric in explained.items():
            calls[name] = lambda m=metric: m(
                model=tm,
                x_batch=x_cf,
                y_batch=labels,
                explain_func=explain_func,
                channel_first=True,
                **batch,
            )
    return calls, info


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _speedup_row(ifa: Entry, peer_entries: Sequence[tuple[int, Entry]]) -> dict[str, Any]:
    """Each thread count's seconds per image; at the faster one, the speed-up: the peer's
    seconds per image over ifa_jax's in each round, median [min, max]."""
    row: dict[str, Any] = {"peer_threads": {}}
    for t, e in peer_entries:
        row["peer_threads"][t] = {"error": e.error}
        if e.error is None:
            row["peer_threads"][t].update(s_per_image=e.seconds / e.images, seconds_all=e.times)
    live = [(t, e) for t, e in peer_entries if e.error is None]
    if not live:
        row["peer_error"] = peer_entries[0][1].error
        return row
    t, best = min(live, key=lambda te: te[1].seconds)
    row.update(peer_best_threads=t, peer_s_per_image=best.seconds / best.images)
    if ifa.error is None:
        ratios = time_ratios(best, ifa)
        row.update(speedup=_spread(ratios), speedup_all=ratios)
    return row


def run_metric_peers(
    *,
    quick: bool = False,
    batch: int | None = None,
    repeats: int | None = None,
    min_time: float | None = None,
    threads: Sequence[int] = (1, 2),
    peers: bool = True,
    names: Sequence[str] | None = None,
) -> dict:
    """Time each metric (or ``names``) and its peer, and return the section's figures.

    ``batch`` overrides the case's batch (default 32, quick 8); ``repeats`` rounds
    (default 5, quick 3); ``min_time`` seconds per measurement (default 0.3, quick
    0.05); ``threads``: the peers' thread counts; ``peers`` False times ifa_jax only.
    """
    os.environ.setdefault("TQDM_DISABLE", "1")
    case = make_cases(quick)[CASE]
    case = dataclasses.replace(case, batch=batch or (8 if quick else 32))
    repeats = repeats if repeats is not None else (3 if quick else 5)
    min_time = min_time if min_time is not None else (0.05 if quick else 0.3)
    chosen = [m for m in METRICS if names is None or m[0] in names]
    model, variables, probe, x, _ = setup_case(case)
    # the predicted classes: with random weights a random label's GradCAM is often all zero
    y = jnp.argmax(model.apply(variables, x), axis=-1)
    sal = jax.jit(metrics.cam_explainer(probe, variables, "gradcam"))(x, y)
    masks = blob_masks(case.batch, case.input_shape[:2])
    ours = ifa_calls(variables, probe, x, y, sal, masks, case.num_classes)
    peer_info = (
        metric_peer_versions()
        if peers
        else {p: {"missing": "disabled (--no-peers)"} for p in ("grad-cam", "quantus")}
    )
    available = {p for p, v in peer_info.items() if isinstance(v, dict) and "missing" not in v}
    theirs: dict[str, Callable] = {}
    check: dict[str, Any] = {}
    if available:
        theirs, check = peer_calls(case, model, variables, x, y, sal, masks, available)
    entries, pairs = [], []
    for name, package, call in chosen:
        ifa = Entry(f"ifa {name}", "ifa", case.batch, ours[name])
        entries.append(ifa)
        peer_entries = []
        if name in theirs:
            for t in threads:

                def run(fn=theirs[name], t=t):
                    with peer_threads(t), warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # the peers' NumPy warnings
                        return fn()

                e = Entry(f"{package} {call} [{t}t]", "peer", case.batch, run, ifa.name)
                peer_entries.append((t, e))
                entries.append(e)
        pairs.append((name, package, call, ifa, peer_entries))
    time_interleaved(entries, repeats=repeats, min_time=min_time)
    rows = []
    for name, package, call, ifa, peer_entries in pairs:
        row: dict[str, Any] = {"metric": name, "peer": f"{package} {call}", "error": ifa.error}
        if ifa.error is None:
            row.update(
                ifa_s_per_image=ifa.seconds / ifa.images,
                ifa_seconds_all=ifa.times,
                ifa_calls_per_round=ifa.number,
                ifa_first_call_s=ifa.first_s,
            )
        if not peer_entries:
            row["peer_error"] = peer_info[package].get("missing", "not run")
        else:
            row.update(_speedup_row(ifa, peer_entries))
        rows.append(row)
    jax_threads = versions()["jax_cpu_threads"]
    return {
        "case": case.name,
        "description": (
            f"{case.describe()}, random weights, GradCAM maps of relu2, ifa_jax on "
            f"{jax_threads} CPU threads, peers at {','.join(map(str, threads))} threads, "
            f"{'quick' if quick else 'full'}; sensitivity nr_samples {SAMPLES}"
        ),
        "batch": case.batch,
        "quick": quick,
        "repeats": repeats,
        "min_time_s": min_time,
        "threads": list(threads),
        "peers": peer_info,
        "peer_check": check,
        "rows": rows,
    }


def format_metric_peers(res: dict) -> str:
    """One row per metric: ifa_jax's and the peer's seconds per image, the speed-up."""
    lines = [
        f"== metrics against their peers: {res['description']}; {res['repeats']} rounds "
        f"(>= {res['min_time_s']:g} s per measurement); "
        "speed-up = peer / ifa_jax seconds per image in the same round, the peer at its "
        "faster thread count: median [min, max] =="
    ]
    for package, info in res["peers"].items():
        if isinstance(info, dict) and "missing" in info:
            lines.append(f"  peer {package} missing: {info['missing']}")
    lines.append(
        f"{'metric':26}{'peer':40}{'ifa ms/img':>11}{'peer ms/img':>12}{'thr':>4}"
        f"{'speed-up':>10}{'[min, max]':>18}"
    )
    for r in res["rows"]:
        head = f"{r['metric']:26}{r['peer']:40}"
        if r["error"]:
            lines.append(f"{head}  ifa_jax failed: {r['error'][:70]}")
            continue
        ours = f"{1000 * r['ifa_s_per_image']:>11.3f}"
        if "speedup" not in r:
            lines.append(f"{head}{ours}  peer not run: {str(r.get('peer_error'))[:60]}")
            continue
        q = r["speedup"]
        spread = f"[{q['min']:.3g}, {q['max']:.3g}]"
        lines.append(
            f"{head}{ours}{1000 * r['peer_s_per_image']:>12.3f}{r['peer_best_threads']:>4}"
            f"{q['median']:>10.3g}{spread:>18}"
        )
    return "\n".join(lines)

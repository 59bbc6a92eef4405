"""The report: versions of the stack, the printed tables, the JSON file."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import os
import platform
from typing import Any

import jax
import numpy as np


def versions() -> dict[str, Any]:
    out: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
    }
    for pkg in ("jax", "jaxlib", "flax", "numpy"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[pkg] = importlib.metadata.version(pkg)
    out["backend"] = jax.default_backend()
    out["devices"] = [str(d) for d in jax.devices()]
    out["cpu_count"] = os.cpu_count()
    # XLA:CPU sizes its intra-op pool to the schedulable cores.
    out["jax_cpu_threads"] = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    )
    out["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    return out


def format_header(out: dict) -> list[str]:
    """The two lines that open the report: versions and peers, repeats."""
    v = out["versions"]
    return [
        f"jax {v.get('jax')} ({v['backend']}, {v['jax_cpu_threads']} CPU threads), flax "
        f"{v.get('flax')}, numpy {v.get('numpy')}, python {v['python']}; peers: "
        + (", ".join(f"{k} {val}" for k, val in out["peers"].items())),
        f"repeats {out['repeats']} (median, interleaved), >= {out['min_time_s']:.2f} s per "
        "measurement" + (" [quick]" if out["quick"] else ""),
    ]


def format_case(res: dict) -> str:
    lines = [f"== {res['case']}: {res['description']}, A {tuple(res['layer_shape'])} =="]
    lines.append(
        f"{'':44}{'img/s':>10}{'ms/call':>10}{'x floor':>9}{'speedup':>9}{'compile s':>11}"
    )
    for r in res["rows"]:
        if r["error"]:
            lines.append(f"{r['name']:44}  not run: {r['error'][:70]}")
            continue
        speed = f"{r['ifa_speedup']:.2f}x" if "ifa_speedup" in r else ""
        comp = f"{r['compile_s']:.2f}" if r["group"] in ("floor", "forward", "ifa") else ""
        lines.append(
            f"{r['name']:44}{r['images_per_s']:>10.1f}"
            f"{1000 * r['seconds_median']:>10.1f}{r['x_floor']:>9.3f}{speed:>9}"
            f"{comp:>11}"
        )
    for b in res.get("speedup_vs_best_peer", {}).values():
        lines.append(
            f"  {b['ifa_row']} vs {b['peer_row']} (fastest thread count): {b['ifa_speedup']:.2f}x"
        )
    if "scorecam_forward_bound_images_per_s" in res:
        got = ", ".join(
            f"{r['name'].split(' (')[0]} {r['x_scorecam_bound']:.2f}"
            for r in res["rows"]
            if "x_scorecam_bound" in r
        )
        lines.append(
            f"  ScoreCAM bound (forward img/s / K={res['layer_shape'][-1]}): "
            f"{res['scorecam_forward_bound_images_per_s']:.1f} img/s; share of it "
            f"reached: {got}"
        )
    if "peer_check" in res:
        lines.append(
            f"  torch twin logits vs Flax: max |diff| "
            f"{res['peer_check']['logits_max_abs_diff']:.2e} (assert_allclose passed)"
        )
    if "peer_error" in res:
        lines.append(f"  peers: {res['peer_error']}")
    return "\n".join(lines)


def format_e2e(e: dict) -> str:
    p = e["model_passes"]
    return "\n".join(
        [
            f"== end to end: MnistCNN relu2, {e['samples']} embedded-MNIST digits, batch "
            f"{e['batch']}, methods {', '.join(e['methods'])}, {e['classes']} classes ==",
            f"  seconds per 1,000 images: warm {e['warm_s_per_1k']:.3f} (analysis "
            f"{e['analysis_s_per_1k']:.3f}, scale {e['scale_s_per_1k']:.4f}, consistency "
            f"{e['consistency_s_per_1k']:.3f}); cold (with compiles) {e['cold_s_per_1k']:.3f}",
            f"  forward passes over the data: {p['analysis']:g} analysis + "
            f"{p['evaluation']:g} evaluation = {p['total']:g} (the evaluation batches one vjp "
            f"per class on its single forward)",
            f"  floor {e['floor_images_per_s']:.0f} img/s -> that many forward + vjp passes at "
            f"the floor: {e['floor_bound_s_per_1k']:.3f} s per 1,000 "
            f"({e['warm_x_floor_bound']:.2f} of the warm time)",
        ]
    )


def format_memory(rows: list[dict]) -> str:
    lines = ["== memory: peak RSS of the analysis pass (fresh subprocess per size) =="]
    for r in rows:
        lines.append(
            f"  {r['samples']:>7} samples: {r['peak_rss_mib']:.1f} MiB (x"
            f"{r['ratio_to_first']:.3f}), {r['images_per_s']:.0f} img/s"
        )
    return "\n".join(lines)


def format_methods(res: dict) -> str:
    """The methods section: one row per method, its ratio to GradCAM within each round."""
    lines = [
        f"== methods: {res['description']}; {res['repeats']} rounds ({res['slow_rounds']} "
        f"for a warm-up call >= {res['slow_s']:g} s), ratio = method / {res['reference']} "
        "seconds per image in the same round: median [min, max] ==",
        f"{'method':20}{'kind':8}{'model, layers':38}{'batch':>6}{'rounds':>7}"
        f"{'ms/batch':>11}{'ratio':>10}{'[min, max]':>22}{'img/s':>10}",
    ]
    for r in res["rows"]:
        where = f"{r['model']} {','.join(r['layers'])}"
        head = f"{r['method']:20}{r['kind']:8}{where:38}{r['batch']:>6}"
        if r["error"]:
            lines.append(f"{head}  not run: {r['error'][:70]}")
            continue
        q = r["ratio_to_gradcam"]
        spread = f"[{q['min']:.2f}, {q['max']:.2f}]"
        lines.append(
            f"{head}{r['rounds']:>7}{r['ms_per_batch_median']:>11.1f}{q['median']:>10.2f}"
            f"{spread:>22}{r['images_per_s']:>10.1f}"
        )
    return "\n".join(lines)


def jsonable(obj):
    """``obj`` with tuples as lists, numpy scalars as Python's and non-finite floats None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_json(out: dict, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "w") as f:
        json.dump(jsonable(out), f, indent=1)

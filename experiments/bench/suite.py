"""One case (its rows, ratios and bounds) and the whole run (cases, end to end, memory)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from experiments.bench.allocator import format_allocators, run_allocators
from experiments.bench.cases import CASE_NAMES, Case, make_cases, setup_case
from experiments.bench.end_to_end import end_to_end
from experiments.bench.jax_side import ifa_entries
from experiments.bench.memory import memory
from experiments.bench.methods import run_methods
from experiments.bench.metric_peers import format_metric_peers, run_metric_peers
from experiments.bench.peers import peer_entries, peer_versions
from experiments.bench.report import (
    format_case,
    format_e2e,
    format_header,
    format_memory,
    format_methods,
    versions,
    write_json,
)
from experiments.bench.timing import Entry, paired_ratio, time_interleaved


def _row(e: Entry, floor: Entry, by_name: dict[str, Entry]) -> dict:
    row = {"name": e.name, "group": e.group, "images": e.images, "error": e.error}
    if e.error is None:
        row.update(
            {
                "seconds_median": e.seconds,
                "seconds_all": e.times,
                "calls_per_repeat": e.number,
                "images_per_s": e.images_per_s,
                "first_call_s": e.first_s,
                "compile_s": max(e.first_s - e.seconds, 0.0),
                "x_floor": paired_ratio(e, floor),
            }
        )
        ref = by_name.get(e.compare_to) if e.compare_to else None
        if ref is not None and ref.error is None:
            row["ifa_row"] = ref.name
            row["ifa_speedup"] = paired_ratio(ref, e)
    return row


def _best_peers(rows: list[dict]) -> dict[str, dict]:
    """The fastest torch thread count of each peer, against its ifa_jax row."""
    best: dict[str, dict] = {}
    for r in rows:
        if r["group"] != "peer" or "ifa_speedup" not in r:
            continue
        key = r["name"].split(" [")[0]
        if key not in best or r["images_per_s"] > best[key]["peer_images_per_s"]:
            best[key] = {
                "peer_row": r["name"],
                "peer_images_per_s": r["images_per_s"],
                "ifa_row": r["ifa_row"],
                "ifa_speedup": r["ifa_speedup"],
            }
    return best


def run_case(
    case: Case,
    *,
    repeats: int,
    min_time: float,
    peers: bool,
    torch_threads: Sequence[int] = (2,),
    log: Callable[[str], None] = print,
) -> dict:
    model, variables, probe, x, y = setup_case(case)
    A_shape = probe.output_shapes(variables, x)[1][probe.layers[0]]
    entries = ifa_entries(case, variables, probe, x, y)
    result: dict[str, Any] = {
        "case": case.name,
        "description": case.describe(),
        "input_shape": list(case.input_shape),
        "batch": case.batch,
        "layer": case.layer,
        "layer_shape": list(A_shape),
        "scorecam_batch": min(case.scorecam_batch, case.batch),
    }
    if peers:
        try:
            more, info = peer_entries(case, model, variables, x, y, torch_threads)
            entries += more
            result["peer_check"] = info
        except AssertionError:
            raise
        except Exception as err:
            result["peer_error"] = f"{type(err).__name__}: {err}"
            log(f"  peers unavailable for {case.name}: {result['peer_error']}")
    time_interleaved(entries, repeats=repeats, min_time=min_time)
    floor = next(e for e in entries if e.group == "floor")
    by_name = {e.name: e for e in entries}
    rows = [_row(e, floor, by_name) for e in entries]
    result["rows"] = rows
    fwd = next((e for e in entries if e.group == "forward" and e.error is None), None)
    if fwd is not None:
        # ScoreCAM runs K forward passes per image: its throughput is at most fwd / K.
        result["scorecam_forward_bound_images_per_s"] = fwd.images_per_s / A_shape[-1]
        for r, e in zip(rows, entries):
            if "scorecam" in r["name"].lower() and r["error"] is None:
                r["x_scorecam_bound"] = paired_ratio(e, fwd) * A_shape[-1]
    result["speedup_vs_best_peer"] = _best_peers(rows)
    return result


def run_benchmark(
    cases: Sequence[str] = CASE_NAMES,
    *,
    quick: bool = False,
    repeats: int | None = None,
    min_time: float | None = None,
    peers: bool = True,
    e2e: bool = True,
    e2e_samples: int | None = None,
    memory_sizes: Sequence[int] | None = None,
    json_path: str | None = None,
    batch: int | None = None,
    scorecam_batch: int | None = None,
    torch_threads: Sequence[int] | None = None,
    methods: bool | Sequence[str] = False,
    allocators: Sequence[str] | None = None,
    allocator_rounds: int | None = None,
    metric_peers: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Run the benchmark and return (and optionally write) its results as a dict.

    ``batch`` / ``scorecam_batch`` override every case's (for tests); ``memory_sizes``
    None skips the memory benchmark. ``torch_threads``: the torch thread counts to time
    the peers with (default: JAX's CPU thread count only). ``methods``: also time every
    registered CAM method against GradCAM (:mod:`experiments.bench.methods`; a sequence
    names the methods; ``batch`` overrides its batch too). ``allocators``: also time the
    floor, the analysis step and ``analyze()`` with each allocator named, one process each
    (:mod:`experiments.bench.allocator`; None skips it), over ``allocator_rounds`` rounds
    (default 3, quick 2; ``batch`` overrides its batch too). ``metric_peers``: also time
    each metric of :mod:`ifa_jax.metrics` against pytorch-grad-cam's and Quantus'
    (:mod:`experiments.bench.metric_peers`, with its own defaults; ``batch``,
    ``repeats``, ``min_time`` and ``torch_threads`` apply when given, the last defaulting
    to 1 and 2; ``peers`` False times ifa_jax only).
    """
    asked = {"repeats": repeats, "min_time": min_time}  # the metrics section's defaults differ
    repeats = repeats if repeats is not None else (3 if quick else 5)
    min_time = min_time if min_time is not None else (0.2 if quick else 0.4)
    table = make_cases(quick)
    unknown = [c for c in cases if c not in table]
    if unknown:
        raise ValueError(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(table)}")
    out: dict[str, Any] = {
        "versions": versions(),
        "quick": quick,
        "repeats": repeats,
        "min_time_s": min_time,
        "cases": {},
    }
    if not peers:
        peer_info = "disabled (--no-peers)"
    else:
        peer_info = peer_versions() if cases else "no case selected"
        if not cases and metric_peers:
            peer_info = "no case selected (the metrics section reports its peers)"
    if isinstance(peer_info, dict):
        import torch

        torch_threads = tuple(torch_threads or (out["versions"]["jax_cpu_threads"],))
        torch.set_num_threads(torch_threads[0])
        peer_info["torch_threads"] = list(torch_threads)
        out["peers"] = peer_info
    else:
        out["peers"] = {"skipped": peer_info}
        if peers and cases:
            log(f"PyTorch peers skipped: {peer_info}")
    for line in format_header(out):
        log(line)
    for name in cases:
        case = table[name]
        if batch is not None:
            case = dataclasses.replace(case, batch=batch)
        if scorecam_batch is not None:
            case = dataclasses.replace(case, scorecam_batch=scorecam_batch)
        res = run_case(
            case,
            repeats=repeats,
            min_time=min_time,
            peers=isinstance(peer_info, dict),
            torch_threads=torch_threads or (),
            log=log,
        )
        out["cases"][name] = res
        log(format_case(res))
    if e2e:
        n = e2e_samples if e2e_samples is not None else (1000 if quick else 5000)
        out["end_to_end"] = end_to_end(n, batch=min(256, n), repeats=repeats, log=log)
        log(format_e2e(out["end_to_end"]))
    if methods:
        out["methods"] = run_methods(
            quick=quick,
            names=None if methods is True else list(methods),
            batch=batch,
            repeats=repeats,
            min_time=min_time,
        )
        log(format_methods(out["methods"]))
    if allocators is not None:
        out["allocator"] = run_allocators(
            allocators,
            rounds=allocator_rounds or (2 if quick else 3),
            min_time=2 * min_time,
            batch=batch or 256,
            log=log,
        )
        log(format_allocators(out["allocator"]))
    if metric_peers:
        out["metrics"] = run_metric_peers(
            quick=quick,
            batch=batch,
            threads=tuple(torch_threads or (1, 2)),
            **asked,
            peers=peers,
        )
        log(format_metric_peers(out["metrics"]))
    if memory_sizes:
        out["memory"] = memory(memory_sizes)
        log(format_memory(out["memory"]))
    if json_path:
        write_json(out, json_path)
        log(f"wrote {json_path}")
    return out

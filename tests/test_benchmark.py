"""Smoke test of the benchmark (experiments/bench): its smallest case, tiny repeats, no peers.

Only the structure of the output is checked, never a timing.
"""

from __future__ import annotations

import json
import math
import sys

import pytest

from experiments.bench.main import parser
from experiments.bench.report import format_case, format_methods
from experiments.bench.suite import run_benchmark


@pytest.mark.slow  # runs the benchmark's code: in make test, not in make test-fast
@pytest.mark.filterwarnings("ignore::ifa_jax.analysis.MissingClassesWarning")  # few images
def test_benchmark_smallest_case_structure(tmp_path):
    path = tmp_path / "bench.json"
    out = run_benchmark(
        ["mnist64"],
        quick=True,
        repeats=1,
        min_time=0.0,
        peers=False,
        e2e=False,
        batch=8,
        scorecam_batch=2,
        json_path=str(path),
        log=lambda s: None,
    )
    res = out["cases"]["mnist64"]
    assert res["layer_shape"] == [8, 6, 6, 200]
    rows = {r["name"]: r for r in res["rows"]}
    floor = next(r for r in res["rows"] if r["group"] == "floor")
    assert floor["error"] is None and floor["images_per_s"] > 0 and floor["x_floor"] == 1.0
    ifa = [r for r in res["rows"] if r["group"] == "ifa"]
    assert {
        "ifa analysis_step gradcam",
        "ifa analysis_step hirescam",
        "ifa CAM gradcam, common scale, input res",
    } <= set(rows)
    assert any("scorecam" in r["name"] for r in ifa)
    for r in ifa:
        assert r["error"] is None, r
        assert r["images_per_s"] > 0 and r["x_floor"] > 0 and r["compile_s"] >= 0
        assert len(r["seconds_all"]) == 1 and math.isfinite(r["seconds_median"])
    assert res["scorecam_forward_bound_images_per_s"] > 0
    assert out["peers"] == {"skipped": "disabled (--no-peers)"}
    assert out["versions"]["jax_cpu_threads"] >= 1
    written = json.loads(path.read_text())
    assert written["cases"]["mnist64"]["rows"][0]["name"] == floor["name"]
    assert format_case(res).count("\n") >= len(res["rows"])


def test_benchmark_entry_point_flags():
    """``python -m experiments.benchmark`` keeps its flags (it calls bench.main.main)."""
    from experiments import benchmark

    assert benchmark.main.__module__ == "experiments.bench.main"
    args = parser().parse_args(
        [
            "--quick",
            "--cases",
            "mnist64",
            "--no-peers",
            "--no-e2e",
            "--torch-threads",
            "2,1",
            "--memory",
            "--memory-sizes",
            "10",
        ]
    )
    assert (
        args.quick,
        args.cases,
        args.no_peers,
        args.no_e2e,
        args.torch_threads,
        args.memory,
        args.memory_sizes,
    ) == (True, "mnist64", True, True, "2,1", True, [10])


@pytest.mark.slow  # runs the benchmark's code: in make test, not in make test-fast
def test_class_scaling_structure():
    from experiments.bench.class_scaling import run

    rows = run((3,), samples=8, vjp_samples=4, batch=4, repeats=1)
    ((classes, floor, jvp, vjp, to_floor_jvp, to_floor_vjp),) = rows
    assert classes == 3 and (floor.images, jvp.images, vjp.images) == (4, 8, 4)
    assert all(math.isfinite(r) and r > 0 for r in (*to_floor_jvp, *to_floor_vjp))


@pytest.mark.filterwarnings("ignore::ifa_jax.analysis.MissingClassesWarning")  # few images
@pytest.mark.slow
def test_gpu_script_smoke(tmp_path):
    """The accelerator script's ResNet-50 section runs (shrunk) and writes its figures:
    a fixed cost per pass and a marginal throughput for every variant."""
    from experiments.bench import gpu

    assert gpu.main(["--smoke", "--sections", "resnet50", "--out", str(tmp_path)]) == 0
    out = json.loads((tmp_path / "gpu.json").read_text())
    assert out["environment"]["device_count"] >= 1
    res = out["resnet50"]
    assert "error" not in res, res
    for variant in ("analysis", "consistency_jvp"):
        assert res[variant]["marginal_images_per_s"] > 0
        assert len(res[variant]["seconds_short_long"]) == 2


@pytest.mark.slow  # runs the benchmark's code: in make test, not in make test-fast
def test_methods_section_structure(tmp_path):
    """The methods section on a tiny case (batch 2, GradCAM and one keyed method, one
    round) through run_benchmark: its rows, ratios and JSON; no timing is checked."""
    path = tmp_path / "methods.json"
    out = run_benchmark(
        [],
        repeats=1,
        min_time=0.0,
        peers=False,
        e2e=False,
        batch=2,
        methods=["randomcam"],
        json_path=str(path),
        log=lambda s: None,
    )
    res = out["methods"]
    assert (res["batch"], res["layer"], res["reference"]) == (2, "relu2", "gradcam")
    assert "batch 2" in res["description"] and "CPU threads" in res["description"]
    assert [r["method"] for r in res["rows"]] == ["gradcam", "randomcam"]
    gradcam, randomcam = res["rows"]
    assert gradcam["ratio_to_gradcam"] == {"median": 1.0, "min": 1.0, "max": 1.0}
    for r in res["rows"]:
        assert r["error"] is None, r
        assert (r["kind"], r["model"], r["layers"], r["batch"], r["rounds"]) == (
            "layer",
            "MnistCNN",
            ["relu2"],
            2,
            1,
        )
        q = r["ratio_to_gradcam"]
        assert 0 < q["min"] <= q["median"] <= q["max"] and math.isfinite(q["max"])
        assert r["images_per_s"] > 0 and r["ms_per_batch_median"] > 0
    assert out["cases"] == {} and out["peers"] == {"skipped": "disabled (--no-peers)"}
    written = json.loads(path.read_text())["methods"]
    assert written["rows"][1]["ratio_to_gradcam"] == randomcam["ratio_to_gradcam"]
    table = format_methods(res).splitlines()
    assert len(table) == 2 + len(res["rows"]) and table[3].split()[:2] == ["randomcam", "layer"]


@pytest.mark.slow  # runs the benchmark's code: in make test, not in make test-fast
def test_metrics_section_structure(tmp_path, monkeypatch):
    """The metrics section on a tiny case (batch 2, one round) with the peers missing
    (torch made unimportable): every metric's ifa_jax row, each peer reported missing with
    the reason, the JSON and the table; no timing is checked."""
    from experiments.bench.metric_peers import METRICS, format_metric_peers

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    path = tmp_path / "metrics.json"
    out = run_benchmark(
        [],
        repeats=1,
        min_time=0.0,
        e2e=False,
        batch=2,
        metric_peers=True,
        json_path=str(path),
        log=lambda s: None,
    )
    res = out["metrics"]
    assert res["batch"] == 2 and "batch 2" in res["description"]
    assert res["threads"] == [1, 2] and res["peer_check"] == {}
    for package in ("grad-cam", "quantus"):
        assert res["peers"][package]["missing"].startswith("torch: ModuleNotFoundError")
    assert [r["metric"] for r in res["rows"]] == [m[0] for m in METRICS]
    for r in res["rows"]:
        assert r["error"] is None, r
        assert r["ifa_s_per_image"] > 0 and len(r["ifa_seconds_all"]) == 1
        assert r["peer_error"].startswith("torch: ModuleNotFoundError") and "speedup" not in r
    written = json.loads(path.read_text())["metrics"]
    assert written["rows"][0]["metric"] == "road_combined"
    table = format_metric_peers(res).splitlines()
    assert sum("missing" in line for line in table[1:3]) == 2
    assert len(table) == 4 + len(METRICS) and table[4].split()[0] == "road_combined"


def test_metrics_section_timing_pairs():
    """The speed-up of a metric row: the peer's seconds per image over ifa_jax's in each
    round, at the peer's faster thread count."""
    from experiments.bench.metric_peers import _speedup_row
    from experiments.bench.timing import Entry

    ifa = Entry("ifa x", "ifa", 4, lambda: None, times=[1.0, 2.0, 1.0])
    slow = Entry("peer x [1t]", "peer", 4, lambda: None, times=[8.0, 8.0, 8.0])
    fast = Entry("peer x [2t]", "peer", 4, lambda: None, times=[4.0, 5.0, 6.0])
    row = _speedup_row(ifa, [(1, slow), (2, fast)])
    assert row["peer_best_threads"] == 2 and row["peer_s_per_image"] == 5.0 / 4
    assert row["speedup"] == {"median": 4.0, "min": 2.5, "max": 6.0}
    assert row["peer_threads"][1]["s_per_image"] == 2.0


def test_methods_plan_covers_the_registry():
    """Every registered method gets a row, GradCAM first: LeGrad on the ViT, kind 'layers'
    on relu1 and relu2, the others on relu2; the heavy ScoreCAMs on a slice of the batch."""
    from experiments.bench.cases import make_cases
    from experiments.bench.methods import VIT_LABEL, method_names, method_rows_plan
    from ifa_jax import cams

    plan = method_rows_plan(make_cases()["mnist256"], method_names(), quick=False)
    rows = {r["method"]: r for r in plan}
    assert plan[0]["method"] == "gradcam" and set(rows) == set(cams.REGISTRY)
    assert rows["legradlayers"]["model"] == VIT_LABEL
    assert rows["legradlayers"]["layers"] == ["block1", "block2"]
    assert rows["refinecam"]["layers"] == ["relu1", "relu2"]
    assert rows["sess"]["layers"] == ["relu2"] and rows["sess"]["kind"] == "input"
    assert rows["sscam"]["key"] and not rows["scorecam"]["key"]
    assert rows["scorecam"]["batch"] == 256 and rows["sscam"]["batch"] < 256


def test_benchmark_only_selects_sections():
    from experiments.bench.main import selected_sections

    assert selected_sections(parser().parse_args([])) == {"cases", "e2e"}
    assert selected_sections(parser().parse_args(["--no-e2e", "--memory"])) == {
        "cases",
        "memory",
    }
    assert selected_sections(parser().parse_args(["--only", "methods"])) == {"methods"}
    assert selected_sections(parser().parse_args(["--only", "metrics"])) == {"metrics"}
    with pytest.raises(ValueError, match="methods"):
        selected_sections(parser().parse_args(["--only", "method"]))


@pytest.mark.slow  # compiles the smallest case's floor and steps
def test_step_cost_smallest_case_structure():
    """``python -m experiments.bench.step_cost``: the cost table's structure and its
    invariants (the step does the floor's work and more), never a timing."""
    from experiments.bench.step_cost import run

    lines = []
    out = run(("mnist64",), repeats=1, min_time=0.0, batch=4, parts=("cam max/min",),
              finalize_sizes=(2, 3, 5, (2, 2)), log=lines.append)  # fmt: skip
    res = out["cases"]["mnist64"]
    cost = res["cost"]
    assert list(cost) == ["floor", "step, 1 method", "step, 4 methods"]
    for step in ("step, 1 method", "step, 4 methods"):
        assert cost[step]["flops"] >= cost["floor"]["flops"] > 0
        assert cost[step]["kernels"] > cost["floor"]["kernels"] > 0
        assert math.isfinite(res["cpu_time_x_floor"][step]["median"])
    assert cost["step, 4 methods"]["bytes"] > cost["step, 1 method"]["bytes"]
    assert res["after_probe_4_methods"]["cam max/min"]["bytes"] > 0
    assert set(out["finalize"]) == {"what", "finalize per state", "finalize_all (one transfer)"}
    assert any("x floor" in line for line in lines)

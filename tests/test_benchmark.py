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
    """The accelerator script's default section, scale, on its shrunk MnistCNN case (the
    floors, analyze with 4 methods and the jvp consistency at 1,000 classes) writes every
    variant's figures and the targets; no timing is checked."""
    from experiments.bench import gpu, scale

    argv = ["--smoke", "--out", str(tmp_path), "--cases", "mnist"]
    assert gpu.main([*argv, "--variants", "analyze4,jvp1000"]) == 0
    out = json.loads((tmp_path / "gpu.json").read_text())
    assert out["environment"]["device_count"] >= 1 and out["scale_wall_s"] > 0
    assert set(out) == {"environment", "argv", "scale", "scale_wall_s"}
    sc = out["scale"]
    assert sc["mode"] == "smoke" and set(sc) == {"mode", "budget_s", "targets", "mnist"}
    assert sc["budget_s"] is None  # the budget only holds on an accelerator
    rows = sc["mnist"]["rows"]
    sizes = scale.scale_cases("smoke")["mnist"].sizes
    # the floors always run; jvp1000 gets its own floor (a 1,000-class model)
    assert list(rows) == ["floor_device", "floor_host", "analyze4", "floor_host_jvp", "jvp1000"]
    for name, r in rows.items():
        assert "error" not in r, (name, r)
        assert r["rounds"] == 1 and list(r["seconds_per_size"]) == [str(n) for n in sizes]
        assert all(s > 0 for s in r["seconds_per_size"].values())
        assert math.isfinite(r["fixed_s_per_pass"]["median"]) and r["compile_s"] > -1
    assert rows["analyze4"]["x_floor_host"]["floor"] == "floor_host"
    assert rows["jvp1000"]["x_floor_host"]["floor"] == "floor_host_jvp"
    assert "x_floor_device" not in rows["jvp1000"]  # the 10-class floor is another model
    assert len(sc["mnist"]["targets"]) == 5
    for t in sc["mnist"]["targets"].values():
        assert t["met"] in (True, False, None)


def test_gpu_script_refuses_unknown_names(capsys):
    from experiments.bench import gpu

    for argv in (["--variants", "analyze5"], ["--cases", "resnet18"], ["--sections", "fast"]):
        with pytest.raises(SystemExit):
            gpu.main(["--smoke", *argv])
        assert argv[1] in capsys.readouterr().err
    assert gpu.DEFAULT_SECTIONS == ("scale",) and set(gpu.DEFAULT_SECTIONS) <= set(gpu.SECTIONS)


def test_scale_fit_and_paired_ratios():
    """The line fit recovers a known fixed cost and slope; each ratio to a floor pairs the
    slopes of one round (the same 0.5 in rounds whose speeds differ 2x); the fixed cost is
    compared with the 4-method step's time per batch; the targets read the medians."""
    from experiments.bench import scale

    assert scale.fit_line([100, 200, 400], [1.5, 2.5, 4.5]) == pytest.approx((0.5, 0.01))
    with pytest.raises(ValueError, match="2 distinct sizes"):
        scale.fit_line([100, 100], [1.0, 1.0])
    case = scale.ScaleCase("mnist", "MnistCNN", scale._mnist, (28, 28, 1), "relu2", 10, 100,
                           (100, 200, 400))  # fmt: skip
    lines = {  # name: (fixed s, s per image) in rounds 1 and 2 (round 2: a slower machine)
        "floor_device": [(0.0, 1e-3), (0.0, 2e-3)],
        "floor_host": [(0.1, 2e-3), (0.2, 4e-3)],
        "step4_device": [(0.0, 1e-3), (0.0, 2.5e-3)],
        "analyze4": [(0.5, 4e-3), (1.0, 8e-3)],
        "analyze4_direct": [(0.5, 6e-3), (1.0, 1.6e-2)],
    }
    timed = {
        n: {"first_s": 3.0, "warm_s": 1.0, "seconds": [[f + s * k for k in case.sizes]
                                                       for f, s in rounds]}
        for n, rounds in lines.items()
    }  # fmt: skip
    timed["analyze1"] = {"error": "RuntimeError: boom"}
    variants = [scale.Variant(n, n, lambda k: None) for n in (*lines, "analyze1")]
    variants[2].floor_host = None
    rows = scale.summarize(case, variants, timed)
    a4 = rows["analyze4"]
    host = a4["x_floor_host"]
    assert host.pop("floor") == "floor_host"
    assert host == pytest.approx({"median": 0.5, "min": 0.5, "max": 0.5})
    assert a4["x_floor_device"]["median"] == pytest.approx(0.25)
    assert a4["marginal_images_per_s"] == pytest.approx(1 / 6e-3)  # median slope
    assert a4["fixed_s_per_pass"]["median"] == pytest.approx(0.75)
    # fixed / (step s per image * batch): 0.5 / 0.1 and 1.0 / 0.25
    assert a4["fixed_x_step"]["min"] == pytest.approx(4.0)
    assert a4["fixed_x_step"]["max"] == pytest.approx(5.0)
    assert a4["compile_s"] == 2.0 and a4["seconds_per_size"]["400"] == pytest.approx(3.15)
    step = rows["step4_device"]
    assert "x_floor_host" not in step
    assert step["x_floor_device"]["min"] == pytest.approx(0.8)
    # the pipeline's gain over the direct float32 path, paired by round: 1.5 and 2
    assert a4["x_direct"] == pytest.approx({"median": 1.75, "min": 1.5, "max": 2.0})
    assert rows["analyze1"] == {"what": "analyze1", "error": "RuntimeError: boom"}
    t = scale.targets(rows)
    assert [v["met"] for v in t.values()] == [False, True, None, False, None]
    text = scale.format_case({"rows": rows, "targets": t})
    assert text.count("NOT met") == 2 and "analyze1         error: RuntimeError" in text
    assert (
        "over analyze4_direct (float32, prefetch=0), marginal throughput: 1.75 [1.50, 2.00]" in text
    )


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

"""Smoke test of experiments/benchmark.py: its smallest case, tiny repeats, no peers.

Only the structure of the output is checked, never a timing.
"""

from __future__ import annotations

import json
import math

from experiments import benchmark


def test_benchmark_smallest_case_structure(tmp_path):
    path = tmp_path / "bench.json"
    out = benchmark.run_benchmark(["mnist64"], quick=True, repeats=1, min_time=0.0,
                                  peers=False, e2e=False, batch=8, scorecam_batch=2,
                                  json_path=str(path), log=lambda s: None)
    res = out["cases"]["mnist64"]
    assert res["layer_shape"] == [8, 6, 6, 200]
    rows = {r["name"]: r for r in res["rows"]}
    floor = next(r for r in res["rows"] if r["group"] == "floor")
    assert floor["error"] is None and floor["images_per_s"] > 0 and floor["x_floor"] == 1.0
    ifa = [r for r in res["rows"] if r["group"] == "ifa"]
    assert {"ifa analysis_step gradcam", "ifa analysis_step hirescam",
            "ifa CAM gradcam, common scale, input res"} <= set(rows)
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
    assert benchmark.format_case(res).count("\n") >= len(res["rows"])

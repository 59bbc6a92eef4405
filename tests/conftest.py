"""Shared, session-scoped models and inputs: few shapes, so few jit compilations."""

from __future__ import annotations

import importlib.util
import os
import sysconfig
from pathlib import Path
from types import ModuleType

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ifa_jax
from ifa_jax import cams
from ifa_jax.runner.models import ConvNet, MnistCNN, NestedNet, NnxCNN

TOOLS = Path(__file__).resolve().parents[1] / "tools"
# Set by `make test-min`, which runs a copy of the tests against the installed wheel: then
# ifa_jax must be imported from the environment's site-packages, not from a source tree.
INSTALLED = "IFA_JAX_TEST_INSTALLED"


def not_installed(module_file: str) -> str | None:
    """Why ``module_file`` (``ifa_jax.__file__``) is not the installed package, or None
    when it lies in this environment's site-packages (purelib or platlib)."""
    where = Path(module_file).resolve()
    sites = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}
    if any(where.is_relative_to(site) for site in sites):
        return None
    return (
        f"{INSTALLED} is set, but ifa_jax was imported from {where.parent}, not from the "
        f"installed wheel in {', '.join(map(str, sorted(sites)))}; run the tests from a copy "
        "outside the source tree (make test-min)"
    )


def pytest_configure(config):
    """With :data:`INSTALLED` set, stop before any test unless ifa_jax is the installed one."""
    if os.environ.get(INSTALLED):
        problem = not_installed(ifa_jax.__file__)
        if problem:
            raise pytest.UsageError(problem)


def load_tool(name: str) -> ModuleType:
    """The script tools/<name>.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def mnist():
    """(model, variables, x (4, 28, 28, 1)) with random weights."""
    model = MnistCNN()
    x = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1))
    return model, model.init(jax.random.key(1), x), x


@pytest.fixture(scope="session", params=[1, 2, 3], ids=["1d", "2d", "3d"])
def convnet(request):
    """(model, variables, x) for a GAP CNN on 1-D signals, images and volumes."""
    ndim = request.param
    spatial = {1: (12,), 2: (6, 5), 3: (4, 5, 3)}[ndim]
    model = ConvNet(ndim=ndim, features=(4, 6), num_classes=3)
    x = jax.random.normal(jax.random.key(ndim), (3, *spatial, 2))
    return model, model.init(jax.random.key(10 + ndim), x), x


@pytest.fixture(scope="session")
def nested():
    model = NestedNet()
    x = jax.random.normal(jax.random.key(2), (2, 6, 6, 1))
    return model, model.init(jax.random.key(3), x), x


@pytest.fixture(scope="session")
def nnx_model():
    """(NNX model, x (2, 6, 6, 1))."""
    return NnxCNN(rngs=nnx.Rngs(0)), jax.random.normal(jax.random.key(4), (2, 6, 6, 1))


def random_variables(model, x, seed=1, std=0.5):
    """Variables shaped as ``model.init``'s, drawn with NumPy: no init to compile (an eager
    ViT init takes seconds)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, std, s.shape), s.dtype), shapes)


def random_ag(key, shape, positive=True):
    """A (>= 0 when positive, like post-ReLU activations) and G of the same shape."""
    ka, kg = jax.random.split(key)
    a = jax.random.uniform(ka, shape) if positive else jax.random.normal(ka, shape)
    return a, jax.random.normal(kg, shape)


class _TraceCounter:
    """Counts how often the analysis step is traced (= compiled) while installed."""

    def __init__(self, inner):
        self.inner, self.count = inner, 0

    def __call__(self, *args, **kwargs):
        self.count += 1  # runs only while jax traces the jitted step
        return self.inner(*args, **kwargs)


@pytest.fixture
def traces(monkeypatch):
    """``traces.count``: traces of ``analysis.analysis_step`` since the test began. The
    jitted step calls ``analysis.batch_stats`` only while tracing, so counting its calls
    counts compilations through public behaviour, not jax's private cache."""
    from ifa_jax.analysis import step

    counter = _TraceCounter(step.batch_stats)
    monkeypatch.setattr(step, "batch_stats", counter)
    return counter


@pytest.fixture
def registry():
    """Restores the method table after a test that registers or replaces methods (with
    ifa_jax.cams.unregister_method and register_method, in the table's order)."""
    before = dict(cams.REGISTRY)
    yield cams
    for method in list(cams.REGISTRY.values()):
        cams.unregister_method(method)
    for method in before.values():
        cams.register_method(method)

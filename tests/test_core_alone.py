"""The library works with only its own dependencies (jax, flax, numpy, tqdm): with the
application's packages made unimportable, ``import ifa_jax`` runs a CAM and ``analyze`` on
a hand-written Flax model, and the application names the extra that installs it."""

from __future__ import annotations

import subprocess
import sys

# Run in a fresh interpreter whose import system refuses the application's packages, as a
# virtual environment with only the core dependencies would.
SCRIPT = """
import importlib.abc, sys

# optax is not blocked: flax itself requires it (flax.nnx imports it).
BLOCKED = ("tensorflow_datasets", "mlxtend", "sklearn", "matplotlib", "torch")


class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"No module named {name!r} (blocked: not a core dependency)")
        return None


sys.meta_path.insert(0, Refuse())

import flax.linen as nn
import jax
import jax.numpy as jnp
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
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED or m == "ifa_jax.runner")
assert not leaked, leaked
try:
    import ifa_jax.runner
except ImportError as e:
    print("runner:", e)
print("ok")
"""


def test_the_library_runs_without_the_application_packages():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == "ok"
    # The application says which extra installs what it misses.
    assert "runner: " in done.stdout and "pip install 'ifa_jax[" in done.stdout


def test_moved_modules_still_resolve_with_a_deprecation_warning():
    import pytest

    import ifa_jax
    from ifa_jax.runner import data, models, train

    for name, module in (("data", data), ("models", models), ("train", train)):
        with pytest.warns(DeprecationWarning, match=rf"ifa_jax\.{name} moved to ifa_jax\.runner"):
            assert getattr(ifa_jax, name) is module

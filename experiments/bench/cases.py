"""The benchmark cases: model, input size, batch and target layer, with random weights."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from ifa_jax.probes import linen_probe
from ifa_jax.runner.models import ConvNet, MnistCNN, ResNet

CASE_NAMES = ("mnist64", "mnist256", "resnet18", "cnn3d")
# The methods of the end-to-end run, and of the "several methods, one probe" row.
E2E_METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam")


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark case. ``kind``: 'mnist_cnn', 'resnet' or 'convnet'."""

    name: str
    kind: str
    input_shape: tuple[int, ...]  # (*spatial, C)
    batch: int
    layer: str
    num_classes: int
    scorecam_batch: int
    model_kwargs: tuple[tuple[str, Any], ...] = ()
    note: str = ""

    def model(self):
        kwargs = dict(self.model_kwargs)
        if self.kind == "mnist_cnn":
            return MnistCNN(num_classes=self.num_classes, **kwargs)
        if self.kind == "resnet":
            return ResNet(num_classes=self.num_classes, **kwargs)
        return ConvNet(num_classes=self.num_classes, **kwargs)

    @property
    def apply_kwargs(self) -> dict:
        return {"train": False} if self.kind == "resnet" else {}

    def describe(self) -> str:
        shape = "x".join(map(str, self.input_shape))
        arch = {
            "mnist_cnn": "MnistCNN",
            "resnet": "ResNet-18 layout",
            "convnet": "ConvNet(ndim=3)",
        }[self.kind]
        extra = f" ({self.note})" if self.note else ""
        return f"{arch} {shape}, batch {self.batch}, layer {self.layer}{extra}"


def make_cases(quick: bool = False) -> dict[str, Case]:
    """The four cases; ``quick`` shrinks the expensive ones (and says so in their note)."""
    mnist_sc = 8 if quick else 16
    resnet_side = 112 if quick else 224
    return {
        "mnist64": Case("mnist64", "mnist_cnn", (28, 28, 1), 64, "relu2", 10, mnist_sc),
        "mnist256": Case("mnist256", "mnist_cnn", (28, 28, 1), 256, "relu2", 10, mnist_sc),
        "resnet18": Case(
            "resnet18",
            "resnet",
            (resnet_side, resnet_side, 3),
            32,
            "stage4",
            1000,
            1,
            (("width", 64),),
            "quick: 112x112 instead of 224x224" if quick else "",
        ),
        "cnn3d": Case(
            "cnn3d",
            "convnet",
            (64, 64, 64, 1),
            2 if quick else 4,
            "conv2",
            4,
            1 if quick else 2,
            (("ndim", 3),),
            "quick: batch 2" if quick else "",
        ),
    }


def setup_case(case: Case, *, seed: int = 0):
    """(model, variables, probe, x, y) with random weights, inputs and labels.

    ResNet BatchNorm statistics and scales are randomised too, so that the weight
    conversion to PyTorch is checked on non-trivial values.
    """
    model = case.model()
    kx, ky, kp, kb = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.uniform(kx, (case.batch, *case.input_shape), jnp.float32)
    y = jax.random.randint(ky, (case.batch,), 0, case.num_classes, jnp.int32)
    variables = model.init(kp, x[:1], **case.apply_kwargs)
    if "batch_stats" in variables:
        variables = randomise_batchnorm(variables, kb)
    probe = linen_probe(model, case.layer, **case.apply_kwargs)
    return model, variables, probe, x, y


def randomise_batchnorm(variables, key):
    """BatchNorm running means, variances and scales drawn at random (biases kept)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(variables)
    keys = jax.random.split(key, len(leaves))
    out = []
    for (path, leaf), k in zip(leaves, keys):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "mean":
            leaf = 0.1 * jax.random.normal(k, leaf.shape, leaf.dtype)
        elif name == "var":
            leaf = jax.random.uniform(k, leaf.shape, leaf.dtype, 0.5, 1.5)
        elif name == "scale":
            leaf = jax.random.uniform(k, leaf.shape, leaf.dtype, 0.8, 1.2)
        out.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, out)

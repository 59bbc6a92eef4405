"""The PyTorch twins of the benchmark (experiments/bench/torch_twins.py): with Flax weights
ported into them, their logits equal the Flax model's, and so does the output of the layer
the peers take their CAMs at. Skipped where torch is not installed (the bench extra)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from experiments.bench import torch_twins as tt  # noqa: E402
from experiments.bench.cases import Case, randomise_batchnorm, setup_case  # noqa: E402
from ifa_jax.runner.models import ConvNet, MnistCNN, ResNet  # noqa: E402

RTOL = 1e-4


def _assert_close(got, ref):
    ref = np.asarray(ref)
    # rtol 1e-4; the atol only covers entries near zero, on the scale of the largest one.
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=RTOL * 0.1 * float(np.abs(ref).max()))


def _torch_logits(tm, x):
    with torch.no_grad():
        return tm.eval()(tt.to_torch_input(x)).numpy()


def _flax(model, shape, seed, **apply_kwargs):
    kx, kp, kb = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.uniform(kx, shape)
    variables = model.init(kp, x, **apply_kwargs)
    if "batch_stats" in variables:
        variables = randomise_batchnorm(variables, kb)
    return variables, x, model.apply(variables, x, **apply_kwargs)


def test_mnist_cnn_twin_logits():
    model = MnistCNN(width1=4, width2=6, hidden=8, num_classes=5)
    variables, x, ref = _flax(model, (2, 28, 28, 1), 0)
    _assert_close(_torch_logits(tt.mnist_cnn_from_flax(variables["params"]), x), ref)


@pytest.mark.parametrize(
    "stem, shape",
    [
        ("small", (2, 12, 12, 3)),  # 3x3 stem; stride-2 blocks on even sides: asymmetric pad
        ("large", (2, 20, 20, 3)),  # 7x7 stride-2 stem and max-pool
        ("small", (2, 6, 7, 5, 1)),  # 3-D, odd and even sides
        ("large", (2, 17, 2)),  # 1-D
    ],
    ids=["2d-small", "2d-large", "3d-small", "1d-large"],
)
def test_resnet_twin_logits(stem, shape):
    model = ResNet(num_classes=5, width=4, stage_sizes=(2, 1), stem=stem)
    variables, x, ref = _flax(model, shape, 1, train=False)
    tm = tt.resnet_from_flax(variables, large=stem == "large")
    _assert_close(_torch_logits(tm, x), ref)


@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("relu_last", [True, False])
def test_convnet_twin_logits(ndim, relu_last):
    model = ConvNet(ndim=ndim, features=(3, 5), num_classes=4, relu_last=relu_last)
    spatial = {1: (11,), 2: (6, 5), 3: (4, 5, 3)}[ndim]
    variables, x, ref = _flax(model, (2, *spatial, 2), 2)
    _assert_close(_torch_logits(tt.convnet_from_flax(variables["params"], relu_last), x), ref)


TINY_CASES = [  # the benchmark's kinds, shrunk: model, input, batch, layer
    Case(
        "mnist",
        "mnist_cnn",
        (28, 28, 1),
        2,
        "relu2",
        10,
        1,
        (("width1", 4), ("width2", 6), ("hidden", 8)),
    ),
    Case(
        "resnet", "resnet", (16, 16, 3), 2, "stage2", 7, 1, (("width", 4), ("stage_sizes", (1, 1)))
    ),
    Case(
        "resnet_auto_large",
        "resnet",
        (96, 96, 3),
        1,
        "stage2",
        7,
        1,
        (("width", 2), ("stage_sizes", (1, 1))),
    ),
    Case("cnn3d", "convnet", (5, 4, 6, 1), 2, "conv2", 4, 1, (("ndim", 3), ("features", (3, 4)))),
]


@pytest.mark.parametrize("case", TINY_CASES, ids=[c.name for c in TINY_CASES])
def test_torch_twin_of_a_case(case):
    """``torch_twin`` (the peers' entry) and ``torch_twin_layer``: logits and the target
    layer's output equal Flax's; ``check_logits`` passes."""
    model, variables, probe, x, _ = setup_case(case, seed=3)
    tm = tt.torch_twin(case, model, variables)
    assert not tm.training
    grabbed = {}
    tt.torch_twin_layer(case, tm).register_forward_hook(
        lambda module, inputs, output: grabbed.update(a=output.detach().numpy())
    )
    ref_logits, acts = probe.tapped(variables, x, None)
    _assert_close(_torch_logits(tm, x), ref_logits)
    _assert_close(np.moveaxis(grabbed["a"], 1, -1), acts[case.layer])
    assert tt.check_logits(case, model, variables, tm, x) <= RTOL * max(
        1.0, float(np.abs(np.asarray(ref_logits)).max())
    )

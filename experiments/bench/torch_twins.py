"""PyTorch twins of the Flax models of :mod:`ifa_jax.runner.models`, for the peers.

Each twin is a top-level ``nn.Module`` built from the architecture's hyper-parameters, and
each has a ``*_from_flax`` function that builds it from the shapes of a Flax variables tree
and ports the weights into it (channels-first, the NHWC flatten order of ``MnistCNN``'s
dense layer, XLA's 'SAME' padding, BatchNorm running statistics). Importing this module
needs torch (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from experiments.bench.cases import Case

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_MAXPOOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_BN_EPS = 1e-5  # Flax's BatchNorm default


# --------------------------------------------------------------------------- weight porting


def _tensor(a) -> torch.Tensor:
    """A writable float32 copy (jax arrays convert to read-only views)."""
    return torch.from_numpy(np.array(a, dtype=np.float32))


def _conv_weight(k: np.ndarray) -> torch.Tensor:
    """A Flax kernel (*kernel, in, out) as a torch conv weight (out, in, *kernel)."""
    nd = k.ndim - 2
    return _tensor(k.transpose(nd + 1, nd, *range(nd)))


def load_conv(conv: nn.Module, p) -> None:
    """Flax ``nn.Conv`` params into a torch conv (or the conv of a :class:`SameConv`)."""
    conv = conv.conv if isinstance(conv, SameConv) else conv
    conv.weight.data.copy_(_conv_weight(np.asarray(p["kernel"])))
    if "bias" in p:
        conv.bias.data.copy_(_tensor(p["bias"]))


def load_dense(lin: nn.Linear, p, kernel: np.ndarray | None = None) -> None:
    """Flax ``nn.Dense`` params (or ``kernel`` in place of theirs) into a torch Linear."""
    k = np.asarray(p["kernel"]) if kernel is None else kernel
    lin.weight.data.copy_(_tensor(k.T))
    lin.bias.data.copy_(_tensor(p["bias"]))


def load_batchnorm(bn: nn.Module, p, s) -> None:
    """Flax ``nn.BatchNorm`` params ``p`` and batch statistics ``s`` into a torch BatchNorm."""
    bn.weight.data.copy_(_tensor(p["scale"]))
    bn.bias.data.copy_(_tensor(p["bias"]))
    bn.running_mean.copy_(_tensor(s["mean"]))
    bn.running_var.copy_(_tensor(s["var"]))


def _numbered(names, prefix: str) -> list[str]:
    """The names that start with ``prefix``, in the order of the number that follows it."""
    return sorted((n for n in names if n.startswith(prefix)), key=lambda n: int(n[len(prefix) :]))


# --------------------------------------------------------------------------- modules


class SameConv(nn.Module):
    """A conv with XLA's 'SAME' padding: symmetric (a plain padded conv) at stride 1,
    possibly asymmetric (low = total // 2) at stride 2, as Flax computes it."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int],
        stride: int = 1,
        bias: bool = True,
    ):
        super().__init__()
        self.nd, self.k, self.s = len(kernel_size), tuple(kernel_size), stride
        self.symmetric = stride == 1 and all(n % 2 for n in self.k)
        pad = tuple(n // 2 for n in self.k) if self.symmetric else 0
        self.conv = _CONV[self.nd - 1](
            in_channels, out_channels, self.k, stride=stride, padding=pad, bias=bias
        )

    def forward(self, x):
        if not self.symmetric:
            pads = []
            for i in reversed(range(self.nd)):  # F.pad lists the last axis first
                n, k = x.shape[2 + i], self.k[i]
                total = max((-(-n // self.s) - 1) * self.s + k - n, 0)
                pads += [total // 2, total - total // 2]
            if any(pads):
                x = F.pad(x, pads)
        return self.conv(x)


class TorchMnistCNN(nn.Module):
    """Twin of ``ifa_jax.runner.models.MnistCNN``; ``grid``: the (h, w) grid after the second pool
    (2 x 2 for 28 x 28 inputs), flattened into ``fc1``."""

    def __init__(
        self,
        in_channels: int = 1,
        width1: int = 100,
        width2: int = 200,
        hidden: int = 512,
        num_classes: int = 10,
        grid: tuple[int, int] = (2, 2),
        kernel1: Sequence[int] = (5, 5),
        kernel2: Sequence[int] = (3, 3),
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width1, tuple(kernel1))
        self.conv2 = nn.Conv2d(width1, width2, tuple(kernel2))
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()
        self.pool1, self.pool2 = nn.MaxPool2d(3, 3), nn.MaxPool2d(3, 3)
        self.fc1 = nn.Linear(width2 * grid[0] * grid[1], hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.head(F.relu(self.fc1(torch.flatten(x, 1))))


class TorchBasicBlock(nn.Module):
    """Twin of ``ifa_jax.runner.models.BasicBlock``: two 3^d convs with BatchNorm, identity or
    1^d projection shortcut."""

    def __init__(self, in_channels: int, features: int, ndim: int = 2, stride: int = 1):
        super().__init__()
        bn = _BATCHNORM[ndim - 1]
        self.conv1 = SameConv(in_channels, features, (3,) * ndim, stride, bias=False)
        self.conv2 = SameConv(features, features, (3,) * ndim, bias=False)
        self.bn1, self.bn2 = bn(features, eps=_BN_EPS), bn(features, eps=_BN_EPS)
        self.proj = None
        if stride != 1 or in_channels != features:
            self.proj = SameConv(in_channels, features, (1,) * ndim, stride, bias=False)
            self.proj_bn = bn(features, eps=_BN_EPS)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.proj is not None:
            x = self.proj_bn(self.proj(x))
        return F.relu(x + y)


class TorchResNet(nn.Module):
    """Twin of ``ifa_jax.runner.models.ResNet`` (in eval mode); ``large``: the ImageNet stem (7^d
    stride-2 conv + 3^d stride-2 max-pool) instead of a 3^d conv."""

    def __init__(
        self,
        in_channels: int = 3,
        width: int = 64,
        stage_sizes: Sequence[int] = (2, 2, 2, 2),
        num_classes: int = 1000,
        ndim: int = 2,
        large: bool = True,
    ):
        super().__init__()
        if large:
            self.stem_conv = _CONV[ndim - 1](
                in_channels, width, (7,) * ndim, stride=2, padding=3, bias=False
            )
            self.pool = _MAXPOOL[ndim - 1](3, 2, 1)
        else:
            self.stem_conv, self.pool = (
                SameConv(in_channels, width, (3,) * ndim, bias=False),
                nn.Identity(),
            )
        self.stem_bn = _BATCHNORM[ndim - 1](width, eps=_BN_EPS)
        self.stages = [f"stage{i + 1}" for i in range(len(stage_sizes))]
        channels = width
        for i, (name, n) in enumerate(zip(self.stages, stage_sizes)):
            features = width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(
                    TorchBasicBlock(channels, features, ndim, 2 if (i > 0 and j == 0) else 1)
                )
                channels = features
            setattr(self, name, nn.Sequential(*blocks))
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self.pool(F.relu(self.stem_bn(self.stem_conv(x))))
        for name in self.stages:
            x = getattr(self, name)(x)
        return self.head(torch.mean(x, dim=tuple(range(2, x.ndim))))


class TorchConvNet(nn.Module):
    """Twin of ``ifa_jax.runner.models.ConvNet``: 'SAME' convs named ``conv1``... (each module's
    output is the conv's, before its functional ReLU, as in Flax), global mean, dense."""

    def __init__(
        self,
        in_channels: int = 1,
        features: Sequence[int] = (8, 16),
        kernel: int = 3,
        ndim: int = 2,
        num_classes: int = 10,
        relu_last: bool = True,
    ):
        super().__init__()
        self.names = [f"conv{i + 1}" for i in range(len(features))]
        channels = in_channels
        for name, f in zip(self.names, features):
            setattr(self, name, SameConv(channels, f, (kernel,) * ndim))
            channels = f
        self.relu_last = relu_last
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x):
        for i, n in enumerate(self.names):
            x = getattr(self, n)(x)
            if i < len(self.names) - 1 or self.relu_last:
                x = F.relu(x)
        return self.head(torch.mean(x, dim=tuple(range(2, x.ndim))))


# --------------------------------------------------------------------------- Flax -> twin


def mnist_cnn_from_flax(params) -> TorchMnistCNN:
    """A :class:`TorchMnistCNN` with the weights of a Flax ``MnistCNN``'s ``params``."""
    k1, k2 = np.asarray(params["conv1"]["kernel"]), np.asarray(params["conv2"]["kernel"])
    f1 = np.asarray(params["fc1"]["kernel"])  # rows in (h, w, c) order (NHWC flatten)
    c = k2.shape[3]
    hw = f1.shape[0] // c
    h = int(round(math.sqrt(hw)))
    head = np.asarray(params["head"]["kernel"])
    tm = TorchMnistCNN(
        k1.shape[2],
        k1.shape[3],
        c,
        f1.shape[1],
        head.shape[1],
        (h, hw // h),
        k1.shape[:2],
        k2.shape[:2],
    )
    # PyTorch flattens NCHW, i.e. (c, h, w): permute the rows before transposing.
    f1_nchw = f1.reshape(h, hw // h, c, -1).transpose(2, 0, 1, 3).reshape(f1.shape)
    load_conv(tm.conv1, params["conv1"])
    load_conv(tm.conv2, params["conv2"])
    load_dense(tm.fc1, params["fc1"], f1_nchw)
    load_dense(tm.head, params["head"])
    return tm


def resnet_from_flax(variables, large: bool) -> TorchResNet:
    """A :class:`TorchResNet` with the params and batch statistics of a Flax ``ResNet``;
    ``large``: whether the Flax model used its large stem on its inputs."""
    p, s = variables["params"], variables["batch_stats"]
    k = np.asarray(p["stem_conv"]["kernel"])
    stages = _numbered(p, "stage")
    head = np.asarray(p["head"]["kernel"])
    tm = TorchResNet(
        k.shape[-2], k.shape[-1], [len(p[n]) for n in stages], head.shape[1], k.ndim - 2, large
    )
    load_conv(tm.stem_conv, p["stem_conv"])
    load_batchnorm(tm.stem_bn, p["stem_bn"], s["stem_bn"])
    for name in stages:
        for block, b in zip(getattr(tm, name), _numbered(p[name], "block")):
            pb, sb = p[name][b], s[name][b]
            for conv in ("conv1", "conv2", "proj"):
                if conv in pb:
                    load_conv(getattr(block, conv), pb[conv])
            for bn in ("bn1", "bn2", "proj_bn"):
                if bn in pb:
                    load_batchnorm(getattr(block, bn), pb[bn], sb[bn])
    load_dense(tm.head, p["head"])
    return tm


def convnet_from_flax(params, relu_last: bool = True) -> TorchConvNet:
    """A :class:`TorchConvNet` with the weights of a Flax ``ConvNet``'s ``params``."""
    names = _numbered(params, "conv")
    kernels = [np.asarray(params[n]["kernel"]) for n in names]
    head = np.asarray(params["head"]["kernel"])
    tm = TorchConvNet(
        kernels[0].shape[-2],
        [k.shape[-1] for k in kernels],
        kernels[0].shape[0],
        kernels[0].ndim - 2,
        head.shape[1],
        relu_last,
    )
    for n in names:
        load_conv(getattr(tm, n), params[n])
    load_dense(tm.head, params["head"])
    return tm


# --------------------------------------------------------------------------- per case


def torch_twin(case: Case, model, variables) -> nn.Module:
    """The PyTorch twin of the case's Flax model, in eval mode, with the Flax weights."""
    if case.kind == "mnist_cnn":
        return mnist_cnn_from_flax(variables["params"]).eval()
    if case.kind == "resnet":
        large = model.stem == "large" or (model.stem == "auto" and min(case.input_shape[:-1]) >= 96)
        return resnet_from_flax(variables, large).eval()
    return convnet_from_flax(variables["params"], model.relu_last).eval()


def torch_twin_layer(case: Case, tm: nn.Module) -> nn.Module:
    """The twin's module whose output matches the Flax layer's (Flax's ConvNet 'convN' is
    the conv's output before its functional ReLU; so is the twin's SameConv)."""
    return getattr(tm, case.layer)


def to_torch_input(x) -> torch.Tensor:
    """Channels-last (B, *spatial, C) to a channels-first float tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.array(x), -1, 1)))


def check_logits(case: Case, model, variables, tm: nn.Module, x) -> float:
    """assert_allclose of the torch twin's logits against Flax's; returns the max |diff|."""
    ref = np.asarray(model.apply(variables, x, **case.apply_kwargs))
    with torch.no_grad():
        got = tm(to_torch_input(x)).numpy()
    atol = 1e-3 * max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(
        got, ref, rtol=1e-3, atol=atol, err_msg=f"{case.name}: converted PyTorch model disagrees"
    )
    return float(np.abs(got - ref).max())

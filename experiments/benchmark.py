"""Throughput of ifa_jax against its floor and against the PyTorch peers.

    python -m experiments.benchmark [--quick] [--cases mnist64,mnist256,resnet18,cnn3d]
                                    [--json out.json] [--memory] [--torch-threads 2,1]
                                    [--no-peers] [--no-e2e]

For each case (model, input, batch, layer) it times, interleaved in one process:

* the floor: one jitted forward + vjp of the target score to the layer's activations
  (``probe.tapped`` with zero deltas; returns logits, A and G, nothing else), and a
  forward pass alone (ScoreCAM's bound is its throughput / K);
* ifa_jax: the analysis step (``analysis.analysis_step``: probe, CAM, statistics update)
  for GradCAM, HiResCAM and four methods from one probe call; a CAM with the common scale
  at input resolution (probe + cam + apply_scale + upsample, one jit); the eager
  ``explain()`` API; ScoreCAM via ``explain(..., 'scorecam')`` (+ the same scale and
  upsample);
* the PyTorch peers when ``torch`` and ``pytorch_grad_cam`` import (``pip install -e
  '.[bench]'``, best in a separate venv), once per ``--torch-threads`` count (default:
  JAX's CPU thread count): the same architecture with the same weights (converted from
  Flax, logits checked with assert_allclose), a bare forward + backward into all
  parameters, a forward + gradient to the layer only, pytorch-grad-cam's GradCAM and
  ScoreCAM.

Every call ends in ``block_until_ready`` (or returns host arrays). Each entry gets a first
call (its extra time over the median is the trace + compile time) and a warm-up call, then
``--repeats`` rounds over all entries in turn; a measurement repeats fast calls to last
``--min-time``. Throughputs are images/second (medians); "x floor" (a row's throughput over
the floor's) and "speedup" (ifa_jax's over the peer's) are medians of ratios taken within
one round, which cancels most of the load of a shared machine.

End to end (``--no-e2e`` skips it): the whole integrated feature analysis of embedded MNIST
as the runner does it (one analysis pass for all methods, common scale, consistency
evaluation for every method, scale and feature subset), in seconds per 1,000 images, with
the model passes counted. ``--memory`` adds the peak RSS of the analysis pass at 5,000 and
50,000 samples (:mod:`experiments.bench_memory`, one subprocess per size).

``--quick`` shrinks the ResNet-18 case to 112x112 inputs, the 3-D case to batch 2, the
ScoreCAM batches and the end-to-end dataset (1,000 digits), and takes 3 repeats.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import importlib.metadata
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ifa_jax import analysis, cams, data, decompose, scale
from ifa_jax.explain import explain
from ifa_jax.models import ConvNet, MnistCNN, ResNet
from ifa_jax.probe import LayerProbe, linen_probe

CASE_NAMES = ("mnist64", "mnist256", "resnet18", "cnn3d")
E2E_METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam")


# --------------------------------------------------------------------------- cases


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
        arch = {"mnist_cnn": "MnistCNN", "resnet": "ResNet-18 layout",
                "convnet": "ConvNet(ndim=3)"}[self.kind]
        extra = f" ({self.note})" if self.note else ""
        return f"{arch} {shape}, batch {self.batch}, layer {self.layer}{extra}"


def make_cases(quick: bool = False) -> dict[str, Case]:
    """The four cases; ``quick`` shrinks the expensive ones (and says so in their note)."""
    mnist_sc = 8 if quick else 16
    resnet_side = 112 if quick else 224
    return {
        "mnist64": Case("mnist64", "mnist_cnn", (28, 28, 1), 64, "relu2", 10, mnist_sc),
        "mnist256": Case("mnist256", "mnist_cnn", (28, 28, 1), 256, "relu2", 10, mnist_sc),
        "resnet18": Case("resnet18", "resnet", (resnet_side, resnet_side, 3), 32, "stage4",
                         1000, 1, (("width", 64),),
                         "quick: 112x112 instead of 224x224" if quick else ""),
        "cnn3d": Case("cnn3d", "convnet", (64, 64, 64, 1), 2 if quick else 4, "conv2", 4,
                      1 if quick else 2, (("ndim", 3),),
                      "quick: batch 2" if quick else ""),
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
        variables = _randomise_batchnorm(variables, kb)
    probe = linen_probe(model, case.layer, **case.apply_kwargs)
    return model, variables, probe, x, y


def _randomise_batchnorm(variables, key):
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


# --------------------------------------------------------------------------- timing


@dataclasses.dataclass
class Entry:
    """One timed call. ``fn()`` must finish its work (block_until_ready or host arrays)."""

    name: str
    group: str  # 'floor', 'ifa', 'torch', 'peer'
    images: int
    fn: Callable[[], Any]
    compare_to: str | None = None  # for peers: the ifa_jax row it is compared with
    first_s: float = math.nan
    number: int = 1
    times: list[float] = dataclasses.field(default_factory=list)
    error: str | None = None

    @property
    def seconds(self) -> float:
        return statistics.median(self.times) if self.times else math.nan

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


def paired_ratio(a: Entry, b: Entry) -> float:
    """Median over repeats of a's throughput / b's, each pair timed in the same round.

    On a shared machine the load changes between rounds; a ratio within one round cancels
    most of it, so this is steadier than the ratio of the two medians.
    """
    n = min(len(a.times), len(b.times))
    if n == 0:
        return math.nan
    return statistics.median((a.images / a.times[i]) / (b.images / b.times[i])
                             for i in range(n))


def time_interleaved(entries: Sequence[Entry], *, repeats: int, min_time: float) -> None:
    """First call (trace + compile), a warm-up call that sets how many calls make one
    measurement (>= min_time seconds), then ``repeats`` rounds over all entries in turn,
    so slow drifts of a shared machine hit every entry alike."""
    live = []
    for e in entries:
        try:
            t0 = time.perf_counter()
            e.fn()
            e.first_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            e.fn()
            warm = time.perf_counter() - t0
        except Exception as err:  # a peer that does not support the case, e.g. 3-D ScoreCAM
            e.error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            continue
        e.number = max(1, math.ceil(min_time / max(warm, 1e-9))) if min_time > 0 else 1
        live.append(e)
    for _ in range(repeats):
        for e in live:
            t0 = time.perf_counter()
            for _ in range(e.number):
                e.fn()
            e.times.append((time.perf_counter() - t0) / e.number)


# --------------------------------------------------------------------------- ifa_jax


def make_floor(probe: LayerProbe):
    """Jitted ``(variables, x, y) -> (logits, A, G)``: one forward + the vjp of the label's
    logit to the layer's output A, with nothing else (no CAM, statistics or finite check).

    A and the logits are returned because every CAM needs them; returning G alone would let
    XLA drop the forward pass wherever G does not depend on it (a linear head after global
    pooling, as in ResNet at stage4 or ConvNet at its last conv).
    """
    layer = probe.layers[0]

    @jax.jit
    def floor(variables, x, y):
        _, shapes = jax.eval_shape(lambda v, x: probe.tapped(v, x, None), variables, x)
        zeros = {layer: jnp.zeros(shapes[layer].shape, shapes[layer].dtype)}

        def total(deltas):
            logits, acts = probe.tapped(variables, x, deltas)
            score = jnp.sum(jnp.take_along_axis(logits, y[:, None], axis=-1))
            return score, (logits, acts[layer])

        grads, (logits, A) = jax.grad(total, has_aux=True)(zeros)
        return logits, A, grads[layer]

    return floor


def make_cam_fn(probe: LayerProbe, method: str = "gradcam"):
    """Jitted ``(variables, x, y, scale) -> CAMs (B, *spatial_in)`` on the common scale."""

    @jax.jit
    def cam_at_input(variables, x, y, sc):
        res = probe(variables, x, y)
        out = cams.cam(res.activations, res.gradients, method)
        return cams.upsample(scale.apply_scale(out.cam, sc), x.shape[1:-1])

    return cam_at_input


@jax.jit
def _post(L, sc, spatial_like):
    return cams.upsample(scale.apply_scale(L, sc), spatial_like.shape[1:-1])


def _scale_of(cam_max, cam_min) -> scale.Scale:
    """The common scale (defaults: P90 of maxima, P50 of minima); with random weights it
    can be degenerate, then the full range is used (timing does not depend on it)."""
    try:
        return scale.common_scale(np.asarray(cam_max), np.asarray(cam_min))
    except ValueError:
        return scale.scale_from_bounds(float(np.min(cam_min)), float(np.max(cam_max)) + 1e-6)


def ifa_entries(case: Case, variables, probe: LayerProbe, x, y) -> list[Entry]:
    b, bs = case.batch, min(case.scorecam_batch, case.batch)
    valid = jnp.ones((b,), bool)
    floor = make_floor(probe)
    A_shape = probe.output_shapes(variables, x)[1][probe.layers[0]]

    def empty():
        return analysis.init(case.num_classes, A_shape[-1], tuple(A_shape[1:-1]))

    state = {"gradcam": empty(), "hirescam": empty(), E2E_METHODS: tuple(empty()
                                                                       for _ in E2E_METHODS)}

    def step(method):
        def run():
            state[method], per = analysis.analysis_step(
                state[method], probe, variables, x, y, valid, num_classes=case.num_classes,
                method=method)
            jax.block_until_ready((state[method], per))
            return per
        return run

    per = step("gradcam")()
    sc = _scale_of(per.cam_max, per.cam_min)
    cam_fn = make_cam_fn(probe, "gradcam")
    xs, ys = x[:bs], y[:bs]

    def api_gradcam():
        _, out = explain(probe, variables, x, y, "gradcam")
        return jax.block_until_ready(_post(out.cam, sc, x))

    sc_score = {}

    def scorecam():
        _, out = explain(probe, variables, xs, ys, "scorecam")
        if not sc_score:
            sc_score["s"] = _scale_of(out.max, out.min)
        return jax.block_until_ready(_post(out.cam, sc_score["s"], xs))

    forward = jax.jit(probe.forward)
    return [
        Entry("floor: jit fwd + vjp to layer (A, G)", "floor", b,
              lambda: jax.block_until_ready(floor(variables, x, y))),
        Entry("jit forward only (logits)", "forward", b,
              lambda: jax.block_until_ready(forward(variables, x))),
        Entry("ifa analysis_step gradcam", "ifa", b, step("gradcam")),
        Entry("ifa analysis_step hirescam", "ifa", b, step("hirescam")),
        Entry(f"ifa analysis_step {len(E2E_METHODS)} methods, 1 probe", "ifa", b,
              step(E2E_METHODS)),
        Entry("ifa CAM gradcam, common scale, input res", "ifa", b,
              lambda: jax.block_until_ready(cam_fn(variables, x, y, sc))),
        Entry("ifa explain() gradcam (eager API)", "ifa", b, api_gradcam),
        Entry(f"ifa explain() scorecam (batch {bs})", "ifa", bs, scorecam),
    ]


# --------------------------------------------------------------------------- PyTorch peers


def peer_versions() -> dict[str, str] | str:
    """Versions of torch and pytorch-grad-cam, or why they cannot be used."""
    try:
        import pytorch_grad_cam  # noqa: F401
        import torch
    except Exception as err:  # ImportError, or a broken CUDA build
        return (f"{type(err).__name__}: {err}. Install the peers with "
                "`pip install -e '.[bench]'` (best in a separate venv, see README)")
    out = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
           "torch_interop_threads": torch.get_num_interop_threads()}
    for pkg in ("grad-cam", "torchvision"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _torch_modules():
    """PyTorch twins of the Flax models (defined lazily: torch is optional)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    def tensor(a):  # a writable float32 copy (jax arrays convert to read-only views)
        return torch.from_numpy(np.array(a, dtype=np.float32))

    def conv_weight(k):  # (*kernel, in, out) -> (out, in, *kernel)
        nd = k.ndim - 2
        return tensor(k.transpose(nd + 1, nd, *range(nd)))

    def set_conv(conv, p):
        conv.weight.data.copy_(conv_weight(np.asarray(p["kernel"])))
        if "bias" in p:
            conv.bias.data.copy_(tensor(p["bias"]))

    def set_dense(lin, p, kernel=None):
        k = np.asarray(p["kernel"]) if kernel is None else kernel
        lin.weight.data.copy_(tensor(k.T))
        lin.bias.data.copy_(tensor(p["bias"]))

    def set_bn(bn, p, s):
        bn.weight.data.copy_(tensor(p["scale"]))
        bn.bias.data.copy_(tensor(p["bias"]))
        bn.running_mean.copy_(tensor(s["mean"]))
        bn.running_var.copy_(tensor(s["var"]))

    class SameConv(nn.Module):
        """A conv with XLA's 'SAME' padding: symmetric (a plain padded conv) at stride 1,
        possibly asymmetric (low = total // 2) at stride 2, as Flax computes it."""

        def __init__(self, p, stride=1):
            super().__init__()
            k = np.asarray(p["kernel"])
            self.nd, self.k, self.s = k.ndim - 2, k.shape[:-2], stride
            conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[self.nd - 1]
            self.symmetric = stride == 1 and all(n % 2 for n in self.k)
            pad = tuple(n // 2 for n in self.k) if self.symmetric else 0
            self.conv = conv(k.shape[-2], k.shape[-1], self.k, stride=stride, padding=pad,
                             bias="bias" in p)
            set_conv(self.conv, p)

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
        def __init__(self, params, input_hw=(28, 28)):
            super().__init__()
            k1, k2 = np.asarray(params["conv1"]["kernel"]), np.asarray(params["conv2"]["kernel"])
            self.conv1 = nn.Conv2d(k1.shape[2], k1.shape[3], k1.shape[:2])
            self.conv2 = nn.Conv2d(k2.shape[2], k2.shape[3], k2.shape[:2])
            self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()
            self.pool1, self.pool2 = nn.MaxPool2d(3, 3), nn.MaxPool2d(3, 3)
            f1 = np.asarray(params["fc1"]["kernel"])  # rows in (h, w, c) order (NHWC flatten)
            c = k2.shape[3]
            hw = f1.shape[0] // c
            h = int(round(math.sqrt(hw)))
            # PyTorch flattens NCHW, i.e. (c, h, w): permute the rows before transposing.
            f1_nchw = f1.reshape(h, hw // h, c, -1).transpose(2, 0, 1, 3).reshape(f1.shape)
            self.fc1 = nn.Linear(f1.shape[0], f1.shape[1])
            head = np.asarray(params["head"]["kernel"])
            self.head = nn.Linear(head.shape[0], head.shape[1])
            set_conv(self.conv1, params["conv1"])
            set_conv(self.conv2, params["conv2"])
            set_dense(self.fc1, params["fc1"], f1_nchw)
            set_dense(self.head, params["head"])

        def forward(self, x):
            x = self.pool1(self.relu1(self.conv1(x)))
            x = self.pool2(self.relu2(self.conv2(x)))
            return self.head(F.relu(self.fc1(torch.flatten(x, 1))))

    class Block(nn.Module):
        def __init__(self, p, s, stride):
            super().__init__()
            nd = np.asarray(p["conv1"]["kernel"]).ndim - 2
            bn = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[nd - 1]
            self.conv1, self.conv2 = SameConv(p["conv1"], stride), SameConv(p["conv2"])
            self.bn1 = bn(self.conv1.conv.out_channels, eps=1e-5)
            self.bn2 = bn(self.conv2.conv.out_channels, eps=1e-5)
            set_bn(self.bn1, p["bn1"], s["bn1"])
            set_bn(self.bn2, p["bn2"], s["bn2"])
            self.proj = None
            if "proj" in p:
                self.proj = SameConv(p["proj"], stride)
                self.proj_bn = bn(self.proj.conv.out_channels, eps=1e-5)
                set_bn(self.proj_bn, p["proj_bn"], s["proj_bn"])

        def forward(self, x):
            y = F.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            if self.proj is not None:
                x = self.proj_bn(self.proj(x))
            return F.relu(x + y)

    class TorchResNet(nn.Module):
        def __init__(self, variables, large: bool):
            super().__init__()
            p, s = variables["params"], variables["batch_stats"]
            k = np.asarray(p["stem_conv"]["kernel"])
            nd = k.ndim - 2
            bn = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[nd - 1]
            if large:
                conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[nd - 1]
                self.stem_conv = conv(k.shape[-2], k.shape[-1], k.shape[:-2], stride=2,
                                      padding=3, bias=False)
                set_conv(self.stem_conv, p["stem_conv"])
                self.pool = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)[nd - 1](3, 2, 1)
            else:
                self.stem_conv, self.pool = SameConv(p["stem_conv"]), nn.Identity()
            self.stem_bn = bn(k.shape[-1], eps=1e-5)
            set_bn(self.stem_bn, p["stem_bn"], s["stem_bn"])
            stages = sorted((n for n in p if n.startswith("stage")), key=lambda n: int(n[5:]))
            for i, name in enumerate(stages):
                blocks = sorted(p[name], key=lambda n: int(n[5:]))
                setattr(self, name, nn.Sequential(*[
                    Block(p[name][b], s[name][b], 2 if (i > 0 and j == 0) else 1)
                    for j, b in enumerate(blocks)]))
            self.stages = stages
            head = np.asarray(p["head"]["kernel"])
            self.head = nn.Linear(head.shape[0], head.shape[1])
            set_dense(self.head, p["head"])

        def forward(self, x):
            x = self.pool(F.relu(self.stem_bn(self.stem_conv(x))))
            for name in self.stages:
                x = getattr(self, name)(x)
            return self.head(torch.mean(x, dim=tuple(range(2, x.ndim))))

    class TorchConvNet(nn.Module):
        def __init__(self, params, relu_last=True):
            super().__init__()
            names = sorted((n for n in params if n.startswith("conv")), key=lambda n: int(n[4:]))
            for n in names:
                setattr(self, n, SameConv(params[n]))
            self.names, self.relu_last = names, relu_last
            head = np.asarray(params["head"]["kernel"])
            self.head = nn.Linear(head.shape[0], head.shape[1])
            set_dense(self.head, params["head"])

        def forward(self, x):
            for i, n in enumerate(self.names):
                x = getattr(self, n)(x)
                if i < len(self.names) - 1 or self.relu_last:
                    x = F.relu(x)
            return self.head(torch.mean(x, dim=tuple(range(2, x.ndim))))

    return TorchMnistCNN, TorchResNet, TorchConvNet


def torch_twin(case: Case, model, variables):
    """The PyTorch twin of the case's Flax model, in eval mode, with the Flax weights."""
    TorchMnistCNN, TorchResNet, TorchConvNet = _torch_modules()
    if case.kind == "mnist_cnn":
        return TorchMnistCNN(variables["params"]).eval()
    if case.kind == "resnet":
        large = model.stem == "large" or (model.stem == "auto"
                                          and min(case.input_shape[:-1]) >= 96)
        return TorchResNet(variables, large).eval()
    return TorchConvNet(variables["params"], model.relu_last).eval()


def torch_twin_layer(case: Case, tm):
    """The twin's module whose output matches the Flax layer's (Flax's ConvNet 'convN' is
    the conv's output before its functional ReLU; so is the twin's SameConv)."""
    return getattr(tm, case.layer)


def to_torch_input(x):
    import torch

    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.array(x), -1, 1)))


def check_logits(case: Case, model, variables, tm, x) -> float:
    """assert_allclose of the torch twin's logits against Flax's; returns the max |diff|."""
    import torch

    ref = np.asarray(model.apply(variables, x, **case.apply_kwargs))
    with torch.no_grad():
        got = tm(to_torch_input(x)).numpy()
    atol = 1e-3 * max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=atol,
                               err_msg=f"{case.name}: converted PyTorch model disagrees")
    return float(np.abs(got - ref).max())


def peer_entries(case: Case, model, variables, x, y,
                 threads: Sequence[int] = (2,)) -> tuple[list[Entry], dict]:
    """Timed PyTorch calls, one set per torch thread count in ``threads``."""
    import torch
    from pytorch_grad_cam import GradCAM, ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    b, bs = case.batch, min(case.scorecam_batch, case.batch)
    base = torch_twin(case, model, variables)
    info = {"logits_max_abs_diff": check_logits(case, model, variables, base, x[:8])}
    xt, yt = to_torch_input(x), torch.from_numpy(np.array(y)).long()
    targets = [ClassifierOutputTarget(int(c)) for c in np.asarray(y)]

    def twin():  # one model per user, so hooks of one CAM object never fire in another
        m = copy.deepcopy(base)
        layer = torch_twin_layer(case, m)
        return m, layer

    bare, _ = twin()

    def fwd_bwd_all():
        bare.zero_grad(set_to_none=True)
        out = bare(xt)
        out.gather(1, yt[:, None]).sum().backward()

    frozen, frozen_layer = twin()
    for p in frozen.parameters():
        p.requires_grad_(False)
    grabbed = {}

    def grab(module, inputs, output):
        output = output.detach().requires_grad_(True)
        grabbed["a"] = output
        return output

    frozen_layer.register_forward_hook(grab)

    def fwd_grad_layer():
        out = frozen(xt)
        (g,) = torch.autograd.grad(out.gather(1, yt[:, None]).sum(), grabbed["a"])
        return g

    m_grad, l_grad = twin()
    gradcam = GradCAM(model=m_grad, target_layers=[l_grad])
    m_score, l_score = twin()
    scorecam = ScoreCAM(model=m_score, target_layers=[l_score])
    xs = xt[:bs]

    def run_scorecam():
        with contextlib.redirect_stderr(io.StringIO()):  # its per-image tqdm bars
            return scorecam(input_tensor=xs, targets=targets[:bs])

    def with_threads(n, fn):
        def run():
            if torch.get_num_threads() != n:
                torch.set_num_threads(n)
            return fn()
        return run

    entries = []
    for n in threads:
        entries += [
            Entry(f"torch fwd + bwd (all params) [{n} thr]", "torch", b,
                  with_threads(n, fwd_bwd_all)),
            Entry(f"torch fwd + grad to layer only [{n} thr]", "torch", b,
                  with_threads(n, fwd_grad_layer)),
            Entry(f"grad-cam GradCAM [{n} thr]", "peer", b,
                  with_threads(n, lambda: gradcam(input_tensor=xt, targets=targets)),
                  compare_to="ifa CAM gradcam, common scale, input res"),
            Entry(f"grad-cam ScoreCAM (batch {bs}) [{n} thr]", "peer", bs,
                  with_threads(n, run_scorecam),
                  compare_to=f"ifa explain() scorecam (batch {bs})"),
        ]
    return entries, info


# --------------------------------------------------------------------------- one case


def run_case(case: Case, *, repeats: int, min_time: float, peers: bool,
             torch_threads: Sequence[int] = (2,), log: Callable[[str], None] = print) -> dict:
    model, variables, probe, x, y = setup_case(case)
    A_shape = probe.output_shapes(variables, x)[1][probe.layers[0]]
    entries = ifa_entries(case, variables, probe, x, y)
    result: dict[str, Any] = {"case": case.name, "description": case.describe(),
                              "input_shape": list(case.input_shape), "batch": case.batch,
                              "layer": case.layer, "layer_shape": list(A_shape),
                              "scorecam_batch": min(case.scorecam_batch, case.batch)}
    if peers:
        try:
            more, info = peer_entries(case, model, variables, x, y, torch_threads)
            entries += more
            result["peer_check"] = info
        except AssertionError:
            raise
        except Exception as err:
            result["peer_error"] = f"{type(err).__name__}: {err}"
            log(f"  peers unavailable for {case.name}: {result['peer_error']}")
    time_interleaved(entries, repeats=repeats, min_time=min_time)
    floor = next(e for e in entries if e.group == "floor")
    by_name = {e.name: e for e in entries}
    rows = []
    for e in entries:
        row = {"name": e.name, "group": e.group, "images": e.images, "error": e.error}
        if e.error is None:
            row.update({
                "seconds_median": e.seconds, "seconds_all": e.times, "calls_per_repeat": e.number,
                "images_per_s": e.images_per_s, "first_call_s": e.first_s,
                "compile_s": max(e.first_s - e.seconds, 0.0),
                "x_floor": paired_ratio(e, floor),
            })
            ref = by_name.get(e.compare_to) if e.compare_to else None
            if ref is not None and ref.error is None:
                row["ifa_row"] = ref.name
                row["ifa_speedup"] = paired_ratio(ref, e)
        rows.append(row)
    result["rows"] = rows
    fwd = next((e for e in entries if e.group == "forward" and e.error is None), None)
    if fwd is not None:
        # ScoreCAM runs K forward passes per image: its throughput is at most fwd / K.
        result["scorecam_forward_bound_images_per_s"] = fwd.images_per_s / A_shape[-1]
        for r, e in zip(rows, entries):
            if "scorecam" in r["name"].lower() and r["error"] is None:
                r["x_scorecam_bound"] = paired_ratio(e, fwd) * A_shape[-1]
    best: dict[str, dict] = {}
    for r in rows:  # the fastest torch thread count of each peer, against its ifa_jax row
        if r["group"] != "peer" or "ifa_speedup" not in r:
            continue
        key = r["name"].split(" [")[0]
        if key not in best or r["images_per_s"] > best[key]["peer_images_per_s"]:
            best[key] = {"peer_row": r["name"], "peer_images_per_s": r["images_per_s"],
                         "ifa_row": r["ifa_row"], "ifa_speedup": r["ifa_speedup"]}
    result["speedup_vs_best_peer"] = best
    return result


# --------------------------------------------------------------------------- end to end


def _counting_probe(probe: LayerProbe):
    """A probe that counts the executions of its model (one per forward pass of a batch)."""
    counter = {"calls": 0}

    def bump():
        counter["calls"] += 1

    def tapped(variables, x, deltas):
        jax.debug.callback(bump)
        return probe.tapped(variables, x, deltas)

    return LayerProbe(tapped, probe.layers, probe.single, probe.check_finite), counter


def _ifa_pipeline(probe, variables, ds, *, batch: int, methods: Sequence[str]) -> dict:
    """One analysis pass (all methods), common scales, consistency evaluation: seconds."""
    from ifa_jax.consistency import consistency_levels, summarize_consistency

    t0 = time.perf_counter()
    # As the runner does: every method from one probe call per batch (one model pass).
    analyses = analysis.analyze(
        probe, variables, ((b.x, b.y, b.mask) for b in data.batches(ds, batch)),
        num_classes=ds.num_classes, method=tuple(methods), progress=False,
        keep_importance=True, count="all")  # random weights: few samples are correct
    t1 = time.perf_counter()
    scales = {cams.canonical_method(m): _scale_of(analyses[m].samples["cam_max"],
                                                  analyses[m].samples["cam_min"])
              for m in methods}
    t2 = time.perf_counter()
    masks = decompose.select(np.nan_to_num(analyses[methods[0]].summary.im_class), "top",
                             ratio=0.1)
    summarize_consistency(consistency_levels(
        probe, variables, ((b.x, b.y, b.mask) for b in data.batches(ds, batch)),
        scales=scales, masks=masks, classes=range(ds.num_classes)))
    t3 = time.perf_counter()
    return {"analysis_s": t1 - t0, "scale_s": t2 - t1, "consistency_s": t3 - t2,
            "total_s": t3 - t0}


def end_to_end(samples: int, *, batch: int = 256, methods: Sequence[str] = E2E_METHODS,
               repeats: int = 3, log: Callable[[str], None] = print) -> dict:
    """The whole analysis of ``samples`` embedded-MNIST digits with a random MnistCNN.

    Mirrors the runner (``runner.stages.stage_analyse``: one analysis pass for all methods;
    ``consistency.consistency_levels``). Runs it twice (cold: with tracing and
    compilation; warm: caches filled), counts
    the model passes on a 2-batch dataset, and measures the floor at the same batch, so that
    ``floor_bound_s_per_1k`` = passes x 1000 / floor throughput is the time the passes alone
    would take at the floor's speed.
    """
    splits = data.load_mnist_embedded()
    x = np.concatenate([splits.train.x, splits.validation.x])
    y = np.concatenate([splits.train.y, splits.validation.y])
    reps = -(-samples // len(y))
    x, y = np.concatenate([x] * reps)[:samples], np.concatenate([y] * reps)[:samples]
    ds = data.Dataset(x, y, 10, f"mnist_embedded[{samples}]")
    model = MnistCNN()
    variables = model.init(jax.random.key(0), x[:1])
    probe = linen_probe(model, "relu2")
    cold = _ifa_pipeline(probe, variables, ds, batch=batch, methods=methods)
    warm = _ifa_pipeline(probe, variables, ds, batch=batch, methods=methods)

    counting, counter = _counting_probe(probe)
    small = data.Dataset(x[:2 * batch], y[:2 * batch], 10, "count")
    counts = {}
    counter["calls"] = 0
    analysis.analyze(counting, variables,
                     ((b.x, b.y, b.mask) for b in data.batches(small, batch)),
                     num_classes=10, method=tuple(methods), progress=False, count="all")
    jax.effects_barrier()
    counts["analysis"] = counter["calls"] / 2
    from ifa_jax.consistency import consistency_levels

    counter["calls"] = 0
    sc = {cams.canonical_method(m): scale.scale_from_bounds(0.0, 1.0) for m in methods}
    consistency_levels(counting, variables,
                       ((b.x, b.y, b.mask) for b in data.batches(small, batch)),
                       scales=sc, masks=np.ones((10, 200)), classes=range(10))
    jax.effects_barrier()
    counts["consistency"] = counter["calls"] / 2
    analysis_passes = counts["analysis"]
    passes = analysis_passes + counts["consistency"]

    floor = make_floor(probe)
    xb, yb = jnp.asarray(x[:batch]), jnp.asarray(y[:batch], jnp.int32)
    e = Entry("floor", "floor", batch, lambda: jax.block_until_ready(floor(variables, xb, yb)))
    time_interleaved([e], repeats=repeats, min_time=0.2)
    per_1k = {f"{k}_per_1k": v * 1000 / samples for k, v in warm.items()}
    out = {
        "samples": samples, "batch": batch, "methods": list(methods), "classes": 10,
        "cold_s": cold, "warm_s": warm,
        "cold_s_per_1k": cold["total_s"] * 1000 / samples,
        "warm_s_per_1k": warm["total_s"] * 1000 / samples, **per_1k,
        "model_passes": {"per_stage": counts, "analysis": analysis_passes,
                         "evaluation": counts["consistency"], "total": passes},
        "floor_images_per_s": e.images_per_s,
        "floor_bound_s_per_1k": passes * 1000 / e.images_per_s,
    }
    out["warm_x_floor_bound"] = out["floor_bound_s_per_1k"] / out["warm_s_per_1k"]
    return out


# --------------------------------------------------------------------------- memory


def memory(sizes: Sequence[int] = (5000, 50000), batch: int = 256) -> list[dict]:
    """Peak RSS of the analysis pass per size, each in a fresh subprocess (bench_memory)."""
    from experiments import bench_memory

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rows = []
    for n in sizes:
        # Linux carries a parent's peak RSS into a child it forks and execs (ru_maxrss
        # survives execve), so this large process would inflate the child's number; a small
        # shell that forks the measured process in turn gives it a clean count.
        out = subprocess.run(["sh", "-c", '"$0" "$@"; exit $?', sys.executable, "-m",
                              bench_memory.__name__, "--one", str(n), "--batch", str(batch)],
                             capture_output=True, text=True, check=True, cwd=root)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    for r in rows:
        r["ratio_to_first"] = r["peak_rss_mib"] / rows[0]["peak_rss_mib"]
    return rows


# --------------------------------------------------------------------------- report


def versions() -> dict[str, Any]:
    out: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine(),
                           "processor": platform.processor() or None}
    for pkg in ("jax", "jaxlib", "flax", "numpy"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    out["backend"] = jax.default_backend()
    out["devices"] = [str(d) for d in jax.devices()]
    out["cpu_count"] = os.cpu_count()
    # XLA:CPU sizes its intra-op pool to the schedulable cores.
    out["jax_cpu_threads"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count()
    out["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    return out


def format_case(res: dict) -> str:
    lines = [f"== {res['case']}: {res['description']}, A {tuple(res['layer_shape'])} =="]
    lines.append(f"{'':44}{'img/s':>10}{'ms/call':>10}{'x floor':>9}{'speedup':>9}"
                 f"{'compile s':>11}")
    for r in res["rows"]:
        if r["error"]:
            lines.append(f"{r['name']:44}  not run: {r['error'][:70]}")
            continue
        speed = f"{r['ifa_speedup']:.2f}x" if "ifa_speedup" in r else ""
        comp = f"{r['compile_s']:.2f}" if r["group"] in ("floor", "forward", "ifa") else ""
        lines.append(f"{r['name']:44}{r['images_per_s']:>10.1f}"
                     f"{1000 * r['seconds_median']:>10.1f}{r['x_floor']:>9.3f}{speed:>9}"
                     f"{comp:>11}")
    for b in res.get("speedup_vs_best_peer", {}).values():
        lines.append(f"  {b['ifa_row']} vs {b['peer_row']} (fastest thread count): "
                     f"{b['ifa_speedup']:.2f}x")
    if "scorecam_forward_bound_images_per_s" in res:
        got = ", ".join(f"{r['name'].split(' (')[0]} {r['x_scorecam_bound']:.2f}"
                        for r in res["rows"] if "x_scorecam_bound" in r)
        lines.append(f"  ScoreCAM bound (forward img/s / K={res['layer_shape'][-1]}): "
                     f"{res['scorecam_forward_bound_images_per_s']:.1f} img/s; share of it "
                     f"reached: {got}")
    if "peer_check" in res:
        lines.append(f"  torch twin logits vs Flax: max |diff| "
                     f"{res['peer_check']['logits_max_abs_diff']:.2e} (assert_allclose passed)")
    if "peer_error" in res:
        lines.append(f"  peers: {res['peer_error']}")
    return "\n".join(lines)


def format_e2e(e: dict) -> str:
    p = e["model_passes"]
    return "\n".join([
        f"== end to end: MnistCNN relu2, {e['samples']} embedded-MNIST digits, batch "
        f"{e['batch']}, methods {', '.join(e['methods'])}, {e['classes']} classes ==",
        f"  seconds per 1,000 images: warm {e['warm_s_per_1k']:.3f} (analysis "
        f"{e['analysis_s_per_1k']:.3f}, scale {e['scale_s_per_1k']:.4f}, consistency "
        f"{e['consistency_s_per_1k']:.3f}); cold (with compiles) {e['cold_s_per_1k']:.3f}",
        f"  forward passes over the data: {p['analysis']:g} analysis + "
        f"{p['evaluation']:g} evaluation = {p['total']:g} (the evaluation batches one vjp "
        f"per class on its single forward)",
        f"  floor {e['floor_images_per_s']:.0f} img/s -> that many forward + vjp passes at "
        f"the floor: {e['floor_bound_s_per_1k']:.3f} s per 1,000 "
        f"({e['warm_x_floor_bound']:.2f} of the warm time)",
    ])


def run_benchmark(cases: Sequence[str] = CASE_NAMES, *, quick: bool = False,
                  repeats: int | None = None, min_time: float | None = None,
                  peers: bool = True, e2e: bool = True, e2e_samples: int | None = None,
                  memory_sizes: Sequence[int] | None = None, json_path: str | None = None,
                  batch: int | None = None, scorecam_batch: int | None = None,
                  torch_threads: Sequence[int] | None = None,
                  log: Callable[[str], None] = print) -> dict:
    """Run the benchmark and return (and optionally write) its results as a dict.

    ``batch`` / ``scorecam_batch`` override every case's (for tests); ``memory_sizes``
    None skips the memory benchmark. ``torch_threads``: the torch thread counts to time
    the peers with (default: JAX's CPU thread count only).
    """
    repeats = repeats if repeats is not None else (3 if quick else 5)
    min_time = min_time if min_time is not None else (0.2 if quick else 0.4)
    table = make_cases(quick)
    unknown = [c for c in cases if c not in table]
    if unknown:
        raise ValueError(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(table)}")
    out: dict[str, Any] = {"versions": versions(), "quick": quick, "repeats": repeats,
                           "min_time_s": min_time, "cases": {}}
    peer_info = peer_versions() if peers else "disabled (--no-peers)"
    if isinstance(peer_info, dict):
        import torch

        torch_threads = tuple(torch_threads or (out["versions"]["jax_cpu_threads"],))
        torch.set_num_threads(torch_threads[0])
        peer_info["torch_threads"] = list(torch_threads)
        out["peers"] = peer_info
    else:
        out["peers"] = {"skipped": peer_info}
        if peers:
            log(f"PyTorch peers skipped: {peer_info}")
    v = out["versions"]
    log(f"jax {v.get('jax')} ({v['backend']}, {v['jax_cpu_threads']} CPU threads), flax "
        f"{v.get('flax')}, numpy {v.get('numpy')}, python {v['python']}; peers: "
        + (", ".join(f"{k} {val}" for k, val in out["peers"].items())))
    log(f"repeats {repeats} (median, interleaved), >= {min_time:.2f} s per measurement"
        + (" [quick]" if quick else ""))
    for name in cases:
        case = table[name]
        if batch is not None:
            case = dataclasses.replace(case, batch=batch)
        if scorecam_batch is not None:
            case = dataclasses.replace(case, scorecam_batch=scorecam_batch)
        res = run_case(case, repeats=repeats, min_time=min_time,
                       peers=isinstance(peer_info, dict), torch_threads=torch_threads or (),
                       log=log)
        out["cases"][name] = res
        log(format_case(res))
    if e2e:
        n = e2e_samples if e2e_samples is not None else (1000 if quick else 5000)
        out["end_to_end"] = end_to_end(n, batch=min(256, n), repeats=repeats, log=log)
        log(format_e2e(out["end_to_end"]))
    if memory_sizes:
        out["memory"] = memory(memory_sizes)
        log("== memory: peak RSS of the analysis pass (fresh subprocess per size) ==")
        for r in out["memory"]:
            log(f"  {r['samples']:>7} samples: {r['peak_rss_mib']:.1f} MiB (x"
                f"{r['ratio_to_first']:.3f}), {r['images_per_s']:.0f} img/s")
    if json_path:
        directory = os.path.dirname(os.path.abspath(json_path))
        os.makedirs(directory, exist_ok=True)
        with open(json_path, "w") as f:
            json.dump(_jsonable(out), f, indent=1)
        log(f"wrote {json_path}")
    return out


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="shrink ResNet-18 to 112x112, the 3-D batch to 2, 3 repeats")
    parser.add_argument("--cases", default=",".join(CASE_NAMES),
                        help=f"comma-separated subset of {','.join(CASE_NAMES)}")
    parser.add_argument("--json", help="write all results to this JSON file")
    parser.add_argument("--repeats", type=int, help="timed repeats (default 5, quick 3)")
    parser.add_argument("--min-time", type=float,
                        help="seconds per measurement; fast calls are repeated to reach it")
    parser.add_argument("--no-peers", action="store_true", help="skip the PyTorch peers")
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end run")
    parser.add_argument("--e2e-samples", type=int, help="digits for the end-to-end run")
    parser.add_argument("--torch-threads", default="",
                        help="comma-separated torch thread counts for the peers (default: "
                        "JAX's CPU thread count); e.g. 2,1 on a shared machine")
    parser.add_argument("--memory", action="store_true",
                        help="also measure peak RSS at --memory-sizes samples")
    parser.add_argument("--memory-sizes", type=int, nargs="+", default=[5000, 50000])
    args = parser.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    run_benchmark(cases, quick=args.quick, repeats=args.repeats, min_time=args.min_time,
                  peers=not args.no_peers, e2e=not args.no_e2e, e2e_samples=args.e2e_samples,
                  memory_sizes=args.memory_sizes if args.memory else None,
                  json_path=args.json,
                  torch_threads=[int(t) for t in args.torch_threads.split(",") if t.strip()])
    return 0


if __name__ == "__main__":
    sys.exit(main())

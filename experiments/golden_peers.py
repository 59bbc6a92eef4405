"""Golden data from the PyTorch peers: tests/data/peers.npz, read by tests/test_peer_golden.py.

Regenerate (from the repository root; the peers live in their own venv, the tests need no
torch). On x86_64 with this machine's local wheels (pip takes torch and torchvision from
its local disk; PyPI's torchvision does not import beside the local torch 2.13.0, and
opencv-python-headless gives pytorch-grad-cam its cv2):

    python3 -m venv /tmp/venv_peers
    /tmp/venv_peers/bin/pip install torch==2.14.1 torchvision==0.29.1
    /tmp/venv_peers/bin/pip install grad-cam==1.5.7 torchcam==0.5.0 \
        opencv-python-headless jax==0.10.2 flax==0.12.8 optax==0.2.8 scikit-learn
    /tmp/venv_peers/bin/python -m experiments.golden_peers

(torch-cam is optional: without it only pytorch-grad-cam's maps are written.) It runs in
about 20 s, prints what it stored per case and the file's size (about 360 KB; the tests
allow 400 KB).

Two small Flax CNNs are trained on scikit-learn's 8x8 digits (3 and 20 epochs), so that
gradients are those of a model that classifies: ``MnistCNN`` shrunk (28x28 inputs,
rectified second conv ``relu2``, a 6x6 grid after max-pooling, so G varies over the grid;
``relu1`` on a 24x24 grid) and ``ConvNet`` (the 8x8 digits, ``relu1`` and ``relu2`` on the
input's own grid, global mean + dense, so resampling the grid is the identity and the
classic CAM applies). Each is ported weight for weight to PyTorch
(:mod:`experiments.bench.torch_twins`; the ConvNet twin gets ReLU modules,
:class:`ConvNetWithReLUs`), and on eight validation digits, target = the label, every peer
method that maps the tapped layer's (A, G) to a CAM writes its raw map: the CAM before the
peers' ReLU and per-image min-max scaling (for pytorch-grad-cam, what ``get_cam_image``
returns; for torch-cam, ``normalized=False`` with its ReLU switched off). RandomCAM, SSCAM
and SmoothGradCAM++ draw from torch's or NumPy's global random state, which ifa_jax
cannot reproduce: they are not stored. Methods of more than one layer (RefineCAM) or of
the whole model (FullGrad, SESS) are stored for logit targets, as described below.
LeGrad needs a transformer: ``--vit`` writes it to its own file (last section below).

Keys (``case`` in ``mnist_cnn``, ``convnet``; ``score`` in ``logit``, ``probability``;
B = 8, (H, W) the input grid, (h, w) the tapped layer's):

- ``versions``: the peers' and frameworks' versions, one string each;
- ``{case}/spec``: JSON ``{"model": class in ifa_jax.runner.models, "kwargs": ..., "layer": the
  tapped layer, "scores": [...], "layers": RefineCAM's layers ["relu1", "relu2"]}``;
- ``{case}/variables/params/conv1/kernel`` ...: the Flax variables, '/'-joined paths;
- ``{case}/x`` (B, H, W, C), ``{case}/labels`` (B,), ``{case}/logits`` (B, 10) (torch);
- ``{case}/A`` (B, h, w, K) and ``{case}/{score}/G`` (B, h, w, K): the tapped layer's
  output and the gradient of the summed target scores, from torch, channels-last;
- ``{case}/{score}/pytorch-grad-cam/{Class}`` and ``{case}/{score}/torch-cam/{Class}``
  (B, h, w): raw maps; ``pytorch-grad-cam/GradCAM+eigen_smooth`` with ``eigen_smooth=True``;
  FinerCAM (both libraries) builds its own target from the label, so it is stored under
  ``logit`` only. ``pytorch-grad-cam/SegEigenCAM``: its projection after the sign
  correction (it centres |G| * A over the grid before the SVD).

The other layers of ``spec["layers"]`` (``relu1``; logit targets):

- ``{case}/layers/{layer}/A_sum`` (B, K_l) float64: torch's A summed over the grid (A in
  full would double the file); ``{case}/logit/layers/{layer}/G`` (B, h_l, w_l, K_l).

RefineCAM on ``spec["layers"]``, logit targets (:func:`refine_maps`):

- ``{case}/logit/pytorch-grad-cam/RefineCAM`` (B, H, W): base GradCAMPlusPlus; the product
  over layers of each layer's BaseCAM output (ReLU, min-max per image with eps 1e-7,
  cv2.resize to the input grid, min-max again), before the final scale_cam_image;
- ``{case}/logit/torch-cam/RefineCAM`` (B, *largest): base GradCAMpp (torch-cam's
  default), ``normalized=False``: the product over layers of each layer's map after ReLU
  and min-max per image (eps 1e-8), resized (bilinear, align_corners=False) to the per-axis
  largest layer grid (24x24 on mnist_cnn, 8x8 on convnet), not rescaled;
- ``{case}/logit/torch-cam/RefineCAM+GradCAM``: the same with GradCAM as base.

FullGrad, logit targets (:func:`fullgrad_map`; pytorch-grad-cam ignores target_layers and
takes every Conv2d and BatchNorm2d with a bias, here the two convs):

- ``{case}/logit/pytorch-grad-cam/FullGrad`` (B, H, W): the sum that its
  ``aggregate_multi_layers`` min-max scales, i.e. piece 0 + the bias pieces: piece 0 sums
  over the input channels c of |x_c * dy/dx_c|, each min-max scaled (eps 1e-7) per image
  and channel; each bias piece sums over the channels k of one layer of |b_k * dy/dz_k|
  (z the conv's output, before its ReLU), each min-max scaled per image and channel (so
  |b_k| cancels unless b_k = 0) and then resized to (H, W) with cv2.resize (bilinear);
- ``.../FullGrad/bias_pieces`` (B, n, H, W): the bias pieces, in module order (piece 0 is
  the map minus their sum); ``.../FullGrad/bias_layers`` (n,): their torch module names.

SESS, logit targets (:func:`sess_maps`; base GradCAM at the tapped layer, pytorch-grad-cam's
defaults):

- ``{case}/logit/pytorch-grad-cam/SESS`` (B, H, W): each image's fused map (patch CAMs
  weighted by their softmax scores over the maximum, pasted back, averaged where > theta,
  Gaussian blur), before the final scale_cam_image over the batch;
- ``.../SESS/params``: JSON of the parameters as resolved for these inputs (window and
  step = the input's shorter side, the scales, theta, pool, blur, ...);
- ``convnet/logit/pytorch-grad-cam/SESS/unblurred`` (B, 8, 8): the same with
  ``smooth=False`` (small inputs only, to keep the file small).

LeGrad: tests/data/peers_vit.npz, read by tests/test_legrad.py, written (alone; peers.npz
is left as it is) by

    /tmp/venv_peers/bin/python -m experiments.golden_peers --vit

in about 1 min (about 100 KB). A ``models.ViT`` (8x8 digits, patch 2: a 4x4 grid plus the
class token, N = 17; dim 16, 2 blocks of 2 heads, MLP 32) is trained for 15 epochs
(about 330 steps) and ported weight for weight to torchvision's ``VisionTransformer``
(:func:`vit_from_flax`: q, k, v kernels stacked into ``in_proj_weight``; a 1-channel
``conv_proj``; its MLPs' exact GELU swapped for ``nn.GELU(approximate="tanh")``, flax's
``nn.gelu`` default; LayerNorm eps 1e-6 on both sides); its logits equal Flax's to 1e-5
(measured 3e-6). torch-cam 0.5.0's ``LeGrad`` has no default blocks (an explicit list is
required), so each block alone and all of them are stored, its default score projection
(``heads(encoder.ln(tokens.mean(1)))``), ``prefix_tokens=1``, ``normalized=False``,
``class_idx`` = the labels (logit targets). Keys (B = 8, ``block`` in ``block1``,
``block2``, the Flax block names):

- ``versions``; ``vit/spec``: JSON ``{"model": "ViT", "kwargs": ..., "blocks": [...],
  "torch_blocks": the twin's module names, "prefix": 1, "grid": [4, 4], "score": "logit"}``;
- ``vit/variables/params/...``, ``vit/x`` (B, 8, 8, 1), ``vit/labels`` (B,), ``vit/logits``
  (B, 10) (torch);
- ``vit/logit/P/{block}`` (B, heads, N, N): the attention probabilities torch-cam captures;
  ``vit/logit/G/{block}`` (B, heads, N, N): the gradient there of the block's layer score
  for the label;
- ``vit/logit/torch-cam/LeGrad/{block}`` (B, 4, 4): LeGrad on that block alone;
  ``vit/logit/torch-cam/LeGrad/block1+block2`` (B, 4, 4): on both (the mean of their maps).

Guided backpropagation: tests/data/peers_guided.npz, read by tests/test_guided.py, written
(alone; peers.npz is read, not written) by

    /tmp/venv_peers/bin/python -m experiments.golden_peers --guided

in about 10 s (about 45 KB). It takes the two CNN cases' Flax variables, inputs and labels
from peers.npz (no training) and runs pytorch-grad-cam 1.5.7's ``GuidedBackpropReLUModel``
on their twins (:func:`golden_guided`). That class swaps ``torch.nn.ReLU`` modules for a
guided ReLU (backward: grad_out * (x > 0) * (grad_out > 0)); a functional ``F.relu`` stays
plain, so the MnistCNN twin, which rectifies ``fc1`` with ``F.relu``, is wrapped with a
ReLU module there (:class:`MnistCNNWithReLUs`; the ConvNet twin's ReLUs are modules
already). It explains ``output[0, target_category]`` only, so each image is run alone,
target_category = its label (logit targets); it returns d logit / d x as (H, W, C) with
no post-processing (``deprocess_image`` is a separate function). pytorch-grad-cam has no
function for Guided GradCAM (its example script multiplies by the min-max scaled CAM
and deprocesses): only guided backprop is stored. Keys (B = 8):

- ``versions``; ``peers_sha256``: the sha256 of the peers.npz the data was made from;
- ``{case}/logit/pytorch-grad-cam/GuidedBackprop`` (B, H, W, C): the guided gradients;
- ``mnist_cnn/logit/pytorch-grad-cam/GuidedBackprop+functional_relu`` (B, 28, 28, 1): the
  same on the stock twin, whose ``fc1`` ReLU is left plain (a check that the comparison
  can fail: 0.36 to 0.65 relative from the other).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import io
import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # the peers draw a progress bar per sample

import numpy as np  # noqa: E402
import torch  # noqa: E402
from flax import traverse_util  # noqa: E402
from torch import nn  # noqa: E402

from experiments.bench import torch_twins  # noqa: E402
from ifa_jax.runner import data, models  # noqa: E402
from ifa_jax.runner.train import TrainConfig, train  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "peers.npz"
OUT_VIT = OUT.with_name("peers_vit.npz")
OUT_GUIDED = OUT.with_name("peers_guided.npz")
SAMPLES = 8
TRAIN_CONFIG = TrainConfig(batch_size=64, lr=3e-3, seed=0, progress=False)


@dataclasses.dataclass(frozen=True)
class GoldenCase:
    """One model of the golden data: an ``ifa_jax.runner.models`` class, its kwargs, the tapped
    layer, the input side, the target scores the peers explain, the training epochs and
    the layers of the multi-layer methods (RefineCAM)."""

    name: str
    model: str
    kwargs: dict[str, Any]
    layer: str
    side: int
    scores: tuple[str, ...]
    epochs: int
    layers: tuple[str, ...] = ("relu1", "relu2")  # RefineCAM's

    def flax_model(self):
        return getattr(models, self.model)(**self.kwargs)


CASES = (
    GoldenCase(
        "mnist_cnn",
        "MnistCNN",
        {"width1": 8, "width2": 16, "hidden": 32, "num_classes": 10},
        "relu2",
        28,
        ("logit", "probability"),
        3,
    ),
    GoldenCase(
        "convnet",
        "ConvNet",
        {"ndim": 2, "features": [8, 16], "num_classes": 10},
        "relu2",
        8,
        ("logit",),
        20,
    ),
)
# LeGrad's ViT (written to OUT_VIT by --vit): the 8x8 digits in 2x2 patches, a 4x4 grid.
VIT_CASE = GoldenCase(
    "vit",
    "ViT",
    {"num_classes": 10, "patch": 2, "dim": 16, "depth": 2, "num_heads": 2, "mlp_dim": 32},
    "block2",
    8,
    ("logit",),
    15,
    ("block1", "block2"),
)


# --------------------------------------------------------------------------- the models


def trained_variables(case: GoldenCase):
    """Flax variables of ``case``'s model after a few epochs on the digits, and eight
    validation digits: (variables, x (8, side, side, 1), labels (8,))."""
    splits = data.load_sklearn_digits(seed=0)
    train_ds, val_ds = (
        data.Dataset(data.resize_images(ds.x, (case.side,) * 2), ds.y, 10, ds.name)
        for ds in (splits.train, splits.validation)
    )
    config = dataclasses.replace(TRAIN_CONFIG, epochs=case.epochs)
    variables, _ = train(case.flax_model(), train_ds, None, config)
    return variables, val_ds.x[:SAMPLES], val_ds.y[:SAMPLES]


class ConvNetWithReLUs(nn.Module):
    """A ConvNet twin whose ReLUs are modules (the twin's are functional), so that hooks
    see the Flax layers ``relu1 ..``: each conv is ``Sequential(conv, ReLU)``, named as the
    twin's conv, then the global mean and the twin's head."""

    def __init__(self, twin: torch_twins.TorchConvNet):
        super().__init__()
        self.names = twin.names
        for name in self.names:
            setattr(self, name, nn.Sequential(getattr(twin, name), nn.ReLU()))
        self.head = twin.head

    def forward(self, x):
        for name in self.names:
            x = getattr(self, name)(x)
        return self.head(torch.mean(x, dim=tuple(range(2, x.ndim))))


def torch_model(case: GoldenCase, variables) -> tuple[nn.Module, dict[str, nn.Module]]:
    """The torch twin (eval mode) and, for each of its ReLUs, the module whose output is
    the Flax layer's: ``{"relu1": ..., "relu2": ...}``."""
    params = variables["params"]
    if case.model == "MnistCNN":
        tm = torch_twins.mnist_cnn_from_flax(params)
        return tm.eval(), {"relu1": tm.relu1, "relu2": tm.relu2}
    tm = ConvNetWithReLUs(torch_twins.convnet_from_flax(params))
    modules = {f"relu{i}": getattr(tm, n)[1] for i, n in enumerate(tm.names, start=1)}
    return tm.eval(), modules


def channels_last(t: torch.Tensor) -> np.ndarray:
    """(B, C, *spatial) tensor -> (B, *spatial, C) float32 array."""
    return np.ascontiguousarray(np.moveaxis(t.detach().numpy(), 1, -1)).astype(np.float32)


def layer_tensors(tm, modules, xt, score_fn) -> tuple[np.ndarray, dict, dict]:
    """Logits, each module's output A and the gradient G of the summed scores, from torch:
    (logits, {name: A}, {name: G})."""
    grabbed = {}

    def hook(name):
        def grab(module, inputs, output):
            output.retain_grad()
            grabbed[name] = output

        return grab

    handles = [module.register_forward_hook(hook(name)) for name, module in modules.items()]
    try:
        logits = tm(xt)
        score_fn(logits).sum().backward()
    finally:
        for handle in handles:
            handle.remove()
    A = {name: channels_last(a) for name, a in grabbed.items()}
    G = {name: channels_last(a.grad) for name, a in grabbed.items()}
    return logits.detach().numpy(), A, G


# --------------------------------------------------------------------------- the peers


def grad_cam_maps(tm, layer, xt, labels, score: str) -> dict[str, np.ndarray]:
    """Raw maps (B, h, w) of every pytorch-grad-cam method on one layer."""
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import (
        ClassifierOutputSoftmaxTarget,
        ClassifierOutputTarget,
    )

    target = {"logit": ClassifierOutputTarget, "probability": ClassifierOutputSoftmaxTarget}
    targets = [target[score](int(c)) for c in labels]

    def raw(cam, call):
        # get_cam_image returns the CAM before the ReLU and scale_cam_image of
        # compute_cam_per_layer: record it, discard the scaled result.
        seen = []
        get_cam_image = cam.get_cam_image

        def recording(*args, **kwargs):
            seen.append(np.asarray(get_cam_image(*args, **kwargs), np.float32))
            return seen[-1]

        cam.get_cam_image = recording
        with contextlib.redirect_stdout(io.StringIO()):  # HiResCAM and ScoreCAM chatter
            call()
        cam.activations_and_grads.release()
        (out,) = seen
        return out

    methods = [
        "GradCAM",
        "GradCAMPlusPlus",
        "XGradCAM",
        "HiResCAM",
        "LayerCAM",
        "GradCAMElementWise",
        "EigenCAM",
        "EigenGradCAM",
        "SegEigenCAM",
        "FEM",
        "KPCA_CAM",
        "ScoreCAM",
        "AblationCAM",
        "ShapleyCAM",
    ]
    maps = {}
    for name in methods:
        cam = getattr(pgc, name)(model=tm, target_layers=[layer])
        maps[name] = raw(cam, lambda cam=cam: cam(input_tensor=xt, targets=targets))
    cam = pgc.GradCAM(model=tm, target_layers=[layer])
    maps["GradCAM+eigen_smooth"] = raw(
        cam, lambda: cam(input_tensor=xt, targets=targets, eigen_smooth=True)
    )
    if score == "logit":
        # FinerCAM picks the classes whose logits are closest to the target's; one
        # target_idx per call, so one sample per call.
        rows = []
        for i, c in enumerate(labels):
            finer = pgc.FinerCAM(model=tm, target_layers=[layer])
            rows.append(
                raw(finer.base_cam, lambda f=finer, i=i, c=c: f(xt[i : i + 1], target_idx=int(c)))
            )
        maps["FinerCAM"] = np.concatenate(rows)
    return maps


def torch_cam_maps(tm, layer, xt, labels, score: str, case: GoldenCase) -> dict[str, np.ndarray]:
    """Raw maps (B, h, w) of torch-cam's one-layer methods (empty without torch-cam)."""
    try:
        from torchcam import methods as tc
    except ImportError:
        return {}
    labels = [int(c) for c in labels]
    if score == "logit":
        call = {"class_idx": labels}
    else:
        call = {"targets": [lambda out, c=c: torch.softmax(out, -1)[c] for c in labels]}
    shape = tuple(xt.shape[1:])
    extractors = {
        "GradCAM": lambda: tc.GradCAM(tm, layer, input_shape=shape),
        "GradCAMpp": lambda: tc.GradCAMpp(tm, layer, input_shape=shape),
        "XGradCAM": lambda: tc.XGradCAM(tm, layer, input_shape=shape),
        "LayerCAM": lambda: tc.LayerCAM(tm, layer, input_shape=shape),
        "ScoreCAM": lambda: tc.ScoreCAM(tm, layer, input_shape=shape),
        "ISCAM": lambda: tc.ISCAM(tm, layer, input_shape=shape),
    }
    if score == "logit":
        extractors["FinerCAM"] = lambda: tc.FinerCAM(tm, layer, input_shape=shape)
        if case.model == "ConvNet":  # the classic CAM needs a global pool + one dense layer
            extractors["CAM"] = lambda: tc.CAM(tm, layer, fc_layer=tm.head, input_shape=shape)
    maps = {}
    for name, make in extractors.items():
        with make() as extractor:
            # compute_cams applies a ReLU when _relu is set, then the optional min-max.
            base = getattr(extractor, "base_cam", extractor)
            base._relu = False
            scores = tm(xt)
            kwargs = {"class_idx": labels} if name in ("CAM", "FinerCAM") else call
            (cam,) = extractor(scores=scores, normalized=False, **kwargs)
        maps[name] = cam.detach().numpy().astype(np.float32)
    return maps


# --------------------------------------------------------------------------- beyond one layer


@contextlib.contextmanager
def recording(owner, name: str, seen: list, output: bool = False):
    """Replace the function ``owner.name`` (of a module or an object) by one that appends
    its first argument (or, with ``output``, what it returns), as float32, to ``seen``;
    restored on exit."""
    original = getattr(owner, name)

    def record(*args, **kwargs):
        result = original(*args, **kwargs)
        seen.append(np.asarray(result if output else args[0], np.float32))
        return result

    setattr(owner, name, record)
    try:
        yield seen
    finally:
        setattr(owner, name, original)


def refine_maps(tm, modules, xt, labels) -> dict[str, np.ndarray]:
    """RefineCAM of both peers on ``modules`` (a dict of >= 2 layers), logit targets.

    pytorch-grad-cam: the product of the per-layer GradCAM++ maps as its BaseCAM returns
    them (ReLU, min-max, cv2.resize to the input grid, min-max again), before its final
    scale_cam_image: (B, *input grid). torch-cam: ``normalized=False`` (ReLU and min-max
    per layer, resized to the per-axis largest layer grid, multiplied), with GradCAMpp
    (its default) and with GradCAM as base: (B, *largest grid).
    """
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam import refine_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    targets = [ClassifierOutputTarget(int(c)) for c in labels]
    maps = {}
    with recording(refine_cam, "scale_cam_image", []) as seen:
        cam = pgc.RefineCAM(tm, list(modules.values()), base_method=pgc.GradCAMPlusPlus)
        cam(xt, targets)
        for base in cam.base_cam_per_layer:
            base.activations_and_grads.release()
    (maps["pytorch-grad-cam/RefineCAM"],) = seen
    try:
        from torchcam import methods as tc
    except ImportError:
        return maps
    for key, base in (("RefineCAM", tc.GradCAMpp), ("RefineCAM+GradCAM", tc.GradCAM)):
        layers = list(modules.values())
        with tc.RefineCAM(tm, layers, input_shape=tuple(xt.shape[1:]), base_method=base) as ex:
            (out,) = ex(class_idx=[int(c) for c in labels], scores=tm(xt), normalized=False)
        maps[f"torch-cam/{key}"] = out.detach().numpy().astype(np.float32)
    return maps


def fullgrad_map(tm, xt, labels) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """pytorch-grad-cam's FullGrad, logit targets: (map (B, *input grid) before its final
    scale_cam_image, pieces (B, 1 + n, *input grid), names of the pieces).

    The map is the sum of the pieces: piece 0 sums over the input's channels c the map
    |x_c dy/dx_c|, each min-max scaled per image and channel; piece 1 + i sums over the
    channels k of the i-th Conv2d/BatchNorm2d with a bias (in module order) the map
    |b_k dy/dz_k| (z the layer's output, before any ReLU), each min-max scaled per image
    and channel (so |b_k| cancels unless b_k = 0) and resized to the input grid with
    cv2.resize (bilinear).
    """
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam import fullgrad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    targets = [ClassifierOutputTarget(int(c)) for c in labels]
    pieces: list[np.ndarray] = []
    original = fullgrad_cam.scale_accross_batch_and_channels

    def per_piece(tensor, target_size):
        scaled = original(tensor, target_size)
        pieces.append(np.asarray(scaled, np.float32).sum(axis=1))
        return scaled

    fullgrad_cam.scale_accross_batch_and_channels = per_piece
    try:
        with recording(fullgrad_cam, "scale_cam_image", []) as seen:
            cam = pgc.FullGrad(tm, [])
            cam(xt, targets)
            cam.activations_and_grads.release()
    finally:
        fullgrad_cam.scale_accross_batch_and_channels = original
    (raw,) = seen
    stacked = np.stack(pieces, axis=1)
    np.testing.assert_allclose(stacked.sum(axis=1), raw, rtol=1e-5, atol=1e-5)
    names = {id(m): n for n, m in tm.named_modules()}
    return raw, stacked, ["input"] + [names[id(layer)] for layer in cam.target_layers]


def sess_maps(tm, layer, xt, labels) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """pytorch-grad-cam's SESS with GradCAM at ``layer`` and its default parameters, logit
    targets: (map, the same without the Gaussian blur (smooth=False), the parameters as
    resolved for this input). Maps (B, *input grid): one fused map per image, before the
    final scale_cam_image over the batch."""
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    targets = [ClassifierOutputTarget(int(c)) for c in labels]
    out = []
    for smooth in (True, False):
        sess = pgc.SESS(tm, [layer], base_method=pgc.GradCAM, smooth=smooth)
        # forward_single_image gives one image's map; forward min-max scales their batch
        with recording(sess, "forward_single_image", [], output=True) as rows:
            sess(xt, targets)
        sess.base_cam.activations_and_grads.release()
        out.append(np.stack(rows))
    window = min(xt.shape[-2:])
    params = {
        "base_method": "GradCAM",
        "target": "ClassifierOutputTarget(label): the logit for the base CAM, the softmax "
        "probability for the patch scores (use_softmax_scores)",
        "window_size": window,
        "step_size": window,
        "scales": sess.get_scales(window),
        "num_scales": sess.num_scales,
        "scale_step_ratio": sess.scale_step_ratio,
        "pre_filter_ratio": sess.pre_filter_ratio,
        "theta": sess.theta,
        "pool": sess.pool,
        "smooth": "cv2.GaussianBlur(cam, (11, 11), 5.0)",
        "use_softmax_scores": sess.use_softmax_scores,
        "batch_size": sess.batch_size,
    }
    return out[0], out[1], params


# --------------------------------------------------------------------------- LeGrad on a ViT


def vit_from_flax(params, kwargs: dict[str, Any], side: int, channels: int) -> nn.Module:
    """A torchvision ``VisionTransformer`` twin of ``models.ViT(**kwargs)`` on (side, side,
    channels) inputs, weight for weight, in eval mode. Its MLPs' GELU is swapped for the
    tanh approximation (flax's ``nn.gelu`` default; torchvision's is exact) and its patch
    conv takes ``channels`` (torchvision's takes 3). LayerNorm eps is 1e-6 on both sides."""
    from torchvision.models.vision_transformer import VisionTransformer

    dim, patch = kwargs["dim"], kwargs["patch"]
    tm = VisionTransformer(
        image_size=side,
        patch_size=patch,
        num_layers=kwargs["depth"],
        num_heads=kwargs["num_heads"],
        hidden_dim=dim,
        mlp_dim=kwargs["mlp_dim"],
        num_classes=kwargs["num_classes"],
    )
    tm.conv_proj = nn.Conv2d(channels, dim, patch, stride=patch)
    torch_twins.load_conv(tm.conv_proj, params["patch_embed"])
    tm.class_token.data.copy_(torch_twins._tensor(params["cls_token"]))
    tm.encoder.pos_embedding.data.copy_(torch_twins._tensor(params["pos_embedding"]))

    def load_norm(norm: nn.LayerNorm, p) -> None:
        assert norm.eps == 1e-6, norm.eps  # flax's LayerNorm epsilon
        norm.weight.data.copy_(torch_twins._tensor(p["scale"]))
        norm.bias.data.copy_(torch_twins._tensor(p["bias"]))

    def flat(a) -> np.ndarray:
        """A (D, heads, d) kernel as (D, D) or a (heads, d) bias as (D,)."""
        a = np.asarray(a)
        return a.reshape(a.shape[0], -1) if a.ndim == 3 else a.reshape(-1)

    for i, layer in enumerate(tm.encoder.layers):
        p = params[f"block{i + 1}"]
        load_norm(layer.ln_1, p["norm1"])
        attn, q = layer.self_attention, ("query", "key", "value")
        # torch: q = x W_q^T + b_q with in_proj_weight = [W_q; W_k; W_v]; heads split the
        # output features in order, as flax's (heads, d) do.
        weight = np.concatenate([flat(p["attn"][n]["kernel"]).T for n in q])
        attn.in_proj_weight.data.copy_(torch_twins._tensor(weight))
        attn.in_proj_bias.data.copy_(
            torch_twins._tensor(np.concatenate([flat(p["attn"][n]["bias"]) for n in q]))
        )
        out = np.asarray(p["attn"]["out"]["kernel"])  # (heads, d, D)
        torch_twins.load_dense(attn.out_proj, p["attn"]["out"], out.reshape(-1, out.shape[-1]))
        load_norm(layer.ln_2, p["norm2"])
        torch_twins.load_dense(layer.mlp[0], p["fc1"])
        layer.mlp[1] = nn.GELU(approximate="tanh")
        torch_twins.load_dense(layer.mlp[3], p["fc2"])
    load_norm(tm.encoder.ln, params["norm"])
    torch_twins.load_dense(tm.heads.head, params["head"])
    return tm.eval()


def legrad_maps(tm, blocks: dict[str, str], xt, labels) -> dict[str, np.ndarray]:
    """torch-cam's LeGrad (``normalized=False``, ``class_idx`` = the labels: logit
    targets) on each block alone and on all of them; ``blocks`` maps the Flax block names
    to the twin's module names. Also, per block, the attention probabilities P (B, heads,
    N, N) torch-cam captures and the gradient of the block's layer score at them."""
    from torchcam import methods as tc

    labels = [int(c) for c in labels]
    index = torch.as_tensor(labels)[:, None]
    out = {}
    names = list(blocks)
    for chosen in [[n] for n in names] + [names]:
        with tc.LeGrad(tm, [blocks[n] for n in chosen]) as extractor:
            scores = tm(xt)
            if len(chosen) == 1:
                # the layer score's gradient, as torch-cam takes it (graph kept for its call)
                (P,), (s,) = extractor.hook_attn, extractor.hook_a
                (G,) = torch.autograd.grad(s.gather(1, index).sum(), P, retain_graph=True)
                out[f"P/{chosen[0]}"] = P.detach().numpy().astype(np.float32)
                out[f"G/{chosen[0]}"] = G.numpy().astype(np.float32)
            (cam,) = extractor(class_idx=labels, scores=scores, normalized=False)
        out[f"torch-cam/LeGrad/{'+'.join(chosen)}"] = cam.detach().numpy().astype(np.float32)
    return out


def golden_vit(case: GoldenCase) -> dict[str, np.ndarray]:
    """The ViT's arrays, under ``{case.name}/...`` (see the module doc)."""
    variables, x, labels = trained_variables(case)
    channels, grid = x.shape[-1], case.side // case.kwargs["patch"]
    tm = vit_from_flax(variables["params"], case.kwargs, case.side, channels)
    xt = torch_twins.to_torch_input(x)
    with torch.no_grad():
        logits = tm(xt).numpy()
    flax_logits = np.asarray(case.flax_model().apply(variables, x))
    np.testing.assert_allclose(logits, flax_logits, rtol=1e-5, atol=1e-5)
    depth = case.kwargs["depth"]
    blocks = {f"block{i + 1}": f"encoder.layers.encoder_layer_{i}" for i in range(depth)}
    name = case.name
    spec = {
        "model": case.model,
        "kwargs": case.kwargs,
        "blocks": list(blocks),
        "torch_blocks": list(blocks.values()),
        "prefix": 1,
        "grid": [grid, grid],
        "score": "logit",
    }
    out = {
        f"{name}/spec": np.array(json.dumps(spec)),
        f"{name}/x": np.asarray(x, np.float32),
        f"{name}/labels": np.asarray(labels, np.int32),
        f"{name}/logits": logits.astype(np.float32),
    }
    flat = traverse_util.flatten_dict(variables, sep="/")
    out.update({f"{name}/variables/{k}": np.asarray(v, np.float32) for k, v in flat.items()})
    maps = legrad_maps(tm, blocks, xt, labels)
    out.update({f"{name}/logit/{k}": v for k, v in maps.items()})
    accuracy = float(np.mean(np.argmax(logits, -1) == labels))
    difference = float(np.abs(logits - flax_logits).max())
    print(
        f"{name}: twin logits max |torch - flax| {difference:.1e}, accuracy {accuracy:.2f}, "
        + ", ".join(f"{k} {v.shape}" for k, v in maps.items() if k.startswith("torch-cam"))
    )
    return out


# --------------------------------------------------------------------------- guided backprop


class MnistCNNWithReLUs(nn.Module):
    """A MnistCNN twin whose every ReLU is a module: the twin rectifies ``fc1`` with a
    functional ``F.relu``, which pytorch-grad-cam's guided backprop leaves plain (it swaps
    ``nn.ReLU`` modules only), while every ReLU of the Flax model is guided by ifa_jax."""

    def __init__(self, twin: torch_twins.TorchMnistCNN):
        super().__init__()
        self.twin, self.relu3 = twin, nn.ReLU()

    def forward(self, x):
        t = self.twin
        x = t.pool1(t.relu1(t.conv1(x)))
        x = t.pool2(t.relu2(t.conv2(x)))
        return t.head(self.relu3(t.fc1(torch.flatten(x, 1))))


def stored_case(arrays, name: str):
    """(spec, Flax variables, x, labels) of one case of peers.npz."""
    prefix = f"{name}/variables/"
    flat = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
    variables = traverse_util.unflatten_dict(flat, sep="/")
    spec = json.loads(str(arrays[f"{name}/spec"]))
    return spec, variables, arrays[f"{name}/x"], arrays[f"{name}/labels"]


def guided_backprop_maps(tm, xt, labels) -> np.ndarray:
    """pytorch-grad-cam's ``GuidedBackpropReLUModel`` on each image alone (it explains
    ``output[0, target_category]``, the batch's first sample only), target = the label:
    (B, H, W, C), as it returns them (no post-processing)."""
    import pytorch_grad_cam as pgc

    gb = pgc.GuidedBackpropReLUModel(model=tm, device="cpu")
    rows = [gb(xt[i : i + 1].clone(), target_category=int(c)) for i, c in enumerate(labels)]
    return np.stack(rows).astype(np.float32)


def golden_guided() -> dict[str, np.ndarray]:
    """Guided backprop of pytorch-grad-cam on the cases stored in peers.npz (see the module
    doc), read from that file (its weights, inputs and labels) rather than retrained."""
    import hashlib

    with np.load(OUT) as data:
        arrays = {k: data[k] for k in data.files}
    out = {"peers_sha256": np.array(hashlib.sha256(OUT.read_bytes()).hexdigest())}
    for case in CASES:
        spec, variables, x, labels = stored_case(arrays, case.name)
        assert spec["model"] == case.model, (spec, case)
        xt = torch_twins.to_torch_input(x)
        stock, _ = torch_model(case, variables)
        tm = MnistCNNWithReLUs(stock).eval() if case.model == "MnistCNN" else stock
        with torch.no_grad():
            logits = tm(xt).numpy()
        np.testing.assert_allclose(logits, arrays[f"{case.name}/logits"], rtol=1e-5, atol=1e-5)
        key = f"{case.name}/logit/pytorch-grad-cam/GuidedBackprop"
        out[key] = guided_backprop_maps(tm, xt, labels)
        assert out[key].shape == x.shape, (key, out[key].shape)
        message = (
            f"{case.name}: GuidedBackprop {out[key].shape}, max |gb| {np.abs(out[key]).max():.3g}"
        )
        if tm is not stock:
            plain = guided_backprop_maps(stock, xt, labels)
            out[f"{key}+functional_relu"] = plain
            share = np.abs(plain - out[key]).max() / np.abs(out[key]).max()
            message += f"; with fc1's functional F.relu (left plain) it differs by {share:.2g} rel."
        print(message)
    return out


# --------------------------------------------------------------------------- the file


def versions() -> list[str]:
    """'package version' of the peers and of the frameworks that made the data."""
    out = []
    packages = ("torch", "torchvision", "grad-cam", "torchcam", "opencv-python-headless", "jax")
    for package in (*packages, "flax"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out.append(f"{package} {importlib.metadata.version(package)}")
    return out


def beyond_one_layer(case: GoldenCase, tm, modules, xt, labels, A, G) -> dict[str, np.ndarray]:
    """RefineCAM, FullGrad and SESS (logit targets), with the extra layers' A and G."""
    name, grid = case.name, tuple(xt.shape[2:])
    out = {}
    for layer in case.layers:
        if layer != case.layer:
            # A in full would double the file (mnist_cnn's relu1); its sums pin it down.
            out[f"{name}/layers/{layer}/A_sum"] = A[layer].sum(axis=(1, 2), dtype=np.float64)
            out[f"{name}/logit/layers/{layer}/G"] = G[layer]
    largest = tuple(max(s) for s in zip(*(A[layer].shape[1:-1] for layer in case.layers)))
    refine = refine_maps(tm, {layer: modules[layer] for layer in case.layers}, xt, labels)
    for key, cam in refine.items():
        want = grid if key.startswith("pytorch-grad-cam") else largest
        assert cam.shape == (len(xt), *want), (key, cam.shape)
        out[f"{name}/logit/{key}"] = cam
    fullgrad, pieces, names = fullgrad_map(tm, xt, labels)
    prefix = f"{name}/logit/pytorch-grad-cam/FullGrad"
    # the input's piece is the map minus the others: not stored
    out[prefix], out[f"{prefix}/bias_pieces"] = fullgrad, pieces[:, 1:]
    out[f"{prefix}/bias_layers"] = np.array(names[1:])
    sess, unblurred, params = sess_maps(tm, modules[case.layer], xt, labels)
    prefix = f"{name}/logit/pytorch-grad-cam/SESS"
    out[prefix], out[f"{prefix}/params"] = sess, np.array(json.dumps(params))
    if np.prod(grid) <= 64:  # small inputs only, to keep the file small
        out[f"{prefix}/unblurred"] = unblurred
    for key in (f"{name}/logit/pytorch-grad-cam/{m}" for m in ("FullGrad", "SESS")):
        assert out[key].shape == (len(xt), *grid), (key, out[key].shape)
    print(
        f"{name}: RefineCAM on {list(case.layers)} (largest grid {largest}), FullGrad "
        f"({', '.join(names)}), SESS ({len(params['scales'])} scales)"
    )
    return out


def golden_case(case: GoldenCase) -> dict[str, np.ndarray]:
    """Every array of one case, under its keys (see the module doc)."""
    variables, x, labels = trained_variables(case)
    tm, modules = torch_model(case, variables)
    layer = modules[case.layer]
    xt = torch_twins.to_torch_input(x)
    out = {
        f"{case.name}/spec": np.array(
            json.dumps(
                {
                    "model": case.model,
                    "kwargs": case.kwargs,
                    "layer": case.layer,
                    "scores": case.scores,
                    "layers": case.layers,
                }
            )
        ),
        f"{case.name}/x": np.asarray(x, np.float32),
        f"{case.name}/labels": np.asarray(labels, np.int32),
    }
    flat = traverse_util.flatten_dict(variables, sep="/")
    out.update({f"{case.name}/variables/{k}": np.asarray(v, np.float32) for k, v in flat.items()})
    flax_logits = np.asarray(case.flax_model().apply(variables, x))
    index = torch.as_tensor(labels, dtype=torch.long)[:, None]
    score_fns = {
        "logit": lambda logits: logits.gather(1, index),
        "probability": lambda logits: torch.softmax(logits, -1).gather(1, index),
    }
    for score in case.scores:
        logits, As, Gs = layer_tensors(tm, modules, xt, score_fns[score])
        A, G = As[case.layer], Gs[case.layer]
        np.testing.assert_allclose(logits, flax_logits, rtol=1e-4, atol=1e-4)
        out[f"{case.name}/logits"], out[f"{case.name}/A"] = logits, A
        out[f"{case.name}/{score}/G"] = G
        peers = {
            "pytorch-grad-cam": grad_cam_maps(tm, layer, xt, labels, score),
            "torch-cam": torch_cam_maps(tm, layer, xt, labels, score, case),
        }
        for library, maps in peers.items():
            for name, cam in maps.items():
                assert cam.shape == A.shape[:-1], (library, name, cam.shape)
                out[f"{case.name}/{score}/{library}/{name}"] = cam
        accuracy = float(np.mean(np.argmax(logits, -1) == labels))
        print(
            f"{case.name} {score}: A {A.shape}, |G| max {np.abs(G).max():.3g} "
            f"median(|G| > 0) {np.median(np.abs(G[G != 0])):.3g}, accuracy {accuracy:.2f}, "
            f"{sum(map(len, peers.values()))} peer maps"
        )
        if score == "logit":
            out.update(beyond_one_layer(case, tm, modules, xt, labels, As, Gs))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--vit", action="store_true", help=f"write torch-cam's LeGrad maps to {OUT_VIT.name} only"
    )
    parser.add_argument(
        "--guided",
        action="store_true",
        help=f"write pytorch-grad-cam's guided backprop on {OUT.name}'s cases to "
        f"{OUT_GUIDED.name} only",
    )
    args = parser.parse_args(argv)
    if args.vit and args.guided:
        parser.error("--vit and --guided write different files: pass one of them")
    torch.manual_seed(0)
    np.random.seed(0)
    arrays = {"versions": np.array(versions())}
    if args.vit:
        out = OUT_VIT
        arrays.update(golden_vit(VIT_CASE))
    elif args.guided:
        out = OUT_GUIDED
        arrays.update(golden_guided())
    else:
        out = OUT
        for case in CASES:
            arrays.update(golden_case(case))
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB): {', '.join(arrays['versions'])}")


if __name__ == "__main__":
    main()

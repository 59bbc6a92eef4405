"""Golden data from the PyTorch peers: tests/data/peers.npz, read by tests/test_peer_golden.py.

Regenerate (from the repository root; the peers live in their own venv, the tests need no
torch):

    python3 -m venv /tmp/venv_peers
    /tmp/venv_peers/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
    /tmp/venv_peers/bin/pip install grad-cam torchcam==0.5.0 -e .
    /tmp/venv_peers/bin/python -m experiments.golden_peers

(torch-cam is optional: without it only pytorch-grad-cam's maps are written.) It prints one
line per case and the file's size (about 100 KB).

Two small Flax CNNs are trained on scikit-learn's 8x8 digits (3 and 20 epochs), so that
gradients are those of a model that classifies: ``MnistCNN`` shrunk (28x28 inputs,
rectified second conv ``relu2``, a 6x6 grid after max-pooling, so G varies over the grid)
and ``ConvNet`` (the 8x8 digits, ``relu2`` on the input's own grid, global mean + dense, so
resampling the grid is the identity and the classic CAM applies). Each is ported weight for
weight to PyTorch (:mod:`experiments.bench.torch_twins`), and on eight validation digits,
target = the label, every peer method that maps the tapped layer's (A, G) to a CAM writes
its raw map: the CAM before the peers' ReLU and per-image min-max scaling (for
pytorch-grad-cam, what ``get_cam_image`` returns; for torch-cam, ``normalized=False`` with
its ReLU switched off). RandomCAM, SSCAM and SmoothGradCAM++ draw from torch's or NumPy's
global random state, which ifa_jax cannot reproduce: they are not stored. FullGrad,
RefineCAM, SESS and LeGrad do not take one layer's (A, G): not stored either.

Keys (``case`` in ``mnist_cnn``, ``convnet``; ``score`` in ``logit``, ``probability``):

- ``versions``: the peers' and frameworks' versions, one string each;
- ``{case}/spec``: JSON ``{"model": class in ifa_jax.models, "kwargs": ..., "layer": ...,
  "scores": [...]}``;
- ``{case}/variables/params/conv1/kernel`` ...: the Flax variables, '/'-joined paths;
- ``{case}/x`` (B, H, W, C), ``{case}/labels`` (B,), ``{case}/logits`` (B, 10) (torch);
- ``{case}/A`` (B, h, w, K) and ``{case}/{score}/G`` (B, h, w, K): the layer's output and
  the gradient of the summed target scores, from torch, channels-last;
- ``{case}/{score}/pytorch-grad-cam/{Class}`` and ``{case}/{score}/torch-cam/{Class}``
  (B, h, w): raw maps; ``pytorch-grad-cam/GradCAM+eigen_smooth`` with ``eigen_smooth=True``;
  FinerCAM (both libraries) builds its own target from the label, so it is stored under
  ``logit`` only.
"""

from __future__ import annotations

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
from ifa_jax import data, models  # noqa: E402
from ifa_jax.train import TrainConfig, train  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "peers.npz"
SAMPLES = 8
TRAIN_CONFIG = TrainConfig(batch_size=64, lr=3e-3, seed=0, progress=False)


@dataclasses.dataclass(frozen=True)
class GoldenCase:
    """One model of the golden data: an ``ifa_jax.models`` class, its kwargs, the tapped
    layer, the input side, the target scores the peers explain and the training epochs."""

    name: str
    model: str
    kwargs: dict[str, Any]
    layer: str
    side: int
    scores: tuple[str, ...]
    epochs: int

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


def torch_model(case: GoldenCase, variables) -> tuple[nn.Module, nn.Module]:
    """The torch twin (eval mode) and its module whose output is the Flax layer's."""
    params = variables["params"]
    if case.model == "MnistCNN":
        tm = torch_twins.mnist_cnn_from_flax(params)
        return tm.eval(), tm.relu2
    # The twin's ReLUs are functional: give the last one a module, as the Flax model has.
    tm = torch_twins.convnet_from_flax(params, relu_last=False)
    last = tm.names[-1]
    setattr(tm, last, nn.Sequential(getattr(tm, last), nn.ReLU()))
    return tm.eval(), getattr(tm, last)[1]


def channels_last(t: torch.Tensor) -> np.ndarray:
    """(B, C, *spatial) tensor -> (B, *spatial, C) float32 array."""
    return np.ascontiguousarray(np.moveaxis(t.detach().numpy(), 1, -1)).astype(np.float32)


def layer_tensors(tm, layer, xt, score_fn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits, the layer's output A and the gradient G of the summed scores, from torch."""
    grabbed = {}

    def hook(module, inputs, output):
        output.retain_grad()
        grabbed["a"] = output

    handle = layer.register_forward_hook(hook)
    try:
        logits = tm(xt)
        score_fn(logits).sum().backward()
    finally:
        handle.remove()
    return logits.detach().numpy(), channels_last(grabbed["a"]), channels_last(grabbed["a"].grad)


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


# --------------------------------------------------------------------------- the file


def versions() -> list[str]:
    """'package version' of the peers and of the frameworks that made the data."""
    out = []
    for package in ("torch", "grad-cam", "torchcam", "jax", "flax"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out.append(f"{package} {importlib.metadata.version(package)}")
    return out


def golden_case(case: GoldenCase) -> dict[str, np.ndarray]:
    """Every array of one case, under its keys (see the module doc)."""
    variables, x, labels = trained_variables(case)
    tm, layer = torch_model(case, variables)
    xt = torch_twins.to_torch_input(x)
    out = {
        f"{case.name}/spec": np.array(
            json.dumps(
                {
                    "model": case.model,
                    "kwargs": case.kwargs,
                    "layer": case.layer,
                    "scores": case.scores,
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
        logits, A, G = layer_tensors(tm, layer, xt, score_fns[score])
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
    return out


def main() -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    arrays = {"versions": np.array(versions())}
    for case in CASES:
        arrays.update(golden_case(case))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KB): {', '.join(arrays['versions'])}")


if __name__ == "__main__":
    main()

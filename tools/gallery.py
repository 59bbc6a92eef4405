"""Draw every registered CAM method on the same real digits: docs/generated/gallery.png.

`make docs` runs it, so a method appears in the gallery by being registered. It trains
the paper's MNIST CNN briefly on the embedded digits (and a small ViT for the methods read
at attention probabilities), explains the same validation digits with every method at its
defaults, and draws one row per method. A method maps the CNN at its kind's layers:
``"layer"`` at relu2, ``"layers"`` at relu1 and relu2, ``"input"`` at the input;
TOKEN_METHODS run on the ViT through ``legrad_probe`` instead. Each row shares one colour
scale (red positive, blue negative, up to the largest absolute value of its maps), so
brightness compares within a method.

Usage: python tools/gallery.py [--out PATH] [--digits N] [--epochs E]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import numpy as np

import ifa_jax
from ifa_jax import cams
from ifa_jax.runner.data import load_mnist_embedded, stratified_indices
from ifa_jax.runner.models import MnistCNN, ViT
from ifa_jax.runner.train import TrainConfig, train

OUT = Path(__file__).resolve().parent.parent / "docs" / "generated" / "gallery.png"
TOKEN_METHODS = ("legrad", "legradlayers")  # read at attention probabilities: on the ViT


def maps_of_every_method(digits: int, epochs: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The digits (n, 28, 28, 1) and {method: maps (n, 28, 28)} at input resolution."""
    splits = load_mnist_embedded()
    config = TrainConfig(epochs=epochs, progress=False)
    cnn, vit = MnistCNN(), ViT(num_classes=10, patch=4, dim=32, depth=2, num_heads=2, mlp_dim=64)
    cnn_vars, _ = train(cnn, splits.train, None, config)
    vit_vars, _ = train(vit, splits.train, None, config)
    x = splits.validation.x[stratified_indices(splits.validation.y, digits)]  # classes 0..n-1
    y = np.arange(len(x))
    one = ifa_jax.linen_probe(cnn, "relu2")
    two = ifa_jax.linen_probe(cnn, ["relu1", "relu2"])
    legrad = {"legrad": ifa_jax.legrad_probe(vit, "block2")}
    legrad["legradlayers"] = ifa_jax.legrad_probe(vit, ["block1", "block2"])
    maps = {}
    for name, method in cams.REGISTRY.items():
        if name in TOKEN_METHODS:
            probe, variables = legrad[name], vit_vars
        else:
            probe, variables = (two if method.kind == "layers" else one), cnn_vars
        _, result = ifa_jax.explain(probe, variables, x, y, name, key=jax.random.key(0))
        maps[name] = np.asarray(ifa_jax.upsample(result.cam, x.shape[1:-1]))
    return x, maps


def draw(x: np.ndarray, maps: dict[str, np.ndarray]):
    """One row per method: the digits with the method's maps on one shared scale."""
    from matplotlib.figure import Figure

    n = len(x)
    fig = Figure(figsize=(1.1 * n + 1.6, 1.1 * len(maps)), layout="constrained")
    axes = fig.subplots(len(maps), n, squeeze=False)
    for row, (name, m) in zip(axes, maps.items()):
        bound = float(np.abs(m).max()) or 1.0
        for j, ax in enumerate(row):
            ax.imshow(x[j, ..., 0], cmap="gray")
            ax.imshow(m[j], cmap="RdBu_r", alpha=0.55, vmin=-bound, vmax=bound)
            ax.set_xticks([]), ax.set_yticks([])
        kind = cams.REGISTRY[name].kind
        where = (
            "ViT"
            if name in TOKEN_METHODS
            else {"layer": "relu2", "layers": "relu1+2"}.get(kind, "input")
        )
        row[0].set_ylabel(f"{name}\n({where})", fontsize=7)
    for j, ax in enumerate(axes[0]):
        ax.set_title(f"digit {j}", fontsize=7)
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--digits", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    start = time.perf_counter()
    x, maps = maps_of_every_method(args.digits, args.epochs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from ifa_jax import plots

    plots.save(draw(x, maps), args.out, dpi=90)
    print(f"gallery: {len(maps)} methods, {args.out} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()

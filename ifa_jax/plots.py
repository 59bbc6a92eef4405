"""Matplotlib figures of an integrated feature analysis. Each function returns a Figure.

Functions take plain NumPy arrays, so they work on any model's results; ``save`` writes a
figure atomically (temporary file + rename) and closes it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ifa_jax.io import atomic_path


def save(fig, path: str | os.PathLike, dpi: int = 110) -> str:
    """Write ``fig`` to ``path`` (PNG) atomically and close it. Returns the path."""
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return os.fspath(path)


def _gray(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, np.float64)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    return image


def cam_grid(images: np.ndarray, common: np.ndarray, per_image: np.ndarray,
             titles: Sequence[str] | None = None, alpha: float = 0.55):
    """CAMs on the common scale (top row, one shared colorbar) above the same CAMs min-max
    normalised per image (bottom row). images: (N, H, W[, C]); common, per_image: (N, H, W)
    in [0, 1]."""
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(1.7 * n + 1.2, 3.8), squeeze=False)
    mappable = None
    for i in range(n):
        for row, maps in enumerate((common, per_image)):
            ax = axes[row, i]
            ax.imshow(_gray(images[i]), cmap="gray")
            mappable = ax.imshow(np.asarray(maps[i]), cmap="jet", vmin=0, vmax=1, alpha=alpha)
            ax.set_xticks([])
            ax.set_yticks([])
        if titles is not None:
            axes[0, i].set_title(titles[i], fontsize=8)
    axes[0, 0].set_ylabel("common scale", fontsize=9)
    axes[1, 0].set_ylabel("per-image min-max", fontsize=9)
    fig.colorbar(mappable, ax=axes.ravel().tolist(), shrink=0.8, label="CAM intensity")
    return fig


def importance_heatmaps(matrices: Mapping[str, np.ndarray], max_channels: int = 64):
    """Class x channel heatmaps (e.g. IM_c and IM_diff). Channels are ordered by the first
    matrix's mean importance, and at most ``max_channels`` are shown."""
    first = np.nan_to_num(next(iter(matrices.values())))
    order = np.argsort(-first.mean(0))[:max_channels]
    fig, axes = plt.subplots(len(matrices), 1, figsize=(10, 2.2 * len(matrices) + 0.6),
                             squeeze=False)
    for ax, (name, m) in zip(axes[:, 0], matrices.items()):
        m = np.asarray(m)[:, order]
        bound = np.nanmax(np.abs(m)) or 1.0
        im = ax.imshow(m, aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound)
        ax.set_ylabel("class")
        ax.set_title(name, fontsize=9)
        fig.colorbar(im, ax=ax)
    axes[-1, 0].set_xlabel(f"channel (top {len(order)} by mean importance)")
    return fig


def distributions(splits: Mapping[str, Mapping[str, np.ndarray]], keys=("cam_max", "cam_min")):
    """Histograms of per-sample CAM max/min for each split (overfitting shows as a shift)."""
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, samples in splits.items():
            ax.hist(np.asarray(samples[key]), bins=40, alpha=0.55, density=True, label=name)
        ax.set_title(key)
        ax.legend()
    return fig


def consistency_scatter(panels: Mapping[str, tuple[np.ndarray, np.ndarray, float | None]]):
    """One scatter per panel: activation level (x) against the logit (y), titled with r."""
    n = len(panels)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (name, (a, y, r)) in zip(axes.ravel(), panels.items()):
        ax.scatter(a, y, s=4, alpha=0.5)
        ax.set_title(f"{name}\nr = {r:.3f}" if r is not None else f"{name}\nr undefined",
                     fontsize=8)
        ax.set_xlabel("CAM activation level", fontsize=8)
        ax.set_ylabel("logit", fontsize=8)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def spectrum(explained_ratio: np.ndarray, marks: Mapping[str, int] | None = None):
    """Explained-variance ratio per component and its cumulative sum."""
    ratio = np.asarray(explained_ratio)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    idx = np.arange(1, len(ratio) + 1)
    ax.bar(idx, ratio, color="tab:blue", label="per component")
    ax.plot(idx, np.cumsum(ratio), color="tab:red", label="cumulative")
    for label, k in (marks or {}).items():
        ax.axvline(k, color="gray", ls=":")
        ax.text(k, 0.5, f" {label}: {k}", fontsize=8, rotation=90)
    ax.set_xscale("log")
    ax.set_xlabel("component")
    ax.set_ylabel("explained variance")
    ax.legend()
    return fig


def accuracy_curve(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                   full_accuracy: float | None = None):
    """Accuracy against the share of channels kept, one line per selection mode."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for name, (ratios, acc) in curves.items():
        ax.plot(np.asarray(ratios) * 100, acc, marker="o", label=name)
    if full_accuracy is not None:
        ax.axhline(full_accuracy, color="gray", ls="--", label="all channels")
    ax.set_xscale("log")
    ax.set_xlabel("channels kept (%)")
    ax.set_ylabel("accuracy")
    ax.legend()
    return fig


def outliers(images: np.ndarray, maps: np.ndarray, titles: Sequence[str]):
    """The worst outliers with their CAMs (common scale). images (N,H,W[,C]), maps (N,H,W)."""
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(1.8 * n, 2.2), squeeze=False)
    for ax, img, m, t in zip(axes[0], images, maps, titles):
        ax.imshow(_gray(img), cmap="gray")
        ax.imshow(np.asarray(m), cmap="jet", vmin=0, vmax=1, alpha=0.55)
        ax.set_title(t, fontsize=7)
        ax.axis("off")
    return fig

"""Matplotlib figures of an integrated feature analysis. Each function returns a Figure.

Functions take plain NumPy (or JAX) arrays, so they work on any model's results. Figures
are ``matplotlib.figure.Figure`` objects made directly, without pyplot: importing this
module (or ``ifa_jax``) never selects or switches matplotlib's backend, drawing needs no
display, and nothing is registered in pyplot's global figure list (so nothing leaks).
``save`` writes a figure atomically (temporary file + rename). In a notebook a returned
figure shows as the cell's value; ``fig.savefig`` works as usual.

CAM overlays: :func:`overlay` draws one image with its CAM, :func:`overlay_grid` a batch
with one shared colour bar. Both take raw CAMs on the feature grid (or already on the
image grid), upsample them with :func:`ifa_jax.cams.upsample` and rescale them with the
common scale (clipped to [0, 1]) when a :class:`~ifa_jax.scale.Scale` is given, else per
image min-max. :func:`cam_grid` and :func:`outliers` take maps already rescaled to [0, 1]
and upsample them when they are still on the feature grid.

Examples:
    Three 8 x 8 images with their 2 x 2 raw CAMs on one common scale: three panels and
    one shared colour bar:

    >>> import numpy as np
    >>> from ifa_jax.plots import overlay_grid
    >>> from ifa_jax.scale import scale_from_bounds
    >>> images = np.random.default_rng(0).uniform(size=(3, 8, 8))
    >>> cams = np.arange(12.0).reshape(3, 2, 2)
    >>> fig = overlay_grid(images, cams, scale_from_bounds(0.0, 8.0))
    >>> len(fig.axes), fig.axes[-1].get_ylabel()
    (4, 'CAM intensity (common scale, clipped to [0, 1])')
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from ifa_jax import cams as _cams
from ifa_jax import scale as _scale
from ifa_jax._checks import require
from ifa_jax.io import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure as FigureType

Figure = require("matplotlib.figure", "plots", "ifa_jax.plots").Figure
_Rectangle = require("matplotlib.patches", "plots", "ifa_jax.plots").Rectangle

CAM_CMAP = "jet"
COMMON_LABEL = "CAM intensity (common scale, clipped to [0, 1])"
PER_IMAGE_LABEL = "CAM intensity (per-image min-max)"


def _figure(nrows: int = 1, ncols: int = 1, figsize=None, squeeze: bool = False):
    """A pyplot-free Figure and its axes (a (nrows, ncols) array unless ``squeeze``)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def save(fig: Any, path: str | os.PathLike, dpi: int = 110) -> str:
    """Write ``fig`` to ``path`` (PNG) atomically.

    Works headless with any backend. A figure that pyplot manages (made with
    ``plt.subplots``) is closed afterwards; this module's figures are not in pyplot.

    Args:
        fig: a matplotlib Figure.
        path: the PNG file to write.
        dpi: its resolution.

    Returns:
        The path, as a string.

    Raises:
        ifa_jax.io.WriteError: the file could not be written (the previous one is
            unchanged).
    """
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    finally:
        plt = sys.modules.get("matplotlib.pyplot")  # never import pyplot just to close
        if plt is not None:
            plt.close(fig)
    return os.fspath(path)


# ----------------------------------------------------------------------- images and maps


def _display_image(image, name: str = "image") -> tuple[np.ndarray, dict]:
    """An image (H, W) or (H, W, C), C in {1, 3, 4}, as imshow data and keyword arguments.

    One channel is drawn in gray (imshow's own range); 3 or 4 channels in colour: uint8
    as is, floats in [0, 1] as is, other floats min-max stretched to [0, 1] as a whole.
    """
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        return img.astype(np.float64), {"cmap": "gray"}
    if img.ndim != 3 or img.shape[-1] not in (3, 4):
        raise ValueError(
            f"{name} has shape {np.shape(image)}; expected (H, W) or (H, W, C) "
            "with C = 1 (gray), 3 (RGB) or 4 (RGBA); pick channels with "
            "image[..., :3] or image[..., k]"
        )
    if img.dtype == np.uint8:
        return img, {}
    img = img.astype(np.float64)
    lo, hi = np.nanmin(img), np.nanmax(img)
    if lo < 0 or hi > 1:
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return img, {}


def _image_grid(images, name: str = "images") -> tuple[int, int]:
    """(H, W) of a batch of images (N, H, W) or (N, H, W, C), or a ValueError."""
    shape = np.shape(images)
    if len(shape) not in (3, 4):
        raise ValueError(
            f"{name} has shape {shape}; expected a batch (N, H, W) or "
            "(N, H, W, C); add a batch axis for one image (images[None])"
        )
    return shape[1], shape[2]


def _batch_maps(maps, images, name: str) -> np.ndarray:
    """Maps (N, h, w) for images (N, H, W[, C]), upsampled to (N, H, W) when h, w differ."""
    hw = _image_grid(images)
    maps = np.asarray(maps)
    n = np.shape(images)[0]
    if maps.ndim != 3:
        raise ValueError(
            f"{name} has shape {maps.shape}; expected one 2-D map per image, "
            f"(N, h, w) = ({n}, h, w) for images {np.shape(images)}; drop a "
            "channel axis with maps[..., 0], or pass a batch (maps[None])"
        )
    if maps.shape[0] != n:
        raise ValueError(
            f"{name} has {maps.shape[0]} maps (shape {maps.shape}) but there are "
            f"{n} images (shape {np.shape(images)}); pass one map per image, in "
            "the same order"
        )
    if maps.shape[1:] != hw:
        maps = np.asarray(_cams.upsample(maps, hw))
    return maps.astype(np.float64)


def _minmax01(maps: np.ndarray) -> np.ndarray:
    """Per-map min-max (N, H, W) -> [0, 1] with min exactly 0 and max exactly 1 (a constant
    map -> 0). Same as :func:`ifa_jax.scale.minmax_per_image` without its eps."""
    lo = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - lo
    return np.where(span > 0, (maps - lo) / np.where(span > 0, span, 1.0), 0.0)


def _rescale(maps: np.ndarray, scale) -> tuple[np.ndarray, str]:
    """Raw CAMs (N, H, W) -> display values in [0, 1] and the colour bar label."""
    if scale is None:
        return _minmax01(maps), PER_IMAGE_LABEL
    if not isinstance(scale, _scale.Scale):
        raise TypeError(
            f"scale must be an ifa_jax.scale.Scale (e.g. from "
            f"scale.common_scale) or None for per-image min-max; got "
            f"{type(scale).__name__}"
        )
    return np.asarray(_scale.apply_scale(maps, scale, clip=True), np.float64), COMMON_LABEL


def _draw_overlay(ax, image, cam01: np.ndarray, alpha: float, name: str = "image"):
    data, kw = _display_image(image, name)
    ax.imshow(data, **kw)
    mappable = ax.imshow(cam01, cmap=CAM_CMAP, vmin=0, vmax=1, alpha=alpha)
    ax.set_xticks([])
    ax.set_yticks([])
    return mappable


# ------------------------------------------------------------------------------ overlays


def overlay(
    image: ArrayLike,
    cam: ArrayLike,
    scale: _scale.Scale | None = None,
    *,
    ax: Any = None,
    alpha: float = 0.55,
    colorbar: bool = True,
    title: str | None = None,
) -> FigureType:
    """One image (H, W) or (H, W, C) with its raw CAM (h, w) drawn on top; returns the Figure.

    The CAM is upsampled to (H, W) when it is on the feature grid, then rescaled: with
    ``scale`` (:class:`ifa_jax.scale.Scale`) by the common scale clipped to [0, 1], else
    min-max per image; the colour bar label says which. Draws into ``ax`` when given (and
    returns its figure). For a batch use :func:`overlay_grid`.

    Args:
        image: (H, W) or (H, W, C).
        cam: (h, w) the raw CAM.
        scale: the common scale, or None (min-max per image).
        ax: the matplotlib Axes to draw into, or None (a new figure).
        alpha: the CAM's opacity.
        colorbar: draw a colour bar.
        title: the panel's title.

    Returns:
        The Figure.

    Raises:
        ValueError: a CAM that is not 2-D or an image that is not (H, W[, C]).
    """
    cam = np.asarray(cam)
    if cam.ndim != 2:
        hint = (
            "for a batch of CAMs use plots.overlay_grid(images, cams)"
            if cam.ndim == 3
            else "pass the 2-D map of one image"
        )
        raise ValueError(f"cam has shape {cam.shape}; overlay draws one 2-D CAM (h, w); {hint}")
    img_shape = np.shape(image)
    if len(img_shape) not in (2, 3):
        raise ValueError(
            f"image has shape {img_shape}; overlay draws one image (H, W) or "
            "(H, W, C); for a batch use plots.overlay_grid(images, cams)"
        )
    maps = _batch_maps(cam[None], np.asarray(image)[None], "cam")
    values, label = _rescale(maps, scale)
    if ax is None:
        fig, ax = _figure(figsize=(3.6, 3.0), squeeze=True)
    else:
        fig = ax.figure
    mappable = _draw_overlay(ax, image, values[0], alpha)
    if title is not None:
        ax.set_title(title, fontsize=9)
    if colorbar:
        fig.colorbar(mappable, ax=ax, shrink=0.85, label=label)
    return fig


def overlay_grid(
    images: np.ndarray,
    cams: ArrayLike,
    scale: _scale.Scale | None = None,
    *,
    titles: Sequence[str] | None = None,
    alpha: float = 0.55,
    cols: int | None = None,
) -> FigureType:
    """A grid of overlays with ONE shared colour bar; returns the Figure.

    images: (N, H, W) or (N, H, W, C); cams: raw CAMs (N, h, w), upsampled to (H, W) when
    needed and rescaled as in :func:`overlay` (common scale clipped to [0, 1] with
    ``scale``, else min-max per image).

    Args:
        images: (N, H, W) or (N, H, W, C).
        cams: (N, h, w) raw CAMs.
        scale: the common scale, or None (min-max per image).
        titles: one title per image, or None.
        alpha: the CAMs' opacity.
        cols: panels per row (default: up to 8).

    Returns:
        The Figure.

    Raises:
        ValueError: no image, shapes that do not fit, a title count other than N, or
            cols < 1.
    """
    maps = _batch_maps(cams, images, "cams")
    n = len(maps)
    if n == 0:
        raise ValueError("overlay_grid got no images (N = 0); pass at least one")
    if titles is not None and len(titles) != n:
        raise ValueError(f"{len(titles)} titles for {n} images; pass one title per image")
    values, label = _rescale(maps, scale)
    cols = min(n, 8) if cols is None else int(cols)
    if cols < 1:
        raise ValueError(f"cols must be >= 1; got {cols}")
    rows = -(-n // cols)
    fig, axes = _figure(rows, cols, figsize=(1.8 * cols + 1.2, 1.9 * rows + 0.3))
    mappable = None
    for i, ax in enumerate(axes.ravel()):
        if i >= n:
            ax.axis("off")
            continue
        mappable = _draw_overlay(ax, images[i], values[i], alpha, name=f"images[{i}]")
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    fig.colorbar(mappable, ax=axes.ravel().tolist(), shrink=0.8, label=label)
    return fig


# ----------------------------------------------------------------- the analysis' figures


def cam_grid(
    images: np.ndarray,
    common: np.ndarray,
    per_image: np.ndarray,
    titles: Sequence[str] | None = None,
    alpha: float = 0.55,
) -> FigureType:
    """CAMs on the common scale (top row, one shared colorbar) above the same CAMs min-max
    normalised per image (bottom row). images: (N, H, W[, C]); common, per_image: (N, h, w)
    in [0, 1], upsampled to (H, W) when on the feature grid.

    Args:
        images: (N, H, W[, C]).
        common: (N, h, w) the CAMs on the common scale, in [0, 1].
        per_image: (N, h, w) the same CAMs min-max normalised per image.
        titles: one title per image, or None.
        alpha: the CAMs' opacity.

    Returns:
        The Figure.

    Raises:
        ValueError: shapes that do not fit, or a title count other than N.
    """
    common = _batch_maps(common, images, "common")
    per_image = _batch_maps(per_image, images, "per_image")
    n = len(images)
    if titles is not None and len(titles) != n:
        raise ValueError(f"{len(titles)} titles for {n} images; pass one title per image")
    fig, axes = _figure(2, n, figsize=(1.7 * n + 1.2, 3.8))
    mappable = None
    for i in range(n):
        for row, maps in enumerate((common, per_image)):
            mappable = _draw_overlay(axes[row, i], images[i], maps[i], alpha, name=f"images[{i}]")
        if titles is not None:
            axes[0, i].set_title(titles[i], fontsize=8)
    axes[0, 0].set_ylabel("common scale", fontsize=9)
    axes[1, 0].set_ylabel("per-image min-max", fontsize=9)
    fig.colorbar(mappable, ax=axes.ravel().tolist(), shrink=0.8, label="CAM intensity")
    return fig


def _tick_step(n: int, most: int) -> int:
    """Every how many of ``n`` positions to label so that at most ``most`` are labelled."""
    return max(1, -(-n // most))


def importance_heatmaps(matrices: Mapping[str, np.ndarray], max_channels: int = 64) -> FigureType:
    """Class x channel heatmaps (e.g. IM_c and IM_diff), one per entry, the entry's name as
    its title and colour-bar label. Columns are the ``max_channels`` channels with the
    largest mean of the first matrix, most important left, labelled with their channel ids;
    rows are the classes 0..C-1.

    Args:
        matrices: ``{name: (C, K) matrix}``.
        max_channels: the most channels drawn.

    Returns:
        The Figure.
    """
    first = np.nan_to_num(next(iter(matrices.values())))
    order = np.argsort(-first.mean(0))[:max_channels]
    fig = Figure(figsize=(10, 2.2 * len(matrices) + 0.8), layout="constrained")
    axes = fig.subplots(len(matrices), 1, squeeze=False, sharex=True)
    for ax, (name, m) in zip(axes[:, 0], matrices.items()):
        m = np.asarray(m)[:, order]
        bound = np.nanmax(np.abs(m)) or 1.0
        im = ax.imshow(m, aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound)
        classes = np.arange(0, m.shape[0], _tick_step(m.shape[0], 12))
        ax.set_yticks(classes, [str(c) for c in classes])
        ax.set_ylabel("class")
        ax.set_title(name, fontsize=9)
        fig.colorbar(im, ax=ax, label=name)
    bottom = axes[-1, 0]
    columns = np.arange(0, len(order), _tick_step(len(order), 32))
    bottom.set_xticks(columns, [str(int(order[i])) for i in columns], rotation=90, fontsize=7)
    bottom.set_xlabel(
        f"channel id (the {len(order)} with the largest mean importance, most important left)"
    )
    return fig


def distributions(
    splits: Mapping[str, Mapping[str, np.ndarray]],
    keys: Sequence[str] = ("cam_max", "cam_min"),
) -> FigureType:
    """Histograms (densities) of per-sample values, e.g. the raw CAM max and min, one panel
    per key and one colour per split (overfitting shows as a shift between splits).

    Args:
        splits: ``{split: {key: (N,) values}}``.
        keys: the keys drawn, one panel each.

    Returns:
        The Figure.
    """
    words = {"cam_max": "raw CAM maximum per image", "cam_min": "raw CAM minimum per image"}
    fig, axes = _figure(1, len(keys), figsize=(5 * len(keys), 3.2))
    for ax, key in zip(axes[0], keys):
        for name, samples in splits.items():
            ax.hist(np.asarray(samples[key]), bins=40, alpha=0.55, density=True, label=name)
        ax.set_title(key)
        ax.set_xlabel(words.get(key, key))
        ax.set_ylabel("density (share per unit)")
        ax.legend(loc="upper right")  # a fixed place: "best" scans the data, slowly
    fig.tight_layout()
    return fig


def consistency_scatter(
    panels: Mapping[str, tuple[np.ndarray, np.ndarray, float | None]],
) -> FigureType:
    """One scatter per panel: activation level (x) against the logit (y), titled with r.

    Args:
        panels: ``{name: (levels (N,), logits (N,), r or None)}``.

    Returns:
        The Figure.
    """
    n = len(panels)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = _figure(rows, cols, figsize=(3.2 * cols, 3.0 * rows))
    for ax, (name, (a, y, r)) in zip(axes.ravel(), panels.items()):
        ax.scatter(a, y, s=4, alpha=0.5)
        ax.set_title(
            f"{name}\nr = {r:.3f}" if r is not None else f"{name}\nr undefined", fontsize=8
        )
        ax.set_xlabel("CAM activation level", fontsize=8)
        ax.set_ylabel("logit", fontsize=8)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def spectrum(explained_ratio: np.ndarray, marks: Mapping[str, int] | None = None) -> FigureType:
    """Explained-variance ratio per component and its cumulative sum. ``marks``: ``{level:
    components}`` (e.g. ``{"90": 8, "95": 11}``), drawn as dotted lines named in the legend;
    levels reached by the same component share one line.

    Args:
        explained_ratio: (K,) the share of the variance per component.
        marks: ``{level: components}``, or None.

    Returns:
        The Figure.
    """
    ratio = np.asarray(explained_ratio)
    fig, ax = _figure(figsize=(6, 3.2), squeeze=True)
    idx = np.arange(1, len(ratio) + 1)
    ax.bar(idx, ratio, color="tab:blue", label="per component")
    ax.plot(idx, np.cumsum(ratio), color="tab:red", label="cumulative")
    levels: dict[int, list[str]] = {}
    for level, k in (marks or {}).items():
        levels.setdefault(int(k), []).append(f"{str(level).rstrip('%')}%")
    for k, names in sorted(levels.items()):
        ax.axvline(
            k,
            color="gray",
            ls=":",
            label=f"{', '.join(names)} of the variance: {k} component{'s' * (k != 1)}",
        )
    ax.set_xscale("log")
    ax.set_xlabel("principal component (rank)")
    ax.set_ylabel("share of the variance")
    ax.legend(loc="center right", fontsize=7)  # between the cumulative curve and the bars
    return fig


def accuracy_curve(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    full_accuracy: float | None = None,
    *,
    label_rows: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
) -> FigureType:
    """Accuracy against the share of channels kept, one line per selection mode.

    ``curves``: ``{mode: (ratios, accuracy)}``. ``label_rows``: the same modes evaluated
    with the label's mask row (an oracle), drawn dashed in the colour of their mode; the
    solid lines are then named as the predicted class's row.

    Args:
        curves: ``{mode: (ratios, accuracy)}``.
        full_accuracy: the accuracy with all channels (a dotted line), or None.
        label_rows: ``{mode: (ratios, accuracy)}`` with the label's row, or None.

    Returns:
        The Figure.
    """
    fig, ax = _figure(figsize=(6, 3.4), squeeze=True)
    for name, (ratios, acc) in curves.items():
        suffix = ", predicted row" if label_rows else ""
        (line,) = ax.plot(np.asarray(ratios) * 100, acc, marker="o", label=name + suffix)
        if label_rows and name in label_rows:
            r, a = label_rows[name]
            ax.plot(
                np.asarray(r) * 100,
                a,
                marker="o",
                ls="--",
                mfc="none",
                color=line.get_color(),
                label=f"{name}, label row",
            )
    if full_accuracy is not None:
        ax.axhline(full_accuracy, color="gray", ls=":", label="all channels")
    ax.set_xscale("log")
    ax.set_xlabel("channels kept (%)")
    ax.set_ylabel("accuracy")
    ax.legend(loc="lower right", fontsize=7)
    return fig


def outliers(images: np.ndarray, maps: np.ndarray, titles: Sequence[str]) -> FigureType:
    """The worst outliers with their CAMs (common scale).

    Args:
        images: (N, H, W[, C]).
        maps: (N, h, w) in [0, 1], upsampled to (H, W) when on the feature grid.
        titles: one title per image.

    Returns:
        The Figure.

    Raises:
        ValueError: shapes that do not fit, or a title count other than N.
    """
    maps = _batch_maps(maps, images, "maps")
    n = len(images)
    if len(titles) != n:
        raise ValueError(f"{len(titles)} titles for {n} images; pass one title per image")
    fig, axes = _figure(1, n, figsize=(1.8 * n, 2.2))
    for i, (ax, m, t) in enumerate(zip(axes[0], maps, titles)):
        _draw_overlay(ax, images[i], m, 0.55, name=f"images[{i}]")
        ax.set_title(t, fontsize=7)
        ax.axis("off")
    return fig


def comparison_heatmap(
    values: ArrayLike, ranks: ArrayLike, rows: Sequence[str], columns: Sequence[str]
) -> FigureType:
    """A methods x metrics table drawn as a heatmap coloured by each cell's rank in its
    column (so columns whose better direction differs read alike), with the values
    written in the cells and the best of each column (rank 1) in bold and framed.

    Args:
        values: (M, K) the numbers written in the cells (NaN: "n/a").
        ranks: (M, K) their ranks within each column, 1 the best (NaN: no rank).
        rows: M row names (methods).
        columns: K column names (metrics, with their direction).

    Returns:
        The Figure.

    Raises:
        ValueError: shapes that do not match the names.
    """
    v, r = np.asarray(values, np.float64), np.asarray(ranks, np.float64)
    if v.shape != r.shape or v.shape != (len(rows), len(columns)):
        raise ValueError(
            f"values {v.shape} and ranks {r.shape} must both be (rows, columns) = "
            f"({len(rows)}, {len(columns)})"
        )
    m, k = v.shape
    fig, ax = _figure(figsize=(1.5 + 1.45 * k, 1.3 + 0.45 * m), squeeze=True)
    worst = max(m, 2)
    colours = require("matplotlib", "plots", "ifa_jax.plots").colormaps["RdYlGn_r"]
    im = ax.imshow(
        np.ma.masked_invalid(r),
        cmap=colours.with_extremes(bad="lightgrey"),  # no rank: grey
        vmin=1,
        vmax=worst,
        aspect="auto",
    )
    for i in range(m):
        for j in range(k):
            best = r[i, j] == 1
            text = "n/a" if not np.isfinite(v[i, j]) else f"{v[i, j]:.3g}"
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=8,
                fontweight="bold" if best else "normal",
            )
            if best:
                ax.add_patch(
                    _Rectangle((j - 0.48, i - 0.46), 0.96, 0.92, fill=False, lw=1.6, color="black")
                )
    ax.set_xticks(range(k), list(columns), rotation=25, ha="right", fontsize=8)
    ax.set_yticks(range(m), list(rows), fontsize=8)
    ax.set_xlabel("metric (arrow: the better direction; framed: best in the column)")
    ax.set_ylabel("method")
    bar = fig.colorbar(im, ax=ax, ticks=range(1, worst + 1))
    bar.set_label("rank in the column (1 = best)")
    return fig

"""Similarity of two CAMs for the sanity check: :func:`rank_correlation` (per sample
Spearman rho over the grid) and :func:`ssim` (structural similarity).

Examples:
    A map against a monotone transform of itself, its negation and itself:

    >>> import numpy as np
    >>> from ifa_jax.metrics.similarity import rank_correlation, ssim
    >>> cam = np.arange(16.0).reshape(1, 4, 4) / 15
    >>> rank_correlation(cam, cam**2), rank_correlation(cam, -cam)
    ([1.0], [-1.0])
    >>> round(ssim(cam[0], cam[0], win_size=3), 3)
    1.0
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from ifa_jax.metrics.correlation import spearman


def _maps(name: str, a: Any) -> np.ndarray:
    arr = np.asarray(a, np.float64)
    if arr.ndim < 2 or arr.shape[0] == 0 or arr[0].size == 0:
        raise ValueError(
            f"{name} must be a non-empty batch of maps (B, *spatial); got shape "
            f"{arr.shape}. Add the batch axis (cam[None])."
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has non-finite values; fix the CAMs first")
    return arr


def rank_correlation(cam_a: Any, cam_b: Any) -> list[float | None]:
    """Per sample Spearman rho over the grid of two CAM batches (B, *spatial).

    None for a sample whose maps are constant (or have fewer than 3 cells).

    Args:
        cam_a: (B, *spatial) one batch of CAMs.
        cam_b: (B, *spatial) the other.

    Returns:
        B values rho in [-1, 1] or None.

    Raises:
        ValueError: batches that are empty, not finite or of different shapes.
    """
    a, b = _maps("cam_a", cam_a), _maps("cam_b", cam_b)
    if a.shape != b.shape:
        raise ValueError(
            f"cam_a has shape {a.shape} but cam_b {b.shape}; they must match "
            "(resize one with ifa_jax.cams.upsample)"
        )
    return [spearman(u.ravel(), v.ravel()) for u, v in zip(a, b)]


def _window_1d(window: str, win_size: int, sigma: float) -> np.ndarray:
    if window == "gaussian":
        t = np.arange(win_size) - (win_size - 1) / 2
        w = np.exp(-0.5 * (t / sigma) ** 2)
        return w / w.sum()
    if window == "uniform":
        return np.full(win_size, 1.0 / win_size)
    raise ValueError(f"window {window!r} is not 'gaussian' or 'uniform'")


def ssim(
    a: Any,
    b: Any,
    *,
    data_range: float = 1.0,
    window: str = "gaussian",
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> float | np.ndarray:
    """Structural similarity (Wang et al. 2004) of 2-D maps (H, W) -> float or (B, H, W) -> (B,).

    Local weighted means, variances and covariance over every full ``win_size`` window
    (``'gaussian'``, std ``sigma``, or ``'uniform'``; no padding), mean of the SSIM map.
    C1 = (k1 data_range)^2, C2 = (k2 data_range)^2; use ``data_range=1`` for maps in [0, 1].

    Args:
        a: (H, W) or (B, H, W) maps.
        b: maps of the same shape.
        data_range: max - min possible value, > 0.
        window: 'gaussian' or 'uniform'.
        win_size: the window's size, at most min(H, W).
        sigma: the gaussian window's std.
        k1: the constant of C1.
        k2: the constant of C2.

    Returns:
        A float for 2-D maps, (B,) for a batch.

    Raises:
        ValueError: shapes that differ or are not 2-D / 3-D, non-finite values,
            data_range <= 0, a window that does not fit, or an unknown window.
    """
    single = np.ndim(a) == 2
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"a has shape {a.shape} but b {b.shape}; they must match")
    if a.ndim not in (2, 3) or a.size == 0:
        raise ValueError(f"ssim takes 2-D maps (H, W) or a batch (B, H, W); got {a.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("ssim inputs have non-finite values")
    if data_range <= 0:
        raise ValueError(f"data_range must be > 0 (max - min possible value); got {data_range}")
    if single:
        a, b = a[None], b[None]
    H, W = a.shape[1:]
    if not 1 <= win_size <= min(H, W):
        raise ValueError(
            f"win_size {win_size} does not fit maps of {H}x{W}; pass "
            f"win_size <= {min(H, W)} or upsample the maps"
        )
    w = _window_1d(window, int(win_size), float(sigma))
    n_h, n_w = H - win_size + 1, W - win_size + 1

    def filt(m: np.ndarray) -> np.ndarray:  # separable weighted sums over every full window
        # w has win_size >= 1 taps, so each sum is an array, never the int start value 0
        m = cast(np.ndarray, sum(wj * m[:, j : j + n_h, :] for j, wj in enumerate(w)))
        return cast(np.ndarray, sum(wj * m[:, :, j : j + n_w] for j, wj in enumerate(w)))

    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a * mu_a
    var_b = filt(b * b) - mu_b * mu_b
    cov = filt(a * b) - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    )
    out = s.mean(axis=(1, 2))
    return float(out[0]) if single else out

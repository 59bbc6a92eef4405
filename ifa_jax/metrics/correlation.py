"""Consistency statistics: :func:`pearson`, :func:`spearman` and :func:`consistency`
between a CAM's activation level (:func:`activation_level`) and the target score, and
:func:`auroc`.

Pure functions on host NumPy arrays (float64). Undefined statistics (too few samples, a
constant input, a single class) are ``None`` with a ``reason`` string, never NaN.

Examples:
    >>> import numpy as np
    >>> from ifa_jax.metrics.correlation import activation_level, auroc, consistency
    >>> cams = np.array([0.1, 0.4, 0.35, 0.8])[:, None, None] * np.ones((4, 3, 3))
    >>> levels = activation_level(cams)  # the mean of each rescaled CAM
    >>> levels.shape
    (4,)
    >>> result = consistency(levels, [1.0, 2.0, 3.0, 4.0])
    >>> round(result["pearson"], 3), round(result["spearman"], 3), result["n"]
    (0.913, 0.8, 4)
    >>> auroc([0.9, 0.2, 0.7, 0.4], [True, False, False, True])
    {'auroc': 0.75, 'positives': 2, 'negatives': 2, 'reason': None}
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ifa_jax._checks import per_sample_values
from ifa_jax.metrics._common import paired_values

Array = jax.Array

MIN_SAMPLES = 3


def _undefined(names: tuple[str, str], a: np.ndarray, b: np.ndarray) -> str | None:
    """Why a correlation of a and b is undefined, or None when it is defined."""
    if a.size < MIN_SAMPLES:
        return f"fewer than {MIN_SAMPLES} samples (n={a.size})"
    const_a, const_b = bool(np.all(a == a[0])), bool(np.all(b == b[0]))
    if const_a and const_b:
        return f"constant {names[0]} and {names[1]}"
    if const_a:
        return f"constant {names[0]}"
    if const_b:
        return f"constant {names[1]}"
    return None


def rankdata(a: Any) -> np.ndarray:
    """1-based ranks of a 1-D array, ties given their average rank (float64).

    Args:
        a: (N,) values.

    Returns:
        (N,) float64 ranks.
    """
    a = np.asarray(a)
    s = np.sort(a)
    return (np.searchsorted(s, a, "left") + np.searchsorted(s, a, "right") + 1) / 2.0


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    da, db = a - a.mean(), b - b.mean()
    r = float(np.dot(da, db) / math.sqrt(float(np.dot(da, da)) * float(np.dot(db, db))))
    return min(1.0, max(-1.0, r))


def pearson(a: Any, b: Any) -> float | None:
    """Pearson r of two (N,) arrays; None when undefined (N < 3 or a constant input).

    :func:`consistency` gives the reason along with the value.

    Args:
        a: (N,) values.
        b: (N,) values.

    Returns:
        r in [-1, 1], or None.

    Raises:
        ValueError: arrays of different sizes or with non-finite values.
    """
    a, b = paired_values(("a", "b"), a, b)
    return None if _undefined(("a", "b"), a, b) else _pearson(a, b)


def spearman(a: Any, b: Any) -> float | None:
    """Spearman rho (Pearson r of average-tie ranks) of two (N,) arrays; None when undefined.

    Args:
        a: (N,) values.
        b: (N,) values.

    Returns:
        rho in [-1, 1], or None.

    Raises:
        ValueError: arrays of different sizes or with non-finite values.
    """
    a, b = paired_values(("a", "b"), a, b)
    return None if _undefined(("a", "b"), a, b) else _pearson(rankdata(a), rankdata(b))


def consistency(activation: Any, score: Any) -> dict[str, Any]:
    """Agreement of CAM activation levels (N,) with target scores (N,) over samples.

    Args:
        activation: (N,) CAM activation levels.
        score: (N,) target scores (e.g. logits).

    Returns:
        ``{'pearson': r, 'spearman': rho, 'n': N, 'reason': None}``; when a correlation
            is undefined (N < 3, constant activation or score) both are None and ``reason``
            says why.

    Raises:
        ValueError: arrays of different sizes or with non-finite values.
    """
    names = ("activation", "score")
    a, b = paired_values(names, activation, score)
    reason = _undefined(names, a, b)
    if reason:
        return {"pearson": None, "spearman": None, "n": int(a.size), "reason": reason}
    return {
        "pearson": _pearson(a, b),
        "spearman": _pearson(rankdata(a), rankdata(b)),
        "n": int(a.size),
        "reason": None,
    }


def activation_level(cam_scaled: Array) -> Array:
    """Mean of each rescaled CAM over its grid: (B, *spatial) -> (B,), any spatial rank.

    For the 'tanh' scale, pass :func:`ifa_jax.scale.linear_values` (the scale inverted).

    Args:
        cam_scaled: (B, *spatial) rescaled CAMs.

    Returns:
        (B,) the mean of each.

    Raises:
        ValueError: an input without a batch axis.
    """
    if jnp.ndim(cam_scaled) < 2:
        raise ValueError(
            f"activation_level expects CAMs (B, *spatial); got shape "
            f"{jnp.shape(cam_scaled)}. Add the batch axis (cam[None])."
        )
    return jnp.mean(cam_scaled, axis=tuple(range(1, jnp.ndim(cam_scaled))))


def auroc(scores: Any, positives: Any) -> dict[str, Any]:
    """Area under the ROC curve of scores (N,) against positives (N,) bool.

    Rank-sum (Mann-Whitney U) formula with average ranks for ties, so it equals
    ``sklearn.metrics.roc_auc_score``.

    Args:
        scores: (N,) scores.
        positives: (N,) bool (or 0/1), e.g. ``prediction == c``.

    Returns:
        ``{'auroc', 'positives', 'negatives', 'reason'}``; with a single class ``auroc``
            is None and ``reason`` says which.

    Raises:
        ValueError: positives that are not 1-D bool or 0/1, sizes that differ, or
            non-finite scores.
    """
    s = per_sample_values(scores, "scores")
    p = np.asarray(positives)
    if p.dtype != bool:
        if (
            p.ndim == 1
            and p.size
            and np.issubdtype(p.dtype, np.number)
            and np.all((p == 0) | (p == 1))
        ):
            p = p.astype(bool)
        else:
            raise ValueError(
                f"positives must be a 1-D bool array (or 0/1); got dtype "
                f"{p.dtype}, shape {p.shape}. E.g. positives = prediction == c"
            )
    p = per_sample_values(p, "positives").astype(bool)
    if p.shape != s.shape:
        raise ValueError(
            f"scores has {s.size} values but positives has {p.size}; pass one flag per sample"
        )
    n_pos, n_neg = int(p.sum()), int((~p).sum())
    out = {"auroc": None, "positives": n_pos, "negatives": n_neg, "reason": None}
    if n_pos == 0 or n_neg == 0:
        missing = "no positives" if n_pos == 0 else "no negatives"
        out["reason"] = f"only one class present ({missing})"
        return out
    u = rankdata(s)[p].sum() - n_pos * (n_pos + 1) / 2.0
    out["auroc"] = float(u / (n_pos * n_neg))
    return out

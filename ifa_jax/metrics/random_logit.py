"""The random-logit test (Sixt et al. 2020): does the map change with the class explained?

The map of the target class is compared with the map of another class drawn at random
(uniformly from the other ``num_classes - 1``, from an explicit key:
:func:`other_classes`). A method whose maps ignore the class (it only shows edges, say)
scores a similarity near 1; lower is better. The similarity is SSIM, Quantus 0.6.0's
default, of the two maps each divided by its maximum absolute value, with
``data_range`` = max - min over the pair; its window is uniform, 7 cells wide (``win_size``)
as in scikit-image's default. Quantus differs in two places: it flattens the maps to 1-D
before its SSIM (windows run along the rows only) with the sample covariance, and it
divides by the maximum over the whole batch; here the windows are 2-D, the covariance
that of the window's weights, and each map is divided by its own maximum, so a sample's
value does not depend on its batch. Maps with other than 2 spatial axes need a
``similarity`` function.

Examples:
    A fake explanation function whose map is the input channel of the target class,
    and one that ignores the class:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> from ifa_jax.metrics.random_logit import other_classes, random_logit
    >>> x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3))
    >>> def by_class(x, target):
    ...     return jnp.take_along_axis(x, target[:, None, None, None], axis=-1)[..., 0]
    >>> def blind(x, target):
    ...     return x.mean(axis=-1)
    >>> key = jax.random.key(1)
    >>> off = other_classes(key, jnp.array([0, 1]), 3)
    >>> bool((off != jnp.array([0, 1])).all())
    True
    >>> [round(v, 3) for v in random_logit(blind, x, [0, 1], 3, key=key).tolist()]
    [1.0, 1.0]
    >>> bool(max(random_logit(by_class, x, [0, 1], 3, key=key).tolist()) < 0.5)
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ifa_jax._checks import positive_int, prng_key
from ifa_jax.metrics._common import class_targets
from ifa_jax.metrics.robustness import ExplainFn
from ifa_jax.metrics.scores import Scores
from ifa_jax.metrics.similarity import ssim

Array = jax.Array


def other_classes(key: Any, target: Any, num_classes: int) -> Array:
    """A class other than the target for each sample, uniform over the other classes.

    ``r = randint(key, (B,), 0, num_classes - 1)``, then ``r + (r >= target)`` skips the
    target.

    Args:
        key: a PRNG key.
        target: (B,) ints in [0, num_classes).
        num_classes: the number of classes, >= 2.

    Returns:
        (B,) int32 classes, none equal to its target.

    Raises:
        ValueError: fewer than 2 classes, a target out of range or a bad key.
    """
    target = jnp.asarray(target)
    n = positive_int("num_classes", num_classes, "the model's classes")
    if n < 2:
        raise ValueError("num_classes must be >= 2: the random-logit test needs another class")
    if target.size and (int(target.min()) < 0 or int(target.max()) >= n):
        raise ValueError(
            f"targets must lie in [0, {n}); got {int(target.min())}..{int(target.max())}. "
            "Pass the model's number of classes as num_classes."
        )
    k = prng_key(key)
    if k is None:
        raise ValueError("key is None; pass a PRNG key, e.g. key=jax.random.key(0)")
    r = jax.random.randint(k, target.shape, 0, n - 1, dtype=jnp.int32)
    return r + (r >= target).astype(jnp.int32)


def _by_max(m: np.ndarray) -> np.ndarray:
    top = np.abs(m).max()
    return m / top if top > 0 else m


def pair_ssim(a: np.ndarray, b: np.ndarray, win_size: int) -> float | None:
    """SSIM of two 2-D maps, each divided by its max |value|, data range over the pair.

    Args:
        a: (H, W) a map.
        b: (H, W) another.
        win_size: the uniform window's size, at most min(H, W).

    Returns:
        The SSIM, or None when both maps are one constant (no data range).

    Raises:
        ValueError: as for :func:`ifa_jax.metrics.similarity.ssim`.
    """
    a, b = _by_max(np.asarray(a, np.float64)), _by_max(np.asarray(b, np.float64))
    both = np.concatenate([a.ravel(), b.ravel()])
    data_range = float(both.max() - both.min())
    if data_range == 0:
        return None
    return float(ssim(a, b, data_range=data_range, window="uniform", win_size=win_size))


def random_logit(
    explain_fn: ExplainFn,
    x: Any,
    target: Any,
    num_classes: int,
    *,
    key: Any,
    maps: Any = None,
    similarity: Callable[[Array, Array], Any] | None = None,
    win_size: int = 7,
) -> Scores:
    """Random-logit similarity (Sixt et al. 2020): SSIM of the target's map and the map
    of a random other class (:func:`other_classes`); lower is better.

    Args:
        explain_fn: ``(x (N, *in, C), target (N,)) -> maps (N, *spatial)``, as for
            :func:`ifa_jax.metrics.robustness.sensitivity`.
        x: (B, *in, C) inputs.
        target: an int or (B,) ints.
        num_classes: the model's number of classes, >= 2.
        key: a PRNG key for the other classes.
        maps: (B, *spatial) the target's maps, or None to compute them with explain_fn.
        similarity: ``(maps_a, maps_b) -> (B,)`` instead of SSIM (needed for maps with 1
            or 3 spatial axes), given the raw maps.
        win_size: the SSIM window's size, at most the maps' smallest side.

    Returns:
        :class:`~ifa_jax.metrics.scores.Scores` (B,); with SSIM, undefined where both
        maps are one constant.

    Raises:
        ValueError: a bad target, key or class count, maps of another shape than
            explain_fn's, maps that are not 2-D without a ``similarity``, or a window
            larger than the maps.
    """
    x = jnp.asarray(x)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch (B, *in, C); got shape {x.shape}")
    B = x.shape[0]
    target = class_targets(target, B)
    off = other_classes(key, target, num_classes)
    ours = jnp.asarray(explain_fn(x, target) if maps is None else maps)
    theirs = jnp.asarray(explain_fn(x, off))
    if ours.shape != theirs.shape or ours.ndim < 2 or ours.shape[0] != B:
        raise ValueError(
            f"the target's maps have shape {ours.shape} and the other class' {theirs.shape}; "
            f"explain_fn must return one map per input row, (B={B}, *spatial), for both"
        )
    if similarity is not None:
        value = jnp.asarray(similarity(ours, theirs), jnp.float32)
        if value.shape != (B,):
            raise ValueError(
                f"similarity must return one value per sample, shape ({B},); got {value.shape}"
            )
        finite = jnp.isfinite(value)
        return Scores(jnp.where(finite, value, 0), finite, "the similarity is not finite")
    if ours.ndim != 3:
        raise ValueError(
            f"SSIM needs 2-D maps (B, H, W); got {ours.shape}. Pass similarity=... for maps "
            "with 1 or 3 spatial axes, e.g. a rank correlation"
        )
    a, b = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    values = [pair_ssim(u, v, win_size) for u, v in zip(a, b)]
    defined = np.array([v is not None for v in values])
    value = np.array([0.0 if v is None else v for v in values])
    return Scores(value, defined, "both maps are one constant")

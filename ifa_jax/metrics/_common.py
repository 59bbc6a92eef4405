"""Input checks the metrics share: per-sample pairs, score functions, saliency inputs."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from ifa_jax._checks import index_targets, is_traced, per_sample_values

Array = jax.Array


def paired_values(names: tuple[str, str], a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = per_sample_values(a, names[0]), per_sample_values(b, names[1])
    if a.shape != b.shape:
        raise ValueError(
            f"{names[0]} has {a.size} values but {names[1]} has {b.size}; "
            "pass one value per sample in each"
        )
    return a, b


def as_scorer(score_fn: Any) -> Partial:
    if isinstance(score_fn, Partial):
        return score_fn
    if not callable(score_fn):
        raise TypeError(
            f"score_fn must be callable (x, target) -> (N,); got {type(score_fn).__name__}"
        )
    return Partial(score_fn)


def check_inputs(x: Any, saliency: Any) -> tuple[Array, Array]:
    x, saliency = jnp.asarray(x), jnp.asarray(saliency)
    if not 3 <= x.ndim <= 5:
        raise ValueError(
            f"inputs x must have shape (B, *spatial, C) with 1-3 spatial axes; got {x.shape}"
        )
    if x.shape[0] == 0:
        raise ValueError("inputs x are empty (batch of 0); pass at least one sample")
    if saliency.shape != x.shape[:-1]:
        raise ValueError(
            f"saliency has shape {saliency.shape} but the inputs {x.shape} need "
            f"{x.shape[:-1]} (B, *spatial) on the input grid; resize CAMs with "
            f"ifa_jax.cams.upsample(cam, {tuple(x.shape[1:-1])})"
        )
    lo, hi = float(jnp.min(saliency)), float(jnp.max(saliency))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("saliency has non-finite values; fix the CAMs or their scale")
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(
            f"saliency must lie in [0, 1]; got min {lo:.4g}, max {hi:.4g}. "
            "Rescale it (common scale or per-image min-max) and clip to [0, 1]."
        )
    return x, jnp.clip(saliency, 0.0, 1.0).astype(x.dtype)


def check_scores(name: str, y: Array, expected: tuple[int, ...] | None = None) -> None:
    """Scores ``y`` of the rows ``name``: shape ``expected`` (when given), and (outside
    ``jit``, where the values are known) finite."""
    if expected is not None and y.shape != expected:
        raise ValueError(
            f"score_fn must return one score per row, shape {expected}; got {y.shape} ({name})"
        )
    if is_traced(y):
        return
    bad = int(jnp.size(y) - jnp.sum(jnp.isfinite(y)))
    if bad:
        raise FloatingPointError(
            f"score_fn returned {bad} non-finite score(s) ({name}); "
            "check the model, the inputs and the baseline, and that every target is one of "
            "the model's outputs (model_scorer scores any other target NaN)"
        )


def check_maps(maps: Any, name: str = "maps") -> Array:
    """Maps (B, *spatial) with 1-3 spatial axes, finite, as a float array."""
    maps = jnp.asarray(maps)
    if not 2 <= maps.ndim <= 4 or maps.shape[0] == 0 or maps.size == 0:
        raise ValueError(
            f"{name} must be a non-empty batch (B, *spatial) with 1-3 spatial axes; got "
            f"shape {maps.shape}. Add the batch axis (cam[None]) or drop the channel axis."
        )
    if not jnp.issubdtype(maps.dtype, jnp.floating):
        maps = maps.astype(jnp.float32)
    if not is_traced(maps) and not bool(jnp.all(jnp.isfinite(maps))):
        raise ValueError(f"{name} has non-finite values; fix the CAMs first")
    return maps


def check_masks(masks: Any, maps: Array) -> Array:
    """Boolean masks of the maps' shape (B, *spatial), each with at least one cell set."""
    masks = jnp.asarray(masks)
    if masks.shape != maps.shape:
        raise ValueError(
            f"masks have shape {masks.shape} but the maps {maps.shape}; pass one mask per "
            f"map on its grid (resize the maps with ifa_jax.cams.upsample(cam, "
            f"{tuple(maps.shape[1:])}) or the masks with nearest-neighbour sampling)"
        )
    if masks.dtype != jnp.bool_:
        if is_traced(masks) or not bool(jnp.all((masks == 0) | (masks == 1))):
            raise ValueError(
                f"masks must be boolean (or 0/1 values); got dtype {masks.dtype}. "
                "Threshold them first, e.g. masks > 0.5"
            )
        masks = masks.astype(bool)
    if not is_traced(masks):
        empty = np.flatnonzero(~np.asarray(masks.reshape(masks.shape[0], -1).any(axis=1)))
        if empty.size:
            raise ValueError(
                f"{empty.size} mask(s) are empty (first at index {empty[0]}); every sample "
                "needs at least one cell in its mask. Drop those samples."
            )
    return masks


def class_targets(target: Any, batch: int) -> Array:
    """Class indices (batch,) from an int or ints; a name such as 'predicted' is refused,
    since the class must stay fixed while the inputs change."""
    if isinstance(target, str) or callable(target):
        raise ValueError(
            f"target must be class indices (an int or {batch} ints), got {target!r:.40}: the "
            "class must stay the same for every perturbed input. For the predicted class "
            "pass jnp.argmax(logits, axis=-1) of the unperturbed inputs."
        )
    return index_targets(target, batch)

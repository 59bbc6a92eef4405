"""The common intensity scale for CAMs (docs/method.md section 3).

Ordinary CAMs are min-max normalised per image, so a bright region in one image and a
bright region in another mean nothing relative to each other. IFA instead fixes one scale
for the whole dataset from the distribution of the raw CAMs' per-sample extremes:

* ``vmax = ratio * P_hi(cam_max)``, ``vmin = ratio * P_lo(cam_min)`` (defaults: the 90th
  percentile of the per-sample maxima and the 50th of the per-sample minima, ratio 1;
  the paper uses ratio 1.5 for medical images);
* with ``remove_negative`` the raw CAM is relu'd first and ``vmin`` is taken as 0 when
  ``vmax > 0`` (in both modes: the discarded negative part has no place on the scale);
* ``'norm'``: ``L' = (L - vmin) / (vmax - vmin)``, so vmin -> 0 and vmax -> 1;
* ``'tanh'``: ``L' = tanh(a L + b)`` with ``a, b`` solved exactly so that
  vmin -> 0.05 and vmax -> 0.95.

Clipping: :func:`apply_scale` is the exact (invertible) map by default, ``clip=False``;
CAMs of strong samples exceed 1 and weak ones fall below 0. Pass ``clip=True`` for display
(the paper clips to [0, 1] when it draws). Evaluation (activation level vs logit) should
use the unclipped map, or :func:`invert_scale` of it, so that no sample saturates.

A degenerate scale (vmax <= vmin, non-finite bounds, no samples) raises ``ValueError``
naming the values and a fix: there is never a silent fallback to per-image scaling
(the reference code's defect). :func:`minmax_per_image` is that per-image baseline, for
comparisons only.

Shapes: raw CAMs L are (B, *spatial) with 1-3 spatial axes; the scale functions are
elementwise and accept any shape. :class:`Scale` is a pytree whose float bounds are leaves
and whose mode and ``remove_negative`` flag are static, so ``jax.jit(apply_scale)`` traces
once per mode, not once per dataset.

Examples:
    A scale from four samples' extremes (vmax = P90 of the maxima, vmin = P50 of the
    minima), applied to a 2 x 2 CAM and inverted:

    >>> import numpy as np
    >>> from ifa_jax.scale import apply_scale, common_scale, invert_scale
    >>> s = common_scale(np.array([2.0, 4.0, 6.0, 8.0]), np.array([-1.0, 0.0, 0.5, 1.0]))
    >>> round(s.vmin, 3), round(s.vmax, 3), s.mode
    (0.25, 7.4, 'norm')
    >>> L = np.array([[0.0, 3.0], [6.0, 9.0]])
    >>> print(np.asarray(apply_scale(L, s)).round(2))
    [[-0.03  0.38]
     [ 0.8   1.22]]
    >>> print(np.asarray(apply_scale(L, s, clip=True)).round(2))
    [[0.   0.38]
     [0.8  1.  ]]
    >>> print(np.asarray(invert_scale(apply_scale(L, s), s)).round(2))
    [[0. 3.]
     [6. 9.]]
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ifa_jax._checks import per_sample_values

# Part of this module's API; they live lower in the layer order (analysis and cams use
# them too).
from ifa_jax._stats import DEFAULT_PERCENTILES as DEFAULT_PERCENTILES
from ifa_jax._stats import check_percentile, percentile_label
from ifa_jax._stats import minmax_per_image as minmax_per_image
from ifa_jax._stats import percentiles as percentiles

Array = jax.Array

MODES = ("norm", "tanh")
TANH_LOW, TANH_HIGH = 0.05, 0.95


class Scale(NamedTuple):
    """One dataset-wide intensity scale.

    vmin, vmax: the raw CAM values sent to 0 and 1 ('norm') or to 0.05 and 0.95 ('tanh')
    (vmin is already 0 when ``remove_negative`` and vmax > 0).
    mode: 'norm' or 'tanh'. remove_negative: relu the raw CAM before scaling.
    a, b: the affine part ``z = a L + b``; 'norm' returns z, 'tanh' returns tanh(z).
    """

    vmin: float
    vmax: float
    mode: str
    remove_negative: bool
    a: float
    b: float


# Bounds and coefficients are traced leaves; mode and remove_negative are static.
jax.tree_util.register_pytree_node(
    Scale,
    lambda s: ((s.vmin, s.vmax, s.a, s.b), (s.mode, s.remove_negative)),
    lambda aux, ch: Scale(ch[0], ch[1], aux[0], aux[1], ch[2], ch[3]),
)


def scale_from_bounds(
    vmin: float, vmax: float, *, mode: str = "norm", remove_negative: bool = False
) -> Scale:
    """A :class:`Scale` from explicit bounds (validated; see the module doc).

    Args:
        vmin: the raw CAM value sent to 0 ('norm') or 0.05 ('tanh'); taken as 0 with
            ``remove_negative``.
        vmax: the raw CAM value sent to 1 ('norm') or 0.95 ('tanh').
        mode: 'norm' or 'tanh'.
        remove_negative: relu the raw CAM before scaling.

    Returns:
        The :class:`Scale`, with its affine coefficients ``a, b`` solved.

    Raises:
        ValueError: an unknown mode, non-finite bounds, ``vmax <= 0`` with
            ``remove_negative``, or ``vmax <= vmin`` (a degenerate scale).
    """
    if mode not in MODES:
        raise ValueError(f"unknown scale mode {mode!r}; use one of {MODES}")
    vmin, vmax = float(vmin), float(vmax)
    if not (math.isfinite(vmin) and math.isfinite(vmax)):
        raise ValueError(
            f"scale bounds must be finite; got vmin={vmin}, vmax={vmax}: check "
            "the per-sample CAM maxima/minima for inf/NaN"
        )
    if remove_negative:
        if vmax <= 0:
            raise ValueError(
                f"remove_negative=True but vmax = {vmax:.6g} <= 0: the typical CAM has no "
                "positive part, so relu would erase it; use remove_negative=False, or check "
                "the target class (a negative CAM often means the wrong target is explained)"
            )
        vmin = 0.0
    if not vmax > vmin:
        raise ValueError(
            f"degenerate common scale: vmax = {vmax:.6g} <= vmin = {vmin:.6g}. The analysed "
            "CAMs are (nearly) constant or the percentiles cross; check that the layer's CAMs "
            "are not all zero, raise hi_percentile / lower lo_percentile, or pass explicit "
            "bounds to scale_from_bounds. (No silent fallback to per-image scaling.)"
        )
    if mode == "norm":
        a = 1.0 / (vmax - vmin)
        b = -vmin * a
    else:
        lo, hi = math.atanh(TANH_LOW), math.atanh(TANH_HIGH)
        a = (hi - lo) / (vmax - vmin)
        b = lo - a * vmin
    return Scale(vmin, vmax, mode, bool(remove_negative), a, b)


def common_scale(
    cam_max: ArrayLike,
    cam_min: ArrayLike,
    *,
    mode: str = "norm",
    hi_percentile: float = 90,
    lo_percentile: float = 50,
    ratio: float = 1.0,
    remove_negative: bool = False,
) -> Scale:
    """The dataset-wide scale from per-sample extremes of the raw CAM.

    vmax = ratio * P_hi(cam_max); vmin = ratio * P_lo(cam_min) (0 with remove_negative
    when vmax > 0).

    Args:
        cam_max: (N,) max of L over the feature grid, one per analysed sample
            (``cams.CamResult.max`` or the analysis' per-sample arrays).
        cam_min: (N,) min of L over the feature grid, for the same samples.
        mode: 'norm' or 'tanh'.
        hi_percentile: the percentile P_hi of the maxima that gives vmax.
        lo_percentile: the percentile P_lo of the minima that gives vmin.
        ratio: the factor on both bounds (1 natural images, 1.5 medical in the paper).
        remove_negative: relu the raw CAM before scaling (vmin is then 0).

    Returns:
        The :class:`Scale`.

    Raises:
        ValueError: empty or non-finite inputs, ratio <= 0, a sample whose max is below
            its min (arrays swapped?) and a degenerate scale.
    """
    mx = per_sample_values(cam_max, "cam_max")
    mn = per_sample_values(cam_min, "cam_min")
    if mx.shape != mn.shape:
        raise ValueError(
            f"cam_max has {mx.size} samples but cam_min {mn.size}; pass the "
            "per-sample max and min of the same samples"
        )
    swapped = mx < mn
    if swapped.any():
        i = int(np.flatnonzero(swapped)[0])
        raise ValueError(
            f"cam_max < cam_min for {int(swapped.sum())} sample(s) (first: index "
            f"{i}, max {mx[i]:.6g} < min {mn[i]:.6g}); are the arguments swapped?"
        )
    ratio = float(ratio)
    if not (math.isfinite(ratio) and ratio > 0):
        raise ValueError(
            f"ratio must be a positive finite number (1 natural images, 1.5 "
            f"medical in the paper); got {ratio}"
        )
    hi = check_percentile(hi_percentile, "hi_percentile")
    lo = check_percentile(lo_percentile, "lo_percentile")
    vmax = ratio * float(np.percentile(mx, hi))
    vmin = ratio * float(np.percentile(mn, lo))
    try:
        return scale_from_bounds(vmin, vmax, mode=mode, remove_negative=remove_negative)
    except ValueError as err:
        zero = ""
        if not (mx.any() or mn.any()):
            zero = (
                f" Every one of the {mx.size} CAMs is exactly 0: for a gradient method the "
                "layer's gradients are zero for the targets (analyze warns with "
                "ZeroGradientWarning: a stop_gradient or dead ReLUs after the layer, or a "
                "layer the output does not read, such as a ViT's last patch tokens); tap "
                "another layer."
            )
        raise ValueError(
            f"{err} [from {mx.size} samples: vmax = {ratio:g} x "
            f"P{percentile_label(hi)} of cam_max, vmin = {ratio:g} x "
            f"P{percentile_label(lo)} of cam_min]{zero}"
        ) from None


def apply_scale(L: ArrayLike, scale: Scale, *, clip: bool = False) -> Array:
    """Rescale raw CAMs L (any shape, e.g. (B, *spatial)) with a common scale.

    'norm': (L' - vmin) / (vmax - vmin); 'tanh': tanh(a L' + b); L' = relu(L) with
    remove_negative. Pure jnp, jit-able.

    Args:
        L: raw CAMs, any shape, e.g. (B, *spatial).
        scale: the common :class:`Scale`.
        clip: clip the result to [0, 1] for display (tanh values below 0 are then 0);
            the default keeps the exact, invertible map.

    Returns:
        The rescaled CAMs, of the shape of ``L``.

    Raises:
        ValueError: an unknown scale mode.
    """
    L = jnp.asarray(L)
    if scale.remove_negative:
        L = jax.nn.relu(L)
    if scale.mode == "norm":
        out = (L - scale.vmin) / (scale.vmax - scale.vmin)
    elif scale.mode == "tanh":
        out = jnp.tanh(scale.a * L + scale.b)
    else:
        raise ValueError(f"unknown scale mode {scale.mode!r}; use one of {MODES}")
    return jnp.clip(out, 0.0, 1.0) if clip else out


def linear_values(L: Array, scale: Scale, *, clip: bool = False) -> Array:
    """The rescaled CAM on a linear scale, for activation levels: ``a L' + b``.

    For 'norm' this is :func:`apply_scale` itself. For 'tanh' it is the drawn values
    mapped back through arctanh, so a CAM's mean stays linear in L instead of being
    squashed by tanh. ``clip=True`` gives the same for the values as drawn (clipped to
    [0, 1]): for 'tanh' only the lower clip survives the arctanh (drawn values stay below
    1), so the result is ``max(a L' + b, 0)``.

    Args:
        L: raw CAMs, any shape, e.g. (B, *spatial).
        scale: the common :class:`Scale`.
        clip: the values as drawn (clipped), see above.

    Returns:
        ``a L' + b`` (clipped as described), of the shape of ``L``.
    """
    L = jnp.asarray(L)
    if scale.remove_negative:
        L = jax.nn.relu(L)
    z = scale.a * L + scale.b
    if not clip:
        return z
    return jnp.clip(z, 0.0, 1.0) if scale.mode == "norm" else jnp.maximum(z, 0.0)


def invert_scale(v: Array, scale: Scale) -> Array:
    """Inverse of :func:`apply_scale` (unclipped): raw CAM values from scaled ones.

    'norm': v (vmax - vmin) + vmin; 'tanh': (arctanh(v) - b) / a. Exact for values that
    were not clipped; with remove_negative it returns relu(L) (negatives are lost);
    tanh values saturated to +-1 in floating point invert to +-inf. Pure jnp, jit-able.

    Args:
        v: rescaled CAMs, any shape.
        scale: the :class:`Scale` they were rescaled with.

    Returns:
        The raw CAM values, of the shape of ``v``.

    Raises:
        ValueError: an unknown scale mode.
    """
    v = jnp.asarray(v)
    if scale.mode == "norm":
        return v * (scale.vmax - scale.vmin) + scale.vmin
    if scale.mode == "tanh":
        return (jnp.arctanh(v) - scale.b) / scale.a
    raise ValueError(f"unknown scale mode {scale.mode!r}; use one of {MODES}")

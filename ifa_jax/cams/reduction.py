"""From a method's contributions M to a CAM, and from several layers' CAMs to one map.

:func:`contributions` runs one layer method; :func:`reduce` turns M (B, *spatial, K)
into the raw CAM ``L = sum_k m_k M_k`` (no ReLU: removing negatives belongs to the
scale), the per-sample channel importances ``s_k = sum over the grid of m_k M_k`` and
``max(L)``, ``min(L)``; :func:`cam` is both. :func:`cam_layers` runs a method of several
layers, :func:`cams_per_layer` a layer method on every layer of a probe, and
:func:`fuse` combines maps of several layers on one grid (:func:`upsample`).

Examples:
    From contributions to a CAM, a channel mask, and two layers fused on one grid:

    >>> import jax.numpy as jnp
    >>> from ifa_jax import cams
    >>> M = jnp.ones((1, 2, 2, 3)) * jnp.array([1.0, -2.0, 0.5])
    >>> result = cams.reduce(M)
    >>> result.cam[0, 0, 0].item(), result.importance.tolist()
    (-0.5, [[4.0, -8.0, 2.0]])
    >>> cams.reduce(M, mask=jnp.array([1.0, 0.0, 1.0])).max.tolist()   # channel 1 masked
    [1.5]
    >>> L = {"fine": jnp.ones((1, 4, 4)), "coarse": 3 * jnp.ones((1, 2, 2))}
    >>> cams.fuse(L, (8, 8)).shape, cams.fuse(L, (8, 8))[0, 0, 0].item()
    ((1, 8, 8), 2.0)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ifa_jax._checks import positive_int
from ifa_jax.cams._grid import per_channel, spatial_axes
from ifa_jax.cams.method import CamInputs, CamResult, LayerMethod, LayersMethod, Method
from ifa_jax.cams.registry import LAYERS_METHODS, get_method, method_options, require_key

Array = jax.Array


def contributions(
    A: Array,
    G: Array | None = None,
    method: str | Method = "gradcam",
    *,
    weights: Array | None = None,
    key: Array | None = None,
    **options: Any,
) -> Array:
    """Per-channel contribution maps M (B, *spatial, K) of one CAM method.

    ``weights`` (B, K) are required for the forward methods (scorecam, ablationcam) and
    override the method's own weights when given for any method. ``key`` (keyword-only)
    is the PRNG key of methods that need one (randomcam); others ignore it. ``options``
    are the method's keyword options (``eps`` of gradcam++ and xgradcam, ``k`` of fem,
    ``kernel`` and ``gamma`` of kpcacam; see ``REGISTRY[name].options``).

    Args:
        A: activations (B, *spatial, K), 1-3 spatial axes.
        G: gradients of the same shape, or None for methods that do not need them.
        method: a registered method of kind ``"layer"``: a name, an alias or its entry.
        weights: per-channel weights (B, K), ``M_k = w_k * A_k``, or None.
        key: a PRNG key, for methods that need one.
        **options: the method's keyword options.

    Returns:
        The contribution maps M (B, *spatial, K).

    Raises:
        ValueError: an unknown method or option, a method of another kind, weights of
            another shape than (B, K), a forward method without ``weights``, or A with no
            spatial axis or more than 3.
    """
    spec = get_method(method)
    opts = method_options(spec, options)
    if not isinstance(spec, LayerMethod):
        fix = {
            "layers": "cams.cam_layers(A_dict, G_dict, method) or ifa_jax.explain with a probe "
            "of several layers",
            "input": "ifa_jax.explain(probe, variables, x, target, method)",
        }[spec.kind]
        raise ValueError(
            f"{spec.name} is a method of kind {spec.kind!r}: it maps "
            f"{'several layers' if spec.kind == 'layers' else 'the model'} to one map, not one "
            f"layer's (A, G) to channel contributions; use {fix}"
        )
    spatial_axes(A)
    if weights is not None:
        if weights.shape != (A.shape[0], A.shape[-1]):
            raise ValueError(
                f"weights must have shape (B, K) = {(A.shape[0], A.shape[-1])}; got {weights.shape}"
            )
        return per_channel(weights, A)
    if spec.fn is None:
        raise ValueError(
            f"{spec.name} needs forward passes through the model, which cam() cannot run: "
            "use ifa_jax.explain, or compute its weights (B, K) with "
            "ifa_jax.explaining.forward_weights (or cams.scorecam_weights / "
            "cams.ablation_weights) and pass weights=..."
        )
    if "gradients" in spec.needs:
        if G is None:
            raise ValueError(f"{spec.name} needs the gradients G; got G=None")
        if G.shape != A.shape:
            raise ValueError(
                f"gradients have shape {G.shape} but activations {A.shape}; they must match"
            )
    require_key(spec, key)
    return spec.fn(CamInputs(A, G, key), **opts)


def map_result(L: Array) -> CamResult:
    """A map without channels, L (B, *grid), as a CamResult with K = 1 (methods of kind
    ``"layers"`` and ``"input"``): contributions L[..., None], importance (B, 1)."""
    return reduce(L[..., None])


def cam_layers(
    A: Mapping[str, Array],
    G: Mapping[str, Array] | None = None,
    method: str | Method = "refinecam",
    *,
    key: Array | None = None,
    **options: Any,
) -> CamResult:
    """One map from several layers, for a method of kind ``"layers"`` (RefineCAM, LeGrad).

    A, G: ``{layer: (B, *spatial_l, K_l)}``, what a probe of several layers returns (G may
    be None for methods that do not need it). ``key`` and ``options`` as in :func:`cam`.
    Returns :func:`map_result` of the method's map L (B, *grid), on the grid the method
    chooses (see its entry's summary).

    Args:
        A: activations ``{layer: (B, *spatial_l, K_l)}``.
        G: gradients of the same layers and shapes, or None for methods that do not need
            them.
        method: a registered method of kind ``"layers"``.
        key: a PRNG key, for methods that need one.
        **options: the method's keyword options.

    Returns:
        A :class:`~ifa_jax.cams.method.CamResult` of one map without channels: its CAM
        (B, *grid) and contributions (B, *grid, 1).

    Raises:
        ValueError: a method of another kind, A or G not dicts, no layer, G's layers or
            shapes differing from A's, a missing key, or an unknown option.
    """
    spec = get_method(method)
    if not isinstance(spec, LayersMethod):
        raise ValueError(
            f"cam_layers takes a method of kind 'layers' ({', '.join(LAYERS_METHODS)}); "
            f"{spec.name} is of kind {spec.kind!r}: use cams_per_layer for one map per layer"
        )
    for name, given in (("A", A), ("G", G)):
        if given is not None and not isinstance(given, Mapping):
            raise ValueError(
                f"cam_layers takes {name} as a dict {{layer: array}} (what a probe of several "
                f"layers returns); got {type(given).__name__}"
            )
    if not A:
        raise ValueError(f"{spec.name} needs at least one layer; got no activations")
    if "gradients" in spec.needs:
        if G is None or set(G) != set(A):
            raise ValueError(
                f"{spec.name} needs the gradients of every layer: G's layers "
                f"{None if G is None else sorted(G)} differ from A's {sorted(A)}"
            )
        for layer in A:
            if G[layer].shape != A[layer].shape:
                raise ValueError(
                    f"layer {layer!r}: gradients {G[layer].shape} and activations "
                    f"{A[layer].shape} must have the same shape"
                )
    for a in A.values():
        spatial_axes(a)
    require_key(spec, key)
    opts = method_options(spec, options)
    inputs = {layer: CamInputs(a, None if G is None else G[layer], key) for layer, a in A.items()}
    return map_result(spec.fn(inputs, **opts))


def _check_mask(mask: Array, batch: int, channels: int) -> Array:
    mask = jnp.asarray(mask)
    if mask.shape not in ((channels,), (batch, channels)):
        raise ValueError(
            f"channel mask has shape {mask.shape}; it must be ({channels},) for the layer's "
            f"{channels} channels, or ({batch}, {channels}) for one mask per sample"
        )
    return jnp.broadcast_to(mask, (batch, channels)).astype(jnp.result_type(float))


def reduce(M: Array, mask: Array | None = None) -> CamResult:
    """From contributions M (B, *spatial, K) to the raw CAM, importances and max/min.

    Args:
        M: contributions (B, *spatial, K).
        mask: channel weights (K,) or (B, K) (1 keeps a channel, 0 drops it), or None.

    Returns:
        A :class:`~ifa_jax.cams.method.CamResult`: M (unmasked), the CAM L (B, *spatial),
        importances s (B, K) and L's max and min (B,).

    Raises:
        ValueError: a mask of another shape than (K,) or (B, K).
    """
    axes = spatial_axes(M)
    masked = M if mask is None else per_channel(_check_mask(mask, M.shape[0], M.shape[-1]), M)
    L = jnp.sum(masked, axis=-1)
    s = jnp.sum(masked, axis=axes)
    flat = L.reshape(L.shape[0], -1)
    return CamResult(M, L, s, jnp.max(flat, axis=1), jnp.min(flat, axis=1))


def reduce_weighted(A: Array, W: Array) -> tuple[CamResult, ...]:
    """:func:`reduce` of the contributions ``M_m = W[:, m] * A`` of several channel
    weightings of one A at once: the maps of all from one contraction over K (one pass
    over A). Equal to ``reduce(per_channel(W[:, m], A))`` up to float rounding (the
    importances exactly).

    Args:
        A: activations (B, *spatial, K).
        W: weights (B, M, K), one (B, K) per weighting.

    Returns:
        M :class:`~ifa_jax.cams.method.CamResult` (the contributions are built only where
        used).

    Raises:
        ValueError: W of another shape than (B, M, K).
    """
    axes = spatial_axes(A)
    B, K = A.shape[0], A.shape[-1]
    if W.ndim != 3 or (W.shape[0], W.shape[2]) != (B, K):
        raise ValueError(f"weights must have shape (B, M, K) = ({B}, M, {K}); got {W.shape}")
    flat = A.reshape(B, -1, K)
    # HIGHEST: a GPU would otherwise round the float32 operands to TF32 (10-bit mantissa).
    L = jnp.einsum("bpk,bmk->bmp", flat, W, precision=jax.lax.Precision.HIGHEST)
    lo, hi = jnp.min(L, axis=-1), jnp.max(L, axis=-1)
    out = []
    for m in range(W.shape[1]):
        M = per_channel(W[:, m], A)
        # s as reduce() sums it: the same numbers as cam(), and the same expression, so
        # XLA merges the statistics of methods that are equal (GradCAM and HiResCAM where
        # G is constant over the grid, as before a global average pooling).
        s = jnp.sum(M, axis=axes)
        out.append(CamResult(M, L[:, m].reshape(A.shape[:-1]), s, hi[:, m], lo[:, m]))
    return tuple(out)


def cam(
    A: Array,
    G: Array | None = None,
    method: str | Method = "gradcam",
    mask: Array | None = None,
    *,
    weights: Array | None = None,
    key: Array | None = None,
    **options: Any,
) -> CamResult:
    """Contributions, raw CAM, importances and max/min for one method.

    ``weights``, ``key`` and the method's ``options`` (e.g. ``eps=``) as in
    :func:`contributions`. See the module doc.

    Args:
        A: activations (B, *spatial, K), 1-3 spatial axes.
        G: gradients of the same shape, or None for methods that do not need them.
        method: a registered method of kind ``"layer"``: a name, an alias or its entry.
        mask: channel weights (K,) or (B, K), or None, as in :func:`reduce`.
        weights: per-channel weights (B, K), or None, as in :func:`contributions`.
        key: a PRNG key, for methods that need one.
        **options: the method's keyword options.

    Returns:
        A :class:`~ifa_jax.cams.method.CamResult`: contributions (B, *spatial, K), the CAM
        (B, *spatial), importances (B, K), max and min (B,).

    Raises:
        ValueError: as :func:`contributions` and :func:`reduce` do.
    """
    return reduce(contributions(A, G, method, weights=weights, key=key, **options), mask)


def upsample(
    L: Array | np.ndarray, spatial_shape: tuple[int, ...], method: str = "linear"
) -> Array:
    """Resize CAMs (B, *spatial) to the input grid (B, *spatial_shape), each size >= 1.

    Args:
        L: CAMs (B, *spatial).
        spatial_shape: the target sizes, one per spatial axis.
        method: the interpolation of ``jax.image.resize`` (``"linear"``, ``"nearest"``,
            ``"cubic"``, ...).

    Returns:
        The resized CAMs (B, *spatial_shape).

    Raises:
        ValueError: ``spatial_shape`` is not a tuple of positive sizes, one per spatial axis.
    """
    try:
        spatial_shape = tuple(spatial_shape)
    except TypeError:
        raise ValueError(
            f"spatial_shape must be a tuple of sizes, one per spatial axis (e.g. (28, 28)); "
            f"got {spatial_shape!r}"
        ) from None
    for n in spatial_shape:
        positive_int(f"every size of spatial_shape {spatial_shape}", n, "cells")
    if len(spatial_shape) != L.ndim - 1:
        raise ValueError(
            f"spatial_shape {tuple(spatial_shape)} has {len(spatial_shape)} axes "
            f"but the CAMs {L.shape} have {L.ndim - 1}"
        )
    return jax.image.resize(L, (L.shape[0], *spatial_shape), method=method)


def cams_per_layer(
    A: Mapping[str, Array],
    G: Mapping[str, Array] | None = None,
    method: str | Method = "gradcam",
    mask: Mapping[str, Array] | None = None,
    *,
    weights: Mapping[str, Array] | None = None,
    key: Array | None = None,
    **options: Any,
) -> dict[str, CamResult]:
    """:func:`cam` for every layer of a multi-layer probe: ``{layer: CamResult}``.

    A, G: the dicts ``{layer: (B, *spatial_l, K_l)}`` a probe built for several layers
    returns. ``mask`` and ``weights`` are dicts too (layers differ in K): ``{layer: (K_l,)
    or (B, K_l)}`` and ``{layer: (B, K_l)}``; a layer missing from them gets None. ``key``
    and ``options`` are passed to every layer. Combine the maps with :func:`fuse`.

    Args:
        A: activations ``{layer: (B, *spatial_l, K_l)}``.
        G: gradients of the same layers, or None for methods that do not need them.
        method: a registered method of kind ``"layer"``.
        mask: ``{layer: (K_l,) or (B, K_l)}``, or None.
        weights: ``{layer: (B, K_l)}``, or None.
        key: a PRNG key, for methods that need one.
        **options: the method's keyword options.

    Returns:
        ``{layer: CamResult}``, each CAM (B, *spatial_l) on its layer's grid.

    Raises:
        ValueError: A, G, mask or weights not dicts, G's layers differing from A's, or as
            :func:`cam` raises for a layer.
    """
    for name, given in (("A", A), ("G", G), ("mask", mask), ("weights", weights)):
        if given is not None and not isinstance(given, Mapping):
            raise ValueError(
                f"cams_per_layer takes {name} as a dict {{layer: array}} (what a probe of "
                f"several layers returns); got {type(given).__name__}. For one layer use cam()"
            )
    if G is not None and set(G) != set(A):
        raise ValueError(
            f"G's layers {sorted(G)} differ from A's {sorted(A)}; pass both from one probe call"
        )
    return {
        layer: cam(
            A[layer],
            None if G is None else G[layer],
            method,
            None if mask is None else mask.get(layer),
            weights=None if weights is None else weights.get(layer),
            key=key,
            **options,
        )
        for layer in A
    }


def fuse(
    cams: Mapping[str, Array | CamResult] | Sequence[Array | CamResult] | CamResult,
    shape: Sequence[int],
    *,
    how: str = "mean",
    scale: Any = None,
) -> Array:
    """Several layers' CAMs combined on one grid: (B, *shape).

    cams: ``{layer: L (B, *spatial_l)}`` (e.g. ``{k: r.cam for k, r in
    cams_per_layer(A, G).items()}``) or a sequence of such maps; a CamResult (e.g.
    ``cams_per_layer``'s dict as it is) stands for its map. Each is put on its
    common scale when ``scale`` is given (an :class:`ifa_jax.scale.Scale` for all, or a
    dict ``{layer: Scale}``; applied as :func:`ifa_jax.scale.apply_scale`, unclipped, on the
    layer's own grid, where the scale was measured), then upsampled to ``shape``
    (:func:`upsample`, linear), then combined per cell: ``how`` = "mean" (as the peers
    do), "max" or "sum". Without a scale the raw maps are combined as they are.

    Args:
        cams: the layers' CAMs: a dict ``{layer: L or CamResult}``, a sequence of them, or
            one CamResult.
        shape: the common grid's spatial sizes (e.g. the input's).
        how: ``"mean"``, ``"max"`` or ``"sum"``.
        scale: a :class:`~ifa_jax.scale.Scale`, a dict ``{layer: Scale}``, or None.

    Returns:
        The fused maps (B, *shape).

    Raises:
        ValueError: an unknown ``how``, no CAM, CAMs of different batch sizes, or a dict of
            scales that misses a layer (or comes with a list of CAMs).
    """
    combine = {"mean": jnp.mean, "max": jnp.max, "sum": jnp.sum}
    if how not in combine:
        raise ValueError(f"how={how!r} is not one of {tuple(combine)}")
    if isinstance(cams, CamResult):
        cams = [cams]
    if isinstance(cams, Mapping):
        items = list(cams.items())
    elif isinstance(cams, (list, tuple)):
        items = list(enumerate(cams))
    else:
        raise ValueError(
            f"fuse takes a dict {{layer: CAM (B, *spatial)}} or a list of CAMs; got "
            f"{type(cams).__name__}. For one CAM use ifa_jax.cams.upsample"
        )
    if not items:
        raise ValueError("fuse needs at least one CAM; got none")
    # A CamResult (what cams_per_layer gives) stands for its map.
    items = [(name, L.cam if isinstance(L, CamResult) else L) for name, L in items]
    batches = {name: jnp.shape(L)[0] if jnp.ndim(L) else None for name, L in items}
    if len(set(batches.values())) != 1:
        raise ValueError(f"the CAMs must share their batch size (B, *spatial); got {batches}")
    if isinstance(scale, Mapping):
        if not isinstance(cams, Mapping):
            raise ValueError("a dict of scales needs the CAMs as a dict keyed by the same layers")
        missing = [name for name, _ in items if name not in scale]
        if missing:
            raise ValueError(f"scale has no entry for layer(s) {missing}; give one Scale per layer")
        scales = [scale[name] for name, _ in items]
    else:
        scales = [scale] * len(items)
    maps = []
    for (name, L), s in zip(items, scales):
        L = jnp.asarray(L)
        if s is not None:
            # ifa_jax.scale.apply_scale's map (cams sits below scale in the layer order).
            if getattr(s, "mode", None) not in ("norm", "tanh"):
                raise ValueError(
                    f"scale for layer {name!r} must be an ifa_jax.scale.Scale (mode 'norm' or "
                    f"'tanh'); got {s!r}"
                )
            L = jax.nn.relu(L) if s.remove_negative else L
            L = (L - s.vmin) / (s.vmax - s.vmin) if s.mode == "norm" else jnp.tanh(s.a * L + s.b)
        maps.append(upsample(L, tuple(shape)))
    return combine[how](jnp.stack(maps), axis=0)

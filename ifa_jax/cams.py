"""The CAM family as pure, rank-agnostic functions of activations A and gradients G.

Every method is a per-channel contribution map ``M_k = w_k * A_k`` (docs/method.md
section 1) where ``w_k`` is a scalar per sample and channel, or a map on the grid. From M:

* the raw CAM ``L = sum_k m_k M_k`` (no ReLU: removing negatives belongs to the scale),
* the per-sample channel importances ``s_k = sum over the grid of m_k M_k`` (signed),
* ``max(L)`` and ``min(L)`` on the feature grid.

Shapes: A, G: (B, *spatial, K) with 1-3 spatial axes; masks m: (K,) or (B, K).
All functions jit, vmap and differentiate (``jax.grad`` through a CAM works).
ScoreCAM and AblationCAM need forward passes: their weights come from
:func:`scorecam_weights` and :func:`ablation_weights`, batched over channels with
``jax.lax.map(..., batch_size=chunk)`` so memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ifa_jax._stats import minmax_per_image

Array = jax.Array

GRADIENT_METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigengradcam")
METHODS = GRADIENT_METHODS + ("eigencam", "scorecam", "ablationcam")
FORWARD_METHODS = ("scorecam", "ablationcam")
ALIASES = {
    "fullcam": "hirescam",
    "gradcampp": "gradcam++",
    "gradcamplusplus": "gradcam++",
    "score": "scorecam",
    "ablation": "ablationcam",
}
EPS = 1e-7


class CamResult(NamedTuple):
    """contributions M: (B, *spatial, K); cam L: (B, *spatial); importance s: (B, K);
    max, min: (B,) of L over the grid. M is unmasked; L and s use the mask."""

    contributions: Array
    cam: Array
    importance: Array
    max: Array
    min: Array


def canonical_method(method: str) -> str:
    """Lower-case name with aliases resolved; unknown names list the known ones."""
    key = method.lower().replace("-", "").replace("_", "")
    key = ALIASES.get(key, key)
    if key not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; known methods: {', '.join(METHODS)}")
    return key


def spatial_axes(a: Array) -> tuple[int, ...]:
    """The grid axes of (B, *spatial, K): all but the first and the last."""
    if not 3 <= a.ndim <= 5:
        raise ValueError(
            f"activations must have shape (B, *spatial, K) with 1-3 spatial axes; got {a.shape}"
        )
    return tuple(range(1, a.ndim - 1))


def _grid_sum(a: Array) -> Array:
    """(B, *spatial, K) -> (B, 1.., K): sums over the grid, keeping dims for broadcasting."""
    return jnp.sum(a, axis=spatial_axes(a), keepdims=True)


def _first_component(a: Array) -> Array:
    """Per sample, the first right singular vector v (B, K) of a reshaped (B, P, K).

    Its sign is fixed so that sum_p (a v)_p >= 0: the CAM points where a is large.
    """
    flat = a.reshape(a.shape[0], -1, a.shape[-1])
    _, _, vt = jnp.linalg.svd(flat, full_matrices=False)
    v = vt[:, 0, :]
    sign = jnp.sign(jnp.einsum("bpk,bk->b", flat, v))
    return v * jnp.where(sign == 0, 1.0, sign)[:, None]


def contributions(
    A: Array, G: Array | None = None, method: str = "gradcam", *, weights: Array | None = None
) -> Array:
    """Per-channel contribution maps M (B, *spatial, K) of one CAM method.

    ``weights`` (B, K) are required for the forward methods (scorecam, ablationcam) and
    override the method's own weights when given for any method.
    """
    method = canonical_method(method)
    axes = spatial_axes(A)
    expand = (slice(None),) + (None,) * len(axes) + (slice(None),)
    if weights is not None:
        if weights.shape != (A.shape[0], A.shape[-1]):
            raise ValueError(
                f"weights must have shape (B, K) = {(A.shape[0], A.shape[-1])}; got {weights.shape}"
            )
        return weights[expand] * A
    if method in FORWARD_METHODS:
        raise ValueError(
            f"{method} needs forward passes: compute weights with "
            f"{'scorecam_weights' if method == 'scorecam' else 'ablation_weights'}(...) and "
            "pass weights=..., or use ifa_jax.explain which does both"
        )
    if method == "eigencam":
        return _first_component(A)[expand] * A
    if G is None:
        raise ValueError(f"{method} needs the gradients G; got G=None")
    if G.shape != A.shape:
        raise ValueError(
            f"gradients have shape {G.shape} but activations {A.shape}; they must match"
        )
    if method == "gradcam":
        w = jnp.mean(G, axis=axes, keepdims=True)
    elif method == "gradcam++":
        g2 = G * G
        denom = 2.0 * g2 + _grid_sum(A) * g2 * G
        alpha = jnp.where(G != 0, g2 / (denom + EPS), 0.0)
        w = jnp.sum(jax.nn.relu(G) * alpha, axis=axes, keepdims=True)
    elif method == "xgradcam":
        w = _grid_sum(G * A) / (_grid_sum(A) + EPS)
    elif method == "hirescam":
        w = G
    elif method == "layercam":
        w = jax.nn.relu(G)
    else:  # eigengradcam: the first component of G*A, applied to G*A
        ga = G * A
        return _first_component(ga)[expand] * ga
    return w * A


def _check_mask(mask: Array, batch: int, channels: int) -> Array:
    mask = jnp.asarray(mask)
    if mask.shape not in ((channels,), (batch, channels)):
        raise ValueError(
            f"channel mask has shape {mask.shape}; it must be ({channels},) for the layer's "
            f"{channels} channels, or ({batch}, {channels}) for one mask per sample"
        )
    return jnp.broadcast_to(mask, (batch, channels)).astype(jnp.result_type(float))


def reduce(M: Array, mask: Array | None = None) -> CamResult:
    """From contributions M (B, *spatial, K) to the raw CAM, importances and max/min."""
    axes = spatial_axes(M)
    if mask is None:
        masked = M
    else:
        m = _check_mask(mask, M.shape[0], M.shape[-1])
        masked = M * m[(slice(None),) + (None,) * len(axes) + (slice(None),)]
    L = jnp.sum(masked, axis=-1)
    s = jnp.sum(masked, axis=axes)
    flat = L.reshape(L.shape[0], -1)
    return CamResult(M, L, s, jnp.max(flat, axis=1), jnp.min(flat, axis=1))


def cam(
    A: Array,
    G: Array | None = None,
    method: str = "gradcam",
    mask: Array | None = None,
    *,
    weights: Array | None = None,
) -> CamResult:
    """Contributions, raw CAM, importances and max/min for one method. See the module doc."""
    return reduce(contributions(A, G, method, weights=weights), mask)


def upsample(
    L: Array | np.ndarray, spatial_shape: tuple[int, ...], method: str = "linear"
) -> Array:
    """Resize CAMs (B, *spatial) to the input grid (B, *spatial_shape)."""
    if len(spatial_shape) != L.ndim - 1:
        raise ValueError(
            f"spatial_shape {tuple(spatial_shape)} has {len(spatial_shape)} axes "
            f"but the CAMs {L.shape} have {L.ndim - 1}"
        )
    return jax.image.resize(L, (L.shape[0], *spatial_shape), method=method)


def scorecam_weights(
    A: Array,
    x: Array,
    score_fn: Callable[[Array, Array], Array],
    target: Array,
    *,
    chunk_size: int = 16,
) -> Array:
    """ScoreCAM weights (B, K): softmax over channels of the target score of masked inputs.

    Each channel A_k is upsampled to the input grid, min-max scaled to [0, 1] per sample
    and multiplies the input. ``score_fn(x (N, *in, C), target (N,)) -> (N,)`` scores
    masked inputs; ``target`` (B,) is each sample's explained output. ``chunk_size``
    channels go through the model together, flattened into one batch of chunk_size * B
    inputs (flattening, not vmapping, keeps the model's ops in their fast batched form).
    As in pytorch-grad-cam, weights are the softmax of the scores over channels.
    """
    if A.shape[0] != x.shape[0]:
        raise ValueError(f"activations have batch {A.shape[0]} but inputs {x.shape[0]}")
    B, K = A.shape[0], A.shape[-1]
    chunk = max(1, min(chunk_size, K))
    groups = -(-K // chunk)
    per_channel = jnp.moveaxis(A, -1, 0)  # (K, B, *spatial)
    per_channel = jnp.pad(per_channel, [(0, groups * chunk - K)] + [(0, 0)] * (A.ndim - 1))
    per_group = per_channel.reshape(groups, chunk, *per_channel.shape[1:])
    tiled_target = jnp.tile(target, chunk)

    def one_group(a):  # a: (chunk, B, *spatial)
        up = jax.image.resize(a, (chunk, B, *x.shape[1:-1]), method="linear")
        # exact min-max (eps=0) of each upsampled channel, per sample
        up = minmax_per_image(up.reshape(chunk * B, *up.shape[2:]), eps=0.0).reshape(up.shape)
        masked = x[None] * up[..., None]  # (chunk, B, *in, C)
        scores = score_fn(masked.reshape(chunk * B, *x.shape[1:]), tiled_target)
        return scores.reshape(chunk, B)

    scores = jax.lax.map(one_group, per_group).reshape(groups * chunk, B)[:K]  # (K, B)
    return jax.nn.softmax(scores.T, axis=-1)


def ablation_weights(
    A: Array, ablated_score_fn: Callable[[Array], Array], base_score: Array, *, chunk_size: int = 16
) -> Array:
    """AblationCAM weights (B, K): the drop of the target score when channel k is zeroed.

    ``ablated_score_fn(delta (B, *spatial, K)) -> (B,)`` runs the model with ``delta``
    added to the layer's output; the ablation of channel k is ``delta = -A * e_k``.
    w_k = y - y^(k), in the score's own units (pytorch-grad-cam divides by y, which is
    ill-posed for logits near zero and would undo the common scale; we do not).
    """
    channels = A.shape[-1]

    def one_channel(k):
        return base_score - ablated_score_fn(-A * jax.nn.one_hot(k, channels, dtype=A.dtype))

    return jax.lax.map(one_channel, jnp.arange(channels), batch_size=chunk_size).T

"""One call from a probe to a CAM: probe the layer, then apply any CAM method.

Gradient methods reuse the probe's A and G; ScoreCAM and AblationCAM add their batched
forward passes (see :mod:`ifa_jax.cams`). Everything after the probe runs under ``jit``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ifa_jax import cams
from ifa_jax.probe import LayerProbe, ProbeResult, Target, target_scores

Array = jax.Array


def _pick(tree, layer: str | None, probe: LayerProbe):
    if not isinstance(tree, dict):
        return tree
    if layer is None:
        raise ValueError(f"this probe taps several layers {probe.layers}; pass layer=...")
    if layer not in tree:
        raise ValueError(f"layer {layer!r} is not tapped by this probe; tapped: {probe.layers}")
    return tree[layer]


def _scorer(probe, variables, target_idx, target_fn, score):
    """logits -> target score (B,) with the same target the probe explained."""
    def f(logits):
        return target_fn(logits) if target_fn is not None else target_scores(logits, target_idx,
                                                                             score)
    return f


@functools.partial(jax.jit, static_argnames=("probe", "layer", "target_fn", "score",
                                             "chunk_size"))
def _scorecam(probe, variables, x, A, target_idx, *, layer, target_fn, score, chunk_size):
    to_score = _scorer(probe, variables, target_idx, target_fn, score)
    return cams.scorecam_weights(A, x, lambda xm: to_score(probe.forward(variables, xm)),
                                 chunk_size=chunk_size)


@functools.partial(jax.jit, static_argnames=("probe", "layer", "target_fn", "score",
                                             "chunk_size"))
def _ablation(probe, variables, x, A, target_idx, base, *, layer, target_fn, score, chunk_size):
    to_score = _scorer(probe, variables, target_idx, target_fn, score)

    def ablated(delta):
        return to_score(probe.forward_with(variables, x, {layer: delta}))

    return cams.ablation_weights(A, ablated, base, chunk_size=chunk_size)


_cam = jax.jit(cams.cam, static_argnames=("method",))


def explain(probe: LayerProbe, variables, x: Array, target: Target = "predicted",
            method: str = "gradcam", *, mask: Array | None = None, score: str = "logit",
            layer: str | None = None, chunk_size: int = 16) -> tuple[ProbeResult, cams.CamResult]:
    """Probe ``x`` and compute one CAM method. Returns (probe result, CAM result).

    x: (B, *spatial_in, C). The CAM result's ``cam`` is on the layer's grid; use
    :func:`ifa_jax.cams.upsample` for the input grid. ``mask`` (K,) or (B, K) keeps a
    subset of channels. ``layer`` picks one layer of a multi-layer probe.
    """
    method = cams.canonical_method(method)
    result = probe(variables, x, target, score=score)
    A = _pick(result.activations, layer, probe)
    G = _pick(result.gradients, layer, probe)
    layer = layer or probe.layers[0]
    target_fn = target if callable(target) and not isinstance(target, (str, jnp.ndarray)) else None
    weights = None
    if method == "scorecam":
        weights = _scorecam(probe, variables, jnp.asarray(x), A, result.target, layer=layer,
                            target_fn=target_fn, score=score, chunk_size=chunk_size)
    elif method == "ablationcam":
        weights = _ablation(probe, variables, jnp.asarray(x), A, result.target, result.score,
                            layer=layer, target_fn=target_fn, score=score, chunk_size=chunk_size)
    return result, _cam(A, G, method, mask, weights=weights)

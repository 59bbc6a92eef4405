"""One call from a probe to a CAM: probe the layer, then apply any CAM method.

:func:`explain` (exported as ``ifa_jax.explain``) probes ``x`` and computes one CAM.
Gradient methods reuse the probe's A and G; ScoreCAM and AblationCAM add their batched
forward passes (:func:`forward_weights`, also used by :mod:`ifa_jax.analysis`; see
:mod:`ifa_jax.cams`). Everything after the probe runs under ``jit``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ifa_jax import cams
from ifa_jax._checks import pick_layer
from ifa_jax.probe import LayerProbe, ProbeResult, Target, target_scores

Array = jax.Array


def _scorer(target_fn, score):
    """(logits (N, O), target (N,)) -> score (N,): the objective the probe explained."""

    def f(logits, target):
        if target_fn is not None:
            return target_fn(logits)
        return target_scores(logits, target, score)

    return f


def forward_weights(
    probe: LayerProbe,
    variables,
    x: Array,
    A: Array,
    result: ProbeResult,
    method: str,
    *,
    layer: str,
    target_fn=None,
    score: str = "logit",
    chunk_size: int = 16,
) -> Array | None:
    """ScoreCAM / AblationCAM weights (B, K) from batched forward passes; None for others.

    Traceable: call it under ``jit`` with ``probe``, ``method``, ``layer``, ``target_fn``,
    ``score`` and ``chunk_size`` static.
    """
    to_score = _scorer(target_fn, score)
    if method == "scorecam":
        return cams.scorecam_weights(
            A,
            x,
            lambda xm, t: to_score(probe.forward(variables, xm), t),
            result.target,
            chunk_size=chunk_size,
        )
    if method == "ablationcam":

        def ablated(delta):
            return to_score(probe.forward_with(variables, x, {layer: delta}), result.target)

        return cams.ablation_weights(A, ablated, result.score, chunk_size=chunk_size)
    return None


_forward_weights = jax.jit(
    forward_weights,
    static_argnames=("probe", "method", "layer", "target_fn", "score", "chunk_size"),
)
_cam = jax.jit(cams.cam, static_argnames=("method",))


def callable_target(target: Target):
    """The target itself when it is a callable objective, else None."""
    return target if callable(target) and not isinstance(target, (str, jax.Array)) else None


def explain(
    probe: LayerProbe,
    variables,
    x: Array,
    target: Target = "predicted",
    method: str = "gradcam",
    *,
    mask: Array | None = None,
    score: str = "logit",
    layer: str | None = None,
    chunk_size: int = 16,
) -> tuple[ProbeResult, cams.CamResult]:
    """Probe ``x`` and compute one CAM method. Returns (probe result, CAM result).

    x: (B, *spatial_in, C). The CAM result's ``cam`` is on the layer's grid; use
    :func:`ifa_jax.cams.upsample` for the input grid. ``mask`` (K,) or (B, K) keeps a
    subset of channels. ``layer`` picks one layer of a multi-layer probe (it must be one
    of ``probe.layers``; None for a one-layer probe).
    """
    method = cams.canonical_method(method)
    layer = pick_layer(probe.layers, layer)
    result = probe(variables, x, target, score=score)
    A, G = result.activations, result.gradients
    if isinstance(A, dict):
        A, G = A[layer], G[layer]
    weights = None
    if method in cams.FORWARD_METHODS:
        weights = _forward_weights(
            probe,
            variables,
            jnp.asarray(x),
            A,
            result,
            method,
            layer=layer,
            target_fn=callable_target(target),
            score=score,
            chunk_size=chunk_size,
        )
    return result, _cam(A, G, method, mask, weights=weights)

"""One call from a probe to a CAM: probe the layer, then apply any CAM method.

:func:`explain` (exported as ``ifa_jax.explain``) probes ``x`` and computes one CAM.
Gradient methods reuse the probe's A and G; methods that need the model (ScoreCAM,
AblationCAM, ShapleyCAM, FinerCAM, ...) add their batched model runs (:func:`forward_weights`,
also used by :mod:`ifa_jax.analysis`), dispatched through the method table
:data:`ifa_jax.cams.REGISTRY`. Everything after the probe runs under ``jit``.

Examples:
    A local method and a method that runs the model once per channel (ScoreCAM):

    >>> import jax
    >>> import flax.linen as nn
    >>> import ifa_jax
    >>> class Net(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         a = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
    ...         return nn.Dense(3, name="head")(a.mean(axis=(1, 2)))
    >>> net = Net()
    >>> x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1))
    >>> variables = net.init(jax.random.key(1), x)
    >>> probe = ifa_jax.linen_probe(net, "conv")
    >>> _, grad = ifa_jax.explain(probe, variables, x, "predicted", "layercam")
    >>> _, score = ifa_jax.explain(probe, variables, x, 1, "scorecam")
    >>> grad.cam.shape, score.importance.shape
    ((2, 8, 8), (2, 4))
    >>> bool((grad.cam >= 0).all())                          # LayerCAM rectifies its weights
    True
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ifa_jax import cams
from ifa_jax._checks import pick_layer, positive_int, prng_key, warn_integer_inputs
from ifa_jax._options import split_options
from ifa_jax.probes import LayerProbe, ProbeResult, Target, target_scores

Array = jax.Array


class Explanation(NamedTuple):
    """What every explaining entry point returns (:func:`explain`, ``explain_smoothed``,
    ``sess``, ``fullgrad``, ...): probe_result: the probe's :class:`ProbeResult` of x
    (activations, gradients, logits, target, score); cam_result: the method's
    :class:`ifa_jax.cams.CamResult` (``cam_result.cam`` the map L). A tuple, so
    ``probe_result, cam_result = explain(...)`` unpacks it."""

    probe_result: ProbeResult
    cam_result: cams.CamResult


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
    method: str | cams.Method,
    *,
    layer: str,
    target_fn=None,
    score: str = "logit",
    chunk_size: int = 16,
    options: Mapping[str, Any] | tuple = (),
    array_options: Mapping[str, Any] | None = None,
    key: Array | None = None,
) -> Array | None:
    """Weights (B, K) of a method that needs the model (``cams.FORWARD_METHODS``:
    ScoreCAM, AblationCAM, ShapleyCAM, ...); None for other methods.

    The method's ``forward`` function in :data:`ifa_jax.cams.REGISTRY` gets the model runs
    as a :class:`ifa_jax.cams.ForwardPasses`, and ``options`` (a mapping or (name, value)
    pairs) and ``array_options`` (array-valued options, e.g. the classic CAM's ``head``)
    over its defaults. ``key``: the PRNG key of methods that need one (a ValueError names
    the fix when it is missing). Traceable: call it under ``jit`` with ``probe``,
    ``method``, ``layer``, ``target_fn``, ``score``, ``chunk_size`` and ``options`` static.
    """
    spec = cams.get_method(method)
    if spec.forward is None:
        return None
    cams.require_key(spec, key)
    opts = cams.method_options(spec, {**dict(options), **dict(array_options or {})})
    to_score = _scorer(target_fn, score)

    def logits_at(inputs, delta):
        if delta is None:
            return probe.forward(variables, inputs)
        return probe.forward_with(variables, inputs, {layer: delta})

    def score_with_delta(delta):
        return to_score(logits_at(x, delta), result.target)

    G = result.gradients[layer] if isinstance(result.gradients, dict) else result.gradients
    passes = cams.ForwardPasses(
        x=x,
        target=result.target,
        base_score=result.score,
        score_inputs=lambda xm, t: to_score(probe.forward(variables, xm), t),
        score_with_delta=score_with_delta,
        chunk_size=chunk_size,
        logits=result.logits,
        gradients=G,
        logits_at=logits_at,
        score=to_score,
        indexed=target_fn is None,
        variables=variables,
        key=key,
    )
    return spec.forward(A, passes, **opts)


_forward_weights = jax.jit(
    forward_weights,
    static_argnames=("probe", "method", "layer", "target_fn", "score", "chunk_size", "options"),
)


def input_map(
    probe: LayerProbe,
    variables,
    x: Array,
    result: ProbeResult,
    method: str | cams.Method,
    *,
    layer: str | None,
    target_fn=None,
    score: str = "logit",
    options: Mapping[str, Any] | tuple = (),
    array_options: Mapping[str, Any] | None = None,
    key: Array | None = None,
) -> Array:
    """The map L (B, *spatial_in) of a method of kind ``"input"`` (FullGrad, SESS), from
    its entry's ``fn`` and a :class:`ifa_jax.cams.ModelInputs`. Traceable; jitted by
    :func:`explain` with everything but the arrays static."""
    spec = cams.get_method(method)
    cams.require_key(spec, key)
    opts = cams.method_options(spec, {**dict(options), **dict(array_options or {})})
    model = cams.ModelInputs(
        probe=probe,
        variables=variables,
        x=x,
        target=result.target,
        score=_scorer(target_fn, score),
        indexed=target_fn is None,
        logits=result.logits,
        key=key,
        layer=layer,
    )
    assert spec.fn is not None
    return spec.fn(model, **opts)


_input_map = jax.jit(
    input_map, static_argnames=("probe", "method", "layer", "target_fn", "score", "options")
)


# Keyed on the method's entry (a Method compares by identity), not its name: a method
# replaced in the table is compiled anew.
@functools.lru_cache(maxsize=64)
def _jitted_layers(method: cams.Method, options: tuple):
    """cams.cam_layers for one method with its options fixed, jitted (cached by both)."""
    return jax.jit(functools.partial(cams.cam_layers, method=method, **dict(options)))


@functools.lru_cache(maxsize=64)
def _jitted_cam(method: cams.Method, options: tuple):
    """cams.cam for one method with its options fixed, jitted (cached by both)."""
    return jax.jit(functools.partial(cams.cam, method=method, **dict(options)))


def callable_target(target: Target):
    """The target itself when it is a callable objective, else None."""
    return target if callable(target) and not isinstance(target, (str, jax.Array)) else None


def explain(
    probe: LayerProbe,
    variables: Any,
    x: Array,
    target: Target = "predicted",
    method: str | cams.Method = "gradcam",
    *,
    mask: Array | None = None,
    score: str = "logit",
    layer: str | None = None,
    chunk_size: int = 16,
    key: Array | None = None,
    **options: Any,
) -> Explanation:
    """Probe ``x`` and compute one CAM method (a name, an alias or a registered entry).
    Returns an :class:`Explanation` (probe_result, cam_result) for every method.

    x: (B, *spatial_in, C). The CAM result's ``cam`` is on the layer's grid; use
    :func:`ifa_jax.cams.upsample` for the input grid. ``mask`` (K,) or (B, K) keeps a
    subset of channels. ``layer`` picks one layer of a multi-layer probe (it must be one
    of ``probe.layers``; None for a one-layer probe). ``key`` is the PRNG key of methods
    that need one (randomcam, sscam, smoothgradcam++). ``options`` are the method's
    keyword options over its defaults (``cams.REGISTRY[method].options``), e.g.
    ``eps=1e-6`` for gradcam++; they are compile-time constants (each new value compiles
    once), except array-valued ones (the classic CAM's ``head=W``), which are traced.

    Methods of kind ``"layers"`` (``cams.REGISTRY[method].kind``: RefineCAM, LeGrad) use
    every layer of the probe (``layer`` must be None) and methods of kind ``"input"``
    (FullGrad, SESS) the whole model; both give one map without channels: the CamResult
    of :func:`ifa_jax.cams.map_result` (K = 1; for ``"input"``, at input resolution).

    Args:
        probe: the model's :class:`~ifa_jax.probes.LayerProbe`.
        variables: the variables the probe is called with.
        x: inputs (B, *spatial_in, C).
        target: an int, an int array (B,), ``'predicted'`` or a callable
            ``logits (B, O) -> (B,)``, as for the probe.
        method: a registered method: a name, an alias or its entry.
        mask: channel weights (K,) or (B, K), or None (methods of kind ``"layer"`` only).
        score: ``'logit'`` or ``'probability'``.
        layer: the layer of a multi-layer probe, or None.
        chunk_size: channels per model call of the forward methods.
        key: a PRNG key, for methods that need one.
        **options: the method's keyword options.

    Returns:
        An :class:`Explanation` ``(probe_result, cam_result)``: the probe's result for x
        and the :class:`~ifa_jax.cams.CamResult`, its CAM (B, *spatial) on the layer's grid
        (on the input grid for kind ``"input"``).

    Raises:
        ValueError: an unknown method or option, a missing key, a mask for a method without
            channels, or a layer that is not one of ``probe.layers``.

    Warns:
        IntegerInputWarning: integer inputs of rank >= 3 (uint8 images go to the model as
            they are).
    """
    spec = cams.get_method(method)
    method = cams.canonical_method(spec)  # a name that keys the jit caches on the entry
    kind = spec.kind
    static, arrays = split_options(method, options)
    key = prng_key(key)
    cams.require_key(method, key)
    chunk_size = positive_int("chunk_size", chunk_size, "channels per model call")
    dtype = getattr(x, "dtype", None)
    if dtype is not None and getattr(x, "ndim", 0) >= 3:  # not (B, T) token ids
        warn_integer_inputs(dtype, "the inputs x", "Convert them first: x / 255 for uint8 images.")
    if kind != "layer" and mask is not None:
        raise ValueError(
            f"{method} (kind {kind!r}) gives one map without channels, so it takes no channel "
            "mask; pass mask=None"
        )
    if kind == "layers":
        if layer is not None:
            raise ValueError(
                f"{method} uses every layer of the probe ({', '.join(probe.layers)}); pass "
                f"layer=None, or build the probe for the layers you want"
            )
        result = probe(variables, x, target, score=score)
        A, G = result.activations, result.gradients
        if not isinstance(A, dict):
            A, G = {probe.layers[0]: A}, {probe.layers[0]: G}
        return Explanation(result, _jitted_layers(spec, static)(A, G, key=key, **arrays))
    if kind == "input":
        # the model's map needs no layer; a method that does (SESS) says so when it is None
        several = layer is None and len(probe.layers) > 1
        result = probe(variables, x, target, score=score)
        L = _input_map(
            probe,
            variables,
            jnp.asarray(x),
            result,
            method,
            layer=None if several else pick_layer(probe.layers, layer),
            target_fn=callable_target(target),
            score=score,
            options=static,
            array_options=arrays,
            key=key,
        )
        return Explanation(result, cams.map_result(L))
    layer = pick_layer(probe.layers, layer)
    result = probe(variables, x, target, score=score)
    A, G = result.activations, result.gradients
    if isinstance(A, dict):
        A, G = A[layer], G[layer]
    weights = None
    if spec.forward is not None:
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
            options=static,
            array_options=arrays,
            key=key,
        )
    cam_fn = _jitted_cam(spec, static)
    return Explanation(result, cam_fn(A, G, mask=mask, weights=weights, key=key, **arrays))

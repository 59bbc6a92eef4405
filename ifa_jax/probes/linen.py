"""Probes for Flax Linen models, tapped through ``nn.intercept_methods``: no edit to the
model, layers matched by name (``"conv2"``) or path (``"backbone/conv2"``).

Examples:
    The layers of a Linen model, its natural layer, and a probe of it:

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
    >>> ifa_jax.linen_layers(net, variables, x)
    {'conv': (2, 8, 8, 4), 'head': (2, 3)}
    >>> ifa_jax.probes.linen_natural_layer(net, variables, x)
    ('conv', 'the last layer with a spatial output')
    >>> probe = ifa_jax.linen_probe(net)                 # None: the natural layer
    >>> probe(variables, x, "predicted").gradients.shape
    (2, 8, 8, 4)
    >>> probe.layer
    'conv'
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax

from ifa_jax._taps import AUTO, explained_errors, layer_names, tap_output
from ifa_jax.probes.core import LayerProbe, LinenModel, Output, TappedFn, select_output
from ifa_jax.probes.layers import (
    AutoLayer,
    LayerCall,
    automatic,
    call_shapes,
    natural_layer,
    resolve_layer,
)
from ifa_jax.probes.tokens import Reshape

Array = jax.Array


def linen_calls(
    model: nn.Module, variables: Any, x: Array | jax.ShapeDtypeStruct, **apply_kwargs
) -> list[LayerCall]:
    """The submodule calls of ``model.apply`` on ``x`` (first call of each path), in the
    order they end. Runs abstractly (``jax.eval_shape``): nothing is computed."""
    calls: dict[str, LayerCall] = {}
    clock = itertools.count()

    def record(next_fun, args, kwargs, context):
        start = next(clock)
        out = next_fun(*args, **kwargs)
        path = "/".join(context.module.path)
        if context.method_name == "__call__" and path and path not in calls:
            kind = type(context.module).__name__
            calls[path] = LayerCall(path, kind, call_shapes(out), start, next(clock))
        return out

    def run(variables, x):
        with nn.intercept_methods(record):
            return model.apply(variables, x, **apply_kwargs)

    jax.eval_shape(run, variables, x)
    return sorted(calls.values(), key=lambda c: c.end)


def linen_layers(
    model: nn.Module, variables: Any, x: Array | jax.ShapeDtypeStruct, **apply_kwargs
) -> dict[str, Any]:
    """All submodule paths called by ``model.apply`` on ``x``, with their output shapes.

    Runs abstractly (``jax.eval_shape``): nothing is computed.
    """
    return {c.path: c.shape for c in linen_calls(model, variables, x, **apply_kwargs)}


def linen_natural_layer(
    model: nn.Module, variables: Any, x: Array | jax.ShapeDtypeStruct, **apply_kwargs
) -> tuple[str, str]:
    """The path of the model's natural target layer and why (see :func:`natural_layer`):
    what ``linen_probe(model, None)`` taps. Runs abstractly."""
    with explained_errors(x):
        return natural_layer(linen_calls(model, variables, x, **apply_kwargs))


def _linen_tapped(
    model: nn.Module,
    layers: tuple[str, ...],
    apply_kwargs: dict,
    output: Output,
    reshape: Reshape | None,
    auto: AutoLayer | None,
) -> TappedFn:

    def tapped(variables, x, deltas):
        with explained_errors(x):
            return _tapped(variables, x, deltas)

    def _tapped(variables, x, deltas):
        calls = linen_calls(model, variables, x, **apply_kwargs)
        available = [c.path for c in calls]
        paths = {
            auto(calls) if auto and layer == AUTO else resolve_layer(layer, available): layer
            for layer in layers
        }
        acts: dict[str, Array] = {}

        def tap(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            path = "/".join(context.module.path)
            if context.method_name != "__call__" or path not in paths:
                return out
            return tap_output(paths[path], path, out, acts, deltas, reshape is None)

        with nn.intercept_methods(tap):
            out = model.apply(variables, x, **apply_kwargs)
        return select_output(out, output), acts

    return tapped


def linen_probe(
    model: nn.Module,
    layers: str | Sequence[str] | None = None,
    *,
    output: Output = None,
    reshape: Reshape | None = None,
    **apply_kwargs: Any,
) -> LayerProbe:
    """A probe for a Linen model at one layer (arrays out) or several (dicts out).

    ``layers=None`` taps the natural target layer (:func:`~ifa_jax.probes.natural_layer`:
    the last layer with a spatial output for a CNN, the norm before the last block's
    attention for a transformer), found when the probe first runs, logged (logger
    ``"ifa_jax"``, INFO) and shown as ``probe.layer``; its key in results is ``"auto"``.
    ``reshape`` maps each tapped output to a grid (B, *spatial, K) before every method,
    e.g. ``ifa_jax.tokens_to_grid()`` for transformer tokens (:mod:`ifa_jax.probes.tokens`);
    with ``layers=None`` and no reshape, a natural layer of tokens (B, N, D) is laid on a
    square grid when it can be (:class:`~ifa_jax.probes.layers.AutoGrid`).
    ``apply_kwargs`` go to ``model.apply`` (e.g. ``train=False`` for BatchNorm models).
    ``output`` picks the logits (B, O) when the model returns a tuple or a dict: an index
    (``0``), a key (``'logits'``) or a callable ``out -> logits``.

    Args:
        model: the Linen module (unbound), as given to ``model.apply``.
        layers: a layer's path or name (a unique suffix, ``"conv2"``), several of them, or
            None for the natural target layer.
        output: where the logits (B, O) are in the model's output: None (the output is
            the logits), an index, a key or a callable ``out -> logits``.
        reshape: a map from a tapped output to a grid (B, *spatial, K), or None.
        **apply_kwargs: keyword arguments of ``model.apply``.

    Returns:
        A :class:`~ifa_jax.probes.LayerProbe`, called ``probe(variables, x, target)`` with
        ``variables`` the output of ``model.init``.

    Raises:
        ValueError: ``reshape`` is not callable; a layer is unknown or ambiguous (when the
            probe first runs, naming the model's layers).
    """
    names = layer_names(layers)
    kwargs = dict(apply_kwargs)
    auto, reshape = automatic(names, reshape)
    return LayerProbe(
        _linen_tapped(model, names, kwargs, output, reshape, auto),
        names,
        single=layers is None or isinstance(layers, str),
        reshape=reshape,
        find_layer=lambda v, x: linen_natural_layer(model, v, x, **kwargs),
        linen=LinenModel(model, kwargs, output),
        auto=auto,
    )

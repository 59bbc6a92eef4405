"""Probes for Haiku models (``hk.transform``/``hk.transform_with_state``), tapped by
module name with ``hk.intercept_methods``; ``variables`` is ``params`` (or ``(params,
state)``). Haiku is optional (``pip install 'ifa_jax[haiku]'``), imported when a probe is
built.

Examples:
    A probe of a Haiku transform at a named module:

    >>> import jax
    >>> import haiku as hk
    >>> import ifa_jax
    >>> def net(x):
    ...     a = hk.to_module(jax.nn.relu)(name="relu")(hk.Conv2D(4, 3)(x))
    ...     return hk.Linear(3)(a.mean(axis=(1, 2)))
    >>> net = hk.without_apply_rng(hk.transform(net))
    >>> x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1))
    >>> params = net.init(jax.random.key(1), x)
    >>> out = ifa_jax.haiku_probe(net, "relu")(params, x, 0)
    >>> out.activations.shape, out.logits.shape
    ((2, 8, 8, 4), (2, 3))
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import jax

from ifa_jax._checks import require
from ifa_jax._taps import AUTO, describe, explained_errors, layer_names, tap_output
from ifa_jax.probes.core import LayerProbe, Output, select_output
from ifa_jax.probes.layers import LayerCall, automatic, call_shapes, natural_layer, resolve_layer
from ifa_jax.probes.tokens import Reshape

Array = jax.Array


def _haiku(what: str):
    return require("haiku", "haiku", what)


def _haiku_apply(hk, transformed: Any, apply_kwargs: dict) -> Callable[[Any, Array], Any]:
    """apply(variables, x) -> the model's output, for any kind of hk transform."""
    if not isinstance(transformed, (hk.Transformed, hk.TransformedWithState)):
        raise ValueError(
            f"haiku_probe needs hk.transform(f) or hk.transform_with_state(f); got a "
            f"{type(transformed).__name__}"
        )
    with_state = isinstance(transformed, hk.TransformedWithState)
    try:
        takes_rng = "rng" in inspect.signature(transformed.apply).parameters
    except (TypeError, ValueError):  # no signature to read: assume (params, rng, x)
        takes_rng = True
    rng = (None,) if takes_rng else ()

    def apply(variables, x):
        if not with_state:
            return transformed.apply(variables, *rng, x, **apply_kwargs)
        if not (isinstance(variables, (tuple, list)) and len(variables) == 2):
            raise ValueError(
                "a hk.transform_with_state model takes variables=(params, state) from its "
                f"init; got {describe(variables)}"
            )
        params, state = variables
        return transformed.apply(params, state, *rng, x, **apply_kwargs)[0]

    return apply


def _haiku_path(module: Any) -> str:
    # Haiku names a module made inside another one "outer/~/inner".
    return module.module_name.replace("/~/", "/")


def haiku_calls(
    transformed: Any, variables: Any, x: Array | jax.ShapeDtypeStruct, **apply_kwargs
) -> list[LayerCall]:
    """The module calls of a Haiku transform on ``x`` (first call of each path), in the
    order they end. Runs abstractly (``jax.eval_shape``): nothing is computed."""
    hk = _haiku("haiku_calls")
    apply = _haiku_apply(hk, transformed, apply_kwargs)
    calls: dict[str, LayerCall] = {}
    clock = itertools.count()

    def record(next_fun, args, kwargs, context):
        start = next(clock)
        out = next_fun(*args, **kwargs)
        path = _haiku_path(context.module)
        if context.method_name == "__call__" and path not in calls:
            kind = type(context.module).__name__
            calls[path] = LayerCall(path, kind, call_shapes(out), start, next(clock))
        return out

    def run(variables, x):
        with hk.intercept_methods(record):
            return apply(variables, x)

    with explained_errors(x), _haiku_errors():
        jax.eval_shape(run, variables, x)
    return sorted(calls.values(), key=lambda c: c.end)


def haiku_layers(
    transformed: Any, variables: Any, x: Array | jax.ShapeDtypeStruct, **apply_kwargs
) -> dict[str, Any]:
    """All module paths a Haiku transform calls on ``x``, with their output shapes.

    Runs abstractly (``jax.eval_shape``): nothing is computed.
    """
    return {c.path: c.shape for c in haiku_calls(transformed, variables, x, **apply_kwargs)}


def haiku_natural_layer(
    transformed: Any, variables: Any, x: Array | jax.ShapeDtypeStruct, **apply_kwargs
) -> tuple[str, str]:
    """The path of the model's natural target layer and why
    (:func:`~ifa_jax.probes.natural_layer`): what ``haiku_probe(transformed)`` taps."""
    return natural_layer(haiku_calls(transformed, variables, x, **apply_kwargs))


@contextlib.contextmanager
def _haiku_errors():
    """Re-raise Haiku's error for a model that draws random numbers without an rng (a
    model in training mode) as a ValueError naming the fix."""
    try:
        yield
    except ValueError as e:
        if type(e).__name__ != "MissingRNGError":
            raise
        raise ValueError(
            f"the model draws random numbers inside the probe ({str(e).splitlines()[0]}): "
            "dropout (or another random layer) is active, and the probe passes no rng. "
            "Pass the model's inference flag to the probe as a keyword: "
            "haiku_probe(transformed, layer, is_training=False) (or your flag)"
        ) from e


def haiku_probe(
    transformed: Any,
    layers: str | Sequence[str] | None = None,
    *,
    output: Output = None,
    reshape: Reshape | None = None,
    **apply_kwargs: Any,
) -> LayerProbe:
    """A probe for a Haiku model at one module (arrays out) or several (dicts out).

    transformed: ``hk.transform(f)`` (``variables`` = its params) or
    ``hk.transform_with_state(f)`` (``variables = (params, state)``), with or without
    ``hk.without_apply_rng``; the rng is None, so pass ``f``'s inference flag (e.g.
    ``is_training=False``) for dropout and BatchNorm in ``apply_kwargs``. Layers are
    module names (``"conv2_d_1"``, ``"encoder/linear"``; Haiku's ``"/~/"`` reads as
    ``"/"``); wrap a function such as ``jax.nn.relu`` in ``hk.to_module`` to tap its
    output. ``layers=None``, ``output`` and ``reshape`` work as in
    :func:`~ifa_jax.probes.linen_probe` (None: the natural target layer, ``probe.layer``).

    Args:
        transformed: the ``hk.transform`` or ``hk.transform_with_state`` of the model.
        layers: a module name, several of them, or None for the natural target layer.
        output: where the logits (B, O) are in the model's output: None (the output is
            the logits), an index, a key or a callable ``out -> logits``.
        reshape: a map from a tapped output to a grid (B, *spatial, K), or None.
        **apply_kwargs: keyword arguments of ``transformed.apply``.

    Returns:
        A :class:`~ifa_jax.probes.LayerProbe`, called ``probe(variables, x, target)`` with
        ``variables`` the output of ``transformed.init``.

    Raises:
        ImportError: Haiku is not installed (``pip install 'ifa_jax[haiku]'``).
            ValueError: ``transformed`` is not a Haiku transform; a layer is unknown or
            ambiguous (when the probe first runs).
    """
    hk = _haiku("haiku_probe")
    names = layer_names(layers)
    apply = _haiku_apply(hk, transformed, apply_kwargs)
    auto, reshape = automatic(names, reshape)

    def tapped(variables, x, deltas):
        with explained_errors(x), _haiku_errors():
            calls = haiku_calls(transformed, variables, x, **apply_kwargs)
            available = [c.path for c in calls]
            paths = {
                auto(calls) if auto and layer == AUTO else resolve_layer(layer, available): layer
                for layer in names
            }
            acts: dict[str, Array] = {}

            def tap(next_fun, args, kwargs, context):
                out = next_fun(*args, **kwargs)
                path = _haiku_path(context.module)
                if context.method_name != "__call__" or path not in paths:
                    return out
                return tap_output(paths[path], path, out, acts, deltas, reshape is None)

            with hk.intercept_methods(tap):
                out = apply(variables, x)
        return select_output(out, output), acts

    return LayerProbe(
        tapped,
        names,
        single=layers is None or isinstance(layers, str),
        reshape=reshape,
        find_layer=lambda v, x: haiku_natural_layer(transformed, v, x, **apply_kwargs),
        auto=auto,
    )

"""Probes for Haiku models (``hk.transform``/``hk.transform_with_state``), tapped by
module name with ``hk.intercept_methods``; ``variables`` is ``params`` (or ``(params,
state)``). Haiku is optional (``pip install 'ifa_jax[haiku]'``), imported when a probe is
built.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax

from ifa_jax._checks import require
from ifa_jax._taps import describe, explained_errors, layer_names, tap_output
from ifa_jax.probes.core import LayerProbe, Output, select_output
from ifa_jax.probes.layers import resolve_layer
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


def haiku_layers(
    transformed: Any, variables: Any, x: Array | jax.ShapeDtypeStruct, **apply_kwargs
) -> dict[str, Any]:
    """All module paths a Haiku transform calls on ``x``, with their output shapes.

    Runs abstractly (``jax.eval_shape``): nothing is computed.
    """
    hk = _haiku("haiku_layers")
    apply = _haiku_apply(hk, transformed, apply_kwargs)
    found: dict[str, Any] = {}

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__":
            shapes = jax.tree.map(lambda a: getattr(a, "shape", None), out)
            found.setdefault(_haiku_path(context.module), shapes)
        return out

    def run(variables, x):
        with hk.intercept_methods(record):
            return apply(variables, x)

    jax.eval_shape(run, variables, x)
    return found


def haiku_probe(
    transformed: Any,
    layers: str | Sequence[str],
    *,
    output: Output = None,
    reshape: Reshape | None = None,
    **apply_kwargs,
) -> LayerProbe:
    """A probe for a Haiku model at one module (arrays out) or several (dicts out).

    transformed: ``hk.transform(f)`` (``variables`` = its params) or
    ``hk.transform_with_state(f)`` (``variables = (params, state)``), with or without
    ``hk.without_apply_rng``; the rng is None. Layers are module names (``"conv2_d_1"``,
    ``"encoder/linear"``; Haiku's ``"/~/"`` reads as ``"/"``); wrap a function such as
    ``jax.nn.relu`` in ``hk.to_module`` to tap its output. ``apply_kwargs`` go to ``f``
    (e.g. ``is_training=False`` for BatchNorm and dropout); ``output`` picks the logits as
    in :func:`~ifa_jax.probe.linen_probe`, and ``reshape`` maps token outputs to a grid.
    """
    hk = _haiku("haiku_probe")
    names = layer_names(layers)
    apply = _haiku_apply(hk, transformed, apply_kwargs)

    def tapped(variables, x, deltas):
        with explained_errors(x):
            available = list(haiku_layers(transformed, variables, x, **apply_kwargs))
            paths = {resolve_layer(layer, available): layer for layer in names}
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

    return LayerProbe(tapped, names, single=isinstance(layers, str), reshape=reshape)

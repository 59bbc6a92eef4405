"""Probes for models written as two plain functions, ``features(params, x) -> A`` and
``head(params, A) -> logits``: ``variables`` is their ``params``.

Examples:
    A model written as two functions, ``features`` and ``head``:

    >>> import jax
    >>> import ifa_jax
    >>> def features(params, x):                  # x (B, 8, 8, 1) -> A (B, 8, 8, 4)
    ...     dims = ("NHWC", "HWIO", "NHWC")
    ...     return jax.nn.relu(jax.lax.conv_general_dilated(
    ...         x, params["w"], (1, 1), "SAME", dimension_numbers=dims))
    >>> def head(params, a):                      # A -> logits (B, 3)
    ...     return a.mean(axis=(1, 2)) @ params["v"]
    >>> k1, k2 = jax.random.split(jax.random.key(0))
    >>> params = {"w": jax.random.normal(k1, (3, 3, 1, 4)), "v": jax.random.normal(k2, (4, 3))}
    >>> probe = ifa_jax.function_probe(features, head)
    >>> x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 1))
    >>> out = probe(params, x, target=2)
    >>> probe.layers, out.activations.shape, out.logits.shape
    (('features',), (2, 8, 8, 4), (2, 3))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from ifa_jax._taps import explained_errors, layer_names, tap_output
from ifa_jax.probes.core import LayerProbe, Output, select_output
from ifa_jax.probes.tokens import Reshape

Array = jax.Array


def function_probe(
    features: Callable[[Any, Array], Array],
    head: Callable[[Any, Array], Array],
    *,
    output: Output = None,
    reshape: Reshape | None = None,
    name: str = "features",
) -> LayerProbe:
    """A probe for a model written in two parts; ``variables`` is their ``params``.

    features(params, x (B, ...)) -> A (B, *spatial, K), channels last; head(params, A) ->
    logits (B, O). ``name`` is the layer's name in results and in ``explain(layer=...)``.
    Pass inputs channels-last, (B, *spatial, C), for ScoreCAM (it masks them).
    ``output`` picks the logits in what ``head`` returns and ``reshape`` maps A to a grid
    first (``ifa_jax.tokens_to_grid()`` for tokens), as in :func:`~ifa_jax.probes.linen_probe`.

    Args:
        features: ``features(params, x) -> A`` (B, *spatial, K), the model up to the layer.
        head: ``head(params, A) -> output``, the rest of the model.
        output: where the logits (B, O) are in the model's output: None (the output is
            the logits), an index, a key or a callable ``out -> logits``.
        reshape: a map from A to a grid (B, *spatial, K), or None.
        name: the layer's name in results.

    Returns:
        A :class:`~ifa_jax.probes.LayerProbe`, called ``probe(params, x, target)``.
    """
    (key,) = layer_names(name)

    def tapped(params, x, deltas):
        acts: dict[str, Array] = {}
        with explained_errors(x):
            a = tap_output(key, key, features(params, x), acts, deltas, reshape is None)
            return select_output(head(params, a), output), acts

    return LayerProbe(tapped, (key,), reshape=reshape)

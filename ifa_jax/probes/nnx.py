"""Probes for Flax NNX models: the tapped submodule is swapped for a thin wrapper on a
private copy of the model (``nnx.split``/``nnx.merge``): no edit to the model.

Examples:
    A probe of an NNX model, called with the state it carries:

    >>> import jax
    >>> from flax import nnx
    >>> import ifa_jax
    >>> class Net(nnx.Module):
    ...     def __init__(self, rngs):
    ...         self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
    ...         self.head = nnx.Linear(4, 3, rngs=rngs)
    ...     def __call__(self, x):
    ...         return self.head(nnx.relu(self.conv(x)).mean(axis=(1, 2)))
    >>> model = Net(nnx.Rngs(0))
    >>> ifa_jax.probes.nnx_layers(model)
    ['conv', 'head']
    >>> probe = ifa_jax.nnx_probe(model, "conv")
    >>> x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1))
    >>> out = probe(probe.variables, x, target=1)
    >>> out.activations.shape, out.logits.shape
    ((2, 8, 8, 4), (2, 3))
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, MutableSequence, Sequence
from typing import Any

import jax
from flax import nnx

from ifa_jax._taps import AUTO, explained_errors, get_child, layer_names, tap_output
from ifa_jax.probes.core import LayerProbe, Output, select_output
from ifa_jax.probes.layers import LayerCall, automatic, call_shapes, natural_layer, resolve_layer
from ifa_jax.probes.tokens import Reshape

Array = jax.Array


def nnx_layers(model: nnx.Module) -> list[str]:
    """Paths of all submodules of an NNX model ("conv2", "blocks/0/conv")."""
    return ["/".join(map(str, path)) for path, _ in nnx.iter_modules(model) if path]


class _NnxTap:
    """Stands in for a submodule on a private copy of the model: records and perturbs its output."""

    def __init__(self, inner, name, path, acts, deltas, check_rank=True):
        self.inner, self.name, self.path = inner, name, path
        self.acts, self.deltas, self.check_rank = acts, deltas, check_rank

    def __call__(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        return tap_output(self.name, self.path, out, self.acts, self.deltas, self.check_rank)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class _NnxRecorder:
    """Stands in for a submodule on a private copy of the model: records its call."""

    def __init__(self, inner, path: str, calls: dict, clock):
        self.inner, self.path, self.calls, self.clock = inner, path, calls, clock

    def __call__(self, *args, **kwargs):
        start = next(self.clock)
        out = self.inner(*args, **kwargs)
        kind = type(self.inner).__name__
        call = LayerCall(self.path, kind, call_shapes(out), start, next(self.clock))
        self.calls.setdefault(self.path, call)
        return out

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _set_child(parent, key: str, value) -> None:
    if key.isdigit() and isinstance(parent, MutableSequence):
        parent[int(key)] = value
    else:
        # NNX modules guard attribute assignment; the copy is private, so bypass it.
        object.__setattr__(parent, key, value)


def _swap_in(root, path: str, wrap: Callable[[Any], Any]) -> None:
    """Replace the submodule at ``path`` of ``root`` (a private copy) by ``wrap(it)``."""
    *parents, last = path.split("/")
    parent = functools.reduce(get_child, parents, root)
    _set_child(parent, last, wrap(get_child(parent, last)))


def _nnx_calls(graphdef, state, x) -> list[LayerCall]:
    """The submodule calls of the NNX model ``merge(graphdef, state)`` on ``x``, in the
    order they end; runs abstractly."""
    calls: dict[str, LayerCall] = {}
    clock = itertools.count()

    def run(state, x):
        copy = nnx.merge(graphdef, state)
        # Deepest first, so that every parent on a path is still the module itself;
        # containers (nnx.List) are iterated, not called, so they stay as they are.
        modules = {"/".join(map(str, p)): m for p, m in nnx.iter_modules(copy) if p}
        for path in sorted(modules, key=lambda p: -p.count("/")):
            if not isinstance(modules[path], Sequence):
                _swap_in(copy, path, lambda m, p=path: _NnxRecorder(m, p, calls, clock))
        copy(x)

    with explained_errors(x):
        jax.eval_shape(run, state, x)
    return sorted(calls.values(), key=lambda c: c.end)


def nnx_natural_layer(model: nnx.Module, x: Array | jax.ShapeDtypeStruct) -> tuple[str, str]:
    """The path of an NNX model's natural target layer and why (see :func:`natural_layer`):
    what ``nnx_probe(model, None)`` taps. Runs abstractly; ``model`` is untouched."""
    graphdef, state = nnx.split(model)
    return natural_layer(_nnx_calls(graphdef, state, x))


def nnx_probe(
    model: nnx.Module,
    layers: str | Sequence[str] | None = None,
    *,
    output: Output = None,
    reshape: Reshape | None = None,
) -> LayerProbe:
    """A probe for an NNX model; ``probe.variables`` is the model's state (``nnx.split``),
    the ``variables`` to call it with: ``explain(probe, probe.variables, x)``.

    Nothing needs adding to the model. Call ``model.eval()`` first if it has BatchNorm or
    Dropout. The probe works on a private copy (``nnx.merge``), so ``model`` is untouched;
    pass the state of a retrained model of the same structure, ``nnx.split(new)[1]``.
    ``layers=None``, ``output`` and ``reshape`` work as in
    :func:`~ifa_jax.probes.linen_probe`.

    Args:
        model: the NNX module; it holds its own state, carried as ``probe.variables``.
        layers: a submodule's path or name (``"conv2"``, ``"blocks.1"``), several of them,
            or None for the natural target layer.
        output: where the logits (B, O) are in the model's output: None (the output is
            the logits), an index, a key or a callable ``out -> logits``.
        reshape: a map from a tapped output to a grid (B, *spatial, K), or None.

    Returns:
        A :class:`~ifa_jax.probes.LayerProbe`, called ``probe(probe.variables, x, target)``.

    Raises:
        ValueError: a layer is unknown or ambiguous (naming the model's layers), or
            ``reshape`` is not callable.
    """
    names = layer_names(layers)
    graphdef, state = nnx.split(model)
    available = nnx_layers(model)
    paths = {name: resolve_layer(name, available) for name in names if name != AUTO}
    auto, reshape = automatic(names, reshape)

    def tapped(state, x, deltas):
        found = dict(paths)
        if auto is not None:
            found[AUTO] = auto(_nnx_calls(graphdef, state, x))
        copy = nnx.merge(graphdef, state)
        acts: dict[str, Array] = {}
        # Deepest first, so that every parent on a path is still the module itself.
        for name, path in sorted(found.items(), key=lambda item: -item[1].count("/")):
            _swap_in(
                copy,
                path,
                lambda m, n=name, p=path: _NnxTap(m, n, p, acts, deltas, reshape is None),
            )
        with explained_errors(x):
            out = copy(x)
        return select_output(out, output), acts

    def find_layer(state, x):
        return natural_layer(_nnx_calls(graphdef, state, x))

    single = layers is None or isinstance(layers, str)
    return LayerProbe(
        tapped,
        names,
        single=single,
        reshape=reshape,
        find_layer=find_layer,
        auto=auto,
        variables=state,
    )

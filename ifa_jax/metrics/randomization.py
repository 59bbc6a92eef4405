"""The model randomisation sanity check (Adebayo et al. 2018):
:func:`cascading_randomization` re-initialises layers from the top down, in the order
:func:`top_down_order` reads from one abstract forward pass of a Linen model; compare the
CAMs of the randomised models with :mod:`ifa_jax.metrics.similarity`.

Examples:
    A two-layer MLP whose parameter names sort the wrong way round: the order comes
    from the forward pass, and the first step re-initialises the head only:

    >>> import flax.linen as nn
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from ifa_jax.metrics.randomization import cascading_randomization, top_down_order
    >>> class Mlp(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         return nn.Dense(2, name="head")(nn.relu(nn.Dense(4, name="hidden")(x)))
    >>> x = jnp.ones((1, 3))
    >>> variables = Mlp().init(jax.random.key(0), x)
    >>> sorted(variables["params"])
    ['head', 'hidden']
    >>> order = top_down_order(Mlp(), variables, x)
    >>> order
    LayerOrder(order=['head', 'hidden'], uncalled=[])
    >>> name, randomised = next(cascading_randomization(variables, jax.random.key(1), order.order))
    >>> name
    'head'
    >>> [bool(jnp.array_equal(randomised["params"][n]["kernel"], variables["params"][n]["kernel"]))
    ...  for n in ("head", "hidden")]
    [False, True]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, cast

import flax.linen as nn
import jax
import jax.numpy as jnp

from ifa_jax.probes import linen_calls

Array = jax.Array


class LayerOrder(NamedTuple):
    """Top-level parameter names, output layer first (``order``), and those of them whose
    module is never called through ``__call__`` (``uncalled``: parameters of the root
    module itself, a module used only through another method), which ``order`` puts last
    in their dict order."""

    order: list[str]
    uncalled: list[str]


def top_down_order(model: nn.Module, variables: Any, x: Any, **apply_kwargs: Any) -> LayerOrder:
    """The top-level parameter names of a Linen model in the reverse of their call order.

    One abstract forward pass of ``model.apply(variables, x, **apply_kwargs)``
    (:func:`ifa_jax.probes.linen_calls`: nothing is computed) records when each top-level
    submodule is first called; the names are ordered by that, last called (the output
    layer) first, ready for :func:`cascading_randomization`. Parameter names sort by name
    once a checkpoint is loaded, so their dict order says nothing about the model.

    Args:
        model: the Linen model.
        variables: its variables, with a 'params' collection.
        x: an input batch (only its shape and dtype are used).
        **apply_kwargs: passed to ``model.apply``.

    Returns:
        The :class:`LayerOrder`.

    Raises:
        ValueError: variables without parameters.
    """
    params = variables.get("params", {}) if isinstance(variables, Mapping) else {}
    if not isinstance(params, Mapping) or not params:
        raise ValueError(
            "variables has no 'params' collection to randomise; pass Flax variables "
            "{'params': ...} as model.init returns them"
        )
    first: dict[str, int] = {}
    for call in linen_calls(model, variables, x, **apply_kwargs):
        top = call.path.split("/")[0]
        first[top] = min(first.get(top, call.start), call.start)
    called = sorted((n for n in params if n in first), key=lambda n: -first[n])
    uncalled = [n for n in params if n not in first]
    return LayerOrder(called + uncalled, uncalled)


def _locate(params: Any, order: Sequence[str]) -> tuple[Mapping, bool]:
    if isinstance(params, Mapping) and all(n in params for n in order):
        return params, False
    inner = params.get("params") if isinstance(params, Mapping) else None
    if isinstance(inner, Mapping) and all(n in inner for n in order):
        return inner, True
    where = inner if isinstance(inner, Mapping) else params
    names = list(where) if isinstance(where, Mapping) else []
    missing = [n for n in order if n not in names]
    raise ValueError(
        f"layer(s) {missing} not found among the top-level parameter names "
        f"{names}; list names from those, top (output) layer first"
    )


def _rebuild(like: Mapping, **changes) -> Mapping:
    new = dict(like)
    new.update(changes)
    try:  # e.g. FrozenDict(dict); a Mapping type without that constructor raises TypeError
        return cast(Callable[[dict], Mapping], type(like))(new)
    except TypeError:
        return new


@jax.jit
def _reinit(subtree: Any, key: Array) -> Any:
    leaves, treedef = jax.tree.flatten(subtree)
    new = [
        jnp.std(leaf)
        * jax.random.normal(jax.random.fold_in(key, j), jnp.shape(leaf), jnp.result_type(leaf))
        if jnp.issubdtype(jnp.result_type(leaf), jnp.floating)
        else leaf
        for j, leaf in enumerate(leaves)
    ]
    return jax.tree.unflatten(treedef, new)


def cascading_randomization(
    params: Any, key: Array, order: Sequence[str]
) -> Iterator[tuple[str, Any]]:
    """Cascading weight randomisation (Adebayo et al. 2018), from the top layer down.

    ``params``: a parameter tree or Flax variables ``{'params': ...}`` (other collections
    are kept). ``order``: top-level parameter names, top (output) layer first. Yields
    ``(name, tree)`` for each name in turn, ``tree`` having that layer and every layer
    before it in ``order`` re-initialised: each floating-point leaf ~ Normal(0, std of that
    leaf) (a zero-initialised bias stays zero; integer leaves are kept), keys
    ``fold_in(split(key, len(order))[i], leaf index)``. Inputs are checked eagerly.

    Args:
        params: a parameter tree or Flax variables.
        key: the PRNG key.
        order: top-level parameter names, top (output) layer first.

    Returns:
        An iterator of ``(name, tree)``, one per name of ``order``.

    Raises:
        ValueError: an empty order, a name given twice, or a name not among the
            top-level parameters.
    """
    order = list(order)
    if not order:
        raise ValueError("order is empty; list the layers to randomise, top layer first")
    dupes = sorted({n for n in order if order.count(n) > 1})
    if dupes:
        raise ValueError(f"order names {dupes} more than once; list each layer once")
    _locate(params, order)
    keys = jax.random.split(key, len(order))

    def gen():
        current = params
        for i, name in enumerate(order):
            tree, nested = _locate(current, order)
            tree = _rebuild(tree, **{name: _reinit(tree[name], keys[i])})
            current = _rebuild(current, params=tree) if nested else tree
            yield name, current

    return gen()

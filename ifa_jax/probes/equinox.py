"""Probes for Equinox models: the tapped submodule is replaced, on a copy of the model
made with ``eqx.tree_at``, by a thin wrapper (nothing needs adding to the model).
``probe.variables`` is the model's array partition. Equinox is optional (``pip install
'ifa_jax[equinox]'``), imported when a probe is built.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ifa_jax._checks import require
from ifa_jax._taps import (
    check_activation,
    describe,
    explained_errors,
    get_child,
    layer_key,
    layer_names,
)
from ifa_jax.probes.core import LayerProbe, Output, select_output
from ifa_jax.probes.layers import resolve_layer

Array = jax.Array
# A submodule of an Equinox model: a path ("layers.3", "layers/3") or a callable
# model -> submodule (or a tuple of submodules), as the ``where`` of ``eqx.tree_at``.
Where = str | Callable[[Any], Any]


def _equinox(what: str):
    return require("equinox", "equinox", what)


def _submodules(eqx, node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(path, module) for every Equinox submodule below ``node``, depth first."""
    if isinstance(node, eqx.Module):
        if path:
            yield path, node
        children = [(f, getattr(node, f, None)) for f in node.__dataclass_fields__]
    elif isinstance(node, (list, tuple)):
        children = list(enumerate(node))
    else:
        return
    for key, child in children:
        yield from _submodules(eqx, child, f"{path}/{key}" if path else str(key))


def equinox_layers(model: Any) -> list[str]:
    """Paths of all submodules of an Equinox model ("layers/3", "blocks/0/attn")."""
    return [path for path, _ in _submodules(_equinox("equinox_layers"), model)]


def _path_of(node: Any, modules: dict[str, Any]) -> str:
    found = [path for path, module in modules.items() if module is node]
    if len(found) == 1:
        return found[0]
    if found:
        raise ValueError(
            f"where picks a module found at {', '.join(found)} (a shared module); tap a "
            "module that is called once"
        )
    what = f"an array of shape {tuple(node.shape)}" if hasattr(node, "shape") else None
    raise ValueError(
        f"where picks {what or describe(node)}, which is not a submodule of the model; pick an "
        "eqx.Module inside it, e.g. where=lambda m: m.layers[3] or where='layers.3' (wrap "
        f"a plain function in eqx.nn.Lambda). Submodules: {', '.join(modules) or '(none)'}"
    )


def _resolve_where(eqx, model: Any, where: Where | Sequence[Where]) -> tuple[list[str], bool]:
    """The submodule paths ``where`` picks, and whether it picks one layer (arrays out)."""
    modules = dict(_submodules(eqx, model))
    # One path or callable gives arrays; a list gives dicts, as in linen_probe.
    single = isinstance(where, str) or callable(where)
    picks: list[Where] = [where] if isinstance(where, str) or callable(where) else list(where)
    if not picks:
        raise ValueError("where is empty; pick at least one submodule, e.g. 'layers.3'")
    paths = []
    for pick in picks:
        if isinstance(pick, str):
            paths.append(resolve_layer(layer_key(pick), list(modules)))
            continue
        if not callable(pick):
            raise ValueError(
                f"where={pick!r} is neither a path ('layers.3') nor a callable model -> "
                "submodule (lambda m: m.layers[3])"
            )
        chosen = pick(model)
        nodes = chosen if isinstance(chosen, (tuple, list)) else (chosen,)
        single = single and nodes is not chosen
        paths.extend(_path_of(node, modules) for node in nodes)
    if len(set(paths)) != len(paths):
        raise ValueError(f"where picks a submodule twice: {', '.join(paths)}")
    return paths, single


def _position(axis: int, ndim: int, what: str) -> int:
    """``axis`` of an array of ``ndim`` axes as a non-negative index, or a ValueError."""
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"{what}={axis} is out of range for a per-sample array of {ndim} axes; "
            "give 0 for channels-first (C, *spatial) or -1 for channels-last (*spatial, C)"
        )
    return axis % ndim


class _EquinoxTap:
    """Stands in for a submodule on a copy of the model: records its output (in the
    model's layout) and adds the channels-last delta moved into that layout."""

    def __init__(self, inner, name: str, acts: dict, delta, channel_axis: int, lead: int):
        self.inner, self.name, self.acts, self.delta = inner, name, acts, delta
        self.channel_axis, self.lead = channel_axis, lead  # lead: 1 when batched

    def __getattr__(self, attr: str):  # the model may read the submodule's fields
        if attr == "inner":
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    def __call__(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        if self.name in self.acts:
            raise ValueError(
                f"layer {self.name!r} is called more than once per forward pass (a shared "
                "module); tap a module that is called once"
            )
        self.acts[self.name] = out
        if self.delta is None:
            return out
        axis = self.lead + _position(self.channel_axis, out.ndim - self.lead, "channel_axis")
        return out + jnp.moveaxis(self.delta, -1, axis)


@contextlib.contextmanager
def _equinox_errors():
    """Re-raise the errors of an Equinox model in training mode, or of a model that
    vmaps the tapped layer itself, as ValueErrors naming the fix."""
    fix = "call model = eqx.nn.inference_mode(model) before equinox_probe(model, where)"
    try:
        yield
    except RuntimeError as e:
        if "Dropout requires a key" not in str(e):
            raise
        raise ValueError(f"the model's Dropout is in training mode ({e}); {fix}") from e
    except NameError as e:
        if "axis name" not in str(e):
            raise
        raise ValueError(
            f"the model needs a named batch axis ({e}): BatchNorm in training mode "
            f"averages over the batch; {fix}"
        ) from e
    except jax.errors.UnexpectedTracerError as e:
        raise ValueError(
            "the tapped layer runs inside a jax.vmap of the model's own __call__, so its "
            "output cannot be recorded; probe the per-sample module the model vmaps, with "
            "batched=False (the default)"
        ) from e


def equinox_probe(
    model: Any,
    where: Where | Sequence[Where],
    *,
    batched: bool = False,
    channel_axis: int = 0,
    input_channel_axis: int = 0,
    output: Output = None,
    call: Callable[[Any, Array], Any] | None = None,
) -> LayerProbe:
    """A probe for an Equinox model; ``probe.variables`` is the ``variables`` to call it
    with: ``explain(probe, probe.variables, x)``.

    where: the submodule to tap, as in ``eqx.tree_at``: a callable (``lambda m:
    m.layers[3]``, or one returning a tuple of submodules) or a path (``"layers.3"``,
    ``"layers/3"``, or a unique suffix such as ``"3"``); a list taps several. The probe
    taps a copy made with ``eqx.tree_at``: ``model`` is untouched.

    ``probe.variables`` is ``eqx.filter(model, eqx.is_array)``, a pytree of arrays that
    ``jax.jit``, ``vmap`` and ``grad`` take as it is; the rest of the model (its
    structure, activation functions, ``inference`` flags) is fixed when the probe is
    built. Pass the arrays of a retrained model of the same structure as
    ``eqx.filter(new_model, eqx.is_array)``.

    batched=False (the default) vmaps the model over the batch, for modules written per
    sample as Equinox's layers are; batched=True calls ``model(x)`` on the whole batch.
    The probe speaks ifa_jax's convention, inputs ``x (B, *spatial, C)`` and activations
    ``A (B, *spatial, K)``, channels last; ``input_channel_axis`` and ``channel_axis`` say
    where the model's per-sample input and the tapped layer's per-sample output keep their
    channels (0, the default, for Equinox's channels-first convolutions; -1 for
    channels-last layers such as token sequences (T, D)). The probe moves the axis on the
    way in and at the layer.

    output picks the logits as in :func:`~ifa_jax.probe.linen_probe`; ``call(model, x)``
    replaces ``model(x)`` (per sample when ``batched=False``), e.g. ``lambda m, x: m(x,
    state)`` with ``output=0`` for a stateful model. Put Dropout and BatchNorm in inference
    mode first: ``model = eqx.nn.inference_mode(model)``.
    """
    eqx = _equinox("equinox_probe")
    paths, single = _resolve_where(eqx, model, where)
    names = layer_names(paths)
    params, static = eqx.partition(model, eqx.is_array)
    lead = 1 if batched else 0
    run_model = call if call is not None else (lambda m, x: m(x))

    def run(params, x, deltas):
        copy = eqx.combine(params, static)
        acts: dict[str, Any] = {}
        taps = tuple(
            _EquinoxTap(
                functools.reduce(get_child, path.split("/"), copy),
                name,
                acts,
                None if deltas is None else deltas.get(name),
                channel_axis,
                lead,
            )
            for name, path in zip(names, paths)
        )
        copy = eqx.tree_at(
            lambda m: tuple(functools.reduce(get_child, p.split("/"), m) for p in paths),
            copy,
            replace=taps,
        )
        return run_model(copy, x), acts

    def to_grid(name: str, raw: Any) -> Array:
        """A tapped output (B, *model layout) as (B, *spatial, K)."""
        if getattr(raw, "ndim", 0) < 2:
            check_activation(name, raw)  # raises: not an array of rank 3-5
        a = jnp.moveaxis(raw, 1 + _position(channel_axis, raw.ndim - 1, "channel_axis"), -1)
        check_activation(name, a)
        return a

    def tapped(params, x, deltas):
        if x.ndim >= 2:  # (B, *spatial, C) -> the model's per-sample layout
            axis = _position(input_channel_axis, x.ndim - 1, "input_channel_axis")
            x_model = jnp.moveaxis(x, -1, 1 + axis)
        else:
            x_model = x
        with explained_errors(x), _equinox_errors():
            if batched:
                out, raw = run(params, x_model, deltas)
            else:
                out, raw = jax.vmap(run, in_axes=(None, 0, 0))(params, x_model, deltas)
            missing = [name for name in names if name not in raw]
            if missing:
                raise ValueError(
                    f"layer(s) {', '.join(missing)} picked by where are not called by the "
                    "model's forward pass; pick a submodule the model calls"
                )
            acts = {name: to_grid(name, raw[name]) for name in names}
        return select_output(out, output), acts

    return LayerProbe(tapped, names, single=single, variables=params)

"""Probes for Equinox models: the tapped submodule is replaced, on a copy of the model
made with ``eqx.tree_at``, by a thin wrapper (nothing needs adding to the model).
``probe.variables`` is the model's array partition. Equinox is optional (``pip install
'ifa_jax[equinox]'``), imported when a probe is built.

Examples:
    A probe of an Equinox model written per sample, channels first:

    >>> import jax
    >>> import equinox as eqx
    >>> import ifa_jax
    >>> k1, k2 = jax.random.split(jax.random.key(0))
    >>> model = eqx.nn.Sequential([
    ...     eqx.nn.Conv2d(1, 4, 3, padding=1, key=k1), eqx.nn.Lambda(jax.nn.relu),
    ...     eqx.nn.Lambda(lambda a: a.mean(axis=(1, 2))), eqx.nn.Linear(4, 3, key=k2)])
    >>> probe = ifa_jax.equinox_probe(model, lambda m: m.layers[1])
    >>> x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 1))     # channels last
    >>> out = probe(probe.variables, x, target=0)
    >>> probe.layers, out.activations.shape, out.logits.shape
    (('layers/1',), (2, 8, 8, 4), (2, 3))
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import threading
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
from ifa_jax.probes.layers import LayerCall, automatic, call_shapes, natural_layer, resolve_layer
from ifa_jax.probes.tokens import Reshape

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
        return self.record(self.inner(*args, **kwargs))

    def record(self, out: Any) -> Any:
        """Record the submodule's whole output and add the delta to it."""
        if self.name in self.acts:
            raise ValueError(
                f"layer {self.name!r} is called more than once per forward pass (a shared "
                "module); tap a module that is called once"
            )
        self.acts[self.name] = out
        if self.delta is None:
            return out
        axis = self.lead + _position(self.channel_axis, out.ndim - self.lead, "channel_axis")
        delta = jnp.moveaxis(self.delta, -1, axis)
        if delta.shape != out.shape:
            raise ValueError(_VMAPPED.format(name=self.name))
        return out + delta


class _EquinoxRecorder:
    """Stands in for a submodule on a copy of the model: records its call (path, class,
    output shape, start and end)."""

    def __init__(self, inner, path: str, calls: dict, clock):
        self.inner, self.path, self.calls, self.clock = inner, path, calls, clock

    def __getattr__(self, attr: str):
        if attr == "inner":
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    def __call__(self, *args, **kwargs):
        return self.record(self.inner, *args, **kwargs)

    def record(self, fun, *args, **kwargs):
        """Run ``fun`` (the submodule, or the submodule under the model's vmap)."""
        start = next(self.clock)
        out = fun(*args, **kwargs)
        kind = type(self.inner).__name__
        call = LayerCall(self.path, kind, call_shapes(out), start, next(self.clock))
        self.calls.setdefault(self.path, call)
        return out


# The model's own jax.vmap / eqx.filter_vmap of a tapped submodule (the usual
# jax.vmap(self.norm1)(x) over tokens): while a probe runs the model, these vmap the
# submodule itself, and the tap sees its whole output.
_vmap_lock = threading.Lock()
_vmap_users = 0
_vmap_originals: dict[str, Callable] = {}  # while installed: jax.vmap, eqx.filter_vmap


def _tap_vmap(vmap: Callable) -> Callable:
    @functools.wraps(vmap)
    def tapping_vmap(fun, *args, **kwargs):
        if isinstance(fun, _EquinoxTap):
            mapped = vmap(fun.inner, *args, **kwargs)
            return lambda *a, **k: fun.record(mapped(*a, **k))
        if isinstance(fun, _EquinoxRecorder):
            mapped = vmap(fun.inner, *args, **kwargs)
            return lambda *a, **k: fun.record(mapped, *a, **k)
        return vmap(fun, *args, **kwargs)

    return tapping_vmap


@contextlib.contextmanager
def _vmapped_taps(eqx):
    """Within: ``jax.vmap`` and ``eqx.filter_vmap`` see through the probe's wrappers
    (they pass every other function on unchanged). Reentrant and thread-safe: the first
    probe to enter installs them, the last to leave restores the originals."""
    global _vmap_users
    with _vmap_lock:
        if _vmap_users == 0:
            _vmap_originals.update(jax=jax.vmap, eqx=eqx.filter_vmap)
            jax.vmap = _tap_vmap(jax.vmap)
            eqx.filter_vmap = _tap_vmap(eqx.filter_vmap)
        _vmap_users += 1
    try:
        yield
    finally:
        with _vmap_lock:
            _vmap_users -= 1
            if _vmap_users == 0:
                jax.vmap = _vmap_originals.pop("jax")
                eqx.filter_vmap = _vmap_originals.pop("eqx")


_VMAPPED = (
    "layer {name!r} runs inside a jax.vmap in the model's code that the probe cannot see "
    "through (a vmap of a function or of a module around the layer, or a vmap imported by "
    "name), so the probe would see a slice of its output. Write the vmap on the layer "
    "itself, jax.vmap(self.layer)(x) or eqx.filter_vmap(self.layer)(x), or tap the module "
    "that calls the vmap; for a model that vmaps itself over the batch, probe the "
    "per-sample module it vmaps, with batched=False (the default)"
)


@contextlib.contextmanager
def _equinox_errors(name: str = "the tapped layer"):
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
        raise ValueError(_VMAPPED.format(name=name)) from e


def _replace_all(eqx, copy: Any, paths: Sequence[str], wrap: Callable[[Any, str], Any]) -> Any:
    """``copy`` with the submodule at each path replaced by ``wrap(submodule, path)``,
    deepest first (so a parent's path still leads to the module itself)."""
    for path in sorted(paths, key=lambda p: -p.count("/")):
        copy = eqx.tree_at(
            lambda m, p=path: functools.reduce(get_child, p.split("/"), m),
            copy,
            replace_fn=lambda node, p=path: wrap(node, p),
        )
    return copy


def _equinox_calls(eqx, run_model, params, static, x_model, batched: bool) -> list[LayerCall]:
    """The submodule calls of one forward pass, in the order they end, with batched
    output shapes (B, *per-sample shape); runs abstractly."""
    calls: dict[str, LayerCall] = {}
    clock = itertools.count()

    def run(params, x):
        copy = eqx.combine(params, static)
        paths = [path for path, _ in _submodules(eqx, copy)]
        copy = _replace_all(eqx, copy, paths, lambda m, p: _EquinoxRecorder(m, p, calls, clock))
        return run_model(copy, x)

    with _vmapped_taps(eqx):
        jax.eval_shape(run if batched else jax.vmap(run, in_axes=(None, 0)), params, x_model)
    lead = () if batched else tuple(x_model.shape[:1])

    def batched_shape(shape):
        return lead + shape if isinstance(shape, tuple) else shape

    found = [c._replace(shape=batched_shape(c.shape)) for c in calls.values()]
    return sorted(found, key=lambda c: c.end)


def equinox_probe(
    model: Any,
    where: Where | Sequence[Where] | None = None,
    *,
    output: Output = None,
    reshape: Reshape | None = None,
    batched: bool = False,
    channel_axis: int = 0,
    input_channel_axis: int = 0,
    call: Callable[[Any, Array], Any] | None = None,
) -> LayerProbe:
    """A probe for an Equinox model; ``probe.variables`` is the ``variables`` to call it
    with: ``explain(probe, probe.variables, x)``.

    where: the submodule to tap, as in ``eqx.tree_at``: a callable (``lambda m:
    m.layers[3]``, or one returning a tuple of submodules) or a path (``"layers.3"``,
    ``"layers/3"``, or a unique suffix such as ``"3"``); a list taps several; None taps
    the natural target layer, found when the probe first runs, as
    :func:`~ifa_jax.probes.linen_probe` does (``probe.layer`` shows it). The probe taps
    a copy made with ``eqx.tree_at``: ``model`` is untouched. A submodule the model
    vmaps itself, ``jax.vmap(self.norm1)(x)`` or ``eqx.filter_vmap(self.norm1)(x)``
    (per token in Equinox's transformers), is tapped whole: while the probe runs the
    model, those two functions vmap the submodule inside the probe's wrapper.

    ``probe.variables`` is ``eqx.filter(model, eqx.is_array)``, a pytree of arrays that
    ``jax.jit``, ``vmap`` and ``grad`` take as it is; the rest of the model (its
    structure, activation functions, ``inference`` flags) is fixed when the probe is
    built. Pass the arrays of a retrained model of the same structure as
    ``eqx.filter(new_model, eqx.is_array)``.

    output picks the logits and ``reshape`` maps a tapped output (channels last, after
    ``channel_axis``) to a grid, e.g. ``ifa_jax.tokens_to_grid()`` for tokens (T, D), as
    in :func:`~ifa_jax.probes.linen_probe`.

    batched=False (the default) vmaps the model over the batch, for modules written per
    sample as Equinox's layers are; batched=True calls ``model(x)`` on the whole batch.
    The probe speaks ifa_jax's convention, inputs ``x (B, *spatial, C)`` and activations
    ``A (B, *spatial, K)``, channels last; ``input_channel_axis`` and ``channel_axis`` say
    where the model's per-sample input and the tapped layer's per-sample output keep their
    channels (0, the default, for Equinox's channels-first convolutions; -1 for
    channels-last layers such as token sequences (T, D)). The probe moves the axis on the
    way in and at the layer.

    ``call(model, x)`` replaces ``model(x)`` (per sample when ``batched=False``), e.g.
    ``lambda m, x: m(x, state)`` with ``output=0`` for a stateful model. Put Dropout and
    BatchNorm in inference mode first: ``model = eqx.nn.inference_mode(model)``.

    Args:
        model: the Equinox module, in inference mode.
        where: the submodule(s) to tap (a callable as in ``eqx.tree_at``, or a path), a
            list of them, or None for the natural target layer.
        output: where the logits (B, O) are in the model's output: None (the output is
            the logits), an index, a key or a callable ``out -> logits``.
        reshape: a map from a tapped output to a grid (B, *spatial, K), or None.
        batched: whether ``model`` takes the whole batch (else it is vmapped per sample).
        channel_axis: the channel axis of the tapped layer's per-sample output.
        input_channel_axis: the channel axis of the model's per-sample input.
        call: ``call(model, x) -> output``, replacing ``model(x)``, or None.

    Returns:
        A :class:`~ifa_jax.probes.LayerProbe`, called ``probe(probe.variables, x, target)``
        with x (B, *spatial, C) channels last.

    Raises:
        ImportError: Equinox is not installed (``pip install 'ifa_jax[equinox]'``).
        ValueError: ``where`` names no submodule of ``model``, or (when the probe runs)
            the model's Dropout or BatchNorm is in training mode.
    """
    eqx = _equinox("equinox_probe")
    if where is None:
        chosen, single = None, True
        names = layer_names(None)
    else:
        chosen, single = _resolve_where(eqx, model, where)
        names = layer_names(chosen)
    auto, reshape = automatic(names, reshape)
    params, static = eqx.partition(model, eqx.is_array)
    lead = 1 if batched else 0
    run_model = call if call is not None else (lambda m, x: m(x))

    def run(params, x, deltas, paths):
        acts: dict[str, Any] = {}
        name_of = dict(zip(paths, names))

        def wrap(node, path):
            delta = None if deltas is None else deltas.get(name_of[path])
            return _EquinoxTap(node, name_of[path], acts, delta, channel_axis, lead)

        copy = _replace_all(eqx, eqx.combine(params, static), paths, wrap)
        return run_model(copy, x), acts

    def to_grid(name: str, raw: Any) -> Array:
        """A tapped output (B, *model layout) as (B, *spatial, K)."""
        if getattr(raw, "ndim", 0) < 2:
            check_activation(name, raw)  # raises: not an array of rank 3-5
        a = jnp.moveaxis(raw, 1 + _position(channel_axis, raw.ndim - 1, "channel_axis"), -1)
        if reshape is None:
            check_activation(name, a)
        return a

    def model_input(x):
        """x (B, *spatial, C) in the model's per-sample layout."""
        if x.ndim < 2:
            return x
        axis = _position(input_channel_axis, x.ndim - 1, "input_channel_axis")
        return jnp.moveaxis(x, -1, 1 + axis)

    def calls_of(params, x_model):
        return _equinox_calls(eqx, run_model, params, static, x_model, batched)

    def find_layer(params, x):
        with explained_errors(x), _equinox_errors():
            return natural_layer(calls_of(params, model_input(x)))

    def tapped(params, x, deltas):
        x_model = model_input(x)
        with explained_errors(x), _equinox_errors(names[0] if single else "a tapped layer"):
            paths = [auto(calls_of(params, x_model))] if auto else list(chosen or ())
            with _vmapped_taps(eqx):
                if batched:
                    out, raw = run(params, x_model, deltas, paths)
                else:
                    per_sample = functools.partial(run, paths=paths)
                    out, raw = jax.vmap(per_sample, in_axes=(None, 0, 0))(params, x_model, deltas)
            missing = [name for name in names if name not in raw]
            if missing:
                raise ValueError(
                    f"layer(s) {', '.join(missing)} picked by where are not called by the "
                    "model's forward pass; pick a submodule the model calls"
                )
            acts = {name: to_grid(name, raw[name]) for name in names}
        return select_output(out, output), acts

    return LayerProbe(tapped, names, single=single, reshape=reshape, auto=auto, variables=params)

"""Activations and gradients at named layers of a Flax model: one forward pass and one vjp.

A *tapped forward* is a pure function ``tapped(variables, x, deltas) -> (logits, acts)``
that runs the model, records the output ``A`` of each named layer in ``acts`` and adds
``deltas[name]`` to it before the rest of the model sees it. With ``deltas`` all zeros the
model is unchanged, and ``d score / d deltas`` is exactly ``G = d score / d A``. So one
forward plus one vjp to ``deltas`` gives logits, ``A`` and ``G`` and never backpropagates
into the parameters (they are constants of the vjp).

* :func:`linen_probe` taps a Linen model through ``nn.intercept_methods``: no edit to
  the model, layers matched by name (``"conv2"``) or path (``"backbone/conv2"``).
* :func:`nnx_probe` taps an NNX model by swapping the named submodule, on a private copy
  made with ``nnx.split``/``nnx.merge``, for a thin wrapper: no edit to the model either.

Both take ``layers=None`` for the model's natural target layer (:func:`natural_layer`)
and ``reshape=`` for layers whose output is not yet a grid, such as transformer tokens
(``reshape=ifa_jax.tokens_to_grid()``; :mod:`ifa_jax.tokens`).

Both return a :class:`LayerProbe`, a callable that may itself be called under ``jax.jit``,
``vmap`` or ``grad``. A model that returns a tuple or a dict needs ``output=`` to pick its
logits. Errors with a known cause (a model in training mode, an input without its channel
axis) are re-raised as ``ValueError`` naming the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import itertools
import logging
import math
import warnings
from collections.abc import Callable, Mapping, MutableSequence, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ifa_jax._checks import (
    in_range,
    index_targets,
    is_traced,
    one_of,
    outputs_in_range,
    take_target,
)
from ifa_jax._taps import (
    AUTO,
    describe,
    explained_errors,
    get_child,
    layer_key,
    layer_names,
    tap_output,
)
from ifa_jax.tokens import GridTapped, Reshape

Array = jax.Array
# tapped(variables, x, deltas | None) -> (logits (B, O), {layer: A (B, *spatial, K)})
TappedFn = Callable[[Any, Array, Mapping[str, Array] | None], tuple[Array, dict[str, Array]]]
Target = int | str | Array | np.ndarray | Callable[[Array], Array] | None
# Picks the logits in a model's output: None (the output itself), an int index or a key
# (a str also reads a field of a NamedTuple or dataclass), or a callable out -> logits (B, O).
Output = int | str | Callable[[Any], Array] | None

SCORES = ("logit", "probability")
# The layer key of a probe built with layer=None: the natural target layer, found when the
# probe first runs (it needs an input to see the model's calls).
logger = logging.getLogger("ifa_jax")


class ZeroGradientWarning(UserWarning):
    """The gradients at a tapped layer are zero for the requested targets (see the message)."""


class LinenModel(NamedTuple):
    """What :func:`linen_probe` was built from, for methods that tap layers of their own
    choosing (FullGrad): the module, its ``apply`` keyword arguments and ``output=``."""

    module: nn.Module
    apply_kwargs: Mapping[str, Any]
    output: Output


class ProbeResult(NamedTuple):
    """What one probe call returns.

    logits: (B, O) the model's outputs. score: (B,) the explained target score y_c.
    target: (B,) int32 explained output index (-1 for a callable target).
    activations / gradients: A and G = dy_c/dA, (B, *spatial, K) each; dicts keyed by
    layer name when the probe was built for several layers.
    """

    logits: Array
    score: Array
    target: Array
    activations: Array | dict[str, Array]
    gradients: Array | dict[str, Array]


def _suffix_matches(requested: str, available: Sequence[str]) -> list[str]:
    """The paths of ``available`` that are ``requested`` or end with it (whole parts)."""
    if requested in available:
        return [requested]
    parts = requested.split("/")
    return [p for p in available if p.split("/")[-len(parts) :] == parts]


def resolve_layer(requested: str, available: Sequence[str]) -> str:
    """Match a requested layer name or path against the available module paths.

    An exact path wins; otherwise the request must be a unique suffix of one path
    (``"conv2"`` matches ``"backbone/conv2"``). A name is matched as written first (a
    module named ``"relu.1"``), then with its dots read as ``/`` (``"backbone.conv2"``,
    ``"layers.3"``).
    """
    matches = _suffix_matches(requested, available)
    if not matches and "." in requested:
        matches = _suffix_matches(layer_key(requested), available)
    if len(matches) == 1:
        return matches[0]
    listing = ", ".join(available) if available else "(none)"
    if len(matches) > 1:
        raise ValueError(
            f"layer {requested!r} is ambiguous: it matches {', '.join(matches)}; "
            "give the full path instead"
        )
    close = difflib.get_close_matches(requested, available, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"layer {requested!r} not found; layers: {listing}.{hint}")


def _output_hint(out: Any) -> str:
    if isinstance(out, Mapping) and out:
        keys = list(out)
        return f"output={'logits' if 'logits' in keys else keys[0]!r} (a key)"
    names = getattr(out, "_fields", None)
    if names:
        fields = list(names)
        return f"output={'logits' if 'logits' in fields else fields[0]!r} (a field)"
    return "output=0 (an index)"


def select_output(out: Any, output: Output = None) -> Array:
    """The logits (B, O) (or (B,)) in a model's output ``out``: ``out`` itself
    (``output=None``), ``out[output]`` (an int index or a key; a str also reads a
    field of a NamedTuple or dataclass), or ``output(out)`` (a callable)."""
    if output is None:
        picked = out
    elif callable(output):
        picked = output(out)
    elif hasattr(out, "ndim"):
        raise ValueError(
            f"output={output!r} would index the model's output, but that is already an "
            f"array of shape {tuple(out.shape)}; leave output=None"
        )
    else:
        fields = hasattr(out, "_fields") or hasattr(type(out), "__dataclass_fields__")
        try:
            if isinstance(output, str) and fields and hasattr(out, output):
                picked = getattr(out, output)
            else:
                picked = out[output]
        except (KeyError, IndexError, TypeError) as e:
            raise ValueError(
                f"output={output!r} is not in the model's output, {describe(out)}; "
                f"pass {_output_hint(out)} or a callable out -> logits (B, O)"
            ) from e
    if hasattr(picked, "ndim") and hasattr(picked, "dtype"):
        if picked.ndim > 2:
            raise ValueError(
                f"output={output!r} selects an array of shape {tuple(picked.shape)} from the "
                f"model's output ({describe(out)}), not logits (B, O) or (B,); select the "
                "logits"
            )
        return picked
    if output is None:
        raise ValueError(
            f"the model returns {describe(out)}, not an array of logits (B, O); pick the "
            f"logits with {_output_hint(out)} or output=callable(out) -> logits (B, O), "
            "e.g. linen_probe(model, layer, output=...) or nnx_probe(model, layer, output=...)"
        )
    raise ValueError(
        f"output={output!r} selects {describe(picked)} from the model's output "
        f"({describe(out)}), not an array of logits (B, O); select the logits themselves"
    )


# --------------------------------------------------------------------------- natural layer


class LayerCall(NamedTuple):
    """One submodule call of a forward pass: its path, class name, output shape (a tree of
    shapes for a tuple or dict output) and when it started and ended (one clock)."""

    path: str
    kind: str
    shape: Any
    start: int
    end: int


def _shapes(out: Any) -> Any:
    return jax.tree.map(lambda a: tuple(getattr(a, "shape", ())) or None, out)


def _is_grid(shape: Any) -> bool:
    """Whether an output shape is (B, *spatial, K) with 1-3 spatial axes."""
    return (
        isinstance(shape, tuple) and 3 <= len(shape) <= 5 and all(isinstance(n, int) for n in shape)
    )


def natural_layer(calls: Sequence[LayerCall]) -> tuple[str, str]:
    """The natural target layer among a forward pass's submodule calls, and why.

    With an attention module (a class named ``*Attention``): the last norm (a class named
    ``*Norm*``) that ran before the last attention started, i.e. the norm before the last
    block's attention in a pre-norm transformer (the input of that attention when no norm
    precedes it). Otherwise (a CNN): the last module to finish with a grid output
    (B, *spatial, K), so the enclosing block or stage wins over its inner layers, and a
    ReLU module after a conv wins over the conv.
    """
    attentions = [c for c in calls if c.kind.endswith("Attention")]
    if attentions:
        last = max(attentions, key=lambda c: c.start)
        before = [c for c in calls if c.end < last.start and _is_grid(c.shape)]
        norms = [c for c in before if "Norm" in c.kind]
        if norms or before:
            pick = max(norms or before, key=lambda c: c.end)
            what = "the norm" if norms else "the input"
            return pick.path, f"{what} before the last attention, {last.path!r}"
    grids = [c for c in calls if _is_grid(c.shape)]
    if not grids:
        listing = ", ".join(f"{c.path} {c.shape}" for c in calls) or "(none)"
        raise ValueError(
            "layer=None found no layer with a grid output (B, *spatial, K) to tap; name "
            f"the layer. Layers and output shapes: {listing}"
        )
    return max(grids, key=lambda c: c.end).path, "the last layer with a spatial output"


def _announce(picked: tuple[str, str], shape: Any, reshape: Reshape | None) -> None:
    path, why = picked
    hint = ""
    if reshape is None and "attention" in why:
        hint = (
            f"; its output {shape} is a token sequence: pass reshape=ifa_jax.tokens_to_grid() "
            "to see the patch tokens as a grid"
        )
    logger.info("layer=None: tapping %r, %s%s", path, why, hint)


def _auto_resolver(reshape: Reshape | None) -> Callable[[Sequence[LayerCall]], str]:
    """calls -> the natural layer's path, logged once per path (a probe retraces often)."""
    announced: set[str] = set()

    def resolve(calls: Sequence[LayerCall]) -> str:
        picked = natural_layer(calls)
        if picked[0] not in announced:
            announced.add(picked[0])
            shape = next(c.shape for c in calls if c.path == picked[0])
            _announce(picked, shape, reshape)
        return picked[0]

    return resolve


# --------------------------------------------------------------------------- Linen


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
            calls[path] = LayerCall(path, kind, _shapes(out), start, next(clock))
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
    output: Output = None,
    reshape: Reshape | None = None,
) -> TappedFn:
    auto = _auto_resolver(reshape)

    def tapped(variables, x, deltas):
        with explained_errors(x):
            return _tapped(variables, x, deltas)

    def _tapped(variables, x, deltas):
        calls = linen_calls(model, variables, x, **apply_kwargs)
        available = [c.path for c in calls]
        paths = {
            auto(calls) if layer == AUTO else resolve_layer(layer, available): layer
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
    **apply_kwargs,
) -> LayerProbe:
    """A probe for a Linen model at one layer (arrays out) or several (dicts out).

    ``layers=None`` taps the natural target layer (:func:`natural_layer`: the last layer
    with a spatial output for a CNN, the norm before the last block's attention for a
    transformer), found when the probe first runs and logged (``logging``, logger
    ``"ifa_jax"``, level INFO); its key in results is ``"auto"``.
    ``reshape`` maps each tapped output to a grid (B, *spatial, K) before every method,
    e.g. ``ifa_jax.tokens_to_grid()`` for transformer tokens (see :mod:`ifa_jax.tokens`).
    ``apply_kwargs`` go to ``model.apply`` (e.g. ``train=False`` for BatchNorm models).
    ``output`` picks the logits (B, O) when the model returns a tuple or a dict: an index
    (``0``), a key (``'logits'``) or a callable ``out -> logits``.
    """
    names = layer_names(layers)
    kwargs = dict(apply_kwargs)
    return LayerProbe(
        _linen_tapped(model, names, kwargs, output, reshape),
        names,
        single=layers is None or isinstance(layers, str),
        reshape=reshape,
        find_layer=lambda v, x: linen_natural_layer(model, v, x, **kwargs),
        linen=LinenModel(model, kwargs, output),
    )


# --------------------------------------------------------------------------- NNX


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
        call = LayerCall(self.path, kind, _shapes(out), start, next(self.clock))
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
) -> tuple[LayerProbe, nnx.State]:
    """A probe for an NNX model, and the model's state to pass as ``variables``.

    Nothing needs adding to the model. Call ``model.eval()`` first if it has BatchNorm or
    Dropout. The probe works on a private copy (``nnx.merge``), so ``model`` is untouched.
    ``layers=None``, ``reshape`` and ``output`` work as in :func:`linen_probe`.
    """
    names = layer_names(layers)
    graphdef, state = nnx.split(model)
    available = nnx_layers(model)
    paths = {name: resolve_layer(name, available) for name in names if name != AUTO}
    auto = _auto_resolver(reshape)

    def tapped(state, x, deltas):
        found = dict(paths)
        if AUTO in names:
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
    return LayerProbe(tapped, names, single=single, reshape=reshape, find_layer=find_layer), state


# --------------------------------------------------------------------------- the probe


def target_scores(logits: Array, target: Array, score: str = "logit") -> Array:
    """y_c per sample: logits (B, O), target (B,) int -> (B,). A target outside [0, O)
    scores 0 (zero gradient; reported under ``checkify``): :func:`ifa_jax._checks.take_target`."""
    one_of("score", score, SCORES)
    if score == "probability":
        logits = jax.nn.softmax(logits, axis=-1)
    return take_target(logits, target)


def _as_2d(logits: Array) -> Array:
    return logits[:, None] if logits.ndim == 1 else logits


@dataclasses.dataclass(frozen=True, eq=False)
class LayerProbe:
    """Callable ``probe(variables, x, target='predicted', *, score='logit') -> ProbeResult``.

    target: an int (one output for the whole batch), an int array (B,) (per sample, e.g.
    the labels), ``'predicted'`` (argmax of the logits), or a callable
    ``logits (B, O) -> score (B,)``, float (regression, custom objectives).
    score: ``'logit'`` (the raw output; also for regression) or ``'probability'``
    (softmax). Target indices outside [0, O) raise ``ValueError`` when their values are
    known: eager calls, and arrays closed over by the caller's ``jit``. A traced target
    (an argument of the caller's ``jit``, ``vmap`` or ``grad``) cannot be read, so such a
    sample scores 0 with zero gradients (finite, like ``jax.nn.one_hot``'s zero row);
    run the function under ``checkify.checkify(f, errors=checkify.user_checks)`` to get an
    error instead. Non-finite activations or gradients raise ``FloatingPointError`` when
    the probe is called eagerly (under an outer ``jit`` the check is skipped), and gradients
    that are zero on the whole grid (or reach one position of it) warn
    (:class:`ZeroGradientWarning`), naming ``find_layer``'s layer to try.

    reshape: maps each tapped output to a grid (B, *spatial, K) before every method
    (:mod:`ifa_jax.tokens`); ``probe.tapped`` is then the given tapped forward seen on the
    grid (a :class:`ifa_jax.tokens.GridTapped`). find_layer: ``(variables, x) -> (path,
    why)`` of the model's natural target layer, for the zero-gradient warning. linen: the
    Linen model of a :func:`linen_probe` (None for other probes).
    """

    tapped: TappedFn
    layers: tuple[str, ...]
    single: bool = True
    check_finite: bool = True
    reshape: Reshape | None = None
    find_layer: Callable[[Any, Array], tuple[str, str]] | None = None
    linen: LinenModel | None = None
    # Set in __post_init__: the jitted core and the cache of output shapes.
    _jit_core: Callable = dataclasses.field(init=False, repr=False)
    _shapes: dict = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        if self.reshape is not None:
            if not callable(self.reshape):
                raise ValueError(
                    f"reshape={self.reshape!r} must be a function A -> (B, *spatial, K), "
                    "e.g. ifa_jax.tokens_to_grid()"
                )
            # dataclasses.replace passes the grid-space tapped back: wrap it only once.
            tapped = self.tapped
            if not (isinstance(tapped, GridTapped) and tapped.reshape is self.reshape):
                object.__setattr__(self, "tapped", GridTapped(tapped, self.reshape))
        core = jax.jit(self._core, static_argnames=("mode", "fn", "score"))
        object.__setattr__(self, "_jit_core", core)
        object.__setattr__(self, "_shapes", {})

    # -- pure pieces, usable by other modules (cams, analysis) ----------------------

    def forward(self, variables, x: Array) -> Array:
        """Logits (B, O) of the unmodified model."""
        return _as_2d(self.tapped(variables, x, None)[0])

    def forward_with(self, variables, x: Array, deltas: Mapping[str, Array]) -> Array:
        """Logits (B, O) with ``deltas[layer]`` added to each tapped layer's output."""
        return _as_2d(self.tapped(variables, x, deltas)[0])

    def forward_activations(self, variables, x: Array) -> tuple[Array, dict[str, Array]]:
        """Logits (B, O) of the unmodified model and ``{layer: A}`` for every tapped layer,
        from one forward pass (no gradients)."""
        logits, acts = self.tapped(variables, x, None)
        return _as_2d(logits), acts

    def output_shapes(self, variables, x: Array) -> tuple[tuple[int, ...], dict[str, tuple]]:
        """Shapes of the logits and of each tapped activation, computed abstractly (cached
        per input and parameter shapes, so repeated calls do not retrace the model)."""
        key = (
            tuple(x.shape),
            str(x.dtype),
            jax.tree.structure(variables),
            tuple(jnp.shape(leaf) for leaf in jax.tree.leaves(variables)),
        )
        if key not in self._shapes:
            logits, acts = jax.eval_shape(lambda v, x: self.tapped(v, x, None), variables, x)
            out = (1,) if logits.ndim == 1 else ()
            self._shapes[key] = (
                tuple(logits.shape) + out,
                {k: tuple(a.shape) for k, a in acts.items()},
            )
        return self._shapes[key]

    def _zero_deltas(self, variables, x) -> dict[str, Array]:
        """Zeros shaped like each tapped activation: the point the vjp is taken at."""
        _, act_shapes = jax.eval_shape(lambda v, x: self.tapped(v, x, None), variables, x)
        return {k: jnp.zeros(s.shape, s.dtype) for k, s in act_shapes.items()}

    def _core(self, variables, x, target, *, mode, fn, score):
        zeros = self._zero_deltas(variables, x)

        def total(deltas):
            logits, acts = self.tapped(variables, x, deltas)
            logits = _as_2d(logits)
            if mode == "callable":
                idx = jnp.full((logits.shape[0],), -1, jnp.int32)
                y = fn(logits)
                _check_callable_scores(y, logits.shape[0])
            else:
                idx = jnp.argmax(logits, -1).astype(jnp.int32) if mode == "predicted" else target
                y = target_scores(logits, idx, score)
            # Samples are independent, so d(sum_n y_n)/dA_n = dy_n/dA_n for every n.
            return jnp.sum(y), (logits, y, idx, acts)

        grads, (logits, y, idx, acts) = jax.grad(total, has_aux=True)(zeros)
        # Per layer: non-finite counts in A and G, and the grid positions G reaches.
        checks = {
            k: jnp.stack(
                [
                    jnp.sum(~jnp.isfinite(acts[k])),
                    jnp.sum(~jnp.isfinite(grads[k])),
                    jnp.sum(jnp.any(grads[k] != 0, axis=(0, grads[k].ndim - 1))),
                ]
            )
            for k in acts
        }
        return logits, y, idx, acts, grads, checks

    def per_class(self, variables, x: Array, classes: Array, *, score: str = "logit"):
        """One forward and one batched vjp: gradients for several targets at once.

        classes: (n,) int output indices. Returns (logits (B, O), activations, gradients)
        with gradients of shape (n, B, *spatial, K): row i is ``d y_classes[i] / dA``,
        exactly what ``probe(variables, x, classes[i]).gradients`` gives, but the forward
        pass is shared (the backward passes to the layer are batched with ``vmap``).
        Memory grows with n * B * |A|: pass a few classes at a time for large n.
        Traceable (jit it with ``score`` static); a class outside [0, O) gets zero
        gradients (an error under ``checkify``), as an out-of-range target does.
        """
        one_of("score", score, SCORES)
        zeros = self._zero_deltas(variables, x)

        def outputs(deltas):
            logits, acts = self.tapped(variables, x, deltas)
            logits = _as_2d(logits)
            y = jax.nn.softmax(logits, axis=-1) if score == "probability" else logits
            return y, (logits, acts)

        y, vjp_fn, (logits, acts) = jax.vjp(outputs, zeros, has_aux=True)

        def grads_for(c):
            # one_hot: an index outside [0, O) (possible only under a trace) gives zeros
            cotangent = jax.nn.one_hot(c, y.shape[-1], dtype=y.dtype)
            return vjp_fn(jnp.broadcast_to(cotangent, y.shape))[0]

        classes = jnp.asarray(classes, jnp.int32)
        in_range(classes, y.shape[-1])  # reports an index outside [0, O) under checkify
        grads = jax.vmap(grads_for)(classes)
        if self.single:
            (name,) = self.layers
            return logits, acts[name], grads[name]
        return logits, acts, grads

    def _resolve_target(self, variables, x, target):
        batch = x.shape[0]
        if target is None or (isinstance(target, str) and target == "predicted"):
            return "predicted", None, None
        if isinstance(target, str):
            raise ValueError(
                f"target {target!r} is not understood; use 'predicted', an int, an int array "
                "of shape (B,) (e.g. the labels) or a callable logits -> (B,)"
            )
        if callable(target):
            return "callable", target, None
        t = index_targets(target, batch)
        if not is_traced(t, x):
            outputs_in_range(t, self.output_shapes(variables, x)[0][-1])
        return "index", None, t

    def warn_if_blind(
        self,
        reached: Mapping[str, int],
        grids: Mapping[str, int],
        variables,
        x: Array | jax.ShapeDtypeStruct,
        *,
        over: str = "",
        blank: str = "gradient-based CAMs there are blank",
    ) -> None:
        """Warn (:class:`ZeroGradientWarning`) for each layer whose gradients reach no
        grid position, or one of many: ``reached[layer]`` positions of ``grids[layer]``.
        ``over`` says over what (e.g. "every sample analysed"; default: this call) and
        ``blank`` what zero gradients mean there; ``x`` (an array or its shape) lets
        ``find_layer`` name a layer to try."""
        for name, count in reached.items():
            grid = grids[name]
            if count > 1 or (count == 1 and grid == 1):
                continue
            if count == 0:
                where, then = "are zero at every grid position", blank
            else:
                where = f"reach only 1 of its {grid} grid positions"
                then = "gradient-based CAMs there show that position alone"
            warnings.warn(
                f"the gradients at layer {name!r} for the requested targets {where}"
                f"{f' for {over}' if over else ''}, so {then}. Likely causes: the output "
                "reads only some tokens or positions of this layer (a ViT head reads only "
                "the class token, so the patch tokens of the last block's output get no "
                "gradient), or no gradient flows back to it (a jax.lax.stop_gradient, ReLUs "
                f"that are all off after it). {self._layer_hint(variables, x, name)}",
                ZeroGradientWarning,
                stacklevel=3,
            )

    def _layer_hint(self, variables, x, tapped: str) -> str:
        """'Try layer ...' from find_layer, or a generic hint when there is none (or it is
        the ``tapped`` layer itself)."""
        generic = "Tap an earlier layer, one whose output the model reads at every position."
        if self.find_layer is None:
            return generic
        try:
            path, why = self.find_layer(variables, x)
        except ValueError:
            return generic
        if tapped == AUTO or path == tapped or path.endswith("/" + tapped):
            return generic
        tokens = self.reshape is None and "attention" in why
        grid = " with reshape=ifa_jax.tokens_to_grid()" if tokens else ""
        return f"Try layer {path!r}{grid}: {why}."

    def __call__(
        self, variables, x: Array, target: Target = "predicted", *, score: str = "logit"
    ) -> ProbeResult:
        """Logits, target scores and indices, A and G at the tapped layer(s) for ``x``."""
        one_of("score", score, SCORES)
        x = jnp.asarray(x) if not isinstance(x, jax.Array) else x
        mode, fn, t = self._resolve_target(variables, x, target)
        logits, y, idx, acts, grads, checks = self._jit_core(
            variables, x, t, mode=mode, fn=fn, score=score
        )
        if mode == "callable" and y.shape != (x.shape[0],):
            raise ValueError(
                f"a callable target must return one score per sample, shape ({x.shape[0]},); "
                f"got {y.shape}"
            )
        if self.check_finite and not is_traced(y):
            checks = jax.device_get(checks)
            _raise_if_not_finite(checks)
            grids = {k: math.prod(a.shape[1:-1]) for k, a in acts.items()}
            self.warn_if_blind({k: int(c[2]) for k, c in checks.items()}, grids, variables, x)
        if self.single:
            (name,) = self.layers
            acts, grads = acts[name], grads[name]
        return ProbeResult(logits, y, idx, acts, grads)


def _check_callable_scores(y: Any, batch: int) -> None:
    """A callable target's output must be float scores (differentiated to the layer)."""
    dtype = getattr(y, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        got = f"dtype {dtype}" if dtype is not None else f"a {type(y).__name__}"
        raise ValueError(
            f"a callable target must return float scores, one per sample ({batch},), which "
            f"the probe differentiates; it returned {got}. Return values of the logits "
            "(e.g. lambda z: z[:, 1] - z[:, 0]); to explain class indices (an argmax, the "
            "labels), pass them as target= instead of a callable"
        )


def _raise_if_not_finite(checks: dict[str, np.ndarray]) -> None:
    """checks: {layer: [non-finite count in A, in G, ...]} from the jitted core."""
    problems = [
        f"{int(n)} non-finite {kind} at layer {name!r}"
        for name, counts in checks.items()
        for kind, n in zip(("activations", "gradients"), counts[:2])
        if n
    ]
    if problems:
        raise FloatingPointError(
            f"{'; '.join(problems)}. Check the inputs and parameters for NaN/inf (or use "
            "score='logit' if the softmax saturates)."
        )

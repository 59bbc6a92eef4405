"""The probe every framework's factory returns: :class:`LayerProbe`, a callable
``probe(variables, x, target) -> ProbeResult`` with the activations ``A`` of the tapped
layer(s) and the gradients ``G = d score / dA``.

A probe is built on a *tapped forward* ``tapped(variables, x, deltas) -> (logits, acts)``
that runs the model, records the output ``A`` of each tapped layer in ``acts`` and adds
``deltas[name]`` to it before the rest of the model sees it. With ``deltas`` all zeros the
model is unchanged, and ``d score / d deltas`` is exactly ``G``. So one forward plus one
vjp to ``deltas`` gives logits, ``A`` and ``G`` and never backpropagates into the
parameters (they are constants of the vjp). The factories (:mod:`ifa_jax.probes`) differ
only in how they tap a model of their framework.

Examples:
    Scores of chosen outputs, and the logits picked out of a dict output:

    >>> import jax.numpy as jnp
    >>> from ifa_jax.probes import select_output, target_scores
    >>> logits = jnp.array([[1.0, 2.0], [3.0, 0.0]])
    >>> target_scores(logits, jnp.array([1, 0])).tolist()
    [2.0, 3.0]
    >>> round(float(target_scores(logits, jnp.array([1, 1]), "probability")[0]), 4)
    0.7311
    >>> select_output({"logits": logits, "features": jnp.zeros((2, 5))}, "logits").shape
    (2, 2)
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ifa_jax._checks import (
    in_range,
    index_targets,
    is_traced,
    one_of,
    outputs_in_range,
    take_target,
)
from ifa_jax._taps import AUTO, describe
from ifa_jax.probes.layers import AutoGrid, AutoLayer
from ifa_jax.probes.tokens import GridTapped, Reshape

Array = jax.Array
# tapped(variables, x, deltas | None) -> (logits (B, O), {layer: A (B, *spatial, K)})
TappedFn = Callable[[Any, Array, Mapping[str, Array] | None], tuple[Array, dict[str, Array]]]
Target = int | str | Array | np.ndarray | Callable[[Array], Array] | None
# Picks the logits in a model's output: None (the output itself), an int index or a key
# (a str also reads a field of a NamedTuple or dataclass), or a callable out -> logits (B, O).
Output = int | str | Callable[[Any], Array] | None

SCORES = ("logit", "probability")


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
    field of a NamedTuple or dataclass), or ``output(out)`` (a callable).

    Args:
        out: the model's output: an array, a tuple, a dict, a NamedTuple or a dataclass.
        output: None, an int index, a key or field name, or a callable ``out -> logits``.

    Returns:
        The logits (B, O) or (B,).

    Raises:
        ValueError: ``output`` indexes an array, or names nothing in ``out`` (listing
            what is there), or the picked value is not logits (B, O) or (B,).
    """
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


# --------------------------------------------------------------------------- the probe


def target_scores(logits: Array, target: Array, score: str = "logit") -> Array:
    """y_c per sample: logits (B, O), target (B,) int -> (B,). A target outside [0, O)
    scores 0 (zero gradient; reported under ``checkify``): :func:`ifa_jax._checks.take_target`.

    Args:
        logits: the model's outputs (B, O).
        target: output indices (B,) int.
        score: ``'logit'`` or ``'probability'`` (softmax first).

    Returns:
        The scores y_c (B,).

    Raises:
        ValueError: an unknown ``score``.
    """
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
    (:mod:`ifa_jax.probes.tokens`); ``probe.tapped`` is then the given tapped forward seen
    on the grid (a :class:`~ifa_jax.probes.tokens.GridTapped`). find_layer: ``(variables,
    x) -> (path, why)`` of the model's natural target layer, for the zero-gradient warning.
    linen: the Linen model of a :func:`~ifa_jax.probes.linen_probe` (None for other
    probes). auto: the natural layer of a probe built with ``layers=None``
    (:class:`~ifa_jax.probes.layers.AutoLayer`), shown as :attr:`layer`. variables: the
    model's variables when the model object holds them (NNX: its state; Equinox: its
    arrays; Hugging Face: its params), else None (Linen, Haiku: ``init``'s output;
    functions: their params).
    """

    tapped: TappedFn
    layers: tuple[str, ...]
    single: bool = True
    check_finite: bool = True
    reshape: Reshape | None = None
    find_layer: Callable[[Any, Array], tuple[str, str]] | None = None
    linen: LinenModel | None = None
    auto: AutoLayer | None = None
    variables: Any = dataclasses.field(default=None, repr=False)
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

    @property
    def layer(self) -> str | None:
        """The tapped layer of a one-layer probe: the path of the natural layer of a probe
        built with ``layers=None`` once it has run (None before; ``probe.output_shapes(
        variables, x)`` finds it without computing anything), else the layer as named.
        None for a probe of several layers (see ``layers``)."""
        if not self.single:
            return None
        (name,) = self.layers
        if name == AUTO and self.auto is not None:
            return self.auto.path
        return name

    def __repr__(self) -> str:
        if not self.single:
            tapped = f"layers={self.layers!r}"
        elif self.auto is not None:
            tapped = f"layer={self.auto!r}"
        else:
            tapped = f"layer={self.layer!r}"
        # An automatic grid is shown once it has laid tokens on a grid.
        unused = isinstance(self.reshape, AutoGrid) and self.reshape.grid is None
        reshape = f", reshape={self.reshape!r}" if self.reshape is not None and not unused else ""
        return f"LayerProbe({tapped}{reshape})"

    def __iter__(self):
        # Probes were once returned as (probe, variables) by nnx_probe and equinox_probe.
        raise TypeError(
            "a LayerProbe is not a pair: every probe factory returns the probe alone, and "
            "its model's variables (NNX state, Equinox arrays) are probe.variables; write "
            "probe = nnx_probe(model, layer) and call probe(probe.variables, x)"
        )

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
        """Logits, target scores and indices, A and G at the tapped layer(s) for ``x``.

        Args:
            variables: the model's variables (``init``'s output, a function's params, or
                ``probe.variables`` for NNX and Equinox).
            x: inputs (B, *spatial_in, C).
            target: an int, an int array (B,), ``'predicted'`` or a callable
                ``logits (B, O) -> (B,)`` (see the class doc).
            score: ``'logit'`` or ``'probability'``.

        Returns:
            A :class:`ProbeResult`: logits (B, O), score (B,), target (B,), and A, G
            (B, *spatial, K) (dicts ``{layer: array}`` for a probe of several layers).

        Raises:
            ValueError: an unknown ``score``, a target outside [0, O), or a callable target
                that does not return one score per sample.
            FloatingPointError: non-finite activations or gradients (eager calls).
        """
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

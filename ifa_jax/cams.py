"""The CAM family as pure, rank-agnostic functions of activations A and gradients G.

Every method gives per-channel contribution maps ``M_k`` (docs/method.md section 2),
mostly ``M_k = w_k * A_k`` with ``w_k`` a scalar per sample and channel or a map on the
grid. From M:

* the raw CAM ``L = sum_k m_k M_k`` (no ReLU: removing negatives belongs to the scale),
* the per-sample channel importances ``s_k = sum over the grid of m_k M_k`` (signed),
* ``max(L)`` and ``min(L)`` on the feature grid.

Shapes: A, G: (B, *spatial, K) with 1-3 spatial axes; masks m: (K,) or (B, K).
All functions jit, vmap and differentiate (``jax.grad`` through a CAM works).

The methods are one table, :data:`REGISTRY`: one :class:`Method` entry each, with its
name, aliases, what it needs (gradients, forward passes, a PRNG key), its options with
their defaults (e.g. GradCAM++'s ``eps``) and its function. :data:`METHODS`,
:data:`GRADIENT_METHODS`, :data:`FORWARD_METHODS`, name resolution, the error messages
and the dispatch of :func:`contributions` and :func:`ifa_jax.explaining.forward_weights`
all read the table; :func:`register_method` adds a user's method to it. The methods
that need the model (``"forward_passes"``) get their weights (B, K) from their entry's
``forward`` hook and a :class:`ForwardPasses`: ScoreCAM, SS-CAM and IS-CAM
(:func:`scorecam_weights`) and AblationCAM (:func:`ablation_weights`), batched over
channels with ``jax.lax.map`` so memory stays bounded; ShapleyCAM (a Hessian-vector
product at the layer), FinerCAM (the gradient of a class contrast), SmoothGradCAM++
(gradients at noisy inputs) through :func:`layer_gradient`; the classic CAM from the
head's weights.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ifa_jax._checks import positive_int, take_target
from ifa_jax._stats import minmax_per_image

Array = jax.Array

# What a method may need beyond the activations A:
#   gradients       G = dy/dA from the probe;
#   forward_passes  the model itself: extra runs, derivatives at the layer, its parameters
#                   or the explained target (its weights come from Method.forward);
#   key             a PRNG key, passed as key= (never global random state).
NEEDS = ("gradients", "forward_passes", "key")

# What a method maps from (see Method.kind):
#   layer   one layer's A (and G, or forward passes at it) -> contributions M (B, *spatial, K);
#   layers  several layers of one probe -> one map L (B, *grid) (RefineCAM, multi-block LeGrad);
#   input   the model itself -> one map L (B, *spatial_in) at input resolution (FullGrad, SESS).
KINDS = ("layer", "layers", "input")
_KIND_NEEDS = {
    "layer": frozenset(NEEDS),
    "layers": frozenset({"gradients", "key"}),
    "input": frozenset({"key"}),
}

GRADCAMPP_EPS = 1e-6  # pytorch-grad-cam's; with gradients ~1e-3 it dominates alpha's denominator
XGRADCAM_EPS = 1e-7  # pytorch-grad-cam's
EPS = XGRADCAM_EPS  # XGradCAM's default eps (ifa_jax.consistency builds its tangent with it)
FEM_K = 2.0  # FEM's k-sigma threshold (Fuad et al. 2020)


class CamResult(NamedTuple):
    """contributions M: (B, *spatial, K); cam L: (B, *spatial); importance s: (B, K);
    max, min: (B,) of L over the grid. M is unmasked; L and s use the mask."""

    contributions: Array
    cam: Array
    importance: Array
    max: Array
    min: Array


class CamInputs(NamedTuple):
    """What a method's contribution function reads: activations A (B, *spatial, K);
    gradients G (same shape) or None; key: a PRNG key or None. A method gets G and key
    when it declares them in ``needs`` (then they are never None)."""

    activations: Array
    gradients: Array | None
    key: Array | None


class ForwardPasses(NamedTuple):
    """The model runs a forward-pass method may make (built by
    :func:`ifa_jax.explaining.forward_weights`).

    x: the inputs (B, *spatial_in, C). target: (B,) each sample's explained output.
    base_score: (B,) the explained score of the unchanged model. ``score_inputs(x (N,
    *spatial_in, C), target (N,)) -> (N,)`` scores other inputs. ``score_with_delta(delta
    (B, *spatial, K)) -> (B,)`` scores ``x`` with ``delta`` added to the layer's output.
    chunk_size: how many channels go through the model together.
    logits: (B, O) of the unchanged model. gradients: G (B, *spatial, K) from the probe.
    ``logits_at(x (B, *spatial_in, C), delta (B, *spatial, K) | None) -> (B, O)``: the
    probe's tapped model, differentiable in ``delta`` (e.g. ``jax.jvp`` over ``jax.grad``
    for a Hessian-vector product at the layer; the parameters stay constants).
    ``score(logits (N, O), target (N,)) -> (N,)``: the explained objective.
    indexed: whether ``target`` holds output indices (False for a callable objective,
    whose target is -1). variables: the model's variables. key: the PRNG key given to
    ``explain(..., key=)`` (never None for a method that needs ``"key"``).
    """

    x: Array
    target: Array
    base_score: Array
    score_inputs: Callable[[Array, Array], Array]
    score_with_delta: Callable[[Array], Array]
    chunk_size: int
    logits: Array
    gradients: Array
    logits_at: Callable[[Array, Array | None], Array]
    score: Callable[[Array, Array], Array]
    indexed: bool
    variables: Any
    key: Array | None


class ModelInputs(NamedTuple):
    """What a method of kind ``"input"`` reads (built by :func:`ifa_jax.explain`).

    probe: the :class:`ifa_jax.probes.LayerProbe` explain was given (its ``forward``,
    ``forward_with`` and module reach the whole model). variables: the model's variables.
    x: (B, *spatial_in, C) the inputs. target: (B,) int32 each sample's explained output
    (-1 for a callable target). ``score(logits (N, O), target (N,)) -> (N,)``: the explained
    objective. indexed: whether ``target`` holds output indices. logits: (B, O) of the
    model at x. key: the PRNG key given to explain (never None for a method that needs
    ``"key"``). layer: the probe layer explain was asked for (a name), for methods that
    run a layer method inside (SESS); None when explain got a probe of several layers and
    no layer= (a method that needs one raises, naming layer=).
    """

    probe: Any
    variables: Any
    x: Array
    target: Array
    score: Callable[[Array, Array], Array]
    indexed: bool
    logits: Array
    key: Array | None
    layer: str | None


def _normalise(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


@dataclasses.dataclass(frozen=True)
class Method:
    """One CAM method: one entry of :data:`REGISTRY`.

    name: canonical name, lower case without ``-`` or ``_`` (``"gradcam++"``).
    fn: for kind ``"layer"``, ``fn(inputs: CamInputs, **options) -> M (B, *spatial, K)``,
    or None for a forward-pass method, whose ``M_k = w_k * A_k`` with ``w`` (B, K) from
    ``forward``; for kind ``"layers"``, ``fn(inputs: Mapping[str, CamInputs], **options)
    -> L (B, *grid)`` (one map from every layer of a probe, see :func:`cam_layers`); for
    kind ``"input"``, ``fn(model: ModelInputs, **options) -> L (B, *spatial_in)``.
    aliases: other names (matched like ``name``: case, ``-`` and ``_`` ignored).
    needs: a subset of :data:`NEEDS`.
    options: keyword options of ``fn`` (or ``forward``) with their defaults; callers
    override them by keyword (``cam(A, G, "gradcam++", eps=1e-7)``).
    forward: ``forward(A, passes: ForwardPasses, **options) -> w (B, K)``, for methods
    that need ``"forward_passes"``; None otherwise.
    channelwise: True when ``M_k`` is channel k's own share of the CAM (importances and
    channel masks mean something); False when the map is not a sum over channels and
    ``M`` spreads it evenly, ``M_k = L / K``.
    summary: the formula in one line, with its source.
    kind: what the method maps from, one of :data:`KINDS`: ``"layer"`` (one layer: the
    default; :func:`cam`, :func:`ifa_jax.analyze` and the runner take these), ``"layers"``
    (several layers of one probe: :func:`cam_layers`) or ``"input"`` (the model, a map at
    input resolution: :func:`ifa_jax.explain`). Maps of the other kinds have no channels:
    their CamResult holds ``L[..., None]`` (K = 1).
    """

    name: str
    fn: Callable[..., Array] | None
    aliases: tuple[str, ...] = ()
    needs: frozenset[str] = frozenset()
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    forward: Callable[..., Array] | None = None
    channelwise: bool = True
    summary: str = ""
    kind: str = "layer"

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name or _normalise(self.name) != self.name:
            raise ValueError(
                f"method name {self.name!r} must be a non-empty lower-case string without "
                f"'-' or '_' (e.g. {_normalise(str(self.name))!r}); spellings go in aliases"
            )
        object.__setattr__(self, "aliases", tuple(_normalise(a) for a in self.aliases))
        needs = (self.needs,) if isinstance(self.needs, str) else self.needs
        object.__setattr__(self, "needs", frozenset(needs))
        object.__setattr__(self, "options", types.MappingProxyType(dict(self.options)))
        unknown = sorted(self.needs - set(NEEDS))
        if unknown:
            raise ValueError(
                f"method {self.name!r} needs {unknown}, which nothing supplies; "
                f"needs must be a subset of {NEEDS}"
            )
        if self.kind not in KINDS:
            raise ValueError(f"method {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if self.kind != "layer":
            extra = sorted(self.needs - _KIND_NEEDS[self.kind])
            if extra or self.fn is None or self.forward is not None:
                raise ValueError(
                    f"method {self.name!r} of kind {self.kind!r} takes fn= only (no forward=) "
                    f"and needs at most {sorted(_KIND_NEEDS[self.kind])}; got needs {extra}"
                )
            object.__setattr__(self, "channelwise", False)
            return
        forward_method = "forward_passes" in self.needs
        if forward_method != (self.forward is not None) or forward_method == (self.fn is not None):
            raise ValueError(
                f"method {self.name!r}: give fn= (contributions from A, G, key) for a local "
                "method, or forward= (weights from forward passes) with "
                "needs={'forward_passes'} for a forward-pass method; exactly one of them"
            )


# The table, filled by register_method below: canonical name -> Method, in order.
REGISTRY: dict[str, Method] = {}
_ALIASES: dict[str, str] = {}  # every accepted normalised spelling -> canonical name
ALIASES = types.MappingProxyType(_ALIASES)  # read-only view: spelling -> canonical name


class _Names(Sequence):
    """A read-only, live tuple of registered method names (those that need ``need``,
    or all): it follows :func:`register_method`, also where it was imported by name."""

    def __init__(self, need: str | None = None, kind: str | None = None):
        self._need, self._kind = need, kind

    def _names(self) -> tuple[str, ...]:
        return tuple(
            n
            for n, m in REGISTRY.items()
            if (self._need is None or self._need in m.needs)
            and (self._kind is None or m.kind == self._kind)
        )

    def __getitem__(self, index):
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __add__(self, other) -> tuple[str, ...]:
        return self._names() + tuple(other)

    def __eq__(self, other) -> bool:
        return isinstance(other, (tuple, list, _Names)) and self._names() == tuple(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._names())


METHODS = _Names()  # every registered method, of every kind
LAYER_METHODS = _Names(kind="layer")  # those of one layer (cam, analyze, the runner)
GRADIENT_METHODS = _Names("gradients", "layer")  # layer methods that need G
FORWARD_METHODS = _Names("forward_passes")  # those that need forward passes


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Add ``method`` to :data:`REGISTRY` (and its aliases); returns it.

    Every name and alias must be new unless ``replace=True`` (which replaces a method of
    the same name). Replacing a method clears JAX's compilation caches, so functions
    jitted earlier (which look methods up by name while tracing) trace the new one.
    """
    if not isinstance(method, Method):
        raise ValueError(f"register_method takes an ifa_jax.cams.Method; got {type(method)}")
    old = REGISTRY.get(method.name)
    if old is not None and not replace:
        raise ValueError(
            f"CAM method {method.name!r} is already registered; pass replace=True to replace it"
        )
    spellings = {method.name, *method.aliases}
    taken = sorted(s for s in spellings if _ALIASES.get(s, method.name) != method.name)
    if taken:
        raise ValueError(
            f"CAM method {method.name!r}: {', '.join(map(repr, taken))} already name "
            f"{', '.join(repr(_ALIASES[s]) for s in taken)}; choose other aliases"
        )
    if old is not None:
        for alias in old.aliases:
            _ALIASES.pop(alias, None)
    REGISTRY[method.name] = method
    _ALIASES.update(dict.fromkeys(spellings, method.name))
    if old is not None:
        jax.clear_caches()
    return method


def get_method(method: str | Method) -> Method:
    """The registered :class:`Method` for a name or alias (case, ``-`` and ``_`` ignored)."""
    if isinstance(method, Method):
        return method
    name = _ALIASES.get(_normalise(method)) if isinstance(method, str) else None
    if name is None:
        raise ValueError(
            f"unknown CAM method {method!r}; known methods: {', '.join(REGISTRY)} "
            "(ifa_jax.cams.register_method adds one)"
        )
    return REGISTRY[name]


def canonical_method(method: str) -> str:
    """Lower-case name with aliases resolved; unknown names list the known ones."""
    return get_method(method).name


def method_options(method: str | Method, options: Mapping[str, Any] | None = None) -> dict:
    """The method's options: its defaults overridden by ``options``; unknown ones raise."""
    spec = get_method(method)
    options = dict(options or {})
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        known = ", ".join(f"{k}={v!r}" for k, v in spec.options.items()) or "none"
        raise ValueError(
            f"{spec.name} has no option {', '.join(map(repr, unknown))}; its options: {known}"
        )
    for name, value in options.items():
        _check_option_value(spec, name, value)
    return {**spec.options, **options}


def options_per_method(
    given: Iterable[tuple[str, Any]], methods: Sequence[str], *, among: str, add_to: str
) -> dict[str, dict[str, Any]]:
    """``(method, {option: value})`` pairs -> ``{canonical method: options}``, each method
    among ``methods`` (canonical names; ``among`` names them in the error, ``add_to`` the
    argument to add a method to) and named once, each option known and of a valid type
    (:func:`method_options`). Defaults are not filled in."""
    out: dict[str, dict[str, Any]] = {}
    named: dict[str, str] = {}
    for name, options in given:
        m = canonical_method(name)
        if m not in methods:
            raise ValueError(
                f"method_options names {name!r}, which is not among {among} "
                f"({', '.join(methods)}); add it to {add_to} or drop its options"
            )
        if m in named:
            raise ValueError(
                f"method_options names {m} twice ({named[m]!r} and {name!r}); give its options once"
            )
        named[m] = name
        if not isinstance(options, Mapping):
            raise ValueError(
                f"method_options[{name!r}] must be a dict {{option: value}}; got {options!r}"
            )
        method_options(m, options)  # an unknown option or a bad value raises
        out[m] = dict(options)
    return out


def _check_option_value(spec: Method, name: str, value: Any) -> None:
    """A given option value against its default's type: a bool where the default is one, a
    number where it is a float, an integer where it is an int; an ``eps`` a finite number
    >= 0. Arrays and
    options whose default is None or another type are the method's to check."""
    default = spec.options[name]
    if isinstance(value, (jax.Array, np.ndarray)) or callable(value):
        return
    if isinstance(default, bool):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{spec.name} option {name}={value!r} must be True or False")
        return
    real = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )
    numeric_default = isinstance(default, (int, float)) and not isinstance(default, bool)
    if (numeric_default or name == "eps") and value is not None:
        if not real:
            raise ValueError(
                f"{spec.name} option {name}={value!r} must be a number (its default is {default!r})"
            )
        if isinstance(default, int) and not isinstance(default, float) and value != int(value):
            raise ValueError(f"{spec.name} option {name}={value!r} must be an integer")
        if not np.isfinite(value):
            raise ValueError(f"{spec.name} option {name}={value!r} must be finite")
        if name == "eps" and value < 0:
            raise ValueError(
                f"{spec.name} option eps={value!r} must be >= 0 (it keeps a denominator "
                f"away from 0; default {default!r})"
            )


def require_key(method: str | Method, key: Array | None) -> None:
    """Raise a ValueError naming the fix when ``method`` needs a PRNG key and ``key`` is None."""
    spec = get_method(method)
    if "key" in spec.needs and key is None:
        raise ValueError(
            f"{spec.name} needs a PRNG key: pass key=jax.random.key(seed) (keyword-only; "
            "ifa_jax keeps no global random state)"
        )


def spatial_axes(a: Array) -> tuple[int, ...]:
    """The grid axes of (B, *spatial, K): all but the first and the last."""
    if not 3 <= a.ndim <= 5:
        raise ValueError(
            f"activations must have shape (B, *spatial, K) with 1-3 spatial axes; got {a.shape}"
        )
    return tuple(range(1, a.ndim - 1))


def _grid_sum(a: Array) -> Array:
    """(B, *spatial, K) -> (B, 1.., K): sums over the grid, keeping dims for broadcasting."""
    return jnp.sum(a, axis=spatial_axes(a), keepdims=True)


def _per_channel(w: Array, a: Array) -> Array:
    """Weights (B, K) broadcast over the grid of a (B, *spatial, K), times a."""
    return w.reshape(w.shape[0], *(1,) * (a.ndim - 2), w.shape[-1]) * a


def _first_component(a: Array) -> Array:
    """Per sample, the first right singular vector v (B, K) of a reshaped (B, P, K).

    Its sign is fixed so that sum_p (a v)_p >= 0: the CAM points where a is large.
    """
    flat = a.reshape(a.shape[0], -1, a.shape[-1])
    _, _, vt = jnp.linalg.svd(flat, full_matrices=False)
    v = vt[:, 0, :]
    sign = jnp.sign(jnp.einsum("bpk,bk->b", flat, v))
    return v * jnp.where(sign == 0, 1.0, sign)[:, None]


# --------------------------------------------------------------------------- the methods
# Each is fn(inputs: CamInputs, **options) -> M (B, *spatial, K); see the table below.


def _gradcam(inputs: CamInputs) -> Array:
    A, G = inputs.activations, inputs.gradients
    assert G is not None
    return jnp.mean(G, axis=spatial_axes(A), keepdims=True) * A


def _gradcampp_weights(A: Array, G: Array, eps) -> Array:
    """GradCAM++'s w (B, 1.., K) from A and G (B, *spatial, K), grid axes kept."""
    g2 = G * G
    alpha = jnp.where(G != 0, g2 / (2.0 * g2 + _grid_sum(A) * g2 * G + eps), 0.0)
    return jnp.sum(jax.nn.relu(G) * alpha, axis=spatial_axes(A), keepdims=True)


def _gradcampp(inputs: CamInputs, *, eps=GRADCAMPP_EPS) -> Array:
    A, G = inputs.activations, inputs.gradients
    assert G is not None
    return _gradcampp_weights(A, G, eps) * A


def _xgradcam(inputs: CamInputs, *, eps=XGRADCAM_EPS) -> Array:
    A, G = inputs.activations, inputs.gradients
    assert G is not None
    return _grid_sum(G * A) / (_grid_sum(A) + eps) * A


def _hirescam(inputs: CamInputs) -> Array:
    assert inputs.gradients is not None
    return inputs.gradients * inputs.activations


def _layercam(inputs: CamInputs) -> Array:
    assert inputs.gradients is not None
    return jax.nn.relu(inputs.gradients) * inputs.activations


def _elementwise(inputs: CamInputs) -> Array:
    assert inputs.gradients is not None
    return jax.nn.relu(inputs.gradients * inputs.activations)


def _eigencam(inputs: CamInputs) -> Array:
    A = inputs.activations
    return _per_channel(_first_component(A), A)


def _eigengradcam(inputs: CamInputs) -> Array:
    assert inputs.gradients is not None
    ga = inputs.gradients * inputs.activations
    return _per_channel(_first_component(ga), ga)


def _randomcam(inputs: CamInputs) -> Array:
    A, key = inputs.activations, inputs.key
    assert key is not None
    w = jax.random.uniform(key, (A.shape[0], A.shape[-1]), A.dtype, minval=-1.0, maxval=1.0)
    return _per_channel(w, A)


def _fem(inputs: CamInputs, *, k=FEM_K) -> Array:
    A = inputs.activations
    axes = spatial_axes(A)
    mean = jnp.mean(A, axis=axes, keepdims=True)
    # The mask is piecewise constant: the threshold carries no gradient.
    threshold = jax.lax.stop_gradient(mean + k * jnp.std(A, axis=axes, keepdims=True))
    return mean * jnp.greater(A, threshold).astype(A.dtype)


def _safe_sqrt(x: Array) -> Array:
    """sqrt(max(x, 0)) with a finite gradient (0) where x <= 0."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


# Kernels of KPCA-CAM on rows x, y of X (B, P, K), as scikit-learn defines them
# (coef0 = 1, degree = 3, its defaults): (X, gamma) -> (B, P, P).
def _dot(X: Array) -> Array:
    return jnp.einsum("bpk,bqk->bpq", X, X)


def _rbf(X: Array, gamma) -> Array:
    sq = jnp.sum(X * X, axis=-1)
    dist = jnp.maximum(sq[:, :, None] + sq[:, None, :] - 2.0 * _dot(X), 0.0)
    return jnp.exp(-gamma * dist)


def _cosine(X: Array, gamma) -> Array:
    del gamma
    sq = jnp.sum(X * X, axis=-1, keepdims=True)
    unit = X / jnp.sqrt(jnp.where(sq > 0, sq, 1.0))  # zero rows stay zero, as in sklearn
    return _dot(unit)


KPCA_KERNELS: dict[str, Callable[[Array, Any], Array]] = {
    "linear": lambda X, gamma: _dot(X),
    "poly": lambda X, gamma: (gamma * _dot(X) + 1.0) ** 3,
    "rbf": _rbf,
    "sigmoid": lambda X, gamma: jnp.tanh(gamma * _dot(X) + 1.0),
    "cosine": _cosine,
}


def _kpcacam(inputs: CamInputs, *, kernel="sigmoid", gamma=None) -> Array:
    if not isinstance(kernel, str) or kernel not in KPCA_KERNELS:
        raise ValueError(
            f"kpcacam kernel must be one of {', '.join(KPCA_KERNELS)}; got {kernel!r} "
            "(under jit, pass it as a static argument)"
        )
    A = inputs.activations
    B, K = A.shape[0], A.shape[-1]
    X = A.reshape(B, -1, K)
    X = X - jnp.mean(X, axis=1, keepdims=True)  # each channel centred over the grid
    km = KPCA_KERNELS[kernel](X, 1.0 / K if gamma is None else gamma)
    # centre in feature space (sklearn's KernelCenterer)
    km = (
        km
        - jnp.mean(km, axis=1, keepdims=True)
        - jnp.mean(km, axis=2, keepdims=True)
        + jnp.mean(km, axis=(1, 2), keepdims=True)
    )
    values, vectors = jnp.linalg.eigh(km)  # ascending
    u = vectors[:, :, -1]
    top = jnp.take_along_axis(u, jnp.argmax(jnp.abs(u), axis=1)[:, None], axis=1)
    u = u * jnp.where(top < 0, -1.0, 1.0)  # sklearn's sign: the largest |entry| is positive
    L = (u * _safe_sqrt(values[:, -1])[:, None]).reshape(A.shape[:-1])
    return jnp.broadcast_to(L[..., None] / K, A.shape)


def _segeigencam(inputs: CamInputs) -> Array:
    assert inputs.gradients is not None
    X = jnp.abs(inputs.gradients) * inputs.activations
    X = X - jnp.mean(X, axis=spatial_axes(X), keepdims=True)  # centred, as pytorch-grad-cam
    flat = X.reshape(X.shape[0], -1, X.shape[-1])
    _, _, vt = jnp.linalg.svd(flat, full_matrices=False)
    v = vt[:, 0, :]
    projection = jnp.einsum("bpk,bk->bp", flat, v)
    # Sign correction (Chung and Ying 2025, eq. 13): the larger extreme is positive.
    flip = jnp.abs(jnp.min(projection, axis=1)) > jnp.abs(jnp.max(projection, axis=1))
    return _per_channel(v * jnp.where(flip, -1.0, 1.0)[:, None], X)


REFINE_EPS = 1e-8  # torch-cam's _normalize: (L - min) / (max - min + eps)


def _refinecam(
    inputs: Mapping[str, CamInputs], *, base="gradcam++", shape=None, eps=None, base_options=None
) -> Array:
    """RefineCAM: {layer: CamInputs} -> L (B, *grid), the product over layers of the base
    method's map, rectified, min-max scaled per image and resized (linear) to ``grid``."""
    spec = get_method(base)
    if spec.kind != "layer" or spec.fn is None:
        local = [n for n, m in REGISTRY.items() if m.kind == "layer" and m.fn is not None]
        raise ValueError(
            f"refinecam's base must be a method of kind 'layer' that needs no forward passes "
            f"({', '.join(local)}); got base={base!r} (kind {spec.kind!r}"
            f"{', forward passes' if spec.fn is None else ''})"
        )
    if len(inputs) < 2:
        raise ValueError(
            f"refinecam multiplies the maps of at least two layers; got {list(inputs)}. Build "
            "the probe for several layers, e.g. linen_probe(model, ['relu1', 'relu2'])"
        )
    grids = {layer: i.activations.shape[1:-1] for layer, i in inputs.items()}
    if len({len(g) for g in grids.values()}) != 1:
        raise ValueError(f"refinecam's layers must have as many spatial axes; got grids {grids}")
    if shape is None:
        target = tuple(max(sizes) for sizes in zip(*grids.values()))
    else:
        target = tuple(int(s) for s in shape)
        if len(target) != len(next(iter(grids.values()))) or min(target) < 1:
            raise ValueError(
                f"refinecam shape={shape!r} must give a positive size for each of the layers' "
                f"{len(next(iter(grids.values())))} spatial axes (grids {grids})"
            )
    options = dict(base_options or ())
    if eps is not None:
        options["eps"] = eps
    product = None
    for i in inputs.values():
        M = contributions(i.activations, i.gradients, spec.name, key=i.key, **options)
        L = minmax_per_image(jax.nn.relu(jnp.sum(M, axis=-1)), eps=REFINE_EPS)
        L = L if L.shape[1:] == target else upsample(L, target)
        product = L if product is None else product * L
    assert product is not None
    return product


def _legrad_map(G: Array) -> Array:
    """relu(G) averaged over the channels: LeGrad's map (B, *grid) of one block, with the
    probe's attention grid's channels heads x queries (ifa_jax.probes.tokens.attention_to_grid)."""
    return jnp.mean(jax.nn.relu(G), axis=-1)


def _legrad(inputs: CamInputs) -> Array:
    assert inputs.gradients is not None
    G = inputs.gradients
    return jnp.broadcast_to(_legrad_map(G)[..., None] / G.shape[-1], G.shape)


def _legradlayers(inputs: Mapping[str, CamInputs]) -> Array:
    """LeGrad over several blocks: {layer: CamInputs} -> the mean of their maps (B, *grid)."""
    grids = {layer: i.activations.shape[1:-1] for layer, i in inputs.items()}
    if len(set(grids.values())) != 1:
        raise ValueError(
            f"legradlayers averages maps on one grid; the layers' grids differ: {grids}. Tap "
            "attention probabilities of blocks with the same number of tokens"
        )
    maps = [_legrad_map(i.gradients) for i in inputs.values() if i.gradients is not None]
    return sum(maps[1:], maps[0]) / len(maps)


def _scorecam_forward(A: Array, passes: ForwardPasses) -> Array:
    return scorecam_weights(
        A, passes.x, passes.score_inputs, passes.target, chunk_size=passes.chunk_size
    )


def _ablation_forward(A: Array, passes: ForwardPasses) -> Array:
    return ablation_weights(
        A, passes.score_with_delta, passes.base_score, chunk_size=passes.chunk_size
    )


def _count_option(method: str, name: str, value) -> int:
    """An option that counts something (samples, classes): an int >= 1, else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{method} {name} must be an int >= 1; got {value!r}")
    return int(value)


def _scale_option(method: str, name: str, value) -> float:
    """A noise scale: a finite float >= 0, else a ValueError."""
    if not isinstance(value, (int, float, np.number)) or not 0 <= float(value) < float("inf"):
        raise ValueError(f"{method} {name} must be a finite number >= 0; got {value!r}")
    return float(value)


def _requires_index_target(method: str, passes: ForwardPasses, why: str) -> None:
    if not passes.indexed:
        raise ValueError(
            f"{method} {why}, so the target must be an output index (an int, an int array "
            "(B,) such as the labels, or 'predicted'); got a callable target"
        )


def layer_gradient(
    passes: ForwardPasses, x: Array | None = None, *, delta: Array | None = None, objective=None
) -> Array:
    """G (B, *spatial, K) = d objective / dA at the layer, by one vjp to the layer's delta
    (the parameters stay constants).

    x: inputs (B, *in, C), default ``passes.x``. delta: (B, *spatial, K) added to the
    layer's output, default zeros (then G is the probe's for the explained score).
    ``objective(logits (B, O)) -> (B,)``, default the explained score.
    """
    x = passes.x if x is None else x
    delta = jnp.zeros_like(passes.gradients) if delta is None else delta

    def total(d):
        logits = passes.logits_at(x, d)
        y = passes.score(logits, passes.target) if objective is None else objective(logits)
        return jnp.sum(y)

    return jax.grad(total)(delta)


def _shapleycam_forward(A: Array, passes: ForwardPasses) -> Array:
    # Forward over reverse at the layer: the jvp of G(delta) along A gives G and H A.
    G, HA = jax.jvp(lambda d: layer_gradient(passes, delta=d), (jnp.zeros_like(A),), (A,))
    return jnp.mean(G - 0.5 * HA, axis=spatial_axes(A))


FINER_EPS = 1e-9  # pytorch-grad-cam's FinerWeightedTarget


def finer_comparisons(logits: Array, target: Array, comparisons: int) -> Array:
    """(B, n) the n = min(comparisons, O - 1) classes whose logits are closest to the
    target's, nearest first (ties by class index); the target itself is never one."""
    n = min(comparisons, logits.shape[-1] - 1)
    own = take_target(logits, target)[:, None]
    distance = jnp.abs(logits - own)
    distance = jnp.where(jax.nn.one_hot(target, logits.shape[-1], dtype=bool), jnp.inf, distance)
    return jnp.argsort(distance, axis=-1, stable=True)[:, :n]


# FinerCAM's contrasts: pytorch-grad-cam's (the default) and torch-cam 0.5.0's, with each
# peer's default strength (alpha=None picks it), and the bases whose weights are per channel.
FINER_ALPHA = {"pgc": 1.0, "torchcam": 0.6}
FINER_BASES = ("gradcam", "gradcam++")


def finer_objective(logits: Array, target: Array, others: Array, alpha, objective="pgc") -> Array:
    """(B,) the contrast of the target c with the comparison classes j (B, n).

    ``"pgc"`` (pytorch-grad-cam's): sum_j p_j (y_c - alpha y_j) / (sum_j p_j + 1e-9),
    p = softmax(logits), differentiated through p too. ``"torchcam"`` (torch-cam 0.5.0's):
    y_c - alpha mean_j y_j.
    """
    y_c = take_target(logits, target)[:, None]  # 0 for a target outside [0, O) under jit
    y_j = jnp.take_along_axis(logits, others, axis=-1)
    if objective == "torchcam":
        return y_c[:, 0] - alpha * jnp.mean(y_j, axis=-1)
    p = jnp.take_along_axis(jax.nn.softmax(logits, axis=-1), others, axis=-1)
    return jnp.sum(p * (y_c - alpha * y_j), axis=-1) / (jnp.sum(p, axis=-1) + FINER_EPS)


def _finer_base(base) -> str:
    try:
        name = canonical_method(base)
    except ValueError:
        name = None
    if name not in FINER_BASES:
        why = (
            ": LayerCAM weights every cell (relu(G) element-wise), and a forward-pass method "
            "gives one weight per channel"
            if name == "layercam"
            else ""
        )
        raise ValueError(f"finercam base must be 'gradcam' or 'gradcam++'; got {base!r}{why}")
    return name


def _finercam_forward(
    A: Array,
    passes: ForwardPasses,
    *,
    alpha=None,
    comparisons=3,
    objective="pgc",
    base="gradcam",
    eps=None,
) -> Array:
    _requires_index_target("finercam", passes, "contrasts the target with its nearest classes")
    comparisons = _count_option("finercam", "comparisons", comparisons)
    if objective not in FINER_ALPHA:
        raise ValueError(
            f"finercam objective must be 'pgc' (pytorch-grad-cam's, the default) or "
            f"'torchcam' (torch-cam's y_c - alpha mean_j y_j); got {objective!r}"
        )
    base = _finer_base(base)
    if eps is not None and base != "gradcam++":
        raise ValueError(
            f"finercam eps={eps!r} is GradCAM++'s; it applies with base='gradcam++' only"
        )
    if passes.logits.shape[-1] < 2:
        raise ValueError(
            f"finercam needs at least 2 model outputs to contrast; the model has "
            f"{passes.logits.shape[-1]}"
        )
    alpha = FINER_ALPHA[objective] if alpha is None else alpha
    others = finer_comparisons(passes.logits, passes.target, comparisons)
    G = layer_gradient(
        passes,
        objective=lambda logits: finer_objective(logits, passes.target, others, alpha, objective),
    )
    if base == "gradcam++":
        w = _gradcampp_weights(A, G, GRADCAMPP_EPS if eps is None else eps)
        return w.reshape(A.shape[0], A.shape[-1])
    return jnp.mean(G, axis=spatial_axes(A))  # GradCAM on the contrast, both peers' default


def _classic_cam_forward(A: Array, passes: ForwardPasses, *, head=None) -> Array:
    if head is None:
        # The head's weights as the layer sees them: exact for global average pooling +
        # a dense head, where G_k = W[k, c] / cells at every cell.
        return jnp.sum(passes.gradients, axis=spatial_axes(A))
    _requires_index_target("cam", passes, "reads the head's column of the target class")
    W = jnp.asarray(head(passes.variables) if callable(head) else head)
    K, outputs = A.shape[-1], passes.logits.shape[-1]
    if W.shape != (K, outputs):
        raise ValueError(
            f"cam head= must be the dense head's weights (K, O) = ({K}, {outputs}) for the "
            f"layer's {K} channels and the model's {outputs} outputs; got shape {W.shape}. "
            "Pass the kernel array or a callable variables -> kernel, e.g. "
            "head=lambda v: v['params']['head']['kernel']"
        )
    return jnp.take(W, passes.target, axis=1).T.astype(A.dtype)


SSCAM_SAMPLES, SSCAM_STD = 35, 2.0  # torch-cam's SSCAM defaults
ISCAM_SAMPLES = 10  # torch-cam's ISCAM default
SMOOTH_SAMPLES, SMOOTH_STD = 4, 0.3  # torch-cam's SmoothGradCAMpp defaults


def _sscam_forward(A: Array, passes: ForwardPasses, *, samples=SSCAM_SAMPLES, std=SSCAM_STD):
    samples = _count_option("sscam", "samples", samples)
    std = _scale_option("sscam", "std", std)
    key = passes.key
    assert key is not None

    def noisy(masks, channels, i):
        def noise(k):  # drawn per channel and sample: independent of chunk_size
            k = jax.random.fold_in(jax.random.fold_in(key, k), i)
            return jax.random.normal(k, masks.shape[1:], masks.dtype)

        return masks + std * jax.vmap(noise)(channels)

    return scorecam_weights(
        A,
        passes.x,
        passes.score_inputs,
        passes.target,
        chunk_size=passes.chunk_size,
        samples=samples,
        perturb=noisy,
    )


def iscam_coefficients(samples: int) -> Array:
    """(samples,) the mask scales of IS-CAM, torch-cam's: c_i = sum_{j<=i} j / N, i = 1..N."""
    return jnp.cumsum(jnp.arange(1, samples + 1) / samples)


def _iscam_forward(A: Array, passes: ForwardPasses, *, samples=ISCAM_SAMPLES):
    coefficients = iscam_coefficients(_count_option("iscam", "samples", samples))
    return scorecam_weights(
        A,
        passes.x,
        passes.score_inputs,
        passes.target,
        chunk_size=passes.chunk_size,
        samples=len(coefficients),
        perturb=lambda masks, channels, i: coefficients[i].astype(masks.dtype) * masks,
    )


def _smoothgradcampp_forward(
    A: Array, passes: ForwardPasses, *, samples=SMOOTH_SAMPLES, std=SMOOTH_STD, eps=GRADCAMPP_EPS
):
    samples = _count_option("smoothgradcam++", "samples", samples)
    std = _scale_option("smoothgradcam++", "std", std)
    key, x = passes.key, passes.x
    assert key is not None
    dtype = jnp.result_type(x.dtype, float)

    def add_moments(i, moments):
        noisy = x + std * jax.random.normal(jax.random.fold_in(key, i), x.shape, dtype)
        g = layer_gradient(passes, noisy)
        return tuple(m + g**p for p, m in enumerate(moments, start=1))

    zeros = jnp.zeros_like(passes.gradients)
    g1, g2, g3 = (m / samples for m in jax.lax.fori_loop(0, samples, add_moments, (zeros,) * 3))
    alpha = jnp.where(g2 != 0, g2 / (2.0 * g2 + _grid_sum(A) * g3 + eps), 0.0)
    return jnp.sum(jax.nn.relu(g1) * alpha, axis=spatial_axes(A))


_G = frozenset({"gradients"})
_F = frozenset({"forward_passes"})
_FK = frozenset({"forward_passes", "key"})

# The table. Adding a method is one entry here (and its reference in tests/reference.py).
for _method in (
    Method(
        "gradcam",
        _gradcam,
        needs=_G,
        summary="w_k = grid mean of G_k (Selvaraju et al. 2017)",
    ),
    Method(
        "gradcam++",
        _gradcampp,
        aliases=("gradcampp", "gradcamplusplus"),
        needs=_G,
        options={"eps": GRADCAMPP_EPS},
        summary="w_k = sum relu(G) alpha, alpha = G^2 / (2 G^2 + sum(A_k) G^3 + eps), "
        "0 where G = 0 (Chattopadhay et al. 2018)",
    ),
    Method(
        "xgradcam",
        _xgradcam,
        needs=_G,
        options={"eps": XGRADCAM_EPS},
        summary="w_k = sum(G_k A_k) / (sum(A_k) + eps) (Fu et al. 2020)",
    ),
    Method(
        "hirescam",
        _hirescam,
        aliases=("fullcam",),
        needs=_G,
        summary="w_k = G_k element-wise (Draelos and Carin 2020)",
    ),
    Method(
        "layercam",
        _layercam,
        needs=_G,
        summary="w_k = relu(G_k) element-wise (Jiang et al. 2021)",
    ),
    Method(
        "eigencam",
        _eigencam,
        summary="w_k = v_k, the first right singular vector of A (P, K), uncentred, "
        "signed so sum(A v) >= 0 (Muhammad and Yeasin 2020)",
    ),
    Method(
        "eigengradcam",
        _eigengradcam,
        needs=_G,
        summary="M_k = v_k (G A)_k, v from G * A as in eigencam",
    ),
    Method(
        "gradcamelementwise",
        _elementwise,
        aliases=("elementwise",),
        needs=_G,
        summary="M_k = relu(G_k A_k) (pytorch-grad-cam's GradCAMElementWise)",
    ),
    Method(
        "randomcam",
        _randomcam,
        aliases=("random",),
        needs=frozenset({"key"}),
        summary="w ~ uniform[-1, 1] per sample and channel, from key= (a baseline)",
    ),
    Method(
        "fem",
        _fem,
        options={"k": FEM_K},
        summary="M_k = mean(A_k) [A_k > mean(A_k) + k std(A_k)] (Fuad et al. 2020)",
    ),
    Method(
        "kpcacam",
        _kpcacam,
        aliases=("kpca",),
        options={"kernel": "sigmoid", "gamma": None},
        channelwise=False,
        summary="first kernel-PCA component of the grid cells' centred channel vectors, "
        "gamma None = 1/K (Karmani et al. 2024); M_k = L / K",
    ),
    Method(
        "segeigencam",
        _segeigencam,
        needs=_G,
        summary="M_k = s v_k X_k, X = |G| A centred over the grid (as pytorch-grad-cam; so "
        "every importance is 0), v its first right singular vector, s = -1 where "
        "|min L| > |max L| (Chung and Ying 2025)",
    ),
    Method(
        "scorecam",
        None,
        aliases=("score",),
        needs=frozenset({"forward_passes"}),
        forward=_scorecam_forward,
        summary="w = softmax over k of the scores of inputs masked by A_k (Wang et al. 2020)",
    ),
    Method(
        "ablationcam",
        None,
        aliases=("ablation",),
        needs=frozenset({"forward_passes"}),
        forward=_ablation_forward,
        summary="w_k = y - y^(k), channel k zeroed (Desai and Ramaswamy 2020)",
    ),
    Method(
        "cam",
        None,
        aliases=("classiccam",),
        needs=_F,
        forward=_classic_cam_forward,
        options={"head": None},
        summary="w_k = W[k, c], the dense head's weights (K, O) after global pooling, "
        "head= an array or variables -> W; None reads W off G (Zhou et al. 2016)",
    ),
    Method(
        "shapleycam",
        None,
        needs=_F,
        forward=_shapleycam_forward,
        summary="w_k = grid mean of (G - H A / 2)_k, H A the Hessian-vector product of y "
        "at the layer (Cai et al. 2025)",
    ),
    Method(
        "finercam",
        None,
        needs=_F,
        forward=_finercam_forward,
        options={
            "alpha": None,
            "comparisons": 3,
            "objective": "pgc",
            "base": "gradcam",
            "eps": None,
        },
        summary="GradCAM (or base='gradcam++') of a contrast of y_c with the classes j whose "
        "logits are nearest: objective 'pgc' sum_j p_j (y_c - alpha y_j) / sum_j p_j "
        "(pytorch-grad-cam's, alpha None = 1) or 'torchcam' y_c - alpha mean_j y_j "
        "(torch-cam's, alpha None = 0.6) (Zhang et al. 2025)",
    ),
    Method(
        "sscam",
        None,
        aliases=("smoothscorecam",),
        needs=_FK,
        forward=_sscam_forward,
        options={"samples": SSCAM_SAMPLES, "std": SSCAM_STD},
        summary="ScoreCAM with scores averaged over masks + N(0, std^2) noise, key= "
        "(Wang et al. 2020, SS-CAM)",
    ),
    Method(
        "iscam",
        None,
        aliases=("integratedscorecam",),
        needs=_F,
        forward=_iscam_forward,
        options={"samples": ISCAM_SAMPLES},
        summary="ScoreCAM with scores averaged over masks scaled by c_i = sum_{j<=i} j/N "
        "(Naidu et al. 2020)",
    ),
    Method(
        "smoothgradcam++",
        None,
        aliases=("smoothgradcampp",),
        needs=_FK,
        forward=_smoothgradcampp_forward,
        options={"samples": SMOOTH_SAMPLES, "std": SMOOTH_STD, "eps": GRADCAMPP_EPS},
        summary="GradCAM++ from G, G^2, G^3 averaged over inputs + N(0, std^2) noise, key= "
        "(Omeiza et al. 2019)",
    ),
    Method(
        "refinecam",
        _refinecam,
        needs=_G,
        kind="layers",
        options={"base": "gradcam++", "shape": None, "eps": None, "base_options": None},
        summary="product over >= 2 layers of the base map (a local kind-'layer' method; eps, "
        "base_options go to it), rectified, min-max scaled per image (eps 1e-8) and resized "
        "(linear) to the per-axis largest layer grid or shape=; not rescaled after the "
        "product, which the peers do (RefineCAM, arXiv 2605.14641)",
    ),
    Method(
        "legrad",
        _legrad,
        needs=_G,
        channelwise=False,
        summary="L = channel mean of relu(G), G at one block's attention probabilities on "
        "ifa_jax.probes.tokens.attention_to_grid (keys x heads*queries); M_k = L / K; with "
        "ifa_jax.probes.legrad.legrad_probe's layer score, LeGrad of one block (Bousselham et al. "
        "2024)",
    ),
    Method(
        "legradlayers",
        _legradlayers,
        needs=_G,
        kind="layers",
        summary="mean over the probe's layers (one grid) of legrad's L: LeGrad of several "
        "blocks with ifa_jax.probes.legrad.legrad_probe (torch-cam's, before its min-max scaling)",
    ),
):
    register_method(_method)


# --------------------------------------------------------------------------- from M to a CAM


def contributions(
    A: Array,
    G: Array | None = None,
    method: str = "gradcam",
    *,
    weights: Array | None = None,
    key: Array | None = None,
    **options,
) -> Array:
    """Per-channel contribution maps M (B, *spatial, K) of one CAM method.

    ``weights`` (B, K) are required for the forward methods (scorecam, ablationcam) and
    override the method's own weights when given for any method. ``key`` (keyword-only)
    is the PRNG key of methods that need one (randomcam); others ignore it. ``options``
    are the method's keyword options (``eps`` of gradcam++ and xgradcam, ``k`` of fem,
    ``kernel`` and ``gamma`` of kpcacam; see ``REGISTRY[name].options``).
    """
    spec = get_method(method)
    opts = method_options(spec, options)
    if spec.kind != "layer":
        fix = {
            "layers": "cams.cam_layers(A_dict, G_dict, method) or ifa_jax.explain with a probe "
            "of several layers",
            "input": "ifa_jax.explain(probe, variables, x, target, method)",
        }[spec.kind]
        raise ValueError(
            f"{spec.name} is a method of kind {spec.kind!r}: it maps "
            f"{'several layers' if spec.kind == 'layers' else 'the model'} to one map, not one "
            f"layer's (A, G) to channel contributions; use {fix}"
        )
    spatial_axes(A)
    if weights is not None:
        if weights.shape != (A.shape[0], A.shape[-1]):
            raise ValueError(
                f"weights must have shape (B, K) = {(A.shape[0], A.shape[-1])}; got {weights.shape}"
            )
        return _per_channel(weights, A)
    if spec.fn is None:
        raise ValueError(
            f"{spec.name} needs forward passes through the model, which cam() cannot run: "
            "use ifa_jax.explain, or compute its weights (B, K) with "
            "ifa_jax.explaining.forward_weights (or cams.scorecam_weights / "
            "cams.ablation_weights) and pass weights=..."
        )
    if "gradients" in spec.needs:
        if G is None:
            raise ValueError(f"{spec.name} needs the gradients G; got G=None")
        if G.shape != A.shape:
            raise ValueError(
                f"gradients have shape {G.shape} but activations {A.shape}; they must match"
            )
    require_key(spec, key)
    return spec.fn(CamInputs(A, G, key), **opts)


def map_result(L: Array) -> CamResult:
    """A map without channels, L (B, *grid), as a CamResult with K = 1 (methods of kind
    ``"layers"`` and ``"input"``): contributions L[..., None], importance (B, 1)."""
    return reduce(L[..., None])


def cam_layers(
    A: Mapping[str, Array],
    G: Mapping[str, Array] | None = None,
    method: str = "refinecam",
    *,
    key: Array | None = None,
    **options,
) -> CamResult:
    """One map from several layers, for a method of kind ``"layers"`` (RefineCAM, LeGrad).

    A, G: ``{layer: (B, *spatial_l, K_l)}``, what a probe of several layers returns (G may
    be None for methods that do not need it). ``key`` and ``options`` as in :func:`cam`.
    Returns :func:`map_result` of the method's map L (B, *grid), on the grid the method
    chooses (see its entry's summary).
    """
    spec = get_method(method)
    if spec.kind != "layers":
        raise ValueError(
            f"cam_layers takes a method of kind 'layers' ({', '.join(_Names(kind='layers'))}); "
            f"{spec.name} is of kind {spec.kind!r}: use cams_per_layer for one map per layer"
        )
    for name, given in (("A", A), ("G", G)):
        if given is not None and not isinstance(given, Mapping):
            raise ValueError(
                f"cam_layers takes {name} as a dict {{layer: array}} (what a probe of several "
                f"layers returns); got {type(given).__name__}"
            )
    if not A:
        raise ValueError(f"{spec.name} needs at least one layer; got no activations")
    if "gradients" in spec.needs:
        if G is None or set(G) != set(A):
            raise ValueError(
                f"{spec.name} needs the gradients of every layer: G's layers "
                f"{None if G is None else sorted(G)} differ from A's {sorted(A)}"
            )
        for layer in A:
            if G[layer].shape != A[layer].shape:
                raise ValueError(
                    f"layer {layer!r}: gradients {G[layer].shape} and activations "
                    f"{A[layer].shape} must have the same shape"
                )
    for a in A.values():
        spatial_axes(a)
    require_key(spec, key)
    opts = method_options(spec, options)
    inputs = {layer: CamInputs(a, None if G is None else G[layer], key) for layer, a in A.items()}
    return map_result(spec.fn(inputs, **opts))  # type: ignore[misc]


def _check_mask(mask: Array, batch: int, channels: int) -> Array:
    mask = jnp.asarray(mask)
    if mask.shape not in ((channels,), (batch, channels)):
        raise ValueError(
            f"channel mask has shape {mask.shape}; it must be ({channels},) for the layer's "
            f"{channels} channels, or ({batch}, {channels}) for one mask per sample"
        )
    return jnp.broadcast_to(mask, (batch, channels)).astype(jnp.result_type(float))


def reduce(M: Array, mask: Array | None = None) -> CamResult:
    """From contributions M (B, *spatial, K) to the raw CAM, importances and max/min."""
    axes = spatial_axes(M)
    masked = M if mask is None else _per_channel(_check_mask(mask, M.shape[0], M.shape[-1]), M)
    L = jnp.sum(masked, axis=-1)
    s = jnp.sum(masked, axis=axes)
    flat = L.reshape(L.shape[0], -1)
    return CamResult(M, L, s, jnp.max(flat, axis=1), jnp.min(flat, axis=1))


def cam(
    A: Array,
    G: Array | None = None,
    method: str = "gradcam",
    mask: Array | None = None,
    *,
    weights: Array | None = None,
    key: Array | None = None,
    **options,
) -> CamResult:
    """Contributions, raw CAM, importances and max/min for one method.

    ``weights``, ``key`` and the method's ``options`` (e.g. ``eps=``) as in
    :func:`contributions`. See the module doc.
    """
    return reduce(contributions(A, G, method, weights=weights, key=key, **options), mask)


def upsample(
    L: Array | np.ndarray, spatial_shape: tuple[int, ...], method: str = "linear"
) -> Array:
    """Resize CAMs (B, *spatial) to the input grid (B, *spatial_shape), each size >= 1."""
    try:
        spatial_shape = tuple(spatial_shape)
    except TypeError:
        raise ValueError(
            f"spatial_shape must be a tuple of sizes, one per spatial axis (e.g. (28, 28)); "
            f"got {spatial_shape!r}"
        ) from None
    for n in spatial_shape:
        positive_int(f"every size of spatial_shape {spatial_shape}", n, "cells")
    if len(spatial_shape) != L.ndim - 1:
        raise ValueError(
            f"spatial_shape {tuple(spatial_shape)} has {len(spatial_shape)} axes "
            f"but the CAMs {L.shape} have {L.ndim - 1}"
        )
    return jax.image.resize(L, (L.shape[0], *spatial_shape), method=method)


def scorecam_weights(
    A: Array,
    x: Array,
    score_fn: Callable[[Array, Array], Array],
    target: Array,
    *,
    chunk_size: int = 16,
    samples: int = 1,
    perturb: Callable[[Array, Array, Array], Array] | None = None,
) -> Array:
    """ScoreCAM weights (B, K): softmax over channels of the target score of masked inputs.

    Each channel A_k is upsampled to the input grid, min-max scaled to [0, 1] per sample
    and multiplies the input. ``score_fn(x (N, *in, C), target (N,)) -> (N,)`` scores
    masked inputs; ``target`` (B,) is each sample's explained output. ``chunk_size``
    channels go through the model together, flattened into one batch of chunk_size * B
    inputs (flattening, not vmapping, keeps the model's ops in their fast batched form).
    As in pytorch-grad-cam, weights are the softmax of the scores over channels.
    ``perturb(masks (chunk, B, *in), channels (chunk,) int, i) -> masks`` changes the masks
    of variant i of ``samples`` (SS-CAM's noise, IS-CAM's scales); the scores are averaged
    over the variants before the softmax.
    """
    if A.shape[0] != x.shape[0]:
        raise ValueError(f"activations have batch {A.shape[0]} but inputs {x.shape[0]}")
    if A.ndim != x.ndim:
        raise ValueError(
            f"ScoreCAM-style masks upsample the layer's grid {A.shape[1:-1]} to the input's "
            f"{x.shape[1:-1]}, so both need as many spatial axes; got {A.ndim - 2} and "
            f"{x.ndim - 2}. A token layer (B, T, D) needs the probe's reshape=, e.g. "
            "reshape=ifa_jax.tokens_to_grid(prefix=1)"
        )
    B, K = A.shape[0], A.shape[-1]
    chunk = min(positive_int("chunk_size", chunk_size, "channels per model call"), K)
    groups = -(-K // chunk)
    per_channel = jnp.moveaxis(A, -1, 0)  # (K, B, *spatial)
    per_channel = jnp.pad(per_channel, [(0, groups * chunk - K)] + [(0, 0)] * (A.ndim - 1))
    per_group = per_channel.reshape(groups, chunk, *per_channel.shape[1:])
    channels = jnp.arange(groups * chunk).reshape(groups, chunk)
    tiled_target = jnp.tile(target, chunk)

    def one_group(group):  # a: (chunk, B, *spatial), ks: (chunk,)
        a, ks = group
        up = jax.image.resize(a, (chunk, B, *x.shape[1:-1]), method="linear")
        # exact min-max (eps=0) of each upsampled channel, per sample
        up = minmax_per_image(up.reshape(chunk * B, *up.shape[2:]), eps=0.0).reshape(up.shape)

        def one_variant(i):
            masks = up if perturb is None else perturb(up, ks, i)
            masked = x[None] * masks[..., None]  # (chunk, B, *in, C)
            scores = score_fn(masked.reshape(chunk * B, *x.shape[1:]), tiled_target)
            return scores.reshape(chunk, B)

        if samples == 1:
            return one_variant(0)
        return jnp.mean(jax.lax.map(one_variant, jnp.arange(samples)), axis=0)

    scores = jax.lax.map(one_group, (per_group, channels)).reshape(groups * chunk, B)[:K]
    return jax.nn.softmax(scores.T, axis=-1)


def ablation_weights(
    A: Array, ablated_score_fn: Callable[[Array], Array], base_score: Array, *, chunk_size: int = 16
) -> Array:
    """AblationCAM weights (B, K): the drop of the target score when channel k is zeroed.

    ``ablated_score_fn(delta (B, *spatial, K)) -> (B,)`` runs the model with ``delta``
    added to the layer's output; the ablation of channel k is ``delta = -A * e_k``.
    w_k = y - y^(k), in the score's own units (pytorch-grad-cam divides by y, which is
    ill-posed for logits near zero and would undo the common scale; we do not).
    """
    channels = A.shape[-1]
    chunk_size = positive_int("chunk_size", chunk_size, "channels per model call")

    def one_channel(k):
        return base_score - ablated_score_fn(-A * jax.nn.one_hot(k, channels, dtype=A.dtype))

    return jax.lax.map(one_channel, jnp.arange(channels), batch_size=chunk_size).T


def cams_per_layer(
    A: Mapping[str, Array],
    G: Mapping[str, Array] | None = None,
    method: str = "gradcam",
    mask: Mapping[str, Array] | None = None,
    *,
    weights: Mapping[str, Array] | None = None,
    key: Array | None = None,
    **options,
) -> dict[str, CamResult]:
    """:func:`cam` for every layer of a multi-layer probe: ``{layer: CamResult}``.

    A, G: the dicts ``{layer: (B, *spatial_l, K_l)}`` a probe built for several layers
    returns. ``mask`` and ``weights`` are dicts too (layers differ in K): ``{layer: (K_l,)
    or (B, K_l)}`` and ``{layer: (B, K_l)}``; a layer missing from them gets None. ``key``
    and ``options`` are passed to every layer. Combine the maps with :func:`fuse`.
    """
    for name, given in (("A", A), ("G", G), ("mask", mask), ("weights", weights)):
        if given is not None and not isinstance(given, Mapping):
            raise ValueError(
                f"cams_per_layer takes {name} as a dict {{layer: array}} (what a probe of "
                f"several layers returns); got {type(given).__name__}. For one layer use cam()"
            )
    if G is not None and set(G) != set(A):
        raise ValueError(
            f"G's layers {sorted(G)} differ from A's {sorted(A)}; pass both from one probe call"
        )
    return {
        layer: cam(
            A[layer],
            None if G is None else G[layer],
            method,
            None if mask is None else mask.get(layer),
            weights=None if weights is None else weights.get(layer),
            key=key,
            **options,
        )
        for layer in A
    }


def fuse(
    cams: Mapping[str, Array | CamResult] | Sequence[Array | CamResult] | CamResult,
    shape: Sequence[int],
    *,
    how: str = "mean",
    scale: Any = None,
) -> Array:
    """Several layers' CAMs combined on one grid: (B, *shape).

    cams: ``{layer: L (B, *spatial_l)}`` (e.g. ``{k: r.cam for k, r in
    cams_per_layer(A, G).items()}``) or a sequence of such maps; a CamResult (e.g.
    ``cams_per_layer``'s dict as it is) stands for its map. Each is put on its
    common scale when ``scale`` is given (an :class:`ifa_jax.scale.Scale` for all, or a
    dict ``{layer: Scale}``; applied as :func:`ifa_jax.scale.apply_scale`, unclipped, on the
    layer's own grid, where the scale was measured), then upsampled to ``shape``
    (:func:`upsample`, linear), then combined per cell: ``how`` = "mean" (as the peers
    do), "max" or "sum". Without a scale the raw maps are combined as they are.
    """
    combine = {"mean": jnp.mean, "max": jnp.max, "sum": jnp.sum}
    if how not in combine:
        raise ValueError(f"how={how!r} is not one of {tuple(combine)}")
    if isinstance(cams, CamResult):
        cams = [cams]
    if isinstance(cams, Mapping):
        items = list(cams.items())
    elif isinstance(cams, (list, tuple)):
        items = list(enumerate(cams))
    else:
        raise ValueError(
            f"fuse takes a dict {{layer: CAM (B, *spatial)}} or a list of CAMs; got "
            f"{type(cams).__name__}. For one CAM use ifa_jax.cams.upsample"
        )
    if not items:
        raise ValueError("fuse needs at least one CAM; got none")
    # A CamResult (what cams_per_layer gives) stands for its map.
    items = [(name, L.cam if isinstance(L, CamResult) else L) for name, L in items]
    batches = {name: jnp.shape(L)[0] if jnp.ndim(L) else None for name, L in items}
    if len(set(batches.values())) != 1:
        raise ValueError(f"the CAMs must share their batch size (B, *spatial); got {batches}")
    if isinstance(scale, Mapping):
        if not isinstance(cams, Mapping):
            raise ValueError("a dict of scales needs the CAMs as a dict keyed by the same layers")
        missing = [name for name, _ in items if name not in scale]
        if missing:
            raise ValueError(f"scale has no entry for layer(s) {missing}; give one Scale per layer")
        scales = [scale[name] for name, _ in items]
    else:
        scales = [scale] * len(items)
    maps = []
    for (name, L), s in zip(items, scales):
        L = jnp.asarray(L)
        if s is not None:
            # ifa_jax.scale.apply_scale's map (cams sits below scale in the layer order).
            if getattr(s, "mode", None) not in ("norm", "tanh"):
                raise ValueError(
                    f"scale for layer {name!r} must be an ifa_jax.scale.Scale (mode 'norm' or "
                    f"'tanh'); got {s!r}"
                )
            L = jax.nn.relu(L) if s.remove_negative else L
            L = (L - s.vmin) / (s.vmax - s.vmin) if s.mode == "norm" else jnp.tanh(s.a * L + s.b)
        maps.append(upsample(L, tuple(shape)))
    return combine[how](jnp.stack(maps), axis=0)

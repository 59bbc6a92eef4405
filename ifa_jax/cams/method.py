"""What a CAM method is: its inputs, its function's call signature per kind, its entry.

A method maps from one of three things (its *kind*), and its entry type says which:

* :class:`LayerMethod` (kind ``"layer"``): one layer's A (and G, or forward passes at it)
  -> contributions M (B, *spatial, K); its ``fn`` is a :class:`LayerFn`, or its
  ``forward`` a :class:`ForwardFn` giving weights (B, K).
* :class:`LayersMethod` (kind ``"layers"``): several layers of one probe -> one map
  L (B, *grid) (RefineCAM, multi-block LeGrad); its ``fn`` is a :class:`LayersFn`.
* :class:`InputMethod` (kind ``"input"``): the model itself -> one map L (B, *spatial_in)
  at input resolution (FullGrad, SESS); its ``fn`` is an :class:`InputFn`.

The call signatures are ``typing.Protocol`` classes, so a type checker checks a method's
function where its entry is built. A method's options are keyword-only parameters with
defaults after the positional inputs (``def fn(inputs, /, *, eps=1e-6)``); the entry's
``options`` declares them again with the defaults callers see.

``Method`` is the base of the three; ``Method(name, fn, ..., kind=...)`` builds the entry
type of ``kind`` (``"layer"`` by default), as before the kinds had types.

Examples:
    A method of one layer, ``M = relu(G) * A``, registered for the block:

    >>> import jax, jax.numpy as jnp
    >>> from ifa_jax import cams
    >>> A = jnp.arange(96.0).reshape(2, 4, 4, 3) % 5             # (B, H, W, K)
    >>> G = jnp.cos(jnp.arange(96.0)).reshape(2, 4, 4, 3)
    >>> def posgrad(inputs):
    ...     return jax.nn.relu(inputs.gradients) * inputs.activations
    >>> method = cams.LayerMethod("posgrad", posgrad, needs=frozenset({"gradients"}),
    ...                           summary="M = relu(G) * A")
    >>> method.kind, method.channelwise
    ('layer', True)
    >>> with cams.registered(method):
    ...     print(cams.cam(A, G, "posgrad").cam.shape)
    (2, 4, 4)
    >>> "posgrad" in cams.METHODS
    False
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple, Protocol

import jax

Array = jax.Array

# What a method may need beyond the activations A:
#   gradients       G = dy/dA from the probe;
#   forward_passes  the model itself: extra runs, derivatives at the layer, its parameters
#                   or the explained target (its weights come from LayerMethod.forward);
#   key             a PRNG key, passed as key= (never global random state).
NEEDS = ("gradients", "forward_passes", "key")

# What a method maps from; see the module doc.
KINDS = ("layer", "layers", "input")


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


class LayerFn(Protocol):
    """``fn(inputs, /, **options) -> M (B, *spatial, K)``: one layer's contributions."""

    def __call__(self, inputs: CamInputs, /) -> Array:
        """The call signature (options are keyword-only parameters with defaults)."""
        ...


class ForwardFn(Protocol):
    """``forward(A (B, *spatial, K), passes, /, **options) -> w (B, K)``: channel weights
    from model runs."""

    def __call__(self, activations: Array, passes: ForwardPasses, /) -> Array:
        """The call signature (options are keyword-only parameters with defaults)."""
        ...


class LayersFn(Protocol):
    """``fn({layer: inputs}, /, **options) -> L (B, *grid)``: one map from several layers."""

    def __call__(self, inputs: Mapping[str, CamInputs], /) -> Array:
        """The call signature (options are keyword-only parameters with defaults)."""
        ...


class InputFn(Protocol):
    """``fn(model, /, **options) -> L (B, *spatial_in)``: one map at input resolution."""

    def __call__(self, model: ModelInputs, /) -> Array:
        """The call signature (options are keyword-only parameters with defaults)."""
        ...


def normalise(name: str) -> str:
    """A method's spelling as the table matches it: lower case, no ``-`` or ``_``."""
    return name.lower().replace("-", "").replace("_", "")


def _is_peer(peer: object) -> bool:
    """Whether ``peer`` is ``"library/Name"``: two non-empty parts, no white space."""
    if not isinstance(peer, str) or peer != "".join(peer.split()):
        return False
    library, _, name = peer.partition("/")
    return bool(library and name)


@dataclasses.dataclass(frozen=True, eq=False)
class Method:
    """One CAM method: one entry of :data:`ifa_jax.cams.REGISTRY` (the base of
    :class:`LayerMethod`, :class:`LayersMethod` and :class:`InputMethod`).

    name: canonical name, lower case without ``-`` or ``_`` (``"gradcam++"``).
    fn: the method's function, of its kind's signature (see the module doc).
    aliases: other names (matched like ``name``: case, ``-`` and ``_`` ignored).
    needs: a subset of :data:`NEEDS`.
    options: keyword options of ``fn`` (or ``forward``) with their defaults; callers
    override them by keyword (``cam(A, G, "gradcam++", eps=1e-7)``).
    forward: for a layer method that needs ``"forward_passes"``, its
    :class:`ForwardFn` (weights (B, K) with ``M_k = w_k * A_k``); None otherwise.
    channelwise: True when ``M_k`` is channel k's own share of the CAM (importances and
    channel masks mean something); False when the map is not a sum over channels and
    ``M`` spreads it evenly, ``M_k = L / K``.
    summary: the formula in one line, with its source.
    kind: one of :data:`KINDS`, fixed by the entry's type. Maps of the kinds ``"layers"``
    and ``"input"`` have no channels: their CamResult holds ``L[..., None]`` (K = 1).
    peers: the peer libraries' maps the method is tested against, each
    ``"library/Name"`` (``"pytorch-grad-cam/GradCAM"``, ``"torch-cam/LayerCAM"``); ``()``
    for none. A string is one peer. The built-ins' peers are exactly the comparisons of
    the test suite's golden data (a test checks both directions).
    peer_note: where and how the method deliberately differs from its peers, or why a
    peer's map is not compared (``""`` when it agrees as it is).

    Entries compare by identity: jitted functions are keyed on the entry, so a replaced
    method is traced anew.
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
    peers: tuple[str, ...] = ()
    peer_note: str = ""

    # what a method of this type may need
    allowed_needs: ClassVar[frozenset[str]] = frozenset(NEEDS)

    def __new__(cls, *args: Any, **kwargs: Any) -> Method:
        """``Method(...)`` builds the entry type of its ``kind``; a subclass builds itself."""
        if cls is Method:  # Method(..., kind=...) builds the entry type of that kind
            kind = kwargs.get("kind", args[8] if len(args) > 8 else "layer")
            if kind not in _KIND_TYPES:
                raise ValueError(f"method {args[:1] or kwargs.get('name')}: kind {kind!r} "
                                 f"is not one of {KINDS}")  # fmt: skip
            cls = _KIND_TYPES[kind]
        return object.__new__(cls)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name or normalise(self.name) != self.name:
            raise ValueError(
                f"method name {self.name!r} must be a non-empty lower-case string without "
                f"'-' or '_' (e.g. {normalise(str(self.name))!r}); spellings go in aliases"
            )
        object.__setattr__(self, "aliases", tuple(normalise(a) for a in self.aliases))
        peers = (self.peers,) if isinstance(self.peers, str) else tuple(self.peers)
        bad = [p for p in peers if not _is_peer(p)]
        if bad:
            raise ValueError(
                f"method {self.name!r}: peers are 'library/Name' strings "
                f"(e.g. 'pytorch-grad-cam/GradCAM'); got {bad}"
            )
        object.__setattr__(self, "peers", peers)
        needs = (self.needs,) if isinstance(self.needs, str) else self.needs
        object.__setattr__(self, "needs", frozenset(needs))
        object.__setattr__(self, "options", types.MappingProxyType(dict(self.options)))
        unknown = sorted(self.needs - set(NEEDS))
        if unknown:
            raise ValueError(
                f"method {self.name!r} needs {unknown}, which nothing supplies; "
                f"needs must be a subset of {NEEDS}"
            )
        expected = _KIND_OF.get(type(self))
        if expected is not None and self.kind != expected:
            raise ValueError(
                f"method {self.name!r}: a {type(self).__name__} is of kind {expected!r}; got "
                f"kind={self.kind!r} (leave kind out, or build the entry type of that kind)"
            )


@dataclasses.dataclass(frozen=True, eq=False)
class LayerMethod(Method):
    """A method of one layer: ``fn`` (a :class:`LayerFn`) for a local method, or
    ``forward`` (a :class:`ForwardFn`) with ``needs={"forward_passes"}``; exactly one.

    weights: optional, for a local method whose ``fn`` gives ``M_k = w_k A_k``: a
    :class:`LayerFn` of the same inputs and options giving w (B, K) alone. The analysis
    step then makes the maps of all such methods from one pass over A.
    """

    fn: LayerFn | None  # pyright: ignore[reportIncompatibleVariableOverride]
    forward: ForwardFn | None = None  # pyright: ignore[reportIncompatibleVariableOverride]
    kind: str = "layer"
    weights: LayerFn | None = None

    def __post_init__(self):
        super().__post_init__()
        forward_method = "forward_passes" in self.needs
        if forward_method != (self.forward is not None) or forward_method == (self.fn is not None):
            raise ValueError(
                f"method {self.name!r}: give fn= (contributions from A, G, key) for a local "
                "method, or forward= (weights from forward passes) with "
                "needs={'forward_passes'} for a forward-pass method; exactly one of them"
            )
        if self.weights is not None and (self.fn is None or not self.channelwise):
            raise ValueError(
                f"method {self.name!r}: weights= (w (B, K) with M_k = w_k A_k) goes with a "
                "channelwise local method's fn=; leave it out for this method"
            )


class _MapMethod(Method):
    """The checks of the kinds without channels: fn only, no forward passes."""

    def __post_init__(self):
        super().__post_init__()
        extra = sorted(self.needs - self.allowed_needs)
        if extra or self.fn is None or self.forward is not None:
            raise ValueError(
                f"method {self.name!r} of kind {self.kind!r} takes fn= only (no forward=) "
                f"and needs at most {sorted(self.allowed_needs)}; got needs {extra}"
            )
        object.__setattr__(self, "channelwise", False)


@dataclasses.dataclass(frozen=True, eq=False)
class LayersMethod(_MapMethod):
    """A method of several layers of one probe: ``fn`` a :class:`LayersFn`."""

    fn: LayersFn  # pyright: ignore[reportIncompatibleVariableOverride]
    kind: str = "layers"
    allowed_needs: ClassVar[frozenset[str]] = frozenset({"gradients", "key"})


@dataclasses.dataclass(frozen=True, eq=False)
class InputMethod(_MapMethod):
    """A method of the whole model, at input resolution: ``fn`` an :class:`InputFn`."""

    fn: InputFn  # pyright: ignore[reportIncompatibleVariableOverride]
    kind: str = "input"
    allowed_needs: ClassVar[frozenset[str]] = frozenset({"key"})


_KIND_TYPES: dict[str, type[Method]] = {
    "layer": LayerMethod,
    "layers": LayersMethod,
    "input": InputMethod,
}
_KIND_OF = {t: k for k, t in _KIND_TYPES.items()}

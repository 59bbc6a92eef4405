"""Which layer a probe taps: a layer named by the user, matched against the model's
module paths (:func:`resolve_layer`), or the model's natural target layer, chosen from the
submodule calls of one forward pass (:func:`natural_layer`, :class:`AutoLayer`).

Examples:
    Matching a layer name against a model's paths, and the natural layer of a CNN's calls:

    >>> from ifa_jax.probes import LayerCall, natural_layer, resolve_layer
    >>> resolve_layer("conv2", ["backbone/conv1", "backbone/conv2", "head"])
    'backbone/conv2'
    >>> resolve_layer("backbone.conv1", ["backbone/conv1", "backbone/conv2", "head"])
    'backbone/conv1'
    >>> calls = [LayerCall("conv", "Conv", (2, 8, 8, 4), 0, 1),
    ...          LayerCall("head", "Dense", (2, 3), 2, 3)]
    >>> natural_layer(calls)
    ('conv', 'the last layer with a spatial output')
"""

from __future__ import annotations

import difflib
import logging
import math
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax

from ifa_jax._taps import AUTO, layer_key
from ifa_jax.probes.tokens import Reshape, TokenGrid, tokens_to_grid

Array = jax.Array
logger = logging.getLogger("ifa_jax")


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


class LayerCall(NamedTuple):
    """One submodule call of a forward pass: its path, class name, output shape (a tree of
    shapes for a tuple or dict output) and when it started and ended (one clock)."""

    path: str
    kind: str
    shape: Any
    start: int
    end: int


def call_shapes(out: Any) -> Any:
    """The shape of each array in a module's output: a shape tuple for an array, a tree of
    them for a tuple, list or dict; for another container (e.g. a Hugging Face
    ``ModelOutput``, a dict subclass that cannot be rebuilt with shapes in it) a dict
    ``{key path: shape}``."""

    def shape(a):
        return tuple(getattr(a, "shape", ())) or None

    if hasattr(out, "shape") or isinstance(out, tuple) or type(out) in (list, dict, type(None)):
        return jax.tree.map(shape, out)
    leaves, _ = jax.tree_util.tree_flatten_with_path(out)
    return {jax.tree_util.keystr(path): shape(a) for path, a in leaves}


def is_grid(shape: Any) -> bool:
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
        before = [c for c in calls if c.end < last.start and is_grid(c.shape)]
        norms = [c for c in before if "Norm" in c.kind]
        if norms or before:
            pick = max(norms or before, key=lambda c: c.end)
            what = "the norm" if norms else "the input"
            return pick.path, f"{what} before the last attention, {last.path!r}"
    grids = [c for c in calls if is_grid(c.shape)]
    if not grids:
        listing = ", ".join(f"{c.path} {c.shape}" for c in calls) or "(none)"
        raise ValueError(
            "layer=None found no layer with a grid output (B, *spatial, K) to tap; name "
            f"the layer. Layers and output shapes: {listing}"
        )
    return max(grids, key=lambda c: c.end).path, "the last layer with a spatial output"


class AutoLayer:
    """The natural layer of a probe built with ``layers=None``: ``auto(calls) -> path``,
    found each time the probe traces the model (it needs an input to see the calls).

    path, why, shape: the layer last chosen, why, and its output shape (None until the
    probe first runs); each new choice is logged once (logger ``"ifa_jax"``, INFO).
    """

    def __init__(self) -> None:
        self.path: str | None = None
        self.why = ""
        self.shape: Any = None

    @property
    def tokens(self) -> bool:
        """Whether the layer was chosen in a transformer and outputs tokens (B, N, D)."""
        shape = self.shape
        return "attention" in self.why and isinstance(shape, tuple) and len(shape) == 3

    def __call__(self, calls: Sequence[LayerCall]) -> str:
        """The natural layer's path among ``calls`` (one forward pass's)."""
        path, why = natural_layer(calls)
        if path != self.path:
            self.path, self.why = path, why
            self.shape = next(c.shape for c in calls if c.path == path)
            logger.info("layer=None: tapping %r, %s", path, why)
        return path

    def __repr__(self) -> str:
        if self.path is None:
            return "the natural layer, found on the first call"
        return f"{self.path!r}: {self.why}"


class AutoGrid:
    """The reshape of a probe built with ``layers=None, reshape=None``: lays a natural
    layer that is a token sequence (B, N, D) on a square grid (:func:`tokens_to_grid`,
    with ``prefix`` 1 or 0, whichever leaves a square number of patch tokens); leaves
    every other output as it is. When no prefix does, it warns
    (:class:`TokenLayerWarning`) naming the ``reshape=`` to pass, and leaves the tokens
    as a 1-D grid."""

    def __init__(self, auto: AutoLayer) -> None:
        self.auto = auto
        self.grid: TokenGrid | None = None  # the grid last used, for repr and the log
        self._told: set[tuple[int, ...]] = set()

    def __call__(self, a: Array) -> Array:
        """A (B, N, D) token layer -> (B, h, w, D); any other output unchanged."""
        if not (self.auto.tokens and getattr(a, "ndim", None) == 3):
            return a
        shape = tuple(a.shape)
        grid = square_grid(shape[1])
        if grid is None:
            if shape not in self._told:
                self._told.add(shape)
                warnings.warn(
                    f"layer=None chose {self.auto.path!r} ({self.auto.why}), whose output "
                    f"{shape} is a token sequence of {shape[1]} tokens, which no prefix of 0 "
                    "or 1 leaves on a square grid; the CAMs see it as a 1-D grid of tokens. "
                    "Pass reshape=ifa_jax.tokens_to_grid(prefix=P, grid=(h, w)) with the "
                    "model's number of class/register tokens P and its patch grid",
                    TokenLayerWarning,
                    stacklevel=2,
                )
            return a
        if shape not in self._told:
            self._told.add(shape)
            logger.info(
                "layer=None: laying %r's %d tokens on a %s grid: tokens_to_grid(prefix=%d)",
                self.auto.path,
                shape[1],
                grid.grid,
                grid.prefix,
            )
        self.grid = grid
        return grid(a)

    def __repr__(self) -> str:
        return f"AutoGrid({self.grid!r})" if self.grid is not None else "AutoGrid()"


class TokenLayerWarning(UserWarning):
    """The automatically chosen layer is a token sequence that could not be laid on a grid."""


def square_grid(num_tokens: int) -> TokenGrid | None:
    """The reshape of ``num_tokens`` tokens onto a square: a class token then a square of
    patches (prefix 1), else a square of patches alone (prefix 0); None when neither."""
    for prefix in (1, 0):
        side = math.isqrt(max(num_tokens - prefix, 0))
        if side >= 1 and side * side == num_tokens - prefix:
            return tokens_to_grid(prefix, (side, side))
    return None


def automatic(
    names: Sequence[str], reshape: Reshape | None
) -> tuple[AutoLayer | None, Reshape | None]:
    """The :class:`AutoLayer` of a probe whose layers ``names`` ask for the natural layer
    (None otherwise), and its reshape: :class:`AutoGrid` when none is given."""
    if AUTO not in names:
        return None, reshape
    auto = AutoLayer()
    return auto, reshape if reshape is not None else AutoGrid(auto)

"""Token layers as feature grids: the ``reshape`` option of the probes.

A transformer layer outputs tokens ``(B, N, D)``: maybe a few prefix tokens (class or
register tokens), then one token per patch. A ``reshape`` maps a tapped output to a grid
``(B, *spatial, K)`` so every CAM method works on it; :func:`tokens_to_grid` builds the
usual one, and :func:`attention_to_grid` the one for attention probabilities ``(B, heads,
queries, keys)`` (keys on the grid, heads x queries as channels). :class:`GridTapped`
applies a reshape to a tapped forward ``tapped(variables, x, deltas) -> (logits, {layer:
A})``:

* the recorded activations are reshaped, ``A_grid = R(A)``;
* a delta given on the grid is mapped back to the layer's true output with the transpose
  of the reshape, ``delta = R^T(delta_grid)`` (``jax.linear_transpose``).

For a reshape that selects entries (drops tokens, reorders, splits axes), ``R^T`` puts
each grid entry back where it came from and zeros elsewhere. So the gradient with respect
to ``delta_grid`` is ``R(G)``, the true gradient at the layer's output, read on the grid
(one forward + one vjp, as for a conv layer), and an ablation ``-A_grid * e_k`` on the grid
zeroes channel ``k`` of exactly the patch tokens, leaving prefix tokens alone.

Examples:
    Patch tokens after a class token, and attention probabilities, laid on a 4 x 4 grid:

    >>> import jax.numpy as jnp
    >>> import ifa_jax
    >>> tokens = jnp.zeros((2, 1 + 16, 6))                     # (B, class + 4 * 4 patches, D)
    >>> ifa_jax.tokens_to_grid()(tokens).shape
    (2, 4, 4, 6)
    >>> probs = jnp.zeros((2, 3, 17, 17))                       # (B, heads, queries, keys)
    >>> ifa_jax.attention_to_grid()(probs).shape               # heads * queries channels
    (2, 4, 4, 51)
    >>> ifa_jax.tokens_to_grid(prefix=0, grid=(2, 8))(jnp.zeros((2, 16, 6))).shape
    (2, 2, 8, 6)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
# A function from a tapped output to a grid (B, *spatial, K), linear and entry-selecting.
Reshape = Callable[[Array], Array]


@dataclasses.dataclass(frozen=True)
class TokenGrid:
    """The reshape ``(B, prefix + prod(grid), D) -> (B, *grid, D)``: drop ``prefix``
    leading tokens, lay the rest out row-major on ``grid`` (a square when None).
    Build it with :func:`tokens_to_grid`."""

    prefix: int = 1
    grid: tuple[int, ...] | None = None
    unit = "tokens"  # what the token axis holds, for the error messages

    def grid_shape(self, num_tokens: int) -> tuple[int, ...]:
        """The grid that ``num_tokens`` tokens (prefix included) fill; a ValueError when
        they do not fill it."""
        patches = num_tokens - self.prefix
        if self.grid is not None:
            if patches != math.prod(self.grid):
                raise ValueError(
                    f"the layer outputs {num_tokens} {self.unit}; after dropping prefix="
                    f"{self.prefix} there are {patches}, but grid={self.grid} holds "
                    f"{math.prod(self.grid)}. Pass the grid of patches the model uses and "
                    "its number of class/register tokens as prefix"
                )
            return self.grid
        side = math.isqrt(max(patches, 0))
        if patches < 1 or side * side != patches:
            raise ValueError(
                f"the layer outputs {num_tokens} {self.unit}; after dropping prefix={self.prefix} "
                f"there are {patches}, not a square number of patches. Pass prefix= (the "
                "number of class/register tokens) or grid=(h, w) for a non-square grid"
            )
        return (side, side)

    def __call__(self, tokens: Array) -> Array:
        """tokens (B, N, D) -> grid (B, *grid, D)."""
        if getattr(tokens, "ndim", None) != 3:
            raise ValueError(
                f"tokens_to_grid expects tokens (B, N, D); got shape "
                f"{tuple(getattr(tokens, 'shape', ()))}. Tap a layer that outputs a token "
                "sequence, or leave reshape=None for a layer that is already a grid"
            )
        batch, num_tokens, dim = tokens.shape
        grid = self.grid_shape(num_tokens)
        return tokens[:, self.prefix :].reshape(batch, *grid, dim)


@dataclasses.dataclass(frozen=True)
class AttentionGrid(TokenGrid):
    """The reshape ``(B, H, Q, prefix + prod(grid)) -> (B, *grid, H * Q)`` of attention
    probabilities: drop the ``prefix`` leading keys, lay the rest out row-major on ``grid``,
    channel ``h * Q + q`` holding head h's query q. Build it with :func:`attention_to_grid`."""

    unit = "keys"

    def __call__(self, probs: Array) -> Array:
        """probs (B, H, Q, T) -> grid (B, *grid, H * Q)."""
        if getattr(probs, "ndim", None) != 4:
            raise ValueError(
                f"attention_to_grid expects attention probabilities (B, heads, queries, keys); "
                f"got shape {tuple(getattr(probs, 'shape', ()))}. Tap the attention's "
                "probabilities (ifa_jax.runner.models.ViT: '<block>/attn/probs'), not its "
                "output; for tokens (B, N, D) use tokens_to_grid"
            )
        batch, heads, queries, keys = probs.shape
        grid = self.grid_shape(keys)
        patches = probs[..., self.prefix :].transpose(0, 3, 1, 2)  # (B, P, H, Q)
        return patches.reshape(batch, *grid, heads * queries)


def _checked(prefix: int, grid: Sequence[int] | None) -> tuple[int, tuple[int, ...] | None]:
    if isinstance(prefix, bool) or not isinstance(prefix, int) or prefix < 0:
        raise ValueError(
            f"prefix={prefix!r} must be an int >= 0: the number of class/register tokens "
            "before the patch tokens"
        )
    if grid is not None:
        grid = tuple(grid)
        ok = all(isinstance(g, int) and not isinstance(g, bool) and g >= 1 for g in grid)
        if not ok or not 1 <= len(grid) <= 3:
            raise ValueError(
                f"grid={grid!r} must be 1-3 positive ints, the patch grid (e.g. (14, 14)); "
                "or None for a square grid"
            )
    return prefix, grid


def tokens_to_grid(prefix: int = 1, grid: Sequence[int] | None = None) -> TokenGrid:
    """A reshape for token layers: ``(B, prefix + prod(grid), D) -> (B, *grid, D)``.

    prefix: leading tokens to drop (1 for a class token; add register tokens). grid: the
    patch grid, 1-3 axes (``(h, w)``; None infers a square). Channels stay last. Pass it
    as ``linen_probe(model, layer, reshape=tokens_to_grid())``.

    Args:
        prefix: leading tokens to drop, >= 0.
        grid: the patch grid's sizes (1-3 axes), or None for a square grid.

    Returns:
        A :class:`TokenGrid`, mapping tokens (B, N, D) to a grid (B, *grid, D).

    Raises:
        ValueError: a negative prefix or a grid that is not 1-3 positive sizes.
    """
    return TokenGrid(*_checked(prefix, grid))


def attention_to_grid(prefix: int = 1, grid: Sequence[int] | None = None) -> AttentionGrid:
    """A reshape for attention probabilities: ``(B, H, Q, prefix + prod(grid)) ->
    (B, *grid, H * Q)``, the keys on the patch grid and heads x queries as channels
    (channel ``h * Q + q``); every query is kept, the prefix keys are dropped.

    prefix and grid as in :func:`tokens_to_grid`. Pass it as ``linen_probe(model,
    "block2/attn/probs", reshape=attention_to_grid())`` (LeGrad: :mod:`ifa_jax.probes.legrad`).

    Args:
        prefix: leading keys to drop, >= 0.
        grid: the patch grid's sizes (1-3 axes), or None for a square grid.

    Returns:
        An :class:`AttentionGrid`, mapping probabilities (B, H, Q, N) to a grid
        (B, *grid, H * Q).

    Raises:
        ValueError: a negative prefix or a grid that is not 1-3 positive sizes.
    """
    return AttentionGrid(*_checked(prefix, grid))


class GridTapped:
    """A tapped forward seen through ``reshape``: activations and deltas on the grid.

    ``GridTapped(tapped, reshape)(variables, x, deltas) -> (logits, {layer: R(A)})``,
    with ``deltas[layer]`` of the grid's shape mapped to the layer's output by ``R^T``.
    ``reshape`` must be linear and select entries (see the module doc).
    """

    def __init__(self, tapped: Callable, reshape: Reshape):
        self.inner, self.reshape = tapped, reshape
        self._shapes: dict = {}  # the layers' true output shapes, per input/variable shapes

    def __repr__(self) -> str:
        return f"GridTapped({self.inner!r}, reshape={self.reshape!r})"

    def _layer_shapes(self, variables, x) -> dict[str, jax.ShapeDtypeStruct]:
        leaves = jax.tree.leaves(variables)
        key = (
            tuple(x.shape),
            str(x.dtype),
            jax.tree.structure(variables),
            tuple((jnp.shape(a), str(jnp.result_type(a))) for a in leaves),
        )
        if key not in self._shapes:
            acts = jax.eval_shape(lambda v, x: self.inner(v, x, None)[1], variables, x)
            self._shapes[key] = dict(acts)
        return self._shapes[key]

    def to_grid(self, name: str, a: Array) -> Array:
        """The layer's output ``a`` on the grid, checked to be (B, *spatial, K)."""
        grid = self.reshape(a)
        shape: tuple[int, ...] = tuple(getattr(grid, "shape", None) or ())
        if len(shape) not in (3, 4, 5) or shape[:1] != a.shape[:1]:
            raise ValueError(
                f"reshape maps layer {name!r}'s output {tuple(a.shape)} to shape {shape}; it "
                "must give a grid (B, *spatial, K) of rank 3-5 (1-3 spatial axes) with the "
                "batch axis first. For tokens (B, N, D) use ifa_jax.tokens_to_grid(prefix, grid)"
            )
        return grid

    def to_tokens(self, name: str, primal: jax.ShapeDtypeStruct, delta: Array) -> Array:
        """A grid-shaped ``delta`` mapped to the layer's output shape by the transpose."""
        try:
            transpose = jax.linear_transpose(lambda a: self.to_grid(name, a), primal)
            (out,) = transpose(delta.astype(primal.dtype))
        except (NotImplementedError, TypeError) as e:
            raise ValueError(
                f"reshape must be linear (it selects, reorders or reshapes entries) so that "
                f"deltas on the grid map back to layer {name!r}'s output; it is not ({e}). "
                "Use ifa_jax.tokens_to_grid or a function of slicing, reshape and transpose"
            ) from e
        return out

    def __call__(
        self, variables: Any, x: Array, deltas: Mapping[str, Array] | None
    ) -> tuple[Array, dict[str, Array]]:
        """Logits and ``{layer: A on the grid}``, with grid-shaped ``deltas`` added."""
        token_deltas = None
        if deltas is not None:
            shapes = self._layer_shapes(variables, x)
            token_deltas = {
                k: self.to_tokens(k, shapes[k], d) for k, d in deltas.items() if k in shapes
            }
        logits, acts = self.inner(variables, x, token_deltas)
        return logits, {k: self.to_grid(k, a) for k, a in acts.items()}


__all__ = [
    "AttentionGrid",
    "GridTapped",
    "Reshape",
    "TokenGrid",
    "attention_to_grid",
    "tokens_to_grid",
]

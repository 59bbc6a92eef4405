"""Deep Feature Factorization (Collins et al. 2018): concepts from non-negative activations.

The activations of a rectified layer, A (B, *grid, K), are read as N = B * prod(grid)
cells of K channels, X (N, K) >= 0, and factorized by non-negative matrix factorization
X ~ H W: W (n, K) holds n *concepts* (channel vectors) and H (N, n) how much of each
concept every cell holds, the *concept maps* (B, *grid, n). Concepts are scaled so that
each map peaks at 1 over the data it was fitted on: a concept is then the activation
vector of a cell that fully shows it, and can be fed to the model's head
(:func:`concept_scores`).

:func:`dff` factorizes one batch with Lee & Seung's multiplicative updates (Frobenius
loss), which never increase the loss. The dataset-scale version streams batches with a
fixed-memory state (:class:`DFFState`, ``init / update / merge / pass_loss / refit``):
with W fixed, every cell's coefficients are solved on its own by HALS sweeps (exact
coordinate minimisation, :func:`concept_maps`), and the loss over all cells as a
function of W depends only on the sums G = H^T H (n, n), C = H^T X (n, K) and ||X||^2,
which :func:`update` accumulates. :func:`refit` then improves W from them
(block-coordinate descent on the whole dataset's W sub-problem) and starts the next
pass; :func:`peak_concepts` scales a pass's concepts so that their maps peak at 1.
Since cells are solved independently, the result does not depend on how the data is
split into batches. :func:`dff_dataset` runs the passes with a probe's forward
activations.

Examples:
    Activations (2, 4, 4, 3) mixed from two concepts over 3 channels; DFF finds two
    concepts whose maps peak at 1 and rebuild the activations closely:

    >>> import jax
    >>> import numpy as np
    >>> from ifa_jax.dff import dff, reconstruction_error
    >>> mix = np.random.default_rng(0).uniform(size=(2, 4, 4, 2))
    >>> A = mix @ np.array([[1.0, 0.0, 2.0], [0.0, 3.0, 1.0]])
    >>> f = dff(A, 2, key=jax.random.key(0))
    >>> f.concepts.shape, f.maps.shape
    ((2, 3), (2, 4, 4, 2))
    >>> print(np.asarray(f.maps.max(axis=(0, 1, 2))).round(3))
    [1. 1.]
    >>> float(reconstruction_error(A, f.concepts, f.maps)) < 0.05
    True
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ifa_jax._checks import is_traced, pad_batch, pick_layer
from ifa_jax.analysis import DEFAULT_KEYS
from ifa_jax.inputs import unpack_batch
from ifa_jax.probes import LayerProbe

Array = jax.Array

# Added to every multiplicative update's denominator: keeps 0 / 0 at 0 (dead concepts,
# all-zero cells) without changing the update elsewhere.
EPS = 1e-12
NEGATIVE_TOLERANCE = 1e-5
RECTIFY_FIX = (
    "DFF factorizes non-negative activations: tap the ReLU's output (e.g. layer 'relu2' of "
    "ifa_jax.runner.models.MnistCNN, not 'conv2'), or rectify them first (jnp.maximum(A, 0))"
)


class Factorization(NamedTuple):
    """concepts: (n, K), each map peaking at 1. maps: (B, *grid, n) >= 0."""

    concepts: Array
    maps: Array


# --------------------------------------------------------------------------- checks


def _cells(activations: ArrayLike) -> Array:
    """A (B, *grid, K) -> X (N, K) float32 (at least)."""
    A = jnp.asarray(activations)
    if A.ndim < 2:
        raise ValueError(f"activations have shape {A.shape}; give (B, *grid, K), e.g. (B, H, W, K)")
    A = A.astype(jnp.promote_types(A.dtype, jnp.float32))
    return A.reshape(-1, A.shape[-1])


def _rectified(X: Array, tolerance: float, what: str = "activations") -> Array:
    """X with negatives down to ``-tolerance * max|X|`` clipped to 0; below that (and for
    non-finite values) a ValueError, when X holds values (skipped under jit)."""
    if not is_traced(X):
        arr = np.asarray(X)
        if not np.isfinite(arr).all():
            raise ValueError(
                f"{what} hold {int((~np.isfinite(arr)).sum())} non-finite values; check the "
                "inputs and the parameters"
            )
        _check_sign(
            float(arr.min(initial=0.0)), float(np.abs(arr).max(initial=0.0)), tolerance, what
        )
    return jnp.maximum(X, 0.0)


def _check_sign(lowest: float, largest: float, tolerance: float, what: str) -> None:
    if lowest < -tolerance * largest:
        raise ValueError(
            f"{what} have negative values (min {lowest:.4g}, max |A| {largest:.4g}, beyond "
            f"tolerance={tolerance:g} of it); {RECTIFY_FIX}"
        )


def _check_components(n_components: int, channels: int) -> None:
    if not (isinstance(n_components, (int, np.integer)) and n_components >= 1):
        raise ValueError(f"n_components must be an int >= 1; got {n_components!r}")
    if n_components > channels:
        raise ValueError(
            f"n_components={n_components} is more than the layer's {channels} channels; "
            f"ask for n_components <= {channels} (more concepts than channels cannot be "
            "told apart)"
        )


# --------------------------------------------------------------------------- one batch


def loss(X: Array, H: Array, W: Array) -> Array:
    """The NMF objective 0.5 * ||X - H W||_F^2 ().

    Args:
        X: (N, K) cells.
        H: (N, n) coefficients.
        W: (n, K) concepts.

    Returns:
        The loss, a scalar.
    """
    R = X - H @ W
    return 0.5 * jnp.sum(R * R)


@jax.jit
def mu_step(X: Array, H: Array, W: Array) -> tuple[Array, Array]:
    """One multiplicative update (Lee & Seung 2001, Frobenius): H, then W with the new H.
    Neither step increases :func:`loss`.

    Args:
        X: (N, K) cells >= 0.
        H: (N, n) coefficients >= 0.
        W: (n, K) concepts >= 0.

    Returns:
        The updated (H, W).
    """
    H = H * (X @ W.T) / (H @ (W @ W.T) + EPS)
    W = W * (H.T @ X) / ((H.T @ H) @ W + EPS)
    return H, W


@jax.jit
def _mu(X: Array, H: Array, W: Array, iterations: Array) -> tuple[Array, Array]:
    return jax.lax.fori_loop(0, iterations, lambda _, hw: mu_step(X, *hw), (H, W))


def _peak_scaled(H: Array, W: Array, peak: Array) -> tuple[Array, Array]:
    """Rescale so that each concept's coefficients peak at 1 (H W unchanged; a concept
    whose coefficients are all 0 keeps its scale)."""
    s = jnp.where(peak > 0, peak, 1.0)
    return H / s, W * s[:, None]


def random_init(key: Array, X: Array, n_components: int) -> tuple[Array, Array]:
    """scikit-learn's ``init='random'``: |normal| * sqrt(mean(X) / n) for H and W.

    Args:
        key: the PRNG key.
        X: (N, K) cells >= 0.
        n_components: n.

    Returns:
        (H (N, n), W (n, K)), both >= 0.
    """
    scale = jnp.sqrt(jnp.mean(X) / n_components)
    kh, kw = jax.random.split(key)
    H = scale * jnp.abs(jax.random.normal(kh, (X.shape[0], n_components), X.dtype))
    W = scale * jnp.abs(jax.random.normal(kw, (n_components, X.shape[1]), X.dtype))
    return H, W


def dff(
    activations: ArrayLike,
    n_components: int,
    *,
    iterations: int = 200,
    key: Array | None = None,
    init: tuple[ArrayLike, ArrayLike] | None = None,
    tolerance: float = NEGATIVE_TOLERANCE,
) -> Factorization:
    """Deep Feature Factorization of one batch: activations (B, *grid, K) >= 0 ->
    :class:`Factorization` (concepts (n, K), maps (B, *grid, n)), n = ``n_components``.

    ``iterations`` multiplicative updates from ``init = (maps (B, *grid, n), concepts
    (n, K))`` (non-negative; zeros stay zero) or from a random start drawn with ``key``
    (scikit-learn's ``init='random'``); deterministic given either. Concepts are then
    scaled so that each map peaks at 1. Negative values down to ``tolerance`` times
    max |A| are taken as 0 (round-off); below that: ValueError (tap the ReLU's output).

    Args:
        activations: A (B, *grid, K) >= 0.
        n_components: n, the number of concepts, at most K.
        iterations: the number of multiplicative updates, >= 0.
        key: the PRNG key of a random start.
        init: (maps (B, *grid, n), concepts (n, K)), a non-negative start.
        tolerance: the share of max |A| down to which negative values count as 0.

    Returns:
        The :class:`Factorization`: concepts (n, K), maps (B, *grid, n).

    Raises:
        ValueError: negative or non-finite activations, n_components out of range, a bad
            iterations count, init of the wrong shapes, or neither key nor init.
    """
    X = _cells(activations)
    B, grid, K = jnp.shape(activations)[0], tuple(jnp.shape(activations)[1:-1]), X.shape[1]
    _check_components(n_components, K)
    if not (isinstance(iterations, (int, np.integer)) and iterations >= 0):
        raise ValueError(f"iterations must be an int >= 0; got {iterations!r}")
    X = _rectified(X, tolerance)
    if init is not None:
        H0, W0 = (jnp.asarray(a, X.dtype) for a in init)
        H0 = H0.reshape(-1, H0.shape[-1])
        if H0.shape != (X.shape[0], n_components) or W0.shape != (n_components, K):
            raise ValueError(
                f"init=(maps, concepts) has shapes ({tuple(jnp.shape(init[0]))}, "
                f"{tuple(W0.shape)}); expected ({(B, *grid, n_components)}, "
                f"{(n_components, K)})"
            )
    elif key is not None:
        H0, W0 = random_init(key, X, n_components)
    else:
        raise ValueError(
            "dff needs a starting point: pass key=jax.random.key(0) (a random start) or "
            "init=(maps, concepts)"
        )
    H, W = _mu(X, H0, W0, jnp.asarray(iterations, jnp.int32))
    H, W = _peak_scaled(H, W, H.max(axis=0))
    return Factorization(W, H.reshape(B, *grid, n_components))


def reconstruction_error(activations: ArrayLike, concepts: ArrayLike, maps: ArrayLike) -> Array:
    """Relative error ||X - H W||_F / ||X||_F () of a factorization of A (B, *grid, K).

    Args:
        activations: A (B, *grid, K).
        concepts: W (n, K).
        maps: H (B, *grid, n).

    Returns:
        The relative error, a scalar.
    """
    X = _cells(activations)
    H = jnp.asarray(maps).reshape(X.shape[0], -1)
    R = X - H @ jnp.asarray(concepts)
    return jnp.sqrt(jnp.sum(R * R) / jnp.maximum(jnp.sum(X * X), 1e-30))


def concept_scores(concepts: ArrayLike, kernel: ArrayLike, bias: ArrayLike | None = None) -> Array:
    """Each concept through a dense head: concepts (n, K) @ kernel (K, O) + bias (O,) ->
    (n, O), the logits of an input whose every cell shows that concept fully (for a
    global-average-pool + dense head; ``jax.nn.softmax`` gives class probabilities).

    Args:
        concepts: (n, K).
        kernel: (K, O), the dense head's kernel.
        bias: (O,) or None.

    Returns:
        (n, O) logits.

    Raises:
        ValueError: shapes that do not fit.
    """
    c, k = jnp.asarray(concepts), jnp.asarray(kernel)
    if c.ndim != 2:
        raise ValueError(
            f"concepts have shape {c.shape}; give (n, K) concepts (one concept: concepts[None])"
        )
    if k.ndim != 2 or k.shape[0] != c.shape[-1]:
        raise ValueError(
            f"kernel has shape {k.shape}; a dense head over the {c.shape[-1]} channels needs "
            f"({c.shape[-1]}, outputs), e.g. variables['params']['head']['kernel']"
        )
    out = c @ k
    if bias is None:
        return out
    b = jnp.asarray(bias)
    if b.shape != (k.shape[1],):
        raise ValueError(
            f"bias has shape {b.shape}; the kernel {k.shape} has {k.shape[1]} outputs, so give "
            f"bias ({k.shape[1]},), e.g. variables['params']['head']['bias']"
        )
    return out + b


# --------------------------------------------------------------------------- streaming


def _solve_maps(X: Array, W: Array, steps: int) -> Array:
    """Coefficients H (N, n) >= 0 of cells X (N, K) with concepts W fixed: ``steps``
    sweeps of exact coordinate minimisation over the concepts (HALS, Cichocki & Phan
    2009), from each cell's best uniform mix of the unit-norm concepts (x ~ c * sum_j
    w_j / ||w_j||). Each cell is solved on its own, whatever batch it sits in. Rescaling a
    concept by s divides its coefficients by s (the start included), so concepts scaled
    after a pass (:func:`peak_concepts`) give the same maps scaled."""
    norm = jnp.linalg.norm(W, axis=1)
    norm = jnp.where(norm > 0, norm, 1.0)  # an all-zero concept: its column stays at c
    s = (W / norm[:, None]).sum(axis=0)
    c = jnp.maximum(X @ s / jnp.maximum(s @ s, 1e-30), 0.0)
    H = c[:, None] / norm[None, :]
    XWt, WWt = X @ W.T, W @ W.T
    return jax.lax.fori_loop(0, steps, lambda _, H: _hals_sweep(H, XWt, WWt, axis=1), H)


def _hals_sweep(F: Array, target: Array, gram: Array, axis: int) -> Array:
    """One sweep of non-negative block-coordinate descent on 0.5 ||X - H W||^2 over the
    n factor slices of F along ``axis`` (1: the columns of H, 0: the rows of W), with
    ``target`` = X W^T or H^T X and ``gram`` = W W^T or H^T H. Each slice is set to its
    exact minimiser with the others fixed, so the loss never increases; a slice with a
    zero Gram diagonal (an unused concept) is left as it is."""

    def one(j, F):
        f = jnp.take(F, j, axis=axis)
        g = jnp.take(gram, j, axis=0)
        Fg = F @ g if axis == 1 else g @ F
        d = gram[j, j]
        new = jnp.where(
            d > 0,
            jnp.maximum(f + (jnp.take(target, j, axis=axis) - Fg) / jnp.where(d > 0, d, 1.0), 0.0),
            f,
        )
        return F.at[:, j].set(new) if axis == 1 else F.at[j].set(new)

    return jax.lax.fori_loop(0, F.shape[axis], one, F)


@functools.partial(jax.jit, static_argnames=("steps",))
def _maps(activations: Array, concepts: Array, steps: int) -> Array:
    X = jnp.maximum(_cells(activations), 0.0)
    H = _solve_maps(X, concepts.astype(X.dtype), steps)
    return H.reshape(*activations.shape[:-1], concepts.shape[0])


def concept_maps(
    activations: ArrayLike,
    concepts: ArrayLike,
    *,
    steps: int = 100,
    tolerance: float = NEGATIVE_TOLERANCE,
) -> Array:
    """Maps (B, *grid, n) of any batch A (B, *grid, K) >= 0 on fixed concepts (n, K):
    the non-negative coefficients fitted by ``steps`` HALS sweeps (exact minimisation
    over one concept's coefficient at a time, the others fixed).

    Args:
        activations: A (B, *grid, K) >= 0.
        concepts: (n, K) of this layer.
        steps: the number of HALS sweeps.
        tolerance: the share of max |A| down to which negative values count as 0.

    Returns:
        (B, *grid, n) maps >= 0.

    Raises:
        ValueError: concepts that are not (n, K) of this layer, or negative activations.
    """
    A = jnp.asarray(activations)
    W = jnp.asarray(concepts)
    if W.ndim != 2:
        raise ValueError(
            f"concepts have shape {W.shape}; give (n, K) = (n, {A.shape[-1]}) concepts of "
            "this layer (one concept: concepts[None])"
        )
    if W.shape[1] != A.shape[-1]:
        raise ValueError(
            f"concepts have shape {W.shape} but the activations {A.shape} have "
            f"{A.shape[-1]} channels; use concepts of this layer, (n, {A.shape[-1]})"
        )
    _rectified(_cells(A), tolerance)
    return _maps(A, W, steps)


class DFFState(NamedTuple):
    """Streaming DFF state; its size is fixed by n concepts and K channels.

    concepts: (n, K) the concepts W of the current pass. gram: (n, n) sum of H^T H.
    cross: (n, K) sum of H^T X. energy: () sum of ||X||^2. peak: (n,) max of each
    concept's coefficients. cells: () cells counted. lowest, largest: () min of A and
    max |A| seen (for the sign check).
    """

    concepts: Array
    gram: Array
    cross: Array
    energy: Array
    peak: Array
    cells: Array
    lowest: Array
    largest: Array


def init(
    n_components: int,
    channels: int,
    *,
    key: Array | None = None,
    concepts: ArrayLike | None = None,
) -> DFFState:
    """An empty pass starting from ``concepts`` (n, K) or random ones drawn with ``key``
    (uniform in (0, 1]; their scale does not matter, maps are solved to fit).

    Args:
        n_components: n, at most K.
        channels: K.
        key: the PRNG key of random concepts.
        concepts: (n, K) non-negative starting concepts.

    Returns:
        The empty :class:`DFFState`.

    Raises:
        ValueError: n out of range, concepts of the wrong shape or sign, or neither key
            nor concepts.
    """
    _check_components(n_components, channels)
    if concepts is not None:
        W = jnp.asarray(concepts, jnp.float32)
        if W.shape != (n_components, channels) or bool(jnp.any(W < 0)):
            raise ValueError(
                f"concepts must be non-negative, shape {(n_components, channels)}; got "
                f"shape {W.shape}"
            )
    elif key is not None:
        W = jax.random.uniform(key, (n_components, channels), jnp.float32, 1e-3, 1.0)
    else:
        raise ValueError("pass key=jax.random.key(0) (random concepts) or concepts=(n, K)")
    return _cleared(W)


def _cleared(W: Array) -> DFFState:
    n, K = W.shape
    z = jnp.zeros((), W.dtype)
    return DFFState(
        W,
        jnp.zeros((n, n), W.dtype),
        jnp.zeros((n, K), W.dtype),
        z,
        jnp.zeros(n, W.dtype),
        z,
        z,
        z,
    )


def update(
    state: DFFState,
    activations: ArrayLike,
    valid: ArrayLike | None = None,
    *,
    steps: int = 100,
    tolerance: float = NEGATIVE_TOLERANCE,
) -> DFFState:
    """state + one batch A (B, *grid, K). Pure and jit-able (``steps`` static); eagerly,
    negative activations raise (else :func:`check` reads the state's lowest value after
    the pass).

    Args:
        state: the pass so far.
        activations: A (B, *grid, K) >= 0.
        valid: (B,) bool, False on padding rows (dropped); None: all valid.
        steps: HALS sweeps per batch.
        tolerance: the share of max |A| down to which negative values count as 0.

    Returns:
        The updated :class:`DFFState`.

    Raises:
        ValueError: a channel count other than the state's, or (eagerly) negative
            activations.
    """
    A = jnp.asarray(activations)
    K = state.concepts.shape[1]
    if A.shape[-1] != K:
        raise ValueError(
            f"activations have {A.shape[-1]} channels but the state's concepts have {K}; "
            "stream one layer per state"
        )
    if not is_traced(A):
        _rectified(_cells(A), tolerance)
    valid = jnp.ones(A.shape[0], bool) if valid is None else jnp.asarray(valid)
    return _accumulate(state, A, valid, steps)


@functools.partial(jax.jit, static_argnames=("steps",))
def _accumulate(state: DFFState, A: Array, valid: Array, steps: int) -> DFFState:
    X = _cells(A)
    w = jnp.repeat(valid.astype(X.dtype), X.shape[0] // A.shape[0])  # (N,) per cell
    lowest = jnp.min(jnp.where(w[:, None] > 0, X, 0.0), initial=0.0)
    largest = jnp.max(jnp.where(w[:, None] > 0, jnp.abs(X), 0.0), initial=0.0)
    X = jnp.maximum(X, 0.0) * w[:, None]
    H = _solve_maps(X, state.concepts.astype(X.dtype), steps) * w[:, None]
    return DFFState(
        state.concepts,
        state.gram + H.T @ H,
        state.cross + H.T @ X,
        state.energy + jnp.sum(X * X),
        jnp.maximum(state.peak, H.max(axis=0, initial=0.0)),
        state.cells + w.sum(),
        jnp.minimum(state.lowest, lowest),
        jnp.maximum(state.largest, largest),
    )


def merge(a: DFFState, b: DFFState) -> DFFState:
    """Two partial passes over disjoint data with the SAME concepts (e.g. per device).

    Args:
        a: one partial pass.
        b: the other.

    Returns:
        The :class:`DFFState` of both.

    Raises:
        ValueError: concepts of different shapes.
    """
    if a.concepts.shape != b.concepts.shape:
        raise ValueError(
            f"cannot merge states with concepts {a.concepts.shape} and {b.concepts.shape}"
        )
    return DFFState(
        a.concepts,
        a.gram + b.gram,
        a.cross + b.cross,
        a.energy + b.energy,
        jnp.maximum(a.peak, b.peak),
        a.cells + b.cells,
        jnp.minimum(a.lowest, b.lowest),
        jnp.maximum(a.largest, b.largest),
    )


def check(state: DFFState, tolerance: float = NEGATIVE_TOLERANCE) -> None:
    """Raise when the pass saw negative activations beyond ``tolerance`` or no cell.

    Args:
        state: the finished pass.
        tolerance: the share of max |A| down to which negative values count as 0.

    Raises:
        ValueError: negative activations beyond the tolerance, or no valid cell.
    """
    _check_sign(float(state.lowest), float(state.largest), tolerance, "the streamed activations")
    if float(state.cells) == 0:
        raise ValueError("no valid cell was streamed; update the state with some batches")


def pass_loss(state: DFFState) -> Array:
    """Relative error ||X - H W||_F / ||X||_F () of the pass (its concepts and the maps
    solved for them), from the sums alone.

    Args:
        state: the finished pass.

    Returns:
        The relative error, a scalar.
    """
    W = state.concepts
    sq = state.energy - 2.0 * jnp.sum(W * state.cross) + jnp.sum(W * (state.gram @ W))
    return jnp.sqrt(jnp.maximum(sq, 0.0) / jnp.maximum(state.energy, 1e-30))


@functools.partial(jax.jit, static_argnames=("steps",))
def refit(state: DFFState, *, steps: int = 50) -> DFFState:
    """New concepts from a pass's sums and an empty next pass: ``steps`` sweeps of
    block-coordinate descent on W with the pass's maps fixed (scaled to peak at 1), as
    Mairal et al. (2010) update their dictionary from the same sums.

    Args:
        state: the finished pass.
        steps: block-coordinate sweeps.

    Returns:
        An empty :class:`DFFState` with the new concepts.
    """
    s = jnp.where(state.peak > 0, state.peak, 1.0)
    gram = state.gram / (s[:, None] * s[None, :])
    cross = state.cross / s[:, None]
    W0 = state.concepts * s[:, None]
    W = jax.lax.fori_loop(0, steps, lambda _, W: _hals_sweep(W, cross, gram, axis=0), W0)
    return _cleared(W)


def peak_concepts(state: DFFState) -> Array:
    """The pass's concepts (n, K), each scaled so that its maps over the pass's data peak
    at 1 (a concept no cell used keeps its scale). After the last :func:`refit`, run one
    more pass of :func:`update` with the new concepts to scale them.

    Args:
        state: the finished pass.

    Returns:
        (n, K) concepts.
    """
    return state.concepts * jnp.where(state.peak > 0, state.peak, 1.0)[:, None]


# --------------------------------------------------------------------------- a dataset


class DatasetFactorization(NamedTuple):
    """The result of :func:`dff_dataset`.

    concepts: (n, K) NumPy, after the last refit, each map peaking at 1 over the data.
    losses: (epochs + 1,) relative errors ||X - H W|| / ||X|| over the data: losses[i]
    of the concepts entering pass i with their maps solved in that pass (losses[0]: the
    starting concepts), losses[epochs] of the returned concepts (the map-only last
    pass). cells: cells per pass. maps: ``x -> (B, *grid, n)``, the concept maps of any
    input batch.
    """

    concepts: np.ndarray
    losses: np.ndarray
    cells: int
    maps: Callable[[Any], Array]


def _one_pass(batches: Any, epoch: int) -> Iterable:
    """The batches of pass ``epoch``: a fresh call of a function, else ``batches`` itself,
    which must then be re-iterable after the first pass."""
    if callable(batches):
        fresh: Any = batches()
        return fresh
    if epoch > 0 and iter(batches) is batches:
        raise ValueError(
            "batches is a one-shot iterator, but dff_dataset passes over the data epochs + 1 "
            "times (the last pass scales the final concepts); pass a list, a re-iterable "
            "dataset, or a function returning a fresh iterator"
        )
    return batches


def _input_of(batch: Any, i: int, keys: tuple[str, ...]) -> tuple[Any, Any]:
    """(x, valid or None) of a batch: an array x, or what analyze accepts."""
    if hasattr(batch, "shape") and hasattr(batch, "dtype"):
        return batch, None
    x, _, valid = unpack_batch(batch, i, keys)
    return x, valid


def dff_dataset(
    probe: LayerProbe,
    variables: Any,
    batches: Any,
    n_components: int,
    *,
    epochs: int = 10,
    key: Array | None = None,
    concepts: ArrayLike | None = None,
    layer: str | None = None,
    map_steps: int = 100,
    concept_steps: int = 50,
    batch_size: int | None = None,
    keys: tuple[str, ...] = DEFAULT_KEYS,
    tolerance: float = NEGATIVE_TOLERANCE,
) -> DatasetFactorization:
    """DFF over a whole dataset: ``epochs`` streaming passes of the probe's forward
    activations at ``layer``, each followed by :func:`refit`, then one map-only pass
    that measures the final concepts' error and scales them (:func:`peak_concepts`).

    batches: arrays x, tuples ``(x, y[, valid])``, :class:`ifa_jax.inputs.Batch` es or
    dicts (``keys``), re-iterable (a list, a dataset) or a function returning a fresh
    iterable. Smaller batches are padded to the first's size (or ``batch_size``).
    Starts from ``concepts`` (n, K) or random ones (``key``).

    Args:
        probe: a :class:`~ifa_jax.probes.LayerProbe` tapping the (rectified) layer.
        variables: the model's variables.
        batches: the data, as above.
        n_components: n, the number of concepts.
        epochs: refit passes, >= 1.
        key: the PRNG key of random starting concepts.
        concepts: (n, K) starting concepts.
        layer: the probe's layer to factorize (None: its only one).
        map_steps: HALS sweeps per batch for the maps.
        concept_steps: sweeps per refit for the concepts.
        batch_size: the size batches are padded to (None: the first batch's).
        keys: the image, label (and valid) keys of dict batches.
        tolerance: the share of max |A| down to which negative values count as 0.

    Returns:
        The :class:`DatasetFactorization`.

    Raises:
        ValueError: a one-shot iterator, epochs < 1, no data, negative activations, or
            an argument :func:`init` refuses.
    """
    layer = pick_layer(probe.layers, layer)
    if not (isinstance(epochs, (int, np.integer)) and epochs >= 1):
        raise ValueError(f"epochs must be an int >= 1; got {epochs!r}")

    if not callable(batches) and iter(batches) is batches:
        _one_pass(batches, 1)  # raises: a one-shot iterator cannot be passed over twice

    def acts(variables, x):
        return probe.forward_activations(variables, x)[1][layer]

    step = jax.jit(
        lambda state, variables, x, valid: update(state, acts(variables, x), valid, steps=map_steps)
    )
    state, size, losses, cells = None, batch_size, [], 0
    for epoch in range(epochs + 1):  # the last pass only solves the final concepts' maps
        for i, batch in enumerate(_one_pass(batches, epoch)):
            x, valid = _input_of(batch, i, tuple(keys))
            n = len(x)
            if n == 0:
                continue
            size = size or n
            x, _, valid = pad_batch(
                x,
                np.zeros(n, np.int32),
                valid,
                size,
                i,
                size_from="the first batch's size",
                fix="pass batch_size= (the largest batch size)",
            )
            if state is None:
                K = jax.eval_shape(acts, variables, x).shape[-1]
                state = init(n_components, K, key=key, concepts=concepts)
            state = step(state, variables, x, valid)
        if state is None:
            raise ValueError("batches gave no sample; pass a non-empty dataset")
        check(state, tolerance)
        losses.append(float(pass_loss(state)))
        cells = int(state.cells)
        if epoch < epochs:
            state = refit(state, steps=concept_steps)
    assert state is not None
    W = peak_concepts(state)

    def maps(x: Any) -> Array:
        return _maps(acts(variables, jnp.asarray(x)), W, map_steps)

    return DatasetFactorization(np.asarray(W), np.asarray(losses), cells, jax.jit(maps))

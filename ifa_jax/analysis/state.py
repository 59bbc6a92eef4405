"""The streaming state of the analysis: :class:`Stats` and its pure functions.

It follows optax's shape: :func:`init` an empty state, :func:`update` it with one batch,
:func:`merge` two partial states exactly (per device, per host, per chunk) and
:func:`finalize` it into a :class:`Summary`. Its size is fixed by the number of classes C,
channels K and the feature grid, never by the number of samples.

Per class c, over *counted* samples: the count, the mean channel importance (IM_c) and
the sum of squared deviations (Chan et al.'s parallel algorithm, so merging is exact and
stable), and the mean raw CAM on the grid. Over all counted samples: the channel
co-moment (K x K), from which the covariance follows.

Examples:
    The statistics of three samples of 2 classes, 3 channels, on a 2 x 2 grid, and
    the same from two partial states merged:

    >>> import jax.numpy as jnp
    >>> from ifa_jax import analysis
    >>> def batch(s, label):
    ...     n = len(label)
    ...     return analysis.BatchStats(jnp.array(s), jnp.ones((n, 2, 2)), jnp.array(label),
    ...                                jnp.ones(n, bool), jnp.ones(n, bool))
    >>> first = batch([[1.0, 0.0, 2.0]], [0])
    >>> second = batch([[3.0, 1.0, 0.0], [2.0, 2.0, 2.0]], [1, 1])
    >>> state = analysis.init(num_classes=2, num_channels=3, spatial=(2, 2))
    >>> state = analysis.update(analysis.update(state, first), second)
    >>> summary = analysis.finalize(state)
    >>> summary.class_counts.tolist(), summary.seen
    ([1.0, 2.0], 3)
    >>> summary.im_class.tolist()
    [[1.0, 0.0, 2.0], [2.5, 1.5, 1.0]]
    >>> summary.im_all.round(4).tolist()
    [2.0, 1.0, 1.3333]
    >>> merged = analysis.merge(analysis.from_batch(first, 2), analysis.from_batch(second, 2))
    >>> bool(jnp.allclose(merged.comoment, state.comoment))
    True
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ifa_jax._checks import outside_stacklevel
from ifa_jax.analysis._named_fields import NamedFields

Array = jax.Array


class NothingCountedError(ValueError):
    """No sample of the pass was counted, so no statistic is defined."""


class MissingClassesWarning(UserWarning):
    """Some classes have no counted sample: their rows of the :class:`Summary` are NaN."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Stats(NamedFields):
    """Streaming state, a pytree of float32 arrays. C classes, K channels, feature grid
    ``spatial``.

    count: (C,) counted samples per class. mean: (C, K) per-class mean importance.
    m2: (C, K) per-class sum of squared deviations of importance. comoment: (K, K)
    sum over counted samples of (s - mu)(s - mu)^T, mu the mean over all counted samples.
    cam_mean: (C, *spatial) per-class mean raw CAM. seen: () all valid samples analysed.

    A dataclass (a field named ``count`` would shadow ``tuple.count``), read also as the
    NamedTuple it was: ``Stats(*arrays)``, iteration, ``_fields``, ``_asdict``, ``_replace``.
    """

    count: Array
    mean: Array
    m2: Array
    comoment: Array
    cam_mean: Array
    seen: Array


class BatchStats(NamedTuple):
    """What update needs from one batch: importance s (B, K), raw CAM L (B, *spatial),
    label (B,) int, counted (B,) bool (valid and, by default, correctly classified),
    valid (B,) bool (False for padding rows)."""

    importance: Array
    cam: Array
    label: Array
    counted: Array
    valid: Array


class Summary(NamedTuple):
    """Finalized statistics (NumPy). C classes, K channels.

    im_all: (K,) mean importance over all counted samples. im_class: (C, K) per class;
    rows of classes with no counted sample are NaN and ``present`` is False for them.
    im_diff: (C, K) = im_class - im_all. im_var: (C, K) per-class variance (ddof=0).
    covariance: (K, K) of s over counted samples (ddof=0). cam_mean: (C, *spatial).
    class_counts: (C,) counted samples. seen: samples analysed.
    """

    im_all: np.ndarray
    im_class: np.ndarray
    im_diff: np.ndarray
    im_var: np.ndarray
    covariance: np.ndarray
    cam_mean: np.ndarray
    class_counts: np.ndarray
    present: np.ndarray
    seen: int

    @property
    def missing_classes(self) -> tuple[int, ...]:
        """Classes with no counted sample (their rows are NaN)."""
        return tuple(int(c) for c in np.flatnonzero(~self.present))


def init(num_classes: int, num_channels: int, spatial: tuple[int, ...]) -> Stats:
    """An empty state.

    Args:
        num_classes: the number of classes C.
        num_channels: the number of channels K.
        spatial: the CAM's grid (*spatial).

    Returns:
        A :class:`Stats` of zeros: counts (C,), means and spreads (C, K), comoment (K, K),
        mean CAMs (C, *spatial).

    Raises:
        ValueError: ``num_classes`` or ``num_channels`` < 1.
    """
    if num_classes < 1 or num_channels < 1:
        raise ValueError(
            f"need num_classes >= 1 and num_channels >= 1; got {num_classes}, {num_channels}"
        )
    f = jnp.float32
    return Stats(
        jnp.zeros(num_classes, f),
        jnp.zeros((num_classes, num_channels), f),
        jnp.zeros((num_classes, num_channels), f),
        jnp.zeros((num_channels, num_channels), f),
        jnp.zeros((num_classes, *spatial), f),
        jnp.zeros((), f),
    )


def _safe_div(a: Array, n: Array) -> Array:
    return a / jnp.where(n > 0, n, 1.0)


# The statistics' products in full float32: a GPU's default float32 matmul may round its
# inputs to TF32 (10 mantissa bits), which would cost the means about 3 digits.
_EXACT = jax.lax.Precision.HIGHEST


def _dot(a: Array, b: Array) -> Array:
    return jnp.matmul(a, b, precision=_EXACT)


def _overall_mean(count: Array, mean: Array) -> Array:
    return _safe_div(_dot(count, mean), count.sum())


def from_batch(batch: BatchStats, num_classes: int) -> Stats:
    """The state of one batch alone (pure, jit-able).

    Args:
        batch: one batch's :class:`BatchStats`.
        num_classes: the number of classes C.

    Returns:
        A :class:`Stats` of the batch's counted samples, to :func:`merge` with others.
    """
    s = batch.importance.astype(jnp.float32)
    w = batch.counted.astype(jnp.float32)
    onehot = jax.nn.one_hot(batch.label, num_classes, dtype=jnp.float32) * w[:, None]  # (B, C)
    count = onehot.sum(0)
    mean = _safe_div(_dot(onehot.T, s), count[:, None])
    # Each row's class mean, gathered (not onehot @ mean: a (B, C) x (C, K) matmul); rows
    # not counted have onehot == 0, so their dev is masked below.
    dev = s - mean[batch.label]
    m2 = _dot(onehot.T, dev * dev)
    mu = _safe_div(_dot(w, s), w.sum())
    centred = (s - mu) * w[:, None]
    comoment = _dot(centred.T, s - mu)
    L = batch.cam.astype(jnp.float32)
    cam_sum = jnp.tensordot(onehot.T, L, axes=1, precision=_EXACT)
    cam_mean = _safe_div(cam_sum, count.reshape((-1,) + (1,) * (L.ndim - 1)))
    return Stats(count, mean, m2, comoment, cam_mean, batch.valid.sum().astype(jnp.float32))


def _check_mergeable(a: Stats, b: Stats) -> None:
    """Shapes are static (also under jit): refuse states of different C, K or grid."""
    for what, sa, sb, fix in (
        ("classes", a.count.shape, b.count.shape, "built with the same num_classes"),
        ("channels", a.mean.shape[-1:], b.mean.shape[-1:], "of the same layer"),
    ):
        if sa != sb:
            raise ValueError(
                f"cannot merge: a has {sa[0]} {what}, b has {sb[0]}; merge states {fix}"
            )
    ga, gb = tuple(a.cam_mean.shape[1:]), tuple(b.cam_mean.shape[1:])
    if ga != gb:
        raise ValueError(
            f"cannot merge: feature grid {ga} vs {gb}; merge states from inputs of one size"
        )


def merge(a: Stats, b: Stats) -> Stats:
    """Combine two partial states exactly (Chan et al. 1979). Associative, pure, jit-able.

    Both states must have the same classes C, channels K and grid (else ValueError).

    Args:
        a: one partial state.
        b: another, of the same C, K and grid.

    Returns:
        The state of both parts' samples.

    Raises:
        ValueError: the states differ in C, K or grid.
    """
    _check_mergeable(a, b)
    count = a.count + b.count
    frac_b = _safe_div(b.count, count)  # (C,)
    delta = b.mean - a.mean
    mean = a.mean + delta * frac_b[:, None]
    m2 = a.m2 + b.m2 + delta * delta * (a.count * frac_b)[:, None]
    na, nb = a.count.sum(), b.count.sum()
    d = _overall_mean(b.count, b.mean) - _overall_mean(a.count, a.mean)
    comoment = a.comoment + b.comoment + jnp.outer(d, d) * _safe_div(na * nb, na + nb)
    shape = (-1,) + (1,) * (a.cam_mean.ndim - 1)
    cam_mean = a.cam_mean + (b.cam_mean - a.cam_mean) * frac_b.reshape(shape)
    return Stats(count, mean, m2, comoment, cam_mean, a.seen + b.seen)


def update(state: Stats, batch: BatchStats) -> Stats:
    """state + one batch. Checks shapes eagerly, so a mismatch names the arrays.

    Args:
        state: the state so far.
        batch: one batch's :class:`BatchStats`.

    Returns:
        The state with the batch's counted samples added.

    Raises:
        ValueError: the batch's K or grid differ from the state's.
    """
    C, K = state.mean.shape
    if batch.importance.shape[-1] != K or batch.cam.shape[1:] != state.cam_mean.shape[1:]:
        raise ValueError(
            f"batch features (K={batch.importance.shape[-1]}, grid {batch.cam.shape[1:]}) do "
            f"not match the state (K={K}, grid {state.cam_mean.shape[1:]}); analyse one layer "
            "with one input size per state"
        )
    return merge(state, from_batch(batch, C))


def finalize(state: Stats) -> Summary:
    """Importance matrices, spreads and covariance from a state. Warns
    (:class:`MissingClassesWarning`, naming them) when some classes have no counted
    sample: their rows are NaN and ``present`` is False for them. The state may be on a
    device or on the host (NumPy arrays, as :func:`finalize_all` fetches them): the float64
    arithmetic runs on the host.

    Args:
        state: the state after the pass.

    Returns:
        A :class:`Summary` (NumPy): ``im_all`` (K,), ``im_class``, ``im_diff``, ``im_var``
        (C, K), ``covariance`` (K, K), ``cam_mean`` (C, *spatial), ``class_counts`` and
        ``present`` (C,), ``seen``.

    Raises:
        NothingCountedError: no sample was counted.

    Warns:
        MissingClassesWarning: some classes have no counted sample (their rows are NaN).
    """
    return _summary(jax.device_get(state))


def finalize_all(states: Sequence[Stats]) -> tuple[Summary, ...]:
    """:func:`finalize` of several states (one per method of a pass), fetched from the
    device in ONE transfer: per state and field, a transfer is a wait on the device.

    Args:
        states: the states after the pass.

    Returns:
        One :class:`Summary` per state, in order.

    Raises:
        NothingCountedError: no sample was counted.

    Warns:
        MissingClassesWarning: some classes have no counted sample (once per state).
    """
    return tuple(_summary(s) for s in jax.device_get(tuple(states)))


def _summary(state: Stats) -> Summary:
    """:func:`finalize` of a host state (NumPy float32 arrays), in float64."""
    count = np.asarray(state.count, np.float64)
    total = count.sum()
    if total == 0:
        raise NothingCountedError(
            "no sample was counted (none valid and correctly classified); analyse more data, "
            "or pass count='all' to count misclassified samples too"
        )
    present = count > 0
    if not present.all():
        missing = [int(c) for c in np.flatnonzero(~present)]
        warnings.warn(
            f"{len(missing)} of {len(present)} classes have no counted sample: "
            f"{missing}. Their rows of im_class, im_diff, im_var and cam_mean are NaN "
            "(Summary.present is False). Analyse more samples of them, or pass "
            "count='all' to count misclassified samples too",
            MissingClassesWarning,
            stacklevel=outside_stacklevel(),  # the user's line (finalize, analyze, ...)
        )
    # In place where possible: at C x K, each float64 temporary is megabytes to fault in.
    rows = (~present).nonzero()[0]
    im_class = np.array(state.mean, np.float64)
    im_all = (count @ im_class) / total
    im_class[rows] = np.nan
    im_var = np.array(state.m2, np.float64)
    im_var /= np.maximum(count, 1)[:, None]
    im_var[rows] = np.nan
    cam_mean = np.array(state.cam_mean, np.float64)
    cam_mean[rows] = np.nan
    covariance = np.array(state.comoment, np.float64)
    covariance /= total
    return Summary(
        im_all,
        im_class,
        im_class - im_all,
        im_var,
        covariance,
        cam_mean,
        count,
        present,
        int(state.seen),
    )

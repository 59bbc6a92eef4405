"""Input adapters of the analysis pass: what it accepts as batches, and how each batch
becomes the padded, checked device arrays the jitted step takes.

Batches are tuples ``(x, y[, valid])``, :class:`ifa_jax.inputs.Batch` es or dicts
(``keys=``); :func:`record_batches` turns a random-access source of single records
(``tfds.data_source``, a grain ``MapDataset``, a list of dicts) into such batches. A float
target (regression) is analysed per bin of its value (``bins=``, e.g. :func:`quantile_bins`).

Examples:
    Bins of a float target at its quartiles, and batches of single records (the
    last one padded):

    >>> import numpy as np
    >>> from ifa_jax import analysis
    >>> analysis.quantile_bins(np.arange(9.0), 4).tolist()
    [0.0, 2.0, 4.0, 6.0, 8.0]
    >>> records = [{"image": np.zeros((8, 8), np.uint8), "label": i % 3} for i in range(5)]
    >>> batches = analysis.record_batches(records, 2)
    >>> len(batches)
    3
    >>> x, y, mask = list(batches)[-1]
    >>> x.shape, x.dtype, y.tolist(), mask.tolist()
    ((2, 8, 8, 1), dtype('float32'), [1, 0], [True, False])
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from ifa_jax._checks import (
    label_range,
    pad_batch,
    require_keys,
    shard,
    stack_same_shape,
    warn_integer_inputs,
)
from ifa_jax.analysis.step import Variables
from ifa_jax.inputs import Batch, as_images, as_labels, unpack_batch

DEFAULT_KEYS = ("image", "label")


def check_keys(keys: Any, sizes: tuple[int, ...] = (2, 3)) -> tuple[str, ...]:
    """``keys`` as a tuple of 2 (or 3: with a mask key) strings, or a ValueError."""
    if (
        isinstance(keys, str)
        or not isinstance(keys, Sequence)
        or len(keys) not in sizes
        or not all(isinstance(k, str) for k in keys)
    ):
        shapes = " or ".join(
            ("(image key, label key)", "(image key, label key, mask key)")[: len(sizes)]
        )
        raise ValueError(f"keys must be {shapes}, strings; got keys={keys!r}")
    return tuple(keys)


def record_error(i: int, x: Any, y: Any) -> ValueError:
    """The error for batch ``i`` that is one record (a scalar label ``y``)."""
    return ValueError(
        f"batch {i} is one record, not a batch: its label {y!r} is a scalar (input shape "
        f"{np.shape(x)}). `batches` looks like a source of records (tfds.data_source, a "
        "grain MapDataset, a list of dicts); batch it first: analyze(probe, variables, "
        "ifa_jax.analysis.record_batches(source, batch_size, keys=(image key, label key)), "
        "...)"
    )


def _record_fields(record: Any, j: int, keys: tuple[str, ...]) -> tuple[Any, Any]:
    """(image, label) of record ``j``: a dict read with ``keys``, or a pair."""
    if isinstance(record, Mapping):
        require_keys(
            f"record {j}",
            record,
            keys,
            "pass keys=(image key, label key) to record_batches, naming its entries",
        )
        image, label = record[keys[0]], record[keys[1]]
    elif isinstance(record, (tuple, list)) and len(record) == 2:
        image, label = record
    else:
        raise ValueError(
            f"record {j} is a {type(record).__name__}; a record is a dict with "
            f"the keys {keys[0]!r} and {keys[1]!r} (see keys=) or a pair "
            "(image, label)"
        )
    if np.ndim(label) > 1 or np.size(label) != 1:
        raise ValueError(
            f"record {j}: its label has shape {np.shape(label)}, not one value: the source "
            "holds batches, not single records; pass those batches to analyze directly "
            "(and a one-hot label must become a class index first)"
        )
    return image, label


def _raw_images(images: list, spatial_ndim: int | None, what: str) -> np.ndarray:
    """Images of records stacked channels-last as :func:`ifa_jax.inputs.as_images` shapes
    them, their dtype (uint8) kept."""
    x = stack_same_shape(images, what)
    one = np.zeros((1, *x.shape[1:]), np.float32)
    one = as_images(one, spatial_ndim=spatial_ndim, what=what)
    return x.reshape(len(x), *one.shape[1:])


def _record_targets(labels: list, what: str) -> np.ndarray:
    """Labels of records -> (N,): int32 class indices (:func:`ifa_jax.inputs.as_labels`), or
    float targets kept as floats (a regression target: analyse it with ``bins=``)."""
    y = np.asarray(labels).reshape(len(labels))
    if np.issubdtype(y.dtype, np.floating):
        return y
    return as_labels(y, what=what)


@dataclasses.dataclass(frozen=True, eq=False)
class RecordBatches:
    """Fixed-size :class:`ifa_jax.inputs.Batch` es ``(x: (B, *spatial, C) float32 (or the
    images' dtype with ``convert=False``), y: (B,), mask: (B,))`` read from a random-access
    source of single records. Build it with :func:`record_batches`. Sized (``len`` is the
    number of batches, so the progress bar of :func:`analyze` shows a total) and
    re-iterable; reads the records batch by batch."""

    source: Any
    batch_size: int
    keys: tuple[str, ...] = DEFAULT_KEYS
    spatial_ndim: int | None = None
    drop_remainder: bool = False
    shard_index: int = 0
    shard_count: int = 1
    convert: bool = True

    def __len__(self) -> int:
        n, step = len(self.source), self.batch_size * self.shard_count
        return n // step if self.drop_remainder else -(-n // step)

    def _read(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        fields = [_record_fields(self.source[j], j, self.keys) for j in range(lo, hi)]
        what = f"records {lo}..{hi - 1}"
        images = [np.asarray(im) for im, _ in fields]
        if self.convert:
            x = as_images(images, spatial_ndim=self.spatial_ndim, what=what)
        else:
            x = _raw_images(images, self.spatial_ndim, what)
        return x, _record_targets([label for _, label in fields], f"{what} labels")

    def __iter__(self) -> Iterator[Batch]:
        n, b = len(self.source), self.batch_size
        for step in range(len(self)):
            lo = step * b * self.shard_count + self.shard_index * b
            hi = min(lo + b, n)
            # An empty share (the last global batch of a multi-process pass) still yields a
            # batch of padding, shaped like record 0, so every process steps alike.
            x, y = self._read(lo, hi) if hi > lo else self._read(0, 1)
            k = max(hi - lo, 0)
            out_x = np.zeros((b, *x.shape[1:]), x.dtype)
            out_y = np.zeros(b, y.dtype)
            out_x[:k], out_y[:k] = x[:k], y[:k]
            yield Batch(out_x, out_y, np.arange(b) < k)


def record_batches(
    source: Any,
    batch_size: int,
    *,
    keys: Sequence[str] = DEFAULT_KEYS,
    spatial_ndim: int | None = None,
    drop_remainder: bool = False,
    shard_index: int | None = None,
    shard_count: int | None = None,
    convert: bool = True,
) -> RecordBatches:
    """Batches ``(x, y, mask)`` for :func:`analyze` from any random-access source of records.

    ``source`` has ``len(source)`` and ``source[i] -> one record``: ``tfds.data_source(...)``
    (records ``{'image': (H, W, C) uint8, 'label': int}``), a grain ``MapDataset``, or a
    plain list. A record is a dict read with ``keys=(image key, label key)`` or a pair
    ``(image, label)``. Images become channels-last float32 in [0, 1] with
    :func:`ifa_jax.inputs.as_images` (uint8 / 255; an (H, W) image gets a channel axis;
    ``spatial_ndim`` as there); all records must share one image size. Integer labels become
    int32 class indices (:func:`ifa_jax.inputs.as_labels`); float labels stay floats, a
    regression target for ``analyze(..., bins=...)``. Order is the source's; the last short
    batch is padded with ``mask=False`` rows (or dropped with ``drop_remainder``), so every
    batch has ``batch_size`` rows and the step compiles once. ``shard_index`` /
    ``shard_count`` (default: this process of ``jax.process_count()``) cut every global
    batch of ``batch_size * shard_count`` records as :func:`ifa_jax.inputs.batches` does.
    ``convert=False`` keeps the images' dtype (shaped channels-last all the same), so uint8
    goes to the device as uint8 and ``analyze(..., preprocess=...)`` converts it there.

    Args:
        source: the records, with ``len(source)`` and ``source[i]``.
        batch_size: records per batch (per process).
        keys: the image and label keys of dict records.
        spatial_ndim: the images' number of spatial axes, or None (as
            :func:`ifa_jax.inputs.as_images` infers it).
        drop_remainder: whether to drop the last short batch instead of padding it.
        shard_index: this process's shard, or None.
        shard_count: the number of shards, or None.
        convert: whether images become float32 in [0, 1] on the host (False: as they
            are, for ``preprocess=``).

    Returns:
        A sized, re-iterable :class:`RecordBatches` of ``Batch(x (B, *spatial, C) float32
        (with ``convert=False``: the images' dtype), y (B,), mask (B,))``.

    Raises:
        ValueError: ``source`` has no ``len`` and indexing (or is a dict), or
            ``batch_size`` is not a positive int, or the keys or shards are invalid.
    """
    if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
        raise ValueError(
            f"source is a {type(source).__name__}, which has no len() and "
            "random access source[i]; give a sized, indexable source of "
            "records (e.g. tfds.data_source(...) or list(records))"
        )
    if isinstance(source, Mapping):
        raise ValueError(
            "source is a dict (one batch or one record?); give a sequence of "
            "records, e.g. [{'image': ..., 'label': ...}, ...]"
        )
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    keys = check_keys(keys, sizes=(2,))
    if not isinstance(convert, (bool, np.bool_)):
        raise ValueError(
            f"convert must be True (images to float32 in [0, 1] on the host) or False (kept "
            f"as they are, for analyze(..., preprocess=...)); got convert={convert!r}"
        )
    shard_index, shard_count = shard(shard_index, shard_count)
    return RecordBatches(
        source,
        int(batch_size),
        keys,
        spatial_ndim,
        drop_remainder,
        int(shard_index),
        int(shard_count),
        bool(convert),
    )


def quantile_bins(values: ArrayLike, n: int) -> np.ndarray:
    """Edges (n + 1,) float64 at the quantiles 0, 1/n, ..., 1 of ``values``, a sample of
    float targets (e.g. the training targets): ``analyze(..., bins=quantile_bins(y, 4))``
    then puts about a quarter of that sample in each bin. Tied quantiles (targets with few
    distinct values) are merged, with a warning, so fewer than n bins may come back.

    Args:
        values: a sample of the float targets, finite.
        n: the number of bins wanted, >= 1.

    Returns:
        The edges (n + 1,) float64 (fewer with tied quantiles).

    Raises:
        ValueError: n is not a positive int, or values is empty, non-finite or constant.

    Warns:
        UserWarning: tied quantiles were merged (fewer than n bins).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n (the number of bins) must be a positive int; got {n!r}")
    v = np.asarray(values, np.float64).ravel()
    if v.size == 0:
        raise ValueError("values is empty; give a sample of the targets to bin")
    if not np.isfinite(v).all():
        raise ValueError(
            f"values holds {int(np.sum(~np.isfinite(v)))} non-finite value(s); "
            "drop them before computing the bins"
        )
    edges = np.quantile(v, np.linspace(0.0, 1.0, n + 1))
    unique = np.unique(edges)
    if unique.size < 2:
        raise ValueError(f"all {v.size} values equal {v[0]:g}; there is nothing to bin")
    if unique.size < edges.size:
        warnings.warn(
            f"values has tied quantiles (few distinct values): {unique.size - 1} "
            f"bins instead of {n}",
            stacklevel=2,
        )
    return unique


def check_bins(bins: ArrayLike) -> np.ndarray:
    """``bins`` as (C+1,) float64 finite, strictly increasing edges, or a ValueError."""
    fix = (
        "bins= takes C+1 finite, strictly increasing bin edges (C bins), e.g. "
        "bins=ifa_jax.analysis.quantile_bins(train_targets, 4)"
    )
    try:
        edges = np.asarray(bins, np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{fix}; got bins={bins!r}") from None
    if (
        edges.ndim != 1
        or edges.size < 2
        or not np.isfinite(edges).all()
        or np.any(np.diff(edges) <= 0)
    ):
        raise ValueError(f"{fix}; got bins={bins!r}")
    return edges


def bin_targets(y: np.ndarray, valid: np.ndarray, edges: np.ndarray, i: int) -> np.ndarray:
    """Target values y (B,) -> bin indices (B,) int32 in [0, C): bin c holds
    edges[c] <= y < edges[c + 1]; values below edges[1] go to bin 0, from edges[-2] up to
    the last bin (np.digitize on the inner edges)."""
    if not (np.issubdtype(y.dtype, np.floating) or np.issubdtype(y.dtype, np.integer)):
        raise ValueError(
            f"batch {i}: with bins=, labels must be real target values; got dtype {y.dtype}"
        )
    bad = valid & ~np.isfinite(y)
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"batch {i}: target value {y[j]} (sample {j}) is not finite; drop "
            "it or mask it (valid=False)"
        )
    return np.digitize(y, edges[1:-1]).astype(np.int32)


def label_dtype_error(i: int, dtype: np.dtype) -> ValueError:
    """The error for batch ``i``'s labels of non-integer ``dtype`` (a float: pass bins=)."""
    if np.issubdtype(dtype, np.floating):
        return ValueError(
            f"batch {i}: labels have dtype {dtype}, a float target (regression); pass bins= "
            "(C+1 increasing edges, e.g. bins=ifa_jax.analysis.quantile_bins(train_targets, "
            "4)) to analyse per bin of the target, and target= the output to explain. Class "
            "indices stored as floats: convert them with ifa_jax.inputs.as_labels"
        )
    return ValueError(
        f"batch {i}: labels must be integers (or float targets with bins=); got dtype {dtype}"
    )


def cast_floating(variables: Variables, dtype: np.dtype) -> Variables:
    """``variables`` with every floating leaf cast to ``dtype`` (integer leaves, e.g. step
    counters, unchanged)."""

    def cast(leaf):
        leaf = jnp.asarray(leaf)
        return leaf.astype(dtype) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf

    return jax.tree.map(cast, variables)


def length(batches: Iterable[Any]) -> int | None:
    """``len(batches)``, or None for an iterable of unknown length."""
    try:
        return len(batches)  # type: ignore[arg-type]
    except TypeError:  # no __len__ (a generator), or one that refuses (unknown cardinality)
        return None


class DeviceBatch(NamedTuple):
    """One batch as the step takes it: x (B, ...), y (B,) int32 and valid (B,) bool on the
    device (B padded to the pass' batch size), and on the host the valid rows' labels
    (class or bin indices) and, with bins, their target values."""

    x: jax.Array
    y: jax.Array
    valid: jax.Array
    labels: np.ndarray
    target_values: np.ndarray | None
    input_bytes: int


@dataclasses.dataclass
class BatchAdapter:
    """Reads each batch of a pass (:func:`ifa_jax.inputs.unpack_batch` with ``keys``), pads
    it to one size, checks its inputs and labels (bins the targets with ``edges``) and puts
    it on the devices of ``sharding``; with several processes (``multi_process``) each
    process gives its own shard of the global batch. The batch size is ``batch_size`` or
    the first non-empty batch's. Floating inputs are cast to ``compute_dtype`` on the host;
    with ``on_device`` (the step converts x: ``preprocess=``) x keeps its dtype (uint8
    stays uint8) and integer inputs do not warn."""

    keys: tuple[str, ...]
    num_classes: int
    edges: np.ndarray | None = None
    batch_size: int | None = None
    multiple: int = 1
    compute_dtype: np.dtype | None = None
    sharding: jax.sharding.Sharding | None = None
    multi_process: bool = False
    on_device: bool = False
    size: int | None = dataclasses.field(default=None, init=False)  # the padded size
    first_shape: tuple[int, ...] | None = dataclasses.field(default=None, init=False)

    def __post_init__(self) -> None:
        self.size = self.batch_size

    def __call__(self, i: int, batch: Any) -> DeviceBatch | None:
        """Batch ``i`` on the device, or None for a batch of 0 rows to skip."""
        bx, by, bvalid = unpack_batch(batch, i, self.keys)
        if np.ndim(by) == 0:
            raise record_error(i, bx, by)
        n = np.shape(by)[0]
        if n == 0 and (self.size is None or jax.process_count() == 1):
            return None  # nothing to analyse (several processes must all step, so pad there)
        size = self.size = n if self.size is None else self.size
        x, y, valid = pad_batch(
            bx,
            by,
            bvalid,
            size,
            i,
            size_from="batch_size" if self.batch_size is not None else "the first batch's size",
            fix="pass batch_size= (the largest batch size) to analyze, and smaller batches "
            "are padded to it",
            multiple=self.multiple,
        )
        self._check_shape(i, x)
        values = None
        if self.edges is not None:
            values = y[valid]
            y = bin_targets(y, valid, self.edges, i)
        elif not np.issubdtype(y.dtype, np.integer):
            raise label_dtype_error(i, y.dtype)
        label_range(y, valid, self.num_classes, i, "pass the right num_classes or fix the labels")
        # On the host, then one transfer of the three (jnp.asarray would run device ops).
        x_host = np.asarray(x, jax.dtypes.canonicalize_dtype(x.dtype))
        if self.compute_dtype is not None and jnp.issubdtype(x_host.dtype, jnp.floating):
            x_host = x_host.astype(self.compute_dtype)
        host = (x_host, y.astype(np.int32), valid)
        if self.multi_process:
            # Each process holds its own shard of the global batch.
            assert self.sharding is not None
            xj, yj, vj = (jax.make_array_from_process_local_data(self.sharding, a) for a in host)
        else:
            xj, yj, vj = jax.device_put(host, self.sharding)
        return DeviceBatch(xj, yj, vj, y[valid], values, x.nbytes)

    def _check_shape(self, i: int, x: np.ndarray) -> None:
        """One input shape per pass; integer inputs warn once (at the first batch)."""
        if self.first_shape is None:
            self.first_shape = x.shape[1:]
            if x.ndim >= 3 and not self.on_device:  # images, signals, volumes; not tokens
                warn_integer_inputs(
                    x.dtype,
                    f"the inputs of batch {i}",
                    "Convert them first: x / 255 for uint8 images (ifa_jax.inputs.as_images), "
                    "or on the device: analyze(..., preprocess=lambda x: x.astype(jnp.float32) "
                    "/ 255), or read records with ifa_jax.analysis.record_batches, which "
                    "converts them.",
                    stacklevel=None,  # the user's call of analyze (or analyze_methods)
                )
        elif x.shape[1:] != self.first_shape:
            raise ValueError(
                f"batch {i} has input shape {x.shape[1:]} but the first batch had "
                f"{self.first_shape}; resize the inputs to one shape per pass"
            )

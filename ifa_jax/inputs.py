"""The inputs of the analysis: in-memory datasets, conversion of user arrays, fixed-size
batching.

- :class:`Dataset`: arrays in memory, ``x: (N, *spatial, C)`` float32 in [0, 1], ``y:
  (N,)`` int32, and optionally ground-truth ``masks: (N, *spatial)`` bool (where the
  object of the label lies, for the localisation metrics); any object with ``__len__``,
  ``gather(indices) -> (x, y)``, ``input_shape`` and ``num_classes`` works alike
  (:class:`Source`), and one with ``gather_masks(indices)`` brings its masks along.
- :func:`as_images` / :func:`as_labels` check and convert the user's arrays.
- :func:`batches` turns a source into fixed-size :class:`Batch` es ``(x, y, mask)``
  (with ``.masks`` when the source has masks); the last short batch is padded with
  ``mask=False`` rows (or dropped), so a jitted step compiles once. Shuffling is
  deterministic given an explicit key or seed, and each process of a multi-host job
  reads its own disjoint share of every global batch.

Dataset loaders (the embedded digits, tfds, MedMNIST, signals) are the application's:
:mod:`ifa_jax.runner.data`.

Examples:
    Five 4 x 4 grey uint8 images in batches of 2; the last batch is padded:

    >>> import numpy as np
    >>> from ifa_jax.inputs import Dataset, as_images, as_labels, batches
    >>> x = as_images(np.full((5, 4, 4), 255, np.uint8))
    >>> x.shape, x.dtype, float(x.max())
    ((5, 4, 4, 1), dtype('float32'), 1.0)
    >>> ds = Dataset(x, as_labels([0, 1, 2, 1, 0]), num_classes=3)
    >>> [(b.x.shape, b.y.tolist(), b.mask.tolist()) for b in batches(ds, 2)]
    [((2, 4, 4, 1), [0, 1], [True, True]),
     ((2, 4, 4, 1), [2, 1], [True, True]),
     ((2, 4, 4, 1), [0, 0], [True, False])]

    Ground-truth masks travel with their images; padding rows get empty ones:

    >>> masks = np.zeros((5, 4, 4), bool)
    >>> masks[:, 1:3, 1:3] = True
    >>> ds = Dataset(x, as_labels([0, 1, 2, 1, 0]), num_classes=3, masks=masks)
    >>> [b.masks.sum(axis=(1, 2)).tolist() for b in batches(ds, 2)]
    [[4, 4], [4, 4], [4, 0]]
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple, Protocol

import jax
import numpy as np

from ifa_jax._checks import require_keys, shard, stack_same_shape, to_unit_float

__all__ = [
    "Batch",
    "Dataset",
    "Source",
    "as_images",
    "as_labels",
    "batches",
    "check_masks",
    "example_order",
    "unpack_batch",
]


def check_masks(masks: Any, x_shape: tuple[int, ...], what: str) -> np.ndarray:
    """Ground-truth masks checked against their inputs: ``(N, *spatial)`` bool.

    Args:
        masks: (N, *spatial) bool (or 0/1 integers), one mask per input.
        x_shape: the inputs' shape ``(N, *spatial, C)``.
        what: the masks' owner, for messages.

    Returns:
        The masks as a bool array.

    Raises:
        ValueError: another shape, or values other than True/False (0/1).
    """
    m = np.asarray(masks)
    want = tuple(x_shape[:-1])
    if m.shape != want:
        raise ValueError(
            f"{what}: masks have shape {m.shape} but the inputs {tuple(x_shape)} need "
            f"{want} (N, *spatial): one mask per input, on the input grid without the "
            "channel axis"
        )
    if m.dtype != np.bool_:
        numeric = np.issubdtype(m.dtype, np.number)
        if not (numeric and np.isin(m, (0, 1)).all()):
            example = m[~np.isin(m, (0, 1))].flat[0].item() if numeric else None
            values = f" with values other than 0 and 1 (e.g. {example!r})" if numeric else ""
            raise ValueError(
                f"{what}: masks must be bool (True on the object); got dtype {m.dtype}"
                f"{values}; threshold them first, e.g. masks > 0.5"
            )
        m = m.astype(np.bool_)
    return m


class _BatchFields(NamedTuple):
    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray


class Batch(_BatchFields):
    """One fixed-size batch: ``x: (B, *spatial, C)`` float32, ``y: (B,)`` int32, ``mask: (B,)``.

    ``mask`` is False on padding rows (x and y are zero there); they must not count in any
    loss, metric or statistic. ``masks`` (an attribute, default None) holds the
    ground-truth masks ``(B, *spatial)`` bool of a source that has them (all False on
    padding rows); not to be confused with ``mask``, the valid rows.

    Raises:
        ValueError: masks of another shape than ``x`` without its channel axis.
    """

    # An attribute, not a fourth field: a Batch stays the 3-tuple (x, y, valid) that
    # every consumer of batches unpacks.
    masks: np.ndarray | None = None

    def __new__(cls, x: np.ndarray, y: np.ndarray, mask: np.ndarray, masks: Any = None):
        """A batch; ``masks`` (B, *spatial) bool or None."""
        self = super().__new__(cls, x, y, mask)
        if masks is not None:
            self.masks = check_masks(masks, np.shape(x), "batch")
        return self


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """An in-memory labelled dataset: ``x: (N, *spatial, C)`` float32 in [0, 1], ``y: (N,)``,
    and optionally ground-truth ``masks: (N, *spatial)`` bool (None: the dataset has none).

    Raises:
        ValueError: x not float32, y not (N,) integers in [0, num_classes), lengths that
            differ, or masks not (N, *spatial) bool.
    """

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    name: str = "dataset"
    masks: np.ndarray | None = None

    def __post_init__(self):
        if self.x.dtype != np.float32:
            raise ValueError(
                f"{self.name}: x must be float32 in [0, 1]; got dtype {self.x.dtype}. "
                "Convert it with ifa_jax.inputs.as_images(x)."
            )
        if self.y.ndim != 1 or not np.issubdtype(self.y.dtype, np.integer):
            raise ValueError(
                f"{self.name}: y must be integer class indices of shape (N,); got "
                f"{self.y.dtype} {self.y.shape}. Convert it with ifa_jax.inputs.as_labels(y)."
            )
        if len(self.x) != len(self.y):
            raise ValueError(
                f"{self.name}: x has {len(self.x)} examples but y has {len(self.y)}; "
                "they must have the same length"
            )
        if self.y.size and (self.y.min() < 0 or self.y.max() >= self.num_classes):
            raise ValueError(
                f"{self.name}: labels must lie in [0, {self.num_classes}); "
                f"got range [{self.y.min()}, {self.y.max()}]. Pass a larger num_classes."
            )
        if self.masks is not None:
            object.__setattr__(self, "masks", check_masks(self.masks, self.x.shape, self.name))

    def __len__(self) -> int:
        return len(self.y)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, ``(*spatial, C)``."""
        return tuple(self.x.shape[1:])

    def gather(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Examples at ``indices: (k,)`` -> ``(x: (k, *spatial, C), y: (k,))``."""
        return self.x[indices], self.y[indices]

    def gather_masks(self, indices: np.ndarray) -> np.ndarray | None:
        """Ground-truth masks at ``indices: (k,)`` -> ``(k, *spatial)`` bool, or None when
        the dataset has none."""
        return None if self.masks is None else self.masks[indices]

    def subset(self, indices: np.ndarray, name: str | None = None) -> Dataset:
        """A new :class:`Dataset` holding the examples (and masks) at ``indices``."""
        return Dataset(
            self.x[indices],
            self.y[indices],
            self.num_classes,
            name or self.name,
            self.gather_masks(indices),
        )


class Source(Protocol):
    """What :func:`batches` needs: a length, ``gather(indices) -> (x, y)`` and an input shape."""

    @property
    def num_classes(self) -> int:
        """Number of classes C (labels lie in [0, C))."""
        ...

    @property
    def name(self) -> str:
        """A name for messages."""
        ...

    def __len__(self) -> int: ...

    def gather(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Examples at ``indices: (k,)`` -> ``(x: (k, *spatial, C), y: (k,))``."""
        ...

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, ``(*spatial, C)``."""
        ...


def as_images(images: Any, *, spatial_ndim: int | None = None, what: str = "images") -> np.ndarray:
    """Validate and convert images to channels-last float32 in [0, 1].

    ``images`` is an array or a list of arrays, one per example, shaped
    ``(N, H, W)`` (grey), ``(N, H, W, C)`` with C in {1, 3, 4}, or ``(N, D, H, W)`` (a volume,
    when ``spatial_ndim=3`` or when the last axis is not a channel axis), or
    ``(N, D, H, W, C)``.

    Args:
        images: the array or list of arrays.
        spatial_ndim: 2 or 3, removes the ambiguity of 4-D arrays; None: read 4-D arrays
            as (N, H, W, C) when the last axis has 1, 3 or 4 entries.
        what: the name of the images in error messages.

    Returns:
        ``(N, *spatial, C)`` float32 in [0, 1].

    Raises:
        ValueError: a shape none of the above, differently shaped list entries, or
            values that cannot be converted to [0, 1].
    """
    if isinstance(images, (list, tuple)) or (
        isinstance(images, np.ndarray) and images.dtype == object
    ):
        images = stack_same_shape(list(images), what)
    x = np.asarray(images)
    if spatial_ndim not in (None, 2, 3):
        raise ValueError(f"spatial_ndim must be None, 2 or 3; got {spatial_ndim}")
    if x.ndim == 3:  # (N, H, W)
        x = x[..., None]
    elif x.ndim == 4:
        is_channels = x.shape[-1] in (1, 3, 4)
        if spatial_ndim == 3 or (spatial_ndim is None and not is_channels):
            x = x[..., None]  # (N, D, H, W) volume
        elif not is_channels:
            raise ValueError(
                f"{what}: shape {x.shape} read as (N, H, W, C) needs C in (1, 3, 4); "
                "pass spatial_ndim=3 if these are (N, D, H, W) volumes"
            )
    elif x.ndim != 5:
        raise ValueError(
            f"{what}: expected (N, H, W), (N, H, W, C), (N, D, H, W) or (N, D, H, W, C); "
            f"got shape {x.shape}"
        )
    return to_unit_float(x, what)


def as_labels(labels: Any, *, what: str = "labels") -> np.ndarray:
    """Validate and convert labels to int32 class indices ``(N,)``.

    Accepts ``(N,)`` or ``(N, 1)`` integers; floats with integral values are converted; one-hot
    ``(N, K)`` rows are converted with argmax (with a warning). Multi-hot or soft labels,
    non-integral floats and negative labels raise ValueError.

    Args:
        labels: (N,), (N, 1) or one-hot (N, K).
        what: the name of the labels in error messages.

    Returns:
        ``(N,)`` int32.

    Raises:
        ValueError: as above, and a shape none of those.
    """
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 2:
        is_binary = np.all((y == 0) | (y == 1))
        if is_binary and np.all(y.sum(axis=1) == 1):
            warnings.warn(
                f"{what}: one-hot labels of shape {y.shape} converted to class indices with argmax",
                stacklevel=2,
            )
            y = np.argmax(y, axis=1)
        else:
            bad = int(np.flatnonzero(~((y == 0) | (y == 1)).all(axis=1) | (y.sum(axis=1) != 1))[0])
            raise ValueError(
                f"{what}: shape {y.shape} is not one-hot (row {bad} is {y[bad].tolist()}); "
                "multi-label or soft labels are not supported: give one class index per example"
            )
    if y.ndim != 1:
        raise ValueError(f"{what}: expected shape (N,), (N, 1) or one-hot (N, K); got {y.shape}")
    if y.dtype == np.bool_:
        y = y.astype(np.int32)
    if np.issubdtype(y.dtype, np.floating):
        integral = np.isfinite(y) & (y == np.round(y))
        if not np.all(integral):
            bad = int(np.flatnonzero(~integral)[0])
            raise ValueError(
                f"{what}: float labels must have integral values (class indices); "
                f"label {bad} is {y[bad]!r}"
            )
    elif not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{what}: labels must be integers; got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise ValueError(f"{what}: labels must be >= 0; found {y.min()}")
    return y.astype(np.int32)


def _as_key(key: Any) -> jax.Array:
    if isinstance(key, (int, np.integer)):
        return jax.random.key(int(key))
    return key


def example_order(n: int, shuffle_key: Any = None) -> np.ndarray:
    """The order (n,) in which :func:`batches` visits n examples: ``arange(n)``, or the
    permutation drawn with ``shuffle_key`` (a key or an int seed). Global batch ``step``
    of size B holds ``example_order(n, key)[step * B : (step + 1) * B]``.

    Args:
        n: the number of examples.
        shuffle_key: None, a ``jax.random`` key or an int seed.

    Returns:
        (n,) int indices.
    """
    if shuffle_key is None:
        return np.arange(n)
    return np.asarray(jax.random.permutation(_as_key(shuffle_key), n))


def batches(
    ds: Source,
    batch_size: int,
    *,
    shuffle_key: Any = None,
    drop_remainder: bool = False,
    shard_index: int | None = None,
    shard_count: int | None = None,
) -> Iterator[Batch]:
    """Yield fixed-size :class:`Batch` es ``(x: (B, *spatial, C), y: (B,), mask: (B,))``.

    Args:
      ds: a :class:`Dataset`, :class:`TfdsSource` or anything with ``__len__``, ``gather``
        and ``input_shape``.
      batch_size: B, the per-process batch size.
      shuffle_key: None (keep order), a ``jax.random`` key, or an int seed
        (``jax.random.key(seed)``). The same key gives the same order.
      drop_remainder: drop the last short global batch instead of padding it with
        ``mask=False`` rows.
      shard_index: this process's share for multi-host runs; default
        ``jax.process_index()``.
      shard_count: the number of shares; default ``jax.process_count()``. Each global batch of
        ``B * shard_count`` examples is cut into ``shard_count`` slices of B; every process
        gets the same number of batches and every example lands in exactly one process
        (all processes must pass the same ``shuffle_key``).

    Yields:
        :class:`Batch` es, each of ``batch_size`` rows; with ``masks`` ``(B, *spatial)``
        when ``ds`` has a ``gather_masks`` that returns them.

    Raises:
        ValueError: batch_size < 1, or a bad shard.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    shard_index, shard_count = shard(shard_index, shard_count)
    n = len(ds)
    order = example_order(n, shuffle_key)
    global_bs = batch_size * shard_count
    num_steps = n // global_bs if drop_remainder else -(-n // global_bs)
    shape = ds.input_shape
    gather_masks = getattr(ds, "gather_masks", None)
    for step in range(num_steps):
        lo = step * global_bs + shard_index * batch_size
        idx = order[lo : min(lo + batch_size, n)]
        x = np.zeros((batch_size, *shape), np.float32)
        y = np.zeros((batch_size,), np.int32)
        mask = np.zeros((batch_size,), np.bool_)
        masks = None
        if len(idx):
            xb, yb = ds.gather(idx)
            x[: len(idx)], y[: len(idx)], mask[: len(idx)] = xb, yb, True
        # Padding rows: an empty share reads example 0 to learn whether masks exist.
        mb = gather_masks(idx if len(idx) else np.arange(min(n, 1))) if gather_masks else None
        if mb is not None:
            masks = np.zeros((batch_size, *shape[:-1]), np.bool_)
            masks[: len(idx)] = mb[: len(idx)]
        yield Batch(x, y, mask, masks)


def unpack_batch(
    batch: Any, i: int = 0, keys: tuple[str, ...] = ("image", "label")
) -> tuple[Any, Any, Any]:
    """``(x, y, valid or None)`` of one batch: a tuple ``(x, y[, valid])``, a
    :class:`Batch` ``(x, y, mask)`` or a dict read with ``keys`` (image key, label key[,
    valid key]; without a third key its ``"mask"`` entry, when present). ``i`` numbers
    the batch in error messages.

    Args:
        batch: the batch.
        i: its number, for messages.
        keys: (image key, label key[, valid key]) of a dict batch.

    Returns:
        ``(x, y, valid)``; valid is None when the batch has none.

    Raises:
        ValueError: a batch of none of these forms, or a dict without the keys.
    """
    if isinstance(batch, Mapping):
        require_keys(
            f"batch {i}",
            batch,
            keys,
            "pass keys=(image key, label key) to "
            "analyze, with a third entry for a mask key, naming its entries",
        )
        valid_key = keys[2] if len(keys) == 3 else "mask"
        return batch[keys[0]], batch[keys[1]], batch.get(valid_key)
    if isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
        return batch[0], batch[1], batch[2] if len(batch) == 3 else None
    what = (
        f"a {type(batch).__name__} of {len(batch)}"
        if isinstance(batch, (tuple, list))
        else f"a {type(batch).__name__}"
    )
    raise ValueError(
        f"batch {i} is {what}; a batch is a tuple (x, y) or (x, y, valid), an "
        "ifa_jax.inputs.Batch, or a dict (its keys are named by keys=)"
    )

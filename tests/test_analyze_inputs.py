"""Inputs to analyze: tuples, data.Batch, dict batches, record sources, float targets."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from ifa_jax import analysis, explain, linen_probe
from ifa_jax.runner import data
from ifa_jax.runner.models import ConvNet

MODEL = ConvNet(ndim=2, features=(4, 6), num_classes=3)


def _labelled(channels, n, seed):
    """(variables, x (n, 6, 5, channels) float32 in [0, 1], y (n,) int: mostly the
    prediction, a few flipped, so count='correct' keeps some and drops some)."""
    x = np.asarray(jax.random.uniform(jax.random.key(seed), (n, 6, 5, channels)))
    variables = MODEL.init(jax.random.key(seed + 1), x)
    y = np.array(jnp.argmax(MODEL.apply(variables, x), -1))
    y[::4] = (y[::4] + 1) % 3
    return variables, x, y


@pytest.fixture(scope="module")
def colour():
    return _labelled(2, 10, 0)


def tuples(x, y, size=4):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]


def assert_same(got, want):
    for a, b in zip(got.summary, want.summary):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert set(got.samples) == set(want.samples)
    for k in want.samples:
        np.testing.assert_allclose(got.samples[k], want.samples[k], rtol=1e-5, atol=1e-6)


def run(probe, variables, batches, **kw):
    kw.setdefault("num_classes", 3)
    return analysis.analyze(probe, variables, batches, progress=False, **kw)


# --------------------------------------------------------------------------- batch kinds


@pytest.mark.filterwarnings("ignore::ifa_jax.analysis.MissingClassesWarning")  # random model
def test_batch_and_dict_batches_equal_tuples_and_compile_once(colour, traces):
    variables, x, y = colour
    probe = linen_probe(MODEL, "conv2")
    before = traces.count
    want = run(probe, variables, tuples(x, y))  # batches of 4, 4, 2
    assert traces.count - before == 1
    ds = data.Dataset(x, y.astype(np.int32), 3)
    as_batch = list(data.batches(ds, 4, shard_index=0, shard_count=1))  # padded to 4
    assert isinstance(as_batch[-1], data.Batch) and as_batch[-1].mask.sum() == 2
    renamed = [{"img": bx, "target": by} for bx, by in tuples(x, y)]
    masked = [{"image": b.x, "label": b.y, "mask": b.mask} for b in as_batch]
    own_mask = [{"image": b.x, "label": b.y, "keep": b.mask} for b in as_batch]
    for batches, keys in [
        (as_batch, analysis.DEFAULT_KEYS),
        (renamed, ("img", "target")),
        (masked, analysis.DEFAULT_KEYS),
        (own_mask, ("image", "label", "keep")),
    ]:
        assert_same(run(probe, variables, batches, keys=keys), want)
    # Every kind pads to the same (4, 6, 5, 2) batch: still the one compilation.
    assert traces.count - before == 1


@pytest.mark.filterwarnings("ignore::ifa_jax.analysis.MissingClassesWarning")  # random model
def test_batch_mask_is_honoured(colour):
    """Masked rows hold NaN inputs and an out-of-range label: they are neither counted,
    nor checked, nor returned, and the result equals the pass over the valid rows alone."""
    variables, x, y = colour
    probe = linen_probe(MODEL, "conv2")
    keep = np.array([True, False, True, True, False, True, True, True, False, True])
    dirty_x, dirty_y = x.copy(), y.copy()
    dirty_x[~keep], dirty_y[~keep] = np.nan, 99
    want = run(probe, variables, [(x[keep], y[keep])])
    got = run(
        probe,
        variables,
        [
            data.Batch(dirty_x[:5], dirty_y[:5], keep[:5]),
            data.Batch(dirty_x[5:], dirty_y[5:], keep[5:]),
        ],
    )
    assert_same(got, want)
    assert got.summary.seen == keep.sum() and len(got.samples["label"]) == keep.sum()
    np.testing.assert_array_equal(got.samples["label"], y[keep])
    as_dict = run(probe, variables, [{"image": dirty_x, "label": dirty_y, "mask": keep}])
    assert_same(as_dict, want)


def test_dict_batch_without_a_key_names_the_keys_and_keys_argument(colour):
    variables, x, y = colour
    probe = linen_probe(MODEL, "conv2")
    with pytest.raises(
        ValueError,
        match=r"batch 0 is a dict with keys 'img', 'lbl' but no "
        r"'image'; pass keys=\(image key, label key\)",
    ):
        run(probe, variables, [{"img": x, "lbl": y}])
    with pytest.raises(
        ValueError,
        match=r"batch 0 is a dict with keys 'image', 'label' but "
        r"no 'valid'",
    ):
        run(probe, variables, [{"image": x, "label": y}], keys=("image", "label", "valid"))
    with pytest.raises(
        ValueError,
        match=r"keys must be \(image key, label key\) or \(image "
        r"key, label key, mask key\), strings; got "
        r"keys='image'",
    ):
        run(probe, variables, [(x, y)], keys="image")
    with pytest.raises(ValueError, match=r"batch 0 is a ndarray; a batch is a tuple"):
        run(probe, variables, [x])
    with pytest.raises(ValueError, match=r"batch 0 is a tuple of 4; a batch is a tuple"):
        run(probe, variables, [(x, y, y, y)])


# --------------------------------------------------------------------------- record sources


@pytest.fixture(scope="module")
def grey_records():
    """10 dict records {'image': (6, 5) uint8, 'label': int} and variables for 1 channel."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 6, 5), dtype=np.uint8)
    labels = rng.integers(0, 3, 10)
    variables = MODEL.init(jax.random.key(2), np.zeros((1, 6, 5, 1), np.float32))
    records = [{"image": im, "label": int(c)} for im, c in zip(images, labels)]
    return records, images, labels, variables


def test_record_batches_from_a_list_of_dicts(grey_records, traces):
    records, images, labels, variables = grey_records
    batches = analysis.record_batches(records, 4)
    assert len(batches) == 3
    got = list(batches)
    assert [b.mask.tolist() for b in got][-1] == [True, True, False, False]
    b0 = got[0]
    assert isinstance(b0, data.Batch) and b0.x.dtype == np.float32 and b0.y.dtype == np.int32
    np.testing.assert_allclose(b0.x, images[:4, :, :, None] / 255.0, atol=1e-7)  # as_images
    np.testing.assert_array_equal(b0.y, labels[:4])
    np.testing.assert_array_equal(got[-1].x[2:], 0.0)
    # Float labels stay floats (a regression target for bins=), not class indices.
    floats = [{"image": r["image"], "label": r["label"] + 0.25} for r in records]
    np.testing.assert_allclose(next(iter(analysis.record_batches(floats, 4))).y, labels[:4] + 0.25)
    probe = linen_probe(MODEL, "conv2")
    before = traces.count
    want = run(probe, variables, tuples(data.as_images(images), labels), count="all")
    assert traces.count - before == 1
    assert_same(run(probe, variables, batches, count="all"), want)
    pairs = [(r["image"], r["label"]) for r in records]  # records as (image, label) pairs
    assert_same(run(probe, variables, analysis.record_batches(pairs, 4), count="all"), want)
    renamed = [{"pixels": r["image"], "y": r["label"]} for r in records]
    assert_same(
        run(
            probe, variables, analysis.record_batches(renamed, 4, keys=("pixels", "y")), count="all"
        ),
        want,
    )
    assert traces.count - before == 1


def test_record_source_and_dataset_passed_directly_point_to_the_helpers(grey_records, colour):
    records, _, _, variables = grey_records
    probe = linen_probe(MODEL, "conv2")
    with pytest.raises(
        ValueError,
        match=r"batch 0 is one record, not a batch.*"
        r"ifa_jax.analysis.record_batches\(source, "
        r"batch_size",
    ):
        run(probe, variables, records)
    with pytest.raises(
        ValueError,
        match=r"batches is a Dataset, a dataset, not batches; pass "
        r"ifa_jax.inputs.batches\(ds, batch_size\)",
    ):
        run(probe, variables, data.Dataset(colour[1], colour[2], 3))
    with pytest.raises(
        ValueError,
        match=r"record 0: its label has shape \(4,\), not one "
        r"value: the source holds batches",
    ):
        list(analysis.record_batches([{"image": colour[1][:4], "label": colour[2][:4]}], 4))
    with pytest.raises(
        ValueError,
        match=r"record 0 is a dict with keys 'image', 'label' but "
        r"no 'img'",
    ):
        list(analysis.record_batches(records, 4, keys=("img", "label")))
    with pytest.raises(ValueError, match=r"source is a generator, which has no len\(\)"):
        analysis.record_batches((r for r in records), 4)
    with pytest.raises(ValueError, match="batch_size must be a positive int; got 0"):
        analysis.record_batches(records, 0)


@pytest.mark.filterwarnings("ignore::ifa_jax.analysis.MissingClassesWarning")  # random model
def test_record_batches_from_a_tfds_data_source(traces):
    model = ConvNet(ndim=2, features=(4, 6), num_classes=10)
    with tfds.testing.mock_data(num_examples=6):
        source = tfds.data_source("mnist", split="train")
        variables = model.init(jax.random.key(3), np.zeros((1, 28, 28, 1), np.float32))
        probe = linen_probe(model, "conv2")
        images = np.stack([source[i]["image"] for i in range(6)])  # (6, 28, 28, 1) uint8
        labels = np.array([source[i]["label"] for i in range(6)])
        before = traces.count
        got = run(probe, variables, analysis.record_batches(source, 4), num_classes=10, count="all")
        assert traces.count - before == 1
        want = run(
            probe, variables, tuples(images / np.float32(255), labels), num_classes=10, count="all"
        )
        assert_same(got, want)
        np.testing.assert_array_equal(got.samples["label"], labels)
        assert got.summary.class_counts.sum() == 6 and got.summary.seen == 6
        with pytest.raises(ValueError, match="is one record, not a batch.*record_batches"):
            run(probe, variables, source, num_classes=10)


def test_progress_total_defaults_to_len(monkeypatch, colour):
    """The progress bar gets len(batches) when it exists (the pass stops at batch 0)."""
    variables, x, y = colour
    probe = linen_probe(MODEL, "conv2")
    seen = []

    def fake_tqdm(iterable, total=None, **kw):
        seen.append(total)
        return iter(iterable)

    monkeypatch.setattr("tqdm.auto.tqdm", fake_tqdm)
    bad = [{"img": x, "lbl": y}] * 3  # refused at batch 0, before any compilation
    records = [{"img": np.zeros((6, 5), np.uint8), "label": 0}] * 9
    for batches, kw in [
        (bad, {}),
        ((b for b in bad), {}),
        (bad, {"total": 7}),
        (analysis.record_batches(records, 4), {}),
    ]:
        with pytest.raises(ValueError, match="but no"):
            run(probe, variables, batches, **kw)
    assert seen == [3, None, 7, 3]


# --------------------------------------------------------------------------- float targets


@pytest.fixture(scope="module")
def regression():
    """A one-output ConvNet, x (22, 6, 5, 2), float targets y (22,) float32."""
    model = ConvNet(ndim=2, features=(4, 6), num_classes=1)
    x = np.asarray(jax.random.uniform(jax.random.key(5), (22, 6, 5, 2)))
    variables = model.init(jax.random.key(6), x)
    y = np.asarray(jax.random.normal(jax.random.key(7), (22,)), np.float32)
    return model, variables, x, y


def test_float_targets_are_analysed_per_quantile_bin(regression, traces):
    model, variables, x, y = regression
    probe = linen_probe(model, "conv2")
    edges = analysis.quantile_bins(y, 4)
    np.testing.assert_allclose(edges, np.quantile(y.astype(np.float64), [0, 0.25, 0.5, 0.75, 1]))
    before = traces.count
    result = analysis.analyze(
        probe,
        variables,
        tuples(x, y, 8),
        bins=edges,
        target=0,
        keep_importance=True,
        progress=False,
    )  # batches 8, 8, 6
    assert traces.count - before == 1
    bin_of = np.digitize(y, edges[1:-1])
    np.testing.assert_array_equal(result.summary.class_counts, np.histogram(y, edges)[0])
    np.testing.assert_array_equal(result.summary.class_counts, np.bincount(bin_of, minlength=4))
    np.testing.assert_array_equal(result.samples["label"], bin_of)
    np.testing.assert_array_equal(result.samples["target_value"], y)
    assert result.samples["counted"].all()  # count defaults to 'all' with bins
    # Per-sample importances equal a direct explanation of output 0 ...
    res, cam = explain(probe, variables, x, 0, "gradcam")
    s = result.samples["importance"]
    np.testing.assert_allclose(s, cam.importance, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        result.samples["score"], np.asarray(res.logits)[:, 0], rtol=1e-5, atol=1e-6
    )
    # ... and IM per bin is their mean per bin.
    im_bin = np.stack([s[bin_of == c].mean(0) for c in range(4)])
    np.testing.assert_allclose(result.summary.im_class, im_bin, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.summary.im_all, s.mean(0), rtol=1e-5, atol=1e-6)
    var_bin = np.stack([s[bin_of == c].var(0) for c in range(4)])
    np.testing.assert_allclose(result.summary.im_var, var_bin, rtol=1e-4, atol=1e-6)

    # Edges from another sample: values outside go to the first / last bin. Same number of
    # bins, same shapes and options: no new compilation.
    narrow = analysis.quantile_bins(np.sort(y)[5:-5], 4)  # the middle of the targets
    assert (y < narrow[0]).any() and (y > narrow[-1]).any()
    other = analysis.analyze(
        probe,
        variables,
        tuples(x, y, 8),
        bins=narrow,
        target=0,
        keep_importance=True,
        progress=False,
    )
    assert traces.count - before == 1
    want = np.bincount(np.clip(np.digitize(y, narrow) - 1, 0, 3), minlength=4)
    np.testing.assert_array_equal(other.summary.class_counts, want)
    np.testing.assert_array_equal(other.samples["label"], np.digitize(y, narrow[1:-1]))


def test_float_target_errors_name_the_fix(regression):
    model, variables, x, y = regression
    probe = linen_probe(model, "conv2")
    edges = analysis.quantile_bins(y, 4)
    with pytest.raises(
        ValueError,
        match=r"batch 0: labels have dtype float32, a float target "
        r"\(regression\); pass bins=.*quantile_bins",
    ):
        analysis.analyze(probe, variables, [(x, y)], num_classes=4, target=0, progress=False)
    for target in ("label", "predicted"):
        with pytest.raises(
            ValueError,
            match=f"target='{target}' cannot be explained with "
            r"bins=.*target=0",
        ):
            analysis.analyze(probe, variables, [(x, y)], bins=edges, target=target, progress=False)
    with pytest.raises(ValueError, match="count='correct' does not apply with bins="):
        analysis.analyze(
            probe, variables, [(x, y)], bins=edges, target=0, count="correct", progress=False
        )
    with pytest.raises(ValueError, match=r"num_classes=3 but bins has 5 edges, i.e. 4 bins"):
        analysis.analyze(
            probe, variables, [(x, y)], bins=edges, num_classes=3, target=0, progress=False
        )
    for bad in ([0.0, 1.0, 1.0], [1.0], 4, [[0.0, 1.0]], [0.0, np.nan]):
        with pytest.raises(
            ValueError,
            match=r"bins= takes C\+1 finite, strictly increasing "
            r"bin edges.*quantile_bins",
        ):
            analysis.analyze(probe, variables, [(x, y)], bins=bad, target=0, progress=False)
    nan_y = y.copy()
    nan_y[3] = np.nan
    with pytest.raises(
        ValueError,
        match=r"batch 0: target value nan \(sample 3\) is not "
        r"finite",
    ):
        analysis.analyze(probe, variables, [(x, nan_y)], bins=edges, target=0, progress=False)
    with pytest.raises(ValueError, match="num_classes= is required"):
        analysis.analyze(probe, variables, [(x, y)], progress=False)


def test_quantile_bins_edges_and_errors():
    with pytest.warns(UserWarning, match="tied quantiles.*2 bins instead of 4"):
        edges = analysis.quantile_bins([0, 0, 0, 0, 0, 1, 2], 4)
    np.testing.assert_array_equal(edges, [0.0, 0.5, 2.0])
    with pytest.raises(ValueError, match="n .* must be a positive int; got 0"):
        analysis.quantile_bins([1.0, 2.0], 0)
    with pytest.raises(ValueError, match="values is empty"):
        analysis.quantile_bins([], 2)
    with pytest.raises(ValueError, match="1 non-finite value"):
        analysis.quantile_bins([1.0, np.inf, 2.0], 2)
    with pytest.raises(ValueError, match="all 3 values equal 5"):
        analysis.quantile_bins([5, 5, 5], 2)


def test_record_batches_shards_cover_every_record_once(grey_records):
    """As data.batches: every process gets the same number of batches (the last share may
    be all padding) and every record lands in exactly one process."""
    records, images, _, _ = grey_records
    shards = [
        list(analysis.record_batches(records, 2, shard_index=k, shard_count=3)) for k in range(3)
    ]
    assert [len(s) for s in shards] == [2, 2, 2]
    assert shards[2][1].mask.sum() == 0 and shards[2][1].x.shape == (2, 6, 5, 1)
    rows = np.concatenate([b.x[b.mask] for step in zip(*shards) for b in step])
    np.testing.assert_allclose(rows, images[..., None] / 255.0, atol=1e-7)
    assert len(analysis.record_batches(records, 4, drop_remainder=True)) == 2
    with pytest.raises(ValueError, match="need 0 <= shard_index < shard_count"):
        analysis.record_batches(records, 2, shard_index=3, shard_count=3)

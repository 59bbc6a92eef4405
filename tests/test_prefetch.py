"""The input pipeline: batches prepared in a background thread ahead of the step
(``prefetch=``) and inputs converted on the device (``preprocess=``) give the results of
the direct path bit for bit, in the analysis pass and the consistency evaluation."""

from __future__ import annotations

import itertools
import threading
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ifa_jax import analysis, linen_probe, scale
from ifa_jax.analysis._prefetch import prefetched
from ifa_jax.consistency import class_levels, class_masses, common_levels, consistency_levels
from ifa_jax.runner.models import ConvNet

MODEL = ConvNet(ndim=2, features=(4, 6), num_classes=3)


def to_float(x):
    """uint8 images -> float32 in [0, 1], on the device (defined once: one compilation)."""
    return x.astype(jnp.float32) / 255


@pytest.fixture(scope="module")
def images():
    """(probe, variables, x (10, 6, 5, 2) uint8, y (10,)): labels mostly the prediction."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (10, 6, 5, 2), dtype=np.uint8)
    xf = x.astype(np.float32) / 255
    variables = MODEL.init(jax.random.key(1), xf)
    y = np.array(jnp.argmax(MODEL.apply(variables, xf), -1))
    y[::4] = (y[::4] + 1) % 3
    return linen_probe(MODEL, "conv2"), variables, x, y


def batches_of(x, y, sizes=(4, 0, 4, 2)):
    """Batches of the given sizes in order: a batch of 0 rows and a short final batch."""
    ends = np.cumsum(sizes)
    return [(x[e - s : e], y[e - s : e]) for s, e in zip(sizes, ends)]


def assert_identical(got, want):
    """Every Summary field and every per-sample value equal bit for bit (NaN rows too)."""
    for name, a, b in zip(want.summary._fields, got.summary, want.summary):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name, strict=True)
    assert set(got.samples) == set(want.samples)
    for k in want.samples:
        np.testing.assert_array_equal(got.samples[k], want.samples[k], err_msg=k, strict=True)


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "ifa_jax-prefetch"]


# --------------------------------------------------------------------------- the generator


def test_prefetched_keeps_order_reads_ahead_at_most_depth_and_stops():
    read, reached = [], {}

    def source():
        for j in itertools.count():
            read.append(j)
            if j in reached:
                reached[j].set()
            yield j

    def adapt(i, batch):
        assert i == batch
        return None if i == 0 else (i, threading.current_thread().name)

    depth = 2
    reached[4] = threading.Event()  # item 1 taken + 2 ahead + the caller's first two
    gen = prefetched(source(), adapt, depth)
    seen = []
    for i, item in gen:
        seen.append(i)
        # Items 0 (skipped) and 1 (the first kept) are read in the calling thread.
        if i <= 1:
            assert item is None or item[1] == threading.current_thread().name
        else:
            assert item == (i, "ifa_jax-prefetch")
        assert len(read) <= i + 1 + depth  # never more than depth ahead of the caller
        if i == 2:
            assert reached[4].wait(timeout=30)  # the thread reads ahead while we wait
        if i == 6:
            break
    assert seen == list(range(7))
    gen.close()  # stops the thread (blocked on a slot) and joins it
    assert not prefetch_threads()
    assert len(read) <= 7 + depth


@pytest.mark.parametrize("depth", [0, 1, 3])
@pytest.mark.parametrize("kind", [RuntimeError, KeyboardInterrupt])
def test_prefetched_raises_the_sources_error_in_the_caller(depth, kind):
    error = kind("the source broke at 3")  # also a BaseException, as Ctrl-C in a source

    def source():
        yield from range(3)
        raise error

    got = []
    with pytest.raises(kind) as info:
        for i, item in prefetched(source(), lambda i, b: b * 10, depth):
            got.append((i, item))
    assert info.value is error
    assert got == [(0, 0), (1, 10), (2, 20)]
    assert not prefetch_threads()


# --------------------------------------------------------------------------- analyze


@pytest.mark.filterwarnings("ignore::ifa_jax.analysis.MissingClassesWarning")  # random model
def test_prefetch_gives_the_direct_paths_results_bit_for_bit(images, traces):
    probe, variables, x, y = images
    xf = x.astype(np.float32) / 255
    kw = {"num_classes": 3, "methods": ("gradcam", "hirescam"), "keep_importance": True}
    kw["progress"] = False
    direct = analysis.analyze_methods(probe, variables, batches_of(xf, y), prefetch=0, **kw)
    for prefetch in (1, 2):
        got = analysis.analyze_methods(
            probe, variables, iter(batches_of(xf, y)), prefetch=prefetch, **kw
        )
        for m in direct:
            assert_identical(got[m], direct[m])
    np.testing.assert_array_equal(direct["gradcam"].samples["label"], y)  # input order
    assert traces.count == 1  # every batch padded to 4, one step for all passes
    assert not prefetch_threads()


@pytest.mark.filterwarnings("ignore::ifa_jax.analysis.MissingClassesWarning")  # random model
@pytest.mark.filterwarnings("error::ifa_jax.analysis.IntegerInputWarning")
def test_uint8_with_preprocess_equals_float_inputs(images):
    """uint8 over the bus, converted in the step: the same values as float32 batches
    converted by the same function on the device, bit for bit; NumPy's x / 255 differs
    by 1 ulp in some inputs (XLA multiplies by 1/255), so it only agrees to rounding."""
    probe, variables, x, y = images
    on_device = np.asarray(jax.jit(to_float)(x))
    kw = {"num_classes": 3, "progress": False}
    got = analysis.analyze(probe, variables, batches_of(x, y), preprocess=to_float, **kw)
    assert_identical(got, analysis.analyze(probe, variables, batches_of(on_device, y), **kw))
    host = analysis.analyze(probe, variables, batches_of(x.astype(np.float32) / 255, y), **kw)
    for a, b in zip(got.summary, host.summary):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # compute_dtype casts the output of preprocess in the step, as it casts float batches.
    kw["compute_dtype"] = jnp.bfloat16
    got = analysis.analyze(probe, variables, batches_of(x, y), preprocess=to_float, **kw)
    assert_identical(got, analysis.analyze(probe, variables, batches_of(on_device, y), **kw))


def test_record_batches_can_keep_uint8_for_preprocess():
    """convert=False: the batches of convert=True (shapes, padding, labels), uint8."""
    records = [{"image": np.full((3, 2), 40 * i, np.uint8), "label": i % 3} for i in range(5)]
    for got, want in zip(
        analysis.record_batches(records, 2, convert=False), analysis.record_batches(records, 2)
    ):
        assert got.x.dtype == np.uint8 and got.x.shape == want.x.shape == (2, 3, 2, 1)
        np.testing.assert_allclose(got.x / 255, want.x, rtol=1e-6)
        np.testing.assert_array_equal(got.y, want.y)
        np.testing.assert_array_equal(got.mask, want.mask)
    with pytest.raises(ValueError, match="convert must be True .* or False .*got convert='no'"):
        analysis.record_batches(records, 2, convert="no")


@pytest.mark.filterwarnings("ignore::ifa_jax.analysis.MissingClassesWarning")  # random model
def test_errors_and_warnings_reach_the_caller_with_prefetch(images):
    probe, variables, x, y = images
    xf = x.astype(np.float32) / 255
    bad = y.copy()
    bad[8] = 7  # in batch 3 (batches of 4, 0, 4, 2): read by the thread
    messages = []
    for prefetch in (0, 2):
        with pytest.raises(ValueError, match="batch 3: label 7 is outside") as info:
            analysis.analyze(
                probe,
                variables,
                batches_of(xf, bad),
                num_classes=3,
                progress=False,
                prefetch=prefetch,
            )
        messages.append(str(info.value))
    assert messages[0] == messages[1]

    # An error in the step's thread (a label the model has no output for) stops the
    # thread reading an endless source.
    read = []

    def endless():
        for j in itertools.count():
            read.append(j)
            yield xf[:4], np.where(np.arange(4) == 1, 4 if j == 3 else 0, y[:4])

    with pytest.raises(ValueError, match="batch 3: label 4 has no output"):
        analysis.analyze(probe, variables, endless(), num_classes=5, progress=False, count="all")
    assert not prefetch_threads() and len(read) <= 4 + 2

    # The warnings point at the caller's line, through analyze and analyze_methods alike:
    # the integer-input warning of the first batch and the missing classes (finalize_all).
    for run in (analysis.analyze, analysis.analyze_methods):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            by = {"method": "gradcam"} if run is analysis.analyze else {"methods": ("gradcam",)}
            result = run(probe, variables, batches_of(x, y), num_classes=3, progress=False, **by)
        kinds = {w.category for w in record}
        assert analysis.IntegerInputWarning in kinds, record
        assert analysis.MissingClassesWarning in kinds, record
        assert {w.filename for w in record} == {__file__}, record
    state = (result if run is analysis.analyze else result["gradcam"]).state
    with pytest.warns(analysis.MissingClassesWarning) as record:
        analysis.finalize_all([state, state])
    assert {w.filename for w in record} == {__file__}


def test_preprocess_and_prefetch_errors_name_the_fix(images):
    probe, variables, x, y = images
    run = {"num_classes": 3, "progress": False}
    with pytest.raises(ValueError, match=r"preprocess=.*got preprocess='x / 255'.*not callable"):
        analysis.analyze(probe, variables, batches_of(x, y), preprocess="x / 255", **run)
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match=rf"int >= 0.*got prefetch={bad}"):
            analysis.analyze(probe, variables, batches_of(x, y), prefetch=bad, **run)
    with pytest.raises(ValueError, match=r"preprocess must map the inputs x \(4, 6, 5, 2\)"):
        analysis.analyze(probe, variables, batches_of(x, y), preprocess=lambda x: x[0], **run)
    with pytest.raises(TypeError) as info:  # the function's own error, with a note
        analysis.analyze(probe, variables, batches_of(x, y), preprocess=lambda x: x @ x, **run)
    assert "raised by preprocess=" in str(info.value.__notes__)


@pytest.mark.filterwarnings("ignore::ifa_jax.analysis.MissingClassesWarning")  # random model
@pytest.mark.parametrize("every", [32, 2], ids=["one-chunk", "chunks-of-2"])
def test_steps_per_dispatch_gives_single_steps_results_bit_for_bit(
    images, traces, monkeypatch, every
):
    """k=4 over 6 non-empty batches (and an empty one, and a short last one): the batches
    merged in the same order; a keyed method's draws follow the samples through the scan;
    with chunks of 2 batches the group of 4 crosses a chunk's end."""
    from ifa_jax.analysis import _fetch

    probe, variables, x, y = images
    monkeypatch.setattr(_fetch, "FETCH_EVERY", every)
    xf = x.astype(np.float32) / 255
    batches = batches_of(xf, y, (2, 2, 0, 2, 2, 1, 1))
    kw = {"num_classes": 3, "methods": ("hirescam", "randomcam"), "keep_importance": True}
    kw |= {"key": jax.random.key(5), "progress": False}
    one = analysis.analyze_methods(probe, variables, batches, **kw)
    got = analysis.analyze_methods(probe, variables, batches, steps_per_dispatch=4, **kw)
    for m in one:  # 6 batches: one scan of 4, then 2 single steps
        assert_identical(got[m], one[m])
    assert traces.count <= 1  # the scans reuse the single step's trace (0: an earlier test's)
    with pytest.raises(ValueError, match=r"steps_per_dispatch must be an int >= 1.*got 0"):
        analysis.analyze_methods(probe, variables, batches, steps_per_dispatch=0, **kw)


# --------------------------------------------------------------------------- consistency


def test_consistency_streams_the_per_batch_results(images):
    """Both evaluation paths equal their per-batch functions called one batch at a time
    (as they were, with a host read per batch), bit for bit, with prefetch on or off and
    uint8 inputs converted by ``preprocess``."""
    probe, variables, x, y = images
    xf = np.asarray(jax.jit(to_float)(x))
    valid = np.arange(10) < 8
    batches = [
        (xf[:4], y[:4], valid[:4]),
        (xf[4:8], y[4:8], valid[4:8]),
        (xf[8:], y[8:], valid[8:]),
    ]
    as_uint8 = [(x[:4], y[:4], valid[:4]), (x[4:8], y[4:8], valid[4:8]), (x[8:], y[8:], valid[8:])]
    scales = {m: scale.scale_from_bounds(-0.2, 0.5) for m in ("gradcam", "hirescam")}
    masks = jnp.ones((3, 6))
    per_batch = [
        jax.device_get(
            class_levels(
                probe,
                variables,
                jnp.asarray(b[0]),
                jnp.arange(3),
                masks,
                tuple(scales.values()),
                methods=tuple(scales),
            )
        )
        for b in batches
    ]
    want = np.concatenate([lv for lv, _ in per_batch], -1)[..., valid]
    masses = [
        jax.device_get(class_masses(probe, variables, jnp.asarray(b[0]), methods=tuple(scales)))
        for b in batches
    ]
    want_logits = np.concatenate([lg for _, lg in masses])[valid]
    grid = int(np.prod(probe.output_shapes(variables, xf)[1]["conv2"][1:-1]))
    for prefetch in (0, 2):
        for source, pre in ((batches, None), (as_uint8, to_float)):
            got = consistency_levels(
                probe,
                variables,
                source,
                scales=scales,
                masks=masks,
                classes=[0, 1, 2],
                preprocess=pre,
                prefetch=prefetch,
            )
            np.testing.assert_array_equal(got.levels, want, strict=True)
            jvp = common_levels(
                probe, variables, source, scales=scales, preprocess=pre, prefetch=prefetch
            )
            np.testing.assert_array_equal(jvp.logits, want_logits, strict=True)
            m = np.concatenate([ms for ms, _ in masses], 1)[:, valid]
            a = np.array([s.a / grid for s in scales.values()], np.float32)[:, None, None]
            b = np.array([s.b for s in scales.values()], np.float32)[:, None, None]
            common = np.transpose(m * a + b, (2, 0, 1))[:, :, None, :]
            np.testing.assert_array_equal(jvp.levels, common, strict=True)
    assert not prefetch_threads()

    # As in analyze: preprocess must return one batch of as many rows, and uint8 inputs
    # without it warn at the caller's line.
    for wrong in (lambda u: u[:1].astype(jnp.float32), lambda u: (u, u)):
        with pytest.raises(ValueError, match=r"preprocess must map the inputs x \(4, 6, 5, 2\)"):
            common_levels(probe, variables, as_uint8, scales=scales, preprocess=wrong)
    with pytest.warns(analysis.IntegerInputWarning, match="preprocess=") as record:
        common_levels(probe, variables, as_uint8[:1], scales=scales)
    assert {w.filename for w in record} == {__file__}

"""Streaming statistics against a reference that keeps every per-sample vector."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ifa_jax import analysis, cams, explain, linen_probe
from ifa_jax.analysis import _fetch
from ifa_jax.analysis.step import merge_batches
from ifa_jax.runner.models import ConvNet
from tests import reference as ref

C, K, GRID = 3, 5, (4, 3)


def synthetic(n, seed=0, counted_share=0.8):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(n, K)).astype(np.float32) + np.arange(K)
    L = rng.normal(size=(n, *GRID)).astype(np.float32)
    labels = rng.integers(0, C, n)
    counted = rng.random(n) < counted_share
    return s, L, labels, counted


def run_updates(s, L, labels, counted, sizes):
    state = analysis.init(C, K, GRID)
    upd = jax.jit(analysis.update)
    start = 0
    for size in sizes:
        sl = slice(start, start + size)
        batch = analysis.BatchStats(
            jnp.asarray(s[sl]),
            jnp.asarray(L[sl]),
            jnp.asarray(labels[sl]),
            jnp.asarray(counted[sl]),
            jnp.ones(size, bool),
        )
        state = upd(state, batch)
        start += size
    return state


def test_statistics_match_reference():
    s, L, labels, counted = synthetic(37)
    summary = analysis.finalize(run_updates(s, L, labels, counted, [8, 8, 8, 8, 5]))
    want = ref.dataset_statistics(s, L, labels, counted, C)
    np.testing.assert_allclose(summary.class_counts, want["count"])
    np.testing.assert_allclose(summary.im_class, want["im_class"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(summary.im_all, want["im_all"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        summary.im_diff, want["im_class"] - want["im_all"], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(summary.im_var, want["im_var"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(summary.covariance, want["covariance"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(summary.cam_mean, want["cam_mean"], rtol=1e-5, atol=1e-6)
    assert summary.seen == 37


@pytest.mark.filterwarnings("ignore::ifa_jax.analysis.MissingClassesWarning")  # class 2
def test_class_rows_accumulate_not_overwrite():
    """The reference code overwrote IM_c with the last sample; here IM_c is the mean."""
    s = np.array([[1.0] * K, [3.0] * K, [10.0] * K], np.float32)
    L = np.zeros((3, *GRID), np.float32)
    summary = analysis.finalize(run_updates(s, L, np.array([0, 0, 1]), np.ones(3, bool), [3]))
    np.testing.assert_allclose(summary.im_class[0], 2.0)
    np.testing.assert_allclose(summary.im_all, 14.0 / 3)
    np.testing.assert_allclose(summary.im_diff[0], 2.0 - 14.0 / 3, rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_merge_is_exact_for_any_split(seed):
    s, L, labels, counted = synthetic(40, seed)
    whole = run_updates(s, L, labels, counted, [40])
    rng = np.random.default_rng(seed)
    cut = sorted(rng.choice(np.arange(1, 40), 3, replace=False))
    parts, start = [], 0
    for end in [*cut, 40]:
        sl = slice(start, end)
        parts.append(run_updates(s[sl], L[sl], labels[sl], counted[sl], [end - start]))
        start = end
    merged = analysis.merge(analysis.merge(parts[3], parts[1]), analysis.merge(parts[0], parts[2]))
    for a, b in zip(whole, merged):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # The empty state is the identity.
    empty = analysis.init(C, K, GRID)
    for a, b in zip(whole, analysis.merge(empty, whole)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_missing_class_is_reported_not_propagated():
    s, L, labels, counted = synthetic(20)
    counted &= labels != 2
    with pytest.warns(analysis.MissingClassesWarning, match=r"1 of 3 classes .*: \[2\]\. Their"):
        summary = analysis.finalize(run_updates(s, L, labels, counted, [20]))
    assert summary.missing_classes == (2,)
    assert np.isnan(summary.im_class[2]).all() and np.isfinite(summary.im_class[:2]).all()
    assert np.isfinite(summary.im_all).all() and np.isfinite(summary.covariance).all()


def test_empty_state_errors():
    with pytest.raises(ValueError, match="no sample was counted.*count='all'"):
        analysis.finalize(analysis.init(C, K, GRID))
    empty = analysis.Analysis(None, None, {"cam_max": np.zeros(0)})
    with pytest.raises(ValueError, match="no samples were analysed"):
        empty.percentiles()
    with pytest.raises(ValueError, match="do not match the state"):
        state = analysis.init(C, K, GRID)
        analysis.update(
            state,
            analysis.BatchStats(
                jnp.zeros((2, K + 1)),
                jnp.zeros((2, *GRID)),
                jnp.zeros(2, int),
                jnp.ones(2, bool),
                jnp.ones(2, bool),
            ),
        )


@pytest.fixture(scope="module")
def small_model():
    model = ConvNet(ndim=2, features=(4, 6), num_classes=3)
    x = jax.random.normal(jax.random.key(0), (11, 6, 5, 2))
    variables = model.init(jax.random.key(1), x)
    y = np.array(jnp.argmax(model.apply(variables, x), -1))
    y[:3] = (y[:3] + 1) % 3  # three misclassified samples
    return model, variables, np.asarray(x), y


def batches_of(x, y, size):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]


@pytest.mark.filterwarnings("ignore::ifa_jax.analysis.MissingClassesWarning")  # random model
def test_analyze_matches_per_sample_cams_and_compiles_once(small_model, traces):
    model, variables, x, y = small_model
    probe = linen_probe(model, "conv2")
    before = traces.count
    result = analysis.analyze(
        probe, variables, batches_of(x, y, 4), num_classes=3, method="gradcam", progress=False
    )
    # 3 batches, the last one short (3 of 4): one compilation for the whole pass.
    assert traces.count - before == 1
    res, cam = explain(probe, variables, x, y, "gradcam")
    pred = np.asarray(res.logits).argmax(-1)
    counted = pred == y
    want = ref.dataset_statistics(cam.importance, cam.cam, y, counted, 3)
    np.testing.assert_allclose(result.summary.im_class, want["im_class"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result.summary.covariance, want["covariance"], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(result.samples["cam_max"], cam.max, rtol=1e-5)
    np.testing.assert_array_equal(result.samples["counted"], counted)
    assert result.samples["score"].shape == (11,)
    pct = result.percentiles("cam_max")
    assert list(pct) == [25, 50, 75, 90, 95, 99]
    np.testing.assert_allclose(pct[95], np.percentile(np.asarray(cam.max), 95), rtol=1e-5)
    everyone = analysis.analyze(
        probe, variables, batches_of(x, y, 4), num_classes=3, count="all", progress=False
    )
    assert everyone.summary.class_counts.sum() == 11


def test_analyze_bad_input(small_model):
    model, variables, x, y = small_model
    probe = linen_probe(model, "conv2")
    bad = y.copy()
    bad[5] = 7
    with pytest.raises(ValueError, match=r"batch 1: label 7 is outside \[0, 3\)"):
        analysis.analyze(probe, variables, batches_of(x, bad, 4), num_classes=3, progress=False)
    nan_x = x.copy()
    nan_x[6] = np.nan
    with pytest.raises(FloatingPointError, match="batch 1: 1 sample"):
        analysis.analyze(probe, variables, batches_of(nan_x, y, 4), num_classes=3, progress=False)
    with pytest.raises(ValueError, match="batches is empty"):
        analysis.analyze(probe, variables, [], num_classes=3, progress=False)


def test_sharded_pass_equals_single_device(tmp_path):
    """8 host devices, batches sharded on the batch axis, 3 batches for 21 samples (the
    last short); prefetching and two steps per dispatch give the direct path's results bit
    for bit there too."""
    script = textwrap.dedent("""
        import jax, numpy as np, jax.numpy as jnp
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from ifa_jax import analysis, linen_probe
        from ifa_jax.runner.models import ConvNet
        assert jax.device_count() == 8, jax.devices()
        model = ConvNet(ndim=2, features=(4, 6), num_classes=3)
        x = np.asarray(jax.random.normal(jax.random.key(0), (21, 6, 5, 2)))
        v = model.init(jax.random.key(1), x)
        y = np.array(jnp.argmax(model.apply(v, x), -1)); y[::4] = (y[::4] + 1) % 3
        probe = linen_probe(model, "conv2")
        batches = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 21, 8)]
        one = analysis.analyze(probe, v, batches, num_classes=3, progress=False)
        mesh = Mesh(np.array(jax.devices()), ("batch",))
        many = analysis.analyze(probe, v, batches, num_classes=3, progress=False,
                                sharding=NamedSharding(mesh, P("batch")))
        for a, b in zip(one.summary[:-2], many.summary[:-2]):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        for k in one.samples:
            np.testing.assert_allclose(one.samples[k], many.samples[k], rtol=1e-6)
        direct = analysis.analyze(probe, v, batches, num_classes=3, progress=False,
                                  sharding=NamedSharding(mesh, P("batch")), prefetch=0)
        for a, b in zip(direct.summary, many.summary):  # prefetch=2 (default): bit for bit
            np.testing.assert_array_equal(a, b, strict=True)
        for k in one.samples:
            np.testing.assert_array_equal(direct.samples[k], many.samples[k], strict=True)
        grouped = analysis.analyze(probe, v, batches, num_classes=3, progress=False,
                                   sharding=NamedSharding(mesh, P("batch")),
                                   steps_per_dispatch=2)  # a scan of 2, then 1 step
        for a, b in zip(grouped.summary, many.summary):
            np.testing.assert_array_equal(a, b, strict=True)
        for k in one.samples:
            np.testing.assert_array_equal(grouped.samples[k], many.samples[k], strict=True)
        print("OK", many.state.count.sharding)
    """)
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=os.path.dirname(os.path.dirname(__file__)),
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK" in out.stdout


@pytest.mark.filterwarnings("ignore::ifa_jax.analysis.MissingClassesWarning")  # random model
def test_several_methods_in_one_pass_equal_separate_passes(small_model):
    model, variables, x, y = small_model
    probe = linen_probe(model, "conv2")
    both = analysis.analyze_methods(
        probe,
        variables,
        batches_of(x, y, 4),
        num_classes=3,
        methods=("gradcam", "hirescam"),
        progress=False,
    )
    assert set(both) == {"gradcam", "hirescam"}
    for m in both:
        alone = analysis.analyze(
            probe, variables, batches_of(x, y, 4), num_classes=3, method=m, progress=False
        )
        for a, b in zip(both[m].summary[:-1], alone.summary[:-1]):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(both[m].samples["cam_max"], alone.samples["cam_max"])
    assert not np.allclose(both["gradcam"].summary.im_class, both["hirescam"].summary.im_class)
    with pytest.raises(ValueError, match="input shape"):
        mixed = [(x[:4], y[:4]), (x[4:8, :4], y[4:8])]
        analysis.analyze(probe, variables, mixed, num_classes=3, progress=False)


@pytest.mark.filterwarnings("ignore::ifa_jax.analysis.MissingClassesWarning")  # random model
@pytest.mark.parametrize("every, in_flight", [(4, 1 << 30), (32, 1)], ids=["chunks4", "bytes1"])
def test_per_sample_values_come_back_per_chunk(small_model, traces, monkeypatch, every, in_flight):
    """No fetch per batch: one device_get per chunk of batches (4 here, or 1 batch when the
    input bytes bound is tiny), one array per field, the shared fields once for all methods;
    the results equal those of a pass fetched in one chunk, and the step compiles once."""
    model, variables, x, y = small_model
    probe = linen_probe(model, "conv2")
    methods = ("gradcam", "hirescam")

    def run():
        return analysis.analyze_methods(
            probe,
            variables,
            batches_of(x, y, 2),  # 6 batches, the last one short
            num_classes=3,
            methods=methods,
            keep_importance=True,
            progress=False,
        )

    whole = run()
    fetched = []
    device_get = jax.device_get

    def spy(tree):
        states = jax.tree.leaves(tree, is_leaf=lambda t: isinstance(t, analysis.Stats))
        if not all(isinstance(s, analysis.Stats) for s in states):  # not finalize's fetch
            fetched.append(len(jax.tree.leaves(tree)))
        return device_get(tree)

    monkeypatch.setattr(_fetch, "FETCH_EVERY", every)
    monkeypatch.setattr(_fetch, "IN_FLIGHT_BYTES", in_flight)
    monkeypatch.setattr(jax, "device_get", spy)
    before = traces.count
    chunked = run()
    assert traces.count - before == 0  # the same step as the first pass: no new trace
    # 7 shared fields (score, label, prediction, counted, valid, nonfinite, reached) once,
    # and cam_max, cam_min, importance per method.
    assert fetched == [7 + 3 * len(methods)] * (2 if every == 4 else 6)
    for m in methods:
        assert list(chunked[m].samples) == list(whole[m].samples)
        for k in whole[m].samples:
            np.testing.assert_array_equal(chunked[m].samples[k], whole[m].samples[k])
            assert chunked[m].samples[k].dtype == whole[m].samples[k].dtype
        for a, b in zip(chunked[m].summary, whole[m].summary):
            np.testing.assert_array_equal(a, b)
        assert chunked[m].samples["importance"].shape == (11, 6)
    # Shared fields are per-method copies, not one array.
    assert chunked["gradcam"].samples["label"] is not chunked["hirescam"].samples["label"]


def test_nonfinite_check_names_the_batch_of_a_later_chunk(small_model, monkeypatch):
    model, variables, x, y = small_model
    probe = linen_probe(model, "conv2")
    monkeypatch.setattr(_fetch, "FETCH_EVERY", 2)
    nan_x = x.copy()
    nan_x[9] = np.nan  # batch 4 (samples 8, 9): the third chunk, read at the end of the pass
    with pytest.raises(FloatingPointError, match="batch 4: 1 sample.*layer 'conv2'"):
        analysis.analyze(probe, variables, batches_of(nan_x, y, 2), num_classes=3, progress=False)


# Every public name of ifa_jax.analysis before it became a package (and analyze_methods).
PUBLIC_NAMES = [
    "COUNT_MODES",
    "DEFAULT_KEYS",
    "Analysis",
    "Array",
    "BatchStats",
    "IntegerInputWarning",
    "MissingClassesWarning",
    "NothingCountedError",
    "PerSample",
    "RecordBatches",
    "Stats",
    "Summary",
    "analysis_step",
    "analyze",
    "analyze_methods",
    "batch_stats",
    "check_layer_methods",
    "finalize",
    "finalize_all",
    "from_batch",
    "init",
    "merge",
    "quantile_bins",
    "record_batches",
    "update",
]


def test_the_package_keeps_every_public_name():
    missing = [n for n in PUBLIC_NAMES if not hasattr(analysis, n)]
    assert not missing
    assert sorted(analysis.__all__) == sorted(PUBLIC_NAMES)


def test_stats_is_a_pytree_that_still_reads_as_its_named_tuple():
    state = analysis.init(3, 4, (2, 2))
    assert (
        analysis.Stats._fields
        == state._fields
        == ("count", "mean", "m2", "comoment", "cam_mean", "seen")
    )
    count, mean, *_ = state  # unpacks in field order
    assert count.shape == (3,) and mean.shape == (3, 4) and len(state) == 6
    assert state[0] is state.count and state[-1] is state.seen
    again = analysis.Stats(*state)
    assert all(a is b for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(state)))
    doubled = jax.tree.map(lambda a: a + 1, state)
    assert isinstance(doubled, analysis.Stats) and float(doubled.seen) == 1.0
    assert list(state._asdict()) == list(state._fields)
    assert float(state._replace(seen=np.float32(5)).seen) == 5.0


def test_analyze_takes_one_method_and_names_analyze_methods_for_several(small_model):
    model, variables, x, y = small_model
    probe = linen_probe(model, "conv2")
    with pytest.raises(TypeError, match=r"one method.*analyze_methods\(probe"):
        analysis.analyze(probe, variables, [(x, y)], num_classes=3, method=("gradcam", "hirescam"))
    with pytest.raises(TypeError, match=r"methods='gradcam' is one name.*analyze\("):
        analysis.analyze_methods(probe, variables, [(x, y)], num_classes=3, methods="gradcam")
    with pytest.raises(ValueError, match="methods is empty"):
        analysis.analyze_methods(probe, variables, [(x, y)], num_classes=3, methods=())


@pytest.mark.filterwarnings("ignore::ifa_jax.analysis.MissingClassesWarning")  # class 2
def test_finalize_all_fetches_once_and_equals_finalize(monkeypatch):
    states = [run_updates(*synthetic(9 + seed, seed), [5, 4 + seed]) for seed in range(3)]
    fetched = []
    real = jax.device_get
    monkeypatch.setattr(jax, "device_get", lambda tree: fetched.append(tree) or real(tree))
    summaries = analysis.finalize_all(states)
    assert len(fetched) == 1  # one transfer for all states, not one per field
    monkeypatch.undo()
    host = jax.device_get(states[0])
    assert isinstance(host.mean, np.ndarray)
    for state, summary in zip(states, summaries):
        for alone in (analysis.finalize(state), analysis.finalize(jax.device_get(state))):
            for a, b in zip(alone, summary):
                np.testing.assert_array_equal(a, b)
    assert summaries[0].im_class.dtype == np.float64
    with pytest.raises(analysis.NothingCountedError):
        analysis.finalize_all([analysis.init(C, K, GRID)])


@pytest.mark.filterwarnings("ignore::ifa_jax.analysis.MissingClassesWarning")  # random model
def test_one_step_of_four_methods_matches_each_methods_cam(small_model):
    """The step shares one pass over A among the channel-weight methods (gradcam,
    gradcam++, xgradcam): each still equals its own cams.cam on the probe's A and G."""
    model, variables, x, y = small_model
    probe = linen_probe(model, "conv2")
    methods = ("gradcam", "gradcam++", "xgradcam", "hirescam")
    valid = jnp.ones(len(y), bool)
    stats_of = jax.jit(analysis.batch_stats, static_argnames=("probe", "method", "count"))
    out = stats_of(probe, variables, x, y, valid, method=methods, count="all")
    res = probe(variables, x, y)
    for m, (stats, per) in zip(methods, out):
        want = cams.cam(res.activations, res.gradients, m)
        np.testing.assert_allclose(stats.importance, want.importance, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats.cam, want.cam, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(per.cam_max, want.max, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(per.cam_min, want.min, rtol=1e-5, atol=1e-6)
    states = tuple(analysis.init(3, out[0][0].importance.shape[-1], out[0][0].cam.shape[1:])
                   for _ in methods)  # fmt: skip
    merged = merge_batches(states, [b for b, _ in out], 3)  # from_batch vmapped over methods
    for state, new, (stats, _) in zip(states, merged, out):
        alone = analysis.merge(state, analysis.from_batch(stats, 3))
        for a, b in zip(alone, new):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert not np.allclose(merged[0].mean, merged[3].mean)

"""Method options and PRNG keys in analyze() and the runner; FinerCAM's two peers' variants."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from ifa_jax import analysis, cams, explain, linen_probe, runner
from ifa_jax.runner import folder, stages
from ifa_jax.runner.train import TrainConfig
from tests import reference as ref
from tests.test_cams import model_oracle

C = 4
KEY = jax.random.key(7)


@pytest.fixture(scope="module")
def small(nested):
    """(probe, variables, x (7, 6, 6, 1), labels (7,)): conftest's NestedNet (4 classes,
    so FinerCAM has 3 to compare with) at its pre-ReLU conv2, on 7 inputs."""
    model, variables, _ = nested
    x = np.asarray(jax.random.normal(jax.random.key(3), (7, 6, 6, 1)), np.float32)
    y = np.array([0, 1, 2, 0, 1, 3, 1], np.int32)
    return linen_probe(model, "backbone/conv2"), variables, x, y


def batches(x, y, size, drop=()):
    """(x, y, valid) batches of ``size`` rows; each row index in ``drop`` is followed by a
    padding row (valid False), so the valid samples keep their order."""
    rows, valid = [], []
    for n in range(len(x)):
        rows.append(n)
        valid.append(True)
        if n in drop:
            rows.append(n)
            valid.append(False)
    rows, valid = np.array(rows), np.array(valid)
    return [
        (x[rows[i : i + size]], y[rows[i : i + size]], valid[i : i + size])
        for i in range(0, len(rows), size)
    ]


def run(small, size=3, drop=(), **kwargs):
    probe, variables, x, y = small
    kwargs = {"num_classes": C, "count": "all", "progress": False, **kwargs}
    analyze = analysis.analyze_methods if "methods" in kwargs else analysis.analyze
    return analyze(probe, variables, batches(x, y, size, drop), **kwargs)


def assert_same(a: analysis.Analysis, b: analysis.Analysis, **tol):
    for name, u, v in zip(a.summary._fields, a.summary, b.summary):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), err_msg=name, **tol)
    for f in a.samples:
        np.testing.assert_allclose(a.samples[f], b.samples[f], err_msg=f, **tol)


# --------------------------------------------------------------------------- options


def test_options_equal_a_method_registered_with_them_as_defaults(small, registry):
    spec = cams.REGISTRY["gradcam++"]
    eps05 = cams.LayerMethod(
        "eps05", spec.fn, needs=spec.needs, options={"eps": 0.5}, weights=spec.weights
    )  # with weights=, it shares the step's pass over A as gradcam++ does: equal bit for bit
    cams.register_method(eps05)
    got = run(small, methods=("gradcam++", "eps05"), method_options={"GradCAM++": {"eps": 0.5}})
    assert_same(got["gradcam++"], got["eps05"], rtol=0, atol=0)
    default = run(small, method="gradcam++")
    assert not np.allclose(default.summary.im_all, got["gradcam++"].summary.im_all)


def test_array_options_are_traced_and_equal_a_callable_default(small, registry, traces):
    """The classic CAM's head: an array is traced (a new one does not recompile the step,
    and is used: the map is linear in W), and gives what a head read off the variables
    by a registered default gives."""
    probe, variables, *_ = small
    W = variables["params"]["head"]["kernel"]
    spec = cams.REGISTRY["cam"]
    kernel = {"head": lambda v: v["params"]["head"]["kernel"]}
    cams.register_method(cams.Method("headcam", None, needs=spec.needs, forward=spec.forward))
    cams.register_method(
        cams.Method("headcam", None, needs=spec.needs, forward=spec.forward, options=kernel),
        replace=True,
    )
    got = run(small, methods=("cam", "headcam"), method_options={"cam": {"head": W}})
    assert_same(got["cam"], got["headcam"], rtol=1e-6, atol=1e-6)
    before = traces.count
    twice = run(small, methods=("cam", "headcam"), method_options={"cam": {"head": 2 * W}})
    assert traces.count == before  # same step, the new W as an argument
    np.testing.assert_allclose(
        twice["cam"].samples["cam_max"], 2 * got["cam"].samples["cam_max"], rtol=1e-5
    )


def test_option_errors_name_the_fix(small):
    with pytest.raises(ValueError, match=r"gradcam\+\+ has no option 'epsilon'; its options: eps"):
        run(small, method="gradcam++", method_options={"gradcam++": {"epsilon": 1.0}})
    with pytest.raises(ValueError, match=r"names 'xgradcam', which is not among the methods"):
        run(small, method="gradcam", method_options={"xgradcam": {"eps": 1.0}})
    with pytest.raises(ValueError, match=r"names gradcam\+\+ twice"):
        run(small, method="gradcam++", method_options={"gradcam++": {}, "GradCAMpp": {}})
    with pytest.raises(ValueError, match=r"must be a dict \{method: \{option: value\}\}"):
        run(small, method="gradcam++", method_options=[("gradcam++", {"eps": 1.0})])
    with pytest.raises(ValueError, match=r"kpcacam .* hashable .* an array, which is traced"):
        run(small, method="kpcacam", method_options={"kpcacam": {"kernel": {"rbf": 1}}})
    with pytest.raises(ValueError, match=r"fem option k=\[1.0\] must be a number"):
        run(small, method="fem", method_options={"fem": {"k": [1.0]}})
    with pytest.raises(ValueError, match=r"randomcam needs a PRNG key: pass key=jax.random.key"):
        run(small, methods=("gradcam", "randomcam"))
    with pytest.raises(ValueError, match=r"key must be one PRNG key.*got int"):
        run(small, method="randomcam", key=0)
    with pytest.raises(
        ValueError, match=r"refinecam is a method of kind 'layers'.*ifa_jax.explain"
    ):
        run(small, methods=("gradcam", "refinecam"))


# --------------------------------------------------------------------------- keys


def test_keyed_methods_explain_sample_n_with_fold_in_key_n(small):
    """Row n of samples is sample n explained alone with fold_in(key, n); the draws do not
    depend on the batching (sizes, padding rows) and repeat with the same key."""
    probe, variables, x, y = small
    opts = {"sscam": {"samples": 2}}
    methods = ("gradcam", "randomcam", "sscam")
    a = run(small, 3, methods=methods, key=KEY, method_options=opts)
    b = run(small, 3, drop=(1, 4), methods=methods, key=KEY, method_options=opts)
    c = run(small, 3, methods=methods, key=jax.random.key(8), method_options=opts)
    for m in ("randomcam", "sscam"):
        assert_same(a[m], b[m], rtol=1e-5, atol=1e-6)
        assert not np.allclose(a[m].samples["cam_max"], c[m].samples["cam_max"])
        for n in (0, 3, len(x) - 1):
            _, alone = explain(
                probe, variables, x[n : n + 1], y[n : n + 1], m,
                key=jax.random.fold_in(KEY, n), **opts.get(m, {}),
            )  # fmt: skip
            np.testing.assert_allclose(a[m].samples["cam_max"][n], alone.max[0], rtol=1e-5)
    assert_same(a["gradcam"], b["gradcam"], rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- FinerCAM


@pytest.mark.parametrize(
    "options",
    [
        {"objective": "torchcam"},
        {"objective": "torchcam", "base": "gradcam++", "comparisons": 2},
        {"base": "GradCAM++", "alpha": 0.5, "eps": 1e-3},
    ],
)
def test_finercam_variants_match_the_loop_reference(small, options):
    probe, variables, x, _ = small
    result, oracle = model_oracle(probe, variables, x, "predicted")
    _, out = explain(probe, variables, x, "predicted", "finercam", **options)
    want = ref.forward_weights("finercam", result.activations, oracle, **options)
    A = np.asarray(result.activations, np.float64)
    M = A * want.reshape(want.shape[0], 1, 1, want.shape[-1])
    assert np.abs(M).max() > 0
    np.testing.assert_allclose(out.contributions, M, rtol=1e-4, atol=1e-6)


def test_finercam_option_errors(small):
    probe, variables, x, _ = small
    for options, message in [
        ({"base": "layercam"}, r"base must be 'gradcam' or 'gradcam\+\+'.*one weight per channel"),
        ({"objective": "torch-cam"}, r"objective must be 'pgc' .* or 'torchcam'"),
        ({"eps": 1e-3}, r"eps=0.001 is GradCAM\+\+'s; it applies with base='gradcam\+\+'"),
    ]:
        with pytest.raises(ValueError, match=message):
            explain(probe, variables, x, "predicted", "finercam", **options)


# --------------------------------------------------------------------------- runner


def test_config_round_trip_and_overrides():
    config = runner.Config(
        methods=("GradCAM++", "randomcam", "finercam"),
        method_options={"gradcampp": {"eps": 1e-7}, "finercam": {"objective": "torchcam"}},
    )
    assert config.options_of("gradcam++") == {"eps": 1e-7}
    stored = json.loads(json.dumps(config.to_dict()))
    assert stored["method_options"] == {
        "finercam": {"objective": "torchcam"},
        "gradcam++": {"eps": 1e-7},
    }
    assert runner.config_from_dict(stored) == config
    set_one = runner.override(
        runner.Config(methods=("gradcam++", "randomcam", "finercam")),
        "method_options.finercam.objective=torchcam",
    )
    both = runner.override(set_one, "method_options.gradcam++.eps=1e-7")
    assert both == config
    # All assignments are applied before the check: an option may precede its method.
    later = runner.override(
        runner.Config(methods=("gradcam",)),
        "method_options.finercam.objective=torchcam",
        "method_options.gradcam++.eps=1e-7",
        "methods=GradCAM++,randomcam,finercam",
    )
    assert later == config
    literal = "method_options={'finercam': {'objective': 'torchcam'}, 'gradcam++': {'eps': 1e-7}}"
    assert runner.override(set_one, literal) == config
    # No options: the digest of every config made before the field existed is unchanged.
    assert folder.config_digest(runner.Config()) == folder.config_digest(
        runner.Config(method_options={})
    )
    assert folder.config_digest(config) != folder.config_digest(
        runner.Config(methods=config.methods)
    )


def test_config_errors_name_the_fix():
    for changes, message in [
        (
            {"methods": ("cam",), "method_options": {"cam": {"head": lambda v: v}}},
            r"\['cam'\]\['head'\] is a function, not a JSON value.*leave head out",
        ),
        (
            {"methods": ("gradcam++",), "method_options": {"gradcam++": {"eps": float("inf")}}},
            r"gradcam\+\+ option eps=inf must be finite",
        ),
        (
            {"methods": ("gradcam++",), "method_options": {"gradcam++": {"eps": "abc"}}},
            r"gradcam\+\+ option eps='abc' must be a number",
        ),
        (
            {"methods": ("gradcam",), "method_options": {"hirescam": {}}},
            r"names 'hirescam', which is not among methods \(gradcam\)",
        ),
        (
            {"methods": ("gradcam", "sess")},
            r"sess is a method of kind 'input'.*the whole model.*Use ifa_jax.explain",
        ),
    ]:
        with pytest.raises(ValueError, match=message):
            runner.Config(**changes)
    with pytest.raises(ValueError, match=r"method_options.METHOD.OPTION=VALUE"):
        runner.override(runner.Config(), "method_options.eps=1")


def test_old_config_json_without_method_options_still_resumes(tmp_path):
    config = runner.Config(methods=("gradcam++", "randomcam"))
    with runner.RunFolder(tmp_path / "run", config, log=lambda s: None):
        pass
    path = tmp_path / "run" / "config.json"
    old = json.loads(path.read_text())
    del old["method_options"]
    path.write_text(json.dumps(old))
    with runner.RunFolder(tmp_path / "run", config, log=lambda s: None):
        pass
    options = {"gradcam++": {"eps": 1e-7}}
    # A method named with no options, or with an option at its default, is the same config.
    assert runner.Config(methods=config.methods, method_options={"gradcam++": {}}) == config
    default = {"gradcam++": {"eps": 1e-6}}
    assert runner.Config(methods=config.methods, method_options=default) == config
    # A changed option is a change after training: accepted, named leaf by leaf.
    logs: list[str] = []
    changed = runner.Config(methods=("gradcam++", "randomcam"), method_options=options)
    with runner.RunFolder(tmp_path / "run", changed, log=logs.append):
        pass
    assert "config changed (method_options.gradcam++.eps: None -> 1e-07)" in logs[0]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::ifa_jax.analysis.MissingClassesWarning")  # analyze(), 1 epoch
def test_runner_runs_a_keyed_method_with_options(tmp_path):
    from ifa_jax.runner import data, evaluations, registry, report
    from ifa_jax.runner import train as training
    from tests.test_runner import tiny

    config = tiny(
        methods=("randomcam", "gradcam", "gradcam++"),
        method_options={"gradcam++": {"eps": 0.5}},
        train=TrainConfig(epochs=1, batch_size=128, lr=3e-3, progress=False),
    )
    tables = {
        "evaluations": [e for e in evaluations.EVALUATIONS if e.name == "consistency"],
        "figures": [f for f in report.FIGURES if f.key == "cams"],
    }
    out, logs = tmp_path / "run", []
    results = runner.run(config, out, log=logs.append, **tables)
    assert json.loads((out / "config.json").read_text())["method_options"] == {
        "gradcam++": {"eps": 0.5}
    }
    assert set(results["consistency"]["summary"]) == {"gradcam"}
    assert set(results["consistency"]["skipped"]) == {"randomcam", "gradcam++"}
    assert "cams" in results["figures"]
    # The stored analyses are analyze()'s with the config's options and split keys.
    splits = registry.load_data(config)
    model = registry.build_model(config, splits)
    template = stages._template(config, model, splits.train.input_shape)
    variables = training.load_checkpoint(str(out / "checkpoint.msgpack"), template)
    probe = linen_probe(model, config.layer)
    ds = splits.validation
    again = analysis.analyze_methods(
        probe,
        variables,
        ((b.x, b.y, b.mask) for b in data.batches(ds, config.batch_size)),
        num_classes=ds.num_classes,
        methods=("randomcam", "gradcam++"),
        method_options={"gradcam++": {"eps": 0.5}},
        key=stages.method_key(config, "validation"),
        progress=False,
    )
    for m in ("randomcam", "gradcam++"):
        stored, _ = stages.load_analysis(str(out / "analysis" / f"{m}_validation.npz"))
        np.testing.assert_allclose(stored.im_class, again[m].summary.im_class, rtol=1e-5)
    # Resumed from its config.json: nothing is recomputed.
    resumed, logs = runner.config_from_dict(json.loads((out / "config.json").read_text())), []
    runner.run(resumed, out, log=logs.append, **tables)
    assert not [line for line in logs if line.startswith(("analyse:", "evaluate: consistency"))]


def test_keys_of_the_runner_streams_differ():
    config = runner.Config()
    keys = [jax.random.key_data(stages.method_key(config, s)) for s in stages.KEY_STREAMS]
    assert len({tuple(np.asarray(k).tolist()) for k in keys}) == len(keys)
    with pytest.raises(ValueError, match="stream must be one of"):
        stages.method_key(config, "test")

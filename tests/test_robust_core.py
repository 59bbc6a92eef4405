"""Bad inputs to the probe and the analysis pass fail early, with the fix in the message."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import errors as flax_errors
from flax import nnx

from ifa_jax import analysis, linen_probe, nnx_probe

X = jax.random.normal(jax.random.key(0), (4, 6, 6, 1))


class Net(nn.Module):
    """conv -> (BatchNorm) -> relu -> (Dropout) -> mean -> dense 3; returns the logits,
    a tuple (logits, features) or a dict {'logits', 'features'}."""

    out: str = "array"
    bn: bool = False
    drop: bool = False

    @nn.compact
    def __call__(self, x, train: bool = True):
        h = nn.Conv(4, (3, 3), name="conv")(x)
        if self.bn:
            h = nn.BatchNorm(use_running_average=not train, name="bn")(h)
        h = nn.relu(h)
        if self.drop:
            h = nn.Dropout(0.5, deterministic=not train)(h)
        logits = nn.Dense(3, name="head")(h.mean((1, 2)))
        if self.out == "tuple":
            return logits, h
        if self.out == "dict":
            return {"logits": logits, "features": h}
        return logits


class NnxNet(nnx.Module):
    """NNX twin of :class:`Net`."""

    def __init__(self, *, out="array", bn=False, drop=False, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs) if bn else None
        self.drop = nnx.Dropout(0.5, rngs=rngs) if drop else None
        self.head = nnx.Linear(4, 3, rngs=rngs)
        self.out = out

    def __call__(self, x):
        h = self.conv(x)
        if self.bn is not None:
            h = self.bn(h)
        h = nnx.relu(h)
        if self.drop is not None:
            h = self.drop(h)
        logits = self.head(h.mean((1, 2)))
        return (logits, h) if self.out == "tuple" else logits


@pytest.fixture(scope="module")
def net():
    model = Net()
    variables = model.init(jax.random.key(1), X, train=False)
    labels = np.asarray(jnp.argmax(model.apply(variables, X), -1))
    return model, variables, labels


# --------------------------------------------------------------------------- labels


@pytest.mark.filterwarnings("ignore::ifa_jax.analysis.MissingClassesWarning")  # random model
def test_label_without_model_output_is_refused(net):
    model, variables, labels = net
    probe = linen_probe(model, "conv")
    bad = labels.copy()
    bad[1] = 4  # inside num_classes=5, but the model has only 3 outputs
    with pytest.raises(
        ValueError,
        match=r"batch 0: label 4 has no output in the model, which "
        r"has 3 outputs, so target='label' can only explain "
        r"labels in \[0, 2\]",
    ):
        analysis.analyze(probe, variables, [(X, bad)], num_classes=5, progress=False)
    # Labels all in range: a larger num_classes is harmless, the scores are finite.
    ok = analysis.analyze(probe, variables, [(X, labels)], num_classes=5, progress=False)
    assert np.isfinite(ok.samples["score"]).all()
    assert ok.summary.class_counts.shape == (5,) and ok.summary.class_counts[3:].sum() == 0


# --------------------------------------------------------------------------- outputs


def test_tuple_and_dict_outputs_with_a_selector_equal_the_plain_model(net):
    _, variables, _ = net
    plain = linen_probe(Net(), "conv")(variables, X, 1)
    for out, select in [("tuple", 0), ("dict", "logits"), ("dict", lambda o: o["logits"])]:
        got = linen_probe(Net(out=out), "conv", output=select)(variables, X, 1)
        for a, b in zip(got, plain):
            np.testing.assert_allclose(a, b, rtol=1e-6)


def test_tuple_and_dict_outputs_without_a_selector_are_explained(net):
    _, variables, _ = net
    with pytest.raises(
        ValueError,
        match=r"the model returns a tuple of 2, not an array of "
        r"logits \(B, O\); pick the logits with output=0",
    ):
        linen_probe(Net(out="tuple"), "conv")(variables, X)
    with pytest.raises(
        ValueError,
        match=r"returns a dict with keys 'logits', 'features', not "
        r"an array.*output='logits'",
    ):
        linen_probe(Net(out="dict"), "conv")(variables, X)
    with pytest.raises(
        ValueError,
        match=r"output='logit' is not in the model's output, a dict "
        r"with keys 'logits', 'features'",
    ):
        linen_probe(Net(out="dict"), "conv", output="logit")(variables, X)
    with pytest.raises(
        ValueError,
        match=r"output=0 would index the model's output, but that "
        r"is already an array of shape \(4, 3\); leave "
        r"output=None",
    ):
        linen_probe(Net(), "conv", output=0)(variables, X)


def test_nnx_tuple_output_with_a_selector():
    plain = nnx_probe(NnxNet(rngs=nnx.Rngs(0)), "conv")
    state = plain.variables
    tupled = nnx_probe(NnxNet(out="tuple", rngs=nnx.Rngs(0)), "conv", output=0)
    state2 = tupled.variables
    want, got = plain(state, X, 2), tupled(state2, X, 2)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    bare = nnx_probe(NnxNet(out="tuple", rngs=nnx.Rngs(0)), "conv")
    state3 = bare.variables
    with pytest.raises(ValueError, match="the model returns a tuple of 2.*output=0"):
        bare(state3, X)


# --------------------------------------------------------------------------- training mode


def test_linen_training_mode_errors_name_the_fix():
    bn = Net(bn=True)
    variables = bn.init(jax.random.key(2), X, train=False)
    probe = linen_probe(bn, "conv")  # Net's train defaults to True
    fix = r"Pass train=False \(or the model's inference flag\) to the probe"
    with pytest.raises(ValueError, match=r"batch_stats.*" + fix) as info:
        probe(variables, X)
    assert isinstance(info.value.__cause__, flax_errors.ModifyScopeVariableError)
    with pytest.raises(ValueError, match=fix):  # raised while tracing an outer jit too
        jax.jit(lambda v, x: probe(v, x).score)(variables, X)
    assert np.isfinite(linen_probe(bn, "conv", train=False)(variables, X).score).all()

    drop = Net(drop=True)
    variables = drop.init(jax.random.key(3), X, train=False)
    with pytest.raises(
        ValueError,
        match=r"needs PRNG for \"dropout\".*deterministic/train "
        r"flag",
    ) as info:
        linen_probe(drop, "conv")(variables, X)
    assert isinstance(info.value.__cause__, flax_errors.InvalidRngError)
    assert np.isfinite(linen_probe(drop, "conv", train=False)(variables, X).score).all()


@pytest.mark.parametrize("kind", ["bn", "drop"])
def test_nnx_model_not_in_eval_mode_is_explained(kind):
    model = NnxNet(rngs=nnx.Rngs(0), **{kind: True})
    probe = nnx_probe(model, "conv")
    state = probe.variables
    fix = r"Call model.eval\(\) before nnx_probe"
    with pytest.raises(ValueError, match=r"the NNX model changes its state.*" + fix):
        probe(state, X)
    with pytest.raises(ValueError, match=fix):
        jax.jit(lambda s, x: probe(s, x).score)(state, X)
    model.eval()
    probe = nnx_probe(model, "conv")
    state = probe.variables
    assert np.isfinite(probe(state, X).score).all()


# --------------------------------------------------------------------------- input shape


def test_input_without_channel_axis_is_explained(net):
    _, variables, _ = net
    fix = (
        r"does not accept an input of shape \(4, 6, 6\).*channels-last, \(B, \*spatial, "
        r"C\).*x\[\.\.\., None\].*x\[None\]"
    )
    with pytest.raises(ValueError, match=fix):
        linen_probe(Net(), "conv")(variables, X[..., 0])
    probe = nnx_probe(NnxNet(rngs=nnx.Rngs(0)), "conv")
    state = probe.variables
    with pytest.raises(ValueError, match=fix):
        probe(state, X[..., 0])


# --------------------------------------------------------------------------- batches


@pytest.mark.filterwarnings("ignore::ifa_jax.analysis.MissingClassesWarning")  # random model
def test_empty_batches_are_skipped_and_batch_size_pads(net, traces):
    model, variables, labels = net
    probe = linen_probe(model, "conv")
    x, y = np.asarray(X), labels
    want = analysis.analyze(probe, variables, [(x, y)], num_classes=3, count="all", progress=False)
    before = traces.count
    got = analysis.analyze(
        probe,
        variables,
        [(x[:0], y[:0]), (x[:1], y[:1]), (x[1:], y[1:])],
        num_classes=3,
        count="all",
        batch_size=4,
        progress=False,
    )
    assert traces.count == before  # same padded shape: no recompile
    for a, b in zip(got.summary, want.summary):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for k in want.samples:
        np.testing.assert_allclose(got.samples[k], want.samples[k], rtol=1e-5)
    with pytest.raises(
        ValueError,
        match=r"batch 2 has 3 samples, more than the first batch's "
        r"size 1; pass batch_size=",
    ):
        analysis.analyze(
            probe,
            variables,
            [(x[:0], y[:0]), (x[:1], y[:1]), (x[1:], y[1:])],
            num_classes=3,
            progress=False,
        )
    with pytest.raises(ValueError, match="batches is empty"):
        analysis.analyze(probe, variables, [(x[:0], y[:0])], num_classes=3, progress=False)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        analysis.analyze(probe, variables, [(x, y)], num_classes=3, batch_size=0, progress=False)


# --------------------------------------------------------------------------- merge, results


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_merge_refuses_states_of_different_shapes(jit):
    merge = jax.jit(analysis.merge) if jit else analysis.merge
    with pytest.raises(ValueError, match="cannot merge: a has 3 classes, b has 1"):
        merge(analysis.init(3, 4, (2, 2)), analysis.init(1, 4, (2, 2)))
    with pytest.raises(ValueError, match="cannot merge: a has 8 channels, b has 6"):
        merge(analysis.init(3, 8, (2, 2)), analysis.init(3, 6, (2, 2)))
    with pytest.raises(ValueError, match=r"cannot merge: feature grid \(7, 7\) vs \(5, 5\)"):
        merge(analysis.init(3, 4, (7, 7)), analysis.init(3, 4, (5, 5)))


def test_percentiles_of_unknown_name_lists_the_names():
    result = analysis.Analysis(None, None, {"cam_max": np.ones(3), "score": np.ones(3)})
    with pytest.raises(
        KeyError, match="no per-sample values named 'max'; the names are: cam_max, score"
    ):
        result.percentiles("max")


# --------------------------------------------------------------------------- found by trying


def test_an_int_target_outside_the_outputs_is_refused_by_analyze(net):
    model, variables, labels = net
    probe = linen_probe(model, "conv", train=False)
    for target in (5, -1):  # NaN scores / silently class 2 before
        with pytest.raises(
            ValueError,
            match=rf"target index {target} is out of range: the "
            r"model has 3 outputs",
        ):
            analysis.analyze(
                probe,
                variables,
                [(X, labels)],
                num_classes=3,
                target=target,
                count="all",
                progress=False,
            )


def test_consistency_levels_checks_its_inputs(net):
    from ifa_jax import scale
    from ifa_jax.consistency import consistency_levels

    model, variables, labels = net
    probe = linen_probe(model, "conv", train=False)
    sc = {"gradcam": scale.scale_from_bounds(0.0, 1.0)}
    pairs = [(X, labels)]  # (x, y) pairs are fine, as in analyze
    with pytest.raises(
        ValueError,
        match=r"masks has shape \(3, 4\); give one channel mask per "
        r"class, \(C, K\) with a row for every class up to 5",
    ):
        consistency_levels(probe, variables, pairs, scales=sc, masks=np.ones((3, 4)), classes=[5])
    with pytest.raises(ValueError, match=r"target index 5 is out of range: the model has 3"):
        consistency_levels(
            probe, variables, pairs, scales=sc, masks=np.ones((6, 4)), classes=[0, 5]
        )
    with pytest.raises(ValueError, match=r"scales\['gradcam'\] is a tuple, not an ifa_jax"):
        consistency_levels(
            probe,
            variables,
            pairs,
            scales={"gradcam": (0.0, 1.0)},
            masks=np.ones((3, 4)),
            classes=[0],
        )
    got = consistency_levels(probe, variables, pairs, scales=sc, masks=np.ones((3, 4)), classes=[0])
    assert got.levels.shape == (1, 1, 4, len(X))


def test_probe_output_and_variables_mistakes_name_the_fix(net):
    _, variables, _ = net
    with pytest.raises(
        ValueError,
        match=r"output=1 selects an array of shape \(4, 6, 6, 4\) "
        r"from the model's output \(a tuple of 2\), not logits",
    ):
        linen_probe(Net(out="tuple"), "conv", output=1, train=False)(variables, X)
    with pytest.raises(
        ValueError,
        match=r"pass the whole variables dict from model.init, "
        r"e.g. \{'params': ...\}, not variables\['params'\]",
    ):
        linen_probe(Net(), "conv", train=False)(variables["params"], X)
    with pytest.raises(ValueError, match=r"a missing batch axis \(one input\) with x\[None\]"):
        linen_probe(Net(), "conv", train=False)(variables, X[0])

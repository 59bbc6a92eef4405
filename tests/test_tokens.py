"""Token layers read as grids (``reshape=``), checked against a hand-split ViT."""

from __future__ import annotations

import dataclasses
import logging
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ifa_jax import cams, explain, tokens_to_grid
from ifa_jax.probes import (
    TokenLayerWarning,
    ZeroGradientWarning,
    linen_natural_layer,
    linen_probe,
)
from ifa_jax.probes.tokens import GridTapped
from ifa_jax.runner.models import ViT
from tests import reference as ref
from tests.conftest import random_variables

SIDE = 3  # 12x12 inputs, patch 4: a 3x3 grid of patch tokens after the class token
TARGET = np.array([0, 2])


@pytest.fixture(scope="module")
def vit():
    """(model, variables, x (2, 12, 12, 1))."""
    model = ViT(num_classes=3, patch=4, dim=8, depth=2, num_heads=2, mlp_dim=16)
    x = jnp.asarray(np.random.default_rng(0).random((2, 12, 12, 1), np.float32))
    return model, random_variables(model, x), x


def vit_split(model, variables):
    """The ViT cut by hand at block2/norm1: features(x) -> (residual stream h, tokens a),
    head(h, a) -> logits, with a the tapped tokens (B, 1 + SIDE^2, D)."""
    p = variables["params"]
    D = model.dim

    def norm(prm, t):
        return nn.LayerNorm().apply({"params": prm}, t)

    def attention(prm, t):
        return nn.MultiHeadDotProductAttention(num_heads=model.num_heads).apply({"params": prm}, t)

    def dense(prm, t, n):
        return nn.Dense(n).apply({"params": prm}, t)

    def mlp(prm, t):
        return dense(prm["fc2"], nn.gelu(dense(prm["fc1"], t, model.mlp_dim)), D)

    def features(x):
        k = (model.patch, model.patch)
        e = nn.Conv(D, k, strides=k, padding="VALID").apply({"params": p["patch_embed"]}, x)
        e = e.reshape(x.shape[0], -1, D)
        cls = jnp.broadcast_to(p["cls_token"], (x.shape[0], 1, D))
        h = jnp.concatenate([cls, e], axis=1) + p["pos_embedding"]
        b1 = p["block1"]
        h = h + attention(b1["attn"], norm(b1["norm1"], h))
        h = h + mlp(b1, norm(b1["norm2"], h))
        return h, norm(p["block2"]["norm1"], h)

    def head(h, a):
        b2 = p["block2"]
        h = h + attention(b2["attn"], a)
        h = h + mlp(b2, norm(b2["norm2"], h))
        return dense(p["head"], norm(p["norm"], h)[:, 0], model.num_classes)

    return features, head


def to_grid_by_hand(a):
    """Patch tokens (B, 1 + SIDE^2, D) -> (B, SIDE, SIDE, D), one token at a time."""
    a = np.asarray(a)
    out = np.zeros((a.shape[0], SIDE, SIDE, a.shape[-1]), a.dtype)
    for i in range(SIDE):
        for j in range(SIDE):
            out[:, i, j] = a[:, 1 + SIDE * i + j]
    return out


def to_tokens_by_hand(delta):
    """A grid delta (B, SIDE, SIDE, D) added to the patch tokens; the class token gets 0."""
    delta = np.asarray(delta)
    out = np.zeros((delta.shape[0], 1 + SIDE * SIDE, delta.shape[-1]), delta.dtype)
    for i in range(SIDE):
        for j in range(SIDE):
            out[:, 1 + SIDE * i + j] = delta[:, i, j]
    return out


def add_on_patches(a, delta):
    """Tokens a (B, 1 + SIDE^2, D) plus a grid delta (B, SIDE, SIDE, D) on the patch tokens
    (traceable; the placement of to_tokens_by_hand)."""
    return a.at[:, 1:].add(delta.reshape(a.shape[0], -1, a.shape[-1]))


@pytest.fixture(scope="module")
def reference(vit):
    """The hand-split model's A and G on the grid, and its split functions (jitted: they
    are called in loops)."""
    model, variables, x = vit
    features, head = vit_split(model, variables)
    rows = jnp.arange(x.shape[0])

    @jax.jit
    def at_x(x):
        h, a = features(x)
        g = jax.grad(lambda a: jnp.sum(head(h, a)[rows, TARGET]))(a)
        return h, a, g, head(h, a)

    h, a, g, logits = at_x(x)
    return {
        "features": features,
        "head": head,
        "model": jax.jit(lambda x: head(*features(x))),
        "ablated": jax.jit(lambda d: head(h, add_on_patches(a, d))),
        "h": h,
        "tokens": a,
        "A": to_grid_by_hand(a),
        "G": to_grid_by_hand(g),
        "logits": logits,
    }


def forward_reference_weights(method, reference, x):
    """ScoreCAM / AblationCAM weights (B, K) from loops over channels, with the masking on
    the input and the ablation placed on the patch tokens by hand."""
    rows = np.arange(x.shape[0])

    def target_score(logits):
        return np.asarray(logits)[rows, TARGET]

    if method == "scorecam":
        return ref.scorecam_weights(
            reference["A"],
            x,
            lambda xm: target_score(reference["model"](jnp.asarray(xm, jnp.float32))),
            lambda m: jax.image.resize(m, (m.shape[0], *x.shape[1:-1]), "linear"),
        )
    return ref.ablation_weights(
        reference["A"],
        lambda delta: target_score(reference["ablated"](jnp.asarray(delta))),
        target_score(reference["logits"]),
    )


def test_activations_gradients_and_cams_equal_hand_split_model(vit, reference):
    """A and G on the grid equal the hand-split model's, so every local method (a function
    of A, G and a key) does; explain passes them through (gradcam), and ScoreCAM and
    AblationCAM, which run the model on masked inputs and ablated patch tokens, equal
    loops over channels. The other forward methods: the next test."""
    model, variables, x = vit
    probe = linen_probe(model, "block2/norm1", reshape=tokens_to_grid())
    out = probe(variables, x, TARGET)
    np.testing.assert_allclose(out.logits, reference["logits"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.activations, reference["A"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.gradients, reference["G"], rtol=1e-5, atol=1e-7)
    assert out.activations.shape == (2, SIDE, SIDE, model.dim)
    assert np.abs(reference["G"]).max() > 1e-3  # patch tokens get gradient here
    for method in ("gradcam", "scorecam", "ablationcam"):
        _, got = explain(probe, variables, x, TARGET, method)
        weights = None
        if method != "gradcam":
            weights = jnp.asarray(forward_reference_weights(method, reference, x), jnp.float32)
        want = cams.cam(
            jnp.asarray(reference["A"]), jnp.asarray(reference["G"]), method, weights=weights
        )
        for field in ("cam", "importance", "max", "min"):
            np.testing.assert_allclose(
                getattr(got, field),
                getattr(want, field),
                rtol=1e-5,
                atol=1e-6,
                err_msg=f"{method} {field}",
            )


def test_forward_methods_see_the_hand_split_model(vit, reference):
    """Every forward-pass method (cams.FORWARD_METHODS) reaches the model only through
    cams.ForwardPasses: the probe's forward at other inputs (masked, noisy) and its forward
    with a delta on the grid, differentiated in the delta (gradients; ShapleyCAM's
    Hessian-vector product). At random inputs, delta, tangent and cotangent these equal
    the hand-split model's with the delta placed on the patch tokens by hand, to second
    order, so each method's weights do (each method is checked against its loop reference
    in test_cams)."""
    model, variables, x = vit
    probe = linen_probe(model, "block2/norm1", reshape=tokens_to_grid())
    rng = np.random.default_rng(7)
    x2 = jnp.asarray(rng.random(x.shape, np.float32))
    delta, tangent = (
        jnp.asarray(rng.normal(size=(2, SIDE, SIDE, model.dim)), jnp.float32) for _ in range(2)
    )
    cotangent = jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)

    def orders(forward, logits_at):
        """forward(x2); logits_at(delta), its vjp with cotangent, and that vjp's jvp."""

        def pulled(d):
            return jax.vjp(logits_at, d)[1](cotangent)[0]

        grad, hvp = jax.jvp(pulled, (delta,), (tangent,))
        return forward(x2), logits_at(delta), grad, hvp

    features, head = reference["features"], reference["head"]
    got = jax.jit(
        lambda x2: orders(
            lambda x: probe.forward(variables, x),
            lambda d: probe.forward_with(variables, x2, {"block2/norm1": d}),
        )
    )(x2)

    def by_hand(x2):
        h, a = features(x2)
        return orders(lambda x: head(*features(x)), lambda d: head(h, add_on_patches(a, d)))

    want = jax.jit(by_hand)(x2)
    assert float(jnp.abs(want[3]).max()) > 1e-4  # the second order is not trivially 0
    for name, g, w in zip(("forward", "forward_with", "vjp", "hvp"), got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=name)


def test_one_forward_and_one_vjp(vit, reference):
    """The jaxpr holds the ops of the hand-split model's forward plus one vjp to the tokens:
    the reshape adds no model pass, and the vjp never reaches the patch embedding."""
    model, variables, x = vit
    probe = linen_probe(model, "block2/norm1", reshape=tokens_to_grid())
    t = jnp.asarray(TARGET)
    got = str(
        jax.make_jaxpr(lambda v, x: probe._core(v, x, t, mode="index", fn=None, score="logit"))(
            variables, x
        )
    )
    features, head = reference["features"], reference["head"]

    def by_hand(x):
        h, a = features(x)
        return jax.grad(lambda a: jnp.sum(head(h, a)[jnp.arange(2), t]))(a)

    want = str(jax.make_jaxpr(by_hand)(x))
    assert got.count("conv_general_dilated") == 1
    for op in ("conv_general_dilated", "dot_general", "exp", "rsqrt"):
        assert got.count(op) == want.count(op), op


def test_token_layer_is_read_as_tokens_without_reshape_and_as_a_grid_with_it(vit):
    """Without reshape a rank-3 token output is a 1-D grid of N tokens (class token
    included); with it ScoreCAM's masks come from the patch grid, upsampled to the input."""
    model, variables, x = vit
    plain = linen_probe(model, "block2/norm1")
    assert plain(variables, x, TARGET).activations.shape == (2, 1 + SIDE * SIDE, model.dim)
    gridded = linen_probe(model, "block2/norm1", reshape=tokens_to_grid())
    _, out = explain(gridded, variables, x, TARGET, "scorecam")
    assert out.cam.shape == (2, SIDE, SIDE)


def test_ablation_on_the_grid_leaves_the_class_token(vit, reference):
    """forward_with on the grid adds R^T(delta): the class token is untouched."""
    model, variables, x = vit
    probe = linen_probe(model, "block2/norm1", reshape=tokens_to_grid())
    delta = np.random.default_rng(4).normal(size=(2, SIDE, SIDE, model.dim)).astype(np.float32)

    def ablated(probe):  # jitted: an eager ViT forward takes longer than its compilation
        return jax.jit(lambda d: probe.forward_with(variables, x, {"block2/norm1": d}))(delta)

    got = ablated(probe)
    tokens = reference["tokens"] + to_tokens_by_hand(delta)
    want = jax.jit(reference["head"])(reference["h"], tokens)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # dataclasses.replace keeps the reshape once (no second reshape of the grid)
    np.testing.assert_allclose(ablated(dataclasses.replace(probe, check_finite=False)), got)


def test_tokens_to_grid_round_trip():
    tokens = jax.random.normal(jax.random.key(5), (2, 2 + 3 * 4, 5))
    reshape = tokens_to_grid(prefix=2, grid=(3, 4))
    grid = reshape(tokens)
    assert grid.shape == (2, 3, 4, 5)
    np.testing.assert_array_equal(grid[:, 1, 2], tokens[:, 2 + 4 * 1 + 2])  # row-major
    tapped = GridTapped(lambda v, x, d: (x, {}), reshape)
    primal = jax.ShapeDtypeStruct(tokens.shape, tokens.dtype)
    back = tapped.to_tokens("layer", primal, grid)
    np.testing.assert_array_equal(back[:, 2:], tokens[:, 2:])  # R^T R keeps patch tokens
    np.testing.assert_array_equal(back[:, :2], 0.0)  # and zeroes the prefix
    np.testing.assert_array_equal(reshape(back), grid)  # R R^T = identity on the grid
    square = tokens_to_grid()(jax.random.normal(jax.random.key(6), (1, 1 + 16, 3)))
    assert square.shape == (1, 4, 4, 3)


def test_tokens_to_grid_errors():
    with pytest.raises(
        ValueError,
        match=r"17 tokens; after dropping prefix=2 there are 15, "
        r"not a square.*prefix=.*grid=\(h, w\)",
    ):
        tokens_to_grid(prefix=2)(jnp.zeros((1, 17, 3)))
    with pytest.raises(ValueError, match=r"there are 16, but grid=\(3, 4\) holds 12"):
        tokens_to_grid(grid=(3, 4))(jnp.zeros((1, 17, 3)))
    with pytest.raises(ValueError, match=r"expects tokens \(B, N, D\); got shape \(1, 4, 4, 3\)"):
        tokens_to_grid()(jnp.zeros((1, 4, 4, 3)))
    with pytest.raises(ValueError, match=r"prefix=-1 must be an int >= 0"):
        tokens_to_grid(prefix=-1)
    with pytest.raises(ValueError, match=r"grid=\(0, 4\) must be 1-3 positive ints"):
        tokens_to_grid(grid=(0, 4))


def test_reshape_errors_name_the_fix(vit):
    model, variables, x = vit
    with pytest.raises(
        ValueError,
        match=r"reshape maps layer 'block2/norm1'.*\(2, 10, 8\) to "
        r"shape \(2, 8\); it must give a grid \(B, \*spatial, K\) of rank 3-5",
    ):
        linen_probe(model, "block2/norm1", reshape=lambda a: a[:, 0])(variables, x)
    with pytest.raises(ValueError, match=r"reshape must be linear"):
        linen_probe(model, "block2/norm1", reshape=lambda a: tokens_to_grid()(jnp.tanh(a)))(
            variables, x
        )
    # A reshape also lifts the rank check of the raw output: (B, N, D) tokens of rank 3
    # would pass anyway, but a rank-2 output made into a grid is accepted.
    grid = linen_probe(model, "head", reshape=lambda z: z[:, :, None])(variables, x, TARGET)
    assert grid.activations.shape == (2, 3, 1)


def test_zero_gradients_warn_with_a_layer_to_try(vit):
    model, variables, x = vit
    last = linen_probe(model, "block2", reshape=tokens_to_grid())
    with pytest.warns(
        ZeroGradientWarning,
        match=r"'block2'.*zero at every grid position.*"
        r"class token.*Try layer 'block2/norm1'",
    ):
        out = last(variables, x, TARGET)
    assert np.all(np.asarray(out.gradients) == 0)
    tokens = linen_probe(model, "block2")
    with pytest.warns(
        ZeroGradientWarning,
        match=r"reach only 1 of its 10 grid positions.*"
        r"Try layer 'block2/norm1' with reshape=ifa_jax.tokens_to_grid\(\)",
    ):
        tokens(variables, x, TARGET)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # traced: no value checks, so no warning
        jax.jit(lambda v, x: last(v, x, TARGET).score)(variables, x)
        linen_probe(model, "block2/norm1", reshape=tokens_to_grid())(variables, x, TARGET)


def test_layer_none_picks_the_norm_before_the_last_attention(vit, caplog):
    model, variables, x = vit
    assert linen_natural_layer(model, variables, x) == (
        "block2/norm1",
        "the norm before the last attention, 'block2/attn'",
    )
    with caplog.at_level(logging.INFO, logger="ifa_jax"):
        auto = linen_probe(model, reshape=tokens_to_grid())(variables, x, TARGET)
    assert "layer=None: tapping 'block2/norm1'" in caplog.text
    named = linen_probe(model, "block2/norm1", reshape=tokens_to_grid())(variables, x, TARGET)
    np.testing.assert_array_equal(auto.gradients, named.gradients)


class TinyViT(nn.Module):
    """Patch tokens (B, N, 3) -> a class token and N patch tokens of width 8 -> a
    pre-norm attention block -> the class token's logits (B, 3)."""

    @nn.compact
    def __call__(self, x):
        cls = self.param("cls", nn.initializers.normal(1.0), (1, 1, 8))
        h = nn.Dense(8, name="embed")(x)
        h = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, 8)), h], axis=1)
        a = nn.LayerNorm(name="norm")(h)
        h = h + nn.MultiHeadDotProductAttention(num_heads=2, name="attn")(a)
        return nn.Dense(3, name="head")(h[:, 0])


def test_layer_none_lays_a_natural_token_layer_on_its_grid(caplog):
    model = TinyViT()
    x = jax.random.normal(jax.random.key(0), (2, 4, 3))  # 1 + 4 tokens: a 2 x 2 grid
    variables = model.init(jax.random.key(1), x)
    auto = linen_probe(model)
    with caplog.at_level(logging.INFO, logger="ifa_jax"):
        out = auto(variables, x, TARGET)
    assert "laying 'norm''s 5 tokens on a (2, 2) grid: tokens_to_grid(prefix=1)" in caplog.text
    assert auto.layer == "norm"
    assert repr(auto) == (
        "LayerProbe(layer='norm': the norm before the last attention, 'attn', "
        "reshape=AutoGrid(TokenGrid(prefix=1, grid=(2, 2))))"
    )
    named = linen_probe(model, "norm", reshape=tokens_to_grid(prefix=1))(variables, x, TARGET)
    assert out.activations.shape == (2, 2, 2, 8)
    np.testing.assert_array_equal(out.activations, named.activations)
    np.testing.assert_array_equal(out.gradients, named.gradients)
    # the CAMs are on the grid
    assert explain(auto, variables, x, TARGET, "gradcam")[1].cam.shape == (2, 2, 2)


def test_layer_none_warns_how_to_pass_reshape_for_tokens_off_a_square():
    model = TinyViT()
    x = jax.random.normal(jax.random.key(0), (2, 5, 3))  # 1 + 5 tokens: no square
    variables = model.init(jax.random.key(1), x)
    auto = linen_probe(model)
    with pytest.warns(
        TokenLayerWarning, match=r"Pass reshape=ifa_jax\.tokens_to_grid\(prefix=P, grid=\(h, w\)\)"
    ):
        out = auto(variables, x, TARGET)
    assert out.activations.shape == (2, 6, 8)  # the tokens as they are, a 1-D grid
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per token shape, not per call
        auto(variables, x, TARGET)


# --------------------------------------------------------------------------- the runner


def _vit_config(**changes):
    from ifa_jax import runner
    from ifa_jax.runner.train import TrainConfig

    base = {
        "name": "tiny_vit",
        "dataset": "sklearn_digits",
        "validation_size": 0.2,
        "model": "vit",
        "model_kwargs": (("patch", 2), ("dim", 8), ("depth", 2), ("num_heads", 2), ("mlp_dim", 16)),
        "tokens_prefix": 1,
        "train": TrainConfig(epochs=1, batch_size=128, lr=3e-3, progress=False),
        "batch_size": 128,
        "methods": ("gradcam", "hirescam"),
        "subset_ratios": (0.25, 1.0),
        "subset_modes": ("top",),
        "max_classes": 2,
        "faithfulness_samples": 2,
        "sanity_samples": 2,
        "figure_samples": 2,
    }
    return runner.Config(**{**base, **changes})


def test_runner_checks_the_natural_layer_and_the_token_grid():
    from ifa_jax.runner import data, registry, stages

    x = np.zeros((4, 8, 8, 1), np.float32)
    splits = data.Splits(data.Dataset(x, np.arange(4) % 3, 3), data.Dataset(x, np.zeros(4, int), 3))
    config = _vit_config()
    model = registry.build_model(config, splits)
    assert config.layer is None  # the layer may be left out
    assert stages.check_model(config, model, splits) == (
        "block2/norm1",
        "the norm before the last attention, 'block2/attn'",
    )
    # 8x8 inputs, patch 2: 1 + 16 tokens. Two prefix tokens leave 15, not a square.
    with pytest.raises(
        ValueError,
        match=r"config field 'tokens_prefix' \(layer 'block2/norm1'\)"
        r".*17 tokens; after dropping prefix=2 there are 15, not a square",
    ):
        stages.check_model(_vit_config(tokens_prefix=2), model, splits)


@pytest.mark.filterwarnings("ignore::ifa_jax.analysis.MissingClassesWarning")  # random model
@pytest.mark.slow
def test_runner_analyses_a_vit_with_the_layer_left_out(tmp_path):
    """Given random variables, so nothing is trained (training compiles for seconds and is
    no different for a ViT)."""
    from ifa_jax import runner
    from ifa_jax.runner import data, registry
    from ifa_jax.runner.train import save_checkpoint

    x = np.zeros((4, 8, 8, 1), np.float32)
    splits = data.Splits(data.Dataset(x, np.arange(4), 10), data.Dataset(x, np.arange(4), 10))
    model = registry.build_model(_vit_config(), splits)
    save_checkpoint(tmp_path / "vit.msgpack", random_variables(model, jnp.asarray(x[:1])))
    logs: list[str] = []
    config = _vit_config(variables=str(tmp_path / "vit.msgpack"))
    # The analysis and the consistency evaluation; the other evaluations and the figures
    # read the same analyses and are the runner tests' concern.
    from ifa_jax.runner import evaluations

    tables = {"evaluations": [e for e in evaluations.EVALUATIONS if e.name == "consistency"]}
    results = runner.run(config, tmp_path / "run", log=logs.append, figures=[], **tables)
    assert "layer: block2/norm1 (the norm before the last attention, 'block2/attn')" in logs
    assert results["config"]["layer"] == "block2/norm1"
    assert "layer `block2/norm1`" in (tmp_path / "run" / "report.md").read_text()
    # The per-class mean CAMs lie on the 4x4 grid of patch tokens.
    assert set(results["consistency"]["summary"]) == {"gradcam", "hirescam"}
    with np.load(tmp_path / "run" / "analysis" / "gradcam_train.npz") as z:
        assert z["summary_cam_mean"].shape == (10, 4, 4)

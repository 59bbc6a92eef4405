"""LeGrad (ifa_jax.legrad, cams "legrad" / "legradlayers") against a ViT written by hand and
against torch-cam's maps (tests/data/peers_vit.npz, experiments/golden_peers.py --vit; no
torch needed), and attention_to_grid's layout against a loop."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from ifa_jax import cams, explain
from ifa_jax.probes import legrad_probe, linen_probe, vit_projection
from ifa_jax.probes.tokens import GridTapped, attention_to_grid
from ifa_jax.runner.models import ViT
from tests import reference as ref
from tests.conftest import random_variables

GRID = (2, 3)  # 8x12 inputs, patch 4: a 2x3 grid of patches after the class token
TARGET = np.array([0, 2])
PEERS_VIT = Path(__file__).parent / "data" / "peers_vit.npz"
PEER_RTOL = 1e-4  # max |ours - theirs| / max |theirs|, per image


@pytest.fixture(scope="module")
def vit():
    """(model, variables, x (2, 8, 12, 1)): 2 blocks, 2 heads, 1 + 6 tokens."""
    model = ViT(num_classes=3, patch=4, dim=8, depth=2, num_heads=2, mlp_dim=16)
    x = jnp.asarray(np.random.default_rng(0).random((2, 8, 12, 1), np.float32))
    return model, random_variables(model, x), x


# --------------------------------------------------------------------------- the ViT by hand


def layer_norm(p, t):
    mean = t.mean(-1, keepdims=True)
    var = ((t - mean) ** 2).mean(-1, keepdims=True)
    return (t - mean) / jnp.sqrt(var + 1e-6) * p["scale"] + p["bias"]


def dense(p, t):
    return t @ p["kernel"] + p["bias"]


def heads(p, t):
    """Tokens (B, N, D) -> per-head projections (B, N, H, d)."""
    return jnp.einsum("bnd,dhk->bnhk", t, p["kernel"]) + p["bias"]


def probabilities(p, t):
    """(B, H, queries, keys): softmax over keys of q k / sqrt(d)."""
    q, k = heads(p["query"], t), heads(p["key"], t)
    return jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q / jnp.sqrt(q.shape[-1]), k), axis=-1)


def block(p, h, probs=None):
    """One pre-norm block; ``probs`` replaces its attention probabilities when given.
    Returns (output tokens, the probabilities used)."""
    y = layer_norm(p["norm1"], h)
    probs = probabilities(p["attn"], y) if probs is None else probs
    mixed = jnp.einsum("bhqk,bkhd->bqhd", probs, heads(p["attn"]["value"], y))
    h = (
        h
        + jnp.einsum("bqhd,hde->bqe", mixed, p["attn"]["out"]["kernel"])
        + p["attn"]["out"]["bias"]
    )
    y = dense(p["fc2"], jax.nn.gelu(dense(p["fc1"], layer_norm(p["norm2"], h))))
    return h + y, probs


def embed(p, x, patch):
    B, H, W, C = x.shape
    cells = x.reshape(B, H // patch, patch, W // patch, patch, C).transpose(0, 1, 3, 2, 4, 5)
    e = jnp.einsum("bijpqc,pqcd->bijd", cells, p["patch_embed"]["kernel"])
    e = (e + p["patch_embed"]["bias"]).reshape(B, -1, e.shape[-1])
    cls = jnp.broadcast_to(p["cls_token"], (B, 1, e.shape[-1]))
    return jnp.concatenate([cls, e], axis=1) + p["pos_embedding"]


def mean_head(p, tokens):
    """torch-cam's layer score: the final norm and head on the mean token."""
    return dense(p["head"], layer_norm(p["norm"], tokens.mean(1)))


def class_head(p, tokens):
    """The model's own head: final norm, class token, head."""
    return dense(p["head"], layer_norm(p["norm"], tokens)[:, 0])


def hand_gradients(variables, x, patch, depth):
    """The model's logits and, per layer score (``"mean"``: :func:`mean_head`, ``"class"``:
    :func:`class_head`), per block: (its probabilities P, d score(block output)[b,
    TARGET[b]] / d P), in token space (B, H, Q, T)."""
    p = variables["params"]
    h = embed(p, x, patch)
    out = {"mean": [], "class": []}
    for i in range(depth):
        bp = p[f"block{i + 1}"]
        _, probs = block(bp, h)
        for name, project in (("mean", mean_head), ("class", class_head)):

            def score(P, h=h, bp=bp, project=project):
                return jnp.sum(project(p, block(bp, h, P)[0])[jnp.arange(2), TARGET])

            out[name].append((probs, jax.grad(score)(probs)))
        h = block(bp, h)[0]
    return class_head(p, h), out


@pytest.fixture(scope="module")
def hand(vit):
    """hand_gradients of the fixture's ViT (jitted: one compilation)."""
    model, variables, x = vit
    logits, out = jax.jit(hand_gradients, static_argnums=(2, 3))(
        variables, x, model.patch, model.depth
    )
    return {"logits": logits, **out}


# --------------------------------------------------------------------------- tests


def test_attention_to_grid_layout_and_transpose():
    probs = np.random.default_rng(2).random((2, 3, 4, 2 + 6), np.float32)
    for prefix, grid in ((2, (2, 3)), (0, (8,)), (2, (1, 2, 3))):
        got = attention_to_grid(prefix, grid)(probs)
        assert got.shape == (2, *grid, 3 * 4)
        np.testing.assert_array_equal(got, ref.attention_grid(probs, prefix, grid))
    # The transpose puts each cell back at its key and zeroes the prefix keys.
    reshape = attention_to_grid(prefix=2, grid=(2, 3))
    primal = jax.ShapeDtypeStruct(probs.shape, jnp.float32)
    back = GridTapped(lambda v, x, d: (x, {}), reshape).to_tokens("p", primal, reshape(probs))
    np.testing.assert_array_equal(back[..., 2:], probs[..., 2:])
    np.testing.assert_array_equal(back[..., :2], 0.0)
    square = attention_to_grid()(np.zeros((1, 2, 5, 1 + 4)))
    assert square.shape == (1, 2, 2, 10)


def test_blocks_equal_the_hand_reference(vit, hand):
    """Layer-specific gradients of two blocks from one probe call; legrad per block and
    legradlayers over both equal the loop reference on the hand-written ViT."""
    model, variables, x = vit
    (p1, g1), (p2, g2) = hand["mean"]
    probe = legrad_probe(model, ["block1", "block2"], grid=GRID)
    result, out = explain(probe, variables, x, TARGET, "legradlayers")
    np.testing.assert_allclose(result.logits, hand["logits"], rtol=1e-5, atol=1e-5)
    for layer, probs, grads in (("block1/attn/probs", p1, g1), ("block2/attn/probs", p2, g2)):
        A, G = result.activations[layer], result.gradients[layer]
        np.testing.assert_allclose(A, ref.attention_grid(probs, 1, GRID), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(G, ref.attention_grid(grads, 1, GRID), rtol=1e-4, atol=1e-6)
        one = cams.cam(A, G, "legrad")
        np.testing.assert_allclose(one.cam, ref.legrad([grads], 1, GRID), rtol=1e-4, atol=1e-7)
    want = ref.legrad([g1, g2], 1, GRID)
    assert np.abs(want).max() > 1e-4 and out.contributions.shape == (2, *GRID, 1)
    np.testing.assert_allclose(out.cam, want, rtol=1e-4, atol=1e-7)


def test_one_block_with_a_given_projection_and_no_prefix(vit, hand):
    """One block (arrays out) through explain's "legrad"; prefix=0 keeps the class key, on
    a 1-D grid of all 7 keys; the projection is the model's own class-token head."""
    model, variables, x = vit
    g1 = hand["class"][0][1]
    probe = legrad_probe(
        model, "block1", projection=lambda v, t: class_head(v["params"], t), prefix=0, grid=(7,)
    )
    result, out = explain(probe, variables, x, TARGET, "legrad")
    assert result.activations.shape == (2, 7, 2 * 7)
    np.testing.assert_allclose(out.cam, ref.legrad([g1], 0, (7,)), rtol=1e-4, atol=1e-7)


def test_model_score_at_the_last_block_is_legrad_with_the_models_head(vit, hand):
    """A plain probe of the last block's probabilities: G is the model's own score's, so
    "legrad" there is LeGrad whose projection is the model's head."""
    model, variables, x = vit
    g2 = hand["class"][1][1]
    probe = linen_probe(model, "block2/attn/probs", reshape=attention_to_grid(grid=GRID))
    _, out = explain(probe, variables, x, TARGET, "legrad")
    np.testing.assert_allclose(out.cam, ref.legrad([g2], 1, GRID), rtol=1e-4, atol=1e-7)


def test_errors_name_the_fix(vit):
    model, variables, x = vit
    with pytest.raises(ValueError, match=r"7 keys; after dropping prefix=1 there are 6, not a sq"):
        legrad_probe(model, "block1")(variables, x, TARGET)
    with pytest.raises(ValueError, match=r"there are 6, but grid=\(3, 3\) holds 9"):
        legrad_probe(model, "block1", grid=(3, 3))(variables, x, TARGET)
    with pytest.raises(
        ValueError, match=r"block 'norm' \(norm\) has no attention probabilities at 'norm/attn/pr"
    ):
        legrad_probe(model, "norm", grid=GRID)(variables, x, TARGET)
    rank = r"expects attention probabilities \(B, heads, queries, keys\); got shape \(2, 7, 8\)"
    with pytest.raises(ValueError, match=rank):
        legrad_probe(model, "block1", attention="attn", grid=GRID)(variables, x, TARGET)
    with pytest.raises(ValueError, match=rank):
        linen_probe(model, "block2/norm1", reshape=attention_to_grid(grid=GRID))(variables, x, 0)
    with pytest.raises(ValueError, match=r"projection maps block 'block1'.*\(2, 8\).*\(2, 3\)"):
        legrad_probe(model, "block1", grid=GRID, projection=lambda v, t: t.mean(1))(variables, x)
    with pytest.raises(ValueError, match=r"default projection reads .* parameters are \['conv1'"):
        vit_projection({"params": {"conv1": {}}}, jnp.ones((1, 3, 4)))
    with pytest.raises(ValueError, match=r"names a block twice"):
        legrad_probe(model, ["block1", "block1"])
    with pytest.raises(ValueError, match=r"prefix=-1 must be an int >= 0"):
        legrad_probe(model, "block1", prefix=-1)
    G = {"a": jnp.ones((1, 2, 3, 4)), "b": jnp.ones((1, 3, 2, 4))}
    with pytest.raises(ValueError, match=r"one grid; the layers' grids differ"):
        cams.cam_layers(G, G, "legradlayers")


# --------------------------------------------------------------------------- torch-cam's maps


def relative_error(ours, theirs) -> float:
    """max over images of max |ours - theirs| / max |theirs|."""
    ours, theirs = (np.asarray(a, np.float64).reshape(len(a), -1) for a in (ours, theirs))
    return float(np.max(np.abs(ours - theirs).max(1) / np.abs(theirs).max(1)))


@pytest.fixture(scope="module")
def peer_vit():
    """(spec, model, variables, arrays) of the stored ViT and torch-cam's LeGrad maps."""
    if not PEERS_VIT.exists():
        pytest.skip(f"{PEERS_VIT} is missing: python -m experiments.golden_peers --vit")
    with np.load(PEERS_VIT) as data:
        arrays = {k: data[k] for k in data.files}
    spec = json.loads(str(arrays["vit/spec"]))
    prefix = "vit/variables/"
    flat = {k[len(prefix) :]: jnp.asarray(v) for k, v in arrays.items() if k.startswith(prefix)}
    return spec, ViT(**spec["kwargs"]), traverse_util.unflatten_dict(flat, sep="/"), arrays


def test_equals_torch_cams_legrad(peer_vit):
    """torch-cam 0.5.0's LeGrad (normalized=False, logit targets) on each block of a trained
    ViT's torchvision twin, and on both: our probabilities and layer-score gradients equal
    the ones it captured, and "legrad" / "legradlayers" equal its maps to 1e-4 relative."""
    spec, model, variables, arrays = peer_vit
    x, labels, grid = arrays["vit/x"], arrays["vit/labels"], tuple(spec["grid"])
    to_grid = attention_to_grid(spec["prefix"], grid)
    theirs = {k.rsplit("/", 1)[-1]: v for k, v in arrays.items() if "/torch-cam/LeGrad/" in k}
    assert set(theirs) == {*spec["blocks"], "+".join(spec["blocks"])}
    # One probe of every block (its gradients are each block's own: one compilation).
    probe = legrad_probe(model, spec["blocks"], grid=grid)
    result, out = explain(probe, variables, x, labels, "legradlayers")
    np.testing.assert_allclose(result.logits, arrays["vit/logits"], rtol=1e-5, atol=1e-5)
    assert relative_error(out.cam, theirs["+".join(spec["blocks"])]) < PEER_RTOL
    for block, layer in zip(spec["blocks"], probe.layers, strict=True):
        for ours, key in ((result.activations, "P"), (result.gradients, "G")):
            assert relative_error(ours[layer], to_grid(arrays[f"vit/logit/{key}/{block}"])) < 1e-5
        _, one = explain(probe, variables, x, labels, "legrad", layer=layer)
        assert relative_error(one.cam, theirs[block]) < PEER_RTOL, block
    # The comparison can fail: the blocks' maps differ from each other by far more.
    first, second = (theirs[b] for b in spec["blocks"])
    assert np.abs(first).max() > 1e-2 and relative_error(first, second) > 0.1

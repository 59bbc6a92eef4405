"""Hugging Face transformers' Flax models (random initialisation, tiny configs): the probe
on their Linen ``.module`` against references built from the models' own outputs
(``output_hidden_states=True``) and their own submodules (gradients by ``jax.vjp``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ifa_jax
from ifa_jax.probes import hf_probe, hf_variables

transformers = pytest.importorskip("transformers")

TOL = {"rtol": 1e-4, "atol": 1e-5}


@pytest.fixture(scope="module")
def vit():
    config = transformers.ViTConfig(
        image_size=16,
        patch_size=4,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
    )
    return transformers.FlaxViTForImageClassification(config, seed=0)


@pytest.fixture(scope="module")
def resnet():
    config = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=3
    )
    return transformers.FlaxResNetForImageClassification(config, seed=0, input_shape=(1, 32, 32, 3))


def images(size: int) -> jax.Array:
    """Two channels-last images (2, size, size, 3)."""
    return jax.random.uniform(jax.random.key(0), (2, size, size, 3))


def hidden_states(model, x) -> tuple:
    """The model's own hidden states, computed by the model object on channels-first pixels."""
    return model(x.transpose(0, 3, 1, 2), output_hidden_states=True).hidden_states


def vjp_to(fn, a, target: int):
    """(logits, d logits[:, target] / d a) of fn(a) -> logits (B, O)."""
    logits, pullback = jax.vjp(fn, a)
    (grad,) = pullback(jnp.zeros_like(logits).at[:, target].set(1.0))
    return logits, grad


def test_vit_natural_layer_matches_its_own_submodules(vit):
    """layer=None taps the norm before the last attention and lays its 17 tokens on a 4x4
    grid; A, G, GradCAM and HiResCAM equal those built from HF's own submodules."""
    x = images(16)
    probe = hf_probe(vit)
    out, grad_cam = ifa_jax.explain(probe, probe.variables, x, 0, "gradcam")
    assert probe.layer == "vit/encoder/layer/1/layernorm_before"
    assert out.activations.shape == (2, 4, 4, 16)
    np.testing.assert_allclose(out.logits, vit(x.transpose(0, 3, 1, 2)).logits, **TOL)

    variables = {"params": vit.params}
    h = hidden_states(vit, x)[1]  # the input of the last layer (B, 17, 16)

    def norm(m, h):
        return m.vit.encoder.layer.layers[1].layernorm_before(h)

    def rest(m, a, h):  # FlaxViTLayer's forward from its first norm's output on
        layer = m.vit.encoder.layer.layers[1]
        mixed = layer.attention(a, deterministic=True)[0] + h
        tokens = layer.output(layer.intermediate(layer.layernorm_after(mixed)), mixed)
        return m.classifier(m.vit.layernorm(tokens)[:, 0])

    a = vit.module.apply(variables, h, method=norm)
    logits, g = vjp_to(lambda a: vit.module.apply(variables, a, h, method=rest), a, 0)
    np.testing.assert_allclose(logits, out.logits, **TOL)
    a_grid, g_grid = (t[:, 1:].reshape(2, 4, 4, 16) for t in (a, g))
    np.testing.assert_allclose(out.activations, a_grid, **TOL)
    np.testing.assert_allclose(out.gradients, g_grid, **TOL)
    weights = g_grid.mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(grad_cam.contributions, weights * a_grid, **TOL)
    _, hires = ifa_jax.explain(probe, probe.variables, x, 0, "hirescam")
    np.testing.assert_allclose(hires.contributions, g_grid * a_grid, **TOL)


def test_vit_named_token_layer_with_linen_probe_and_scorecam(vit):
    """linen_probe on the module with a named block output and tokens_to_grid: A is the
    model's own hidden state; ScoreCAM (which masks the channels-last input) runs."""
    x = images(16)
    probe = ifa_jax.linen_probe(
        vit.module,
        "layer/0/output",
        output="logits",
        reshape=ifa_jax.tokens_to_grid(),
        deterministic=True,
    )
    out, scored = ifa_jax.explain(probe, {"params": vit.params}, x, 1, "scorecam")
    h = hidden_states(vit, x)[1]
    np.testing.assert_allclose(out.activations, h[:, 1:].reshape(2, 4, 4, 16), **TOL)
    assert scored.cam.shape == (2, 4, 4)
    assert bool(jnp.all(jnp.isfinite(scored.cam))) and float(jnp.max(scored.cam)) > 0


def test_resnet_natural_layer_is_the_last_stage(resnet):
    """layer=None taps the last stage (channels last inside HF's Flax ResNet); its
    gradient is the classifier's column over the pooled grid."""
    x = images(32)
    probe = hf_probe(resnet)
    out, grad_cam = ifa_jax.explain(probe, probe.variables, x, 2, "gradcam")
    assert probe.layer == "resnet/encoder/stages/1"
    assert sorted(probe.variables) == ["batch_stats", "params"]
    a = hidden_states(resnet, x)[-1].transpose(0, 2, 3, 1)  # HF returns it NCHW
    np.testing.assert_allclose(out.activations, a, **TOL)
    kernel = resnet.params["params"]["classifier"]["1"]["kernel"]  # (16, 3)
    g = jnp.broadcast_to(kernel[:, 2] / 16, a.shape)  # a mean over the 4x4 grid
    np.testing.assert_allclose(out.gradients, g, **TOL)
    np.testing.assert_allclose(grad_cam.contributions, g * a, **TOL)


def test_resnet_named_stage_matches_its_own_submodules(resnet):
    """A named earlier stage: A from the model's hidden states, G by jax.vjp through the
    last stage, the pooling and the classifier; AblationCAM runs."""
    x = images(32)
    probe = ifa_jax.linen_probe(resnet.module, "stages/0", output="logits", deterministic=True)
    out, hires = ifa_jax.explain(probe, resnet.params, x, 1, "hirescam")
    assert probe.layer == "stages/0" and out.activations.shape == (2, 8, 8, 8)
    a = hidden_states(resnet, x)[1].transpose(0, 2, 3, 1)

    def rest(m, a):
        last = m.resnet.encoder.stages.stages[1](a, deterministic=True)
        return m.classifier(last.mean(axis=(1, 2)))

    logits, g = vjp_to(lambda a: resnet.module.apply(resnet.params, a, method=rest), a, 1)
    np.testing.assert_allclose(logits, out.logits, **TOL)
    np.testing.assert_allclose(out.activations, a, **TOL)
    np.testing.assert_allclose(out.gradients, g, **TOL)
    np.testing.assert_allclose(hires.contributions, g * a, **TOL)
    _, ablated = ifa_jax.explain(probe, resnet.params, x, 1, "ablationcam")
    assert ablated.cam.shape == (2, 8, 8) and bool(jnp.all(jnp.isfinite(ablated.cam)))


def test_analyze_runs_one_pass(resnet):
    """One streaming pass over two batches, one sample of each class counted."""
    x = np.asarray(jax.random.uniform(jax.random.key(1), (3, 32, 32, 3)))
    probe = hf_probe(resnet)
    batches = [(x[:2], np.array([0, 1])), (x[2:], np.array([2]))]
    result = ifa_jax.analyze(
        probe,
        probe.variables,
        batches,
        num_classes=3,
        method="hirescam",
        count="all",
        progress=False,
    )
    assert result.summary.im_class.shape == (3, 16)
    assert bool(jnp.all(jnp.isfinite(result.summary.im_class)))


def test_hf_probe_names_what_it_takes():
    with pytest.raises(ValueError, match=r"\.module.*\.params.*linen_probe"):
        hf_probe(object())
    assert hf_variables({"vit": 1}) == {"params": {"vit": 1}}
    assert hf_variables({"params": 1, "batch_stats": 2}) == {"params": 1, "batch_stats": 2}


def test_channels_first_images_name_the_transpose(vit):
    probe = hf_probe(vit)
    with pytest.raises(ValueError, match=r"channels first.*x\.transpose\(0, 2, 3, 1\)"):
        probe(probe.variables, jnp.ones((2, 3, 16, 16)), 0)

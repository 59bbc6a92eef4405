"""Smoothing (ifa_jax.smoothing): augmentation, SmoothGrad noise and the eigen projection,
each against a plain map, a loop over copies or a NumPy SVD reference."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ifa_jax import cams
from ifa_jax.explaining import explain, smoothing
from ifa_jax.explaining.smoothing import Augmentation
from ifa_jax.probes import linen_probe
from ifa_jax.runner.models import ConvNet

FLIP_LAST = Augmentation(flip=(-1,))
PEERS = Path(__file__).parent / "data" / "peers.npz"  # experiments/golden_peers.py


@pytest.fixture(scope="module")
def small():
    """(model, variables, x (3, 6, 5, 2)) of a small GAP CNN (not flip-symmetric)."""
    model = ConvNet(ndim=2, features=(4, 6), num_classes=3)
    x = jax.random.normal(jax.random.key(0), (3, 6, 5, 2))
    return model, model.init(jax.random.key(1), x), x


def symmetric(variables, ndim: int):
    """The variables with every conv kernel averaged over its flips along each spatial
    axis: with SAME padding, stride 1 and a GAP head the model is then flip-equivariant."""

    def sym(path, leaf):
        if "conv" not in jax.tree_util.keystr(path) or leaf.ndim != ndim + 2:
            return leaf
        for axis in range(ndim):
            leaf = (leaf + jnp.flip(leaf, axis)) / 2
        return leaf

    return jax.tree_util.tree_map_with_path(sym, variables)


# --------------------------------------------------------------------------- augmentation


def test_identity_augmentation_is_the_plain_map_bit_for_bit(small):
    model, variables, x = small
    probe = linen_probe(model, "relu2")
    mask = (jax.random.uniform(jax.random.key(5), (3, 6)) > 0.4).astype(jnp.float32)
    for method, kwargs in (("gradcam", {"mask": mask}), ("scorecam", {})):
        _, plain = explain(probe, variables, x, 1, method, **kwargs)
        _, smooth = smoothing.aug_smooth(
            probe, variables, x, 1, method, augmentations=(smoothing.IDENTITY,), **kwargs
        )
        for field in cams.CamResult._fields:
            np.testing.assert_array_equal(getattr(smooth, field), getattr(plain, field))


def test_flips_of_a_flip_equivariant_model_give_the_plain_map(convnet):
    """1-D, 2-D, 3-D: every flip of a symmetric-kernel GAP CNN is undone exactly."""
    model, variables, x = convnet
    ndim = x.ndim - 2
    probe = linen_probe(model, f"relu{len(model.features)}")
    flips = [Augmentation(flip=(a,)) for a in range(ndim)] + [Augmentation(flip=range(ndim))]
    table = (smoothing.IDENTITY, *flips)
    sym = symmetric(variables, ndim)
    _, plain = explain(probe, sym, x, 0, "gradcam")
    _, smooth = smoothing.aug_smooth(probe, sym, x, 0, "gradcam", augmentations=table)
    np.testing.assert_allclose(smooth.cam, plain.cam, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(smooth.importance, plain.importance, rtol=1e-5, atol=1e-6)
    # The same table on the unsymmetrised model moves the map: the test can fail.
    _, asym = explain(probe, variables, x, 0, "gradcam")
    _, moved = smoothing.aug_smooth(probe, variables, x, 0, "gradcam", augmentations=table)
    assert float(jnp.max(jnp.abs(moved.cam - asym.cam))) > 1e-3


def test_augmentations_against_a_loop_over_copies(small):
    """Flips, factors and a zoomed grid (two input shapes): each copy explained on its
    own, brought back by hand (resize with the cell ratio, flip) and averaged."""
    model, variables, x = small
    probe = linen_probe(model, "relu2")
    table = (
        Augmentation(flip=(-1,), factor=0.9),
        Augmentation(flip=(0, 1)),
        Augmentation(zoom=2.0),
        Augmentation(flip=(0,), factor=1.1, zoom=2.0),
    )
    res, smooth = smoothing.aug_smooth(
        probe, variables, x, "predicted", "xgradcam", augmentations=table
    )
    B, H, W, C = x.shape
    maps = []
    for aug in table:
        xa = x
        if aug.flip:
            xa = jnp.flip(xa, [1 + a % 2 for a in aug.flip])
        xa = xa * aug.factor
        if aug.zoom != 1.0:
            xa = jax.image.resize(xa, (B, 2 * H, 2 * W, C), "linear")
        _, out = explain(probe, variables, xa, res.target, "xgradcam")  # x's predicted class
        M = np.asarray(out.contributions, np.float64)
        if aug.zoom != 1.0:
            M = np.asarray(jax.image.resize(out.contributions, (B, H, W, 6), "linear")) * 4.0
        if aug.flip:
            M = np.flip(M, [1 + a % 2 for a in aug.flip])
        maps.append(M)
    M = np.mean(maps, axis=0)
    np.testing.assert_allclose(smooth.contributions, M, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(smooth.cam, M.sum(-1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(smooth.max, M.sum(-1).reshape(B, -1).max(1), rtol=1e-4, atol=1e-6)
    assert res.target.shape == (B,)


def test_augmentation_values():
    x = jnp.arange(2 * 3 * 4 * 1, dtype=jnp.float32).reshape(2, 3, 4, 1)
    aug = Augmentation(flip=-1, factor=2.0)
    np.testing.assert_array_equal(aug.forward(x), 2.0 * x[:, :, ::-1])
    np.testing.assert_array_equal(aug.inverse(aug.forward(x) / 2.0, (3, 4)), x)
    zoomed = Augmentation(zoom=2.0).inverse(jnp.ones((2, 6, 8, 1)), (3, 4))
    np.testing.assert_allclose(zoomed, 4.0, rtol=1e-6)  # the sum over the grid is kept
    assert Augmentation(flip=[0, 1]) == Augmentation(flip=(0, 1))  # hashable values
    assert len(smoothing.DEFAULT_AUGMENTATIONS) == 6  # pytorch-grad-cam: 2 flips x 3 factors
    with pytest.raises(ValueError, match=r"flip axes \[2\] do not exist"):
        Augmentation(flip=(2,)).forward(x)
    with pytest.raises(ValueError, match="zoom > 0"):
        Augmentation(zoom=0.0)


# --------------------------------------------------------------------------- eigen


def pytorch_grad_cam_projection(M):
    """pytorch-grad-cam's get_2d_projection (utils/svd_on_activations.py), restated in
    NumPy on channels-first arrays: per sample (K, *spatial) -> (P, K), each channel
    centred over the grid, projected on the first right singular vector (LAPACK's sign)."""
    out = []
    for m in np.moveaxis(np.asarray(M, np.float64), -1, 1):
        cells = m.reshape(m.shape[0], -1).T
        cells = cells - cells.mean(axis=0)
        _, _, vt = np.linalg.svd(cells, full_matrices=True)
        out.append((cells @ vt[0]).reshape(m.shape[1:]))
    return np.stack(out)


@pytest.mark.parametrize("spatial", [(7,), (4, 5), (3, 4, 2)], ids=["1d", "2d", "3d"])
def test_eigen_smooth_against_numpy_svd(spatial):
    M = jax.random.normal(jax.random.key(len(spatial)), (3, *spatial, 5)) + 0.5
    out = jax.jit(smoothing.eigen_smooth)(M)
    reference = pytorch_grad_cam_projection(M)
    plain = np.asarray(M, np.float64).sum(-1)
    for n in range(M.shape[0]):
        ours, theirs = np.asarray(out.cam[n], np.float64), reference[n]
        sign = 1.0 if np.vdot(ours, theirs) >= 0 else -1.0  # theirs: LAPACK's sign
        np.testing.assert_allclose(ours, sign * theirs, rtol=1e-4, atol=1e-5)
        assert np.vdot(ours, plain[n]) >= 0  # ours points the way the plain CAM does
    np.testing.assert_allclose(out.cam, out.contributions.sum(-1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.importance, 0.0, atol=1e-4)  # centred terms
    mask = jnp.array([1.0, 0.0, 1.0, 0.0, 1.0])
    masked = smoothing.eigen_smooth(out._replace(contributions=M), mask)
    np.testing.assert_allclose(masked.cam, (out.contributions * mask).sum(-1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "case, score", [("mnist_cnn", "logit"), ("mnist_cnn", "probability"), ("convnet", "logit")]
)
def test_eigen_smooth_equals_pytorch_grad_cam_on_the_golden_tensors(case, score):
    """tests/data/peers.npz: pytorch-grad-cam's GradCAM(eigen_smooth=True) raw map (before
    its ReLU and min-max) on torch's A and G; ours from the same tensors, to 1e-4 of each
    image's largest |value|, up to LAPACK's sign (theirs has no sign rule)."""
    with np.load(PEERS) as golden:
        A, G = jnp.asarray(golden[f"{case}/A"]), jnp.asarray(golden[f"{case}/{score}/G"])
        theirs = golden[f"{case}/{score}/pytorch-grad-cam/GradCAM+eigen_smooth"]
    ours = smoothing.eigen_smooth(cams.contributions(A, G, "gradcam")).cam
    ours = np.asarray(ours, np.float64).reshape(len(theirs), -1)
    theirs = np.asarray(theirs, np.float64).reshape(len(theirs), -1)
    largest = np.abs(theirs).max(axis=1)
    same = np.abs(ours - theirs).max(axis=1) / largest
    flipped = np.abs(ours + theirs).max(axis=1) / largest
    assert float(np.minimum(same, flipped).max()) < 1e-4


def test_eigen_in_explain_smoothed_is_eigen_smooth_of_the_plain_result(small):
    model, variables, x = small
    probe = linen_probe(model, "relu2")
    _, plain = explain(probe, variables, x, 2, "hirescam")
    _, smooth = smoothing.explain_smoothed(probe, variables, x, 2, "hirescam", smooth="eigen")
    expected = smoothing.eigen_smooth(plain)
    np.testing.assert_allclose(smooth.cam, expected.cam, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- noise


def test_smoothgrad_with_zero_noise_is_the_plain_map(small):
    model, variables, x = small
    probe = linen_probe(model, "relu1")
    _, plain = explain(probe, variables, x, 1, "gradcam++")
    _, smooth = smoothing.smoothgrad(
        probe, variables, x, 1, "gradcam++", key=jax.random.key(0), samples=3, noise=0.0
    )
    np.testing.assert_allclose(smooth.cam, plain.cam, rtol=1e-5, atol=1e-7)


def test_smoothgrad_against_a_loop_over_noisy_copies(small):
    """G averaged over the noisy copies (the documented draws), A of x, GradCAM in NumPy."""
    model, variables, x = small
    probe = linen_probe(model, "relu1")  # G depends on the input here (relu2 gates it)
    key, samples, noise = jax.random.key(7), 4, 0.2
    _, smooth = smoothing.smoothgrad(
        probe, variables, x, 1, "gradcam", key=key, samples=samples, noise=noise
    )
    noise_key, _ = jax.random.split(key)
    draws = jax.random.normal(jax.random.fold_in(noise_key, 0), (samples, *x.shape))
    grads = []
    for i in range(samples):
        noisy = np.array(x)
        for n in range(x.shape[0]):
            spread = noise * (float(x[n].max()) - float(x[n].min()))
            noisy[n] = noisy[n] + spread * np.asarray(draws[i, n])
        grads.append(np.asarray(probe(variables, jnp.asarray(noisy), 1).gradients, np.float64))
    G = np.mean(grads, axis=0)
    A = np.asarray(probe(variables, x, 1).activations, np.float64)
    L = np.zeros(A.shape[:-1])
    for n in range(A.shape[0]):
        for k in range(A.shape[-1]):
            L[n] += G[n, ..., k].mean() * A[n, ..., k]
    np.testing.assert_allclose(smooth.cam, L, rtol=1e-4, atol=1e-6)
    _, plain = explain(probe, variables, x, 1, "gradcam")
    assert float(jnp.max(jnp.abs(plain.cam - L))) > 1e-4  # the noise changed the map


def test_all_steps_compose_with_every_method(small):
    """aug + eigen with every registered method, and + noise with the gradient ones."""
    model, variables, x = small
    probe = linen_probe(model, "relu2")
    table = (smoothing.IDENTITY, FLIP_LAST)
    key = jax.random.key(3)
    for name in cams.LAYER_METHODS:
        method = cams.REGISTRY[name]
        steps = ("aug", "eigen") + (("noise",) if "gradients" in method.needs else ())
        _, out = smoothing.explain_smoothed(
            probe, variables, x, 0, name, smooth=steps, augmentations=table, samples=2, key=key
        )
        assert out.cam.shape == x.shape[:-1], name
        assert bool(jnp.all(jnp.isfinite(out.cam))), name


def test_smoothing_errors(small):
    model, variables, x = small
    probe = linen_probe(model, "relu2")
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="'noise' averages the gradients G, which eigencam"):
        smoothing.explain_smoothed(probe, variables, x, 0, "eigencam", smooth="noise", key=key)
    with pytest.raises(ValueError, match="'noise' needs a PRNG key"):
        smoothing.explain_smoothed(probe, variables, x, 0, "gradcam", smooth="noise")
    with pytest.raises(ValueError, match="samples must be an int >= 1"):
        smoothing.smoothgrad(probe, variables, x, 0, key=key, samples=0)
    with pytest.raises(ValueError, match=r"unknown smoothing \['blur'\]"):
        smoothing.explain_smoothed(probe, variables, x, 0, smooth=("aug", "blur"))
    with pytest.raises(
        ValueError, match="non-empty sequence of ifa_jax.explaining.smoothing.Augmentation"
    ):
        smoothing.aug_smooth(probe, variables, x, 0, augmentations=())
    with pytest.raises(ValueError, match=r"flip axes \[-3\] do not exist"):
        smoothing.aug_smooth(probe, variables, x, 0, augmentations=(Augmentation(flip=-3),))

"""Figures: CAM overlays (upsampling, common scale vs per-image min-max), cam_grid's shape
checks, saving every figure as a PNG, and that importing ifa_jax leaves matplotlib's
backend alone."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap

import matplotlib

matplotlib.use("Agg")  # this test module only; ifa_jax itself never selects a backend

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ifa_jax import plots  # noqa: E402
from ifa_jax.cams import upsample  # noqa: E402
from ifa_jax.scale import apply_scale, minmax_per_image, scale_from_bounds  # noqa: E402
from tests.figure_checks import figure_problems  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cams(n=3, h=7, w=7, seed=0):
    return np.random.default_rng(seed).normal(size=(n, h, w)).astype(np.float32) * 2 + 0.5


def _images(n=3, hw=28, channels=None, seed=1):
    shape = (n, hw, hw) if channels is None else (n, hw, hw, channels)
    return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def _saved_png(fig, tmp_path, name="fig.png"):
    path = plots.save(fig, tmp_path / name)
    with open(path, "rb") as f:
        return f.read(8)


def _cam_layer(ax):
    return np.asarray(ax.images[-1].get_array())


# ------------------------------------------------------------------------------- overlay


@pytest.mark.parametrize("channels", [None, 1, 3])
def test_overlay_upsamples_a_feature_grid_cam_to_the_image(channels):
    img = _images(1, 28, channels)[0]
    fig = plots.overlay(img, _cams(1)[0])
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert _cam_layer(ax).shape == (28, 28)
    assert len(ax.images) == 2  # the image below, the CAM above


def test_overlay_keeps_a_cam_already_on_the_image_grid():
    fig = plots.overlay(_images(1)[0], _cams(1, 28, 28)[0])
    assert _cam_layer(fig.axes[0]).shape == (28, 28)


def test_overlay_with_a_scale_draws_the_clipped_common_scale():
    cam = _cams(1)
    s = scale_from_bounds(-1.0, 2.0)
    fig = plots.overlay(_images(1)[0], cam[0], s)
    want = np.clip(np.asarray(apply_scale(upsample(cam, (28, 28)), s)), 0, 1)[0]
    got = _cam_layer(fig.axes[0])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert got.min() == 0 and got.max() == 1  # the scale really clips this CAM
    label = fig.axes[0].images[-1].colorbar.ax.get_ylabel()
    assert "common scale" in label and "per-image" not in label


def test_overlay_without_a_scale_is_per_image_minmax_spanning_0_to_1():
    cam = _cams(1) * 0.01 + 5.0  # far from [0, 1]: only a per-image stretch reaches it
    fig = plots.overlay(_images(1)[0], cam[0])
    got = _cam_layer(fig.axes[0])
    assert got.min() == 0.0 and got.max() == 1.0
    want = np.asarray(minmax_per_image(upsample(cam, (28, 28))))[0]
    np.testing.assert_allclose(got, want, atol=1e-5)
    label = fig.axes[0].images[-1].colorbar.ax.get_ylabel()
    assert "per-image min-max" in label and "common scale" not in label


def test_overlay_shows_a_3_channel_image_in_colour_and_draws_into_a_given_ax():
    rgb = _images(1, 28, 3)[0]
    fig = Figure()
    ax = fig.subplots()
    assert plots.overlay(rgb, _cams(1)[0], ax=ax, colorbar=False, title="t") is fig
    shown = np.asarray(ax.images[0].get_array())
    assert shown.shape == (28, 28, 3)
    np.testing.assert_allclose(shown, rgb, atol=1e-6)  # in [0, 1]: drawn as is, in colour
    assert ax.get_title() == "t" and len(fig.axes) == 1  # no colour bar


def test_overlay_refuses_a_batch_and_names_overlay_grid():
    with pytest.raises(ValueError, match=r"\(2, 7, 7\).*overlay_grid"):
        plots.overlay(_images(2)[0], _cams(2))


def test_overlay_grid_has_one_shared_colour_bar(tmp_path):
    imgs, cams = _images(5, 28, 3), _cams(5)
    fig = plots.overlay_grid(imgs, cams, scale_from_bounds(0.0, 2.0), cols=3, titles=list("abcde"))
    panels = [ax for ax in fig.axes if ax.images]
    bars = [ax for ax in fig.axes if ax not in panels and ax.get_ylabel()]
    assert len(panels) == 5 and len(bars) == 1
    assert "common scale" in bars[0].get_ylabel()
    assert all(_cam_layer(ax).shape == (28, 28) for ax in panels)
    assert _saved_png(fig, tmp_path) == PNG_MAGIC
    with pytest.raises(ValueError, match=r"4 maps .* 5 images"):
        plots.overlay_grid(imgs, cams[:4])


# ------------------------------------------------------------------- cam_grid, outliers


def test_cam_grid_upsamples_feature_grid_maps_to_the_images():
    imgs = _images(3, 28, 1)
    common = np.clip(_cams(3), 0, 1)
    per_image = np.asarray(minmax_per_image(_cams(3)))
    fig = plots.cam_grid(imgs, common, per_image, titles=["a", "b", "c"])
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 6
    assert all(_cam_layer(ax).shape == (28, 28) for ax in panels)
    np.testing.assert_allclose(
        _cam_layer(panels[0]), np.asarray(upsample(common, (28, 28)))[0], atol=1e-6
    )


def test_cam_grid_refuses_a_batch_mismatch_and_non_2d_maps():
    imgs = _images(3)
    with pytest.raises(
        ValueError,
        match=r"common has 2 maps \(shape \(2, 7, 7\)\) but there "
        r"are 3 images .*one map per image",
    ):
        plots.cam_grid(imgs, _cams(2), _cams(3))
    with pytest.raises(ValueError, match=r"per_image has shape \(3, 7, 7, 1\).*maps\[\.\.\., 0\]"):
        plots.cam_grid(imgs, _cams(3), _cams(3)[..., None])


def test_outliers_upsamples_and_refuses_a_batch_mismatch():
    fig = plots.outliers(_images(2), np.clip(_cams(2), 0, 1), ["x", "y"])
    assert all(_cam_layer(ax).shape == (28, 28) for ax in fig.axes)
    with pytest.raises(ValueError, match=r"maps has 3 maps .* 2 images"):
        plots.outliers(_images(2), _cams(3), ["x", "y"])


# -------------------------------------------------------------- every figure saves a PNG


def _every_figure():
    rng = np.random.default_rng(0)
    imgs, maps = _images(2), np.clip(_cams(2), 0, 1)
    return {
        "cam_grid": plots.cam_grid(imgs, maps, maps, ["a", "b"]),
        "importance_heatmaps": plots.importance_heatmaps(
            {"IM_c": rng.normal(size=(3, 10)), "IM_diff": rng.normal(size=(3, 10))}
        ),
        "distributions": plots.distributions(
            {
                s: {"cam_max": rng.normal(size=50), "cam_min": rng.normal(size=50)}
                for s in ("train", "validation")
            }
        ),
        "consistency_scatter": plots.consistency_scatter(
            {
                "gradcam mean": (rng.normal(size=20), rng.normal(size=20), 0.5),
                "gradcam max": (rng.normal(size=20), rng.normal(size=20), None),
            }
        ),
        # Two levels reached by the same component: their marks must not be drawn apart
        # at one place, over each other.
        "spectrum": plots.spectrum(
            np.array([0.5, 0.3, 0.15, 0.05]), {"90%": 3, "95%": 3, "99%": 4}
        ),
        "accuracy_curve": plots.accuracy_curve(
            {"top": ([0.1, 0.5, 1.0], [0.5, 0.8, 0.9])},
            full_accuracy=0.9,
            label_rows={"top": ([0.1, 0.5, 1.0], [0.7, 0.95, 0.9])},
        ),
        "outliers": plots.outliers(imgs, maps, ["x", "y"]),
        "overlay": plots.overlay(imgs[0], _cams(1)[0]),
        "overlay_grid": plots.overlay_grid(imgs, _cams(2)),
    }


def test_every_plot_function_returns_a_figure_that_save_writes_as_png(tmp_path):
    for name, fig in _every_figure().items():
        assert isinstance(fig, Figure), name
        assert _saved_png(fig, tmp_path, f"{name}.png") == PNG_MAGIC, name


def test_every_plot_function_draws_readable_text():
    """No two texts overlap and every axis with tick labels says what they count."""
    problems = {name: figure_problems(fig) for name, fig in _every_figure().items()}
    assert {k: v for k, v in problems.items() if v} == {}


# ------------------------------------------------------------------- backend untouched

_SCRIPT = textwrap.dedent("""
    import sys, tempfile, os
    import matplotlib
    before = matplotlib.get_backend() if os.environ.get("MPLBACKEND") else None
    import numpy as np
    import ifa_jax
    after_import = matplotlib.get_backend() if before else None
    fig = ifa_jax.plots.overlay(np.ones((8, 8)), np.arange(16.0).reshape(4, 4))
    path = ifa_jax.plots.save(fig, os.path.join(tempfile.mkdtemp(), "f.png"))
    with open(path, "rb") as f:
        magic = f.read(8)
    pyplot = "matplotlib.pyplot" in sys.modules
    after_save = matplotlib.get_backend()  # unset: resolves it now, as on a bare import
    print(repr((before, after_import, after_save, pyplot, magic)))
""")


@pytest.mark.parametrize("mplbackend", ["svg", None], ids=["MPLBACKEND=svg", "unset"])
def test_import_ifa_jax_leaves_the_matplotlib_backend_alone(mplbackend):
    """In a fresh process: the backend is the same after importing ifa_jax and saving a
    figure as after a bare ``import matplotlib``, and pyplot is never imported."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "DISPLAY", "WAYLAND_DISPLAY")
    }
    env["JAX_PLATFORMS"] = "cpu"
    if mplbackend:
        env["MPLBACKEND"] = mplbackend

    def run(code):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        return ast.literal_eval(out.stdout.strip().splitlines()[-1])

    before, after_import, after_save, pyplot, magic = run(_SCRIPT)
    assert magic == PNG_MAGIC  # drawn and saved headless
    assert not pyplot  # pyplot was never imported: no backend was resolved or switched
    assert after_save == run("import matplotlib; print(repr(matplotlib.get_backend()))")
    if mplbackend:
        assert before == after_import == after_save == mplbackend

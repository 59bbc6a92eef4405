"""Our side of each case: the analysis step, CAMs on the common scale, explain(), ScoreCAM."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench.cases import E2E_METHODS, Case
from experiments.bench.floor import make_floor
from experiments.bench.timing import Entry
from ifa_jax import analysis, cams, explain, scale
from ifa_jax.probes import LayerProbe

# The ifa_jax rows that the peers are compared with.
CAM_ROW = "ifa CAM gradcam, common scale, input res"
# Batches of the whole analyze() pass row.
PASS_BATCHES = 8


def scorecam_row(batch: int) -> str:
    return f"ifa explain() scorecam (batch {batch})"


def make_cam_fn(probe: LayerProbe, method: str = "gradcam"):
    """Jitted ``(variables, x, y, scale) -> CAMs (B, *spatial_in)`` on the common scale."""

    @jax.jit
    def cam_at_input(variables, x, y, sc):
        res = probe(variables, x, y)
        out = cams.cam(res.activations, res.gradients, method)
        return cams.upsample(scale.apply_scale(out.cam, sc), x.shape[1:-1])

    return cam_at_input


@jax.jit
def scale_and_upsample(L, sc, spatial_like):
    """CAMs ``L`` on the scale ``sc``, upsampled to the spatial size of ``spatial_like``."""
    return cams.upsample(scale.apply_scale(L, sc), spatial_like.shape[1:-1])


def scale_of(cam_max, cam_min) -> scale.Scale:
    """The common scale (defaults: P90 of maxima, P50 of minima); with random weights it
    can be degenerate, then the full range is used (timing does not depend on it)."""
    try:
        return scale.common_scale(np.asarray(cam_max), np.asarray(cam_min))
    except ValueError:
        return scale.scale_from_bounds(float(np.min(cam_min)), float(np.max(cam_max)) + 1e-6)


def ifa_entries(case: Case, variables, probe: LayerProbe, x, y) -> list[Entry]:
    """The floor, the forward pass alone and the ifa_jax rows of one case."""
    b, bs = case.batch, min(case.scorecam_batch, case.batch)
    valid = jnp.ones((b,), bool)
    floor = make_floor(probe)
    A_shape = probe.output_shapes(variables, x)[1][probe.layers[0]]

    def empty():
        return analysis.init(case.num_classes, A_shape[-1], tuple(A_shape[1:-1]))

    state = {
        "gradcam": empty(),
        "hirescam": empty(),
        E2E_METHODS: tuple(empty() for _ in E2E_METHODS),
    }

    def step(method):
        def run():
            state[method], per = analysis.analysis_step(
                state[method],
                probe,
                variables,
                x,
                y,
                valid,
                num_classes=case.num_classes,
                method=method,
            )
            jax.block_until_ready((state[method], per))
            return per

        return run

    per = step("gradcam")()
    sc = scale_of(per.cam_max, per.cam_min)
    cam_fn = make_cam_fn(probe, "gradcam")
    xs, ys = x[:bs], y[:bs]

    def api_gradcam():
        _, out = explain(probe, variables, x, y, "gradcam")
        return jax.block_until_ready(scale_and_upsample(out.cam, sc, x))

    sc_score = {}

    def scorecam():
        _, out = explain(probe, variables, xs, ys, "scorecam")
        if not sc_score:
            sc_score["s"] = scale_of(out.max, out.min)
        return jax.block_until_ready(scale_and_upsample(out.cam, sc_score["s"], xs))

    forward = jax.jit(probe.forward)
    # The whole analyze() pass (host loop, per-sample values to the host) over PASS_BATCHES
    # host batches, with the runner's options: against the floor it shows what the loop
    # costs on top of the step (the step rows above keep x on the device).
    host_batches = [(np.asarray(x), np.asarray(y))] * PASS_BATCHES

    def analyze_pass():
        return analysis.analyze_methods(
            probe,
            variables,
            host_batches,
            num_classes=case.num_classes,
            methods=E2E_METHODS,
            count="all",
            keep_importance=True,
            progress=False,
        )

    return [
        Entry(
            "floor: jit fwd + vjp to layer (A, G)",
            "floor",
            b,
            lambda: jax.block_until_ready(floor(variables, x, y)),
        ),
        Entry(
            "jit forward only (logits)",
            "forward",
            b,
            lambda: jax.block_until_ready(forward(variables, x)),
        ),
        Entry("ifa analysis_step gradcam", "ifa", b, step("gradcam")),
        Entry("ifa analysis_step hirescam", "ifa", b, step("hirescam")),
        Entry(
            f"ifa analysis_step {len(E2E_METHODS)} methods, 1 probe", "ifa", b, step(E2E_METHODS)
        ),
        Entry(
            f"ifa analyze() {len(E2E_METHODS)} methods, {PASS_BATCHES} host batches",
            "ifa",
            b * PASS_BATCHES,
            analyze_pass,
        ),
        Entry(CAM_ROW, "ifa", b, lambda: jax.block_until_ready(cam_fn(variables, x, y, sc))),
        Entry("ifa explain() gradcam (eager API)", "ifa", b, api_gradcam),
        Entry(scorecam_row(bs), "ifa", bs, scorecam),
    ]

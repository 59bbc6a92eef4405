"""ARCC, the combined metric of "How to Evaluate and Refine your CAM" (arXiv 2605.14641),
as pytorch-grad-cam 1.5.7's ``metrics.arcc.ARCC`` defines it: the harmonic mean of three
scores in [0, 1], each higher is better.

* coherency: ``(r + 1) / 2``, r the Pearson correlation over the grid between the map and
  the map the same method gives for the input masked by it (``x * saliency``); r uses
  pytorch-grad-cam's ``cov / (std_a std_b + 1e-8)``, so a constant map gives r = 0;
* simplicity: ``1 - complexity``, complexity the mean of ``|saliency|`` over the grid;
* ROAD: the combined :func:`~ifa_jax.metrics.road.road` score over percentiles 20, 40,
  60, 80, doubled and clipped to [0, 1] (with probabilities it lies in [-0.5, 0.5]).

``ARCC = 3 / (1 / (coherency + 1e-8) + 1 / (1 - complexity + 1e-8) + 1 / (road + 1e-8))``.
The maps are recomputed by an explanation function ``explain_fn(x (N, *in, C), target
(N,)) -> (N, *in)`` in [0, 1] on the input grid; :func:`cam_explainer` builds one from a
probe and a method, scaled as pytorch-grad-cam scales its CAMs.

Examples:
    A map that is all ones: complexity 1, so simplicity 0 and ARCC 0 whatever the other
    two scores; the same map is found again on the masked input (coherency 0.5, as r = 0
    for a constant map):

    >>> import numpy as np
    >>> from ifa_jax.metrics.arcc import arcc, complexity
    >>> def score(x, target):
    ...     return x.mean(axis=(1, 2, 3))
    >>> def explain_fn(x, target):
    ...     return np.ones(x.shape[:-1], np.float32)
    >>> x = np.ones((1, 4, 4, 1), np.float32)
    >>> saliency = np.ones((1, 4, 4), np.float32)
    >>> float(complexity(saliency)[0])
    1.0
    >>> r = arcc(score, explain_fn, x, saliency, 0, noise=0.0)
    >>> float(r.coherency[0]), round(float(r.arcc[0]), 6)
    (0.5, 0.0)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from ifa_jax import cams
from ifa_jax._checks import index_targets
from ifa_jax._stats import minmax_per_image
from ifa_jax.explaining import explain
from ifa_jax.metrics._common import check_inputs
from ifa_jax.metrics.confidence import ScoreFn
from ifa_jax.metrics.road import NOISE, TOL, road
from ifa_jax.metrics.robustness import ExplainFn
from ifa_jax.probes import LayerProbe

Array = jax.Array

ARCC_PERCENTILES = (20, 40, 60, 80)
EPS = 1e-8  # pytorch-grad-cam's, in the correlation's denominator and the harmonic mean
CAM_EPS = 1e-7  # pytorch-grad-cam's min-max scaling of CAMs


class ARCC(NamedTuple):
    """Each (B,), higher is better except complexity: arcc, the harmonic mean of
    coherency, 1 - complexity and road; road: 2 x ROAD's combined score clipped to
    [0, 1]."""

    arcc: Array
    complexity: Array
    coherency: Array
    road: Array


def complexity(saliency: ArrayLike) -> Array:
    """ARCC's complexity: the mean of ``|saliency|`` over each map's grid.

    Args:
        saliency: (B, *in) maps.

    Returns:
        (B,) in [0, 1] for maps in [0, 1].

    Raises:
        ValueError: fewer than two axes.
    """
    s = jnp.asarray(saliency)
    if s.ndim < 2:
        raise ValueError(f"saliency must have shape (B, *in); got {s.shape}")
    return jnp.mean(jnp.abs(s), axis=tuple(range(1, s.ndim)))


def _correlation(a: Array, b: Array) -> Array:
    """Per row Pearson r of (B, n) arrays, pytorch-grad-cam's: cov / (std std + 1e-8)."""
    n = a.shape[1]
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    cov = (a * b).sum(1) / (n - 1)
    std_a = jnp.sqrt((a * a).sum(1) / (n - 1))
    std_b = jnp.sqrt((b * b).sum(1) / (n - 1))
    return cov / (std_a * std_b + EPS)


def coherency(explain_fn: ExplainFn, x: ArrayLike, saliency: ArrayLike, target: Any) -> Array:
    """ARCC's coherency: ``(r + 1) / 2``, r the correlation over the grid of the map and
    ``explain_fn(x * saliency[..., None], target)`` (pytorch-grad-cam's: ddof 1, 1e-8
    added to the product of the standard deviations).

    Args:
        explain_fn: ``(x (N, *in, C), target (N,)) -> (N, *in)``, maps on the input grid.
        x: (B, *in, C) inputs.
        saliency: (B, *in) in [0, 1], the maps of x.
        target: an int or (B,) ints.

    Returns:
        (B,) in [0, 1].

    Raises:
        ValueError: shapes that do not fit, or maps of explain_fn of another shape.
    """
    x, s = check_inputs(x, saliency)
    t = index_targets(target, x.shape[0], indices_only=True)
    again = jnp.asarray(explain_fn(x * s[..., None], t))
    if again.shape != s.shape:
        raise ValueError(
            f"explain_fn returned maps of shape {again.shape}; coherency needs {s.shape}, "
            "maps on the input grid (see cam_explainer)"
        )
    B = x.shape[0]
    r = _correlation(again.reshape(B, -1).astype(s.dtype), s.reshape(B, -1))
    return (r + 1) / 2


def cam_explainer(
    probe: LayerProbe,
    variables: Any,
    method: str | cams.Method = "gradcam",
    *,
    score: str = "logit",
    layer: str | None = None,
    **options: Any,
) -> Callable[[Array, Array], Array]:
    """An explanation function ``(x, target) -> (B, *in)`` that scales a CAM method's
    maps as pytorch-grad-cam does: ReLU, min-max per image (eps 1e-7), resized to the
    input grid (:func:`ifa_jax.cams.upsample`), min-max again.

    Args:
        probe: the model's :class:`~ifa_jax.probes.LayerProbe`.
        variables: the model's variables.
        method: a registered CAM method (name, alias or entry).
        score: 'logit' or 'probability', the score the CAM explains.
        layer: the layer of a multi-layer probe, or None.
        **options: the method's options, as for :func:`ifa_jax.explaining.explain`.

    Returns:
        The explanation function.
    """

    def explain_fn(x: Array, target: Array) -> Array:
        cam = explain(probe, variables, x, target, method, score=score, layer=layer, **options)
        scaled = minmax_per_image(jnp.maximum(cam.cam_result.cam, 0.0), CAM_EPS)
        return minmax_per_image(cams.upsample(scaled, tuple(x.shape[1:-1])), CAM_EPS)

    return explain_fn


def arcc(
    score_fn: ScoreFn,
    explain_fn: ExplainFn,
    x: ArrayLike,
    saliency: ArrayLike,
    target: Any,
    *,
    key: Any = None,
    percentiles: Sequence[float] = ARCC_PERCENTILES,
    noise: float = NOISE,
    tol: float = TOL,
    maxiter: int | None = None,
    images_per_batch: int = 4,
) -> ARCC:
    """ARCC (arXiv 2605.14641) of maps ``saliency`` of x, pytorch-grad-cam 1.5.7's.

    ``explain_fn`` is called once, on the masked inputs, outside ``jit`` (it may jit
    itself); ROAD runs batched as in :func:`~ifa_jax.metrics.road.road`, with ``key``,
    ``noise``, ``tol``, ``maxiter`` and ``images_per_batch`` passed on.

    Args:
        score_fn: ``(x, target) -> (N,)``, the score ROAD reads (pytorch-grad-cam's
            targets; probabilities keep ROAD in [-0.5, 0.5]).
        explain_fn: ``(x, target) -> (N, *in)``, the method that made ``saliency``.
        x: (B, *in, C) inputs.
        saliency: (B, *in) in [0, 1], the maps of x by ``explain_fn``.
        target: an int or (B,) ints.
        key: PRNG key of ROAD's imputation noise (needed when noise > 0).
        percentiles: ROAD's percentiles.
        noise: ROAD's imputation noise std, >= 0.
        tol: ROAD's solver tolerance.
        maxiter: ROAD's solver iteration limit.
        images_per_batch: ROAD's images per forward batch.

    Returns:
        The :class:`ARCC` scores.

    Raises:
        ValueError: as for :func:`coherency` and :func:`~ifa_jax.metrics.road.road`.
    """
    x, s = check_inputs(x, saliency)
    coh = coherency(explain_fn, x, s, target)
    comp = complexity(s)
    combined = road(
        score_fn,
        x,
        s,
        target,
        key=key,
        percentiles=percentiles,
        noise=noise,
        tol=tol,
        maxiter=maxiter,
        images_per_batch=images_per_batch,
    ).combined
    r = jnp.clip(combined * 2, 0.0, 1.0)
    value = 3 / (1 / (coh + EPS) + 1 / ((1 - comp) + EPS) + 1 / (r + EPS))
    return ARCC(value, comp, coh, r)

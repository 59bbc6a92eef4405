"""Smoothed CAMs: test-time augmentation, SmoothGrad noise and the eigen projection.

Each smoothing is a transformation around the method, not a copy of it, so it works with
every entry of :data:`ifa_jax.cams.REGISTRY` (a user's own ones too), in 1-D, 2-D and 3-D:

* ``"aug"``: explain augmented copies of x (:class:`Augmentation`: flips along any
  spatial axis, intensity factors, zoomed grids), bring each copy's contributions back
  to x's frame (:meth:`Augmentation.inverse`) and average them, as pytorch-grad-cam's
  ``aug_smooth`` does; its default table (a flip of the last spatial axis, "horizontal",
  times the factors 0.9, 1, 1.1) is :data:`DEFAULT_AUGMENTATIONS`. Every method, the
  forward-pass ones included.
* ``"noise"``: SmoothGrad (Smilkov et al. 2017) for CAMs as Smooth Grad-CAM++ (Omeiza et
  al. 2019) and torch-cam's SmoothGradCAMpp define it: the gradient G is averaged over
  ``samples`` noisy copies of x, the activations A are the clean input's, and the method
  runs once on (A, mean G). The noise is Gaussian with std ``noise`` times each sample's
  value range (max - min), 0.15 by default (the paper's 10-20%). Gradient methods only.
  torch-cam averages G^2 and G^3 separately for GradCAM++'s alpha; we average G itself,
  one rule for every gradient method, which for the methods linear in G (gradcam,
  xgradcam, hirescam) is exactly the average of the per-copy weights.
* ``"eigen"``: :func:`eigen_smooth`, the projection of the contributions M on their first
  principal component, as pytorch-grad-cam's ``eigen_smooth``; it is also a function of
  any :class:`ifa_jax.cams.CamResult` or M on its own.

One function composes them, with :func:`ifa_jax.explain`'s signature and return value::

    probe_result, cam_result = explain_smoothed(
        probe, variables, x, target, method, smooth=("aug", "noise", "eigen"), key=key)

The order is fixed, whatever the order of ``smooth``: for each augmented copy, noise
smooths its gradients, the method gives M (and, with the channel mask, L and s), eigen
projects M; the copies' M, L and s are brought back to x's frame and averaged, and max/min
are those of the averaged L. This is pytorch-grad-cam's order (its eigen_smooth runs
inside each augmented forward). :func:`aug_smooth` and
:func:`smoothgrad` are ``explain_smoothed`` with one step.

Targets: every copy explains the target resolved on x itself (``"predicted"`` is x's
predicted class, not each copy's). The probe result returned is x's. What is averaged
differs from pytorch-grad-cam, which averages relu'd, per-image min-max normalised maps
on the input grid: we average the raw contributions on the layer's grid, so the common
scale (:mod:`ifa_jax.scale`) still applies afterwards.

Cost: the copies of one input shape (augmentations x (1 + samples) with noise) go
through the model as one batch, flattened rather than vmapped (which keeps the model's
ops in their batched form): one probe compilation for all of them, as for x itself. The
steps around it (copies, noise, method, eigen, back to x's frame, average) are jitted
functions compiled once per configuration. With the identity augmentation alone the
copy is x itself and the result is explain's, bit for bit. Memory grows with the number
of copies: explain fewer samples per call.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ifa_jax import cams
from ifa_jax._checks import pick_layer
from ifa_jax.explaining import callable_target, explain
from ifa_jax.probe import LayerProbe, ProbeResult, Target

Array = jax.Array

SMOOTHINGS = ("aug", "noise", "eigen")
NOISE = 0.15  # std as a share of each sample's value range (SmoothGrad: 10-20%)
SAMPLES = 16  # noisy copies per input


# --------------------------------------------------------------------------- augmentations


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """One test-time augmentation of channels-last inputs x (B, *spatial_in, C).

    flip: spatial axes flipped (0 is the first spatial axis, -1 the last).
    factor: intensity factor, x -> factor * x (ttach's Multiply).
    zoom: grid factor, each spatial size n -> round(n * zoom), linear resize (as ttach's Scale).
    Values, not functions, so tables hash and compare by value (jit caches by them).
    """

    flip: tuple[int, ...] = ()
    factor: float = 1.0
    zoom: float = 1.0

    def __post_init__(self):
        flip = (self.flip,) if isinstance(self.flip, int) else tuple(self.flip)
        if not all(isinstance(a, int) and not isinstance(a, bool) for a in flip):
            raise ValueError(f"flip must be spatial axes (ints, e.g. (-1,)); got {self.flip!r}")
        if not (math.isfinite(self.factor) and math.isfinite(self.zoom) and self.zoom > 0):
            raise ValueError(
                f"an augmentation needs a finite factor and a finite zoom > 0; got "
                f"factor={self.factor!r}, zoom={self.zoom!r}"
            )
        object.__setattr__(self, "flip", flip)
        object.__setattr__(self, "factor", float(self.factor))
        object.__setattr__(self, "zoom", float(self.zoom))

    def _axes(self, a: Array | jax.ShapeDtypeStruct) -> tuple[int, ...]:
        """The array axes of ``flip`` in a (B, *spatial, C); a ValueError when out of range."""
        rank = a.ndim - 2
        bad = [ax for ax in self.flip if not -rank <= ax < rank]
        if bad:
            raise ValueError(
                f"flip axes {bad} do not exist on a grid with {rank} spatial axes "
                f"(shape {tuple(a.shape)}); use axes in [{-rank}, {rank - 1}]"
            )
        return tuple(1 + ax % rank for ax in self.flip)

    def spatial_shape(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """The spatial sizes of an augmented input with sizes ``spatial``."""
        return tuple(max(1, round(n * self.zoom)) for n in spatial)

    def forward(self, x: Array) -> Array:
        """The augmented input: x (B, *spatial_in, C) -> (B, *spatial_shape, C)."""
        x = jnp.flip(x, self._axes(x)) if self.flip else x
        if self.factor != 1.0:
            x = x * self.factor
        shape = (x.shape[0], *self.spatial_shape(x.shape[1:-1]), x.shape[-1])
        return x if shape == x.shape else jax.image.resize(x, shape, method="linear")

    def inverse(self, M: Array, grid: Sequence[int]) -> Array:
        """A copy's contributions brought back to x's frame: M (B, *grid', K) -> (B, *grid, K).

        A zoomed copy's M is resized to ``grid`` and multiplied by prod(grid') / prod(grid),
        which keeps its sum over the grid: a finer grid spreads the score over more cells,
        and the copy should count as much as the others. Flips are undone.
        """
        grid = tuple(grid)
        if M.shape[1:-1] != grid:
            if len(grid) != M.ndim - 2:
                raise ValueError(
                    f"contributions {tuple(M.shape)} cannot be brought back to a grid {grid}"
                )
            cells = math.prod(M.shape[1:-1]) / math.prod(grid)
            M = jax.image.resize(M, (M.shape[0], *grid, M.shape[-1]), method="linear") * cells
        return jnp.flip(M, self._axes(M)) if self.flip else M


IDENTITY = Augmentation()


def augmentation_table(
    flips: Sequence[Sequence[int]] = ((), (-1,)),
    factors: Sequence[float] = (0.9, 1.0, 1.1),
    zooms: Sequence[float] = (1.0,),
) -> tuple[Augmentation, ...]:
    """Every combination of ``flips`` (tuples of spatial axes), ``factors`` and ``zooms``,
    as ttach's Compose makes them. The defaults are pytorch-grad-cam's table."""
    return tuple(
        Augmentation(tuple(f), m, z) for f, m, z in itertools.product(flips, factors, zooms)
    )


DEFAULT_AUGMENTATIONS = augmentation_table()


# --------------------------------------------------------------------------- eigen


def _eigen_terms(M: Array) -> Array:
    """Per-channel terms (B, *spatial, K) of the first principal component projection of
    M (B, *spatial, K); they sum over channels to the projection."""
    cams.spatial_axes(M)
    flat = M.reshape(M.shape[0], -1, M.shape[-1])  # (B, P, K): grid cells x channels
    centred = flat - jnp.mean(flat, axis=1, keepdims=True)
    _, _, vt = jnp.linalg.svd(centred, full_matrices=False)
    v = vt[:, 0, :]  # (B, K)
    projection = jnp.einsum("bpk,bk->bp", centred, v)
    # An SVD's sign is arbitrary: point the map the way the plain CAM sum_k M_k points.
    sign = jnp.sign(jnp.einsum("bp,bp->b", projection, jnp.sum(flat, axis=-1)))
    v = v * jnp.where(sign == 0, 1.0, sign)[:, None]
    return (centred * v[:, None, :]).reshape(M.shape)


def eigen_smooth(
    contributions: Array | cams.CamResult, mask: Array | None = None
) -> cams.CamResult:
    """The CAM as the first principal component of the contributions (pytorch-grad-cam's
    eigen_smooth, any method, any rank). Returns a :class:`ifa_jax.cams.CamResult`.

    contributions: M (B, *spatial, K), or a CamResult (its unmasked contributions). Per
    sample, M is reshaped to (P grid cells, K), each channel centred over the grid (as
    pytorch-grad-cam does), and projected on the first right singular vector v:
    ``L = (M - mean) v``. pytorch-grad-cam leaves the sign to LAPACK; ours is fixed so
    that L correlates non-negatively with the plain CAM ``sum_k M_k``. The result's
    contributions are the per-channel terms ``v_k (M_k - mean M_k)``, so ``mask`` (K,) or
    (B, K) selects channels' shares of the projection as for every method; the
    importances are 0 by construction (each term is centred): use the unsmoothed ones.
    """
    M = contributions.contributions if isinstance(contributions, cams.CamResult) else contributions
    return cams.reduce(_eigen_terms(jnp.asarray(M)), mask)


# --------------------------------------------------------------------------- composition


def _steps(smooth: str | Sequence[str]) -> frozenset[str]:
    steps = (smooth,) if isinstance(smooth, str) else tuple(smooth)
    unknown = [s for s in steps if s not in SMOOTHINGS]
    if unknown:
        raise ValueError(f"unknown smoothing {unknown}; smooth= takes names from {SMOOTHINGS}")
    return frozenset(steps)


@functools.partial(jax.jit, static_argnames=("augs", "samples", "first"))
def _copies(x: Array, key: Array | None, noise: Array, *, augs, samples: int, first: int):
    """The inputs to probe for ``augs`` (one input shape; table indices first, first + 1,
    ...) of x (B, *in, C): (n * B, *in', C), or with ``samples`` > 0, (n * (1 + samples)
    * B, *in', C): each augmented copy, then its noisy copies. Copy j's noise is
    ``jax.random.normal(fold_in(key, first + j), (samples, B, *in', C))`` times ``noise``
    times the value range (max - min) of its sample."""
    xs = jnp.stack([a.forward(x) for a in augs])  # (n, B, *in', C)
    if samples:
        assert key is not None
        axes = tuple(range(2, xs.ndim))
        spread = noise * (jnp.max(xs, axes, keepdims=True) - jnp.min(xs, axes, keepdims=True))
        draws = jnp.stack(
            [
                jax.random.normal(jax.random.fold_in(key, first + j), (samples, *xs.shape[1:]))
                for j in range(len(augs))
            ]
        ).astype(xs.dtype)
        xs = jnp.concatenate([xs[:, None], xs[:, None] + spread[:, None] * draws], axis=1)
    return xs.reshape(-1, *xs.shape[-(x.ndim - 1) :])


@functools.partial(jax.jit, static_argnames=("copies", "samples", "method", "options"))
def _smoothgrad_cam(A, G, mask, key, *, copies: int, samples: int, method: str, options: tuple):
    """The CAM of each augmented copy from A, G (copies * (1 + samples) * B, *grid, K):
    its own activations and its noisy copies' mean gradient -> (copies * B, ...) fields."""
    A = A.reshape(copies, 1 + samples, -1, *A.shape[1:])
    G = G.reshape(A.shape)
    clean = A[:, 0].reshape(-1, *A.shape[3:])
    mean_g = jnp.mean(G[:, 1:], axis=1).reshape(clean.shape)
    return cams.cam(clean, mean_g, method, mask, key=key, **dict(options))


@functools.partial(jax.jit, static_argnames=("augs", "grid", "eigen"))
def _back_to_frame(result: cams.CamResult, mask, *, augs, grid: tuple[int, ...], eigen: bool):
    """Sums over the copies (in ``augs`` order, (n * B, ...) each) of their contributions,
    CAMs and importances, each brought back to x's frame (eigen-projected first)."""
    if eigen:
        result = eigen_smooth(result.contributions, mask)
    n = len(augs)
    M = result.contributions.reshape(n, -1, *result.contributions.shape[1:])
    L = result.cam.reshape(n, -1, *result.cam.shape[1:])
    s = result.importance.reshape(n, -1, result.importance.shape[-1])
    sums = None
    for j, aug in enumerate(augs):
        back = (aug.inverse(M[j], grid), aug.inverse(L[j][..., None], grid)[..., 0], s[j])
        sums = back if sums is None else tuple(a + b for a, b in zip(sums, back))
    assert sums is not None
    return sums


@functools.partial(jax.jit, static_argnames=("count",))
def _average(sums: tuple[Array, Array, Array], count: int) -> cams.CamResult:
    """The CamResult of the copies' averaged fields; max/min of the averaged map."""
    M, L, s = (a / count for a in sums)
    flat = L.reshape(L.shape[0], -1)
    return cams.CamResult(M, L, s, jnp.max(flat, axis=1), jnp.min(flat, axis=1))


def _tiled_mask(mask: Array | None, copies: int) -> Array | None:
    """A (K,) mask as it is; a per-sample (B, K) mask once per copy, (copies * B, K)."""
    if mask is None or jnp.ndim(mask) < 2:
        return mask
    return jnp.tile(jnp.asarray(mask), (copies, 1))


def explain_smoothed(
    probe: LayerProbe,
    variables,
    x: Array,
    target: Target = "predicted",
    method: str = "gradcam",
    *,
    smooth: str | Sequence[str] = SMOOTHINGS,
    augmentations: Sequence[Augmentation] = DEFAULT_AUGMENTATIONS,
    samples: int = SAMPLES,
    noise: float = NOISE,
    mask: Array | None = None,
    score: str = "logit",
    layer: str | None = None,
    chunk_size: int = 16,
    key: Array | None = None,
    **options,
) -> tuple[ProbeResult, cams.CamResult]:
    """:func:`ifa_jax.explain` with smoothing: (probe result of x, smoothed CAM result).

    x: (B, *spatial_in, C). smooth: names from :data:`SMOOTHINGS` (``"aug"``,
    ``"noise"``, ``"eigen"``), composed in the fixed order of the module doc; ``()``
    gives the plain map. augmentations: the table for ``"aug"``
    (:func:`augmentation_table`). samples, noise: the noisy copies per input and their
    std as a share of each sample's value range, for ``"noise"``, which needs ``key``
    (keyword-only; split into the noise key and the method's key, e.g. randomcam's).
    mask, score, layer, chunk_size and the method's ``options`` as in explain. The CAM
    result is on the layer's grid of x; its max/min are those of the averaged map.
    """
    steps = _steps(smooth)
    spec = cams.get_method(method)
    x = jnp.asarray(x)
    layer = pick_layer(probe.layers, layer)
    augs = tuple(augmentations) if "aug" in steps else (IDENTITY,)
    if not augs or not all(isinstance(a, Augmentation) for a in augs):
        raise ValueError(
            "augmentations must be a non-empty sequence of ifa_jax.smoothing.Augmentation "
            f"(e.g. smoothing.augmentation_table()); got {augmentations!r}"
        )
    if "noise" in steps:
        if "gradients" not in spec.needs:
            raise ValueError(
                f"smoothing 'noise' averages the gradients G, which {spec.name} does not use; "
                "use it with a gradient method (ifa_jax.cams.GRADIENT_METHODS), or smooth "
                "this one with 'aug'"
            )
        if key is None:
            raise ValueError("smoothing 'noise' needs a PRNG key: pass key=jax.random.key(seed)")
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples must be an int >= 1 (noisy copies); got {samples!r}")
        if not (math.isfinite(noise) and noise >= 0):
            raise ValueError(f"noise must be a finite std share >= 0 (e.g. 0.15); got {noise!r}")
    result = probe(variables, x, target, score=score)
    A = result.activations[layer] if isinstance(result.activations, dict) else result.activations
    grid = tuple(A.shape[1:-1])  # x's frame: every copy is brought back to it
    for aug in augs:
        if aug.flip:
            aug._axes(x)
            if A.ndim != x.ndim:
                raise ValueError(
                    f"flips need a layer grid with the input's spatial axes; the input is "
                    f"{tuple(x.shape)} and the layer {tuple(A.shape)}: drop the flips"
                )
    opts = tuple(sorted(cams.method_options(spec, options).items()))
    try:
        hash(opts)
    except TypeError:
        raise ValueError(
            f"explain_smoothed compiles {spec.name} with its options as constants, so they "
            f"must be hashable (float, int, str, None); got {dict(opts)!r}"
        ) from None
    target_fn = callable_target(target)  # else every copy explains x's resolved target
    noisy = "noise" in steps
    noise_key, method_key = (None, key) if key is None or not noisy else jax.random.split(key)
    samples = samples if noisy else 0
    groups: dict[tuple[int, ...], list[int]] = {}  # one batch per augmented input shape
    for j, aug in enumerate(augs):
        groups.setdefault(aug.spatial_shape(x.shape[1:-1]), []).append(j)
    totals = None
    for members in groups.values():
        group = tuple(augs[j] for j in members)
        n = len(group)
        flat = _copies(
            x, noise_key, jnp.asarray(noise, x.dtype), augs=group, samples=samples, first=members[0]
        )
        copies = n * (1 + samples)
        tiled = target_fn if target_fn is not None else jnp.tile(result.target, copies)
        if samples:
            probed = probe(variables, flat, tiled, score=score)
            acts, grads = probed.activations, probed.gradients
            if isinstance(acts, dict):
                acts, grads = acts[layer], grads[layer]
            out = _smoothgrad_cam(
                acts,
                grads,
                _tiled_mask(mask, n),
                method_key,
                copies=n,
                samples=samples,
                method=spec.name,
                options=opts,
            )
        else:
            _, out = explain(
                probe,
                variables,
                flat,
                tiled,
                spec.name,
                mask=_tiled_mask(mask, n),
                score=score,
                layer=layer,
                chunk_size=chunk_size,
                key=method_key,
                **dict(opts),
            )
        sums = _back_to_frame(
            out, _tiled_mask(mask, n), augs=group, grid=grid, eigen="eigen" in steps
        )
        totals = sums if totals is None else tuple(t + u for t, u in zip(totals, sums))
    assert totals is not None
    return result, _average(totals, len(augs))


def aug_smooth(
    probe: LayerProbe,
    variables,
    x: Array,
    target: Target = "predicted",
    method: str = "gradcam",
    *,
    augmentations: Sequence[Augmentation] = DEFAULT_AUGMENTATIONS,
    **kwargs: Any,
) -> tuple[ProbeResult, cams.CamResult]:
    """Test-time augmentation smoothing: :func:`explain_smoothed` with ``smooth=("aug",)``.

    Every method; ``kwargs`` as in explain_smoothed (mask, score, layer, key, options).
    """
    return explain_smoothed(
        probe, variables, x, target, method, smooth=("aug",), augmentations=augmentations, **kwargs
    )


def smoothgrad(
    probe: LayerProbe,
    variables,
    x: Array,
    target: Target = "predicted",
    method: str = "gradcam",
    *,
    key: Array,
    samples: int = SAMPLES,
    noise: float = NOISE,
    **kwargs: Any,
) -> tuple[ProbeResult, cams.CamResult]:
    """SmoothGrad for a gradient method: :func:`explain_smoothed` with ``smooth=("noise",)``.

    G averaged over ``samples`` copies x + N(0, (noise * range)^2), A of x itself; ``key``
    (keyword-only) draws the noise. ``kwargs`` as in explain_smoothed.
    """
    return explain_smoothed(
        probe,
        variables,
        x,
        target,
        method,
        smooth=("noise",),
        samples=samples,
        noise=noise,
        key=key,
        **kwargs,
    )

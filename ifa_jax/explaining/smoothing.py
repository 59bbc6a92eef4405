"""Smoothed CAMs: test-time augmentation, SmoothGrad noise, the eigen projection, SESS.

Each smoothing is a transformation around the method, not a copy of it, so it works with
every method of one layer in :data:`ifa_jax.cams.REGISTRY` (a user's own ones too), in
1-D, 2-D and 3-D:

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

SESS (Tursun et al. 2022, :func:`sess`; registered as the method ``"sess"`` of kind
``"input"``, so ``explain(probe, variables, x, target, "sess", base_method=...)`` runs it)
wraps any registered method differently: it explains rescaled, cropped patches of x and
fuses their maps at input resolution, with pytorch-grad-cam's post-processing (each patch
map relu'd and min-max scaled, the result in [0, 1]), so it is not on the common scale.
Its facts are pytorch-grad-cam 1.5.7's: defaults, window layout, softmax patch scores,
pre-filtering, the mean-above-theta fusion and the 11-tap, sigma-5 blur. On purpose:
resizes back to the input use exact interpolation weights (cv2 leaves ~1e-15 residues
where a sample falls on a cell, which pytorch-grad-cam's theta = 0 mean then counts),
ties in the pre-filter keep the earlier patch, 1-D and 3-D inputs are supported (linear
resizes, the blur along every axis), and every patch explains x's own objective (logit,
probability or a callable target; the patch scores are the target's softmax probability).

Examples:
    The augmentation table, SESS's windows and scales, and a noise-smoothed CAM:

    >>> from ifa_jax.explaining import smoothing
    >>> len(smoothing.augmentation_table())                  # 2 flips x 3 factors
    6
    >>> smoothing.window_starts(10, 4, 3), smoothing.sess_scales(4, num_scales=3)
    ((0, 3, 6), (4, 5, 6))
    >>> import jax
    >>> import flax.linen as nn
    >>> import ifa_jax
    >>> class Net(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         a = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
    ...         return nn.Dense(3, name="head")(a.mean(axis=(1, 2)))
    >>> net = Net()
    >>> x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1))
    >>> variables = net.init(jax.random.key(1), x)
    >>> probe = ifa_jax.linen_probe(net, "conv")
    >>> _, smooth = ifa_jax.explain_smoothed(probe, variables, x, 0, "gradcam",
    ...     smooth=("noise",), samples=2, key=jax.random.key(2))
    >>> smooth.cam.shape
    (2, 8, 8)
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
import numpy as np

from ifa_jax import cams
from ifa_jax._checks import pick_layer
from ifa_jax._stats import minmax_per_image
from ifa_jax.cams.builtin import SESS_BATCH, SESS_NUM_SCALES, SESS_SCALE_STEP
from ifa_jax.explaining.explainer import Explanation, callable_target, explain
from ifa_jax.probes import LayerProbe, Target

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
    variables: Any,
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
    **options: Any,
) -> Explanation:
    """:func:`ifa_jax.explain` with smoothing: an :class:`Explanation` (probe result of x,
    smoothed CAM result).

    x: (B, *spatial_in, C). smooth: names from :data:`SMOOTHINGS` (``"aug"``,
    ``"noise"``, ``"eigen"``), composed in the fixed order of the module doc; ``()``
    gives the plain map. augmentations: the table for ``"aug"``
    (:func:`augmentation_table`). samples, noise: the noisy copies per input and their
    std as a share of each sample's value range, for ``"noise"``, which needs ``key``
    (keyword-only; split into the noise key and the method's key, e.g. randomcam's).
    mask, score, layer, chunk_size and the method's ``options`` as in explain. The CAM
    result is on the layer's grid of x; its max/min are those of the averaged map.

    Args:
        probe: the model's :class:`~ifa_jax.probes.LayerProbe`.
        variables: the variables the probe is called with.
        x: inputs (B, *spatial_in, C).
        target: an int, an int array (B,), ``'predicted'`` or a callable
            ``logits (B, O) -> (B,)``, as for the probe.
        method: a registered method of kind ``"layer"``.
        smooth: one or several of ``"aug"``, ``"noise"``, ``"eigen"``.
        augmentations: the augmentations of ``"aug"``.
        samples: noisy copies per input, for ``"noise"``.
        noise: the noise's std as a share of each sample's value range.
        mask: channel weights (K,) or (B, K), or None.
        score: ``'logit'`` or ``'probability'``.
        layer: the layer of a multi-layer probe, or None.
        chunk_size: channels per model call of the forward methods.
        key: a PRNG key (needed by ``"noise"``).
        **options: the method's keyword options.

    Returns:
        An :class:`~ifa_jax.explaining.explainer.Explanation` ``(probe_result,
        cam_result)``, the smoothed CAM (B, *spatial) on the layer's grid.

    Raises:
        ValueError: a method of another kind than ``"layer"``, an unknown smoothing, an
            empty table of augmentations, or ``"noise"`` without a key.
    """
    steps = _steps(smooth)
    spec = cams.get_method(method)
    if spec.kind != "layer":
        raise ValueError(
            f"explain_smoothed smooths methods of one layer (ifa_jax.cams.LAYER_METHODS); "
            f"{spec.name} is of kind {spec.kind!r}: use ifa_jax.explain for it"
        )
    x = jnp.asarray(x)
    layer = pick_layer(probe.layers, layer)
    augs = tuple(augmentations) if "aug" in steps else (IDENTITY,)
    if not augs or not all(isinstance(a, Augmentation) for a in augs):
        raise ValueError(
            "augmentations must be a non-empty sequence of "
            "ifa_jax.explaining.smoothing.Augmentation (e.g. smoothing.augmentation_table()); "
            f"got {augmentations!r}"
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
                method=cams.canonical_method(spec),  # keys the jit cache on the entry
                options=opts,
            )
        else:
            _, out = explain(
                probe,
                variables,
                flat,
                tiled,
                spec,
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
    return Explanation(result, _average(totals, len(augs)))


def aug_smooth(
    probe: LayerProbe,
    variables: Any,
    x: Array,
    target: Target = "predicted",
    method: str = "gradcam",
    *,
    augmentations: Sequence[Augmentation] = DEFAULT_AUGMENTATIONS,
    **kwargs: Any,
) -> Explanation:
    """Test-time augmentation smoothing: :func:`explain_smoothed` with ``smooth=("aug",)``.

    Every method; ``kwargs`` as in explain_smoothed (mask, score, layer, key, options).

    Args:
        probe: the model's :class:`~ifa_jax.probes.LayerProbe`.
        variables: the variables the probe is called with.
        x: inputs (B, *spatial_in, C).
        target: an int, an int array (B,), ``'predicted'`` or a callable
            ``logits (B, O) -> (B,)``.
        method: a registered method of kind ``"layer"``.
        augmentations: the augmentations to average over (:func:`augmentation_table`).
        **kwargs: :func:`explain_smoothed`'s other keywords.

    Returns:
        An :class:`~ifa_jax.explaining.explainer.Explanation`, the averaged CAM
        (B, *spatial) on the layer's grid.

    Raises:
        ValueError: as :func:`explain_smoothed` raises.
    """
    return explain_smoothed(
        probe, variables, x, target, method, smooth=("aug",), augmentations=augmentations, **kwargs
    )


def smoothgrad(
    probe: LayerProbe,
    variables: Any,
    x: Array,
    target: Target = "predicted",
    method: str = "gradcam",
    *,
    key: Array,
    samples: int = SAMPLES,
    noise: float = NOISE,
    **kwargs: Any,
) -> Explanation:
    """SmoothGrad for a gradient method: :func:`explain_smoothed` with ``smooth=("noise",)``.

    G averaged over ``samples`` copies x + N(0, (noise * range)^2), A of x itself; ``key``
    (keyword-only) draws the noise. ``kwargs`` as in explain_smoothed.

    Args:
        probe: the model's :class:`~ifa_jax.probes.LayerProbe`.
        variables: the variables the probe is called with.
        x: inputs (B, *spatial_in, C).
        target: an int, an int array (B,), ``'predicted'`` or a callable
            ``logits (B, O) -> (B,)``.
        method: a registered method of kind ``"layer"``.
        key: the PRNG key of the noise.
        samples: noisy copies per input.
        noise: the noise's std as a share of each sample's value range.
        **kwargs: :func:`explain_smoothed`'s other keywords.

    Returns:
        An :class:`~ifa_jax.explaining.explainer.Explanation`, the CAM (B, *spatial) from
        the averaged gradients.

    Raises:
        ValueError: as :func:`explain_smoothed` raises.
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


# --------------------------------------------------------------------------- SESS

# SESS_NUM_SCALES, SESS_SCALE_STEP and SESS_BATCH are the method table's defaults
# (ifa_jax.cams.builtin, imported above).
SESS_BLUR = (11, 5.0)  # the fused map's Gaussian blur: taps per axis, sigma (in input cells)
SESS_EPS = 1e-7  # the per-map min-max's eps (pytorch-grad-cam's scale_cam_image)


def sess_scales(
    window: int, num_scales: int = SESS_NUM_SCALES, step_ratio: float = SESS_SCALE_STEP
) -> tuple[int, ...]:
    """SESS's default scales: ``num_scales`` sizes of the shortest input side, from the
    window on, ``round(window * step_ratio)`` apart."""
    step = round(window * step_ratio)
    return tuple(window + step * i for i in range(num_scales))


def window_starts(length: int, window: int, step: int) -> tuple[int, ...]:
    """Start cells of SESS's windows along an axis of ``length`` cells: every ``step``
    cells; the last window is moved back inside the axis (so it may overlap the previous)."""
    starts = []
    for start in range(0, length, step):
        if start + window >= length:
            starts.append(max(length - window, 0))
            break
        starts.append(start)
    return tuple(starts)


def sess_layout(
    spatial: Sequence[int], window: int, step: int, scales: Sequence[int]
) -> list[tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]]:
    """Per scale s: (the rescaled input's spatial sizes, the windows' start cells).

    The shortest side becomes s and every side n becomes ``s * n // shortest`` (the
    aspect ratio kept, as torchvision's resize to an int size); the windows are the
    product over axes of :func:`window_starts`, the last axis running fastest.
    """
    shortest = min(spatial)
    layout = []
    for s in scales:
        shape = tuple(s * n // shortest for n in spatial)
        starts = [window_starts(n, window, step) for n in shape]
        layout.append((shape, tuple(itertools.product(*starts))))
    return layout


def _resize_paste(size: int, scaled: Array, offset: Array, window: int) -> Array:
    """(..., size, window): the linear map from a window at ``offset`` on an axis of
    ``scaled`` cells (zero elsewhere) to that axis linearly resized to ``size`` cells
    (half-pixel centres, edges clamped: cv2's INTER_LINEAR). scaled, offset: (...,) ints.
    Source positions ``((2 i + 1) scaled - size) / (2 size)`` are split exactly, in
    integers, into cell and fraction."""
    num = (2 * jnp.arange(size) + 1) * scaled[..., None] - size
    den = 2 * size
    cell = num // den
    clamped = (num < 0) | (cell >= scaled[..., None] - 1)
    frac = jnp.where(clamped, 0, num % den) / den
    lo = jnp.clip(cell, 0, scaled[..., None] - 1)
    hi = jnp.minimum(lo + 1, scaled[..., None] - 1)
    cols = offset[..., None, None] + jnp.arange(window)
    return (1 - frac)[..., None] * (cols == lo[..., None]) + frac[..., None] * (
        cols == hi[..., None]
    )


@functools.partial(jax.jit, static_argnames=("size", "sigma"))
def gaussian_blur(L: Array, size: int = SESS_BLUR[0], sigma: float = SESS_BLUR[1]) -> Array:
    """L (B, *spatial) blurred along every spatial axis by a normalised Gaussian of
    ``size`` taps, borders reflected without repeating the edge (cv2's GaussianBlur)."""
    r = size // 2
    taps = np.exp(-((np.arange(size) - r) ** 2) / (2.0 * sigma**2))
    taps = (taps / taps.sum()).astype(np.float32)
    for axis in range(1, L.ndim):
        pad = [(0, 0)] * L.ndim
        pad[axis] = (r, r)
        padded = jnp.pad(L, pad, mode="reflect")
        n = L.shape[axis]
        cuts = [jax.lax.slice_in_dim(padded, j, j + n, axis=axis) for j in range(size)]
        L = functools.reduce(jnp.add, [float(w) * c for w, c in zip(taps, cuts)])
    return L


def _pgc_map(L: Array, shape: tuple[int, ...]) -> Array:
    """pytorch-grad-cam's post-processing of a base CAM L (N, *grid): relu, per-map
    min-max, linear resize to ``shape`` (no antialiasing, as cv2.resize), relu, min-max."""
    L = minmax_per_image(jax.nn.relu(L), SESS_EPS)
    L = jax.image.resize(L, (L.shape[0], *shape), method="linear", antialias=False)
    return minmax_per_image(jax.nn.relu(L), SESS_EPS)


def _in_chunks(fn, arrays: tuple[Array, ...], size: int | None):
    """fn(index, *chunk) over chunks of ``size`` rows of ``arrays`` (a lax.map; the last
    chunk padded with copies of its last row), outputs concatenated back to the rows;
    one call fn(None, *arrays) when they fit in one chunk."""
    n = arrays[0].shape[0]
    if size is None or n <= size:
        return fn(None, *arrays)
    count = -(-n // size)
    extra = count * size - n
    chunks = tuple(
        jnp.pad(a, [(0, extra)] + [(0, 0)] * (a.ndim - 1), mode="edge").reshape(
            count, size, *a.shape[1:]
        )
        for a in arrays
    )
    out = jax.lax.map(lambda c: fn(c[0], *c[1:]), (jnp.arange(count), *chunks))
    return jax.tree.map(lambda o: o.reshape(count * size, *o.shape[2:])[:n], out)


def _check_sess_options(
    spatial, base, *, scales, num_scales, scale_step_ratio, window_size, step_size,
    pre_filter_ratio, theta, pool, batch_size,
) -> tuple[int, int, tuple[int, ...]]:  # fmt: skip
    """(window, step, scales) after checking SESS's options; a ValueError names the fix."""

    def count(name, value, allow_none=True):
        if value is None and allow_none:
            return
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"sess {name} must be an int >= 1; got {value!r}")

    if not spatial:
        raise ValueError(
            "sess slides windows over the input's spatial axes, x (B, *spatial, C); the "
            "input has none: pass x with at least one spatial axis"
        )
    if base.name == "sess":
        raise ValueError("sess cannot wrap itself: pass a base method, e.g. base_method='gradcam'")
    for name, value in (("window_size", window_size), ("step_size", step_size)):
        count(name, value)
    count("num_scales", num_scales, allow_none=False)
    count("batch_size", batch_size)
    if pool not in ("mean", "max"):
        raise ValueError(f"sess pool must be 'mean' or 'max'; got {pool!r}")
    if not 0.0 <= pre_filter_ratio < 1.0:
        raise ValueError(
            f"sess pre_filter_ratio (the share of lowest-scoring patches dropped) must be in "
            f"[0, 1); got {pre_filter_ratio!r}"
        )
    if not math.isfinite(theta):
        raise ValueError(f"sess theta must be a finite threshold; got {theta!r}")
    window = int(window_size) if window_size is not None else min(spatial)
    step = int(step_size) if step_size is not None else window
    if not (math.isfinite(scale_step_ratio) and scale_step_ratio >= 0):
        raise ValueError(f"sess scale_step_ratio must be finite and >= 0; got {scale_step_ratio!r}")
    scales = sess_scales(window, num_scales, scale_step_ratio) if scales is None else scales
    if isinstance(scales, (int, str)) or not len(scales):
        raise ValueError(f"sess scales must be a non-empty tuple of ints; got {scales!r}")
    for s in scales:
        count("scales entry", s, allow_none=False)
    small = [s for s in scales if s < window]
    if small:
        raise ValueError(
            f"sess scales {small} are below the window size {window}: every scale (the "
            f"shortest side of a rescaled input) must hold a window; use scales >= "
            f"{window} or a smaller window_size"
        )
    return window, step, tuple(int(s) for s in scales)


def sess_map(
    model: cams.ModelInputs,
    *,
    base_method: str = "gradcam",
    base_options: tuple = (),
    scales: tuple[int, ...] | None = None,
    num_scales: int = SESS_NUM_SCALES,
    scale_step_ratio: float = SESS_SCALE_STEP,
    window_size: int | None = None,
    step_size: int | None = None,
    pre_filter_ratio: float = 0.0,
    theta: float = 0.0,
    pool: str = "mean",
    smooth: bool = True,
    softmax_scores: bool = True,
    batch_size: int | None = SESS_BATCH,
) -> Array:
    """SESS's map (B, *spatial_in) in [0, 1]: the function of the method "sess" (kind
    "input"; its entry is in :mod:`ifa_jax.cams.builtin`; :func:`sess`)."""
    x = model.x
    B, spatial, C = x.shape[0], tuple(x.shape[1:-1]), x.shape[-1]
    base = cams.get_method(base_method)
    window, step, scales = _check_sess_options(
        spatial, base, scales=scales, num_scales=num_scales, scale_step_ratio=scale_step_ratio,
        window_size=window_size, step_size=step_size, pre_filter_ratio=pre_filter_ratio,
        theta=theta, pool=pool, batch_size=batch_size,
    )  # fmt: skip
    try:
        options = dict(base_options)
    except (TypeError, ValueError):
        raise ValueError(
            f"sess base_options must be (name, value) pairs, e.g. (('eps', 1e-7),); got "
            f"{base_options!r}"
        ) from None
    cams.method_options(base, options)  # unknown options of the base method raise here
    win = (window,) * len(spatial)

    pieces, sizes, offsets = [], [], []
    for shape, starts in sess_layout(spatial, window, step, scales):
        # torchvision's bilinear resize (antialiased when it shrinks)
        xs = x if shape == spatial else jax.image.resize(x, (B, *shape, C), method="linear")
        for start in starts:
            pieces.append(xs[(slice(None), *(slice(o, o + window) for o in start))])
            sizes.append(shape)
            offsets.append(start)
    patches = jnp.stack(pieces, axis=1)  # (B, P, *win, C), image-major
    P = patches.shape[1]
    drop = int(P * pre_filter_ratio)
    keep = P - drop
    sizes_a = jnp.broadcast_to(jnp.asarray(sizes, jnp.int32), (B, P, len(spatial)))
    offsets_a = jnp.broadcast_to(jnp.asarray(offsets, jnp.int32), (B, P, len(spatial)))

    def patch_scores(logits, target):
        if not softmax_scores:
            s = model.score(logits, target)
        else:
            p = jax.nn.softmax(logits, axis=-1)
            s = jnp.take_along_axis(p, target[:, None], -1)[:, 0] if model.indexed else (
                model.score(p, target)
            )  # fmt: skip
        return jax.nn.relu(s)

    scores = None  # (B, keep): from the pre-filter, else from the explained patches' logits
    if drop:  # score every patch, explain the `keep` best of each image
        flat = patches.reshape(B * P, *win, C)
        logits = _in_chunks(
            lambda _, xc: model.probe.forward(model.variables, xc), (flat,), batch_size
        )
        scores = patch_scores(logits, jnp.repeat(model.target, P)).reshape(B, P)
        order = jnp.argsort(scores, axis=1)[:, drop:]  # (B, keep)

        def take(a):
            idx = order.reshape(B, keep, *(1,) * (a.ndim - 2))
            return jnp.take_along_axis(a, idx, axis=1)

        patches, scores, sizes_a, offsets_a = map(take, (patches, scores, sizes_a, offsets_a))
    layer = None if base.kind == "layers" else model.layer

    def explain_image(args):
        """Base CAMs (keep, *grid) and logits (keep, O) of image n's patches xs."""
        n, xs, t = args

        def objective(logits):  # image n's explained objective, for any number of rows
            return model.score(logits, jnp.full(logits.shape[:1], t))

        def explain_chunk(index, xc):
            key = model.key
            if key is not None:
                key = jax.random.fold_in(key, n)
                key = key if index is None else jax.random.fold_in(key, index)
            result, out = explain(
                model.probe, model.variables, xc, objective, base, layer=layer, key=key,
                **options,
            )  # fmt: skip
            return out.cam, result.logits

        return _in_chunks(explain_chunk, (xs,), batch_size)

    # image by image (as pytorch-grad-cam): every patch of an image shares its target
    grid_maps, logits = jax.lax.map(explain_image, (jnp.arange(B), patches, model.target))
    if scores is None:
        scores = patch_scores(logits.reshape(B * keep, -1), jnp.repeat(model.target, keep))
        scores = scores.reshape(B, keep)
    grid_maps = grid_maps.reshape(B * keep, *grid_maps.shape[2:])
    maps = _pgc_map(grid_maps, win).reshape(B, keep, *win)
    top = jnp.max(scores, axis=1, keepdims=True)
    weights = jnp.where(top > 0, scores / jnp.where(top > 0, top, 1.0), 1.0)
    maps = maps * weights.reshape(B, keep, *(1,) * len(spatial))
    # each weighted patch map pasted at its window of its scale, resized to the input
    for axis, n in enumerate(spatial):
        paste = _resize_paste(n, sizes_a[..., axis], offsets_a[..., axis], window)
        maps = jnp.moveaxis(maps, 2 + axis, -1)
        maps = jnp.einsum("bp...j,bpij->bp...i", maps, paste)
        maps = jnp.moveaxis(maps, -1, 2 + axis)
    if pool == "max":
        fused = jnp.maximum(jnp.max(maps, axis=1), 0.0)
    else:  # per cell, the mean over the patch maps above theta there
        above = maps > theta
        total = jnp.sum(jnp.where(above, maps, 0.0), axis=1)
        counts = jnp.sum(above, axis=1)
        fused = jnp.where(counts > 0, total / jnp.maximum(counts, 1), 0.0)
    if smooth:
        fused = gaussian_blur(fused)
    return minmax_per_image(fused, SESS_EPS)


def sess(
    probe: LayerProbe,
    variables,
    x: Array,
    target: Target = "predicted",
    *,
    base_method: str = "gradcam",
    score: str = "logit",
    layer: str | None = None,
    key: Array | None = None,
    scales: Sequence[int] | None = None,
    num_scales: int = SESS_NUM_SCALES,
    scale_step_ratio: float = SESS_SCALE_STEP,
    window_size: int | None = None,
    step_size: int | None = None,
    pre_filter_ratio: float = 0.0,
    theta: float = 0.0,
    pool: str = "mean",
    smooth: bool = True,
    softmax_scores: bool = True,
    batch_size: int | None = SESS_BATCH,
    **options,
) -> Explanation:
    """SESS (Tursun et al. 2022) around ``base_method``: an :class:`Explanation` whose
    ``cam_result.cam`` holds the maps (B, *spatial_in) in [0, 1].

    Per image x (B, *spatial_in, C), 1-3 spatial axes: the input is rescaled so that its
    shortest side is each of ``scales`` (default :func:`sess_scales`: ``num_scales`` sizes
    from the window on, ``round(window * scale_step_ratio)`` apart), cut into cubic windows
    of ``window_size`` cells (default the shortest side) every ``step_size`` cells
    (default the window; :func:`window_starts`), and ``base_method`` (with its ``options``)
    explains every patch, ``batch_size`` patches per model call. The lowest-scoring
    ``pre_filter_ratio`` of the patches are dropped first. Each patch's map is relu'd,
    min-max scaled, resized to the window and weighted by its score over the best
    patch's; scores are the softmax probability of the target (``softmax_scores``; for a
    callable target, the callable on the softmax), else the explained score, clipped at
    0. The weighted maps are pasted at their windows, resized to the input and fused per
    cell: ``pool="mean"`` averages those above ``theta``, ``"max"`` takes the largest.
    ``smooth`` blurs the result (:func:`gaussian_blur`), then it is min-max scaled.

    target, score, layer and key as in :func:`ifa_jax.explain`: every patch explains x's
    resolved objective, given to the base method as a callable target, so bases that need
    an output index (finercam, cam with head=) refuse; a keyed base gets the key folded
    with the image (and chunk) index. Same as ``explain(probe, variables, x, target,
    "sess", base_method=base_method, base_options=tuple(options.items()), ...)``.

    Cost: one compilation per configuration; images go one after another (lax.map), the
    patches of one image through the model ``batch_size`` at a time (None: all at once);
    the default 12 scales of a 224 x 224 input make 122 patches per image.
    """
    return explain(
        probe,
        variables,
        x,
        target,
        "sess",
        score=score,
        layer=layer,
        key=key,
        base_method=base_method,
        base_options=tuple(sorted(options.items())),
        scales=None if scales is None else tuple(scales),
        num_scales=num_scales,
        scale_step_ratio=scale_step_ratio,
        window_size=window_size,
        step_size=step_size,
        pre_filter_ratio=pre_filter_ratio,
        theta=theta,
        pool=pool,
        smooth=smooth,
        softmax_scores=softmax_scores,
        batch_size=batch_size,
    )

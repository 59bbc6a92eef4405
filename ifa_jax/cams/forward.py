"""Forward-pass (score-based) methods: channel weights w (B, K) from runs of the model.

Each is ``forward(A, passes: ForwardPasses, /, **options) -> w (B, K)`` (a
:class:`~ifa_jax.cams.method.ForwardFn`), with ``M_k = w_k * A_k``: ScoreCAM, SS-CAM and
IS-CAM (:func:`scorecam_weights`) and AblationCAM (:func:`ablation_weights`), batched over
channels with ``jax.lax.map`` so memory stays bounded; ShapleyCAM (a Hessian-vector
product at the layer), FinerCAM (the gradient of a class contrast), SmoothGradCAM++
(gradients at noisy inputs) through :func:`layer_gradient`; the classic CAM from the
head's weights.

Examples:
    AblationCAM's weights with a score that sums the layer: zeroing channel k lowers
    it by the sum of A_k:

    >>> import jax.numpy as jnp
    >>> from ifa_jax import cams
    >>> A = jnp.ones((1, 2, 2, 3)) * jnp.array([1.0, 2.0, 3.0])
    >>> def ablated_score(delta):                 # the score with delta added to the layer
    ...     return (A + delta).sum(axis=(1, 2, 3))
    >>> cams.ablation_weights(A, ablated_score, ablated_score(jnp.zeros_like(A))).tolist()
    [[4.0, 8.0, 12.0]]
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ifa_jax._checks import positive_int, take_target
from ifa_jax._stats import minmax_per_image
from ifa_jax.cams._grid import grid_sum, spatial_axes
from ifa_jax.cams.gradient import GRADCAMPP_EPS, gradcampp_weights
from ifa_jax.cams.method import ForwardPasses
from ifa_jax.cams.registry import canonical_method

Array = jax.Array


def scorecam_weights(
    A: Array,
    x: Array,
    score_fn: Callable[[Array, Array], Array],
    target: Array,
    *,
    chunk_size: int = 16,
    samples: int = 1,
    perturb: Callable[[Array, Array, Array], Array] | None = None,
) -> Array:
    """ScoreCAM weights (B, K): softmax over channels of the target score of masked inputs.

    Each channel A_k is upsampled to the input grid, min-max scaled to [0, 1] per sample
    and multiplies the input. ``score_fn(x (N, *in, C), target (N,)) -> (N,)`` scores
    masked inputs; ``target`` (B,) is each sample's explained output. ``chunk_size``
    channels go through the model together, flattened into one batch of chunk_size * B
    inputs (flattening, not vmapping, keeps the model's ops in their fast batched form).
    As in pytorch-grad-cam, weights are the softmax of the scores over channels.
    ``perturb(masks (chunk, B, *in), channels (chunk,) int, i) -> masks`` changes the masks
    of variant i of ``samples`` (SS-CAM's noise, IS-CAM's scales); the scores are averaged
    over the variants before the softmax.
    """
    if A.shape[0] != x.shape[0]:
        raise ValueError(f"activations have batch {A.shape[0]} but inputs {x.shape[0]}")
    if A.ndim != x.ndim:
        raise ValueError(
            f"ScoreCAM-style masks upsample the layer's grid {A.shape[1:-1]} to the input's "
            f"{x.shape[1:-1]}, so both need as many spatial axes; got {A.ndim - 2} and "
            f"{x.ndim - 2}. A token layer (B, T, D) needs the probe's reshape=, e.g. "
            "reshape=ifa_jax.tokens_to_grid(prefix=1)"
        )
    B, K = A.shape[0], A.shape[-1]
    chunk = min(positive_int("chunk_size", chunk_size, "channels per model call"), K)
    groups = -(-K // chunk)
    per_channel = jnp.moveaxis(A, -1, 0)  # (K, B, *spatial)
    per_channel = jnp.pad(per_channel, [(0, groups * chunk - K)] + [(0, 0)] * (A.ndim - 1))
    per_group = per_channel.reshape(groups, chunk, *per_channel.shape[1:])
    channels = jnp.arange(groups * chunk).reshape(groups, chunk)
    tiled_target = jnp.tile(target, chunk)

    def one_group(group):  # a: (chunk, B, *spatial), ks: (chunk,)
        a, ks = group
        up = jax.image.resize(a, (chunk, B, *x.shape[1:-1]), method="linear")
        # exact min-max (eps=0) of each upsampled channel, per sample
        up = minmax_per_image(up.reshape(chunk * B, *up.shape[2:]), eps=0.0).reshape(up.shape)

        def one_variant(i):
            masks = up if perturb is None else perturb(up, ks, i)
            masked = x[None] * masks[..., None]  # (chunk, B, *in, C)
            scores = score_fn(masked.reshape(chunk * B, *x.shape[1:]), tiled_target)
            return scores.reshape(chunk, B)

        if samples == 1:
            return one_variant(0)
        return jnp.mean(jax.lax.map(one_variant, jnp.arange(samples)), axis=0)

    scores = jax.lax.map(one_group, (per_group, channels)).reshape(groups * chunk, B)[:K]
    return jax.nn.softmax(scores.T, axis=-1)


def ablation_weights(
    A: Array, ablated_score_fn: Callable[[Array], Array], base_score: Array, *, chunk_size: int = 16
) -> Array:
    """AblationCAM weights (B, K): the drop of the target score when channel k is zeroed.

    ``ablated_score_fn(delta (B, *spatial, K)) -> (B,)`` runs the model with ``delta``
    added to the layer's output; the ablation of channel k is ``delta = -A * e_k``.
    w_k = y - y^(k), in the score's own units (pytorch-grad-cam divides by y, which is
    ill-posed for logits near zero and would undo the common scale; we do not).
    """
    channels = A.shape[-1]
    chunk_size = positive_int("chunk_size", chunk_size, "channels per model call")

    def one_channel(k):
        return base_score - ablated_score_fn(-A * jax.nn.one_hot(k, channels, dtype=A.dtype))

    return jax.lax.map(one_channel, jnp.arange(channels), batch_size=chunk_size).T


def scorecam(A: Array, passes: ForwardPasses) -> Array:
    """ScoreCAM weights (B, K): :func:`scorecam_weights` of the passes."""
    return scorecam_weights(
        A, passes.x, passes.score_inputs, passes.target, chunk_size=passes.chunk_size
    )


def ablationcam(A: Array, passes: ForwardPasses) -> Array:
    """AblationCAM weights (B, K): :func:`ablation_weights` of the passes."""
    return ablation_weights(
        A, passes.score_with_delta, passes.base_score, chunk_size=passes.chunk_size
    )


def _count_option(method: str, name: str, value) -> int:
    """An option that counts something (samples, classes): an int >= 1, else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{method} {name} must be an int >= 1; got {value!r}")
    return int(value)


def _scale_option(method: str, name: str, value) -> float:
    """A noise scale: a finite float >= 0, else a ValueError."""
    if not isinstance(value, (int, float, np.number)) or not 0 <= float(value) < float("inf"):
        raise ValueError(f"{method} {name} must be a finite number >= 0; got {value!r}")
    return float(value)


def _requires_index_target(method: str, passes: ForwardPasses, why: str) -> None:
    if not passes.indexed:
        raise ValueError(
            f"{method} {why}, so the target must be an output index (an int, an int array "
            "(B,) such as the labels, or 'predicted'); got a callable target"
        )


def layer_gradient(
    passes: ForwardPasses, x: Array | None = None, *, delta: Array | None = None, objective=None
) -> Array:
    """G (B, *spatial, K) = d objective / dA at the layer, by one vjp to the layer's delta
    (the parameters stay constants).

    x: inputs (B, *in, C), default ``passes.x``. delta: (B, *spatial, K) added to the
    layer's output, default zeros (then G is the probe's for the explained score).
    ``objective(logits (B, O)) -> (B,)``, default the explained score.
    """
    x = passes.x if x is None else x
    delta = jnp.zeros_like(passes.gradients) if delta is None else delta

    def total(d):
        logits = passes.logits_at(x, d)
        y = passes.score(logits, passes.target) if objective is None else objective(logits)
        return jnp.sum(y)

    return jax.grad(total)(delta)


def shapleycam(A: Array, passes: ForwardPasses) -> Array:
    """ShapleyCAM weights (B, K): grid mean of G - H A / 2 at the layer."""
    # Forward over reverse at the layer: the jvp of G(delta) along A gives G and H A.
    G, HA = jax.jvp(lambda d: layer_gradient(passes, delta=d), (jnp.zeros_like(A),), (A,))
    return jnp.mean(G - 0.5 * HA, axis=spatial_axes(A))


FINER_EPS = 1e-9  # pytorch-grad-cam's FinerWeightedTarget


def finer_comparisons(logits: Array, target: Array, comparisons: int) -> Array:
    """(B, n) the n = min(comparisons, O - 1) classes whose logits are closest to the
    target's, nearest first (ties by class index); the target itself is never one."""
    n = min(comparisons, logits.shape[-1] - 1)
    own = take_target(logits, target)[:, None]
    distance = jnp.abs(logits - own)
    distance = jnp.where(jax.nn.one_hot(target, logits.shape[-1], dtype=bool), jnp.inf, distance)
    return jnp.argsort(distance, axis=-1, stable=True)[:, :n]


# FinerCAM's contrasts: pytorch-grad-cam's (the default) and torch-cam 0.5.0's, with each
# peer's default strength (alpha=None picks it), and the bases whose weights are per channel.
FINER_ALPHA = {"pgc": 1.0, "torchcam": 0.6}
FINER_BASES = ("gradcam", "gradcam++")


def finer_objective(logits: Array, target: Array, others: Array, alpha, objective="pgc") -> Array:
    """(B,) the contrast of the target c with the comparison classes j (B, n).

    ``"pgc"`` (pytorch-grad-cam's): sum_j p_j (y_c - alpha y_j) / (sum_j p_j + 1e-9),
    p = softmax(logits), differentiated through p too. ``"torchcam"`` (torch-cam 0.5.0's):
    y_c - alpha mean_j y_j.
    """
    y_c = take_target(logits, target)[:, None]  # 0 for a target outside [0, O) under jit
    y_j = jnp.take_along_axis(logits, others, axis=-1)
    if objective == "torchcam":
        return y_c[:, 0] - alpha * jnp.mean(y_j, axis=-1)
    p = jnp.take_along_axis(jax.nn.softmax(logits, axis=-1), others, axis=-1)
    return jnp.sum(p * (y_c - alpha * y_j), axis=-1) / (jnp.sum(p, axis=-1) + FINER_EPS)


def _finer_base(base) -> str:
    try:
        name = canonical_method(base)
    except ValueError:
        name = None
    if name not in FINER_BASES:
        why = (
            ": LayerCAM weights every cell (relu(G) element-wise), and a forward-pass method "
            "gives one weight per channel"
            if name == "layercam"
            else ""
        )
        raise ValueError(f"finercam base must be 'gradcam' or 'gradcam++'; got {base!r}{why}")
    return name


def finercam(
    A: Array,
    passes: ForwardPasses,
    *,
    alpha=None,
    comparisons=3,
    objective="pgc",
    base="gradcam",
    eps=None,
) -> Array:
    """FinerCAM weights (B, K): GradCAM (or GradCAM++) of a contrast with the nearest classes."""
    _requires_index_target("finercam", passes, "contrasts the target with its nearest classes")
    comparisons = _count_option("finercam", "comparisons", comparisons)
    if objective not in FINER_ALPHA:
        raise ValueError(
            f"finercam objective must be 'pgc' (pytorch-grad-cam's, the default) or "
            f"'torchcam' (torch-cam's y_c - alpha mean_j y_j); got {objective!r}"
        )
    base = _finer_base(base)
    if eps is not None and base != "gradcam++":
        raise ValueError(
            f"finercam eps={eps!r} is GradCAM++'s; it applies with base='gradcam++' only"
        )
    if passes.logits.shape[-1] < 2:
        raise ValueError(
            f"finercam needs at least 2 model outputs to contrast; the model has "
            f"{passes.logits.shape[-1]}"
        )
    alpha = FINER_ALPHA[objective] if alpha is None else alpha
    others = finer_comparisons(passes.logits, passes.target, comparisons)
    G = layer_gradient(
        passes,
        objective=lambda logits: finer_objective(logits, passes.target, others, alpha, objective),
    )
    if base == "gradcam++":
        w = gradcampp_weights(A, G, GRADCAMPP_EPS if eps is None else eps)
        return w.reshape(A.shape[0], A.shape[-1])
    return jnp.mean(G, axis=spatial_axes(A))  # GradCAM on the contrast, both peers' default


def classic_cam(A: Array, passes: ForwardPasses, *, head=None) -> Array:
    """The classic CAM's weights (B, K): the dense head's column of the target."""
    if head is None:
        # The head's weights as the layer sees them: exact for global average pooling +
        # a dense head, where G_k = W[k, c] / cells at every cell.
        return jnp.sum(passes.gradients, axis=spatial_axes(A))
    _requires_index_target("cam", passes, "reads the head's column of the target class")
    W = jnp.asarray(head(passes.variables) if callable(head) else head)
    K, outputs = A.shape[-1], passes.logits.shape[-1]
    if W.shape != (K, outputs):
        raise ValueError(
            f"cam head= must be the dense head's weights (K, O) = ({K}, {outputs}) for the "
            f"layer's {K} channels and the model's {outputs} outputs; got shape {W.shape}. "
            "Pass the kernel array or a callable variables -> kernel, e.g. "
            "head=lambda v: v['params']['head']['kernel']"
        )
    return jnp.take(W, passes.target, axis=1).T.astype(A.dtype)


SSCAM_SAMPLES, SSCAM_STD = 35, 2.0  # torch-cam's SSCAM defaults
ISCAM_SAMPLES = 10  # torch-cam's ISCAM default
SMOOTH_SAMPLES, SMOOTH_STD = 4, 0.3  # torch-cam's SmoothGradCAMpp defaults


def sscam(A: Array, passes: ForwardPasses, *, samples=SSCAM_SAMPLES, std=SSCAM_STD):
    """SS-CAM weights (B, K): ScoreCAM over noisy masks."""
    samples = _count_option("sscam", "samples", samples)
    std = _scale_option("sscam", "std", std)
    key = passes.key
    assert key is not None

    def noisy(masks, channels, i):
        def noise(k):  # drawn per channel and sample: independent of chunk_size
            k = jax.random.fold_in(jax.random.fold_in(key, k), i)
            return jax.random.normal(k, masks.shape[1:], masks.dtype)

        return masks + std * jax.vmap(noise)(channels)

    return scorecam_weights(
        A,
        passes.x,
        passes.score_inputs,
        passes.target,
        chunk_size=passes.chunk_size,
        samples=samples,
        perturb=noisy,
    )


def iscam_coefficients(samples: int) -> Array:
    """(samples,) the mask scales of IS-CAM, torch-cam's: c_i = sum_{j<=i} j / N, i = 1..N."""
    return jnp.cumsum(jnp.arange(1, samples + 1) / samples)


def iscam(A: Array, passes: ForwardPasses, *, samples=ISCAM_SAMPLES):
    """IS-CAM weights (B, K): ScoreCAM over masks scaled by :func:`iscam_coefficients`."""
    coefficients = iscam_coefficients(_count_option("iscam", "samples", samples))
    return scorecam_weights(
        A,
        passes.x,
        passes.score_inputs,
        passes.target,
        chunk_size=passes.chunk_size,
        samples=len(coefficients),
        perturb=lambda masks, channels, i: coefficients[i].astype(masks.dtype) * masks,
    )


def smoothgradcampp(
    A: Array, passes: ForwardPasses, *, samples=SMOOTH_SAMPLES, std=SMOOTH_STD, eps=GRADCAMPP_EPS
):
    """SmoothGradCAM++ weights (B, K): GradCAM++ from noisy-input gradient moments."""
    samples = _count_option("smoothgradcam++", "samples", samples)
    std = _scale_option("smoothgradcam++", "std", std)
    key, x = passes.key, passes.x
    assert key is not None
    dtype = jnp.result_type(x.dtype, float)

    def add_moments(i, moments):
        noisy = x + std * jax.random.normal(jax.random.fold_in(key, i), x.shape, dtype)
        g = layer_gradient(passes, noisy)
        return tuple(m + g**p for p, m in enumerate(moments, start=1))

    zeros = jnp.zeros_like(passes.gradients)
    g1, g2, g3 = (m / samples for m in jax.lax.fori_loop(0, samples, add_moments, (zeros,) * 3))
    alpha = jnp.where(g2 != 0, g2 / (2.0 * g2 + grid_sum(A) * g3 + eps), 0.0)
    return jnp.sum(jax.nn.relu(g1) * alpha, axis=spatial_axes(A))

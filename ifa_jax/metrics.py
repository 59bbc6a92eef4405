"""Evaluation of CAMs and feature subsets (docs/method.md section 6).

Pure functions on arrays (host NumPy, float64) for the statistics, and batched, jitted
functions where the model is run:

* consistency: :func:`pearson`, :func:`spearman`, :func:`consistency` between a CAM's
  activation level (:func:`activation_level`) and the target score; :func:`auroc`.
* confidence: :func:`confidence_scores` / :func:`drop_increase` / :func:`confidence_change`
  (average drop and increase in confidence, Chattopadhyay et al. 2018).
* :func:`insertion_deletion` curves and AUCs (Petsiuk et al. 2018), windows of any spatial
  rank ranked by saliency, every step of an image in one forward batch.
* :func:`subset_accuracy` / :func:`subset_accuracy_curve`: accuracy when only selected
  channels at the layer are kept.
* sanity check (Adebayo et al. 2018): :func:`cascading_randomization`,
  :func:`rank_correlation`, :func:`ssim`.

Undefined statistics (too few samples, a constant input, a single class) are ``None`` with
a ``reason`` string, never NaN. Bad inputs raise ``ValueError`` naming the values and the fix.

Score functions for the confidence and insertion/deletion metrics have the signature
``score_fn(x (N, *in, C), target (N,) int) -> (N,)``: the target travels with each row
because insertion/deletion stacks many steps of many images in one batch.
:func:`model_scorer` builds one from a probe; passing the same object again reuses the
compiled computation (it is a :class:`jax.tree_util.Partial`, so the model variables are
arguments of the jitted function, not constants baked into it).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from ifa_jax.probe import SCORES, LayerProbe, target_scores

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]

MIN_SAMPLES = 3
DEFAULT_RATIOS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0)
ROW_MODES = ("label", "predicted")
BASELINES = ("zeros", "blur")


# --------------------------------------------------------------------------- input checks


def _vector(name: str, a: Any) -> np.ndarray:
    """A finite, non-empty 1-D float64 array, or a ValueError naming the problem."""
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array (N,); got shape {arr.shape}. "
                         "Flatten it or pass one value per sample.")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; pass at least one value per sample")
    if arr.dtype == bool:
        arr = arr.astype(np.float64)
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be numeric; got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{name} has {bad.size} non-finite value(s) (first at index "
                         f"{bad[0]}: {arr[bad[0]]}); remove or fix those samples")
    return arr


def _pair(names: tuple[str, str], a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = _vector(names[0], a), _vector(names[1], b)
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} has {a.size} values but {names[1]} has {b.size}; "
                         "pass one value per sample in each")
    return a, b


def _undefined(names: tuple[str, str], a: np.ndarray, b: np.ndarray) -> str | None:
    """Why a correlation of a and b is undefined, or None when it is defined."""
    if a.size < MIN_SAMPLES:
        return f"fewer than {MIN_SAMPLES} samples (n={a.size})"
    const_a, const_b = bool(np.all(a == a[0])), bool(np.all(b == b[0]))
    if const_a and const_b:
        return f"constant {names[0]} and {names[1]}"
    if const_a:
        return f"constant {names[0]}"
    if const_b:
        return f"constant {names[1]}"
    return None


def rankdata(a: Any) -> np.ndarray:
    """1-based ranks of a 1-D array, ties given their average rank (float64)."""
    a = np.asarray(a)
    s = np.sort(a)
    return (np.searchsorted(s, a, "left") + np.searchsorted(s, a, "right") + 1) / 2.0


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    da, db = a - a.mean(), b - b.mean()
    r = float(np.dot(da, db) / math.sqrt(float(np.dot(da, da)) * float(np.dot(db, db))))
    return min(1.0, max(-1.0, r))


# --------------------------------------------------------------------------- consistency


def pearson(a: Any, b: Any) -> float | None:
    """Pearson r of two (N,) arrays; None when undefined (N < 3 or a constant input).

    :func:`consistency` gives the reason along with the value.
    """
    a, b = _pair(("a", "b"), a, b)
    return None if _undefined(("a", "b"), a, b) else _pearson(a, b)


def spearman(a: Any, b: Any) -> float | None:
    """Spearman rho (Pearson r of average-tie ranks) of two (N,) arrays; None when undefined."""
    a, b = _pair(("a", "b"), a, b)
    return None if _undefined(("a", "b"), a, b) else _pearson(rankdata(a), rankdata(b))


def consistency(activation: Any, score: Any) -> dict[str, Any]:
    """Agreement of CAM activation levels (N,) with target scores (N,) over samples.

    Returns ``{'pearson': r, 'spearman': rho, 'n': N, 'reason': None}``; when a
    correlation is undefined (N < 3, constant activation or score) both are None and
    ``reason`` says why.
    """
    names = ("activation", "score")
    a, b = _pair(names, activation, score)
    reason = _undefined(names, a, b)
    if reason:
        return {"pearson": None, "spearman": None, "n": int(a.size), "reason": reason}
    return {"pearson": _pearson(a, b), "spearman": _pearson(rankdata(a), rankdata(b)),
            "n": int(a.size), "reason": None}


def activation_level(cam_scaled: Array) -> Array:
    """Mean of each rescaled CAM over its grid: (B, *spatial) -> (B,), any spatial rank.

    For the 'tanh' scale, pass :func:`ifa_jax.scale.linear_values` (the scale inverted).
    """
    if jnp.ndim(cam_scaled) < 2:
        raise ValueError(f"activation_level expects CAMs (B, *spatial); got shape "
                         f"{jnp.shape(cam_scaled)}. Add the batch axis (cam[None]).")
    return jnp.mean(cam_scaled, axis=tuple(range(1, jnp.ndim(cam_scaled))))


def auroc(scores: Any, positives: Any) -> dict[str, Any]:
    """Area under the ROC curve of scores (N,) against positives (N,) bool.

    Rank-sum (Mann-Whitney U) formula with average ranks for ties, so it equals
    ``sklearn.metrics.roc_auc_score``. Returns ``{'auroc', 'positives', 'negatives',
    'reason'}``; with a single class ``auroc`` is None and ``reason`` says which.
    """
    s = _vector("scores", scores)
    p = np.asarray(positives)
    if p.dtype != bool:
        if p.ndim == 1 and p.size and np.issubdtype(p.dtype, np.number) and np.all(
                (p == 0) | (p == 1)):
            p = p.astype(bool)
        else:
            raise ValueError(f"positives must be a 1-D bool array (or 0/1); got dtype "
                             f"{p.dtype}, shape {p.shape}. E.g. positives = prediction == c")
    p = _vector("positives", p).astype(bool)
    if p.shape != s.shape:
        raise ValueError(f"scores has {s.size} values but positives has {p.size}; "
                         "pass one flag per sample")
    n_pos, n_neg = int(p.sum()), int((~p).sum())
    out = {"auroc": None, "positives": n_pos, "negatives": n_neg, "reason": None}
    if n_pos == 0 or n_neg == 0:
        missing = "no positives" if n_pos == 0 else "no negatives"
        out["reason"] = f"only one class present ({missing})"
        return out
    u = rankdata(s)[p].sum() - n_pos * (n_pos + 1) / 2.0
    out["auroc"] = float(u / (n_pos * n_neg))
    return out


# --------------------------------------------------------------------------- score functions


@dataclasses.dataclass(frozen=True)
class _ProbeScore:
    """Hashable callable (variables, x, target) -> (N,): the probe's target score."""

    probe: LayerProbe
    score: str

    def __call__(self, variables, x, target):
        return target_scores(self.probe.forward(variables, x), target, self.score)


def model_scorer(probe: LayerProbe, variables, score: str = "probability") -> Partial:
    """``score_fn(x, target) -> (N,)``: the model's probability (or logit) of ``target``.

    A :class:`jax.tree_util.Partial` over ``variables``: the same probe and score reuse
    one compiled computation for any variables of the same structure.
    """
    if score not in SCORES:
        raise ValueError(f"score {score!r} is not one of {SCORES}")
    return Partial(_ProbeScore(probe, score), variables)


def _as_scorer(score_fn: Any) -> Partial:
    if isinstance(score_fn, Partial):
        return score_fn
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable (x, target) -> (N,); got "
                        f"{type(score_fn).__name__}")
    return Partial(score_fn)


def _check_inputs(x: Any, saliency: Any) -> tuple[Array, Array]:
    x, saliency = jnp.asarray(x), jnp.asarray(saliency)
    if not 3 <= x.ndim <= 5:
        raise ValueError(f"inputs x must have shape (B, *spatial, C) with 1-3 spatial axes; "
                         f"got {x.shape}")
    if x.shape[0] == 0:
        raise ValueError("inputs x are empty (batch of 0); pass at least one sample")
    if saliency.shape != x.shape[:-1]:
        raise ValueError(
            f"saliency has shape {saliency.shape} but the inputs {x.shape} need "
            f"{x.shape[:-1]} (B, *spatial) on the input grid; resize CAMs with "
            f"ifa_jax.cams.upsample(cam, {tuple(x.shape[1:-1])})")
    lo, hi = float(jnp.min(saliency)), float(jnp.max(saliency))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("saliency has non-finite values; fix the CAMs or their scale")
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"saliency must lie in [0, 1]; got min {lo:.4g}, max {hi:.4g}. "
                         "Rescale it (common scale or per-image min-max) and clip to [0, 1].")
    return x, jnp.clip(saliency, 0.0, 1.0).astype(x.dtype)


def _targets(target: Any, batch: int) -> Array:
    t = jnp.asarray(target)
    if not jnp.issubdtype(t.dtype, jnp.integer):
        raise ValueError(f"target must be integer class indices (an int or ({batch},)); "
                         f"got dtype {t.dtype}")
    if t.ndim == 0:
        t = jnp.full((batch,), t)
    if t.shape != (batch,):
        raise ValueError(f"target has shape {t.shape} but the batch has {batch} samples; "
                         f"pass one index per sample, shape ({batch},), or a single int")
    return t.astype(jnp.int32)


def _check_scores(name: str, y: Array, expected: tuple[int, ...]) -> None:
    if y.shape != expected:
        raise ValueError(f"score_fn must return one score per row, shape {expected}; "
                         f"got {y.shape} ({name})")
    bad = int(jnp.size(y) - jnp.sum(jnp.isfinite(y)))
    if bad:
        raise FloatingPointError(f"score_fn returned {bad} non-finite score(s) ({name}); "
                                 "check the model, the inputs and the baseline")


# --------------------------------------------------------------------------- drop / increase


@jax.jit
def _confidence_core(score_fn, x, saliency, target):
    both = jnp.concatenate([x, x * saliency[..., None]])
    return score_fn(both, jnp.concatenate([target, target]))


def confidence_scores(score_fn: ScoreFn, x: Array, saliency: Array,
                      target: Any) -> tuple[Array, Array]:
    """Target scores of the inputs and of the inputs masked by their saliency.

    x: (B, *in, C); saliency: (B, *in) in [0, 1] on the input grid; target: int or (B,).
    Masked input = ``x * saliency[..., None]``. One jitted forward of 2B rows.
    Returns (y (B,), y_masked (B,)).
    """
    x, saliency = _check_inputs(x, saliency)
    B = x.shape[0]
    y = _confidence_core(_as_scorer(score_fn), x, saliency, _targets(target, B))
    _check_scores("unmasked and masked inputs", y, (2 * B,))
    return y[:B], y[B:]


def drop_increase(y: Any, y_masked: Any) -> dict[str, Any]:
    """Average drop and increase in confidence (Chattopadhyay et al. 2018), in percent.

    drop = mean(max(0, y - y_masked) / y) * 100; increase = mean(y_masked > y) * 100.
    y must be positive (use probabilities). Concatenate y over batches before calling, so
    the averages are over samples. Returns {'average_drop', 'average_increase', 'n'}.
    """
    y, ym = _pair(("y", "y_masked"), y, y_masked)
    bad = np.flatnonzero(y <= 0)
    if bad.size:
        raise ValueError(
            f"average drop divides by the unmasked score y, but y <= 0 for {bad.size} "
            f"sample(s) (first at index {bad[0]}: {y[bad[0]]:.4g}); use positive scores, "
            "e.g. probabilities (score='probability')")
    drop = np.maximum(0.0, y - ym) / y
    return {"average_drop": float(drop.mean() * 100), "average_increase":
            float(np.mean(ym > y) * 100), "n": int(y.size)}


def confidence_change(score_fn: ScoreFn, x: Array, saliency: Array,
                      target: Any) -> dict[str, Any]:
    """:func:`drop_increase` of :func:`confidence_scores` for one batch."""
    y, ym = confidence_scores(score_fn, x, saliency, target)
    return drop_increase(np.asarray(y), np.asarray(ym))


# --------------------------------------------------------------------------- insertion / deletion


def _gaussian_kernel(sigma: float, truncate: float) -> np.ndarray:
    radius = int(truncate * sigma + 0.5)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (t / sigma) ** 2)
    return w / w.sum()


@functools.partial(jax.jit, static_argnames=("sigma", "truncate"))
def blur(x: Array, sigma: float = 5.0, truncate: float = 4.0) -> Array:
    """Gaussian blur of inputs (B, *spatial, C) over the spatial axes (any rank).

    Separable, radius ``int(truncate * sigma + 0.5)``, edges repeated (the same as
    ``scipy.ndimage.gaussian_filter(mode='nearest')`` with zero sigma on batch and channel).
    """
    if sigma <= 0:
        raise ValueError(f"blur sigma must be > 0; got {sigma}")
    w = _gaussian_kernel(float(sigma), float(truncate))
    r = (len(w) - 1) // 2
    out = x
    for axis in range(1, x.ndim - 1):
        n = out.shape[axis]
        pad = [(0, 0)] * out.ndim
        pad[axis] = (r, r)
        padded = jnp.pad(out, pad, mode="edge")
        out = sum(float(wj) * jax.lax.slice_in_dim(padded, j, j + n, axis=axis)
                  for j, wj in enumerate(w))
    return out.astype(x.dtype)


def window_ids(spatial: Sequence[int], window: int | Sequence[int]) -> tuple[np.ndarray, tuple]:
    """Window index of every grid cell (*spatial,) and the window counts per axis.

    Windows tile the grid from the origin; edge windows may be partial (ceil division).
    """
    spatial = tuple(int(n) for n in spatial)
    win = (int(window),) * len(spatial) if np.ndim(window) == 0 else tuple(
        int(w) for w in window)
    if len(win) != len(spatial):
        raise ValueError(f"window {tuple(win)} has {len(win)} axes but the input grid "
                         f"{spatial} has {len(spatial)}; give one size per spatial axis or an int")
    if any(w < 1 for w in win):
        raise ValueError(f"window sizes must be >= 1; got {tuple(win)}")
    counts = tuple(-(-n // w) for n, w in zip(spatial, win))
    grids = np.meshgrid(*[np.arange(n) // w for n, w in zip(spatial, win)], indexing="ij")
    return np.ravel_multi_index(grids, counts).astype(np.int32), counts


class InsertionDeletion(NamedTuple):
    """fraction: (S+1,) share of windows deleted/inserted after each step (0 ... 1).
    deletion, insertion: (B, S+1) target score after each step, step 0 included.
    deletion_auc, insertion_auc: (B,) trapezoid areas over ``fraction``."""

    fraction: Array
    deletion: Array
    insertion: Array
    deletion_auc: Array
    insertion_auc: Array


def curve_auc(curve: Array, fraction: Array) -> Array:
    """Trapezoid area of curves (..., S+1) over x positions ``fraction`` (S+1,)."""
    curve, fraction = jnp.asarray(curve), jnp.asarray(fraction)
    return jnp.sum(jnp.diff(fraction) * (curve[..., 1:] + curve[..., :-1]) / 2, axis=-1)


@functools.partial(jax.jit, static_argnames=("window", "windows_per_step", "images_per_batch"))
def _insdel_core(score_fn, x, saliency, target, base_del, base_ins, *, window,
                 windows_per_step, images_per_batch):
    B, spatial = x.shape[0], x.shape[1:-1]
    ids, counts = window_ids(spatial, window)
    W = int(np.prod(counts))
    steps = -(-W // windows_per_step)
    thresholds = np.minimum(np.arange(steps + 1) * windows_per_step, W)
    fraction = jnp.asarray(thresholds / W, x.dtype)
    flat_ids = jnp.asarray(ids.reshape(-1))
    thr = jnp.asarray(thresholds.reshape(-1, *([1] * len(spatial))))

    def step_masks(sal):  # (*in) -> (S+1, *in): True where the window is deleted/inserted
        sums = jax.ops.segment_sum(sal.reshape(-1), flat_ids, num_segments=W)
        order = jnp.argsort(-sums, stable=True)  # largest saliency first, ties by index
        rank = jnp.zeros(W, jnp.int32).at[order].set(jnp.arange(W, dtype=jnp.int32))
        return rank[jnp.asarray(ids)][None] < thr

    b = min(images_per_batch, B)
    pad = (-B) % b

    def chunked(a):
        a = jnp.concatenate([a, jnp.zeros((pad, *a.shape[1:]), a.dtype)]) if pad else a
        return a.reshape(-1, b, *a.shape[1:])

    def one_chunk(args):
        xc, sc, tc, dc, ic = args
        m = jax.vmap(step_masks)(sc)[..., None]  # (b, S+1, *in, 1)
        deleted = jnp.where(m, dc[:, None], xc[:, None])
        inserted = jnp.where(m, xc[:, None], ic[:, None])
        stack = jnp.concatenate([deleted, inserted]).reshape(-1, *x.shape[1:])
        t = jnp.tile(jnp.repeat(tc, steps + 1), 2)
        scores = score_fn(stack, t)
        if scores.shape != t.shape:  # static: fails at trace time with a clear message
            raise ValueError(f"score_fn must return one score per row, shape {t.shape}; "
                             f"got {scores.shape}")
        return scores.reshape(2, b, steps + 1)

    out = jax.lax.map(one_chunk, tuple(chunked(a) for a in (x, saliency, target, base_del,
                                                                   base_ins)))
    out = jnp.moveaxis(out, 1, 0).reshape(2, -1, steps + 1)[:, :B]
    deletion, insertion = out[0], out[1]
    return InsertionDeletion(fraction, deletion, insertion, curve_auc(deletion, fraction),
                             curve_auc(insertion, fraction))


def _baseline(spec: Any, x: Array, blur_sigma: float, what: str) -> Array:
    if isinstance(spec, str):
        if spec == "zeros":
            return jnp.zeros_like(x)
        if spec == "blur":
            return blur(x, float(blur_sigma))
        raise ValueError(f"{what} {spec!r} is not one of {BASELINES} (or an array)")
    b = jnp.asarray(spec, x.dtype)
    try:
        return jnp.broadcast_to(b, x.shape)
    except ValueError:
        raise ValueError(f"{what} has shape {b.shape}, which does not broadcast to the "
                         f"inputs {x.shape}") from None


def insertion_deletion(score_fn: ScoreFn, x: Array, saliency: Array, target: Any, *,
                       window: int | Sequence[int] = 4, windows_per_step: int = 1,
                       deletion_baseline: Any = "zeros", insertion_baseline: Any = "blur",
                       blur_sigma: float = 5.0, images_per_batch: int = 4
                       ) -> InsertionDeletion:
    """Deletion and insertion curves and AUCs (Petsiuk et al. 2018).

    The input grid is tiled by windows of size ``window`` (int or one size per spatial
    axis; edge windows may be partial), ranked by the saliency summed in each window
    (largest first, ties by window index). Deletion replaces ``windows_per_step`` windows
    per step with ``deletion_baseline`` (``'zeros'``, ``'blur'`` or an array broadcastable
    to x); insertion starts from ``insertion_baseline`` and puts the input's windows back in
    the same order. The curves are the target score after each step, step 0 included; AUCs
    are trapezoids over the fraction of windows (x-axis in [0, 1]).

    x: (B, *in, C); saliency: (B, *in) in [0, 1]; target: int or (B,). All 2 (S+1) steps of
    an image run in one forward batch; ``images_per_batch`` images at a time (memory
    ~ 2 (S+1) images_per_batch inputs), looped with ``lax.map``.
    """
    x, saliency = _check_inputs(x, saliency)
    t = _targets(target, x.shape[0])
    if windows_per_step < 1 or images_per_batch < 1:
        raise ValueError(f"windows_per_step and images_per_batch must be >= 1; got "
                         f"{windows_per_step} and {images_per_batch}")
    window_ids(x.shape[1:-1], window)  # validates the window before compiling
    win = (int(window),) * (x.ndim - 2) if np.ndim(window) == 0 else tuple(map(int, window))
    out = _insdel_core(_as_scorer(score_fn), x, saliency, t,
                       _baseline(deletion_baseline, x, blur_sigma, "deletion_baseline"),
                       _baseline(insertion_baseline, x, blur_sigma, "insertion_baseline"),
                       window=win, windows_per_step=int(windows_per_step),
                       images_per_batch=int(images_per_batch))
    if not isinstance(out.deletion, jax.core.Tracer):
        for name in ("deletion", "insertion"):
            bad = int(jnp.size(getattr(out, name)) - jnp.sum(jnp.isfinite(getattr(out, name))))
            if bad:
                raise FloatingPointError(f"score_fn returned {bad} non-finite score(s) on the "
                                         f"{name} steps; check the model and the baseline")
    return out


# --------------------------------------------------------------------------- feature subsets


@functools.partial(jax.jit, static_argnames=("probe", "layer", "row"))
def _subset_step(probe, variables, x, y, valid, masks, *, layer, row):
    """Correct counts (R,) for masks (R, rows, K), and the plain model's correct count."""
    logits, acts = probe.tapped(variables, x, None)
    logits = logits[:, None] if logits.ndim == 1 else logits
    A = acts[layer]
    pred = jnp.argmax(logits, -1)
    idx = {"shared": jnp.zeros_like(y), "label": y, "predicted": pred}[row]
    expand = (slice(None),) + (None,) * (A.ndim - 2) + (slice(None),)

    def one(m):
        keep = m[idx][expand].astype(A.dtype)  # (B, 1.., K)
        out = probe.forward_with(variables, x, {layer: -A * (1 - keep)})
        out = out[:, None] if out.ndim == 1 else out
        return jnp.sum(valid & (jnp.argmax(out, -1) == y))

    return jax.lax.map(one, masks), jnp.sum(valid & (pred == y))


def _iter_batches(batches: Iterable) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """(index, x, y, valid) with short batches padded (valid=False) to the first's size."""
    size = None
    for i, batch in enumerate(batches):
        batch = tuple(batch)
        if len(batch) not in (2, 3):
            raise ValueError(f"batch {i} has {len(batch)} items; pass (x, y) or (x, y, valid)")
        x, y = np.asarray(batch[0]), np.asarray(batch[1])
        valid = np.asarray(batch[2], bool) if len(batch) == 3 else np.ones(len(y), bool)
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"batch {i}: labels must be integers; got dtype {y.dtype}")
        if y.ndim != 1 or len(x) != len(y) or valid.shape != y.shape:
            raise ValueError(f"batch {i}: x {x.shape}, y {y.shape} and valid {valid.shape} "
                             "must share the batch size, y and valid of shape (B,)")
        if size is None:
            size = len(y)
        n = len(y)
        if n > size:
            raise ValueError(f"batch {i} has {n} samples, more than the first batch's {size}; "
                             "use one batch size (a shorter last batch is fine)")
        if n < size:
            pad = size - n
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
            y = np.concatenate([y, np.zeros(pad, y.dtype)])
            valid = np.concatenate([valid, np.zeros(pad, bool)])
        yield i, x, y, valid


def _layer_of(probe: LayerProbe, layer: str | None) -> str:
    if layer is None:
        if len(probe.layers) != 1:
            raise ValueError(f"this probe taps several layers {probe.layers}; pass layer=...")
        return probe.layers[0]
    if layer not in probe.layers:
        raise ValueError(f"layer {layer!r} is not tapped by this probe; tapped: {probe.layers}")
    return layer


def _evaluate_masks(probe, variables, batches, masks: list, *, layer, row) -> dict[str, Any]:
    layer = _layer_of(probe, layer)
    if row not in ROW_MODES:
        raise ValueError(f"row {row!r} is not one of {ROW_MODES}")
    arrays = [np.asarray(m) for m in masks]
    ndims = {a.ndim for a in arrays}
    if ndims - {1, 2} or len(ndims) != 1:
        raise ValueError(f"masks must all be (K,) (shared by every class) or all (C, K) "
                         f"(one row per class); got shapes {[a.shape for a in arrays]}")
    stacked = np.stack(arrays).astype(np.float32)
    if stacked.ndim == 2:
        stacked, mode = stacked[:, None, :], "shared"
    else:
        mode = row
    if not np.all(np.isfinite(stacked)) or stacked.min() < 0 or stacked.max() > 1:
        raise ValueError("channel masks must hold values in [0, 1] (1 keeps a channel)")
    correct = np.zeros(len(arrays), np.int64)
    plain, n, num_out = 0, 0, None
    for i, x, y, valid in _iter_batches(batches):
        if num_out is None:
            (logits_shape, acts) = probe.output_shapes(variables, jnp.asarray(x))
            num_out, K = logits_shape[-1], acts[layer][-1]
            if stacked.shape[2] != K or (mode != "shared" and stacked.shape[1] != num_out):
                raise ValueError(
                    f"channel mask has shape {arrays[0].shape}; layer {layer!r} has {K} "
                    f"channels and the model {num_out} outputs, so pass ({K},) (shared by "
                    f"every class) or ({num_out}, {K}) (one row per class)")
        yv = y[valid]
        if yv.size and (yv.min() < 0 or yv.max() >= num_out):
            bad = int(yv.min() if yv.min() < 0 else yv.max())
            raise ValueError(f"batch {i}: label {bad} is outside [0, {num_out}) for a model "
                             f"with {num_out} outputs; fix the labels")
        c, p = _subset_step(probe, variables, jnp.asarray(x), jnp.asarray(y, jnp.int32),
                            jnp.asarray(valid), jnp.asarray(stacked), layer=layer, row=mode)
        correct += np.asarray(c, np.int64)
        plain += int(p)
        n += int(valid.sum())
    if num_out is None:
        raise ValueError("batches is empty: nothing to evaluate")
    if n == 0:
        raise ValueError("no valid samples in batches (every valid flag is False)")
    return {"correct": correct, "plain": plain, "n": n, "mode": mode}


def subset_accuracy(probe: LayerProbe, variables, batches: Iterable, masks: Any, *,
                    layer: str | None = None, row: str = "label") -> dict[str, Any]:
    """Accuracy when only the channels selected by ``masks`` are kept at ``layer``.

    The layer's output A becomes ``A * m`` (``delta = -A * (1 - m)`` via
    ``probe.forward_with``). ``masks``: (K,) shared by all classes, or (C, K) one row per
    class; a per-class row is picked by ``row``: ``'label'`` (the sample's label: an oracle
    that sees the label, so optimistic; the paper's per-class setting) or ``'predicted'``
    (the unmasked model's prediction: no label leak). ``batches``: iterable of (x, y) or
    (x, y, valid); a short last batch is padded, so the step compiles once.
    Returns {'accuracy', 'full_accuracy' (all channels), 'correct', 'n'}.
    """
    r = _evaluate_masks(probe, variables, batches, [masks], layer=layer, row=row)
    return {"accuracy": float(r["correct"][0] / r["n"]), "full_accuracy": r["plain"] / r["n"],
            "correct": int(r["correct"][0]), "n": r["n"]}


def subset_accuracy_curve(probe: LayerProbe, variables, batches: Iterable, importance_rows: Any,
                          ratios: Sequence[float] = DEFAULT_RATIOS, *,
                          select_fn: Callable[[Any, float], Any], layer: str | None = None,
                          row: str = "label") -> dict[str, Any]:
    """Accuracy for channel subsets of growing size: the "5-25% of features" claim.

    ``select_fn(importance_rows, ratio) -> mask`` ((K,) or (C, K)) is called once per
    ratio; ``importance_rows`` is (K,) or (C, K) (e.g. IM_c from the analysis). The
    batches are read once and every mask evaluated on each batch (one layer forward, then
    one head forward per ratio), so a generator works. Masks and ``row`` as in
    :func:`subset_accuracy`. Returns {'ratios', 'accuracy', 'channels' (mean kept channels
    per mask row), 'full_accuracy', 'n'}; an all-ones mask gives exactly ``full_accuracy``.
    """
    ratios = [float(r) for r in ratios]
    if not ratios:
        raise ValueError("ratios is empty; pass e.g. (0.05, 0.1, 0.25, 1.0)")
    bad = [r for r in ratios if not 0 < r <= 1]
    if bad:
        raise ValueError(f"ratios must lie in (0, 1]; got {bad}")
    rows = np.asarray(importance_rows)
    if rows.ndim not in (1, 2) or rows.size == 0:
        raise ValueError(f"importance_rows must be (K,) or (C, K); got shape {rows.shape}")
    masks = [np.asarray(select_fn(rows, r)) for r in ratios]
    res = _evaluate_masks(probe, variables, batches, masks, layer=layer, row=row)
    return {"ratios": ratios, "accuracy": [float(c / res["n"]) for c in res["correct"]],
            "channels": [float(np.sum(m) / (1 if m.ndim == 1 else m.shape[0])) for m in masks],
            "full_accuracy": res["plain"] / res["n"], "n": res["n"]}


# --------------------------------------------------------------------------- sanity check


def _locate(params: Any, order: Sequence[str]) -> tuple[Mapping, bool]:
    if isinstance(params, Mapping) and all(n in params for n in order):
        return params, False
    inner = params.get("params") if isinstance(params, Mapping) else None
    if isinstance(inner, Mapping) and all(n in inner for n in order):
        return inner, True
    where = inner if isinstance(inner, Mapping) else params
    names = list(where) if isinstance(where, Mapping) else []
    missing = [n for n in order if n not in names]
    raise ValueError(f"layer(s) {missing} not found among the top-level parameter names "
                     f"{names}; list names from those, top (output) layer first")


def _rebuild(like: Mapping, **changes) -> Mapping:
    new = dict(like)
    new.update(changes)
    try:
        return type(like)(new)
    except TypeError:
        return new


@jax.jit
def _reinit(subtree: Any, key: Array) -> Any:
    leaves, treedef = jax.tree.flatten(subtree)
    new = [jnp.std(leaf) * jax.random.normal(jax.random.fold_in(key, j), jnp.shape(leaf),
                                             jnp.result_type(leaf))
           if jnp.issubdtype(jnp.result_type(leaf), jnp.floating) else leaf
           for j, leaf in enumerate(leaves)]
    return jax.tree.unflatten(treedef, new)


def cascading_randomization(params: Any, key: Array, order: Sequence[str]
                            ) -> Iterator[tuple[str, Any]]:
    """Cascading weight randomisation (Adebayo et al. 2018), from the top layer down.

    ``params``: a parameter tree or Flax variables ``{'params': ...}`` (other collections
    are kept). ``order``: top-level parameter names, top (output) layer first. Yields
    ``(name, tree)`` for each name in turn, ``tree`` having that layer and every layer
    before it in ``order`` re-initialised: each floating-point leaf ~ Normal(0, std of that
    leaf) (a zero-initialised bias stays zero; integer leaves are kept), keys
    ``fold_in(split(key, len(order))[i], leaf index)``. Inputs are checked eagerly.
    """
    order = list(order)
    if not order:
        raise ValueError("order is empty; list the layers to randomise, top layer first")
    dupes = sorted({n for n in order if order.count(n) > 1})
    if dupes:
        raise ValueError(f"order names {dupes} more than once; list each layer once")
    _locate(params, order)
    keys = jax.random.split(key, len(order))

    def gen():
        current = params
        for i, name in enumerate(order):
            tree, nested = _locate(current, order)
            tree = _rebuild(tree, **{name: _reinit(tree[name], keys[i])})
            current = _rebuild(current, params=tree) if nested else tree
            yield name, current

    return gen()


def _maps(name: str, a: Any) -> np.ndarray:
    arr = np.asarray(a, np.float64)
    if arr.ndim < 2 or arr.shape[0] == 0 or arr[0].size == 0:
        raise ValueError(f"{name} must be a non-empty batch of maps (B, *spatial); got shape "
                         f"{arr.shape}. Add the batch axis (cam[None]).")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has non-finite values; fix the CAMs first")
    return arr


def rank_correlation(cam_a: Any, cam_b: Any) -> list[float | None]:
    """Per sample Spearman rho over the grid of two CAM batches (B, *spatial).

    None for a sample whose maps are constant (or have fewer than 3 cells).
    """
    a, b = _maps("cam_a", cam_a), _maps("cam_b", cam_b)
    if a.shape != b.shape:
        raise ValueError(f"cam_a has shape {a.shape} but cam_b {b.shape}; they must match "
                         "(resize one with ifa_jax.cams.upsample)")
    return [spearman(u.ravel(), v.ravel()) for u, v in zip(a, b)]


def _window_1d(window: str, win_size: int, sigma: float) -> np.ndarray:
    if window == "gaussian":
        t = np.arange(win_size) - (win_size - 1) / 2
        w = np.exp(-0.5 * (t / sigma) ** 2)
        return w / w.sum()
    if window == "uniform":
        return np.full(win_size, 1.0 / win_size)
    raise ValueError(f"window {window!r} is not 'gaussian' or 'uniform'")


def ssim(a: Any, b: Any, *, data_range: float = 1.0, window: str = "gaussian",
         win_size: int = 11, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03
         ) -> float | np.ndarray:
    """Structural similarity (Wang et al. 2004) of 2-D maps (H, W) -> float or (B, H, W) -> (B,).

    Local weighted means, variances and covariance over every full ``win_size`` window
    (``'gaussian'``, std ``sigma``, or ``'uniform'``; no padding), mean of the SSIM map.
    C1 = (k1 data_range)^2, C2 = (k2 data_range)^2; use ``data_range=1`` for maps in [0, 1].
    """
    single = np.ndim(a) == 2
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"a has shape {a.shape} but b {b.shape}; they must match")
    if a.ndim not in (2, 3) or a.size == 0:
        raise ValueError(f"ssim takes 2-D maps (H, W) or a batch (B, H, W); got {a.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("ssim inputs have non-finite values")
    if data_range <= 0:
        raise ValueError(f"data_range must be > 0 (max - min possible value); got {data_range}")
    if single:
        a, b = a[None], b[None]
    H, W = a.shape[1:]
    if not 1 <= win_size <= min(H, W):
        raise ValueError(f"win_size {win_size} does not fit maps of {H}x{W}; pass "
                         f"win_size <= {min(H, W)} or upsample the maps")
    w = _window_1d(window, int(win_size), float(sigma))
    n_h, n_w = H - win_size + 1, W - win_size + 1

    def filt(m):  # separable weighted sums over every full window
        m = sum(wj * m[:, j:j + n_h, :] for j, wj in enumerate(w))
        return sum(wj * m[:, :, j:j + n_w] for j, wj in enumerate(w))

    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a * mu_a
    var_b = filt(b * b) - mu_b * mu_b
    cov = filt(a * b) - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2))
    out = s.mean(axis=(1, 2))
    return float(out[0]) if single else out

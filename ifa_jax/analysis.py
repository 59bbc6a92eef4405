"""Feature distribution analysis: streaming dataset statistics of channel contributions.

The state follows optax's shape: a NamedTuple with :func:`init`, a pure
``update(state, batch) -> state``, an exact :func:`merge` of two partial states (per
device, per host, per chunk) and :func:`finalize`. Its size is fixed by the number of
classes C, channels K and the feature grid, never by the number of samples.

Per class c, over *counted* samples (correctly classified by default, all on request):
the count, the mean channel importance (IM_c) and the sum of squared deviations
(Chan et al.'s parallel algorithm, so merging is exact and stable), and the mean raw CAM
on the grid. Over all counted samples: the channel co-moment (K x K), from which the
covariance follows. Per-sample scalars (CAM max/min, score, label, prediction) are small
and returned by the step for the host to keep.

:func:`analyze` runs the whole pass over an iterable of batches, compiling the step once.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ifa_jax import cams, scale
from ifa_jax.explain import callable_target, forward_weights
from ifa_jax.probe import LayerProbe

Array = jax.Array
COUNT_MODES = ("correct", "all")


class Stats(NamedTuple):
    """Streaming state. C classes, K channels, feature grid ``spatial``.

    count: (C,) counted samples per class. mean: (C, K) per-class mean importance.
    m2: (C, K) per-class sum of squared deviations of importance. comoment: (K, K)
    sum over counted samples of (s - mu)(s - mu)^T, mu the mean over all counted samples.
    cam_mean: (C, *spatial) per-class mean raw CAM. seen: () all valid samples analysed.
    """

    count: Array
    mean: Array
    m2: Array
    comoment: Array
    cam_mean: Array
    seen: Array


class BatchStats(NamedTuple):
    """What update needs from one batch: importance s (B, K), raw CAM L (B, *spatial),
    label (B,) int, counted (B,) bool (valid and, by default, correctly classified),
    valid (B,) bool (False for padding rows)."""

    importance: Array
    cam: Array
    label: Array
    counted: Array
    valid: Array


class PerSample(NamedTuple):
    """Per-sample scalars of one batch (B,) each; padding rows have valid=False."""

    cam_max: Array
    cam_min: Array
    score: Array
    label: Array
    prediction: Array
    counted: Array
    valid: Array
    nonfinite: Array
    importance: Array | None = None


def init(num_classes: int, num_channels: int, spatial: tuple[int, ...]) -> Stats:
    """An empty state."""
    if num_classes < 1 or num_channels < 1:
        raise ValueError(f"need num_classes >= 1 and num_channels >= 1; got {num_classes}, "
                         f"{num_channels}")
    f = jnp.float32
    return Stats(jnp.zeros(num_classes, f), jnp.zeros((num_classes, num_channels), f),
                 jnp.zeros((num_classes, num_channels), f),
                 jnp.zeros((num_channels, num_channels), f),
                 jnp.zeros((num_classes, *spatial), f), jnp.zeros((), f))


def _safe_div(a, n):
    return a / jnp.where(n > 0, n, 1.0)


def _overall_mean(count: Array, mean: Array) -> Array:
    return _safe_div(jnp.einsum("c,ck->k", count, mean), count.sum())


def from_batch(batch: BatchStats, num_classes: int) -> Stats:
    """The state of one batch alone (pure, jit-able)."""
    s = batch.importance.astype(jnp.float32)
    w = batch.counted.astype(jnp.float32)
    onehot = jax.nn.one_hot(batch.label, num_classes, dtype=jnp.float32) * w[:, None]  # (B, C)
    count = onehot.sum(0)
    mean = _safe_div(onehot.T @ s, count[:, None])
    dev = s - onehot @ mean  # rows not counted have onehot == 0; their dev is masked below
    m2 = onehot.T @ (dev * dev)
    mu = _safe_div(w @ s, w.sum())
    centred = (s - mu) * w[:, None]
    comoment = centred.T @ (s - mu)
    L = batch.cam.astype(jnp.float32)
    cam_sum = jnp.tensordot(onehot.T, L, axes=1)
    cam_mean = _safe_div(cam_sum, count.reshape((-1,) + (1,) * (L.ndim - 1)))
    return Stats(count, mean, m2, comoment, cam_mean, batch.valid.sum().astype(jnp.float32))


def _check_mergeable(a: Stats, b: Stats) -> None:
    """Shapes are static (also under jit): refuse states of different C, K or grid."""
    for what, sa, sb, fix in (
            ("classes", a.count.shape, b.count.shape, "built with the same num_classes"),
            ("channels", a.mean.shape[-1:], b.mean.shape[-1:], "of the same layer")):
        if sa != sb:
            raise ValueError(f"cannot merge: a has {sa[0]} {what}, b has {sb[0]}; merge "
                             f"states {fix}")
    ga, gb = tuple(a.cam_mean.shape[1:]), tuple(b.cam_mean.shape[1:])
    if ga != gb:
        raise ValueError(
            f"cannot merge: feature grid {ga} vs {gb}; merge states from inputs of one size"
        )


def merge(a: Stats, b: Stats) -> Stats:
    """Combine two partial states exactly (Chan et al. 1979). Associative, pure, jit-able.

    Both states must have the same classes C, channels K and grid (else ValueError).
    """
    _check_mergeable(a, b)
    count = a.count + b.count
    frac_b = _safe_div(b.count, count)  # (C,)
    delta = b.mean - a.mean
    mean = a.mean + delta * frac_b[:, None]
    m2 = a.m2 + b.m2 + delta * delta * (a.count * frac_b)[:, None]
    na, nb = a.count.sum(), b.count.sum()
    d = _overall_mean(b.count, b.mean) - _overall_mean(a.count, a.mean)
    comoment = a.comoment + b.comoment + jnp.outer(d, d) * _safe_div(na * nb, na + nb)
    shape = (-1,) + (1,) * (a.cam_mean.ndim - 1)
    cam_mean = a.cam_mean + (b.cam_mean - a.cam_mean) * frac_b.reshape(shape)
    return Stats(count, mean, m2, comoment, cam_mean, a.seen + b.seen)


def update(state: Stats, batch: BatchStats) -> Stats:
    """state + one batch. Checks shapes eagerly, so a mismatch names the arrays."""
    C, K = state.mean.shape
    if batch.importance.shape[-1] != K or batch.cam.shape[1:] != state.cam_mean.shape[1:]:
        raise ValueError(
            f"batch features (K={batch.importance.shape[-1]}, grid {batch.cam.shape[1:]}) do "
            f"not match the state (K={K}, grid {state.cam_mean.shape[1:]}); analyse one layer "
            "with one input size per state"
        )
    return merge(state, from_batch(batch, C))


class Summary(NamedTuple):
    """Finalized statistics (NumPy). C classes, K channels.

    im_all: (K,) mean importance over all counted samples. im_class: (C, K) per class;
    rows of classes with no counted sample are NaN and ``present`` is False for them.
    im_diff: (C, K) = im_class - im_all. im_var: (C, K) per-class variance (ddof=0).
    covariance: (K, K) of s over counted samples (ddof=0). cam_mean: (C, *spatial).
    class_counts: (C,) counted samples. seen: samples analysed.
    """

    im_all: np.ndarray
    im_class: np.ndarray
    im_diff: np.ndarray
    im_var: np.ndarray
    covariance: np.ndarray
    cam_mean: np.ndarray
    class_counts: np.ndarray
    present: np.ndarray
    seen: int

    @property
    def missing_classes(self) -> tuple[int, ...]:
        return tuple(int(c) for c in np.flatnonzero(~self.present))


def finalize(state: Stats) -> Summary:
    """Importance matrices, spreads and covariance from a state."""
    count = np.asarray(state.count, np.float64)
    total = count.sum()
    if total == 0:
        raise ValueError(
            "no sample was counted (none valid and correctly classified); analyse more data, "
            "or pass count='all' to count misclassified samples too"
        )
    present = count > 0
    mean = np.asarray(state.mean, np.float64)
    im_all = (count @ mean) / total
    im_class = np.where(present[:, None], mean, np.nan)
    im_var = np.where(present[:, None], np.asarray(state.m2) / np.maximum(count, 1)[:, None],
                      np.nan)
    cam_mean = np.asarray(state.cam_mean, np.float64)
    cam_mean = np.where(present.reshape((-1,) + (1,) * (cam_mean.ndim - 1)), cam_mean, np.nan)
    return Summary(im_all, im_class, im_class - im_all, im_var,
                   np.asarray(state.comoment, np.float64) / total, cam_mean, count, present,
                   int(state.seen))


# --------------------------------------------------------------------------- the pass


def batch_stats(probe: LayerProbe, variables, x: Array, y: Array, valid: Array, *,
                method: str | tuple[str, ...] = "gradcam", target: Any = "label",
                score: str = "logit", count: str = "correct", chunk_size: int = 16,
                keep_importance: bool = False):
    """Probe one batch and reduce it to the statistics' inputs. Traceable (jit it).

    target: ``'label'`` (default: explain the ground truth, which for counted samples is
    the prediction), ``'predicted'``, an int, or a callable ``logits -> (B,)``.
    method: one CAM method -> ``(BatchStats, PerSample)``; a tuple of methods -> a tuple
    of such pairs, all from ONE probe call (one forward + one vjp for every method).
    """
    methods = (method,) if isinstance(method, str) else tuple(method)
    result = probe(variables, x, y if target == "label" else target, score=score)
    A, G = result.activations, result.gradients
    if isinstance(A, dict):
        raise ValueError("analyse one layer at a time: build the probe with a single layer")
    prediction = jnp.argmax(result.logits, -1).astype(jnp.int32)
    valid = valid.astype(bool)
    counted = valid & (prediction == y) if count == "correct" else valid
    finite = (jnp.isfinite(A).all(axis=tuple(range(1, A.ndim)))
              & jnp.isfinite(G).all(axis=tuple(range(1, G.ndim))))
    labels = y.astype(jnp.int32)
    pairs = []
    for m in methods:
        weights = forward_weights(probe, variables, x, A, result, m, layer=probe.layers[0],
                                  target_fn=callable_target(target), score=score,
                                  chunk_size=chunk_size)
        out = cams.cam(A, G, m, weights=weights)
        pairs.append((BatchStats(out.importance, out.cam, labels, counted, valid),
                      PerSample(out.max, out.min, result.score, labels, prediction, counted,
                                valid, valid & ~finite,
                                out.importance if keep_importance else None)))
    return pairs[0] if isinstance(method, str) else tuple(pairs)


@functools.partial(jax.jit, static_argnames=("probe", "method", "target", "score", "count",
                                             "chunk_size", "num_classes", "keep_importance"))
def analysis_step(state, probe: LayerProbe, variables, x: Array, y: Array, valid: Array,
                  *, num_classes: int, method: str | tuple[str, ...] = "gradcam",
                  target: Any = "label", score: str = "logit", count: str = "correct",
                  chunk_size: int = 16, keep_importance: bool = False):
    """One jitted step: probe, CAM, statistics update. Returns (new state, per-sample).

    With a tuple of methods, ``state`` and both outputs are tuples, one entry per method.
    """
    out = batch_stats(probe, variables, x, y, valid, method=method, target=target,
                      score=score, count=count, chunk_size=chunk_size,
                      keep_importance=keep_importance)
    if isinstance(method, str):
        stats, per = out
        return merge(state, from_batch(stats, num_classes)), per
    new = tuple(merge(s, from_batch(b, num_classes)) for s, (b, _) in zip(state, out))
    return new, tuple(per for _, per in out)


class Analysis(NamedTuple):
    """The result of :func:`analyze`: the final state (mergeable), its summary, and the
    per-sample scalars of valid samples as NumPy arrays (N,) in input order."""

    state: Stats
    summary: Summary
    samples: dict[str, np.ndarray]

    def percentiles(self, which: str = "cam_max",
                    qs=scale.DEFAULT_PERCENTILES) -> dict[int, float]:
        """Percentiles of a per-sample scalar, keyed by the percentile it really is."""
        if which not in self.samples:
            raise KeyError(f"no per-sample values named {which!r}; the names are: "
                           f"{', '.join(self.samples) or '(none)'}")
        values = self.samples[which]
        if values.size == 0:
            raise ValueError(f"no samples were analysed, so {which} has no percentiles")
        return scale.percentiles(values, qs)


def _pad(batch: tuple, size: int, i: int,
         declared: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, y, *rest = batch
    x, y = np.asarray(x), np.asarray(y)
    valid = np.asarray(rest[0], bool) if rest else np.ones(len(y), bool)
    n = len(y)
    if n == size:
        return x, y, valid
    if n > size:
        which = "batch_size" if declared else "the first batch's size"
        raise ValueError(f"batch {i} has {n} samples, more than {which} {size}; pass "
                         "batch_size= (the largest batch size) to analyze, and smaller "
                         "batches are padded to it")
    pad = size - n
    return (np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]),
            np.concatenate([y, np.zeros(pad, y.dtype)]),
            np.concatenate([valid, np.zeros(pad, bool)]))


def analyze(probe: LayerProbe, variables, batches: Iterable, *, num_classes: int,
            method: str | tuple[str, ...] = "gradcam", target: Any = "label",
            score: str = "logit", count: str = "correct", chunk_size: int = 16, sharding=None,
            progress: bool = True, total: int | None = None, keep_importance: bool = False,
            batch_size: int | None = None) -> Analysis | dict[str, Analysis]:
    """One pass over ``batches`` of ``(x, y)`` or ``(x, y, valid)``.

    ``method`` names one CAM method (returns an :class:`Analysis`) or a tuple of methods
    (returns ``{method: Analysis}``): every method's statistics come from the same single
    probe call per batch, so analysing four methods costs one model pass, not four.

    The step compiles once: every batch is padded and masked to ``batch_size`` (default:
    the first non-empty batch's size, so a short final batch is fine; pass it when an
    earlier batch is smaller than a later one). Batches with 0 samples are skipped.
    ``sharding`` (e.g. ``NamedSharding(mesh, P('batch'))``) places each batch across
    devices; the statistics are then reduced across devices by XLA and equal the
    single-device ones. ``keep_importance`` also keeps every sample's importance vector
    (N, K) in ``samples['importance']`` (for outlier ranking; N * K floats on the host).
    With several processes (``jax.distributed.initialize()``), each
    process passes its own shard of every batch (``data.batches(..., shard_index=...)``)
    and the global batch is assembled with ``jax.make_array_from_process_local_data``.
    Labels outside [0, num_classes) (and, with ``target='label'``, labels the model has
    no output for) and non-finite activations or gradients raise errors naming the batch.
    """
    single = isinstance(method, str)
    methods = tuple(cams.canonical_method(m) for m in ((method,) if single else method))
    if not methods:
        raise ValueError("method is an empty tuple; name at least one CAM method")
    if count not in COUNT_MODES:
        raise ValueError(f"count {count!r} is not one of {COUNT_MODES}")
    if batch_size is not None and (isinstance(batch_size, bool)
                                   or not isinstance(batch_size, (int, np.integer))
                                   or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int (the padded batch size) or "
                         f"None; got {batch_size!r}")
    by_label = isinstance(target, str) and target == "label"
    from tqdm.auto import tqdm

    states = None
    size, first_shape, num_outputs = batch_size, None, 0
    pending: list[tuple[int, tuple[PerSample, ...]]] = []
    kept: list[tuple[PerSample, ...]] = []

    def collect(i, per):
        per = jax.device_get(per)
        bad = int(np.sum(per[0].nonfinite))
        if bad:
            raise FloatingPointError(
                f"batch {i}: {bad} sample(s) have non-finite activations or gradients at "
                f"layer {probe.layers[0]!r}; check the inputs and the parameters"
            )
        kept.append(per)

    for i, batch in enumerate(tqdm(batches, total=total, disable=not progress, desc="analyse")):
        n = len(batch[1])
        if n == 0 and (size is None or jax.process_count() == 1):
            continue  # nothing to analyse (several processes must all step, so pad there)
        if size is None:
            size = n
        x, y, valid = _pad(tuple(batch), size, i, declared=batch_size is not None)
        if first_shape is None:
            first_shape = x.shape[1:]
        elif x.shape[1:] != first_shape:
            raise ValueError(f"batch {i} has input shape {x.shape[1:]} but the first batch had "
                             f"{first_shape}; resize the inputs to one shape per pass")
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"batch {i}: labels must be integers; got dtype {y.dtype}")
        yv = y[valid]
        if yv.size and (yv.min() < 0 or yv.max() >= num_classes):
            bad = int(yv.min() if yv.min() < 0 else yv.max())
            raise ValueError(f"batch {i}: label {bad} is outside [0, {num_classes}); pass the "
                             "right num_classes or fix the labels")
        xj, yj, vj = jnp.asarray(x), jnp.asarray(y, jnp.int32), jnp.asarray(valid)
        if sharding is not None and jax.process_count() > 1:
            # Each process holds its own shard of the global batch.
            xj, yj, vj = (jax.make_array_from_process_local_data(sharding, np.asarray(a))
                          for a in (xj, yj, vj))
        elif sharding is not None:
            xj, yj, vj = (jax.device_put(a, sharding) for a in (xj, yj, vj))
        if states is None:
            logits_shape, act_shapes = probe.output_shapes(variables, xj)  # abstract, cached
            num_outputs = logits_shape[-1]
            A_shape = act_shapes[probe.layers[0]]
            states = tuple(init(num_classes, A_shape[-1], tuple(A_shape[1:-1]))
                           for _ in methods)
        if by_label and yv.size and yv.max() >= num_outputs:
            # The score would be NaN (take_along_axis out of range) and the check in the
            # probe is skipped under jit: refuse here, on the host.
            raise ValueError(
                f"batch {i}: label {int(yv.max())} has no output in the model, which has "
                f"{num_outputs} outputs, so target='label' can only explain labels in "
                f"[0, {num_outputs - 1}]; fix the labels (or the model), or pass "
                "target='predicted'"
            )
        states, per = analysis_step(states, probe, variables, xj, yj, vj,
                                    num_classes=num_classes, method=methods, target=target,
                                    score=score, count=count, chunk_size=chunk_size,
                                    keep_importance=keep_importance)
        pending.append((i, per))
        if len(pending) > 1:  # fetch one batch behind, so the device stays busy
            collect(*pending.pop(0))
    for item in pending:
        collect(*item)
    if states is None:
        raise ValueError("batches is empty (or every batch has 0 samples): nothing to "
                         "analyse")
    results = {m: Analysis(state, finalize(state), _gather_samples([p[j] for p in kept]))
               for j, (m, state) in enumerate(zip(methods, states))}
    return results[methods[0]] if single else results


def _gather_samples(kept: list[PerSample]) -> dict[str, np.ndarray]:
    """Concatenate per-batch scalars and keep the valid rows, in input order."""
    samples = {field: np.concatenate([np.asarray(getattr(p, field)) for p in kept])
               for field in PerSample._fields if getattr(kept[0], field) is not None}
    valid = samples.pop("valid")
    samples.pop("nonfinite")
    return {k: v[valid] for k, v in samples.items()}

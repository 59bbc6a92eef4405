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
Batches are tuples ``(x, y[, valid])``, :class:`ifa_jax.inputs.Batch` es or dicts (``keys=``);
:func:`record_batches` turns a random-access source of single records (``tfds.data_source``,
a grain ``MapDataset``, a list of dicts) into such batches. A float target (regression) is
analysed per bin of its value (``bins=``, e.g. :func:`quantile_bins`).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ifa_jax import cams

# analyze warns with it (part of this module's API)
from ifa_jax._checks import IntegerInputWarning as IntegerInputWarning
from ifa_jax._checks import (
    batch_multiple,
    batch_sharding,
    floating_dtype,
    label_range,
    one_of,
    outputs_in_range,
    pad_batch,
    positive_int,
    prng_key,
    require_keys,
    shard,
    warn_integer_inputs,
)
from ifa_jax._options import split_options
from ifa_jax._stats import DEFAULT_PERCENTILES, percentiles
from ifa_jax.explaining import callable_target, forward_weights
from ifa_jax.inputs import Batch, as_images, as_labels, unpack_batch
from ifa_jax.probes import LayerProbe

Array = jax.Array
COUNT_MODES = ("correct", "all")


class NothingCountedError(ValueError):
    """No sample of the pass was counted, so no statistic is defined."""


DEFAULT_KEYS = ("image", "label")


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
    """Per-sample scalars of one batch (B,) each; padding rows have valid=False.
    reached: the grid positions where the sample's gradient G is non-zero (0 when the
    layer gets no gradient: :class:`ifa_jax.probe.ZeroGradientWarning`)."""

    cam_max: Array
    cam_min: Array
    score: Array
    label: Array
    prediction: Array
    counted: Array
    valid: Array
    nonfinite: Array
    importance: Array | None = None
    reached: Array | None = None


def init(num_classes: int, num_channels: int, spatial: tuple[int, ...]) -> Stats:
    """An empty state."""
    if num_classes < 1 or num_channels < 1:
        raise ValueError(
            f"need num_classes >= 1 and num_channels >= 1; got {num_classes}, {num_channels}"
        )
    f = jnp.float32
    return Stats(
        jnp.zeros(num_classes, f),
        jnp.zeros((num_classes, num_channels), f),
        jnp.zeros((num_classes, num_channels), f),
        jnp.zeros((num_channels, num_channels), f),
        jnp.zeros((num_classes, *spatial), f),
        jnp.zeros((), f),
    )


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
        ("channels", a.mean.shape[-1:], b.mean.shape[-1:], "of the same layer"),
    ):
        if sa != sb:
            raise ValueError(
                f"cannot merge: a has {sa[0]} {what}, b has {sb[0]}; merge states {fix}"
            )
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
        """Classes with no counted sample (their rows are NaN)."""
        return tuple(int(c) for c in np.flatnonzero(~self.present))


class MissingClassesWarning(UserWarning):
    """Some classes have no counted sample: their rows of the :class:`Summary` are NaN."""


def finalize(state: Stats) -> Summary:
    """Importance matrices, spreads and covariance from a state. Warns
    (:class:`MissingClassesWarning`, naming them) when some classes have no counted
    sample: their rows are NaN and ``present`` is False for them."""
    count = np.asarray(state.count, np.float64)
    total = count.sum()
    if total == 0:
        raise NothingCountedError(
            "no sample was counted (none valid and correctly classified); analyse more data, "
            "or pass count='all' to count misclassified samples too"
        )
    present = count > 0
    if not present.all():
        missing = [int(c) for c in np.flatnonzero(~present)]
        warnings.warn(
            f"{len(missing)} of {len(present)} classes have no counted sample: "
            f"{missing}. Their rows of im_class, im_diff, im_var and cam_mean are NaN "
            "(Summary.present is False). Analyse more samples of them, or pass "
            "count='all' to count misclassified samples too",
            MissingClassesWarning,
            stacklevel=2,
        )
    mean = np.asarray(state.mean, np.float64)
    im_all = (count @ mean) / total
    im_class = np.where(present[:, None], mean, np.nan)
    im_var = np.where(
        present[:, None], np.asarray(state.m2) / np.maximum(count, 1)[:, None], np.nan
    )
    cam_mean = np.asarray(state.cam_mean, np.float64)
    cam_mean = np.where(present.reshape((-1,) + (1,) * (cam_mean.ndim - 1)), cam_mean, np.nan)
    return Summary(
        im_all,
        im_class,
        im_class - im_all,
        im_var,
        np.asarray(state.comoment, np.float64) / total,
        cam_mean,
        count,
        present,
        int(state.seen),
    )


# --------------------------------------------------------------------------- the pass


def _at_least_f32(a: Array) -> Array:
    """bfloat16 / float16 -> float32; float32 and float64 unchanged: CAMs and statistics
    are computed in float32 (at least) whatever dtype the model runs in."""
    return a.astype(jnp.promote_types(a.dtype, jnp.float32))


def batch_stats(
    probe: LayerProbe,
    variables,
    x: Array,
    y: Array,
    valid: Array,
    *,
    method: str | tuple[str, ...] = "gradcam",
    target: Any = "label",
    score: str = "logit",
    count: str = "correct",
    chunk_size: int = 16,
    keep_importance: bool = False,
    options: tuple = (),
    array_options: Mapping[str, Mapping[str, Array]] | None = None,
    key: Array | None = None,
    index: Array | None = None,
):
    """Probe one batch and reduce it to the statistics' inputs. Traceable (jit it).

    target: ``'label'`` (default: explain the ground truth, which for counted samples is
    the prediction), ``'predicted'``, an int, or a callable ``logits -> (B,)``.
    method: one CAM method -> ``(BatchStats, PerSample)``; a tuple of methods -> a tuple
    of such pairs, all from ONE probe call (one forward + one vjp for every method).
    A model run in bfloat16 (variables and x cast) gives A and G in bfloat16: they are cast
    to float32 before the CAMs, so every output is float32.

    options: ``((method, ((name, value), ...)), ...)``, hashable method options (static
    under jit); array_options: ``{method: {name: array}}`` (traced), both keyed by
    canonical name (:func:`analyze` builds them from its ``method_options``). key: the
    PRNG key of keyed methods; sample n of the batch is explained alone with
    ``fold_in(key, index[n])`` (index (B,) int, default ``arange(B)``), exactly as
    ``explain(x[n:n+1], key=fold_in(key, index[n]))``, so its draws do not depend on the
    batch it sits in.
    """
    methods = (method,) if isinstance(method, str) else tuple(method)
    static = dict(options)
    arrays = dict(array_options or {})
    result = probe(variables, x, y if target == "label" else target, score=score)
    A, G = result.activations, result.gradients
    if isinstance(A, dict) or isinstance(G, dict):
        raise ValueError("analyse one layer at a time: build the probe with a single layer")
    prediction = jnp.argmax(result.logits, -1).astype(jnp.int32)
    valid = valid.astype(bool)
    counted = valid & (prediction == y) if count == "correct" else valid
    finite = jnp.isfinite(A).all(axis=tuple(range(1, A.ndim))) & jnp.isfinite(G).all(
        axis=tuple(range(1, G.ndim))
    )
    labels = y.astype(jnp.int32)
    reached = jnp.sum(jnp.any(G != 0, axis=-1), axis=tuple(range(1, G.ndim - 1)))
    A32, G32, score32 = (_at_least_f32(a) for a in (A, G, result.score))
    common = {
        "layer": probe.layers[0],
        "target_fn": callable_target(target),
        "score": score,
        "chunk_size": chunk_size,
    }
    pairs = []
    for m in methods:
        name = cams.canonical_method(m)
        own = {"options": static.get(name, ()), "array_options": arrays.get(name)}
        if "key" in cams.get_method(name).needs:
            cams.require_key(name, key)
            assert key is not None
            rows = jnp.arange(x.shape[0]) if index is None else index
            keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, rows)
            out = _per_sample_cam(probe, variables, x, A, A32, G32, result, keys, name, common, own)
        else:
            weights = forward_weights(probe, variables, x, A, result, name, **common, **own)
            weights = None if weights is None else _at_least_f32(weights)
            out = cams.cam(A32, G32, name, weights=weights, **_merged(own))
        pairs.append(
            (
                BatchStats(out.importance, out.cam, labels, counted, valid),
                PerSample(
                    out.max,
                    out.min,
                    score32,
                    labels,
                    prediction,
                    counted,
                    valid,
                    valid & ~finite,
                    out.importance if keep_importance else None,
                    reached.astype(jnp.int32),
                ),
            )
        )
    return pairs[0] if isinstance(method, str) else tuple(pairs)


def _merged(own: Mapping[str, Any]) -> dict[str, Any]:
    """A method's static and array options as one keyword dict."""
    return {**dict(own["options"]), **dict(own["array_options"] or {})}


def _per_sample_cam(probe, variables, x, A, A32, G32, result, keys, method, common, own):
    """A keyed method's CamResult (B, ...), each sample explained alone (a batch of one,
    vmapped) with its own key from ``keys`` (B,)."""

    def one(x1, a, a32, g32, res, k):
        x1, a, a32, g32, res = jax.tree.map(lambda v: v[None], (x1, a, a32, g32, res))
        weights = forward_weights(probe, variables, x1, a, res, method, key=k, **common, **own)
        weights = None if weights is None else _at_least_f32(weights)
        out = cams.cam(a32, g32, method, weights=weights, key=k, **_merged(own))
        return jax.tree.map(lambda v: v[0], out)

    return jax.vmap(one)(x, A, A32, G32, result, keys)


_STEP_STATIC = (
    "probe",
    "method",
    "target",
    "score",
    "count",
    "chunk_size",
    "num_classes",
    "keep_importance",
    "options",
)


def _step(state, probe: LayerProbe, variables, x, y, valid, *, num_classes: int, **kwargs):
    """One step: :func:`batch_stats` (``kwargs`` are its keywords) and the statistics
    update. Returns (new state, per-sample); with a tuple of methods, ``state`` and both
    outputs are tuples, one entry per method. Jitted as :data:`analysis_step`."""
    out = batch_stats(probe, variables, x, y, valid, **kwargs)
    if isinstance(kwargs.get("method", "gradcam"), str):
        stats, per = out
        return merge(state, from_batch(stats, num_classes)), per
    new = tuple(merge(s, from_batch(b, num_classes)) for s, (b, _) in zip(state, out))
    return new, tuple(per for _, per in out)


# One jitted step: probe, CAM, statistics update. Returns (new state, per-sample); with a
# tuple of methods, ``state`` and both outputs are tuples, one entry per method.
analysis_step = jax.jit(_step, static_argnames=_STEP_STATIC)


# Per-sample fields that do not depend on the CAM method, and those that do.
_SHARED_FIELDS = ("score", "label", "prediction", "counted", "valid", "nonfinite", "reached")
_METHOD_FIELDS = ("cam_max", "cam_min", "importance")


@functools.partial(jax.jit, static_argnames=_STEP_STATIC)
def _pass_step(states, probe, variables, x, y, valid, offset=None, **kwargs):
    """:func:`analysis_step` for a tuple of methods, as :func:`analyze` runs it: the
    per-sample outputs come without duplicates, ``(shared, per_method)``: one dict of the
    fields every method shares (label, score, ...), and per method a dict of its own
    (cam_max, cam_min and, with ``keep_importance``, importance). With a ``key``,
    ``offset`` () int32 counts the valid samples of the earlier batches: a valid row's
    index is its position among all valid samples of the pass. Returns (new states,
    per-sample, the next offset or None)."""
    index = None
    if offset is not None:
        index = offset + jnp.cumsum(valid.astype(jnp.int32)) - 1
        offset = offset + jnp.sum(valid.astype(jnp.int32))
    new, pers = _step(states, probe, variables, x, y, valid, index=index, **kwargs)
    shared = {f: getattr(pers[0], f) for f in _SHARED_FIELDS}
    own = tuple(
        {f: getattr(p, f) for f in _METHOD_FIELDS if getattr(p, f) is not None} for p in pers
    )
    return new, (shared, own), offset


@jax.jit
def _stack_chunk(items):
    """Per-batch outputs (a list of equal pytrees, leaves (B, ...)) -> one array per leaf,
    (len(items), B, ...). Stacking on a new axis keeps a batch-sharded axis as it is."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *items)


# Per-sample outputs come to the host once per chunk of batches (see analyze).
_FETCH_EVERY = 32
_IN_FLIGHT_BYTES = 256 << 20


class _SampleFetcher:
    """Keeps the per-sample outputs of :func:`_pass_step` on the device and brings them to
    the host one chunk of batches at a time, with no host synchronisation in between.

    Every ``every`` batches, one jitted stack makes one array per field of the chunk and
    its copy to the host starts at once (asynchronously); the host reads it at the end of
    the next chunk (or of the pass), when it is long done. At most two chunks are in
    flight, which also bounds how far the host runs ahead of the device (their inputs).
    The non-finite check runs on each chunk as it is read and names the first bad batch.
    A short last chunk is padded (repeating its last batch) to a power of two, so the
    stack compiles for a few chunk lengths only; the padding rows are dropped.
    With several processes, each holds only its devices' rows of a chunk: ``replicated``
    (a sharding over all devices) copies the chunk to every process first, so every
    process reads every sample.
    """

    def __init__(self, every: int, layer: str, replicated: Any = None):
        self.every, self.layer, self.replicated = every, layer, replicated
        self.ids: list[int] = []  # batch indices of the open chunk
        self.items: list = []  # their device outputs
        self.in_flight: tuple[list[int], Any] | None = None
        self.read: list = []  # host chunks: (shared, per_method), rows trimmed
        self.reached = 0  # the most grid positions a valid sample's gradient reached

    def add(self, i: int, out) -> None:
        self.ids.append(i)
        self.items.append(out)
        if len(self.items) >= self.every:
            self.flush()

    def flush(self) -> None:
        if self.items:
            n = len(self.items)
            padded = min(self.every, 1 << (n - 1).bit_length())
            chunk = _stack_chunk(self.items + [self.items[-1]] * (padded - n))
            if self.replicated is not None:
                chunk = jax.device_put(chunk, self.replicated)
            for leaf in jax.tree.leaves(chunk):
                if leaf.is_fully_addressable or leaf.is_fully_replicated:
                    leaf.copy_to_host_async()
            ids, self.ids, self.items = self.ids, [], []
        else:
            ids, chunk = None, None
        self._read()
        if ids is not None:
            self.in_flight = (ids, chunk)

    def finish(self) -> None:
        self.flush()
        self._read()

    def _read(self) -> None:
        if self.in_flight is None:
            return
        ids, chunk = self.in_flight
        self.in_flight = None
        n = len(ids)
        shared, own = jax.tree.map(lambda a: a[:n].reshape(-1, *a.shape[2:]), jax.device_get(chunk))
        nonfinite = shared["nonfinite"].reshape(n, -1).sum(axis=1)
        for i, bad in zip(ids, nonfinite):
            if bad:
                raise FloatingPointError(
                    f"batch {i}: {int(bad)} sample(s) have non-finite activations or gradients "
                    f"at layer {self.layer!r}; check the inputs and the parameters"
                )
        reached = shared["reached"][shared["valid"]]
        self.reached = max(self.reached, int(reached.max(initial=0)))
        self.read.append((shared, own))

    def samples(self, j: int) -> dict[str, np.ndarray]:
        """Method ``j``'s per-sample values of the valid rows, in input order: new arrays
        (each method its own copy of the shared fields). A chunk with no padding row is
        concatenated as it is, so a value is copied once (twice in a padded chunk)."""
        chunks = [({**shared, **own[j]}, shared["valid"]) for shared, own in self.read]
        first = chunks[0][0]
        return {
            f: np.concatenate([c[f] if v.all() else c[f][v] for c, v in chunks])
            for f in PerSample._fields
            if f in first and f not in ("valid", "nonfinite", "reached")
        }


class Analysis(NamedTuple):
    """The result of :func:`analyze`: the final state (mergeable), its summary, and the
    per-sample scalars of valid samples as NumPy arrays (N,) in input order (with
    ``bins=``, ``samples['target_value']`` too)."""

    state: Stats
    summary: Summary
    samples: dict[str, np.ndarray]

    def percentiles(self, which: str = "cam_max", qs=DEFAULT_PERCENTILES) -> dict[int, float]:
        """Percentiles of a per-sample scalar, keyed by the percentile it really is."""
        if which not in self.samples:
            raise KeyError(
                f"no per-sample values named {which!r}; the names are: "
                f"{', '.join(self.samples) or '(none)'}"
            )
        values = self.samples[which]
        if values.size == 0:
            raise ValueError(f"no samples were analysed, so {which} has no percentiles")
        return percentiles(values, qs)


# --------------------------------------------------------------------------- inputs


def _check_keys(keys: Any, sizes: tuple[int, ...] = (2, 3)) -> tuple[str, ...]:
    if (
        isinstance(keys, str)
        or not isinstance(keys, Sequence)
        or len(keys) not in sizes
        or not all(isinstance(k, str) for k in keys)
    ):
        shapes = " or ".join(
            ("(image key, label key)", "(image key, label key, mask key)")[: len(sizes)]
        )
        raise ValueError(f"keys must be {shapes}, strings; got keys={keys!r}")
    return tuple(keys)


def _record_error(i: int, x: Any, y: Any) -> ValueError:
    return ValueError(
        f"batch {i} is one record, not a batch: its label {y!r} is a scalar (input shape "
        f"{np.shape(x)}). `batches` looks like a source of records (tfds.data_source, a "
        "grain MapDataset, a list of dicts); batch it first: analyze(probe, variables, "
        "ifa_jax.analysis.record_batches(source, batch_size, keys=(image key, label key)), "
        "...)"
    )


def _record_fields(record: Any, j: int, keys: tuple[str, ...]) -> tuple[Any, Any]:
    """(image, label) of record ``j``: a dict read with ``keys``, or a pair."""
    if isinstance(record, Mapping):
        require_keys(
            f"record {j}",
            record,
            keys,
            "pass keys=(image key, label key) to record_batches, naming its entries",
        )
        image, label = record[keys[0]], record[keys[1]]
    elif isinstance(record, (tuple, list)) and len(record) == 2:
        image, label = record
    else:
        raise ValueError(
            f"record {j} is a {type(record).__name__}; a record is a dict with "
            f"the keys {keys[0]!r} and {keys[1]!r} (see keys=) or a pair "
            "(image, label)"
        )
    if np.ndim(label) > 1 or np.size(label) != 1:
        raise ValueError(
            f"record {j}: its label has shape {np.shape(label)}, not one value: the source "
            "holds batches, not single records; pass those batches to analyze directly "
            "(and a one-hot label must become a class index first)"
        )
    return image, label


def _record_targets(labels: list, what: str) -> np.ndarray:
    """Labels of records -> (N,): int32 class indices (:func:`ifa_jax.inputs.as_labels`), or
    float targets kept as floats (a regression target: analyse it with ``bins=``)."""
    y = np.asarray(labels).reshape(len(labels))
    if np.issubdtype(y.dtype, np.floating):
        return y
    return as_labels(y, what=what)


@dataclasses.dataclass(frozen=True, eq=False)
class RecordBatches:
    """Fixed-size :class:`ifa_jax.inputs.Batch` es ``(x: (B, *spatial, C) float32, y: (B,),
    mask: (B,))`` read from a random-access source of single records. Build it with
    :func:`record_batches`. Sized (``len`` is the number of batches, so the progress bar of
    :func:`analyze` shows a total) and re-iterable; reads the records batch by batch."""

    source: Any
    batch_size: int
    keys: tuple[str, ...] = DEFAULT_KEYS
    spatial_ndim: int | None = None
    drop_remainder: bool = False
    shard_index: int = 0
    shard_count: int = 1

    def __len__(self) -> int:
        n, step = len(self.source), self.batch_size * self.shard_count
        return n // step if self.drop_remainder else -(-n // step)

    def _read(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        fields = [_record_fields(self.source[j], j, self.keys) for j in range(lo, hi)]
        what = f"records {lo}..{hi - 1}"
        x = as_images(
            [np.asarray(im) for im, _ in fields], spatial_ndim=self.spatial_ndim, what=what
        )
        return x, _record_targets([label for _, label in fields], f"{what} labels")

    def __iter__(self) -> Iterator[Batch]:
        n, b = len(self.source), self.batch_size
        for step in range(len(self)):
            lo = step * b * self.shard_count + self.shard_index * b
            hi = min(lo + b, n)
            # An empty share (the last global batch of a multi-process pass) still yields a
            # batch of padding, shaped like record 0, so every process steps alike.
            x, y = self._read(lo, hi) if hi > lo else self._read(0, 1)
            k = max(hi - lo, 0)
            out_x = np.zeros((b, *x.shape[1:]), x.dtype)
            out_y = np.zeros(b, y.dtype)
            out_x[:k], out_y[:k] = x[:k], y[:k]
            yield Batch(out_x, out_y, np.arange(b) < k)


def record_batches(
    source: Any,
    batch_size: int,
    *,
    keys: Sequence[str] = DEFAULT_KEYS,
    spatial_ndim: int | None = None,
    drop_remainder: bool = False,
    shard_index: int | None = None,
    shard_count: int | None = None,
) -> RecordBatches:
    """Batches ``(x, y, mask)`` for :func:`analyze` from any random-access source of records.

    ``source`` has ``len(source)`` and ``source[i] -> one record``: ``tfds.data_source(...)``
    (records ``{'image': (H, W, C) uint8, 'label': int}``), a grain ``MapDataset``, or a
    plain list. A record is a dict read with ``keys=(image key, label key)`` or a pair
    ``(image, label)``. Images become channels-last float32 in [0, 1] with
    :func:`ifa_jax.inputs.as_images` (uint8 / 255; an (H, W) image gets a channel axis;
    ``spatial_ndim`` as there); all records must share one image size. Integer labels become
    int32 class indices (:func:`ifa_jax.inputs.as_labels`); float labels stay floats, a
    regression target for ``analyze(..., bins=...)``. Order is the source's; the last short
    batch is padded with ``mask=False`` rows (or dropped with ``drop_remainder``), so every
    batch has ``batch_size`` rows and the step compiles once. ``shard_index`` /
    ``shard_count`` (default: this process of ``jax.process_count()``) cut every global
    batch of ``batch_size * shard_count`` records as :func:`ifa_jax.inputs.batches` does.
    """
    if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
        raise ValueError(
            f"source is a {type(source).__name__}, which has no len() and "
            "random access source[i]; give a sized, indexable source of "
            "records (e.g. tfds.data_source(...) or list(records))"
        )
    if isinstance(source, Mapping):
        raise ValueError(
            "source is a dict (one batch or one record?); give a sequence of "
            "records, e.g. [{'image': ..., 'label': ...}, ...]"
        )
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    keys = _check_keys(keys, sizes=(2,))
    shard_index, shard_count = shard(shard_index, shard_count)
    return RecordBatches(
        source,
        int(batch_size),
        keys,
        spatial_ndim,
        drop_remainder,
        int(shard_index),
        int(shard_count),
    )


def quantile_bins(values: Any, n: int) -> np.ndarray:
    """Edges (n + 1,) float64 at the quantiles 0, 1/n, ..., 1 of ``values``, a sample of
    float targets (e.g. the training targets): ``analyze(..., bins=quantile_bins(y, 4))``
    then puts about a quarter of that sample in each bin. Tied quantiles (targets with few
    distinct values) are merged, with a warning, so fewer than n bins may come back."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n (the number of bins) must be a positive int; got {n!r}")
    v = np.asarray(values, np.float64).ravel()
    if v.size == 0:
        raise ValueError("values is empty; give a sample of the targets to bin")
    if not np.isfinite(v).all():
        raise ValueError(
            f"values holds {int(np.sum(~np.isfinite(v)))} non-finite value(s); "
            "drop them before computing the bins"
        )
    edges = np.quantile(v, np.linspace(0.0, 1.0, n + 1))
    unique = np.unique(edges)
    if unique.size < 2:
        raise ValueError(f"all {v.size} values equal {v[0]:g}; there is nothing to bin")
    if unique.size < edges.size:
        warnings.warn(
            f"values has tied quantiles (few distinct values): {unique.size - 1} "
            f"bins instead of {n}",
            stacklevel=2,
        )
    return unique


def _check_bins(bins: Any) -> np.ndarray:
    fix = (
        "bins= takes C+1 finite, strictly increasing bin edges (C bins), e.g. "
        "bins=ifa_jax.analysis.quantile_bins(train_targets, 4)"
    )
    try:
        edges = np.asarray(bins, np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{fix}; got bins={bins!r}") from None
    if (
        edges.ndim != 1
        or edges.size < 2
        or not np.isfinite(edges).all()
        or np.any(np.diff(edges) <= 0)
    ):
        raise ValueError(f"{fix}; got bins={bins!r}")
    return edges


def _bin_targets(y: np.ndarray, valid: np.ndarray, edges: np.ndarray, i: int) -> np.ndarray:
    """Target values y (B,) -> bin indices (B,) int32 in [0, C): bin c holds
    edges[c] <= y < edges[c + 1]; values below edges[1] go to bin 0, from edges[-2] up to
    the last bin (np.digitize on the inner edges)."""
    if not (np.issubdtype(y.dtype, np.floating) or np.issubdtype(y.dtype, np.integer)):
        raise ValueError(
            f"batch {i}: with bins=, labels must be real target values; got dtype {y.dtype}"
        )
    bad = valid & ~np.isfinite(y)
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"batch {i}: target value {y[j]} (sample {j}) is not finite; drop "
            "it or mask it (valid=False)"
        )
    return np.digitize(y, edges[1:-1]).astype(np.int32)


def _label_dtype_error(i: int, dtype: np.dtype) -> ValueError:
    if np.issubdtype(dtype, np.floating):
        return ValueError(
            f"batch {i}: labels have dtype {dtype}, a float target (regression); pass bins= "
            "(C+1 increasing edges, e.g. bins=ifa_jax.analysis.quantile_bins(train_targets, "
            "4)) to analyse per bin of the target, and target= the output to explain. Class "
            "indices stored as floats: convert them with ifa_jax.inputs.as_labels"
        )
    return ValueError(
        f"batch {i}: labels must be integers (or float targets with bins=); got dtype {dtype}"
    )


def _is_output_target(target: Any) -> bool:
    """An int output index or a callable objective (what a binned target needs)."""
    index = isinstance(target, (int, np.integer)) and not isinstance(target, (bool, np.bool_))
    return index or (callable(target) and not isinstance(target, str))


def _replicated(sharding: jax.sharding.Sharding) -> jax.sharding.NamedSharding:
    """A sharding that copies an array to every device of ``sharding``."""
    if isinstance(sharding, jax.sharding.NamedSharding):
        mesh = sharding.mesh
    else:
        devices = sorted(sharding.device_set, key=lambda d: d.id)
        mesh = jax.sharding.Mesh(np.array(devices), ("devices",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def _cast_floating(variables, dtype: np.dtype):
    """``variables`` with every floating leaf cast to ``dtype`` (integer leaves, e.g. step
    counters, unchanged)."""

    def cast(leaf):
        leaf = jnp.asarray(leaf)
        return leaf.astype(dtype) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf

    return jax.tree.map(cast, variables)


def _length(batches: Any) -> int | None:
    try:
        return len(batches)
    except TypeError:  # no __len__ (a generator), or one that refuses (unknown cardinality)
        return None


def check_layer_methods(methods: Sequence[str]) -> None:
    """Refuse methods of a kind other than ``"layer"`` (RefineCAM, FullGrad, SESS, ...),
    naming the fix: the analysis is of one layer's channel contributions."""
    for m in methods:
        spec = cams.get_method(m)
        if spec.kind != "layer":
            maps = "several layers" if spec.kind == "layers" else "the whole model"
            raise ValueError(
                f"{spec.name} is a method of kind {spec.kind!r}: it maps {maps} to one map "
                "without channels, so it has no channel contributions to analyse; the "
                f"analysis takes methods of kind 'layer' ({', '.join(cams.LAYER_METHODS)}). "
                f"Use ifa_jax.explain(probe, variables, x, target, {spec.name!r}) for its maps"
            )


def _check_method_options(
    methods: Sequence[str], method_options: Any
) -> tuple[tuple, dict[str, dict[str, Any]]]:
    """``{method: {option: value}}`` -> (static, arrays) for :func:`batch_stats`: the
    hashable options of each method named (defaults filled in) as sorted pairs, and the
    array-valued ones, traced. Unknown methods, methods not analysed, unknown options
    and unhashable values raise, naming the fix."""
    if method_options is None:
        return (), {}
    if not isinstance(method_options, Mapping):
        raise ValueError(
            "method_options must be a dict {method: {option: value}}, e.g. "
            f"{{'gradcam++': {{'eps': 1e-7}}}}; got {type(method_options).__name__}"
        )
    static, arrays = [], {}
    given_per_method = cams.options_per_method(
        method_options.items(), methods, among="the methods analysed", add_to="method="
    )
    for m, given in given_per_method.items():
        for option, value in given.items():
            if isinstance(value, (jax.Array, np.ndarray)):
                continue
            try:
                hash(value)
            except TypeError:
                raise ValueError(
                    f"analyze compiles {m} with its options as constants, so {option}= must "
                    "be hashable (a number, string, None, tuple or function) or an array, "
                    f"which is traced; got {value!r}"
                ) from None
        items, traced = split_options(m, given)
        static.append((m, items))
        if traced:
            arrays[m] = traced
    return tuple(static), arrays


def analyze(
    probe: LayerProbe,
    variables,
    batches: Iterable,
    *,
    num_classes: int | None = None,
    method: str | tuple[str, ...] = "gradcam",
    target: Any = "label",
    score: str = "logit",
    count: str | None = None,
    chunk_size: int = 16,
    sharding=None,
    progress: bool = True,
    total: int | None = None,
    keep_importance: bool = False,
    batch_size: int | None = None,
    keys: Sequence[str] = DEFAULT_KEYS,
    bins: Any = None,
    mesh: Any = None,
    compute_dtype: Any = None,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    key: Array | None = None,
) -> Analysis | dict[str, Analysis]:
    """One pass over ``batches``: tuples ``(x, y)`` or ``(x, y, valid)``,
    :class:`ifa_jax.inputs.Batch` es ``(x, y, mask)``, or dicts.

    A dict batch is read with ``keys=(image key, label key)`` (default ``('image',
    'label')``), its ``valid`` mask from a third entry of ``keys`` or else from ``'mask'``
    when present. Rows with ``valid``/``mask`` False are zeroed and never counted. ``x`` goes
    to the model as it is (convert uint8 images with :func:`ifa_jax.inputs.as_images`):
    integer inputs of rank >= 3 warn (:class:`IntegerInputWarning`, a dtype check). A
    random-access source of single records (``tfds.data_source``, a grain ``MapDataset``)
    is not a sequence of batches: wrap it in :func:`record_batches` (given one, this
    raises an error that says so); a :class:`~ifa_jax.inputs.Dataset` or
    :class:`~ifa_jax.runner.data.TfdsSource` goes through :func:`ifa_jax.inputs.batches`. The
    progress bar's ``total`` defaults to ``len(batches)`` when it has one.

    ``method`` names one CAM method (returns an :class:`Analysis`) or a tuple of methods
    (returns ``{method: Analysis}``): every method's statistics come from the same single
    probe call per batch, so analysing four methods costs one model pass, not four.
    ``count`` is ``'correct'`` (default: only correctly classified samples count) or
    ``'all'``. Only methods of kind ``"layer"`` (:data:`ifa_jax.cams.LAYER_METHODS`) are
    analysed: the statistics are of one layer's channel contributions.

    ``method_options`` gives methods their options over the defaults, ``{method:
    {option: value}}`` (e.g. ``{'gradcam++': {'eps': 1e-7}, 'finercam': {'alpha':
    0.5}}``), validated as :func:`ifa_jax.cams.method_options` does; as in
    :func:`ifa_jax.explain`, hashable values are compiled as constants and arrays (the
    classic CAM's ``head=W``) are traced, so a new array does not recompile the step.
    ``key`` (``jax.random.key(seed)``) is required by the methods that draw random numbers
    (randomcam, sscam, smoothgradcam++) and ignored by the others. Sample n of the pass
    (row n of ``samples``: the n-th valid sample in input order, from 0) is explained on
    its own with the key ``jax.random.fold_in(key, n)``, i.e. exactly as
    ``explain(probe, variables, x[n:n+1], y[n:n+1], method, key=fold_in(key, n))``: its
    draws do not depend on the batch size, the padding, the devices or the other methods,
    and its values equal those of any other batching up to float rounding. A keyed method
    runs its model passes per sample (vmapped), which costs no more passes but gives XLA
    batch-of-one work to fuse.

    Float targets (regression): the statistics are per class, so a continuous target is
    cut into C bins of its value and each bin plays the part of a class: IM per bin, the
    variance within a bin, the mean CAM per bin come from the same matrices as for classes,
    so "which channels matter for high vs low targets" reads like "for class a vs b".
    ``bins`` is C+1 increasing edges: bin c holds ``bins[c] <= y < bins[c+1]``, values below
    ``bins[1]`` go to the first bin and values from ``bins[-2]`` up to the last (e.g.
    ``bins=quantile_bins(train_targets, 4)``: quartiles). ``num_classes`` defaults to C.
    With ``bins`` every label is a target value (float or int) to bin; float labels without
    ``bins`` raise an error. ``target`` must name the explained output: an int index (``0``
    for a one-output model) or a callable ``logits -> (B,)``, not ``'label'`` or
    ``'predicted'``. ``count`` defaults to (and must be) ``'all'``: there is no correct
    class. The binning runs on the host before the jitted step, which is the classification
    step, unchanged. ``samples['label']`` holds the bin index, ``samples['target_value']``
    the target, ``samples['score']`` the explained output (the model's prediction for
    ``target=0``); ``samples['prediction']`` (an argmax over outputs) means nothing there.

    The step compiles once: every batch is padded and masked to ``batch_size`` (default:
    the first non-empty batch's size, so a short final batch is fine; pass it when an
    earlier batch is smaller than a later one). Batches with 0 samples are skipped.
    ``sharding`` (e.g. ``NamedSharding(mesh, P('batch'))``) places each batch across
    devices; the statistics are then reduced across devices by XLA and equal the
    single-device ones. ``mesh`` is the short form: a :class:`jax.sharding.Mesh` (the batch
    is split over all its axes) or a device count n (the first n of ``jax.devices()``).
    Every batch is padded (masked rows) to a multiple of the devices it is split over, so
    any batch size works. ``keep_importance`` also keeps every sample's importance vector
    (N, K) in ``samples['importance']`` (for outlier ranking; N * K floats on the host).
    With several processes (``jax.distributed.initialize()``), each
    process passes its own shard of every batch (``inputs.batches(..., shard_index=...)``)
    and ``mesh``/``sharding`` over all processes' devices; the global batch is assembled
    with ``jax.make_array_from_process_local_data`` (the processes' shards in process
    order) and every process gets the same result: the statistics and every sample.

    ``compute_dtype`` (e.g. ``jnp.bfloat16``) runs the model in that dtype: the floating
    leaves of ``variables`` and floating inputs are cast to it, while A, G and the
    forward-pass weights are cast to float32 before the CAMs, so the CAMs, the per-sample
    values and the state are float32. They carry bfloat16's rounding (8 significant bits):
    on a trained MNIST CNN the relative error of IM_c was about 2e-3, that of single
    per-sample values up to a few 1e-2 (``python -m experiments.bench.precision``).
    Labels outside [0, num_classes) (and, with ``target='label'``, labels the model has
    no output for) and non-finite activations or gradients raise errors naming the batch.
    When no valid sample's gradient at the layer reaches any grid position (or only one of
    many), the pass warns once (:class:`ifa_jax.probe.ZeroGradientWarning`) for the
    methods that read G, whose statistics are then all zero.

    The loop never waits for the device batch by batch: the per-sample values (the fields
    every method shares, such as label and score, once; cam_max, cam_min and the
    importance per method) stay on the device and come to the host one chunk of batches
    at a time, as one array per field, copied asynchronously while the next chunk runs.
    A chunk is 32 batches, fewer when a batch's input exceeds 8 MiB (at most 256 MiB of
    inputs per chunk), so the device holds at most two chunks: their inputs, queued ahead,
    and their per-sample values (with ``keep_importance``, 32 x B x K floats per method).
    The non-finite check runs as a chunk is read, so its error (naming the batch and the
    layer) may come up to two chunks after the bad batch, or at the end of the pass.
    """
    single = isinstance(method, str)
    methods = tuple(cams.canonical_method(m) for m in ((method,) if single else method))
    if not methods:
        raise ValueError("method is an empty tuple; name at least one CAM method")
    check_layer_methods(methods)
    static_options, array_options = _check_method_options(methods, method_options)
    key = prng_key(key)
    if num_classes is not None:
        num_classes = positive_int("num_classes", num_classes, "the number of classes")
    chunk_size = positive_int(
        "chunk_size", chunk_size, "channels per model call of ScoreCAM and the like"
    )
    keyed = [m for m in methods if "key" in cams.get_method(m).needs]
    for m in keyed:
        cams.require_key(m, key)
    if not keyed:
        key = None  # nothing draws: the step stays the one without a key
    sharding = batch_sharding(mesh, sharding)
    multiple = batch_multiple(sharding)
    # With several processes, the per-sample outputs and the state are copied to every
    # process (see _SampleFetcher).
    replicated = None
    if sharding is not None and jax.process_count() > 1:
        replicated = _replicated(sharding)
    dtype = floating_dtype("compute_dtype", compute_dtype)
    if dtype is not None:
        variables = _cast_floating(variables, dtype)
    keys = _check_keys(keys)
    edges = None if bins is None else _check_bins(bins)
    if edges is not None:
        if num_classes is None:
            num_classes = len(edges) - 1
        elif num_classes != len(edges) - 1:
            raise ValueError(
                f"num_classes={num_classes} but bins has {len(edges)} edges, "
                f"i.e. {len(edges) - 1} bins; leave num_classes out with bins= "
                "(it is the number of bins)"
            )
        if not _is_output_target(target):
            raise ValueError(
                f"target={target!r} cannot be explained with bins=: the label is a bin of "
                "the target value, not an output index. Pass target= the output to explain: "
                "an int (target=0 for a one-output regression model) or a callable "
                "logits -> (B,)"
            )
        if count == "correct":
            raise ValueError(
                "count='correct' does not apply with bins= (a float target): "
                "there is no correct class. Leave count out or pass "
                "count='all': every valid sample counts in its bin"
            )
    elif num_classes is None:
        raise ValueError(
            "num_classes= is required: the number of classes (with bins=, the number of bins)"
        )
    count = ("all" if edges is not None else "correct") if count is None else count
    one_of("count", count, COUNT_MODES)
    if batch_size is not None and (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise ValueError(
            f"batch_size must be a positive int (the padded batch size) or None; got {batch_size!r}"
        )
    if hasattr(batches, "gather") and hasattr(batches, "input_shape"):
        raise ValueError(
            f"batches is a {type(batches).__name__}, a dataset, not batches; "
            "pass ifa_jax.inputs.batches(ds, batch_size)"
        )
    if total is None:
        total = _length(batches)
    by_label = isinstance(target, str) and target == "label"
    from tqdm.auto import tqdm

    states = None
    offset = None if key is None else np.zeros((), np.int32)  # valid samples so far
    if key is not None and replicated is not None:
        key = jax.device_put(key, replicated)
    size, first_shape, num_outputs = batch_size, None, 0
    first_x: Any = None  # the first batch's shape, for the zero-gradient warning's hint
    grid = 1
    fetcher: _SampleFetcher | None = None
    values: list[np.ndarray] = []  # the valid rows' target values, with bins=

    for i, batch in enumerate(tqdm(batches, total=total, disable=not progress, desc="analyse")):
        bx, by, bvalid = unpack_batch(batch, i, keys)
        if np.ndim(by) == 0:
            raise _record_error(i, bx, by)
        n = np.shape(by)[0]
        if n == 0 and (size is None or jax.process_count() == 1):
            continue  # nothing to analyse (several processes must all step, so pad there)
        if size is None:
            size = n
        x, y, valid = pad_batch(
            bx,
            by,
            bvalid,
            size,
            i,
            size_from="batch_size" if batch_size is not None else "the first batch's size",
            fix="pass batch_size= (the largest batch size) to analyze, and smaller batches "
            "are padded to it",
            multiple=multiple,
        )
        if first_shape is None:
            first_shape = x.shape[1:]
            if x.ndim >= 3:  # images, signals, volumes; not (B, T) token ids
                warn_integer_inputs(
                    x.dtype,
                    f"the inputs of batch {i}",
                    "Convert them first: x / 255 for uint8 images (ifa_jax.inputs.as_images), "
                    "or read records with ifa_jax.analysis.record_batches, which does it.",
                )
        elif x.shape[1:] != first_shape:
            raise ValueError(
                f"batch {i} has input shape {x.shape[1:]} but the first batch had "
                f"{first_shape}; resize the inputs to one shape per pass"
            )
        if edges is not None:
            values.append(y[valid])
            y = _bin_targets(y, valid, edges, i)
        elif not np.issubdtype(y.dtype, np.integer):
            raise _label_dtype_error(i, y.dtype)
        label_range(y, valid, num_classes, i, "pass the right num_classes or fix the labels")
        yv = y[valid]
        # On the host, then one transfer of the three (jnp.asarray would run device ops).
        x_host = np.asarray(x, jax.dtypes.canonicalize_dtype(x.dtype))
        if dtype is not None and jnp.issubdtype(x_host.dtype, jnp.floating):
            x_host = x_host.astype(dtype)
        host = (x_host, y.astype(np.int32), valid)
        if replicated is not None:
            # Each process holds its own shard of the global batch.
            xj, yj, vj = (jax.make_array_from_process_local_data(sharding, a) for a in host)
        else:
            xj, yj, vj = jax.device_put(host, sharding)
        if states is None:
            logits_shape, act_shapes = probe.output_shapes(variables, xj)  # abstract, cached
            num_outputs = logits_shape[-1]
            A_shape = act_shapes[probe.layers[0]]
            if not isinstance(target, str) and not callable(target):
                outputs_in_range(target, num_outputs)  # the jitted step cannot check it
            first_x = jax.ShapeDtypeStruct(xj.shape, xj.dtype)
            grid = int(np.prod(A_shape[1:-1]))
            states = tuple(init(num_classes, A_shape[-1], tuple(A_shape[1:-1])) for _ in methods)
        if by_label and yv.size and yv.max() >= num_outputs:
            # The score would be NaN (take_along_axis out of range) and the check in the
            # probe is skipped under jit: refuse here, on the host.
            raise ValueError(
                f"batch {i}: label {int(yv.max())} has no output in the model, which has "
                f"{num_outputs} outputs, so target='label' can only explain labels in "
                f"[0, {num_outputs - 1}]; fix the labels (or the model), or pass "
                "target='predicted'"
            )
        states, per, offset = _pass_step(
            states,
            probe,
            variables,
            xj,
            yj,
            vj,
            offset,
            num_classes=num_classes,
            method=methods,
            target=target,
            score=score,
            count=count,
            chunk_size=chunk_size,
            keep_importance=keep_importance,
            options=static_options,
            array_options=array_options,
            key=key,
        )
        if fetcher is None:
            # Chunks of at most _FETCH_EVERY batches, fewer for large inputs: the inputs
            # of at most two chunks (about 2 * _IN_FLIGHT_BYTES) wait on the device.
            every = max(1, min(_FETCH_EVERY, _IN_FLIGHT_BYTES // max(1, x.nbytes)))
            fetcher = _SampleFetcher(every, probe.layers[0], replicated)
        fetcher.add(i, per)
    if fetcher is not None:
        fetcher.finish()
    if states is None or fetcher is None:
        raise ValueError("batches is empty (or every batch has 0 samples): nothing to analyse")
    gradient_methods = [m for m in methods if "gradients" in cams.get_method(m).needs]
    if gradient_methods:
        probe.warn_if_blind(
            {probe.layers[0]: fetcher.reached},
            {probe.layers[0]: grid},
            variables,
            first_x,
            over="every sample analysed",
            blank=f"the statistics of {', '.join(gradient_methods)} are all zero (and a "
            "common scale of them degenerate)",
        )
    if replicated is not None:
        states = jax.device_put(states, replicated)
    results = {}
    for j, (m, state) in enumerate(zip(methods, states)):
        samples = fetcher.samples(j)
        if edges is not None:
            samples["target_value"] = np.concatenate(values)
        results[m] = Analysis(state, finalize(state), samples)
    return results[methods[0]] if single else results

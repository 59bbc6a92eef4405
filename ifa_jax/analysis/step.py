"""The pure per-batch step of the analysis: probe one batch, make its CAMs and update the
state (:mod:`ifa_jax.analysis.state`), all in one jitted call (one forward + one vjp for
every method). Per-sample scalars (CAM max/min, score, label, prediction) are small and
returned by the step for the host to keep. Several methods share their work: those with
channel weights (``M_k = w_k A_k``: an entry's ``weights``, or a forward method's) get
their maps from one contraction over A (:func:`ifa_jax.cams.reduce_weighted`), and with
at most as many classes as samples, the methods' batch statistics come from one vmapped
:func:`~ifa_jax.analysis.state.from_batch` (:func:`merge_batches`).

Examples:
    The statistics' inputs of one batch, with the per-sample values:

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
    >>> import jax.numpy as jnp
    >>> from ifa_jax import analysis
    >>> probe = ifa_jax.linen_probe(net, "conv")
    >>> y, valid = jnp.array([0, 2]), jnp.array([True, False])       # the second is padding
    >>> stats, per_sample = analysis.batch_stats(probe, variables, x, y, valid, count="all")
    >>> stats.importance.shape, stats.cam.shape
    ((2, 4), (2, 8, 8))
    >>> stats.counted.tolist(), per_sample.label.tolist()
    ([True, False], [0, 2])
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, TypeAlias

import jax
import jax.numpy as jnp

from ifa_jax import cams
from ifa_jax.analysis.state import BatchStats, Stats, from_batch, merge
from ifa_jax.explaining import callable_target, forward_weights
from ifa_jax.probes import LayerProbe, Target

Array = jax.Array
# A model's variables as its probe takes them (a Flax variables dict, an NNX state).
Variables: TypeAlias = Any
COUNT_MODES = ("correct", "all")


class PerSample(NamedTuple):
    """Per-sample scalars of one batch (B,) each; padding rows have valid=False.
    reached: the grid positions where the sample's gradient G is non-zero (0 when the
    layer gets no gradient: :class:`ifa_jax.probes.ZeroGradientWarning`)."""

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


def _at_least_f32(a: Array) -> Array:
    """bfloat16 / float16 -> float32; float32 and float64 unchanged: CAMs and statistics
    are computed in float32 (at least) whatever dtype the model runs in."""
    return a.astype(jnp.promote_types(a.dtype, jnp.float32))


def batch_stats(
    probe: LayerProbe,
    variables: Variables,
    x: Array,
    y: Array,
    valid: Array,
    *,
    method: str | tuple[str, ...] = "gradcam",
    target: Target = "label",
    score: str = "logit",
    count: str = "correct",
    chunk_size: int = 16,
    keep_importance: bool = False,
    options: tuple = (),
    array_options: Mapping[str, Mapping[str, Array]] | None = None,
    key: Array | None = None,
    index: Array | None = None,
) -> tuple[BatchStats, PerSample] | tuple[tuple[BatchStats, PerSample], ...]:
    """Probe one batch and reduce it to the statistics' inputs. Traceable (jit it).

    target: ``'label'`` (default: explain the ground truth, which for counted samples is
    the prediction), ``'predicted'``, an int, or a callable ``logits -> (B,)``.
    method: one CAM method -> ``(BatchStats, PerSample)``; a tuple of methods -> a tuple
    of such pairs, all from ONE probe call (one forward + one vjp for every method).
    A model run in bfloat16 (variables and x cast) gives A and G in bfloat16: they are cast
    to float32 before the CAMs, so every output is float32.

    options: ``((method, ((name, value), ...)), ...)``, hashable method options (static
    under jit); array_options: ``{method: {name: array}}`` (traced), both keyed by
    canonical name (the analysis pass builds them from its ``method_options``). key: the
    PRNG key of keyed methods; sample n of the batch is explained alone with
    ``fold_in(key, index[n])`` (index (B,) int, default ``arange(B)``), exactly as
    ``explain(x[n:n+1], key=fold_in(key, index[n]))``, so its draws do not depend on the
    batch it sits in.

    Args:
        probe: the model's :class:`~ifa_jax.probes.LayerProbe` (one layer).
        variables: the variables the probe is called with.
        x: inputs (B, *spatial_in, C).
        y: labels (B,) int.
        valid: (B,) bool, False for padding rows.
        method: one CAM method of kind ``"layer"``, or a tuple of them.
        target: what to explain (see above).
        score: ``'logit'`` or ``'probability'``.
        count: ``'correct'`` or ``'all'``.
        chunk_size: channels per model call of the forward methods.
        keep_importance: whether :class:`PerSample` keeps the importances (B, K).
        options: the methods' hashable options (see above).
        array_options: the methods' array options (see above), or None.
        key: a PRNG key, for methods that draw random numbers.
        index: the samples' indices in the pass (B,) int, or None.

    Returns:
        ``(BatchStats, PerSample)`` for one method: importances (B, K), CAMs
        (B, *spatial), labels, counted and valid (B,), and the per-sample values (B,); a
        tuple of such pairs for a tuple of methods.

    Raises:
        ValueError: the probe taps several layers.
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
    outs: dict[int, cams.CamResult] = {}
    weighted: dict[int, Array] = {}  # methods with M_k = w_k A_k: their w (B, K)
    for i, m in enumerate(methods):
        name = cams.canonical_method(m)
        own = {"options": static.get(name, ()), "array_options": arrays.get(name)}
        spec = cams.get_method(name)
        if "key" in spec.needs:
            cams.require_key(name, key)
            assert key is not None
            rows = jnp.arange(x.shape[0]) if index is None else index
            keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, rows)
            outs[i] = _per_sample_cam(
                probe, variables, x, A, A32, G32, result, keys, name, common, own
            )
            continue
        weights = forward_weights(probe, variables, x, A, result, name, **common, **own)
        if weights is None and isinstance(spec, cams.LayerMethod) and spec.weights is not None:
            opts = cams.method_options(spec, _merged(own))
            weights = spec.weights(cams.CamInputs(A32, G32, None), **opts)
        if weights is None:
            outs[i] = cams.cam(A32, G32, name, **_merged(own))
        else:
            weighted[i] = _at_least_f32(weights)
    if weighted:  # one pass over A makes the maps of all of them
        if any(w.shape != A.shape[:1] + A.shape[-1:] for w in weighted.values()):
            shapes = {methods[i]: w.shape for i, w in weighted.items()}
            raise ValueError(f"weights must have shape (B, K) = {A.shape[:1] + A.shape[-1:]}; "
                             f"got {shapes}")  # fmt: skip
        stacked = cams.reduce_weighted(A32, jnp.stack(list(weighted.values()), axis=1))
        outs.update(zip(weighted, stacked))
    pairs = []
    for i in range(len(methods)):
        out = outs[i]
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


def _step(
    state,
    probe: LayerProbe,
    variables: Variables,
    x: Array,
    y: Array,
    valid: Array,
    *,
    num_classes: int,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """One step: :func:`batch_stats` (``kwargs`` are its keywords) and the statistics
    update. Returns (new state, per-sample); with a tuple of methods, ``state`` and both
    outputs are tuples, one entry per method. Jitted as :data:`analysis_step`."""
    out: Any = batch_stats(probe, variables, x, y, valid, **kwargs)
    if isinstance(kwargs.get("method", "gradcam"), str):
        stats, per = out
        return merge(state, from_batch(stats, num_classes)), per
    return tuple(merge_batches(state, [b for b, _ in out], num_classes)), tuple(p for _, p in out)


def merge_batches(
    states: tuple[Stats, ...], batches: list[BatchStats], num_classes: int
) -> tuple[Stats, ...]:
    """Each method's state merged with its batch (one batch of samples, one per method).
    With at most as many classes as samples, :func:`~ifa_jax.analysis.state.from_batch`
    runs for all methods at once (vmapped: one batched matmul per statistic instead of one
    per method); with more, its stacked (methods, C, K) output would be copied apart again
    at more cost than the kernels it saves (XLA's cost analysis: ResNet-18's 1,000
    classes, batch 32)."""
    if len(batches) == 1 or num_classes > batches[0].label.shape[0]:
        return tuple(merge(s, from_batch(b, num_classes)) for s, b in zip(states, batches))
    first = batches[0]
    stacked = BatchStats(
        jnp.stack([b.importance for b in batches]),
        jnp.stack([b.cam for b in batches]),
        first.label,
        first.counted,
        first.valid,
    )
    own = jax.vmap(
        functools.partial(from_batch, num_classes=num_classes),
        in_axes=(BatchStats._make((0, 0, None, None, None)),),  # the samples are shared
    )(stacked)
    return tuple(merge(s, jax.tree.map(lambda v, i=i: v[i], own)) for i, s in enumerate(states))


# One jitted step: probe, CAM, statistics update. Returns (new state, per-sample); with a
# tuple of methods, ``state`` and both outputs are tuples, one entry per method.
analysis_step = jax.jit(_step, static_argnames=_STEP_STATIC)


# Per-sample fields that do not depend on the CAM method, and those that do.
_SHARED_FIELDS = ("score", "label", "prediction", "counted", "valid", "nonfinite", "reached")
_METHOD_FIELDS = ("cam_max", "cam_min", "importance")


@functools.partial(jax.jit, static_argnames=(*_STEP_STATIC, "preprocess", "input_dtype"))
def pass_step(
    states: tuple[Stats, ...],
    probe: LayerProbe,
    variables: Variables,
    x: Array,
    y: Array,
    valid: Array,
    offset: Array | None = None,
    *,
    preprocess: Callable[[Array], Array] | None = None,
    input_dtype: Any = None,
    **kwargs: Any,
) -> tuple[tuple[Stats, ...], tuple[dict[str, Array], tuple[dict[str, Array], ...]], Array | None]:
    """:func:`analysis_step` for a tuple of methods, as the analysis pass runs it: the
    per-sample outputs come without duplicates, ``(shared, per_method)``: one dict of the
    fields every method shares (label, score, ...), and per method a dict of its own
    (cam_max, cam_min and, with ``keep_importance``, importance). With a ``key``,
    ``offset`` () int32 counts the valid samples of the earlier batches: a valid row's
    index is its position among all valid samples of the pass. ``preprocess`` (static: a
    function, hashable) maps x (as it came to the device, e.g. uint8) to the model's input
    in the step, and a floating result is then cast to ``input_dtype`` when given. Returns
    (new states, per-sample, the next offset or None)."""
    if preprocess is not None:
        x = preprocess(x)
    if input_dtype is not None and jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(input_dtype)
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


@functools.partial(jax.jit, static_argnames=(*_STEP_STATIC, "preprocess", "input_dtype"))
def pass_steps(
    states: tuple[Stats, ...],
    probe: LayerProbe,
    variables: Variables,
    xs: Array,
    ys: Array,
    valids: Array,
    offset: Array | None = None,
    **kwargs: Any,
) -> tuple[tuple[Stats, ...], tuple[dict[str, Array], tuple[dict[str, Array], ...]], Array | None]:
    """:func:`pass_step` over k stacked batches in one dispatch (a ``lax.scan``): xs
    (k, B, ...), ys and valids (k, B). The batches are merged in order, as k calls of
    :func:`pass_step` merge them, so the states are the same. Returns (new states, the
    per-sample outputs with leaves (k, B, ...), the next offset or None)."""

    def body(carry, batch):
        states, offset = carry
        x, y, valid = batch
        states, per, offset = pass_step(states, probe, variables, x, y, valid, offset, **kwargs)
        return (states, offset), per

    (states, offset), per = jax.lax.scan(body, (states, offset), (xs, ys, valids))
    return states, per, offset

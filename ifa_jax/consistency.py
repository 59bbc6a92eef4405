"""Consistency of CAM activation levels with the logits, for every class, over a dataset.

The paper's headline evaluation: explain class c for every sample, take the mean of the
rescaled CAM (its activation level a_n), and correlate it with the logit y_c over the
samples. :func:`consistency_levels` computes the levels of every class, method and way of
scaling in one forward pass per batch (the per-class vjps are batched), and
:func:`summarize_consistency` turns them into Pearson / Spearman r and AUROC per class
and their means.

Examples:
    Levels of one method's common scale for 2 classes over 4 samples (as
    :func:`consistency_levels` would return them, written out here), that rise with the
    logit of class 0 and fall with that of class 1:

    >>> import numpy as np
    >>> from ifa_jax.consistency import ConsistencyLevels, summarize_consistency
    >>> logits = np.array([[2.0, 0.0], [1.0, 1.5], [3.0, -1.0], [0.5, 2.0]])
    >>> rows = np.stack([0.1 * logits[:, 0] + 0.2, -0.3 * logits[:, 1]])  # (classes, N)
    >>> levels = ConsistencyLevels(
    ...     np.array([0, 1]), ("gradcam",), rows[:, None, None, :], logits, ("common",)
    ... )
    >>> levels.levels.shape  # (classes, methods, ways of scaling, N)
    (2, 1, 1, 4)
    >>> result = summarize_consistency(levels)
    >>> round(result.per_class["gradcam"]["0"]["common"]["pearson"], 3)
    1.0
    >>> round(result.summary["gradcam"]["common"]["min_pearson"], 3)
    -1.0
    >>> result.summary["gradcam"]["auroc"]
    {'mean': 0.5, 'classes_defined': 2}
"""

from __future__ import annotations

import collections
import contextlib
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ifa_jax import cams, metrics, scale
from ifa_jax._checks import outputs_in_range, warn_integer_inputs
from ifa_jax.analysis import DEFAULT_KEYS
from ifa_jax.analysis._prefetch import prefetched
from ifa_jax.analysis.options import check_prefetch, check_preprocess, preprocess_output
from ifa_jax.inputs import unpack_batch
from ifa_jax.probes import LayerProbe

# The ways a CAM is scaled before its activation level is taken: the common scale, the
# same clipped to [0, 1] as drawn, per-image min-max, and the common scale on a channel
# subset.
LEVELS = ("common", "common_clipped", "per_image", "subset")


@functools.partial(jax.jit, static_argnames=("probe", "methods"))
def class_levels(
    probe: Any,
    variables: Any,
    x: jax.Array,
    classes: jax.Array,
    masks: jax.Array,
    scales: tuple[scale.Scale, ...],
    *,
    methods: tuple[str, ...],
) -> tuple[jax.Array, jax.Array]:
    """CAM activation levels when explaining each of ``classes``, for every method and scaling.

    One forward pass and one batched vjp serve every class and method
    (:meth:`LayerProbe.per_class`). A 'tanh' scale is inverted first
    (:func:`ifa_jax.scale.linear_values`), so the level is linear in the CAM for both
    scale modes.

    Args:
        probe: a :class:`~ifa_jax.probes.LayerProbe` at one layer.
        variables: the model's variables.
        x: (B, *in, C) inputs.
        classes: (n,) int classes.
        masks: (C, K) per-class channel subsets.
        scales: one :class:`ifa_jax.scale.Scale` per method.
        methods: the CAM methods (static).

    Returns:
        (levels (n, methods, len(LEVELS), B) in the order of :data:`LEVELS`, logits
            (B, O)).
    """
    logits, A, G_all = probe.per_class(variables, x, classes)

    def for_class(c, G):
        rows = []
        for m, sc in zip(methods, scales):
            M = cams.contributions(A, G, m)
            L = cams.reduce(M).cam
            rows.append(
                jnp.stack(
                    [
                        metrics.activation_level(scale.linear_values(L, sc)),
                        metrics.activation_level(scale.linear_values(L, sc, clip=True)),
                        metrics.activation_level(scale.minmax_per_image(L)),
                        metrics.activation_level(
                            scale.linear_values(cams.reduce(M, masks[c]).cam, sc)
                        ),
                    ]
                )
            )
        return jnp.stack(rows)

    return jax.vmap(for_class)(jnp.asarray(classes), G_all), logits


class ConsistencyLevels(NamedTuple):
    """Activation levels over a dataset. classes: (n,) the explained classes; methods: the
    CAM methods; levels: (n, len(methods), len(names), N) over the N valid samples in
    input order; logits: (N, O); names: the ways of scaling held (:data:`LEVELS`, or only
    'common' from :func:`common_levels`)."""

    classes: np.ndarray
    methods: tuple[str, ...]
    levels: np.ndarray
    logits: np.ndarray
    names: tuple[str, ...] = LEVELS

    def of(self, c: int, method: str, level: str) -> np.ndarray:
        """The (N,) levels of class ``c`` for one method and way of scaling."""
        i = int(np.flatnonzero(self.classes == c)[0])
        return self.levels[i, self.methods.index(method), self.names.index(level)]


def consistency_levels(
    probe: LayerProbe,
    variables: Any,
    batches: Iterable,
    *,
    scales: Mapping[str, Any],
    masks: Any,
    classes: Sequence[int],
    group: int = 16,
    keys: tuple[str, ...] = DEFAULT_KEYS,
    preprocess: Callable[[jax.Array], jax.Array] | None = None,
    prefetch: int = 2,
) -> ConsistencyLevels:
    """Levels of every class in ``classes`` and method in ``scales`` over ``batches``.

    batches: ``(x, y)`` or ``(x, y, valid)``, ``Batch`` es or dicts read with ``keys`` (as
    :func:`ifa_jax.analysis.analyze` reads them), of one size; padding rows (valid False)
    are dropped. classes: output indices of the model. scales: ``{method:
    Scale}`` (the common scale of each method); masks: (C, K) channel subsets per class
    (for the 'subset' level). ``group`` classes share one forward pass; memory grows with
    group * batch * |A|.

    Args:
        probe: a :class:`~ifa_jax.probes.LayerProbe` at one layer.
        variables: the model's variables.
        batches: the data, as above.
        scales: ``{method: Scale}``, the common scale of each method.
        masks: (C, K) channel subsets per class.
        classes: the output indices explained.
        group: classes per forward pass, >= 1.
        keys: the image, label (and valid) keys of dict batches.
        preprocess: a function ``x -> x`` run (jitted) on the device before the model,
            e.g. ``lambda x: x.astype(jnp.float32) / 255`` for uint8 batches, or None.
        prefetch: batches put on the device by a background thread ahead of the model,
            >= 0 (0: no thread), as in :func:`ifa_jax.analysis.analyze`.

    Returns:
        The :class:`ConsistencyLevels`, levels (n, methods, len(LEVELS), N).

    Raises:
        ValueError: a scale that is not a :class:`~ifa_jax.scale.Scale`, no class,
            group < 1, masks without a row per class, a class outside the outputs, no
            batch, an invalid ``prefetch``, or a ``preprocess`` that is not a function
            or does not return one array of as many rows.

    Warns:
        IntegerInputWarning: integer inputs of rank >= 3 (uint8 images) without
            ``preprocess`` (or integer outputs of it).
    """
    methods = tuple(scales)
    method_scales = tuple(scales[m] for m in methods)
    for m, sc in zip(methods, method_scales):
        if not isinstance(sc, scale.Scale):
            raise ValueError(
                f"scales[{m!r}] is a {type(sc).__name__}, not an ifa_jax.scale.Scale; build "
                "it with scale.common_scale(...) or scale.scale_from_bounds(vmin, vmax)"
            )
    classes = [int(c) for c in classes]
    if not classes:
        raise ValueError("classes is empty; name at least one class to evaluate")
    if group < 1:
        raise ValueError(f"group must be >= 1; got {group}")
    masks = jnp.asarray(masks)
    if masks.ndim != 2 or masks.shape[0] <= max(classes):
        raise ValueError(
            f"masks has shape {masks.shape}; give one channel mask per class, (C, K) with a "
            f"row for every class up to {max(classes)}"
        )

    def levels_of(x):
        outputs_in_range(classes, probe.output_shapes(variables, x)[0][-1])  # cached shapes
        per_group, logits = [], None
        for start in range(0, len(classes), group):
            chunk = jnp.asarray(classes[start : start + group], jnp.int32)
            lv, logits = class_levels(
                probe, variables, x, chunk, masks, method_scales, methods=methods
            )
            per_group.append(lv)
        return jnp.concatenate(per_group), logits

    levels, logits = _over_batches(
        batches, levels_of, axis=-1, keys=keys, preprocess=preprocess, prefetch=prefetch
    )
    return ConsistencyLevels(np.asarray(classes), methods, levels, logits)


def _over_batches(
    batches: Iterable,
    fn,
    *,
    axis: int,
    keys: tuple[str, ...] = DEFAULT_KEYS,
    preprocess: Callable[[jax.Array], jax.Array] | None = None,
    prefetch: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """``fn(x) -> (values, logits (B, O))`` over batches in any form ``analyze`` takes
    (:func:`ifa_jax.inputs.unpack_batch`: tuples, ``Batch`` es, dicts read with ``keys``):
    values concatenated along their batch ``axis`` and logits, valid rows only, on the
    host. As in the analysis pass, a background thread puts the batches on the device up
    to ``prefetch`` ahead (:func:`ifa_jax.analysis._prefetch.prefetched`), ``preprocess``
    (jitted) converts x on the device before ``fn``, and the outputs come to the host
    :data:`_LAG` batches behind the device (copied asynchronously), with no host
    synchronisation per batch."""
    preprocess = check_preprocess(preprocess)
    prefetch = check_prefetch(prefetch)
    convert = None if preprocess is None else jax.jit(preprocess)

    def adapt(i: int, batch: Any) -> tuple[jax.Array, np.ndarray]:
        x, _, valid = unpack_batch(batch, i, keys)
        valid = np.ones(len(x), bool) if valid is None else np.asarray(valid, bool)
        x = jax.device_put(x if isinstance(x, jax.Array) else np.asarray(x))
        if i == 0:  # read in the caller's thread (prefetched), so its warnings reach it
            if preprocess is not None:
                preprocess_output(preprocess, jax.ShapeDtypeStruct(x.shape, x.dtype))
            elif x.ndim >= 3:
                warn_integer_inputs(
                    x.dtype,
                    "the inputs of batch 0",
                    "Convert them first (x / 255 for uint8 images), or on the device: "
                    "preprocess=lambda x: x.astype(jnp.float32) / 255.",
                    stacklevel=None,  # the user's call
                )
        return x, valid

    values, logits_all, valid_all = [], [], []
    pending: collections.deque = collections.deque()  # device outputs not yet read

    def read_oldest() -> None:
        v, logits = jax.device_get(pending.popleft())
        values.append(v)
        logits_all.append(logits)

    source = prefetched(batches, adapt, prefetch)
    with contextlib.closing(source):
        for _, item in source:
            assert item is not None
            x, valid = item
            out = fn(x if convert is None else convert(x))
            for leaf in jax.tree.leaves(out):
                leaf.copy_to_host_async()
            pending.append(out)
            valid_all.append(valid)
            if len(pending) > _LAG:
                read_oldest()
    while pending:
        read_oldest()
    if not values:
        raise ValueError("batches is empty: nothing to evaluate")
    valid = np.concatenate(valid_all)
    return (
        np.compress(valid, np.concatenate(values, axis=axis), axis=axis),
        np.concatenate(logits_all)[valid],
    )


# The host reads a batch's outputs when the device has this many more batches queued, so
# it never waits for the batch it has just dispatched.
_LAG = 2


# --------------------------------------------------------------------------- the jvp path

# Methods whose CAM mass sum(M) over grid and channels is linear in G: it equals <G, T(A)>
# for a tangent T built from the activations alone.
LINEAR_METHODS = ("gradcam", "hirescam", "xgradcam")


def mass_tangent(A: jax.Array, method: str) -> jax.Array:
    """The tangent T (B, *spatial, K) with sum over grid and channels of M = <G, T>.

    HiResCAM: T = A. GradCAM (w_k = grid mean of G_k): T_k = grid mean of A_k, broadcast.
    XGradCAM (w_k = sum(G_k A_k) / (sum(A_k) + eps)): T_k = A_k sum(A_k) / (sum(A_k) + eps).

    Args:
        A: (B, *spatial, K) activations.
        method: one of :data:`LINEAR_METHODS` (or an alias).

    Returns:
        T, of the shape of ``A``.

    Raises:
        ValueError: a method whose CAM mass is not linear in the gradients.
    """
    method = cams.canonical_method(method)
    axes = cams.spatial_axes(A)
    if method == "hirescam":
        return A
    if method == "gradcam":
        return jnp.broadcast_to(jnp.mean(A, axis=axes, keepdims=True), A.shape)
    if method == "xgradcam":
        total = jnp.sum(A, axis=axes, keepdims=True)
        return A * (total / (total + cams.EPS))
    raise ValueError(
        f"{method}'s CAM mass is not linear in the gradients, so it has no jvp path; the "
        f"linear methods are {', '.join(LINEAR_METHODS)} (use consistency_levels)"
    )


@functools.partial(jax.jit, static_argnames=("probe", "methods"))
def class_masses(
    probe: LayerProbe, variables: Any, x: jax.Array, *, methods: tuple[str, ...]
) -> tuple[jax.Array, jax.Array]:
    """CAM mass sum(M) of every method for every output class at once. One forward pass,
    linearised at the layer, and one application of the linear map per method: the class
    count does not change the cost.

    Args:
        probe: a :class:`~ifa_jax.probes.LayerProbe` at one layer.
        variables: the model's variables.
        x: (B, *in, C) inputs.
        methods: linear CAM methods (:data:`LINEAR_METHODS`, static).

    Returns:
        (masses (methods, B, O), logits (B, O)).
    """
    (layer,) = probe.layers
    shapes = jax.eval_shape(lambda: probe.tapped(variables, x, None))[1]
    zeros = jnp.zeros(shapes[layer].shape, shapes[layer].dtype)

    def logits_and_A(delta):
        logits, acts = probe.tapped(variables, x, {layer: delta})
        logits = logits[:, None] if logits.ndim == 1 else logits
        return logits, acts[layer]  # A is recorded before delta is added: no tangent

    (logits, A), linear = jax.linearize(logits_and_A, zeros)
    tangents = jnp.stack([mass_tangent(A, m) for m in methods])
    masses = jax.vmap(lambda t: linear(t)[0])(tangents)  # d logits along T = <G_c, T>
    return masses, logits


def common_levels(
    probe: LayerProbe,
    variables: Any,
    batches: Iterable,
    *,
    scales: Mapping[str, Any],
    classes: Sequence[int] | None = None,
    keys: tuple[str, ...] = DEFAULT_KEYS,
    preprocess: Callable[[jax.Array], jax.Array] | None = None,
    prefetch: int = 2,
) -> ConsistencyLevels:
    """The 'common' activation level of every class from one jvp per method.

    For the linear methods (:data:`LINEAR_METHODS`) and an affine scale (``norm`` or
    ``tanh`` inverted, without ``remove_negative``) the mean of the rescaled CAM is
    ``a * sum(M) / grid + b``, and sum(M) for every class is one directional derivative
    of the logits (:func:`class_masses`). Equals :func:`consistency_levels`' 'common'
    level; the clipped, per-image and subset levels (and the other methods) need the maps
    and so the per-class vjps there. classes: the outputs to keep (default: all).
    batches, keys, preprocess and prefetch as in :func:`consistency_levels`.

    Args:
        probe: a :class:`~ifa_jax.probes.LayerProbe` at one layer.
        variables: the model's variables.
        batches: the data, as for :func:`consistency_levels`.
        scales: ``{method: Scale}`` of linear methods, without ``remove_negative``.
        classes: the outputs to keep (None: all).
        keys: the image, label (and valid) keys of dict batches.
        preprocess: as for :func:`consistency_levels`.
        prefetch: as for :func:`consistency_levels`.

    Returns:
        The :class:`ConsistencyLevels` with the 'common' level only, levels (n, methods,
            1, N).

    Raises:
        ValueError: a scale that is not a :class:`~ifa_jax.scale.Scale` or removes
            negatives, a non-linear method, a class outside the outputs, no batch, or an
            invalid ``preprocess`` or ``prefetch`` (as for :func:`consistency_levels`).

    Warns:
        IntegerInputWarning: as for :func:`consistency_levels`.
    """
    methods = tuple(scales)
    for m in methods:
        sc = scales[m]
        if not isinstance(sc, scale.Scale):
            raise ValueError(f"scales[{m!r}] is a {type(sc).__name__}, not an ifa_jax.scale.Scale")
        if sc.remove_negative:
            raise ValueError(
                f"scales[{m!r}] removes negatives (relu), which is not linear in the CAM; use "
                "consistency_levels for it"
            )
        mass_tangent(jnp.zeros((1, 1, 1)), m)  # refuses a non-linear method up front
    cells: list[int] = []  # the feature grid's size, read on the first batch

    def masses_of(x):
        if not cells:
            A_shape = probe.output_shapes(variables, x)[1][probe.layers[0]]
            cells.append(int(np.prod(A_shape[1:-1])))
        return class_masses(probe, variables, x, methods=methods)

    masses, logits = _over_batches(  # (M, N, O), (N, O)
        batches, masses_of, axis=1, keys=keys, preprocess=preprocess, prefetch=prefetch
    )
    grid = cells[0]
    keep = np.arange(logits.shape[1]) if classes is None else np.asarray(list(classes))
    outputs_in_range(keep, logits.shape[1])
    # In float32, the kept classes only: N x O values per method (12 KB an image at 1,000
    # classes), so float64 temporaries cost more than the model on a small network.
    a = np.array([scales[m].a / grid for m in methods], np.float32)[:, None, None]
    b = np.array([scales[m].b for m in methods], np.float32)[:, None, None]
    levels = (masses[..., keep] * a + b).astype(np.float32, copy=False)  # (M, N, n)
    levels = np.transpose(levels, (2, 0, 1))[:, :, None, :]  # (n, M, 1, N)
    return ConsistencyLevels(keep, methods, levels, logits, ("common",))


class ConsistencySummary(NamedTuple):
    """per_class: ``{method: {class: {level: metrics.consistency(...), 'auroc':
    metrics.auroc(...)}}}`` (classes as strings, JSON-ready); summary: ``{method: {level:
    {mean_pearson, min_pearson, classes_defined}, 'auroc': {mean, classes_defined}}}``.
    Undefined values are None with a reason, never NaN."""

    per_class: dict
    summary: dict


def summarize_consistency(levels: ConsistencyLevels) -> ConsistencySummary:
    """Pearson / Spearman r of level vs logit per class, AUROC of the common level against
    (prediction == c), and their means over the classes where they are defined.

    Args:
        levels: from :func:`consistency_levels` or :func:`common_levels`.

    Returns:
        The :class:`ConsistencySummary`.
    """
    predicted = levels.logits.argmax(-1)
    per_class: dict[str, dict[str, Any]] = {m: {} for m in levels.methods}
    for c in levels.classes.tolist():
        y_c = levels.logits[:, c]
        for m in levels.methods:
            row = {k: metrics.consistency(levels.of(c, m, k), y_c) for k in levels.names}
            row["auroc"] = metrics.auroc(levels.of(c, m, "common"), predicted == c)
            per_class[m][str(c)] = row
    summary: dict[str, dict[str, Any]] = {}
    for m, rows in per_class.items():
        summary[m] = {}
        for k in levels.names:
            rs = [r[k]["pearson"] for r in rows.values() if r[k]["pearson"] is not None]
            summary[m][k] = {
                "mean_pearson": float(np.mean(rs)) if rs else None,
                "min_pearson": float(np.min(rs)) if rs else None,
                "classes_defined": len(rs),
            }
        aucs = [r["auroc"]["auroc"] for r in rows.values() if r["auroc"]["auroc"] is not None]
        summary[m]["auroc"] = {
            "mean": float(np.mean(aucs)) if aucs else None,
            "classes_defined": len(aucs),
        }
    return ConsistencySummary(per_class, summary)


__all__ = [
    "LEVELS",
    "ConsistencyLevels",
    "ConsistencySummary",
    "LINEAR_METHODS",
    "class_levels",
    "class_masses",
    "common_levels",
    "mass_tangent",
    "consistency_levels",
    "summarize_consistency",
]

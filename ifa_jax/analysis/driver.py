"""The analysis pass: :func:`analyze` (one CAM method) and :func:`analyze_methods`
(several from one probe call per batch), thin drivers over the pure pieces: options
checked once (:mod:`~ifa_jax.analysis.options`), each batch adapted
(:mod:`~ifa_jax.analysis.adapters`), :func:`~ifa_jax.analysis.state.init`, the jitted
:func:`~ifa_jax.analysis.step.pass_step` (which merges each batch into the state),
per-sample values fetched per chunk (``ifa_jax.analysis._fetch``) and
:func:`~ifa_jax.analysis.state.finalize`.

Examples:
    Two methods from one probe call per batch:

    >>> import jax
    >>> import flax.linen as nn
    >>> import ifa_jax
    >>> class Net(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         a = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
    ...         return nn.Dense(3, name="head")(a.mean(axis=(1, 2)))
    >>> net = Net()
    >>> x = jax.random.uniform(jax.random.key(0), (6, 8, 8, 1))
    >>> variables = net.init(jax.random.key(1), x)
    >>> import numpy as np
    >>> from ifa_jax import analysis
    >>> y = np.array([0, 1, 2, 0, 1, 2])
    >>> batches = [(np.asarray(x[:3]), y[:3]), (np.asarray(x[3:]), y[3:])]
    >>> probe = ifa_jax.linen_probe(net, "conv")
    >>> results = analysis.analyze_methods(probe, variables, batches, num_classes=3,
    ...     methods=("gradcam", "hirescam"), count="all", progress=False)
    >>> sorted(results)
    ['gradcam', 'hirescam']
    >>> results["hirescam"].summary.im_all.shape, results["gradcam"].summary.seen
    ((4,), 6)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike
from numpy.typing import ArrayLike

from ifa_jax import cams
from ifa_jax._checks import outputs_in_range
from ifa_jax.analysis._fetch import SampleFetcher, chunk_length, stack_chunk
from ifa_jax.analysis._prefetch import prefetched
from ifa_jax.analysis.adapters import (
    DEFAULT_KEYS,
    BatchAdapter,
    DeviceBatch,
    cast_floating,
    length,
)
from ifa_jax.analysis.options import (
    MethodOptions,
    PassOptions,
    check_pass_options,
    preprocess_output,
)
from ifa_jax.analysis.result import Analysis
from ifa_jax.analysis.state import Stats, finalize_all, init
from ifa_jax.analysis.step import Variables, pass_step, pass_steps
from ifa_jax.probes import LayerProbe, Target


def analyze(
    probe: LayerProbe,
    variables: Variables,
    batches: Iterable[Any],
    *,
    num_classes: int | None = None,
    method: str = "gradcam",
    target: Target = "label",
    score: str = "logit",
    count: str | None = None,
    chunk_size: int = 16,
    sharding: jax.sharding.Sharding | None = None,
    progress: bool = True,
    total: int | None = None,
    keep_importance: bool = False,
    batch_size: int | None = None,
    keys: Sequence[str] = DEFAULT_KEYS,
    bins: ArrayLike | None = None,
    mesh: jax.sharding.Mesh | int | None = None,
    compute_dtype: DTypeLike | None = None,
    method_options: MethodOptions | None = None,
    key: jax.Array | None = None,
    preprocess: Callable[[jax.Array], jax.Array] | None = None,
    prefetch: int = 2,
    steps_per_dispatch: int = 1,
) -> Analysis:
    """One pass over ``batches``: tuples ``(x, y)`` or ``(x, y, valid)``,
    :class:`ifa_jax.inputs.Batch` es ``(x, y, mask)``, or dicts.

    A dict batch is read with ``keys=(image key, label key)`` (default ``('image',
    'label')``), its ``valid`` mask from a third entry of ``keys`` or else from ``'mask'``
    when present. Rows with ``valid``/``mask`` False are zeroed and never counted. ``x`` goes
    to the model as it is (convert uint8 images with :func:`ifa_jax.inputs.as_images`, or
    on the device with ``preprocess=``, see below): integer inputs of rank >= 3 warn
    (:class:`IntegerInputWarning`, a dtype check). A random-access source of single
    records (``tfds.data_source``, a grain ``MapDataset``) is not a sequence of batches:
    wrap it in :func:`record_batches` (given one, this
    raises an error that says so); a :class:`~ifa_jax.inputs.Dataset` or
    :class:`~ifa_jax.runner.data.TfdsSource` goes through :func:`ifa_jax.inputs.batches`. The
    progress bar's ``total`` defaults to ``len(batches)`` when it has one.

    ``method`` names one CAM method; :func:`analyze_methods` analyses several (returns
    ``{method: Analysis}``): every method's statistics come from the same single probe
    call per batch, so analysing four methods costs one model pass, not four.
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
    many), the pass warns once (:class:`ifa_jax.probes.ZeroGradientWarning`) for the
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

    Input pipeline: a background thread reads ``batches``, checks and pads each batch and
    puts it on the device (``jax.device_put``) up to ``prefetch`` batches (default 2) ahead
    of the step, so reading the source (a generator's host work, a tfds or grain
    iterator) and the transfer overlap the device's work on the batch before; the step
    itself runs in the calling thread. The order, the results (bit for bit) and the
    errors (the same exception, naming the batch) are those of ``prefetch=0``, which reads
    each batch when the step needs it, without a thread. The batches up to the first
    non-empty one are read in the calling thread, so its warnings reach the caller's
    filters; the progress bar counts the batches read. A pass stopped early (an error,
    KeyboardInterrupt) stops and joins the thread. ``preprocess`` (e.g.
    ``lambda x: x.astype(jnp.float32) / 255``) converts the inputs on the device, in the
    jitted step: x then goes over the bus in the batch's own dtype (uint8 images: a
    quarter of float32's bytes), integer inputs do not warn, and ``compute_dtype`` casts
    the floating output of ``preprocess`` in the step. The step is compiled with
    ``preprocess`` as a constant (it must be hashable, as a function is): define it once,
    since a new function (a ``lambda`` written in a loop, a new ``functools.partial``)
    compiles the step again; a frozen dataclass with ``__call__`` compares by value.
    ``steps_per_dispatch=k`` runs k batches per dispatch of the step (one jitted
    ``lax.scan`` over the k batches stacked on the device; the last fewer than k run one
    by one), for small models on a GPU where the per-step dispatch shows. The batches are
    merged in the same order, so the results equal those of ``k=1`` (bit for bit on CPU);
    it compiles a second step (the scan) and holds k more batches on the device.

    Args:
        probe: the model's :class:`~ifa_jax.probes.LayerProbe` (one layer).
        variables: the variables the probe is called with.
        batches: an iterable of batches (tuples, Batches or dicts; see above).
        method: one CAM method of kind ``"layer"``.
        num_classes: the number of classes C; required unless ``bins`` is given (then
            the number of bins).
        target: ``'label'``, ``'predicted'``, an int or a callable ``logits -> (B,)``.
        score: ``'logit'`` or ``'probability'``.
        count: ``'correct'`` or ``'all'`` (None: ``'correct'``, ``'all'`` with ``bins``).
        chunk_size: channels per model call of the forward methods.
        sharding: where each batch is placed, or None.
        progress: whether to show a progress bar.
        total: the number of batches for the progress bar, or None.
        keep_importance: whether to keep every sample's importances (N, K).
        batch_size: the padded batch size, or None (the first batch's).
        keys: the image and label keys of dict batches (and maybe the mask's).
        bins: C + 1 increasing edges to bin float targets, or None.
        mesh: a :class:`jax.sharding.Mesh` or a device count, or None.
        compute_dtype: the dtype to run the model in, or None.
        method_options: ``{method: {option: value}}`` over the defaults, or None.
        key: a PRNG key, for methods that draw random numbers.
        preprocess: a function ``x -> x`` run on the device in the jitted step before the
            model (x as the batch holds it, e.g. uint8), or None. Define it once.
        prefetch: how many batches are prepared (checked, padded, put on the device) in a
            background thread ahead of the step, >= 0 (0: no thread).
        steps_per_dispatch: batches stepped by one dispatch (a ``lax.scan`` over k
            stacked batches), >= 1.

    Returns:
        An :class:`~ifa_jax.analysis.result.Analysis`: the final state, its summary (C
        classes, K channels: ``im_class`` (C, K), ``covariance`` (K, K), ``cam_mean``
        (C, *spatial), ...) and the per-sample values (N,) of the valid samples.

    Raises:
        TypeError: ``method`` is not one name.
        ValueError: an invalid option, ``preprocess`` not returning a batch, a method of
            another kind, labels outside [0, num_classes), non-finite activations or
            gradients (naming the batch), or a record source given as batches.
        NothingCountedError: no sample was counted.

    Warns:
        MissingClassesWarning: some classes have no counted sample.
        ZeroGradientWarning: no sample's gradient reaches the layer's grid (or one cell
            of it), for the methods that read G.
        IntegerInputWarning: integer inputs of rank >= 3.
    """
    if not isinstance(method, str):
        raise TypeError(
            f"analyze takes one method (a str); got method={method!r}. For several methods "
            "from one probe call per batch use ifa_jax.analysis.analyze_methods(probe, "
            "variables, batches, methods=(...), ...), which returns {method: Analysis}"
        )
    results = analyze_methods(
        probe,
        variables,
        batches,
        methods=(method,),
        num_classes=num_classes,
        target=target,
        score=score,
        count=count,
        chunk_size=chunk_size,
        sharding=sharding,
        progress=progress,
        total=total,
        keep_importance=keep_importance,
        batch_size=batch_size,
        keys=keys,
        bins=bins,
        mesh=mesh,
        compute_dtype=compute_dtype,
        method_options=method_options,
        key=key,
        preprocess=preprocess,
        prefetch=prefetch,
        steps_per_dispatch=steps_per_dispatch,
    )
    return next(iter(results.values()))


def analyze_methods(
    probe: LayerProbe,
    variables: Variables,
    batches: Iterable[Any],
    *,
    methods: Sequence[str],
    num_classes: int | None = None,
    target: Target = "label",
    score: str = "logit",
    count: str | None = None,
    chunk_size: int = 16,
    sharding: jax.sharding.Sharding | None = None,
    progress: bool = True,
    total: int | None = None,
    keep_importance: bool = False,
    batch_size: int | None = None,
    keys: Sequence[str] = DEFAULT_KEYS,
    bins: ArrayLike | None = None,
    mesh: jax.sharding.Mesh | int | None = None,
    compute_dtype: DTypeLike | None = None,
    method_options: MethodOptions | None = None,
    key: jax.Array | None = None,
    preprocess: Callable[[jax.Array], jax.Array] | None = None,
    prefetch: int = 2,
    steps_per_dispatch: int = 1,
) -> dict[str, Analysis]:
    """:func:`analyze` of several CAM methods in one pass: ``{method: Analysis}`` keyed by
    canonical method name, in the order given. Every method's statistics come from the
    same single probe call per batch (one forward + one vjp), so four methods cost one
    model pass, not four; the per-sample values every method shares (label, score, ...)
    come to the host once. The other arguments are :func:`analyze`'s.

    Args:
        probe: the model's :class:`~ifa_jax.probes.LayerProbe` (one layer).
        variables: the variables the probe is called with.
        batches: an iterable of batches, as for :func:`analyze`.
        methods: a tuple of CAM methods of kind ``"layer"``.
        num_classes: as for :func:`analyze`.
        target: as for :func:`analyze`.
        score: as for :func:`analyze`.
        count: as for :func:`analyze`.
        chunk_size: as for :func:`analyze`.
        sharding: as for :func:`analyze`.
        progress: as for :func:`analyze`.
        total: as for :func:`analyze`.
        keep_importance: as for :func:`analyze`.
        batch_size: as for :func:`analyze`.
        keys: as for :func:`analyze`.
        bins: as for :func:`analyze`.
        mesh: as for :func:`analyze`.
        compute_dtype: as for :func:`analyze`.
        method_options: as for :func:`analyze`.
        key: as for :func:`analyze`.
        preprocess: as for :func:`analyze`.
        prefetch: as for :func:`analyze`.
        steps_per_dispatch: as for :func:`analyze`.

    Returns:
        ``{method: Analysis}``, keyed by canonical name in the order given.

    Raises:
        TypeError: ``methods`` is one name (a str).
        ValueError: as :func:`analyze` raises.
        NothingCountedError: no sample was counted.
    """
    if isinstance(methods, str):
        raise TypeError(
            f"methods={methods!r} is one name; pass a tuple of methods, e.g. "
            f"methods=({methods!r},), or use ifa_jax.analysis.analyze(..., method={methods!r})"
        )
    options = check_pass_options(
        methods,
        num_classes=num_classes,
        target=target,
        score=score,
        count=count,
        chunk_size=chunk_size,
        keep_importance=keep_importance,
        batch_size=batch_size,
        keys=keys,
        bins=bins,
        mesh=mesh,
        sharding=sharding,
        compute_dtype=compute_dtype,
        method_options=method_options,
        key=key,
        preprocess=preprocess,
        prefetch=prefetch,
        steps_per_dispatch=steps_per_dispatch,
    )
    if hasattr(batches, "gather") and hasattr(batches, "input_shape"):
        raise ValueError(
            f"batches is a {type(batches).__name__}, a dataset, not batches; "
            "pass ifa_jax.inputs.batches(ds, batch_size)"
        )
    if options.compute_dtype is not None:
        variables = cast_floating(variables, options.compute_dtype)
    total = length(batches) if total is None else total
    return _run_pass(probe, variables, batches, options, progress=progress, total=total)


class _PassShapes(NamedTuple):
    """What the first batch tells about the pass: the model's outputs, the layer's grid
    positions and the input's abstract shape (for the zero-gradient warning's hint)."""

    num_outputs: int
    grid: int
    first_x: jax.ShapeDtypeStruct


def _run_pass(
    probe: LayerProbe,
    variables: Variables,
    batches: Iterable[Any],
    options: PassOptions,
    *,
    progress: bool,
    total: int | None,
) -> dict[str, Analysis]:
    """The loop: each batch adapted, stepped and its per-sample values queued, the device
    never waited on batch by batch; then the states finalized per method."""
    from tqdm.auto import tqdm

    on_device = options.step.get("preprocess") is not None
    adapt = BatchAdapter(
        options.keys,
        options.num_classes,
        options.edges,
        options.batch_size,
        options.multiple,
        None if on_device else options.compute_dtype,  # else cast in the step
        options.sharding,
        multi_process=options.replicated is not None,
        on_device=on_device,
    )
    states: tuple[Stats, ...] = ()
    shapes: _PassShapes | None = None
    fetcher: SampleFetcher | None = None
    offset = None if options.step["key"] is None else np.zeros((), np.int32)  # valid so far
    values: list[np.ndarray] = []  # the valid rows' target values, with bins=
    group: list[tuple[int, DeviceBatch]] = []  # batches waiting for one dispatch
    bar = tqdm(batches, total=total, disable=not progress, desc="analyse")
    source = prefetched(bar, adapt, options.prefetch)
    with contextlib.closing(source):  # an early stop stops the prefetching thread
        for i, b in source:
            if b is None:
                continue
            if shapes is None:
                states, shapes = _first_states(probe, variables, b.x, options)
                every = chunk_length(b.input_bytes)
                fetcher = SampleFetcher(every, probe.layers[0], options.replicated)
            _check_label_outputs(i, b.labels, shapes.num_outputs, options.step["target"])
            if b.target_values is not None:
                values.append(b.target_values)
            assert fetcher is not None
            if options.steps_per_dispatch == 1:
                states, per, offset = pass_step(
                    states, probe, variables, b.x, b.y, b.valid, offset, **options.step
                )
                fetcher.add(i, per)
                continue
            group.append((i, b))
            if len(group) == options.steps_per_dispatch:
                xs, ys, valids = stack_chunk([(g.x, g.y, g.valid) for _, g in group])
                states, per, offset = pass_steps(
                    states, probe, variables, xs, ys, valids, offset, **options.step
                )
                fetcher.add([j for j, _ in group], per)
                group = []
    for i, b in group:  # the last batches, fewer than steps_per_dispatch
        assert fetcher is not None
        states, per, offset = pass_step(
            states, probe, variables, b.x, b.y, b.valid, offset, **options.step
        )
        fetcher.add(i, per)
    if shapes is None or fetcher is None:
        raise ValueError("batches is empty (or every batch has 0 samples): nothing to analyse")
    fetcher.finish()
    _warn_if_blind(probe, variables, options.methods, fetcher.reached, shapes)
    if options.replicated is not None:
        states = jax.device_put(states, options.replicated)
    summaries = finalize_all(states)  # one transfer of every state
    results = {}
    for j, (m, state) in enumerate(zip(options.methods, states)):
        samples = fetcher.samples(j)
        if options.edges is not None:
            samples["target_value"] = np.concatenate(values)
        results[m] = Analysis(state, summaries[j], samples)
    return results


def _first_states(
    probe: LayerProbe, variables: Variables, x: jax.Array, options: PassOptions
) -> tuple[tuple[Stats, ...], _PassShapes]:
    """Empty states (one per method) shaped by the layer's activations for input ``x``
    (after ``preprocess``), from abstract shapes (no model run), and what the pass learns
    of its shapes."""
    model_x = _model_input(x, options.step.get("preprocess"), options.step.get("input_dtype"))
    # abstract, cached; it reads only the shape and dtype of its x
    logits_shape, act_shapes = probe.output_shapes(variables, model_x)  # pyright: ignore[reportArgumentType]
    num_outputs = logits_shape[-1]
    target = options.step["target"]
    if not isinstance(target, str) and not callable(target):
        outputs_in_range(target, num_outputs)  # the jitted step cannot check it
    A_shape = act_shapes[probe.layers[0]]
    grid = tuple(A_shape[1:-1])
    states = tuple(init(options.num_classes, A_shape[-1], grid) for _ in options.methods)
    shapes = _PassShapes(num_outputs, int(np.prod(grid)), model_x)
    return states, shapes


def _model_input(
    x: jax.Array, preprocess: Callable[[jax.Array], jax.Array] | None, dtype: Any
) -> jax.ShapeDtypeStruct:
    """The abstract input the model gets in the step for the device batch ``x``: the
    output of ``preprocess`` (checked to be a batch of as many rows), cast to ``dtype``."""
    out = jax.ShapeDtypeStruct(x.shape, x.dtype)
    if preprocess is None:
        return out
    out = preprocess_output(preprocess, out)
    if dtype is not None and jnp.issubdtype(out.dtype, jnp.floating):
        out = jax.ShapeDtypeStruct(out.shape, dtype)
    return out


def _check_label_outputs(i: int, labels: np.ndarray, num_outputs: int, target: Target) -> None:
    """With target='label', every valid label needs an output of the model: the score
    would be NaN (take_along_axis out of range) and the probe's check is skipped under
    jit, so refuse here, on the host."""
    by_label = isinstance(target, str) and target == "label"
    if by_label and labels.size and labels.max() >= num_outputs:
        raise ValueError(
            f"batch {i}: label {int(labels.max())} has no output in the model, which has "
            f"{num_outputs} outputs, so target='label' can only explain labels in "
            f"[0, {num_outputs - 1}]; fix the labels (or the model), or pass "
            "target='predicted'"
        )


def _warn_if_blind(
    probe: LayerProbe,
    variables: Variables,
    methods: Sequence[str],
    reached: int,
    shapes: _PassShapes,
) -> None:
    """Warn once when no valid sample's gradient reached the layer's grid (or only one
    of many positions), for the methods that read G."""
    gradient_methods = [m for m in methods if "gradients" in cams.get_method(m).needs]
    if gradient_methods:
        layer = probe.layers[0]
        probe.warn_if_blind(
            {layer: reached},
            {layer: shapes.grid},
            variables,
            shapes.first_x,
            over="every sample analysed",
            blank=f"the statistics of {', '.join(gradient_methods)} are all zero (and a "
            "common scale of them degenerate)",
        )

"""The options of an analysis pass, checked once before it starts: :class:`PassOptions`.

Examples:
    The analysis takes methods of one layer only:

    >>> from ifa_jax import analysis
    >>> analysis.check_layer_methods(["gradcam", "scorecam"])      # fine: nothing returned
    >>> analysis.check_layer_methods(["refinecam"])
    Traceback (most recent call last):
        ...
    ValueError: refinecam is a method of kind 'layers': it maps several layers to one map ...
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.typing import DTypeLike
from numpy.typing import ArrayLike

from ifa_jax import cams
from ifa_jax._checks import (
    batch_multiple,
    batch_sharding,
    floating_dtype,
    one_of,
    positive_int,
    prng_key,
    warn_integer_inputs,
)
from ifa_jax._options import split_options
from ifa_jax.analysis.adapters import check_bins, check_keys
from ifa_jax.analysis.step import COUNT_MODES
from ifa_jax.probes import Target

# {method: {option: value}}, e.g. {"gradcam++": {"eps": 1e-7}}
MethodOptions = Mapping[str, Mapping[str, Any]]


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
    methods: Sequence[str], method_options: MethodOptions | None
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


@dataclasses.dataclass(frozen=True)
class PassOptions:
    """The checked options of one pass over ``methods`` (canonical names). ``step`` holds
    the keywords of :func:`ifa_jax.analysis.step.pass_step` (hashable ones static under
    jit). ``edges``: the bin edges of a float target, or None. ``replicated``: with
    several processes, the sharding that copies an array to every process. ``prefetch``:
    how many device batches are prepared ahead of the step (0: none, no thread).
    ``steps_per_dispatch``: batches stepped per dispatch (a ``lax.scan`` over a stack)."""

    methods: tuple[str, ...]
    num_classes: int
    keys: tuple[str, ...]
    edges: np.ndarray | None
    batch_size: int | None
    sharding: jax.sharding.Sharding | None
    multiple: int
    replicated: jax.sharding.Sharding | None
    compute_dtype: np.dtype | None
    step: dict[str, Any]
    prefetch: int = 2
    steps_per_dispatch: int = 1


def check_pass_options(
    methods: Sequence[str],
    *,
    num_classes: int | None,
    target: Target,
    score: str,
    count: str | None,
    chunk_size: int,
    keep_importance: bool,
    batch_size: int | None,
    keys: Sequence[str],
    bins: ArrayLike | None,
    mesh: jax.sharding.Mesh | int | None,
    sharding: jax.sharding.Sharding | None,
    compute_dtype: DTypeLike | None,
    method_options: MethodOptions | None,
    key: jax.Array | None,
    preprocess: Callable[[jax.Array], jax.Array] | None = None,
    prefetch: int = 2,
    steps_per_dispatch: int = 1,
) -> PassOptions:
    """The options of :func:`ifa_jax.analysis.analyze_methods` checked, each error naming
    the fix (see there for their meaning)."""
    names = tuple(cams.canonical_method(m) for m in methods)
    if not names:
        raise ValueError("methods is empty; name at least one CAM method")
    check_layer_methods(names)
    static_options, array_options = _check_method_options(names, method_options)
    key = _pass_key(names, key)
    chunk_size = positive_int(
        "chunk_size", chunk_size, "channels per model call of ScoreCAM and the like"
    )
    edges = None if bins is None else check_bins(bins)
    num_classes, count = _classes_and_count(num_classes, count, edges, target)
    if batch_size is not None and (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise ValueError(
            f"batch_size must be a positive int (the padded batch size) or None; got {batch_size!r}"
        )
    sharding = batch_sharding(mesh, sharding)
    preprocess = check_preprocess(preprocess)
    prefetch = check_prefetch(prefetch)
    steps_per_dispatch = positive_int(
        "steps_per_dispatch",
        steps_per_dispatch,
        "batches stepped by one dispatch of the jitted step (1: one per batch)",
    )
    compute_dtype = floating_dtype("compute_dtype", compute_dtype)
    # With several processes, the per-sample outputs and the state are copied to every
    # process (see ifa_jax.analysis._fetch.SampleFetcher).
    replicated = None
    if sharding is not None and jax.process_count() > 1:
        replicated = _replicated(sharding)
        if key is not None:
            key = jax.device_put(key, replicated)
    step = {
        "num_classes": num_classes,
        "method": names,
        "target": target,
        "score": score,
        "count": count,
        "chunk_size": chunk_size,
        "keep_importance": keep_importance,
        "options": static_options,
        "array_options": array_options,
        "key": key,
    }
    if preprocess is not None:  # x goes to the device as it is; the step converts it
        step["preprocess"] = preprocess
        step["input_dtype"] = compute_dtype
    return PassOptions(
        names,
        num_classes,
        check_keys(keys),
        edges,
        batch_size,
        sharding,
        batch_multiple(sharding),
        replicated,
        compute_dtype,
        step,
        prefetch,
        steps_per_dispatch,
    )


def check_preprocess(preprocess: Any) -> Callable[..., Any] | None:
    """``preprocess`` (None or a hashable callable ``x -> x``, compiled into the step as a
    constant), or a ValueError naming the fix."""
    if preprocess is None:
        return None
    fix = (
        "preprocess= takes a function x -> x run on the device in the jitted step before "
        "the model, e.g. preprocess=lambda x: x.astype(jnp.float32) / 255 (define it once: "
        "a new function compiles the step again)"
    )
    if not callable(preprocess):
        raise ValueError(f"{fix}; got preprocess={preprocess!r}, which is not callable")
    try:
        hash(preprocess)
    except TypeError:
        raise ValueError(
            f"{fix}; got preprocess={preprocess!r}, which is not hashable (the step is "
            "compiled with it as a constant): pass a plain function, a functools.partial "
            "of hashable values (made once) or a frozen dataclass with __call__"
        ) from None
    return preprocess


def preprocess_output(
    preprocess: Callable[..., Any], x: jax.ShapeDtypeStruct
) -> jax.ShapeDtypeStruct:
    """The abstract output of ``preprocess`` for inputs ``x`` (no computation), checked to
    be one array with as many rows; integer outputs of rank >= 3 warn (at the user's line).
    A ValueError names the fix."""
    try:
        out = jax.eval_shape(preprocess, x)
    except Exception as error:
        error.add_note(
            f"(raised by preprocess={preprocess!r}, traced on the inputs x {x.shape} {x.dtype} "
            "of the first batch)"
        )
        raise
    if not isinstance(out, jax.ShapeDtypeStruct) or out.ndim < 1 or out.shape[0] != x.shape[0]:
        raise ValueError(
            f"preprocess must map the inputs x {x.shape} {x.dtype} to the model's inputs, one "
            f"array with as many rows ({x.shape[0]}); it returned {out}. Give a function of "
            "one array, e.g. preprocess=lambda x: x.astype(jnp.float32) / 255"
        )
    if out.ndim >= 3:
        warn_integer_inputs(
            out.dtype,
            "the outputs of preprocess",
            "Convert them in preprocess, e.g. x.astype(jnp.float32) / 255.",
            stacklevel=None,  # the user's call
        )
    return out


def check_prefetch(prefetch: Any) -> int:
    """``prefetch`` as an int >= 0, or a ValueError naming the fix."""
    if isinstance(prefetch, bool) or not isinstance(prefetch, (int, np.integer)) or prefetch < 0:
        raise ValueError(
            "prefetch= is how many batches are prepared (checked, padded and put on the "
            "device) in a background thread ahead of the step: an int >= 0 (0: no thread, "
            f"default 2); got prefetch={prefetch!r}"
        )
    return int(prefetch)


def _pass_key(methods: tuple[str, ...], key: Any) -> jax.Array | None:
    """The PRNG key of the keyed methods (required by them), or None when nothing draws:
    the step stays the one without a key."""
    key = prng_key(key)
    keyed = [m for m in methods if "key" in cams.get_method(m).needs]
    for m in keyed:
        cams.require_key(m, key)
    return key if keyed else None


def _classes_and_count(
    num_classes: Any, count: str | None, edges: np.ndarray | None, target: Target
) -> tuple[int, str]:
    """(num_classes, count) checked; with bin ``edges``, num_classes defaults to the number
    of bins and count to (and must be) 'all'."""
    if num_classes is not None:
        num_classes = positive_int("num_classes", num_classes, "the number of classes")
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
    return num_classes, count

"""Input checks shared by the modules of ifa_jax, each written once with one message.

Private: the public functions of the other modules call these. Only NumPy and JAX are
imported here, so every module may use them (the bottom layer of ``tools/import_graph.py``).

Names: ``valid`` is the padding flag of a batch row (False for padding or masked-out
rows); ``mask`` is always a channel mask (1 keeps a channel).
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer
from jax.experimental import checkify
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def is_traced(*arrays: Any) -> bool:
    """True when any of ``arrays`` is a tracer (inside ``jit``/``vmap``/``grad``): its
    values are unknown, so value checks must be skipped."""
    return any(isinstance(a, Tracer) for a in arrays)


class IntegerInputWarning(UserWarning):
    """Integer inputs (uint8 images 0..255) reach a model that takes them as they are."""


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def outside_stacklevel() -> int:
    """The ``stacklevel`` for a ``warnings.warn`` in the caller of this function that names
    the first frame outside ifa_jax: the user's line, however deep in the package (and
    through however many public wrappers) the warning is raised."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


def warn_integer_inputs(dtype: Any, what: str, fix: str, *, stacklevel: int | None = 3) -> None:
    """Warn (:class:`IntegerInputWarning`) when ``dtype`` is an integer dtype: inputs such
    as uint8 images go to the model as they are, so a model meant for [0, 1] sees values
    up to 255 and every statistic scales with them. A dtype check, never a data scan.
    ``stacklevel=None``: the first frame outside ifa_jax (:func:`outside_stacklevel`)."""
    if jnp.issubdtype(dtype, jnp.integer):
        if stacklevel is None:
            stacklevel = outside_stacklevel()
        warnings.warn(
            f"{what} are integers (dtype {np.dtype(dtype)}) and go to the model as they are: "
            f"images in 0..255 give activations and statistics up to 255 times those of "
            f"[0, 1] inputs. {fix} (If the model takes integers by design, silence this with "
            "warnings.simplefilter('ignore', ifa_jax.analysis.IntegerInputWarning).)",
            IntegerInputWarning,
            stacklevel=stacklevel,
        )


def positive_int(what: str, value: Any, meaning: str = "") -> int:
    """``value`` as an int >= 1, or a ValueError naming ``what`` and the value
    (``meaning`` says what it counts, e.g. "channels per model call")."""
    integral = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not integral or value < 1:
        counts = f" ({meaning})" if meaning else ""
        raise ValueError(f"{what} must be an int >= 1{counts}; got {value!r}")
    return int(value)


def prng_key(key: Any, what: str = "key") -> jax.Array | None:
    """One PRNG key: a typed key (``jax.random.key``, traced or not) or a raw uint32 (2,)
    one (``jax.random.PRNGKey``, wrapped); None stays None; anything else (an int seed, a
    batch of keys) raises naming ``what`` and the fix."""
    if key is None:
        return None
    if isinstance(key, (jax.Array, np.ndarray)):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
            return jnp.asarray(key)
        if key.dtype == np.uint32 and key.shape == (2,):
            return jax.random.wrap_key_data(jnp.asarray(key))
    if hasattr(key, "shape") and hasattr(key, "dtype"):
        got = f"{type(key).__name__} of shape {tuple(key.shape)}, dtype {key.dtype}"
    else:
        got = f"{type(key).__name__} {key!r:.40}"
    raise ValueError(
        f"{what} must be one PRNG key, e.g. {what}=jax.random.key(0) (from a seed: "
        f"jax.random.key(seed)); got {got}"
    )


def one_of(what: str, value: Any, options: Sequence[Any]) -> None:
    """Raise unless ``value`` is one of ``options`` (e.g. ``one_of('score', s, SCORES)``)."""
    if value not in options:
        raise ValueError(f"{what} {value!r} is not one of {tuple(options)}")


def per_sample_values(values: Any, name: str) -> np.ndarray:
    """A finite, non-empty 1-D float64 array (N,) of per-sample values, or a ValueError
    that names the problem and its fix. Booleans count as 0/1."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(
            f"{name} must be a 1-D array (N,); got shape {arr.shape}. "
            "Flatten it or pass one value per sample."
        )
    if arr.size == 0:
        raise ValueError(
            f"{name} is empty; pass at least one value per sample (was any sample analysed?)"
        )
    # jnp.issubdtype also knows bfloat16 (an ml_dtypes type, not a NumPy number).
    if arr.dtype == bool or jnp.issubdtype(arr.dtype, jnp.number):
        arr = arr.astype(np.float64)
    else:
        try:  # an object array of numbers converts; strings and the like do not
            arr = arr.astype(np.float64) if arr.dtype == object else None
        except (TypeError, ValueError):
            arr = None
        if arr is None:
            raise ValueError(f"{name} must be numeric; got dtype {np.asarray(values).dtype}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(
            f"{name} has {bad.size} non-finite value(s) (first at index "
            f"{bad[0]}: {arr[bad[0]]}); drop those samples (e.g. "
            "values[np.isfinite(values)]) or fix them"
        )
    return arr


def _holds_text(value: Any) -> bool:
    """Whether ``value`` is or holds strings (a str, a list of them, a str array)."""
    if isinstance(value, (str, bytes)):
        return True
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "USO" and any(map(_holds_text, value.ravel()))
    if isinstance(value, (list, tuple)):
        return any(map(_holds_text, value))
    return False


def index_targets(target: Any, batch: int, *, indices_only: bool = False) -> jax.Array:
    """Output indices (batch,) int32 from an int or an int array (batch,).

    ``indices_only``: the caller takes nothing else (the metrics), so the error names the
    predicted classes' indices as the fix instead of offering ``'predicted'``."""
    try:
        t = jnp.asarray(target)
    except (TypeError, ValueError):  # strings, ragged lists, objects
        t = None
    if t is None or not jnp.issubdtype(t.dtype, jnp.integer):
        got = f"dtype {t.dtype}" if t is not None else f"{type(target).__name__} {target!r:.60}"
        hint = ""
        if t is None and _holds_text(target):
            hint = "; class names must become indices first, e.g. [names.index(n) for n in target]"
        if indices_only:
            raise ValueError(
                f"target must be integer class indices (an int or an int array of shape "
                f"({batch},)); got {got}{hint}. For the predicted classes pass their "
                "indices, e.g. jnp.argmax(logits, axis=-1)"
            )
        raise ValueError(
            "target must be 'predicted', integer class indices (an int or an int array of "
            f"shape ({batch},)) or a callable logits (B, O) -> (B,); got {got}{hint}"
        )
    if t.ndim == 0:
        t = jnp.full((batch,), t)
    if t.shape != (batch,):
        raise ValueError(
            f"target has shape {t.shape} but the batch has {batch} samples; "
            f"pass one index per sample, shape ({batch},), or a single int"
        )
    return t.astype(jnp.int32)


def shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    """This process's shard of the data: (index, count), defaulting to the JAX process."""
    index = jax.process_index() if shard_index is None else shard_index
    count = jax.process_count() if shard_count is None else shard_count
    if count < 1 or not 0 <= index < count:
        raise ValueError(
            f"need 0 <= shard_index < shard_count; got shard_index={index}, shard_count={count}"
        )
    return index, count


def outputs_in_range(target: Any, num_outputs: int) -> None:
    """Raise when an int target (or any of an int array's) is not an output index.

    Checks concrete values on the host (``np.asarray``: a closed-over jax array inside a
    user's ``jit`` is concrete, but its methods would be traced) and skips a tracer, whose
    values are unknown: :func:`take_target` then handles an out-of-range index on the
    device."""
    if is_traced(target):
        return
    t = np.asarray(target)
    if t.size == 0:
        return
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= num_outputs:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"target index {bad} is out of range: the model has {num_outputs} outputs, "
            f"so targets must lie in [0, {num_outputs - 1}]"
        )


def in_range(target: Any, num_outputs: int) -> jax.Array:
    """Bool, shaped as ``target``: which of the int indices are outputs, in [0, num_outputs),
    with a ``checkify.debug_check`` on all of them (a no-op unless the caller runs under
    :func:`jax.experimental.checkify.checkify`, which then reports the first bad one)."""
    t = jnp.asarray(target)
    ok = (t >= 0) & (t < num_outputs)
    checkify.debug_check(
        jnp.all(ok),
        f"target index {{}} is out of range: the model has {num_outputs} outputs, so "
        f"targets must lie in [0, {num_outputs - 1}]",
        t.ravel()[jnp.argmin(ok.ravel())] if t.size else 0,  # the first bad one
    )
    return ok


def take_target(values: jax.Array, target: jax.Array) -> jax.Array:
    """values (B, O), target (B,) int -> (B,) ``values[n, target[n]]``, and 0 where
    ``target[n]`` is not in [0, O) (no NaN, no wrap-around of negative indices; the
    sample's gradient is then zero), as ``jax.nn.one_hot`` gives a zero row. Eager calls
    refuse such targets before (:func:`outputs_in_range`); under a trace this is what an
    out-of-range index gives, and :func:`in_range`'s check reports it under checkify."""
    ok = in_range(target, values.shape[-1])
    safe = jnp.where(ok, target, 0).astype(jnp.int32)
    picked = jnp.take_along_axis(values, safe[:, None], axis=-1)[:, 0]
    return jnp.where(ok, picked, jnp.zeros((), values.dtype))


def pick_layer(layers: Sequence[str], layer: str | None) -> str:
    """The one layer of ``layers`` (a probe's tapped layers) that ``layer`` names; None
    picks the only layer of a one-layer probe."""
    if layer is None:
        if len(layers) != 1:
            raise ValueError(f"this probe taps several layers {tuple(layers)}; pass layer=...")
        return layers[0]
    if layer not in layers:
        raise ValueError(f"layer {layer!r} is not tapped by this probe; tapped: {tuple(layers)}")
    return layer


def batch_sharding(mesh: Any, sharding: Any) -> Any:
    """The sharding of the batch axis from ``mesh=`` (a :class:`jax.sharding.Mesh`, or a
    device count n: a 1-D mesh ``'batch'`` over ``jax.devices()[:n]``) or ``sharding=``
    (returned as it is). A mesh splits the batch over all of its axes."""
    if mesh is None:
        return sharding
    if sharding is not None:
        raise ValueError(
            "pass mesh= or sharding=, not both; mesh=m means "
            "sharding=NamedSharding(m, PartitionSpec(m.axis_names))"
        )
    if isinstance(mesh, (int, np.integer)) and not isinstance(mesh, (bool, np.bool_)):
        available = jax.device_count()
        if not 1 <= mesh <= available:
            raise ValueError(
                f"mesh={mesh} devices, but {available} {jax.default_backend()} device(s) "
                f"exist; pass 1 to {available} (for host devices, set XLA_FLAGS="
                "--xla_force_host_platform_device_count=N before jax is imported)"
            )
        if jax.process_count() > 1 and mesh != available:
            raise ValueError(
                f"mesh={mesh} with {jax.process_count()} processes: every process must hold "
                f"devices of the mesh; pass mesh={available} (all devices) or a Mesh"
            )
        mesh = Mesh(np.array(jax.devices()[: int(mesh)]), ("batch",))
    if not isinstance(mesh, Mesh):
        raise ValueError(
            f"mesh must be a jax.sharding.Mesh or a device count (int); got {type(mesh).__name__}"
        )
    return NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names)))


def batch_multiple(sharding: Any) -> int:
    """Rows of a (per-process) batch must be a multiple of this to split evenly over the
    devices of ``sharding`` (1 for None). For a :class:`NamedSharding` it is the number of
    shards of the batch axis held by this process; for another sharding, the number of its
    devices held here (a multiple of any split of the batch axis)."""
    if sharding is None:
        return 1
    held = len(sharding.addressable_devices) / len(sharding.device_set)
    if isinstance(sharding, NamedSharding):
        axes = sharding.spec[0] if len(sharding.spec) else None
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        shards = int(np.prod([sharding.mesh.shape[a] for a in axes]))
    else:
        shards = len(sharding.device_set)
    return max(1, round(shards * held))


def pad_batch(
    x: Any,
    y: Any,
    valid: Any,
    size: int,
    i: int,
    *,
    size_from: str,
    fix: str,
    multiple: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batch ``i``: x (n, ...), y (n,) or (n, 1), valid (n,) or None -> the three padded
    to ``size`` rows, rounded up to a multiple of ``multiple`` (the devices the batch is
    split over), with valid=False on the padding. When n > size the error says where
    ``size`` comes from (``size_from``, e.g. "the first batch's size") and ``fix``.

    Rows with valid=False (given or padding) are zeroed, so nothing a masked row holds
    (NaN, an out-of-range label) reaches the model or the statistics.
    """
    x, y = np.asarray(x), np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(
            f"batch {i}: labels have shape {y.shape}; give one label per sample, "
            "shape (B,) or (B, 1)"
        )
    n = len(y)
    valid = np.ones(n, bool) if valid is None else np.asarray(valid, bool)
    if valid.shape != (n,) or len(x) != n:
        raise ValueError(
            f"batch {i}: x has {len(x)} rows, y {n} and valid shape "
            f"{valid.shape}; give all three for the same B samples"
        )
    if not valid.all():
        x = np.where(valid.reshape((-1,) + (1,) * (x.ndim - 1)), x, np.zeros((), x.dtype))
        y = np.where(valid, y, np.zeros((), y.dtype))
    if n > size:
        raise ValueError(f"batch {i} has {n} samples, more than {size_from} {size}; {fix}")
    pad = -(-size // multiple) * multiple - n
    if pad == 0:
        return x, y, valid
    return (
        np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]),
        np.concatenate([y, np.zeros(pad, y.dtype)]),
        np.concatenate([valid, np.zeros(pad, bool)]),
    )


def floating_dtype(what: str, dtype: Any) -> np.dtype | None:
    """``dtype`` (None, a dtype or its name) as a floating NumPy dtype, e.g. bfloat16."""
    if dtype is None:
        return None
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or not jnp.issubdtype(dt, jnp.floating):
        raise ValueError(
            f"{what} must be a floating dtype such as jnp.bfloat16 or jnp.float32 (or None); "
            f"got {dtype!r}"
        )
    return dt


def label_range(y: np.ndarray, valid: np.ndarray, n: int, i: int, fix: str) -> None:
    """Raise when a valid label of batch ``i`` is outside [0, n); ``fix`` says what to do."""
    yv = y[valid]
    if yv.size and (yv.min() < 0 or yv.max() >= n):
        bad = int(yv.min() if yv.min() < 0 else yv.max())
        raise ValueError(f"batch {i}: label {bad} is outside [0, {n}); {fix}")


def require(module: str, extra: str, what: str):
    """Import an optional dependency, or say which extra of ifa_jax installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"{what} needs {module.split('.')[0]}, which is not installed; "
            f"pip install 'ifa_jax[{extra}]'"
        ) from e


def shapes_summary(shapes: Sequence[tuple[int, ...]], limit: int = 5) -> str:
    distinct = list(dict.fromkeys(tuple(s) for s in shapes))
    text = ", ".join(str(s) for s in distinct[:limit])
    more = len(distinct) - limit
    return text + (f" and {more} more" if more > 0 else "")


def stack_same_shape(items: Sequence[np.ndarray], what: str) -> np.ndarray:
    shapes = [np.shape(a) for a in items]
    if len(set(shapes)) > 1:
        raise ValueError(
            f"{what}: images of mixed sizes, shapes {shapes_summary(shapes)}. "
            "Resize them to one size first (e.g. ifa_jax.runner.data.resize_images, or "
            "load_tfds(..., image_size=(H, W)))."
        )
    return np.stack([np.asarray(a) for a in items])


def to_unit_float(x: np.ndarray, what: str) -> np.ndarray:
    """uint8 -> /255, bool -> {0, 1}, float already in [0, 1] -> float32; anything else errors."""
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    if x.dtype == np.bool_:
        return x.astype(np.float32)
    if np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
        if x.size:
            if not np.all(np.isfinite(x)):
                raise ValueError(f"{what}: images contain NaN or inf; clean them first")
            lo, hi = float(x.min()), float(x.max())
            if lo < 0.0 or hi > 1.0:
                raise ValueError(
                    f"{what}: float images must lie in [0, 1]; got range [{lo:g}, {hi:g}]. "
                    "Rescale them first (e.g. x / x.max())."
                )
        return x
    raise ValueError(
        f"{what}: images must be uint8 (0..255), bool or float in [0, 1]; got dtype {x.dtype}. "
        "Rescale them to [0, 1] as float32 first."
    )


def require_keys(what: str, record: Mapping, keys: Sequence[str], fix: str) -> None:
    """Raise naming the keys ``record`` has when one of ``keys`` is missing."""
    for key in keys:
        if key not in record:
            found = ", ".join(repr(k) for k in record) or "(none)"
            raise ValueError(f"{what} is a dict with keys {found} but no {key!r}; {fix}")

"""Internals shared by the probes of every framework (Linen, NNX, Equinox, Haiku, plain
functions, LeGrad's): layer names, the tap that records a layer's output, and model errors
re-raised with their fix."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from flax import errors as flax_errors

Array = jax.Array
# The layer name that asks a probe to pick the model's natural target layer.
AUTO = "auto"


def layer_key(layer: str | Sequence[str]) -> str:
    """A layer path with ``/`` between its parts: ``"layers.3"`` -> ``"layers/3"``."""
    if isinstance(layer, str):
        return layer.strip("/").replace(".", "/")
    return "/".join(layer)


def check_activation(name: str, value: Any) -> None:
    shape = getattr(value, "shape", None)
    if shape is None or not 3 <= len(shape) <= 5:
        what = f"shape {tuple(shape)}" if shape is not None else f"a {type(value).__name__}"
        raise ValueError(
            f"layer {name!r} outputs {what}; a CAM layer must output an array of rank 3-5 "
            "(B, *spatial, K) with 1-3 spatial axes. Choose a convolutional layer "
            "(not a dense layer or a module that returns a tuple)."
        )


def describe(out: Any) -> str:
    """'a tuple of 2', "a dict with keys 'logits', 'features'", 'a Foo with fields ...'."""
    kind = type(out).__name__
    if isinstance(out, Mapping):
        return f"a {kind} with keys {', '.join(repr(k) for k in out)}"
    if hasattr(out, "_fields"):
        return f"a {kind} with fields {', '.join(repr(k) for k in out._fields)}"
    if isinstance(out, (tuple, list)):
        return f"a {kind} of {len(out)}"
    return f"a {kind}"


def _flax_detail(e: Exception) -> str:
    return str(e).split(" (https://")[0]


@contextlib.contextmanager
def explained_errors(x: Array | jax.ShapeDtypeStruct):
    """Re-raise model errors that have a known cause as ValueErrors that name the fix.

    Works under an outer ``jit`` too: these errors are raised while tracing.
    """
    try:
        yield
    except flax_errors.ModifyScopeVariableError as e:
        raise ValueError(
            f"the model updates a variable inside the probe ({_flax_detail(e)}): it runs in "
            "training mode (BatchNorm with use_running_average=False). Pass train=False (or "
            "the model's inference flag) to the probe: linen_probe(model, layer, train=False)"
        ) from e
    except flax_errors.InvalidRngError as e:
        raise ValueError(
            f"the model draws random numbers inside the probe ({_flax_detail(e)}): Dropout "
            "(or another random layer) is active. Pass the model's deterministic/train flag "
            "to the probe: linen_probe(model, layer, train=False) (or deterministic=True)"
        ) from e
    except flax_errors.TraceContextError as e:
        raise ValueError(
            f"the NNX model changes its state inside the probe ({_flax_detail(e)}): "
            "BatchNorm in training mode updates its statistics, Dropout draws random "
            "numbers. Call model.eval() before nnx_probe(model, layer)"
        ) from e
    except flax_errors.ScopeParamShapeError as e:
        raise ValueError(_input_shape_message(x, _flax_detail(e))) from e
    except flax_errors.ScopeCollectionNotFound as e:
        raise ValueError(
            f"the variables lack a collection the model needs ({_flax_detail(e)}); pass the "
            "whole variables dict from model.init, e.g. {'params': ...}, not variables['params']"
        ) from e
    except (ValueError, TypeError) as e:
        if "conv_general_dilated" not in str(e):
            raise
        raise ValueError(_input_shape_message(x, str(e))) from e


def _input_shape_message(x: Array | jax.ShapeDtypeStruct, detail: str) -> str:
    return (
        f"the model does not accept an input of shape {tuple(x.shape)} ({detail}). Inputs "
        "are batched and channels-last, (B, *spatial, C), with the channels the model was "
        "built for: add a missing channel axis with x[..., None], a missing batch axis (one "
        "input) with x[None], or move channels last (NCHW -> NHWC: x.transpose(0, 2, 3, 1))"
    )


def tap_output(
    name: str, path: str, out: Any, acts: dict, deltas: Mapping | None, check_rank: bool = True
) -> Any:
    """What a tapped layer passes on: records its output ``out`` in ``acts[name]`` (once
    per forward pass) and adds ``deltas[name]`` to it when given. ``check_rank=False``
    leaves the rank check to a ``reshape`` (:class:`ifa_jax.probes.tokens.GridTapped`)."""
    if name in acts:
        raise ValueError(
            f"layer {name!r} ({path}) is called more than once per forward pass "
            "(a shared module); tap a module that is called once"
        )
    if check_rank:
        check_activation(name, out)
    acts[name] = out
    delta = None if deltas is None else deltas.get(name)
    return out if delta is None else out + delta


def get_child(parent, key: str):
    if key.isdigit() and isinstance(parent, Sequence):
        return parent[int(key)]
    return getattr(parent, key)


def layer_names(layers: str | Sequence[str] | None) -> tuple[str, ...]:
    if layers is None:
        return (AUTO,)
    names = (layers,) if isinstance(layers, str) else tuple(layers)
    if not names:
        raise ValueError("layers is empty; name at least one layer, e.g. 'conv2'")
    # Dots stay as written (a module may be named "relu.1"); resolve_layer reads them.
    return tuple(n.strip("/") if isinstance(n, str) else layer_key(n) for n in names)

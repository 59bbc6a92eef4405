"""Method options as a jitted function takes them: hashable ones compiled as constants,
arrays traced (shared by explain and the analysis step)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from ifa_jax import cams


def is_array(value) -> bool:
    return isinstance(value, (jax.Array, np.ndarray))


def names_as_tuple(value):
    """A list of strings as a tuple (hashable); any other value as it is."""
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    return value


def split_options(method: str, options: Mapping[str, Any]) -> tuple[tuple, dict]:
    """The method's options as (static, arrays): the hashable ones (defaults filled in) as
    sorted (name, value) pairs, compiled as constants, and the array-valued ones, traced.
    A list of strings (layer names, e.g. FullGrad's layers=) is taken as a tuple."""
    options = {k: names_as_tuple(v) for k, v in options.items()}
    arrays = {k: v for k, v in options.items() if is_array(v)}
    rest = {k: v for k, v in options.items() if k not in arrays}
    items = tuple(sorted(cams.method_options(method, {**rest, **arrays}).items()))
    items = tuple((k, None if k in arrays else v) for k, v in items)
    items = tuple((k, _method_keyed(method, k, v)) for k, v in items)
    try:
        hash(items)
    except TypeError:
        raise ValueError(
            f"explain compiles {method} with its options as constants, so they must be "
            f"hashable (float, int, str, None, a function, a tuple) or arrays; got {dict(items)!r}"
        ) from None
    return items, arrays


def _method_keyed(method: str, name: str, value: Any) -> Any:
    """An option naming another method (its default names one: SESS's base_method,
    RefineCAM's and FinerCAM's base) as a :class:`ifa_jax.cams.MethodName`, so the jit
    cache is keyed on that method's entry too; any other value as it is."""
    default = cams.get_method(method).options.get(name)
    if not (isinstance(value, str) and isinstance(default, str) and default in cams.ALIASES):
        return value
    try:
        return cams.canonical_method(value)
    except ValueError:  # not a method: the method's own check names the fix
        return value

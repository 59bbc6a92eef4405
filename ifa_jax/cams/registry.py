"""The method table: registering, looking up and listing methods, and their options.

:data:`REGISTRY` maps each canonical name to its :class:`~ifa_jax.cams.method.Method`;
the built-in entries are :data:`ifa_jax.cams.builtin.BUILTIN_METHODS`, registered when
:mod:`ifa_jax.cams` is imported. :data:`METHODS` and the other lists are live views of it.

Jitted functions of ifa_jax are keyed on the entry (a :class:`MethodName` carries it), so
replacing a method traces it anew without clearing JAX's caches.

Examples:
    Names, aliases and options of the registered methods:

    >>> from ifa_jax import cams
    >>> cams.canonical_method("Grad-CAM++")
    'gradcam++'
    >>> cams.get_method("gradcam").needs
    frozenset({'gradients'})
    >>> cams.method_options("gradcam++", {"eps": 1e-7})
    {'eps': 1e-07}
    >>> "scorecam" in cams.FORWARD_METHODS, "fem" in cams.GRADIENT_METHODS
    (True, False)
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from ifa_jax.cams.method import Method, normalise

Array = jax.Array

REGISTRY: dict[str, Method] = {}  # canonical name -> Method, in registration order
_SPELLINGS: dict[str, str] = {}  # every accepted normalised spelling -> canonical name
ALIASES = types.MappingProxyType(_SPELLINGS)  # read-only view: spelling -> canonical name


class MethodName(str):
    """A canonical method name that remembers the entry it was resolved to.

    It is the name (a ``str``: equal to it, hashed like it), but two MethodNames of
    different entries differ, so a jit cache keyed on the name (a static argument) traces
    a replaced method anew. :func:`canonical_method` returns one.
    """

    method: Method

    def __new__(cls, method: Method) -> MethodName:
        """The name of ``method``, carrying it."""
        name = super().__new__(cls, method.name)
        name.method = method
        return name

    def __eq__(self, other: object) -> bool:
        if isinstance(other, MethodName):
            return str.__eq__(self, other) and self.method is other.method
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = str.__hash__

    def __reduce__(self):
        return str, (str(self),)


class _Names(Sequence):
    """A read-only, live tuple of registered method names (those that need ``need``,
    or all): it follows :func:`register_method`, also where it was imported by name."""

    def __init__(self, need: str | None = None, kind: str | None = None):
        self._need, self._kind = need, kind

    def _names(self) -> tuple[str, ...]:
        return tuple(
            n
            for n, m in REGISTRY.items()
            if (self._need is None or self._need in m.needs)
            and (self._kind is None or m.kind == self._kind)
        )

    def __getitem__(self, index):
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __add__(self, other) -> tuple[str, ...]:
        return self._names() + tuple(other)

    def __eq__(self, other) -> bool:
        return isinstance(other, (tuple, list, _Names)) and self._names() == tuple(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._names())


METHODS = _Names()  # every registered method, of every kind
LAYER_METHODS = _Names(kind="layer")  # those of one layer (cam, analyze, the runner)
GRADIENT_METHODS = _Names("gradients", "layer")  # layer methods that need G
FORWARD_METHODS = _Names("forward_passes")  # those that need forward passes
LAYERS_METHODS = _Names(kind="layers")  # those of several layers (cam_layers)


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Add ``method`` to :data:`REGISTRY` (and its aliases); returns it.

    Every name and alias must be new unless ``replace=True`` (which replaces a method of
    the same name). ifa_jax's jitted functions are keyed on the entry, so the next call
    traces the new one; JAX's caches are left alone.

    The entry's ``summary``, ``peers`` and ``peer_note`` are what docs/method.md's method
    table shows for it; a method of your own may leave them empty (the defaults).

    Args:
        method: the entry, a :class:`~ifa_jax.cams.method.Method` of any kind.
        replace: whether it may replace the registered method of the same name.

    Returns:
        ``method`` itself.

    Raises:
        ValueError: ``method`` is not a Method, its name is taken (without ``replace``), or
            one of its names or aliases names another method.
    """
    if not isinstance(method, Method):
        raise ValueError(f"register_method takes an ifa_jax.cams.Method; got {type(method)}")
    old = REGISTRY.get(method.name)
    if old is not None and not replace:
        raise ValueError(
            f"CAM method {method.name!r} is already registered; pass replace=True to replace it"
        )
    spellings = {method.name, *method.aliases}
    taken = sorted(s for s in spellings if _SPELLINGS.get(s, method.name) != method.name)
    if taken:
        raise ValueError(
            f"CAM method {method.name!r}: {', '.join(map(repr, taken))} already name "
            f"{', '.join(repr(_SPELLINGS[s]) for s in taken)}; choose other aliases"
        )
    if old is not None:
        for alias in old.aliases:
            _SPELLINGS.pop(alias, None)
    REGISTRY[method.name] = method
    _SPELLINGS.update(dict.fromkeys(spellings, method.name))
    return method


def unregister_method(method: str | Method) -> Method:
    """Remove a method (a name, an alias or its entry) and its aliases; returns the entry.

    Args:
        method: a name, an alias or the registered entry.

    Returns:
        The removed :class:`~ifa_jax.cams.method.Method`.

    Raises:
        ValueError: an unknown method, or an entry that is not the registered one.
    """
    spec = get_method(method)
    if REGISTRY.get(spec.name) is not spec:
        raise ValueError(f"CAM method {spec.name!r}: this entry is not the registered one")
    del REGISTRY[spec.name]
    for spelling in (spec.name, *spec.aliases):
        _SPELLINGS.pop(spelling, None)
    return spec


@contextlib.contextmanager
def registered(method: Method, *, replace: bool = False) -> Iterator[Method]:
    """``with registered(method):`` the method is in the table inside the block; on leaving
    it, the entry it replaced (``replace=True``) is back, or the name is free again."""
    old = REGISTRY.get(method.name)
    register_method(method, replace=replace)
    try:
        yield method
    finally:
        if REGISTRY.get(method.name) is method:
            unregister_method(method)
            if old is not None:
                register_method(old)


def get_method(method: str | Method) -> Method:
    """The registered :class:`Method` for a name or alias (case, ``-`` and ``_`` ignored);
    a :class:`MethodName` gives the entry it was resolved to, an entry itself.

    Args:
        method: a name or alias (any case; ``-`` and ``_`` ignored), a
            :class:`MethodName` or an entry.

    Returns:
        The registered :class:`~ifa_jax.cams.method.Method`.

    Raises:
        ValueError: an unknown name (listing the known ones).
    """
    if isinstance(method, Method):
        return method
    if isinstance(method, MethodName):
        return method.method
    name = _SPELLINGS.get(normalise(method)) if isinstance(method, str) else None
    if name is None:
        raise ValueError(
            f"unknown CAM method {method!r}; known methods: {', '.join(REGISTRY)} "
            "(ifa_jax.cams.register_method adds one)"
        )
    return REGISTRY[name]


def canonical_method(method: str | Method) -> MethodName:
    """Lower-case name with aliases resolved (a :class:`MethodName`, a ``str`` that keys
    jit caches on the entry); unknown names list the known ones."""
    return MethodName(get_method(method))


def method_options(method: str | Method, options: Mapping[str, Any] | None = None) -> dict:
    """The method's options: its defaults overridden by ``options``; unknown ones raise."""
    spec = get_method(method)
    options = dict(options or {})
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        known = ", ".join(f"{k}={v!r}" for k, v in spec.options.items()) or "none"
        raise ValueError(
            f"{spec.name} has no option {', '.join(map(repr, unknown))}; its options: {known}"
        )
    for name, value in options.items():
        _check_option_value(spec, name, value)
    return {**spec.options, **options}


def options_per_method(
    given: Iterable[tuple[str, Any]], methods: Sequence[str], *, among: str, add_to: str
) -> dict[str, dict[str, Any]]:
    """``(method, {option: value})`` pairs -> ``{canonical method: options}``, each method
    among ``methods`` (canonical names; ``among`` names them in the error, ``add_to`` the
    argument to add a method to) and named once, each option known and of a valid type
    (:func:`method_options`). Defaults are not filled in."""
    out: dict[str, dict[str, Any]] = {}
    named: dict[str, str] = {}
    for name, options in given:
        m = canonical_method(name)
        if m not in methods:
            raise ValueError(
                f"method_options names {name!r}, which is not among {among} "
                f"({', '.join(methods)}); add it to {add_to} or drop its options"
            )
        if m in named:
            raise ValueError(
                f"method_options names {m} twice ({named[m]!r} and {name!r}); give its options once"
            )
        named[m] = name
        if not isinstance(options, Mapping):
            raise ValueError(
                f"method_options[{name!r}] must be a dict {{option: value}}; got {options!r}"
            )
        method_options(m, options)  # an unknown option or a bad value raises
        out[m] = dict(options)
    return out


def _check_option_value(spec: Method, name: str, value: Any) -> None:
    """A given option value against its default's type: a bool where the default is one, a
    number where it is a float, an integer where it is an int; an ``eps`` a finite number
    >= 0. Arrays and options whose default is None or another type are the method's to
    check."""
    default = spec.options[name]
    if isinstance(value, (jax.Array, np.ndarray)) or callable(value):
        return
    if isinstance(default, bool):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{spec.name} option {name}={value!r} must be True or False")
        return
    real = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )
    numeric_default = isinstance(default, (int, float)) and not isinstance(default, bool)
    if (numeric_default or name == "eps") and value is not None:
        if not real:
            raise ValueError(
                f"{spec.name} option {name}={value!r} must be a number (its default is {default!r})"
            )
        if isinstance(default, int) and not isinstance(default, float) and value != int(value):
            raise ValueError(f"{spec.name} option {name}={value!r} must be an integer")
        if not np.isfinite(value):
            raise ValueError(f"{spec.name} option {name}={value!r} must be finite")
        if name == "eps" and value < 0:
            raise ValueError(
                f"{spec.name} option eps={value!r} must be >= 0 (it keeps a denominator "
                f"away from 0; default {default!r})"
            )


def require_key(method: str | Method, key: Array | None) -> None:
    """Raise a ValueError naming the fix when ``method`` needs a PRNG key and ``key`` is None."""
    spec = get_method(method)
    if "key" in spec.needs and key is None:
        raise ValueError(
            f"{spec.name} needs a PRNG key: pass key=jax.random.key(seed) (keyword-only; "
            "ifa_jax keeps no global random state)"
        )

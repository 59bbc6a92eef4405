"""The NamedTuple reading of the analysis' dataclasses, kept for their earlier users."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, Self


class _FieldNames:
    """``cls._fields`` and ``obj._fields``: the dataclass' field names, in order."""

    def __get__(self, obj: object, owner: type) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(owner))  # type: ignore[arg-type]


class NamedFields:
    """Mixin for a dataclass that was a NamedTuple: iterates and indexes its values in
    field order (``a, b = obj``, ``zip(obj, other)`` and ``obj[0]`` keep working) and has
    ``_fields``, ``_asdict()`` and ``_replace(**changes)``. Unlike a tuple it has no ``count`` or
    ``index`` method, so a field may carry those names."""

    _fields = _FieldNames()

    def __iter__(self) -> Iterator[Any]:
        return iter([getattr(self, name) for name in self._fields])

    def __len__(self) -> int:
        return len(self._fields)

    def __getitem__(self, index: int | slice) -> Any:
        return tuple(self)[index]

    def _asdict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._fields}

    def _replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

"""Per-sample metric values that may be undefined for some samples: :class:`Scores`.

A batched metric runs under ``jit`` on the whole batch, so it cannot return ``None`` for
the one sample whose value is undefined (an all-zero map has no mass to localise, an
empty mask has nothing to point at). It returns a :class:`Scores`: the values (B,), a
flag (B,) that says which are defined, and the reason the others are not; undefined
values are 0 in ``value``, never NaN. :meth:`Scores.tolist` gives ``None`` for them and
:meth:`Scores.mean` averages the defined ones.

Examples:
    >>> import numpy as np
    >>> from ifa_jax.metrics.scores import Scores
    >>> s = Scores(np.array([0.5, 0.0, 1.0]), np.array([True, False, True]), "all-zero map")
    >>> s.tolist()
    [0.5, None, 1.0]
    >>> s.mean()
    {'mean': 0.75, 'n': 2, 'undefined': 1, 'reason': 'all-zero map'}
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np


class Scores(NamedTuple):
    """One metric value per sample.

    value: (B,) float, 0 where undefined. defined: (B,) bool. reason: what makes a
    sample's value undefined (the same for every sample of a metric), e.g. ``'empty
    mask'``.
    """

    value: Any
    defined: Any
    reason: str

    def tolist(self) -> list[float | None]:
        """The values as floats, ``None`` where undefined.

        Returns:
            B floats or None.
        """
        value, defined = np.asarray(self.value, np.float64), np.asarray(self.defined, bool)
        return [float(v) if d else None for v, d in zip(value, defined)]

    def mean(self) -> dict[str, Any]:
        """The mean over the defined samples.

        Returns:
            ``{'mean', 'n', 'undefined', 'reason'}``: the mean (None when no sample is
            defined), the number of defined samples, the number of undefined ones and
            the reason (only when some are undefined).
        """
        value, defined = np.asarray(self.value, np.float64), np.asarray(self.defined, bool)
        n = int(defined.sum())
        out: dict[str, Any] = {
            "mean": float(value[defined].mean()) if n else None,
            "n": n,
            "undefined": int(defined.size - n),
        }
        if n < defined.size:
            out["reason"] = self.reason
        return out

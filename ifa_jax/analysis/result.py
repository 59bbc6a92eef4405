"""The result of an analysis pass: state, summary and per-sample values."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from ifa_jax._stats import DEFAULT_PERCENTILES, percentiles
from ifa_jax.analysis.state import Stats, Summary


class Analysis(NamedTuple):
    """The result of :func:`ifa_jax.analysis.analyze` (one per method with
    :func:`~ifa_jax.analysis.analyze_methods`): the final state (mergeable), its summary, and the
    per-sample scalars of valid samples as NumPy arrays (N,) in input order (with
    ``bins=``, ``samples['target_value']`` too)."""

    state: Stats
    summary: Summary
    samples: dict[str, np.ndarray]

    def percentiles(
        self, which: str = "cam_max", qs: Sequence[float] = DEFAULT_PERCENTILES
    ) -> dict[int, float]:
        """Percentiles of a per-sample scalar, keyed by the percentile it really is."""
        if which not in self.samples:
            raise KeyError(
                f"no per-sample values named {which!r}; the names are: "
                f"{', '.join(self.samples) or '(none)'}"
            )
        values = self.samples[which]
        if values.size == 0:
            raise ValueError(f"no samples were analysed, so {which} has no percentiles")
        return percentiles(values, qs)

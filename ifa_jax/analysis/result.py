"""The result of an analysis pass: state, summary and per-sample values.

Examples:
    Percentiles of a per-sample value, keyed by the percentile each is:

    >>> import numpy as np
    >>> import jax.numpy as jnp
    >>> from ifa_jax import analysis
    >>> state = analysis.from_batch(analysis.BatchStats(
    ...     jnp.ones((4, 2)), jnp.ones((4, 2, 2)), jnp.zeros(4, int), jnp.ones(4, bool),
    ...     jnp.ones(4, bool)), num_classes=1)
    >>> samples = {"cam_max": np.array([1.0, 2.0, 3.0, 4.0])}
    >>> result = analysis.Analysis(state, analysis.finalize(state), samples)
    >>> result.percentiles("cam_max", (25, 50, 100))
    {25: 1.75, 50: 2.5, 100: 4.0}
"""

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

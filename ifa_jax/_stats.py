"""Small statistics shared across layers: percentile tables and per-image min-max.

Private: :mod:`ifa_jax.scale` re-exports :func:`percentiles`, :data:`DEFAULT_PERCENTILES`
and :func:`minmax_per_image` as its public API; :mod:`ifa_jax.analysis` (below scale in
the layer order) and :mod:`ifa_jax.cams` use them from here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ifa_jax._checks import per_sample_values

DEFAULT_PERCENTILES = (25, 50, 75, 90, 95, 99)


def check_percentile(q, what: str = "percentile") -> float:
    """q (a number) as a float in [0, 100], or a ValueError naming ``what``."""
    if (
        isinstance(q, (bool, np.bool_))
        or np.ndim(q) != 0
        or not np.issubdtype(np.asarray(q).dtype, np.number)
    ):
        raise ValueError(f"{what} must be a number in [0, 100], e.g. 90; got {q!r}")
    qf = float(q)
    if not 0.0 <= qf <= 100.0:
        raise ValueError(f"{what} {q!r} is outside [0, 100]")
    return qf


def percentile_label(q):
    """The key a percentile is stored under: an int when integral (95), else the float."""
    qf = float(q)
    return int(qf) if qf.is_integer() else qf


def percentiles(values, qs: Sequence[float] = DEFAULT_PERCENTILES) -> dict:
    """Percentile table ``{q: P_q(values)}`` (linear interpolation, NumPy's default).

    Keys are the requested percentiles themselves (ints when integral): ``table[95]`` is
    the 95th percentile (the reference code stored the 99th under the label 95).
    Empty or non-finite input raises ValueError.
    """
    arr = per_sample_values(values, "values")
    if isinstance(qs, (str, bytes)) or not isinstance(qs, Iterable) or np.ndim(qs) == 0:
        raise ValueError(
            f"qs must be a sequence of percentiles, e.g. qs=(50,) or qs=[50, 90]; got {qs!r}"
        )
    qs = tuple(qs)
    if not qs:
        raise ValueError("qs is empty; ask for at least one percentile, e.g. qs=(50, 90)")
    qf = [check_percentile(q, "each of qs") for q in qs]
    got = np.percentile(arr, qf)
    return {percentile_label(q): float(v) for q, v in zip(qs, got)}


def minmax_per_image(L: jax.Array, eps: float = 1e-7) -> jax.Array:
    """Per-image baseline: (L - min L) / (max L - min L + eps) per sample over its grid.

    L: (B, *spatial), any number of spatial axes. A constant image maps to 0 (also with
    ``eps=0``, the exact min-max ScoreCAM uses). For comparison with the common scale
    only: it makes brightness incomparable across images.
    """
    L = jnp.asarray(L)
    if L.ndim < 2:
        raise ValueError(f"L must have shape (B, *spatial); got {L.shape}")
    axes = tuple(range(1, L.ndim))
    lo = jnp.min(L, axis=axes, keepdims=True)
    denom = jnp.max(L, axis=axes, keepdims=True) - lo + eps
    return jnp.where(denom == 0, 0.0, (L - lo) / jnp.where(denom == 0, 1.0, denom))

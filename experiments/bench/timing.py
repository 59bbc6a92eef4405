"""Interleaved timing of variants over rounds, and paired ratios between them."""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any


@dataclasses.dataclass
class Entry:
    """One timed call. ``fn()`` must finish its work (block_until_ready or host arrays)."""

    name: str
    group: str  # 'floor', 'forward', 'ifa', 'torch', 'peer'
    images: int
    fn: Callable[[], Any]
    compare_to: str | None = None  # for peers: the ifa_jax row it is compared with
    first_s: float = math.nan
    number: int = 1
    times: list[float] = dataclasses.field(default_factory=list)
    error: str | None = None

    @property
    def seconds(self) -> float:
        return statistics.median(self.times) if self.times else math.nan

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


def paired_ratio(a: Entry, b: Entry) -> float:
    """Median over repeats of a's throughput / b's, each pair timed in the same round.

    On a shared machine the load changes between rounds; a ratio within one round cancels
    most of it, so this is steadier than the ratio of the two medians.
    """
    n = min(len(a.times), len(b.times))
    if n == 0:
        return math.nan
    return statistics.median((a.images / a.times[i]) / (b.images / b.times[i]) for i in range(n))


def time_ratios(a: Entry, b: Entry) -> list[float]:
    """a's seconds per image over b's, one ratio per round that timed both (round i of a
    with round i of b)."""
    n = min(len(a.times), len(b.times))
    return [(a.times[i] / a.images) / (b.times[i] / b.images) for i in range(n)]


def time_interleaved(
    entries: Sequence[Entry],
    *,
    repeats: int,
    min_time: float,
    slow_s: float = math.inf,
    slow_rounds: int | None = None,
) -> None:
    """First call (trace + compile), a warm-up call that sets how many calls make one
    measurement (>= min_time seconds), then ``repeats`` rounds over all entries in turn,
    so slow drifts of a shared machine hit every entry alike. An entry whose warm-up call
    takes >= ``slow_s`` seconds is timed in the first ``slow_rounds`` rounds only (still
    interleaved with the others, so its paired ratios stay within a round)."""
    live, slow = [], set()
    for e in entries:
        try:
            t0 = time.perf_counter()
            e.fn()
            e.first_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            e.fn()
            warm = time.perf_counter() - t0
        except Exception as err:  # a peer that does not support the case, e.g. 3-D ScoreCAM
            e.error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            continue
        e.number = max(1, math.ceil(min_time / max(warm, 1e-9))) if min_time > 0 else 1
        live.append(e)
        if warm >= slow_s:
            slow.add(id(e))
    for r in range(repeats):
        for e in live:
            if slow_rounds is not None and id(e) in slow and r >= slow_rounds:
                continue
            t0 = time.perf_counter()
            for _ in range(e.number):
                e.fn()
            e.times.append((time.perf_counter() - t0) / e.number)

"""Per-sample outputs of the analysis pass, brought from the device to the host one chunk
of batches at a time, without a host synchronisation per batch."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ifa_jax.analysis.step import PerSample


@jax.jit
def stack_chunk(items):
    """A list of equal pytrees (per-batch outputs or device batches, leaves (B, ...)) ->
    one array per leaf, (len(items), B, ...). Stacking on a new axis keeps a batch-sharded
    axis as it is."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *items)


@functools.partial(jax.jit, static_argnames=("sizes", "pad"))
def join_chunk(items, sizes: tuple[int, ...], pad: int):
    """Outputs of single steps (leaves (B, ...), size 0) and of stacked groups of k steps
    (leaves (k, B, ...), size k) -> one array per leaf, (n + pad, B, ...) for n batches,
    the last batch repeated ``pad`` times."""

    def join(*leaves):
        parts = [leaf if k else leaf[None] for leaf, k in zip(leaves, sizes)]
        if pad:
            parts.append(jnp.repeat(parts[-1][-1:], pad, axis=0))
        return jnp.concatenate(parts) if len(parts) > 1 else parts[0]

    return jax.tree.map(join, *items)


# Per-sample outputs come to the host once per chunk of at most FETCH_EVERY batches, fewer
# for large inputs: the inputs of at most two chunks (about 2 * IN_FLIGHT_BYTES) wait on
# the device. Read at each pass (tests set them).
FETCH_EVERY = 32
IN_FLIGHT_BYTES = 256 << 20


def chunk_length(input_bytes: int) -> int:
    """Batches per fetched chunk for batches of ``input_bytes`` inputs each."""
    return max(1, min(FETCH_EVERY, IN_FLIGHT_BYTES // max(1, input_bytes)))


class SampleFetcher:
    """Keeps the per-sample outputs of :func:`ifa_jax.analysis.step.pass_step` on the
    device and brings them to the host one chunk of batches at a time, with no host
    synchronisation in between.

    Every ``every`` batches (or a few more: a group of k steps run in one dispatch,
    :func:`~ifa_jax.analysis.step.pass_steps`, is added whole), one jitted stack makes one
    array per field of the chunk and
    its copy to the host starts at once (asynchronously); the host reads it at the end of
    the next chunk (or of the pass), when it is long done. At most two chunks are in
    flight, which also bounds how far the host runs ahead of the device (their inputs).
    The non-finite check runs on each chunk as it is read and names the first bad batch.
    A short last chunk is padded (repeating its last batch) to a power of two, so the
    stack compiles for a few chunk lengths only; the padding rows are dropped.
    With several processes, each holds only its devices' rows of a chunk: ``replicated``
    (a sharding over all devices) copies the chunk to every process first, so every
    process reads every sample.
    """

    def __init__(self, every: int, layer: str, replicated: jax.sharding.Sharding | None = None):
        self.every, self.layer, self.replicated = every, layer, replicated
        self.ids: list[int] = []  # batch indices of the open chunk
        self.items: list = []  # their device outputs
        self.sizes: list[int] = []  # per item: 0 (one batch) or k (a stacked group)
        self.in_flight: tuple[list[int], Any] | None = None
        self.read: list = []  # host chunks: (shared, per_method), rows trimmed
        self.reached = 0  # the most grid positions a valid sample's gradient reached

    def add(self, i: int | Sequence[int], out) -> None:
        """The outputs of batch ``i`` (leaves (B, ...)), or of the batches ``i`` (a list
        of k indices) stepped as one group (leaves (k, B, ...))."""
        ids = [i] if isinstance(i, int) else list(i)
        self.ids.extend(ids)
        self.items.append(out)
        self.sizes.append(0 if isinstance(i, int) else len(ids))
        if len(self.ids) >= self.every:
            self.flush()

    def flush(self) -> None:
        if self.items:
            n = len(self.ids)
            padded = n if n >= self.every else min(self.every, 1 << (n - 1).bit_length())
            chunk = join_chunk(self.items, tuple(self.sizes), padded - n)
            if self.replicated is not None:
                chunk = jax.device_put(chunk, self.replicated)
            for leaf in jax.tree.leaves(chunk):
                if leaf.is_fully_addressable or leaf.is_fully_replicated:
                    leaf.copy_to_host_async()
            ids, self.ids, self.items, self.sizes = self.ids, [], [], []
        else:
            ids, chunk = None, None
        self._read()
        if ids is not None:
            self.in_flight = (ids, chunk)

    def finish(self) -> None:
        self.flush()
        self._read()

    def _read(self) -> None:
        if self.in_flight is None:
            return
        ids, chunk = self.in_flight
        self.in_flight = None
        n = len(ids)
        shared, own = jax.tree.map(lambda a: a[:n].reshape(-1, *a.shape[2:]), jax.device_get(chunk))
        nonfinite = shared["nonfinite"].reshape(n, -1).sum(axis=1)
        for i, bad in zip(ids, nonfinite):
            if bad:
                raise FloatingPointError(
                    f"batch {i}: {int(bad)} sample(s) have non-finite activations or gradients "
                    f"at layer {self.layer!r}; check the inputs and the parameters"
                )
        reached = shared["reached"][shared["valid"]]
        self.reached = max(self.reached, int(reached.max(initial=0)))
        self.read.append((shared, own))

    def samples(self, j: int) -> dict[str, np.ndarray]:
        """Method ``j``'s per-sample values of the valid rows, in input order: new arrays
        (each method its own copy of the shared fields). A chunk with no padding row is
        concatenated as it is, so a value is copied once (twice in a padded chunk)."""
        chunks = [({**shared, **own[j]}, shared["valid"]) for shared, own in self.read]
        first = chunks[0][0]
        return {
            f: np.concatenate([c[f] if v.all() else c[f][v] for c, v in chunks])
            for f in PerSample._fields
            if f in first and f not in ("valid", "nonfinite", "reached")
        }

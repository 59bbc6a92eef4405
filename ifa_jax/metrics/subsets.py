"""Accuracy when only selected channels at a layer are kept: :func:`subset_accuracy` and
:func:`subset_accuracy_curve` (the "5-25% of the features suffice" claim).

Examples:
    A parameter-free model whose logits are the grid means of its rectified input's 3
    channels, and 3 samples each bright in the channel of its label: keeping each class'
    own channel keeps every prediction, keeping channel 0 for everyone only class 0's:

    >>> import flax.linen as nn
    >>> import numpy as np
    >>> from ifa_jax import linen_probe
    >>> from ifa_jax.metrics.subsets import subset_accuracy
    >>> from ifa_jax.modules import ReLU
    >>> class Gap(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         return ReLU(name="relu")(x).mean(axis=(1, 2))
    >>> y = np.array([0, 1, 2])
    >>> x = np.zeros((3, 2, 2, 3), np.float32)
    >>> x[y, :, :, y] = 1.0
    >>> probe = linen_probe(Gap(), "relu")
    >>> subset_accuracy(probe, {}, [(x, y)], np.eye(3))  # (C, K): one row per class
    {'accuracy': 1.0, 'full_accuracy': 1.0, 'correct': 3, 'n': 3}
    >>> subset_accuracy(probe, {}, [(x, y)], np.array([1.0, 0.0, 0.0]))["correct"]
    1
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ifa_jax._checks import label_range, one_of, pad_batch, pick_layer
from ifa_jax.probes import LayerProbe

DEFAULT_RATIOS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0)
ROW_MODES = ("label", "predicted")


@functools.partial(jax.jit, static_argnames=("probe", "layer", "row"))
def _subset_step(probe, variables, x, y, valid, masks, *, layer, row):
    """Correct counts (R,) for masks (R, rows, K), and the plain model's correct count."""
    logits, acts = probe.forward_activations(variables, x)
    A = acts[layer]
    pred = jnp.argmax(logits, -1)
    idx = {"shared": jnp.zeros_like(y), "label": y, "predicted": pred}[row]
    expand = (slice(None),) + (None,) * (A.ndim - 2) + (slice(None),)

    def one(m):
        keep = m[idx][expand].astype(A.dtype)  # (B, 1.., K)
        out = probe.forward_with(variables, x, {layer: -A * (1 - keep)})
        return jnp.sum(valid & (jnp.argmax(out, -1) == y))

    return jax.lax.map(one, masks), jnp.sum(valid & (pred == y))


def _iter_batches(batches: Iterable) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """(index, x, y, valid) with short batches padded (valid=False) to the first's size."""
    size = None
    for i, batch in enumerate(batches):
        batch = tuple(batch)
        if len(batch) not in (2, 3):
            raise ValueError(f"batch {i} has {len(batch)} items; pass (x, y) or (x, y, valid)")
        y = np.asarray(batch[1])
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"batch {i}: labels must be integers; got dtype {y.dtype}")
        if size is None:
            size = len(y) if y.ndim else 0  # pad_batch refuses a scalar label
        x, y, valid = pad_batch(
            batch[0],
            y,
            batch[2] if len(batch) == 3 else None,
            size,
            i,
            size_from="the first batch's size",
            fix="use one batch size (a shorter last batch is fine)",
        )
        yield i, x, y, valid


def _evaluate_masks(probe, variables, batches, masks: list, *, layer, row) -> dict[str, Any]:
    layer = pick_layer(probe.layers, layer)
    one_of("row", row, ROW_MODES)
    arrays = [np.asarray(m) for m in masks]
    ndims = {a.ndim for a in arrays}
    if ndims - {1, 2} or len(ndims) != 1:
        raise ValueError(
            f"masks must all be (K,) (shared by every class) or all (C, K) "
            f"(one row per class); got shapes {[a.shape for a in arrays]}"
        )
    stacked = np.stack(arrays).astype(np.float32)
    if stacked.ndim == 2:
        stacked, mode = stacked[:, None, :], "shared"
    else:
        mode = row
    if not np.all(np.isfinite(stacked)) or stacked.min() < 0 or stacked.max() > 1:
        raise ValueError("channel masks must hold values in [0, 1] (1 keeps a channel)")
    correct = np.zeros(len(arrays), np.int64)
    plain, n, num_out = 0, 0, None
    for i, x, y, valid in _iter_batches(batches):
        if num_out is None:
            (logits_shape, acts) = probe.output_shapes(variables, jnp.asarray(x))
            num_out, K = logits_shape[-1], acts[layer][-1]
            if stacked.shape[2] != K or (mode != "shared" and stacked.shape[1] != num_out):
                raise ValueError(
                    f"channel mask has shape {arrays[0].shape}; layer {layer!r} has {K} "
                    f"channels and the model {num_out} outputs, so pass ({K},) (shared by "
                    f"every class) or ({num_out}, {K}) (one row per class)"
                )
        label_range(y, valid, num_out, i, f"the model has {num_out} outputs; fix the labels")
        c, p = _subset_step(
            probe,
            variables,
            jnp.asarray(x),
            jnp.asarray(y, jnp.int32),
            jnp.asarray(valid),
            jnp.asarray(stacked),
            layer=layer,
            row=mode,
        )
        correct += np.asarray(c, np.int64)
        plain += int(p)
        n += int(valid.sum())
    if num_out is None:
        raise ValueError("batches is empty: nothing to evaluate")
    if n == 0:
        raise ValueError("no valid samples in batches (every valid flag is False)")
    return {"correct": correct, "plain": plain, "n": n, "mode": mode}


def subset_accuracy(
    probe: LayerProbe,
    variables: Any,
    batches: Iterable,
    masks: Any,
    *,
    layer: str | None = None,
    row: str = "label",
) -> dict[str, Any]:
    """Accuracy when only the channels selected by ``masks`` are kept at ``layer``.

    The layer's output A becomes ``A * m`` (``delta = -A * (1 - m)`` via
    ``probe.forward_with``). ``masks``: (K,) shared by all classes, or (C, K) one row per
    class; a per-class row is picked by ``row``: ``'label'`` (the sample's label: an oracle
    that sees the label, so optimistic; the paper's per-class setting) or ``'predicted'``
    (the unmasked model's prediction: no label leak). ``batches``: iterable of (x, y) or
    (x, y, valid); a short last batch is padded, so the step compiles once.

    Args:
        probe: the model's :class:`~ifa_jax.probes.LayerProbe`.
        variables: the model's variables.
        batches: as above.
        masks: (K,) or (C, K).
        layer: the probe's layer (None: its only one).
        row: 'label' or 'predicted'.

    Returns:
        ``{'accuracy', 'full_accuracy' (all channels), 'correct', 'n'}``.

    Raises:
        ValueError: masks that do not fit the layer, an unknown row, labels out of
            range, or no valid sample.
    """
    r = _evaluate_masks(probe, variables, batches, [masks], layer=layer, row=row)
    return {
        "accuracy": float(r["correct"][0] / r["n"]),
        "full_accuracy": r["plain"] / r["n"],
        "correct": int(r["correct"][0]),
        "n": r["n"],
    }


def subset_accuracy_curve(
    probe: LayerProbe,
    variables: Any,
    batches: Iterable,
    importance_rows: Any,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    *,
    select_fn: Callable[[Any, float], Any],
    layer: str | None = None,
    row: str = "label",
) -> dict[str, Any]:
    """Accuracy for channel subsets of growing size: the "5-25% of features" claim.

    ``select_fn(importance_rows, ratio) -> mask`` ((K,) or (C, K)) is called once per
    ratio; ``importance_rows`` is (K,) or (C, K) (e.g. IM_c from the analysis). The
    batches are read once and every mask evaluated on each batch (one layer forward, then
    one head forward per ratio), so a generator works. Masks and ``row`` as in
    :func:`subset_accuracy`. Returns {'ratios', 'accuracy', 'channels' (mean kept channels
    per mask row), 'full_accuracy', 'n'}; an all-ones mask gives exactly ``full_accuracy``.

    Args:
        probe: the model's :class:`~ifa_jax.probes.LayerProbe`.
        variables: the model's variables.
        batches: iterable of (x, y) or (x, y, valid).
        importance_rows: (K,) or (C, K).
        ratios: shares of channels, each in (0, 1].
        select_fn: ``(importance_rows, ratio) -> mask``.
        layer: the probe's layer (None: its only one).
        row: 'label' or 'predicted'.

    Returns:
        ``{'ratios', 'accuracy', 'channels', 'full_accuracy', 'n'}``.

    Raises:
        ValueError: no ratio or one outside (0, 1], bad importance rows, or what
            :func:`subset_accuracy` refuses.
    """
    ratios = [float(r) for r in ratios]
    if not ratios:
        raise ValueError("ratios is empty; pass e.g. (0.05, 0.1, 0.25, 1.0)")
    bad = [r for r in ratios if not 0 < r <= 1]
    if bad:
        raise ValueError(f"ratios must lie in (0, 1]; got {bad}")
    rows = np.asarray(importance_rows)
    if rows.ndim not in (1, 2) or rows.size == 0:
        raise ValueError(f"importance_rows must be (K,) or (C, K); got shape {rows.shape}")
    masks = [np.asarray(select_fn(rows, r)) for r in ratios]
    res = _evaluate_masks(probe, variables, batches, masks, layer=layer, row=row)
    return {
        "ratios": ratios,
        "accuracy": [float(c / res["n"]) for c in res["correct"]],
        "channels": [float(np.sum(m) / (1 if m.ndim == 1 else m.shape[0])) for m in masks],
        "full_accuracy": res["plain"] / res["n"],
        "n": res["n"],
    }

"""LeGrad (Bousselham et al. 2024): relu of the gradients at attention probabilities,
averaged over channels, for one block (kind ``"layer"``) or several (kind ``"layers"``).

Examples:
    LeGrad's map is the channel mean of the rectified gradients:

    >>> import jax.numpy as jnp
    >>> from ifa_jax.cams.legrad import legrad_map
    >>> G = jnp.array([[[[-1.0, 3.0], [2.0, 2.0]]]])                # (1, 1, 2, K=2)
    >>> legrad_map(G).tolist()
    [[[1.5, 2.0]]]
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from ifa_jax.cams.method import CamInputs

Array = jax.Array


def legrad_map(G: Array) -> Array:
    """relu(G) averaged over the channels: LeGrad's map (B, *grid) of one block, with the
    probe's attention grid's channels heads x queries (ifa_jax.probes.tokens.attention_to_grid)."""
    return jnp.mean(jax.nn.relu(G), axis=-1)


def legrad(inputs: CamInputs) -> Array:
    """LeGrad of one block, spread as M = L / K (L from :func:`legrad_map`)."""
    assert inputs.gradients is not None
    G = inputs.gradients
    return jnp.broadcast_to(legrad_map(G)[..., None] / G.shape[-1], G.shape)


def legradlayers(inputs: Mapping[str, CamInputs]) -> Array:
    """LeGrad over several blocks: {layer: CamInputs} -> the mean of their maps (B, *grid)."""
    grids = {layer: i.activations.shape[1:-1] for layer, i in inputs.items()}
    if len(set(grids.values())) != 1:
        raise ValueError(
            f"legradlayers averages maps on one grid; the layers' grids differ: {grids}. Tap "
            "attention probabilities of blocks with the same number of tokens"
        )
    maps = [legrad_map(i.gradients) for i in inputs.values() if i.gradients is not None]
    return sum(maps[1:], maps[0]) / len(maps)

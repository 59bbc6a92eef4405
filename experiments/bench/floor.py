"""The JAX floor: one jitted forward + the vjp of the target score to the layer."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ifa_jax.probes import LayerProbe


def make_floor(probe: LayerProbe):
    """Jitted ``(variables, x, y) -> (logits, A, G)``: one forward + the vjp of the label's
    logit to the layer's output A, with nothing else (no CAM, statistics or finite check).

    A and the logits are returned because every CAM needs them; returning G alone would let
    XLA drop the forward pass wherever G does not depend on it (a linear head after global
    pooling, as in ResNet at stage4 or ConvNet at its last conv).
    """
    layer = probe.layers[0]

    @jax.jit
    def floor(variables, x, y):
        _, shapes = jax.eval_shape(lambda v, x: probe.tapped(v, x, None), variables, x)
        zeros = {layer: jnp.zeros(shapes[layer].shape, shapes[layer].dtype)}

        def total(deltas):
            logits, acts = probe.tapped(variables, x, deltas)
            score = jnp.sum(jnp.take_along_axis(logits, y[:, None], axis=-1))
            return score, (logits, acts[layer])

        grads, (logits, A) = jax.grad(total, has_aux=True)(zeros)
        return logits, A, grads[layer]

    return floor

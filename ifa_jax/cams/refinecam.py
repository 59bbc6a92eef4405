"""RefineCAM: the product over several layers of a base method's rectified, min-max
scaled maps, on one grid (a :class:`~ifa_jax.cams.method.LayersFn`).

Examples:
    RefineCAM of two layers with grids 4 x 4 and 2 x 2, on the larger grid:

    >>> import jax.numpy as jnp
    >>> from ifa_jax import cams
    >>> A = {"conv1": jnp.arange(96.0).reshape(2, 4, 4, 3) % 7,
    ...      "conv2": jnp.arange(40.0).reshape(2, 2, 2, 5) % 3}
    >>> G = {"conv1": jnp.cos(jnp.arange(96.0)).reshape(2, 4, 4, 3),
    ...      "conv2": jnp.sin(jnp.arange(40.0)).reshape(2, 2, 2, 5)}
    >>> result = cams.cam_layers(A, G, "refinecam", base="gradcam")
    >>> result.cam.shape, result.contributions.shape           # one map, K = 1
    ((2, 4, 4), (2, 4, 4, 1))
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from ifa_jax._stats import minmax_per_image
from ifa_jax.cams.method import CamInputs, LayerMethod
from ifa_jax.cams.reduction import contributions, upsample
from ifa_jax.cams.registry import REGISTRY, get_method

Array = jax.Array

REFINE_EPS = 1e-8  # torch-cam's _normalize: (L - min) / (max - min + eps)


def refinecam(
    inputs: Mapping[str, CamInputs], *, base="gradcam++", shape=None, eps=None, base_options=None
) -> Array:
    """RefineCAM: {layer: CamInputs} -> L (B, *grid), the product over layers of the base
    method's map, rectified, min-max scaled per image and resized (linear) to ``grid``."""
    spec = get_method(base)
    if not isinstance(spec, LayerMethod) or spec.fn is None:
        local = [n for n, m in REGISTRY.items() if m.kind == "layer" and m.fn is not None]
        raise ValueError(
            f"refinecam's base must be a method of kind 'layer' that needs no forward passes "
            f"({', '.join(local)}); got base={base!r} (kind {spec.kind!r}"
            f"{', forward passes' if spec.fn is None else ''})"
        )
    if len(inputs) < 2:
        raise ValueError(
            f"refinecam multiplies the maps of at least two layers; got {list(inputs)}. Build "
            "the probe for several layers, e.g. linen_probe(model, ['relu1', 'relu2'])"
        )
    grids = {layer: i.activations.shape[1:-1] for layer, i in inputs.items()}
    if len({len(g) for g in grids.values()}) != 1:
        raise ValueError(f"refinecam's layers must have as many spatial axes; got grids {grids}")
    if shape is None:
        target = tuple(max(sizes) for sizes in zip(*grids.values()))
    else:
        target = tuple(int(s) for s in shape)
        if len(target) != len(next(iter(grids.values()))) or min(target) < 1:
            raise ValueError(
                f"refinecam shape={shape!r} must give a positive size for each of the layers' "
                f"{len(next(iter(grids.values())))} spatial axes (grids {grids})"
            )
    options = dict(base_options or ())
    if eps is not None:
        options["eps"] = eps
    product = None
    for i in inputs.values():
        M = contributions(i.activations, i.gradients, spec.name, key=i.key, **options)
        L = minmax_per_image(jax.nn.relu(jnp.sum(M, axis=-1)), eps=REFINE_EPS)
        L = L if L.shape[1:] == target else upsample(L, target)
        product = L if product is None else product * L
    assert product is not None
    return product

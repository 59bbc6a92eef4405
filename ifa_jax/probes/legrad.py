"""LeGrad (Bousselham et al. 2024, arXiv 2404.03214) for Linen transformers.

For each chosen block ``l``, LeGrad scores the block's output tokens with the model's head,
``s^l = projection(tokens_l)`` (B, O) (for :class:`ifa_jax.runner.models.ViT`:
``head(norm(mean over tokens))``, torch-cam's default for torchvision ViTs), and reads
``G^l = d s^l_c / d P^l``, the gradient at the block's post-softmax attention
probabilities ``P^l`` (B, heads, queries, keys). The map is ``relu(G^l)`` averaged over
heads and queries, on the patch keys (the cams entry ``"legrad"``), averaged over the
blocks (``"legradlayers"``). No attention is multiplied in.

:func:`legrad_probe` builds a :class:`~ifa_jax.probes.LayerProbe` whose layers are the
blocks' attention probabilities, read as grids (:func:`~ifa_jax.probes.attention_to_grid`),
and whose gradients are those of the layer-specific scores, all blocks at once: one
forward pass and one vjp. Each chosen block's output reaches the rest of the model through
``stop_gradient``, so ``s^l`` is the only path from ``P^l`` to the objective, and the probe's
logits are the model's own values with the derivative of ``sum_l s^l``:
``d/dP^l (sum_l' s^l') = d s^l / d P^l``.

With ``score="logit"`` and the same target this equals torch-cam 0.5.0's ``LeGrad`` with
``normalized=False``. Limits: Linen models only (other probes can read attention
probabilities with ``reshape=attention_to_grid()``, with the model's own score's gradient);
the attention must output its probabilities from a submodule (``models.ViT``:
``"attn/probs"``).

Examples:
    LeGrad on a one-block ViT of 8 x 8 images, patches of 4 (a 2 x 2 grid):

    >>> import jax
    >>> import ifa_jax
    >>> from ifa_jax.runner.models import ViT
    >>> vit = ViT(num_classes=3, patch=4, dim=8, depth=1, num_heads=2, mlp_dim=16)
    >>> x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1))
    >>> variables = jax.jit(vit.init)(jax.random.key(1), x)     # one compilation, not op by op
    >>> probe = ifa_jax.legrad_probe(vit, "block1")
    >>> probe.layers
    ('block1/attn/probs',)
    >>> out = probe(variables, x, 0)
    >>> out.gradients.shape                      # (B, *grid, heads * queries)
    (2, 2, 2, 10)
    >>> ifa_jax.cam(out.activations, out.gradients, "legrad").cam.shape
    (2, 2, 2)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import flax.linen as nn
import jax
import jax.numpy as jnp

from ifa_jax._taps import explained_errors, layer_key, tap_output
from ifa_jax.probes.core import LayerProbe, Output, select_output
from ifa_jax.probes.layers import resolve_layer
from ifa_jax.probes.linen import linen_calls
from ifa_jax.probes.tokens import attention_to_grid

Array = jax.Array
# (variables, tokens (B, N, D)) -> logits (B, O): a block's layer-specific class scores.
Projection = Callable[[Any, Array], Array]


def vit_projection(variables: Any, tokens: Array) -> Array:
    """:class:`ifa_jax.runner.models.ViT`'s final norm and head on the mean of all tokens (class
    token included): tokens (B, N, D) -> logits (B, O). torch-cam's default projection
    for torchvision's VisionTransformer, ``heads(encoder.ln(tokens.mean(1)))``."""
    params = variables["params"]
    if not (isinstance(params, Mapping) and "norm" in params and "head" in params):
        raise ValueError(
            "legrad_probe's default projection reads a final LayerNorm 'norm' and a Dense "
            "'head' (a ViT laid out as ifa_jax.runner.models.ViT); this model's parameters "
            f"are {sorted(params) if isinstance(params, Mapping) else type(params).__name__}: "
            "pass projection=(variables, tokens (B, N, D)) -> logits (B, O), e.g. the "
            "model's final norm and head on the mean token"
        )
    pooled = nn.LayerNorm(parent=None).apply({"params": params["norm"]}, jnp.mean(tokens, axis=1))
    head = nn.Dense(params["head"]["kernel"].shape[-1], parent=None)
    return cast(Array, head.apply({"params": params["head"]}, pooled))


def _block_names(blocks: str | Sequence[str]) -> tuple[str, ...]:
    names = (blocks,) if isinstance(blocks, str) else tuple(blocks)
    if not names or not all(isinstance(b, str) for b in names):
        raise ValueError(
            f"blocks={blocks!r} must name one or more transformer blocks, e.g. 'block2' or "
            "['block1', 'block2']"
        )
    keys = tuple(layer_key(b) for b in names)
    if len(set(keys)) != len(keys):
        raise ValueError(f"blocks={blocks!r} names a block twice; name each block once")
    return keys


def legrad_probe(
    model: nn.Module,
    blocks: str | Sequence[str],
    *,
    output: Output = None,
    projection: Projection | None = None,
    attention: str = "attn/probs",
    prefix: int = 1,
    grid: Sequence[int] | None = None,
    **apply_kwargs: Any,
) -> LayerProbe:
    """A probe of the attention probabilities of ``blocks``, with LeGrad's layer-specific
    gradients ``d s^l_c / d P^l`` (see the module doc).

    blocks: a block name or path (``"block2"``; one block: arrays out) or several (dicts
    out). Its layers are keyed ``f"{block}/{attention}"``; ``attention`` is the path, under
    each block, of a module that outputs the probabilities (B, heads, queries, keys)
    (``models.ViT``: ``"attn/probs"``). Each is read as a grid (B, *grid, heads *
    queries) with ``attention_to_grid(prefix, grid)``. ``projection(variables, tokens (B,
    N, D)) -> logits (B, O)`` scores a block's output; None is :func:`vit_projection`
    (``models.ViT`` only). ``output`` and ``apply_kwargs`` as in
    :func:`ifa_jax.probes.linen_probe`.

    Then ``explain(probe, variables, x, target, "legrad")`` (one block) or
    ``"legradlayers"`` (the blocks' mean) is LeGrad. The probe's logits are the model's,
    so ``target="predicted"`` is the model's prediction; its gradients are those of the
    layer scores for ``score="logit"`` (LeGrad's); ``score="probability"`` or a callable
    target chains their derivative at the model's logits instead.

    Args:
        model: the Linen transformer.
        blocks: a block's name or path, or several.
        output: where the logits are in the model's output, as for
            :func:`~ifa_jax.probes.linen_probe`.
        projection: ``projection(variables, tokens (B, N, D)) -> logits (B, O)``, or None
            (:func:`vit_projection`).
        attention: the path, under each block, of the module that outputs the attention
            probabilities.
        prefix: leading keys (class and register tokens) to drop from the grid.
        grid: the patch grid's sizes, or None for a square grid.
        **apply_kwargs: keyword arguments of ``model.apply``.

    Returns:
        A :class:`~ifa_jax.probes.LayerProbe` of the blocks' attention probabilities,
        read as grids (B, *grid, heads * queries).

    Raises:
        ValueError: no block, an invalid prefix or grid, or a projection that is not
            callable.
    """
    names = _block_names(blocks)
    reshape = attention_to_grid(prefix, grid)  # checks prefix and grid now
    attention = layer_key(attention)
    if projection is None:
        projection = vit_projection
    if not callable(projection):
        raise ValueError(
            f"projection={projection!r} must be a function (variables, tokens) -> logits (B, O)"
        )
    score_tokens: Projection = projection
    kwargs = dict(apply_kwargs)

    def resolve(variables, x) -> tuple[dict[str, str], dict[str, str]]:
        """{block path: block name} and {probabilities path: layer key}."""
        with explained_errors(x):
            available = [c.path for c in linen_calls(model, variables, x, **kwargs)]
        paths, probs = {}, {}
        for name in names:
            path = resolve_layer(name, available)
            at = f"{path}/{attention}"
            if at not in available:
                inside = [p for p in available if p.startswith(path + "/")]
                raise ValueError(
                    f"block {name!r} ({path}) has no attention probabilities at {at!r}; its "
                    f"layers: {', '.join(inside) or '(none)'}. Name transformer blocks, and "
                    "pass attention= the path under each block of a module that outputs "
                    "(B, heads, queries, keys) probabilities (ifa_jax.runner.models.ViT: "
                    "'attn/probs')"
                )
            paths[path], probs[at] = name, f"{name}/{attention}"
        return paths, probs

    def tapped(variables, x, deltas):
        paths, probs = resolve(variables, x)
        acts: dict[str, Array] = {}
        outs: dict[str, Array] = {}

        def tap(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            path = "/".join(context.module.path)
            if context.method_name != "__call__":
                return out
            if path in probs:
                return tap_output(probs[path], path, out, acts, deltas, check_rank=False)
            if path not in paths:
                return out
            if path in outs:
                raise ValueError(
                    f"block {paths[path]!r} ({path}) is called more than once per forward "
                    "pass (a shared module); name blocks that are called once"
                )
            outs[path] = out
            # The rest of the model sees the block's output as a constant: the gradient
            # at P^l then comes from s^l alone.
            return jax.lax.stop_gradient(out)

        with explained_errors(x), nn.intercept_methods(tap):
            logits = select_output(model.apply(variables, x, **kwargs), output)
        total = jnp.zeros_like(logits)
        for path, name in paths.items():
            tokens = outs[path]
            if getattr(tokens, "ndim", None) != 3:
                raise ValueError(
                    f"block {name!r} outputs {getattr(tokens, 'shape', type(tokens))}, not "
                    "tokens (B, N, D); name the transformer blocks themselves"
                )
            scores = score_tokens(variables, tokens)
            if getattr(scores, "shape", None) != logits.shape:
                raise ValueError(
                    f"projection maps block {name!r}'s tokens {tuple(tokens.shape)} to shape "
                    f"{getattr(scores, 'shape', None)}; it must give logits of the model's "
                    f"shape {tuple(logits.shape)}"
                )
            total = total + scores
        # The model's logits as values, the derivative of the summed layer scores.
        return jax.lax.stop_gradient(logits) + (total - jax.lax.stop_gradient(total)), acts

    return LayerProbe(
        tapped,
        tuple(f"{name}/{attention}" for name in names),
        single=isinstance(blocks, str),
        reshape=reshape,
    )


__all__ = ["Projection", "legrad_probe", "vit_projection"]

"""Probes for Hugging Face transformers' Flax models (``FlaxViTForImageClassification``,
``FlaxResNetForImageClassification``, ...): a Linen probe of the model's ``.module``
that carries ``.params`` as ``probe.variables``. Needs no import of transformers."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from ifa_jax.probes.core import LayerProbe, Output, TappedFn
from ifa_jax.probes.linen import linen_probe
from ifa_jax.probes.tokens import GridTapped, Reshape


def hf_variables(params: Any) -> dict[str, Any]:
    """The Linen ``variables`` of a Hugging Face Flax model's ``params``: ``params``
    itself when it already holds collections (``{"params": ..., "batch_stats": ...}``,
    as ResNet's does), else ``{"params": params}`` (ViT's)."""
    if isinstance(params, Mapping) and "params" in params:
        return dict(params)
    return {"params": params}


def hf_probe(
    model: Any,
    layers: str | Sequence[str] | None = None,
    *,
    output: Output = "logits",
    reshape: Reshape | None = None,
    **apply_kwargs: Any,
) -> LayerProbe:
    """A probe for a Hugging Face Flax model; ``probe.variables`` is the ``variables`` to
    call it with: ``explain(probe, probe.variables, x)``.

    It is :func:`~ifa_jax.probes.linen_probe` on ``model.module`` with ``output='logits'``
    (the field of the model's output dataclass) and ``deterministic=True`` when the
    module takes that flag (inference: no dropout, BatchNorm's running statistics);
    ``probe.variables`` is ``{"params": model.params}``, or ``model.params`` when it holds
    collections (``params`` and ``batch_stats``). ``layers``, ``reshape`` and
    ``apply_kwargs`` are as in ``linen_probe``; ``layers=None`` taps the natural layer
    (ViT: the norm before the last attention, ``vit/encoder/layer/{L-1}/layernorm_before``,
    its tokens laid on the patch grid; ResNet: the last stage, ``resnet/encoder/stages/{S-1}``).

    Inputs are channels-last, ``x (B, H, W, C)``, as everywhere in ifa_jax and as
    ``model.module`` takes them: the model object's own ``model(pixel_values)`` takes
    channels-first pixels and transposes them, so pass a processor's ``pixel_values``
    as ``pixel_values.transpose(0, 2, 3, 1)`` (channels-first images raise a
    ``ValueError`` saying so, for a model whose ``config.num_channels`` tells them).

    Args:
        model: an object with ``.module`` (a Linen module) and ``.params``, e.g.
            ``FlaxViTForImageClassification(ViTConfig(...), seed=0)``.
        layers: the layer(s) to tap, by name or path; None for the natural layer.
        output: the logits in the module's output (default ``'logits'``).
        reshape: maps a tapped output to a grid (B, *spatial, K).
        **apply_kwargs: keywords of ``model.module.apply`` (they override
            ``deterministic=True``).

    Returns:
        The :class:`~ifa_jax.probes.LayerProbe`, with ``probe.variables`` set.

    Examples:
        Any object with ``.module`` and ``.params`` will do (a transformers model in
        practice, see the frameworks page of the documentation):

        >>> import types, flax.linen as nn, jax, jax.numpy as jnp
        >>> class Net(nn.Module):
        ...     @nn.compact
        ...     def __call__(self, x, deterministic: bool = False):
        ...         a = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
        ...         return {"logits": nn.Dense(3)(a.mean(axis=(1, 2)))}
        >>> x = jnp.ones((2, 8, 8, 3))
        >>> params = Net().init(jax.random.key(0), x)["params"]
        >>> model = types.SimpleNamespace(module=Net(), params=params)
        >>> probe = hf_probe(model, "conv")
        >>> sorted(probe.variables), probe(probe.variables, x, 0).activations.shape
        (['params'], (2, 8, 8, 4))
    """
    module = getattr(model, "module", None)
    if module is None or not hasattr(model, "params"):
        raise ValueError(
            f"hf_probe takes a Hugging Face Flax model, an object with .module (a Linen "
            f"module) and .params, e.g. FlaxViTForImageClassification(config, seed=0); got "
            f"{type(model).__name__}. For a Linen module and its variables use "
            "ifa_jax.linen_probe(module, layer)"
        )
    try:
        params = model.params
    except ValueError as e:  # transformers: a model made with _do_init=False holds none
        raise ValueError(
            f"the model holds no params ({e}); build it with _do_init=True (the default), or "
            "probe its module with ifa_jax.linen_probe(model.module, layer, output='logits', "
            "deterministic=True) and call the probe with the variables you keep"
        ) from e
    kwargs = dict(apply_kwargs)
    if "deterministic" in inspect.signature(module.__call__).parameters:
        kwargs.setdefault("deterministic", True)
    probe = linen_probe(module, layers, output=output, reshape=reshape, **kwargs)
    channels = getattr(getattr(model, "config", None), "num_channels", None)
    tapped = probe.tapped
    if isinstance(channels, int) and isinstance(tapped, GridTapped):
        tapped = GridTapped(_channels_last(tapped.inner, channels), tapped.reshape)
    elif isinstance(channels, int):
        tapped = _channels_last(tapped, channels)
    return dataclasses.replace(probe, tapped=tapped, variables=hf_variables(params))


def _channels_last(tapped: TappedFn, channels: int) -> TappedFn:
    """``tapped`` that first checks that images ``x (B, H, W, C)`` are channels-last."""

    def checked(variables, x, deltas):
        shape = tuple(x.shape)
        if len(shape) == 4 and shape[-1] != channels and shape[1] == channels:
            raise ValueError(
                f"x has shape {shape}, channels first (B, C, H, W) as the model object's "
                f"own call takes pixel_values; the probe takes images channels-last (B, H, "
                f"W, C) with C={channels}, as model.module does: pass "
                "x.transpose(0, 2, 3, 1)"
            )
        return tapped(variables, x, deltas)

    return checked

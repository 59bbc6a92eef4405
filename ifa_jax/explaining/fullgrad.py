"""FullGrad (Srinivas and Fleuret 2019) at input resolution, as pytorch-grad-cam 1.5.7 has it.

The map of inputs x (B, *spatial_in, C) is a sum of pieces, one for the input and one
per biased layer z = W a + b (every Conv and BatchNorm with a bias, in call order)::

    piece_0 = sum_c  up(mm(|x_c * dy/dx_c|))
    piece_l = sum_k  up(mm(|b_k * dy/dz_k|))        (z the layer's output, before any ReLU)
    L       = mm(sum of the pieces)

mm min-max scales each image (and channel) over its grid with eps 1e-7 (pytorch-grad-cam's
``scale_cam_image``: (v - min) / (max - min + 1e-7)) and up resizes to the input grid
linearly with half-pixel centres and no antialiasing (cv2.resize's INTER_LINEAR; on the
input's own grid it is the identity). Registered as the method ``"fullgrad"`` of kind
``"input"``: ``explain(probe, variables, x, target, "fullgrad")`` or :func:`fullgrad`.

Layers: for a :func:`ifa_jax.linen_probe` the model is tapped anew at its biased layers,
whatever layers the probe itself taps (pytorch-grad-cam ignores target_layers too);
``layers=`` names others (any module with a ``bias`` parameter and a grid output). The
bias of a BatchNorm is its effective bias ``beta - mean * gamma / sqrt(var + eps)``, the
paper's and pytorch-grad-cam's. For other probes (NNX, Equinox, Haiku, functions) pass
``layers=`` (one name or several), tapped layers of the probe whose bias is found in the
variables at the layer's path (keys, indices or Equinox fields, also under ``"params"``;
named ``bias``, or Haiku's ``b``; Equinox's (K, 1, ...) read as (K,)); a BatchNorm's
running statistics are not read there, so its plain bias is used.

Deviations from pytorch-grad-cam, on purpose: the channel sum of a layer's piece is taken
on the layer's grid and resized once (a linear resize commutes with the sum, so this
equals resizing each channel, up to rounding, with a K-fold smaller intermediate); 1-D
and 3-D inputs are supported (linear resizes; pytorch-grad-cam resizes 3-D maps with
scipy's cubic zoom); the target may be any objective explain takes; ``minmax=False``
returns the sum before the last scaling (what tests/test_peer_golden.py compares).

Examples:
    FullGrad of a small Linen model: maps at input resolution, scaled to [0, 1]:

    >>> import jax
    >>> import flax.linen as nn
    >>> import ifa_jax
    >>> class Net(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         a = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
    ...         return nn.Dense(3, name="head")(a.mean(axis=(1, 2)))
    >>> net = Net()
    >>> x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1))
    >>> variables = net.init(jax.random.key(1), x)
    >>> probe = ifa_jax.linen_probe(net, "conv")
    >>> _, result = ifa_jax.fullgrad.fullgrad(probe, variables, x, 0)
    >>> result.cam.shape
    (2, 8, 8)
    >>> [(round(float(m.min()), 4), round(float(m.max()), 4)) for m in result.cam]
    [(0.0, 1.0), (0.0, 1.0)]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ifa_jax import cams
from ifa_jax._stats import minmax_per_image
from ifa_jax._taps import explained_errors, layer_key
from ifa_jax.explaining.explainer import Explanation, explain
from ifa_jax.probes.core import LayerProbe, LinenModel, Target, select_output
from ifa_jax.probes.layers import resolve_layer
from ifa_jax.probes.linen import linen_calls

Array = jax.Array

EPS = 1e-7  # pytorch-grad-cam's scale_cam_image
BIASED = (nn.Conv, nn.BatchNorm)  # the modules taken when layers=None (Conv2d, BatchNorm2d)

# tapped(variables, x, deltas) -> (logits, {layer: z (B, *grid, K)}, {layer: b (K,)})
BiasTapped = Callable[[Any, Array, Mapping[str, Array] | None], tuple[Array, dict, dict]]


# --------------------------------------------------------------------------- pieces


def channel_piece(v: Array, spatial: tuple[int, ...]) -> Array:
    """One FullGrad piece (B, *spatial) from |.| maps v (B, *grid, K): each image and
    channel min-max scaled over the grid (eps 1e-7), summed over channels, resized
    linearly to ``spatial`` (half-pixel centres, no antialiasing: cv2's INTER_LINEAR)."""
    B, K = v.shape[0], v.shape[-1]
    per = jnp.moveaxis(v, -1, 1).reshape(B * K, *v.shape[1:-1])
    summed = minmax_per_image(per, EPS).reshape(B, K, *v.shape[1:-1]).sum(axis=1)
    if summed.shape[1:] == spatial:
        return summed
    return jax.image.resize(summed, (B, *spatial), method="linear", antialias=False)


def _module_bias(module: nn.Module) -> Array:
    """The bias b (K,) of a Linen module with a ``bias`` parameter; a BatchNorm's
    effective bias beta - mean * gamma / sqrt(var + eps)."""
    bias = module.variables["params"]["bias"]
    if isinstance(module, nn.BatchNorm):
        stats = module.variables["batch_stats"]
        scale = module.variables["params"].get("scale", 1.0)
        bias = bias - stats["mean"] * scale / jnp.sqrt(stats["var"] + module.epsilon)
    return bias


def _linen_tapped(linen: LinenModel, layers: tuple[str, ...] | None) -> BiasTapped:
    """The Linen model tapped at ``layers`` (None: every Conv/BatchNorm with a bias)."""
    model, kwargs = linen.module, dict(linen.apply_kwargs)

    def chosen(variables, x) -> dict[str, str]:
        """{module path: layer key} of the tapped modules."""
        calls = linen_calls(model, variables, x, **kwargs)
        if layers is not None:
            paths = [c.path for c in calls]
            return {resolve_layer(name, paths): name for name in layers}
        found: list[str] = []

        def record(next_fun, args, kw, context):
            m = context.module
            path = "/".join(m.path)
            biased = isinstance(m, BIASED) and m.has_variable("params", "bias")
            if context.method_name == "__call__" and biased and path and path not in found:
                found.append(path)
            return next_fun(*args, **kw)

        def run(variables, x):
            with nn.intercept_methods(record):
                return model.apply(variables, x, **kwargs)

        jax.eval_shape(run, variables, x)
        if not found:
            listing = ", ".join(f"{c.path} ({c.kind})" for c in calls) or "(none)"
            raise ValueError(
                f"fullgrad found no Conv or BatchNorm with a bias in the model; name the "
                f"biased layers with layers=(...). Modules: {listing}"
            )
        order = {c.path: c.end for c in calls}
        return {p: p for p in sorted(found, key=lambda p: order.get(p, 0))}

    def tapped(variables, x, deltas):
        paths = chosen(variables, x)
        zs: dict[str, Array] = {}
        bs: dict[str, Array] = {}

        def tap(next_fun, args, kw, context):
            out = next_fun(*args, **kw)
            path = "/".join(context.module.path)
            if context.method_name != "__call__" or path not in paths:
                return out
            name = paths[path]
            if name in zs:
                raise ValueError(
                    f"layer {name!r} ({path}) is called more than once per forward pass; "
                    "fullgrad needs one output per biased layer"
                )
            if not context.module.has_variable("params", "bias"):
                raise ValueError(
                    f"layer {name!r} ({path}, a {type(context.module).__name__}) has no bias "
                    "parameter, so it adds no FullGrad piece; name layers with a bias"
                )
            zs[name], bs[name] = out, _module_bias(context.module)
            return out + deltas[name] if deltas is not None and name in deltas else out

        with explained_errors(x), nn.intercept_methods(tap):
            out = model.apply(variables, x, **kwargs)
        return select_output(out, linen.output), zs, bs

    return tapped


def _child(tree: Any, key: str) -> Any:
    """One step down a layer path: a mapping key, a sequence index or an attribute (an
    Equinox module's field)."""
    if key.isdigit() and isinstance(tree, Sequence) and not isinstance(tree, str):
        return tree[int(key)]
    node: Any = tree
    try:
        return node[key]
    except (KeyError, IndexError, TypeError, ValueError):
        return getattr(tree, key)


def _at_path(tree: Any, name: str) -> Any:
    """The subtree of a layer: a flat Haiku key (``"net/~/conv"`` read as ``"net/conv"``,
    or a unique suffix of it) or nested keys, indices and attributes along ``name``."""
    if isinstance(tree, Mapping):
        flat = {k.replace("/~/", "/"): k for k in tree if isinstance(k, str) and "/~/" in k}
        hits = [flat[k] for k in flat if k == name or k.endswith("/" + name)]
        if len(hits) == 1:
            return tree[hits[0]]
    for key in name.split("/"):
        tree = _child(tree, key)
    return tree


def _bias_vector(bias: Any) -> Array:
    """A bias as (K,): Equinox's convolutions keep theirs as (K, 1, ...)."""
    bias = bias.get_value() if hasattr(bias, "get_value") else bias
    bias = jnp.asarray(bias)
    return bias.reshape(-1) if bias.ndim > 1 and bias.size == bias.shape[0] else bias


BIAS_NAMES = ("bias", "b")  # Linen, NNX, Equinox: "bias"; Haiku: "b"


def _variables_bias(variables: Any, name: str) -> Array:
    """A layer's bias (K,) in the variables at its path: ``bias`` (Linen, NNX, Equinox) or
    ``b`` (Haiku), also under ``"params"`` or in a Haiku (params, state) pair."""
    roots = [variables]
    if isinstance(variables, Mapping) and "params" in variables:
        roots.append(variables["params"])
    if isinstance(variables, tuple) and len(variables) == 2:
        roots.append(variables[0])
    for root in roots:
        try:
            layer = _at_path(root, name)
        except (KeyError, IndexError, TypeError, AttributeError, ValueError):
            continue
        for bias_name in BIAS_NAMES:
            try:
                bias = _child(layer, bias_name)
            except (KeyError, IndexError, TypeError, AttributeError, ValueError):
                continue
            if hasattr(bias, "shape") or hasattr(bias, "get_value"):
                return _bias_vector(bias)
    raise ValueError(
        f"fullgrad found no bias for layer {name!r} in the variables (looked for "
        f"{' or '.join(repr(b) for b in BIAS_NAMES)} at path {name!r}, also under 'params'); "
        "name layers with a bias parameter at their path, or use a linen_probe"
    )


def _probe_tapped(probe: LayerProbe, layers: tuple[str, ...] | None) -> BiasTapped:
    """A probe's own tapped layers ``layers``, biases read from the variables."""
    if layers is None:
        raise ValueError(
            "fullgrad finds the biased layers by itself for linen_probe models only; for this "
            f"probe pass layers=(...): layers it taps that have a bias (it taps "
            f"{', '.join(probe.layers)})"
        )
    # "layers.0" and "layers/0" name the same layer
    tapped_keys = {layer_key(name): name for name in probe.layers}
    layers = tuple(tapped_keys.get(layer_key(name), name) for name in layers)
    missing = [name for name in layers if name not in probe.layers]
    if missing:
        raise ValueError(
            f"fullgrad layers {missing} are not tapped by this probe (it taps "
            f"{', '.join(probe.layers)}); rebuild the probe with them among its tapped layers "
            "(its layers argument; where for equinox_probe)"
        )

    def tapped(variables, x, deltas):
        logits, acts = probe.tapped(variables, x, deltas)
        zs = {name: acts[name] for name in layers}
        bs = {name: _variables_bias(variables, layer_key(name)) for name in layers}
        for name in layers:
            K = zs[name].shape[-1]
            if bs[name].shape != (K,):
                raise ValueError(
                    f"fullgrad layer {name!r} has a bias of shape {tuple(bs[name].shape)}, "
                    f"not ({K},) for its {K} output channels; name layers whose bias is "
                    "one value per output channel"
                )
        return logits, zs, bs

    return tapped


def _check(x: Array, zs: Mapping[str, Any]) -> None:
    if not jnp.issubdtype(x.dtype, jnp.floating) or not 3 <= x.ndim <= 5:
        raise ValueError(
            f"fullgrad differentiates the input: x must be floating, (B, *spatial_in, C) "
            f"with 1-3 spatial axes; got shape {tuple(x.shape)}, dtype {x.dtype}"
        )
    for name, z in zs.items():
        if z.ndim != x.ndim:
            raise ValueError(
                f"fullgrad layer {name!r} outputs shape {tuple(z.shape)}, not a grid "
                f"(B, *spatial, K) with the input's {x.ndim - 2} spatial axes; name "
                "convolutional layers"
            )


def layer_names(layers: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """layers= as a tuple of names (one name may be a string); None: found by fullgrad."""
    if layers is None:
        return None
    names = (layers,) if isinstance(layers, str) else tuple(layers)
    if not names or not all(isinstance(name, str) for name in names):
        raise ValueError(
            f"fullgrad layers={layers!r} must name one layer or several, e.g. 'conv2' or "
            "('conv1', 'conv2'); or None for a linen_probe's Conv and BatchNorm layers"
        )
    return names


def fullgrad_pieces(model: cams.ModelInputs, layers: str | Sequence[str] | None = None):
    """(pieces (B, 1 + n, *spatial_in), layer names (n,)): the input's piece, then one per
    biased layer, before their sum (see the module doc). ``layers``: one name, several, or
    None (a linen_probe's biased layers). Traceable."""
    probe, variables, x = model.probe, model.variables, model.x
    linen = getattr(probe, "linen", None)
    layers = layer_names(layers)
    tapped = _linen_tapped(linen, layers) if linen is not None else _probe_tapped(probe, layers)
    _, shapes, _ = jax.eval_shape(lambda v, x: tapped(v, x, None), variables, x)
    _check(x, shapes)
    zeros = {k: jnp.zeros(s.shape, s.dtype) for k, s in shapes.items()}

    def total(x, deltas):
        logits, _, bs = tapped(variables, x, deltas)
        logits = logits[:, None] if logits.ndim == 1 else logits
        # samples are independent, so d(sum_n y_n)/dx_n = dy_n/dx_n
        return jnp.sum(model.score(logits, model.target)), bs

    (gx, gz), bs = jax.grad(total, argnums=(0, 1), has_aux=True)(x, zeros)
    spatial = tuple(x.shape[1:-1])
    pieces = [channel_piece(jnp.abs(x * gx), spatial)]
    pieces += [channel_piece(jnp.abs(bs[k] * gz[k]), spatial) for k in shapes]
    return jnp.stack(pieces, axis=1), tuple(shapes)


def fullgrad_map(
    model: cams.ModelInputs, *, layers: str | tuple[str, ...] | None = None, minmax: bool = True
) -> Array:
    """FullGrad's map (B, *spatial_in): the function of the method "fullgrad" (kind
    "input"; its entry is in :mod:`ifa_jax.cams.builtin`)."""
    pieces, _ = fullgrad_pieces(model, layers)
    total = jnp.sum(pieces, axis=1)
    return minmax_per_image(total, EPS) if minmax else total


def fullgrad(
    probe: LayerProbe,
    variables: Any,
    x: Array,
    target: Target = "predicted",
    *,
    score: str = "logit",
    layers: str | Sequence[str] | None = None,
    minmax: bool = True,
) -> Explanation:
    """FullGrad of x (B, *spatial_in, C): an :class:`Explanation` whose ``cam_result.cam``
    holds the maps (B, *spatial_in), in [0, 1] (``minmax``).

    ``probe``: a :func:`ifa_jax.linen_probe` of the model at any layer (its biased layers
    are found anew: every Conv and BatchNorm with a bias), or another probe tapping the
    biased ``layers``. target and score as in :func:`ifa_jax.explain`; the same as
    ``explain(probe, variables, x, target, "fullgrad", layers=..., minmax=...)``.

    Args:
        probe: the model's :class:`~ifa_jax.probes.LayerProbe`.
        variables: the variables the probe is called with.
        x: inputs (B, *spatial_in, C).
        target: an int, an int array (B,), ``'predicted'`` or a callable
            ``logits (B, O) -> (B,)``.
        score: ``'logit'`` or ``'probability'``.
        layers: the biased layers to sum over, or None (every Conv and BatchNorm with a bias
            of a Linen model).
        minmax: whether to scale each map to [0, 1].

    Returns:
        An :class:`~ifa_jax.explaining.explainer.Explanation` whose CAM result holds the
        maps (B, *spatial_in) at input resolution (K = 1).
    """
    return explain(
        probe,
        variables,
        x,
        target,
        "fullgrad",
        score=score,
        layers=layer_names(layers),
        minmax=minmax,
    )

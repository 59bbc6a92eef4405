"""Guided Backpropagation and Guided GradCAM at input resolution, for any JAX model.

Guided backpropagation (Springenberg et al. 2015) is the gradient of the target score
with respect to the input x (B, *spatial_in, C), where every ReLU's backward pass lets
only positive gradients through, and only where its forward input was positive::

    grad_in = relu(grad_out) * (x > 0)        (the plain ReLU: grad_out * (x > 0))

Guided GradCAM (Selvaraju et al. 2017) multiplies that saliency by a CAM, rectified and
upsampled to the input grid: ``guided * upsample(relu(L))[..., None]``, with any method
of :data:`ifa_jax.cams.REGISTRY` in place of GradCAM (through :func:`ifa_jax.explain`).

How: :func:`guided_relus` traces the model's forward to a jaxpr and evaluates it again
with every ReLU replaced by a ``jax.custom_vjp`` guided ReLU, so it needs no change to
the model and works for Linen, NNX, Equinox, Haiku and plain functions alike; the
gradient is then an ordinary ``jax.grad``, under ``jit``. A ReLU is ``jax.nn.relu``
(Flax's, NNX's and Equinox's relu are the same function) or ``max(x, 0)`` written
directly (``jnp.maximum(x, 0.0)``). The evaluation steps into ``jit``, ``jax.checkpoint``,
``lax.scan`` and ``lax.cond``. Functions with their own derivative rule keep it: a
``jax.custom_jvp`` other than relu (``jax.nn.relu6``, a user's) is not rewritten; a ReLU
inside a ``jax.custom_vjp`` function or another primitive the evaluation cannot enter
(``lax.while_loop``, ``shard_map``, ...) raises a ValueError naming it.

Against pytorch-grad-cam 1.5.7 (``GuidedBackpropReLUModel``): the same backward rule,
but it swaps ``torch.nn.ReLU`` modules only (a functional ``F.relu`` stays plain) while
every ReLU is guided here (JAX has no module boundary to tell them apart); it explains
the first sample of the batch only, for the argmax over its whole output, where we
explain every sample for its own target; and its Guided GradCAM multiplies by the CAM
min-max scaled to [0, 1] per image, where we keep the CAM's raw scale (the two agree up
to a positive factor per image whenever the rectified CAM is 0 somewhere).

Examples:
    A guided ReLU passes back only positive gradients, where its input is positive;
    Guided GradCAM puts the saliency at input resolution:

    >>> import jax, jax.numpy as jnp
    >>> from ifa_jax.explaining.guided import guided_relu
    >>> v = jnp.array([-1.0, 2.0, 3.0])
    >>> jax.grad(lambda v: (guided_relu(v) * jnp.array([1.0, 1.0, -1.0])).sum())(v).tolist()
    [0.0, 1.0, 0.0]
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
    >>> guided = ifa_jax.guided_gradcam(probe, variables, x, 0, "gradcam")
    >>> guided.guided_cam.shape, guided.guided.shape, guided.cam.shape
    ((2, 8, 8, 1), (2, 8, 8, 1), (2, 8, 8))
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np

from ifa_jax import cams
from ifa_jax._checks import index_targets, is_traced, one_of, outputs_in_range
from ifa_jax.explaining.explainer import callable_target, explain
from ifa_jax.probes import SCORES, LayerProbe, ProbeResult, Target, select_output, target_scores

Array = jax.Array

# Primitives that call one jaxpr on their operands: evaluated inline (param name of it).
_CALLS = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "remat": "jaxpr",
    "remat2": "jaxpr",
    "checkpoint": "jaxpr",
}


# --------------------------------------------------------------------------- the guided ReLU


@jax.custom_vjp
def guided_relu(x: Array) -> Array:
    """relu(x), whose backward pass is guided: grad_in = relu(grad_out) * (x > 0)."""
    return jnp.maximum(x, jnp.zeros_like(x))


def _guided_relu_fwd(x):
    return guided_relu(x), x


def _guided_relu_bwd(x, g):
    return (jnp.where((x > 0) & (g > 0), g, jnp.zeros_like(g)),)


guided_relu.defvjp(_guided_relu_fwd, _guided_relu_bwd)


# --------------------------------------------------------------------------- the interpreter


def _is_zero_literal(v) -> bool:
    if not isinstance(v, jex.Literal):
        return False
    value = np.asarray(v.val)  # NumPy: a jnp op would be staged under an outer jit
    return value.ndim == 0 and bool(value == 0)


def _open(jaxpr) -> tuple[Any, Sequence[Any]]:
    """(Jaxpr, consts) of a Jaxpr or ClosedJaxpr."""
    if isinstance(jaxpr, jex.ClosedJaxpr):
        return jaxpr.jaxpr, jaxpr.consts
    return jaxpr, ()


def _called(eqn) -> Any | None:
    """The jaxpr a call-like equation (jit, checkpoint, ...) evaluates, else None."""
    param = _CALLS.get(eqn.primitive.name)
    return eqn.params.get(param) if param else None


def _max_with_zero(eqn) -> Any | None:
    """x of an equation max(x, 0) or max(0, x), else None."""
    if eqn.primitive.name != "max":
        return None
    a, b = eqn.invars
    if _is_zero_literal(b):
        return a
    return b if _is_zero_literal(a) else None


def _computes_relu(jaxpr) -> bool:
    """Whether a jaxpr is x -> max(x, 0), possibly inside calls (jax.nn.relu's body)."""
    if len(jaxpr.invars) != 1 or len(jaxpr.outvars) != 1 or len(jaxpr.eqns) != 1:
        return False
    (eqn,) = jaxpr.eqns
    if eqn.outvars[0] is not jaxpr.outvars[0]:
        return False
    called = _called(eqn)
    if called is not None:
        return eqn.invars == jaxpr.invars and _computes_relu(_open(called)[0])
    return _max_with_zero(eqn) is jaxpr.invars[0]


def _relu_operand(eqn) -> Any | None:
    """The floating operand x of a ReLU equation, else None: ``max(x, 0)``, or a
    ``jax.custom_jvp`` function that computes max(x, 0) (``jax.nn.relu``)."""
    if eqn.primitive.name == "custom_jvp_call":
        body = _open(eqn.params["call_jaxpr"])[0]
        operand = eqn.invars[0] if len(eqn.invars) == 1 and _computes_relu(body) else None
    else:
        operand = _max_with_zero(eqn)
    if operand is None or not jnp.issubdtype(operand.aval.dtype, jnp.floating):
        return None
    return operand


def _sub_jaxprs(params):
    """The jaxprs among an equation's params, alone or in tuples (as
    ``jax.extend.core.jaxprs_in_params``, which jax 0.8 does not have)."""
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, (jex.Jaxpr, jex.ClosedJaxpr)):
                yield item


def _relu_inside(eqn) -> bool:
    """Whether a ReLU the evaluation would rewrite occurs in the equation's sub-jaxprs
    (a custom_jvp other than relu is bound whole, so its body does not count)."""
    if eqn.primitive.name == "custom_jvp_call":
        return False
    for sub in _sub_jaxprs(eqn.params):
        jaxpr, _ = _open(sub)
        if any(_relu_operand(e) is not None or _relu_inside(e) for e in jaxpr.eqns):
            return True
    return False


def _unsupported(eqn) -> ValueError:
    name = eqn.primitive.name
    if name == "custom_vjp_call":
        fix = (
            "the function has its own backward pass (jax.custom_vjp), which guided "
            "backpropagation cannot rewrite; explain a version of the model without the "
            "custom_vjp"
        )
    else:
        fix = (
            "guided backpropagation enters jit, jax.checkpoint, lax.scan and lax.cond; "
            "write the ReLU outside it, or use lax.scan for a loop of known length"
        )
    return ValueError(f"the model has a ReLU inside the primitive {name!r}: {fix}")


def _bind(eqn, invals: list[Any]) -> list[Any]:
    """Apply an equation's primitive unchanged (as jax.core.eval_jaxpr does)."""
    params = eqn.primitive.get_bind_params(eqn.params)
    subfuns: Sequence[Any] = ()
    if isinstance(params, tuple):  # older jax: (subfuns, params)
        subfuns, params = params
    ctx = getattr(getattr(eqn, "ctx", None), "manager", None) or contextlib.nullcontext()
    with ctx:
        out = eqn.primitive.bind(*subfuns, *invals, **params)
    return list(out) if eqn.primitive.multiple_results else [out]


def _scan(eqn, invals: list[Any]) -> list[Any]:
    p = eqn.params
    n_consts, n_carry = p["num_consts"], p["num_carry"]
    consts, init, xs = (
        invals[:n_consts],
        invals[n_consts : n_consts + n_carry],
        invals[n_consts + n_carry :],
    )
    body, body_consts = _open(p["jaxpr"])

    def step(carry, x):
        out = _evaluate(body, body_consts, *consts, *carry, *x)
        return out[:n_carry], out[n_carry:]

    carry, ys = jax.lax.scan(
        step, init, xs, length=p["length"], reverse=p["reverse"], unroll=p.get("unroll", 1)
    )
    return [*carry, *ys]


def _cond(eqn, invals: list[Any]) -> list[Any]:
    index, *operands = invals
    branches = [functools.partial(_evaluate, *_open(branch)) for branch in eqn.params["branches"]]
    return list(jax.lax.switch(index, [lambda ops, b=b: b(*ops) for b in branches], operands))


def _evaluate(jaxpr, consts: Sequence[Any], *args: Any) -> list[Any]:
    """Evaluate a jaxpr with every ReLU replaced by :func:`guided_relu`."""
    env: dict[Any, Any] = {}

    def read(v):
        return v.val if isinstance(v, jex.Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        operand = _relu_operand(eqn)
        if operand is not None:
            out = [guided_relu(read(operand))]
        elif _called(eqn) is not None:
            out = _evaluate(*_open(_called(eqn)), *invals)
        elif name == "scan":
            out = _scan(eqn, invals)
        elif name == "cond":
            out = _cond(eqn, invals)
        elif _relu_inside(eqn):
            raise _unsupported(eqn)
        else:
            out = _bind(eqn, invals)
        env.update(zip(eqn.outvars, out))
    return [read(v) for v in jaxpr.outvars]


def guided_relus(f: Callable[..., Any]) -> Callable[..., Any]:
    """``f`` with every ReLU's backward pass guided; the same values as ``f``.

    ``jax.grad`` of the result gives guided gradients (see the module doc for what counts
    as a ReLU). ``f`` takes and returns pytrees of arrays; it is traced on each call, so
    jit the caller.
    """

    @functools.wraps(f)
    def wrapped(*args):
        closed, out_shape = jax.make_jaxpr(f, return_shape=True)(*args)
        out = _evaluate(closed.jaxpr, closed.consts, *jax.tree.leaves(args))
        return jax.tree.unflatten(jax.tree.structure(out_shape), out)

    return wrapped


# --------------------------------------------------------------------------- saliency


@dataclasses.dataclass(frozen=True)
class _Unary:
    """forward(x) seen as forward(params, x); hashed by the function (a jit cache key)."""

    forward: Callable[[Array], Any]

    def __call__(self, params, x):
        return self.forward(x)


@dataclasses.dataclass(frozen=True)
class _ProbeForward:
    """probe.forward(variables, x); hashed by the probe (a jit cache key)."""

    probe: LayerProbe

    def __call__(self, variables, x):
        return self.probe.forward(variables, x)


def _as_2d(logits: Array) -> Array:
    return logits[:, None] if logits.ndim == 1 else logits


def _saliency(forward, params, x, target, *, mode, fn, score):
    """Guided gradients (B, *spatial_in, C) of the targets' scores (see guided_backprop),
    and the logits (B, O)."""
    guided_forward = guided_relus(forward)

    def total(x):
        logits = _as_2d(select_output(guided_forward(params, x)))
        if mode == "callable":
            y = fn(logits)
        else:
            idx = jnp.argmax(logits, -1) if mode == "predicted" else target
            y = target_scores(logits, idx, score)
        if y.shape != (x.shape[0],):
            raise ValueError(
                f"a callable target must return one score per sample, shape ({x.shape[0]},); "
                f"got {y.shape}"
            )
        return jnp.sum(y), logits  # samples are independent: d(sum y)/dx_n = dy_n/dx_n

    return jax.grad(total, has_aux=True)(x)


_jit_saliency = jax.jit(_saliency, static_argnames=("forward", "mode", "fn", "score"))


def _resolve_target(x: Array, target: Target):
    """(mode, callable, indices) for _saliency."""
    if target is None or (isinstance(target, str) and target == "predicted"):
        return "predicted", None, None
    fn = callable_target(target)
    if fn is not None:
        return "callable", fn, None
    if isinstance(target, str):
        raise ValueError(
            f"target {target!r} is not understood; use 'predicted', an int, an int array "
            "of shape (B,) (e.g. the labels) or a callable logits -> (B,)"
        )
    return "index", None, index_targets(target, x.shape[0])


def _check_input(x: Array) -> Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"guided backpropagation differentiates the input, so x must be floating; got "
            f"dtype {x.dtype}: pass x.astype(jnp.float32)"
        )
    if not 3 <= x.ndim <= 5:
        raise ValueError(
            f"x must be (B, *spatial_in, C) with 1-3 spatial axes; got shape {tuple(x.shape)}"
        )
    return x


def _guided_saliency(forward, params, x, target, score):
    one_of("score", score, SCORES)
    x = _check_input(x)
    mode, fn, t = _resolve_target(x, target)
    guided, logits = _jit_saliency(forward, params, x, t, mode=mode, fn=fn, score=score)
    if t is not None and not is_traced(t, x):
        outputs_in_range(t, logits.shape[-1])
    return guided


def guided_backprop(
    forward: Callable[[Array], Any],
    x: Array,
    target: Target = "predicted",
    *,
    score: str = "logit",
) -> Array:
    """Guided backpropagation: d score / d x with guided ReLUs, (B, *spatial_in, C).

    forward: x -> logits (B, O), e.g. ``functools.partial(model.apply, variables)`` or
    ``lambda x: probe.forward(variables, x)``. x: (B, *spatial_in, C) floating.
    target: ``'predicted'`` (each sample's argmax), an int, an int array (B,), or a
    callable logits (B, O) -> score (B,). score: ``'logit'`` or ``'probability'``.
    Compiled once per ``forward`` object and input shape (pass the same ``forward`` to
    reuse it); traceable, so it may also be called under ``jit``, ``vmap`` or ``grad``.

    Args:
        forward: ``x -> logits (B, O)``.
        x: inputs (B, *spatial_in, C), floating.
        target: ``'predicted'``, an int, an int array (B,) or a callable
            ``logits (B, O) -> (B,)``.
        score: ``'logit'`` or ``'probability'``.

    Returns:
        The guided saliency (B, *spatial_in, C).

    Raises:
        ValueError: x is not floating, or an invalid target or score.
    """
    return _guided_saliency(_Unary(forward), None, x, target, score)


class GuidedGradCam(NamedTuple):
    """What :func:`guided_gradcam` returns.

    guided_cam: (B, *spatial_in, C) guided backprop times the rectified, upsampled CAM.
    guided: (B, *spatial_in, C) the guided-backprop saliency. cam: (B, *spatial_in)
    relu(L) upsampled to the input grid. probe_result, cam_result: what
    :func:`ifa_jax.explain` returned (the CAM on the layer's grid).
    """

    guided_cam: Array
    guided: Array
    cam: Array
    probe_result: ProbeResult
    cam_result: cams.CamResult


def guided_gradcam(
    probe: LayerProbe,
    variables: Any,
    x: Array,
    target: Target = "predicted",
    method: str | cams.Method = "gradcam",
    *,
    score: str = "logit",
    layer: str | None = None,
    mask: Array | None = None,
    chunk_size: int = 16,
    key: Array | None = None,
    **options: Any,
) -> GuidedGradCam:
    """Guided GradCAM (or Guided <any CAM method>) at input resolution.

    x: (B, *spatial_in, C) floating. The CAM comes from
    ``explain(probe, variables, x, target, method, ...)`` (``layer``, ``mask``,
    ``chunk_size``, ``key`` and the method's ``options`` as there); the guided saliency
    explains the same targets (x's predicted classes for ``'predicted'``) through
    ``probe.forward``. Returns a :class:`GuidedGradCam` whose ``guided_cam`` is
    ``guided * upsample(relu(L), spatial_in)[..., None]`` (linear upsampling, as
    :func:`ifa_jax.cams.upsample`).

    Args:
        probe: the model's :class:`~ifa_jax.probes.LayerProbe`.
        variables: the variables the probe is called with.
        x: inputs (B, *spatial_in, C).
        target: an int, an int array (B,), ``'predicted'`` or a callable
            ``logits (B, O) -> (B,)``, as for the probe.
        method: a registered method of kind ``"layer"``, as for :func:`ifa_jax.explain`.
        score: ``'logit'`` or ``'probability'``.
        layer: the layer of a multi-layer probe, or None.
        mask: channel weights (K,) or (B, K), or None.
        chunk_size: channels per model call of the forward methods.
        key: a PRNG key, for methods that need one.
        **options: the method's keyword options.

    Returns:
        A :class:`GuidedGradCam`: guided_cam and guided (B, *spatial_in, C), cam
        (B, *spatial_in), and what :func:`ifa_jax.explain` returned.

    Raises:
        ValueError: x is not floating, or as :func:`ifa_jax.explain` raises.
    """
    x = _check_input(x)
    result, cam_result = explain(
        probe,
        variables,
        x,
        target,
        method,
        mask=mask,
        score=score,
        layer=layer,
        chunk_size=chunk_size,
        key=key,
        **options,
    )
    fn = callable_target(target)
    guided = _guided_saliency(
        _ProbeForward(probe), variables, x, fn if fn is not None else result.target, score
    )
    heat = cams.upsample(jnp.maximum(cam_result.cam, 0.0), tuple(x.shape[1:-1]))
    return GuidedGradCam(guided * heat[..., None], guided, heat, result, cam_result)

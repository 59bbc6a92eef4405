"""The CAM family as pure, rank-agnostic functions of activations A and gradients G.

Every method gives per-channel contribution maps ``M_k`` (docs/method.md section 2),
mostly ``M_k = w_k * A_k`` with ``w_k`` a scalar per sample and channel or a map on the
grid. From M: the raw CAM ``L = sum_k m_k M_k``, the per-sample channel importances
``s_k`` and ``max(L)``, ``min(L)`` on the feature grid (:func:`reduce`).

Shapes: A, G: (B, *spatial, K) with 1-3 spatial axes; masks m: (K,) or (B, K).
All functions jit, vmap and differentiate (``jax.grad`` through a CAM works).

The package, bottom up:

* :mod:`~ifa_jax.cams.method`: what a method is: its inputs (:class:`CamInputs`,
  :class:`ForwardPasses`, :class:`ModelInputs`), one entry type per kind
  (:class:`LayerMethod`, :class:`LayersMethod`, :class:`InputMethod`, bases of
  :class:`Method`) and a ``Protocol`` for each kind's function.
* :mod:`~ifa_jax.cams.registry`: the table :data:`REGISTRY`, :func:`register_method`,
  :func:`get_method`, the live lists (:data:`METHODS`, ...) and the options' checks.
* the method families: :mod:`~ifa_jax.cams.gradient` (GradCAM, GradCAM++, ...),
  :mod:`~ifa_jax.cams.activation` (FEM, random), :mod:`~ifa_jax.cams.eigen` (EigenCAM,
  kernel PCA, ...), :mod:`~ifa_jax.cams.forward` (score-based and other methods that run
  the model), :mod:`~ifa_jax.cams.legrad`, :mod:`~ifa_jax.cams.refinecam`.
* :mod:`~ifa_jax.cams.reduction`: from M to a CAM (:func:`contributions`, :func:`cam`,
  :func:`reduce`) and across layers (:func:`cam_layers`, :func:`cams_per_layer`,
  :func:`fuse`, :func:`upsample`).
* :mod:`~ifa_jax.cams.builtin`: the table of the 25 built-in methods, all registered
  when this package is imported.

Examples:
    GradCAM from activations and gradients of a (2, 4, 4) grid of 3 channels:

    >>> import jax, jax.numpy as jnp
    >>> from ifa_jax import cams
    >>> A = jnp.arange(96.0).reshape(2, 4, 4, 3) % 5             # (B, H, W, K)
    >>> G = jnp.cos(jnp.arange(96.0)).reshape(2, 4, 4, 3)
    >>> result = cams.cam(A, G, "gradcam")
    >>> result.contributions.shape, result.cam.shape, result.importance.shape, result.max.shape
    ((2, 4, 4, 3), (2, 4, 4), (2, 3), (2,))
    >>> cams.upsample(result.cam, (8, 8)).shape
    (2, 8, 8)
"""

from ifa_jax.cams import builtin
from ifa_jax.cams._grid import spatial_axes
from ifa_jax.cams.activation import FEM_K
from ifa_jax.cams.eigen import KPCA_KERNELS
from ifa_jax.cams.forward import (
    FINER_ALPHA,
    FINER_BASES,
    FINER_EPS,
    ISCAM_SAMPLES,
    SMOOTH_SAMPLES,
    SMOOTH_STD,
    SSCAM_SAMPLES,
    SSCAM_STD,
    ablation_weights,
    finer_comparisons,
    finer_objective,
    iscam_coefficients,
    layer_gradient,
    scorecam_weights,
)
from ifa_jax.cams.gradient import EPS, GRADCAMPP_EPS, XGRADCAM_EPS
from ifa_jax.cams.method import (
    KINDS,
    NEEDS,
    Array,
    CamInputs,
    CamResult,
    ForwardFn,
    ForwardPasses,
    InputFn,
    InputMethod,
    LayerFn,
    LayerMethod,
    LayersFn,
    LayersMethod,
    Method,
    ModelInputs,
)
from ifa_jax.cams.reduction import (
    cam,
    cam_layers,
    cams_per_layer,
    contributions,
    fuse,
    map_result,
    reduce,
    reduce_weighted,
    upsample,
)
from ifa_jax.cams.refinecam import REFINE_EPS
from ifa_jax.cams.registry import (
    ALIASES,
    FORWARD_METHODS,
    GRADIENT_METHODS,
    LAYER_METHODS,
    LAYERS_METHODS,
    METHODS,
    REGISTRY,
    MethodName,
    canonical_method,
    get_method,
    method_options,
    options_per_method,
    register_method,
    registered,
    require_key,
    unregister_method,
)

builtin.register_builtins()

__all__ = [
    "ALIASES",
    "Array",
    "CamInputs",
    "CamResult",
    "EPS",
    "FEM_K",
    "FINER_ALPHA",
    "FINER_BASES",
    "FINER_EPS",
    "FORWARD_METHODS",
    "ForwardFn",
    "ForwardPasses",
    "GRADCAMPP_EPS",
    "GRADIENT_METHODS",
    "ISCAM_SAMPLES",
    "InputFn",
    "InputMethod",
    "KINDS",
    "KPCA_KERNELS",
    "LAYERS_METHODS",
    "LAYER_METHODS",
    "LayerFn",
    "LayerMethod",
    "LayersFn",
    "LayersMethod",
    "METHODS",
    "Method",
    "MethodName",
    "ModelInputs",
    "NEEDS",
    "REFINE_EPS",
    "REGISTRY",
    "SMOOTH_SAMPLES",
    "SMOOTH_STD",
    "SSCAM_SAMPLES",
    "SSCAM_STD",
    "XGRADCAM_EPS",
    "ablation_weights",
    "cam",
    "cam_layers",
    "cams_per_layer",
    "canonical_method",
    "contributions",
    "finer_comparisons",
    "finer_objective",
    "fuse",
    "get_method",
    "iscam_coefficients",
    "layer_gradient",
    "map_result",
    "method_options",
    "options_per_method",
    "reduce",
    "reduce_weighted",
    "register_method",
    "registered",
    "require_key",
    "scorecam_weights",
    "spatial_axes",
    "unregister_method",
    "upsample",
]

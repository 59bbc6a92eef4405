"""The built-in methods: one table, :data:`BUILTIN_METHODS`, registered by
:mod:`ifa_jax.cams` when it is imported (all of them, whatever else is imported).

Methods of kind ``"input"`` run the whole model and live in a higher layer
(:mod:`ifa_jax.explaining`); their entries name their function by module path
(:class:`FunctionAt`), imported on first use, so this table imports nothing above cams.
Adding a built-in method is one entry here (and its reference in tests/reference.py);
its ``peers`` name the golden comparisons with pytorch-grad-cam and torch-cam it has
(tests/test_peer_golden.py holds the two to each other) and its ``peer_note`` how it
differs from them.

Examples:
    The table holds 25 methods; a few run the whole model (kind ``'input'``):

    >>> from ifa_jax.cams.builtin import BUILTIN_METHODS
    >>> len(BUILTIN_METHODS)
    25
    >>> [m.name for m in BUILTIN_METHODS if m.kind == "input"]
    ['fullgrad', 'sess']
    >>> [m.name for m in BUILTIN_METHODS if m.kind == "layers"]
    ['refinecam', 'legradlayers']
"""

from __future__ import annotations

import importlib

from ifa_jax.cams import activation, eigen, forward, gradient, legrad, refinecam
from ifa_jax.cams.method import (
    Array,
    InputFn,
    InputMethod,
    LayerMethod,
    LayersMethod,
    Method,
    ModelInputs,
)
from ifa_jax.cams.registry import register_method

GRADIENTS = frozenset({"gradients"})
FORWARD = frozenset({"forward_passes"})
FORWARD_KEY = frozenset({"forward_passes", "key"})

# SESS's defaults (pytorch-grad-cam's): 12 scales for a 224 input, scale step 64 / 224,
# 32 patches per model call.
SESS_NUM_SCALES = 12
SESS_SCALE_STEP = 2.0 / 7.0
SESS_BATCH = 32


class FunctionAt:
    """An :class:`~ifa_jax.cams.method.InputFn` named by module and attribute, imported
    on its first call (the module sits above cams in the layer order)."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name
        self._fn: InputFn | None = None

    def resolve(self) -> InputFn:
        """The function itself (imported now if it was not yet)."""
        fn = self._fn
        if fn is None:
            fn = self._fn = getattr(importlib.import_module(self.module), self.name)
        return fn

    def __call__(self, model: ModelInputs, /, **options) -> Array:
        """Calls the function (imported on the first call)."""
        return self.resolve()(model, **options)

    def __repr__(self) -> str:
        return f"FunctionAt({self.module!r}, {self.name!r})"


BUILTIN_METHODS: tuple[Method, ...] = (
    LayerMethod(
        "gradcam",
        gradient.gradcam,
        needs=GRADIENTS,
        summary="w_k = grid mean of G_k (Selvaraju et al. 2017)",
        peers=(
            "pytorch-grad-cam/GradCAM",
            "pytorch-grad-cam/GradCAM+eigen_smooth",
            "torch-cam/GradCAM",
        ),
        peer_note="pytorch-grad-cam's eigen_smooth projects the centred M: compared as our "
        "eigencam of the centred M, up to sign",
        weights=gradient.gradcam_weights,
    ),
    LayerMethod(
        "gradcam++",
        gradient.gradcampp,
        aliases=("gradcampp", "gradcamplusplus"),
        needs=GRADIENTS,
        options={"eps": gradient.GRADCAMPP_EPS},
        summary="w_k = sum relu(G) alpha, alpha = G^2 / (2 G^2 + sum(A_k) G^3 + eps), "
        "0 where G = 0 (Chattopadhay et al. 2018)",
        peers=("pytorch-grad-cam/GradCAMPlusPlus",),
        peer_note="torch-cam 0.5.0's GradCAMpp is not compared: its weights are the grid sum of "
        "G^2 relu(G), not GradCAM++'s",
        weights=gradient.gradcampp_channel_weights,
    ),
    LayerMethod(
        "xgradcam",
        gradient.xgradcam,
        needs=GRADIENTS,
        options={"eps": gradient.XGRADCAM_EPS},
        summary="w_k = sum(G_k A_k) / (sum(A_k) + eps) (Fu et al. 2020)",
        peers=("pytorch-grad-cam/XGradCAM", "torch-cam/XGradCAM"),
        weights=gradient.xgradcam_weights,
    ),
    LayerMethod(
        "hirescam",
        gradient.hirescam,
        aliases=("fullcam",),
        needs=GRADIENTS,
        summary="w_k = G_k element-wise (Draelos and Carin 2020)",
        peers=("pytorch-grad-cam/HiResCAM",),
    ),
    LayerMethod(
        "layercam",
        gradient.layercam,
        needs=GRADIENTS,
        summary="w_k = relu(G_k) element-wise (Jiang et al. 2021)",
        peers=("pytorch-grad-cam/LayerCAM", "torch-cam/LayerCAM"),
    ),
    LayerMethod(
        "eigencam",
        eigen.eigencam,
        summary="w_k = v_k, the first right singular vector of A (P, K), uncentred, "
        "signed so sum(A v) >= 0 (Muhammad and Yeasin 2020)",
        peers=("pytorch-grad-cam/EigenCAM",),
        peer_note="uncentred and signed; pytorch-grad-cam centres A: compared as ours of the "
        "centred A, up to sign",
    ),
    LayerMethod(
        "eigengradcam",
        eigen.eigengradcam,
        needs=GRADIENTS,
        summary="M_k = v_k (G A)_k, v from G * A as in eigencam",
        peers=("pytorch-grad-cam/EigenGradCAM",),
        peer_note="uncentred and signed; pytorch-grad-cam centres G A: compared as ours of the "
        "centred G A, up to sign",
    ),
    LayerMethod(
        "gradcamelementwise",
        gradient.elementwise,
        aliases=("elementwise",),
        needs=GRADIENTS,
        summary="M_k = relu(G_k A_k) (pytorch-grad-cam's GradCAMElementWise)",
        peers=("pytorch-grad-cam/GradCAMElementWise",),
    ),
    LayerMethod(
        "randomcam",
        activation.randomcam,
        aliases=("random",),
        needs=frozenset({"key"}),
        summary="w ~ uniform[-1, 1] per sample and channel, from key= (a baseline)",
        peer_note="not comparable: pytorch-grad-cam draws from NumPy's global random state, ours "
        "from key=",
    ),
    LayerMethod(
        "fem",
        activation.fem,
        options={"k": activation.FEM_K},
        summary="M_k = mean(A_k) [A_k > mean(A_k) + k std(A_k)] (Fuad et al. 2020)",
        peers=("pytorch-grad-cam/FEM",),
        peer_note="the paper's sum_k mean(A_k) mask_k; pytorch-grad-cam swaps the factors, sum_k "
        "mean(mask_k) A_k: compared in its formula with our masks",
    ),
    LayerMethod(
        "kpcacam",
        eigen.kpcacam,
        aliases=("kpca",),
        options={"kernel": "sigmoid", "gamma": None},
        channelwise=False,
        summary="first kernel-PCA component of the grid cells' centred channel vectors, "
        "gamma None = 1/K (Karmani et al. 2024); M_k = L / K",
        peers=("pytorch-grad-cam/KPCA_CAM",),
    ),
    LayerMethod(
        "segeigencam",
        eigen.segeigencam,
        needs=GRADIENTS,
        summary="M_k = s v_k X_k, X = |G| A centred over the grid (as pytorch-grad-cam; so "
        "every importance is 0), v its first right singular vector, s = -1 where "
        "|min L| > |max L| (Chung and Ying 2025)",
        peers=("pytorch-grad-cam/SegEigenCAM",),
    ),
    LayerMethod(
        "scorecam",
        None,
        aliases=("score",),
        needs=FORWARD,
        forward=forward.scorecam,
        summary="w = softmax over k of the scores of inputs masked by A_k (Wang et al. 2020)",
        peers=("pytorch-grad-cam/ScoreCAM", "torch-cam/ScoreCAM"),
        peer_note="compared where the layer's grid is the input's; where A_k is resized, the "
        "peers resize differently (pytorch-grad-cam with align_corners=True, torch-cam "
        "after its min-max)",
    ),
    LayerMethod(
        "ablationcam",
        None,
        aliases=("ablation",),
        needs=FORWARD,
        forward=forward.ablationcam,
        summary="w_k = y - y^(k), channel k zeroed (Desai and Ramaswamy 2020)",
        peers=("pytorch-grad-cam/AblationCAM",),
        peer_note="the weight is the drop y - y^(k); pytorch-grad-cam divides it by y: compared "
        "as ours / y",
    ),
    LayerMethod(
        "cam",
        None,
        aliases=("classiccam",),
        needs=FORWARD,
        forward=forward.classic_cam,
        options={"head": None},
        summary="w_k = W[k, c], the dense head's weights (K, O) after global pooling, "
        "head= an array or variables -> W; None reads W off G (Zhou et al. 2016)",
        peers=("torch-cam/CAM",),
    ),
    LayerMethod(
        "shapleycam",
        None,
        needs=FORWARD,
        forward=forward.shapleycam,
        summary="w_k = grid mean of (G - H A / 2)_k, H A the Hessian-vector product of y "
        "at the layer (Cai et al. 2025)",
        peers=("pytorch-grad-cam/ShapleyCAM",),
    ),
    LayerMethod(
        "finercam",
        None,
        needs=FORWARD,
        forward=forward.finercam,
        options={
            "alpha": None,
            "comparisons": 3,
            "objective": "pgc",
            "base": "gradcam",
            "eps": None,
        },
        summary="GradCAM (or base='gradcam++') of a contrast of y_c with the classes j whose "
        "logits are nearest: objective 'pgc' sum_j p_j (y_c - alpha y_j) / sum_j p_j "
        "(pytorch-grad-cam's, alpha None = 1) or 'torchcam' y_c - alpha mean_j y_j "
        "(torch-cam's, alpha None = 0.6) (Zhang et al. 2025)",
        peers=("pytorch-grad-cam/FinerCAM", "torch-cam/FinerCAM"),
        peer_note="torch-cam's with objective='torchcam'",
    ),
    LayerMethod(
        "sscam",
        None,
        aliases=("smoothscorecam",),
        needs=FORWARD_KEY,
        forward=forward.sscam,
        options={"samples": forward.SSCAM_SAMPLES, "std": forward.SSCAM_STD},
        summary="ScoreCAM with scores averaged over masks + N(0, std^2) noise, key= "
        "(Wang et al. 2020, SS-CAM)",
        peer_note="not comparable: torch-cam draws its noise from torch's global random state, "
        "ours from key=",
    ),
    LayerMethod(
        "iscam",
        None,
        aliases=("integratedscorecam",),
        needs=FORWARD,
        forward=forward.iscam,
        options={"samples": forward.ISCAM_SAMPLES},
        summary="ScoreCAM with scores averaged over masks scaled by c_i = sum_{j<=i} j/N "
        "(Naidu et al. 2020)",
        peers=("torch-cam/ISCAM",),
        peer_note="compared where the layer's grid is the input's; torch-cam min-max scales A_k "
        "before resizing it",
    ),
    LayerMethod(
        "smoothgradcam++",
        None,
        aliases=("smoothgradcampp",),
        needs=FORWARD_KEY,
        forward=forward.smoothgradcampp,
        options={
            "samples": forward.SMOOTH_SAMPLES,
            "std": forward.SMOOTH_STD,
            "eps": gradient.GRADCAMPP_EPS,
        },
        summary="GradCAM++ from G, G^2, G^3 averaged over inputs + N(0, std^2) noise, key= "
        "(Omeiza et al. 2019)",
        peer_note="not comparable: torch-cam draws its noise from torch's global random state, "
        "ours from key=",
    ),
    LayersMethod(
        "refinecam",
        refinecam.refinecam,
        needs=GRADIENTS,
        options={"base": "gradcam++", "shape": None, "eps": None, "base_options": None},
        summary="product over >= 2 layers of the base map (a local kind-'layer' method; eps, "
        "base_options go to it), rectified, min-max scaled per image (eps 1e-8) and resized "
        "(linear) to the per-axis largest layer grid or shape=; not rescaled after the "
        "product, which the peers do (RefineCAM, arXiv 2605.14641)",
        peers=("pytorch-grad-cam/RefineCAM", "torch-cam/RefineCAM+GradCAM"),
        peer_note="pytorch-grad-cam's where every layer's grid is the input's (it resizes before "
        "its min-max); torch-cam's with base='gradcam', to 1e-3 (its GradCAMpp is not "
        "GradCAM++)",
    ),
    LayerMethod(
        "legrad",
        legrad.legrad,
        needs=GRADIENTS,
        channelwise=False,
        summary="L = channel mean of relu(G), G at one block's attention probabilities on "
        "ifa_jax.probes.tokens.attention_to_grid (keys x heads*queries); M_k = L / K; with "
        "ifa_jax.probes.legrad.legrad_probe's layer score, LeGrad of one block (Bousselham et al. "
        "2024)",
        peers=("torch-cam/LeGrad",),
        peer_note="torch-cam's on one block",
    ),
    LayersMethod(
        "legradlayers",
        legrad.legradlayers,
        needs=GRADIENTS,
        summary="mean over the probe's layers (one grid) of legrad's L: LeGrad of several "
        "blocks with ifa_jax.probes.legrad.legrad_probe (torch-cam's, before its min-max scaling)",
        peers=("torch-cam/LeGrad",),
        peer_note="torch-cam's on several blocks",
    ),
    InputMethod(
        "fullgrad",
        FunctionAt("ifa_jax.explaining.fullgrad", "fullgrad_map"),
        options={"layers": None, "minmax": True},
        summary="sum over the input and every biased layer of the channel-summed, per-channel "
        "min-max scaled |x dy/dx| and |b dy/dz|, resized to the input, min-max scaled "
        "(Srinivas and Fleuret 2019, pytorch-grad-cam's FullGrad)",
        peers=("pytorch-grad-cam/FullGrad",),
        peer_note="with minmax=False: the stored map is before the final min-max",
    ),
    InputMethod(
        "sess",
        FunctionAt("ifa_jax.explaining.smoothing", "sess_map"),
        options={
            "base_method": "gradcam",
            "base_options": (),
            "scales": None,
            "num_scales": SESS_NUM_SCALES,
            "scale_step_ratio": SESS_SCALE_STEP,
            "window_size": None,
            "step_size": None,
            "pre_filter_ratio": 0.0,
            "theta": 0.0,
            "pool": "mean",
            "smooth": True,
            "softmax_scores": True,
            "batch_size": SESS_BATCH,
        },
        summary="base_method on rescaled, sliding-window patches, maps weighted by the "
        "patches' softmax scores, mean-fused above theta at input resolution, blurred, "
        "min-max scaled (Tursun et al. 2022, pytorch-grad-cam's SESS)",
        peers=("pytorch-grad-cam/SESS",),
        peer_note="min-max scaled, as pytorch-grad-cam's forward returns it; to 1e-2 where "
        "OpenCV's resize leaves 1e-15 residues that its fusion counts (mnist_cnn)",
    ),
)


def register_builtins() -> None:
    """Registers every entry of :data:`BUILTIN_METHODS` (:mod:`ifa_jax.cams` does, once)."""
    for method in BUILTIN_METHODS:
        register_method(method)

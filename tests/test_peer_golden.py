"""ifa_jax against the PyTorch peers, on identical weights and inputs, without torch.

tests/data/peers.npz holds what experiments/golden_peers.py recorded from pytorch-grad-cam
and torch-cam on torch twins of two small trained Flax CNNs: the inputs, labels, Flax
variables, the tapped layer's A and G, and every peer method's raw map (before the peers'
ReLU and per-image min-max). Here the Flax models are rebuilt from those variables, our A
and G must equal torch's, and every peer method that ifa_jax also has (the table PEERS,
resolved through the method registry, so new methods join by name) must give the peer's
raw map to 1e-4 relative (max |ours - theirs| / max |theirs| per image), or go through
the known transform its entry names, or carry the reason it is not compared (or why its
tolerance differs). Methods of several layers (RefineCAM) run on a probe of the case's
``spec["layers"]``; the maps of the whole model (FullGrad, SESS) are at input resolution.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import ifa_jax
from ifa_jax import cams
from ifa_jax.cams.builtin import BUILTIN_METHODS
from ifa_jax.runner import models
from ifa_jax.scale import minmax_per_image

DATA = Path(__file__).parent / "data" / "peers.npz"
RTOL = 1e-4  # relative to the peer map's largest |value|, per image
TENSOR_RTOL = 1e-5  # A and G, relative to their largest |value|
# The methods whose agreement with the peers must always be checked.
CORE = {
    "gradcam",
    "gradcam++",
    "xgradcam",
    "hirescam",
    "layercam",
    "eigencam",
    "eigengradcam",
    "scorecam",
    "ablationcam",
}


def _centred(x):
    """Each channel of (B, *grid, K) minus its grid mean."""
    return x - jnp.mean(x, axis=tuple(range(1, x.ndim - 1)), keepdims=True)


def _first_component(x):
    """pytorch-grad-cam's get_2d_projection through our EigenCAM: the centred cells of
    x (B, *grid, K) projected on their first principal direction; its sign is arbitrary
    (sum of the projection is 0, so our sign rule cannot fix it)."""
    return cams.cam(_centred(x), None, "eigencam").cam


# Our raw result, brought to the peer's convention: (probe result, CAM result) -> (B, *grid).
Transform = Callable[[ifa_jax.ProbeResult, cams.CamResult], jnp.ndarray]


def _raw(result, cam):
    return cam.cam


def _ablation_ratio(result, cam):
    return cam.cam / result.score.reshape(-1, *(1,) * (cam.cam.ndim - 1))


def _eigen_of_activations(result, cam):
    return _first_component(result.activations)


def _eigen_of_gradients_times_activations(result, cam):
    return _first_component(result.gradients * result.activations)


def _eigen_of_contributions(result, cam):
    return _first_component(cam.contributions)


def _fem_mask_share(result, cam):
    mask = (cam.contributions != 0).astype(cam.contributions.dtype)
    share = jnp.mean(mask, axis=tuple(range(1, mask.ndim - 1)), keepdims=True)
    return jnp.sum(share * result.activations, axis=-1)


@dataclasses.dataclass(frozen=True)
class Peer:
    """How one peer map is compared with one of our methods.

    ours: our method's name (any registered spelling). transform: ours as the peer defines
    it (``_raw``: no transform). up_to_sign: compare with either sign. reason: why a
    transform is needed, or why the map is not compared (``transform=None``), or why the
    tolerance is not RTOL. skip_cases: cases where it is not compared, with the reason.
    options: our method's options, from the inputs x (B, *spatial_in, C). rtol: the
    tolerance, RTOL unless the reason says otherwise.
    """

    ours: str
    transform: Transform | None = _raw
    up_to_sign: bool = False
    reason: str = ""
    skip_cases: tuple[str, ...] = ()
    options: Callable[[np.ndarray], dict] = lambda x: {}
    rtol: float = RTOL
    elsewhere: bool = False  # compared by another test module (the reason names it)


_UPSAMPLE = (
    "ifa_jax resizes A_k to the input grid with jax.image.resize (half-pixel centres) and "
    "then min-max scales it; "
)
_CENTRED = (
    "pytorch-grad-cam projects the centred cells (get_2d_projection); our EigenCAM projects "
    "the uncentred ones (docs/method.md section 9b). Compared: our EigenCAM applied to the "
    "centred {}, up to the SVD's arbitrary sign"
)

PEERS: dict[tuple[str, str], Peer] = {
    ("pytorch-grad-cam", "GradCAM"): Peer("gradcam"),
    ("pytorch-grad-cam", "GradCAMPlusPlus"): Peer("gradcam++"),
    ("pytorch-grad-cam", "XGradCAM"): Peer("xgradcam"),
    ("pytorch-grad-cam", "HiResCAM"): Peer("hirescam"),
    ("pytorch-grad-cam", "LayerCAM"): Peer("layercam"),
    ("pytorch-grad-cam", "GradCAMElementWise"): Peer("gradcamelementwise"),
    ("pytorch-grad-cam", "EigenCAM"): Peer(
        "eigencam", _eigen_of_activations, True, _CENTRED.format("activations A")
    ),
    ("pytorch-grad-cam", "EigenGradCAM"): Peer(
        "eigengradcam", _eigen_of_gradients_times_activations, True, _CENTRED.format("G * A")
    ),
    ("pytorch-grad-cam", "GradCAM+eigen_smooth"): Peer(
        "gradcam",
        _eigen_of_contributions,
        True,
        "eigen_smooth projects the centred weighted activations w_k A_k, i.e. our "
        "contributions M, on their first principal direction: compared as our EigenCAM of "
        "the centred M, up to sign",
    ),
    ("pytorch-grad-cam", "SegEigenCAM"): Peer("segeigencam"),  # centred, as ours
    ("pytorch-grad-cam", "RefineCAM"): Peer(
        "refinecam",
        options=lambda x: {"shape": x.shape[1:-1]},
        skip_cases=("mnist_cnn",),
        reason="pytorch-grad-cam resizes each layer's rectified map to the input grid "
        "(cv2.resize) and min-max scales it there; ifa_jax (and torch-cam) min-max scale on "
        "the layer's grid, then resize. Equal where every layer's grid is the input's "
        "(convnet); on mnist_cnn (24x24 and 6x6 -> 28x28) they differ, and "
        "test_pytorch_grad_cam_refinecam_scales_after_resizing rebuilds its order",
    ),
    ("torch-cam", "RefineCAM"): Peer(
        "refinecam",
        None,
        reason="torch-cam's RefineCAM multiplies its GradCAMpp maps, whose weights are not "
        "GradCAM++'s (see torch-cam GradCAMpp); its fusion is compared with GradCAM as base "
        "(RefineCAM+GradCAM)",
    ),
    ("torch-cam", "RefineCAM+GradCAM"): Peer(
        "refinecam",
        options=lambda x: {"base": "gradcam"},
        rtol=1e-3,
        reason="tolerance 1e-3: the min-max scaling divides a layer's map by its positive "
        "range, which can be 1/500 of its range (convnet, image 7, relu1), so float32 "
        "rounding of the channel sum grows by as much (measured 1e-4)",
    ),
    # the stored map is the sum of the pieces before the last min-max: minmax=False. Our
    # resize (half-pixel linear, no antialias) is cv2's INTER_LINEAR: mnist_cnn's 24x24 and
    # 6x6 pieces agree on 28x28 to RTOL too (tests/test_fullgrad.py has the pieces)
    ("pytorch-grad-cam", "FullGrad"): Peer("fullgrad", options=lambda x: {"minmax": False}),
    ("pytorch-grad-cam", "SESS"): Peer(
        "sess",
        None,
        reason="our SESS map is min-max scaled to [0, 1] as pytorch-grad-cam's forward "
        "returns it; tests/test_sess.py compares it with the stored fused maps, min-max scaled",
        elsewhere=True,
    ),
    ("pytorch-grad-cam", "FEM"): Peer(
        "fem",
        _fem_mask_share,
        reason="pytorch-grad-cam swaps FEM's factors: sum_k mean(mask_k) A_k, where the paper "
        "(and ifa_jax) has sum_k mean(A_k) mask_k (docs/method.md section 9b). Compared: the "
        "masks read from our contributions (M_k != 0; on a rectified layer mean(A_k) > 0 "
        "wherever the mask is not empty) in pytorch-grad-cam's formula",
    ),
    ("pytorch-grad-cam", "KPCA_CAM"): Peer("kpcacam"),
    ("pytorch-grad-cam", "ScoreCAM"): Peer(
        "scorecam",
        skip_cases=("mnist_cnn",),
        reason=_UPSAMPLE + "pytorch-grad-cam resizes with UpsamplingBilinear2d "
        "(align_corners=True). The masks differ where the layer's grid is not the input's "
        "(mnist_cnn: 6x6 -> 28x28); on convnet's 8x8 layer grid = input grid they agree",
    ),
    ("pytorch-grad-cam", "AblationCAM"): Peer(
        "ablationcam",
        _ablation_ratio,
        reason="pytorch-grad-cam's weight is the drop divided by the score, (y - y^(k)) / y; "
        "ours is the drop y - y^(k) (docs/method.md section 9b). Compared: ours / y",
    ),
    ("pytorch-grad-cam", "ShapleyCAM"): Peer("shapleycam"),
    ("pytorch-grad-cam", "FinerCAM"): Peer("finercam"),
    ("pytorch-grad-cam", "RandomCAM"): Peer(
        "randomcam",
        None,
        reason="not stored: pytorch-grad-cam draws from NumPy's global random state, ifa_jax "
        "from an explicit JAX key; no seed makes the two draws equal",
    ),
    ("torch-cam", "GradCAM"): Peer("gradcam"),
    ("torch-cam", "GradCAMpp"): Peer(
        "gradcam++",
        None,
        reason="torch-cam 0.5.0 puts sum(A_k G^3) (not sum(A_k) G^3) in alpha's denominator, "
        "and its in-place division acts on a copy (alpha[idx][mask].div_), so its weights are "
        "sum over the grid of G^2 relu(G): not GradCAM++ as the paper or pytorch-grad-cam "
        "define it",
    ),
    ("torch-cam", "XGradCAM"): Peer("xgradcam"),  # eps 1e-8 there, 1e-7 here: below 1e-4
    ("torch-cam", "LayerCAM"): Peer("layercam"),
    ("torch-cam", "ScoreCAM"): Peer(
        "scorecam",
        skip_cases=("mnist_cnn",),
        reason="torch-cam min-max scales A_k on the layer's grid and then resizes it "
        "(align_corners=False); " + _UPSAMPLE + "the two orders differ where the layer's grid "
        "is not the input's (mnist_cnn); on convnet's they agree",
    ),
    ("torch-cam", "ISCAM"): Peer(
        "iscam",
        skip_cases=("mnist_cnn",),
        reason="as torch-cam's ScoreCAM: it min-max scales A_k on the layer's grid before "
        "resizing it; the orders differ where the layer's grid is not the input's (mnist_cnn)",
    ),
    ("torch-cam", "SSCAM"): Peer(
        "sscam",
        None,
        reason="not stored: torch-cam draws its noise from torch's global random state, "
        "ifa_jax from an explicit JAX key",
    ),
    ("torch-cam", "SmoothGradCAMpp"): Peer(
        "smoothgradcam++",
        None,
        reason="not stored: torch-cam draws its noise from torch's global random state, "
        "ifa_jax from an explicit JAX key",
    ),
    ("torch-cam", "FinerCAM"): Peer(
        "finercam",
        options=lambda x: {"objective": "torchcam"},
        reason="torch-cam's Finer-CAM explains y_c - 0.6 * mean of the 3 closest logits, "
        "pytorch-grad-cam's weights y_c - y_d by softmax(y_d): ours is either "
        "(objective='torchcam' here)",
    ),
    ("torch-cam", "CAM"): Peer("cam"),
}


def _registered(name: str) -> str | None:
    """Our canonical name for ``name``, or None while ifa_jax does not have it."""
    try:
        return cams.canonical_method(name)
    except ValueError:
        return None


def _golden() -> dict[str, np.ndarray]:
    with np.load(DATA) as archive:
        return {k: archive[k] for k in archive.files}


GOLDEN = _golden()
CASES = {key.split("/")[0]: json.loads(str(GOLDEN[key])) for key in GOLDEN if key.endswith("/spec")}
SCORED = [(case, score) for case, spec in CASES.items() for score in spec["scores"]]


def _stored_maps() -> list[tuple[str, str, str, str]]:
    """(case, score, library, peer method) of every stored peer map."""
    out = []
    for key in GOLDEN:
        parts = key.split("/")
        if len(parts) == 4 and parts[2] in ("pytorch-grad-cam", "torch-cam"):
            out.append((parts[0], parts[1], parts[2], parts[3]))
    return out


STORED = _stored_maps()
COMPARED = [
    (case, score, library, name)
    for case, score, library, name in STORED
    if PEERS[library, name].transform is not None
    and case not in PEERS[library, name].skip_cases
    and _registered(PEERS[library, name].ours) is not None
]


@functools.cache
def probed(case: str, score: str, several: bool = False):
    """(probe, variables, x, labels, probe result) of one golden case and target score; the
    probe taps the case's layer, or with ``several`` its layers (spec["layers"])."""
    spec = CASES[case]
    prefix = f"{case}/variables/"
    flat = {k[len(prefix) :]: jnp.asarray(v) for k, v in GOLDEN.items() if k.startswith(prefix)}
    variables = traverse_util.unflatten_dict(flat, sep="/")
    layers = list(spec["layers"]) if several else spec["layer"]
    probe = ifa_jax.linen_probe(getattr(models, spec["model"])(**spec["kwargs"]), layers)
    x, labels = jnp.asarray(GOLDEN[f"{case}/x"]), jnp.asarray(GOLDEN[f"{case}/labels"])
    return probe, variables, x, labels, probe(variables, x, labels, score=score)


def ours(case: str, score: str, peer: Peer) -> tuple[ifa_jax.ProbeResult, cams.CamResult]:
    """Our method of ``peer`` on the case (a probe of the case's layers for kind "layers")."""
    several = cams.get_method(peer.ours).kind == "layers"
    probe, variables, x, labels, result = probed(case, score, several)
    options = peer.options(np.asarray(x))
    return result, ifa_jax.explain(probe, variables, x, labels, peer.ours, score=score, **options)[
        1
    ]


def max_relative_error(ours, theirs, up_to_sign: bool = False) -> float:
    """max over images of max |ours - theirs| / max |theirs| (either sign of ours if asked;
    max |ours - theirs| where the peer's image is 0 everywhere)."""
    ours = np.asarray(ours, np.float64).reshape(len(theirs), -1)
    theirs = np.asarray(theirs, np.float64).reshape(len(theirs), -1)
    scale = np.abs(theirs).max(axis=1)
    scale = np.where(scale > 0, scale, 1.0)
    error = np.abs(ours - theirs).max(axis=1)
    if up_to_sign:
        error = np.minimum(error, np.abs(ours + theirs).max(axis=1))
    return float(np.max(error / scale))


def peer_error(case: str, score: str, library: str, name: str) -> float:
    """Max relative error of our method against one stored peer map (see PEERS)."""
    peer = PEERS[library, name]
    assert peer.transform is not None
    result, cam = ours(case, score, peer)
    mine = peer.transform(result, cam)
    return max_relative_error(mine, GOLDEN[f"{case}/{score}/{library}/{name}"], peer.up_to_sign)


def test_golden_file_is_small_and_every_map_has_an_entry():
    assert DATA.stat().st_size < 400_000
    assert {(library, name) for _, _, library, name in STORED} <= set(PEERS)
    for peer in PEERS.values():
        if peer.transform is not _raw or peer.skip_cases or peer.rtol != RTOL:
            assert peer.reason, peer


def test_core_methods_are_compared():
    compared = {_registered(PEERS[library, name].ours) for _, _, library, name in COMPARED}
    assert compared >= CORE


# Peer maps compared by other test modules: (our method, "library/Name") -> (test module,
# its test, golden file, a key it compares).
ELSEWHERE: dict[tuple[str, str], tuple[str, str, str, str]] = {
    ("sess", "pytorch-grad-cam/SESS"): (
        "tests.test_sess",
        "test_equals_pytorch_grad_cam",
        "peers.npz",
        "convnet/logit/pytorch-grad-cam/SESS",
    ),
    ("legrad", "torch-cam/LeGrad"): (
        "tests.test_legrad",
        "test_equals_torch_cams_legrad",
        "peers_vit.npz",
        "vit/logit/torch-cam/LeGrad/block1",
    ),
    ("legradlayers", "torch-cam/LeGrad"): (
        "tests.test_legrad",
        "test_equals_torch_cams_legrad",
        "peers_vit.npz",
        "vit/logit/torch-cam/LeGrad/block1+block2",
    ),
}


def compared_peers() -> set[tuple[str, str]]:
    """(our method, "library/Name") of every peer map a golden test compares."""
    here = {(_registered(PEERS[lib, n].ours), f"{lib}/{n}") for _, _, lib, n in COMPARED}
    return {(str(method), peer) for method, peer in here} | set(ELSEWHERE)


def test_the_registry_names_exactly_the_compared_peers():
    """The method table's peer column (each entry's ``peers``) is what the golden tests
    compare: nothing declared and left untested, nothing tested and left undeclared."""
    declared = {(method.name, peer) for method in BUILTIN_METHODS for peer in method.peers}
    compared = compared_peers()
    assert declared - compared == set(), "named in an entry's peers, compared by no test"
    assert compared - declared == set(), "compared, not named in the method's peers"


def test_the_comparisons_elsewhere_exist():
    for (method, peer), (module, test, file, key) in ELSEWHERE.items():
        assert callable(getattr(importlib.import_module(module), test)), (module, test)
        with np.load(DATA.with_name(file)) as data:
            assert key in data.files, (file, key)
        assert "/".join(key.split("/")[2:4]) == peer and _registered(method) == method
    for (library, name), peer in PEERS.items():
        if peer.elsewhere:
            assert (_registered(peer.ours), f"{library}/{name}") in ELSEWHERE


def test_every_deviation_is_noted_in_the_registry():
    """A peer map compared through a transform, on some cases only, at another tolerance,
    or not at all: the method's entry says how it differs (its ``peer_note``)."""
    for (library, name), peer in PEERS.items():
        ours = _registered(peer.ours)
        deviates = peer.transform is not _raw or peer.skip_cases or peer.rtol != RTOL
        if ours is not None and deviates:
            assert cams.get_method(ours).peer_note, f"{ours}: {library} {name} differs"


@pytest.mark.parametrize("case, score", SCORED)
def test_activations_and_gradients_equal_torch(case, score):
    *_, result = probed(case, score)
    for mine, theirs in [
        (result.activations, GOLDEN[f"{case}/A"]),
        (result.gradients, GOLDEN[f"{case}/{score}/G"]),
    ]:
        assert np.abs(np.asarray(mine) - theirs).max() <= TENSOR_RTOL * np.abs(theirs).max()
    assert np.abs(np.asarray(result.logits) - GOLDEN[f"{case}/logits"]).max() <= 1e-4


@pytest.mark.parametrize("case", list(CASES))
def test_the_other_layers_equal_torch(case):
    """RefineCAM's layers besides the tapped one: our G equals torch's, and our A its sums
    over the grid (A itself is not stored: mnist_cnn's relu1 would double the file)."""
    *_, result = probed(case, "logit", several=True)
    others = [layer for layer in CASES[case]["layers"] if layer != CASES[case]["layer"]]
    assert others
    for layer in others:
        A, G = np.asarray(result.activations[layer]), np.asarray(result.gradients[layer])
        for mine, theirs in [
            (A.sum(axis=(1, 2), dtype=np.float64), GOLDEN[f"{case}/layers/{layer}/A_sum"]),
            (G, GOLDEN[f"{case}/logit/layers/{layer}/G"]),
        ]:
            assert np.abs(mine - theirs).max() <= TENSOR_RTOL * np.abs(theirs).max()


@pytest.mark.parametrize("case", list(CASES))
def test_pytorch_grad_cam_refinecam_scales_after_resizing(case):
    """pytorch-grad-cam's RefineCAM (before its final min-max) is the product over layers
    of min-max(resize to the input grid(relu(GradCAM++))): our per-layer maps in that order
    give it to RTOL, also where resizing makes the order matter (mnist_cnn)."""
    *_, x, _, result = probed(case, "logit", several=True)

    @jax.jit
    def in_their_order(A, G):
        product = 1.0
        for layer in A:
            L = cams.cam(A[layer], G[layer], "gradcam++").cam
            up = cams.upsample(jnp.maximum(L, 0.0), tuple(x.shape[1:-1]))
            product = product * minmax_per_image(up, eps=1e-7)  # scale_cam_image's eps
        return product

    product = in_their_order(result.activations, result.gradients)
    theirs = GOLDEN[f"{case}/logit/pytorch-grad-cam/RefineCAM"]
    assert max_relative_error(product, theirs) <= RTOL


@pytest.mark.parametrize("case, score", SCORED)
def test_gradients_are_not_degenerate(case, score):
    """The peers' eps (1e-6 in GradCAM++'s alpha) must not dominate the golden gradients."""
    G = GOLDEN[f"{case}/{score}/G"]
    assert np.median(np.abs(G[G != 0])) > 1e-3


@pytest.mark.parametrize("case, score, library, name", COMPARED)
def test_method_equals_peer(case, score, library, name):
    error = peer_error(case, score, library, name)
    rtol = PEERS[library, name].rtol
    assert error <= rtol, f"{library} {name} on {case} ({score}): max relative error {error:.2e}"


DEVIATING = [
    (case, score, library, name)
    for case, score, library, name in STORED
    if _registered(PEERS[library, name].ours) is not None
    and not PEERS[library, name].elsewhere
    and (PEERS[library, name].transform is not _raw or case in PEERS[library, name].skip_cases)
]


@pytest.mark.parametrize("case, score, library, name", DEVIATING)
def test_documented_deviations_are_real(case, score, library, name):
    """Where the table gives a reason, our raw map does differ from the peer's: once it
    agrees, the entry (and docs/method.md) must say so."""
    _, cam = ours(case, score, PEERS[library, name])
    assert max_relative_error(cam.cam, GOLDEN[f"{case}/{score}/{library}/{name}"]) > RTOL

"""The method table: derived lists, errors and dispatch, register_method, and explain()
threading a method's options and PRNG key."""

from __future__ import annotations

import inspect
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ifa_jax
from ifa_jax import cams
from ifa_jax.explaining import explain
from ifa_jax.probes import linen_probe
from ifa_jax.runner.models import ConvNet
from tests.conftest import random_ag


@pytest.fixture(scope="module")
def small():
    """(probe at the last ReLU, variables, x (3, 6, 5, 2)) of a small GAP CNN."""
    model = ConvNet(ndim=2, features=(4, 6), num_classes=3)
    x = jax.random.normal(jax.random.key(0), (3, 6, 5, 2))
    return linen_probe(model, "relu2"), model.init(jax.random.key(1), x), x


def test_lists_come_from_the_table():
    table = cams.REGISTRY
    assert tuple(cams.METHODS) == tuple(table)
    layer = {m for m in table if table[m].kind == "layer"}
    assert set(cams.LAYER_METHODS) == layer
    assert set(cams.GRADIENT_METHODS) == {m for m in layer if "gradients" in table[m].needs}
    assert set(cams.FORWARD_METHODS) == {m for m in table if table[m].forward is not None}
    assert {"scorecam", "ablationcam", "shapleycam", "cam"} <= set(cams.FORWARD_METHODS)
    assert {"sscam", "smoothgradcam++"} <= {m for m in table if "key" in table[m].needs}
    assert "gradcam++" in cams.GRADIENT_METHODS and "eigencam" not in cams.GRADIENT_METHODS
    assert ifa_jax.METHODS == cams.METHODS
    for name, method in table.items():
        assert cams.canonical_method(name.upper()) == name
        for alias in method.aliases:
            assert cams.canonical_method(alias) == name


def test_every_need_has_its_error():
    """A call without what a method needs names it and the fix, for every entry."""
    A, G = random_ag(jax.random.key(0), (2, 3, 4, 3))
    for name in cams.LAYER_METHODS:  # the other kinds: test_methods_of_other_kinds
        method = cams.REGISTRY[name]
        if "forward_passes" in method.needs:
            with pytest.raises(ValueError, match=rf"{re_name(name)} needs forward passes"):
                cams.cam(A, G, name, key=jax.random.key(0))
            continue
        if "gradients" in method.needs:
            with pytest.raises(ValueError, match=rf"{re_name(name)} needs the gradients G"):
                cams.cam(A, None, name, key=jax.random.key(0))
        if "key" in method.needs:
            with pytest.raises(ValueError, match=rf"{re_name(name)} needs a PRNG key: pass key="):
                cams.cam(A, G, name)
        out = cams.cam(A, G, name, key=jax.random.key(0))  # everything given: it runs
        assert out.cam.shape == A.shape[:-1] and bool(jnp.isfinite(out.cam).all())
        if not method.options:
            with pytest.raises(ValueError, match=rf"{re_name(name)} has no option 'eps'.*none"):
                cams.cam(A, G, name, key=jax.random.key(0), eps=1e-3)


def re_name(name: str) -> str:
    return name.replace("+", r"\+")


def test_options_are_declared_with_their_defaults():
    assert cams.REGISTRY["gradcam++"].options["eps"] == 1e-6
    assert cams.REGISTRY["xgradcam"].options["eps"] == cams.EPS == 1e-7
    assert cams.method_options("gradcam++", {"eps": 0.1}) == {"eps": 0.1}
    with pytest.raises(ValueError, match=r"gradcam\+\+ has no option 'epsilon'; its options: eps"):
        cams.method_options("Grad-CAM++", {"epsilon": 0.1})


@pytest.mark.parametrize(
    "method, option, value, message",
    [
        ("gradcam++", "eps", "abc", r"gradcam\+\+ option eps='abc' must be a number"),
        ("gradcam++", "eps", -1.0, r"eps=-1.0 must be >= 0"),
        ("xgradcam", "eps", float("nan"), r"eps=nan must be finite"),
        ("sscam", "samples", 2.5, r"samples=2.5 must be an integer"),
        ("fullgrad", "minmax", "no", r"minmax='no' must be True or False"),
        ("refinecam", "eps", "x", r"refinecam option eps='x' must be a number"),
    ],
)
def test_option_values_are_checked_against_their_defaults(method, option, value, message):
    with pytest.raises(ValueError, match=message):
        cams.method_options(method, {option: value})
    assert cams.method_options("sscam", {"samples": 3, "std": 1})["std"] == 1


def test_register_a_method(registry):
    def squared(inputs, *, scale=1.0):
        return scale * inputs.gradients**2 * inputs.activations

    cams.register_method(
        cams.Method(
            "gradsquared",
            squared,
            aliases=("Grad-Squared", "g2"),
            needs=frozenset({"gradients"}),
            options={"scale": 1.0},
        )
    )
    # the live lists, also where they were imported by name
    assert "gradsquared" in cams.METHODS and "gradsquared" in ifa_jax.METHODS
    assert "gradsquared" in cams.GRADIENT_METHODS and "gradsquared" not in cams.FORWARD_METHODS
    assert cams.canonical_method("GRAD_SQUARED") == "gradsquared"
    A, G = random_ag(jax.random.key(1), (2, 5, 3))
    got = jax.jit(cams.cam, static_argnames="method")(A, G, "g2", scale=2.0)
    np.testing.assert_allclose(got.contributions, 2.0 * G**2 * A, rtol=1e-6)
    with pytest.raises(ValueError, match="needs the gradients"):
        cams.cam(A, None, "gradsquared")
    with pytest.raises(ValueError, match="'gradsquared' is already registered.*replace=True"):
        cams.register_method(cams.Method("gradsquared", squared))
    cams.register_method(cams.Method("gradsquared", squared, options={"scale": 3.0}), replace=True)
    assert "g2" not in cams.ALIASES  # the replaced entry's aliases went with it
    np.testing.assert_allclose(cams.contributions(A, G, "gradsquared"), 3.0 * G**2 * A, rtol=1e-6)


def test_bad_entries_are_refused(registry):
    def fn(inputs):
        return inputs.activations

    with pytest.raises(ValueError, match=r"'fullcam' already name 'hirescam'"):
        cams.register_method(cams.Method("mine", fn, aliases=("FullCAM",)))
    assert "mine" not in cams.REGISTRY
    with pytest.raises(ValueError, match=r"'Grad_Mine'.*lower-case.*'gradmine'"):
        cams.Method("Grad_Mine", fn)
    with pytest.raises(ValueError, match=r"needs \['weights'\], which nothing supplies"):
        cams.Method("mine", fn, needs=frozenset({"weights"}))
    with pytest.raises(ValueError, match="exactly one of them"):
        cams.Method("mine", fn, needs=frozenset({"forward_passes"}))
    with pytest.raises(ValueError, match="exactly one of them"):
        cams.Method("mine", None)
    with pytest.raises(ValueError, match="takes an ifa_jax.cams.Method"):
        cams.register_method("mine")  # type: ignore[arg-type]


def test_explain_threads_options_and_key(small):
    probe, variables, x = small
    res = probe(variables, x, 1)
    A, G = res.activations, res.gradients
    for method, options in (
        ("gradcam++", {"eps": 1e-3}),
        ("xgradcam", {"eps": 0.5}),
        ("fem", {"k": 0.5}),
        ("kpcacam", {"kernel": "rbf", "gamma": 0.3}),
    ):
        _, out = explain(probe, variables, x, 1, method, **options)
        want = cams.cam(A, G, method, **options)
        np.testing.assert_allclose(out.contributions, want.contributions, rtol=1e-5, atol=1e-7)
        default = cams.cam(A, G, method).contributions
        assert not np.allclose(out.contributions, default, rtol=1e-4, atol=1e-7), method
    _, r1 = explain(probe, variables, x, 1, "randomcam", key=jax.random.key(3))
    want = cams.cam(A, G, "randomcam", key=jax.random.key(3))
    np.testing.assert_allclose(r1.cam, want.cam, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="randomcam needs a PRNG key"):
        explain(probe, variables, x, 1, "randomcam")
    with pytest.raises(ValueError, match=r"gradcam has no option 'eps'"):
        explain(probe, variables, x, 1, "gradcam", eps=1e-6)
    with pytest.raises(ValueError, match=r"option eps=\[1e-06\] must be a number"):
        explain(probe, variables, x, 1, "gradcam++", eps=[1e-6])


def test_a_registered_forward_method_runs_through_explain(registry, small):
    """forward_weights dispatches on the table: a user's forward-pass method needs only
    its entry."""
    probe, variables, x = small

    def scaled_ablation(A, passes, *, scale=1.0):
        drop = cams.ablation_weights(A, passes.score_with_delta, passes.base_score)
        return scale * drop

    cams.register_method(
        cams.Method(
            "scaledablation",
            None,
            needs=frozenset({"forward_passes"}),
            forward=scaled_ablation,
            options={"scale": 1.0},
        )
    )
    assert "scaledablation" in cams.FORWARD_METHODS
    _, base = explain(probe, variables, x, 2, "ablationcam")
    _, mine = explain(probe, variables, x, 2, "scaledablation", scale=-2.0)
    np.testing.assert_allclose(mine.importance, -2.0 * base.importance, rtol=1e-5, atol=1e-6)


BUILT_IN = list(cams.REGISTRY)  # as collected: every method gets its own test below


def test_the_table_holds_the_25_built_in_methods():
    assert len(cams.REGISTRY) == 25 and len(BUILT_IN) == 25


@pytest.mark.parametrize("name", BUILT_IN)
def test_explain_runs_every_method(small, name):
    """Every entry of the table, with its defaults, through explain on a Linen ConvNet; a
    method that needs a key refuses to run without one."""
    probe, variables, x = small
    labels = jnp.array([0, 2, 1])
    method = cams.REGISTRY[name]
    if method.kind == "layers":
        probe = linen_probe(ConvNet(ndim=2, features=(4, 6), num_classes=3), ["relu1", "relu2"])
    result, out = explain(probe, variables, x, labels, name, key=jax.random.key(5))
    grid = (
        x.shape[:-1]
        if method.kind == "input"
        else result.activations["relu2"].shape[:-1]
        if method.kind == "layers"
        else result.activations.shape[:-1]
    )
    assert out.cam.shape == grid
    assert bool(jnp.isfinite(out.contributions).all())
    assert float(jnp.abs(out.cam).max()) > 0
    if "key" in method.needs:
        with pytest.raises(ValueError, match=rf"{re_name(name)} needs a PRNG key: pass key="):
            explain(probe, variables, x, labels, name)


def test_array_options_are_traced(small):
    """An array-valued option (the classic CAM's head) is an argument of the compiled
    function, not a constant: a new array does not need to be hashable."""
    probe, variables, x = small
    W = variables["params"]["head"]["kernel"]
    _, one = explain(probe, variables, x, 1, "cam", head=W)
    _, two = explain(probe, variables, x, 1, "cam", head=2.0 * np.asarray(W))
    np.testing.assert_allclose(two.contributions, 2.0 * one.contributions, rtol=1e-6)
    with pytest.raises(ValueError, match="must be hashable"):
        explain(probe, variables, x, 1, "cam", head=[[1.0]])


def test_replacing_a_method_reaches_functions_jitted_before(registry, small):
    """explain() caches a jitted CAM per method entry: replacing the method must not leave
    the old function in that cache (a silent wrong map otherwise), and clears no other
    cache of JAX. A needs given as one string is that one need, not its letters."""
    probe, variables, x = small
    unrelated = jax.jit(lambda a: a + 1)
    unrelated(x)

    def plain(inputs):
        return jnp.mean(inputs.gradients, axis=(1, 2), keepdims=True) * inputs.activations

    cams.register_method(cams.Method("mine", plain, needs="gradients"))
    assert cams.REGISTRY["mine"].needs == frozenset({"gradients"})
    before = explain(probe, variables, x, 0, "mine")[1].cam
    tenfold = cams.Method("mine", lambda i: 10 * plain(i), needs="gradients")
    cams.register_method(tenfold, replace=True)
    after = explain(probe, variables, x, 0, "mine")[1].cam
    np.testing.assert_allclose(after, 10 * before, rtol=1e-5)
    assert unrelated._cache_size() == 1  # noqa: SLF001 (JAX's count of compilations)


def _layer_mean_relu(inputs):
    """A toy method of kind 'layers': the sum over layers of each layer's mean relu(G)."""
    return sum(jnp.mean(jax.nn.relu(i.gradients), axis=-1) for i in inputs.values())


def _input_times_gradient(model, *, scale=1.0):
    """A toy method of kind 'input': scale * sum over channels of x * d score / dx."""

    def total(x):
        return jnp.sum(model.score(model.probe.forward(model.variables, x), model.target))

    return scale * jnp.sum(model.x * jax.grad(total)(model.x), axis=-1)


def test_methods_of_other_kinds(registry, small):
    """Kinds 'layers' and 'input' through register_method, cam_layers and explain, each
    against the same formula written here; the lists and refusals follow the kind."""
    probe, variables, x = small
    layers = cams.Method("meanrelu", _layer_mean_relu, needs="gradients", kind="layers")
    model = cams.Method("inputgrad", _input_times_gradient, options={"scale": 1.0}, kind="input")
    for method in (layers, model):
        cams.register_method(method)
        assert method.name in cams.METHODS and method.name not in cams.LAYER_METHODS
        assert method.name not in cams.GRADIENT_METHODS and not method.channelwise
    two = linen_probe(ConvNet(ndim=2, features=(4, 6), num_classes=3), ["relu1", "relu2"])
    result, out = explain(two, variables, x, 1, "meanrelu")
    G = result.gradients
    want = np.mean(np.maximum(G["relu1"], 0), -1) + np.mean(np.maximum(G["relu2"], 0), -1)
    np.testing.assert_allclose(out.cam, want, rtol=1e-6)
    np.testing.assert_allclose(out.contributions[..., 0], want, rtol=1e-6)
    np.testing.assert_allclose(out.importance[:, 0], want.sum((1, 2)), rtol=1e-5)
    np.testing.assert_allclose(out.max, want.reshape(3, -1).max(1), rtol=1e-6)
    direct = cams.cam_layers(result.activations, result.gradients, "meanrelu")
    np.testing.assert_allclose(direct.cam, want, rtol=1e-6)

    result, out = explain(probe, variables, x, 2, "inputgrad", scale=2.0)
    grad = jax.grad(lambda x: jnp.sum(probe.forward(variables, x)[:, 2]))(x)
    np.testing.assert_allclose(out.cam, 2.0 * np.sum(x * grad, -1), rtol=1e-5, atol=1e-7)
    assert out.contributions.shape == (*x.shape[:-1], 1)
    # a probe of several layers needs no layer= for a method of the model
    np.testing.assert_allclose(
        explain(two, variables, x, 2, "inputgrad", scale=2.0)[1].cam, out.cam, rtol=1e-5, atol=1e-7
    )

    A, G = result.activations, result.gradients
    with pytest.raises(ValueError, match=r"meanrelu is a method of kind 'layers'.*cam_layers"):
        cams.cam(A, G, "meanrelu")
    with pytest.raises(ValueError, match=r"inputgrad is a method of kind 'input'.*explain"):
        cams.cam(A, G, "inputgrad")
    with pytest.raises(ValueError, match=r"takes a method of kind 'layers'.*gradcam is of kind"):
        cams.cam_layers({"a": A}, {"a": G}, "gradcam")
    with pytest.raises(ValueError, match=r"takes A as a dict"):
        cams.cam_layers(A, G, "meanrelu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"gradients of every layer"):
        cams.cam_layers({"a": A, "b": A}, {"a": G}, "meanrelu")
    with pytest.raises(ValueError, match=r"uses every layer of the probe.*layer=None"):
        explain(two, variables, x, 1, "meanrelu", layer="relu1")
    with pytest.raises(ValueError, match=r"takes no channel mask"):
        explain(probe, variables, x, 1, "inputgrad", mask=jnp.ones(6))
    with pytest.raises(ValueError, match=r"kind 'layer ' is not one of"):
        cams.Method("bad", _layer_mean_relu, kind="layer ")
    with pytest.raises(ValueError, match=r"kind 'input' takes fn= only.*\['forward_passes'\]"):
        cams.Method("bad", _input_times_gradient, needs="forward_passes", kind="input")


@pytest.mark.parametrize("grid", [(5,), (4, 3), (4, 2, 4)], ids=["1d", "2d", "3d"])
def test_methods_of_several_layers_in_every_rank(grid):
    """Every registered method of kind "layers" maps two layers (one on a coarser grid
    where the method resizes, else the same grid) to one map under jit, 1-3 D, with
    gradients with respect to the activations that are finite and not all zero."""
    layer_methods = [n for n, m in cams.REGISTRY.items() if m.kind == "layers"]
    assert {"refinecam", "legradlayers"} <= set(layer_methods)
    for name in layer_methods:
        same_grid = name == "legradlayers"  # it averages maps on one grid
        coarse = grid if same_grid else tuple(max(1, s // 2) for s in grid)
        (a1, g1), (a2, g2) = (
            random_ag(jax.random.key(i), (2, *g, 3)) for i, g in enumerate((grid, coarse))
        )

        def total(A, G, name=name):
            L = cams.cam_layers(A, G, name).cam
            return jnp.sum(jnp.tanh(L)), L

        A, G = {"a": a1, "b": a2}, {"a": g1, "b": g2}
        # One compilation gives the map and its gradient.
        grads, L = jax.jit(jax.grad(total, argnums=1, has_aux=True))(A, G)
        assert L.shape == (2, *grid) and bool(jnp.isfinite(L).all()), name
        flat = jnp.concatenate([g.ravel() for g in grads.values()])
        assert bool(jnp.isfinite(flat).all()) and float(jnp.abs(flat).max()) > 0, name


# The public names of ifa_jax.cams when it was one module: the package re-exports them all.
CAMS_NAMES = [
    "ALIASES",
    "CamInputs",
    "CamResult",
    "EPS",
    "FEM_K",
    "FINER_ALPHA",
    "FINER_BASES",
    "FINER_EPS",
    "FORWARD_METHODS",
    "ForwardPasses",
    "GRADCAMPP_EPS",
    "GRADIENT_METHODS",
    "ISCAM_SAMPLES",
    "KINDS",
    "KPCA_KERNELS",
    "LAYER_METHODS",
    "METHODS",
    "Method",
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
    "register_method",
    "require_key",
    "scorecam_weights",
    "spatial_axes",
    "upsample",
]
NEW_NAMES = [
    "LayerMethod",
    "LayersMethod",
    "InputMethod",
    "LayerFn",
    "ForwardFn",
    "LayersFn",
    "InputFn",
    "MethodName",
    "LAYERS_METHODS",
    "registered",
    "unregister_method",
    "reduce_weighted",
]


def test_the_package_keeps_every_public_name():
    missing = [n for n in CAMS_NAMES + NEW_NAMES if not hasattr(cams, n)]
    assert not missing
    assert set(cams.__all__) == set(CAMS_NAMES + NEW_NAMES) | {"Array"}
    assert callable(cams.reduce) and callable(cams.fuse)  # functions, not submodules


def test_importing_cams_alone_registers_every_builtin_method():
    """A fresh interpreter: the 25 built-in methods, all from one table, registered on
    `import ifa_jax.cams`; the input methods' functions are imported on first use."""
    code = (
        "import sys, ifa_jax.cams as c\n"
        "entries = c.builtin.BUILTIN_METHODS\n"
        "assert list(c.REGISTRY.values()) == list(entries), list(c.REGISTRY)\n"
        "print(len(c.METHODS), sorted(m.name for m in entries if m.kind == 'input'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    ).stdout.split()
    assert out[0] == "25" and " ".join(out[1:]) == "['fullgrad', 'sess']"


def test_input_methods_resolve_their_function_and_defaults():
    """The table's entries for the methods of the model: their function by module path,
    their option defaults those of the function's own keywords."""
    from ifa_jax.explaining import fullgrad, smoothing

    for name, fn in (("fullgrad", fullgrad.fullgrad_map), ("sess", smoothing.sess_map)):
        entry = cams.REGISTRY[name]
        assert isinstance(entry, cams.InputMethod) and entry.fn.resolve() is fn
        defaults = {
            p.name: p.default
            for p in inspect.signature(fn).parameters.values()
            if p.kind is p.KEYWORD_ONLY
        }
        assert dict(entry.options) == defaults


def test_peers_and_peer_note_are_defaulted_fields():
    def fn(inputs):
        return inputs.activations

    bare = cams.Method("mine", fn, (), frozenset(), {}, None, True, "summary", "layer")
    assert bare.peers == () and bare.peer_note == ""  # the positional fields as before
    one = cams.LayerMethod("mine", fn, peers="torch-cam/GradCAM", peer_note="as theirs")
    assert one.peers == ("torch-cam/GradCAM",) and one.peer_note == "as theirs"
    listed = cams.Method("mine", fn, peers=["a/B", "a/C+d"])
    assert listed.peers == ("a/B", "a/C+d")
    for bad in ("GradCAM", "torch-cam/", "/GradCAM", "torch cam/GradCAM", ("a/B", 3)):
        with pytest.raises(ValueError, match=r"peers are 'library/Name' strings"):
            cams.Method("mine", fn, peers=bad)  # type: ignore[arg-type]
    assert cams.get_method("gradcam").peers[0] == "pytorch-grad-cam/GradCAM"


def test_methods_are_typed_by_kind():
    for entry in cams.REGISTRY.values():
        want = {"layer": cams.LayerMethod, "layers": cams.LayersMethod}.get(entry.kind)
        assert type(entry) is (want or cams.InputMethod) and isinstance(entry, cams.Method)

    def fn(inputs):
        return inputs.activations

    assert type(cams.Method("mine", fn)) is cams.LayerMethod
    assert type(cams.Method("mine", fn, kind="layers")) is cams.LayersMethod
    with pytest.raises(ValueError, match=r"a LayerMethod is of kind 'layer'; got kind='input'"):
        cams.LayerMethod("mine", fn, kind="input")


def test_registered_and_unregister_method(registry):
    def fn(inputs):
        return inputs.activations

    gradcam = cams.REGISTRY["gradcam"]
    with cams.registered(cams.Method("mine", fn, aliases=("my-cam",))) as mine:
        assert cams.get_method("MyCam") is mine and "mine" in cams.METHODS
    assert "mine" not in cams.METHODS and "mycam" not in cams.ALIASES
    with cams.registered(cams.Method("gradcam", fn), replace=True) as other:
        assert cams.get_method("gradcam") is other
    assert cams.get_method("gradcam") is gradcam
    assert cams.unregister_method("hirescam").name == "hirescam"
    assert "hirescam" not in cams.METHODS and "fullcam" not in cams.ALIASES
    with pytest.raises(ValueError, match="unknown CAM method 'hirescam'"):
        cams.get_method("hirescam")


def test_replacing_a_method_keeps_jax_caches_and_retraces_by_name(registry):
    """Replacing a method clears no cache of JAX: an unrelated jitted function keeps its
    compilations, while a function jitted on the method's canonical name (as analyze and
    explain do) traces the new entry."""
    A, G = random_ag(jax.random.key(2), (2, 4, 3))
    unrelated = jax.jit(lambda a: 2 * a)
    unrelated(A)
    compiled = unrelated._cache_size()  # noqa: SLF001 (JAX's count of compilations)
    by_name = jax.jit(cams.cam, static_argnames="method")

    def plain(inputs):
        return inputs.gradients * inputs.activations

    cams.register_method(cams.Method("mine", plain, needs="gradients"))
    before = by_name(A, G, cams.canonical_method("mine")).cam
    thrice = cams.Method("mine", lambda i: 3 * plain(i), needs="gradients")
    cams.register_method(thrice, replace=True)
    after = by_name(A, G, cams.canonical_method("mine")).cam
    np.testing.assert_allclose(after, 3 * before, rtol=1e-6)
    np.testing.assert_allclose(before, np.sum(G * A, -1), rtol=1e-6)
    assert unrelated._cache_size() == compiled  # noqa: SLF001
    assert cams.canonical_method("mine") == "mine" and {"mine": 1}[cams.canonical_method("mine")]


def test_one_calling_convention_for_explaining():
    """Every entry point takes (probe, variables, x, target, method) with method where it
    has a choice (positional, default gradcam), and returns an Explanation."""
    from ifa_jax.explaining import fullgrad, guided, smoothing

    head = ["probe", "variables", "x", "target"]
    choosing = (
        explain,
        smoothing.explain_smoothed,
        smoothing.aug_smooth,
        smoothing.smoothgrad,
        guided.guided_gradcam,
    )
    for fn in choosing:
        params = list(inspect.signature(fn).parameters.values())
        assert [p.name for p in params[:5]] == [*head, "method"], fn.__name__
        assert params[4].kind is params[4].POSITIONAL_OR_KEYWORD and params[4].default == "gradcam"
    for fn in (smoothing.sess, fullgrad.fullgrad):
        params = inspect.signature(fn).parameters
        assert list(params)[:4] == head and "method" not in params, fn.__name__
    for fn in (*choosing[:4], smoothing.sess, fullgrad.fullgrad):
        assert inspect.signature(fn).return_annotation == "Explanation", fn.__name__
    assert inspect.signature(smoothing.sess).parameters["base_method"].default == "gradcam"


def test_replacing_a_base_method_reaches_the_methods_wrapping_it(registry, small):
    """RefineCAM's jitted map names its base in an option: replacing the base (here
    gradcam++ by HiResCAM's formula) is traced anew there too."""
    _, variables, x = small
    two = linen_probe(ConvNet(ndim=2, features=(4, 6), num_classes=3), ["relu1", "relu2"])
    before = explain(two, variables, x, 1, "refinecam", base="Grad-CAM++")[1].cam
    hires = explain(two, variables, x, 1, "refinecam", base="hirescam")[1].cam
    assert float(jnp.abs(before - hires).max()) > 1e-3
    hirescam = cams.REGISTRY["hirescam"]
    cams.register_method(cams.Method("gradcam++", hirescam.fn, needs="gradients"), replace=True)
    after = explain(two, variables, x, 1, "refinecam", base="Grad-CAM++")[1].cam
    np.testing.assert_array_equal(after, hires)

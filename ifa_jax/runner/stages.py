"""The runner's stages before evaluation: check the model, train (or load), analyse.

Each stage reads its outputs from the run folder when they verify, and computes and
writes them otherwise. A :class:`RunContext` carries what the stages produce to the
evaluations and the report.

Examples:
    The keyed methods draw from one key stream per split, derived from the config's seed:

    >>> import jax
    >>> from ifa_jax.runner.config import Config
    >>> from ifa_jax.runner.stages import KEY_STREAMS, method_key
    >>> KEY_STREAMS
    ('train', 'validation', 'explain')
    >>> a, b = method_key(Config(), "train"), method_key(Config(), "validation")
    >>> bool((jax.random.key_data(a) == jax.random.key_data(b)).all())
    False
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ifa_jax import analysis, scale
from ifa_jax.explaining import explain
from ifa_jax.probes import (
    LayerProbe,
    linen_layers,
    linen_natural_layer,
    linen_probe,
    resolve_layer,
    tokens,
)
from ifa_jax.runner import data
from ifa_jax.runner import train as training
from ifa_jax.runner.config import Config
from ifa_jax.runner.folder import TRAIN_FIELDS, RunFolder, sha256

SPLITS = ("train", "validation")
# The uses of the keyed CAM methods' PRNG key: the analysis pass of each split, and the
# CAMs of the evaluations and figures (see method_key).
KEY_STREAMS = (*SPLITS, "explain")


def method_key(config: Config, stream: str) -> jax.Array:
    """The PRNG key of the keyed methods (randomcam, sscam, smoothgradcam++) for one
    stream of :data:`KEY_STREAMS`: ``fold_in(key(seed), i + 1)``, i the stream's position.
    In the analysis of a split, sample n (in the split's order) is explained with
    ``fold_in(method_key(config, split), n)`` (see :func:`ifa_jax.analysis.analyze`)."""
    if stream not in KEY_STREAMS:
        raise ValueError(f"stream must be one of {KEY_STREAMS}; got {stream!r}")
    return jax.random.fold_in(jax.random.key(config.seed), KEY_STREAMS.index(stream) + 1)


@dataclasses.dataclass
class RunContext:
    """Everything one run has computed so far. ``analyses[method][split]`` is ``(Summary,
    per-sample arrays)``; ``evaluations[name]`` is ``(numbers as JSON, arrays)``."""

    config: Config
    run: RunFolder
    splits: data.Splits
    model: Any
    log: Callable[[str], None]
    # Filled by the stages in turn (reading one before its stage ran is an AttributeError).
    variables: Any = dataclasses.field(init=False)
    train_info: dict = dataclasses.field(init=False)
    probe: LayerProbe = dataclasses.field(init=False)
    analyses: dict[str, dict[str, tuple[analysis.Summary, dict[str, np.ndarray]]]] = (
        dataclasses.field(init=False)
    )
    scales: dict[str, scale.Scale] = dataclasses.field(init=False)
    evaluations: dict[str, tuple[dict, dict[str, np.ndarray]]] = dataclasses.field(
        default_factory=dict
    )

    @property
    def method(self) -> str:
        """The first method: it drives the figures and the single-method evaluations."""
        return self.config.methods[0]

    @property
    def summary(self) -> analysis.Summary:
        """The first method's statistics on the training split."""
        return self.analyses[self.method]["train"][0]

    def explain(self, x, target, *, method: str | None = None, variables: Any = None):
        """:func:`ifa_jax.explain` of ``method`` (default: the first) at the run's layer,
        with the config's options for it and the key of the ``"explain"`` stream, on the
        run's variables (or ``variables``)."""
        method = self.method if method is None else method
        variables = self.variables if variables is None else variables
        key = method_key(self.config, "explain")
        options = self.config.options_of(method)
        return explain(self.probe, variables, x, target, method, key=key, **options)

    def batches(self, ds):
        """``(x, y, valid)`` batches of the config's size over ``ds``."""
        return ((b.x, b.y, b.mask) for b in data.batches(ds, self.config.batch_size))

    def sample_indices(self, n: int) -> np.ndarray:
        """``n`` validation indices stratified by class with the config's seed. The labels
        come from the validation analysis, so lazy sources are not read again."""
        labels = self.analyses[self.method]["validation"][1]["label"]
        return data.stratified_indices(labels, n, seed=self.config.seed)


def _template(config: Config, model, input_shape):
    # Shapes only: loading and checking need the tree's structure, not initialised weights.
    return jax.eval_shape(
        lambda: training.init_variables(model, tuple(input_shape), key=jax.random.key(config.seed))
    )


def reshape_of(config: Config) -> tokens.TokenGrid | None:
    """The probe's ``reshape``: tokens to a grid when the config sets ``tokens_prefix``."""
    return None if config.tokens_prefix is None else tokens.tokens_to_grid(config.tokens_prefix)


def check_model(config: Config, model, splits: data.Splits) -> tuple[str, str]:
    """Resolve the layer and check the model's outputs abstractly (nothing is computed),
    so a wrong name fails before any file is written or any training is done. Returns
    the layer's path and how it was chosen (the natural layer when ``layer`` is None)."""
    input_shape = splits.train.input_shape
    kwargs = training.inference_kwargs(model)
    try:
        template = _template(config, model, input_shape)
    except (TypeError, ValueError) as e:  # a field the model could not use
        raise ValueError(
            f"model {config.model!r} cannot be built for inputs {tuple(input_shape)} with "
            f"model_kwargs {dict(config.model_kwargs)} ({type(e).__name__}: {e}); fix the "
            "config's model_kwargs"
        ) from None
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    available = linen_layers(model, template, x, **kwargs)
    try:
        if config.layer is None:
            path, why = linen_natural_layer(model, template, x, **kwargs)
        else:
            path, why = resolve_layer(config.layer, list(available)), "named by the config"
    except ValueError as e:
        raise ValueError(f"config field 'layer': {e}") from None
    shape = available[path]
    reshape = reshape_of(config)
    if reshape is not None:
        try:
            shape = tuple(jax.eval_shape(reshape, jax.ShapeDtypeStruct(shape, jnp.float32)).shape)
        except ValueError as e:
            raise ValueError(f"config field 'tokens_prefix' (layer {path!r}): {e}") from None
    if not (isinstance(shape, tuple) and 3 <= len(shape) <= 5):
        grids = [p for p, s in available.items() if isinstance(s, tuple) and 3 <= len(s) <= 5]
        raise ValueError(
            f"config field 'layer': {path!r} outputs {shape}, not a feature grid "
            f"(B, *spatial, K); layers with one: {', '.join(grids) or '(none)'}"
        )
    out = jax.eval_shape(lambda v, x: model.apply(v, x, **kwargs), template, x)
    num_classes = splits.train.num_classes
    if getattr(out, "ndim", 0) != 2 or out.shape[-1] < num_classes:
        raise ValueError(
            f"model {config.model!r} outputs {getattr(out, 'shape', type(out).__name__)} but "
            f"the dataset {config.dataset!r} has {num_classes} classes; the model must "
            f"return logits (B, >= {num_classes})"
        )
    return path, why


TRAINING_DIVERGED = (
    "training diverged. Lower train.lr or set train.grad_clip_norm, and rerun with --overwrite"
)


def check_finite_weights(variables, where: str, fix: str = TRAINING_DIVERGED) -> None:
    """Refuse variables with NaN or inf, naming the arrays and ``fix``."""
    leaves = jax.tree_util.tree_leaves_with_path(variables)
    bad = [jax.tree_util.keystr(p) for p, v in leaves if not np.isfinite(np.asarray(v)).all()]
    if bad:
        raise FloatingPointError(
            f"the model in {where} has non-finite weights in {len(bad)} of {len(leaves)} "
            f"arrays ({', '.join(bad[:4])}{', ...' if len(bad) > 4 else ''}): {fix}"
        )


def load_given_variables(config: Config, model, splits: data.Splits) -> tuple[Any, str]:
    """The config's ``variables`` (a msgpack file or an orbax folder) and their digest,
    checked against the model before the run folder is touched."""
    path = os.path.abspath(str(config.variables))
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"variables file {path!r} (config field 'variables') does not exist"
        )
    variables = training.load_checkpoint(path, _template(config, model, splits.train.input_shape))
    check_finite_weights(
        variables, path, "these variables cannot be analysed; name a trained model's variables"
    )
    return variables, sha256(path)


def train_info_problem(info) -> str | None:
    """What is wrong with a ``train.json`` read back (None: it has what the report reads)."""
    if not isinstance(info, dict):
        return f"a JSON {type(info).__name__}, not an object"
    accuracy = info.get("validation_accuracy")
    if not (isinstance(accuracy, dict) and isinstance(accuracy.get("accuracy"), (int, float))):
        return "no validation_accuracy.accuracy"
    if not isinstance(info.get("history", {}), dict):
        return "history is not an object"
    return None


def _given_variables(ctx: RunContext, digest: str) -> None:
    """Record (or reload) what the given variables score; nothing is trained."""
    config, run = ctx.config, ctx.run
    run.checkpoint_digest = digest
    stored = run.read_json("train.json", train_info_problem, run.train_inputs)
    if stored is not None:
        ctx.train_info = stored
        return
    path = os.path.abspath(str(config.variables))
    ctx.train_info = {
        "variables": path,
        "sha256": digest,
        "validation_accuracy": training.evaluate(
            ctx.model, ctx.variables, ctx.splits.validation, batch_size=config.batch_size
        ),
    }
    run.write_json("train.json", ctx.train_info, run.train_inputs)
    ctx.log(
        f"train: none; analysing the variables in {path} (validation accuracy "
        f"{ctx.train_info['validation_accuracy']['accuracy']:.4f})"
    )


def stage_train(ctx: RunContext, given_digest: str | None = None) -> None:
    """Train, or load the checkpoint that verifies, or take the config's ``variables``
    (already in ``ctx.variables``, with ``given_digest``). Sets ``ctx.variables``,
    ``ctx.train_info`` and ``run.checkpoint_digest``."""
    config, run, log = ctx.config, ctx.run, ctx.log
    if given_digest is not None:
        return _given_variables(ctx, given_digest)
    ckpt = run.file("checkpoint.msgpack")
    if run.valid("checkpoint.msgpack", run.train_inputs):
        run.checkpoint_digest = run.manifest["checkpoint.msgpack"]["sha256"]
        stored = run.read_json("train.json", train_info_problem, run.train_inputs)
        if stored is not None:
            log(f"train: loading {ckpt}")
            template = _template(config, ctx.model, ctx.splits.train.input_shape)
            try:
                ctx.variables = training.load_checkpoint(ckpt, template, follow_links=False)
            except ValueError as e:  # the runner's own file, damaged: train again
                why = e if e.__cause__ is None else e.__cause__  # what msgpack said
                log(
                    f"train: the run's checkpoint {ckpt} does not load ({why}); it is the "
                    "runner's own file, so the training stage is recomputed"
                )
            else:
                check_finite_weights(ctx.variables, ckpt)
                ctx.train_info = stored
                return None
        run.checkpoint_digest = None
    start = time.perf_counter()
    # Saved after every epoch: a killed run resumes after its last finished epoch.
    state_path = run.file("train_state.msgpack")
    if os.path.isfile(state_path) and not os.path.islink(state_path):
        log(f"train: resuming from {state_path}")
    splits = ctx.splits
    try:
        variables, history = training.train(
            ctx.model, splits.train, splits.validation, config.train, state_path=state_path
        )
    except training.TrainStateFileError as e:  # the runner's own file: start afresh
        log(f"train: {e}; training from epoch 1")
        os.remove(state_path)
        variables, history = training.train(
            ctx.model, splits.train, splits.validation, config.train, state_path=state_path
        )
    seconds = time.perf_counter() - start
    info = {
        "history": history.as_dict(),
        "seconds": seconds,
        "validation_accuracy": training.evaluate(
            ctx.model, variables, splits.validation, batch_size=config.batch_size
        ),
    }
    training.save_checkpoint(ckpt, variables)
    run.checkpoint_digest = run.record("checkpoint.msgpack", run.train_inputs)
    run.write_json("train.json", info, run.train_inputs)
    os.remove(state_path)
    check_finite_weights(variables, ckpt)
    log(
        f"train: {seconds:.1f} s, validation accuracy {info['validation_accuracy']['accuracy']:.4f}"
    )
    ctx.variables, ctx.train_info = variables, info
    return None


def _summary_arrays(result: analysis.Analysis) -> dict[str, np.ndarray]:
    s = result.summary
    out = {f"summary_{k}": np.asarray(v) for k, v in s._asdict().items()}
    out.update({f"sample_{k}": np.asarray(v) for k, v in result.samples.items()})
    return out


# The arrays of an analysis/<method>_<split>.npz that the later stages read.
ANALYSIS_KEYS = (
    *(f"summary_{k}" for k in analysis.Summary._fields),
    "sample_cam_max",
    "sample_cam_min",
    "sample_label",
)


def analysis_problem(
    arrays: Mapping[str, np.ndarray], num_classes: int, num_samples: int
) -> str | None:
    """What is wrong with the arrays of an ``analysis/<method>_<split>.npz`` read back
    (None: their shapes agree with ``num_classes`` classes, ``num_samples`` samples and
    one channel count K, and they hold numbers)."""
    for k, v in arrays.items():
        if v.dtype.kind not in "biuf":
            return f"{k} holds {v.dtype} values, not numbers"
    shape = {k: v.shape for k, v in arrays.items()}
    im_all = shape.get("summary_im_all", ())
    if len(im_all) != 1:
        return f"summary_im_all has shape {im_all}, not (K,)"
    c, k = num_classes, im_all[0]
    want = {
        "summary_im_class": (c, k),
        "summary_im_diff": (c, k),
        "summary_im_var": (c, k),
        "summary_covariance": (k, k),
        "summary_class_counts": (c,),
        "summary_present": (c,),
        "summary_seen": (),
        "sample_importance": (num_samples, k),
    }
    want.update({f"sample_{n}": (num_samples,) for n in ("cam_max", "cam_min", "label")})
    for name, expected in want.items():
        if name in shape and shape[name] != expected:
            return f"{name} has shape {shape[name]}, not {expected}"
    cam_mean = shape.get("summary_cam_mean", ())
    if len(cam_mean) < 2 or cam_mean[0] != c:
        return f"summary_cam_mean has shape {cam_mean}, not ({c}, *spatial)"
    return None


def load_analysis(
    arrays: str | os.PathLike | Mapping[str, np.ndarray],
) -> tuple[analysis.Summary, dict[str, np.ndarray]]:
    """``(Summary, per-sample arrays)`` from an ``analysis/<method>_<split>.npz`` (its path,
    or its arrays as :meth:`RunFolder.read_npz` gives them)."""
    if not isinstance(arrays, Mapping):
        with np.load(arrays, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    stored: Mapping[str, Any] = arrays
    summary = analysis.Summary(**{k: stored[f"summary_{k}"] for k in analysis.Summary._fields})
    summary = summary._replace(seen=int(summary.seen))
    samples = {k[len("sample_") :]: v for k, v in arrays.items() if k.startswith("sample_")}
    return summary, samples


def stage_analyse(ctx: RunContext) -> None:
    """One streaming pass per split for all methods together (one probe call per batch);
    sets ``ctx.probe``, ``ctx.analyses`` and ``ctx.scales``."""
    config, run = ctx.config, ctx.run
    ctx.probe = linen_probe(
        ctx.model, config.layer, reshape=reshape_of(config), **training.inference_kwargs(ctx.model)
    )
    methods = config.methods
    ctx.analyses = {m: {} for m in methods}
    digests = {m: analysis_digest(ctx, m) for m in methods}
    for split_name in SPLITS:
        names = {m: os.path.join("analysis", f"{m}_{split_name}.npz") for m in methods}
        ds = getattr(ctx.splits, split_name)

        def check(arrays, ds=ds):
            return analysis_problem(arrays, ds.num_classes, len(ds))

        stored = {m: run.read_npz(n, ANALYSIS_KEYS, digests[m], check) for m, n in names.items()}
        todo = tuple(m for m in methods if stored[m] is None)
        if todo:
            start = time.perf_counter()
            options = {m: o for m, o in config.options_of().items() if m in todo}
            try:
                results = analyze_all(
                    ctx.log,
                    split_name,
                    ctx.probe,
                    ctx.variables,
                    ctx.batches(ds),
                    num_classes=ds.num_classes,
                    methods=todo,
                    count=config.count,
                    progress=False,
                    keep_importance=True,
                    mesh=config.devices if config.devices > 1 else None,
                    method_options=options or None,
                    key=method_key(config, split_name),
                )
            except analysis.NothingCountedError:
                raise ValueError(
                    f"analyse {split_name}: none of its {len(ds)} samples is correctly "
                    "classified, so no importance statistic can be counted; set count='all' "
                    "(--set count=all) to count every sample, or train longer"
                ) from None
            for m, result in results.items():
                arrays = _summary_arrays(result)
                if m != methods[0]:  # per-sample importances are kept for the first only
                    arrays.pop("sample_importance")
                run.save_npz(names[m], arrays, digests[m])
                stored[m] = arrays
            ctx.log(
                f"analyse: {', '.join(todo)} on {split_name} ({len(ds)} samples, one "
                f"pass) in {time.perf_counter() - start:.1f} s"
            )
        for m, arrays in stored.items():
            assert arrays is not None  # read back, or computed above
            ctx.analyses[m][split_name] = load_analysis(arrays)
    ctx.scales = {m: make_scale(config, ctx.analyses[m]["train"][1]) for m in methods}


# The config fields the analysis of one method depends on, beyond training's.
ANALYSIS_FIELDS = ("layer", "tokens_prefix", "count", "batch_size", "devices")


def analysis_digest(ctx: RunContext, method: str) -> str:
    """The inputs digest of ``analysis/<method>_<split>.npz``: training's fields, the
    analysis fields, the method's options and whether it is the first method (which
    keeps the per-sample importances)."""
    config = ctx.config
    return ctx.run.digest(
        (*TRAIN_FIELDS, *ANALYSIS_FIELDS),
        method=method,
        options=config.options_of(method),
        first=method == config.methods[0],
    )


def analyze_all(
    log: Callable[[str], None], split: str, *args, **kwargs
) -> dict[str, analysis.Analysis]:
    """:func:`ifa_jax.analysis.analyze_methods`: ``{method: Analysis}``.
    Classes with no counted sample (a :class:`~ifa_jax.analysis.MissingClassesWarning`)
    go to the run's log, once per split; the report names them too."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", analysis.MissingClassesWarning)
        results = analysis.analyze_methods(*args, **kwargs)
    said = set()
    for w in caught:
        if not issubclass(w.category, analysis.MissingClassesWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        elif str(w.message) not in said:
            said.add(str(w.message))
            log(f"analyse {split}: {w.message}")
    return results


def make_scale(config: Config, samples: Mapping[str, np.ndarray]) -> scale.Scale:
    """The common scale of one method from its training split's per-sample max/min."""
    return scale.common_scale(
        samples["cam_max"],
        samples["cam_min"],
        mode=config.scale_mode,
        hi_percentile=config.scale_hi_percentile,
        lo_percentile=config.scale_lo_percentile,
        ratio=config.scale_ratio,
        remove_negative=config.remove_negative,
    )


__all__ = [
    "KEY_STREAMS",
    "RunContext",
    "method_key",
    "load_given_variables",
    "check_finite_weights",
    "check_model",
    "load_analysis",
    "make_scale",
    "reshape_of",
    "stage_analyse",
    "stage_train",
]

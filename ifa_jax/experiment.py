"""The experiment runner: data -> model -> integrated feature analysis -> evaluation -> report.

A run is described by a frozen :class:`Config` and lives in one run folder:

    config.json        the config it belongs to (a different config is refused)
    checkpoint.msgpack the trained model (stage "train") and train.json, its history;
                       train_state.msgpack while training (resumes a killed run)
    analysis/*.npz     per method and split: statistics and per-sample scalars
    evaluation.json    consistency, AUROC, feature subsets, faithfulness, sanity check
                       (evaluation_scatter.npz: the arrays behind the consistency figure)
    figures/*.png      the figures of the report
    results.json       every number, with the config and package versions
    report.md          the readable report, embedding the figures
    manifest.json      SHA-256 of every stage output and the checkpoint it came from

Every file is written atomically (temporary file + rename), and a stage whose output
verifies against the manifest is not run again, so a crashed run resumes where it
stopped, and a damaged file (or one computed from another checkpoint) is recomputed.
The folder holds a ``.ifa_jax_run`` marker (``--overwrite`` clears only such folders)
and a lock, so two runners never share it.
"""

from __future__ import annotations

import ast
import dataclasses
import fcntl
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import tempfile
import time
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ifa_jax import analysis, cams, data, decompose, diagnostics, io, metrics, models, plots, scale
from ifa_jax import train as training
from ifa_jax.explain import explain
from ifa_jax.probe import linen_layers, linen_probe, resolve_layer

DATASETS = ("mnist_embedded", "sklearn_digits", "tfds:<name>", "medmnist:<path.npz>",
            "signals:<path>")
MODELS = ("mnist_cnn", "convnet", "resnet18")
# The selection modes a subset-accuracy curve can sweep: those driven by a ratio alone.
SUBSET_MODES = ("top", "diff_top", "reverse_diff_top", "random")
# Bumped when evaluation.json changes shape: an older file is recomputed, not misread.
EVALUATION_FORMAT = 3


@dataclasses.dataclass(frozen=True)
class Config:
    """One experiment. See experiments/configs/ for complete examples.

    dataset: one of ``mnist_embedded``, ``sklearn_digits``, ``tfds:<name>``,
    ``medmnist:<path.npz>``, ``signals:<path>``. image_size: resize tfds images to it.
    model: ``mnist_cnn``, ``convnet`` or ``resnet18`` with ``model_kwargs`` (pairs).
    layer: the layer to analyse. train: a :class:`ifa_jax.train.TrainConfig`.
    methods: CAM methods analysed and evaluated (the first one drives the figures).
    scale_*: the common intensity scale (METHOD.md section 3).
    subset_ratios / subset_modes: feature-subset accuracy (section 6).
    consistency_ratio: the 'top' subset whose CAMs are evaluated beside all features.
    max_classes: classes evaluated for consistency (all when None).
    faithfulness_samples / sanity_samples: images for drop/increase, insertion/deletion
    and the randomisation check (0 skips them); figure_samples: images in the CAM figure.
    All three are drawn stratified by class with ``seed`` (one per class first).
    """

    name: str = "mnist"
    dataset: str = "mnist_embedded"
    image_size: tuple[int, ...] | None = None
    validation_size: float = 1000
    model: str = "mnist_cnn"
    model_kwargs: tuple[tuple[str, Any], ...] = ()
    layer: str = "conv2"
    train: training.TrainConfig = training.TrainConfig(epochs=4, batch_size=128, lr=2e-3)
    batch_size: int = 250
    methods: tuple[str, ...] = ("gradcam", "gradcam++", "xgradcam", "hirescam")
    scale_mode: str = "norm"
    scale_ratio: float = 1.0
    scale_hi_percentile: float = 90
    scale_lo_percentile: float = 50
    remove_negative: bool = False
    subset_ratios: tuple[float, ...] = metrics.DEFAULT_RATIOS
    subset_modes: tuple[str, ...] = ("top", "diff_top", "random")
    consistency_ratio: float = 0.1
    max_classes: int | None = None
    faithfulness_samples: int = 64
    sanity_samples: int = 16
    figure_samples: int = 10
    seed: int = 0

    def __post_init__(self):
        for name, value in _typed_fields(Config, dataclasses.asdict(self) | {
                "train": self.train}, "config").items():
            object.__setattr__(self, name, value)
        # Canonical names once, here: every stage and file keys on them.
        object.__setattr__(self, "methods",
                           tuple(cams.canonical_method(m) for m in self.methods))
        if self.model not in MODELS:
            raise ValueError(f"model {self.model!r} is not one of {MODELS}")
        checks = [
            (self.scale_mode in scale.MODES, f"scale_mode must be one of {scale.MODES}"),
            (bool(self.methods), "methods is empty; name at least one CAM method"),
            (self.validation_size > 0, "validation_size must be > 0 (a count, or a share < 1)"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.scale_ratio > 0, "scale_ratio must be > 0"),
            (0 <= self.scale_lo_percentile < self.scale_hi_percentile <= 100,
             "percentiles must satisfy 0 <= scale_lo_percentile < scale_hi_percentile <= 100"),
            (bool(self.subset_ratios) and all(0 < r <= 1 for r in self.subset_ratios),
             "subset_ratios must be shares in (0, 1]"),
            (all(m in SUBSET_MODES for m in self.subset_modes),
             f"subset_modes must be among {', '.join(SUBSET_MODES)}"),
            (0 < self.consistency_ratio <= 1, "consistency_ratio must lie in (0, 1]"),
            (self.max_classes is None or self.max_classes >= 1, "max_classes must be >= 1"),
            (self.faithfulness_samples >= 0, "faithfulness_samples must be >= 0"),
            (self.sanity_samples >= 0, "sanity_samples must be >= 0"),
            (self.figure_samples >= 1, "figure_samples must be >= 1"),
        ]
        bad = [msg for ok, msg in checks if not ok]
        if bad:
            raise ValueError(f"invalid config {self.name!r}: {'; '.join(bad)}")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


# --------------------------------------------------------------------------- config files


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _describe(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a tuple of {_describe(args[0])}"
        return f"a pair ({', '.join(_describe(a) for a in args)})"
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", str(hint))


def _typed(value, hint, name: str):
    """``value`` checked against the annotation ``hint``; lists become tuples and a bare
    string (``methods=gradcam,hirescam``) a tuple of strings. Raises naming the field."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is not type(None):
                try:
                    return _typed(value, arg, name)
                except ValueError:
                    pass
    elif origin is tuple:
        if isinstance(value, str) and args == (str, Ellipsis):
            value = tuple(v.strip() for v in value.split(",") if v.strip())
        if isinstance(value, list):
            value = tuple(value)
        if isinstance(value, tuple):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_typed(v, args[0], name) for v in value)
            if len(value) == len(args):
                return tuple(_typed(v, a, name) for v, a in zip(value, args))
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(hint, type) and isinstance(value, hint):
        return value
    raise ValueError(f"{name} must be {_describe(hint)}; got {value!r} "
                     f"({type(value).__name__})")


def _typed_fields(cls, values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Every field of ``values`` checked against ``cls``'s annotations."""
    hints = typing.get_type_hints(cls)
    return {k: _typed(v, hints[k], f"{where}: field {k!r}") for k, v in values.items()}


def _coerce(cls, values: Mapping[str, Any], where: str):
    """Build a dataclass from a mapping, naming unknown fields and listing the valid ones."""
    valid = _field_names(cls)
    unknown = [k for k in values if k not in valid]
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; valid "
                         f"fields: {', '.join(valid)}")
    kwargs = dict(values)
    if cls is Config and isinstance(kwargs.get("train"), Mapping):
        kwargs["train"] = _coerce(training.TrainConfig, kwargs["train"], f"{where} train")
    return cls(**_typed_fields(cls, kwargs, where))


def config_from_dict(values: Mapping[str, Any], where: str = "config") -> Config:
    return _coerce(Config, values, where)


def load_config(path: str | os.PathLike) -> Config:
    """A config from a ``.py`` file with ``get_config()`` or a ``.json`` file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {path!r} does not exist; see experiments/configs/")
    if path.endswith(".json"):
        with open(path) as f:
            return config_from_dict(json.load(f), path)
    spec = importlib.util.spec_from_file_location("ifa_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path} has no get_config() function returning a Config")
    config = module.get_config()
    if isinstance(config, Mapping):
        return config_from_dict(config, path)
    return config


def override(config: Config, assignment: str) -> Config:
    """Apply ``key=value`` (``train.epochs=2``); values are Python literals or strings."""
    if "=" not in assignment:
        raise ValueError(f"override {assignment!r} must look like key=value, e.g. train.epochs=2")
    key, raw = assignment.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    values = dataclasses.asdict(config)
    if key.startswith("train."):
        sub = key.split(".", 1)[1]
        if sub not in _field_names(training.TrainConfig):
            raise ValueError(f"unknown field 'train.{sub}'; valid: "
                             f"{', '.join(_field_names(training.TrainConfig))}")
        values["train"][sub] = value
    else:
        values[key] = value
    return config_from_dict(values, f"override {assignment!r}")


# --------------------------------------------------------------------------- atomic files


def _to_jsonable(obj):
    if isinstance(obj, Mapping):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if hasattr(obj, "_asdict"):
        return _to_jsonable(obj._asdict())
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, (np.ndarray, jax.Array)):
        return _to_jsonable(np.asarray(obj).tolist())
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    return obj


def write_json(path: str, obj) -> None:
    io.atomic_write_bytes(path, json.dumps(_to_jsonable(obj), indent=1).encode())


def _save_npz(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    with io.atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


# --------------------------------------------------------------------------- run folder

# The file that marks a folder as made by the runner: --overwrite clears only such folders.
RUN_MARKER = ".ifa_jax_run"
LOCK_FILE = ".lock"
MANIFEST = "manifest.json"
# Everything the runner writes; --overwrite removes these entries and nothing else.
RUN_ENTRIES = (RUN_MARKER, MANIFEST, "config.json", "checkpoint.msgpack", "train.json",
               "train_state.msgpack", "analysis", "evaluation.json", "evaluation_scatter.npz",
               "figures", "results.json", "report.md")


class RunFolderBusyError(FileExistsError):
    """Another process holds the run folder's lock."""


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class RunFolder:
    """The run folder of one config: refuses another config's folder, resumes its own.

    Opening it takes an exclusive lock (a second runner on the same folder is refused,
    naming the process that holds it) and removes temporaries that a killed writer left.
    Every stage output is written atomically through :meth:`write_json` / :meth:`save_npz`
    / :meth:`record`, which note its SHA-256 and the checkpoint it was computed from in
    ``manifest.json``; :meth:`valid` accepts a file only if both still match, so a damaged
    file, or one computed from another model, is recomputed instead of being misread.
    Use it as a context manager (or call :meth:`close`) to release the lock.
    """

    def __init__(self, path: str | os.PathLike, config: Config, *, overwrite: bool = False,
                 log: Callable[[str], None] = print):
        self.path = os.path.abspath(os.fspath(path))
        self.config = config
        self.log = log
        self.checkpoint_digest: str | None = None
        try:
            os.makedirs(self.path, exist_ok=True)
            fd, probe_file = tempfile.mkstemp(dir=self.path, prefix=".write-test-")
            os.close(fd)
            os.remove(probe_file)
        except OSError as e:
            raise PermissionError(
                f"cannot write to the output folder {self.path!r} ({e.strerror}); pass a "
                "writable --out path") from None
        self._lock = self._acquire_lock(created=not os.path.exists(self.file(LOCK_FILE)))
        try:
            self._adopt(config, overwrite)
        except BaseException:
            self.close()
            raise

    # -- opening -------------------------------------------------------------------------

    def _acquire_lock(self, created: bool):
        handle = open(self.file(LOCK_FILE), "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunFolderBusyError(
                f"run folder {self.path!r} is in use by another runner (process {holder}); "
                "wait for it to finish, or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock_created = created
        return handle

    def _is_run_folder(self) -> bool:
        if self.has(RUN_MARKER):
            return True
        # A folder from before the marker existed: its config.json holds our fields.
        try:
            with open(self.file("config.json")) as f:
                theirs = json.load(f)
        except (OSError, ValueError):
            return False
        return isinstance(theirs, dict) and {"name", "dataset", "methods"} <= set(theirs)

    def _foreign_entries(self) -> list[str]:
        return sorted(n for n in os.listdir(self.path) if n != LOCK_FILE)

    def _adopt(self, config: Config, overwrite: bool) -> None:
        ours = self._is_run_folder()
        entries = self._foreign_entries()
        if entries and not ours:
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            if self._lock_created:
                os.remove(self.file(LOCK_FILE))
            raise FileExistsError(
                f"{self.path!r} is not empty ({shown}) and is not a run folder (it has no "
                f"{RUN_MARKER} file), so nothing was written or deleted there"
                f"{' (--overwrite only ever clears run folders)' if overwrite else ''}; "
                "choose a new or empty --out folder")
        for stale in io.remove_stale_temporaries(self.path):
            self.log(f"run folder: removed {os.path.relpath(stale, self.path)}, left by an "
                     "interrupted write")
        mine = config.to_dict()
        if self.has("config.json") and not overwrite:
            try:
                with open(self.file("config.json")) as f:
                    theirs = json.load(f)
            except ValueError as e:
                raise ValueError(
                    f"{self.file('config.json')} is damaged ({e}), so the config this run "
                    "folder belongs to is unknown; pass --overwrite to start it afresh, or "
                    "choose another --out") from None
            if theirs != mine:
                diff = [f"{k}: {theirs.get(k)!r} -> {mine.get(k)!r}" for k in
                        sorted(set(theirs) | set(mine)) if theirs.get(k) != mine.get(k)]
                raise FileExistsError(
                    f"run folder {self.path!r} belongs to another config (differences: "
                    f"{'; '.join(diff)}); pass --overwrite to replace it or choose another "
                    "--out")
        if overwrite and ours:
            self.clear()
        self.manifest = self._read_manifest()
        for sub in ("analysis", "figures"):
            os.makedirs(self.file(sub), exist_ok=True)
        io.atomic_write_bytes(self.file(RUN_MARKER), b"ifa_jax run folder\n")
        write_json(self.file("config.json"), mine)

    def _read_manifest(self) -> dict[str, dict]:
        if not self.has(MANIFEST):
            return {}
        try:
            with open(self.file(MANIFEST)) as f:
                manifest = json.load(f)
            if isinstance(manifest, dict):
                return manifest
        except ValueError:
            pass
        self.log(f"run folder: {MANIFEST} is damaged; every stage will be recomputed")
        return {}

    def clear(self) -> None:
        """Remove what the runner wrote (:data:`RUN_ENTRIES`); other files stay."""
        for name in RUN_ENTRIES:
            full = self.file(name)
            if os.path.isdir(full):
                shutil.rmtree(full)
            elif os.path.exists(full):
                os.remove(full)

    def close(self) -> None:
        if getattr(self, "_lock", None) is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- files -----------------------------------------------------------------------------

    def file(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    def has(self, *parts: str) -> bool:
        return os.path.exists(self.file(*parts))

    def record(self, name: str) -> str:
        """Note ``name``'s digest and the checkpoint it was computed from (None for the
        checkpoint itself); returns the digest."""
        digest = _sha256(self.file(name))
        self.manifest[name] = {"sha256": digest, "checkpoint": self.checkpoint_digest}
        io.atomic_write_bytes(self.file(MANIFEST),
                              json.dumps(self.manifest, indent=1, sort_keys=True).encode())
        return digest

    def valid(self, name: str) -> bool:
        """Whether ``name`` exists, is intact, and was computed from the current checkpoint."""
        if not self.has(name):
            return False
        entry = self.manifest.get(name)
        if entry is None:
            self.log(f"run folder: {name} has no recorded checksum; recomputing it")
            return False
        if _sha256(self.file(name)) != entry.get("sha256"):
            self.log(f"run folder: {name} does not match its recorded checksum (damaged, or "
                     "changed outside the runner); recomputing it")
            return False
        if entry.get("checkpoint") != self.checkpoint_digest:
            self.log(f"run folder: {name} was computed from another checkpoint; recomputing it")
            return False
        return True

    def write_json(self, name: str, obj) -> None:
        write_json(self.file(name), obj)
        self.record(name)

    def save_npz(self, name: str, arrays: Mapping[str, np.ndarray]) -> None:
        _save_npz(self.file(name), arrays)
        self.record(name)


# --------------------------------------------------------------------------- building blocks


def load_data(config: Config) -> data.Splits:
    ds = config.dataset
    if ds == "mnist_embedded":
        return data.load_mnist_embedded(validation_size=config.validation_size, seed=config.seed)
    if ds == "sklearn_digits":
        return data.load_sklearn_digits(validation_size=config.validation_size,
                                        seed=config.seed)
    if ds.startswith("tfds:"):
        name = ds.split(":", 1)[1]
        kwargs = {"image_size": config.image_size} if config.image_size else {}
        return data.load_tfds_splits(name, **kwargs)
    if ds.startswith("medmnist:"):
        return data.load_medmnist_npz(ds.split(":", 1)[1])
    if ds.startswith("signals:"):
        full = data.load_signals(ds.split(":", 1)[1])
        return data.split_dataset(full, config.validation_size, seed=config.seed)
    raise ValueError(f"dataset {ds!r} is not understood; use one of {DATASETS}")


def build_model(config: Config, splits: data.Splits):
    kwargs = dict(config.model_kwargs)
    num_classes = splits.train.num_classes
    if config.model == "mnist_cnn":
        return models.MnistCNN(num_classes=num_classes, **kwargs)
    if config.model == "convnet":
        ndim = len(splits.train.input_shape) - 1
        return models.ConvNet(ndim=ndim, num_classes=num_classes, **kwargs)
    return models.ResNet18(num_classes=num_classes, **kwargs)


def _batches(ds, size: int):
    return ((b.x, b.y, b.mask) for b in data.batches(ds, size))


# --------------------------------------------------------------------------- stages


def _check_finite_weights(variables, where: str) -> None:
    leaves = jax.tree_util.tree_leaves_with_path(variables)
    bad = [jax.tree_util.keystr(p) for p, v in leaves if not np.isfinite(np.asarray(v)).all()]
    if bad:
        raise FloatingPointError(
            f"the model in {where} has non-finite weights in {len(bad)} of {len(leaves)} "
            f"arrays ({', '.join(bad[:4])}{', ...' if len(bad) > 4 else ''}): training "
            "diverged. Lower train.lr or set train.grad_clip_norm, and rerun with --overwrite")


def stage_train(run: RunFolder, config: Config, model, splits, log) -> tuple[Any, dict]:
    """Train, or load the checkpoint that verifies; sets ``run.checkpoint_digest``."""
    ckpt = run.file("checkpoint.msgpack")
    if run.valid("checkpoint.msgpack"):
        run.checkpoint_digest = run.manifest["checkpoint.msgpack"]["sha256"]
        if run.valid("train.json"):
            log(f"train: loading {ckpt}")
            # Shapes only: loading needs the tree's structure, not initialised weights.
            template = jax.eval_shape(lambda: training.init_variables(
                model, splits.train.input_shape, key=jax.random.key(config.seed)))
            variables = training.load_checkpoint(ckpt, template)
            _check_finite_weights(variables, ckpt)
            with open(run.file("train.json")) as f:
                return variables, json.load(f)
        run.checkpoint_digest = None
    start = time.perf_counter()
    # Saved after every epoch: a killed run resumes after its last finished epoch.
    state_path = run.file("train_state.msgpack")
    if os.path.exists(state_path):
        log(f"train: resuming from {state_path}")
    try:
        variables, history = training.train(model, splits.train, splits.validation,
                                            config.train, state_path=state_path)
    except training.TrainStateFileError as e:  # the runner's own file: start afresh
        log(f"train: {e}; training from epoch 1")
        os.remove(state_path)
        variables, history = training.train(model, splits.train, splits.validation,
                                            config.train, state_path=state_path)
    seconds = time.perf_counter() - start
    info = {"history": history.as_dict(), "seconds": seconds,
            "validation_accuracy": training.evaluate(model, variables, splits.validation,
                                                     batch_size=config.batch_size)}
    training.save_checkpoint(ckpt, variables)
    run.checkpoint_digest = run.record("checkpoint.msgpack")
    run.write_json("train.json", info)
    os.remove(state_path)
    _check_finite_weights(variables, ckpt)
    log(f"train: {seconds:.1f} s, validation accuracy "
        f"{info['validation_accuracy']['accuracy']:.4f}")
    return variables, info


def _summary_arrays(result: analysis.Analysis) -> dict[str, np.ndarray]:
    s = result.summary
    out = {f"summary_{k}": np.asarray(v) for k, v in s._asdict().items()}
    out.update({f"sample_{k}": np.asarray(v) for k, v in result.samples.items()})
    return out


def load_analysis(path: str) -> tuple[analysis.Summary, dict[str, np.ndarray]]:
    with np.load(path) as z:
        summary = analysis.Summary(**{k: z[f"summary_{k}"] for k in analysis.Summary._fields})
        samples = {k[len("sample_"):]: z[k] for k in z.files if k.startswith("sample_")}
    return summary._replace(seen=int(summary.seen)), samples


def stage_analyse(run, config, probe, variables, splits, log):
    """One streaming pass per split for all methods together (one probe call per batch).

    Returns {method: {split: (summary, samples)}}.
    """
    methods = config.methods
    out: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for split_name in ("train", "validation"):
        names = {m: os.path.join("analysis", f"{m}_{split_name}.npz") for m in methods}
        if not all(run.valid(n) for n in names.values()):
            ds = getattr(splits, split_name)
            start = time.perf_counter()
            results = analysis.analyze(probe, variables, _batches(ds, config.batch_size),
                                       num_classes=ds.num_classes, method=methods,
                                       progress=False, keep_importance=True)
            for m, result in results.items():
                arrays = _summary_arrays(result)
                if m != methods[0]:  # per-sample importances are kept for the first only
                    arrays.pop("sample_importance")
                run.save_npz(names[m], arrays)
            log(f"analyse: {', '.join(methods)} on {split_name} ({len(ds)} samples, one "
                f"pass) in {time.perf_counter() - start:.1f} s")
        for m in methods:
            out[m][split_name] = load_analysis(run.file(names[m]))
    return out


def make_scale(config: Config, samples: Mapping[str, np.ndarray]) -> scale.Scale:
    return scale.common_scale(samples["cam_max"], samples["cam_min"], mode=config.scale_mode,
                              hi_percentile=config.scale_hi_percentile,
                              lo_percentile=config.scale_lo_percentile,
                              ratio=config.scale_ratio,
                              remove_negative=config.remove_negative)


LEVELS = ("common", "common_clipped", "per_image", "subset")


@functools.partial(jax.jit, static_argnames=("probe", "methods"))
def class_levels(probe, variables, x, classes, masks, scales, *, methods: tuple[str, ...]):
    """CAM activation levels when explaining each of ``classes``, for every method and scaling.

    x: (B, *in, C); classes: (n,) int; masks: (C, K) per-class channel subsets; scales:
    one :class:`ifa_jax.scale.Scale` per method. Returns levels (n, methods, len(LEVELS),
    B) in the order of :data:`LEVELS`, and the logits (B, O). One forward pass and one
    batched vjp serve every class and method (:meth:`LayerProbe.per_class`).
    """
    logits, A, G_all = probe.per_class(variables, x, classes)

    def for_class(c, G):
        rows = []
        for m, sc in zip(methods, scales):
            M = cams.contributions(A, G, m)
            L = cams.reduce(M).cam
            rows.append(jnp.stack([
                metrics.activation_level(scale.apply_scale(L, sc)),
                metrics.activation_level(scale.apply_scale(L, sc, clip=True)),
                metrics.activation_level(scale.minmax_per_image(L)),
                metrics.activation_level(scale.apply_scale(cams.reduce(M, masks[c]).cam, sc)),
            ]))
        return jnp.stack(rows)

    return jax.vmap(for_class)(jnp.asarray(classes), G_all), logits


def evaluate_consistency(config, probe, variables, ds, scales, im_rows, log) -> dict:
    """Per class and method: r between CAM activation level and logit, AUROC.

    Returns the numbers (JSON) and, for the first evaluated class, the arrays behind its
    scatter plot: ``{"<method> <level>": (N,) levels, "logit": (N,)}``.
    """
    C = ds.num_classes
    classes = list(range(C if config.max_classes is None else min(C, config.max_classes)))
    methods = config.methods
    masks = np.asarray(decompose.select(np.nan_to_num(im_rows), "top",
                                        ratio=config.consistency_ratio))
    method_scales = tuple(scales[m] for m in methods)
    results: dict[str, Any] = {m: {} for m in methods}
    scatter: dict[str, np.ndarray] = {}
    group = 16  # classes per forward pass: memory grows with group * batch * |A|
    per_class_levels: dict[int, list] = {c: [] for c in classes}
    logits_all, valid_all = [], []
    for x, _, valid in _batches(ds, config.batch_size):
        for start in range(0, len(classes), group):
            chunk = classes[start:start + group]
            lv, logits = jax.device_get(class_levels(
                probe, variables, jnp.asarray(x), jnp.asarray(chunk, jnp.int32), masks,
                method_scales, methods=methods))
            for i, c in enumerate(chunk):
                per_class_levels[c].append(lv[i])
        logits_all.append(logits)
        valid_all.append(valid)
    valid = np.concatenate(valid_all)
    logits = np.concatenate(logits_all)[valid]
    for c in classes:
        all_levels = np.concatenate(per_class_levels[c], axis=-1)  # (methods, LEVELS, N)
        levels = {m: {k: all_levels[i, j] for j, k in enumerate(LEVELS)}
                  for i, m in enumerate(methods)}
        y_c = logits[:, c]
        predicted = logits.argmax(-1) == c
        for m in methods:
            row = {}
            for k, values in levels[m].items():
                a = values[valid]
                row[k] = metrics.consistency(a, y_c)
                if k == "common":
                    row["auroc"] = metrics.auroc(a, predicted)
                if c == classes[0]:
                    scatter[f"{m} {k}"] = a
            results[m][str(c)] = row
    summary = {}
    for m in methods:
        summary[m] = {}
        for k in LEVELS:
            rs = [results[m][c][k].get("pearson") for c in results[m]]
            rs = [r for r in rs if r is not None]
            summary[m][k] = {"mean_pearson": float(np.mean(rs)) if rs else None,
                             "min_pearson": float(np.min(rs)) if rs else None,
                             "classes_defined": len(rs)}
        aucs = [results[m][c]["auroc"].get("auroc") for c in results[m]]
        aucs = [a for a in aucs if a is not None]
        summary[m]["auroc"] = {"mean": float(np.mean(aucs)) if aucs else None,
                               "classes_defined": len(aucs)}
    log_consistency(summary, config.consistency_ratio, log)
    scatter["logit"] = logits[:, classes[0]]
    return {"per_class": results, "summary": summary, "scatter_class": classes[0]}, scatter


def log_consistency(summary: Mapping, ratio: float, log) -> None:
    """Print the per-method mean Pearson r for each way of scaling."""
    log("consistency: mean Pearson r over classes (common | clipped | per-image | "
        f"top {ratio:.0%} subset)")
    for m, row in summary.items():
        values = " | ".join(_fmt(row[k]["mean_pearson"]) for k in
                            LEVELS)
        log(f"  {m:>10}: {values}")


def log_subsets(curves: Mapping, ratios: Sequence[float], log) -> None:
    """Print the accuracy per share of channels kept, one row per selection mode."""
    full = next(iter(curves.values()))["full_accuracy"]
    log(f"feature subsets: accuracy by share of channels kept (all channels: {full:.4f})")
    log("  " + " ".join(f"{r:>6.0%}" for r in ratios))
    for mode, c in curves.items():
        log("  " + " ".join(f"{a:>6.3f}" for a in c["accuracy"]) + f"  {mode}")


def _fmt(v) -> str:
    return "undefined" if v is None else f"{v:.3f}"


def evaluate_subsets(config, probe, variables, ds, summary: analysis.Summary, log) -> dict:
    curves = {}
    rows = np.nan_to_num(summary.im_class)
    diff = np.nan_to_num(summary.im_diff)
    key = jax.random.key(config.seed)
    for mode in config.subset_modes:
        def select_fn(r_, ratio, mode=mode):
            return decompose.select(r_, mode, ratio=ratio, im_diff=diff, key=key)
        curves[mode] = metrics.subset_accuracy_curve(
            probe, variables, _batches(ds, config.batch_size), rows, config.subset_ratios,
            select_fn=select_fn, row="predicted")
    log_subsets(curves, config.subset_ratios, log)
    return curves


def evaluate_faithfulness(config, probe, variables, ds, sc: scale.Scale, method: str,
                          indices: np.ndarray) -> dict:
    """Confidence drop/increase and insertion/deletion on the images at ``indices``."""
    n = len(indices)
    if n == 0:
        return {}
    x, y = ds.gather(indices)
    res, out = explain(probe, variables, x, y, method)
    spatial = x.shape[1:-1]
    common = np.clip(np.asarray(cams.upsample(scale.apply_scale(out.cam, sc), spatial)), 0, 1)
    per_image = np.asarray(cams.upsample(scale.minmax_per_image(out.cam), spatial))
    scorer = metrics.model_scorer(probe, variables)
    target = np.asarray(res.target)
    window = max(1, min(spatial) // 7)
    return {
        "samples": n,
        "confidence_common": metrics.confidence_change(scorer, x, common, target),
        "confidence_per_image": metrics.confidence_change(scorer, x, per_image, target),
        "insertion_deletion": {
            k: float(np.mean(np.asarray(v))) for k, v in metrics.insertion_deletion(
                scorer, x, common, target, window=window)._asdict().items()
            if k.endswith("auc")},
    }


def evaluate_sanity(config, probe, variables, ds, method: str,
                    indices: np.ndarray) -> list[dict]:
    """Rank correlation (and SSIM) with the trained CAMs under cascading randomisation."""
    if len(indices) == 0:
        return []
    x, y = ds.gather(indices)
    _, ref = explain(probe, variables, x, y, method)
    ref_maps = np.asarray(scale.minmax_per_image(ref.cam))
    order = [k for k in reversed(list(variables["params"]))]
    rows = []
    for name, randomised in metrics.cascading_randomization(variables, jax.random.key(
            config.seed + 1), order):
        _, out = explain(probe, randomised, x, y, method)
        maps = np.asarray(scale.minmax_per_image(out.cam))
        rc = [r for r in metrics.rank_correlation(ref_maps, maps) if r is not None]
        row = {"randomised_down_to": name,
               "rank_correlation": float(np.mean(rc)) if rc else None}
        if ref_maps.ndim == 3:
            side = min(7, min(ref_maps.shape[1:]))
            row["ssim"] = float(np.mean(metrics.ssim(ref_maps, maps,
                                                     win_size=side - (1 - side % 2))))
        rows.append(row)
    return rows


def evaluate_decomposition(summary: analysis.Summary) -> dict:
    spectrum = decompose.explained_variance(summary.covariance)
    redundancy = diagnostics.redundancy(summary.im_all, summary.covariance)
    present = summary.present
    class_svd = decompose.class_svd(summary.im_class[present]) if present.sum() > 1 else None
    return {
        "explained_ratio": np.asarray(spectrum.ratio),
        "components_for": spectrum.n_components,
        "redundancy": redundancy,
        "class_svd_components_for": class_svd.n_components if class_svd else None,
    }


def evaluate_diagnostics(config, analyses, summary, val_samples) -> dict:
    tr = analyses["train"][1]
    va = analyses["validation"][1]
    out = {"overfitting": diagnostics.overfitting(tr["cam_max"], tr["cam_min"], va["cam_max"],
                                                  va["cam_min"])}
    if summary.present.sum() >= 2:
        out["confounders"] = diagnostics.confounders(summary.im_class, summary.cam_mean,
                                                     present=summary.present)
    else:
        out["confounders"] = {"undefined": "confounders compare classes, and fewer than 2 "
                                           "classes have counted samples"}
    if "importance" in val_samples:
        present_labels = summary.present[val_samples["label"]]
        imp = val_samples["importance"][present_labels]
        labels = val_samples["label"][present_labels]
        idx = np.flatnonzero(present_labels)
        k = max(1, min(10, imp.shape[1] // 4))
        means = np.nan_to_num(summary.im_class)
        within = diagnostics.within_class_covariance(summary.covariance, means,
                                                     summary.class_counts)
        worst = diagnostics.outliers(imp, labels, means, within, n_components=k, worst=8)
        out["outliers"] = worst._replace(indices=tuple(int(idx[i]) for i in worst.indices))
    return out


# --------------------------------------------------------------------------- figures, report


def evaluation_samples(config: Config, analyses, n: int) -> np.ndarray:
    """``n`` validation indices stratified by class with the config's seed. The labels
    come from the analysis of the validation split, so lazy sources are not re-read."""
    labels = analyses[config.methods[0]]["validation"][1]["label"]
    return data.stratified_indices(labels, n, seed=config.seed)


def make_figures(run, config, splits, probe, variables, analyses, scales, evaluation,
                 scatter, decomposition, diag) -> dict[str, str]:
    """Every figure of the report, drawn only from what is on disk (or recomputable)."""
    figs = {}
    method = config.methods[0]
    ds = splits.validation
    x, y = ds.gather(evaluation_samples(config, analyses, config.figure_samples))
    res, out = explain(probe, variables, x, "predicted", method)
    spatial = x.shape[1:-1]
    if len(spatial) == 2:
        common = np.clip(np.asarray(cams.upsample(scale.apply_scale(out.cam, scales[method]),
                                                  spatial)), 0, 1)
        per_image = np.asarray(cams.upsample(scale.minmax_per_image(out.cam), spatial))
        titles = [f"y={int(a)} p={int(b)}\nlogit {float(s_):.1f}"
                  for a, b, s_ in zip(y, np.asarray(res.target), np.asarray(res.score))]
        figs["cams"] = plots.save(plots.cam_grid(x, common, per_image, titles),
                                  run.file("figures", "cams.png"))
    summary = analyses[method]["train"][0]
    figs["importance"] = plots.save(plots.importance_heatmaps(
        {"IM_c (train)": summary.im_class, "IM_diff (train)": summary.im_diff}),
        run.file("figures", "importance.png"))
    figs["distributions"] = plots.save(plots.distributions(
        {k: analyses[method][k][1] for k in ("train", "validation")}),
        run.file("figures", "distributions.png"))
    if scatter:
        c = evaluation["consistency"]["scatter_class"]
        per_class = evaluation["consistency"]["per_class"]
        panels = {}
        for panel, levels in scatter.items():
            if panel != "logit":
                m, level = panel.split(" ")
                panels[panel] = (levels, scatter["logit"], per_class[m][str(c)][level]["pearson"])
        figs["consistency"] = plots.save(plots.consistency_scatter(panels),
                                         run.file("figures", "consistency.png"))
    figs["spectrum"] = plots.save(plots.spectrum(decomposition["explained_ratio"],
                                                 decomposition["components_for"]),
                                  run.file("figures", "spectrum.png"))
    subsets = evaluation["subsets"]
    figs["subsets"] = plots.save(plots.accuracy_curve(
        {m: (c["ratios"], c["accuracy"]) for m, c in subsets.items()},
        next(iter(subsets.values()))["full_accuracy"]), run.file("figures", "subsets.png"))
    if "outliers" in diag and len(spatial) == 2:
        idx = np.asarray(diag["outliers"].indices)
        ox, oy = ds.gather(idx)
        _, o = explain(probe, variables, ox, oy, method)
        maps = np.clip(np.asarray(cams.upsample(scale.apply_scale(o.cam, scales[method]),
                                                spatial)), 0, 1)
        titles = [f"#{int(i)} y={int(label)}\nd={d:.1f}" for i, label, d in
                  zip(idx, oy, diag["outliers"].distances)]
        figs["outliers"] = plots.save(plots.outliers(ox, maps, titles),
                                      run.file("figures", "outliers.png"))
    return {k: os.path.relpath(v, run.path) for k, v in figs.items()}


def write_report(run, config, results, figures) -> str:
    lines = [f"# Integrated feature analysis: {config.name}", "",
             f"Dataset `{config.dataset}`, model `{config.model}`, layer `{config.layer}`, "
             f"methods {', '.join(config.methods)}. Validation accuracy "
             f"{results['train']['validation_accuracy']['accuracy']:.4f}. "
             f"{results['samples'].capitalize()}.", ""]
    lines += ["## Consistency: CAM activation level vs logit", "",
              "Pearson r per class between the mean of the rescaled CAM and the logit of the "
              "explained class, averaged over classes. *common*: the dataset-wide scale "
              "(unclipped); *clipped*: the same clipped to [0, 1] as displayed; *per-image*: "
              "min-max per image (the usual CAM); *subset*: the top "
              f"{config.consistency_ratio:.0%} channels per class on the common scale.", "",
              "| method | common | clipped | per-image | subset | min r (common) | AUROC |",
              "|---|---|---|---|---|---|---|"]
    for m, row in results["consistency"]["summary"].items():
        lines.append(f"| {m} | " + " | ".join(_fmt(row[k]["mean_pearson"]) for k in
                                               ("common", "common_clipped", "per_image",
                                                "subset"))
                     + f" | {_fmt(row['common']['min_pearson'])} | "
                     f"{_fmt(row['auroc']['mean'])} |")
    per_class = results["consistency"]["per_class"]
    for m, per in per_class.items():
        for what, get in (("Consistency", lambda r: r["common"]),
                          ("AUROC", lambda r: r["auroc"])):
            undefined = [c for c, r in per.items()
                         if get(r).get("pearson", get(r).get("auroc")) is None]
            if undefined:
                reasons = sorted({str(get(per[c]).get("reason")) for c in undefined})
                lines.append(f"\n{what} is undefined for {m} on class(es) "
                             f"{', '.join(undefined)}: {'; '.join(reasons)}.")
    scatter_class = results["consistency"]["scatter_class"]
    for key, title, text in [
        ("cams", "CAMs on the common scale vs per image",
         "One validation image per class (drawn with the run's seed), explaining the "
         "predicted class. Top: one shared colour scale for the whole dataset, so brightness "
         "compares across images. Bottom: each map stretched to its own min and max."),
        ("consistency", f"Activation level vs logit (class {scatter_class})",
         f"Each point is a validation image explained as class {scatter_class}: its mean "
         "rescaled CAM (x) against the logit of that class (y). On a faithful scale the "
         "points lie on a rising line (r near 1); per-image min-max scatters them."),
        ("importance", "Importance matrices",
         "Rows: classes; columns: channels (the 64 with the largest mean importance). IM_c "
         "is a class's mean channel importance; IM_diff = IM_c - IM_all shows the channels "
         "that single out a class (red above, blue below the average)."),
        ("distributions", "CAM max/min, train vs validation",
         "Histograms of each image's raw CAM maximum and minimum. A shift between splits is "
         "a sign of overfitting."),
        ("spectrum", "Explained variance of channel importances",
         "Bars: the share of the variance of per-image channel importances along each "
         "principal direction; line: the cumulative share. Few components to 90-99% mean "
         "the decision rests on few directions (redundant channels)."),
        ("subsets", "Accuracy with a subset of channels",
         "Validation accuracy when only a share of the layer's channels is kept (the rest "
         "zeroed), per selection mode; the dashed line is the accuracy with all channels."),
        ("outliers", "Outliers: samples farthest from their class in importance space",
         "Validation images whose channel importances lie farthest (Mahalanobis distance d) "
         "from their class mean, with their CAMs on the common scale."),
    ]:
        if key in figures:
            lines += ["", f"## {title}", "", text, "", f"![{title}]({figures[key]})"]
    subsets = results["subsets"]
    lines += ["", "## Feature subsets", "", "| mode | " + " | ".join(
        f"{r:.0%}" for r in config.subset_ratios) + " |",
        "|---|" + "---|" * len(config.subset_ratios)]
    for mode, c in subsets.items():
        lines.append(f"| {mode} | " + " | ".join(f"{a:.3f}" for a in c["accuracy"]) + " |")
    dec = results["decomposition"]
    red = dec["redundancy"]
    lines += ["", "## Decomposition and redundancy", "",
              f"Components for 90/95/99% of the importance variance: "
              f"{dec['components_for']}; effective rank {red['effective_rank']:.1f} of "
              f"{red['n_channels']} channels; near-zero channels "
              f"{red['near_zero_share']:.1%}."]
    diag = results["diagnostics"]
    of = diag["overfitting"]
    lines += ["", "## Diagnostics", "",
              f"- Overfitting (train vs validation CAM max): KS {of['cam_max']['ks']:.3f} "
              f"(critical {of['cam_max']['ks_critical']:.3f}), median shift "
              f"{of['cam_max']['median_shift_iqr']:.3f} IQR."]
    conf = diag["confounders"]
    if "undefined" in conf:
        lines.append(f"- Confounders: undefined ({conf['undefined']}).")
    else:
        lines.append(f"- Confounders: {conf['shared']['n_shared']} channel(s) shared by all "
                     f"classes; worst border mass {conf['border']['worst']:.1%} (class "
                     f"{conf['border']['worst_class']}, uniform would be "
                     f"{conf['border']['uniform']:.1%}).")
    if "outliers" in diag:
        lines.append(f"- Outliers (validation indices, worst first): "
                     f"{list(diag['outliers']['indices'])}.")
    if results.get("faithfulness"):
        f = results["faithfulness"]
        lines.append(f"- Faithfulness on {f['samples']} images: average drop "
                     f"{f['confidence_common']['average_drop']:.1f}% (common) vs "
                     f"{f['confidence_per_image']['average_drop']:.1f}% (per image); "
                     f"insertion AUC {f['insertion_deletion']['insertion_auc']:.3f}, deletion "
                     f"AUC {f['insertion_deletion']['deletion_auc']:.3f}.")
    if results.get("sanity"):
        steps = ", ".join(f"{r['randomised_down_to']}: {_fmt(r['rank_correlation'])}"
                          for r in results["sanity"])
        lines.append(f"- Sanity (rank correlation with the trained CAMs as layers are "
                     f"randomised from the top): {steps}.")
    text = "\n".join(lines) + "\n"
    io.atomic_write_bytes(run.file("report.md"), text.encode())
    return run.file("report.md")


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("jax", "jaxlib", "flax", "optax", "numpy"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    out["backend"] = jax.default_backend()
    return out


def check_model(config: Config, model, splits) -> None:
    """Resolve the layer and check the model's outputs abstractly (nothing is computed),
    so a wrong name fails before any file is written or any training is done."""
    input_shape = splits.train.input_shape
    kwargs = training.inference_kwargs(model)
    template = jax.eval_shape(lambda: training.init_variables(
        model, input_shape, key=jax.random.key(config.seed)))
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    available = linen_layers(model, template, x, **kwargs)
    try:
        resolve_layer(config.layer, list(available))
    except ValueError as e:
        raise ValueError(f"config field 'layer': {e}") from None
    out = jax.eval_shape(lambda v, x: model.apply(v, x, **kwargs), template, x)
    num_classes = splits.train.num_classes
    if getattr(out, "ndim", 0) != 2 or out.shape[-1] < num_classes:
        raise ValueError(
            f"model {config.model!r} outputs {getattr(out, 'shape', type(out).__name__)} but "
            f"the dataset {config.dataset!r} has {num_classes} classes; the model must "
            f"return logits (B, >= {num_classes})")


def stage_evaluate(run, config, probe, variables, splits, analyses, scales, log):
    """Consistency, feature subsets, faithfulness and the sanity check, or their verified
    files. Returns (evaluation as JSON, the consistency scatter arrays)."""
    first = config.methods[0]
    if run.valid("evaluation.json") and run.valid("evaluation_scatter.npz"):
        with open(run.file("evaluation.json")) as f:
            evaluation = json.load(f)
        if evaluation.get("format") == EVALUATION_FORMAT:
            log("evaluate: loaded evaluation.json")
            log_consistency(evaluation["consistency"]["summary"], config.consistency_ratio,
                            log)
            log_subsets(evaluation["subsets"], config.subset_ratios, log)
            with np.load(run.file("evaluation_scatter.npz")) as z:
                return evaluation, {k: z[k] for k in z.files}
        log("evaluate: evaluation.json has an older format; recomputing")
    summary = analyses[first]["train"][0]
    ds = splits.validation
    consistency, scatter = evaluate_consistency(config, probe, variables, ds, scales,
                                                summary.im_class, log)
    evaluation = {
        "format": EVALUATION_FORMAT,
        "samples": "faithfulness, sanity and the CAM figure use validation samples drawn "
                   f"stratified by class with seed {config.seed}",
        "consistency": consistency,
        "subsets": evaluate_subsets(config, probe, variables, ds, summary, log),
        "faithfulness": evaluate_faithfulness(
            config, probe, variables, ds, scales[first], first,
            evaluation_samples(config, analyses, config.faithfulness_samples)),
        "sanity": evaluate_sanity(config, probe, variables, ds, first,
                                  evaluation_samples(config, analyses, config.sanity_samples)),
    }
    run.save_npz("evaluation_scatter.npz", scatter)
    run.write_json("evaluation.json", evaluation)
    return json.loads(json.dumps(_to_jsonable(evaluation))), scatter


def run_experiment(config: Config, out: str | os.PathLike, *, overwrite: bool = False,
                   log: Callable[[str], None] = print) -> dict:
    """Run (or resume) every stage of ``config`` in the run folder ``out``.

    The config, the layer and the model's outputs are checked before anything is written.
    """
    start = time.perf_counter()
    splits = load_data(config)
    model = build_model(config, splits)
    check_model(config, model, splits)
    with RunFolder(out, config, overwrite=overwrite, log=log) as run:
        variables, train_info = stage_train(run, config, model, splits, log)
        probe = linen_probe(model, config.layer, **training.inference_kwargs(model))
        analyses = stage_analyse(run, config, probe, variables, splits, log)
        scales = {m: make_scale(config, analyses[m]["train"][1]) for m in config.methods}
        evaluation, scatter = stage_evaluate(run, config, probe, variables, splits, analyses,
                                             scales, log)
        first = config.methods[0]
        summary = analyses[first]["train"][0]
        decomposition = evaluate_decomposition(summary)
        diag = evaluate_diagnostics(config, analyses[first], summary,
                                    analyses[first]["validation"][1])
        figures = make_figures(run, config, splits, probe, variables, analyses, scales,
                               evaluation, scatter, decomposition, diag)
        results = {
            "config": config.to_dict(), "versions": _versions(), "train": train_info,
            "analysis": {m: {split: {"percentiles_cam_max": scale.percentiles(s[1]["cam_max"]),
                                     "percentiles_cam_min": scale.percentiles(s[1]["cam_min"]),
                                     "class_counts": s[0].class_counts,
                                     "missing_classes": s[0].missing_classes}
                             for split, s in per.items()} for m, per in analyses.items()},
            "scales": {m: s._asdict() for m, s in scales.items()},
            **{k: evaluation[k] for k in ("samples", "consistency", "subsets", "faithfulness",
                                          "sanity")},
            "decomposition": decomposition, "diagnostics": diag, "figures": figures,
        }
        results = json.loads(json.dumps(_to_jsonable(results)))
        write_json(run.file("results.json"), results)
        report = write_report(run, config, results, figures)
    log(f"report: {report} ({time.perf_counter() - start:.1f} s)")
    return results


__all__ = ["Config", "RunFolder", "config_from_dict", "load_config", "override",
           "run_experiment"]


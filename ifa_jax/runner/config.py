"""The runner's config: one frozen dataclass, read from ``.py`` / ``.json`` files and
``key=value`` overrides, every field checked against its type and range on creation.

Examples:
    A config from JSON values, ``--set``-style overrides, and a value out of range:

    >>> from ifa_jax.runner.config import Config, config_from_dict, override
    >>> config = config_from_dict({"name": "small", "batch_size": 64})
    >>> config.batch_size, config.model, config.train.epochs
    (64, 'mnist_cnn', 4)
    >>> config = override(config, "train.epochs=2", "methods=gradcam++,hirescam",
    ...                   "method_options.gradcam++.eps=1e-7")
    >>> config.train.epochs, config.methods, config.options_of("gradcam++")
    (2, ('gradcam++', 'hirescam'), {'eps': 1e-07})
    >>> Config(scale_mode="log")
    Traceback (most recent call last):
        ...
    ValueError: invalid config 'mnist': scale_mode must be one of ('norm', 'tanh')
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import os
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from ifa_jax import analysis, cams, metrics, scale
from ifa_jax.runner import registry
from ifa_jax.runner import train as training

# The selection modes a subset-accuracy curve can sweep: those driven by a ratio alone.
SUBSET_MODES = ("top", "diff_top", "reverse_diff_top", "random")


@dataclasses.dataclass(frozen=True)
class Config:
    """One experiment. See experiments/configs/ for complete examples.

    dataset: one of ``mnist_embedded``, ``mnist_placed`` (the embedded digits on a 56 x 56
    canvas, with ground-truth masks), ``sklearn_digits``, ``tfds:<name>``,
    ``medmnist:<path.npz>``, ``signals:<path>``, or a plug-in ``package.module:factory``
    / ``path/to/file.py:factory`` called with ``dataset_kwargs`` (pairs); see
    :mod:`ifa_jax.runner.registry`. image_size: resize tfds images to it.
    validation_size: validation examples for datasets that are split here (a count, or a
    share when below 1).
    model: ``mnist_cnn``, ``convnet``, ``resnet18``, ``vit`` or a plug-in factory, with
    ``model_kwargs`` (pairs).
    variables: a trained model's variables (a ``.msgpack`` file of
    ``flax.serialization``, or an orbax checkpoint folder): analysed as they are, with no
    training. layer: the layer to analyse (None: the model's natural target layer, see
    :func:`ifa_jax.probes.natural_layer`; the run logs and records which). tokens_prefix:
    for a layer that outputs transformer tokens (B, N, D), the number of class/register
    tokens before the patch tokens, which are read as a square grid
    (:func:`ifa_jax.tokens_to_grid`); None for a layer that outputs a grid.
    train: a :class:`ifa_jax.runner.train.TrainConfig`.
    methods: CAM methods analysed and evaluated (the first one drives the figures), of kind
    ``"layer"`` (:data:`ifa_jax.cams.LAYER_METHODS`).
    method_options: options of the methods over their defaults, ``{method: {option:
    value}}`` (JSON values; ``--set method_options.gradcam++.eps=1e-7``); stored as
    sorted pairs. Keyed methods (randomcam, sscam, smoothgradcam++) draw from keys
    derived from ``seed`` (:func:`ifa_jax.runner.stages.method_key`).
    scale_*: the common intensity scale (docs/method.md).
    subset_ratios / subset_modes: feature-subset accuracy.
    consistency_ratio: the 'top' subset whose CAMs are evaluated beside all features.
    max_classes: classes of the four-level consistency evaluation (None: up to 64);
    consistency_group: classes sharing one forward pass there (memory grows with it).
    outliers_shown: the worst outliers listed and drawn.
    faithfulness_samples / sanity_samples: images for drop/increase, insertion/deletion
    and the randomisation check (0 skips them); figure_samples: images in the CAM figure.
    comparison_samples: images on which every method is scored by every metric of the
    method comparison (:mod:`ifa_jax.runner.comparison`; None: as many as
    faithfulness_samples; 0 skips it). All four are drawn
    stratified by class with ``seed`` (one per class first).
    comparison_metrics: the metrics of the method comparison, by name (None: every one
    of :data:`ifa_jax.runner.comparison.METRICS`).
    count: which samples the importance statistics count: ``"correct"`` (correctly
    classified ones, the method's default) or ``"all"``.
    devices: devices the analysis pass splits each batch over (the first n of
    ``jax.devices()``; batches are padded to a multiple of n); the results equal one
    device's.
    """

    name: str = "mnist"
    dataset: str = "mnist_embedded"
    image_size: tuple[int, ...] | None = None
    validation_size: int | float = 1000
    model: str = "mnist_cnn"
    model_kwargs: tuple[tuple[str, Any], ...] = ()
    dataset_kwargs: tuple[tuple[str, Any], ...] = ()
    variables: str | None = None
    layer: str | None = None
    tokens_prefix: int | None = None
    train: training.TrainConfig = training.TrainConfig(epochs=4, batch_size=128, lr=2e-3)
    batch_size: int = 250
    methods: tuple[str, ...] = ("gradcam", "gradcam++", "xgradcam", "hirescam")
    method_options: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    scale_mode: str = "norm"
    scale_ratio: float = 1.0
    scale_hi_percentile: float = 90
    scale_lo_percentile: float = 50
    remove_negative: bool = False
    subset_ratios: tuple[float, ...] = metrics.DEFAULT_RATIOS
    subset_modes: tuple[str, ...] = ("top", "diff_top", "random")
    consistency_ratio: float = 0.1
    max_classes: int | None = None
    consistency_group: int = 16
    outliers_shown: int = 8
    faithfulness_samples: int = 64
    comparison_samples: int | None = None
    comparison_metrics: tuple[str, ...] | None = None
    sanity_samples: int = 16
    figure_samples: int = 10
    seed: int = 0
    devices: int = 1
    count: str = "correct"

    def __post_init__(self):
        for name, value in _typed_fields(
            Config, dataclasses.asdict(self) | {"train": self.train}, "config"
        ).items():
            object.__setattr__(self, name, value)
        # Canonical names once, here: every stage and file keys on them.
        object.__setattr__(self, "methods", tuple(cams.canonical_method(m) for m in self.methods))
        try:
            analysis.check_layer_methods(self.methods)
            options = _canonical_options(self.method_options, self.methods)
        except ValueError as e:
            raise ValueError(f"invalid config {self.name!r}: {e}") from None
        object.__setattr__(self, "method_options", options)
        checks = [
            (False, p) for p in registry.check_names(self.model, self.dataset, self.dataset_kwargs)
        ] + [
            (
                _is_folder_name(self.name),
                f"name {self.name!r} must be one folder name (printable, at most 255 bytes, no "
                "'/', '\\', '..' or surrounding spaces): it names the run folder runs/<name>",
            ),
            (self.scale_mode in scale.MODES, f"scale_mode must be one of {scale.MODES}"),
            (bool(self.methods), "methods is empty; name at least one CAM method"),
            (self.validation_size > 0, "validation_size must be > 0 (a count, or a share < 1)"),
            (
                not isinstance(self.validation_size, float) or self.validation_size < 1,
                f"validation_size {self.validation_size!r} as a share must be < 1 (the "
                "training split would be empty); give a share such as 0.2 or a count such "
                "as 1000",
            ),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (
                self.tokens_prefix is None or self.tokens_prefix >= 0,
                "tokens_prefix must be >= 0 (the class/register tokens) or None",
            ),
            (self.devices >= 1, "devices must be >= 1 (the devices the analysis runs on)"),
            (
                self.count in analysis.COUNT_MODES,
                f"count must be one of {', '.join(analysis.COUNT_MODES)}; got {self.count!r}",
            ),
            (self.scale_ratio > 0, "scale_ratio must be > 0"),
            (
                0 <= self.scale_lo_percentile < self.scale_hi_percentile <= 100,
                "percentiles must satisfy 0 <= scale_lo_percentile < scale_hi_percentile <= 100",
            ),
            (
                bool(self.subset_ratios) and all(0 < r <= 1 for r in self.subset_ratios),
                "subset_ratios must be shares in (0, 1]",
            ),
            (
                all(m in SUBSET_MODES for m in self.subset_modes),
                f"subset_modes must be among {', '.join(SUBSET_MODES)}",
            ),
            (0 < self.consistency_ratio <= 1, "consistency_ratio must lie in (0, 1]"),
            (self.max_classes is None or self.max_classes >= 1, "max_classes must be >= 1"),
            (self.faithfulness_samples >= 0, "faithfulness_samples must be >= 0"),
            (
                self.comparison_samples is None or self.comparison_samples >= 0,
                "comparison_samples must be >= 0 or None",
            ),
            _known_metrics(self.comparison_metrics),
            (self.sanity_samples >= 0, "sanity_samples must be >= 0"),
            (self.figure_samples >= 1, "figure_samples must be >= 1"),
            (self.consistency_group >= 1, "consistency_group must be >= 1"),
            (self.outliers_shown >= 0, "outliers_shown must be >= 0"),
        ]
        bad = [msg for ok, msg in checks if not ok]
        if bad:
            raise ValueError(f"invalid config {self.name!r}: {'; '.join(bad)}")

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON values (what config.json holds); ``method_options`` as
        ``{method: {option: value}}``."""
        values = dataclasses.asdict(self)
        values["method_options"] = self.options_of()
        return json.loads(json.dumps(values))

    def options_of(self, method: str | None = None) -> dict[str, Any]:
        """``method``'s options given by ``method_options`` (``{}`` when none), or with no
        ``method``, all of them: ``{method: {option: value}}``."""
        given = {m: dict(pairs) for m, pairs in self.method_options}
        return given if method is None else given.get(cams.canonical_method(method), {})


def _known_metrics(names: tuple[str, ...] | None) -> tuple[bool, str]:
    """Whether every name of ``comparison_metrics`` is a metric of the comparison, and the
    message that lists them otherwise."""
    if names is None:
        return True, ""
    from ifa_jax.runner.comparison import METRICS  # it imports this module's users

    known = [m.name for m in METRICS]
    unknown = [n for n in names if n not in known]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        return False, f"comparison_metrics names {', '.join(map(repr, twice))} more than once"
    if not names or unknown:
        return False, (
            f"comparison_metrics has unknown or no metric(s) {', '.join(map(repr, unknown))}; "
            f"choose from {', '.join(known)} (or None for all, comparison_samples=0 for none)"
        )
    return True, ""


def _is_folder_name(name: str) -> bool:
    """Whether ``name`` is one path component that stays where it is put."""
    return (
        bool(name)
        and name not in (".", "..")
        and not any(c in name for c in "/\\")
        and name == name.strip()
        and name.isprintable()
        and len(name.encode()) <= 255
    )


def _json_value(value, where: str, fix: str):
    """A JSON literal (None, bool, int, finite float, str, or a list of them) with lists
    as tuples (hashable); anything else raises naming ``where`` and ``fix``."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{where}={value!r} is not finite, which JSON cannot hold")
        return value
    if isinstance(value, (list, tuple)):
        return tuple(_json_value(v, where, fix) for v in value)
    what = "a function" if callable(value) else f"a {type(value).__name__}"
    raise ValueError(
        f"{where} is {what}, not a JSON value (a number, string, bool, None or a list of "
        f"them), so config.json cannot record it; {fix}"
    )


def _canonical_options(given, methods: tuple[str, ...]) -> tuple:
    """``method_options`` (a mapping or pairs) as sorted ``((method, ((option, value), ...)),
    ...)``: canonical method names among ``methods``, options the method has, JSON values."""
    pairs = tuple(given.items()) if isinstance(given, Mapping) else tuple(given)
    for entry in pairs:
        if not (isinstance(entry, (tuple, list)) and len(entry) == 2):
            raise ValueError(
                "method_options must map each method to its options, e.g. "
                f'{{"gradcam++": {{"eps": 1e-7}}}}; got the entry {entry!r}'
            )
    # stored as pairs: a method's options may come back as ((option, value), ...)
    pairs = tuple((n, dict(o) if isinstance(o, (tuple, list)) else o) for n, o in pairs)
    out: dict[str, tuple] = {}
    for m, options in cams.options_per_method(
        pairs, methods, among="methods", add_to="methods"
    ).items():
        fixed = []
        defaults = cams.method_options(m)
        for option, value in sorted(options.items()):
            fix = (
                "leave head out (the head's weights are then read off the gradients, exact "
                "for global average pooling + a dense head) or give the kernel as a nested "
                "list (K rows of O numbers)"
                if (m, option) == ("cam", "head")
                else "give a JSON value, or run ifa_jax.analyze(..., method_options=...) "
                "from Python"
            )
            value = _json_value(value, f"method_options[{m!r}][{option!r}]", fix)
            default = defaults.get(option)
            if type(value) is not type(default) or value != default:  # a default is no option
                fixed.append((option, value))
        out[m] = tuple(fixed)
    return tuple(sorted((m, fixed) for m, fixed in out.items() if fixed))


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
    """``value`` checked against the annotation ``hint``; lists become tuples, a bare
    string (``methods=gradcam,hirescam``) a tuple of strings and a mapping its (key,
    value) pairs where pairs are expected. Raises naming the field."""
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
        pairs = len(args) == 2 and args[1] is Ellipsis and typing.get_origin(args[0]) is tuple
        if isinstance(value, Mapping) and pairs and len(typing.get_args(args[0])) == 2:
            value = tuple(value.items())
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
    raise ValueError(f"{name} must be {_describe(hint)}; got {value!r} ({type(value).__name__})")


def _typed_fields(cls, values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Every field of ``values`` checked against ``cls``'s annotations."""
    hints = typing.get_type_hints(cls)
    return {k: _typed(v, hints[k], f"{where}: field {k!r}") for k, v in values.items()}


def _coerce(cls, values: Mapping[str, Any], where: str):
    """Build a dataclass from a mapping, naming unknown fields and listing the valid ones."""
    valid = _field_names(cls)
    unknown = [k for k in values if k not in valid]
    if unknown:
        raise ValueError(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; valid "
            f"fields: {', '.join(valid)}"
        )
    kwargs = dict(values)
    if cls is Config and isinstance(kwargs.get("train"), Mapping):
        kwargs["train"] = _coerce(training.TrainConfig, kwargs["train"], f"{where} train")
    return cls(**_typed_fields(cls, kwargs, where))


def config_from_dict(values: Mapping[str, Any], where: str = "config") -> Config:
    """A :class:`Config` from a mapping (JSON), every field checked.

    Args:
        values: ``{field: value}``; ``train`` as a mapping of
            :class:`~ifa_jax.runner.train.TrainConfig` fields, ``method_options`` as
            ``{method: {option: value}}``.
        where: where the values come from, for messages.

    Returns:
        The :class:`Config`.

    Raises:
        ValueError: an unknown field, a value of the wrong type, or a check of
            :class:`Config` that fails.
    """
    return _coerce(Config, values, where)


def load_config(path: str | os.PathLike, *, plugins: Sequence[str] = ()) -> Config:
    """A config from a ``.py`` file with ``get_config()`` or a ``.json`` file. A relative
    plug-in path (``"my_models.py:CNN"``) is resolved against the config file's folder
    (:func:`ifa_jax.runner.registry.resolve_plugin_paths`). A JSON file is data: the
    plug-ins it names must be ``.py`` files in its own folder or listed in ``plugins``
    (:func:`ifa_jax.runner.registry.check_trusted`).

    Args:
        path: the ``.py`` or ``.json`` file.
        plugins: plug-in files and modules the user named (``--plugin``).

    Returns:
        The :class:`Config`.

    Raises:
        FileNotFoundError: no such file, or a plug-in file found nowhere.
        ValueError: another extension, invalid JSON, no ``get_config()``, an untrusted
            plug-in, or what :func:`config_from_dict` refuses.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"config file {path!r} does not exist; the shipped ones are "
            "in the repository's experiments/configs/"
        )
    if not path.endswith((".json", ".py")):
        raise ValueError(
            f"config file {path!r} is neither .py (with get_config()) nor .json; write the "
            "config in one of those"
        )
    if path.endswith(".json"):
        with open(path) as f:
            try:
                values = json.load(f)
            except ValueError as e:
                raise ValueError(f"config file {path!r} is not valid JSON ({e})") from None
        if not isinstance(values, Mapping):
            raise ValueError(
                f"config file {path!r} holds a JSON {type(values).__name__}; it must hold an "
                'object of config fields, e.g. {"name": "mine", "layer": "conv2"}'
            )
        config = registry.resolve_plugin_paths(config_from_dict(values, path), folder)
        registry.check_trusted(config, folder=folder, plugins=plugins)
        return config
    spec = importlib.util.spec_from_file_location("ifa_config", path)
    assert spec is not None and spec.loader is not None  # a .py file that exists
    module = importlib.util.module_from_spec(spec)
    # A config may import helpers that sit beside it (experiments/configs/common.py).
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path} has no get_config() function returning a Config")
    config = module.get_config()
    if isinstance(config, Mapping):
        config = config_from_dict(config, path)
    if not isinstance(config, Config):
        raise ValueError(
            f"{path}: get_config() returned a {type(config).__name__}; return a Config (or a "
            "dict of its fields)"
        )
    return registry.resolve_plugin_paths(config, folder)


def override(config: Config, *assignments: str) -> Config:
    """Apply ``key=value`` assignments (``train.epochs=2``, ``methods=gradcam,finercam``,
    ``method_options.finercam.alpha=0.5``), values Python literals or strings. All are
    applied before the config is checked, so their order does not matter (an option for
    a method named by a later ``methods=`` is accepted).

    Args:
        config: the config to start from.
        *assignments: ``key=value`` strings.

    Returns:
        A new :class:`Config`.

    Raises:
        ValueError: an assignment without ``=``, an unknown field, or what
            :func:`config_from_dict` refuses.
    """
    values = dataclasses.asdict(config)
    values["method_options"] = config.options_of()
    for assignment in assignments:
        _assign(values, assignment)
    context = ", ".join(map(repr, assignments))
    return config_from_dict(values, f"override {context}")


def _assign(values: dict[str, Any], assignment: str) -> None:
    """One ``key=value`` into the config's plain ``values`` (method_options as a dict)."""
    if "=" not in assignment:
        raise ValueError(f"override {assignment!r} must look like key=value, e.g. train.epochs=2")
    key, raw = assignment.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    if key.startswith("method_options."):
        parts = key.split(".")
        if len(parts) != 3 or not all(parts):
            raise ValueError(
                f"override {assignment!r}: set one option as method_options.METHOD.OPTION="
                "VALUE, e.g. method_options.gradcam++.eps=1e-7"
            )
        options = values["method_options"]
        options.setdefault(cams.canonical_method(parts[1]), {})[parts[2]] = value
    elif key.startswith("train."):
        sub = key.split(".", 1)[1]
        if sub not in _field_names(training.TrainConfig):
            raise ValueError(
                f"unknown field 'train.{sub}'; valid: "
                f"{', '.join(_field_names(training.TrainConfig))}"
            )
        values["train"][sub] = value
    elif key == "method_options":
        values[key] = dict(value) if isinstance(value, Mapping) else value
    else:
        values[key] = value


__all__ = ["SUBSET_MODES", "Config", "config_from_dict", "load_config", "override"]

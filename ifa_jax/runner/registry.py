"""Where the runner's models and datasets come from: two tables, and plug-ins by name.

A config names a model and a dataset either from the tables below or as a plug-in,
``"package.module:factory"`` or ``"path/to/file.py:factory"``.

A config file is read as data, so the code it may run is limited (:func:`check_trusted`):
a JSON config may name a ``.py`` file inside its own folder; anything else (a module, a
file elsewhere) runs only when the user names it on the command line (``--plugin``). A
``.py`` config is code the user runs, so the plug-ins its ``get_config()`` names are
trusted. A relative plug-in path is resolved against the config file's folder
(:func:`resolve_plugin_paths`).

* A **model factory** returns a Linen module mapping ``(B, *spatial, C)`` to logits
  ``(B, num_classes)``. It is called with the config's ``model_kwargs`` and, when its
  signature takes them, ``num_classes`` and ``input_shape`` (of one input, ``(*spatial,
  C)``). A Linen module class is such a factory.
* A **dataset factory** returns :class:`ifa_jax.runner.data.Splits` (or a ``(train,
  validation)`` pair) of :class:`ifa_jax.inputs.Dataset` or any source with ``__len__``,
  ``gather(indices) -> (x, y)``, ``input_shape`` and ``num_classes``. It is called with
  the config's ``dataset_kwargs`` and, when its signature takes them, ``seed``,
  ``validation_size`` and ``image_size``.

Examples:
    A built-in model and a plug-in naming the same class, built for a 3-class dataset
    of 8 x 8 images; a plug-in module runs only once the user names it:

    >>> import numpy as np
    >>> from ifa_jax.runner import registry
    >>> from ifa_jax.runner.config import Config
    >>> from ifa_jax.runner.data import Dataset, Splits
    >>> ds = Dataset(np.zeros((4, 8, 8, 1), np.float32), np.array([0, 1, 2, 0]), 3)
    >>> model = registry.build_model(Config(model="convnet"), Splits(ds, ds))
    >>> type(model).__name__, model.ndim, model.num_classes
    ('ConvNet', 2, 3)
    >>> plugin = Config(model="ifa_jax.runner.models:ConvNet", model_kwargs=(("ndim", 2),))
    >>> registry.is_plugin(plugin.model, registry.MODELS)
    True
    >>> registry.build_model(plugin, Splits(ds, ds)).num_classes
    3
    >>> registry.check_trusted(plugin, plugins=["ifa_jax.runner.models"])  # allowed
    >>> registry.check_names("resnet", "mnist_embedded")
    ["model 'resnet' is not one of mnist_cnn, convnet, resnet18, vit nor a plug-in
    'package.module:factory' / 'file.py:factory'"]
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import flax.linen as nn
from flax import nnx

from ifa_jax.runner import data, models

if TYPE_CHECKING:
    from ifa_jax.runner.config import Config


def _mnist_cnn(*, num_classes, input_shape, **kwargs):
    return models.MnistCNN(num_classes=num_classes, **kwargs)


def _convnet(*, num_classes, input_shape, **kwargs):
    return models.ConvNet(ndim=len(input_shape) - 1, num_classes=num_classes, **kwargs)


def _resnet18(*, num_classes, input_shape, **kwargs):
    return models.ResNet18(num_classes=num_classes, **kwargs)


def _vit(*, num_classes, input_shape, **kwargs):
    return models.ViT(num_classes=num_classes, **kwargs)


# name -> factory(*, num_classes, input_shape, **model_kwargs) -> Linen module
MODELS: dict[str, Callable[..., Any]] = {
    "mnist_cnn": _mnist_cnn,
    "convnet": _convnet,
    "resnet18": _resnet18,
    "vit": _vit,
}


def _signals(path, *, seed, validation_size, image_size):
    return data.split_dataset(data.load_signals(path), validation_size, seed=seed)


def _tfds(name, *, seed, validation_size, image_size):
    return data.load_tfds_splits(name, **({"image_size": image_size} if image_size else {}))


# "name" or "name:argument" -> factory(argument, *, seed, validation_size, image_size)
DATASETS: dict[str, Callable[..., data.Splits]] = {
    "mnist_embedded": lambda _, *, seed, validation_size, image_size: data.load_mnist_embedded(
        validation_size=validation_size, seed=seed
    ),
    "mnist_placed": lambda _, *, seed, validation_size, image_size: data.load_mnist_placed(
        validation_size=validation_size, seed=seed, train_copies=3
    ),
    "sklearn_digits": lambda _, *, seed, validation_size, image_size: data.load_sklearn_digits(
        validation_size=validation_size, seed=seed
    ),
    "tfds": _tfds,
    "medmnist": lambda path, *, seed, validation_size, image_size: data.load_medmnist_npz(path),
    "signals": _signals,
}
# Datasets whose name carries an argument after the colon.
DATASET_ARGUMENT = {"tfds": "<name>", "medmnist": "<path.npz>", "signals": "<path>"}


def is_plugin(spec: str, table: dict) -> bool:
    """Whether ``spec`` names a plug-in (``module:attr`` / ``file.py:attr``), not a table entry.

    Args:
        spec: the config's model or dataset.
        table: :data:`MODELS` or :data:`DATASETS`.

    Returns:
        True for a plug-in.
    """
    return ":" in spec and spec.split(":", 1)[0] not in table


def load_object(spec: str, what: str) -> Callable[..., Any]:
    """The callable named by ``"package.module:attr"`` or ``"path/to/file.py:attr"``.

    Args:
        spec: the plug-in spec.
        what: what it is ('model', 'dataset'), for messages.

    Returns:
        The callable.

    Raises:
        FileNotFoundError: a ``.py`` file that does not exist.
        ValueError: a malformed spec, a module that cannot be imported, a missing
            attribute, or one that is not callable.
    """
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise ValueError(
            f"{what} {spec!r} must look like 'package.module:factory' or 'path/to/file.py:factory'"
        )
    if target.endswith(".py"):
        path = os.path.abspath(target)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{what} {spec!r}: the file {path!r} does not exist")
        name = f"ifa_jax_plugin_{abs(hash(path))}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        assert module_spec is not None and module_spec.loader is not None  # a .py file
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # dataclasses and pickling look modules up by name
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise ValueError(
                f"{what} {spec!r}: cannot import {target!r} ({e}); put its "
                "folder on PYTHONPATH or name a file: 'path/to/file.py:factory'"
            ) from None
    try:
        obj = getattr(module, attr)
    except AttributeError:
        public = sorted(n for n in vars(module) if not n.startswith("_"))
        raise ValueError(
            f"{what} {spec!r}: {target!r} has no {attr!r}; it defines {', '.join(public[:12])}"
        ) from None
    if not callable(obj):
        raise ValueError(f"{what} {spec!r} is a {type(obj).__name__}, not a callable factory")
    return obj


def plugin_target(spec: str) -> str:
    """The file or module part of a plug-in spec (before the last ``:``).

    Args:
        spec: the plug-in spec.

    Returns:
        The file or module.
    """
    return spec.rpartition(":")[0]


def resolve_plugin_paths(config: Config, base: str | os.PathLike) -> Config:
    """``config`` with each relative ``file.py`` plug-in path made absolute: against
    ``base`` (the config file's folder) where the file is, else the working directory.
    A file found in neither is named with both places tried.

    Args:
        config: the :class:`~ifa_jax.runner.config.Config`.
        base: the config file's folder.

    Returns:
        The config, with absolute plug-in paths.

    Raises:
        FileNotFoundError: a plug-in file found in neither place.
    """
    changes = {}
    for field, table in (("model", MODELS), ("dataset", DATASETS)):
        spec = getattr(config, field)
        target = plugin_target(spec)
        if not is_plugin(spec, table) or not target.endswith(".py") or os.path.isabs(target):
            continue
        tried = [os.path.abspath(os.path.join(base, target)), os.path.abspath(target)]
        found = next((t for t in tried if os.path.isfile(t)), None)
        if found is None:
            raise FileNotFoundError(
                f"{field} {spec!r}: the file {target!r} is neither in the config's folder "
                f"({tried[0]!r}) nor in the working directory ({tried[1]!r}); give its path "
                "relative to the config file, or an absolute path"
            )
        changes[field] = f"{found}:{spec.rpartition(':')[2]}"
    return dataclasses.replace(config, **changes) if changes else config


def check_trusted(
    config: Config,
    *,
    folder: str | os.PathLike | None = None,
    plugins: Sequence[str] = (),
    trusted: Sequence[str] = (),
) -> None:
    """Refuse plug-ins that the user did not name. A plug-in spec is allowed when it is in
    ``trusted`` (named by code the user runs: a ``.py`` config), when its ``.py`` file lies
    inside ``folder`` (a JSON config's own folder), or when its file or module is in
    ``plugins`` (named on the command line with ``--plugin``).

    Args:
        config: the :class:`~ifa_jax.runner.config.Config`.
        folder: a JSON config's folder, or None.
        plugins: files and modules named with ``--plugin``.
        trusted: specs named by code the user runs.

    Raises:
        ValueError: a plug-in the user did not name, or a ``--plugin`` that is neither
            an existing ``.py`` file nor a module name.
    """
    for p in plugins:
        if p.endswith(".py") and not os.path.isfile(p):
            raise ValueError(f"--plugin {p!r}: no such file; name an existing .py file")
        if not p.endswith(".py") and (os.sep in p or not p.replace(".", "").isidentifier()):
            raise ValueError(
                f"--plugin {p!r} is neither a .py file nor a module name (package.module)"
            )
    named_files = {os.path.realpath(p) for p in plugins if p.endswith(".py")}
    named_modules = {p for p in plugins if not p.endswith(".py")}
    for field, table in (("model", MODELS), ("dataset", DATASETS)):
        spec = getattr(config, field)
        if not is_plugin(spec, table) or spec in trusted:
            continue
        target = plugin_target(spec)
        if target.endswith(".py"):
            real = os.path.realpath(target)
            root = None if folder is None else os.path.realpath(folder)
            if real in named_files or (
                root is not None and os.path.commonpath([root, real]) == root
            ):
                continue
            where = (
                f"only a .py file inside the config's folder ({root})"
                if root is not None
                else "no plug-in of its own"
            )
            if real != os.path.abspath(target):
                where += f"; {target!r} is a link to {real!r}, outside it"
        elif any(target == m or target.startswith(f"{m}.") for m in named_modules):
            continue
        else:
            where = (
                f"only a .py file inside the config's folder ({os.path.realpath(folder)})"
                if folder is not None
                else "no module"
            )
        raise ValueError(
            f"{field} {spec!r} names code to run, and a config file or --set value is read as "
            f"data: it may name {where}. If you trust {target!r}, name it on the command "
            f"line: --plugin {target}"
        )


def plugin_sources(config: Config) -> list[str]:
    """The source files of the config's plug-ins (their code is part of a run's inputs).

    Args:
        config: the :class:`~ifa_jax.runner.config.Config`.

    Returns:
        Absolute paths of the plug-ins' files.
    """
    sources = []
    for spec, table in ((config.model, MODELS), (config.dataset, DATASETS)):
        if is_plugin(spec, table):
            target = spec.rpartition(":")[0]
            if target.endswith(".py"):
                sources.append(os.path.abspath(target))
            else:
                found = importlib.util.find_spec(target)
                if found is not None and found.origin and os.path.isfile(found.origin):
                    sources.append(found.origin)
    return sources


def call_with_accepted(
    factory: Callable[..., Any], kwargs: dict, optional: dict, what: str = "factory"
) -> Any:
    """``factory(**kwargs, **those of optional its signature accepts)``; a call the
    signature rejects is reported naming ``what`` and the keyword arguments.

    Args:
        factory: the callable (a class is read through its ``__init__``).
        kwargs: keyword arguments always passed.
        optional: keyword arguments passed when the signature takes them.
        what: the factory, for messages.

    Returns:
        What the factory returns.

    Raises:
        ValueError: the signature rejects the arguments.
    """
    # A class is read through its __init__ (a metaclass may hide it behind *args, **kwargs).
    is_class = isinstance(factory, type)
    try:
        signature = inspect.signature(factory.__init__ if is_class else factory)
    except (TypeError, ValueError):  # no signature to read (a builtin): just call it
        return factory(**kwargs)
    params = signature.parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    extra = {k: v for k, v in optional.items() if takes_all or k in params}
    try:
        signature.bind(*((None,) if is_class else ()), **kwargs, **extra)
    except TypeError as e:
        raise ValueError(
            f"{what} does not take the arguments {sorted({**kwargs, **extra})} ({e}); fix the "
            "config's model_kwargs / dataset_kwargs"
        ) from None
    return factory(**kwargs, **extra)


def load_data(config: Config) -> data.Splits:
    """The config's dataset as train / validation splits (checked to match each other).

    Args:
        config: the :class:`~ifa_jax.runner.config.Config`.

    Returns:
        The :class:`~ifa_jax.runner.data.Splits`.

    Raises:
        ValueError: a plug-in factory that returns something else, a split without the
            source interface, or splits of different input shapes or class counts.
    """
    spec, kwargs = config.dataset, dict(config.dataset_kwargs)
    optional = {
        "seed": config.seed,
        "validation_size": config.validation_size,
        "image_size": config.image_size,
    }
    if not is_plugin(spec, DATASETS):
        name, _, argument = spec.partition(":")
        return DATASETS[name](argument, **optional)
    out = call_with_accepted(load_object(spec, "dataset"), kwargs, optional, f"dataset {spec!r}")
    if isinstance(out, tuple) and not isinstance(out, data.Splits) and len(out) == 2:
        out = data.Splits(*out)
    if not isinstance(out, data.Splits):
        raise ValueError(
            f"dataset factory {spec!r} returned a {type(out).__name__}; it must return "
            "ifa_jax.runner.data.Splits or a (train, validation) pair"
        )
    for name in ("train", "validation"):
        split = getattr(out, name)
        missing = [
            a for a in ("__len__", "gather", "input_shape", "num_classes") if not hasattr(split, a)
        ]
        if missing:
            raise ValueError(
                f"dataset factory {spec!r}: its {name} split lacks {', '.join(missing)}; "
                "return ifa_jax.inputs.Dataset"
            )
    train, val = out.train, out.validation
    for what in ("input_shape", "num_classes"):
        a, b = getattr(train, what), getattr(val, what)
        if (tuple(a) if what == "input_shape" else a) != (tuple(b) if what == "input_shape" else b):
            raise ValueError(
                f"dataset factory {spec!r}: the train split has {what} {a} but the validation "
                f"split {b}; both splits must share it (resize the images, or give both the "
                "same num_classes)"
            )
    return out


def build_model(config: Config, splits: data.Splits) -> nn.Module:
    """The config's (untrained) Linen model for ``splits``.

    Args:
        config: the :class:`~ifa_jax.runner.config.Config`.
        splits: the data; the model gets their ``num_classes`` and ``input_shape``.

    Returns:
        The Linen module.

    Raises:
        ValueError: model_kwargs the factory does not take, or a factory that returns
            no Linen module instance.
    """
    plugin = is_plugin(config.model, MODELS)
    factory = load_object(config.model, "model") if plugin else MODELS[config.model]
    try:
        model = call_with_accepted(
            factory,
            dict(config.model_kwargs),
            {
                "num_classes": splits.train.num_classes,
                "input_shape": tuple(splits.train.input_shape),
            },
            f"model {config.model!r}",
        )
    except TypeError as e:  # a built-in model's fields are read when it is built
        raise ValueError(
            f"model {config.model!r} does not take model_kwargs "
            f"{dict(config.model_kwargs)} ({e}); fix the config's model_kwargs"
        ) from None
    if isinstance(model, type) or not isinstance(model, nn.Module):
        what = (
            f"the class {model.__name__}"
            if isinstance(model, type)
            else (f"a {type(model).__module__}.{type(model).__name__}")
        )
        hint = (
            "; NNX models are not run by the runner yet: probe them with ifa_jax.nnx_probe"
            if isinstance(model, nnx.Module)
            else ""
        )
        raise ValueError(
            f"model {config.model!r} gave {what}, not a flax.linen Module instance; the "
            f"factory must return one, e.g. CNN(num_classes=num_classes){hint}"
        )
    return model


def check_names(model: str, dataset: str, dataset_kwargs: Sequence = ()) -> list[str]:
    """Problems with a config's model and dataset names (plug-ins are checked on use).

    Args:
        model: the config's model.
        dataset: the config's dataset.
        dataset_kwargs: the config's dataset_kwargs (pairs).

    Returns:
        One message per problem; empty when there is none.
    """
    problems = []
    for what, spec, table in (("model", model, MODELS), ("dataset", dataset, DATASETS)):
        if is_plugin(spec, table) and spec.count(":") > 1:
            problems.append(
                f"{what} {spec!r} has more than one ':'; write one plug-in as "
                "'package.module:factory' or 'path/to/file.py:factory'"
            )
    if not is_plugin(model, MODELS) and model not in MODELS:
        problems.append(
            f"model {model!r} is not one of {', '.join(MODELS)} nor a plug-in "
            "'package.module:factory' / 'file.py:factory'"
        )
    name, colon, argument = dataset.partition(":")
    if not is_plugin(dataset, DATASETS) and dataset_kwargs:
        problems.append(
            f"dataset_kwargs {dict(dataset_kwargs)} apply only to a plug-in dataset; the "
            f"built-in {name!r} takes none (remove them)"
        )
    if not is_plugin(dataset, DATASETS):
        if name not in DATASETS:
            problems.append(
                f"dataset {dataset!r} is not one of {', '.join(DATASETS)} nor a "
                "plug-in 'package.module:factory' / 'file.py:factory'"
            )
        elif (name in DATASET_ARGUMENT) != bool(colon and argument):
            form = f"{name}:{DATASET_ARGUMENT[name]}" if name in DATASET_ARGUMENT else name
            problems.append(f"dataset {dataset!r} must be written {form!r}")
    return problems

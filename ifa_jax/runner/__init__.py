"""The experiment runner: data -> model -> integrated feature analysis -> evaluation -> report.

A run is described by a frozen :class:`Config` and lives in one run folder
(:class:`RunFolder`):

    config.json        the config it belongs to (a different config is refused)
    checkpoint.msgpack the trained model and train.json, its history (with ``variables=``
                       nothing is trained: train.json names the variables analysed);
                       train_state.msgpack while training (resumes a killed run)
    analysis/*.npz     per method and split: statistics and per-sample scalars
    evaluation/*.json  one file per evaluation (and .npz for arrays a figure needs)
    figures/*.png      the figures of the report
    results.json       every number, with the config and package versions
    report.md          the readable report, embedding the figures
    manifest.json      SHA-256 of every stage output and the checkpoint it came from

Every file is written atomically, and a stage whose output verifies against the manifest
is not run again, so a crashed run resumes where it stopped and a damaged file (or one
computed from another checkpoint) is recomputed. The folder holds a ``.ifa_jax_run``
marker (``--overwrite`` clears only such folders) and a lock, so two runners never share
it. Models and datasets come from :mod:`ifa_jax.runner.registry` (tables, or plug-ins
named ``package.module:factory``); evaluations and figures are tables too
(:data:`EVALUATIONS`, :data:`FIGURES`).

Command line: ``ifa-jax run --config FILE [--out DIR] [--set KEY=VALUE] [--overwrite]``.

Examples:
    A config for a quick run, and the evaluations a run computes:

    >>> from ifa_jax.runner import EVALUATIONS, Config, override
    >>> config = override(Config(name="quick"), "train.epochs=1", "methods=gradcam")
    >>> config.dataset, config.model, config.train.epochs, config.methods
    ('mnist_embedded', 'mnist_cnn', 1, ('gradcam',))
    >>> [e.name for e in EVALUATIONS]  # doctest: +NORMALIZE_WHITESPACE
    ['consistency', 'consistency_all_classes', 'subsets', 'decomposition', 'diagnostics',
     'faithfulness', 'sanity', 'scale_coverage', 'comparison']
"""

from ifa_jax.runner.config import SUBSET_MODES, Config, config_from_dict, load_config, override
from ifa_jax.runner.evaluations import EVALUATIONS, Evaluation
from ifa_jax.runner.folder import RunFolder, RunFolderBusyError
from ifa_jax.runner.main import main, run
from ifa_jax.runner.registry import DATASETS, MODELS
from ifa_jax.runner.report import FIGURES, Figure
from ifa_jax.runner.stages import RunContext

__all__ = [
    "DATASETS",
    "EVALUATIONS",
    "FIGURES",
    "MODELS",
    "SUBSET_MODES",
    "Config",
    "Evaluation",
    "Figure",
    "RunContext",
    "RunFolder",
    "RunFolderBusyError",
    "config_from_dict",
    "load_config",
    "main",
    "override",
    "run",
]

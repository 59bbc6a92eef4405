"""``run()``: data -> model -> train (or load) -> analyse -> evaluate -> figures -> report,
and the ``ifa-jax`` command that calls it.

Examples:
    An evaluation file read back is checked before its numbers are used:

    >>> from ifa_jax.runner.main import evaluation_problem
    >>> evaluation_problem({"version": 1, "numbers": {}})
    'no arrays'
    >>> evaluation_problem({"version": 1, "numbers": {}, "arrays": []}) is None
    True
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import importlib.metadata
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence

import jax

from ifa_jax import scale
from ifa_jax.runner import registry
from ifa_jax.runner.config import Config, load_config, override
from ifa_jax.runner.evaluations import EVALUATIONS, Evaluation
from ifa_jax.runner.folder import RunFolder, to_jsonable, write_json
from ifa_jax.runner.report import FIGURES, Figure, make_figures, write_report
from ifa_jax.runner.stages import (
    SPLITS,
    RunContext,
    check_model,
    load_given_variables,
    stage_analyse,
    stage_train,
)


def _jsonable(obj):
    return json.loads(json.dumps(to_jsonable(obj)))


def evaluation_problem(stored) -> str | None:
    """What is wrong with an ``evaluation/<name>.json`` read back (None: nothing)."""
    if not isinstance(stored, dict):
        return f"a JSON {type(stored).__name__}, not an object"
    missing = [k for k in ("version", "numbers", "arrays") if k not in stored]
    if missing:
        return f"no {', '.join(missing)}"
    arrays = stored["arrays"]
    if not (isinstance(arrays, list) and all(isinstance(a, str) for a in arrays)):
        return "arrays is not a list of names"
    return None


def numbers_problem(ctx: RunContext, e: Evaluation, numbers) -> str | None:
    """What keeps ``e``'s report section and log line from reading ``numbers`` (an
    evaluation file's numbers, edited or from other code): None if both read them. Tried
    with the log silenced, so nothing is printed."""
    silent = copy.copy(ctx)
    silent.log = lambda _: None
    try:
        e.report(silent, numbers)
        if e.log is not None:
            e.log(silent, numbers)
    except Exception as error:  # any failure on stored data: the numbers are recomputed
        return f"its report cannot read its numbers: {type(error).__name__}: {error}"
    return None


def stage_evaluate(
    ctx: RunContext, evaluations: Sequence[Evaluation], *, recompute: bool = False
) -> list[str]:
    """Each evaluation's verified file, or its computation (always with ``recompute``);
    fills ``ctx.evaluations``. Returns the names of the evaluations read from files."""
    run = ctx.run
    loaded = []
    for e in evaluations:
        name_json, name_npz = f"evaluation/{e.name}.json", f"evaluation/{e.name}.npz"
        stored = None if recompute else run.read_json(name_json, evaluation_problem)
        arrays = None
        if stored is not None and stored["version"] != e.version:
            ctx.log(
                f"evaluate: {name_json} has version {stored['version']}, not "
                f"{e.version}; recomputing"
            )
            stored = None
        elif stored is not None:
            problem = numbers_problem(ctx, e, stored["numbers"])
            if problem is not None:
                ctx.log(
                    f"run folder: {name_json} is not what the runner writes ({problem}); "
                    "recomputing it"
                )
                stored = None
            else:
                arrays = run.read_npz(name_npz, stored["arrays"]) if stored["arrays"] else {}
        if stored is not None and arrays is not None:
            numbers = stored["numbers"]
            loaded.append(e.name)
            ctx.log(f"evaluate: loaded {name_json}")
        else:
            start = time.perf_counter()
            numbers, arrays = e.compute(ctx)
            numbers = _jsonable(numbers)
            if arrays:
                run.save_npz(name_npz, arrays)
            # The JSON goes last: it marks the evaluation as complete.
            run.write_json(
                name_json, {"version": e.version, "numbers": numbers, "arrays": sorted(arrays)}
            )
            ctx.log(f"evaluate: {e.name} in {time.perf_counter() - start:.1f} s")
        ctx.evaluations[e.name] = (numbers, arrays)
        if e.log is not None:
            e.log(ctx, numbers)
    return loaded


def _unreadable_for(ctx: RunContext, fig: Figure, loaded: Sequence[str]) -> list[str]:
    """The evaluations of ``loaded`` without which ``fig`` draws: those whose stored
    numbers or arrays it cannot read."""
    out = []
    for name in loaded:
        trial = copy.copy(ctx)
        trial.evaluations = {k: v for k, v in ctx.evaluations.items() if k != name}
        try:
            fig.draw(trial)
        except Exception:  # still failing: not this evaluation alone
            continue
        out.append(name)
    return out


def draw_figures(
    ctx: RunContext,
    figures: Sequence[Figure],
    evaluations: Sequence[Evaluation],
    loaded: Sequence[str],
) -> dict[str, str]:
    """:func:`make_figures`, figure by figure; when one cannot read the numbers or arrays
    of an evaluation read back from its file (``loaded``: edited, or from other code),
    that evaluation is recomputed, naming its file, and the figure drawn again."""
    drawn: dict[str, str] = {}
    loaded = list(loaded)
    for fig in figures:
        try:
            drawn.update(make_figures(ctx, [fig]))
            continue
        except Exception as error:  # stored data the figure could not read?
            suspects = _unreadable_for(ctx, fig, loaded)
            if not suspects:
                raise
            files = ", ".join(f"evaluation/{name}.json" for name in suspects)
            ctx.log(
                f"run folder: the {fig.key} figure cannot read what {files} holds "
                f"({type(error).__name__}: {error}); recomputing it"
            )
        stage_evaluate(ctx, [e for e in evaluations if e.name in suspects], recompute=True)
        loaded = [name for name in loaded if name not in suspects]
        drawn.update(make_figures(ctx, [fig]))
    return drawn


def planned_outputs(
    config: Config, evaluations: Sequence[Evaluation], figures: Sequence[Figure]
) -> list[str]:
    """The files a run of ``config`` writes in the run folder's subfolders (a folder
    found at one of them is refused before anything is written)."""
    return [
        *(os.path.join("analysis", f"{m}_{s}.npz") for m in config.methods for s in SPLITS),
        *(f"evaluation/{e.name}.{x}" for e in evaluations for x in ("json", "npz")),
        *(os.path.join("figures", f"{f.key}.png") for f in figures),
    ]


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("ifa_jax", "jax", "jaxlib", "flax", "optax", "numpy"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[pkg] = importlib.metadata.version(pkg)
    out["backend"] = jax.default_backend()
    return out


def run(
    config: Config,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    evaluations: Sequence[Evaluation] = EVALUATIONS,
    figures: Sequence[Figure] = FIGURES,
) -> dict:
    """Run (or resume) every stage of ``config`` in the run folder ``out``.

    The config, the layer and the model's outputs are checked before anything is written.
    ``evaluations`` and ``figures`` are the tables to use (defaults: every evaluation and
    figure the runner has); each evaluation's numbers land in ``results.json`` under its
    name and its section in ``report.md``. Returns the contents of ``results.json``.
    """
    start = time.perf_counter()
    if not isinstance(config, Config):
        raise ValueError(
            f"config must be an ifa_jax.runner.Config, not a {type(config).__name__}; build "
            "one with Config(...), config_from_dict(...) or load_config(path)"
        )
    for what, names in (
        ("evaluation", [e.name for e in evaluations]),
        ("figure", [f.key for f in figures]),
    ):
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(
                f"{what} name(s) {', '.join(twice)} appear more than once; give "
                f"each {what} its own name"
            )
    if config.devices > jax.device_count():
        raise ValueError(
            f"config field 'devices' is {config.devices}, but this machine has "
            f"{jax.device_count()} {jax.default_backend()} device(s); set devices <= "
            f"{jax.device_count()}"
        )
    splits = registry.load_data(config)
    for split in ("train", "validation"):
        if len(getattr(splits, split)) == 0:
            raise ValueError(
                f"the {split} split of dataset {config.dataset!r} is empty; the runner "
                "trains on one split and analyses both (raise validation_size, or give the "
                "dataset factory both splits)"
            )
    model = registry.build_model(config, splits)
    layer, why = check_model(config, model, splits)
    if config.layer is None:  # recorded in config.json, the report and results.json
        log(f"layer: {layer} ({why})")
        config = dataclasses.replace(config, layer=layer)
    given = load_given_variables(config, model, splits) if config.variables else None
    if given is not None and overwrite:
        # Links resolved: variables reached through a link into the folder are inside too.
        folder = os.path.realpath(out)
        if os.path.commonpath([folder, os.path.realpath(str(config.variables))]) == folder:
            raise ValueError(
                f"variables {config.variables!r} lie inside the run folder {str(out)!r} that "
                "--overwrite would clear; copy them elsewhere first, or choose another --out"
            )
    sources = registry.plugin_sources(config)
    outputs = planned_outputs(config, evaluations, figures)
    with RunFolder(
        out, config, overwrite=overwrite, log=log, sources=sources, outputs=outputs
    ) as run_folder:
        ctx = RunContext(config, run_folder, splits, model, log)
        if given is not None:
            ctx.variables = given[0]
        stage_train(ctx, given[1] if given is not None else None)
        stage_analyse(ctx)
        loaded = stage_evaluate(ctx, evaluations)
        drawn = draw_figures(ctx, figures, evaluations, loaded)
        results = _jsonable(
            {
                "config": config.to_dict(),
                "versions": _versions(),
                "train": ctx.train_info,
                "samples": "faithfulness, sanity and the CAM figure use validation samples drawn "
                f"stratified by class with seed {config.seed}",
                "analysis": {
                    m: {
                        split: {
                            "percentiles_cam_max": scale.percentiles(s[1]["cam_max"]),
                            "percentiles_cam_min": scale.percentiles(s[1]["cam_min"]),
                            "class_counts": s[0].class_counts,
                            "missing_classes": s[0].missing_classes,
                        }
                        for split, s in per.items()
                    }
                    for m, per in ctx.analyses.items()
                },
                "scales": {m: s._asdict() for m, s in ctx.scales.items()},
                **{name: numbers for name, (numbers, _) in ctx.evaluations.items()},
                "figures": drawn,
            }
        )
        write_json(run_folder.file("results.json"), results)
        report = write_report(ctx, results, evaluations, figures, drawn)
    log(f"report: {report} ({time.perf_counter() - start:.1f} s)")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """``ifa-jax run|compare --config FILE [--out DIR] [--set KEY=VALUE ...] [--plugin CODE
    ...] [--overwrite]``; ``compare`` runs only the method comparison's evaluation and
    figure."""
    from ifa_jax.runner.allocator import restart_tuned

    restart_tuned(argv)  # the command (argv None) restarts once with the CPU allocator tuning
    parser = argparse.ArgumentParser(
        prog="ifa-jax", description="Integrated feature analysis of a model on a dataset."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser(
        "run",
        help="train (or load) a model, analyse it, evaluate, write the report",
        description="Run or resume one experiment. Re-running the same command resumes: "
        "finished stages whose files verify are loaded, not recomputed.",
    )
    compare_parser = commands.add_parser(
        "compare",
        help="train (or load) and analyse as run does, then only the method comparison",
        description="Score every method of the config on every metric of the method "
        "comparison: 'run' restricted to that evaluation and its figure. The report holds "
        "only the comparison; 'run' on the same folder later adds the rest, loading the "
        "finished stages.",
    )
    for p in (run_parser, compare_parser):
        p.add_argument("--config", required=True, help="a .py file with get_config() or a .json")
        p.add_argument("--out", help="run folder (default: runs/<config name>)")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config field, e.g. train.epochs=2 or methods=gradcam,hirescam",
        )
        p.add_argument(
            "--plugin",
            action="append",
            default=[],
            metavar="FILE.py|MODULE",
            help="allow the config (a JSON file or a --set value) to run this plug-in file or "
            "module; a JSON config may name .py files in its own folder without it",
        )
        p.add_argument(
            "--overwrite",
            action="store_true",
            help="replace a run folder (made by the runner) that belongs to another "
            "config; other folders are never cleared",
        )
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, plugins=args.plugin)
        folder = os.path.dirname(os.path.abspath(args.config))
        # What the config file names is checked by load_config; --set values are data too.
        trusted = (config.model, config.dataset)
        config = override(config, *args.set)
        config = registry.resolve_plugin_paths(config, folder)
        registry.check_trusted(
            config,
            folder=folder,
            plugins=args.plugin,
            trusted=trusted,
        )
        if args.out is not None and not args.out.strip():
            raise ValueError("--out is empty; name a folder, or leave --out out for runs/<name>")
        out = args.out or os.path.join("runs", config.name)
        if args.command == "compare":
            only = {
                "evaluations": [e for e in EVALUATIONS if e.name == "comparison"],
                "figures": [f for f in FIGURES if f.key == "comparison"],
            }
        else:
            only = {}
        run(config, out, overwrite=args.overwrite, **only)
    except (ValueError, OSError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\nstopped: the run folder keeps every finished stage (and training its last "
            "finished epoch); run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    return 0


__all__ = ["main", "run", "stage_evaluate"]

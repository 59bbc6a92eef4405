"""Run one experiment: train (or load) the model, analyse, evaluate, write the report.

    python -m experiments.run --config experiments/configs/mnist.py [--out runs/mnist]
                              [--set train.epochs=2 --set methods="('gradcam',)"]
                              [--overwrite]

Re-running the same command resumes: finished stages whose files verify are loaded, not
recomputed. A run folder made by another config is refused unless --overwrite is given;
--overwrite only ever clears a folder that the runner made (it holds a .ifa_jax_run file).
Every field of the config is checked, and the layer resolved against the model, before
anything is written.
"""

from __future__ import annotations

import argparse
import os
import sys

from ifa_jax import experiment


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a .py file with get_config() or .json")
    parser.add_argument("--out", help="run folder (default: runs/<config name>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. train.epochs=2")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a run folder (made by the runner) that belongs to "
                             "another config")
    args = parser.parse_args(argv)
    try:
        config = experiment.load_config(args.config)
        for assignment in args.set:
            config = experiment.override(config, assignment)
        out = args.out or os.path.join("runs", config.name)
        experiment.run_experiment(config, out, overwrite=args.overwrite)
    except (ValueError, OSError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run one experiment: train (or load) the model, analyse, evaluate, write the report.

    python -m experiments.run --config experiments/configs/mnist.py [--out runs/mnist]
                              [--set train.epochs=2 --set methods=gradcam,hirescam]
                              [--overwrite]

The same as the installed command ``ifa-jax run ...`` (see docs/runner.md). Re-running the
same command resumes: finished stages whose files verify are loaded, not recomputed. A
run folder made by another config is refused unless --overwrite is given; --overwrite
only ever clears a folder that the runner made (it holds a .ifa_jax_run file). Every
field of the config is checked, and the layer resolved against the model, before
anything is written. Like ``ifa-jax``, it restarts itself once with the CPU allocator
tuning (docs/performance.md; ``IFA_JAX_NO_MALLOC_TUNING=1`` turns that off).
"""

from __future__ import annotations

import sys


def main(argv=None) -> int:
    from ifa_jax.runner import main as runner_main

    return runner_main(["run", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    from experiments.tuned import restart_tuned

    restart_tuned()  # before JAX is imported
    sys.exit(main())

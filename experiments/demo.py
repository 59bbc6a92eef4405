"""`make demo`: the embedded-MNIST experiment end to end (train, analyse, evaluate, report).

    python -m experiments.demo

Equivalent to ``python -m experiments.run --config experiments/configs/mnist.py
--out runs/mnist``. A second run resumes from the finished stages. Like ``ifa-jax``, it
restarts itself once with the CPU allocator tuning (docs/performance.md;
``IFA_JAX_NO_MALLOC_TUNING=1`` turns that off).
"""

from __future__ import annotations

import os
import sys

CONFIG = os.path.join(os.path.dirname(__file__), "configs", "mnist.py")

if __name__ == "__main__":
    from experiments.tuned import restart_tuned

    restart_tuned()  # before JAX is imported
    from experiments import run

    sys.exit(run.main(["--config", CONFIG, "--out", os.path.join("runs", "mnist"), *sys.argv[1:]]))

"""`make demo`: the embedded-MNIST experiment end to end (train, analyse, evaluate, report).

    python -m experiments.demo

Equivalent to ``python -m experiments.run --config experiments/configs/mnist.py
--out runs/mnist``. A second run resumes from the finished stages.
"""

from __future__ import annotations

import os
import sys

from experiments import run

CONFIG = os.path.join(os.path.dirname(__file__), "configs", "mnist.py")

if __name__ == "__main__":
    sys.exit(run.main(["--config", CONFIG, "--out", os.path.join("runs", "mnist"), *sys.argv[1:]]))

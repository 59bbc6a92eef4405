"""Throughput of ifa_jax against its floor and against the PyTorch peers.

    python -m experiments.benchmark [--quick] [--cases mnist64,mnist256,resnet18,cnn3d]
                                    [--json out.json] [--memory] [--torch-threads 2,1]
                                    [--no-peers] [--no-e2e] [--only cases,e2e,memory,methods]
                                    [--method-names gradcam,scorecam,...]

The entry point only: the benchmark lives in :mod:`experiments.bench` (see its docstring).
"""

from __future__ import annotations

import sys

from experiments.bench.main import main

if __name__ == "__main__":
    sys.exit(main())

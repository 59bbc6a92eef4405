"""Throughput of ifa_jax against its floor and against the PyTorch peers.

    python -m experiments.benchmark [--quick] [--cases mnist64,mnist256,resnet18,cnn3d]
                                    [--json out.json] [--memory] [--torch-threads 2,1]
                                    [--no-peers] [--no-e2e]
                                    [--only cases,e2e,memory,methods,allocator,metrics]
                                    [--method-names gradcam,scorecam,...]
                                    [--allocators default,tuned,jemalloc,tcmalloc]

It restarts itself once with the CPU allocator tuning, like ``ifa-jax``
(docs/performance.md; ``IFA_JAX_NO_MALLOC_TUNING=1`` turns that off).

The entry point only: the benchmark lives in :mod:`experiments.bench` (see its docstring).
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    from experiments.tuned import restart_tuned

    restart_tuned()  # once, with the CPU allocator tuning, before JAX is imported

from experiments.bench.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

"""The command line: ``python -m experiments.benchmark`` (or ``-m experiments.bench.main``)."""

from __future__ import annotations

import argparse
import sys

from experiments.bench.allocator import ALLOCATORS
from experiments.bench.cases import CASE_NAMES
from experiments.bench.suite import run_benchmark

DESCRIPTION = "Throughput of ifa_jax against its floor and against the PyTorch peers."
# The sections --only picks from; without it: cases and e2e (memory with --memory).
SECTIONS = ("cases", "e2e", "memory", "methods", "allocator", "metrics")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=DESCRIPTION)
    p.add_argument(
        "--quick",
        action="store_true",
        help="shrink ResNet-18 to 112x112, the 3-D batch to 2, 3 repeats",
    )
    p.add_argument(
        "--cases",
        default=",".join(CASE_NAMES),
        help=f"comma-separated subset of {','.join(CASE_NAMES)}",
    )
    p.add_argument("--json", help="write all results to this JSON file")
    p.add_argument("--repeats", type=int, help="timed repeats (default 5, quick 3)")
    p.add_argument(
        "--min-time",
        type=float,
        help="seconds per measurement; fast calls are repeated to reach it",
    )
    p.add_argument("--no-peers", action="store_true", help="skip the PyTorch peers")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end run")
    p.add_argument("--e2e-samples", type=int, help="digits for the end-to-end run")
    p.add_argument(
        "--torch-threads",
        default="",
        help="comma-separated torch thread counts for the peers (default: "
        "JAX's CPU thread count); e.g. 2,1 on a shared machine",
    )
    p.add_argument(
        "--memory", action="store_true", help="also measure peak RSS at --memory-sizes samples"
    )
    p.add_argument("--memory-sizes", type=int, nargs="+", default=[5000, 50000])
    p.add_argument(
        "--only",
        help=f"comma-separated sections to run, of {','.join(SECTIONS)} (methods: every "
        "registered CAM method against GradCAM on mnist256; allocator: the default and "
        "the tuned memory allocator, one process each; metrics: ifa_jax.metrics against "
        "pytorch-grad-cam and Quantus on the same inputs; these three only run when named "
        "here)",
    )
    p.add_argument(
        "--method-names",
        help="comma-separated methods for the methods section (default: all registered)",
    )
    p.add_argument(
        "--allocators",
        default=",".join(ALLOCATORS),
        help="comma-separated allocators for the allocator section, of "
        f"{','.join(ALLOCATORS)} (preloaded ones only where installed)",
    )
    p.add_argument(
        "--allocator-rounds", type=int, help="rounds of the allocator section (default 3)"
    )
    return p


def selected_sections(args: argparse.Namespace) -> set[str]:
    """The sections to run: --only's, else cases, e2e (unless --no-e2e), memory (--memory)."""
    if args.only is None:
        return {"cases", *(() if args.no_e2e else ("e2e",)), *(("memory",) if args.memory else ())}
    chosen = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = sorted(chosen - set(SECTIONS))
    if unknown or not chosen:
        raise ValueError(
            f"--only {args.only!r}: unknown or no section(s) {', '.join(unknown)}; "
            f"choose from {','.join(SECTIONS)}, e.g. --only methods"
        )
    return chosen


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    sections = selected_sections(args)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()] if "cases" in sections else []
    names = [m.strip() for m in (args.method_names or "").split(",") if m.strip()]
    run_benchmark(
        cases,
        quick=args.quick,
        repeats=args.repeats,
        min_time=args.min_time,
        peers=not args.no_peers,
        e2e="e2e" in sections,
        e2e_samples=args.e2e_samples,
        memory_sizes=args.memory_sizes if "memory" in sections else None,
        json_path=args.json,
        torch_threads=[int(t) for t in args.torch_threads.split(",") if t.strip()],
        methods=(names or True) if "methods" in sections else False,
        allocators=(
            [a.strip() for a in args.allocators.split(",") if a.strip()]
            if "allocator" in sections
            else None
        ),
        allocator_rounds=args.allocator_rounds,
        metric_peers="metrics" in sections,
    )
    return 0


if __name__ == "__main__":
    from experiments.tuned import restart_tuned

    restart_tuned()  # the CPU allocator tuning, as python -m experiments.benchmark has it
    sys.exit(main())

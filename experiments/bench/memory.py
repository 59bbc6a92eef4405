"""Peak RSS of the analysis pass per dataset size (:mod:`experiments.bench_memory`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence

# The repository root: experiments/bench/memory.py -> ../../
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def memory(sizes: Sequence[int] = (5000, 50000), batch: int = 256) -> list[dict]:
    """Peak RSS of the analysis pass per size, each in a fresh subprocess (bench_memory)."""
    from experiments import bench_memory

    rows = []
    for n in sizes:
        # Linux carries a parent's peak RSS into a child it forks and execs (ru_maxrss
        # survives execve), so this large process would inflate the child's number; a small
        # shell that forks the measured process in turn gives it a clean count.
        out = subprocess.run(
            [
                "sh",
                "-c",
                '"$0" "$@"; exit $?',
                sys.executable,
                "-m",
                bench_memory.__name__,
                "--one",
                str(n),
                "--batch",
                str(batch),
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    for r in rows:
        r["ratio_to_first"] = r["peak_rss_mib"] / rows[0]["peak_rss_mib"]
    return rows

"""The memory allocator set-up of the ``ifa-jax`` command, ``make demo`` and the benchmark.

XLA:CPU takes its large per-call buffers (a training step's 245 MB of temporaries, an
analysis step's 56 MB) from ``malloc``. With glibc's defaults each of them is above the
mmap threshold, or too large for a worker thread's arena, so every call maps fresh pages,
faults them in (a fifth of the CPU time goes to the kernel) and unmaps them again. The
tunables in :data:`TUNABLES` keep those buffers in one heap that is reused from call to
call: one arena for all threads (a thread arena cannot hold a block over 64 MiB and maps
it afresh whatever ``mmap_max`` says), no mmap, no trimming below 4 GiB, and the heap
grown 256 MiB at a time. The results are the same to the bit; only where the memory
comes from changes (docs/performance.md has the measurements).

glibc reads ``GLIBC_TUNABLES`` once, when the process starts, so the command re-executes
itself once with them (:func:`restart_tuned`). Nothing happens when:

* ``IFA_JAX_NO_MALLOC_TUNING`` is set (to anything but ``0`` or empty),
* ``GLIBC_TUNABLES`` is set already (the user's choice is kept),
* ``LD_PRELOAD`` names another allocator (jemalloc, tcmalloc, mimalloc: a name with
  "malloc" in it),
* the platform is not Linux, or the C library is not glibc 2.26 or newer,
* the process was restarted already (:data:`MARKER` is in its environment, which also
  stops a loop where the loader drops ``GLIBC_TUNABLES``, as it does for setuid programs),
* the program cannot be started again as it was (read from stdin, interactive, embedded).

This module imports nothing but the standard library, so that scripts can load it (see
``experiments/tuned.py``) and restart before JAX is imported. Library users set the
variable themselves before Python starts::

    export GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:\
glibc.malloc.trim_threshold=4294967296:glibc.malloc.top_pad=268435456

Examples:
    :func:`decide` is pure: the decision for a given environment, platform and glibc:

    >>> from ifa_jax.runner.allocator import OPT_OUT, TUNABLES, decide
    >>> decide({}, platform="darwin")
    (None, 'not Linux (darwin)')
    >>> decide({OPT_OUT: "1"}, platform="linux", glibc=(2, 35))
    (None, 'IFA_JAX_NO_MALLOC_TUNING is set')
    >>> environ, why = decide({}, platform="linux", glibc=(2, 35))
    >>> environ["GLIBC_TUNABLES"] == TUNABLES, why.startswith("restart with")
    (True, True)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

OPT_OUT = "IFA_JAX_NO_MALLOC_TUNING"
MARKER = "IFA_JAX_MALLOC_TUNED"
TUNABLES = ":".join(
    (
        "glibc.malloc.arena_max=1",
        "glibc.malloc.mmap_max=0",
        "glibc.malloc.trim_threshold=4294967296",
        "glibc.malloc.top_pad=268435456",
    )
)
# The malloc tunables (and GLIBC_TUNABLES itself) arrived in glibc 2.26.
MIN_GLIBC = (2, 26)
_UNKNOWN = object()


def glibc_version() -> tuple[int, int] | None:
    """``(major, minor)`` of the running glibc, or None when the C library is another."""
    try:
        name = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):
        return None
    parts = (name or "").split()
    if len(parts) != 2 or parts[0] != "glibc":
        return None
    try:
        major, minor = (int(p) for p in parts[1].split(".")[:2])
    except ValueError:
        return None
    return major, minor


def tuned_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``environ`` (default: this process's) with :data:`TUNABLES` and the
    :data:`MARKER`: the environment to start a tuned process with."""
    env = dict(os.environ if environ is None else environ)
    env["GLIBC_TUNABLES"] = TUNABLES
    env[MARKER] = "1"
    return env


def plain_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``environ`` without the tuning, another allocator or the marker (what an
    untuned process is started with, e.g. by the benchmark)."""
    env = dict(os.environ if environ is None else environ)
    for name in ("GLIBC_TUNABLES", "LD_PRELOAD", MARKER):
        env.pop(name, None)
    return env


def decide(
    environ: Mapping[str, str],
    *,
    platform: str = sys.platform,
    glibc: tuple[int, int] | None | object = _UNKNOWN,
) -> tuple[dict[str, str] | None, str]:
    """``(environment to restart with, or None, why)`` for a process with ``environ``.

    ``glibc`` is the C library's version (default: this process's, None for another C
    library). Pure: nothing is read but the arguments (and the glibc version).
    """
    if environ.get(MARKER):
        return None, f"restarted already ({MARKER} is set)"
    if environ.get(OPT_OUT, "") not in ("", "0"):
        return None, f"{OPT_OUT} is set"
    if not platform.startswith("linux"):
        return None, f"not Linux ({platform})"
    if "GLIBC_TUNABLES" in environ:
        return None, "GLIBC_TUNABLES is set already; it is kept"
    if "malloc" in environ.get("LD_PRELOAD", ""):
        return None, "another allocator is preloaded (LD_PRELOAD)"
    version = glibc_version() if glibc is _UNKNOWN else glibc
    if not isinstance(version, tuple) or version < MIN_GLIBC:
        return None, "the C library is not glibc 2.26 or newer"
    return tuned_environ(environ), f"restart with GLIBC_TUNABLES={TUNABLES}"


def _command_line() -> list[str] | None:
    """The command line that starts this program again, or None when there is none."""
    orig = list(getattr(sys, "orig_argv", []))
    if not sys.executable or not orig or sys.flags.interactive:
        return None
    if not sys.argv or sys.argv[0] in ("", "-"):  # read from stdin, or embedded
        return None
    return [sys.executable, *orig[1:]]


def restart_tuned(argv: Sequence[str] | None = None) -> None:
    """Re-execute this program once with :data:`TUNABLES` when :func:`decide` says so.

    ``argv`` is the command's own arguments as its ``main(argv)`` received them: only
    None (the program's command line) restarts; a list means a caller inside Python, whose
    process is not the command's to replace. Returns only when nothing is done (or the
    restart could not be made); otherwise this process is replaced and never returns.
    """
    if argv is not None:
        return
    env, _ = decide(os.environ)
    command = _command_line()
    if env is None or command is None:
        return
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    try:
        os.execve(command[0], command, env)
    except OSError:  # the interpreter cannot be started again: go on untuned
        return


__all__ = [
    "MARKER",
    "OPT_OUT",
    "TUNABLES",
    "decide",
    "glibc_version",
    "plain_environ",
    "restart_tuned",
    "tuned_environ",
]

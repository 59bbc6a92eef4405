"""Restart an experiment script with the CPU allocator tuning before JAX is imported.

``ifa_jax.runner.allocator`` (standard library only) is loaded from its file, without
importing the ``ifa_jax`` package (which imports JAX: seconds that a restart would throw
away). The scripts call :func:`restart_tuned` first thing under ``__main__``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType

NAME = "ifa_jax_allocator_standalone"


def allocator() -> ModuleType:
    """``ifa_jax/runner/allocator.py`` as a module, without importing ``ifa_jax``."""
    if NAME in sys.modules:
        return sys.modules[NAME]
    package = importlib.util.find_spec("ifa_jax")  # locates the package, runs nothing
    if package is None or package.origin is None:
        raise ModuleNotFoundError("ifa_jax is not importable; install it (pip install -e .)")
    path = os.path.join(os.path.dirname(package.origin), "runner", "allocator.py")
    spec = importlib.util.spec_from_file_location(NAME, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[NAME] = module
    spec.loader.exec_module(module)
    return module


def restart_tuned() -> None:
    """Re-execute this script once with the allocator tuning (see the allocator module)."""
    allocator().restart_tuned(None)

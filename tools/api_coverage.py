"""Check that every public module is in the API reference and every public name has a
docstring.

A public module is one of the package whose dotted name has no part starting with ``_``;
it is in the reference when a page under docs/api has a ``::: module`` line for it
(mkdocstrings then renders its documented members). A public name is a function or class
defined in such a module (not imported into it) whose name does not start with ``_``,
and each public method of such a class.

Usage: python tools/api_coverage.py. Prints each problem and exits 1 when there is one.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import sys
from pathlib import Path
from types import ModuleType

API_DIR = Path(__file__).resolve().parent.parent / "docs" / "api"


def public_modules(package: str = "ifa_jax") -> list[str]:
    """Dotted names of the package and its public submodules."""
    root = importlib.import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(root.__path__, f"{package}."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


def referenced_modules(api_dir: Path = API_DIR) -> set[str]:
    """The modules named by a ``::: module`` line of a page under ``api_dir``."""
    found = set()
    for page in sorted(api_dir.glob("*.md")):
        found.update(re.findall(r"^:::\s+([\w.]+)\s*$", page.read_text(), flags=re.M))
    return found


def undocumented(module: ModuleType) -> list[str]:
    """Public functions, classes and methods defined in ``module`` without a docstring."""
    missing = []
    for name, obj in vars(module).items():
        if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        if getattr(obj, "__module__", None) != module.__name__:
            continue  # imported, documented where it is defined
        if not (obj.__doc__ or "").strip():
            missing.append(f"{module.__name__}.{name}")
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_") or not inspect.isfunction(member):
                    continue
                if not (member.__doc__ or "").strip():
                    missing.append(f"{module.__name__}.{name}.{attr}")
    return missing


def problems(package: str = "ifa_jax", api_dir: Path = API_DIR) -> list[str]:
    """Every module missing from the reference, and every undocumented public name."""
    modules = public_modules(package)
    referenced = referenced_modules(api_dir)
    found = [f"module {m} is in no page of {api_dir}" for m in modules if m not in referenced]
    found += [f"::: {m} names no public module" for m in sorted(referenced - set(modules))]
    for name in modules:
        found += [f"{n} has no docstring" for n in undocumented(importlib.import_module(name))]
    return found


def main() -> int:
    found = problems()
    for problem in found:
        print(problem)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

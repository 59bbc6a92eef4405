"""Check that the imports inside ifa_jax point down the layer order.

The intended flow is probes -> cams -> analysis -> scale/decompose/diagnostics/metrics/
consistency -> runner. Each module has a layer (LAYERS below; a package's entry covers
its submodules, e.g. "ifa_jax.metrics" covers ifa_jax.metrics.subsets), and a module may
import only modules of a LOWER OR EQUAL layer:

    0  _checks, _stats, io          shared checks and helpers (no ifa_jax imports above 0)
    1  inputs, modules              datasets in memory and batching; tappable modules
    2  probes                       activations and gradients (the probes subpackage:
                                    Flax, Equinox, Haiku, functions; token grids; LeGrad)
    3  cams                         CAMs from A and G: method types, the method table,
                                    the method families, reductions across layers
    4  explaining                   probe + CAM in one call (explain, forward weights);
                                    smoothed CAMs (augmentation, noise, eigen) and SESS;
                                    FullGrad; guided backprop and Guided GradCAM
    5  analysis                     the streaming analysis pass
    6  scale, decompose, metrics,   computed from the analysis' outputs; dff: concepts
       dff                          by NMF of a layer's activations, streamed like it
    7  diagnostics, consistency, plots
    8  ifa_jax (the package's __init__: the public facade)
    9  runner                       the application: datasets, reference models,
                                    training and the experiment runner, on top of
                                    everything (the library never imports it)

The library (layers 0-8) never imports the application, ``ifa_jax.runner`` (layer 9), so
``import ifa_jax`` needs none of the application's packages. No module imports another
module's private name (``from ifa_jax.cams import _x``): internals shared across modules
live in private modules (``ifa_jax._taps``, ``ifa_jax._checks``), whose names are theirs
to share.

Every import counts, including imports inside functions. ``from ifa_jax import x`` is an
edge to the module ifa_jax.x when there is one, else to the facade ``ifa_jax``. A module
that is not in LAYERS is an error too (place a new module in the order).

Usage: python tools/import_graph.py [package dir]. Prints each violating edge and exits 1
when there is one; exits 0 otherwise.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = "ifa_jax"
LAYERS = {
    "ifa_jax._checks": 0,
    "ifa_jax._stats": 0,
    "ifa_jax.io": 0,
    "ifa_jax._taps": 0,
    "ifa_jax.inputs": 1,
    "ifa_jax.modules": 1,
    "ifa_jax.probes": 2,
    "ifa_jax.cams": 3,
    "ifa_jax._options": 4,
    "ifa_jax.explaining": 4,
    "ifa_jax.analysis": 5,
    "ifa_jax.scale": 6,
    "ifa_jax.decompose": 6,
    "ifa_jax.dff": 6,
    "ifa_jax.metrics": 6,
    "ifa_jax.diagnostics": 7,
    "ifa_jax.consistency": 7,
    "ifa_jax.plots": 7,
    "ifa_jax": 8,
    "ifa_jax.runner": 9,
}

# {module: {imported module: line of the first import}}
Graph = dict[str, dict[str, int]]


def module_names(package_dir: Path) -> dict[str, Path]:
    """{dotted module name: file} for every .py file under the package directory."""
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def build_graph(package_dir: Path) -> Graph:
    """The import edges between the package's own modules."""
    modules = module_names(package_dir)
    graph: Graph = {}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        edges = graph.setdefault(name, {})
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's own package, up level - 1
                    pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                    pkg = pkg[: len(pkg) - node.level + 1]
                    base = ".".join(pkg + ([base] if base else []))
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            for target in targets:
                while target and target not in modules:  # import a.b.c of a module a.b
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.setdefault(target, node.lineno)
    return graph


def layer_of(module: str, layers: dict[str, int]) -> int | None:
    """The layer of a module: its own entry, else its nearest declared package's (the
    root package's entry covers only its __init__)."""
    name = module
    while name:
        if name in layers and (name == module or name != ROOT):
            return layers[name]
        name = name.rpartition(".")[0]
    return None


def check(graph: Graph, layers: dict[str, int] = LAYERS) -> list[str]:
    """One line per violating edge (an import of a higher layer) and per module with no
    layer; empty when the graph follows the order."""
    problems = []
    for module in sorted(graph):
        if layer_of(module, layers) is None:
            problems.append(f"{module}: not in the layer order; add it to LAYERS")
    for module, edges in sorted(graph.items()):
        src = layer_of(module, layers)
        for target, line in sorted(edges.items()):
            dst = layer_of(target, layers)
            if src is not None and dst is not None and dst > src:
                problems.append(f"{module}:{line} (layer {src}) imports {target} (layer {dst})")
    return problems


def private_imports(package_dir: Path) -> list[str]:
    """One line per ``from ifa_jax.x import _name`` where ``x`` is not a private module:
    internals shared across modules live in private modules (``ifa_jax._taps``), never
    as another module's private names."""
    problems = []
    for name, path in module_names(package_dir).items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.ImportFrom) and node.module and not node.level):
                continue
            parts = node.module.split(".")
            if parts[0] != ROOT or any(part.startswith("_") for part in parts):
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    problems.append(
                        f"{name}:{node.lineno} imports the private name {node.module}."
                        f"{alias.name}; share it through a private module instead"
                    )
    return problems


def main(argv: list[str]) -> int:
    package_dir = Path(argv[0]) if argv else Path(__file__).resolve().parents[1] / ROOT
    problems = check(build_graph(package_dir)) + private_imports(package_dir)
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} import(s) against the rules (see tools/import_graph.py)")
        return 1
    print(f"import graph of {package_dir.name} follows the layer order")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

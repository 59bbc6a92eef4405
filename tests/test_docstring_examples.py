"""The ``>>>`` examples in the docstrings run and print what they show, and every public
module has at least one (but for the modules of NOT_YET)."""

from __future__ import annotations

import doctest
import importlib
import io
import sys
from types import ModuleType

import pytest

from tests.conftest import load_tool

OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

# Public modules without an example yet; an entry covers a package's submodules too (a
# module split into a package stays listed). This set only shrinks: an entry leaves it
# when every module it covers has an example (the test below fails while such an entry
# is still listed). Every public module has one now, so it is empty; it stays for the
# next module that cannot have one at once.
NOT_YET: set[str] = set()


public_modules = load_tool("api_coverage").public_modules  # the modules it documents


def examples(module: ModuleType) -> list[doctest.DocTest]:
    """The module's docstring tests that hold at least one example."""
    tests = doctest.DocTestFinder().find(module, module.__name__)
    return [t for t in tests if t.examples]


def run_examples(module: ModuleType) -> tuple[int, str]:
    """Run the module's examples: (number of failures, doctest's report of them)."""
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    report = io.StringIO()
    for test in examples(module):
        runner.run(test, out=report.write)
    return runner.failures, report.getvalue()


MODULES = public_modules()


@pytest.mark.parametrize("name", MODULES)
def test_the_examples_run(name):
    failures, report = run_examples(importlib.import_module(name))
    assert failures == 0, f"{name}: {failures} failing example(s)\n{report}"


def covered(name: str, entry: str) -> bool:
    """Whether the NOT_YET entry ``entry`` covers the module ``name``."""
    return name == entry or name.startswith(f"{entry}.")


def test_every_public_module_has_an_example_but_those_not_yet_done():
    without = {n for n in MODULES if not examples(importlib.import_module(n))}
    missing = {n for n in without if not any(covered(n, e) for e in NOT_YET)}
    assert not missing, f"public modules without a >>> example: {sorted(missing)}"
    done = {e for e in NOT_YET if not any(covered(n, e) for n in without)}
    assert not done, f"these have examples now, remove them from NOT_YET: {sorted(done)}"


def test_a_wrong_example_fails(tmp_path, monkeypatch):
    (tmp_path / "planted_examples.py").write_text(
        '"""A planted module.\n\n>>> 1 + 1\n2\n"""\n\n\n'
        'def twice(x):\n    """Twice x.\n\n    >>> twice(2)\n    5\n    """\n'
        "    return 2 * x\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        module = importlib.import_module("planted_examples")
    finally:
        sys.modules.pop("planted_examples", None)
    assert len(examples(module)) == 2
    failures, report = run_examples(module)
    assert failures == 1
    assert "twice(2)" in report and "Expected:\n    5\nGot:\n    4" in report

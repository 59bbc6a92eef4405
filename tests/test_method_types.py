"""Pyright checks a method's function against its kind's call signature (cams.LayerFn,
cams.InputFn, ...) where the entry is built."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYRIGHT = Path(sys.executable).with_name("pyright")

SNIPPET = """
from ifa_jax import cams


def two_inputs(A, G):
    return A


def local(inputs: cams.CamInputs, *, eps: float = 1.0):
    return inputs.activations


def of_the_model(model: cams.ModelInputs, *, scale: float = 1.0):
    return scale * model.x[..., 0]


cams.LayerMethod("bad", two_inputs)  # line 17: not a LayerFn
cams.LayerMethod("good", local)
cams.InputMethod("bad", local)  # line 19: a LayerFn is not an InputFn
cams.InputMethod("good", of_the_model)
cams.LayersMethod("bad", of_the_model)  # line 21: nor is an InputFn a LayersFn
"""


@pytest.mark.skipif(not PYRIGHT.exists() and not shutil.which("pyright"), reason="no pyright")
def test_pyright_checks_a_methods_signature_by_kind(tmp_path):
    (tmp_path / "methods.py").write_text(SNIPPET)
    config = {"include": ["methods.py"], "extraPaths": [str(ROOT)], "pythonVersion": "3.11"}
    (tmp_path / "pyrightconfig.json").write_text(json.dumps(config))
    pyright = str(PYRIGHT) if PYRIGHT.exists() else "pyright"
    done = subprocess.run(
        [pyright, "--outputjson", "--pythonpath", sys.executable],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(done.stdout)
    errors = [d for d in report["generalDiagnostics"] if d["severity"] == "error"]
    assert sorted(d["range"]["start"]["line"] + 1 for d in errors) == [17, 19, 21], errors
    assert all('parameter "fn"' in d["message"] for d in errors), errors

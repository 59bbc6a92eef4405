"""notebooks/quickstart.ipynb runs top to bottom (executed with nbclient)."""

from __future__ import annotations

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "quickstart.ipynb")


@pytest.mark.slow
def test_quickstart_notebook_executes():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # The configuration cell sets the epochs; fail loudly if that hook moves.
    assert "EPOCHS = 15" in nb.cells[1].source, "the notebook's EPOCHS line moved; update this"
    nb.cells[1].source = nb.cells[1].source.replace("EPOCHS = 15", "EPOCHS = 3")
    # Run from the repository root, so ifa_jax imports even when it is not installed.
    nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": ROOT}}
    ).execute()
    text = "".join(
        o.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for o in cell.get("outputs", [])
    )
    assert "validation accuracy" in text and "Pearson r" in text
    assert any(
        o.get("output_type") == "display_data"
        for cell in nb.cells
        if cell.cell_type == "code"
        for o in cell.get("outputs", [])
    )

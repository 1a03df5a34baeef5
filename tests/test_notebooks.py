"""The notebooks are committed without outputs: executed copies would bloat diffs and go stale (CI runs them)."""

from __future__ import annotations

import json

import pytest

from conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_the_notebooks_are_found():
    assert {"01_data.ipynb", "02_schedulers.ipynb", "03_results.ipynb"} <= {path.name for path in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_is_stripped(path):
    cells = json.loads(path.read_text())["cells"]
    code = [cell for cell in cells if cell["cell_type"] == "code"]
    assert code, f"{path.name} has no code cells"
    for index, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        where = f"{path.name}, cell {index}: clear all outputs (Jupyter: Edit > Clear Outputs of All Cells), then save"
        assert cell["outputs"] == [], where
        assert cell["execution_count"] is None, where

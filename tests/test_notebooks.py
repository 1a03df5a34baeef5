"""The notebooks are committed without outputs: executed copies would bloat diffs and go stale (CI runs them).

Also the pre-commit hook (.pre-commit-config.yaml): `python3 tests/test_notebooks.py [NOTEBOOK...]` prints each
cell that still holds outputs and exits 1; it imports neither torch nor the test fixtures.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def unstripped(path: Path) -> list[str]:
    """One line for each code cell of `path` that holds outputs or an execution count; [] for a clean notebook."""
    cells = json.loads(path.read_text())["cells"]
    return [
        f"{path.name}, cell {index}: clear all outputs (Jupyter: Edit > Clear Outputs of All Cells), then save"
        for index, cell in enumerate(cells)
        if cell["cell_type"] == "code" and (cell["outputs"] != [] or cell["execution_count"] is not None)
    ]


def test_the_notebooks_are_found():
    assert {"01_data.ipynb", "02_schedulers.ipynb", "03_results.ipynb"} <= {path.name for path in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_is_stripped(path):
    cells = json.loads(path.read_text())["cells"]
    assert [cell for cell in cells if cell["cell_type"] == "code"], f"{path.name} has no code cells"
    assert unstripped(path) == []


def test_a_notebook_with_outputs_is_caught(tmp_path):
    notebook = json.loads(NOTEBOOKS[0].read_text())
    index = next(index for index, cell in enumerate(notebook["cells"]) if cell["cell_type"] == "code")
    notebook["cells"][index]["execution_count"] = 1
    (executed := tmp_path / "executed.ipynb").write_text(json.dumps(notebook))
    assert unstripped(executed) == [
        f"executed.ipynb, cell {index}: clear all outputs (Jupyter: Edit > Clear Outputs of All Cells), then save"
    ]
    notebook["cells"][index] |= {"execution_count": None, "outputs": [{"output_type": "stream", "text": "1"}]}
    executed.write_text(json.dumps(notebook))
    assert len(unstripped(executed)) == 1


if __name__ == "__main__":
    if found := [line for path in sys.argv[1:] or NOTEBOOKS for line in unstripped(Path(path))]:
        sys.exit("\n".join(found))  # to stderr, exit status 1

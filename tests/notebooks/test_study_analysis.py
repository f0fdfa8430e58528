"""The analysis notebook executes against a real (tiny) study and shows its pictures."""

from __future__ import annotations

import os

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO, TINY


@pytest.mark.slow
def test_notebook_executes_against_a_tiny_study(tmp_path, run_cli):
    out = tmp_path / "study"
    sets = [a for o in TINY + ["search.num_samples=3", "search.scheduler=none"] for a in ("--set", o)]
    proc = run_cli("study", "--output", str(out), *sets)
    assert proc.returncode == 0, proc.stderr[-3000:]

    nb = nbformat.read(REPO / "notebooks" / "study_analysis.ipynb", as_version=4)
    os.environ["CUTMIX_STUDY_DIR"] = str(out)
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        os.environ.pop("CUTMIX_STUDY_DIR", None)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # alpha x p map, isolation plots, learning curves
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "3 trials in" in text and "3 MLflow child runs" in text

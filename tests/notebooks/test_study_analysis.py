"""The analysis notebook executes against a real (tiny) study and shows its pictures."""

from __future__ import annotations

import os

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

from tests.helpers.cli import REPO


@pytest.mark.slow
def test_notebook_executes_against_a_tiny_study(shared_study, tmp_path):
    # The session's tiny ASHA study (tests/helpers/pipeline.py). Both architectures searched, as the notebook is
    # written for: one alpha x p map each. Checked here so that a change of its seed cannot quietly drop one.
    assert shared_study.returncode == 0, shared_study.stderr[-3000:]
    out = shared_study.out
    frame = pd.read_parquet(out / "results.parquet")
    assert set(frame["model.arch"]) == {"cnn", "resnet20"}, frame["model.arch"]
    n = len(frame)

    nb = nbformat.read(REPO / "notebooks" / "study_analysis.ipynb", as_version=4)
    os.environ["CUTMIX_STUDY_DIR"] = str(out)
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        os.environ.pop("CUTMIX_STUDY_DIR", None)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    # An alpha x p map per architecture searched, the isolation and best-so-far plots (study.plots), the curves.
    assert len(images) >= 4
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert f"{n} trials in" in text and f"{n} MLflow child runs" in text
    # The defaults go first (p=0.5 mixes, p=0 does not): both groups of the mixing-vs-baseline summary appear.
    summary = [o["data"]["text/plain"] for o in outputs if "count" in o.get("data", {}).get("text/plain", "")]
    assert summary and "mixing" in summary[-1] and "baseline" in summary[-1], summary

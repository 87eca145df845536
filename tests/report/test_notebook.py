"""notebooks/results.ipynb runs top to bottom on a run folder and draws what the report draws."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers.report_fixtures import make_run

from autointerp.report.data import agreement, find_scorers

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "results.ipynb"


def _kernel_with_this_python(folder: Path) -> str:
    """A kernelspec whose python is the one running the tests (the venv's), whatever else is installed."""
    name = "autointerp-test"
    spec = folder / "kernels" / name
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "autointerp test",
                "language": "python",
            }
        )
    )
    return name


@pytest.mark.slow
def test_results_notebook_reproduces_the_report(tiny_llama, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    run = make_run(tmp_path / "run", tiny_llama)
    monkeypatch.setenv("AUTOINTERP_RUN", str(run))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    kernel = _kernel_with_this_python(tmp_path / "jupyter")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    assert any("autointerp.Run(RUN)" in c.source for c in nb.cells)  # it reads the run through the Python API
    nb.cells.append(
        nbformat.v4.new_code_cell(
            'import json\nimport sys\nprint(json.dumps({"executable": sys.executable, "run": str(RUN), '
            '"histograms": len(hist_axes), "latents": len(table), "agreement": agree.to_dict("records"), '
            '"quantile_means": quantile_means, "table_columns": list(table.columns)}))'
        )
    )
    NotebookClient(
        nb, kernel_name=kernel, timeout=300, resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    ).execute()

    facts = json.loads(nb.cells[-1].outputs[0]["text"])
    assert facts["executable"] == sys.executable and facts["run"] == str(run)
    results = pd.read_parquet(run / "results.parquet")
    scorers = find_scorers(results, ["detection", "fuzzing"])
    assert facts["latents"] == len(results)
    assert facts["histograms"] == sum(len(s.shown) for s in scorers) == 4
    [expected] = agreement(results, scorers)
    [got] = facts["agreement"]
    assert got["latents"] == expected.n
    assert got["pearson"] == pytest.approx(expected.pearson) and got["spearman"] == pytest.approx(expected.spearman)
    # accuracy per activation quantile, for the two Yes/No scorers and their shuffled-label controls
    assert set(facts["quantile_means"]) == {f"{s} {k}" for s in ("detection", "fuzzing") for k in (s, "control")}
    for scorer in ("detection", "fuzzing"):
        for key, prefix in ((f"{scorer} {scorer}", f"{scorer}_"), (f"{scorer} control", f"{scorer}_control_")):
            expected = [results[f"{prefix}quantile_accuracy_{q}"].mean() for q in range(10)]
            assert facts["quantile_means"][key] == pytest.approx(expected)
    assert "detection_control_balanced_accuracy" in facts["table_columns"]
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 3  # the histograms, the accuracy per quantile and the scatter plots

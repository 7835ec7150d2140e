"""The notebooks run end to end on the shared data and are committed without outputs."""

import os
from pathlib import Path

import nbformat
import pytest
from conftest import SHARED

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


def test_three_notebooks_without_outputs():
    assert [p.stem for p in NOTEBOOKS] == [
        "01_data_exploration",
        "02_model_development",
        "03_evaluation",
    ]
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs"


@pytest.mark.real_data
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, fer2013_subset, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    # The notebooks prepare into $FERKIT_DATA/prepared/ when a dataset is missing. A
    # small real subset prepared once for this session is linked there instead: FER2013
    # (80 train faces per class, ~50 val) and FER+'s val of the same val faces.
    prepared = tmp_path / "data" / "prepared"
    prepared.mkdir(parents=True)
    os.symlink(fer2013_subset.fer2013.out_dir, prepared / "fer2013")
    os.symlink(fer2013_subset.ferplus.out_dir, prepared / "ferplus")
    monkeypatch.setenv("FERKIT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("FERKIT_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("FERKIT_SHARED", str(SHARED))
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()  # raises CellExecutionError, with the failing cell, on any error
    images = sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert images >= 2, f"{path.name} drew {images} figures"
    # It read the linked subsets: nothing else was prepared.
    assert sorted(p.name for p in prepared.iterdir()) == ["fer2013", "ferplus"]
    assert all(p.is_symlink() for p in prepared.iterdir())

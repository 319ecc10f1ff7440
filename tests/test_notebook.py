"""The quickstart notebook runs top to bottom with the shipped model (outputs stay stripped)."""

from __future__ import annotations

from pathlib import Path

import pytest

from geoseg.model import default_model_path

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


def test_notebook_is_committed_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the quickstart has no code cells"
    assert all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.skipif(not default_model_path().exists(), reason="no shipped default model")
def test_quickstart_notebook_executes(tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2, "expected the side-by-side figure and the GeoPackage plot"
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "landcover" in text and "polygons" in text

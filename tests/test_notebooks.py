"""The notebooks: committed without outputs, and each one runs from top to bottom.

Execution uses the real Gemma 3 270M (marked ``slow``): every notebook is copied into a temporary
directory and run there by a ``python3`` kernel whose working directory is that directory, so
nothing is written into the repository. A cell that raises fails the test with the cell's
traceback.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = (
    "01_quickstart_transformer_lens.ipynb",
    "02_nnsight.ipynb",
    "03_compose_attach_steer_patch.ipynb",
    "04_monitor.ipynb",
)
CELL_TIMEOUT_S = 300


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def test_the_notebooks_are_there():
    names = {p.name for p in NOTEBOOKS}
    missing = [n for n in EXPECTED if n not in names]
    assert not missing, f"notebooks/ lacks {missing}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_committed_notebook_has_no_outputs(path: Path):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, (
        f"{path.name}: code cells {dirty} carry outputs or an execution count; strip them "
        "(Jupyter: Edit > Clear Outputs of All Cells, then save) before committing"
    )
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    assert any(cell.cell_type == "markdown" for cell in nb.cells)


def _kernel_env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_DATASETS_OFFLINE"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["MPLBACKEND"] = "Agg"
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    # the kernel imports the repository's lensprobe even without an editable install
    root = str(NOTEBOOK_DIR.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.setdefault("IPYTHONDIR", str(workdir / ".ipython"))
    return env


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from jupyter_client.kernelspec import NATIVE_KERNEL_NAME

    copy = tmp_path / path.name
    shutil.copyfile(path, copy)
    nb = nbformat.read(copy, as_version=4)
    for key, value in _kernel_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name=NATIVE_KERNEL_NAME,  # "python3": the interpreter running the tests
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's working directory
        allow_errors=False,
    )
    before = set(os.listdir(NOTEBOOK_DIR))
    start = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:
        pytest.fail(f"{path.name} failed:\n{err}", pytrace=False)
    finally:
        seconds = time.perf_counter() - start
        sys.stderr.write(f"\n{path.name}: {seconds:.0f} s\n")
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.get("output_type") == "error"
    ]
    assert not errors
    # every code cell ran, and the widgets rendered as HTML with their JavaScript inlined
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code_cells)
    html = [
        out["data"]["text/html"]
        for c in code_cells
        for out in c.outputs
        if "text/html" in out.get("data", {})
    ]
    assert html, f"{path.name} displayed no HTML (widgets or tables)"
    assert set(os.listdir(NOTEBOOK_DIR)) == before, "the notebook wrote into notebooks/"
    # no warning reaches the reader (e.g. tqdm's "IProgress not found" without ipywidgets)
    stderr = "".join(
        out.get("text", "")
        for c in code_cells
        for out in c.outputs
        if out.get("output_type") == "stream" and out.get("name") == "stderr"
    )
    assert "Warning" not in stderr and "IProgress" not in stderr, stderr[-2000:]

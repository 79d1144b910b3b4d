"""The notebooks in notebooks/ run top to bottom (nbclient) on the demo suite, with small token budgets.

They run on the tiny suite that `make demo` builds in the `tiny_demo` fixture (a temporary cache that
shares the real cache's embedded model and corpus), so a test run never writes to the user's cache and
runs the same everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = pytest.mark.notebooks

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
BUDGET = {"NB_TOKENS": "512", "NB_LM_TOKENS": "0"}  # no delta LM loss: one LM rerun per SAE and mode
CELL_TIMEOUT_S = 300


@pytest.fixture(scope="session")
def notebook_env(tiny_demo) -> dict[str, str]:
    """The environment the notebooks' kernel runs in: small budgets and the tiny demo suite's $SAE_CACHE."""
    cache, _, _ = tiny_demo
    return {**os.environ, **BUDGET, "SAE_CACHE": str(cache)}


def test_notebooks_are_committed_without_outputs():
    assert len(NOTEBOOKS) == 3
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code and all(not c.outputs and c.execution_count is None for c in code), path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, notebook_env, tmp_path):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=notebook_env)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    assert last.execution_count is not None and last.outputs  # ran to the end and drew something


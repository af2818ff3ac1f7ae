"""The notebooks run end to end (tiny settings: the quick preset, 1 epoch of 2 steps)."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


def _no_outputs(path: Path) -> bool:
    nb = nbformat.read(path, as_version=4)
    return not any(c.get("outputs") for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb")))
def test_notebooks_are_committed_without_outputs(name):
    assert _no_outputs(ROOT / "notebooks" / name)


@pytest.mark.slow
def test_training_notebook_runs_end_to_end(real_data_dir, tumor_free_dir, tmp_path, monkeypatch):
    logs = tmp_path / "logs"
    monkeypatch.setenv("BT_PRESET", "quick")
    monkeypatch.setenv("BT_EPOCHS", "1")
    monkeypatch.setenv("BT_STEPS", "2")
    monkeypatch.setenv("BT_VAL_STEPS", "1")
    monkeypatch.setenv("BT_EVAL_LIMIT", "3")
    monkeypatch.setenv("BT_LOGS", str(logs))
    monkeypatch.setenv("BRAIN_TUMOR_DATA", str(real_data_dir))
    monkeypatch.setenv("BT_TUMOR_FREE", str(tumor_free_dir))
    nb = nbformat.read(ROOT / "notebooks" / "01_train.ipynb", as_version=4)
    NotebookClient(nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    (run,) = [d for d in logs.iterdir() if d.is_dir()]
    assert (run / "mask_rcnn_quick_0001.h5").is_file()
    metrics = json.loads((run / "eval_val" / "metrics.json").read_text())
    assert metrics["dataset"]["n_extra_tumor_free_images"] == 3  # held-out slices, EVAL_LIMIT of them
    assert metrics["curves"]["threshold"] is not None and (run / "eval_val" / "threshold_curves.png").is_file()
    assert "TUMOR_FREE_DIRS" in (run / "config.toml").read_text() and str(tumor_free_dir) in (run / "config.toml").read_text()
    images = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                 if "image/png" in o.get("data", {}))
    assert images >= 3  # data figure, loss curves, evaluation figures


def test_the_training_notebook_is_what_its_generator_writes():
    """``tools/make_train_notebook.py`` is the notebook's source: an edit made in the notebook alone
    would be lost the next time it runs."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_train_notebook", ROOT / "tools" / "make_train_notebook.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    built = tool.build()
    committed = nbformat.read(ROOT / "notebooks" / "01_train.ipynb", as_version=4)
    assert [(c.cell_type, c.source) for c in built.cells] == [(c.cell_type, c.source) for c in committed.cells]
    assert [c.id for c in committed.cells] == [f"cell-{i:02d}" for i in range(len(committed.cells))]  # stable ids

"""nbval over the tutorial chapters, in order, on a staged copy of the repository.

The chapters write to ``../tutorial_outputs``; running them on a copy of ``notebooks/``
beside links to the real ``demo_data/`` and ``mlcubes/`` keeps the repository clean and
proves each chapter runs top to bottom with its default parameters, exactly as a reader
in JupyterLab would run it.

nbval runs with ``--nbval-lax``: every cell must run without error, and the cells marked
for checking (tag ``nbval-check-output``, or a first line ``# NBVAL_CHECK_OUTPUT``) must
also reproduce the output stored in the notebook, after the substitutions of
``tests/nbval_sanitize.cfg``. Record a marked cell's output with ``make record-outputs``;
``cxr_tutorial/chapters.py`` says more.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import onnx
import yaml

from cxr_tutorial.chapters import (
    list_chapters,
    number_checked_cells,
    output_is_checked,
    stage_tutorial,
)

NBVAL = [sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q",
         "--nbval-cell-timeout=600"]


def _assert_same_weights(trained: Path, shipped: Path) -> None:
    """The chapter, run with its defaults, reproduces the shipped weights exactly."""
    import keras

    new, old = keras.saving.load_model(trained), keras.saving.load_model(shipped)
    pairs = list(zip(new.get_weights(), old.get_weights(), strict=True))
    assert pairs and all(np.array_equal(a, b) for a, b in pairs), (
        "04_train no longer reproduces the shipped weights bit for bit; if the change is "
        "intended, retrain with `cxr-tutorial run --mlcube mlcubes/model_custom_cnn --task "
        "train` and replace workspace/additional_files/weights.keras"
    )


def _nbval(stage: Path, root: Path, *paths: str) -> subprocess.CompletedProcess:
    """Run nbval on a staged tutorial, comparing the checked cells' stored outputs."""
    number_checked_cells(stage / "notebooks")
    return subprocess.run(
        [*NBVAL, f"--nbval-sanitize-with={root / 'tests' / 'nbval_sanitize.cfg'}", *paths],
        cwd=stage, capture_output=True, text=True, timeout=1800,
    )


def test_every_chapter_runs_top_to_bottom(root: Path, tmp_path: Path):
    stage = stage_tutorial(root, tmp_path / "tutorial").parent
    chapters = list_chapters(stage / "notebooks")
    # Reading order is the numbering: the index first, then 01, 02... with no gap, each
    # chapter after the ones whose outputs it reads.
    assert [c.number for c in chapters] == list(range(len(chapters)))
    assert chapters[0].name == "00_index"
    assert [c.name for c in chapters[1:7]] == ["01_prepare", "02_sanity_check",
                                               "03_statistics", "04_train", "05_infer",
                                               "06_evaluate"]
    # nbval runs the files in the order given, so the chapters run in reading order.
    result = _nbval(stage, root, *(f"notebooks/{c.path.name}" for c in chapters))
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert "passed" in result.stdout
    outputs = stage / "tutorial_outputs"
    results = yaml.safe_load((outputs / "results.yaml").read_text())
    assert results["n_cases"] == 16 and results["overall"]["auc_macro_n_classes"] == 2
    shipped = root / "mlcubes" / "model_custom_cnn" / "workspace" / "additional_files"
    _assert_same_weights(outputs / "trained_weights" / "weights.keras",
                         shipped / "weights.keras")
    # Same weights, same export: the graph infer runs is reproduced byte for byte too (the
    # metadata differs: it holds the .keras file's SHA-256, and that file its save time).
    trained, ours = (onnx.load(path / "weights.onnx") for path in (outputs / "trained_weights",
                                                                    shipped))
    assert trained.graph.SerializeToString() == ours.graph.SerializeToString()
    # Chapter 7 showed a failing test; chapter 8 ran both models at the three sites.
    assert "Compatibility test failed" in (outputs / "compatibility_test_broken"
                                           / "report.html").read_text()
    summary = yaml.safe_load((outputs / "federated" / "run" / "owner" / "benchmark.yaml")
                             .read_text())
    assert len(summary["models"]) == 2 and len(summary["sites"]) == 3
    assert all(cell["status"] != "failed" for row in summary["table"].values()
               for cell in row.values())
    # Nothing was written next to the real notebooks or data.
    assert not (root / "tutorial_outputs").exists() or os.environ.get("CXR_KEEP_OUTPUTS")


def test_a_checked_output_that_changes_fails_nbval(root: Path, tmp_path: Path):
    """The mechanism works: the index's checked cell is compared, not only executed."""
    stage = stage_tutorial(root, tmp_path / "tutorial").parent
    index = stage / "notebooks" / "00_index.ipynb"
    nb = nbformat.read(index, as_version=4)
    checked = [c for c in nb.cells if c.cell_type == "code" and output_is_checked(c)]
    assert checked and all(c.outputs for c in checked), "00_index stores no checked output"
    stored = checked[0].outputs[0]
    assert "demo data: 16 labelled images, 16 of them present" in stored.text
    stored.text = stored.text.replace("16 of them present", "15 of them present")
    nbformat.write(nb, index)
    result = _nbval(stage, root, "notebooks/00_index.ipynb")
    assert result.returncode != 0
    assert "Cell outputs differ" in result.stdout and "15 of them" in result.stdout

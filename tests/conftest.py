"""Shared fixtures: an isolated Jupyter/Keras/matplotlib home and small raw data sets."""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from factories import write_dicom, write_png

ROOT = Path(__file__).resolve().parent.parent
_HOME = Path(tempfile.mkdtemp(prefix="cxr-tutorial-tests-"))


def pytest_configure(config: pytest.Config) -> None:
    """Point every tool's state folder at a temporary one, so runs leave nothing behind."""
    for var, sub in {
        "JUPYTER_CONFIG_DIR": "jupyter-config",
        "JUPYTER_DATA_DIR": "jupyter-data",
        "JUPYTER_RUNTIME_DIR": "jupyter-runtime",
        "IPYTHONDIR": "ipython",
        "KERAS_HOME": "keras",
        "MPLCONFIGDIR": "matplotlib",
    }.items():
        os.environ[var] = str(_HOME / sub)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ["MPLBACKEND"] = "Agg"


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def root() -> Path:
    """The repository folder."""
    return ROOT


@pytest.fixture(scope="session")
def prep_parameters() -> Path:
    """The Data Preparator's shipped parameters file."""
    return ROOT / "mlcubes" / "data_preparator" / "workspace" / "parameters.yaml"


def write_labels(folder: Path, rows: list[tuple[str, str]]) -> Path:
    """Write a raw labels.csv with the default column names."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["Image ID", "Label"])
        writer.writerows(rows)
    return folder


@pytest.fixture()
def raw_site(tmp_path: Path) -> tuple[Path, Path]:
    """A small raw site: 6 images in three formats, two classes, with labels."""
    images = tmp_path / "raw" / "images"
    images.mkdir(parents=True)
    rows = []
    for i in range(6):
        label = "normal" if i % 2 else "pneumonia"
        if i < 2:
            name = f"scan{i}.dcm"
            write_dicom(images / name, seed=i, photometric="MONOCHROME1" if i else "MONOCHROME2")
        elif i < 4:
            name = f"scan{i}"  # DICOM without extension, RLE compressed
            write_dicom(images / name, seed=i, compress=True)
        else:
            name = f"scan{i}.png"
            write_png(images / name, seed=i)
        rows.append((name, label))
    labels = write_labels(tmp_path / "raw" / "labels", rows)
    return images, labels

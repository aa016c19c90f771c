"""What the index chapter shows: the roles as a picture, the chapters, the reader's set-up.

Nothing here is part of a cube. These helpers keep ``00_index.ipynb`` short: it draws who
runs what where, lists the chapters it finds, and checks that the reader's kernel is the
project's environment before chapter 1 needs it.
"""

from __future__ import annotations

import csv
import os
import sys
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

from cxr_tutorial import __version__
from cxr_tutorial.chapters import Chapter
from cxr_tutorial.images import sniff_format
from cxr_tutorial.progress import tqdm

PYTHON = (3, 11)
"""The Python version the pinned environment is built for."""


def locked_versions(lock_file: str | Path) -> dict[str, str]:
    """The ``name==version`` pins of a requirements file, names normalised.

    Args:
        lock_file: A pip requirements file such as ``requirements.lock``.

    Returns:
        Normalised distribution name (lower case, ``-`` for ``_`` and ``.``) to version.
    """
    pins = {}
    for line in Path(lock_file).read_text(encoding="utf-8").splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:
            pins[_normalise(name)] = version.strip()
    return pins


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")


def version_mismatches(pins: dict[str, str]) -> list[str]:
    """Pinned packages missing from the running environment or installed at another version.

    Args:
        pins: Output of :func:`locked_versions`.

    Returns:
        One ``name: wanted X, found Y`` line per difference, sorted.
    """
    installed = {_normalise(d.metadata["Name"]): d.version for d in metadata.distributions()}
    return sorted(f"{name}: wanted {want}, found {installed.get(name, 'nothing')}"
                  for name, want in pins.items() if installed.get(name) != want)


def count_formats(images: str | Path) -> Counter:
    """Count the files of a folder by format, recognised from their first bytes.

    Shows a progress bar, like every loop over images in this project.

    Args:
        images: A folder of raw images (searched recursively).

    Returns:
        Format (``dicom``, ``png``, ``jpeg`` or ``not an image``) to number of files.
    """
    files = sorted(p for p in Path(images).rglob("*") if p.is_file())
    return Counter(sniff_format(p) or "not an image"
                   for p in tqdm(files, desc="demo images", unit="file"))


def check_environment(root: str | Path = "..") -> list[str]:
    """Check that this kernel can run the chapters, one line per check.

    Checks the Python version, that every package pinned in ``requirements.lock`` is
    installed at its version (a kernel from another environment fails here, not in
    chapter 4), that the demo data is complete, and where the chapters write.

    Args:
        root: The repository folder, relative to the notebook (``..`` from ``notebooks/``).

    Returns:
        Lines starting with ``ok`` or ``PROBLEM``; no line starts with ``PROBLEM`` when the
        set-up is right.
    """
    root = Path(root)
    lines = []
    python = ".".join(map(str, sys.version_info[:3]))
    good = sys.version_info[:2] == PYTHON
    lines.append(f"{'ok' if good else 'PROBLEM'}  Python {python}"
                 + ("" if good else f": the environment is built for {PYTHON[0]}.{PYTHON[1]}"))
    lock = root / "requirements.lock"
    missing = version_mismatches(locked_versions(lock)) if lock.is_file() else ["no lock file"]
    if missing:
        lines.append(f"PROBLEM  this kernel is not the project's environment ({len(missing)} "
                     f"difference(s) from requirements.lock, e.g. {missing[0]}); pick the "
                     f"kernel of .venv or run 'make lab'")
    else:
        lines.append(f"ok  cxr_tutorial {__version__}; every package pinned in "
                     f"requirements.lock is installed at its version")
    lines.append(_demo_data_line(root / "demo_data"))
    outputs = (root / "tutorial_outputs").resolve()
    lines.append(f"ok  the chapters write to ../tutorial_outputs ({outputs})")
    lines.append(f"ok  {os.cpu_count()} CPU cores for Keras and image decoding")
    return lines


def _demo_data_line(demo: Path) -> str:
    """One line about the demo data: images and label rows, matched by name."""
    labels = demo / "labels" / "labels.csv"
    images = demo / "images"
    if not labels.is_file() or not images.is_dir():
        return f"PROBLEM  demo data not found under {demo}"
    with open(labels, newline="", encoding="utf-8") as handle:
        ids = [row["Image ID"] for row in csv.DictReader(handle)]
    present = sum((images / i).is_file() for i in ids)
    state = "ok" if ids and present == len(ids) else "PROBLEM"
    return f"{state}  demo data: {len(ids)} labelled images, {present} of them present"


def chapters_markdown(chapters: list[Chapter]) -> str:
    """A markdown table of chapters with links, for ``IPython.display.Markdown``.

    Args:
        chapters: Output of :func:`cxr_tutorial.chapters.list_chapters`.

    Returns:
        The table, one row per chapter in reading order.
    """
    rows = ["| # | chapter | notebook |", "|---|---|---|"]
    rows += [f"| {c.number:02d} | {c.title} | [{c.path.name}]({c.path.name}) |"
             for c in chapters]
    return "\n".join(rows)


# Boxes of the federation picture: (x, y, width, height, label, face colour).
_BOXES = [
    (0.02, 0.70, 0.28, 0.24, "Model owner\n\nwraps a model as a Model cube\n(same infer task)",
     "#fde6c8"),
    (0.02, 0.10, 0.28, 0.36, "Benchmark owner\n\nships the Data Preparator,\nthe reference "
                             "Model\nand the Metrics cubes", "#dbe9f6"),
] + [
    (0.70, y, 0.28, 0.22, f"Hospital {name} (data owner)\n\nruns prepare, infer, evaluate\n"
                          "its images never leave", "#d8f0d8")
    for name, y in (("A", 0.74), ("B", 0.41), ("C", 0.08))
]


def plot_federation() -> Any:
    """Draw who runs what where: cubes travel to the hospitals, only results come back.

    Returns:
        The matplotlib ``Figure`` (10 x 5 inches).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    fig, ax = plt.subplots(figsize=(10, 5))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    for x, y, w, h, label, colour in _BOXES:
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.01", fc=colour,
                                    ec="#555555"))
        ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=9)
    out, back = {"arrowstyle": "->", "color": "#1f5fa8"}, {"arrowstyle": "->",
                                                          "color": "#2e7d32", "ls": "--"}
    ax.annotate("", xy=(0.16, 0.475), xytext=(0.16, 0.69),
                arrowprops={"arrowstyle": "->", "color": "#b36b00"})
    ax.text(0.17, 0.58, "submits its cube", color="#b36b00", fontsize=9)
    for y in (0.74, 0.41, 0.08):
        ax.annotate("", xy=(0.69, y + 0.15), xytext=(0.31, 0.36), arrowprops=out)
        ax.annotate("", xy=(0.31, 0.22), xytext=(0.69, y + 0.06), arrowprops=back)
    label = {"ha": "center", "fontsize": 9, "bbox": {"fc": "white", "ec": "none"}}
    ax.text(0.50, 0.69, "cubes go out", color="#1f5fa8", **label)
    ax.text(0.50, 0.02, "results.yaml comes back (aggregate figures only)", color="#2e7d32",
            **label)
    fig.tight_layout()
    return fig

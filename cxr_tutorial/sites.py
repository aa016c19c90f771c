"""Data owners for a federated evaluation on one machine: sites made from the demo data.

A site is a folder shaped like a hospital's export: ``images/`` (any mix of DICOM, PNG and
JPEG, in sub-folders if need be) and ``labels/labels.csv`` with the Data Preparator's
columns. :func:`make_demo_sites` writes three such folders from the 16 demo X-rays, each
unlike the others in the ways real sites differ:

=================  =====  ================  ===========================================
site               cases  pneumonia/normal  formats
=================  =====  ================  ===========================================
``hospital-north``    12  6 / 6             DICOM (4 transfer syntaxes, both
                                            polarities) and PNG, by year
``clinic-east``        8  6 / 2             JPEG only (a viewer's export)
``practice-west``      3  1 / 2             PNG only
=================  =====  ================  ===========================================

With the Metrics cube's minimum of 5 cases, ``hospital-north`` releases every figure,
``clinic-east`` releases overall figures but withholds the per-class ones (2 normal
cases), and ``practice-west`` is too small to release anything.

Sixteen images cannot fill three realistic sites, so the sites share some X-rays (as if
a patient had been seen in two places). That is fine for showing the flow; it would be
wrong for comparing sites. Images converted to another format are decoded with
:func:`cxr_tutorial.images.read_image` and re-encoded as 8-bit greyscale; no DICOM header
travels into a PNG or JPEG. The demo data itself is only read.
"""

from __future__ import annotations

import csv
import dataclasses
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from cxr_tutorial import logger
from cxr_tutorial.errors import ConfigError
from cxr_tutorial.images import read_image, sniff_format

MARKER = ".cxr-tutorial-demo-site"
"""File that marks a folder as made by :func:`make_demo_sites`, so a rerun may replace it."""


@dataclasses.dataclass(frozen=True)
class Site:
    """A data owner's raw export, as the Data Preparator's ``prepare`` task reads it.

    Attributes:
        name: Short name, used for folders and table columns (letters, digits, ``-``,
            ``_``, ``.``).
        data_path: Folder of raw images.
        labels_path: Folder holding ``labels.csv``.
    """

    name: str
    data_path: Path
    labels_path: Path

    @classmethod
    def from_folder(cls, folder: str | Path) -> Site:
        """A site from a folder holding ``images/`` and ``labels/``; named after the folder.

        Raises:
            ConfigError: If the folder or either sub-folder is missing, or the name is not
                usable as a folder name.
        """
        folder = Path(folder).resolve()
        for sub in ("images", "labels"):
            if not (folder / sub).is_dir():
                raise ConfigError(f"site {folder}: expected a sub-folder {sub}/ (a site holds "
                                  "images/ and labels/labels.csv)")
        name = folder.name
        if not name or name.startswith(".") or not all(c.isalnum() or c in "-_." for c in name):
            raise ConfigError(f"site {folder}: the folder name {name!r} must be letters, "
                              "digits, '-', '_' or '.' (it names the site's results)")
        return cls(name, folder / "images", folder / "labels")


@dataclasses.dataclass(frozen=True)
class _Export:
    """One demo image as a site exports it."""

    source: str  # file name in demo_data/images
    target: str  # path inside the site's images/ folder
    encode: str  # "copy", "png" or "jpeg"


def _year_folder(name: str) -> str:
    return f"{2021 + int(name[3:7]) % 4}/{name}"


_DICOM = ["IM-0001.dcm", "IM-0003.dcm", "IM-0005.dcm", "IM-0006.dcm", "IM-0007",
          "IM-0010.dcm", "IM-0013.dcm", "IM-0015.dcm"]

DEMO_SITES: dict[str, tuple[str, tuple[_Export, ...]]] = {
    "hospital-north": (
        "a hospital PACS export: DICOM and PNG, one sub-folder per year, balanced classes",
        tuple(_Export(name, _year_folder(name), "copy")
              for name in _DICOM + ["IM-0002.png", "IM-0008.png", "IM-0011.png", "IM-0014.png"]),
    ),
    "clinic-east": (
        "a clinic whose viewer exports JPEG only; mostly pneumonia",
        tuple(_Export(source, f"east-{i + 1:03d}.jpg", "copy" if source.endswith(
            ("jpg", "JPG", "jpeg")) else "jpeg")
              for i, source in enumerate(["IM-0004.jpg", "IM-0009.JPG", "IM-0012.jpeg",
                                          "IM-0016.jpg", "IM-0001.dcm", "IM-0006.dcm",
                                          "IM-0008.png", "IM-0014.png"])),
    ),
    "practice-west": (
        "a small practice with three PNG images: too few to release any figure",
        tuple(_Export(source, f"west{i + 1}.png", "png")
              for i, source in enumerate(["IM-0009.JPG", "IM-0010.dcm", "IM-0013.dcm"])),
    ),
}
"""Site name to (description, images it exports)."""


def _export_image(source: Path, target: Path, encode: str) -> None:
    """Copy an image, or decode it and re-encode it as 8-bit greyscale PNG or JPEG."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if encode == "copy":
        shutil.copyfile(source, target)
        return
    pixels, _ = read_image(source)
    grey = Image.fromarray(np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8))
    if encode == "png":
        grey.save(target, format="PNG")
    else:
        grey.save(target, format="JPEG", quality=90)


def _demo_labels(demo_data: Path) -> dict[str, str]:
    """Image file name to class, from the demo's labels.csv."""
    with open(demo_data / "labels" / "labels.csv", newline="", encoding="utf-8") as handle:
        return {row["Image ID"]: row["Label"] for row in csv.DictReader(handle)}


def make_demo_sites(
    folder: str | Path,
    names: list[str] | None = None,
    demo_data: str | Path | None = None,
) -> list[Site]:
    """Write demo sites as raw exports, one sub-folder each (see the module docstring).

    A site folder made earlier by this function is replaced; any other existing folder
    of the same name is left alone and refused. Each site is written to a temporary
    folder first, so an interrupted run leaves no half-made site.

    Args:
        folder: Where the site folders go, e.g. ``runs/benchmark/demo_sites``.
        names: Which sites of :data:`DEMO_SITES` to make (default: all, in table order).
        demo_data: The demo data folder (default: ``demo_data/`` of this repository).

    Returns:
        One :class:`Site` per name, in the order given.

    Raises:
        ConfigError: On an unknown site name, or a target folder not made by this function.
    """
    from cxr_tutorial.compat import project_root

    folder = Path(folder).resolve()
    demo = Path(demo_data).resolve() if demo_data else project_root() / "demo_data"
    names = list(DEMO_SITES) if names is None else names
    unknown = [n for n in names if n not in DEMO_SITES]
    if unknown:
        raise ConfigError(f"unknown demo site(s) {', '.join(unknown)}; "
                          f"the demo sites are {', '.join(DEMO_SITES)}")
    labels = _demo_labels(demo)
    folder.mkdir(parents=True, exist_ok=True)
    sites = []
    for name in names:
        target = folder / name
        if target.exists() and not (target / MARKER).is_file():
            raise ConfigError(f"{target} exists and was not made by make_demo_sites; "
                              "choose another folder")
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder))
        try:
            rows = []
            for export in DEMO_SITES[name][1]:
                _export_image(demo / "images" / export.source,
                              staging / "images" / export.target, export.encode)
                rows.append((export.target, labels[export.source]))
            (staging / "labels").mkdir()
            with open(staging / "labels" / "labels.csv", "w", newline="",
                      encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["Image ID", "Label"])
                writer.writerows(rows)
            (staging / MARKER).write_text(DEMO_SITES[name][0] + "\n", encoding="utf-8")
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("demo site %s: %d images in %s", name, len(rows), target)
        sites.append(Site.from_folder(target))
    return sites


def describe_site(site: Site) -> dict[str, object]:
    """What a site holds, as its data owner sees it before running anything.

    This reads the raw export, so it is for the data owner (and for this simulation's
    narration), not something that leaves the site.

    Args:
        site: A site.

    Returns:
        ``{"site", "images", "formats", "classes"}``: the number of image files, and
        counts per file format (by content) and per class (from ``labels.csv``).
    """
    files = [p for p in site.data_path.rglob("*") if p.is_file()]
    formats = Counter(sniff_format(p) or "other" for p in files)
    with open(site.labels_path / "labels.csv", newline="", encoding="utf-8") as handle:
        classes = Counter(row.get("Label", "?") for row in csv.DictReader(handle))
    return {"site": site.name, "images": len(files), "formats": dict(sorted(formats.items())),
            "classes": dict(sorted(classes.items()))}

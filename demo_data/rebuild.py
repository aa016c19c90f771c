"""Rebuild the cxr-tutorial demo data set from a public PyPI wheel.

The demo data set is 16 real chest X-rays (8 normal, 8 bacterial pneumonia) from
Kermany, Zhang and Goldbaum (2018), Mendeley Data v2, doi:10.17632/rscbjbr9sj.2,
licensed CC BY 4.0. A copy of these images ships inside the PyPI wheel
``pneumonia-model-package==0.3.0`` (folder
``pneumonia_model_package/datasets/pneumonia-data/val/``); this script reads them
straight from that wheel and never imports or installs it.

To mimic a messy hospital export, the images are written under neutral names
(``IM-0001.dcm``, ``IM-0002.png``, ...) as a mix of DICOM files with different transfer
syntaxes, PNG files of different bit depths and untouched JPEG files. Every DICOM file
carries an obviously fictitious patient, study and institution header, so that the
tutorial's data preparation step has something real to strip.

Outputs, all inside ``--out`` (default: the folder this script lives in):

* ``images/``: the 16 image files,
* ``labels/labels.csv``: columns ``Image ID,Label``, one row per image,
* ``ATTRIBUTION.md``: source, licence, what was changed and a file-by-file table.

The output is deterministic: fixed dates, UIDs derived from the file names and no clock
reads, so two runs with the same library versions give byte-identical files.

Usage::

    python demo_data/rebuild.py                      # downloads the wheel with pip
    python demo_data/rebuild.py --wheel path/to/pneumonia_model_package-0.3.0-py3-none-any.whl
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import io
import logging
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

logger = logging.getLogger("rebuild_demo_data")

WHEEL_REQUIREMENT = "pneumonia-model-package==0.3.0"
WHEEL_NAME = "pneumonia_model_package-0.3.0-py3-none-any.whl"
# sha256 of the wheel as published on PyPI; guards the provenance stated in ATTRIBUTION.md.
WHEEL_SHA256 = "4bb1ee80366db5de818c7255e62878871b8ec545681193f429e2575b791d3536"
WHEEL_IMAGE_DIR = "pneumonia_model_package/datasets/pneumonia-data/val/"

MAX_SIDE = 1024  # longest side, in pixels, of every re-encoded image
UID_SEED = "cxr-tutorial demo data v1"  # mixed into every derived DICOM UID

# What each output kind is, in the words used by ATTRIBUTION.md.
KINDS: dict[str, str] = {
    "dcm-raw8": "DICOM, MONOCHROME2, 8 bit, Explicit VR Little Endian (uncompressed)",
    "dcm-rle12-inv": "DICOM, MONOCHROME1 (inverted), 12 of 16 bit, RLE Lossless",
    "dcm-j2k12": "DICOM, MONOCHROME2, 12 of 16 bit, JPEG 2000 Lossless",
    "dcm-jpeg": "DICOM, MONOCHROME2, 8 bit, JPEG Baseline (original JPEG encapsulated)",
    "png-l8": "PNG, 8-bit greyscale",
    "png-i16": "PNG, 16-bit greyscale",
    "png-rgb": "PNG, 8-bit RGB (grey copied into 3 channels)",
    "jpeg-copy": "JPEG, original file copied byte for byte",
}

TRANSFER_SYNTAX: dict[str, UID] = {
    "dcm-raw8": ExplicitVRLittleEndian,
    "dcm-rle12-inv": RLELossless,
    "dcm-j2k12": JPEG2000Lossless,
    "dcm-jpeg": JPEGBaseline8Bit,
}


@dataclass(frozen=True)
class DemoFile:
    """One output image.

    Attributes:
        name: File name inside ``images/``; neutral, reveals nothing about the class.
        source: File name inside the wheel's ``val/`` folder.
        kind: Output format, a key of ``KINDS``.
    """

    name: str
    source: str
    kind: str


# Shuffled once by hand and fixed: neither the number nor the extension of a file
# reveals its class, and every format group (DICOM, PNG, JPEG) holds both classes.
PLAN: tuple[DemoFile, ...] = (
    DemoFile("IM-0001.dcm", "person1947_bacteria_4876.jpeg", "dcm-raw8"),
    DemoFile("IM-0002.png", "NORMAL2-IM-1427-0001.jpeg", "png-l8"),
    DemoFile("IM-0003.dcm", "NORMAL2-IM-1430-0001.jpeg", "dcm-j2k12"),
    DemoFile("IM-0004.jpg", "person1951_bacteria_4882.jpeg", "jpeg-copy"),
    DemoFile("IM-0005.dcm", "NORMAL2-IM-1436-0001.jpeg", "dcm-jpeg"),
    DemoFile("IM-0006.dcm", "person1949_bacteria_4880.jpeg", "dcm-rle12-inv"),
    DemoFile("IM-0007", "NORMAL2-IM-1431-0001.jpeg", "dcm-rle12-inv"),
    DemoFile("IM-0008.png", "person1950_bacteria_4881.jpeg", "png-i16"),
    DemoFile("IM-0009.JPG", "NORMAL2-IM-1437-0001.jpeg", "jpeg-copy"),
    DemoFile("IM-0010.dcm", "NORMAL2-IM-1440-0001.jpeg", "dcm-raw8"),
    DemoFile("IM-0011.png", "NORMAL2-IM-1442-0001.jpeg", "png-rgb"),
    DemoFile("IM-0012.jpeg", "person1946_bacteria_4875.jpeg", "jpeg-copy"),
    DemoFile("IM-0013.dcm", "person1952_bacteria_4883.jpeg", "dcm-j2k12"),
    DemoFile("IM-0014.png", "person1954_bacteria_4886.jpeg", "png-l8"),
    DemoFile("IM-0015.dcm", "person1946_bacteria_4874.jpeg", "dcm-jpeg"),
    DemoFile("IM-0016.jpg", "NORMAL2-IM-1438-0001.jpeg", "jpeg-copy"),
)


@dataclass(frozen=True)
class Patient:
    """Fictitious header data for one DICOM file; none of it belongs to a real person.

    Attributes:
        name: DICOM person name, always with family name ``FICTITIOUS``.
        patient_id: Patient ID, always starting with ``DEMO-``.
        birth_date: Date of birth (the source cohort was 1 to 5 years old).
        sex: ``F`` or ``M``.
        study: Date and time of the (invented) examination.
        accession: Accession number.
        referrer: Referring physician, DICOM person name.
    """

    name: str
    patient_id: str
    birth_date: dt.date
    sex: str
    study: dt.datetime
    accession: str
    referrer: str


# Handed out to the DICOM files of PLAN in order of appearance.
PATIENTS: tuple[Patient, ...] = (
    Patient("FICTITIOUS^ANNA", "DEMO-100234", dt.date(2017, 5, 14), "F",
            dt.datetime(2021, 3, 2, 9, 15, 42), "DEMOACC210001", "FICTITIOUS^MARTA^^DR"),
    Patient("FICTITIOUS^BRUNO", "DEMO-100271", dt.date(2018, 11, 3), "M",
            dt.datetime(2021, 3, 2, 10, 41, 7), "DEMOACC210002", "FICTITIOUS^MARTA^^DR"),
    Patient("FICTITIOUS^CLARA", "DEMO-100315", dt.date(2016, 8, 21), "F",
            dt.datetime(2021, 3, 4, 14, 3, 55), "DEMOACC210003", "FICTITIOUS^JONAS^^DR"),
    Patient("FICTITIOUS^DAVID", "DEMO-100342", dt.date(2019, 1, 30), "M",
            dt.datetime(2021, 3, 5, 8, 27, 19), "DEMOACC210004", "FICTITIOUS^JONAS^^DR"),
    Patient("FICTITIOUS^EMMA", "DEMO-100388", dt.date(2017, 12, 9), "F",
            dt.datetime(2021, 3, 8, 11, 52, 3), "DEMOACC210005", "FICTITIOUS^MARTA^^DR"),
    Patient("FICTITIOUS^FELIX", "DEMO-100407", dt.date(2018, 4, 17), "M",
            dt.datetime(2021, 3, 9, 16, 8, 31), "DEMOACC210006", "FICTITIOUS^SOFIA^^DR"),
    Patient("FICTITIOUS^GRETA", "DEMO-100459", dt.date(2016, 2, 25), "F",
            dt.datetime(2021, 3, 11, 9, 34, 46), "DEMOACC210007", "FICTITIOUS^SOFIA^^DR"),
    Patient("FICTITIOUS^HUGO", "DEMO-100486", dt.date(2019, 7, 6), "M",
            dt.datetime(2021, 3, 12, 13, 19, 28), "DEMOACC210008", "FICTITIOUS^JONAS^^DR"),
)


class RebuildError(RuntimeError):
    """The wheel or its contents are not what this script expects."""


def class_of(source: str) -> str:
    """Return the class label encoded in an original Kermany file name.

    Args:
        source: File name such as ``NORMAL2-IM-1427-0001.jpeg``.

    Returns:
        ``"normal"`` or ``"pneumonia"``.

    Raises:
        RebuildError: If the name follows neither naming pattern.
    """
    if source.startswith("NORMAL"):
        return "normal"
    if "_bacteria_" in source or "_virus_" in source:
        return "pneumonia"
    raise RebuildError(f"Cannot tell the class of {source!r}: expected NORMAL* or person*.")


def check_plan() -> None:
    """Check that PLAN uses known kinds, has both classes per format group, fits PATIENTS.

    Raises:
        RebuildError: If the plan breaks one of these rules.
    """
    groups: dict[str, set[str]] = {}
    for item in PLAN:
        if item.kind not in KINDS:
            raise RebuildError(
                f"{item.name}: unknown kind {item.kind!r}; use one of {list(KINDS)}"
            )
        groups.setdefault(item.kind.split("-")[0], set()).add(class_of(item.source))
    for group, classes in groups.items():
        if classes != {"normal", "pneumonia"}:
            raise RebuildError(f"Format group {group!r} holds only {sorted(classes)}.")
    n_dicom = sum(item.kind.startswith("dcm") for item in PLAN)
    if n_dicom != len(PATIENTS):
        raise RebuildError(f"{n_dicom} DICOM files in PLAN but {len(PATIENTS)} PATIENTS.")


def download_wheel(dest: Path) -> Path:
    """Download the source wheel from PyPI with pip.

    Args:
        dest: Existing folder to download into.

    Returns:
        Path of the downloaded wheel.
    """
    logger.info("Downloading %s with pip into %s", WHEEL_REQUIREMENT, dest)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(dest),
               WHEEL_REQUIREMENT]
    subprocess.run(command, check=True)
    return dest / WHEEL_NAME


def sha256_of(path: Path) -> str:
    """Return the hex sha256 digest of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_sources(wheel: Path) -> dict[str, bytes]:
    """Read the 16 original JPEG files out of the wheel, without unpacking it.

    Args:
        wheel: Path of ``pneumonia_model_package-0.3.0-py3-none-any.whl``.

    Returns:
        Mapping from original file name to its bytes.

    Raises:
        RebuildError: If the wheel's checksum differs from the published one or a file
            named in PLAN is missing.
    """
    found = sha256_of(wheel)
    if found != WHEEL_SHA256:
        raise RebuildError(
            f"{wheel} has sha256 {found}, expected {WHEEL_SHA256}; "
            f"download it again with: pip download --no-deps {WHEEL_REQUIREMENT}"
        )
    with zipfile.ZipFile(wheel) as archive:
        members = {
            name[len(WHEEL_IMAGE_DIR):]: name
            for name in archive.namelist()
            if name.startswith(WHEEL_IMAGE_DIR) and not name.endswith("/")
        }
        missing = sorted({item.source for item in PLAN} - set(members))
        if missing:
            raise RebuildError(f"{wheel} lacks {missing} under {WHEEL_IMAGE_DIR}")
        return {item.source: archive.read(members[item.source]) for item in PLAN}


def decode_grey(jpeg: bytes) -> Image.Image:
    """Decode an original JPEG and check that it is 8-bit greyscale.

    Args:
        jpeg: Bytes of a JPEG file.

    Returns:
        The decoded image, mode ``L``.

    Raises:
        RebuildError: If the JPEG is not single-channel 8-bit.
    """
    image = Image.open(io.BytesIO(jpeg))
    image.load()
    if image.mode != "L":
        raise RebuildError(f"Expected an 8-bit greyscale JPEG, got mode {image.mode!r}.")
    return image


def downscale(image: Image.Image, max_side: int = MAX_SIDE) -> Image.Image:
    """Shrink an image with Lanczos so that its longest side is at most ``max_side``.

    Args:
        image: Image to shrink; returned unchanged if it is small enough already.
        max_side: Largest allowed width or height in pixels.

    Returns:
        The possibly resized image, same mode as the input.
    """
    width, height = image.size
    scale = max_side / max(width, height)
    if scale >= 1:
        return image
    new_size = (round(width * scale), round(height * scale))
    return image.resize(new_size, Image.Resampling.LANCZOS)


def to_12bit(grey: np.ndarray) -> np.ndarray:
    """Scale 8-bit grey values 0..255 linearly onto 12-bit values 0..4095.

    Args:
        grey: Array of dtype uint8.

    Returns:
        Array of dtype uint16 with values in 0..4095.
    """
    return np.round(grey.astype(np.float64) * 4095 / 255).astype(np.uint16)


def dicom_header(item: DemoFile, patient: Patient, number: int) -> Dataset:
    """Build the header of one CR image with fictitious patient, study and site data.

    All UIDs are derived from the file name, so they are valid and stable between runs.

    Args:
        item: The output file this header is for.
        patient: Fictitious person and examination written into the header.
        number: Running number of the file in PLAN, used as Study ID.

    Returns:
        Dataset with file meta (transfer syntax set from ``item.kind``) but no pixels.
    """
    def uid(role: str) -> UID:
        return generate_uid(entropy_srcs=[UID_SEED, item.name, role])

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uid("instance")
    ds.file_meta.TransferSyntaxUID = TRANSFER_SYNTAX[item.kind]
    ds.file_meta.ImplementationClassUID = generate_uid(entropy_srcs=[UID_SEED, "impl"])
    ds.file_meta.ImplementationVersionName = "CXRTUT_DEMO_1"

    study_date = patient.study.strftime("%Y%m%d")
    study_time = patient.study.strftime("%H%M%S")
    age = patient.study.year - patient.birth_date.year - (
        (patient.study.month, patient.study.day)
        < (patient.birth_date.month, patient.birth_date.day)
    )

    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.ImageType = ["DERIVED", "PRIMARY"]

    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date.strftime("%Y%m%d")
    ds.PatientSex = patient.sex
    ds.PatientAge = f"{age:03d}Y"

    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = study_time
    ds.AccessionNumber = patient.accession
    ds.StudyID = f"{number:04d}"
    ds.ReferringPhysicianName = patient.referrer
    ds.StudyDescription = "XR CHEST 1 VIEW"
    ds.SeriesDescription = "CHEST AP"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1

    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "AP"
    ds.PatientOrientation = ["L", "F"]
    ds.Manufacturer = "Demo Imaging (fictitious)"
    ds.InstitutionName = "Demo General Hospital (fictitious)"
    ds.StationName = "DEMO-XR01"
    ds.OperatorsName = "FICTITIOUS^OPERATOR"

    # Every source image is a lossy JPEG, so the pixels stay "lossy" whatever we store.
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    # Names the source but not the original file name, which would give the class away.
    ds.DerivationDescription = (
        "Converted from a JPEG of Kermany et al. 2018, doi:10.17632/rscbjbr9sj.2, CC BY 4.0"
    )
    return ds


def write_dicom(path: Path, item: DemoFile, jpeg: bytes, patient: Patient,
                number: int) -> tuple[int, int]:
    """Write one DICOM file in the format that ``item.kind`` asks for.

    Args:
        path: Output file.
        item: The plan entry, whose ``kind`` starts with ``dcm``.
        jpeg: Bytes of the original JPEG.
        patient: Fictitious header data.
        number: Running number of the file in PLAN, used as Study ID.

    Returns:
        Columns and rows of the stored image.
    """
    ds = dicom_header(item, patient, number)
    original = decode_grey(jpeg)

    if item.kind == "dcm-jpeg":
        # Keep the original JPEG stream untouched, at its original size.
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Columns, ds.Rows = original.size
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.PixelData = encapsulate([jpeg])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        window = ("128", "256")
        size = original.size
    else:
        image = downscale(original)
        size = image.size
        grey = np.asarray(image)
        if item.kind == "dcm-raw8":
            ds.set_pixel_data(grey, "MONOCHROME2", 8, generate_instance_uid=False)
            window = ("128", "256")
        elif item.kind == "dcm-rle12-inv":
            # MONOCHROME1: low values display white, so invert to keep the same picture.
            inverted = 4095 - to_12bit(grey)
            ds.set_pixel_data(inverted, "MONOCHROME1", 12, generate_instance_uid=False)
            ds.compress(RLELossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
            window = ("2048", "4096")
        elif item.kind == "dcm-j2k12":
            ds.set_pixel_data(to_12bit(grey), "MONOCHROME2", 12, generate_instance_uid=False)
            ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg",
                        generate_instance_uid=False)
            window = ("2048", "4096")
        else:
            raise RebuildError(f"{item.name}: {item.kind!r} is not a DICOM kind.")

    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.WindowCenter, ds.WindowWidth = window
    ds.save_as(path, enforce_file_format=True)
    return size


def write_png(path: Path, item: DemoFile, jpeg: bytes) -> tuple[int, int]:
    """Write one PNG file, downscaled, in the bit depth that ``item.kind`` asks for.

    Args:
        path: Output file.
        item: The plan entry, whose ``kind`` starts with ``png``.
        jpeg: Bytes of the original JPEG.

    Returns:
        Width and height of the stored image.
    """
    image = downscale(decode_grey(jpeg))
    grey = np.asarray(image)
    if item.kind == "png-l8":
        out = image
    elif item.kind == "png-i16":
        # 257 = 65535 / 255 maps 0..255 exactly onto 0..65535.
        out = Image.fromarray(grey.astype(np.uint16) * 257)
    elif item.kind == "png-rgb":
        out = Image.fromarray(np.stack([grey, grey, grey], axis=-1))
    else:
        raise RebuildError(f"{item.name}: {item.kind!r} is not a PNG kind.")
    out.save(path, format="PNG")
    return image.size


def write_labels(path: Path) -> None:
    """Write ``labels.csv`` with columns ``Image ID,Label``, sorted by Image ID.

    Args:
        path: Output CSV file; its folder is created if needed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = sorted((item.name, class_of(item.source)) for item in PLAN)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["Image ID", "Label"])
        writer.writerows(rows)


ATTRIBUTION_HEAD = """\
# Demo data: attribution and provenance

The 16 chest X-rays in `images/` are real radiographs from a public research data set.
They are redistributed here, modified, under the terms of its licence.

## Source

Kermany, D., Zhang, K., Goldbaum, M. (2018). *Labeled Optical Coherence Tomography (OCT)
and Chest X-Ray Images for Classification.* Mendeley Data, version 2.
doi:[10.17632/rscbjbr9sj.2](https://doi.org/10.17632/rscbjbr9sj.2)

Licence: Creative Commons Attribution 4.0 International (CC BY 4.0),
<https://creativecommons.org/licenses/by/4.0/>.

The images were not downloaded from Mendeley Data directly. They were read from the
folder `{image_dir}` of the wheel
`{wheel}`
(PyPI package `{requirement}`, sha256
`{sha256}`),
which carries a copy of them. Their original file names are those of the 16-image
`val` folder of the widely used Kaggle copy of the data set ("Chest X-Ray Images
(Pneumonia)"): 8 normal studies (`NORMAL2-*`) and 8 bacterial pneumonia studies
(`person*_bacteria_*`). Only `rebuild.py` touches the wheel; nothing else in this
project needs it.

## What was changed

- **Names.** Every file got a neutral name (`IM-0001` to `IM-0016`) in a fixed,
  hand-shuffled order, so neither the name, the number nor the extension gives the
  class away. The class is recorded in `labels/labels.csv` and in the table below.
- **Formats.** Half the images are now DICOM files, a quarter PNG files, and a quarter
  stay JPEG, to look like a mixed hospital export (see the table).
- **Size.** Every image that was re-encoded (all but the JPEG copies and the
  JPEG-in-DICOM files) was shrunk with a Lanczos filter so its longest side is at most
  {max_side} pixels.
- **Bit depth.** The 8-bit grey values were stretched linearly to 12 bits (0 to 4095)
  for the 12-bit DICOM files and to 16 bits (0 to 65535) for the 16-bit PNG; no detail
  was added.
- **Inversion.** The two MONOCHROME1 DICOM files store inverted values (4095 minus the
  value), as MONOCHROME1 displays low values as white; a viewer shows the same picture.
- **Fictitious headers.** Every DICOM file carries made-up patient, study and site
  data: names with family name `FICTITIOUS`, IDs starting with `DEMO-`, accession
  numbers starting with `DEMOACC`, invented birth dates, study dates and physicians, and
  the institution `Demo General Hospital (fictitious)`. UIDs are derived from the file
  names. None of this describes a real person or site; it exists so that the data
  preparation step of the tutorial has identifying fields to remove.
- **Unchanged.** The four JPEG files and the pixel data of the two JPEG Baseline DICOM
  files are the original JPEG bytes, including the metadata segments embedded in them.

## Files

| Demo file | Original file | Stored as | Pixels (width x height) | Class |
|---|---|---|---|---|
"""

ATTRIBUTION_TAIL = """
## Known quirks of the source

- The two classes differ in ways unrelated to disease: the normal originals are larger
  (1240 to 1776 pixels wide, against 968 to 1664 for pneumonia) and carry Adobe
  Photoshop metadata (EXIF, XMP, ICC profile), while the pneumonia originals have a plain
  JFIF header. The copied JPEG files keep these differences. Sixteen images are a demo,
  not a benchmark; do not read anything into metrics computed on them.
- The data set describes its images as anterior-posterior views of children aged one to
  five; the fictitious headers give ages in that range and `ViewPosition` AP.

## Rebuilding

From the project root, with pydicom 3, pylibjpeg (with the openjpeg and rle plugins),
numpy and Pillow installed:

```bash
python demo_data/rebuild.py                      # downloads the wheel with pip
python demo_data/rebuild.py --wheel path/to/{wheel}
```

The script checks the wheel's sha256, rewrites `images/`, `labels/labels.csv` and this
file, and gives byte-identical results on every run with the same library versions.
"""


def write_attribution(path: Path, sizes: dict[str, tuple[int, int, int, int]]) -> None:
    """Write ``ATTRIBUTION.md``: source, licence, changes and a file-by-file table.

    Args:
        path: Output Markdown file.
        sizes: For each demo file name, original width and height, then stored ones.
    """
    head = ATTRIBUTION_HEAD.format(
        image_dir=WHEEL_IMAGE_DIR, wheel=WHEEL_NAME, requirement=WHEEL_REQUIREMENT,
        sha256=WHEEL_SHA256, max_side=MAX_SIDE,
    )
    rows = []
    for item in PLAN:
        src_w, src_h, out_w, out_h = sizes[item.name]
        pixels = f"{out_w} x {out_h}"
        if (src_w, src_h) != (out_w, out_h):
            pixels += f" (from {src_w} x {src_h})"
        rows.append(f"| `{item.name}` | `{item.source}` | {KINDS[item.kind]} | {pixels} "
                    f"| {class_of(item.source)} |\n")
    path.write_text(head + "".join(rows) + ATTRIBUTION_TAIL.format(wheel=WHEEL_NAME),
                    encoding="utf-8", newline="\n")


def build(wheel: Path, out: Path) -> list[tuple[DemoFile, int]]:
    """Write the whole demo data set from the wheel into ``out``.

    Files in ``out/images/`` that are not part of PLAN are removed, so the folder
    always matches ``labels.csv``.

    Args:
        wheel: Path of the source wheel.
        out: Output folder; ``images/`` and ``labels/`` are created in it.

    Returns:
        Each plan entry with the size in bytes of the file written for it.
    """
    check_plan()
    sources = read_sources(wheel)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    expected = {item.name for item in PLAN}
    for stray in sorted(images.iterdir()):
        if stray.is_file() and stray.name not in expected:
            logger.warning("Removing %s: not part of the demo data set", stray)
            stray.unlink()

    patients = iter(PATIENTS)
    sizes: dict[str, tuple[int, int, int, int]] = {}
    written = []
    for number, item in enumerate(PLAN, start=1):
        path = images / item.name
        jpeg = sources[item.source]
        original_size = decode_grey(jpeg).size
        if item.kind == "jpeg-copy":
            path.write_bytes(jpeg)
            size = original_size
        elif item.kind.startswith("dcm"):
            size = write_dicom(path, item, jpeg, next(patients), number)
        else:
            size = write_png(path, item, jpeg)
        sizes[item.name] = (*original_size, *size)
        written.append((item, path.stat().st_size))
        logger.info("%s <- %s as %s", item.name, item.source, item.kind)

    write_labels(out / "labels" / "labels.csv")
    write_attribution(out / "ATTRIBUTION.md", sizes)
    return written


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv: Arguments without the program name; ``None`` means ``sys.argv[1:]``.

    Returns:
        Namespace with ``wheel`` (a path or ``None``) and ``out``.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", type=Path, default=None,
                        help=f"local copy of {WHEEL_NAME}; downloaded with pip if omitted")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="output folder (default: the folder of this script)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Rebuild the demo data and print a summary table.

    Args:
        argv: Command-line arguments; ``None`` means ``sys.argv[1:]``.

    Returns:
        Process exit status.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("openjpeg").setLevel(logging.WARNING)  # silences "tile number 1 / 1"
    args = parse_args(argv)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            wheel = args.wheel if args.wheel is not None else download_wheel(Path(tmp))
            written = build(wheel, args.out)
    except (RebuildError, subprocess.CalledProcessError) as error:
        logger.error("%s", error)
        return 1
    total = 0
    for item, n_bytes in written:
        total += n_bytes
        label = class_of(item.source)
        print(f"{item.name:<13} {label:<10} {n_bytes:>9,} B  {KINDS[item.kind]}")
    print(f"{len(written)} images, {total / 1e6:.2f} MB, written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Small raw images made by the tests themselves: DICOM, PNG and JPEG with known content."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

PATIENT = {
    "PatientName": "TESTONLY^PERSONA",
    "PatientID": "TEST-998877",
    "PatientBirthDate": "19800229",
    "InstitutionName": "Test Fixture Clinic",
    "StudyDate": "20200101",
    "AccessionNumber": "ACC-TEST-55",
}
"""Header values that must never appear in any output."""


def phantom(seed: int, height: int = 96, width: int = 80) -> np.ndarray:
    """A chest-like test picture in [0, 1]: a bright frame, darker lungs, some noise.

    Args:
        seed: Changes the noise, so images differ.
        height: Rows.
        width: Columns.

    Returns:
        ``float64`` array of shape ``(height, width)``.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = 0.8 - 0.5 * (((x - width / 2) / (width / 2)) ** 2 < 0.5)
    image = image + 0.3 * y / height + 0.05 * rng.random((height, width))
    return np.clip(image, 0, 1)


def write_dicom(
    path: Path,
    seed: int = 0,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    compress: bool = False,
    pixels: np.ndarray | None = None,
) -> np.ndarray:
    """Write a single-frame greyscale DICOM with fictitious patient data.

    Args:
        path: Output file.
        seed: Phantom seed (ignored when ``pixels`` is given).
        photometric: ``MONOCHROME1`` stores inverted values (bone dark).
        bits_stored: 8 (stored in 8 bits) or up to 16 (stored in 16 bits).
        compress: Encode with RLE Lossless instead of Explicit VR Little Endian.
        pixels: Picture in [0, 1] to store instead of a phantom.

    Returns:
        The picture in [0, 1], MONOCHROME2 polarity, as it should decode.
    """
    picture = phantom(seed) if pixels is None else pixels
    top = 2**bits_stored - 1
    stored = picture if photometric == "MONOCHROME2" else 1.0 - picture
    dtype = np.uint8 if bits_stored <= 8 else np.uint16
    values = np.rint(stored * top).astype(dtype)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    for key, value in PATIENT.items():
        setattr(ds, key, value)
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if bits_stored <= 8 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = values.tobytes()
    if compress:
        ds.compress(RLELossless)
    ds.save_as(path, enforce_file_format=True)
    return picture


def write_png(path: Path, seed: int = 0, mode: str = "L") -> np.ndarray:
    """Write a phantom as PNG in mode ``L`` (8 bit), ``I;16`` (16 bit) or ``RGB``.

    Returns:
        The picture in [0, 1].
    """
    picture = phantom(seed)
    if mode == "I;16":
        Image.fromarray(np.rint(picture * 65535).astype(np.uint16)).save(path)
    else:
        grey = Image.fromarray(np.rint(picture * 255).astype(np.uint8))
        grey.convert(mode).save(path, format="PNG")
    return picture


def write_jpeg(path: Path, seed: int = 0) -> np.ndarray:
    """Write a phantom as a greyscale JPEG (quality 95). Returns the picture in [0, 1]."""
    picture = phantom(seed)
    Image.fromarray(np.rint(picture * 255).astype(np.uint8)).save(path, format="JPEG",
                                                                   quality=95)
    return picture

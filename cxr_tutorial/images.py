"""Decoding raw chest X-rays (DICOM, PNG, JPEG) into one common form.

Every reader returns a 2-D ``float32`` array in ``[0, 1]`` where higher values are
brighter (bone white, air black: the MONOCHROME2 convention), plus a small
:class:`ImageInfo` with properties that are safe to aggregate in statistics. Nothing from
a DICOM header that could identify a patient is returned.

The format is recognised from the file's first bytes, not its name: PACS exports often
have DICOM files without an extension.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from cxr_tutorial.errors import DataError

DEFAULT_MAX_PIXELS = 50_000_000
"""Images with more pixels than this are refused (a 7000 x 7000 radiograph is 49 M)."""


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """Non-identifying properties of one raw image.

    Attributes:
        file_format: ``dicom``, ``png`` or ``jpeg``.
        height: Rows of the raw image, in pixels.
        width: Columns of the raw image, in pixels.
        bits: Bits per sample of the stored data (8 or 16 for PNG/JPEG; BitsStored for
            DICOM).
        photometric: ``MONOCHROME1``, ``MONOCHROME2`` or ``RGB``.
        modality: DICOM Modality (``CR``, ``DX``...), or ``""`` for PNG/JPEG.
        transfer_syntax: DICOM transfer syntax name, or ``""`` for PNG/JPEG.
    """

    file_format: str
    height: int
    width: int
    bits: int
    photometric: str
    modality: str = ""
    transfer_syntax: str = ""


def sniff_format(path: Path) -> str | None:
    """Tell the file format from its first bytes.

    Args:
        path: Any file.

    Returns:
        ``dicom``, ``png``, ``jpeg``, or ``None`` for anything else.
    """
    with open(path, "rb") as handle:
        head = handle.read(132)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    return None


def _to_unit(pixels: np.ndarray) -> np.ndarray:
    """Scale an array linearly so that its minimum is 0 and its maximum 1."""
    pixels = pixels.astype(np.float32, copy=False)
    low, high = float(pixels.min()), float(pixels.max())
    if not np.isfinite(low) or not np.isfinite(high):
        raise ValueError("pixel values are not finite")
    if high <= low:
        return np.zeros_like(pixels, dtype=np.float32)
    return (pixels - low) / (high - low)


def _read_dicom(path: Path, max_pixels: int) -> tuple[np.ndarray, ImageInfo]:
    """Decode a DICOM file: modality LUT, VOI LUT or window, MONOCHROME1 inversion."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(path)
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows * cols > max_pixels:
        raise DataError(
            f"{path}: {cols} x {rows} pixels is more than max_pixels={max_pixels}"
        )
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise DataError(f"{path}: multi-frame DICOM is not supported (expected one frame)")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    pixels = ds.pixel_array
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DataError(
            f"{path}: PhotometricInterpretation {photometric!r} is not a greyscale X-ray "
            "(expected MONOCHROME1 or MONOCHROME2)"
        )
    pixels = apply_modality_lut(pixels, ds)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        pixels = apply_voi_lut(pixels, ds)
    unit = _to_unit(pixels)
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit
    info = ImageInfo(
        file_format="dicom",
        height=rows,
        width=cols,
        bits=int(ds.get("BitsStored", 0) or 0),
        photometric=photometric,
        modality=str(ds.get("Modality", "")),
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID.name),
    )
    return unit, info


def _read_pil(path: Path, file_format: str, max_pixels: int) -> tuple[np.ndarray, ImageInfo]:
    """Decode a PNG or JPEG with Pillow; colour images are converted to luminance."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise DataError(
                    f"{path}: {width} x {height} pixels is more than max_pixels={max_pixels}"
                )
            mode = image.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                pixels = np.asarray(image, dtype=np.float64)
                bits, photometric = 16, "MONOCHROME2"
                unit = _to_unit(pixels)
            else:
                photometric = "MONOCHROME2" if mode in ("L", "LA", "1", "P") else "RGB"
                grey = image.convert("L")
                bits = 8
                unit = _to_unit(np.asarray(grey))
    info = ImageInfo(file_format, height, width, bits, photometric)
    return unit, info


def read_image(
    path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, ImageInfo]:
    """Read one raw chest X-ray.

    Args:
        path: A DICOM, PNG or JPEG file (recognised by content, whatever its name).
        max_pixels: Largest accepted width x height; larger images are refused before
            their pixel data is decoded, so a decompression bomb cannot exhaust memory.

    Returns:
        ``(pixels, info)``: ``pixels`` is a ``float32`` array of shape ``(height, width)``
        with values in ``[0, 1]`` and MONOCHROME2 polarity; ``info`` describes the file.

    Raises:
        DataError: If the file is not an image of a supported format, cannot be decoded,
            is too large, or is not a single greyscale frame.
    """
    path = Path(path)
    file_format = sniff_format(path)
    if file_format is None:
        raise DataError(f"{path}: not a DICOM, PNG or JPEG file (unrecognised content)")
    try:
        if file_format == "dicom":
            return _read_dicom(path, max_pixels)
        return _read_pil(path, file_format, max_pixels)
    except DataError:
        raise
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: refused as a possible decompression bomb ({exc})") from exc
    except Image.DecompressionBombWarning as exc:
        raise DataError(f"{path}: refused as a possible decompression bomb ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad input file
        raise DataError(
            f"{path}: cannot decode this {file_format.upper()} file "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """Resize a ``[0, 1]`` image to ``size x size`` and quantise it to 8 bits.

    The aspect ratio is not kept: chest radiographs are close to square and a CNN trained
    on squashed images sees them squashed the same way at inference.

    Args:
        pixels: ``float32`` array of shape ``(height, width)`` in ``[0, 1]``.
        size: Side of the output square, in pixels.

    Returns:
        ``uint8`` array of shape ``(size, size)``.
    """
    image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32))
    small = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0))
    return np.clip(np.rint(small * 255.0), 0, 255).astype(np.uint8)

"""Decoding raw chest X-rays (DICOM, PNG, JPEG) into one common form.

Every reader returns a 2-D ``float32`` array in ``[0, 1]`` where higher values are
brighter (bone white, air black: the MONOCHROME2 convention), plus a small
:class:`ImageInfo` with properties that are safe to aggregate in statistics. Nothing from
a DICOM header that could identify a patient is returned.

The format is recognised from the file's first bytes, not its name: PACS exports often
have DICOM files without an extension, and some write DICOM without its 128-byte preamble.

How DICOM intensities become ``[0, 1]``, in the order of the standard's pipeline:

1. the stored values are decoded by pydicom's pixel handlers (uncompressed, deflated,
   RLE, JPEG baseline/extended/lossless, JPEG-LS and JPEG 2000 through the pinned
   pylibjpeg plugins);
2. the modality LUT or rescale slope/intercept turns them into modality units;
3. the first VOI LUT (a lookup table) or, failing that, the first window
   (centre/width, LINEAR, LINEAR_EXACT or SIGMOID) maps them to display values; its
   output range becomes ``[0, 1]``, so what the radiologist's window shows is what the
   model sees;
4. without a VOI, the image's own minimum and maximum become 0 and 1;
5. MONOCHROME1 images (bone dark) are inverted; pixel padding is set to 0 (black).

PNG and JPEG images are scaled from their own minimum and maximum as well; colour images
are converted to luminance.
"""

from __future__ import annotations

import dataclasses
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageOps

from cxr_tutorial.errors import DataError

DEFAULT_MAX_PIXELS = 50_000_000
"""Images with more pixels than this are refused (a 7000 x 7000 radiograph is 49 M)."""

BYTES_PER_PIXEL_ALLOWED = 4
"""With :data:`HEADER_ALLOWANCE`, bounds a file's size (and a deflated DICOM's inflated
size) from ``max_pixels``: 4 bytes cover 32-bit float pixels."""

HEADER_ALLOWANCE = 64 * 2**20
"""Bytes allowed beyond the pixels for headers, overlays and icons (64 MiB)."""

IMAGE_REASONS = {
    "not_an_image": "not a DICOM, PNG or JPEG file",
    "unreadable": "corrupt or truncated file that the decoder rejects",
    "too_large": "more pixels or bytes than max_pixels allows (decompression bomb guard)",
    "unsupported": "an image kind the prepared format cannot hold (multi-frame, colour DICOM, "
                   "no pixel data, no decoder for its transfer syntax)",
    "blank": "decodes to a single flat value",
}
"""Why a raw image can be refused: reason code to its meaning."""


class ImageError(DataError):
    """A raw image that cannot be prepared.

    Attributes:
        problem: What is wrong, without the file name.
        reason: One of the keys of :data:`IMAGE_REASONS`.
    """

    def __init__(self, path: Path, problem: str, reason: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.problem = problem
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """Non-identifying properties of one raw image.

    Attributes:
        file_format: ``dicom``, ``png`` or ``jpeg``.
        height: Rows of the raw image, in pixels.
        width: Columns of the raw image, in pixels.
        bits: Bits per sample of the stored data (BitsStored for DICOM, the bit depth of
            the file for PNG and JPEG).
        photometric: ``MONOCHROME1``, ``MONOCHROME2`` or ``RGB``.
        modality: DICOM Modality (``CR``, ``DX``...), or ``""`` for PNG/JPEG.
        transfer_syntax: DICOM transfer syntax name, or ``""`` for PNG/JPEG.
        voi: How intensities were mapped to ``[0, 1]``: ``lut`` (VOI LUT), ``window``,
            ``min-max``, or ``min-max (invalid window)`` when a window was unusable.
    """

    file_format: str
    height: int
    width: int
    bits: int
    photometric: str
    modality: str = ""
    transfer_syntax: str = ""
    voi: str = "min-max"


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def sniff_format(path: Path) -> str | None:
    """Tell the file format from its first bytes.

    DICOM files are recognised by the ``DICM`` marker after their 128-byte preamble, or,
    for files written without the preamble, by a first element in group 0002 or 0008.

    Args:
        path: Any file.

    Returns:
        ``dicom``, ``png``, ``jpeg``, or ``None`` for anything else.
    """
    with open(path, "rb") as handle:
        head = handle.read(132)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(_PNG_SIGNATURE):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00"):
        # A little-endian tag of the file meta (0002) or identifying (0008) group, then an
        # explicit VR (two capital letters) or an implicit length below 65536.
        vr = head[4:6]
        if (vr.isalpha() and vr.isupper()) or head[6:8] == b"\x00\x00":
            return "dicom"
    return None


def max_file_bytes(max_pixels: int) -> int:
    """Largest raw file (or inflated DICOM data set) accepted for a ``max_pixels`` limit."""
    return max_pixels * BYTES_PER_PIXEL_ALLOWED + HEADER_ALLOWANCE


def _to_unit(pixels: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Scale linearly so that the minimum becomes 0 and the maximum 1.

    Args:
        pixels: 2-D array of any numeric dtype.
        mask: Pixels to leave out of the minimum and maximum (padding), or None.

    Returns:
        ``float32`` array of the same shape; values outside the unmasked range are not
        clipped (the caller overwrites masked pixels).

    Raises:
        ValueError: If values are not finite or every pixel is masked or flat; the caller
            reports it for the file.
    """
    pixels = pixels.astype(np.float32, copy=False)
    counted = pixels if mask is None else pixels[~mask]
    if counted.size == 0:
        raise ValueError("every pixel is padding")
    low, high = float(counted.min()), float(counted.max())
    if not np.isfinite(low) or not np.isfinite(high):
        raise ValueError("pixel values are not finite")
    if high <= low:
        raise ValueError(f"every pixel has the same value ({low:g})")
    return (pixels - low) / (high - low)


def _first(value: Any) -> float:
    """First value of a possibly multi-valued DICOM number (the default view)."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """Apply a DICOM window (PS3.3 C.11.2.1.2) with its output scaled to ``[0, 1]``.

    Args:
        values: Modality values, any shape.
        center: Window Center.
        width: Window Width (``>= 1`` for LINEAR, ``> 0`` otherwise).
        function: ``LINEAR``, ``LINEAR_EXACT`` or ``SIGMOID``.

    Returns:
        ``float32`` array of the same shape, values in ``[0, 1]``.
    """
    values = values.astype(np.float64, copy=False)
    if function == "SIGMOID":
        out = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    elif function == "LINEAR_EXACT":
        out = np.clip((values - center) / width + 0.5, 0.0, 1.0)
    else:
        out = np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)
    return out.astype(np.float32)


def _dicom_voi(values: np.ndarray, ds: Any, mask: np.ndarray | None) -> tuple[np.ndarray, str]:
    """Map modality values to ``[0, 1]`` with the first VOI LUT, window, or min-max."""
    from pydicom.pixels.processing import apply_voi

    if ds.get("VOILUTSequence"):
        item = ds.VOILUTSequence[0]
        entries, first = int(item.LUTDescriptor[0]) or 2**16, int(item.LUTDescriptor[1])
        table = apply_voi(np.arange(first, first + entries, dtype=np.int64), ds)
        low, high = float(table.min()), float(table.max())
        if high > low:
            mapped = apply_voi(np.rint(values).astype(np.int64), ds)
            return ((mapped.astype(np.float32) - low) / (high - low)), "lut"
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        valid = function in ("LINEAR", "LINEAR_EXACT", "SIGMOID") and (
            width >= 1 if function == "LINEAR" else width > 0
        )
        if valid:
            return _window(values, center, width, function), "window"
        return _to_unit(values, mask), "min-max (invalid window)"
    return _to_unit(values, mask), "min-max"


def _padding_mask(stored: np.ndarray, ds: Any) -> np.ndarray | None:
    """Pixels marked as padding by Pixel Padding Value (and Range Limit), or None."""
    if "PixelPaddingValue" not in ds:
        return None
    first = int(ds.PixelPaddingValue)
    last = int(ds.get("PixelPaddingRangeLimit", first))
    mask = (stored >= min(first, last)) & (stored <= max(first, last))
    return mask if mask.any() else None


def _check_deflated(path: Path, limit: int) -> None:
    """Refuse a deflated DICOM whose data set would inflate beyond ``limit`` bytes.

    pydicom inflates a deflated data set in one piece; inflating it here first, in
    bounded chunks, stops a small file that would expand to gigabytes.
    """
    with open(path, "rb") as handle:
        handle.seek(132)
        element = handle.read(12)
        if len(element) < 12 or element[:6] != b"\x02\x00\x00\x00UL":
            raise ImageError(path, "deflated DICOM without a file meta group length; "
                                   "cannot bound its size safely", "unsupported")
        handle.seek(132 + 12 + struct.unpack("<I", element[8:12])[0])
        inflater, total, chunk = zlib.decompressobj(-zlib.MAX_WBITS), 0, b""
        while True:
            if not chunk:
                chunk = handle.read(2**20)
                if not chunk:
                    return
            total += len(inflater.decompress(chunk, 2**20))
            chunk = inflater.unconsumed_tail
            if total > limit:
                raise ImageError(
                    path, f"deflated data set inflates to more than {limit} bytes, beyond "
                          "what max_pixels allows (possible decompression bomb)", "too_large")
            if inflater.eof:
                return


def _read_dicom(path: Path, max_pixels: int) -> tuple[np.ndarray, ImageInfo]:
    """Decode a DICOM file: modality LUT, VOI LUT or window, MONOCHROME1 inversion."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, get_decoder
    from pydicom.uid import (
        DeflatedExplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    )

    with open(path, "rb") as handle:
        part10 = handle.read(132)[128:] == b"DICM"
    meta = pydicom.filereader.read_file_meta_info(path) if part10 else {}
    if meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        _check_deflated(path, max_file_bytes(max_pixels))
    ds = pydicom.dcmread(path, force=True, defer_size="1 MB")
    if not any(key in ds for key in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageError(path, "cannot decode this DICOM file: no pixel data (the file is "
                               "truncated, or holds a report or an index, not an image)",
                         "unreadable")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows * cols > max_pixels:
        raise ImageError(path, f"{cols} x {rows} pixels is more than max_pixels={max_pixels}",
                         "too_large")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise ImageError(path, "multi-frame DICOM is not supported (expected one frame)",
                         "unsupported")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageError(
            path, f"PhotometricInterpretation {photometric!r} is not a greyscale X-ray "
                  "(expected MONOCHROME1 or MONOCHROME2)", "unsupported")
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        if not little:
            raise ImageError(path, "big-endian DICOM without file meta is not supported",
                             "unsupported")
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian)
    syntax = ds.file_meta.TransferSyntaxUID
    try:
        available = get_decoder(syntax).is_available
    except NotImplementedError:
        available = False
    if not available:
        raise ImageError(path, f"no pixel decoder for transfer syntax {syntax.name} "
                               f"({syntax}) is installed", "unsupported")
    stored = ds.pixel_array
    mask = _padding_mask(stored, ds)
    try:
        unit, voi = _dicom_voi(apply_modality_lut(stored, ds), ds, mask)
    except ValueError as exc:
        raise ImageError(path, f"decodes to a single flat value ({exc})", "blank") from None
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit
    if mask is not None:
        unit[mask] = 0.0
    if float(unit.max()) <= float(unit.min()):
        raise ImageError(path, f"decodes to a single flat value after the {voi} mapping "
                               "(blank image, or a window outside its values)", "blank")
    info = ImageInfo(
        file_format="dicom",
        height=rows,
        width=cols,
        bits=int(ds.get("BitsStored", 0) or 0),
        photometric=photometric,
        modality=str(ds.get("Modality", "") or ""),
        transfer_syntax=str(syntax.name),
        voi=voi,
    )
    return unit, info


def _png_bits(path: Path) -> int:
    """Bit depth from a PNG's IHDR chunk (Pillow reduces 16-bit colour to 8 bits)."""
    with open(path, "rb") as handle:
        head = handle.read(26)
    return head[24] if len(head) == 26 and head[12:16] == b"IHDR" else 8


def _read_pil(path: Path, file_format: str, max_pixels: int) -> tuple[np.ndarray, ImageInfo]:
    """Decode a PNG or JPEG with Pillow; colour images are converted to luminance."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(
                    path, f"{width} x {height} pixels is more than max_pixels={max_pixels}",
                    "too_large")
            bits = _png_bits(path) if file_format == "png" else int(getattr(image, "bits", 8))
            mode = image.mode
            grey = mode in ("L", "LA", "1", "P", "F") or mode.startswith("I")
            photometric = "MONOCHROME2" if grey else "RGB"
            if image.getexif().get(0x0112, 1) != 1:  # EXIF orientation: show as viewers do
                image = ImageOps.exif_transpose(image)
                width, height = image.size
            if mode.startswith("I") or mode == "F":
                pixels = np.asarray(image).astype(np.float32)
            else:
                pixels = np.asarray(image.convert("L"))
    try:
        unit = _to_unit(pixels)
    except ValueError as exc:
        raise ImageError(path, f"decodes to a single flat value ({exc})", "blank") from None
    return unit, ImageInfo(file_format, height, width, bits, photometric, voi="min-max")


def read_image(
    path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, ImageInfo]:
    """Read one raw chest X-ray.

    Args:
        path: A DICOM, PNG or JPEG file (recognised by content, whatever its name).
        max_pixels: Largest accepted width x height. Larger images are refused before
            their pixel data is decoded, and so are files larger than
            :func:`max_file_bytes`, so a decompression bomb cannot exhaust memory.

    Returns:
        ``(pixels, info)``: ``pixels`` is a ``float32`` array of shape ``(height, width)``
        with values in ``[0, 1]`` and MONOCHROME2 polarity; ``info`` describes the file.

    Raises:
        ImageError: If the file is not an image of a supported format, cannot be decoded,
            is too large, is not a single greyscale frame or is blank. Its ``reason``
            attribute is a key of :data:`IMAGE_REASONS`.
    """
    path = Path(path)
    file_format = sniff_format(path)
    if file_format is None:
        raise ImageError(path, "not a DICOM, PNG or JPEG file (unrecognised content)",
                         "not_an_image")
    size, limit = path.stat().st_size, max_file_bytes(max_pixels)
    if size > limit:
        raise ImageError(path, f"file of {size} bytes is larger than the {limit} bytes that "
                               f"max_pixels={max_pixels} allows", "too_large")
    try:
        if file_format == "dicom":
            return _read_dicom(path, max_pixels)
        return _read_pil(path, file_format, max_pixels)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(path, f"refused as a possible decompression bomb ({exc})",
                         "too_large") from exc
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad input file
        raise ImageError(
            path, f"cannot decode this {file_format.upper()} file ({type(exc).__name__}: "
                  f"{exc})", "unreadable") from exc


def stored_pixels(path: str | Path) -> tuple[np.ndarray, str]:
    """The pixel values as the file stores them, before any mapping (to show the raw data).

    Args:
        path: A DICOM, PNG or JPEG file.

    Returns:
        ``(values, photometric)``: the stored array (2-D, or 3-D for colour) and
        ``MONOCHROME1``, ``MONOCHROME2`` or ``RGB``.

    Raises:
        ImageError: If the file is not an image of a supported format.
    """
    path = Path(path)
    if sniff_format(path) == "dicom":
        import pydicom

        ds = pydicom.dcmread(path, force=True)
        return ds.pixel_array, str(ds.get("PhotometricInterpretation", ""))
    if sniff_format(path) is None:
        raise ImageError(path, "not a DICOM, PNG or JPEG file", "not_an_image")
    with Image.open(path) as image:
        grey = image.mode in ("L", "1", "P", "F") or image.mode.startswith("I")
        return np.asarray(image), "MONOCHROME2" if grey else "RGB"


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


class Decoded(NamedTuple):
    """What a decoding worker sends back for one file: small, cheap to pickle.

    Attributes:
        image: ``uint8`` array of shape ``(size, size)``, or None on failure.
        info: The raw image's properties, or None on failure.
        reason: ``""`` on success, else a key of :data:`IMAGE_REASONS` (or ``crashed``).
        message: ``""`` on success, else what is wrong (without the file name).
    """

    image: np.ndarray | None
    info: ImageInfo | None
    reason: str = ""
    message: str = ""


def decode_and_resize(job: tuple[Path, int, int]) -> Decoded:
    """Read one file and resize it; the unit of work of the parallel decoders.

    Args:
        job: ``(path, size, max_pixels)``.

    Returns:
        A :class:`Decoded`; decoding errors come back as its ``reason`` and ``message``
        rather than as exceptions, so one bad file does not stop the others.
    """
    path, size, max_pixels = job
    try:
        pixels, info = read_image(path, max_pixels)
    except ImageError as exc:
        return Decoded(None, None, exc.reason, exc.problem)
    return Decoded(resize(pixels, size), info)

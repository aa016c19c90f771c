"""Small raw images made by the tests themselves: DICOM, PNG and JPEG with known content."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    RLELossless,
    generate_uid,
)

from cxr_tutorial.images import Decoded, decode_and_resize

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


def encode_jpeg_lossless(values: np.ndarray, precision: int) -> bytes:
    """Encode a greyscale image as a lossless JPEG (ITU T.81 process 14, predictor 1).

    Written for the tests from the standard: no encoder for this process is installed,
    and it lets the tests prove that the pinned decoder reads it. One Huffman table gives
    every difference category (0 to 16) a 5-bit code.

    Args:
        values: Integer array of shape ``(rows, columns)`` in ``[0, 2**precision)``.
        precision: Bits per sample, 2 to 16.

    Returns:
        The JPEG codestream, ``FFD8`` to ``FFD9``.
    """
    rows, cols = values.shape
    image = values.astype(np.int64)
    predicted = np.empty_like(image)
    predicted[0, 0] = 1 << (precision - 1)
    predicted[0, 1:] = image[0, :-1]  # first row: the pixel to the left
    predicted[1:, 0] = image[:-1, 0]  # first column: the pixel above
    predicted[1:, 1:] = image[1:, :-1]  # elsewhere: predictor 1, the pixel to the left
    differences = ((image - predicted + 32768) % 65536) - 32768
    bits: list[str] = []
    for difference in differences.ravel().tolist():
        category = 16 if difference == -32768 else abs(difference).bit_length()
        bits.append(format(category, "05b"))
        if 0 < category < 16:
            extra = difference if difference > 0 else difference + (1 << category) - 1
            bits.append(format(extra, f"0{category}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    entropy = bytes(int(stream[i:i + 8], 2) for i in range(0, len(stream), 8))
    entropy = entropy.replace(b"\xff", b"\xff\x00")

    def segment(marker: int, body: bytes) -> bytes:
        return struct.pack(">HH", marker, len(body) + 2) + body

    frame = struct.pack(">BHHBBBB", precision, rows, cols, 1, 1, 0x11, 0)
    counts = bytes([0, 0, 0, 0, 17] + [0] * 11)
    table = bytes([0x00]) + counts + bytes(range(17))
    scan = bytes([1, 1, 0x00, 1, 0, 0x00])  # one component, predictor 1, no point transform
    return (b"\xff\xd8" + segment(0xFFC3, frame) + segment(0xFFC4, table)
            + segment(0xFFDA, scan) + entropy + b"\xff\xd9")


def _encapsulated(values: np.ndarray, syntax: UID, bits_stored: int) -> bytes:
    """Pixel data of one frame, encoded by the tests for a JPEG transfer syntax."""
    if syntax == JPEGBaseline8Bit:
        buffer = io.BytesIO()
        Image.fromarray(values.astype(np.uint8)).save(buffer, format="JPEG", quality=95)
        return encapsulate([buffer.getvalue()])
    if syntax in (JPEGLossless, JPEGLosslessSV1):
        return encapsulate([encode_jpeg_lossless(values, bits_stored)])
    raise ValueError(f"tests cannot encode {syntax.name}")


def write_dicom(
    path: Path,
    seed: int = 0,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    compress: bool = False,
    pixels: np.ndarray | None = None,
    *,
    syntax: UID | str | None = None,
    stored: np.ndarray | None = None,
    signed: bool = False,
    header: dict[str, Any] | None = None,
    preamble: bool = True,
) -> np.ndarray:
    """Write a single-frame greyscale DICOM with fictitious patient data.

    Args:
        path: Output file.
        seed: Phantom seed (ignored when ``pixels`` or ``stored`` is given).
        photometric: ``MONOCHROME1`` stores inverted values (bone dark).
        bits_stored: 8 (stored in 8 bits) or up to 16 (stored in 16 bits).
        compress: Encode with RLE Lossless (same as ``syntax=RLELossless``).
        pixels: Picture in [0, 1] to store instead of a phantom.
        syntax: Transfer syntax UID: uncompressed (explicit, implicit, deflated), RLE and
            JPEG 2000 through pydicom's encoders; JPEG baseline (a Pillow JPEG) and JPEG
            lossless (:func:`encode_jpeg_lossless`) encapsulated by the tests.
        stored: Exact stored values to write instead of a scaled picture.
        signed: PixelRepresentation 1 (two's complement); ``stored`` must then be given.
        header: More attributes to set (e.g. ``WindowCenter``, ``RescaleSlope``).
        preamble: False writes the bare data set, as some old exports do: no preamble, no
            ``DICM`` marker, no file meta, implicit VR little endian.

    Returns:
        The picture in [0, 1], MONOCHROME2 polarity, as it should decode without a window
        (when ``stored`` is given: its values min-max scaled).
    """
    syntax = UID(syntax or (RLELossless if compress else ExplicitVRLittleEndian))
    if stored is None:
        picture = phantom(seed) if pixels is None else pixels
        top = 2**bits_stored - 1
        values = np.rint((picture if photometric == "MONOCHROME2" else 1 - picture) * top)
        values = values.astype(np.uint8 if bits_stored <= 8 else np.uint16)
    else:
        values = stored
        unit = (stored - stored.min()) / (stored.max() - stored.min())
        picture = unit if photometric == "MONOCHROME2" else 1 - unit
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
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = values.tobytes()
    for key, value in (header or {}).items():
        setattr(ds, key, value)
    if syntax.is_compressed:
        if syntax.name.startswith(("RLE", "JPEG 2000")):
            ds.compress(syntax)
        else:
            ds.PixelData = _encapsulated(values, syntax, bits_stored)
            ds["PixelData"].VR = "OB"
            meta.TransferSyntaxUID = syntax
    else:
        meta.TransferSyntaxUID = syntax
    if preamble:
        ds.save_as(path, enforce_file_format=True)
    else:
        del ds.file_meta
        pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True)
    return picture


def write_deflate_bomb(path: Path, inflated_bytes: int) -> None:
    """Write a tiny deflated-syntax DICOM whose data set inflates to ``inflated_bytes``.

    The file meta is valid; the deflated data set is zeros, which is all that is needed
    to test that its size is bounded before anything parses it.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path)])
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    buffer = io.BytesIO()
    pydicom.filewriter.write_file_meta_info(pydicom.filebase.DicomFileLike(buffer), meta)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunk = bytes(2**20)
    body = b"".join(deflater.compress(chunk) for _ in range(inflated_bytes // len(chunk) + 1))
    path.write_bytes(b"\0" * 128 + b"DICM" + buffer.getvalue() + body + deflater.flush())


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


def write_png_raw(path: Path, values: np.ndarray, idat: bytes | None = None) -> None:
    """Write a PNG byte by byte, for what Pillow cannot write (16-bit RGB) or should not.

    Args:
        path: Output file.
        values: ``uint8`` or ``uint16`` array of shape ``(rows, columns)`` (grey) or
            ``(rows, columns, 3)`` (RGB).
        idat: Compressed pixel data to write instead of ``values``' own: a few bytes make a
            file that claims the size of ``values`` but holds almost nothing (the shape of
            a decompression bomb; ``values`` may then be a broadcast view).
    """
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    rows, cols = values.shape[:2]
    depth, colour = values.dtype.itemsize * 8, 2 if values.ndim == 3 else 0
    if idat is None:
        lines = values.astype(f">u{values.dtype.itemsize}").reshape(rows, -1).view(np.uint8)
        idat = zlib.compress(np.hstack([np.zeros((rows, 1), np.uint8), lines]).tobytes())
    header = struct.pack(">IIBBBBB", cols, rows, depth, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
                     + chunk(b"IEND", b""))


def write_png_header(path: Path, width: int, height: int) -> None:
    """Write a tiny 8-bit grey PNG that claims ``width x height`` pixels but holds none."""
    claimed = np.broadcast_to(np.zeros(1, dtype=np.uint8), (height, width))
    write_png_raw(path, claimed, idat=zlib.compress(b"\0" * 16))


def write_jpeg(path: Path, seed: int = 0) -> np.ndarray:
    """Write a phantom as a greyscale JPEG (quality 95). Returns the picture in [0, 1]."""
    picture = phantom(seed)
    Image.fromarray(np.rint(picture * 255).astype(np.uint8)).save(path, format="JPEG",
                                                                   quality=95)
    return picture


def decode_or_die(job: tuple[Path, int, int]) -> Decoded:
    """Like :func:`decode_and_resize`, but the process dies on a file named ``*crash*``.

    Stands in for a decoder that crashes on a malformed file: module level, so decoding
    processes can import it.
    """
    if "crash" in Path(job[0]).name:
        os._exit(3)
    return decode_and_resize(job)

"""Decoding raw images: formats, polarity, bit depth, and refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxr_tutorial.errors import DataError
from cxr_tutorial.images import read_image, resize, sniff_format
from factories import write_dicom, write_jpeg, write_png


def _unit(picture: np.ndarray) -> np.ndarray:
    """Min-max scale, as read_image does."""
    return (picture - picture.min()) / (picture.max() - picture.min())


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("compress", [False, True])
def test_dicom_decodes_with_bone_bright(tmp_path: Path, photometric: str, compress: bool):
    picture = write_dicom(tmp_path / "x", photometric=photometric, compress=compress)
    pixels, info = read_image(tmp_path / "x")
    assert info.file_format == "dicom" and info.photometric == photometric
    assert info.bits == 12
    assert pixels.dtype == np.float32 and pixels.shape == picture.shape
    np.testing.assert_allclose(pixels, _unit(picture), atol=2 / 4095)


def test_eight_bit_dicom(tmp_path: Path):
    picture = write_dicom(tmp_path / "a.dcm", bits_stored=8)
    pixels, info = read_image(tmp_path / "a.dcm")
    assert info.bits == 8
    np.testing.assert_allclose(pixels, _unit(picture), atol=2 / 255)


@pytest.mark.parametrize("mode,bits,tolerance", [("L", 8, 2 / 255), ("I;16", 16, 1e-4),
                                                 ("RGB", 8, 2 / 255)])
def test_png_modes(tmp_path: Path, mode: str, bits: int, tolerance: float):
    picture = write_png(tmp_path / "a.png", mode=mode)
    pixels, info = read_image(tmp_path / "a.png")
    assert (info.file_format, info.bits) == ("png", bits)
    assert info.photometric == ("RGB" if mode == "RGB" else "MONOCHROME2")
    np.testing.assert_allclose(pixels, _unit(picture), atol=tolerance)


def test_jpeg(tmp_path: Path):
    picture = write_jpeg(tmp_path / "a.JPG")
    pixels, info = read_image(tmp_path / "a.JPG")
    assert info.file_format == "jpeg"
    assert np.abs(pixels - _unit(picture)).mean() < 0.02


def test_format_comes_from_content_not_name(tmp_path: Path):
    write_png(tmp_path / "looks_like.dcm")
    assert sniff_format(tmp_path / "looks_like.dcm") == "png"


def test_non_image_is_refused_with_its_name(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"notes\.txt: not a DICOM, PNG or JPEG"):
        read_image(tmp_path / "notes.txt")


def test_truncated_dicom_is_refused(tmp_path: Path):
    write_dicom(tmp_path / "a.dcm")
    data = (tmp_path / "a.dcm").read_bytes()
    (tmp_path / "a.dcm").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"a\.dcm: cannot decode"):
        read_image(tmp_path / "a.dcm")


@pytest.mark.parametrize("writer", [write_png, write_dicom])
def test_oversized_image_is_refused_before_decoding(tmp_path: Path, writer):
    writer(tmp_path / "big")
    with pytest.raises(DataError, match="more than max_pixels=100"):
        read_image(tmp_path / "big", max_pixels=100)


def test_resize_gives_square_uint8():
    small = resize(np.linspace(0, 1, 96 * 80, dtype=np.float32).reshape(96, 80), 32)
    assert small.shape == (32, 32) and small.dtype == np.uint8
    assert small.min() < 10 and small.max() > 245

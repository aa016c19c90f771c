"""Decoding raw images: formats, transfer syntaxes, intensity mapping, polarity, refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    RLELossless,
)

from cxr_tutorial.errors import DataError
from cxr_tutorial.images import (
    ImageError,
    decode_and_resize,
    max_file_bytes,
    read_image,
    resize,
    sniff_format,
)
from factories import (
    phantom,
    write_deflate_bomb,
    write_dicom,
    write_jpeg,
    write_png,
    write_png_header,
    write_png_raw,
)


def _unit(picture: np.ndarray) -> np.ndarray:
    """Min-max scale, as read_image does without a window."""
    return (picture - picture.min()) / (picture.max() - picture.min())


def _refused(path: Path, reason: str, **kwargs) -> str:
    """Read a file that must be refused; return the message after checking the reason."""
    with pytest.raises(ImageError) as info:
        read_image(path, **kwargs)
    assert info.value.reason == reason, str(info.value)
    assert str(info.value).startswith(f"{path}: ")
    return str(info.value)


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("compress", [False, True])
def test_dicom_decodes_with_bone_bright(tmp_path: Path, photometric: str, compress: bool):
    picture = write_dicom(tmp_path / "x", photometric=photometric, compress=compress)
    pixels, info = read_image(tmp_path / "x")
    assert info.file_format == "dicom" and info.photometric == photometric
    assert info.bits == 12
    assert pixels.dtype == np.float32 and pixels.shape == picture.shape
    np.testing.assert_allclose(pixels, _unit(picture), atol=2 / 4095)


@pytest.mark.parametrize(
    "syntax,bits,tolerance",
    [
        (ExplicitVRLittleEndian, 12, 2 / 4095),
        (ImplicitVRLittleEndian, 12, 2 / 4095),
        (DeflatedExplicitVRLittleEndian, 12, 2 / 4095),
        (RLELossless, 16, 2 / 65535),
        (JPEG2000Lossless, 12, 2 / 4095),  # encoded by pylibjpeg-openjpeg
        (JPEGBaseline8Bit, 8, 0.08),  # a Pillow JPEG, encapsulated; lossy
        (JPEGLossless, 12, 2 / 4095),  # encoded by the tests' own T.81 encoder
        (JPEGLosslessSV1, 16, 2 / 65535),
    ],
    ids=lambda v: getattr(v, "name", v),
)
def test_every_transfer_syntax_decodes(tmp_path: Path, syntax, bits: int, tolerance: float):
    picture = write_dicom(tmp_path / "x.dcm", syntax=syntax, bits_stored=bits)
    pixels, info = read_image(tmp_path / "x.dcm")
    assert info.transfer_syntax == syntax.name and info.bits == bits
    np.testing.assert_allclose(pixels, _unit(picture), atol=tolerance)


@pytest.mark.parametrize("bits", [8, 10, 12, 14, 16])
def test_bits_stored_from_8_to_16(tmp_path: Path, bits: int):
    picture = write_dicom(tmp_path / "a.dcm", bits_stored=bits)
    pixels, info = read_image(tmp_path / "a.dcm")
    assert info.bits == bits
    np.testing.assert_allclose(pixels, _unit(picture), atol=2 / (2**bits - 1))


def test_dicom_without_preamble_or_extension(tmp_path: Path):
    picture = write_dicom(tmp_path / "IM0001", preamble=False)
    assert (tmp_path / "IM0001").read_bytes()[:2] == b"\x08\x00"
    assert sniff_format(tmp_path / "IM0001") == "dicom"
    pixels, info = read_image(tmp_path / "IM0001")
    assert info.transfer_syntax == "Implicit VR Little Endian"
    np.testing.assert_allclose(pixels, _unit(picture), atol=2 / 4095)


def _ramp(low: int, high: int) -> np.ndarray:
    """Stored values from ``low`` to ``high`` over a 40 x 64 image (uint16)."""
    return np.linspace(low, high, 40 * 64).reshape(40, 64).round().astype(np.uint16)


def test_rescale_then_linear_window_in_modality_units(tmp_path: Path):
    stored = _ramp(0, 4095)
    header = {"RescaleSlope": "2", "RescaleIntercept": "-1024", "WindowCenter": "2048",
              "WindowWidth": "4000"}
    write_dicom(tmp_path / "a.dcm", stored=stored, header=header)
    pixels, info = read_image(tmp_path / "a.dcm")
    modality = stored * 2.0 - 1024
    expected = np.clip((modality - 2047.5) / 3999 + 0.5, 0, 1)
    assert info.voi == "window"
    np.testing.assert_allclose(pixels, expected, atol=1e-6)
    # The window clips both ends; nothing is stretched beyond it.
    assert pixels.min() == 0 and pixels.max() == 1 and (pixels == 0).mean() > 0.1


def test_window_wider_than_the_data_is_not_stretched(tmp_path: Path):
    write_dicom(tmp_path / "a.dcm", stored=_ramp(1024, 3072),
                header={"WindowCenter": "2048", "WindowWidth": "8193"})
    pixels, _ = read_image(tmp_path / "a.dcm")
    assert pixels.min() == pytest.approx(0.375, abs=1e-3)
    assert pixels.max() == pytest.approx(0.625, abs=1e-3)


def test_first_of_several_windows_is_used(tmp_path: Path):
    write_dicom(tmp_path / "a.dcm", stored=_ramp(0, 4095),
                header={"WindowCenter": ["1000", "3000"], "WindowWidth": ["1001", "500"]})
    pixels, _ = read_image(tmp_path / "a.dcm")
    expected = np.clip((_ramp(0, 4095) - 999.5) / 1000 + 0.5, 0, 1)
    np.testing.assert_allclose(pixels, expected, atol=1e-6)


@pytest.mark.parametrize("function", ["LINEAR_EXACT", "SIGMOID"])
def test_other_voi_functions(tmp_path: Path, function: str):
    stored = _ramp(0, 4095)
    write_dicom(tmp_path / "a.dcm", stored=stored, header={
        "WindowCenter": "2000", "WindowWidth": "1000", "VOILUTFunction": function})
    pixels, _ = read_image(tmp_path / "a.dcm")
    if function == "SIGMOID":
        expected = 1 / (1 + np.exp(-4 * (stored - 2000.0) / 1000))
    else:
        expected = np.clip((stored - 2000.0) / 1000 + 0.5, 0, 1)
    np.testing.assert_allclose(pixels, expected, atol=1e-6)


def test_invalid_window_falls_back_to_min_max(tmp_path: Path):
    picture = write_dicom(tmp_path / "a.dcm", header={"WindowCenter": "100",
                                                       "WindowWidth": "0"})
    pixels, info = read_image(tmp_path / "a.dcm")
    assert info.voi == "min-max (invalid window)"
    np.testing.assert_allclose(pixels, _unit(picture), atol=2 / 4095)


def test_voi_lut_sequence_maps_through_its_table(tmp_path: Path):
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    table = np.rint(np.sqrt(np.arange(4096) / 4095) * 3000 + 500).astype(np.uint16)
    item.LUTData = table.tolist()
    item["LUTData"].VR = "US"
    stored = _ramp(0, 4095)
    write_dicom(tmp_path / "a.dcm", stored=stored, header={
        "VOILUTSequence": [item], "WindowCenter": "10", "WindowWidth": "20"})
    pixels, info = read_image(tmp_path / "a.dcm")
    assert info.voi == "lut"  # the table wins over the window, as the standard says
    np.testing.assert_allclose(pixels, (table[stored] - 500) / 3000.0, atol=1e-6)


def test_monochrome1_is_inverted_after_its_window(tmp_path: Path):
    stored = _ramp(0, 4095)
    write_dicom(tmp_path / "a.dcm", stored=stored, photometric="MONOCHROME1",
                header={"WindowCenter": "1000", "WindowWidth": "1001"})
    pixels, _ = read_image(tmp_path / "a.dcm")
    np.testing.assert_allclose(pixels, 1 - np.clip((stored - 999.5) / 1000 + 0.5, 0, 1),
                               atol=1e-6)


def test_signed_pixels_are_decoded(tmp_path: Path):
    stored = (_ramp(0, 3000).astype(np.int32) - 1000).astype(np.int16)
    write_dicom(tmp_path / "a.dcm", stored=stored, signed=True)
    pixels, _ = read_image(tmp_path / "a.dcm")
    np.testing.assert_allclose(pixels, _unit(stored.astype(float)), atol=1e-6)


def test_pixel_padding_is_black_and_left_out_of_the_scaling(tmp_path: Path):
    stored = _ramp(1000, 3000)
    stored[:, :8] = 4095  # the collimated border, marked as padding
    write_dicom(tmp_path / "a.dcm", stored=stored, photometric="MONOCHROME1",
                header={"PixelPaddingValue": 4095})
    pixels, _ = read_image(tmp_path / "a.dcm")
    assert (pixels[:, :8] == 0).all()
    inner = stored[:, 8:].astype(float)
    np.testing.assert_allclose(pixels[:, 8:], 1 - _unit(inner), atol=1e-6)


@pytest.mark.parametrize("mode,bits,tolerance", [("L", 8, 2 / 255), ("I;16", 16, 1e-4),
                                                 ("RGB", 8, 2 / 255), ("RGBA", 8, 2 / 255),
                                                 ("P", 8, 2 / 255), ("LA", 8, 2 / 255)])
def test_png_modes(tmp_path: Path, mode: str, bits: int, tolerance: float):
    picture = write_png(tmp_path / "a.png", mode=mode)
    pixels, info = read_image(tmp_path / "a.png")
    assert (info.file_format, info.bits) == ("png", bits)
    assert info.photometric == ("RGB" if mode.startswith("RGB") else "MONOCHROME2")
    np.testing.assert_allclose(pixels, _unit(picture), atol=tolerance)


def test_sixteen_bit_colour_png(tmp_path: Path):
    picture = phantom(2)
    grey = np.rint(picture * 65535).astype(np.uint16)
    write_png_raw(tmp_path / "a.png", np.stack([grey] * 3, axis=-1))
    pixels, info = read_image(tmp_path / "a.png")
    assert (info.bits, info.photometric) == (16, "RGB")
    np.testing.assert_allclose(pixels, _unit(picture), atol=2 / 255)  # read at 8 bits


def test_jpeg(tmp_path: Path):
    picture = write_jpeg(tmp_path / "a.JPG")
    pixels, info = read_image(tmp_path / "a.JPG")
    assert info.file_format == "jpeg"
    assert np.abs(pixels - _unit(picture)).mean() < 0.02


def test_jpeg_exif_orientation_is_applied(tmp_path: Path):
    picture = phantom(4)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(np.rint(picture * 255).astype(np.uint8)).save(
        tmp_path / "a.jpg", quality=95, exif=exif)
    pixels, info = read_image(tmp_path / "a.jpg")
    assert (info.height, info.width) == (80, 96) and pixels.shape == (80, 96)
    assert np.abs(pixels - np.rot90(_unit(picture), k=-1)).mean() < 0.02


def test_format_comes_from_content_not_name(tmp_path: Path):
    write_png(tmp_path / "looks_like.dcm")
    assert sniff_format(tmp_path / "looks_like.dcm") == "png"


def test_non_image_is_refused_with_its_name(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("not an image")
    message = _refused(tmp_path / "notes.txt", "not_an_image")
    assert "not a DICOM, PNG or JPEG" in message
    assert isinstance(ImageError(tmp_path, "x", "blank"), DataError)


def test_truncated_dicom_is_refused(tmp_path: Path):
    write_dicom(tmp_path / "a.dcm")
    data = (tmp_path / "a.dcm").read_bytes()
    (tmp_path / "a.dcm").write_bytes(data[: len(data) // 2])
    assert "cannot decode" in _refused(tmp_path / "a.dcm", "unreadable")


def test_dicom_without_pixel_data_is_refused(tmp_path: Path):
    write_dicom(tmp_path / "a.dcm")
    data = (tmp_path / "a.dcm").read_bytes()
    (tmp_path / "a.dcm").write_bytes(data[: data.index(b"\xe0\x7f\x10\x00")])
    assert "no pixel data" in _refused(tmp_path / "a.dcm", "unreadable")


@pytest.mark.parametrize("writer", [write_png, write_dicom])
def test_oversized_image_is_refused_before_decoding(tmp_path: Path, writer):
    writer(tmp_path / "big")
    assert "more than max_pixels=100" in _refused(tmp_path / "big", "too_large",
                                                  max_pixels=100)


@pytest.mark.parametrize("side,expected", [(9000, "more than max_pixels"),
                                           (30000, "decompression bomb")])
def test_png_bomb_is_refused_from_its_header(tmp_path: Path, side: int, expected: str):
    write_png_header(tmp_path / "bomb.png", side, side)
    assert (tmp_path / "bomb.png").stat().st_size < 200
    assert expected in _refused(tmp_path / "bomb.png", "too_large")


def test_deflated_dicom_bomb_is_refused_before_inflating(tmp_path: Path):
    write_deflate_bomb(tmp_path / "bomb", max_file_bytes(100) + 2**20)
    assert (tmp_path / "bomb").stat().st_size < 200_000
    assert "inflates to more than" in _refused(tmp_path / "bomb", "too_large", max_pixels=100)


def test_oversized_file_is_refused_unread(tmp_path: Path):
    with open(tmp_path / "huge.png", "wb") as out:  # sparse: costs no disk
        out.write(b"\x89PNG\r\n\x1a\n")
        out.truncate(max_file_bytes(100) + 1)
    assert "larger than" in _refused(tmp_path / "huge.png", "too_large", max_pixels=100)


@pytest.mark.parametrize("header,expected", [
    ({"NumberOfFrames": 2}, "multi-frame"),
    ({"PhotometricInterpretation": "RGB"}, "not a greyscale X-ray"),
])
def test_unsupported_dicom_kinds(tmp_path: Path, header, expected):
    write_dicom(tmp_path / "a.dcm", header=header)
    assert expected in _refused(tmp_path / "a.dcm", "unsupported")


def test_unknown_transfer_syntax_is_named(tmp_path: Path):
    write_dicom(tmp_path / "a.dcm")
    data = (tmp_path / "a.dcm").read_bytes().replace(b"1.2.840.10008.1.2.1\0",
                                                     b"1.2.840.99999.1.2.3\0")
    (tmp_path / "a.dcm").write_bytes(data)
    assert "no pixel decoder for transfer syntax" in _refused(tmp_path / "a.dcm",
                                                              "unsupported")


@pytest.mark.parametrize("kind", ["png", "window"])
def test_blank_images_are_refused(tmp_path: Path, kind: str):
    if kind == "png":
        Image.new("L", (20, 20), 7).save(tmp_path / "a", format="PNG")
    else:  # a window entirely below the image's values
        write_dicom(tmp_path / "a", stored=_ramp(2000, 3000),
                    header={"WindowCenter": "100", "WindowWidth": "100"})
    assert "single flat value" in _refused(tmp_path / "a", "blank")


def test_decode_and_resize_reports_failures_as_values(tmp_path: Path):
    write_png(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"junk")
    good = decode_and_resize((tmp_path / "a.png", 32, 10_000))
    bad = decode_and_resize((tmp_path / "b.png", 32, 10_000))
    assert good.image.shape == (32, 32) and good.info.width == 80 and good.reason == ""
    assert bad.image is None and bad.reason == "not_an_image"
    assert bad.message.startswith("not a DICOM") and "b.png" not in bad.message


def test_resize_gives_square_uint8():
    small = resize(np.linspace(0, 1, 96 * 80, dtype=np.float32).reshape(96, 80), 32)
    assert small.shape == (32, 32) and small.dtype == np.uint8
    assert small.min() < 10 and small.max() > 245

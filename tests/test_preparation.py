"""The Data Preparator's tasks as library calls: prepare, sanity_check, statistics."""

from __future__ import annotations

import hashlib
import itertools
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import write_labels
from cxr_tutorial import prepared
from cxr_tutorial.errors import ConfigError, DataError, FormatError
from cxr_tutorial.preparation import (
    WITHHELD,
    decodable_samples,
    decode_images,
    load_prep_settings,
    prepare,
    read_raw_cases,
    sanity_check,
    statistics,
    suppress_counts,
)
from cxr_tutorial.prepared import PreparedWriter, open_prepared, read_prepared_labels
from factories import (
    PATIENT,
    decode_or_die,
    write_dicom,
    write_png,
    write_png_header,
)


@pytest.fixture()
def settings(prep_parameters: Path):
    return load_prep_settings(prep_parameters, image_size=32, workers=1)


def _tree_digest(folder: Path) -> dict[str, str]:
    """Relative path to sha256 of every file below a folder."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _outputs(tmp_path: Path, name: str = "out") -> tuple[Path, Path]:
    return tmp_path / name / "data", tmp_path / name / "labels"


def _append_rows(labels: Path, *rows: str) -> None:
    with open(labels / "labels.csv", "a", encoding="utf-8") as out:
        out.write("".join(row + "\n" for row in rows))


def test_prepare_writes_the_documented_format(tmp_path, raw_site, settings):
    images, labels = raw_site
    data, out_labels = _outputs(tmp_path)
    report = prepare(images, labels, data, out_labels, settings)
    assert (report.cases, report.skipped, report.workers) == (6, 0, 1)
    dataset = open_prepared(data)
    assert dataset.spec.image_size == 32 and dataset.spec.labels_list == ("normal", "pneumonia")
    assert dataset.case_ids == [f"case-{i:05d}" for i in range(1, 7)]
    image = dataset.read("case-00001")
    assert image.shape == (32, 32) and image.dtype == np.uint8 and image.max() > image.min()
    prepared_labels = read_prepared_labels(out_labels, settings.labels_list)
    # Rows are sorted by raw image id: scan0.dcm (pneumonia) comes first.
    assert prepared_labels["case-00001"].tolist() == [0, 1]
    assert prepared_labels["case-00002"].tolist() == [1, 0]
    assert sorted(p.name for p in data.iterdir()) == ["cases.csv", "format.yaml", "images",
                                                       "sources.yaml"]
    sources = yaml.safe_load((data / "sources.yaml").read_text())
    assert sources["file_format"] == {"dicom": 4, "png": 2}
    assert sources["transfer_syntax"] == {"Explicit VR Little Endian": 2, "RLE Lossless": 2,
                                          "none": 2}
    assert sources["width"] == {"min": 80, "median": 80.0, "max": 80}
    assert sources["skipped"] == {}


def test_monochrome1_and_monochrome2_prepare_to_the_same_pixels(tmp_path, settings):
    from factories import phantom

    images = tmp_path / "images"
    images.mkdir()
    write_dicom(images / "m1.dcm", pixels=phantom(3), photometric="MONOCHROME1")
    write_dicom(images / "m2.dcm", pixels=phantom(3), photometric="MONOCHROME2")
    labels = write_labels(tmp_path / "labels", [("m1.dcm", "normal"), ("m2.dcm", "normal")])
    data, out_labels = _outputs(tmp_path)
    prepare(images, labels, data, out_labels, settings)
    dataset = open_prepared(data)
    first, second = dataset.read("case-00001"), dataset.read("case-00002")
    assert np.abs(first.astype(int) - second.astype(int)).max() <= 1


def test_no_header_value_or_file_name_reaches_the_output(tmp_path, raw_site, settings):
    images, labels = raw_site
    data, out_labels = _outputs(tmp_path)
    prepare(images, labels, data, out_labels, settings)
    statistics(data, out_labels, tmp_path / "out" / "statistics.yaml", settings)
    everything = b"".join(p.read_bytes() for p in tmp_path.joinpath("out").rglob("*")
                          if p.is_file())
    for value in [*PATIENT.values(), "scan0", "scan4.png", str(images)]:
        assert value.encode() not in everything, value


def test_keep_source_ids_is_opt_in_and_makes_safe_ids(tmp_path, raw_site, prep_parameters):
    images, labels = raw_site
    (images / "ward 3").mkdir()
    write_png(images / "ward 3" / "x.png")
    _append_rows(labels, "ward 3/x.png,normal")
    settings = load_prep_settings(prep_parameters, image_size=32, keep_source_ids=True)
    data, out_labels = _outputs(tmp_path)
    prepare(images, labels, data, out_labels, settings)
    case_ids = open_prepared(data).case_ids
    assert "scan4.png" in case_ids and "ward_3_x.png" in case_ids
    assert sanity_check(data, out_labels, settings) == 7


def test_kept_ids_that_collide_are_named(tmp_path, raw_site, prep_parameters):
    images, labels = raw_site
    (images / "a").mkdir()
    write_png(images / "a" / "b.png")
    write_png(images / "a_b.png")
    _append_rows(labels, "a/b.png,normal", "a_b.png,normal")
    settings = load_prep_settings(prep_parameters, image_size=32, keep_source_ids=True)
    with pytest.raises(DataError, match=r"row 9: image id 'a_b.png' would get the same case "
                                        r"id 'a_b.png' as row 8 \('a/b.png'\)"):
        prepare(images, labels, *_outputs(tmp_path), settings)


@pytest.mark.parametrize(
    "row,expected",
    [
        ("extra.png,pneumonai", r"row 8: unknown class 'pneumonai'; expected normal or "
                                r"pneumonia$"),
        ("extra.png,Pneumonia", r"unknown class 'Pneumonia'; .*\(did you mean 'pneumonia'\?\)"),
        ("extra.png,normal|pneumonia", r"several classes in one row need label_type: "
                                       r"multi_label"),
        ("extra.png,", r"row 8: empty 'Label'; expected normal or pneumonia"),
        (",normal", r"row 8: empty 'Image ID'"),
        ("missing.png,normal", r"row 8: image 'missing.png' not found"),
        ("EXTRA.PNG,normal", r"image 'EXTRA.PNG' not found in .*\(did you mean 'extra.png'\?\)"),
        ("scan1.dcm,normal", r"row 8: image id 'scan1.dcm' repeats row 3"),
        ("./scan1.dcm,normal", r"row 8: image id './scan1.dcm' names the same file as row 3"),
        ("../raw/labels/labels.csv,normal", r"row 8: image id '\.\./raw/labels/labels"
                                            r"\.csv' points outside the data folder"),
        ("/etc/passwd,normal", r"row 8: image id '/etc/passwd' points outside"),
        ("C:\\x.png,normal", r"row 8: image id 'C:\\\\x.png' points outside"),
    ],
)
def test_bad_label_rows_are_named(tmp_path, raw_site, settings, row, expected):
    images, labels = raw_site
    write_png(images / "extra.png")
    if not row.startswith("extra.png"):
        _append_rows(labels, "extra.png,normal")  # so that extra.png is not unlabelled
    _append_rows(labels, row)
    if not row.startswith("extra.png"):  # the extra row went first: renumber
        expected = expected.replace("row 8", "row 9")
    data, out_labels = _outputs(tmp_path)
    with pytest.raises(DataError) as info:
        prepare(images, labels, data, out_labels, settings)
    assert any(re.search(expected, line) for line in str(info.value).splitlines())
    assert not data.exists() or not any(p.name != ".cxr-tutorial-staging"
                                        for p in data.iterdir())


def test_all_problems_are_listed_together(tmp_path, raw_site, settings):
    images, labels = raw_site
    write_png(images / "unlabelled.png")
    (images / "notes.txt").write_text("export notes")
    (images / "scan4.png").unlink()
    with pytest.raises(DataError) as info:
        prepare(images, labels, *_outputs(tmp_path), settings)
    message = str(info.value)
    assert "3 problem(s)" in message
    assert "image 'scan4.png' not found" in message
    assert "unlabelled.png: image has no row" in message
    assert "notes.txt: not a DICOM, PNG or JPEG file, and no row" in message
    assert message.endswith("(images are decoded once these are fixed; a decoding problem, "
                            "if any, shows then)")


def test_index_files_hidden_files_and_a_labels_file_among_the_images_are_ignored(
        tmp_path, raw_site, settings):
    images, labels = raw_site
    (images / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM")
    (images / ".DS_Store").write_bytes(b"junk")
    (images / ".hidden").mkdir()
    (images / ".hidden" / "x.png").write_bytes(b"junk")
    shutil.copy(labels / "labels.csv", images / "labels.csv")
    report = prepare(images, images / "labels.csv", *_outputs(tmp_path), settings)
    assert (report.cases, report.skipped) == (6, 0)


# Each bad input: a function that breaks the pristine raw site, the reason it is reported
# under, a pattern its message matches, and how many of the six cases it costs.
BREAKS: dict[str, tuple[Callable[[Path, Path], None], str, str, int]] = {
    "corrupt file": (lambda i, _: (i / "scan2").write_bytes((i / "scan2").read_bytes()[:400]),
                     "unreadable", r"scan2: cannot decode this DICOM file", 1),
    "non-image with a row": (lambda i, _: (i / "scan5.png").write_text("not an image"),
                             "not_an_image", r"scan5.png: not a DICOM, PNG or JPEG", 1),
    "non-image without a row": (lambda i, _: (i / "notes.txt").write_text("notes"),
                                "not_an_image", r"notes.txt: not a DICOM, PNG or JPEG file, "
                                                r"and no row", 0),
    "image without a row": (lambda i, _: write_png(i / "extra.png"), "no_label",
                            r"extra.png: image has no row in .*labels.csv", 0),
    "row without an image": (lambda i, _: (i / "scan4.png").unlink(), "no_image",
                             r"row 6: image 'scan4.png' not found", 1),
    "unknown class": (lambda _, lab: _append_rows(lab, "scan1.dcm,pneumothorax") or
                      (lab / "labels.csv").write_text((lab / "labels.csv").read_text()
                                                      .replace("scan1.dcm,normal\n", "")),
                      "unknown_class", r"row 7: unknown class 'pneumothorax'", 1),
    "duplicate id": (lambda _, lab: _append_rows(lab, "scan3,pneumonia"), "duplicate_id",
                     r"row 8: image id 'scan3' repeats row 5", 1),
    "escaping id": (lambda _, lab: _append_rows(lab, "../labels/labels.csv,normal"),
                    "outside_data_folder", r"row 8: image id '../labels/labels.csv' points "
                                           r"outside the data folder", 0),
    "decompression bomb": (lambda i, _: write_png_header(i / "scan5.png", 30000, 30000),
                           "too_large", r"scan5.png: refused as a possible decompression "
                                        r"bomb", 1),
    "blank image": (lambda i, _: write_dicom(i / "scan0.dcm", pixels=np.zeros((8, 8))),
                    "blank", r"scan0.dcm: decodes to a single flat value", 1),
    "multi-frame": (lambda i, _: write_dicom(i / "scan1.dcm", header={"NumberOfFrames": 2}),
                    "unsupported", r"scan1.dcm: multi-frame DICOM is not supported", 1),
}


@pytest.mark.parametrize("name", sorted(BREAKS))
def test_bad_input_stops_cleanly_and_a_fixed_rerun_equals_a_clean_run(
        tmp_path, raw_site, settings, name):
    images, labels = raw_site
    pristine = tmp_path / "pristine"
    shutil.copytree(tmp_path / "raw", pristine)
    prepare(images, labels, *_outputs(tmp_path, "clean"), settings)
    clean = _tree_digest(tmp_path / "clean")
    data, out_labels = _outputs(tmp_path)
    prepare(images, labels, data, out_labels, settings)  # an earlier good run
    break_site, reason, pattern, _ = BREAKS[name]
    break_site(images, labels)
    broken_inputs = _tree_digest(tmp_path / "raw")
    with pytest.raises(DataError, match=pattern):
        prepare(images, labels, data, out_labels, settings)
    assert _tree_digest(tmp_path / "out") == clean  # the earlier run is intact
    assert _tree_digest(tmp_path / "raw") == broken_inputs  # inputs were only read
    shutil.rmtree(tmp_path / "raw")
    shutil.copytree(pristine, tmp_path / "raw")  # the data owner fixes the export
    prepare(images, labels, data, out_labels, settings)
    assert _tree_digest(tmp_path / "out") == clean


@pytest.mark.parametrize("name", sorted(BREAKS))
def test_bad_input_is_skipped_and_counted_when_allowed(tmp_path, raw_site, prep_parameters,
                                                       name):
    images, labels = raw_site
    break_site, reason, pattern, lost = BREAKS[name]
    break_site(images, labels)
    settings = load_prep_settings(prep_parameters, image_size=32, skip_bad_cases=True,
                                  workers=1)
    data, out_labels = _outputs(tmp_path)
    report = prepare(images, labels, data, out_labels, settings)
    assert report.cases == 6 - lost == len(open_prepared(data))
    assert report.skipped_by_reason() == {reason: 1}
    assert re.search(pattern, str(report.problems[0]))
    assert f"1 x {reason}" in report.summary()
    assert yaml.safe_load((data / "sources.yaml").read_text())["skipped"] == {reason: 1}
    assert sanity_check(data, out_labels, settings) == 6 - lost


def test_a_crashing_decoder_names_its_file_and_spares_the_others(tmp_path):
    files = []
    for i in range(6):
        files.append(tmp_path / (f"crash{i}.png" if i == 3 else f"ok{i}.png"))
        write_png(files[-1], seed=i)
    results = list(decode_images([(f, 16, 10_000) for f in files], 2, decode_or_die))
    assert [r.reason for r in results] == ["", "", "", "crashed", "", ""]
    assert "process died" in results[3].message
    serial = list(decode_images([(f, 16, 10_000) for f in files if "ok" in f.name], 1))
    assert all(np.array_equal(a.image, b.image)
               for a, b in zip([r for r in results if r.image is not None], serial))


def test_parallel_and_serial_runs_write_the_same_files(tmp_path, prep_parameters):
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i in range(12):
        name = f"im{i:02d}" + (".png" if i % 3 else "")
        (write_png if i % 3 else write_dicom)(images / name, seed=i)
        rows.append((name, "normal" if i % 2 else "pneumonia"))
    labels = write_labels(tmp_path / "labels", rows)
    digests = []
    for workers in (1, 2):
        settings = load_prep_settings(prep_parameters, image_size=32, workers=workers)
        report = prepare(images, labels, *_outputs(tmp_path, f"w{workers}"), settings)
        assert report.workers == workers
        digests.append(_tree_digest(tmp_path / f"w{workers}"))
    assert digests[0] == digests[1]


_WRITER_PEAKS = """
import sys, tracemalloc
from pathlib import Path
import numpy as np
from cxr_tutorial.prepared import PreparedWriter
out = Path(sys.argv[1])
image, label = np.arange(256, dtype=np.uint8).reshape(16, 16), np.array([1, 0])
for n in (1000, 5000):
    tracemalloc.start()
    with PreparedWriter(out / f"d{n}", out / f"l{n}", 16, ("a", "b"), "multi_class") as writer:
        for i in range(n):
            writer.add(f"case-{i + 1:05d}", image, label)
        writer.commit()
    print(tracemalloc.get_traced_memory()[1])
    tracemalloc.stop()
"""


def test_writer_memory_does_not_grow_with_the_number_of_cases(tmp_path):
    # In a process of its own: tracemalloc counts every thread's allocations, and garbage
    # that earlier tests leave in this one may be finalised in the middle of a measurement.
    done = subprocess.run([sys.executable, "-c", _WRITER_PEAKS, str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    peaks = [int(line) for line in done.stdout.split()]
    assert len(open_prepared(tmp_path / "d5000")) == 5000
    # Keeping even 50 bytes per case would add 200 kB from 1,000 to 5,000 cases.
    assert len(peaks) == 2 and peaks[1] < peaks[0] + 100_000, peaks


def _written(tmp_path: Path, n: int = 5) -> tuple[Path, list[np.ndarray]]:
    """A prepared folder of ``n`` 16 px cases with distinct pixels, and those pixels."""
    rng = np.random.default_rng(n)
    images = [rng.integers(0, 256, (16, 16), dtype=np.uint8) for _ in range(n)]
    with PreparedWriter(tmp_path / "d", tmp_path / "l", 16, ("a", "b"), "multi_class") as w:
        for i, image in enumerate(images):
            w.add(f"case-{i + 1:05d}", image, np.array([1, 0]))
        w.commit()
    return tmp_path / "d", images


def test_batches_return_the_written_pixels_in_order(tmp_path):
    data, images = _written(tmp_path)
    dataset = open_prepared(data)
    batches = list(dataset.batches(2))
    assert [ids for ids, _ in batches] == [["case-00001", "case-00002"],
                                           ["case-00003", "case-00004"], ["case-00005"]]
    stacked = np.concatenate([b for _, b in batches])
    assert stacked.dtype == np.uint8 and stacked.shape == (5, 16, 16, 1)
    np.testing.assert_array_equal(stacked[..., 0], np.stack(images))
    np.testing.assert_array_equal(dataset.read("case-00004"), images[3])


@pytest.mark.parametrize("preadv", [True, False], ids=["preadv", "file object"])
def test_batches_read_any_valid_npy_and_name_a_bad_one(tmp_path, monkeypatch, preadv):
    if not preadv:  # the reader of systems without os.preadv (Windows)
        monkeypatch.setattr(prepared, "_preadv", None)
    elif prepared._preadv is None:
        pytest.skip("os.preadv is not available here")
    data, images = _written(tmp_path)
    # Fortran order and a big-endian header are valid .npy files of the same pixels.
    np.save(data / "images" / "case-00002.npy", np.asfortranarray(images[1]))
    np.save(data / "images" / "case-00003.npy", images[2].astype(">u1"))
    # One byte past the pixels: the direct reader declines it after filling the batch's
    # slot, and np.load's pixels, which ignore the extra byte, must replace what it wrote.
    extra = data / "images" / "case-00005.npy"
    extra.write_bytes(extra.read_bytes() + b"\xff")
    got = np.concatenate([b for _, b in open_prepared(data).batches(5)])[..., 0]
    np.testing.assert_array_equal(got, np.stack(images))
    bad = data / "images" / "case-00004.npy"
    bad.write_bytes(bad.read_bytes()[:-10])  # header intact, pixels cut short
    with pytest.raises(FormatError, match=r"case-00004\.npy: cannot read prepared image"):
        list(open_prepared(data).batches(2))
    for content, expected in ((images[3].astype(np.int16), r"expected uint8 array"),
                              (images[3][:8], r"expected .* got uint8 \(8, 16\)")):
        np.save(bad, content)
        with pytest.raises(FormatError, match=rf"case-00004\.npy: {expected}"):
            list(open_prepared(data).batches(2))
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(FormatError, match=r"case-00004\.npy: cannot read prepared image"):
        list(open_prepared(data).batches(2))
    bad.unlink()
    with pytest.raises(FormatError, match=r"case-00004\.npy: cannot read prepared image"):
        list(open_prepared(data).batches(2))


def test_writer_refuses_a_repeated_id_and_overlapping_folders(tmp_path):
    image, label = np.ones((16, 16), dtype=np.uint8), np.array([1, 0])
    with PreparedWriter(tmp_path / "d", tmp_path / "l", 16, ("a", "b"), "multi_class") as w:
        w.add("case-00001", image, label)
        with pytest.raises(FormatError, match="case id 'case-00001' repeats"):
            w.add("case-00001", image, label)
        with pytest.raises(FormatError, match=r"label must be 2 values of 0 or 1"):
            w.add("case-00002", image, np.array([2, 0]))
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())
    with pytest.raises(FormatError, match="two separate folders"):
        PreparedWriter(tmp_path / "d", tmp_path / "d" / "labels", 16, ("a", "b"),
                       "multi_class")


def test_multi_label_chestxray14_style(tmp_path, prep_parameters):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        write_png(images / f"000{i}_000.png", seed=i)
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "labels.csv").write_text(
        "Image Index;Finding Labels;Patient Age\n"
        "0000_000.png;Effusion|Atelectasis;58\n"
        "0001_000.png;No Finding;60\n"
        "0002_000.png;Pneumonia;20\n"
        "0003_000.png;Atelectasis|Effusion|Pneumonia|;33\n", encoding="utf-8")
    settings = load_prep_settings(
        prep_parameters, image_size=32, labels_list=["Atelectasis", "Effusion", "Pneumonia"],
        label_type="multi_label", id_column="Image Index", label_column="Finding Labels",
        no_finding_label="No Finding", min_group_size=1)
    data, out_labels = _outputs(tmp_path)
    prepare(images, labels, data, out_labels, settings)
    prepared = read_prepared_labels(out_labels, settings.labels_list)
    assert [prepared[f"case-0000{i}"].tolist() for i in range(1, 5)] == [
        [1, 1, 0], [0, 0, 0], [0, 0, 1], [1, 1, 1]]
    assert sanity_check(data, out_labels, settings) == 4
    result = statistics(data, out_labels, tmp_path / "stats.yaml", settings)
    assert result["cases_per_class"] == {"Atelectasis": 2, "Effusion": 2, "Pneumonia": 2}
    assert result["labels_per_case"] == {"0": 1, "1": 1, "2": 1, "3+": 1}


def test_no_finding_cannot_be_combined_with_a_class(tmp_path, prep_parameters):
    images = tmp_path / "images"
    images.mkdir()
    write_png(images / "a.png")
    labels = write_labels(tmp_path / "labels", [("a.png", "No Finding|Effusion")])
    settings = load_prep_settings(prep_parameters, labels_list=["Effusion"],
                                  label_type="multi_label", no_finding_label="No Finding")
    with pytest.raises(DataError, match=r"unknown class 'No Finding'; expected one of "
                                        r"Effusion \('No Finding' cannot be combined"):
        prepare(images, labels, *_outputs(tmp_path), settings)


def test_labels_in_latin1_are_refused_with_a_fix(tmp_path, raw_site, settings):
    images, labels = raw_site
    (labels / "labels.csv").write_bytes("Image ID,Label\nr\xe9sum\xe9.png,normal\n"
                                        .encode("latin-1"))
    with pytest.raises(DataError, match=r"labels.csv: not UTF-8 text .*save it as UTF-8"):
        read_raw_cases(images, labels, settings)


def test_output_folder_with_foreign_files_is_refused(tmp_path, raw_site, settings):
    images, labels = raw_site
    data, out_labels = _outputs(tmp_path)
    data.mkdir(parents=True)
    (data / "precious.txt").write_text("keep me")
    with pytest.raises(FormatError, match="precious.txt"):
        prepare(images, labels, data, out_labels, settings)
    assert (data / "precious.txt").read_text() == "keep me"


def test_missing_column_names_the_setting(tmp_path, raw_site, settings):
    images, _ = raw_site
    labels = tmp_path / "other"
    labels.mkdir()
    (labels / "labels.csv").write_text("file,finding\nscan0.dcm,normal\n")
    with pytest.raises(DataError, match="missing column"):
        prepare(images, labels, *_outputs(tmp_path), settings)


def test_sanity_check_lists_every_problem(tmp_path, raw_site, settings):
    images, labels = raw_site
    data, out_labels = _outputs(tmp_path)
    prepare(images, labels, data, out_labels, settings)
    assert sanity_check(data, out_labels, settings) == 6
    np.save(data / "images" / "case-00002.npy", np.zeros((8, 8), dtype=np.float32))
    np.save(data / "images" / "case-00003.npy", np.full((32, 32), 7, dtype=np.uint8))
    np.save(data / "images" / "stray.npy", np.full((32, 32), 7, dtype=np.uint8))
    lines = (out_labels / "labels.csv").read_text().splitlines()
    lines[1] = lines[1][:-1] + "2"
    (out_labels / "labels.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(FormatError) as info:
        sanity_check(data, out_labels, settings)
    message = str(info.value)
    assert "6 problem(s)" in message
    assert "line 2: expected a case id and 2 values of 0 or 1" in message
    assert "case case-00001: no row in the prepared labels" in message
    assert "case-00002.npy: expected uint8 array of shape (32, 32)" in message
    assert "case case-00003: image is a single flat value" in message
    assert "case case-00006: no row in the prepared labels" in message
    assert "1 file(s) in images/ belong to no case, e.g. ['stray.npy']" in message


def test_sanity_check_flags_ids_that_are_not_pseudonyms(tmp_path, raw_site, prep_parameters):
    images, labels = raw_site
    keep = load_prep_settings(prep_parameters, image_size=32, keep_source_ids=True)
    data, out_labels = _outputs(tmp_path)
    prepare(images, labels, data, out_labels, keep)
    with pytest.raises(FormatError, match="'scan0.dcm' is not a pseudonym"):
        sanity_check(data, out_labels, load_prep_settings(prep_parameters, image_size=32))


def test_sanity_check_refuses_an_unknown_format_version(tmp_path, raw_site, settings):
    images, labels = raw_site
    data, out_labels = _outputs(tmp_path)
    prepare(images, labels, data, out_labels, settings)
    text = (data / "format.yaml").read_text().replace("version: 1", "version: 99")
    (data / "format.yaml").write_text(text)
    with pytest.raises(FormatError, match="version 99 is not supported"):
        sanity_check(data, out_labels, settings)


@pytest.mark.parametrize("counts,total,expected", [
    ({"a": 800, "b": 3}, 803, {"a": WITHHELD, "b": "<5"}),
    ({"a": 3, "b": 7, "c": 8}, 18, {"a": "<5", "b": WITHHELD, "c": WITHHELD}),
    ({"a": 3, "b": 9, "c": 30, "d": 0}, 42, {"a": "<5", "b": WITHHELD, "c": 30, "d": 0}),
    ({"a": 2, "b": 2, "c": 30}, 34, {"a": "<5", "b": "<5", "c": WITHHELD}),
    ({"a": 1, "b": 1, "c": 1, "d": 1, "e": 1}, 5, WITHHELD),
    ({"a": 40, "b": 12}, 52, {"a": 40, "b": 12}),
    ({"a": 40, "b": 3}, None, {"a": 40, "b": "<5"}),
])
def test_suppress_counts(counts, total, expected):
    assert suppress_counts(counts, 5, total) == expected


def test_no_small_count_can_be_recomputed_from_the_total():
    """An exhaustive attacker: every table consistent with what is published."""
    minimum, values = 4, range(0, 13)
    for counts in itertools.product(values, repeat=3):
        table = dict(zip("abc", counts))
        total = sum(counts)
        shown = suppress_counts(table, minimum, total)
        if shown == WITHHELD:
            continue
        visible = [v for v in shown.values() if isinstance(v, int) and v > 0]
        ranges = {k: range(1, minimum) if v == f"<{minimum}" else
                  range(minimum, min(visible, default=99) + 1) if v == WITHHELD else [v]
                  for k, v in shown.items()}
        possible = {k: set() for k in table}
        for guess in itertools.product(*ranges.values()):
            if sum(guess) == total:
                for key, value in zip(ranges, guess):
                    possible[key].add(value)
        for key, marker in shown.items():
            if marker == f"<{minimum}":
                assert possible[key] == set(range(1, minimum)), (table, shown)


def _raw_site_statistics(tmp_path, raw_site, prep_parameters, min_group_size: int) -> dict:
    """Prepare the raw site at 32 px, then write its statistics to ``stats.yaml``."""
    images, labels = raw_site
    settings = load_prep_settings(prep_parameters, image_size=32,
                                  min_group_size=min_group_size)
    data, out_labels = _outputs(tmp_path)
    prepare(images, labels, data, out_labels, settings)
    return statistics(data, out_labels, tmp_path / "stats.yaml", settings)


def test_statistics_suppress_small_counts_and_their_complements(tmp_path, raw_site,
                                                                prep_parameters):
    result = _raw_site_statistics(tmp_path, raw_site, prep_parameters, min_group_size=4)
    text = (tmp_path / "stats.yaml").read_text()
    assert text.startswith("# Summary of a prepared data set") and "'<4'" in text
    assert yaml.safe_load(text) == result
    assert result["n_cases"] == 6
    # 3 and 3 out of 6: both '<4' would still give the pair away, so the table is withheld.
    assert result["cases_per_class"] == WITHHELD
    # One MONOCHROME1 image among six: with the other count withheld (>= 4), the total
    # would still bound it to 1 or 2, narrower than '<4' says; so the table is withheld.
    assert result["sources"]["photometric"] == WITHHELD
    assert result["sources"]["voi"] == {"min-max": 6}
    assert result["sources"]["raw_height"] == {"min": 96, "median": 96.0, "max": 96}


def test_statistics_of_a_tiny_site_reveal_only_that_it_is_tiny(tmp_path, raw_site,
                                                              prep_parameters):
    result = _raw_site_statistics(tmp_path, raw_site, prep_parameters, min_group_size=10)
    assert result == {"min_group_size": 10, "n_cases": "<10"}


def test_unknown_setting_is_refused(tmp_path, prep_parameters):
    bad = tmp_path / "parameters.yaml"
    shutil.copy(prep_parameters, bad)
    with open(bad, "a", encoding="utf-8") as out:
        out.write("image_szie: 64\n")
    with pytest.raises(ConfigError, match="unknown setting.*image_szie"):
        load_prep_settings(bad)


@pytest.mark.parametrize("overrides,expected", [
    ({"image_size": "big"}, "image_size must be of type int"),
    ({"no_finding_label": "No Finding"}, "no_finding_label is for multi_label only"),
    ({"id_column": "Label"}, "id_column and label_column must differ"),
])
def test_invalid_settings_are_refused(prep_parameters, overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        load_prep_settings(prep_parameters, **overrides)


def test_benchmark_smoke_run(root: Path):
    """The benchmark runs end to end on a few small images (its timings are not checked)."""
    result = subprocess.run(
        [sys.executable, str(root / "bench" / "bench_prepare.py"), "--n", "8", "--size", "128",
         "--workers", "2", "--floor-n", "4", "--image-size", "32"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"floor: [\d.]+ images/s", result.stdout), result.stdout
    line = next(line for line in result.stdout.splitlines() if line.split()[:2] == ["8", "2"])
    task, _, prepare_s, rate, _, cpu, total, largest = map(float, line.split()[2:])
    assert 0 < prepare_s < task and rate > 0  # prepare() inside the task
    assert cpu > 0 and total >= largest > 0  # CPU of every process; all processes >= one


def test_the_prepare_chapter_skips_bad_files_and_logs_the_report(tmp_path, raw_site,
                                                                 prep_parameters, root):
    """The cube's task, with skipping on: a bad first image must not stop the chapter."""
    import nbformat

    from cxr_tutorial.runner import run_task

    images, labels = raw_site
    (images / "scan0.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    (images / "notes.txt").write_text("export notes")
    parameters = tmp_path / "parameters.yaml"
    parameters.write_text(prep_parameters.read_text().replace("skip_bad_cases: false",
                                                             "skip_bad_cases: true"))
    out = tmp_path / "out"
    result = run_task(root / "mlcubes" / "data_preparator", "prepare", {
        "data_path": str(images), "labels_path": str(labels), "parameters_file": str(parameters),
        "output_path": str(out / "data"), "output_labels_path": str(out / "labels")},
        log_dir=tmp_path / "logs")
    assert len(open_prepared(out / "data")) == 5
    log = "".join(o.get("text", "") for c in nbformat.read(result.log, as_version=4).cells
                  if c.cell_type == "code" for o in c.get("outputs", []))
    assert "5 cases prepared in" in log and "2 input(s) skipped" in log
    assert "scan0.dcm: cannot decode this DICOM file" in log
    assert "notes.txt: not a DICOM, PNG or JPEG file" in log


def test_decodable_samples_pass_over_bad_files(tmp_path, raw_site, settings):
    images, labels = raw_site
    (images / "scan0.dcm").write_bytes(b"junk")
    cases, _ = read_raw_cases(images, labels, settings)
    samples = decodable_samples(cases, 2)
    assert [case.image_id for case, _, _ in samples] == ["scan1.dcm", "scan2"]
    assert samples[0][1].shape == (96, 80) and samples[0][2].photometric == "MONOCHROME1"


def test_processes_that_cannot_start_give_a_clear_error(tmp_path):
    """A script without a main guard: every decoding process fails while starting."""
    write_png(tmp_path / "a.png")
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from cxr_tutorial.errors import DataError\n"
        "from cxr_tutorial.preparation import decode_images\n"
        f"jobs = [({str(tmp_path / 'a.png')!r}, 16, 10_000)] * 4\n"
        "try:\n"
        "    list(decode_images(jobs, 2))\n"
        "except DataError as error:\n"
        "    print('DataError:', error)\n")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=120)
    assert "DataError: decoding processes cannot start on this machine; set workers: 1" \
        in result.stdout, result.stdout + result.stderr[-2000:]


def test_long_runs_log_their_progress():
    import logging

    from cxr_tutorial.preparation import _Progress

    class Keep(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.INFO)
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    package, keep = logging.getLogger("cxr_tutorial"), Keep()
    level = package.level
    package.addHandler(keep)
    package.setLevel(logging.INFO)
    try:
        progress = _Progress(total=3, every=0.0)
        for _ in range(3):
            progress.step()
    finally:
        package.removeHandler(keep)
        package.setLevel(level)
    assert len(keep.lines) == 2 and keep.lines[0].startswith("prepare: 1 of 3 images,")
    assert "s left" in keep.lines[1]

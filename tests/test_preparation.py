"""The Data Preparator's tasks as library calls: prepare, sanity_check, statistics."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import write_labels
from cxr_tutorial.errors import ConfigError, DataError, FormatError
from cxr_tutorial.preparation import (
    load_prep_settings,
    prepare,
    sanity_check,
    statistics,
)
from cxr_tutorial.prepared import open_prepared, read_prepared_labels
from factories import PATIENT, write_png


@pytest.fixture()
def settings(prep_parameters: Path):
    return load_prep_settings(prep_parameters, image_size=32, workers=1)


def _tree_digest(folder: Path) -> dict[str, str]:
    """Relative path to sha256 of every file below a folder."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _outputs(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "out" / "data", tmp_path / "out" / "labels"


def test_prepare_writes_the_documented_format(tmp_path, raw_site, settings):
    images, labels = raw_site
    data, out_labels = _outputs(tmp_path)
    counts = prepare(images, labels, data, out_labels, settings)
    assert counts == {"cases": 6, "skipped": 0}
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


def test_monochrome1_and_monochrome2_prepare_to_the_same_pixels(tmp_path, settings):
    from factories import phantom, write_dicom

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
    everything = b"".join(p.read_bytes() for p in tmp_path.joinpath("out").rglob("*")
                          if p.is_file())
    for value in [*PATIENT.values(), "scan0", "scan4.png"]:
        assert value.encode() not in everything, value


def test_keep_source_ids_is_opt_in(tmp_path, raw_site, prep_parameters):
    images, labels = raw_site
    settings = load_prep_settings(prep_parameters, image_size=32, keep_source_ids=True)
    data, out_labels = _outputs(tmp_path)
    prepare(images, labels, data, out_labels, settings)
    assert "scan4.png" in open_prepared(data).case_ids


@pytest.mark.parametrize(
    "row,expected",
    [
        (("extra.png", "pneumonai"), r"row 8: unknown class 'pneumonai'; expected normal or "
                                     r"pneumonia"),
        (("missing.png", "normal"), r"row 8: image 'missing.png' not found"),
        (("scan1.dcm", "normal"), r"row 8: image id 'scan1.dcm' repeats row 3"),
        (("../raw/labels/labels.csv", "normal"), r"row 8: image id '\.\./raw/labels/labels"
                                                 r"\.csv' points outside the data folder"),
        (("/etc/passwd", "normal"), r"row 8: image id '/etc/passwd' points outside"),
    ],
)
def test_bad_label_rows_are_named(tmp_path, raw_site, settings, row, expected):
    images, labels = raw_site
    write_png(images / "extra.png")
    with open(labels / "labels.csv", "a", encoding="utf-8") as out:
        out.write(",".join(row) + "\n")
    data, out_labels = _outputs(tmp_path)
    with pytest.raises(DataError, match=expected):
        prepare(images, labels, data, out_labels, settings)
    assert not data.exists() or not any(p.name != ".cxr-tutorial-staging"
                                        for p in data.iterdir())


def test_all_problems_are_listed_together(tmp_path, raw_site, settings):
    images, labels = raw_site
    write_png(images / "unlabelled.png")
    (images / "scan4.png").unlink()
    with pytest.raises(DataError) as info:
        prepare(images, labels, *_outputs(tmp_path), settings)
    message = str(info.value)
    assert "2 problem(s)" in message
    assert "image 'scan4.png' not found" in message
    assert "unlabelled.png: image has no row" in message


def test_corrupt_image_is_named_and_nothing_is_left_half_written(tmp_path, raw_site,
                                                                  settings):
    images, labels = raw_site
    data, out_labels = _outputs(tmp_path)
    prepare(images, labels, data, out_labels, settings)
    before = _tree_digest(tmp_path / "out")
    (images / "scan2").write_bytes((images / "scan2").read_bytes()[:400])
    with pytest.raises(DataError, match=r"scan2: cannot decode"):
        prepare(images, labels, data, out_labels, settings)
    assert _tree_digest(tmp_path / "out") == before  # the earlier good run is intact


def test_skip_bad_cases_skips_and_counts(tmp_path, raw_site, prep_parameters):
    images, labels = raw_site
    (images / "scan5.png").write_text("not an image")
    settings = load_prep_settings(prep_parameters, image_size=32, skip_bad_cases=True)
    counts = prepare(images, labels, *_outputs(tmp_path), settings)
    assert counts == {"cases": 5, "skipped": 1}


def test_rerun_gives_the_same_result_and_inputs_stay_untouched(tmp_path, raw_site, settings):
    images, labels = raw_site
    inputs_before = _tree_digest(tmp_path / "raw")
    data, out_labels = _outputs(tmp_path)
    prepare(images, labels, data, out_labels, settings)
    first = _tree_digest(tmp_path / "out")
    prepare(images, labels, data, out_labels, settings)
    assert _tree_digest(tmp_path / "out") == first
    assert _tree_digest(tmp_path / "raw") == inputs_before


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
    lines = (out_labels / "labels.csv").read_text().splitlines()
    (out_labels / "labels.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(FormatError) as info:
        sanity_check(data, out_labels, settings)
    message = str(info.value)
    assert "3 problem(s)" in message
    assert "case-00002.npy: expected uint8 array of shape (32, 32)" in message
    assert "case case-00003: image is a single flat value" in message
    assert "case case-00006: no row in the prepared labels" in message


def test_sanity_check_refuses_an_unknown_format_version(tmp_path, raw_site, settings):
    images, labels = raw_site
    data, out_labels = _outputs(tmp_path)
    prepare(images, labels, data, out_labels, settings)
    text = (data / "format.yaml").read_text().replace("version: 1", "version: 99")
    (data / "format.yaml").write_text(text)
    with pytest.raises(FormatError, match="version 99 is not supported"):
        sanity_check(data, out_labels, settings)


def test_statistics_suppresses_small_counts(tmp_path, raw_site, prep_parameters):
    images, labels = raw_site
    settings = load_prep_settings(prep_parameters, image_size=32, min_group_size=4)
    data, out_labels = _outputs(tmp_path)
    prepare(images, labels, data, out_labels, settings)
    result = statistics(data, out_labels, tmp_path / "stats.yaml", settings)
    assert yaml.safe_load((tmp_path / "stats.yaml").read_text()) == result
    assert result["n_cases"] == 6
    assert result["cases_per_class"] == {"normal": "<4", "pneumonia": "<4"}
    assert result["sources"]["file_format"] == {"dicom": 4, "png": "<4"}


def test_statistics_of_a_tiny_site_reveal_only_that_it_is_tiny(tmp_path, raw_site,
                                                              prep_parameters):
    images, labels = raw_site
    settings = load_prep_settings(prep_parameters, image_size=32, min_group_size=10)
    data, out_labels = _outputs(tmp_path)
    prepare(images, labels, data, out_labels, settings)
    result = statistics(data, out_labels, tmp_path / "stats.yaml", settings)
    assert result == {"min_group_size": 10, "n_cases": "<10"}


def test_unknown_setting_is_refused(tmp_path, prep_parameters):
    bad = tmp_path / "parameters.yaml"
    shutil.copy(prep_parameters, bad)
    with open(bad, "a", encoding="utf-8") as out:
        out.write("image_szie: 64\n")
    with pytest.raises(ConfigError, match="unknown setting.*image_szie"):
        load_prep_settings(bad)


def test_wrong_type_is_refused(prep_parameters):
    with pytest.raises(ConfigError, match="image_size must be of type int"):
        load_prep_settings(prep_parameters, image_size="big")

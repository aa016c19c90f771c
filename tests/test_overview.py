"""The index chapter's helpers: the set-up check and the chapter table."""

from __future__ import annotations

import shutil
from pathlib import Path

from cxr_tutorial.chapters import list_chapters
from cxr_tutorial.overview import (
    chapters_markdown,
    check_environment,
    locked_versions,
    version_mismatches,
)


def test_this_environment_passes_every_check(root: Path):
    lines = check_environment(root)
    assert len(lines) == 5
    assert all(line.startswith("ok  ") for line in lines), lines
    assert "demo data: 16 labelled images, 16 of them present" in lines[2]


def test_a_foreign_kernel_and_missing_images_are_problems(root: Path, tmp_path: Path):
    (tmp_path / "requirements.lock").write_text(
        "# comment\nnumpy==0.0.1\nnot-installed-anywhere==1.0\n")
    shutil.copytree(root / "demo_data" / "labels", tmp_path / "demo_data" / "labels")
    (tmp_path / "demo_data" / "images").mkdir()
    shutil.copy(root / "demo_data" / "images" / "IM-0001.dcm", tmp_path / "demo_data" / "images")
    lines = check_environment(tmp_path)
    assert lines[1].startswith("PROBLEM  this kernel is not the project's environment "
                               "(2 difference(s) from requirements.lock, e.g. ")
    assert lines[2] == "PROBLEM  demo data: 16 labelled images, 1 of them present"


def test_lock_names_are_normalised(tmp_path: Path):
    lock = tmp_path / "lock"
    lock.write_text("PyYAML==6.0.3\ntensorflow_cpu==2.21.0  # why\nruamel.yaml==0.1\n")
    pins = locked_versions(lock)
    assert pins == {"pyyaml": "6.0.3", "tensorflow-cpu": "2.21.0", "ruamel-yaml": "0.1"}
    assert version_mismatches({"pyyaml": pins["pyyaml"]}) == []


def test_the_chapter_table_links_each_chapter(root: Path):
    table = chapters_markdown(list_chapters(root / "notebooks")).splitlines()
    assert table[2].startswith("| 00 | Chapter 0 · Start here")
    assert "[01_prepare.ipynb](01_prepare.ipynb)" in table[3]

"""The chapters as committed: named in reading order, indexed, clean, and the tools for it."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from cxr_tutorial.chapters import (
    CHECK_OUTPUT_TAG,
    clean_notebook,
    list_chapters,
    machine_paths,
    notebook_problems,
    read_sanitize_patterns,
    record_checked_outputs,
    sanitize,
    stage_tutorial,
)
from cxr_tutorial.errors import ConfigError


def _chapter(path: Path, title: str = "# A title", *cells) -> Path:
    nb = new_notebook(cells=[new_markdown_cell(f"{title}\n\nWhat you get.\n\nMore."), *cells])
    nb.nbformat_minor = 4
    for cell in nb.cells:
        cell.pop("id", None)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def test_committed_notebooks_carry_no_counts_paths_or_large_outputs(root: Path):
    forbidden = [str(root), str(Path.home())]
    problems = [p for nb in sorted((root / "notebooks").glob("*.ipynb"))
                for p in notebook_problems(nb, forbidden)]
    assert not problems, "\n".join(problems) + "\n(fix with `make clean-notebooks`)"


def test_every_chapter_is_in_the_readme_and_the_index_in_order(root: Path):
    names = [c.name for c in list_chapters(root / "notebooks")]
    readme = (root / "README.md").read_text(encoding="utf-8")
    index = "\n".join(c.source for c in nbformat.read(root / "notebooks" / "00_index.ipynb",
                                                       as_version=4).cells)
    tables = {"README.md": (readme, names), "00_index.ipynb": (index, names[1:])}
    for where, (text, expected) in tables.items():
        rows = re.findall(r"^\| `(\d\d_\w+)`", text, flags=re.MULTILINE)
        assert rows == expected, f"the chapter table of {where} lists {rows}, not {expected}"


def test_chapters_are_listed_by_number_with_title_and_summary(tmp_path: Path):
    _chapter(tmp_path / "10_last.ipynb", "# Last")
    _chapter(tmp_path / "02_second.ipynb", "# Second")
    _chapter(tmp_path / "00_index.ipynb", "# Start")
    chapters = list_chapters(tmp_path)
    assert [(c.number, c.name, c.title) for c in chapters] == [
        (0, "00_index", "Start"), (2, "02_second", "Second"), (10, "10_last", "Last")]
    assert chapters[0].summary == "What you get."


@pytest.mark.parametrize("name, title, message", [
    ("1_short.ipynb", "# T", "named NN_name.ipynb"),
    ("01-dash.ipynb", "# T", "named NN_name.ipynb"),
    ("01_untitled.ipynb", "Some prose", "must be markdown starting with '# Title'"),
    ("01_subtitle.ipynb", "## Only a step", "must be markdown starting with '# Title'"),
])
def test_a_badly_named_or_untitled_chapter_is_refused(tmp_path, name, title, message):
    _chapter(tmp_path / name, title)
    with pytest.raises(ConfigError, match=re.escape(message)):
        list_chapters(tmp_path)


def test_two_chapters_with_one_number_are_refused(tmp_path):
    _chapter(tmp_path / "03_a.ipynb")
    _chapter(tmp_path / "03_b.ipynb")
    with pytest.raises(ConfigError, match="03_a.ipynb and 03_b.ipynb share the number 03"):
        list_chapters(tmp_path)


def test_staging_copies_the_chapters_and_links_the_inputs(root: Path, tmp_path: Path):
    staged = stage_tutorial(root, tmp_path / "stage")
    assert sorted(p.name for p in staged.glob("*.ipynb")) == sorted(
        p.name for p in (root / "notebooks").glob("*.ipynb"))
    assert not staged.is_symlink()
    assert (tmp_path / "stage" / "demo_data").resolve() == root / "demo_data"
    assert (tmp_path / "stage" / "requirements.lock").is_file()
    with pytest.raises(ConfigError, match="must be new or empty"):
        stage_tutorial(root, tmp_path / "stage")


def _dirty(path: Path) -> Path:
    """A chapter with every problem a run in JupyterLab leaves behind."""
    ran = new_code_cell("print('hello')", execution_count=3,
                        outputs=[new_output("stream", name="stdout", text="hello\n")])
    ran.metadata["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00"}
    big = new_code_cell("# NBVAL_CHECK_OUTPUT\nshow()", outputs=[
        new_output("execute_result", data={"text/plain": "x" * 3000}, execution_count=4)])
    picture = new_code_cell("plot()", outputs=[
        new_output("display_data", data={"image/png": "iVBORw0KGgo="})])
    picture.metadata["tags"] = [CHECK_OUTPUT_TAG]
    leak = new_code_cell('data = "/home/someone/cxr/demo_data"')
    path = _chapter(path, "# T", ran, big, picture, leak)
    nb = nbformat.read(path, as_version=4)
    nb.metadata["widgets"] = {"state": {}}
    nbformat.write(nb, path)
    return path


def test_the_checker_names_each_problem_and_its_cell(tmp_path: Path):
    problems = notebook_problems(_dirty(tmp_path / "01_dirty.ipynb"))
    text = "\n".join(problems)
    assert "notebook metadata 'widgets'" in text
    assert "code cell 1: metadata execution records one run" in text
    assert "code cell 1: execution count 3; set it to null" in text
    assert "code cell 1: has outputs but is not marked nbval-check-output" in text
    assert "code cell 2: an output carries an execution count" in text
    assert "code cell 2: checked output of 3" in text and "characters (at most 2000)" in text
    assert "code cell 3: checked output of type image/png; keep text only" in text
    assert "machine path '/home/someone/cxr/demo_data'" in text
    assert all(p.startswith("01_dirty.ipynb: ") for p in problems)


def test_cleaning_keeps_checked_outputs_only_and_is_stable(tmp_path: Path):
    path = _dirty(tmp_path / "01_dirty.ipynb")
    nb = clean_notebook(nbformat.read(path, as_version=4))
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == [None] * 4
    assert code[0].outputs == [] and code[0].metadata == {}
    assert code[1].outputs[0].execution_count is None  # checked: kept, count removed
    assert "widgets" not in nb.metadata
    nbformat.write(nb, path)
    once = path.read_text()
    nbformat.write(clean_notebook(nbformat.read(path, as_version=4)), path)
    assert path.read_text() == once


def test_recording_stores_sanitized_text_of_checked_cells(tmp_path: Path, root: Path):
    checked = new_code_cell("# NBVAL_CHECK_OUTPUT\nreport()")
    other = new_code_cell("other()")
    committed = nbformat.read(_chapter(tmp_path / "01_c.ipynb", "# T", checked, other), 4)
    executed = nbformat.read(tmp_path / "01_c.ipynb", 4)
    executed.cells[1].outputs = [
        new_output("stream", name="stdout",
                   text="wrote /tmp/x/tutorial/tutorial_outputs/results.yaml in 2.31 s\n"),
        new_output("display_data", data={"text/plain": "<Figure>", "image/png": "iVBO"})]
    executed.cells[2].outputs = [new_output("stream", name="stdout", text="noise\n")]
    patterns = read_sanitize_patterns(root / "tests" / "nbval_sanitize.cfg")
    assert record_checked_outputs(committed, executed, patterns) == 1
    kept = committed.cells[1].outputs
    assert kept[0].text == "wrote <TUTORIAL>/tutorial_outputs/results.yaml in <SECONDS> s\n"
    assert kept[1].data == {"text/plain": "<Figure>"}
    assert committed.cells[2].outputs == []
    executed.cells[2].source = "changed()"
    with pytest.raises(ConfigError, match="cells differ"):
        record_checked_outputs(committed, executed, patterns)


def test_sanitize_patterns_are_idempotent(root: Path):
    patterns = read_sanitize_patterns(root / "tests" / "nbval_sanitize.cfg")
    assert len(patterns) >= 5
    sample = ("ok  Python 3.11.7 at 0x7f3a2b\nwrites to /srv/me/cxr/tutorial_outputs/a.yaml\n"
              "prepare: 100%|##| 16/16 [00:01<00:00, 9.97image/s] with 2 worker(s), "
              "8 CPU cores, done in 12.5 s\n")
    once = sanitize(sample, patterns)
    assert once == ("ok  Python 3.11.x at 0x<ADDRESS>\nwrites to <TUTORIAL>/tutorial_outputs/"
                    "a.yaml\nprepare: 100%|##| 16/16 [<ELAPSED>] with <N> worker(s), "
                    "<N> CPU cores, done in <SECONDS> s\n")
    assert sanitize(once, patterns) == once


def test_machine_paths_spare_relative_and_container_paths():
    assert machine_paths('x = "../demo_data/images"  # /mlcube_io0/data in a cube') == []
    assert machine_paths("see C:\\Users\\me\\cxr and '/Users/me/cxr'") == [
        "C:\\Users\\me\\cxr", "/Users/me/cxr"]
    assert machine_paths("in /opt/repo/cxr", extra=["/opt/repo"]) == ["/opt/repo"]

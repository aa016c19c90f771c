"""`make docs`: the chapters executed in order and rendered to linked static pages."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from cxr_tutorial.chapters import Chapter
from cxr_tutorial.docs import build_docs, navigation, render_index


def _chapters(n: int) -> list[Chapter]:
    return [Chapter(i, Path(f"0{i}_c{i}.ipynb"), f"Chapter {i} · `task{i}`", f"Does <{i}>.")
            for i in range(n)]


def test_the_index_links_every_chapter_in_order_with_its_time():
    page = render_index([(c, 1.5 + c.number) for c in _chapters(3)])
    assert re.findall(r'href="([^"]+)"', page) == ["00_c0.html", "01_c1.html", "02_c2.html"]
    assert "Chapter 1 · <code>task1</code>" in page  # markdown code span rendered
    assert "Does &lt;1&gt;." in page  # summaries escaped
    assert "(4 s to run here)" in page and '<ol start="0">' in page


def test_navigation_links_neighbours_only():
    chapters = _chapters(3)
    first, last = navigation(chapters, 0), navigation(chapters, 2)
    assert "01_c1.html" in first and "&larr;" not in first
    assert "01_c1.html" in last and "&rarr;" not in last
    assert all('href="index.html"' in nav for nav in (first, last))


def test_build_runs_chapters_in_order_and_writes_pages(tmp_path: Path):
    """Chapter 01 reads what 00 wrote, as the real chapters do: order matters."""
    root = tmp_path / "repo"
    for name in ("demo_data", "mlcubes"):
        (root / name).mkdir(parents=True)
    (root / "requirements.lock").write_text("")
    cells = {
        "00_write": ["Path('../tutorial_outputs').mkdir()\n"
                     "Path('../tutorial_outputs/note.txt').write_text('from chapter 0')"],
        "01_read": ["print(Path('../tutorial_outputs/note.txt').read_text().upper())"],
    }
    for name, sources in cells.items():
        nb = new_notebook(cells=[new_markdown_cell(f"# Title {name}\n\nSummary of {name}."),
                                 new_code_cell("from pathlib import Path"),
                                 *map(new_code_cell, sources)])
        (root / "notebooks").mkdir(exist_ok=True)
        nbformat.write(nb, root / "notebooks" / f"{name}.ipynb")
    out = tmp_path / "site"
    timings = build_docs(root, out)
    assert [c.name for c, _ in timings] == ["00_write", "01_read"]
    assert sorted(p.name for p in out.iterdir()) == ["00_write.html", "01_read.html",
                                                     "index.html"]
    page = (out / "01_read.html").read_text()
    assert "FROM CHAPTER 0" in page and 'href="00_write.html"' in page
    assert "Summary of 01_read." in (out / "index.html").read_text()
    assert not (root / "tutorial_outputs").exists()  # ran on a staged copy

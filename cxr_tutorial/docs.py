"""Static HTML of the executed chapters, for readers without Jupyter: ``make docs``.

``python -m cxr_tutorial.docs [--output docs/_build]`` stages a copy of the tutorial, runs
every chapter in order (as the nbval test does), converts each executed notebook to a
self-contained HTML page with links to the previous and next chapter, and writes an
``index.html`` that lists the chapters with the time each took to run.
"""

from __future__ import annotations

import argparse
import html
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cxr_tutorial import logger
from cxr_tutorial.chapters import Chapter, execute_chapters, stage_tutorial
from cxr_tutorial.errors import CxrTutorialError

_PAGE_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 52rem; margin: 2rem auto;
       padding: 0 1rem; line-height: 1.5; color: #222; }
ol { padding-left: 1.5rem; } li { margin-bottom: 1rem; }
.time { color: #666; font-size: 0.9em; }
code { background: #f2f2f2; padding: 0 0.2em; }
"""

_NAV_STYLE = ("font-family: system-ui, sans-serif; padding: 0.6rem 1rem; "
              "background: #f5f7fa; border-bottom: 1px solid #dde;")


def html_name(chapter: Chapter) -> str:
    """The page of a chapter, e.g. ``01_prepare.html``."""
    return f"{chapter.name}.html"


def _inline_markdown(text: str) -> str:
    """Escape a summary and turn its `code` and **bold** spans into HTML."""
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*|\*([^*]+)\*",
                  lambda m: f"<b>{m.group(1)}</b>" if m.group(1) else f"<i>{m.group(2)}</i>",
                  text)


def render_index(timings: Sequence[tuple[Chapter, float]], title: str = "cxr-tutorial") -> str:
    """The docs' front page: every chapter in reading order, linked, with its summary.

    Args:
        timings: ``(chapter, seconds it took to run)`` in reading order.
        title: Page title.

    Returns:
        A complete HTML document.
    """
    items = "\n".join(
        f'<li><a href="{html_name(c)}">{_inline_markdown(c.title)}</a>'
        f' <span class="time">({seconds:.0f} s to run here)</span>'
        f"<br>{_inline_markdown(c.summary)}</li>"
        for c, seconds in timings
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_PAGE_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}: the chapters</h1>\n"
        f"<p>Build and run a federated evaluation benchmark for chest X-ray classification in "
        f"the style of MLCommons MedPerf. Each chapter below was executed on the demo data "
        f"when these pages were built; read them in order. To run them yourself, open "
        f"<code>notebooks/</code> in JupyterLab (<code>make lab</code>).</p>\n"
        f"<ol start=\"{timings[0][0].number if timings else 0}\">\n{items}\n</ol>\n"
        f"</body>\n</html>\n"
    )


def navigation(chapters: Sequence[Chapter], index: int) -> str:
    """The bar on top of a chapter's page: contents, previous and next chapter."""
    links = ['<a href="index.html">Contents</a>']
    if index > 0:
        before = chapters[index - 1]
        links.append(f'<a href="{html_name(before)}">&larr; {_inline_markdown(before.title)}</a>')
    if index + 1 < len(chapters):
        after = chapters[index + 1]
        links.append(f'<a href="{html_name(after)}">{_inline_markdown(after.title)} &rarr;</a>')
    return f'<nav style="{_NAV_STYLE}">' + " &nbsp;|&nbsp; ".join(links) + "</nav>"


def chapter_page(executed: Path, chapters: Sequence[Chapter], index: int) -> str:
    """An executed chapter as one self-contained HTML page with navigation on top and bottom.

    Args:
        executed: The executed notebook.
        chapters: Every chapter, in reading order.
        index: Position of this chapter in ``chapters``.

    Returns:
        The HTML document (pictures embedded, no input prompts).
    """
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    # Merged streams with carriage returns resolved: a text progress bar shows its last state.
    config = Config({"CoalesceStreamsPreprocessor": {"enabled": True}})
    exporter = HTMLExporter(template_name="lab", config=config)
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    body, _ = exporter.from_filename(str(executed),
                                     resources={"metadata": {"name": chapters[index].title}})
    nav = navigation(chapters, index)
    body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + nav, body, count=1)
    return body.replace("</body>", nav + "</body>", 1)


def build_docs(root: str | Path, output: str | Path) -> list[tuple[Chapter, float]]:
    """Run every chapter on a staged copy and write the static site.

    Args:
        root: The repository folder.
        output: The site's folder; replaced if it exists.

    Returns:
        ``(chapter, seconds)`` per chapter, in reading order.

    Raises:
        TaskError: If a chapter fails (naming it, its step and its cell).
    """
    output = Path(output)
    with tempfile.TemporaryDirectory(prefix="cxr-docs-") as tmp:
        staged = stage_tutorial(root, Path(tmp) / "tutorial")
        executed = Path(tmp) / "executed"
        timings = execute_chapters(staged, executed)
        if output.exists():
            shutil.rmtree(output)
        output.mkdir(parents=True)
        chapters = [c for c, _ in timings]
        for i, chapter in enumerate(chapters):
            page = chapter_page(executed / chapter.path.name, chapters, i)
            (output / html_name(chapter)).write_text(page, encoding="utf-8")
        (output / "index.html").write_text(render_index(timings), encoding="utf-8")
    logger.info("docs written to %s (%d chapters)", output, len(timings))
    return timings


def main(argv: list[str] | None = None) -> int:
    """``python -m cxr_tutorial.docs``: build the static site."""
    from cxr_tutorial.log import setup_logging

    parser = argparse.ArgumentParser(prog="python -m cxr_tutorial.docs",
                                     description="Render the executed chapters to HTML.")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository folder")
    parser.add_argument("--output", type=Path, default=None,
                        help="site folder (default: ROOT/docs/_build)")
    args = parser.parse_args(argv)
    setup_logging()
    # Figures must be drawn inline and bars shown as text, whatever the caller's shell says.
    if os.environ.get("MPLBACKEND", "").lower() == "agg":
        del os.environ["MPLBACKEND"]
    os.environ["CXR_TUTORIAL_PROGRESS"] = "text"
    root = args.root.resolve()
    try:
        timings = build_docs(root, args.output or root / "docs" / "_build")
    except CxrTutorialError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for chapter, seconds in timings:
        print(f"  {chapter.path.name:<28} {seconds:6.1f} s")
    print(f"Open {(args.output or root / 'docs' / '_build') / 'index.html'} in a browser.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

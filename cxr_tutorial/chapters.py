"""The tutorial's chapters: finding them in order, staging a copy to run, keeping them clean.

A chapter is a notebook named ``NN_name.ipynb`` in ``notebooks/``, read in the order of its
two-digit number and opened by a ``# Title`` markdown cell. Later chapters read what earlier
ones wrote to ``../tutorial_outputs``, so every runner (the nbval test, the browser test,
``make docs``) runs them in this order, on a staged copy so the repository stays clean.

Committed notebooks carry no execution counts, no machine paths and no outputs, except
small text outputs of cells marked for nbval to check. To mark a cell, give it the tag
``nbval-check-output`` (JupyterLab: the property inspector, gear icon, "Cell Tags"), or
make ``# NBVAL_CHECK_OUTPUT`` its first line; then ``make record-outputs`` stores its
current output in the notebook and ``make test`` compares every later run against it,
after the substitutions in ``tests/nbval_sanitize.cfg`` (paths, timings, core counts).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import nbformat

from cxr_tutorial import logger
from cxr_tutorial.errors import ConfigError, CxrTutorialError

CHAPTER_NAME = re.compile(r"^(\d{2})_[a-z0-9_]+\.ipynb$")
"""A chapter's file name: two digits, an underscore, then lower-case words."""

CHECK_OUTPUT_TAG = "nbval-check-output"
"""Cell tag asking nbval to compare the cell's output with the one stored in the notebook."""

CHECK_OUTPUT_COMMENT = "NBVAL_CHECK_OUTPUT"
"""The same request as a comment line in the cell's source (``# NBVAL_CHECK_OUTPUT``)."""

MAX_CHECKED_OUTPUT_CHARS = 2000
"""Largest stored output of a checked cell; a bigger one belongs in a file, not the notebook."""

CHECKED_OUTPUT_TYPES = ("text/plain", "text/markdown")
"""Data types a checked output may store; pictures and HTML are too large and too unstable."""

ALLOWED_CELL_METADATA = ("tags", "jupyter", "collapsed", "scrolled", "editable", "deletable",
                         "slideshow")
"""Cell metadata keys a committed notebook may keep; others (execution timings, papermill
state) describe one run on one machine."""

_MACHINE_PATH = re.compile(
    r"""(?:^|[\s'"(=:,\[])(/(?:home|Users|root|tmp|work|private|mnt|scratch|var/folders)/"""
    r"""[^\s'",)\]\\]*|[A-Za-z]:\\\\?[^\s'",)\]]+)"""
)


@dataclasses.dataclass(frozen=True)
class Chapter:
    """One chapter of the tutorial.

    Attributes:
        number: The two-digit prefix of its file name, as an int (0 for ``00_index``).
        path: The notebook file.
        title: Its first ``# `` heading, without the ``#``.
        summary: The first paragraph after the title, in markdown.
    """

    number: int
    path: Path
    title: str
    summary: str

    @property
    def name(self) -> str:
        """The file name without ``.ipynb``, e.g. ``01_prepare``."""
        return self.path.stem


def read_chapter(path: str | Path) -> Chapter:
    """Read a chapter's number, title and summary.

    Args:
        path: A notebook named ``NN_name.ipynb``.

    Returns:
        The :class:`Chapter`.

    Raises:
        ConfigError: If the name does not fit ``NN_name.ipynb`` or the notebook does not
            open with a markdown cell whose first line is a ``# Title``.
    """
    path = Path(path)
    match = CHAPTER_NAME.match(path.name)
    if not match:
        raise ConfigError(f"{path}: a chapter is named NN_name.ipynb (two digits, then "
                          f"lower-case words joined by _), e.g. 01_prepare.ipynb")
    cells = nbformat.read(path, as_version=4).cells
    first = cells[0] if cells else None
    lines = first.source.strip().splitlines() if first and first.cell_type == "markdown" else []
    if not lines or not lines[0].startswith("# "):
        raise ConfigError(f"{path}: the first cell must be markdown starting with '# Title'")
    paragraphs = "\n".join(lines[1:]).strip().split("\n\n")
    summary = " ".join(paragraphs[0].split()) if paragraphs[0] else ""
    return Chapter(int(match.group(1)), path, lines[0][2:].strip(), summary)


def list_chapters(folder: str | Path) -> list[Chapter]:
    """Every chapter in a folder, in reading order.

    Args:
        folder: The ``notebooks/`` folder (checkpoints are ignored).

    Returns:
        The chapters sorted by number.

    Raises:
        ConfigError: If the folder has no chapter, a notebook is misnamed or has no
            title, or two chapters share a number.
    """
    chapters = sorted((read_chapter(p) for p in Path(folder).glob("*.ipynb")),
                      key=lambda c: c.number)
    if not chapters:
        raise ConfigError(f"{folder}: no chapter (NN_name.ipynb) found")
    for before, after in zip(chapters, chapters[1:], strict=False):
        if before.number == after.number:
            raise ConfigError(f"{before.path.name} and {after.path.name} share the number "
                              f"{before.number:02d}; renumber one of them")
    return chapters


STAGE_LINKS = ("demo_data", "mlcubes", "requirements.lock")
"""What a staged copy links from the repository: the chapters' read-only inputs."""


def stage_tutorial(root: str | Path, stage: str | Path,
                   links: Sequence[str] = STAGE_LINKS) -> Path:
    """Copy ``notebooks/`` into a fresh folder beside links to the read-only inputs.

    The chapters write to ``../tutorial_outputs``; running them on the staged copy keeps
    the repository clean and behaves exactly as a reader's JupyterLab would.

    Args:
        root: The repository folder.
        stage: A folder that does not exist yet, or an empty one.
        links: Files and folders of ``root`` the chapters read, linked rather than copied.

    Returns:
        The staged ``notebooks/`` folder.

    Raises:
        ConfigError: If ``stage`` already holds files.
    """
    root, stage = Path(root).resolve(), Path(stage)
    if stage.exists() and any(stage.iterdir()):
        raise ConfigError(f"{stage}: the staging folder must be new or empty")
    stage.mkdir(parents=True, exist_ok=True)
    shutil.copytree(root / "notebooks", stage / "notebooks",
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    for name in links:
        (stage / name).symlink_to(root / name, target_is_directory=(root / name).is_dir())
    return stage / "notebooks"


def number_checked_cells(notebooks: str | Path) -> int:
    """Give checked cells with stored outputs an execution count, in a staged copy only.

    nbval compares only cells whose stored copy "ran" (has an execution count), while
    committed notebooks carry none; the nbval run therefore numbers them in its copy.

    Args:
        notebooks: A staged ``notebooks/`` folder, modified in place.

    Returns:
        How many cells were numbered.
    """
    numbered = 0
    for path in sorted(Path(notebooks).glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        cells = [c for c in nb.cells if c.cell_type == "code" and output_is_checked(c)
                 and c.outputs]
        for number, cell in enumerate(cells, start=1):
            cell.execution_count = number
        if cells:
            nbformat.write(nb, path)
        numbered += len(cells)
    return numbered


def output_is_checked(cell: nbformat.NotebookNode) -> bool:
    """Whether nbval compares this cell's output with the one stored in the notebook."""
    if CHECK_OUTPUT_TAG in cell.get("metadata", {}).get("tags", []):
        return True
    source = cell.get("source", "")
    source = "".join(source) if isinstance(source, list) else source  # raw JSON keeps lines
    return any(line.strip().lstrip("#").strip() == CHECK_OUTPUT_COMMENT
               for line in source.splitlines() if line.strip().startswith("#"))


def machine_paths(text: str, extra: Iterable[str] = ()) -> list[str]:
    """Absolute paths of one machine found in a text (home, temporary and work folders).

    Args:
        text: Any text, e.g. a notebook's JSON.
        extra: Further literal strings that must not appear (the repository folder).

    Returns:
        The offending strings, in order of appearance.
    """
    found = [m.group(1) for m in _MACHINE_PATH.finditer(text)]
    return found + [s for s in extra if s and s in text]


def notebook_problems(path: str | Path, forbidden: Iterable[str] = ()) -> list[str]:
    """What keeps a notebook from being committed as it is.

    Args:
        path: The notebook.
        forbidden: Literal strings that must not appear anywhere in it (machine folders).

    Returns:
        One sentence per problem, naming the code cell (counted from 1) and the fix; empty
        when the notebook is clean.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    raw = json.loads(text)
    problems = []
    if (raw.get("nbformat"), raw.get("nbformat_minor")) != (4, 4):
        problems.append(f"nbformat {raw.get('nbformat')}.{raw.get('nbformat_minor')}; "
                        f"write it as 4.4 without cell ids")
    for key in ("widgets", "papermill"):
        if key in raw.get("metadata", {}):
            problems.append(f"notebook metadata {key!r} is the state of one run; remove it")
    number = 0
    for cell in raw.get("cells", []):
        if "id" in cell:
            problems.append("cells carry ids; write the notebook as nbformat 4.4")
            break
    for cell in raw.get("cells", []):
        extra = sorted(set(cell.get("metadata", {})) - set(ALLOWED_CELL_METADATA))
        if cell["cell_type"] != "code":
            continue
        number += 1
        where = f"code cell {number}"
        if extra:
            problems.append(f"{where}: metadata {', '.join(extra)} records one run; remove it")
        if cell.get("execution_count") is not None:
            problems.append(f"{where}: execution count {cell['execution_count']}; set it to null")
        outputs = cell.get("outputs", [])
        if outputs and not output_is_checked(cell):
            problems.append(f"{where}: has outputs but is not marked {CHECK_OUTPUT_TAG}; "
                            f"clear them")
            continue
        size = 0
        for output in outputs:
            if output.get("execution_count") is not None:
                problems.append(f"{where}: an output carries an execution count; set it to null")
            kinds = set(output.get("data", {})) - set(CHECKED_OUTPUT_TYPES)
            if kinds or output.get("output_type") == "error":
                problems.append(f"{where}: checked output of type "
                                f"{', '.join(sorted(kinds)) or 'error'}; keep text only")
            size += len(json.dumps(output.get("data", output.get("text", ""))))
        if size > MAX_CHECKED_OUTPUT_CHARS:
            problems.append(f"{where}: checked output of {size} characters (at most "
                            f"{MAX_CHECKED_OUTPUT_CHARS}); check a smaller summary")
    for found in machine_paths(text, forbidden):
        problems.append(f"machine path {found!r}; use a path relative to the notebook")
    return [f"{path.name}: {p}" for p in problems]


def clean_notebook(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Strip what one run leaves in a notebook, keeping the outputs of checked cells.

    Removes execution counts, outputs of unchecked cells, run-specific metadata (widget
    state, papermill, timings) and cell ids; writes nbformat 4.4.

    Args:
        nb: A notebook, modified in place.

    Returns:
        The same notebook.
    """
    nb.nbformat, nb.nbformat_minor = 4, 4
    for key in ("widgets", "papermill"):
        nb.metadata.pop(key, None)
    for cell in nb.cells:
        cell.pop("id", None)
        for key in set(cell.get("metadata", {})) - set(ALLOWED_CELL_METADATA):
            del cell.metadata[key]
        if cell.cell_type != "code":
            continue
        cell.execution_count = None
        if not output_is_checked(cell):
            cell.outputs = []
        for output in cell.outputs:
            if "execution_count" in output:
                output.execution_count = None
    return nb


def read_sanitize_patterns(path: str | Path) -> list[tuple[str, str]]:
    """The ``regex:``/``replace:`` pairs of an nbval sanitize file, in file order.

    Args:
        path: A file of ``[section]``, ``regex: ...`` and ``replace: ...`` lines.

    Returns:
        ``(pattern, replacement)`` pairs.
    """
    text = Path(path).read_text(encoding="utf-8")
    return re.findall(r"^regex: (.*)$\n^replace: (.*)$", text, flags=re.MULTILINE)


def sanitize(text: str, patterns: Sequence[tuple[str, str]]) -> str:
    """Apply sanitize patterns to a text, as nbval does before comparing outputs."""
    for pattern, replacement in patterns:
        text = re.sub(pattern, replacement, text)
    return text


def record_checked_outputs(committed: nbformat.NotebookNode,
                           executed: nbformat.NotebookNode,
                           patterns: Sequence[tuple[str, str]] = ()) -> int:
    """Copy the outputs of checked cells from an executed copy into the committed notebook.

    Args:
        committed: The notebook as committed, modified in place (then cleaned).
        executed: The same notebook after a run; its cells must match one to one.
        patterns: Sanitize patterns applied to the recorded text, so machine paths and
            timings are stored as their placeholders.

    Returns:
        How many checked cells were recorded.

    Raises:
        ConfigError: If the two notebooks do not have the same cells.
    """
    if [c.source for c in committed.cells] != [c.source for c in executed.cells]:
        raise ConfigError("the executed notebook's cells differ from the committed ones; "
                          "was it executed with injected parameters?")
    recorded = 0
    for mine, ran in zip(committed.cells, executed.cells, strict=True):
        if mine.cell_type == "code" and output_is_checked(mine):
            mine.outputs = [_sanitized(o, patterns) for o in ran.outputs]
            recorded += 1
    clean_notebook(committed)
    return recorded


def _sanitized(output: nbformat.NotebookNode,
               patterns: Sequence[tuple[str, str]]) -> nbformat.NotebookNode:
    """An output with its text sanitized and only text data types kept."""
    output = nbformat.from_dict(json.loads(json.dumps(output)))
    if output.output_type == "stream":
        output.text = sanitize(output.text, patterns)
    elif "data" in output:
        output.data = {k: sanitize(v, patterns) for k, v in output.data.items()
                       if k in CHECKED_OUTPUT_TYPES}
    return output


def execute_chapters(notebooks: str | Path, executed: str | Path) -> list[tuple[Chapter, float]]:
    """Run every chapter of a (staged) folder in order, keeping each executed copy.

    Each chapter runs in a fresh kernel of the current environment, with the folder as its
    working directory, through the same papermill runner as the cube tasks.

    Args:
        notebooks: A staged ``notebooks/`` folder (see :func:`stage_tutorial`).
        executed: Folder receiving ``NN_name.ipynb`` after execution.

    Returns:
        ``(chapter, seconds)`` per chapter, in order.

    Raises:
        TaskError: Naming the first chapter that fails, its step and cell.
    """
    from cxr_tutorial.runner import execute_notebook

    executed = Path(executed)
    executed.mkdir(parents=True, exist_ok=True)
    timings = []
    for chapter in list_chapters(notebooks):
        logger.info("running chapter %s", chapter.path.name)
        seconds = execute_notebook(chapter.path, {}, executed / chapter.path.name,
                                   f"chapter {chapter.name}")
        timings.append((chapter, seconds))
    return timings


def _record(root: Path, sanitize_file: Path) -> int:
    """Run every chapter and store the outputs of checked cells in ``notebooks/``."""
    # The kernels see what nbval's kernels see in the test suite: no bars, no GUI backend.
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["MPLBACKEND"] = "Agg"
    patterns = read_sanitize_patterns(sanitize_file)
    with tempfile.TemporaryDirectory(prefix="cxr-record-") as tmp:
        staged = stage_tutorial(root, Path(tmp) / "tutorial")
        execute_chapters(staged, Path(tmp) / "executed")
        for chapter in list_chapters(root / "notebooks"):
            committed = nbformat.read(chapter.path, as_version=4)
            ran = nbformat.read(Path(tmp) / "executed" / chapter.path.name, as_version=4)
            count = record_checked_outputs(committed, ran, patterns)
            nbformat.write(committed, chapter.path)
            logger.info("%s: %d checked cell(s) recorded", chapter.path.name, count)
    return 0


def _clean(root: Path) -> int:
    """Clean every chapter in place; report what changed."""
    for chapter in list_chapters(root / "notebooks"):
        before = chapter.path.read_text(encoding="utf-8")
        nbformat.write(clean_notebook(nbformat.read(chapter.path, as_version=4)), chapter.path)
        if chapter.path.read_text(encoding="utf-8") != before:
            logger.info("%s: cleaned", chapter.path.name)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m cxr_tutorial.chapters {list,clean,record}``: look after the chapters."""
    from cxr_tutorial.log import setup_logging

    parser = argparse.ArgumentParser(prog="python -m cxr_tutorial.chapters",
                                     description="List, clean or record the chapters.")
    parser.add_argument("command", choices=("list", "clean", "record"),
                        help="list: the chapters in order; clean: strip outputs and counts "
                             "except checked outputs; record: run every chapter and store "
                             "the outputs of checked cells")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository folder")
    parser.add_argument("--sanitize", type=Path, default=None,
                        help="nbval sanitize file (default: ROOT/tests/nbval_sanitize.cfg)")
    args = parser.parse_args(argv)
    setup_logging()
    root = args.root.resolve()
    try:
        if args.command == "list":
            for chapter in list_chapters(root / "notebooks"):
                print(f"{chapter.path.name:<32} {chapter.title}")
            return 0
        if args.command == "clean":
            return _clean(root)
        return _record(root, args.sanitize or root / "tests" / "nbval_sanitize.cfg")
    except CxrTutorialError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

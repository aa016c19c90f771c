"""Container entrypoint: ``python -m cxr_tutorial.entrypoint NOTEBOOK --key=value ...``.

MLCube and MedPerf start a cube's task with ``--name=/path`` arguments; papermill takes
parameters as ``-p name value``. This module bridges the two and executes the notebook,
writing the executed copy to ``--log_dir`` (default: a temporary folder, since only
``/tmp`` and the declared outputs are writable in a cube's container).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from cxr_tutorial.errors import CxrTutorialError
from cxr_tutorial.log import setup_logging
from cxr_tutorial.runner import execute_notebook


def parse_arguments(words: list[str]) -> tuple[Path, dict[str, str]]:
    """Split ``NOTEBOOK --key=value ...`` (``--key value`` also accepted).

    Args:
        words: Command-line words after the module name.

    Returns:
        ``(notebook, parameters)``.

    Raises:
        SystemExit: With a usage message if the words do not fit.
    """
    if not words or not words[0].endswith(".ipynb"):
        raise SystemExit("usage: python -m cxr_tutorial.entrypoint NOTEBOOK --key=value ...")
    notebook, params, rest = Path(words[0]), {}, list(words[1:])
    while rest:
        word = rest.pop(0)
        if not word.startswith("--"):
            raise SystemExit(f"expected --key=value, got {word!r}")
        key, sep, value = word[2:].partition("=")
        if not sep:
            if not rest:
                raise SystemExit(f"--{key} needs a value")
            value = rest.pop(0)
        params[key] = value
    return notebook, params


def main(argv: list[str] | None = None) -> int:
    """Run the notebook; exit 1 with a short message if it fails."""
    notebook, params = parse_arguments(sys.argv[1:] if argv is None else argv)
    log_dir = Path(params.pop("log_dir", "") or tempfile.mkdtemp(prefix="cxr-tutorial-"))
    setup_logging()
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        execute_notebook(notebook.resolve(), params, log_dir / notebook.name,
                         f"notebook {notebook.name}")
    except CxrTutorialError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

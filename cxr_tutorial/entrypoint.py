"""Container entrypoint: ``python -m cxr_tutorial.entrypoint NOTEBOOK --key=value ...``.

MLCube starts a task as ``python -m cxr_tutorial.entrypoint notebooks/01_prepare.ipynb
--data_path=/mlcube_io0 ...`` (the manifest's entrypoint plus one ``--name=/path`` per
parameter); MedPerf runs the command written in ``container_config.yaml``, the same words
with ``/mlcommons/volumes/...`` paths. papermill takes parameters as ``-p name value``, so
this module bridges the two, and prepares the run for a container where only ``/tmp`` and
the declared outputs are writable and the user may have no home folder:

- The state folders a kernel writes (Jupyter runtime files, IPython, matplotlib, Keras,
  caches) go to a fresh folder under the temporary folder, unless already set.
- The keys are checked against the task's declared parameters, found in the manifest whose
  entrypoint runs this notebook (``mlcubes/*/mlcube.yaml`` beside ``notebooks/``): a
  misspelt or missing key stops the run instead of leaving a notebook default in force,
  and a missing input is named before a kernel starts.
- A file output (``statistics.yaml``, ``results.yaml``) is written to the temporary folder
  and put in place only once the notebook has succeeded. MedPerf mounts a file output as a
  single file, which cannot be replaced by a rename, so the task's own write-then-rename
  would fail on it; the entrypoint renames where it can and rewrites the mounted file in
  place where it cannot.
- The executed notebook is kept as the task's log in ``--log_dir``, else
  ``$CXR_TUTORIAL_LOG_DIR``, else the run's temporary folder; its path is logged.

Exit status: 0 on success, 1 if the task fails, 2 on a usage or parameter error.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from cxr_tutorial import logger
from cxr_tutorial.errors import ConfigError, CxrTutorialError, TaskError
from cxr_tutorial.log import setup_logging
from cxr_tutorial.mlcube import TaskSpec, find_task
from cxr_tutorial.runner import execute_notebook

USAGE = "usage: python -m cxr_tutorial.entrypoint NOTEBOOK --key=value ... [--log_dir=DIR]"

LOG_DIR_VARIABLE = "CXR_TUTORIAL_LOG_DIR"
"""Environment variable naming the folder for the executed notebook (the task's log)."""

STATE_VARIABLES = {
    "JUPYTER_RUNTIME_DIR": "jupyter-runtime",
    "JUPYTER_DATA_DIR": "jupyter-data",
    "JUPYTER_CONFIG_DIR": "jupyter-config",
    "IPYTHONDIR": "ipython",
    "MPLCONFIGDIR": "matplotlib",
    "KERAS_HOME": "keras",
    "XDG_CACHE_HOME": "cache",
    "XDG_CONFIG_HOME": "config",
}
"""Variables that move every state folder a kernel writes to; value: sub-folder name."""


class UsageError(ConfigError):
    """The entrypoint's command line does not fit the task (exit status 2)."""


def parse_arguments(words: list[str]) -> tuple[Path, dict[str, str]]:
    """Split ``NOTEBOOK --key=value ...`` (``--key value`` also accepted).

    Args:
        words: Command-line words after the module name.

    Returns:
        ``(notebook, parameters)``, parameters in command-line order.

    Raises:
        UsageError: If the words do not fit, naming the word.
    """
    if not words or not words[0].endswith(".ipynb"):
        raise UsageError(USAGE)
    notebook, params, rest = Path(words[0]), {}, list(words[1:])
    while rest:
        word = rest.pop(0)
        if not word.startswith("--") or len(word) < 3:
            raise UsageError(f"expected --key=value, got {word!r}\n{USAGE}")
        key, sep, value = word[2:].partition("=")
        if not sep:
            if not rest:
                raise UsageError(f"--{key} needs a value\n{USAGE}")
            value = rest.pop(0)
        if key in params:
            raise UsageError(f"--{key} is given twice")
        params[key] = value
    return notebook, params


def check_parameters(spec: TaskSpec, cube_name: str, params: dict[str, str]) -> None:
    """Check the keys against the task's declared parameters and that inputs exist.

    Args:
        spec: The task, from its manifest.
        cube_name: The cube's name, for messages.
        params: Parameter name to path, as given on the command line.

    Raises:
        UsageError: Naming unknown or missing keys, or an input that does not exist.
    """
    declared = [p.name for p in spec.parameters]
    unknown = [k for k in params if k not in declared]
    missing = [k for k in declared if k not in params]
    what = f"task {spec.name!r} of {cube_name}"
    if unknown or missing:
        problems = ([f"unknown --{', --'.join(unknown)}"] if unknown else []) + (
            [f"missing --{', --'.join(missing)}"] if missing else [])
        raise UsageError(f"{what}: {'; '.join(problems)}; its parameters are "
                         f"{', '.join(declared)}")
    for param in spec.parameters:
        if not param.is_output and not Path(params[param.name]).exists():
            raise UsageError(f"{what}: input {param.name} does not exist: "
                             f"{params[param.name]}")


def use_temporary_state(folder: Path) -> None:
    """Point every unset state variable of :data:`STATE_VARIABLES` into ``folder``."""
    for variable, name in STATE_VARIABLES.items():
        if not os.environ.get(variable):
            path = folder / name
            path.mkdir(parents=True, exist_ok=True)
            os.environ[variable] = str(path)


def publish_file(staged: Path, target: Path) -> None:
    """Put a staged file output at ``target``.

    A copy beside the target renamed over it keeps the target whole at every instant.
    Where that cannot work (the target is a single mounted file, so a rename onto it fails,
    or its folder is not writable), the target is rewritten in place, which needs only the
    target itself to be writable.

    Args:
        staged: The complete file, written by the task.
        target: The declared output path.

    Raises:
        OSError: If the target cannot be written either way.
    """
    partial = target.with_name(target.name + ".partial")
    try:
        shutil.copyfile(staged, partial)
        os.replace(partial, target)
        return
    except OSError as exc:
        logger.info("%s: cannot be replaced by a rename (%s); rewriting it in place", target,
                    exc.strerror or exc)
        with contextlib.suppress(OSError):
            partial.unlink()
    with open(staged, "rb") as source, open(target, "wb") as out:
        shutil.copyfileobj(source, out)


def run(notebook: Path, params: dict[str, str], log_dir: Path | None = None) -> Path:
    """Run one task notebook the way a container does.

    Args:
        notebook: The task's notebook, relative to the current folder or absolute.
        params: Parameter name to path (the ``--key=value`` words).
        log_dir: Folder for the executed notebook (default: see the module docstring).

    Returns:
        The executed notebook.

    Raises:
        UsageError: On unknown, missing or non-existent parameters.
        TaskError: If the notebook fails; no file output is touched then.
    """
    notebook = notebook.resolve()
    if not notebook.is_file():
        raise UsageError(f"notebook not found: {notebook}")
    found = find_task(notebook)
    file_outputs: dict[str, Path] = {}
    if found is None:
        logger.warning("no manifest in %s runs %s; parameters are passed unchecked",
                       notebook.parent.parent / "mlcubes", notebook.name)
        what = f"notebook {notebook.name}"
    else:
        cube, spec = found
        check_parameters(spec, cube.name, params)
        file_outputs = {p.name: Path(params[p.name]) for p in spec.parameters
                        if p.is_output and p.kind == "file"}
        what = f"task {spec.name!r} of {cube.name}"
    run_dir = Path(tempfile.mkdtemp(prefix="cxr-tutorial-run-"))
    use_temporary_state(run_dir / "state")
    log_dir = log_dir or Path(os.environ.get(LOG_DIR_VARIABLE) or run_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / notebook.name
    staged = {name: run_dir / "outputs" / name / target.name
              for name, target in file_outputs.items()}
    for path in staged.values():
        path.parent.mkdir(parents=True)
    logger.info("%s: running %s", what, notebook.name)
    seconds = execute_notebook(notebook, {**params, **{k: str(v) for k, v in staged.items()}},
                               log, what)
    for name, path in staged.items():
        if not path.is_file():
            raise TaskError(f"{what}: the notebook wrote no {name} ({file_outputs[name]})")
        try:
            publish_file(path, file_outputs[name])
        except OSError as exc:
            raise TaskError(f"{what}: could not write {name} to {file_outputs[name]}: "
                            f"{exc.strerror or exc}") from exc
    for folder in ("outputs", "state"):
        shutil.rmtree(run_dir / folder, ignore_errors=True)
    logger.info("%s: done in %.1f s; executed notebook: %s", what, seconds, log)
    return log


def main(argv: list[str] | None = None) -> int:
    """Run the notebook; print one message and exit 1 or 2 if it fails."""
    words = sys.argv[1:] if argv is None else argv
    if words[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    setup_logging()
    try:
        notebook, params = parse_arguments(words)
        log_dir = params.pop("log_dir", None)
        run(notebook, params, Path(log_dir) if log_dir else None)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except CxrTutorialError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

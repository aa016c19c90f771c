"""Reading an ``mlcube.yaml`` manifest and resolving a task's parameters.

The manifest follows the MLCube schema: each task lists ``parameters.inputs`` and
``parameters.outputs`` with defaults relative to the cube's ``workspace/`` folder, and an
``entrypoint`` whose last word is the task's notebook, relative to the project root. The
native runner and a container read the same file.
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

from cxr_tutorial.config import read_yaml
from cxr_tutorial.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One input or output of a task.

    Attributes:
        name: Parameter name, e.g. ``data_path``.
        default: Default path, relative to the workspace.
        kind: ``file`` or ``directory``.
        is_output: Whether the task writes it.
    """

    name: str
    default: str
    kind: str
    is_output: bool


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One task of a cube.

    Attributes:
        name: Task name, e.g. ``prepare``.
        notebook: The notebook that runs it.
        parameters: Its inputs and outputs, in manifest order.
        entrypoint: The manifest's entrypoint split into words, e.g. ``("python", "-m",
            "cxr_tutorial.entrypoint", "notebooks/01_prepare.ipynb")``: the command a
            container runs, its last word relative to the image's working folder.
    """

    name: str
    notebook: Path
    parameters: tuple[Parameter, ...]
    entrypoint: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Cube:
    """A cube folder and its manifest.

    Attributes:
        path: The cube folder (holding ``mlcube.yaml`` and ``workspace/``).
        name: The manifest's ``name``.
        tasks: Task name to :class:`TaskSpec`.
        image: The container image named in the manifest's ``docker.image`` (``None``
            if the manifest names none).
    """

    path: Path
    name: str
    tasks: dict[str, TaskSpec]
    image: str | None = None

    @property
    def workspace(self) -> Path:
        """The folder that relative defaults resolve against."""
        return self.path / "workspace"

    def task(self, name: str) -> TaskSpec:
        """Look a task up by name.

        Raises:
            ConfigError: Naming the tasks the cube has.
        """
        if name not in self.tasks:
            raise ConfigError(
                f"{self.path / 'mlcube.yaml'}: no task {name!r}; "
                f"this cube has {', '.join(self.tasks)}"
            )
        return self.tasks[name]


def _parameter(manifest: Path, name: str, value: object, is_output: bool) -> Parameter:
    """Parse one parameter in either MLCube form: ``path`` or ``{type, default}``."""
    if isinstance(value, str):
        default = value
        kind = "directory" if value.endswith("/") else "file"
    elif isinstance(value, dict) and isinstance(value.get("default"), str):
        default = value["default"]
        kind = str(value.get("type", "directory" if default.endswith("/") else "file"))
    else:
        raise ConfigError(f"{manifest}: parameter {name} needs a default path, got {value!r}")
    if kind not in ("file", "directory"):
        raise ConfigError(f"{manifest}: parameter {name} has type {kind!r}; "
                          "expected file or directory")
    return Parameter(name, default.rstrip("/") or ".", kind, is_output)


def _project_root(cube_path: Path, notebook: str) -> Path:
    """Find the folder that holds the notebook path, walking up from the cube."""
    for folder in (cube_path, *cube_path.parents):
        if (folder / notebook).is_file():
            return folder
    raise ConfigError(f"{cube_path / 'mlcube.yaml'}: notebook {notebook} not found in "
                      "the cube folder or any folder above it")


def load_cube(path: str | Path) -> Cube:
    """Read a cube's manifest.

    Args:
        path: The cube folder (or its ``mlcube.yaml``).

    Returns:
        The parsed :class:`Cube`.

    Raises:
        ConfigError: If the manifest is missing or a task lacks an entrypoint notebook or
            valid parameters.
    """
    path = Path(path).resolve()
    if path.name == "mlcube.yaml":
        path = path.parent
    manifest = path / "mlcube.yaml"
    data = read_yaml(manifest)
    tasks_data = data.get("tasks")
    if not isinstance(tasks_data, dict) or not tasks_data:
        raise ConfigError(f"{manifest}: no tasks defined")
    tasks = {}
    for task_name, body in tasks_data.items():
        body = body or {}
        words = shlex.split(str(body.get("entrypoint", "")))
        if not words or not words[-1].endswith(".ipynb"):
            raise ConfigError(f"{manifest}: task {task_name} needs an entrypoint ending in "
                              "its notebook, e.g. 'cxr-tutorial-entrypoint notebooks/x.ipynb'")
        notebook = _project_root(path, words[-1]) / words[-1]
        params = body.get("parameters") or {}
        parsed = [
            _parameter(manifest, name, value, is_output)
            for key, is_output in (("inputs", False), ("outputs", True))
            for name, value in (params.get(key) or {}).items()
        ]
        tasks[task_name] = TaskSpec(task_name, notebook, tuple(parsed), tuple(words))
    image = (data.get("docker") or {}).get("image")
    return Cube(path, str(data.get("name", path.name)), tasks,
                str(image) if image is not None else None)


def resolve_parameters(
    cube: Cube, task: str, overrides: dict[str, str] | None = None, cwd: Path | None = None
) -> dict[str, Path]:
    """Turn a task's parameters into absolute paths.

    Defaults resolve against the cube's workspace, as ``mlcube run`` does; overrides given
    on the command line resolve against the current directory, as a shell user expects.

    Args:
        cube: The cube.
        task: Task name.
        overrides: Parameter name to path, replacing defaults.
        cwd: Folder that relative overrides resolve against (default: the current one).

    Returns:
        Parameter name to absolute path, for every parameter of the task.

    Raises:
        ConfigError: If an override names a parameter the task does not have.
    """
    spec = cube.task(task)
    overrides = dict(overrides or {})
    known = [p.name for p in spec.parameters]
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ConfigError(f"task {task} of {cube.name} has no parameter {', '.join(unknown)}; "
                          f"its parameters are {', '.join(known)}")
    base = cwd or Path.cwd()
    resolved = {}
    for param in spec.parameters:
        if param.name in overrides:
            resolved[param.name] = (base / overrides[param.name]).resolve()
        else:
            resolved[param.name] = (cube.workspace / param.default).resolve()
    return resolved


def find_task(notebook: str | Path) -> tuple[Cube, TaskSpec] | None:
    """Find the cube task whose entrypoint runs a notebook.

    The project's manifests are ``mlcubes/*/mlcube.yaml`` beside the notebook's folder
    (``notebooks/``); a container image copies them there too. The first match in folder
    order wins.

    Args:
        notebook: A task notebook, e.g. ``notebooks/05_infer.ipynb``.

    Returns:
        ``(cube, task)``, or ``None`` if no manifest there runs this notebook.

    Raises:
        ConfigError: If one of the manifests there is invalid.
    """
    notebook = Path(notebook).resolve()
    for manifest in sorted((notebook.parent.parent / "mlcubes").glob("*/mlcube.yaml")):
        cube = load_cube(manifest)
        for spec in cube.tasks.values():
            if spec.notebook.resolve() == notebook:
                return cube, spec
    return None

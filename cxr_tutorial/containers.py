"""MedPerf container configs, generated from the same task definitions as ``mlcube.yaml``.

Since 2025 MedPerf describes a cube by a plain ``container_config.yaml`` instead of an
MLCube manifest: the image, and for each task the command to run and the volumes to mount.
MedPerf mounts each input read-only and each output read-write at the ``mount_path`` the
config names (under ``/mlcommons/volumes/``), mounts a scratch folder at ``/tmp``, runs the
container as the calling user with no network, and passes no arguments of its own: the
command carries the paths. Here every task's command is the manifest's entrypoint followed
by one ``--name=mount_path`` per parameter, so one entrypoint
(:mod:`cxr_tutorial.entrypoint`) serves MLCube, MedPerf and the native runner alike.

Everything MedPerf-specific lives in this module, so a change in MedPerf's format is one
edit: :func:`container_config` writes a config, :func:`medperf_run_command` builds the
``docker run`` command MedPerf would build from it, and :func:`parse_docker_run` reads such
a command back (the tests use it on what ``mlcube`` builds too).

``python -m cxr_tutorial.containers write`` rewrites ``mlcubes/*/container_config.yaml``;
``python -m cxr_tutorial.containers check`` fails if any of them drifted from its manifest.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from cxr_tutorial.errors import ConfigError
from cxr_tutorial.mlcube import Cube, Parameter, load_cube

CONFIG_NAME = "container_config.yaml"
"""File name of a cube's MedPerf container config, beside its ``mlcube.yaml``."""

VOLUMES_ROOT = PurePosixPath("/mlcommons/volumes")
"""Where MedPerf mounts a task's inputs and outputs inside the container."""

_HEADER = """\
# MedPerf container config of {name}, generated from mlcube.yaml by
# `python -m cxr_tutorial.containers write` (make container-configs): edit the manifest, not
# this file. tests/test_container_config.py fails if the two drift apart.
"""


def mount_path(param: Parameter) -> str:
    """The container path of a parameter: a folder, or a file inside its own folder.

    Args:
        param: A task parameter from the manifest.

    Returns:
        ``/mlcommons/volumes/<name>`` for a directory,
        ``/mlcommons/volumes/<name>/<default file name>`` for a file.
    """
    folder = VOLUMES_ROOT / param.name
    if param.kind == "file":
        return str(folder / PurePosixPath(param.default).name)
    return str(folder)


def container_config(cube: Cube) -> dict[str, Any]:
    """Build a cube's MedPerf container config from its manifest.

    Args:
        cube: The loaded cube; its manifest must name an image (``docker.image``).

    Returns:
        The config as a mapping: ``container_type``, ``image`` and ``tasks``, each task
        with ``run_args.command`` (a list of words), ``input_volumes`` and, if it writes
        anything, ``output_volumes`` (each volume: ``mount_path`` and ``type``, ``file``
        or ``directory``).

    Raises:
        ConfigError: If the manifest names no image.
    """
    if not cube.image:
        raise ConfigError(f"{cube.path / 'mlcube.yaml'}: docker.image is needed to write "
                          f"a container config")
    tasks: dict[str, Any] = {}
    for name, spec in cube.tasks.items():
        command = list(spec.entrypoint)
        command += [f"--{p.name}={mount_path(p)}" for p in spec.parameters]
        task: dict[str, Any] = {"run_args": {"command": command}}
        for key, is_output in (("input_volumes", False), ("output_volumes", True)):
            volumes = {p.name: {"mount_path": mount_path(p), "type": p.kind}
                       for p in spec.parameters if p.is_output == is_output}
            if volumes:
                task[key] = volumes
        tasks[name] = task
    return {"container_type": "DockerImage", "image": cube.image, "tasks": tasks}


def render_container_config(cube: Cube) -> str:
    """The text of a cube's ``container_config.yaml``: a header comment, then the YAML."""
    body = yaml.safe_dump(container_config(cube), sort_keys=False, width=96)
    return _HEADER.format(name=cube.name) + body


def cube_folders(root: Path) -> list[Path]:
    """The cube folders of a project: every ``mlcubes/*`` holding an ``mlcube.yaml``."""
    return sorted(p.parent for p in (Path(root) / "mlcubes").glob("*/mlcube.yaml"))


def stale_configs(root: Path) -> list[Path]:
    """The container configs that are missing or differ from what their manifest gives."""
    stale = []
    for folder in cube_folders(root):
        path = folder / CONFIG_NAME
        expected = render_container_config(load_cube(folder))
        if not path.is_file() or path.read_text(encoding="utf-8") != expected:
            stale.append(path)
    return stale


def write_configs(root: Path) -> list[Path]:
    """Write every cube's ``container_config.yaml`` from its manifest.

    Returns:
        The files written (all of them, changed or not).
    """
    written = []
    for folder in cube_folders(root):
        path = folder / CONFIG_NAME
        path.write_text(render_container_config(load_cube(folder)), encoding="utf-8")
        written.append(path)
    return written


def medperf_run_command(
    config: dict[str, Any],
    task: str,
    host_paths: dict[str, str | Path],
    tmp_folder: str | Path,
    user: str,
    engine: str = "docker",
    image: str | None = None,
) -> list[str]:
    """The ``docker run`` command MedPerf builds to run one task of a container config.

    It follows MedPerf's docker runner: the container is removed afterwards, runs as
    ``user`` with no network, each input is mounted read-only and each output read-write
    at its ``mount_path``, a scratch folder is mounted at ``/tmp``, and the task's
    ``run_args.command`` follows the image. MedPerf also creates missing output folders
    and empty output files before the run; so does this function.

    Args:
        config: A container config, as :func:`container_config` returns it.
        task: Task name.
        host_paths: Volume name to host path, for every volume of the task.
        tmp_folder: Host folder mounted at ``/tmp``.
        user: ``UID:GID`` to run as (MedPerf passes the caller's).
        engine: The container command, ``docker`` or ``podman``.
        image: Image to run instead of the config's (e.g. a local tag).

    Returns:
        The command, one word per item.

    Raises:
        ConfigError: If the task is unknown, a host path is missing or an input does not
            exist.
    """
    tasks = config["tasks"]
    if task not in tasks:
        raise ConfigError(f"container config has no task {task!r}; it has {', '.join(tasks)}")
    spec = tasks[task]
    command = [engine, "run", "--rm", "--user", user]
    for key, mode in (("input_volumes", "ro"), ("output_volumes", "rw")):
        for name, volume in (spec.get(key) or {}).items():
            if name not in host_paths:
                raise ConfigError(f"task {task}: no host path given for volume {name}")
            host = Path(host_paths[name])
            if mode == "ro" and not host.exists():
                raise ConfigError(f"task {task}: input {name} does not exist: {host}")
            if mode == "rw" and volume["type"] == "directory":
                host.mkdir(parents=True, exist_ok=True)
            elif mode == "rw":
                host.parent.mkdir(parents=True, exist_ok=True)
                host.touch(exist_ok=True)
            command += ["--volume", f"{host}:{volume['mount_path']}:{mode}"]
    command += ["--volume", f"{tmp_folder}:/tmp:rw", "--network", "none"]
    command.append(image or config["image"])
    command += [str(word) for word in spec.get("run_args", {}).get("command", [])]
    return command


@dataclasses.dataclass(frozen=True)
class DockerRun:
    """A ``docker run`` command line, taken apart.

    Attributes:
        image: The image.
        volumes: ``(host path, container path, options)`` per ``--volume``; options is
            ``""``, ``"ro"`` or ``"rw"``.
        options: Every other option before the image, name to value (``""`` for a flag).
        entrypoint: The ``--entrypoint`` value, or ``None``.
        args: The words after the image.
    """

    image: str
    volumes: tuple[tuple[str, str, str], ...]
    options: dict[str, str]
    entrypoint: str | None
    args: tuple[str, ...]

    @property
    def command(self) -> list[str]:
        """What runs in the container: the entrypoint (if set) and the arguments."""
        return ([self.entrypoint] if self.entrypoint else []) + list(self.args)

    def to_host(self, word: str) -> str:
        """Map a container path (or ``--key=path``) back to the host path mounted there.

        The longest matching mount wins, so nested mounts map correctly; words that name
        no mounted path come back unchanged.
        """
        prefix, sep, value = word.partition("=") if word.startswith("--") else ("", "", word)
        for host, inside, _ in sorted(self.volumes, key=lambda v: -len(v[1])):
            if value == inside or value.startswith(inside.rstrip("/") + "/"):
                value = host.rstrip("/") + value[len(inside.rstrip("/")):]
                break
        return f"{prefix}{sep}{value}" if sep else value


_VALUED = {"--volume", "-v", "--user", "-u", "--network", "--entrypoint", "--env", "-e",
           "--workdir", "-w", "--gpus", "--shm-size", "--memory", "--cpuset-cpus",
           "--security-opt", "--ulimit", "--runtime", "--name", "-p", "--publish"}


def parse_docker_run(words: list[str]) -> DockerRun:
    """Take a ``docker run`` (or ``podman run``) command apart.

    Args:
        words: The command's words, starting with ``run`` or with the engine and ``run``.

    Returns:
        A :class:`DockerRun`.

    Raises:
        ConfigError: If the words are not a ``run`` command with an image.
    """
    rest = list(words)
    if rest[:1] != ["run"]:
        rest = rest[1:]
    if rest[:1] != ["run"]:
        raise ConfigError(f"not a 'docker run' command: {' '.join(words)}")
    rest.pop(0)
    volumes, options = [], {}
    while rest and rest[0].startswith("-"):
        word = rest.pop(0)
        name, sep, value = word.partition("=")
        if not sep and name in _VALUED:
            if not rest:
                raise ConfigError(f"{name} needs a value in: {' '.join(words)}")
            value = rest.pop(0)
        if name in ("--volume", "-v"):
            host, _, inside = value.partition(":")
            inside, _, mode = inside.partition(":")
            volumes.append((host, inside, mode))
        else:
            options[name] = value
    if not rest:
        raise ConfigError(f"no image in: {' '.join(words)}")
    entrypoint = options.pop("--entrypoint", None)
    return DockerRun(rest[0], tuple(volumes), options, entrypoint, tuple(rest[1:]))


def main(argv: list[str] | None = None) -> int:
    """``python -m cxr_tutorial.containers write|check [--root DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m cxr_tutorial.containers",
                                     description="MedPerf container configs of the cubes")
    parser.add_argument("action", choices=("write", "check"),
                        help="write: regenerate them; check: fail if any drifted")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="project folder holding mlcubes/ (default: this checkout)")
    args = parser.parse_args(argv)
    try:
        if args.action == "write":
            for path in write_configs(args.root):
                print(f"wrote {path}")
            return 0
        stale = stale_configs(args.root)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in stale:
        print(f"{path}: missing or out of date; run make container-configs", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())

"""Checking that a native run keeps a container's rules: read-only inputs, declared outputs.

In a MedPerf container the inputs are mounted read-only and only ``/tmp`` and the declared
outputs are writable. A native run (``cxr-tutorial run --read-only-inputs``) checks the same
rules with :class:`InputGuard`:

- every input file and folder loses its write permission for the duration of the task, so
  a write into an input fails at once, as in a container (the modes are restored after
  the task; a run killed meanwhile leaves them off, and ``chmod -R u+w`` gives them back);
- the content (SHA-256) of every input file is compared before and after;
- the cube's workspace and the notebooks' folder (the kernel's working folder) are
  compared before and after, outside the declared outputs and the log folder.

What this proves depends on who runs it. For an ordinary user the permission bits stop a
write when it happens. Root ignores permission bits, so for root the first point proves
nothing and only the comparisons catch a write, after the fact; they cannot see a file that
was changed and restored, nor writes anywhere else on the machine. The container test and
``tests/test_mlcube_tool.py`` run tasks as an unprivileged user instead.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from cxr_tutorial.errors import TaskError

_WRITE_BITS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH


def _walk(root: Path) -> Iterable[Path]:
    """``root`` and everything under it, not following links below ``root``."""
    yield root
    if root.is_dir():
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                yield Path(folder) / name


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def tree_state(roots: Iterable[Path], skip: Iterable[Path] = ()) -> dict[str, str]:
    """The content of every regular file under ``roots``, as a SHA-256 per path.

    Args:
        roots: Files or folders; missing ones are ignored.
        skip: Files or folders whose content is left out (outputs, logs).

    Returns:
        Absolute path to hex digest; a symbolic link maps to ``"-> target"``.
    """
    skipped = [Path(p).resolve() for p in skip]
    state = {}
    for root in roots:
        root = Path(root)
        if not root.exists():
            continue
        for path in _walk(root.resolve()):
            if any(path == s or s in path.parents for s in skipped):
                continue
            if path.is_symlink():
                state[str(path)] = f"-> {os.readlink(path)}"
            elif path.is_file():
                state[str(path)] = _digest(path)
    return state


def _changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Describe what differs between two :func:`tree_state` results."""
    changes = []
    for path in sorted(before.keys() | after.keys()):
        if path not in after:
            changes.append(f"deleted {path}")
        elif path not in before:
            changes.append(f"created {path}")
        elif before[path] != after[path]:
            changes.append(f"modified {path}")
    return changes


class InputGuard:
    """Make inputs read-only for a run, then report any write outside the outputs.

    Use as a context manager around the task, then call :meth:`check`.

    Args:
        inputs: The task's input files and folders.
        outputs: The task's declared outputs (files or folders).
        watched: Folders that must not change outside ``outputs`` and ``ignored``
            (the cube's workspace, the kernel's working folder).
        ignored: Folders whose changes are expected (the log folder).
    """

    def __init__(self, inputs: Iterable[Path], outputs: Iterable[Path],
                 watched: Iterable[Path], ignored: Iterable[Path] = ()) -> None:
        self.inputs = [Path(p).resolve() for p in inputs]
        self.outputs = [Path(p).resolve() for p in outputs]
        self.watched = [Path(p).resolve() for p in watched]
        self.ignored = [Path(p).resolve() for p in ignored]
        self._modes: dict[Path, int] = {}
        self._before_inputs: dict[str, str] = {}
        self._before_watched: dict[str, str] = {}
        self._after_inputs: dict[str, str] = {}
        self._after_watched: dict[str, str] = {}

    def _watched_state(self) -> dict[str, str]:
        return tree_state(self.watched, [*self.outputs, *self.ignored, *self.inputs])

    def __enter__(self) -> InputGuard:
        self._before_inputs = tree_state(self.inputs)
        self._before_watched = self._watched_state()
        for root in self.inputs:
            for path in _walk(root):
                if path.is_symlink() or path in self._modes:
                    continue
                mode = stat.S_IMODE(path.stat().st_mode)
                self._modes[path] = mode
                os.chmod(path, mode & ~_WRITE_BITS)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for path, mode in self._modes.items():
            if path.exists():
                os.chmod(path, mode)
        self._modes.clear()
        self._after_inputs = tree_state(self.inputs)
        self._after_watched = self._watched_state()

    def check(self, what: str) -> None:
        """Raise if the run changed an input or wrote outside its outputs.

        Args:
            what: How to name the task, e.g. ``"task 'prepare' of cxr-data-preparator"``.

        Raises:
            TaskError: Listing up to ten changed paths.
        """
        for kind, before, after in (
            ("modified its read-only inputs", self._before_inputs, self._after_inputs),
            ("wrote outside its declared outputs", self._before_watched,
             self._after_watched),
        ):
            changes = _changes(before, after)
            if changes:
                more = f" (and {len(changes) - 10} more)" if len(changes) > 10 else ""
                raise TaskError(f"{what} {kind}: {'; '.join(changes[:10])}{more}")

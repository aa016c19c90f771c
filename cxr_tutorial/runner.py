"""Running one cube task natively: the task's notebook, executed by papermill.

This is what ``cxr-tutorial run`` does, and what ``mlcube run`` would do in a container:
resolve the task's parameters, make its output folders, execute the notebook with those
parameters injected, and keep the executed notebook as the task's log. A failing task
becomes a :class:`~cxr_tutorial.errors.TaskError` naming the task, the step and cell of
the notebook, and the error. Every task gets a fresh kernel; a :class:`KernelPool` shared
by a chain of tasks launches each one while the task before it runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import queue
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cxr_tutorial import logger
from cxr_tutorial.errors import ConfigError, TaskError
from cxr_tutorial.mlcube import Cube, load_cube, resolve_parameters
from cxr_tutorial.sandbox import InputGuard

# Quiet, reproducible kernels: TensorFlow's C++ logs off, Keras on TensorFlow, no oneDNN
# reordering; text progress bars, since no one sees a widget in a headless kernel.
# setdefault, so a user's own choice wins.
_KERNEL_ENV = {
    "CXR_TUTORIAL_PROGRESS": "text",
    "KERAS_BACKEND": "tensorflow",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "TF_ENABLE_ONEDNN_OPTS": "0",
}
# IPython's history would open an SQLite file per kernel; a task never needs it.
_KERNEL_ARGS = ["--HistoryManager.hist_file=:memory:"]


@dataclasses.dataclass(frozen=True)
class TaskResult:
    """What a finished task leaves behind.

    Attributes:
        cube: The cube's name.
        task: The task's name.
        parameters: Parameter name to the absolute path used.
        log: The executed notebook.
        seconds: Wall-clock duration of the whole run: checks, kernel start, notebook.
    """

    cube: str
    task: str
    parameters: dict[str, Path]
    log: Path
    seconds: float


def _snapshot(paths: list[Path]) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file under the given inputs.

    ``os.scandir`` rather than ``Path.rglob``: one ``stat`` per file instead of two, which
    matters for a folder of 100,000 prepared images.
    """
    state: dict[str, tuple[int, int]] = {}
    folders = []
    for root in paths:
        if root.is_dir():
            folders.append(str(root))
        elif root.exists():
            info = root.stat()
            state[str(root)] = (info.st_size, info.st_mtime_ns)
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=True):
                    folders.append(entry.path)
                elif entry.is_file(follow_symlinks=True):
                    info = entry.stat(follow_symlinks=True)
                    state[entry.path] = (info.st_size, info.st_mtime_ns)
    return state


def _failed_step(log: Path, cell_index: int | None = None) -> str:
    """Describe the failing cell: the heading of the step it belongs to, and its number.

    Args:
        log: The executed notebook.
        cell_index: The failing cell's index among all cells (default: the last cell that
            started, which is where a run whose kernel died stopped).
    """
    try:
        import nbformat  # not at the top: it would delay every task's kernel by 0.1 s

        cells = nbformat.read(log, as_version=4).cells
    except Exception:  # noqa: BLE001 - the description is a courtesy; never mask the error
        return "an unknown cell" if cell_index is None else f"cell {cell_index}"
    if cell_index is None:
        started = [i for i, cell in enumerate(cells)
                   if cell.get("metadata", {}).get("papermill", {}).get("start_time")]
        if not started:
            return "before its first cell"
        cell_index = started[-1]
    heading = ""
    for cell in cells[: cell_index + 1]:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    heading = line.lstrip("#").strip()
    number = sum(1 for c in cells[: cell_index + 1] if c.cell_type == "code")
    return f"code cell {number}" + (f" (step '{heading}')" if heading else "")


async def _wait_for_ready(client: Any, timeout: float | None = None) -> None:
    """Wait until a kernel answers, like ``KernelClient.wait_for_ready`` but 0.2 s sooner.

    jupyter_client's version ends by draining IOPub until it has been silent for 0.2 s,
    so every task waited 0.2 s for nothing. Here the drain stops as soon as IOPub holds
    nothing more: a status message that arrives later is still harmless, since nbclient
    keeps only the messages that answer its own requests. The rest is the same: ask for
    ``kernel_info`` until the reply comes, then see one IOPub message, which proves the
    output channel is connected before the first cell runs.

    Args:
        client: An asynchronous kernel client with started channels.
        timeout: Seconds to wait for the reply (``None``: no limit).

    Raises:
        RuntimeError: If the kernel dies or does not answer in time (as upstream).
    """
    deadline = time.monotonic() + (timeout if timeout is not None else float("inf"))
    while True:
        client.kernel_info()
        try:
            reply = await client.shell_channel.get_msg(timeout=1)
        except queue.Empty:
            reply = None
        if reply is not None and reply["msg_type"] == "kernel_info_reply":
            try:
                await client.iopub_channel.get_msg(timeout=0.2)
            except queue.Empty:
                pass  # IOPub not connected yet: ask again
            else:
                client._handle_kernel_info_reply(reply)
                break
        if not await client.is_alive():
            raise RuntimeError("Kernel died before replying to kernel_info")
        if time.monotonic() > deadline:
            raise RuntimeError(f"Kernel didn't respond in {timeout} seconds")
    while True:
        try:
            await client.iopub_channel.get_msg(timeout=0.005)
        except queue.Empty:
            return


class _Kernel:
    """One kernel process, started in a folder, listening on local sockets.

    Local sockets rather than TCP ports: nothing listens on the network. The manager is
    jupyter_client's asynchronous one, as nbclient expects: with a blocking client,
    nbclient waits for a cell's reply in a call that never returns if the kernel dies
    (killed for memory, a crash in native code), and the task would hang instead of
    failing.
    """

    def __init__(self, cwd: Path) -> None:
        from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
        from jupyter_client.manager import AsyncKernelManager
        from jupyter_core.utils import run_sync

        class TaskKernelSpecs(KernelSpecManager):  # type: ignore[misc]
            """Every name resolves to this interpreter's kernel (see cxr_tutorial.kernel)."""

            def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
                return KernelSpec(argv=[sys.executable, "-m", "cxr_tutorial.kernel", "-f",
                                        "{connection_file}"],
                                  display_name="Python 3 (cxr-tutorial task)",
                                  language="python")

        for key, value in _KERNEL_ENV.items():
            os.environ.setdefault(key, value)
        self.cwd = cwd
        self._run_sync = run_sync  # nbclient runs its loop the same way, one per thread
        self._sockets = tempfile.TemporaryDirectory(prefix="cxr-kernel-")
        self.manager = AsyncKernelManager(kernel_name="python3", transport="ipc",
                                          ip=str(Path(self._sockets.name) / "kernel"),
                                          kernel_spec_manager=TaskKernelSpecs())
        # papermill does not stop the channels of a client made from a manager it was
        # given; remember each client so that shutdown() can.
        self._clients: list[Any] = []
        make_client = self.manager.client

        def client(**kwargs: Any) -> Any:
            made = make_client(**kwargs)
            made.wait_for_ready = functools.partial(_wait_for_ready, made)
            self._clients.append(made)
            return made

        self.manager.client = client  # type: ignore[method-assign]
        try:
            # Returns once the process is launched; the kernel boots on its own meanwhile.
            run_sync(self.manager.start_kernel)(cwd=str(cwd),
                                                extra_arguments=list(_KERNEL_ARGS))
        except BaseException:
            self._sockets.cleanup()
            raise

    def is_alive(self) -> bool:
        """Whether the kernel's process is running."""
        return bool(self._run_sync(self.manager.is_alive)())

    def shutdown(self) -> None:
        """Stop the clients' channels and the kernel, and remove its sockets."""
        try:
            for made in self._clients:
                made.stop_channels()
            if self.manager.has_kernel:
                self._kill_now()
                self._run_sync(self.manager.shutdown_kernel)(now=True)
        finally:
            self._sockets.cleanup()

    def _kill_now(self) -> None:
        """Kill the kernel's process group and reap the kernel at once.

        ``shutdown_kernel(now=True)`` kills too, but then checks every 0.1 s whether the
        process is gone, which costs each task up to 0.1 s; it finds it gone here and only
        cleans up. A task's kernel holds nothing that needs a graceful stop: its outputs
        are written atomically before the last cell ends.
        """
        provisioner = self.manager.provisioner
        process = getattr(provisioner, "process", None)
        if process is None or process.poll() is not None:
            return
        pgid = getattr(provisioner, "pgid", None)
        try:
            if pgid and hasattr(os, "killpg"):
                os.killpg(pgid, signal.SIGKILL)
            else:
                process.kill()
            process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass  # shutdown_kernel tries again, its own way


class KernelPool:
    """Kernels started one task ahead, for a chain of tasks run one after the other.

    A kernel takes about half a second to boot, mostly spent in its own process. When a
    task takes its kernel, the pool launches the next task's kernel at once, so it boots
    while the current task runs and the chain pays the boot only once. Every task still
    gets a fresh kernel of its own. Use it as a context manager, or call :meth:`close`.

    Args:
        planned: How many kernels the chain will take; none is launched beyond that.
    """

    def __init__(self, planned: int) -> None:
        self._remaining = planned
        self._next: _Kernel | None = None

    def take(self, cwd: Path) -> _Kernel:
        """Hand over a kernel running in ``cwd`` and launch the next one.

        Args:
            cwd: The folder the task's notebook runs in (its own folder).

        Returns:
            A started kernel, owned by the caller from now on.
        """
        kernel, self._next = self._next, None
        if kernel is not None and kernel.cwd != cwd:
            kernel.shutdown()
            kernel = None
        kernel = kernel or _Kernel(cwd)
        self._remaining -= 1
        if self._remaining > 0:
            self._next = _Kernel(cwd)
        return kernel

    def close(self) -> None:
        """Stop the kernel launched ahead, if no task took it."""
        if self._next is not None:
            self._next.shutdown()
            self._next = None

    def __enter__(self) -> KernelPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_LOG_SAVE_INTERVAL = 1.0
"""Seconds: the executed notebook is rewritten at a cell boundary at most this often."""


@functools.cache
def _engine() -> str:
    """Register, once, papermill's nbclient engine with fewer writes of the log.

    papermill rewrites the executed notebook when it starts, before and after every cell
    (markdown cells included) and when it ends: 33 writes of about 4 ms for a chapter of
    15 cells, each one a pause between two cells. This engine skips a cell boundary's
    write when the last write is less than :data:`_LOG_SAVE_INTERVAL` old, and keeps the
    rest: the first write, papermill's autosave during long cells, and the last write,
    which papermill makes in a ``finally`` and so also after a failed cell or a dead
    kernel. The finished log is the same; someone reading it during a run sees it up to a
    second late.

    Returns:
        The engine's name, for ``papermill.execute_notebook(engine_name=...)``.
    """
    from papermill.engines import NBClientEngine, NotebookExecutionManager, papermill_engines

    class Manager(NotebookExecutionManager):  # type: ignore[misc]
        throttled = False  # no skipping before the first write and for the last one

        def save(self, **kwargs: Any) -> None:
            if kwargs.get("nb") is not None:
                self.nb = kwargs["nb"]
            since = (self.now() - self.last_save_time).total_seconds()
            if not (self.throttled and since < _LOG_SAVE_INTERVAL):
                super().save()

        def notebook_start(self, **kwargs: Any) -> None:
            super().notebook_start(**kwargs)
            self.throttled = True

        def notebook_complete(self, **kwargs: Any) -> None:
            self.throttled = False
            super().notebook_complete(**kwargs)

    class Engine(NBClientEngine):  # type: ignore[misc]
        @classmethod
        def execute_notebook(cls, nb: Any, kernel_name: str, output_path: str | None = None,
                             progress_bar: bool = True, log_output: bool = False,
                             autosave_cell_every: int = 30, **kwargs: Any) -> Any:
            manager = Manager(nb, output_path=output_path, progress_bar=progress_bar,
                              log_output=log_output, autosave_cell_every=autosave_cell_every)
            manager.notebook_start()
            try:
                cls.execute_managed_notebook(manager, kernel_name, log_output=log_output,
                                             **kwargs)
            finally:
                manager.cleanup_pbar()
                manager.notebook_complete()
            return manager.nb

    papermill_engines.register("cxr-tutorial", Engine)
    return "cxr-tutorial"


def execute_notebook(
    notebook: Path,
    parameters: dict[str, str],
    log: Path,
    what: str,
    kernel: _Kernel | None = None,
) -> float:
    """Execute a notebook with papermill, turning failures into a short TaskError.

    Args:
        notebook: The task's notebook; it runs in its own folder.
        parameters: Values injected after its ``parameters`` cell.
        log: Where the executed notebook is written (kept on failure too).
        what: How to name the task in messages, e.g. ``"task 'prepare' of cxr-data..."``.
        kernel: A kernel already launched in the notebook's folder, e.g. taken from a
            :class:`KernelPool` (default: one launched now). This function shuts it down
            in every case.

    Returns:
        Wall-clock seconds, including the part of the kernel's boot not already done
        before the call.

    Raises:
        TaskError: Naming the step and cell that failed, the error and the log.
    """
    start = time.perf_counter()
    # The kernel starts in the notebook's folder. papermill's own cwd option would change
    # this whole process's folder, which is not safe when sites run in parallel threads.
    # Launching the kernel first lets it boot while papermill is imported.
    kernel = kernel or _Kernel(notebook.parent)
    try:
        import papermill
        from nbclient.exceptions import DeadKernelError
        from papermill.exceptions import PapermillExecutionError
    except BaseException:
        kernel.shutdown()
        raise
    try:
        papermill.execute_notebook(
            str(notebook),
            str(log),
            parameters=parameters,
            progress_bar=False,
            # The kernel's stderr (log records, progress bars) reaches the terminal live.
            stderr_file=sys.stderr,
            kernel_name="python3",
            engine_name=_engine(),
            km=kernel.manager,
        )
    except PapermillExecutionError as exc:
        evalue = str(exc.evalue).strip()
        raise TaskError(
            f"{what} failed in {notebook.name}, {_failed_step(log, exc.cell_index)}:\n"
            f"{exc.ename}: {evalue}\nThe executed notebook is kept as the log: {log}"
        ) from None
    except DeadKernelError:
        raise TaskError(
            f"{what} failed in {notebook.name}, {_failed_step(log)}: its kernel died (the "
            "process ended: out of memory, or a crash in native code).\n"
            f"The executed notebook, with the output until then, is kept as the log: {log}"
        ) from None
    except Exception as exc:  # timeouts, unreadable notebook
        raise TaskError(
            f"{what} could not run {notebook.name}: {type(exc).__name__}: {exc}\n"
            f"Log (may be partial): {log}"
        ) from exc
    finally:
        # A manager passed in is not shut down by papermill: this does it.
        kernel.shutdown()
    return time.perf_counter() - start


def run_task(
    cube: Cube | str | Path,
    task: str,
    overrides: dict[str, str] | None = None,
    log_dir: str | Path | None = None,
    log_name: str | None = None,
    read_only_inputs: bool = False,
    kernels: KernelPool | None = None,
) -> TaskResult:
    """Run one task of a cube natively.

    Args:
        cube: A loaded cube or its folder.
        task: Task name from the manifest.
        overrides: Parameter name to path; relative paths resolve against the current
            directory.
        log_dir: Where the executed notebook goes (default: ``<workspace>/logs``).
        log_name: File name of the executed notebook (default: ``<task>.ipynb``).
        read_only_inputs: Check a container's rules: inputs lose their write permission
            during the run and their content is compared before and after, and nothing
            in the workspace or the notebooks' folder may change outside the declared
            outputs (see :mod:`cxr_tutorial.sandbox` for what this proves as root).
        kernels: A :class:`KernelPool` shared by a chain of tasks (default: a kernel
            launched for this task alone).

    Returns:
        A :class:`TaskResult`.

    Raises:
        ConfigError: If an input does not exist or a parameter is unknown.
        TaskError: If the notebook fails, or the task modified one of its inputs (or,
            with ``read_only_inputs``, wrote outside its outputs).
    """
    start = time.perf_counter()
    cube = cube if isinstance(cube, Cube) else load_cube(cube)
    spec = cube.task(task)
    params = resolve_parameters(cube, task, overrides)
    inputs = [params[p.name] for p in spec.parameters if not p.is_output]
    for param in spec.parameters:
        path = params[param.name]
        if not param.is_output and not path.exists():
            raise ConfigError(f"{cube.name} {task}: input {param.name} does not exist: {path}")
        if param.is_output:
            (path if param.kind == "directory" else path.parent).mkdir(parents=True,
                                                                         exist_ok=True)
    log_dir = Path(log_dir) if log_dir else cube.workspace / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / (log_name or f"{task}.ipynb")
    logger.info("%s %s: running %s", cube.name, task, spec.notebook.name)
    # The kernel boots in its own process while the inputs are listed here.
    kernel: _Kernel | None = (kernels or KernelPool(1)).take(spec.notebook.parent)
    try:
        before = _snapshot(inputs)
        outputs = [params[p.name] for p in spec.parameters if p.is_output]
        guard = (InputGuard(inputs, outputs, [cube.workspace, spec.notebook.parent], [log_dir])
                 if read_only_inputs else None)
        with guard or contextlib.nullcontext():
            handed, kernel = kernel, None  # execute_notebook shuts it down from here on
            execute_notebook(spec.notebook, {k: str(v) for k, v in params.items()}, log,
                             f"task {task!r} of {cube.name}", kernel=handed)
    finally:
        if kernel is not None:
            kernel.shutdown()
    if guard is not None:
        guard.check(f"task {task!r} of {cube.name}")
    after = _snapshot(inputs)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        raise TaskError(f"task {task!r} of {cube.name} modified its inputs, which must stay "
                        f"read-only: {', '.join(changed[:5])}")
    seconds = time.perf_counter() - start
    logger.info("%s %s: done in %.1f s", cube.name, task, seconds)
    return TaskResult(cube.name, task, params, log, seconds)

"""The lean runner: kernels launched ahead, notebooks run in their folder, no needless TF."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest
import yaml

from cxr_tutorial.compat import TestPlan, plan_steps, run_step
from cxr_tutorial.errors import TaskError
from cxr_tutorial import runner
from cxr_tutorial.runner import KernelPool, execute_notebook

HEAVY = ("tensorflow", "keras")


@pytest.fixture()
def without_tensorflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make `import tensorflow` and `import keras` fail in every process started from here."""
    trap = tmp_path / "trap"
    for name in HEAVY:
        (trap / name).mkdir(parents=True)
        (trap / name / "__init__.py").write_text(
            f"raise ImportError('{name} was imported by a task that must not need it')\n")
    monkeypatch.setenv("PYTHONPATH", str(trap))
    return trap


def test_tasks_that_need_no_tensorflow_run_without_it(root, tmp_path, without_tensorflow):
    out = tmp_path / "out"
    steps = plan_steps(TestPlan.with_defaults(out))
    with KernelPool(len(steps) + 1) as kernels:
        # The whole chain, infer included: the reference model runs as ONNX.
        records = [run_step(step, out / "logs", kernels) for step in steps]
        assert [r.status for r in records] == ["passed"] * 5, \
            next(r.message for r in records if r.status != "passed")
        # The control: the same model as a .keras file needs TensorFlow, and the trap stops it.
        infer = steps[3]
        parameters = yaml.safe_load((infer.cube / "workspace" / "parameters.yaml").read_text())
        keras_parameters = tmp_path / "keras.yaml"
        keras_parameters.write_text(yaml.safe_dump({**parameters,
                                                    "weights_file": "weights.keras"}))
        control = run_step(dataclasses.replace(infer, parameters={
            **infer.parameters, "parameters_file": keras_parameters,
            "output_path": out / "keras_predictions"}), out / "logs", kernels)
    assert control.status == "failed"
    assert "was imported by a task that must not need it" in control.message
    # The command line itself starts without TensorFlow too.
    done = subprocess.run([sys.executable, "-c",
                           "import cxr_tutorial.cli as c, cxr_tutorial.compat, "
                           "cxr_tutorial.federated, cxr_tutorial.report, cxr_tutorial.sites; "
                           "c.build_parser()"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _notebook(folder: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import os\nprint(os.getcwd())")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    folder.mkdir(parents=True)
    nbformat.write(nb, folder / "where.ipynb")
    return folder / "where.ipynb"


def test_notebooks_run_in_their_folder_even_in_parallel_threads(tmp_path):
    notebooks = [_notebook(tmp_path / name) for name in ("a", "b")]
    here = os.getcwd()

    def run(notebook: Path) -> str:
        log = notebook.with_name("out.ipynb")
        execute_notebook(notebook, {}, log, "test")
        return nbformat.read(log, as_version=4).cells[0].outputs[0]["text"].strip()

    with ThreadPoolExecutor(2) as threads:
        folders = list(threads.map(run, notebooks))
    assert folders == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert os.getcwd() == here


def test_kernel_pool_launches_one_kernel_ahead_and_never_beyond(tmp_path):
    with KernelPool(2) as pool:
        first = pool.take(tmp_path)
        ahead = pool._next  # launched while the first task would run
        assert ahead is not None and ahead.is_alive()
        second = pool.take(tmp_path)
        assert second is ahead and pool._next is None  # two planned, two launched
        assert first.is_alive() and first is not second
        for kernel in (first, second):
            kernel.shutdown()
            assert not kernel.manager.has_kernel
    with KernelPool(3) as pool:
        pool.take(tmp_path).shutdown()
        stale = pool._next
        (tmp_path / "elsewhere").mkdir()
        other = pool.take(tmp_path / "elsewhere")  # another folder: a fresh kernel
        assert other is not stale and not stale.manager.has_kernel
        other.shutdown()
        leftover = pool._next
    assert leftover is not None and not leftover.manager.has_kernel  # closed on exit


def _cells_notebook(path: Path, sources: list[str]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Steps")]
    nb.cells += [nbformat.v4.new_code_cell(source) for source in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.mark.parametrize("ending", ["completes", "raises", "kernel dies"])
def test_the_log_holds_every_executed_cell_however_the_run_ends(tmp_path, monkeypatch,
                                                               ending):
    # A dead kernel used to hang the task: the blocking client waited for a reply forever.
    # The log is rewritten at cell boundaries at most once a second; with no rewrite at all
    # between the first and the last write, the last must happen on every path.
    monkeypatch.setattr(runner, "_LOG_SAVE_INTERVAL", 3600.0)
    last = {"completes": "print('last')", "raises": "raise ValueError('bad row 7')",
            "kernel dies": "import os\nos._exit(3)"}[ending]
    sources = [f"print('step {i}')" for i in range(8)] + [last]
    notebook = _cells_notebook(tmp_path / "steps.ipynb", sources)
    log = tmp_path / "log.ipynb"
    if ending == "completes":
        execute_notebook(notebook, {}, log, "test")
    else:
        expected = ("bad row 7" if ending == "raises" else
                    r"failed in steps\.ipynb, code cell 9 \(step 'Steps'\): its kernel died")
        with pytest.raises(TaskError, match=expected):
            execute_notebook(notebook, {}, log, "test")
    cells = [c for c in nbformat.read(log, as_version=4).cells if c.cell_type == "code"]
    printed = [c.outputs[0]["text"].strip() for c in cells[:8]]
    assert printed == [f"step {i}" for i in range(8)]
    statuses = [c.metadata.papermill["status"] for c in cells[:8]]
    assert statuses == ["completed"] * 8
    if ending == "raises":
        assert cells[8].outputs[-1]["ename"] == "ValueError"
    if ending == "completes":
        assert cells[8].outputs[0]["text"].strip() == "last"


def test_tasks_run_in_this_interpreter_whatever_python3_kernel_is_installed(
        tmp_path, monkeypatch):
    # A "python3" kernel spec in a JUPYTER_PATH folder takes precedence over the
    # environment's; this one exits at once, as another Python without this package would
    # fail at its first import.
    data = tmp_path / "jupyter-path"
    spec = data / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-c", "raise SystemExit(7)", "{connection_file}"],
        "display_name": "someone else's Python", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(data))
    notebook = _cells_notebook(tmp_path / "which.ipynb", [
        "import sys\nprint(sys.executable)", "print(sys.modules.get('debugpy') is None)"])
    log = tmp_path / "log.ipynb"
    execute_notebook(notebook, {}, log, "test")
    cells = [c for c in nbformat.read(log, as_version=4).cells if c.cell_type == "code"]
    assert cells[0].outputs[0]["text"].strip() == sys.executable
    assert cells[1].outputs[0]["text"].strip() == "True"  # started without its debugger

"""Native runs under a container's rules: read-only inputs, writes only to declared outputs.

As root (as here and in CI) permission bits stop nothing, so what is proven differs: for
root the guard catches a write by comparing contents after the run; for anyone else the
write already fails. Each test accepts the outcome that fits who runs it, and says which.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import nbformat
import pytest

from cxr_tutorial.errors import TaskError
from cxr_tutorial.runner import run_task
from cxr_tutorial.sandbox import InputGuard, tree_state

ROOT = Path(__file__).resolve().parent.parent
AS_ROOT = os.geteuid() == 0


def _modes(folder: Path) -> dict[str, int]:
    return {str(p): stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.rglob("*")]}


def test_guard_takes_write_permission_away_and_gives_it_back(tmp_path):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    (inputs / "sub").mkdir(parents=True)
    (inputs / "sub" / "a.txt").write_text("a")
    outputs.mkdir()
    before = _modes(inputs)
    with InputGuard([inputs], [outputs], [tmp_path]) as guard:
        assert all(not mode & 0o222 for mode in _modes(inputs).values())
        (outputs / "result.txt").write_text("ok")
    assert _modes(inputs) == before
    guard.check("task 't'")  # writing the output is fine


def test_guard_names_a_changed_input_and_a_stray_file(tmp_path):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    (inputs / "a.txt").write_text("a")
    outputs.mkdir()
    guard = InputGuard([inputs], [outputs], [tmp_path])
    with guard:
        try:
            (inputs / "a.txt").write_text("changed")
        except PermissionError:
            assert not AS_ROOT  # an ordinary user is stopped at once
            return
    with pytest.raises(TaskError, match=r"modified its read-only inputs: modified .*a\.txt"):
        guard.check("task 't'")
    with InputGuard([], [outputs], [tmp_path]) as stray:
        (tmp_path / "stray.txt").write_text("x")
    with pytest.raises(TaskError, match=r"wrote outside its declared outputs: created .*stray"):
        stray.check("task 't'")


def test_tree_state_skips_outputs_and_sees_content(tmp_path):
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "x").write_text("1")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "y").write_text("2")
    first = tree_state([tmp_path], skip=[tmp_path / "out"])
    assert list(first) == [str(tmp_path / "keep" / "x")]
    (tmp_path / "keep" / "x").write_text("3")
    assert tree_state([tmp_path], skip=[tmp_path / "out"]) != first


def test_prepare_succeeds_with_read_only_inputs(tmp_path):
    demo = ROOT / "demo_data"
    before = _modes(demo)
    result = run_task(ROOT / "mlcubes" / "data_preparator", "prepare",
                      {"output_path": str(tmp_path / "data"),
                       "output_labels_path": str(tmp_path / "labels")},
                      log_dir=tmp_path / "logs", read_only_inputs=True)
    assert (tmp_path / "data" / "cases.csv").is_file()
    assert result.parameters["data_path"].samefile(demo / "images")
    assert _modes(demo) == before


def _mischief_cube(folder: Path) -> Path:
    """A one-task cube whose notebook writes where it should not (if asked to)."""
    (folder / "notebooks").mkdir(parents=True)
    cube = folder / "mlcubes" / "mischief"
    (cube / "workspace" / "inputs").mkdir(parents=True)
    (cube / "workspace" / "inputs" / "data.txt").write_text("original\n")
    (cube / "mlcube.yaml").write_text(
        "name: mischief\ntasks:\n  run:\n"
        "    entrypoint: python -m cxr_tutorial.entrypoint notebooks/mischief.ipynb\n"
        "    parameters:\n"
        "      inputs: {data_path: {type: directory, default: inputs}}\n"
        "      outputs: {output_path: {type: directory, default: outputs}}\n")
    notebook = nbformat.v4.new_notebook(metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    notebook.cells = [
        nbformat.v4.new_code_cell('data_path = "x"\noutput_path = "y"',
                                  metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(
            "import os\nfrom pathlib import Path\n"
            "Path(output_path, 'result.txt').write_text('ok')\n"
            "where = os.environ.get('CXR_MISCHIEF', '')\n"
            "if where == 'input':\n    Path(data_path, 'data.txt').write_text('changed')\n"
            "if where == 'workspace':\n    Path(data_path).parent.joinpath('stray.txt')"
            ".write_text('x')\n"),
    ]
    nbformat.write(notebook, folder / "notebooks" / "mischief.ipynb")
    return cube


@pytest.mark.parametrize("where, message", [
    ("input", r"modified its read-only inputs: modified .*inputs/data\.txt"),
    ("workspace", r"wrote outside its declared outputs: created .*workspace/stray\.txt"),
])
def test_run_task_catches_a_notebook_that_writes_where_it_should_not(
        tmp_path, monkeypatch, where, message):
    cube = _mischief_cube(tmp_path)
    monkeypatch.setenv("CXR_MISCHIEF", where)
    if where == "input" and not AS_ROOT:
        message = "PermissionError"  # the write itself fails for an ordinary user
    with pytest.raises(TaskError, match=message):
        run_task(cube, "run", log_dir=tmp_path / "logs", read_only_inputs=True)


def test_run_task_of_a_well_behaved_notebook_passes_the_guard(tmp_path, monkeypatch):
    cube = _mischief_cube(tmp_path)
    monkeypatch.delenv("CXR_MISCHIEF", raising=False)
    run_task(cube, "run", log_dir=tmp_path / "logs", read_only_inputs=True)
    assert (cube / "workspace" / "outputs" / "result.txt").read_text() == "ok"

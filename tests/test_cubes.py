"""The cube manifests, their notebooks and the native runner."""

from __future__ import annotations

from pathlib import Path

import papermill
import pytest

from cxr_tutorial.errors import ConfigError
from cxr_tutorial.mlcube import load_cube, resolve_parameters

CUBES = {
    "data_preparator": {"prepare", "sanity_check", "statistics"},
    "model_custom_cnn": {"infer", "train"},
    "metrics": {"evaluate"},
}


@pytest.mark.parametrize("name", sorted(CUBES))
def test_each_task_notebook_takes_exactly_the_manifest_parameters(root: Path, name: str):
    cube = load_cube(root / "mlcubes" / name)
    assert set(cube.tasks) == CUBES[name]
    for task in cube.tasks.values():
        assert task.notebook.parent == root / "notebooks"
        declared = {p.name for p in task.parameters}
        in_notebook = set(papermill.inspect_notebook(str(task.notebook)))
        assert in_notebook == declared, task.name
        assert "parameters_file" in declared


def test_medperf_parameter_names(root: Path):
    def names(cube: str, task: str) -> tuple[set[str], set[str]]:
        spec = load_cube(root / "mlcubes" / cube).task(task)
        return ({p.name for p in spec.parameters if not p.is_output},
                {p.name for p in spec.parameters if p.is_output})

    assert names("data_preparator", "prepare") == (
        {"data_path", "labels_path", "parameters_file"}, {"output_path", "output_labels_path"})
    assert names("data_preparator", "sanity_check") == (
        {"data_path", "labels_path", "parameters_file"}, set())
    assert names("data_preparator", "statistics") == (
        {"data_path", "labels_path", "parameters_file"}, {"output_path"})
    assert names("model_custom_cnn", "infer") == (
        {"data_path", "parameters_file", "additional_files"}, {"output_path"})
    assert names("metrics", "evaluate") == (
        {"predictions", "labels", "parameters_file"}, {"output_path"})


def test_defaults_resolve_in_the_workspace_and_overrides_in_the_current_folder(root, tmp_path):
    cube = load_cube(root / "mlcubes" / "data_preparator")
    params = resolve_parameters(cube, "prepare", {"output_path": "mine"}, cwd=tmp_path)
    assert params["parameters_file"] == cube.workspace / "parameters.yaml"
    assert params["output_labels_path"] == cube.workspace / "labels"
    assert params["output_path"] == tmp_path / "mine"


def test_unknown_task_and_parameter_are_named(root):
    cube = load_cube(root / "mlcubes" / "metrics")
    with pytest.raises(ConfigError, match="no task 'infer'; this cube has evaluate"):
        cube.task("infer")
    with pytest.raises(ConfigError, match="no parameter data_path; its parameters are "
                                          "predictions, labels, parameters_file, output_path"):
        resolve_parameters(cube, "evaluate", {"data_path": "x"})


def test_manifest_without_notebook_entrypoint_is_refused(tmp_path):
    (tmp_path / "mlcube.yaml").write_text(
        "name: x\ntasks:\n  run:\n    parameters: {inputs: {data_path: data/}}\n")
    with pytest.raises(ConfigError, match="task run needs an entrypoint ending in its notebook"):
        load_cube(tmp_path)

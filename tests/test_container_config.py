"""The MedPerf container configs beside each mlcube.yaml, and the run command built from them.

The configs are generated from the manifests; these tests fail if a shipped config drifted
from its manifest, if it breaks the rules MedPerf's parser applies, or if its command would
not hand each mounted path to the parameter MedPerf mounts it for.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from cxr_tutorial import containers
from cxr_tutorial.containers import (
    CONFIG_NAME,
    container_config,
    medperf_run_command,
    parse_docker_run,
    stale_configs,
)
from cxr_tutorial.entrypoint import parse_arguments
from cxr_tutorial.errors import ConfigError
from cxr_tutorial.mlcube import load_cube

ROOT = Path(__file__).resolve().parent.parent
CUBES = ["data_preparator", "metrics", "model_custom_cnn"]

MEDPERF_VOLUMES = {
    # What MedPerf mounts for each task it runs (beside parameters_file and
    # additional_files, which it offers every task).
    "prepare": {"data_path", "labels_path", "output_path", "output_labels_path"},
    "sanity_check": {"data_path", "labels_path"},
    "statistics": {"data_path", "labels_path", "output_path"},
    "infer": {"data_path", "output_path"},
    "evaluate": {"predictions", "labels", "output_path"},
}


def _shipped(cube: str) -> dict:
    return yaml.safe_load((ROOT / "mlcubes" / cube / CONFIG_NAME).read_text())


def test_shipped_configs_match_their_manifests():
    assert stale_configs(ROOT) == [], "run `make container-configs`"
    assert containers.main(["check", "--root", str(ROOT)]) == 0


@pytest.mark.parametrize("cube", CUBES)
def test_config_follows_medperf_rules_and_the_manifest(cube: str):
    config, manifest = _shipped(cube), load_cube(ROOT / "mlcubes" / cube)
    assert config["container_type"] == "DockerImage"
    assert config["image"] == manifest.image
    assert set(config["tasks"]) == set(manifest.tasks)
    for name, task in config["tasks"].items():
        spec = manifest.task(name)
        assert set(task) <= {"run_args", "input_volumes", "output_volumes"}
        assert set(task["run_args"]) <= {"shm_size", "gpus", "command", "entrypoint",
                                         "environment"}
        inputs, outputs = task.get("input_volumes", {}), task.get("output_volumes", {})
        assert set(inputs) == {p.name for p in spec.parameters if not p.is_output}
        assert set(outputs) == {p.name for p in spec.parameters if p.is_output}
        volumes = {**inputs, **outputs}
        for param in spec.parameters:
            volume = volumes[param.name]
            assert volume["type"] == param.kind
            assert volume["mount_path"].startswith("/mlcommons/volumes/")
        mounts = [v["mount_path"] for v in volumes.values()]
        assert not any(a != b and b.startswith(a + "/") for a in mounts for b in mounts)
        assert len(set(mounts)) == len(mounts)
        # The command is the manifest's entrypoint; each --key names its own mount.
        command = task["run_args"]["command"]
        assert tuple(command[:len(spec.entrypoint)]) == spec.entrypoint
        notebook, params = parse_arguments(command[len(spec.entrypoint) - 1:])
        assert ROOT / notebook == spec.notebook
        assert params == {k: v["mount_path"] for k, v in volumes.items()}
        if name in MEDPERF_VOLUMES:
            assert MEDPERF_VOLUMES[name] <= set(volumes)
            assert set(volumes) - MEDPERF_VOLUMES[name] <= {"parameters_file",
                                                            "additional_files"}


def test_weights_are_the_model_additional_files():
    infer = _shipped("model_custom_cnn")["tasks"]["infer"]
    assert infer["input_volumes"]["additional_files"] == {
        "mount_path": "/mlcommons/volumes/additional_files", "type": "directory"}
    assert infer["input_volumes"]["parameters_file"]["type"] == "file"


def test_a_changed_manifest_makes_its_config_stale(tmp_path):
    for folder in ("mlcubes", "notebooks"):
        shutil.copytree(ROOT / folder, tmp_path / folder, symlinks=True)
    manifest = tmp_path / "mlcubes" / "metrics" / "mlcube.yaml"
    manifest.write_text(manifest.read_text().replace("default: results.yaml",
                                                     "default: metrics.yaml"))
    assert stale_configs(tmp_path) == [tmp_path / "mlcubes" / "metrics" / CONFIG_NAME]
    assert containers.main(["check", "--root", str(tmp_path)]) == 1
    assert containers.main(["write", "--root", str(tmp_path)]) == 0
    assert stale_configs(tmp_path) == []
    evaluate = yaml.safe_load((tmp_path / "mlcubes" / "metrics" / CONFIG_NAME).read_text())
    assert evaluate["tasks"]["evaluate"]["output_volumes"]["output_path"]["mount_path"] == (
        "/mlcommons/volumes/output_path/metrics.yaml")


def test_a_manifest_without_image_cannot_give_a_config(tmp_path):
    cube = load_cube(ROOT / "mlcubes" / "metrics")
    with pytest.raises(ConfigError, match="docker.image is needed"):
        container_config(type(cube)(cube.path, cube.name, cube.tasks))


def test_medperf_command_mounts_inputs_read_only_and_maps_back(tmp_path):
    config = container_config(load_cube(ROOT / "mlcubes" / "metrics"))
    host = {"predictions": tmp_path / "predictions", "labels": tmp_path / "labels",
            "parameters_file": ROOT / "mlcubes/metrics/workspace/parameters.yaml",
            "output_path": tmp_path / "out" / "results.yaml"}
    for name in ("predictions", "labels"):
        host[name].mkdir()
    command = medperf_run_command(config, "evaluate", host, tmp_path / "tmp", "1000:1000",
                                  engine="podman")
    assert command[:6] == ["podman", "run", "--rm", "--user", "1000:1000", "--volume"]
    assert (tmp_path / "out" / "results.yaml").is_file()  # created empty, as MedPerf does
    run = parse_docker_run(command)
    assert run.image == "cxr-tutorial/metrics:0.1.0" and run.options["--network"] == "none"
    modes = {inside: mode for _, inside, mode in run.volumes}
    assert modes == {"/mlcommons/volumes/predictions": "ro", "/mlcommons/volumes/labels": "ro",
                     "/mlcommons/volumes/parameters_file/parameters.yaml": "ro",
                     "/mlcommons/volumes/output_path/results.yaml": "rw", "/tmp": "rw"}
    assert run.entrypoint is None and run.args[:3] == ("python", "-m", "cxr_tutorial.entrypoint")
    _, params = parse_arguments([run.to_host(w) for w in run.args[3:]])
    assert params == {k: str(v) for k, v in host.items()}


def test_medperf_command_refuses_missing_inputs_and_unknown_tasks(tmp_path):
    config = container_config(load_cube(ROOT / "mlcubes" / "metrics"))
    with pytest.raises(ConfigError, match="no task 'infer'; it has evaluate"):
        medperf_run_command(config, "infer", {}, tmp_path, "0:0")
    with pytest.raises(ConfigError, match="input predictions does not exist"):
        medperf_run_command(config, "evaluate", {"predictions": tmp_path / "no"}, tmp_path,
                            "0:0")


def test_docker_run_parsing_maps_nested_mounts_to_the_deepest():
    run = parse_docker_run(["docker", "run", "--user=0:0", "--volume", "/ws:/mlcube_io0",
                            "-v", "/ws/data:/mlcube_io1:ro", "--entrypoint=python", "img:1",
                            "-m", "mod", "--a=/mlcube_io1/x", "--b=/mlcube_io0",
                            "--c=/mlcube_io10"])
    assert run.entrypoint == "python" and run.image == "img:1"
    assert run.command == ["python", "-m", "mod", "--a=/mlcube_io1/x", "--b=/mlcube_io0",
                           "--c=/mlcube_io10"]
    assert [run.to_host(w) for w in run.args[2:]] == ["--a=/ws/data/x", "--b=/ws",
                                                      "--c=/mlcube_io10"]
    with pytest.raises(ConfigError, match="not a 'docker run' command"):
        parse_docker_run(["docker", "build", "."])

"""The real ``mlcube`` tool on every task of every cube, with a stand-in ``docker``.

mlcube 0.0.9 (in its own venv, ``make mlcube-venv``) reads each manifest, and its docker
runner builds the ``docker run`` command it would start; a stand-in executable records that
command instead of starting a container. The test then runs the command's in-container part
(``python -m cxr_tutorial.entrypoint NOTEBOOK --key=/mlcube_ioN...``) natively, from the
project folder as the image's working folder, with each ``/mlcube_ioN`` mapped back to the
host folder mounted there. So the entrypoint receives exactly what it would receive in a
container, and must turn it into notebook parameters and outputs.

As root, that run is also made container-like: a fresh network namespace with no network,
an unprivileged user (nobody) allowed to read everything but to write only the task's
output mounts and ``/tmp``, and no home folder. The tasks are chained on the demo data:
prepare, sanity_check and statistics, then infer and train (one epoch) on the prepared
data, then evaluate on the predictions.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest
import yaml

from cxr_tutorial.containers import DockerRun, parse_docker_run
from cxr_tutorial.mlcube import TaskSpec, load_cube

ROOT = Path(__file__).resolve().parent.parent
MLCUBE = ROOT / ".venv-mlcube" / "bin" / "mlcube"
NOBODY = 65534

_STANDIN = """#!{python}
# Stand-in for docker: records each command mlcube gives it; every image "exists".
import json, os, sys
with open(os.environ["CXR_DOCKER_RECORD"], "a", encoding="utf-8") as out:
    out.write(json.dumps(sys.argv[1:]) + "\\n")
"""


def _mlcube() -> Path:
    """The mlcube executable, building its venv once if it is missing."""
    if not MLCUBE.exists():
        subprocess.run(["make", "-s", "mlcube-venv"], cwd=ROOT, capture_output=True,
                       timeout=600)
    if not MLCUBE.exists():
        reason = "the mlcube venv could not be built: run `make mlcube-venv` to see why"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return MLCUBE


def _folder_without_h() -> Path:
    """A new temporary folder whose path has no letter "h".

    mlcube parses its options with click, which reads every letter of an unknown short
    option such as ``-Pdocker.docker=PATH`` as a flag of its own: an "h" anywhere in PATH
    turns the run into ``--help``, which exits with status 0 and runs nothing.
    """
    parent = tempfile.gettempdir() if "h" not in tempfile.gettempdir() else "/tmp"
    for _ in range(100):
        folder = Path(tempfile.mkdtemp(prefix="cxr-mlcube-", dir=parent))
        if "h" not in str(folder):
            return folder
        folder.rmdir()
    raise RuntimeError("no temporary folder without an 'h' in its path")


def _container_like() -> list[str]:
    """A command prefix that runs like a container, where this machine allows it."""
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("setpriv")):
        return []
    if subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode != 0:
        return []
    # CAP_DAC_READ_SEARCH lets nobody read the venv and project wherever they are (as a
    # container reads its image) and grants no write anywhere.
    return ["unshare", "--net", "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
            "--clear-groups", "--inh-caps=+dac_read_search",
            "--ambient-caps=+dac_read_search", "--"]


class Chain:
    """Runs tasks through mlcube and the stand-in, then natively; keeps what happened."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.record = base / "docker-record.jsonl"
        self.standin = base / "bin" / "docker"
        self.standin.parent.mkdir()
        self.standin.write_text(_STANDIN.format(python=sys.executable))
        self.standin.chmod(0o755)
        self.prefix = _container_like()
        self.runs: dict[str, tuple[DockerRun, subprocess.CompletedProcess, Path, TaskSpec]] = {}

    def mlcube_run(self, cube: str, task: str, args: dict[str, Path]) -> DockerRun:
        """`mlcube run` with the stand-in docker; returns the docker run it recorded."""
        self.record.unlink(missing_ok=True)
        env = {**os.environ, "CXR_DOCKER_RECORD": str(self.record),
               "MLCUBE_SYSTEM_SETTINGS": str(self.base / "mlcube-settings.yaml")}
        result = subprocess.run(
            [str(_mlcube()), "run", f"--mlcube={ROOT / 'mlcubes' / cube}", f"--task={task}",
             "--platform=docker", f"-Pdocker.docker={self.standin}",
             *(f"{k}={v}" for k, v in args.items())],
            cwd=self.base, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert self.record.exists(), result.stdout[-3000:] + result.stderr[-3000:]
        commands = [json.loads(line) for line in self.record.read_text().splitlines()]
        runs = [c for c in commands if c[:1] == ["run"]]
        assert len(runs) == 1, commands
        return parse_docker_run(runs[0])

    def run(self, cube: str, task: str, args: dict[str, Path]) -> None:
        """Record the container command, then run its in-container part natively."""
        docker = self.mlcube_run(cube, task, args)
        spec = load_cube(ROOT / "mlcubes" / cube).task(task)
        user = NOBODY if self.prefix else os.geteuid()
        for param in spec.parameters:
            if param.is_output:  # the caller owns its output folders, as under MedPerf
                path = args[param.name]
                os.chown(path if param.kind == "directory" else path.parent, user, user)
        log_dir = self.base / "logs" / task
        log_dir.mkdir(parents=True)
        os.chown(log_dir, user, user)
        assert docker.command[0] == "python"
        command = [sys.executable, *(docker.to_host(w) for w in docker.command[1:])]
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("JUPYTER_", "IPYTHON", "KERAS_", "MPLCONFIG"))}
        env.update(HOME="/nonexistent", CXR_TUTORIAL_LOG_DIR=str(log_dir))
        result = subprocess.run([*self.prefix, *command], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=600)
        if self.prefix:  # outputs back to root: the next task reads them as read-only inputs
            for path in self.base.rglob("*"):
                os.lchown(path, 0, 0)
        self.runs[task] = (docker, result, log_dir / spec.notebook.name, spec)


@pytest.fixture(scope="module")
def chain() -> Chain:
    _mlcube()
    base = _folder_without_h()
    base.chmod(0o755)  # nobody must be able to reach its outputs in here
    out = {name: base / name for name in ("data", "labels", "stats", "predictions",
                                          "trained", "results")}
    train_params = base / "train-params" / "parameters.yaml"
    train_params.parent.mkdir()
    settings = yaml.safe_load(
        (ROOT / "mlcubes/model_custom_cnn/workspace/parameters.yaml").read_text())
    train_params.write_text(yaml.safe_dump({**settings, "epochs": 1}))
    tasks = [
        # Inputs left out take their manifest defaults in the cube's workspace.
        ("data_preparator", "prepare",
         {"output_path": out["data"], "output_labels_path": out["labels"]}),
        ("data_preparator", "sanity_check",
         {"data_path": out["data"], "labels_path": out["labels"]}),
        ("data_preparator", "statistics",
         {"data_path": out["data"], "labels_path": out["labels"],
          "output_path": out["stats"] / "statistics.yaml"}),
        ("model_custom_cnn", "infer",
         {"data_path": out["data"], "output_path": out["predictions"]}),
        ("model_custom_cnn", "train",
         {"data_path": out["data"], "labels_path": out["labels"],
          "parameters_file": train_params, "output_path": out["trained"]}),
        ("metrics", "evaluate",
         {"predictions": out["predictions"], "labels": out["labels"],
          "output_path": out["results"] / "results.yaml"}),
    ]
    runner = Chain(base)
    for cube, task, args in tasks:
        for path in args.values():  # as a caller would: folders exist before the run
            (path.parent if path.suffix else path).mkdir(parents=True, exist_ok=True)
        runner.run(cube, task, args)
    yield runner
    shutil.rmtree(base, ignore_errors=True)


ALL_TASKS = ["prepare", "sanity_check", "statistics", "infer", "train", "evaluate"]


@pytest.mark.parametrize("task", ALL_TASKS)
def test_task_runs_from_the_command_mlcube_builds(chain: Chain, task: str):
    docker, result, _, _ = chain.runs[task]
    assert result.returncode == 0, result.stderr[-4000:]
    # What mlcube builds: the manifest's entrypoint split at its first word, one mount per
    # distinct host folder, and --name=/mlcube_ioN[/file] per parameter.
    assert docker.entrypoint == "python"
    assert docker.args[:2] == ("-m", "cxr_tutorial.entrypoint")
    assert {inside for _, inside, _ in docker.volumes} == {
        f"/mlcube_io{i}" for i in range(len(docker.volumes))}
    assert docker.options.get("--network") == "none"
    assert docker.options.get("--user") == f"{os.geteuid()}:{os.getegid()}"


@pytest.mark.parametrize("task", ALL_TASKS)
def test_entrypoint_turns_the_arguments_into_notebook_parameters(chain: Chain, task: str):
    docker, result, log, spec = chain.runs[task]
    assert result.returncode == 0, result.stderr[-4000:]
    injected = [c for c in nbformat.read(log, as_version=4).cells
                if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1
    namespace: dict[str, str] = {}
    exec(injected[0].source, namespace)  # noqa: S102 - papermill's own assignments
    given = dict(w[2:].split("=", 1) for w in docker.args[3:])
    expected = {k: docker.to_host(v) for k, v in given.items()}
    for param in spec.parameters:
        value = namespace[param.name]
        if param.is_output and param.kind == "file":
            # Written in /tmp first, then put in place by the entrypoint.
            assert value.startswith(tempfile.gettempdir()) and value != expected[param.name]
            assert Path(value).name == Path(expected[param.name]).name
        else:
            assert value == expected[param.name], param.name
    assert set(given) == {p.name for p in spec.parameters}


def test_chained_outputs_are_real(chain: Chain):
    base = chain.base
    stats = yaml.safe_load((base / "stats" / "statistics.yaml").read_text())
    assert stats["n_cases"] == 16
    predictions = json.loads((base / "predictions" / "predictions.json").read_text())
    assert len(predictions) == 16
    results = yaml.safe_load((base / "results" / "results.yaml").read_text())
    # Threshold figures are withheld at 16 cases (a handful of misses is a small cell);
    # AUC and loss are released and show the shipped model still fits the demo.
    assert results["n_cases"] == 16 and results["overall"]["auc_macro"] >= 0.75
    assert 0.0 < results["overall"]["loss"] < 0.69
    assert (base / "trained" / "weights.keras").stat().st_size > 0


def test_runs_were_container_like_where_possible(chain: Chain):
    if not chain.prefix:
        pytest.skip("needs root, unshare and setpriv to run as nobody with no network")
    # The executed notebooks were written by nobody, inside a namespace without network.
    for task in ALL_TASKS:
        assert chain.runs[task][1].returncode == 0
    # No interface but a loopback that is down: not even 127.0.0.1 answers.
    probe = subprocess.run(
        [*chain.prefix, sys.executable, "-c",
         "import socket; print(socket.if_nameindex()); s = socket.socket();"
         "s.settimeout(2); s.connect(('127.0.0.1', 9))"],
        capture_output=True, text=True, timeout=30)
    assert probe.stdout.strip() == "[(1, 'lo')]"
    assert probe.returncode != 0 and "unreachable" in probe.stderr.lower()
    probe = subprocess.run([*chain.prefix, "touch", str(ROOT / "notebooks" / "probe")],
                           capture_output=True, text=True, timeout=30)
    assert probe.returncode != 0 and "Permission denied" in probe.stderr

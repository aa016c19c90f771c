"""The compatibility test: every task of the three cubes, chained, on one data set.

Like ``medperf test run``, it proves that a Data Preparator, a Model and a Metrics cube
work together before anyone runs them on a hospital's data: prepare, sanity_check,
statistics, infer and evaluate, each in its own kernel, each output feeding the next.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from cxr_tutorial.errors import ConfigError
from cxr_tutorial.mlcube import load_cube
from cxr_tutorial.runner import TaskResult, run_task


def project_root() -> Path:
    """The repository folder holding ``mlcubes/``, ``notebooks/`` and ``demo_data/``."""
    return Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class TestPlan:
    """Which cubes and data a compatibility test uses.

    Attributes:
        data_path: Raw images folder.
        labels_path: Raw labels folder (holding ``labels.csv``).
        output: Folder that receives every output and log.
        data_preparator: Data Preparator cube folder.
        model: Model cube folder.
        metrics: Metrics cube folder.
    """

    data_path: Path
    labels_path: Path
    output: Path
    data_preparator: Path
    model: Path
    metrics: Path

    @classmethod
    def with_defaults(cls, output: str | Path, **given: str | Path | None) -> TestPlan:
        """Fill every path not given with the demo data and the repository's cubes."""
        root = project_root()
        defaults = {
            "data_path": root / "demo_data" / "images",
            "labels_path": root / "demo_data" / "labels",
            "data_preparator": root / "mlcubes" / "data_preparator",
            "model": root / "mlcubes" / "model_custom_cnn",
            "metrics": root / "mlcubes" / "metrics",
        }
        paths = {k: Path(given.get(k) or v).resolve() for k, v in defaults.items()}
        for name, path in paths.items():
            if not path.exists():
                raise ConfigError(f"{name}: {path} does not exist")
        return cls(output=Path(output).resolve(), **paths)


def run_compatibility_test(plan: TestPlan) -> tuple[list[TaskResult], dict[str, Any]]:
    """Run the five tasks in order; stop at the first failure.

    Outputs, under ``plan.output``: ``prepared/data``, ``prepared/labels``,
    ``statistics.yaml``, ``predictions/``, ``results.yaml`` and ``logs/`` with one executed
    notebook per task.

    Args:
        plan: Cubes, data and output folder.

    Returns:
        ``(results, metrics)``: one :class:`TaskResult` per task and the content of
        ``results.yaml``.

    Raises:
        TaskError: From the first task that fails.
    """
    out = plan.output
    data, labels = out / "prepared" / "data", out / "prepared" / "labels"
    logs = out / "logs"
    steps = [
        (plan.data_preparator, "prepare", {
            "data_path": plan.data_path, "labels_path": plan.labels_path,
            "output_path": data, "output_labels_path": labels}),
        (plan.data_preparator, "sanity_check", {"data_path": data, "labels_path": labels}),
        (plan.data_preparator, "statistics", {
            "data_path": data, "labels_path": labels, "output_path": out / "statistics.yaml"}),
        (plan.model, "infer", {"data_path": data, "output_path": out / "predictions"}),
        (plan.metrics, "evaluate", {
            "predictions": out / "predictions", "labels": labels,
            "output_path": out / "results.yaml"}),
    ]
    results = []
    for folder, task, params in steps:
        cube = load_cube(folder)
        overrides = {k: str(v) for k, v in params.items()}
        results.append(run_task(cube, task, overrides, log_dir=logs,
                                log_name=f"{cube.name}.{task}.ipynb"))
    metrics = yaml.safe_load((out / "results.yaml").read_text(encoding="utf-8"))
    return results, metrics

"""The compatibility test: every task of the three cubes, chained, on one data set.

Like ``medperf test run``, it proves that a Data Preparator, a Model and a Metrics cube
work together before anyone runs them on a hospital's data: prepare, sanity_check,
statistics, infer and evaluate, each in its own kernel, each output feeding the next.
Whether it passes or fails, it leaves ``report.html`` beside its outputs.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import yaml

from cxr_tutorial import logger
from cxr_tutorial.errors import ConfigError, CxrTutorialError
from cxr_tutorial.mlcube import load_cube, resolve_parameters
from cxr_tutorial.runner import KernelPool, TaskResult, run_task

OUTPUTS = ("prepared/data", "prepared/labels", "statistics.yaml", "predictions",
           "results.yaml", "logs", "logs_html", "report.html")
"""What a compatibility test writes in its output folder, in the order it is written."""


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

    __test__ = False  # a plan, not a pytest test class

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


@dataclasses.dataclass(frozen=True)
class Step:
    """One task of a chain, with the paths it is given.

    Attributes:
        cube: The cube folder.
        task: The task's name.
        parameters: Parameter name to absolute path; parameters not given keep the
            manifest's defaults (e.g. ``parameters_file``).
        log_name: File name of its executed notebook (default:
            ``<cube name>.<task>.ipynb``).
    """

    cube: Path
    task: str
    parameters: dict[str, Path]
    log_name: str = ""


@dataclasses.dataclass(frozen=True)
class TaskRecord:
    """What a report says about one task, whether it passed, failed or never ran.

    Attributes:
        cube: The cube's name.
        task: The task's name.
        status: ``passed``, ``failed`` or ``not run``.
        seconds: Wall-clock duration (``None`` if it did not run).
        log: The executed notebook, if one was written.
        outputs: Output parameter name to the path the task was to write.
        message: The error, for a failed task.
        result: The runner's result, for a passed task.
        error: The exception, for a failed task.
    """

    cube: str
    task: str
    status: str
    seconds: float | None = None
    log: Path | None = None
    outputs: dict[str, Path] = dataclasses.field(default_factory=dict)
    message: str = ""
    result: TaskResult | None = dataclasses.field(default=None, repr=False)
    error: CxrTutorialError | None = dataclasses.field(default=None, repr=False)


def plan_steps(plan: TestPlan) -> list[Step]:
    """The five tasks of a compatibility test, in order, with the paths each one gets.

    Outputs, under ``plan.output``: ``prepared/data``, ``prepared/labels``,
    ``statistics.yaml``, ``predictions/`` and ``results.yaml``.
    """
    out = plan.output
    data, labels = out / "prepared" / "data", out / "prepared" / "labels"
    return [
        Step(plan.data_preparator, "prepare", {
            "data_path": plan.data_path, "labels_path": plan.labels_path,
            "output_path": data, "output_labels_path": labels}),
        Step(plan.data_preparator, "sanity_check", {"data_path": data, "labels_path": labels}),
        Step(plan.data_preparator, "statistics", {
            "data_path": data, "labels_path": labels, "output_path": out / "statistics.yaml"}),
        Step(plan.model, "infer", {"data_path": data, "output_path": out / "predictions"}),
        Step(plan.metrics, "evaluate", {
            "predictions": out / "predictions", "labels": labels,
            "output_path": out / "results.yaml"}),
    ]


def _cube_name(folder: Path) -> str:
    """The cube's manifest name, or its folder name if the manifest cannot be read."""
    try:
        return load_cube(folder).name
    except CxrTutorialError:
        return folder.name


def run_step(step: Step, log_dir: Path, kernels: KernelPool | None = None) -> TaskRecord:
    """Run one step and record the outcome; a failure is recorded, not raised.

    The executed notebook is ``<log_dir>/<step.log_name>``.

    Args:
        step: The step.
        log_dir: Folder for the executed notebook.
        kernels: A pool shared with the steps around this one.

    Returns:
        A passed or failed :class:`TaskRecord`.
    """
    start = time.perf_counter()
    name, outputs = _cube_name(step.cube), {}
    log = log_dir / (step.log_name or f"{name}.{step.task}.ipynb")
    try:
        cube = load_cube(step.cube)
        overrides = {k: str(v) for k, v in step.parameters.items()}
        spec = cube.task(step.task)
        resolved = resolve_parameters(cube, step.task, overrides)
        outputs = {p.name: resolved[p.name] for p in spec.parameters if p.is_output}
        result = run_task(cube, step.task, overrides, log_dir=log_dir, log_name=log.name,
                          kernels=kernels)
    except CxrTutorialError as exc:
        return TaskRecord(name, step.task, "failed", time.perf_counter() - start,
                          log if log.is_file() else None, outputs, str(exc), error=exc)
    return TaskRecord(name, step.task, "passed", result.seconds, result.log, outputs,
                      result=result)


def not_run(step: Step) -> TaskRecord:
    """The record of a step skipped because an earlier one failed."""
    return TaskRecord(_cube_name(step.cube), step.task, "not run")


def run_compatibility_test(
    plan: TestPlan, report: bool = True
) -> tuple[list[TaskResult], dict[str, Any]]:
    """Run the five tasks in order; stop at the first failure.

    Outputs, under ``plan.output``: see :data:`OUTPUTS`; ``logs/`` holds one executed
    notebook per task and ``logs_html/`` the same rendered as web pages. Each task gets a
    fresh kernel, launched while the task before it runs.

    Args:
        plan: Cubes, data and output folder.
        report: Write ``report.html`` (also when a task fails).

    Returns:
        ``(results, metrics)``: one :class:`TaskResult` per task and the content of
        ``results.yaml``.

    Raises:
        CxrTutorialError: From the first task that fails (usually a ``TaskError``); the
            report is written first.
    """
    steps = plan_steps(plan)
    logs = plan.output / "logs"
    (plan.output / "report.html").unlink(missing_ok=True)  # never show an older run's report
    records: list[TaskRecord] = []
    with KernelPool(len(steps)) as kernels:
        for step in steps:
            records.append(run_step(step, logs, kernels))
            if records[-1].status == "failed":
                break
    records += [not_run(step) for step in steps[len(records):]]
    failed = next((r for r in records if r.status == "failed"), None)
    metrics = None if failed else yaml.safe_load(
        (plan.output / "results.yaml").read_text(encoding="utf-8"))
    if report:
        from cxr_tutorial.report import write_test_report

        try:
            path = write_test_report(plan, records, metrics)
            logger.info("report: %s", path)
        except Exception as exc:  # noqa: BLE001 - a report problem must not hide the result
            logger.warning("could not write the report: %s: %s", type(exc).__name__, exc)
    if failed is not None and failed.error is not None:
        raise failed.error
    return [r.result for r in records if r.result is not None], metrics or {}


def summary_text(results: list[TaskResult], metrics: dict[str, Any], output: Path) -> str:
    """What ``cxr-tutorial test`` prints after a passing run: tasks, metrics, outputs."""
    lines = [f"Compatibility test passed ({len(results)} tasks):"]
    lines += [f"  {r.cube:<22} {r.task:<13} {r.seconds:5.1f} s" for r in results]
    shown = output.relative_to(Path.cwd()) if output.is_relative_to(Path.cwd()) else output
    lines += ["", "Metrics (results.yaml):", format_metrics(metrics), "",
              f"Everything was written to {shown}:"]
    lines += [f"  {shown / name}" for name in OUTPUTS]
    lines += ["Open report.html in a browser: results, outputs, times and each executed "
              "notebook."]
    return "\n".join(lines)


METRIC_COLUMNS = ("auc", "loss", "accuracy", "balanced_accuracy", "sensitivity",
                  "specificity", "f1")
"""Columns of the terminal table, in the order a reader scans them."""


def _cell(value: Any) -> str:
    """One table cell: a number, ``withheld``, ``n/a`` for an undefined figure, or blank."""
    if value is None:
        return "n/a"
    return "" if value == "" else str(value)


def format_metrics(metrics: dict[str, Any]) -> str:
    """Render ``results.yaml`` as a small table for the terminal.

    Rows: the overall figures, the macro averages (with the number of classes each
    averaged in brackets) and one row per class. ``withheld`` marks a figure the Metrics
    cube refused to release; ``n/a`` one that is undefined at this site.

    Args:
        metrics: The content of ``results.yaml``.

    Returns:
        The table, then one line per withheld group with its reason.
    """
    overall = metrics.get("overall") or {}
    header = (f"cases: {metrics.get('n_cases')}   classes: "
              f"{', '.join(metrics.get('labels_list') or [])}   "
              f"min_cases: {metrics.get('min_cases')}")
    rows = [["", *(c.replace("balanced_accuracy", "bal. acc.") for c in METRIC_COLUMNS)]]
    first = {**overall, "accuracy": overall.get("accuracy", overall.get("subset_accuracy"))}
    rows.append(["overall", *(_cell(first.get(c, "")) if c != "auc" else "" for c in
                              METRIC_COLUMNS)])
    macro = []
    for column in METRIC_COLUMNS:
        key = f"{column}_macro"
        if key in overall:
            macro.append(f"{_cell(overall[key])} ({overall.get(key + '_n_classes', 0)})")
        else:
            macro.append("")
    rows.append(["macro (classes)", *macro])
    for name, figures in (metrics.get("per_class") or {}).items():
        if isinstance(figures, dict):
            rows.append([name, *(_cell(figures.get(c, "")) for c in METRIC_COLUMNS)])
        else:
            rows.append([name, *([_cell(figures)] * len(METRIC_COLUMNS))])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [header] + ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths))
                        .rstrip() for row in rows]
    lines += [f"  withheld: {reason}" for reason in metrics.get("withheld") or []]
    return "\n".join(lines)

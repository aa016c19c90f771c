"""Federated evaluation, simulated on one machine: models travel to the sites, metrics return.

Each site (a data owner) runs the Data Preparator's ``prepare``, ``sanity_check`` and
``statistics`` on its own export, then every model's ``infer`` and the Metrics cube's
``evaluate``. Only ``statistics.yaml`` and each ``results.yaml`` are copied to the
benchmark owner, who builds the models x sites table from those copies alone. One
output folder holds both sides, kept apart::

    <output>/
        sites/<site>/                 stays inside the hospital
            prepared/data/, prepared/labels/
            statistics.yaml
            models/<model>/predictions/, models/<model>/results.yaml
            logs/, logs_html/         the executed notebooks, and as web pages
        owner/                        what the benchmark owner receives, and derives
            <site>/statistics.yaml
            <site>/<model>/results.yaml
            benchmark.yaml, table.csv built from the copies above only
        report.html                   this simulation's report (it plays both roles)

A site or model that fails does not stop the others: its cells are marked failed, with
the task and the log that says why, and the run carries on.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import logging
import os
import re
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from cxr_tutorial import logger
from cxr_tutorial.compat import Step, TaskRecord, not_run, project_root, run_step
from cxr_tutorial.config import read_yaml
from cxr_tutorial.errors import ConfigError, CxrTutorialError
from cxr_tutorial.mlcube import load_cube
from cxr_tutorial.runner import KernelPool
from cxr_tutorial.sites import Site

RELEASED = ("statistics.yaml", "results.yaml")
"""The only file names that leave a site."""

SUMMARY_FORMAT = "cxr-tutorial-benchmark"
MARKER = ".cxr-tutorial-benchmark"
"""File that marks an output folder as a benchmark's, so a rerun may replace its parts."""

POOLING_RULE = (
    "Pooled figure: the mean of the sites' released figures, weighted by each site's "
    "released case count (n_cases). Sites whose figure is withheld, and sites or models "
    "that failed, are left out; the pooled entry says how many sites and cases it covers. "
    "For accuracy and loss this is exactly the figure over all pooled cases; for AUC and "
    "balanced accuracy it is an approximation, since the per-case scores that an exact "
    "pooled value needs never leave a site."
)

WITHHELD, FAILED, NOT_COMPUTED = "withheld", "failed", "n/a"

DEFAULT_METRIC = "loss"
"""The figure of the main table: the loss reveals no count, so the Metrics cube withholds
it only at a site too small for any figure, and weighting by cases pools it exactly.
Threshold figures such as accuracy can be withheld wherever a model makes a few mistakes
of a kind; every figure is in ``benchmark.yaml`` and the report all the same."""


@dataclasses.dataclass(frozen=True)
class BenchmarkPlan:
    """What a federated evaluation runs, where, and how.

    Attributes:
        sites: The data owners, each with a unique name.
        models: Model cube folders; every one runs at every site.
        output: Folder for the sites' work, the owner's folder and the report.
        data_preparator: Data Preparator cube folder.
        metrics: Metrics cube folder.
        jobs: Sites run at the same time (each site's tasks run one after the other).
        metric: The figure of ``results.yaml``'s ``overall`` shown in the main table.
    """

    sites: tuple[Site, ...]
    models: tuple[Path, ...]
    output: Path
    data_preparator: Path
    metrics: Path
    jobs: int = 1
    metric: str = DEFAULT_METRIC

    @classmethod
    def with_defaults(
        cls,
        output: str | Path,
        sites: list[Site],
        models: list[str | Path] | None = None,
        data_preparator: str | Path | None = None,
        metrics: str | Path | None = None,
        jobs: int = 1,
        metric: str = DEFAULT_METRIC,
    ) -> BenchmarkPlan:
        """Fill the cubes not given with the repository's, and check the plan.

        The default models are the reference CNN and the example of another model owner's
        model (``mlcubes/model_owner_example``).

        Raises:
            ConfigError: On no site, two sites with one name, a missing cube folder or
                ``jobs`` below 1.
        """
        root = project_root() / "mlcubes"
        if not sites:
            raise ConfigError("a benchmark needs at least one site")
        names = [s.name for s in sites]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(f"two sites are named {', '.join(repeated)}; site folders must "
                              "have different names")
        if jobs < 1:
            raise ConfigError(f"jobs must be at least 1, got {jobs}")
        model_paths = [Path(m) for m in models] if models else [
            root / "model_custom_cnn", root / "model_owner_example"]
        cubes = {"data_preparator": Path(data_preparator or root / "data_preparator"),
                 "metrics": Path(metrics or root / "metrics")}
        for label, path in [*cubes.items(), *(("model", m) for m in model_paths)]:
            if not path.is_dir():
                raise ConfigError(f"{label} cube {path} does not exist")
        return cls(tuple(sites), tuple(m.resolve() for m in model_paths),
                   Path(output).resolve(), cubes["data_preparator"].resolve(),
                   cubes["metrics"].resolve(), jobs, metric)

    @property
    def owner(self) -> Path:
        """The benchmark owner's folder."""
        return self.output / "owner"

    def site_folder(self, name: str) -> Path:
        """The folder standing for a site's own disk."""
        return self.output / "sites" / name


@dataclasses.dataclass(frozen=True)
class Cell:
    """One model at one site, as the benchmark owner sees it.

    Attributes:
        model: The model cube's name.
        site: The site's name.
        status: ``released`` (some figures), ``withheld`` (no figure: too few cases) or
            ``failed``.
        results: The owner's copy of ``results.yaml`` (``None`` if it failed).
        failed_task: For a failed cell, the task that failed (``prepare``, ``infer``...).
        log: For a failed cell, the executed notebook kept at the site, if any.
        message: For a failed cell, what went wrong.
    """

    model: str
    site: str
    status: str
    results: dict[str, Any] | None = None
    failed_task: str = ""
    log: Path | None = None
    message: str = ""


@dataclasses.dataclass(frozen=True)
class SiteRun:
    """Everything one site did.

    Attributes:
        site: The site.
        folder: Its work folder.
        tasks: Every task, in order, passed, failed or not run.
        failures: Model name to the failed cell, for the models that did not finish.
    """

    site: Site
    folder: Path
    tasks: list[TaskRecord]
    failures: dict[str, Cell]


@dataclasses.dataclass(frozen=True)
class BenchmarkRun:
    """A finished federated evaluation.

    Attributes:
        plan: What was run.
        models: Model names, in plan order.
        sites: What each site did, in plan order.
        cells: ``(model, site)`` to its :class:`Cell`.
        summary: The owner's ``benchmark.yaml``.
        report: The HTML report (``None`` if it could not be written).
    """

    plan: BenchmarkPlan
    models: list[str]
    sites: list[SiteRun]
    cells: dict[tuple[str, str], Cell]
    summary: dict[str, Any]
    report: Path | None

    @property
    def failed(self) -> list[Cell]:
        """The failed cells, model by model."""
        return [c for c in self.cells.values() if c.status == FAILED]


# --- the owner's side: reading released files, the table, pooling -----------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def figure(results: dict[str, Any] | None, name: str) -> float | str:
    """One overall figure of a results file, as the table shows it.

    Args:
        results: The content of ``results.yaml``.
        name: A key of its ``overall`` section, e.g. ``loss``.

    Returns:
        The value; ``"withheld"`` when the file withholds it (every figure when
        ``n_cases`` is not a number; a ``"withheld"`` or ``"<5"``-style string; a figure
        named in the ``withheld`` list; a null figure of a file that lists withheld
        classes but has no ``undefined`` list); otherwise ``"n/a"``: undefined on the
        site's data (null, explained under ``undefined``) or not a figure of the file.
    """
    if results is None:
        return NOT_COMPUTED
    if not _is_number(results.get("n_cases")):
        return WITHHELD
    overall = results.get("overall") or {}
    value = overall.get(name)
    if _is_number(value):
        return float(value)
    withheld = [str(reason) for reason in results.get("withheld") or []]
    named = re.compile(rf"(?<!\w){re.escape(name)}(?!\w)")  # accuracy, not balanced_accuracy
    if isinstance(value, str) or any(named.search(reason) for reason in withheld):
        return WITHHELD
    if name in overall and withheld and "undefined" not in results:
        return WITHHELD
    return NOT_COMPUTED


def figure_names(results: list[dict[str, Any]]) -> list[str]:
    """The overall figures found in any results file, in first-seen order, counts left out."""
    names: list[str] = []
    for result in results:
        for key in result.get("overall") or {}:
            if key not in names and not key.startswith("n_") and not key.endswith("n_classes"):
                names.append(key)
    return names


def pool(values: list[tuple[str, float | str, Any]], decimals: int = 4) -> dict[str, Any]:
    """Pool one figure over sites by :data:`POOLING_RULE`.

    Args:
        values: ``(site, figure, n_cases)`` per site; a figure that is not a number
            (withheld, failed, n/a), or a case count that is not a number, leaves the site
            out.
        decimals: Rounding of the pooled value.

    Returns:
        ``{"value", "sites", "cases", "left_out"}``: the weighted mean (``None`` if no site
        qualifies), how many sites and cases it covers, and the sites left out.
    """
    used = [(v, n) for _, v, n in values if _is_number(v) and _is_number(n) and n > 0]
    cases = int(sum(n for _, n in used))
    value = round(sum(v * n for v, n in used) / cases, decimals) if cases else None
    left_out = [s for s, v, n in values if not (_is_number(v) and _is_number(n) and n > 0)]
    return {"value": value, "sites": len(used), "cases": cases, "left_out": left_out}


def read_released(owner: Path, sites: list[str], models: list[str]) -> tuple[
        dict[str, dict[str, Any] | None], dict[tuple[str, str], dict[str, Any] | None]]:
    """Read what the sites released into the owner's folder.

    Args:
        owner: The owner's folder.
        sites: Site names.
        models: Model names.

    Returns:
        ``(statistics, results)``: site to its statistics, ``(model, site)`` to its
        results; ``None`` where nothing was released.
    """
    def load(path: Path) -> dict[str, Any] | None:
        return read_yaml(path) if path.is_file() else None

    statistics = {s: load(owner / s / "statistics.yaml") for s in sites}
    results = {(m, s): load(owner / s / m / "results.yaml") for m in models for s in sites}
    return statistics, results


def summarise(
    owner: Path,
    sites: list[str],
    models: list[str],
    failures: dict[tuple[str, str], Cell],
    metric: str = DEFAULT_METRIC,
) -> tuple[dict[str, Any], dict[tuple[str, str], Cell]]:
    """Build the owner's table from the owner's folder and the list of failed cells.

    Args:
        owner: The owner's folder (holding the released copies).
        sites: Site names, in column order.
        models: Model names, in row order.
        failures: ``(model, site)`` to the failed cell, for cells that released nothing.
        metric: The figure of the main table.

    Returns:
        ``(summary, cells)``: the content of ``benchmark.yaml`` and every cell.
    """
    _, released = read_released(owner, sites, models)
    cells: dict[tuple[str, str], Cell] = {}
    for key, results in released.items():
        if key in failures:
            cells[key] = failures[key]
        elif results is None:
            cells[key] = Cell(key[0], key[1], FAILED, message="no results.yaml was released")
        else:
            status = WITHHELD if not _is_number(results.get("n_cases")) else "released"
            cells[key] = Cell(key[0], key[1], status, results)
    names = figure_names([c.results for c in cells.values() if c.results])
    if metric not in names:
        if names:
            logger.warning("no released results hold a figure named %r; they hold %s",
                           metric, ", ".join(names))
        names.insert(0, metric)
    table: dict[str, Any] = {}
    pooled: dict[str, Any] = {}
    for model in models:
        row = {}
        for site in sites:
            cell = cells[(model, site)]
            entry: dict[str, Any] = {"status": cell.status}
            if cell.status == FAILED:
                entry.update(task=cell.failed_task or None,
                             log=str(cell.log) if cell.log else None)
            else:
                entry["n_cases"] = cell.results.get("n_cases") if cell.results else None
                entry.update({n: figure(cell.results, n) for n in names})
            row[site] = entry
        table[model] = row
        pooled[model] = {
            n: pool([(s, figure(cells[(model, s)].results, n)
                      if cells[(model, s)].status != FAILED else FAILED,
                      row[s].get("n_cases")) for s in sites])
            for n in names
        }
    summary = {"format": SUMMARY_FORMAT, "version": 1, "metric": metric,
               "figures": names, "pooling": POOLING_RULE, "sites": list(sites),
               "models": list(models), "table": table, "pooled": pooled}
    return summary, cells


def shown_value(value: Any) -> str:
    """A figure as text, rounded to 4 decimals (``0.875``, ``1.0``); anything else as is."""
    return str(round(float(value), 4)) if _is_number(value) else str(value)


def table_rows(summary: dict[str, Any], metric: str | None = None) -> list[list[str]]:
    """The models x sites table of one figure, as text: a header row, one row per model.

    Cells hold the value, ``withheld`` or ``failed (<task>)``; the last column is the
    pooled value with the number of sites and cases it covers.
    """
    metric = metric or summary["metric"]
    rows = [["model", *summary["sites"], f"pooled {metric}"]]
    for model in summary["models"]:
        row = [model]
        for site in summary["sites"]:
            entry = summary["table"][model][site]
            if entry["status"] == FAILED:
                row.append(f"failed ({entry.get('task') or '?'})")
            else:
                row.append(shown_value(entry.get(metric, NOT_COMPUTED)))
        pooled = summary["pooled"][model][metric]
        sites = f"{pooled['sites']} site" + ("s" if pooled["sites"] != 1 else "")
        row.append(f"{shown_value(pooled['value'])} ({sites}, {pooled['cases']} cases)"
                   if pooled["value"] is not None else "none (0 sites)")
        rows.append(row)
    return rows


def table_text(summary: dict[str, Any], metric: str | None = None) -> str:
    """:func:`table_rows` as aligned plain text."""
    rows = table_rows(summary, metric)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def write_summary(owner: Path, summary: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``benchmark.yaml`` (everything) and ``table.csv`` (the main figure).

    ``table.csv`` has one row per model: the figure at each site (a number, ``withheld``
    or ``failed``), then the pooled value (empty if no site qualified) and how many sites
    and cases it covers.
    """
    yaml_path, csv_path = owner / "benchmark.yaml", owner / "table.csv"
    _write_atomic(yaml_path, yaml.safe_dump(summary, sort_keys=False))
    metric = summary["metric"]
    rows = [["model", *summary["sites"], "pooled", "pooled_sites", "pooled_cases"]]
    for model in summary["models"]:
        cells = []
        for site in summary["sites"]:
            entry = summary["table"][model][site]
            cells.append(FAILED if entry["status"] == FAILED else entry.get(metric))
        pooled = summary["pooled"][model][metric]
        rows.append([model, *cells, pooled["value"], pooled["sites"], pooled["cases"]])
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    _write_atomic(csv_path, text.getvalue())
    return yaml_path, csv_path


# --- the sites' side ------------------------------------------------------------------------


_context = threading.local()


class _SiteTag(logging.Filter):
    """Prefix the package's log lines with the site the current thread works for."""

    def filter(self, record: logging.LogRecord) -> bool:
        site = getattr(_context, "site", None)
        if site and not getattr(record, "cxr_site", None):
            record.msg = f"[{site}] {record.msg}"
            record.cxr_site = site
        return True


@contextlib.contextmanager
def _site_tags() -> Iterator[None]:
    tag = _SiteTag()
    logger.addFilter(tag)
    try:
        yield
    finally:
        logger.removeFilter(tag)


def _release(source: Path, target: Path) -> None:
    """Copy one releasable file to the owner's folder (the only way anything leaves)."""
    if source.name not in RELEASED:
        raise ConfigError(f"{source.name} may not leave a site; only {', '.join(RELEASED)}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    shutil.copyfile(source, partial)
    os.replace(partial, target)


def _guarded(step: Step, logs: Path, kernels: KernelPool) -> TaskRecord:
    """Run a step; any error, even an unexpected one, becomes a failed record."""
    try:
        record = run_step(step, logs, kernels)
    except Exception as exc:  # noqa: BLE001 - one site's surprise must not stop the others
        logger.exception("%s failed unexpectedly", step.task)
        return TaskRecord(step.cube.name, step.task, FAILED,
                          message=f"{type(exc).__name__}: {exc}")
    if record.status == FAILED:
        where = f"; log: {record.log}" if record.log else ""
        logger.warning("%s %s FAILED%s", record.cube, record.task, where)
    return record


def _site_steps(plan: BenchmarkPlan, site: Site, models: list[str],
                metrics_name: str) -> tuple[list[Step], dict[str, list[Step]]]:
    """The Data Preparator's three steps, and each model's infer and evaluate, at a site."""
    folder = plan.site_folder(site.name)
    data, labels = folder / "prepared" / "data", folder / "prepared" / "labels"
    prep = [
        Step(plan.data_preparator, "prepare", {
            "data_path": site.data_path, "labels_path": site.labels_path,
            "output_path": data, "output_labels_path": labels}),
        Step(plan.data_preparator, "sanity_check", {"data_path": data, "labels_path": labels}),
        Step(plan.data_preparator, "statistics", {
            "data_path": data, "labels_path": labels,
            "output_path": folder / "statistics.yaml"}),
    ]
    chains = {}
    for name, cube in zip(models, plan.models, strict=True):
        work = folder / "models" / name
        chains[name] = [
            Step(cube, "infer", {"data_path": data, "output_path": work / "predictions"}),
            Step(plan.metrics, "evaluate", {
                "predictions": work / "predictions", "labels": labels,
                "output_path": work / "results.yaml"},
                 log_name=f"{metrics_name}.evaluate.{name}.ipynb"),  # one log per model
        ]
    return prep, chains


def _failed_cell(name: str, site: Site, record: TaskRecord) -> Cell:
    return Cell(name, site.name, FAILED, failed_task=record.task, log=record.log,
                message=record.message)


def _run_site(plan: BenchmarkPlan, site: Site, models: list[tuple[str, Path, str]],
              metrics_name: str) -> SiteRun:
    """Everything one site does, in order; failures are recorded, never raised."""
    _context.site = site.name
    folder = plan.site_folder(site.name)
    logs, owner = folder / "logs", plan.owner / site.name
    prep, chains = _site_steps(plan, site, [m[0] for m in models], metrics_name)
    tasks: list[TaskRecord] = []
    failures: dict[str, Cell] = {}
    try:
        with KernelPool(len(prep) + sum(len(c) for c in chains.values())) as kernels:
            for step in prep:
                tasks.append(_guarded(step, logs, kernels))
                if tasks[-1].status == FAILED:  # nothing else can run at this site
                    bad = tasks[-1]
                    tasks += [not_run(s) for s in prep[len(tasks):]]
                    for name, chain in chains.items():
                        tasks += [not_run(s) for s in chain]
                        failures[name] = _failed_cell(name, site, bad)
                    return SiteRun(site, folder, tasks, failures)
            _release(folder / "statistics.yaml", owner / "statistics.yaml")
            for name, _, load_error in models:
                infer, evaluate = chains[name]
                if load_error:
                    tasks.append(dataclasses.replace(not_run(infer), status=FAILED,
                                                     message=load_error))
                    failures[name] = _failed_cell(name, site, tasks[-1])
                    tasks.append(not_run(evaluate))
                    continue
                tasks.append(_guarded(infer, logs, kernels))
                if tasks[-1].status != FAILED:
                    tasks.append(_guarded(evaluate, logs, kernels))
                else:
                    tasks.append(not_run(evaluate))
                bad = next((t for t in tasks[-2:] if t.status == FAILED), None)
                if bad is not None:
                    failures[name] = _failed_cell(name, site, bad)
                else:
                    _release(evaluate.parameters["output_path"], owner / name / "results.yaml")
    except Exception as exc:  # noqa: BLE001 - e.g. a full disk while copying: report it
        logger.exception("site stopped unexpectedly")
        for name in chains:
            failures.setdefault(name, Cell(name, site.name, FAILED,
                                           message=f"{type(exc).__name__}: {exc}"))
    finally:
        _context.site = None
    return SiteRun(site, folder, tasks, failures)


def _load_models(paths: tuple[Path, ...]) -> list[tuple[str, Path, str]]:
    """``(name, folder, load error)`` per model cube; a cube that cannot load is kept."""
    models = []
    for path in paths:
        try:
            cube = load_cube(path)
            cube.task("infer")
            models.append((cube.name, path, ""))
        except CxrTutorialError as exc:
            logger.warning("model cube %s cannot be used: %s", path, exc)
            models.append((path.name, path, f"the cube could not be loaded: {exc}"))
    names = [m[0] for m in models]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"two model cubes are named {', '.join(repeated)}; each model "
                          "needs its own name in mlcube.yaml")
    return models


def _prepare_output(plan: BenchmarkPlan) -> None:
    """Claim the output folder; clear the owner's folder and the planned sites' folders."""
    out = plan.output
    for site in plan.sites:
        for private in (out / "sites", plan.owner):
            if site.data_path.is_relative_to(private):
                raise ConfigError(f"site {site.name}: its export {site.data_path} lies inside "
                                  f"{private}, which each run clears; keep exports elsewhere")
    ours = (out / MARKER).is_file()
    if not ours and any((out / sub).exists() for sub in ("owner", "sites")):
        raise ConfigError(f"{out} already holds owner/ or sites/ that cxr-tutorial benchmark "
                          "did not write; choose a new or empty output folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("output folder of cxr-tutorial benchmark\n", encoding="utf-8")
    shutil.rmtree(plan.owner, ignore_errors=True)
    for site in plan.sites:
        shutil.rmtree(plan.site_folder(site.name), ignore_errors=True)
    plan.owner.mkdir()


def run_benchmark(plan: BenchmarkPlan, report: bool = True) -> BenchmarkRun:
    """Run every model at every site, release the allowed files, and build the table.

    Args:
        plan: Sites, models, cubes, output folder, parallel sites.
        report: Write ``report.html`` with every task's log rendered as a web page.

    Returns:
        The finished :class:`BenchmarkRun`; failed cells are in ``run.failed``.

    Raises:
        ConfigError: Before anything runs, if the Data Preparator or Metrics cube cannot be
            loaded, two model cubes share a name, or the output folder is someone else's.
    """
    load_cube(plan.data_preparator)
    metrics_name = load_cube(plan.metrics).name
    models = _load_models(plan.models)
    _prepare_output(plan)
    logger.info("benchmark: %d model(s) at %d site(s), %d at a time", len(models),
                len(plan.sites), min(plan.jobs, len(plan.sites)))
    with _site_tags(), ThreadPoolExecutor(max_workers=plan.jobs) as workers:
        futures = [workers.submit(_run_site, plan, site, models, metrics_name)
                   for site in plan.sites]
        site_runs = [f.result() for f in futures]
    failures = {(name, run.site.name): cell
                for run in site_runs for name, cell in run.failures.items()}
    names = [m[0] for m in models]
    summary, cells = summarise(plan.owner, [s.name for s in plan.sites], names, failures,
                               plan.metric)
    write_summary(plan.owner, summary)
    run = BenchmarkRun(plan, names, site_runs, cells, summary, None)
    if report:
        from cxr_tutorial.report import write_benchmark_report

        try:
            run = dataclasses.replace(run, report=write_benchmark_report(run))
        except Exception as exc:  # noqa: BLE001 - a report problem must not hide the results
            logger.warning("could not write the report: %s: %s", type(exc).__name__, exc)
    return run

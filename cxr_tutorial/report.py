"""HTML reports of a compatibility test or a benchmark, for readers without Jupyter.

A report is one HTML file with its style inline and no script: the results, what each task
wrote, how long each took, and a link to every executed notebook rendered as a web page by
nbconvert (in ``logs_html/``, beside ``logs/``). Links are relative, so a run's folder can be
moved or zipped whole and still read.
"""

from __future__ import annotations

import datetime
import html
import os
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr_tutorial import __version__, logger

if TYPE_CHECKING:
    from cxr_tutorial.compat import TaskRecord, TestPlan
    from cxr_tutorial.federated import BenchmarkRun

_CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em;
       padding: 0 1em; color: #1d1d1f; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0; }
th, td { border: 1px solid #c8c8cc; padding: .3em .6em; text-align: left;
         vertical-align: top; }
th { background: #f2f2f4; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
.passed, .released { color: #11602a; } .failed { color: #a31515; font-weight: bold; }
.withheld, .not-run { color: #6e6e73; font-style: italic; }
.box { border-left: 4px solid #a31515; background: #fbeeee; padding: .5em 1em; }
.note { color: #4a4a4f; }
pre { background: #f6f6f8; padding: .6em; overflow-x: auto; white-space: pre-wrap; }
code { background: #f2f2f4; padding: 0 .2em; }
"""

_NOTEBOOK_CSS = """
.cell { margin: .8em 0; } .prompt { color: #6e6e73; font: 12px monospace; }
.input_area { background: #f6f6f8; border: 1px solid #e0e0e4; }
.input_area pre, .output_area pre { margin: 0; padding: .5em; background: none; }
.output_area { border-left: 3px solid #e0e0e4; margin: .3em 0 0 0; }
.output_stderr { background: #fff4e5; } .output_error { background: #fbeeee; }
.output_area img { max-width: 100%; }
.ansi-red-fg { color: #a31515; } .ansi-green-fg { color: #11602a; }
.ansi-cyan-fg { color: #0b6b74; } .ansi-blue-fg { color: #0b4f9c; }
.ansi-yellow-fg { color: #8a6d00; } .ansi-bold { font-weight: bold; }
"""


def _e(value: Any) -> str:
    """Escape a value for HTML text or attributes."""
    return html.escape(str(value), quote=True)


def _href(target: Path, base: Path) -> str:
    """A relative link from a file in ``base`` to ``target``."""
    return urllib.parse.quote(os.path.relpath(target, base).replace(os.sep, "/"))


def _page(title: str, body: str, css: str = _CSS) -> str:
    """A whole HTML document with inline style."""
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{_e(title)}</title>\n<style>{css}</style>\n</head>\n<body>\n{body}\n"
            "</body>\n</html>\n")


def _table(headers: list[str], rows: Iterable[list[str]], table_id: str = "") -> str:
    """An HTML table.

    Args:
        headers: Column titles (plain text; escaped here).
        rows: Cells as HTML; a cell that is already a ``<td ...>`` element (to carry a
            class) is used as it is, any other is wrapped in one.
        table_id: The table's ``id``, by which tests and readers find it.
    """
    attr = f' id="{_e(table_id)}"' if table_id else ""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell if cell.startswith("<td") else f"<td>{cell}</td>"
                                    for cell in row) + "</tr>\n" for row in rows)
    return f"<table{attr}>\n<tr>{head}</tr>\n{body}</table>\n"


def _size(n_bytes: int) -> str:
    """Bytes as a short human figure (``512 B``, ``1.2 KB``, ``3.4 MB``)."""
    if n_bytes < 1024:
        return f"{n_bytes} B"
    for unit in ("KB", "MB", "GB"):
        n_bytes /= 1024
        if n_bytes < 1024 or unit == "GB":
            return f"{n_bytes:.1f} {unit}"
    return f"{n_bytes:.1f} GB"


def describe_output(path: Path) -> str:
    """What a task wrote at one output path, in one line.

    Args:
        path: A file or folder.

    Returns:
        E.g. ``"1.2 KB"`` for a file, ``"19 files, 262.3 KB: cases.csv, format.yaml,
        images/ (16 files), sources.yaml"`` for a folder, ``"nothing"`` if it is absent.
    """
    if path.is_file():
        return _size(path.stat().st_size)
    if not path.is_dir():
        return "nothing"
    files = [p for p in path.rglob("*") if p.is_file()]
    parts = []
    for entry in sorted(path.iterdir()):
        inside = sum(1 for p in entry.rglob("*") if p.is_file()) if entry.is_dir() else 0
        parts.append(f"{entry.name}/ ({_files(inside)})" if entry.is_dir() else entry.name)
    shown = ", ".join(parts[:6]) + (f", ... ({len(parts) - 6} more)" if len(parts) > 6 else "")
    return f"{_files(len(files))}, {_size(sum(p.stat().st_size for p in files))}: {shown}"


def _files(count: int) -> str:
    return f"{count} file" if count == 1 else f"{count} files"


def render_notebooks(logs: Iterable[Path], folder: Path) -> dict[Path, Path]:
    """Render executed notebooks as standalone web pages, ``<folder>/<notebook name>.html``.

    Args:
        logs: Executed notebooks.
        folder: Where the pages go.

    Returns:
        Each notebook that could be rendered to its page. A notebook that cannot be read
        (e.g. cut short by a dying kernel) is logged and left out.
    """
    from nbconvert import HTMLExporter
    from pygments.formatters import HtmlFormatter

    exporter = HTMLExporter(template_name="basic")
    css = _CSS + _NOTEBOOK_CSS + HtmlFormatter(style="default").get_style_defs(".highlight")
    pages = {}
    for log in logs:
        try:
            body, _ = exporter.from_filename(str(log))
        except Exception as exc:  # noqa: BLE001 - an unreadable log must not stop the report
            logger.warning("cannot render %s: %s: %s", log, type(exc).__name__, exc)
            continue
        page = folder / f"{log.stem}.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        header = (f"<p class=\"note\">Executed notebook <code>{_e(log.name)}</code>, rendered "
                  f"by cxr-tutorial {__version__}. The original: "
                  f"<a href=\"{_href(log, page.parent)}\">{_e(log.name)}</a>.</p>")
        _write(page, _page(log.name, header + body, css))
        pages[log] = page
    return pages


def _log_links(record: TaskRecord, pages: dict[Path, Path], base: Path) -> str:
    """Links to a task's rendered log and to the notebook itself."""
    if record.log is None:
        return '<span class="not-run">none</span>'
    links = []
    if record.log in pages:
        links.append(f'<a href="{_href(pages[record.log], base)}">rendered</a>')
    links.append(f'<a href="{_href(record.log, base)}">{_e(record.log.name)}</a>')
    return " · ".join(links)


_TASK_HEADERS = ["#", "cube", "task", "status", "time", "what it wrote", "log"]


def _task_rows(records: list[TaskRecord], pages: dict[Path, Path], base: Path) -> list[list[str]]:
    """One table row per task: cube, task, status, time, what it wrote, logs."""
    rows = []
    for number, record in enumerate(records, 1):
        status = record.status.replace(" ", "-")
        wrote = "<br>".join(
            f"<code>{_e(name)}</code> = <code>{_e(_relative(path, base))}</code>: "
            f"{_e(describe_output(path))}" for name, path in record.outputs.items()
        ) if record.status == "passed" else ""
        seconds = f"{record.seconds:.1f} s" if record.seconds is not None else ""
        rows.append([str(number), _e(record.cube), f"<code>{_e(record.task)}</code>",
                     f'<td class="{status}">{_e(record.status)}</td>',
                     f'<td class="number">{seconds}</td>', wrote or "",
                     _log_links(record, pages, base)])
    return rows


def _relative(path: Path, base: Path) -> str:
    """A path relative to ``base`` when it lies inside it, else the absolute path."""
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def _metrics_html(metrics: dict[str, Any]) -> str:
    """results.yaml as tables: overall figures, per-class figures, what was withheld."""
    parts = [f"<p>Cases: <b>{_e(metrics.get('n_cases'))}</b>; classes: "
             f"{_e(', '.join(metrics.get('labels_list') or []))}; figures about fewer than "
             f"{_e(metrics.get('min_cases'))} cases are withheld.</p>"]
    overall = metrics.get("overall") or {}
    if overall:
        parts.append(_table(["figure", "value"], (
            [f"<code>{_e(k)}</code>", f'<td class="number">{_e(v)}</td>']
            for k, v in overall.items()), "overall"))
    per_class = metrics.get("per_class") or {}
    if per_class:
        names = list(next(iter(per_class.values())))
        parts.append(_table(["class", *names], (
            [_e(cls), *(f'<td class="number">{_e(figures.get(n))}</td>' for n in names)]
            for cls, figures in per_class.items()), "per-class"))
    withheld = metrics.get("withheld") or []
    if withheld:
        parts.append("<p>Withheld:</p><ul>" + "".join(f"<li>{_e(w)}</li>" for w in withheld)
                     + "</ul>")
    return "".join(parts)


def write_test_report(
    plan: TestPlan, records: list[TaskRecord], metrics: dict[str, Any] | None
) -> Path:
    """Write ``report.html`` for a compatibility test, passed or failed.

    Args:
        plan: The test's cubes, data and output folder.
        records: One record per task, in order (failed and not-run ones included).
        metrics: The content of ``results.yaml`` (``None`` if the test failed).

    Returns:
        The report's path, ``<plan.output>/report.html``.
    """
    out = plan.output
    pages = render_notebooks((r.log for r in records if r.log is not None), out / "logs_html")
    failed = [r for r in records if r.status == "failed"]
    verdict = "failed" if failed else "passed"
    total = sum(r.seconds or 0.0 for r in records)
    body = [f'<h1>Compatibility test <span class="{verdict}">{verdict}</span></h1>',
            f'<p class="note">{_now()} · {len(records)} tasks, {total:.1f} s in all · '
            f"output folder <code>{_e(out)}</code></p>",
            _table(["input or cube", "path"], (
                [_e(label), f"<code>{_e(path)}</code>"] for label, path in [
                    ("raw images", plan.data_path), ("raw labels", plan.labels_path),
                    ("Data Preparator", plan.data_preparator), ("Model", plan.model),
                    ("Metrics", plan.metrics)]), "inputs")]
    for record in failed:
        body.append(f'<div class="box"><p>Task <code>{_e(record.task)}</code> of '
                    f"{_e(record.cube)} failed; the tasks after it did not run.</p>"
                    f"<pre>{_e(record.message)}</pre></div>")
    body += ["<h2>Tasks</h2>",
             '<p class="note">Each task ran its notebook in a fresh kernel; the time includes '
             "the kernel's start. The executed notebook is the task's log.</p>",
             _table(_TASK_HEADERS, _task_rows(records, pages, out), "tasks")]
    if metrics:
        body += ["<h2>Results (<code>results.yaml</code>)</h2>", _metrics_html(metrics)]
    statistics = out / "statistics.yaml"
    if not failed and statistics.is_file():
        body += ["<h2>Statistics (<code>statistics.yaml</code>)</h2>",
                 f"<pre>{_e(statistics.read_text(encoding='utf-8'))}</pre>"]
    return _write(out / "report.html", _page(f"Compatibility test {verdict}", "\n".join(body)))


def _write(path: Path, text: str) -> Path:
    """Write a page whole or not at all (through a temporary file beside it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
    return path


def _now() -> str:
    return datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def _cell_html(run: BenchmarkRun, model: str, site: str, metric: str,
               pages: dict[Path, Path]) -> str:
    """One cell of a models x sites table."""
    from cxr_tutorial.federated import FAILED, shown_value

    entry = run.summary["table"][model][site]
    if entry["status"] == FAILED:
        cell = run.cells[(model, site)]
        log = ""
        if cell.log is not None:
            target = pages.get(cell.log, cell.log)
            log = f' · <a href="{_href(target, run.plan.output)}">log</a>'
        title = f' title="{_e(cell.message[:300])}"' if cell.message else ""
        return (f'<td class="failed"{title}>failed ({_e(entry.get("task") or "?")})'
                f"{log}</td>")
    value = entry.get(metric)
    if isinstance(value, str):
        return f'<td class="withheld">{_e(value)}</td>'
    return f'<td class="number">{_e(shown_value(value))}</td>'


def _figure_table(run: BenchmarkRun, metric: str, pages: dict[Path, Path],
                  table_id: str) -> str:
    """The models x sites table of one figure, with the pooled column."""
    from cxr_tutorial.federated import shown_value

    summary = run.summary
    rows = []
    for model in summary["models"]:
        pooled = summary["pooled"][model][metric]
        if pooled["value"] is None:
            shown = '<td class="withheld">none</td>'
        else:
            shown = f'<td class="number">{_e(shown_value(pooled["value"]))}</td>'
        rows.append([_e(model), *(_cell_html(run, model, s, metric, pages)
                                  for s in summary["sites"]),
                     shown, f'<td class="number">{pooled["sites"]}</td>',
                     f'<td class="number">{pooled["cases"]}</td>'])
    return _table(["model", *summary["sites"], "pooled", "sites pooled", "cases pooled"],
                  rows, table_id)


def _statistics_rows(run: BenchmarkRun) -> list[list[str]]:
    """Per site: released case count, cases per class and file formats."""
    from cxr_tutorial.federated import read_released

    statistics, _ = read_released(run.plan.owner, run.summary["sites"], [])
    rows = []
    for site in run.summary["sites"]:
        stats = statistics.get(site)
        if stats is None:
            rows.append([_e(site), '<td class="failed">nothing released</td>', "", ""])
            continue
        formats = (stats.get("sources") or {}).get("file_format")
        rows.append([_e(site), f'<td class="number">{_e(stats.get("n_cases"))}</td>',
                     _e(_counts(stats.get("cases_per_class"))), _e(_counts(formats))])
    return rows


def _counts(table: object) -> str:
    """Render a released table of counts; a table withheld whole is a string or absent."""
    if isinstance(table, dict) and table:
        return ", ".join(f"{k}: {v}" for k, v in table.items())
    return table if isinstance(table, str) else "withheld"


def write_benchmark_report(run: BenchmarkRun) -> Path:
    """Write ``report.html`` for a federated evaluation.

    The report plays both roles of the simulation: the owner's table, built from the
    released files only, and each site's tasks with links to logs that in a real
    federation only that site could open.

    Args:
        run: The finished benchmark.

    Returns:
        The report's path, ``<output>/report.html``.
    """
    from cxr_tutorial.federated import POOLING_RULE

    out, summary = run.plan.output, run.summary
    pages = {}
    for site in run.sites:
        pages.update(render_notebooks((t.log for t in site.tasks if t.log is not None),
                                      site.folder / "logs_html"))
    n_cells, failed = len(run.cells), run.failed
    verdict = (f'<span class="failed">{len(failed)} of {n_cells} failed</span>' if failed
               else f'<span class="passed">all {n_cells} ran</span>')
    metric = summary["metric"]
    body = [f"<h1>Federated evaluation: {len(run.models)} model(s) at "
            f"{len(summary['sites'])} site(s)</h1>",
            f'<p class="note">{_now()} · models x sites cells: {verdict} · output folder '
            f"<code>{_e(out)}</code></p>",
            f"<h2>Results: <code>{_e(metric)}</code></h2>",
            _figure_table(run, metric, pages, "main-table"),
            f'<p class="note">{_e(POOLING_RULE)} A withheld cell is a site too small to '
            "release that figure; a failed cell names the task that failed and links to its "
            "log.</p>"]
    for cell in failed:
        where = f" Log: <code>{_e(cell.log)}</code>." if cell.log else ""
        body.append(f'<div class="box"><p><b>{_e(cell.model)}</b> at <b>{_e(cell.site)}</b>: '
                    f"<code>{_e(cell.failed_task or '?')}</code> failed.{where}</p>"
                    f"<pre>{_e(cell.message)}</pre></div>")
    others = [n for n in summary["figures"] if n != metric]
    shown = [n for n in others if any(not isinstance(cell.get(n), str)
                                      for row in summary["table"].values()
                                      for cell in row.values() if n in cell)]
    if others:
        body.append("<h2>Other figures</h2>")
        for name in shown:
            body += [f"<h3><code>{_e(name)}</code></h3>",
                     _figure_table(run, name, pages, f"table-{name}")]
        hidden = [n for n in others if n not in shown]
        if hidden:
            body.append(f"<p>Released by no site (withheld or undefined everywhere): "
                        f"{', '.join(f'<code>{_e(n)}</code>' for n in hidden)}.</p>")
    body += ["<h2>What the benchmark owner received</h2>",
             f"<p>Only these files crossed from the sites to <code>{_e(run.plan.owner)}</code>"
             "; the table above was built from them alone.</p>",
             _table(["file", "size"], (
                 [f'<a href="{_href(p, out)}">{_e(p.relative_to(run.plan.owner))}</a>',
                  f'<td class="number">{_size(p.stat().st_size)}</td>']
                 for p in sorted(run.plan.owner.rglob("*")) if p.is_file()), "released"),
             "<h3>Site statistics (released <code>statistics.yaml</code>)</h3>",
             _table(["site", "cases", "cases per class", "file formats"],
                    _statistics_rows(run), "statistics"),
             "<h2>At each site</h2>",
             '<p class="note">What each data owner ran, in order, on its own machine. In a '
             "real federation these logs stay at the site: they show images, case ids and "
             "predictions.</p>"]
    for site_run in run.sites:
        seconds = sum(t.seconds or 0.0 for t in site_run.tasks)
        body += [f"<h3>{_e(site_run.site.name)}</h3>",
                 f'<p class="note">Raw export <code>{_e(site_run.site.data_path.parent)}</code>;'
                 f" work folder <code>{_e(site_run.folder)}</code>; {seconds:.1f} s of "
                 "tasks.</p>",
                 _table(_TASK_HEADERS, _task_rows(site_run.tasks, pages, out),
                        f"tasks-{site_run.site.name}")]
    title = f"Federated evaluation ({len(failed)} failed)" if failed else "Federated evaluation"
    return _write(out / "report.html", _page(title, "\n".join(body)))
